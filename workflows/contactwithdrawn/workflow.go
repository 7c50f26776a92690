// Package contactwithdrawn is the workflow that cancels the reminders of a
// family's people who may no longer be contacted. A reminder is checked
// against consent when it is made, but it may wait days (for its time, or
// for the end of someone's quiet hours); a member who withdraws consent,
// or is taken off the family, in between must not get it anyway.
package contactwithdrawn

import (
	"go.temporal.io/sdk/workflow"

	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/flow"
)

// Name is the workflow type's registered name.
const Name = "ContactWithdrawn"

// Input starts the workflow.
type Input struct {
	// Family is `clinics/{clinic}/families/{family}`.
	Family string
}

// Result says what the workflow cancelled.
type Result struct {
	// Reminders is how many reminders it cancelled.
	Reminders int
}

// Workflow cancels the family's pending reminders to people it may no
// longer contact, as the family stands when the activity runs.
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
	err = flow.Call(ctx, &res.Reminders, flow.A.WithdrawUncontactable, activities.WithdrawRequest{
		Family: in.Family, RequestID: flow.RequestID(ctx, "withdraw"),
	})
	return res, err
}
