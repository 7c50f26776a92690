// Package dispatch turns the services' outbox events into Temporal calls:
// a scheduled intervention starts its workflow; reschedules, cancellations
// and outcomes become updates (a cancelled or deleted one also starts the
// workflow that releases what is still held for it); referral transitions, overdoses, safety
// screens and check-ins become signals, an overdose no boundary
// workflow hears of starts the workflow that alerts the counselor, and a
// deleted family starts the one that stops what still runs for it. Workflow ids are derived from
// resource names and update ids from outbox ids, so a redelivered event
// changes nothing twice.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"google.golang.org/protobuf/reflect/protoregistry"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/outbox"
	"github.com/handoff-health/handoff/services/telemetry"
	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/boundary"
	"github.com/handoff-health/handoff/workflows/cancelledholds"
	"github.com/handoff-health/handoff/workflows/contactwithdrawn"
	"github.com/handoff-health/handoff/workflows/familydeleted"
	"github.com/handoff-health/handoff/workflows/flow"
	"github.com/handoff-health/handoff/workflows/ids"
	"github.com/handoff-health/handoff/workflows/intervention"
	"github.com/handoff-health/handoff/workflows/matintake"
	"github.com/handoff-health/handoff/workflows/overdose"
	"github.com/handoff-health/handoff/workflows/treatmententered"
)

// Dispatcher delivers outbox events to Temporal.
type Dispatcher struct {
	Client client.Client
	Log    *slog.Logger
	// RetryFirst is how long a failed one-shot workflow waits before its
	// first rerun; zero is a minute.
	RetryFirst time.Duration
}

// oneShotRetry runs a one-shot workflow again when a run fails (a service
// out for longer than its activities retry, a token refused for as long):
// its event is acknowledged already, so nothing else would start it, and
// withdrawn consent, a deleted family or an overdose would go unanswered.
// Its requests carry ids made from the workflow id, so a rerun repeats
// nothing a failed run did. Reruns back off to hourly, for up to a week
// (oneShotTimeout, which bounds every run together). A run that ends on
// a refusal no retry can mend is not rerun: each one-shot workflow lifts
// it to a non-retryable failure (flow.Final).
func (d *Dispatcher) oneShotRetry() *temporal.RetryPolicy {
	first := d.RetryFirst
	if first == 0 {
		first = time.Minute
	}
	return &temporal.RetryPolicy{InitialInterval: first, BackoffCoefficient: 2, MaximumInterval: time.Hour}
}

const oneShotTimeout = 7 * 24 * time.Hour

// Deliver implements outbox.Relay's Deliver. Events no workflow waits for
// are delivered by doing nothing.
func (d *Dispatcher) Deliver(ctx context.Context, e outbox.Stored) error {
	msg, err := e.Message()
	if errors.Is(err, protoregistry.NotFound) {
		// A payload type this binary does not know: a newer release wrote
		// it and was rolled back (the relay leaves a newer release's
		// events to it for a while, see outbox.Generation). No workflow of this binary
		// waits for it, and failing would hold its family's later events
		// forever.
		d.Log.WarnContext(ctx, "outbox event of an unknown payload type passed over", "type", e.Type, "id", e.ID)
		return nil
	}
	if err != nil {
		return fmt.Errorf("dispatch: decode %s: %w", e.Type, err)
	}
	switch p := msg.(type) {
	case *interventionsv1.Intervention:
		return d.intervention(ctx, e, p)
	case *referralsv1.Referral:
		return d.referral(ctx, e, p)
	case *familiesv1.WarningSign:
		if e.Type == "handoff.families.v1.warning_sign.overdose" {
			return d.overdose(ctx, p)
		}
	case *interventionsv1.Reminder:
		if e.Type == "handoff.interventions.v1.reminder.failed" && p.GetOriginWorkflow() != "" {
			return d.signal(ctx, p.GetOriginWorkflow(), flow.SignalReminderFailed, flow.ReminderFailed{Reminder: p.GetName()})
		}
	case *familiesv1.Family:
		switch e.Type {
		case "handoff.families.v1.family.deleted":
			// One per family, ever: a redelivered event starts nothing.
			return d.startOnce(ctx, ids.FamilyDeleted(p.GetName()), familydeleted.Name, familydeleted.Input{Family: p.GetName()})
		case "handoff.families.v1.family.closed":
			// One per closing: a redelivered event starts nothing.
			return d.startOnce(ctx, ids.FamilyClosed(p.GetName(), e.ID), familydeleted.ClosedName, familydeleted.Input{Family: p.GetName()})
		case "handoff.families.v1.family.treatment_entered":
			// Staff recorded an entry made outside Handoff: the follow-up
			// ends as for a completed referral to treatment. One per
			// announcement: a redelivered event starts nothing.
			return d.startOnce(ctx, ids.TreatmentEnteredByFamily(p.GetName(), e.ID), treatmententered.Name,
				treatmententered.Input{Family: p.GetName()})
		case "handoff.families.v1.family.contact_withdrawn":
			// One per change: a redelivered event starts nothing.
			return d.startOnce(ctx, ids.ContactWithdrawn(p.GetName(), e.ID), contactwithdrawn.Name, contactwithdrawn.Input{Family: p.GetName()})
		}
	case *familiesv1.SafetyScreen:
		return d.signal(ctx, ids.Boundary(aip.Family(p.GetName())), boundary.SignalSafetyScreen, nil)
	}
	return nil
}

func (d *Dispatcher) intervention(ctx context.Context, e outbox.Stored, iv *interventionsv1.Intervention) error {
	id := ids.Intervention(iv.GetName())
	updateID := fmt.Sprintf("outbox-%s-%d", aip.Clinic(iv.GetName()), e.ID)
	switch e.Type {
	case "handoff.interventions.v1.intervention.scheduled":
		// Not rerun from the start on a failure: it lives for weeks and
		// keeps what it did in its own state.
		return d.start(ctx, id, intervention.Name, intervention.Input{Intervention: iv.GetName()}, false)
	case "handoff.interventions.v1.intervention.rescheduled":
		return d.update(ctx, id, updateID, intervention.UpdateReschedule, intervention.Reschedule{
			Start: iv.GetStartTime().AsTime(), Duration: iv.GetExpectedDuration().AsDuration(), TimeZone: iv.GetTimeZone()})
	case "handoff.interventions.v1.intervention.updated", "handoff.interventions.v1.intervention.details_updated":
		// A draft has no workflow yet; a scheduled one reads its new
		// participants, counselor and level.
		if iv.GetState() != interventionsv1.InterventionState_INTERVENTION_STATE_SCHEDULED {
			return nil
		}
		return d.update(ctx, id, updateID, intervention.UpdateReplan, intervention.Replan{})
	case "handoff.interventions.v1.intervention.cancelled":
		if err := d.update(ctx, id, updateID, intervention.UpdateCancel, intervention.Cancel{Reason: "cancelled"}); err != nil {
			return err
		}
		return d.releaseHolds(ctx, iv)
	case "handoff.interventions.v1.intervention.deleted":
		return d.releaseHolds(ctx, iv)
	case "handoff.interventions.v1.intervention.outcome_recorded":
		o := intervention.Outcome{Kind: strings.TrimPrefix(iv.GetOutcome().GetKind().String(), "OUTCOME_KIND_")}
		for _, s := range iv.GetOutcome().GetAcceptedServices() {
			o.AcceptedServices = append(o.AcceptedServices, strings.TrimPrefix(s.String(), "SERVICE_KIND_"))
		}
		if err := d.update(ctx, id, updateID, intervention.UpdateOutcome, o); err != nil {
			return err
		}
		// No treatment was accepted: no intake will take a place held for
		// the meeting (support services accepted are referred without
		// one), and the workflow gives back only the hold it took itself,
		// not one a counselor made by hand.
		if o.Kind == "ACCEPTED" || slices.ContainsFunc(o.AcceptedServices, func(s string) bool {
			return activities.IsMAT(s) || activities.IsCare(s)
		}) {
			return nil
		}
		return d.releaseHolds(ctx, iv)
	case "handoff.interventions.v1.intervention.check_in_recorded":
		cis := iv.GetCheckIns()
		if len(cis) == 0 {
			return nil
		}
		ci := cis[len(cis)-1]
		return d.signal(ctx, ids.Boundary(iv.GetFamily()), boundary.SignalCheckIn, boundary.CheckIn{
			Intervention: iv.GetName(), Number: ci.GetNumber(), WindowOfOpportunity: ci.GetWindowOfOpportunity(),
			NewWarningSigns: ci.GetNewWarningSigns()})
	}
	return nil
}

func (d *Dispatcher) referral(ctx context.Context, e outbox.Stored, r *referralsv1.Referral) error {
	switch e.Type {
	case "handoff.referrals.v1.referral.created", "handoff.referrals.v1.referral.updated",
		// A service after treatment entry, or its retraction: the intake
		// is long done.
		"handoff.referrals.v1.referral.follow_up_recorded", "handoff.referrals.v1.referral.follow_up_retracted":
		return nil
	}
	if r.GetIntervention() != "" {
		if err := d.signal(ctx, ids.MATIntake(r.GetIntervention()), matintake.SignalReferral, matintake.Transition{
			Referral: r.GetName(), State: activities.StateOf(r.GetState())}); err != nil {
			return err
		}
	}
	if e.Type == "handoff.referrals.v1.referral.completed" && enteredTreatment(r) {
		// One per referral, which completes once: a redelivered event
		// starts nothing.
		return d.startOnce(ctx, ids.TreatmentEntered(r.GetName()), treatmententered.Name,
			treatmententered.Input{Family: r.GetFamily(), Referral: r.GetName()})
	}
	return nil
}

// enteredTreatment reports whether a completed referral r says the loved
// one entered treatment: theirs, and to MAT, inpatient or outpatient care,
// not harm reduction, counseling or peer support (the kinds that count as
// treatment entry in the HEDIS initiation measure).
func enteredTreatment(r *referralsv1.Referral) bool {
	if r.GetSubject().GetKind() != referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE {
		return false
	}
	service := strings.TrimPrefix(r.GetServiceKind().String(), "SERVICE_KIND_")
	return activities.IsMAT(service) || activities.IsCare(service)
}

// releaseHolds starts the workflow that gives back what is still held for
// an intervention that will not take place, or took place and led to no
// treatment: a draft has no workflow of its own to do it, and a counselor
// may have held a place for it by hand.
func (d *Dispatcher) releaseHolds(ctx context.Context, iv *interventionsv1.Intervention) error {
	reason := "intervention cancelled"
	if iv.GetOutcome() != nil {
		reason = "intervention ended without a yes"
	}
	return d.startOnce(ctx, ids.CancelledHolds(iv.GetName()), cancelledholds.Name,
		cancelledholds.Input{Intervention: iv.GetName(), Family: iv.GetFamily(), Reason: reason})
}

// update sends an update and waits until the workflow accepted or rejected
// it. A rejection is final (the workflow already moved on) and a missing
// workflow has nothing to update: both count as delivered.
func (d *Dispatcher) update(ctx context.Context, workflowID, updateID, name string, arg any) error {
	h, err := d.Client.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
		WorkflowID: workflowID, UpdateID: updateID, UpdateName: name, Args: []any{arg},
		WaitForStage: client.WorkflowUpdateStageAccepted,
	})
	if isNotFound(err) {
		d.noWorkflow(ctx, workflowID, updateID, name)
		return nil
	}
	if err != nil {
		return failure("update "+name+" of", workflowID, err)
	}
	// The result is awaited a little only: acceptance is durable, and a
	// handler may wait long (on its workflow's first load, while a service
	// is down). Awaited to the event's deadline, it left the steps after
	// the update (the holds' release, the webhooks) no time, and the
	// event failed and came again, holding back its family's events.
	wctx, cancel := context.WithTimeout(ctx, resultWait(ctx))
	defer cancel()
	if err := h.Get(wctx, nil); err != nil {
		if wctx.Err() != nil {
			// Accepted is durable: the workflow will finish it.
			d.Log.Info("update accepted, its result not awaited", "workflow", ids.Ref(workflowID), "update", name)
			return nil
		}
		if unread(err) {
			// Temporal's frontend failed to answer (unavailable, too busy):
			// the update was accepted, and only its result went unread.
			d.Log.Warn("update accepted, its result not read", "workflow", ids.Ref(workflowID), "update", name, "error", telemetry.RedactError(err))
			return nil
		}
		// The change is committed and will not be sent again: a workflow
		// that refused it now disagrees with the service, which an
		// operator must see.
		d.Log.Error("workflow rejected update", "workflow", ids.Ref(workflowID), "update", name, "error", telemetry.RedactError(err))
	}
	return nil
}

// unread reports whether err is Temporal's frontend failing to answer for
// a while, not an answer about the update: another service error (a run
// reset or deleted since, a namespace gone) may mean the change never
// reached the workflow, which an operator must see.
func unread(err error) bool {
	var (
		down     *serviceerror.Unavailable
		busy     *serviceerror.ResourceExhausted
		late     *serviceerror.DeadlineExceeded
		canceled *serviceerror.Canceled
	)
	return errors.As(err, &down) || errors.As(err, &busy) || errors.As(err, &late) || errors.As(err, &canceled)
}

// maxResultWait bounds how long an update's result is awaited.
const maxResultWait = 5 * time.Second

// resultWait is how long to await an update's result: at most
// maxResultWait, and at most half of what is left before ctx's deadline.
func resultWait(ctx context.Context) time.Duration {
	wait := maxResultWait
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl)/2)
	}
	return wait
}

// noWorkflow logs an update that found no running workflow. A workflow
// that completed was done with the change (a redelivery); one that failed,
// was terminated or timed out ended before the change reached it, and its
// change (a yes to treatment, a cancellation) is lost unless an operator
// carries it on: that is an error to alert on. The update id,
// outbox-<clinic>-<event>, leads the operator to the outbox event, and so
// to the meeting: the log names the workflow by its ref only.
func (d *Dispatcher) noWorkflow(ctx context.Context, workflowID, updateID, name string) {
	desc, err := d.Client.DescribeWorkflowExecution(ctx, workflowID, "")
	if err != nil && !isNotFound(err) {
		// Whether a change was lost is not known: say so where it is seen.
		d.Log.Warn("no workflow to update, and its status could not be read", "workflow", ids.Ref(workflowID), "update", name, "update_id", updateID, "error", telemetry.RedactError(err))
		return
	}
	if err == nil {
		st := desc.GetWorkflowExecutionInfo().GetStatus()
		if st != enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED && st != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING {
			d.Log.Error("workflow ended before a change reached it: an operator must carry the change on",
				"workflow", ids.Ref(workflowID), "update", name, "update_id", updateID, "status", st.String())
			return
		}
	}
	d.Log.Info("no workflow to update", "workflow", ids.Ref(workflowID), "update", name)
}

// overdose tells the family's boundary workflow of an overdose; without one
// running, it starts the workflow that makes sure the counselor hears of
// it.
func (d *Dispatcher) overdose(ctx context.Context, w *familiesv1.WarningSign) error {
	family := aip.Family(w.GetName())
	if family == "" {
		// Nothing to signal or start for: the families service names
		// every warning sign under its family.
		d.Log.Warn("overdose event without a family's warning sign", "resource", w.GetName())
		return nil
	}
	// A redelivered event whose first delivery started the overdose
	// workflow belongs to it: that workflow hands the overdose to a
	// boundary workflow or answers it, and a signal now to a boundary
	// workflow started since would answer it a second time.
	_, err := d.Client.DescribeWorkflowExecution(ctx, ids.Overdose(w.GetName()), "")
	if err == nil {
		return nil
	}
	if !isNotFound(err) {
		return failure("look up", ids.Overdose(w.GetName()), err)
	}
	running, err := d.signalRunning(ctx, ids.Boundary(family), boundary.SignalOverdose, boundary.Overdose{WarningSign: w.GetName()})
	if err != nil || running {
		return err
	}
	return d.startOnce(ctx, ids.Overdose(w.GetName()), overdose.Name, overdose.Input{
		Family: family, WarningSign: w.GetName(), Recorded: w.GetCreateTime().AsTime()})
}

// startOnce starts a one-shot workflow whose id names what it is for, run
// again if a run fails (oneShotRetry).
func (d *Dispatcher) startOnce(ctx context.Context, workflowID, name string, arg any) error {
	return d.start(ctx, workflowID, name, arg, true)
}

// start starts a workflow whose id names what it is for. One per id, ever:
// a redelivered event must not start a second one.
func (d *Dispatcher) start(ctx context.Context, workflowID, name string, arg any, rerun bool) error {
	opts := client.StartWorkflowOptions{
		ID: workflowID, TaskQueue: flow.TaskQueue,
		WorkflowIDReusePolicy:    enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE,
		WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_USE_EXISTING,
	}
	if rerun {
		opts.RetryPolicy, opts.WorkflowExecutionTimeout = d.oneShotRetry(), oneShotTimeout
	}
	_, err := d.Client.ExecuteWorkflow(ctx, opts, name, arg)
	var started *serviceerror.WorkflowExecutionAlreadyStarted
	if errors.As(err, &started) {
		return nil
	}
	if err != nil {
		return failure("start", workflowID, err)
	}
	return nil
}

// signal signals a running workflow. A workflow that is not running (for
// example a family without a boundary workflow) needs no signal.
func (d *Dispatcher) signal(ctx context.Context, workflowID, name string, arg any) error {
	_, err := d.signalRunning(ctx, workflowID, name, arg)
	return err
}

// signalRunning signals a workflow and reports whether it was running.
func (d *Dispatcher) signalRunning(ctx context.Context, workflowID, name string, arg any) (bool, error) {
	err := d.Client.SignalWorkflow(ctx, workflowID, "", name, arg)
	if isNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, failure("signal "+name+" to", workflowID, err)
	}
	return true, nil
}

func isNotFound(err error) bool {
	var nf *serviceerror.NotFound
	return errors.As(err, &nf)
}

// failed is an error of Temporal's about a workflow, as the relay logs it:
// the workflow named by its ref, and the error by its kinds (Temporal's
// messages name the workflow id, which names a family and what befell
// it). errors.Is and As still reach the error.
type failed struct {
	msg string
	err error
}

func (f failed) Error() string { return f.msg }
func (f failed) Unwrap() error { return f.err }

// failure is err from doing what to the workflow workflowID.
func failure(what, workflowID string, err error) error {
	return failed{msg: fmt.Sprintf("dispatch: %s %s: %s", what, ids.Ref(workflowID), telemetry.RedactError(err)), err: err}
}
