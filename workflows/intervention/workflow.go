// Package intervention is the workflow that carries one scheduled
// intervention to its outcome: it holds a treatment slot ahead of the
// meeting, sends reminders placed in each recipient's time zone and out of
// their quiet hours, takes reschedules, cancellation and the outcome as
// updates, chases a missing outcome, and then hands over to MAT intake or
// the boundary path.
package intervention

import (
	"errors"
	"fmt"
	"slices"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/boundary"
	"github.com/handoff-health/handoff/workflows/flow"
	"github.com/handoff-health/handoff/workflows/ids"
	"github.com/handoff-health/handoff/workflows/matintake"
	"github.com/handoff-health/handoff/workflows/schedule"
)

// Names by which the outside reaches the workflow.
const (
	// Name is the workflow type's registered name.
	Name             = "Intervention"
	UpdateReschedule = "reschedule"
	UpdateCancel     = "cancel"
	UpdateOutcome    = "outcome"
	UpdateReplan     = "replan"
	QueryStatus      = "status"
)

// Input starts the workflow: the intervention's name, nothing more. The
// workflow reads the rest through the services.
type Input struct {
	Intervention string
}

// Reschedule moves the meeting.
type Reschedule struct {
	Start    time.Time
	Duration time.Duration
	// TimeZone is the meeting's new IANA zone, if it changed.
	TimeZone string
}

// Replan tells the workflow that the intervention changed other than in
// time (participants, counselor, level): it reads the intervention again.
// The time changes only through Reschedule.
type Replan struct{}

// Cancel stops the workflow.
type Cancel struct {
	Reason string
}

// Outcome is how the meeting went: an OutcomeKind without its prefix
// (ACCEPTED, PARTIALLY_ACCEPTED, DECLINED, DID_NOT_ATTEND, POSTPONED) and,
// for a partial acceptance, the ServiceKinds accepted.
type Outcome struct {
	Kind             string
	AcceptedServices []string
}

// Status answers QueryStatus.
type Status struct {
	Step         string
	Start        time.Time
	NextReminder time.Time
	Hold         string
	Outcome      string
}

// Result is how the workflow ended.
type Result struct {
	Outcome string
	// Child is the workflow that took over, if any, and how it ended.
	Child       string
	ChildResult string
}

// Steps reported by QueryStatus.
const (
	StepPreparing      = "preparing"
	StepAwaitOutcome   = "awaiting_outcome"
	StepFollowingUp    = "following_up"
	StepDone           = "done"
	StepCancelled      = "cancelled"
	maxRemindersPerRun = 200
)

type wf struct {
	in       Input
	plan     activities.Plan
	settings activities.Settings

	step         string
	reminders    []schedule.Planned
	sent         int
	armedAt      time.Time         // when the reminder plan was made
	generation   int               // bumps on every reschedule, keeps request ids apart
	upcoming     map[string]int    // meeting reminder -> the generation it announced
	sentTo       map[string]string // meeting reminder -> whom (recipientKey)
	invited      map[string]bool   // whom (recipientKey) a meeting reminder was made for
	notices      map[string]bool   // notices made after the outcome or a cancel, about what follows it
	chasers      map[string]int    // outcome overdue and escalation notices -> the generation they chased
	lastNotice   time.Time         // when the last of them was made
	replans      int
	resends      flow.Resends
	hold         activities.HoldResult
	holdExpiry   time.Time
	nextHoldTry  time.Time
	holdNotified bool
	// holdNotices counts the moves after which the counselor may be told
	// again that no place is held (versionHoldNoticeAfterMove);
	// holdNoticeOf maps each such notice made to the count it was made
	// at: one of an earlier count is not sent again (a newer one says it).
	holdNotices  int
	holdNoticeOf map[string]int
	holdUnsure   bool // a hold try ended without an answer; see releaseHold
	overdueSent  bool
	escalated    bool
	outcome      *Outcome
	cancel       *Cancel
	rearm        bool
	moved        bool // a reschedule to rearm for moved the start or zone; see stretched
	replan       bool
	// refusedAt, when set, is the time of a meeting reminder the service
	// refused as to someone no longer taking part: the plan is stale, and
	// the replan it started makes whatever fell due from then (see due).
	refusedAt  time.Time
	refused    map[string]bool // purposes refused so, each replanned for once
	loaded     bool            // the plan is read; updates wait for it
	handedOver bool            // the MAT intake was started with the hold
	// planStale: a changed plan could not be read (go-on-past-failed-
	// replan); the follow-up reads it again before it names a counselor.
	planStale bool
}

// versionCleanUpOnAbandon guards the cleanup after the workflow is
// cancelled through Temporal or fails before the outcome.
const versionCleanUpOnAbandon = "clean-up-on-abandon"

// versionHoldAfterReminders guards taking the hold after the reminders
// that are due with it, within holdBudget: before, a referrals service
// that kept failing held the loop in the hold's retries for up to a day,
// and reminders, cancellations and outcomes waited behind it.
const versionHoldAfterReminders = "hold-after-reminders"

// versionRejoinEnded guards starting the family's boundary workflow again
// when the one that ran when this refusal came ended before it could be
// told (the restart signal found no workflow): before, the refusal's
// workflow failed there and the family got no boundary follow-up for it.
const versionRejoinEnded = "start-boundary-that-ended-while-joining"

// versionNoResendAfterStart guards calling a meeting reminder stale once
// the meeting has begun: before it, a failed reminder could go out again
// after the meeting started.
const versionNoResendAfterStart = "no-resend-after-start"

// outcomeSkew is how far the Temporal server's clock may run behind the
// interventions service's when an outcome recorded just after the start
// arrives.
const outcomeSkew = 5 * time.Minute

// holdBudget bounds one try at holding a slot, its retries included; a try
// that fails for any reason but capacity is made again after
// holdOutageRetry.
const (
	holdBudget      = 5 * time.Minute
	holdOutageRetry = 15 * time.Minute
)

// Workflow is the intervention workflow.
func Workflow(ctx workflow.Context, in Input) (Result, error) {
	ctx = flow.BeginEpoch(ctx)
	w := &wf{in: in, step: StepPreparing, upcoming: map[string]int{}, sentTo: map[string]string{}, notices: map[string]bool{},
		chasers: map[string]int{}, refused: map[string]bool{}, invited: map[string]bool{}, holdNoticeOf: map[string]int{}}
	if err := w.setup(ctx); err != nil {
		return Result{}, err
	}
	res, err := w.run(ctx)
	if err != nil {
		w.abandoned(ctx, err)
	}
	return res, err
}

// abandoned releases the hold and cancels pending reminders when the
// workflow ends with an error before the outcome: cancelled through
// Temporal (an operator, not the cancel update) or failed. Otherwise the
// slot stays held until its expiry, days later, and the family keeps
// getting reminders of a meeting nobody follows. After the outcome the
// hold belongs to the intake or was released, and reminders were
// cancelled. Cleanup failures are logged; the workflow's own error stands.
func (w *wf) abandoned(ctx workflow.Context, cause error) {
	if w.loaded && w.step == StepFollowingUp {
		w.releaseCutOff(ctx, cause)
		return
	}
	if !w.loaded || w.step == StepDone || w.step == StepCancelled {
		return
	}
	dctx, stop, ok := tidyContext(ctx, versionCleanUpOnAbandon)
	defer stop()
	if !ok {
		return
	}
	log := workflow.GetLogger(ctx)
	reason := "intervention workflow failed"
	if temporal.IsCanceledError(cause) {
		reason = "intervention workflow cancelled"
	}
	release := func() {
		if err := w.releaseHold(dctx, dctx, reason); err != nil {
			log.Warn("releasing the hold after the workflow ended failed", "error", err)
		}
	}
	// As the cancel update does (versionStopFirst): the reminders first,
	// since the release may retry for a day while they go out.
	first := flow.Version(dctx, versionAbandonStopFirst, 1) >= 1
	if !first {
		release()
	}
	if err := flow.Call(dctx, nil, flow.A.CancelReminders, activities.CancelRemindersRequest{
		Clinic: w.plan.Clinic, Related: w.in.Intervention, Reason: reason,
		RequestID: flow.RequestID(dctx, "cancel-reminders|abandoned"),
	}); err != nil {
		log.Warn("cancelling reminders after the workflow ended failed", "error", err)
	}
	if first {
		release()
	}
}

// versionAbandonStopFirst guards cancelling the reminders before the hold
// is released when the workflow is cancelled through Temporal or fails.
const versionAbandonStopFirst = "abandon-stops-reminders-first"

// versionReleaseCutOff guards giving the hold back when a cancellation
// through Temporal cut off its release after a refusal or a postponement:
// before, it stayed held until it lapsed.
const versionReleaseCutOff = "release-cut-off-by-cancel"

// releaseCutOff gives back, on a context the cancellation does not reach,
// a hold still held after the outcome when the workflow is cancelled: its
// release was cut off, or failed earlier and was gone past
// (pastFailedRelease), when trying once more under the same request id
// does no harm. A hold handed to the intake is the intake's. Asked only
// then, so other runs record nothing.
func (w *wf) releaseCutOff(ctx workflow.Context, cause error) {
	if w.handedOver || (w.hold.Hold == "" && !w.holdUnsure) || !temporal.IsCanceledError(cause) {
		return
	}
	dctx, stop, ok := tidyContext(ctx, versionReleaseCutOff)
	defer stop()
	if !ok {
		return
	}
	if err := w.releaseHold(dctx, dctx, "intervention workflow cancelled"); err != nil {
		workflow.GetLogger(ctx).Warn("releasing the hold after the workflow was cancelled failed; it lapses at its expiry", "error", err)
	}
}

// tidyContext is a context for tidying up as the workflow ends, which its
// cancellation does not reach, with the activity options; ok is false
// when the run began before changeID, which then does nothing.
func tidyContext(ctx workflow.Context, changeID string) (dctx workflow.Context, stop func(), ok bool) {
	dctx, stop = workflow.NewDisconnectedContext(ctx)
	if flow.Version(dctx, changeID, 1) < 1 {
		return dctx, stop, false
	}
	return flow.WithActivityOptions(dctx), stop, true
}

func (w *wf) setup(ctx workflow.Context) error {
	if in := w.in; in.Intervention == "" {
		return temporal.NewNonRetryableApplicationError("intervention name is required", "INVALID_ARGUMENT", nil)
	}
	if err := workflow.SetQueryHandler(ctx, QueryStatus, func() (Status, error) {
		s := Status{Step: w.step, Start: w.plan.Start, Hold: w.hold.Hold}
		if w.sent < len(w.reminders) {
			s.NextReminder = w.reminders[w.sent].At
		}
		if w.outcome != nil {
			s.Outcome = w.outcome.Kind
		}
		return s, nil
	}); err != nil {
		return err
	}
	open := func() error {
		if w.outcome != nil {
			return errors.New("the outcome is already recorded")
		}
		if w.cancel != nil {
			return errors.New("the intervention is cancelled")
		}
		return nil
	}
	// Handlers wait for the plan, so that reading it cannot overwrite a
	// change they made.
	loaded := func(ctx workflow.Context) error { return workflow.Await(ctx, func() bool { return w.loaded }) }
	if err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateReschedule, func(ctx workflow.Context, r Reschedule) error {
		if err := loaded(ctx); err != nil {
			return err
		}
		// Only the length changed (a meeting expected to run longer): the
		// reminders name the same time in the same zone, and arming them
		// again would send each recipient one more at once.
		lengthOnly := r.Start.Equal(w.plan.Start) && (r.TimeZone == "" || r.TimeZone == w.plan.Counselor.TimeZone)
		w.plan.Start = r.Start
		if r.Duration > 0 {
			w.plan.Duration = r.Duration
		}
		if r.TimeZone != "" {
			w.plan.Counselor.TimeZone = r.TimeZone
		}
		// The version is asked in the run loop: this handler runs on the
		// SDK's root context, which does not carry the run's epoch.
		w.moved = w.moved || !lengthOnly
		w.rearm = true
		return nil
	}, workflow.UpdateHandlerOptions{Validator: func(ctx workflow.Context, r Reschedule) error {
		// The service already checked the new time when it accepted the
		// reschedule; the outbox may deliver it late, so the workflow takes
		// the service's word rather than refuse a time now past.
		if err := open(); err != nil {
			return err
		}
		if r.Start.IsZero() {
			return errors.New("a reschedule needs a start time")
		}
		return nil
	}}); err != nil {
		return err
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateCancel, func(ctx workflow.Context, c Cancel) error {
		if err := loaded(ctx); err != nil {
			return err
		}
		w.cancel = &c
		return nil
	}, workflow.UpdateHandlerOptions{Validator: func(ctx workflow.Context, c Cancel) error { return open() }}); err != nil {
		return err
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateReplan, func(ctx workflow.Context, _ Replan) error {
		if err := loaded(ctx); err != nil {
			return err
		}
		w.replan = true
		return nil
	}, workflow.UpdateHandlerOptions{Validator: func(ctx workflow.Context, _ Replan) error { return open() }}); err != nil {
		return err
	}
	return workflow.SetUpdateHandlerWithOptions(ctx, UpdateOutcome, func(ctx workflow.Context, o Outcome) error {
		if err := loaded(ctx); err != nil {
			return err
		}
		w.outcome = &o
		return nil
	}, workflow.UpdateHandlerOptions{Validator: func(ctx workflow.Context, o Outcome) error {
		if err := open(); err != nil {
			return err
		}
		switch o.Kind {
		case "ACCEPTED", "PARTIALLY_ACCEPTED", "DECLINED", "DID_NOT_ATTEND", "POSTPONED":
		default:
			return fmt.Errorf("unknown outcome %q", o.Kind)
		}
		// The service checked the start against its own clock before it
		// committed the outcome; a rejection here is lost for good (the
		// intervention is COMPLETED, the workflow would wait on). So the
		// workflow's clock only refuses what no clock skew explains.
		if !w.plan.Start.IsZero() && workflow.Now(ctx).Before(w.plan.Start.Add(-outcomeSkew)) {
			return errors.New("the outcome cannot be recorded before the meeting starts")
		}
		return nil
	}})
}

func (w *wf) run(ctx workflow.Context) (Result, error) {
	ctx = flow.WithActivityOptions(ctx)
	if err := flow.Call(ctx, &w.plan, flow.A.LoadPlan, w.in.Intervention); err != nil {
		return Result{}, err
	}
	w.loaded = true
	settings, err := flow.Settings(ctx, w.plan.Clinic)
	if err != nil {
		return Result{}, err
	}
	w.settings = settings
	flow.RetryFailedReminders(ctx, settings, &w.resends, func(_ workflow.Context, first string) bool { return w.staleReminder(ctx, first) })
	if err := w.arm(ctx); err != nil {
		return Result{}, err
	}
	for w.outcome == nil && w.cancel == nil {
		if w.replan {
			if err := w.replanned(ctx); err != nil {
				return Result{}, err
			}
		}
		if w.rearm {
			w.followMeetingZone(ctx)
			// Taken before either blocks: a reschedule arriving meanwhile
			// sets its own for the next turn.
			moved := w.moved
			w.moved = false
			if !moved && flow.Version(ctx, versionLengthKeepsReminders, 1) >= 1 {
				if err := w.stretched(ctx); err != nil {
					return Result{}, err
				}
			} else if err := w.rescheduled(ctx); err != nil {
				return Result{}, err
			}
		}
		next, ok := w.nextDeadline(workflow.Now(ctx))
		changed := func() bool { return w.rearm || w.replan || w.outcome != nil || w.cancel != nil }
		if ok {
			if d := next.Sub(workflow.Now(ctx)); d > 0 {
				if _, err := workflow.AwaitWithTimeout(ctx, d, changed); err != nil {
					return Result{}, err
				}
			}
		} else if err := workflow.Await(ctx, changed); err != nil {
			return Result{}, err
		}
		if w.outcome != nil || w.cancel != nil || w.rearm || w.replan {
			continue
		}
		if err := w.due(ctx); err != nil {
			return Result{}, err
		}
	}
	if w.cancel != nil {
		return w.cancelled(ctx)
	}
	return w.followUp(ctx)
}

// arm plans the reminders for the current start time.
func (w *wf) arm(ctx workflow.Context) error {
	now := workflow.Now(ctx)
	plan, err := w.remindersFrom(ctx, now)
	if err != nil {
		return err
	}
	w.reminders, w.sent, w.armedAt = plan, 0, now
	w.overdueSent, w.escalated = false, false
	// A move after the outcome fell overdue makes the meeting one to
	// prepare again (the query says so; it adds no command).
	w.step = StepPreparing
	if w.hold.Hold == "" {
		w.nextHoldTry = w.plan.Start.Add(-w.settings.HoldLead)
	}
	return nil
}

// people are the counselor and the participants of the current plan.
func (w *wf) people() []activities.Person {
	return append([]activities.Person{w.plan.Counselor}, w.plan.Participants...)
}

// recipientKeys names the people of the current plan.
func (w *wf) recipientKeys() []string {
	var out []string
	for _, p := range w.people() {
		out = append(out, recipientKey(p.Kind, p.ID))
	}
	return out
}

func recipientKey(kind, id string) string { return kind + "|" + id }

// remindersFrom places the reminders of the plan's recipients as a plan
// made at armedAt would.
func (w *wf) remindersFrom(ctx workflow.Context, armedAt time.Time) ([]schedule.Planned, error) {
	recipients := []schedule.Recipient{w.plan.Counselor.Recipient()}
	for _, p := range w.plan.Participants {
		recipients = append(recipients, p.Recipient())
	}
	plan := schedule.Plan(w.plan.Start, armedAt, w.settings.ReminderOffsets, recipients)
	if awake := schedule.PlanAwake(w.plan.Start, armedAt, w.settings.ReminderOffsets, recipients); len(awake) != len(plan) &&
		flow.Version(ctx, versionLateReminderAwake, 1) >= 1 {
		plan = awake
	}
	if len(plan) > maxRemindersPerRun {
		plan = plan[:maxRemindersPerRun]
	}
	return plan, nil
}

// replanned reads the intervention again after a change of participants,
// counselor or level, so that reminders reach whoever takes part now and
// the intake or boundary path gets the current counselor and level. The
// meeting's time stays the workflow's own: it changes only through the
// reschedule update, which may still be on its way. Reminders are placed
// as when the meeting was armed, and those due no later than the last one
// sent count as sent: a removed participant gets no more, a new one those
// still ahead, one already sent is not sent twice (its request id is
// unchanged), and one that fell due in this same task but was not sent yet
// still goes.
func (w *wf) replanned(ctx workflow.Context) error {
	w.replan = false
	var p activities.Plan
	if err := flow.Call(ctx, &p, flow.A.LoadPlan, w.in.Intervention); err != nil {
		if !flow.GoOnPast(ctx, err, versionPastFailedReplan, "reading the changed plan failed; the reminders follow the plan read before") {
			return err
		}
		// The service refuses a meeting reminder to someone no longer
		// taking part (and that refusal reads the plan again); the
		// follow-up, which names the counselor and level, reads it again
		// first. A refusal's time is spent: a later replan counts from
		// the last reminder sent.
		w.planStale, w.refusedAt = true, time.Time{}
		return nil
	}
	w.planStale = false
	p.Start, p.Duration, p.Counselor.TimeZone = w.plan.Start, w.plan.Duration, w.plan.Counselor.TimeZone
	before := w.people()
	w.plan = p
	w.followMeetingZone(ctx)
	// Meeting reminders already made for people no longer taking part (one
	// deferred to the end of their quiet hours, or not delivered yet) are
	// cancelled; a counselor handing the family over keeps the rest (an
	// overdue outcome is still theirs to record).
	var gone []activities.Person
	now := w.recipientKeys()
	for _, q := range before {
		if !slices.Contains(now, recipientKey(q.Kind, q.ID)) {
			gone = append(gone, q)
		}
	}
	if len(gone) > 0 {
		w.replans++
		if err := flow.Call(ctx, nil, flow.A.CancelReminders, activities.CancelRemindersRequest{
			Clinic: w.plan.Clinic, Related: w.in.Intervention, Reason: "no longer taking part", Only: gone, Kind: "INTERVENTION_UPCOMING",
			RequestID: flow.RequestID(ctx, fmt.Sprintf("cancel-reminders|replan|%d", w.replans)),
		}); err != nil && !flow.GoOnPast(ctx, err, versionPastFailedReplan, "cancelling the reminders of people no longer taking part failed; those already made may still go out") {
			return err
		}
	}
	plan, err := w.remindersFrom(ctx, w.armedAt)
	if err != nil {
		return err
	}
	sent := 0
	switch now := workflow.Now(ctx); {
	case !now.Before(w.plan.Start):
		// The meeting has begun: nobody is reminded of it any more.
		sent = len(plan)
	case !w.refusedAt.IsZero():
		// A refused reminder's replan: what fell due before it was made
		// for whoever took part then; from its time on, for the new plan.
		for sent < len(plan) && plan[sent].At.Before(w.refusedAt) {
			sent++
		}
	case w.sent > 0:
		last := w.reminders[w.sent-1].At
		for sent < len(plan) && !plan[sent].At.After(last) {
			sent++
		}
	}
	w.reminders, w.sent, w.refusedAt = plan, sent, time.Time{}
	return nil
}

// versionLateReminderAwake guards leaving out a late meeting reminder
// that would wait for the end of its recipient's quiet hours until their
// next one (schedule.PlanAwake): before, a meeting booked at 07:00 for
// 09:00 reached someone quiet until 08:00 twice at 08:00. Asked only when
// a plan leaves one out.
const versionLateReminderAwake = "late-reminder-awake"

// versionPastFailedReplan guards going on when reading the changed plan,
// or cancelling the meeting reminders of people it no longer names,
// failed for good: before, the failure ended the workflow, and the
// meeting's outcome, recorded later, found no workflow to start the
// intake or the boundary follow-up. Asked only on such a failure.
const versionPastFailedReplan = "go-on-past-failed-replan"

// versionRefusalReplans guards reading the plan again when the service
// refuses a meeting reminder as to someone no longer taking part: before,
// the refusal counted as sent, and the new counselor or participant never
// got the reminder due at that moment.
const versionRefusalReplans = "refusal-replans"

// rescheduled re-arms every timer for the new time. Reminders already
// created for the old time are cancelled; a hold that would lapse before the
// new meeting ends is released and taken again at the new hold time.
func (w *wf) rescheduled(ctx workflow.Context) error {
	w.rearm = false
	w.generation++
	if err := flow.Call(ctx, nil, flow.A.CancelReminders, activities.CancelRemindersRequest{
		Clinic: w.plan.Clinic, Related: w.in.Intervention, Reason: "rescheduled",
		RequestID: flow.RequestID(ctx, fmt.Sprintf("cancel-reminders|%d", w.generation)),
	}); err != nil && !flow.GoOnPast(ctx, err, versionPastFailedRescheduleCancel,
		"cancelling the old time's reminders failed; the service cancelled them as it moved the meeting") {
		return err
	}
	if err := w.releaseOutlived(ctx, "rescheduled past the hold"); err != nil {
		return err
	}
	if w.holdNotified && w.hold.Hold == "" && flow.Version(ctx, versionHoldNoticeAfterMove, 1) >= 1 {
		// The move cancelled the meeting's reminders, this notice among
		// them if it had yet to go out: the next try that finds no place
		// tells the counselor again, under a request id of its own.
		w.holdNotified = false
		w.holdNotices++
	}
	return w.arm(ctx)
}

// versionHoldNoticeAfterMove guards telling the counselor again, after a
// move, that no program could hold a place. Before, the notice was sent
// once a run, and a move before it was delivered cancelled it for good.
const versionHoldNoticeAfterMove = "hold-notice-after-move"

// followMeetingZone gives the participants who gave no zone of their own
// (EventZone) the meeting's zone as the workflow knows it: a reschedule to
// another zone moves it, and a replan's read may be ahead of a reschedule
// not yet heard. Asked only when one of them is in another zone, so most
// runs record nothing.
func (w *wf) followMeetingZone(ctx workflow.Context) {
	zone := w.plan.Counselor.TimeZone
	off := slices.ContainsFunc(w.plan.Participants, func(p activities.Person) bool { return p.EventZone && p.TimeZone != zone })
	if zone == "" || !off || flow.Version(ctx, versionEventZoneMoves, 1) < 1 {
		return
	}
	for i := range w.plan.Participants {
		if w.plan.Participants[i].EventZone {
			w.plan.Participants[i].TimeZone = zone
		}
	}
}

// versionEventZoneMoves guards moving the zone of those who gave none
// with the meeting's. It changes where their reminders fall: a worker of
// the release before, which kept the zone read first, must not replay a
// run that moved it.
const versionEventZoneMoves = "event-zone-moves"

// versionPastFailedRescheduleCancel guards going on when cancelling the
// old time's reminders after a reschedule failed for good. The service
// cancelled them itself, in the transaction that moved the meeting: this
// is a second sweep. Before, the failure ended the workflow, and the
// outcome found none to follow it up. Asked only on that failure.
const versionPastFailedRescheduleCancel = "go-on-past-failed-reschedule-cancel"

// versionLengthKeepsReminders guards taking a reschedule that changes
// only the meeting's length (same start, same zone) without cancelling
// and arming the reminders again: before, every recipient got one more
// reminder at once, for a time that had not moved.
const versionLengthKeepsReminders = "length-keeps-reminders"

// stretched takes a new length of the meeting: the reminders stand, and a
// hold that would lapse before the new end is released and taken again,
// at the hold time (at once if that has passed). Once the meeting has
// begun no hold is taken any more, so the one held is kept: it serves a
// yes until it lapses.
func (w *wf) stretched(ctx workflow.Context) error {
	w.rearm = false
	if !workflow.Now(ctx).Before(w.plan.Start) {
		return nil
	}
	held := w.hold.Hold != ""
	if err := w.releaseOutlived(ctx, "lengthened past the hold"); err != nil {
		return err
	}
	if held && w.hold.Hold == "" {
		w.nextHoldTry = w.plan.Start.Add(-w.settings.HoldLead)
	}
	return nil
}

// releaseOutlived releases a hold that would lapse before the meeting
// ends.
func (w *wf) releaseOutlived(ctx workflow.Context, why string) error {
	if w.hold.Hold == "" || !w.end().After(w.holdExpiry) {
		return nil
	}
	// Within holdBudget, as taking one: the reminders are armed after it,
	// and a day of the release's retries would let them pass.
	if err := w.releaseHold(ctx, flow.Soon(ctx, holdBudget), why); err != nil {
		if !flow.GoOnPast(ctx, err, versionPastFailedRescheduleRelease, "releasing the hold after a reschedule failed; it lapses at its expiry", "hold", w.hold.Hold) {
			return err
		}
		// The hold lapses before the meeting ends: it is no use to the
		// meeting, so a new one is taken at the hold time.
		w.hold = activities.HoldResult{}
	}
	return nil
}

// versionPastFailedRescheduleRelease guards going on when the release of
// a hold the reschedule outlived failed: before, the failure ended the
// workflow, and the meeting's outcome, recorded later, found no workflow
// to start the intake or the boundary follow-up.
const versionPastFailedRescheduleRelease = "go-on-past-failed-reschedule-release"

// staleReminder reports whether a failed reminder's line no longer deserves
// a resend: once the outcome is in or the meeting is cancelled nothing this
// workflow reminded of is pending, and a meeting reminder names a time that a
// reschedule has replaced, or whose meeting has begun meanwhile.
func (w *wf) staleReminder(ctx workflow.Context, first string) bool {
	if w.outcome != nil || w.cancel != nil {
		// But a notice made after the outcome, about what follows it
		// (referrals that could not be made), still deserves its resend;
		// a run begun before this change dropped it.
		return !(w.notices[first] && flow.Version(ctx, versionResendNotices, 1) >= 1)
	}
	g, ok := w.upcoming[first]
	if ok && g != w.generation {
		return true
	}
	// A notice that no place is held, from before a move that lets the
	// next one say so again.
	if n, held := w.holdNoticeOf[first]; held && n != w.holdNotices {
		return true
	}
	// An outcome chased for a meeting a reschedule has moved since: its
	// outcome is not due yet. A run begun before this change sent it.
	if g, ok := w.chasers[first]; ok && g != w.generation && flow.Version(ctx, versionStaleChasers, 1) >= 1 {
		return true
	}
	// A meeting reminder sent again after the meeting began is no
	// reminder; a run begun before this change sent it.
	if ok && !workflow.Now(ctx).Before(w.plan.Start) && flow.Version(ctx, versionNoResendAfterStart, 1) >= 1 {
		return true
	}
	// One to a person no longer taking part (a replan removed them).
	to, ok := w.sentTo[first]
	return ok && !slices.Contains(w.recipientKeys(), to)
}

// versionResendNotices guards resending a notice the workflow made after
// the outcome whose delivery failed.
const versionResendNotices = "resend-notices-after-outcome"

// notice tells to of what follows the outcome, under purpose, and keeps
// the notice's name so that a failed delivery is sent again. The commands
// are flow.Remind's.
func (w *wf) notice(ctx workflow.Context, to activities.Person, kind, message, purpose string) error {
	name, err := flow.RemindAt(ctx, w.plan.Clinic, to, kind, w.in.Intervention, message, purpose, time.Time{})
	if name != "" {
		w.notices[name] = true
		w.lastNotice = workflow.Now(ctx)
	}
	return err
}

// versionListenAfterNotices guards listening, before the workflow ends,
// for the failures of the notices it made after the outcome: a follow-up
// that ends soon after one (a refusal's that joined a running boundary
// workflow, an intake that ended quickly) left a failed notice unsent, the
// failure signalled to a closed workflow.
const versionListenAfterNotices = "listen-after-notices"

// listenAfterNotices keeps the workflow open while a notice it made can
// still fail and be sent again (see flow.Listen). It asks the version only
// when such a notice is that recent.
func (w *wf) listenAfterNotices(ctx workflow.Context) error {
	if w.lastNotice.IsZero() || !workflow.Now(ctx).Before(w.lastNotice.Add(flow.ListenFor(w.settings))) ||
		flow.Version(ctx, versionListenAfterNotices, 1) < 1 {
		return nil
	}
	return flow.Listen(ctx, w.settings, &w.resends, time.Time{}, nil)
}

func (w *wf) end() time.Time { return w.plan.Start.Add(w.plan.Duration) }

// nextDeadline is the earliest thing the workflow must do by time. Every
// deadline it returns is one due() acts on, so a past deadline cannot spin.
func (w *wf) nextDeadline(now time.Time) (time.Time, bool) {
	var times []time.Time
	// Holding a slot makes sense only before the meeting.
	if w.hold.Hold == "" && now.Before(w.plan.Start) && w.nextHoldTry.Before(w.plan.Start) {
		times = append(times, w.nextHoldTry)
	}
	if w.sent < len(w.reminders) {
		times = append(times, w.reminders[w.sent].At)
	}
	if !w.overdueSent {
		times = append(times, w.end().Add(w.settings.OutcomeGrace))
	} else if !w.escalated {
		times = append(times, w.end().Add(w.settings.OutcomeGrace+w.settings.OutcomeEscalation))
	}
	if len(times) == 0 {
		return time.Time{}, false
	}
	return slices.MinFunc(times, func(a, b time.Time) int { return a.Compare(b) }), true
}

// due does everything whose time has come.
func (w *wf) due(ctx workflow.Context) error {
	now := workflow.Now(ctx)
	holdDue := w.hold.Hold == "" && !now.Before(w.nextHoldTry) && now.Before(w.plan.Start)
	bounded := holdDue && flow.Version(ctx, versionHoldAfterReminders, 1) >= 1
	if holdDue && !bounded {
		if err := w.takeHold(ctx, false); err != nil {
			return err
		}
	}
	for w.sent < len(w.reminders) && !now.Before(w.reminders[w.sent].At) {
		if w.interrupted(ctx) {
			return nil
		}
		r := w.reminders[w.sent]
		msg := fmt.Sprintf("Reminder: family meeting on %s.", localTime(w.plan.Start, r.Recipient.TimeZone))
		if r.Recipient.Kind == "counselor" {
			msg = fmt.Sprintf("Reminder: you facilitate a family meeting on %s.", localTime(w.plan.Start, r.Recipient.TimeZone))
		}
		purpose := fmt.Sprintf("upcoming|%d|%s|%s|%s", w.generation, r.Recipient.Kind, r.Recipient.ID, r.Offset)
		// Placed out of quiet hours already, unless late (the meeting was
		// booked or moved at short notice): then it waits for their end if
		// that is still before the meeting.
		sent, _, why, err := flow.RemindAwakeWhy(ctx, w.plan.Clinic, fromRecipient(r.Recipient, w.plan.Family), "INTERVENTION_UPCOMING",
			w.in.Intervention, msg, purpose, time.Time{}, w.plan.Start)
		if err != nil && !w.pastFailedNotice(ctx, err, "meeting reminder") {
			return err
		}
		if why == flow.NotAParticipant && !w.refused[purpose] && flow.Version(ctx, versionRefusalReplans, 1) >= 1 {
			// The counselor or a participant changed and this workflow has
			// yet to hear: counted as sent, the reminder due now would be
			// lost to whoever took their place (a replan counts what fell
			// due up to the last one sent as sent). The plan is read again
			// at once instead, and everything due from this one's time is
			// made for the people of the new plan; what was made already
			// is not made twice (the same request ids). Once per reminder:
			// a plan read again that still names them skips it as before.
			w.refused[purpose] = true
			w.refusedAt, w.replan = r.At, true
			return nil
		}
		if sent != "" {
			w.upcoming[sent] = w.generation
			w.sentTo[sent] = recipientKey(r.Recipient.Kind, r.Recipient.ID)
			w.invited[w.sentTo[sent]] = true
		}
		w.sent++
	}
	if w.interrupted(ctx) {
		return nil
	}
	if bounded {
		if err := w.takeHold(ctx, true); err != nil {
			return err
		}
	}
	if !w.overdueSent && !now.Before(w.end().Add(w.settings.OutcomeGrace)) {
		w.step = StepAwaitOutcome
		if err := w.chase(ctx, w.plan.Counselor, "OUTCOME_OVERDUE",
			"Please record how the family meeting went.", fmt.Sprintf("overdue|%d", w.generation)); err != nil && !w.pastFailedNotice(ctx, err, "outcome overdue") {
			return err
		}
		w.overdueSent = true
	}
	if w.overdueSent && !w.escalated && !now.Before(w.end().Add(w.settings.OutcomeGrace+w.settings.OutcomeEscalation)) {
		if err := w.chase(ctx, activities.Supervisors(), "OUTCOME_ESCALATION",
			"A family meeting has had no outcome recorded for a day.", fmt.Sprintf("escalate|%d", w.generation)); err != nil && !w.pastFailedNotice(ctx, err, "outcome escalation") {
			return err
		}
		w.escalated = true
	}
	return nil
}

// chase asks to for the meeting's outcome and keeps the notice's name with
// the generation it chased, so that its failed delivery is not sent again
// for a meeting moved since. The commands are flow.Remind's.
func (w *wf) chase(ctx workflow.Context, to activities.Person, kind, message, purpose string) error {
	name, err := flow.RemindOfMeeting(ctx, w.plan.Clinic, to, kind, w.in.Intervention, message, purpose, w.plan.Start)
	if name != "" {
		w.chasers[name] = w.generation
	}
	return err
}

// versionStaleChasers guards passing over the failed delivery of an
// outcome-overdue or escalation notice of a meeting rescheduled since.
const versionStaleChasers = "stale-outcome-chasers"

// versionStopFirst guards two changes that keep reminders from going out
// for a meeting that no longer is: due() stops once an update changed the
// meeting while it was making reminders (before, it made every remaining
// one, took a hold and sent the overdue notices), and a cancelled meeting's
// reminders are cancelled before its hold is released (which may retry for
// a day while the referrals service is down).
const versionStopFirst = "stop-meeting-reminders-first"

// interrupted reports whether a reschedule, an outcome or a cancel arrived
// while due() waited on a service, so that due() stops and the run loop
// takes the change. The version is asked only then. A replan does not stop
// due(): replanned() counts every reminder due by the last one made as
// made, so one left unmade at that time would never go out (anything made
// for someone the replan removes, it cancels).
func (w *wf) interrupted(ctx workflow.Context) bool {
	changed := w.rearm || w.outcome != nil || w.cancel != nil
	return changed && flow.Version(ctx, versionStopFirst, 1) >= 1
}

// takeHold holds a treatment slot; when no program has one it tells the
// counselor (once a plan) and tries again later. A bounded try gives up after
// holdBudget and, unless no program had room, tries again sooner.
func (w *wf) takeHold(ctx workflow.Context, bounded bool) error {
	expiry := w.end().Add(w.settings.HoldSlack)
	var res activities.HoldResult
	hctx := ctx
	if bounded {
		hctx = workflow.WithScheduleToCloseTimeout(ctx, holdBudget)
	}
	err := flow.Call(hctx, &res, flow.A.HoldTreatment, activities.HoldRequest{
		Intervention: w.in.Intervention, Family: w.plan.Family, TTL: expiry.Sub(workflow.Now(ctx)), Until: w.end(),
		RequestID: flow.RequestID(ctx, fmt.Sprintf("hold|%d|%d", w.generation, workflow.Now(ctx).Unix())),
	})
	if err != nil {
		// Holding is best effort: no capacity, or a program that turned the
		// hold down, must not end the intervention. Try again later.
		if activities.ErrorType(err) != "NO_CAPACITY" {
			workflow.GetLogger(ctx).Warn("hold failed; will try again", "error", err)
			// The try may have held a place whose answer was lost; the
			// next try adopts it, and if none comes, releaseHold looks.
			w.holdUnsure = true
		}
		w.nextHoldTry = workflow.Now(ctx).Add(w.settings.HoldRetry)
		if bounded && activities.ErrorType(err) != "NO_CAPACITY" {
			// A service that did not answer says nothing of the programs'
			// room: try again soon, and keep the counselor's notice for
			// when no program has a place.
			w.nextHoldTry = workflow.Now(ctx).Add(min(holdOutageRetry, w.settings.HoldRetry))
			return nil
		}
		if w.holdNotified {
			return nil
		}
		w.holdNotified = true
		// Not tied to the meeting's time, as the overdue notices are: it
		// names none, and is sent once a plan (holdNotified, reset by a
		// move), so a refusal for a meeting moved meanwhile would lose it.
		purpose := "hold-unavailable"
		if w.holdNotices > 0 {
			purpose = fmt.Sprintf("hold-unavailable|%d", w.holdNotices)
		}
		name, err := flow.RemindAt(ctx, w.plan.Clinic, w.plan.Counselor, "TREATMENT_HOLD_UNAVAILABLE", w.in.Intervention,
			"No program could hold a place ahead of the family meeting yet; Handoff will keep trying.", purpose, time.Time{})
		if name != "" {
			w.holdNoticeOf[name] = w.holdNotices
		}
		if err != nil && w.pastFailedNotice(ctx, err, "hold unavailable") {
			return nil
		}
		return err
	}
	if !res.Expires.IsZero() && res.Expires.Before(expiry.Add(-time.Minute)) &&
		flow.Version(ctx, versionHoldExpiryFromResult, 1) >= 1 {
		// The place held lapses sooner than asked: one adopted (a
		// counselor's), or one cut to the longest hold the service takes.
		// A place the try made as asked lapses at about the time asked
		// (later by the call's own delay), and asks nothing. Asked, so
		// that a task an older worker decided, which knew no expiry but
		// its own, replays as it ran.
		expiry = res.Expires
	}
	w.hold, w.holdExpiry, w.holdUnsure = res, expiry, false
	return nil
}

// versionHoldExpiryFromResult guards taking a held place's own expiry,
// where it lapses sooner than the workflow asked, for the one it keeps.
// Before, every place was taken to lapse at the meeting's end plus the
// slack, and a longer or moved meeting kept one that was gone by its end.
const versionHoldExpiryFromResult = "hold-expiry-from-result"

func (w *wf) releaseHold(ctx, actx workflow.Context, reason string) error {
	if w.hold.Hold == "" && w.holdUnsure && flow.Version(ctx, versionReleaseUnknownHold, 1) >= 1 {
		// A try that got no answer may have held a place all the same:
		// give back whatever the referrals service holds for the meeting.
		var n int
		err := flow.Call(actx, &n, flow.A.ReleaseHeldFor, activities.ReleaseHeldRequest{
			Intervention: w.in.Intervention, Family: w.plan.Family, Reason: reason,
			RequestID: flow.RequestID(ctx, fmt.Sprintf("release-held|%d", w.generation)),
		})
		if err == nil {
			w.holdUnsure = false
		}
		return err
	}
	if w.hold.Hold == "" {
		return nil
	}
	err := flow.Call(actx, nil, flow.A.ReleaseHold, activities.ReleaseRequest{
		Hold: w.hold.Hold, Reason: reason, RequestID: flow.RequestID(ctx, "release|"+w.hold.Hold),
	})
	if err == nil {
		w.hold = activities.HoldResult{}
	}
	return err
}

// versionReleaseUnknownHold guards releasing, by lookup, a hold that a
// try with no answer may have made: before, such a hold stayed held until
// it lapsed, days after a meeting cancelled or declined.
const versionReleaseUnknownHold = "release-unknown-hold"

// versionPastFailedRelease guards going on when giving the hold back
// failed: before, the failure ended the workflow there, and the steps
// after it (cancelling a cancelled meeting's reminders; the support
// referrals and boundary follow-up after a refusal) never ran, for a
// hold that lapses at its expiry anyway.
const versionPastFailedRelease = "go-on-past-failed-release"

// pastFailedRelease reports whether the workflow goes on after the hold's
// release failed with err, and logs it if so. It asks the version only on
// that failure, so runs whose releases succeed record nothing.
func (w *wf) pastFailedRelease(ctx workflow.Context, err error) bool {
	return flow.GoOnPast(ctx, err, versionPastFailedRelease, "releasing the hold failed; it lapses at its expiry", "hold", w.hold.Hold)
}

// versionPastFailedNotice guards going on when a meeting reminder or a
// notice to staff could not be made at all (refused as invalid, or the
// interventions service failing through a day of retries): before, the
// failure ended the workflow, and the meeting's outcome, recorded later,
// found no workflow to start the intake or the boundary follow-up.
const versionPastFailedNotice = "go-on-past-failed-notice"

// pastFailedNotice reports whether the workflow goes on past err, the
// failure to make a reminder or notice (what names which), as unmade.
func (w *wf) pastFailedNotice(ctx workflow.Context, err error, what string) bool {
	return flow.GoOnPast(ctx, err, versionPastFailedNotice, "a reminder could not be made; going on without it", "reminder", what)
}

// cancelled cleans up on a disconnected context, so that the cleanup runs
// even if the workflow itself is being cancelled.
func (w *wf) cancelled(ctx workflow.Context) (Result, error) {
	w.step = StepCancelled
	dctx, stop := workflow.NewDisconnectedContext(ctx)
	defer stop()
	dctx = flow.WithActivityOptions(dctx)
	cancelReminders := func() error {
		return flow.Call(dctx, nil, flow.A.CancelReminders, activities.CancelRemindersRequest{
			Clinic: w.plan.Clinic, Related: w.in.Intervention, Reason: "intervention cancelled",
			RequestID: flow.RequestID(ctx, "cancel-reminders|final"),
		})
	}
	if flow.Version(dctx, versionStopFirst, 1) >= 1 {
		// The reminders first: they may go out while a release retries.
		// A failure to cancel them does not keep the hold.
		cerr := cancelReminders()
		told := w.tellCalledOff(dctx)
		if err := w.releaseHold(ctx, dctx, "intervention cancelled"); err != nil && !w.pastFailedRelease(dctx, err) {
			if cerr != nil {
				workflow.GetLogger(ctx).Warn("cancelling a cancelled meeting's reminders failed", "error", cerr)
			}
			return Result{}, err
		}
		if cerr != nil {
			return Result{}, cerr
		}
		if !told.IsZero() {
			// Their failures are sent again (staleReminder keeps notices)
			// while the workflow is open to hear of them.
			// Not past a cancel through Temporal: the resends run on the
			// run's context, which that cuts short.
			if err := flow.Listen(dctx, w.settings, &w.resends, told, func() bool { return ctx.Err() != nil }); err != nil {
				workflow.GetLogger(ctx).Warn("listening for the called-off notices' failures failed", "error", err)
			}
		}
		return Result{Outcome: "CANCELLED"}, nil
	}
	if err := w.releaseHold(ctx, dctx, "intervention cancelled"); err != nil && !w.pastFailedRelease(dctx, err) {
		return Result{}, err
	}
	if err := cancelReminders(); err != nil {
		return Result{}, err
	}
	return Result{Outcome: "CANCELLED"}, nil
}

// tellCalledOff tells each participant a meeting reminder was made for
// that the meeting, still ahead, is called off: the reminder told them to
// come, and cancelling what had yet to go out says nothing to them. Not
// the counselor, who called it off or hears from whoever did, nor someone
// no longer taking part, whose reminders went with them. Each notice waits
// out the participant's quiet hours if those end before the meeting. It
// returns when the last is due (zero for none); failures are logged, and
// the cancellation stands.
func (w *wf) tellCalledOff(ctx workflow.Context) time.Time {
	var whom []activities.Person
	for _, p := range w.plan.Participants {
		if w.invited[recipientKey(p.Kind, p.ID)] {
			whom = append(whom, p)
		}
	}
	if len(whom) == 0 || !workflow.Now(ctx).Before(w.plan.Start) || flow.Version(ctx, versionTellCalledOff, 1) < 1 {
		return time.Time{}
	}
	var last time.Time
	for _, p := range whom {
		msg := fmt.Sprintf("The family meeting on %s is called off. Your counselor will be in touch.", localTime(w.plan.Start, p.TimeZone))
		sent, at, err := flow.RemindAwake(ctx, w.plan.Clinic, p, "INTERVENTION_CANCELLED", w.in.Intervention, msg,
			"called-off|"+recipientKey(p.Kind, p.ID), time.Time{}, w.plan.Start)
		if err != nil {
			workflow.GetLogger(ctx).Warn("telling a participant the meeting is called off failed", "error", err)
			continue
		}
		if sent != "" {
			w.notices[sent] = true
			// It can fail until the participant's quiet hours begin (its
			// send-by), which may be hours after it is due: the workflow
			// listens from then, or a failure would find it closed.
			if by, ok, err := schedule.QuietFrom(at, p.Recipient()); err == nil && ok && by.After(at) && by.Before(w.plan.Start) &&
				flow.Version(ctx, versionCalledOffUntilQuiet, 1) >= 1 {
				at = by
			}
			if at.After(last) {
				last = at
			}
		}
	}
	return last
}

// versionCalledOffUntilQuiet guards listening for a called-off notice's
// failure until its recipient's quiet hours begin. Before, the workflow
// listened from when it was due, and a claim refused at the start of
// quiet hours, later, was signalled to a closed workflow and lost.
const versionCalledOffUntilQuiet = "called-off-until-quiet"

// versionTellCalledOff guards tellCalledOff. Before, a meeting called off
// cancelled the reminders still to go out, and the family, told by the
// ones already sent to come, was told nothing more.
const versionTellCalledOff = "tell-called-off"

// followUp hands over according to the outcome and completes when the
// workflow that took over does.
func (w *wf) followUp(ctx workflow.Context) (Result, error) {
	w.step = StepFollowingUp
	if w.planStale {
		// Only in a run that went on past a failed read of its plan (and
		// recorded that version): none before it reads here.
		var p activities.Plan
		if err := flow.Call(ctx, &p, flow.A.LoadPlan, w.in.Intervention); err == nil {
			p.Start, p.Duration, p.Counselor.TimeZone = w.plan.Start, w.plan.Duration, w.plan.Counselor.TimeZone
			w.plan, w.planStale = p, false
		} else if !flow.GoOnPast(ctx, err, versionPastFailedReplan, "reading the plan for the follow-up failed; it follows the plan read before") {
			return Result{}, err
		}
	}
	o := *w.outcome
	res := Result{Outcome: o.Kind}
	acceptsMAT := o.Kind == "ACCEPTED" || slices.ContainsFunc(o.AcceptedServices, activities.IsMAT)
	var others, medications []string
	for _, s := range o.AcceptedServices {
		if !activities.IsMAT(s) {
			others = append(others, s)
		} else {
			// The intake refers to these only: methadone is not what
			// someone who agreed to naltrexone said yes to.
			medications = append(medications, s)
		}
	}
	if acceptsMAT && flow.Version(ctx, versionIntakeFirst, 1) >= 1 {
		return w.handOff(ctx, res, others, medications)
	}
	// A yes to treatment other than medication (an outpatient program,
	// say) is a yes too: intake, not the boundary path for a refusal.
	var care, rest []string
	for _, s := range others {
		if activities.IsCare(s) {
			care = append(care, s)
		} else {
			rest = append(rest, s)
		}
	}
	if !acceptsMAT && len(care) > 0 && flow.Version(ctx, versionCareIntake, 1) >= 1 {
		return w.handOff(ctx, res, rest, care)
	}
	// Reminders still pending for the meeting make no sense any more.
	if err := flow.Call(ctx, nil, flow.A.CancelReminders, activities.CancelRemindersRequest{
		Clinic: w.plan.Clinic, Related: w.in.Intervention, Reason: "outcome recorded",
		RequestID: flow.RequestID(ctx, "cancel-reminders|outcome"),
	}); err != nil && !w.pastFailedCancel(ctx, err) {
		return Result{}, err
	}
	switch {
	case acceptsMAT:
		if flow.Version(ctx, versionStopBoundaryOnYes, 1) >= 1 {
			if err := w.stopBoundary(ctx); err != nil {
				return Result{}, err
			}
		}
		// Services accepted beside MAT are referred too. Added after the
		// first release of this workflow: versioned, so that histories
		// recorded before it replay unchanged.
		if v := flow.Version(ctx, "refer-services-accepted-beside-mat", 1); v >= 1 && len(others) > 0 {
			if err := flow.Call(ctx, nil, flow.A.CreateSupportReferrals, activities.SupportRequest{
				Family: w.plan.Family, Intervention: w.in.Intervention, Kinds: others, Urgency: "URGENT",
				RequestID: flow.RequestID(ctx, "accepted-services"),
			}); err != nil {
				return Result{}, err
			}
		}
		res.Child = ids.MATIntake(w.in.Intervention)
		w.handedOver = true
		var out matintake.Result
		err := workflow.ExecuteChildWorkflow(w.child(ctx, res.Child, enumspb.PARENT_CLOSE_POLICY_TERMINATE), matintake.Name, matintake.Input{
			Intervention: w.in.Intervention, Family: w.plan.Family, Clinic: w.plan.Clinic, Hold: w.hold.Hold,
			Counselor: w.plan.Counselor, FirstContact: w.plan.FirstContact, Medications: medications,
		}).Get(ctx, &out)
		if err != nil {
			return Result{}, err
		}
		res.ChildResult = out.Outcome
	case o.Kind == "POSTPONED":
		// Releases here are bounded too: what follows (the support
		// referrals, the boundary follow-up) must not wait a day on them.
		// A hold one leaves lapses at its expiry, or sooner through the
		// CancelledHolds workflow when nothing was accepted.
		if err := w.releaseHold(ctx, flow.Soon(ctx, holdBudget), "meeting postponed"); err != nil && !w.pastFailedRelease(ctx, err) {
			return Result{}, err
		}
	default: // PARTIALLY_ACCEPTED of neither MAT nor care, DECLINED, DID_NOT_ATTEND
		if err := w.releaseHold(ctx, flow.Soon(ctx, holdBudget), "treatment not accepted"); err != nil && !w.pastFailedRelease(ctx, err) {
			return Result{}, err
		}
		// What was referred here, which the boundary workflow does not
		// refer again: nothing if the referrals failed (the counselor is
		// asked to make them), so that its own naloxone referral stands.
		var referred []string
		if len(o.AcceptedServices) > 0 {
			err := flow.Call(ctx, nil, flow.A.CreateSupportReferrals, activities.SupportRequest{
				Family: w.plan.Family, Intervention: w.in.Intervention, Kinds: o.AcceptedServices, Urgency: "URGENT",
				RequestID: flow.RequestID(ctx, "accepted-services"),
			})
			if err != nil && !w.pastFailedReferrals(ctx, err) {
				return Result{}, err
			}
			if err == nil {
				referred = o.AcceptedServices
			}
		}
		res.Child = ids.Boundary(w.plan.Family)
		out, err := w.boundary(ctx, res.Child, o, referred)
		if err != nil {
			return Result{}, err
		}
		res.ChildResult = out
		if err := w.listenAfterNotices(ctx); err != nil {
			return Result{}, err
		}
	}
	w.step = StepDone
	return res, nil
}

// versionPastFailedCancel guards going on with the follow-up when the
// meeting's reminders could not be cancelled after the outcome: before,
// the workflow failed there, leaving the place held until it lapsed and
// a refusal with no boundary follow-up, for reminders whose meeting is
// over anyway.
const versionPastFailedCancel = "outcome-past-failed-reminder-cancel"

// pastFailedCancel reports whether the follow-up goes on after cancelling
// the meeting's reminders failed with err. The version is asked only on
// that failure.
func (w *wf) pastFailedCancel(ctx workflow.Context, err error) bool {
	return flow.GoOnPast(ctx, err, versionPastFailedCancel, "cancelling the meeting's reminders after the outcome failed")
}

// versionBoundaryPastFailedReferrals guards going on to the boundary
// follow-up when the referrals to the services accepted beside a refusal
// could not be made: before, the workflow failed there, and the family got
// no check-ins, overdose follow-up or next step, and nobody was told.
const versionBoundaryPastFailedReferrals = "boundary-past-failed-referrals"

// pastFailedReferrals reports whether a refusal's follow-up goes on after
// the support referrals failed with err; if so, the counselor is told to
// make them by hand. The version is asked only on that failure.
func (w *wf) pastFailedReferrals(ctx workflow.Context, err error) bool {
	if !flow.GoOnPast(ctx, err, versionBoundaryPastFailedReferrals, "referring the services accepted beside a refusal failed") {
		return false
	}
	log := workflow.GetLogger(ctx)
	if err := w.notice(ctx, w.plan.Counselor, "REFERRAL_ESCALATION",
		"The referrals for the services accepted at the family meeting could not be made: please make them by hand.",
		"refused-services-failed"); err != nil {
		log.Warn("telling the counselor of the failed referrals failed", "error", err)
	}
	return true
}

// versionCareIntake guards handing a partial yes to inpatient, outpatient
// or intensive outpatient care (without medication) to the intake, as a
// yes to MAT is: before, it went down the boundary path of a refusal, with
// only a referral to the care accepted. Asked only for such a yes (a
// sensitive state): covered by an epoch.
const versionCareIntake = "care-intake"

// versionIntakeFirst guards starting the MAT intake before tidying up
// after a yes: before, the intake waited behind cancelling the meeting's
// reminders, stopping the boundary workflow and the other referrals, each
// of which may retry through a service's outage for up to a day.
const versionIntakeFirst = "intake-first"

// handOff starts the MAT intake at once, then tidies up behind it: the
// meeting's reminders, an earlier refusal's boundary workflow and its
// reminders, and referrals to the services accepted beside MAT. Once the
// intake runs, a failure there is logged rather than returned: failing
// here would terminate the intake (its parent-close policy) over a
// reminder.
func (w *wf) handOff(ctx workflow.Context, res Result, others, medications []string) (Result, error) {
	res.Child = ids.MATIntake(w.in.Intervention)
	w.handedOver = true
	intake := workflow.ExecuteChildWorkflow(w.child(ctx, res.Child, enumspb.PARENT_CLOSE_POLICY_TERMINATE), matintake.Name, matintake.Input{
		Intervention: w.in.Intervention, Family: w.plan.Family, Clinic: w.plan.Clinic, Hold: w.hold.Hold,
		Counselor: w.plan.Counselor, FirstContact: w.plan.FirstContact, Medications: medications,
	})
	if err := intake.GetChildWorkflowExecution().Get(ctx, nil); err != nil {
		return Result{}, err
	}
	log := workflow.GetLogger(ctx)
	// Only this workflow's reminders: the intake, running by now, tells
	// the counselor of the same intervention (no program could take the
	// person, the hand-off stopped), and those must not be cancelled as
	// the meeting's. The filter is the activity's input, not a command.
	if err := flow.Call(ctx, nil, flow.A.CancelReminders, activities.CancelRemindersRequest{
		Clinic: w.plan.Clinic, Related: w.in.Intervention, Reason: "outcome recorded",
		RequestID: flow.RequestID(ctx, "cancel-reminders|outcome"),
		Origin:    workflow.GetInfo(ctx).WorkflowExecution.ID,
	}); err != nil {
		log.Warn("cancelling the meeting's reminders after a yes failed", "error", err)
	}
	if err := w.stopBoundary(ctx); err != nil {
		log.Warn("cancelling the boundary reminders after a yes failed", "error", err)
	}
	if flow.Version(ctx, versionWithdrawDrafts, 1) >= 1 {
		if err := flow.Call(ctx, nil, flow.A.WithdrawDrafts, activities.WithdrawDraftsRequest{
			Family: w.plan.Family, Reason: "The loved one accepted treatment at " + w.in.Intervention + ".",
			RequestID: flow.RequestID(ctx, "withdraw-drafts"),
		}); err != nil {
			log.Warn("cancelling the family's draft meetings after a yes failed", "error", err)
		}
	}
	if len(others) > 0 {
		// Said to the programs as what it is: an empty reason would give
		// each kind the boundary path's words, that treatment was declined.
		reason := ""
		v := flow.Version(ctx, versionAcceptedBesideReason, 1)
		if v < 1 && slices.ContainsFunc(medications, activities.IsMAT) {
			// A run begun before the sensitive change's epoch never takes
			// it; a yes to medication, which its intake's id shows
			// anyway, asks under an id of its own, and gets it.
			v = flow.Version(ctx, versionAcceptedBesideMATReason, 1)
		}
		if v >= 1 {
			reason = "Accepted at a family intervention."
		}
		if err := flow.Call(ctx, nil, flow.A.CreateSupportReferrals, activities.SupportRequest{
			Family: w.plan.Family, Intervention: w.in.Intervention, Kinds: others, Urgency: "URGENT",
			RequestID: flow.RequestID(ctx, "accepted-services"), Reason: reason,
		}); err != nil {
			log.Warn("referring the services accepted beside MAT failed", "error", err)
			if err := w.notice(ctx, w.plan.Counselor, "REFERRAL_ESCALATION",
				"The referrals for the other services accepted at the family meeting could not be made: please make them by hand.",
				"accepted-services-failed"); err != nil {
				log.Warn("telling the counselor of the failed referrals failed", "error", err)
			}
		}
	}
	var out matintake.Result
	if err := intake.Get(ctx, &out); err != nil {
		return Result{}, err
	}
	res.ChildResult = out.Outcome
	if err := w.listenAfterNotices(ctx); err != nil {
		return Result{}, err
	}
	w.step = StepDone
	return res, nil
}

func (w *wf) child(ctx workflow.Context, id string, policy enumspb.ParentClosePolicy) workflow.Context {
	return workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{
		WorkflowID:            id,
		TaskQueue:             flow.TaskQueue,
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE,
		ParentClosePolicy:     policy,
	})
}

// versionWithdrawDrafts guards cancelling, after a yes, the family's
// meetings still in draft: the next, firmer one a boundary workflow
// proposed stayed, asking the counselor to plan a meeting nobody needed,
// while its notice was cancelled.
const versionWithdrawDrafts = "withdraw-drafts-on-yes"

// versionStopBoundaryOnYes guards stopping the family's boundary workflow
// when the loved one accepts treatment; runs before it left it going.
const versionStopBoundaryOnYes = "stop-boundary-on-yes"

// stopBoundary asks the family's boundary workflow, begun after an earlier
// refusal, to stop: after a yes it must not go on checking in with the
// family about boundaries or draft the next, firmer meeting. None running
// is the usual case; any other failure leaves it be, which is no reason to
// hold up the intake. The check-ins and boundary reminders it made for the
// family and not yet sent (one waiting out quiet hours, say) are
// cancelled too.
func (w *wf) stopBoundary(ctx workflow.Context) error {
	if _, err := flow.CancelBoundary(ctx, w.plan.Family); err != nil {
		workflow.GetLogger(ctx).Warn("boundary workflow not stopped after a yes", "error", err)
	}
	// The boundary workflow made every check-in and boundary reminder, so
	// cancelling by its origin (below) takes them with the rest; runs
	// before that also listed them by family, kind by kind.
	originOnly := flow.Version(ctx, versionByOriginOnly, 1) >= 1
	for _, kind := range []string{"CHECK_IN", "BOUNDARY_REMINDER"} {
		if originOnly {
			break
		}
		if err := flow.Call(ctx, nil, flow.A.CancelReminders, activities.CancelRemindersRequest{
			Clinic: w.plan.Clinic, Related: w.plan.Family, Kind: kind, Reason: "the loved one accepted treatment",
			RequestID: flow.RequestID(ctx, "cancel-boundary-reminders|"+kind),
		}); err != nil {
			return err
		}
	}
	if originOnly || flow.Version(ctx, versionStopBoundaryByOrigin, 1) >= 1 {
		// The rest of the boundary workflow's steps (boundary.OwnReminderKinds).
		// A boundary run begun under boundary-tidy-on-cancel cancels them
		// itself as it is cancelled above; runs from before it do not, so
		// this stays until they have ended.
		if err := flow.Call(ctx, nil, flow.A.CancelReminders, activities.CancelRemindersRequest{
			Clinic: w.plan.Clinic, Origin: ids.Boundary(w.plan.Family), Reason: "the loved one accepted treatment",
			Kinds:     boundary.OwnReminderKinds(),
			RequestID: flow.RequestID(ctx, "cancel-boundary-reminders|origin"),
		}); err != nil {
			return err
		}
	}
	return nil
}

// versionByOriginOnly guards cancelling the boundary workflow's reminders
// after a yes by their origin alone: before, its check-ins and boundary
// reminders were also listed by family, kind by kind, two listings that
// found nothing the origin's did not.
const versionByOriginOnly = "stop-boundary-by-origin-only"

// versionStopBoundaryByOrigin guards cancelling, after a yes, every
// reminder the boundary workflow made and has not sent: before, only those
// to the family were, and the counselor's check-ins about the refused
// meeting, and the notice of a proposed next one, still went out.
const versionStopBoundaryByOrigin = "stop-boundary-by-origin"

// boundary starts the family's boundary workflow, or, when one already runs
// for this family after an earlier refusal, tells it about this one.
func (w *wf) boundary(ctx workflow.Context, id string, o Outcome, referred []string) (string, error) {
	in := boundary.Input{Family: w.plan.Family, Clinic: w.plan.Clinic, Intervention: w.in.Intervention,
		Level: w.plan.Level, Outcome: o.Kind, Counselor: w.plan.Counselor, MeetingStart: w.plan.Start, Accepted: referred}
	// The boundary path outlives its parent's end (the parent may time out
	// or be terminated while the family still needs it). Cancelling the
	// parent, an operator's deliberate stop, cancels it too.
	return startOrRestartBoundary(w.child(ctx, id, enumspb.PARENT_CLOSE_POLICY_ABANDON), id, in,
		boundary.Restart{Intervention: w.in.Intervention, Level: w.plan.Level, Outcome: o.Kind, Accepted: referred})
}

// versionBoundaryCancelled guards ending normally when the boundary child
// was cancelled, instead of failing.
const versionBoundaryCancelled = "boundary-cancelled"

// startOrRestartBoundary starts the boundary workflow id with in as a child
// (ctx carries its options) and waits for its result, or restarts the one
// already running with r. One that ends between the two, as one does
// after its last check-in, is started anew: a signal to it is lost.
func startOrRestartBoundary(ctx workflow.Context, id string, in boundary.Input, r boundary.Restart) (string, error) {
	for try := 1; ; try++ {
		fut := workflow.ExecuteChildWorkflow(ctx, boundary.Name, in)
		var exec workflow.Execution
		if err := fut.GetChildWorkflowExecution().Get(ctx, &exec); err != nil {
			if !temporal.IsWorkflowExecutionAlreadyStartedError(err) {
				return "", err
			}
			err := workflow.SignalExternalWorkflow(ctx, id, "", boundary.SignalRestart, r).Get(ctx, nil)
			var ended *temporal.UnknownExternalWorkflowExecutionError
			// A second try finds no workflow (and starts one) or one
			// that another refusal started meanwhile (and tells it);
			// the bound only keeps a fault from looping.
			if errors.As(err, &ended) && try < 3 &&
				flow.Version(ctx, versionRejoinEnded, 1) >= 1 {
				continue
			}
			if err != nil {
				return "", err
			}
			return "joined the running boundary workflow", nil
		}
		var out boundary.Result
		if err := fut.Get(ctx, &out); err != nil {
			// Cancelled because the family's record was deleted (the
			// FamilyDeleted workflow): the meeting's outcome stands.
			// Not when this workflow is itself cancelled: its child is
			// then cancelled with it, and the cancellation is its own.
			if temporal.IsCanceledError(err) && ctx.Err() == nil && flow.Version(ctx, versionBoundaryCancelled, 1) >= 1 {
				return "the boundary workflow was cancelled", nil
			}
			return "", err
		}
		return out.Summary, nil
	}
}

func fromRecipient(r schedule.Recipient, family string) activities.Person {
	p := activities.Person{Kind: r.Kind, ID: r.ID, Channel: r.Channel, TimeZone: r.TimeZone, QuietStart: r.Quiet.Start, QuietEnd: r.Quiet.End}
	if r.Kind == "member" || r.Kind == "loved_one" {
		p.Family = family
	}
	return p
}

// localTime formats t in the recipient's zone, for a message.
func localTime(t time.Time, zone string) string {
	if loc, err := time.LoadLocation(zone); err == nil && zone != "" {
		t = t.In(loc)
	} else {
		t = t.UTC()
	}
	return t.Format("Mon Jan 2 at 3:04 PM MST")
}

// versionAcceptedBesideReason guards giving the referrals to services
// accepted beside a yes a reason of their own: before, they took the
// boundary path's words ("while treatment is declined", "while their
// loved one is not in treatment"), untrue of someone who just said yes.
// Asked only when such services were accepted, and the request's
// wording under its id must not change in a run under way.
const versionAcceptedBesideReason = "accepted-beside-reason"

// versionAcceptedBesideMATReason is versionAcceptedBesideReason for a yes
// to medication in a run begun before that change's epoch. The first is
// sensitive (asked on a partial yes to care without medication too), so
// such a run never takes it, and the programs would be told for weeks
// after the fix that a person who just said yes declined treatment. A
// yes to medication is no secret from whoever reads visibility (the
// mat-intake/ child's id names it), so this id is asked live.
const versionAcceptedBesideMATReason = "accepted-beside-mat-reason"
