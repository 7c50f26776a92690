// Package familydeleted holds the workflows that stop what still runs for
// a family the clinic no longer works with, whether an administrator
// deleted its record (FamilyDeleted) or its case was closed
// (FamilyClosed): its boundary workflow (no more check-ins or boundary
// reminders to its members), its drafts and scheduled meetings (their
// workflows end, giving back held places), the places held for it outside
// any meeting, and the reminders still pending for its people. Referrals
// already made stay: a person on their way into treatment is not turned
// back by a deleted record or a closed case; the counselor sees them in
// the referrals list.
package familydeleted

import (
	"context"

	"go.temporal.io/sdk/workflow"

	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/flow"
)

// Name is the registered name of the workflow run for a deleted family.
const Name = "FamilyDeleted"

// ClosedName is the registered name of the workflow run for a closed
// family. A type of its own, not an input flag: a worker of a release
// that does not know closings leaves it to one that does, rather than
// run it as a deletion.
const ClosedName = "FamilyClosed"

// Input starts either workflow.
type Input struct {
	// Family is the deleted or closed family,
	// `clinics/{clinic}/families/{family}`.
	Family string
}

// Result says what the workflow stopped.
type Result struct {
	// BoundaryCancelled is set when a boundary workflow ran for the family
	// and was asked to stop.
	BoundaryCancelled bool
	activities.Closed
}

// Workflow asks the deleted family's boundary workflow to stop, then
// cancels its open interventions and pending reminders.
func Workflow(ctx workflow.Context, in Input) (Result, error) {
	ctx, err := flow.ForFamily(ctx, in.Family)
	if err != nil {
		return Result{}, err
	}
	res, err := stop(ctx, in.Family, flow.A.CloseFamily)
	return res, flow.Final(err)
}

// versionCloseFirst guards closing the family's meetings, holds and
// reminders before its boundary workflow is cancelled, on the one read
// CloseClosedFamily makes. Before, the workflow read the family to decide,
// cancelled the boundary workflow, then read it again to close the rest:
// a family reopened between the reads kept its meetings but had lost its
// boundary follow-up. Asked only for a closed family, which is a sensitive
// state: covered by an epoch before its release.
const versionCloseFirst = "close-before-boundary"

// Closed does what Workflow does for a family whose case was closed, once
// it has seen the family is still closed: one reopened before the worker
// got to it (the worker down, the event waiting in the outbox) keeps its
// meetings and follow-up.
func Closed(ctx workflow.Context, in Input) (Result, error) {
	res, err := closeClosed(ctx, in)
	return res, flow.Final(err)
}

// closeClosed is Closed, its failure as the activity gave it.
func closeClosed(ctx workflow.Context, in Input) (Result, error) {
	ctx, err := flow.ForFamily(ctx, in.Family)
	if err != nil {
		return Result{}, err
	}
	if flow.Version(ctx, versionCloseFirst, 1) >= 1 {
		// The boundary workflow stops on its own at a step the services
		// refuse for a closed family; it is cancelled here for the wait
		// between its steps, once the rest has seen the family still
		// closed, or has been refused for good on the way (the run then
		// ends, and nothing else would stop it). A close that ran out of
		// time leaves it: the run is tried again.
		var res Result
		cerr := flow.Call(ctx, &res.Closed, flow.A.CloseClosedFamily, activities.CloseFamilyRequest{
			Family: in.Family, RequestID: flow.RequestID(ctx, "close"),
		})
		if res.Reopened || (cerr != nil && !flow.Refused(cerr)) {
			return res, cerr
		}
		if res.BoundaryCancelled, err = flow.CancelBoundary(ctx, in.Family); err != nil {
			workflow.GetLogger(ctx).Warn("boundary workflow not cancelled", "error", err)
		}
		return res, cerr
	}
	var closed bool
	if err := flow.Call(ctx, &closed, flow.A.StillClosed, in.Family); err != nil {
		return Result{}, err
	}
	if !closed {
		return Result{Closed: activities.Closed{Reopened: true}}, nil
	}
	return stop(ctx, in.Family, flow.A.CloseClosedFamily)
}

// stop cancels the family's boundary workflow, then what closeAll (the
// CloseFamily or CloseClosedFamily activity) cancels. ctx is
// flow.ForFamily's.
func stop(ctx workflow.Context, family string, closeAll func(context.Context, activities.CloseFamilyRequest) (activities.Closed, error)) (Result, error) {
	var res Result
	var err error
	// The boundary workflow first: it reads the family before each step,
	// and a deleted one would fail it on the first read rather than end.
	if res.BoundaryCancelled, err = flow.CancelBoundary(ctx, family); err != nil {
		// Whatever else keeps it from being cancelled, it is not running
		// for this family any more; the rest still has to stop.
		workflow.GetLogger(ctx).Warn("boundary workflow not cancelled", "error", err)
	}
	err = flow.Call(ctx, &res.Closed, closeAll, activities.CloseFamilyRequest{
		Family: family, RequestID: flow.RequestID(ctx, "close"),
	})
	return res, err
}
