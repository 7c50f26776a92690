package contactwithdrawn_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/mock"

	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/contactwithdrawn"
	"github.com/handoff-health/handoff/workflows/flow"
	"github.com/handoff-health/handoff/workflows/flowtest"
)

// The workflow asks once, with a request id of its own, for the family's
// reminders to people it may no longer contact to be cancelled, and
// reports how many were; a name that is no family's fails at once.
func TestWithdrawsOnce(t *testing.T) {
	env := flowtest.Env(contactwithdrawn.Workflow, contactwithdrawn.Name)
	var asked []activities.WithdrawRequest
	env.OnActivity(flow.A.WithdrawUncontactable, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.WithdrawRequest) (int, error) {
			asked = append(asked, in)
			return 2, nil
		})
	env.ExecuteWorkflow(contactwithdrawn.Name, contactwithdrawn.Input{Family: "clinics/north/families/f1"})
	var res contactwithdrawn.Result
	if err := env.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	if len(asked) != 1 || asked[0].Family != "clinics/north/families/f1" || asked[0].RequestID == "" || res.Reminders != 2 {
		t.Fatalf("asked %+v, result %+v", asked, res)
	}

	env = flowtest.Env(contactwithdrawn.Workflow, contactwithdrawn.Name)
	env.ExecuteWorkflow(contactwithdrawn.Name, contactwithdrawn.Input{Family: "not-a-family"})
	if err := env.GetWorkflowError(); err == nil {
		t.Fatal("a name that is no family's: want an error")
	}
}
