// Package treatmententered is the workflow that ends a family's boundary
// follow-up once the loved one has entered treatment by any road: a
// referral to MAT, inpatient or outpatient treatment that the program
// reports completed, or an entry staff recorded on the family. A yes at a
// meeting stops the follow-up itself (the intervention workflow), but the
// person may also enter treatment through a referral a counselor made at
// a window of opportunity, one made for a partial yes, or a program
// outside Handoff: left running, the follow-up went on checking in with
// the family about boundaries and proposing a firmer meeting for someone
// already in treatment.
package treatmententered

import (
	"go.temporal.io/sdk/workflow"

	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/boundary"
	"github.com/handoff-health/handoff/workflows/flow"
	"github.com/handoff-health/handoff/workflows/ids"
)

// Name is the workflow type's registered name.
const Name = "TreatmentEntered"

// Input starts the workflow.
type Input struct {
	// Family is `clinics/{clinic}/families/{family}`.
	Family string
	// Referral is the completed referral that says the loved one entered
	// treatment; none when staff recorded the entry on the family.
	Referral string
}

// Result says what the workflow stopped.
type Result struct {
	// Stopped is whether a boundary follow-up was running and was asked to
	// stop.
	Stopped bool
	// Withdrawn is how many draft meetings of the family were cancelled.
	Withdrawn int
}

// Workflow asks the family's boundary workflow, if one runs, to stop, and
// cancels the reminders it made and has not sent (a run begun before
// boundary-tidy-on-cancel leaves them when cancelled, and one held back for
// quiet hours would still go out in the morning); it records the entry on
// the family and withdraws the family's draft meetings.
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
	// An entry staff recorded is read again, on every run: a run retried
	// for days (a service down), or started from a backlog, after staff
	// set the family back to ACTIVE would otherwise end the follow-up
	// begun since and record the entry again. A referral's completion
	// cannot be undone, and its run records the entry itself.
	if flow.Version(ctx, versionStillEngaged, 1) >= 1 && in.Referral == "" {
		var engaged bool
		if err := flow.Call(ctx, &engaged, flow.A.StillEngaged, in.Family); err != nil {
			return res, err
		}
		if !engaged {
			return res, nil
		}
	}
	if res.Stopped, err = flow.CancelBoundary(ctx, in.Family); err != nil {
		// The run is retried (the dispatcher starts it with retries): the
		// follow-up must not go on for want of one cancel.
		return res, err
	}
	if err := flow.Call(ctx, nil, flow.A.CancelReminders, activities.CancelRemindersRequest{
		Clinic: aip.Clinic(in.Family), Origin: ids.Boundary(in.Family), Kinds: boundary.OwnReminderKinds(),
		Reason: "the loved one entered treatment", RequestID: flow.RequestID(ctx, "cancel-boundary-reminders"),
	}); err != nil {
		return res, err
	}
	if flow.Version(ctx, versionRecordEntry, 1) < 1 {
		return res, nil
	}
	// The family's record says so too: counselors' lists and the outcome
	// (engaged or not) read it.
	if err := flow.Call(ctx, nil, flow.A.RecordTreatmentEntry, activities.TreatmentEntryRequest{
		Family: in.Family, RequestID: flow.RequestID(ctx, "record-entry"),
	}); err != nil {
		return res, err
	}
	if flow.Version(ctx, versionWithdrawDrafts, 1) < 1 {
		return res, nil
	}
	// A firmer meeting the follow-up drafted is moot, as after a yes at a
	// meeting: left, it would still ask the counselor to plan it.
	reason := "The loved one entered treatment."
	if in.Referral != "" {
		reason = "The loved one entered treatment (" + in.Referral + ")."
	}
	err = flow.Call(ctx, &res.Withdrawn, flow.A.WithdrawDrafts, activities.WithdrawDraftsRequest{
		Family: in.Family, Reason: reason,
		RequestID: flow.RequestID(ctx, "withdraw-drafts"),
	})
	return res, err
}

// versionRecordEntry guards recording the entry on the family; the first
// runs only ended the follow-up.
const versionRecordEntry = "treatment-entered-records-entry"

// versionWithdrawDrafts guards withdrawing the family's draft meetings;
// runs before it left them.
const versionWithdrawDrafts = "treatment-entered-withdraws-drafts"

// versionStillEngaged guards reading, for an entry staff recorded, that
// the family is still in treatment; runs before it ended the follow-up
// whatever became of the entry.
const versionStillEngaged = "treatment-entered-still-engaged"
