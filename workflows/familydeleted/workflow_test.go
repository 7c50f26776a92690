package familydeleted_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/mock"

	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/familydeleted"
	"github.com/handoff-health/handoff/workflows/flow"
	"github.com/handoff-health/handoff/workflows/flowtest"
	"github.com/handoff-health/handoff/workflows/ids"
)

const family = "clinics/north/families/f1"

// The family's boundary workflow is asked to stop, then its open
// interventions and pending reminders are cancelled; without a boundary
// workflow (or one that cannot be cancelled) the rest still happens.
func TestDeletedFamilyIsClosed(t *testing.T) {
	for _, c := range []struct {
		name      string
		cancelErr error
		cancelled bool
	}{
		{"a boundary workflow runs", nil, true},
		{"none runs", errors.New("unknown external workflow execution"), false},
	} {
		env := flowtest.Env(familydeleted.Workflow, familydeleted.Name)
		var asked []string
		env.OnRequestCancelExternalWorkflow(mock.Anything, mock.Anything, mock.Anything).Return(
			func(_ string, id, _ string) error {
				asked = append(asked, id)
				return c.cancelErr
			})
		var closed []activities.CloseFamilyRequest
		env.OnActivity(flow.A.CloseFamily, mock.Anything, mock.Anything).Return(
			func(_ context.Context, in activities.CloseFamilyRequest) (activities.Closed, error) {
				closed = append(closed, in)
				return activities.Closed{Interventions: 2, Reminders: 3}, nil
			})
		env.ExecuteWorkflow(familydeleted.Name, familydeleted.Input{Family: family})
		var res familydeleted.Result
		if err := env.GetWorkflowResult(&res); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if len(asked) != 1 || asked[0] != ids.Boundary(family) || res.BoundaryCancelled != c.cancelled {
			t.Errorf("%s: cancel asked of %v, result %+v", c.name, asked, res)
		}
		if len(closed) != 1 || closed[0].Family != family || closed[0].RequestID == "" || res.Interventions != 2 || res.Reminders != 3 {
			t.Errorf("%s: closed %+v, result %+v", c.name, closed, res)
		}
	}
}
