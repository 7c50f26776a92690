// Package familydeleted is the workflow that stops what still runs for a
// family whose record an administrator deleted: its boundary workflow (no
// more check-ins or boundary reminders to its members), its drafts and
// scheduled meetings (their workflows end, giving back held places), and
// the reminders still pending for its people. Referrals already made stay:
// a person on their way into treatment is not turned back by a deleted
// record; the counselor sees them in the referrals list.
package familydeleted

import (
	"go.temporal.io/sdk/workflow"

	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/flow"
)

// Name is the workflow type's registered name.
const Name = "FamilyDeleted"

// Input starts the workflow.
type Input struct {
	// Family is the deleted family, `clinics/{clinic}/families/{family}`.
	Family string
}

// Result says what the workflow stopped.
type Result struct {
	// BoundaryCancelled is set when a boundary workflow ran for the family
	// and was asked to stop.
	BoundaryCancelled bool
	activities.Closed
}

// Workflow asks the family's boundary workflow to stop, then cancels its
// open interventions and pending reminders.
func Workflow(ctx workflow.Context, in Input) (Result, error) {
	var res Result
	ctx, err := flow.ForFamily(ctx, in.Family)
	if err != nil {
		return res, err
	}
	// The boundary workflow first: it reads the family before each step,
	// and without it would fail on the first read rather than end.
	if res.BoundaryCancelled, err = flow.CancelBoundary(ctx, in.Family); err != nil {
		// Whatever else keeps it from being cancelled, it is not running
		// for this family any more; the rest still has to stop.
		workflow.GetLogger(ctx).Warn("boundary workflow not cancelled", "error", err)
	}
	err = flow.Call(ctx, &res.Closed, flow.A.CloseFamily, activities.CloseFamilyRequest{
		Family: in.Family, RequestID: flow.RequestID(ctx, "close"),
	})
	return res, err
}
