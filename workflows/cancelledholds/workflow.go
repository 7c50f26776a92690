// Package cancelledholds is the workflow that gives back the places still
// held for an intervention that was cancelled or deleted, or that ended
// with nothing accepted. A scheduled
// meeting's own workflow releases the hold it took; but a counselor may
// hold a place by hand while the meeting is still a draft, and a draft has
// no workflow to let it go. Left alone, such a hold keeps a scarce intake
// slot from everyone else until it lapses, days later.
package cancelledholds

import (
	"cmp"

	"go.temporal.io/sdk/workflow"

	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/flow"
)

// Name is the workflow type's registered name.
const Name = "CancelledHolds"

// Input starts the workflow.
type Input struct {
	// Intervention is `clinics/{clinic}/interventions/{intervention}`.
	Intervention string
	// Family is the intervention's family: only holds for it are released.
	Family string
	// Reason is the release's; "intervention cancelled" when empty (runs
	// started before it was given).
	Reason string
}

// Result says what the workflow gave back.
type Result struct {
	// Released is how many holds it released.
	Released int
}

// Workflow releases every live hold made for the intervention's family
// under the intervention, whatever the service.
func Workflow(ctx workflow.Context, in Input) (Result, error) {
	res, err := run(ctx, in)
	return res, flow.Final(err)
}

// run is Workflow, its failure as the activity gave it.
func run(ctx workflow.Context, in Input) (Result, error) {
	var res Result
	ctx, err := flow.ForFamily(ctx, in.Family)
	if err != nil {
		return res, err
	}
	err = flow.Call(ctx, &res.Released, flow.A.ReleaseHeldFor, activities.ReleaseHeldRequest{
		Intervention: in.Intervention, Family: in.Family, AnyService: true,
		Reason: cmp.Or(in.Reason, "intervention cancelled"), RequestID: flow.RequestID(ctx, "release"),
	})
	return res, err
}
