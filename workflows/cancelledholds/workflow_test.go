package cancelledholds_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/mock"

	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/cancelledholds"
	"github.com/handoff-health/handoff/workflows/flow"
	"github.com/handoff-health/handoff/workflows/flowtest"
)

// The workflow asks once, with a request id of its own, for every live
// hold of the intervention's family under the intervention to be released,
// whatever its service, and reports how many were; a family name that is
// no family's fails at once.
func TestReleasesOnce(t *testing.T) {
	env := flowtest.Env(cancelledholds.Workflow, cancelledholds.Name)
	var asked []activities.ReleaseHeldRequest
	env.OnActivity(flow.A.ReleaseHeldFor, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.ReleaseHeldRequest) (int, error) {
			asked = append(asked, in)
			return 1, nil
		})
	in := cancelledholds.Input{Intervention: "clinics/north/interventions/i1", Family: "clinics/north/families/f1"}
	env.ExecuteWorkflow(cancelledholds.Name, in)
	var res cancelledholds.Result
	if err := env.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	if len(asked) != 1 || asked[0].Intervention != in.Intervention || asked[0].Family != in.Family || !asked[0].AnyService ||
		asked[0].RequestID == "" || res.Released != 1 {
		t.Fatalf("asked %+v, result %+v", asked, res)
	}

	env = flowtest.Env(cancelledholds.Workflow, cancelledholds.Name)
	env.ExecuteWorkflow(cancelledholds.Name, cancelledholds.Input{Intervention: in.Intervention, Family: "not-a-family"})
	if err := env.GetWorkflowError(); err == nil {
		t.Fatal("a name that is no family's: want an error")
	}
}
