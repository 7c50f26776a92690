// Package matintake is the workflow that answers a "yes" at once: it turns
// the slot held ahead of the intervention into an immediate referral to
// medication-assisted treatment, falls back to the next program with a free
// slot when the hold lapsed or a program turns the person down, follows the
// referral until the person is in treatment, and then refers the family to
// support of its own.
package matintake

import (
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/flow"
	"github.com/handoff-health/handoff/workflows/schedule"
)

// Names by which the outside reaches the workflow.
const (
	// Name is the workflow type's registered name.
	Name = "MATIntake"
	// SignalReferral carries a referral transition from the referrals
	// service (through its outbox).
	SignalReferral = "referral"
	QueryStatus    = "status"
)

// Input starts the workflow.
type Input struct {
	Intervention string
	Family       string
	Clinic       string
	Hold         string
	Counselor    activities.Person
	FirstContact time.Time
	// Medications are the treatments the loved one agreed to (ServiceKind
	// names without their prefix): MAT services or, for a partial yes
	// without medication, inpatient, outpatient or intensive outpatient
	// care; none is a treatment that suits the loved one (see
	// activities.ImmediateRequest).
	Medications []string
}

// Transition is SignalReferral's payload: which referral moved, and to which
// state (a ReferralState without its prefix).
type Transition struct {
	Referral string
	State    string
}

// Result is how intake ended: ENTERED_TREATMENT or ESCALATED.
type Result struct {
	Outcome         string
	Referral        string
	Program         string
	DaysToTreatment int32
	Programs        int // how many programs were tried
}

// Status answers QueryStatus.
type Status struct {
	Referral string
	State    string
	Tried    int
}

type wf struct {
	in       Input
	settings activities.Settings
	contacts []activities.Person
	referral activities.Referral
	state    string
	tried    []string
	signals  workflow.ReceiveChannel
	started  time.Time
	alerted  bool
	// toldOfFailure: the counselor was told the intake failed, or that the
	// family's own referrals did; the run listens for that notice's
	// delivery failures before it ends.
	toldOfFailure bool
	// appointment is the referral's appointment as last read; upcoming maps
	// each intake reminder sent to the appointment it names.
	appointment time.Time
	upcoming    map[string]time.Time
	// The timer follow waits on, kept while its deadline stands.
	keepTimer   workflow.Version
	timerFuture workflow.Future
	timerAt     time.Time
	timerCancel workflow.CancelFunc
	resends     flow.Resends
	cancels     int // intake reminders cancelled so far, for request ids
	pauses      int // times the program put the intake on hold, for request ids
	// holdReview is when the counselor is asked again about an intake
	// still on hold (zero when not on hold); holdReviews counts the asks
	// of this pause.
	holdReview  time.Time
	holdReviews int
	// stallReview is when the counselor is asked again about an intake
	// that has not started since the overdue alert (zero before it);
	// stallReviews counts the asks.
	stallReview  time.Time
	stallReviews int
	// targetAt is when the counselor is told that no intake is booked yet,
	// IntakeTarget after the start (zero once past, or for a run begun
	// before versionIntakeTarget).
	targetAt time.Time
}

// versionCancelStale guards cancelling the intake reminders already
// created for an appointment that moved, was missed or kept, or whose
// referral ended: before, one waiting for the end of quiet hours still went
// out, naming a time or a program that no longer applied.
const versionCancelStale = "cancel-stale-intake-reminders"

// versionLateReminderAwake guards leaving out a late intake reminder
// that would wait for the end of its recipient's quiet hours until their
// next one (schedule.PlanAwake): before, an appointment booked in them at
// short notice reached the person twice when they ended. Asked only when
// a plan leaves one out.
const versionLateReminderAwake = "late-intake-reminder-awake"

// versionListenAfterEscalation guards waiting, after an escalation, for
// the escalation's delivery failures, so that they are sent again: before,
// the workflow ended at once and a failure signalled to it was lost.
const versionListenAfterEscalation = "listen-after-escalation"

// Workflow is the MAT intake workflow.
func Workflow(ctx workflow.Context, in Input) (Result, error) {
	ctx = flow.BeginEpoch(ctx)
	w := &wf{in: in, signals: workflow.GetSignalChannel(ctx, SignalReferral), started: workflow.Now(ctx), upcoming: map[string]time.Time{}}
	if err := workflow.SetQueryHandler(ctx, QueryStatus, func() (Status, error) {
		return Status{Referral: w.referral.Name, State: w.state, Tried: len(w.tried)}, nil
	}); err != nil {
		return Result{}, err
	}
	ctx = flow.WithActivityOptions(ctx)
	res, err := w.run(ctx)
	if err != nil && !temporal.IsCanceledError(err) && flow.Version(ctx, versionTellOnFailure, 1) >= 1 {
		w.failed(ctx, err)
		w.toldOfFailure = true
	}
	if temporal.IsCanceledError(err) {
		// The counselor first, the places after: a release may retry
		// through the referrals service's outage for a day, and the
		// places lapse on their own anyway.
		releaseAll := flow.Version(ctx, versionReleaseHeld, 1) >= 1
		if w.referral.Name != "" && flow.Version(ctx, versionTellOnCancel, 1) >= 1 {
			w.cancelledWithReferral(ctx)
		}
		if releaseAll {
			w.releaseHeld(ctx, "the hand-off was cancelled", "cancelled")
		} else if w.in.Hold != "" && w.referral.Name == "" && flow.Version(ctx, versionReleaseOnCancel, 1) >= 1 {
			w.releaseOnCancel(ctx)
		}
	}
	if err == nil && res.Outcome == "ESCALATED" &&
		flow.Version(ctx, versionListenAfterEscalation, 1) >= 1 {
		// No one could take the person in: the counselor must hear of it.
		lerr := flow.Listen(ctx, w.settings, &w.resends, time.Time{}, nil)
		if lerr != nil && (!temporal.IsCanceledError(lerr) || flow.Version(ctx, versionEscalatedPastCancel, 1) < 1) {
			err = lerr
		}
	} else if w.toldOfFailure && flow.Version(ctx, versionListenAfterFailure, 1) >= 1 {
		// So must they of the failure. The run ends as it would have (on
		// the failure, or with the entry into treatment); a cancel while
		// listening ends the wait, no more.
		_ = flow.Listen(ctx, w.settings, &w.resends, time.Time{}, nil)
	}
	// A referral signal only says that something changed, and the service
	// has been asked what is true; signals still waiting when the intake
	// ends (the EHR's answers often come together) say nothing more. Taking
	// them keeps the SDK from warning of unhandled signals at every intake.
	// It adds no command, so histories replay as before.
	for w.signals.ReceiveAsync(nil) {
	}
	return res, err
}

// versionEscalatedPastCancel guards ending an escalated intake cancelled
// while it listened for the escalation's failures as ESCALATED: before,
// it ended cancelled, after its tidy-up had run, and the parent meeting's
// workflow lost the escalation from its result. Asked only on that cancel,
// in a new epoch.
const versionEscalatedPastCancel = "escalated-past-cancel"

// versionEnteredPastFailedSupport guards ending an intake whose loved one
// entered treatment as ENTERED_TREATMENT when the family's own support
// referrals then failed: before, the intake failed, its parent meeting's
// workflow with it, and the entry was lost from both results. Asked only
// on that failure, in a new epoch.
const versionEnteredPastFailedSupport = "entered-past-failed-support"

// versionListenAfterFailure guards waiting, after the counselor is told
// the intake failed, for that notice's delivery failures, as after an
// escalation: before, the run ended at once, and a failure signalled to it
// was lost, with the person who said yes left with no place and no one
// who knew. Asked only when an intake failed, in a new epoch.
const versionListenAfterFailure = "listen-after-failure"

// versionTellOnFailure guards telling the counselor, and giving back a
// hold no referral took, when the intake ends on an error; before, it
// failed without a word, the person who said yes waited on nobody and
// the place stayed held until it lapsed.
const versionTellOnFailure = "tell-counselor-on-failure"

// versionReleaseOnCancel guards giving back, when the intake is cancelled
// (with its intervention, through Temporal) before a referral took the
// hold over, the place held for the person: before, it stayed held until
// it lapsed, two days after the meeting by default.
const versionReleaseOnCancel = "release-hold-on-cancel"

// releaseOnCancel gives the hold back on a context the cancellation does
// not reach. A conversion whose answer the cancellation cut off makes the
// release fail (the hold is converted): the referral keeps the place.
func (w *wf) releaseOnCancel(ctx workflow.Context) {
	dctx, stop := workflow.NewDisconnectedContext(ctx)
	defer stop()
	if err := flow.Call(dctx, nil, flow.A.ReleaseHold, activities.ReleaseRequest{
		Hold: w.in.Hold, Reason: "the hand-off was cancelled", RequestID: flow.RequestID(dctx, "release|cancelled"),
	}); err != nil {
		workflow.GetLogger(ctx).Warn("releasing the hold after the intake was cancelled failed; it lapses at its expiry", "error", err)
	}
}

// versionReleaseHeld guards giving back, when the intake is cancelled or
// fails, every place still held for the intervention, not only the one it
// began with: a try of the referral that held a place at another program
// and failed before converting it keeps that place for the next try, and
// with no next try it stayed held until it lapsed, a day later.
const versionReleaseHeld = "release-every-held-place"

// releaseHeld gives back, on a context the cancellation does not reach,
// the places still held for the intervention, for any treatment. A place
// a referral took over is no longer held, and stays the referral's. Its failure is logged: the places lapse at their expiry.
func (w *wf) releaseHeld(ctx workflow.Context, reason, purpose string) {
	dctx, stop := workflow.NewDisconnectedContext(ctx)
	defer stop()
	// The intake's own hold goes back too if a counselor made it: the
	// meeting's workflow adopted it and handed it over.
	if err := flow.Call(dctx, nil, flow.A.ReleaseHeldFor, activities.ReleaseHeldRequest{
		Intervention: w.in.Intervention, Family: w.in.Family, Reason: reason, Hold: w.in.Hold,
		RequestID: flow.RequestID(dctx, "release-held|"+purpose),
	}); err != nil {
		workflow.GetLogger(ctx).Warn("giving back the places held for the intake failed; they lapse at their expiry", "error", err)
	}
}

// versionTellOnCancel guards tidying up when the intake is cancelled
// (with its intervention, through Temporal) after a referral was made:
// before, the intake reminders it had made still went to the family, and
// nobody was told the referral was no longer followed.
const versionTellOnCancel = "tell-counselor-on-cancel"

// cancelledWithReferral cancels the reminders this intake made and tells
// the counselor that the open referral is no longer followed, on a context
// the cancellation does not reach. Its failures are logged; the
// cancellation stands.
func (w *wf) cancelledWithReferral(ctx workflow.Context) {
	dctx, stop := workflow.NewDisconnectedContext(ctx)
	defer stop()
	log := workflow.GetLogger(ctx)
	if err := flow.Call(dctx, nil, flow.A.CancelReminders, activities.CancelRemindersRequest{
		Clinic: w.in.Clinic, Related: w.referral.Name, Reason: "the hand-off was cancelled",
		Origin: workflow.GetInfo(ctx).WorkflowExecution.ID, RequestID: flow.RequestID(dctx, "cancel-reminders|cancelled"),
	}); err != nil {
		log.Warn("cancelling the intake's reminders after the intake was cancelled failed", "error", err)
	}
	about, msg := w.referral.Name, "The hand-off after the family meeting was stopped: its referral is still open and no longer followed. Follow it up with the program, or cancel it."
	switch w.state {
	case "COMPLETED":
		// The person entered treatment (the family's own referrals were
		// being made): nothing is left open to follow.
		if flow.Version(dctx, versionNoNoticeAfterEntry, 1) >= 1 {
			return
		}
	case "REJECTED", "CANCELLED":
		// The referral is closed and the next program was being sought:
		// no place is found, as failed says in the same case.
		about, msg = w.in.Intervention, "The hand-off after the family meeting was stopped before a program took the person in: please call the family and arrange a place by hand."
	}
	to, _ := w.counselorNow(dctx, versionNoticesToCurrent) // the one it began with, failing that
	if err := flow.Remind(dctx, w.in.Clinic, to, "REFERRAL_ESCALATION", about, msg, "cancelled"); err != nil {
		log.Warn("telling the counselor that the intake was cancelled failed", "error", err)
	}
}

// versionNoNoticeAfterEntry guards sending no notice when the intake is
// cancelled after the person entered treatment: before, the counselor was
// told to follow up a referral that had ended in treatment.
const versionNoNoticeAfterEntry = "no-cancel-notice-after-entry"

// failed is that telling, on a disconnected context: the workflow is
// about to fail, and the counselor is the one who can still act. Its own
// failures are logged; the intake's error stands.
func (w *wf) failed(ctx workflow.Context, cause error) {
	dctx, stop := workflow.NewDisconnectedContext(ctx)
	defer stop()
	log := workflow.GetLogger(ctx)
	log.Warn("MAT intake failed; telling the counselor", "error", cause)
	// The counselor first, the places after (see Workflow).
	releaseAll := flow.Version(dctx, versionReleaseHeld, 1) >= 1
	if !releaseAll && w.in.Hold != "" && w.referral.Name == "" {
		// No referral was made, so none took the hold over.
		if err := flow.Call(dctx, nil, flow.A.ReleaseHold, activities.ReleaseRequest{
			Hold: w.in.Hold, Reason: "the hand-off stopped on an error", RequestID: flow.RequestID(dctx, "release|failed"),
		}); err != nil {
			log.Warn("releasing the hold after the intake failed failed", "error", err)
		}
	}
	to, err := w.counselorNow(dctx, versionNoticesToCurrent)
	if err != nil {
		to = w.in.Counselor
	}
	about, msg := w.in.Intervention, "The hand-off after the family meeting stopped on an error: please call the family and arrange a place by hand."
	if w.referral.Name != "" && w.state != "REJECTED" && w.state != "CANCELLED" {
		// A place was found: asking for another by hand would double it.
		// (One the program turned down, the search for the next failing,
		// is no place.)
		about, msg = w.referral.Name, "The hand-off after the family meeting stopped on an error after its referral was made: the referral stands but is no longer followed. Follow it up with the program."
	}
	if w.state == "COMPLETED" {
		// The person entered treatment; what failed is the family's own
		// referrals, made after it. Said without naming it: the service
		// refuses a reminder that reveals a health detail, and the notice
		// would be skipped, unseen.
		about, msg = w.in.Intervention, "The loved one started with the program, but the family's own support referrals could not be made: please make them by hand."
	}
	if err := flow.Remind(dctx, w.in.Clinic, to, "REFERRAL_ESCALATION", about, msg, "failed"); err != nil {
		log.Warn("telling the counselor that the intake failed failed", "error", err)
	}
	if releaseAll {
		w.releaseHeld(dctx, "the hand-off stopped on an error", "failed")
	}
}

func (w *wf) run(ctx workflow.Context) (Result, error) {
	var err error
	if w.settings, err = flow.Settings(ctx, w.in.Clinic); err != nil {
		return Result{}, err
	}
	flow.RetryFailedReminders(ctx, w.settings, &w.resends, func(_ workflow.Context, first string) bool { return w.staleReminder(ctx, first) })
	if err := flow.Call(ctx, &w.contacts, flow.A.FamilyContacts, w.in.Family); err != nil {
		return Result{}, err
	}
	if flow.Version(ctx, versionIntakeTarget, 1) >= 1 && w.settings.IntakeTarget > 0 && w.settings.IntakeTarget < w.settings.IntakeAlert {
		w.targetAt = w.started.Add(w.settings.IntakeTarget)
	}
	hold := w.in.Hold
	for len(w.tried) < w.settings.MaxPrograms {
		err := flow.Call(ctx, &w.referral, flow.A.StartImmediateReferral, activities.ImmediateRequest{
			Family: w.in.Family, Intervention: w.in.Intervention, Hold: hold, Exclude: w.tried, FirstContact: w.in.FirstContact,
			RequestID: flow.RequestID(ctx, fmt.Sprintf("referral|%d", len(w.tried))), Medications: w.in.Medications,
		})
		if activities.ErrorType(err) == "NO_PROGRAM" {
			break
		}
		if err != nil {
			return Result{}, err
		}
		hold = ""
		w.tried = append(w.tried, w.referral.Program)
		w.state = "REQUESTED"
		if !w.stallReview.IsZero() {
			// A new program's referral gets its own IntakeAlert before it
			// counts as stalled.
			w.stallReview = workflow.Now(ctx).Add(w.settings.IntakeAlert)
		}
		outcome, info, err := w.follow(ctx)
		if err != nil {
			return Result{}, err
		}
		switch outcome {
		case "entered":
			return w.entered(ctx, info)
		case "escalated":
			return Result{Outcome: "ESCALATED", Referral: w.referral.Name, Program: w.referral.Program, Programs: len(w.tried)}, nil
		}
		// Rejected or cancelled: the next program.
	}
	to, err := w.counselorNow(ctx, versionNoticesToCurrent)
	if err != nil {
		return Result{}, err
	}
	if err := flow.Remind(ctx, w.in.Clinic, to, "REFERRAL_ESCALATION", w.in.Intervention,
		"No program could take the person in today: please call the family and arrange a place.", "no-program"); err != nil &&
		!w.pastFailedNotice(ctx, err, "no program") {
		return Result{}, err
	}
	return Result{Outcome: "ESCALATED", Programs: len(w.tried)}, nil
}

// versionIntakeTarget guards telling the counselor, IntakeTarget after
// the start (a day by default), that no intake is booked yet: before, the
// setting was read and never used, and the first word came with the
// overdue alert at IntakeAlert (three days), though a delay loses the
// person.
const versionIntakeTarget = "intake-target-nudge"

// nudgeUnbooked tells the counselor that the referral has no intake booked
// (the program has not answered, or accepted without a time), as the
// referrals service says now: a signal of a booking may still be on its
// way.
func (w *wf) nudgeUnbooked(ctx workflow.Context) error {
	var cur activities.ReferralInfo
	if err := flow.Call(ctx, &cur, flow.A.ReferralStatus, w.referral.Name); err != nil {
		// Advice, not a step of the intake: a read that fails (a
		// referrals outage past its retries) tells nothing, and the
		// overdue alert still comes.
		if temporal.IsCanceledError(err) || ctx.Err() != nil {
			return err
		}
		workflow.GetLogger(ctx).Warn("reading the referral at the intake target failed; no notice", "error", err)
		return nil
	}
	if cur.State != "REQUESTED" && cur.State != "ACCEPTED" {
		return nil
	}
	to, err := w.counselorNow(ctx, versionNoticesToCurrent)
	if err != nil {
		return err
	}
	err = flow.Remind(ctx, w.in.Clinic, to, "INTAKE_OVERDUE", w.referral.Name,
		"No intake is booked yet for the person who said yes: please call the program today, or cancel the referral so that another program can be offered.",
		"intake-target")
	if err != nil && w.pastFailedNotice(ctx, err, "intake target") {
		return nil
	}
	return err
}

// follow waits for the referral's transitions until it ends: "entered",
// "rejected" (try the next program) or "escalated".
func (w *wf) follow(ctx workflow.Context) (string, activities.ReferralInfo, error) {
	var info activities.ReferralInfo
	var pending []schedule.Planned // intake reminders not sent yet
	remindersFor := time.Time{}
	sentFor := time.Time{}     // the appointment the reminders created so far name
	noShowsHandled := int32(0) // a repeated signal must not act twice
	// resync takes the referral's state as a signal would: at the start,
	// for a referral this intake adopted (made or converted before it ran,
	// whose signals found no workflow), and when a review reads a state no
	// signal brought.
	resync := w.referral.Adopted && flow.Version(ctx, versionResync, 1) >= 1
	// reviewed is what the review that set resync read, taken as the
	// signal's read.
	var reviewed *activities.ReferralInfo
	for {
		// Deadlines: the next intake reminder, and the alert when no intake
		// has happened within IntakeAlert of the acceptance.
		var next time.Time
		if len(pending) > 0 {
			next = pending[0].At
		}
		if alertAt := w.started.Add(w.settings.IntakeAlert); !w.alerted && (next.IsZero() || alertAt.Before(next)) {
			next = alertAt
		}
		if !w.targetAt.IsZero() && (next.IsZero() || w.targetAt.Before(next)) {
			next = w.targetAt
		}
		if !w.holdReview.IsZero() && (next.IsZero() || w.holdReview.Before(next)) {
			next = w.holdReview
		}
		if !w.stallReview.IsZero() && (next.IsZero() || w.stallReview.Before(next)) {
			next = w.stallReview
		}
		var t Transition
		got := false
		if resync {
			t, got = Transition{Referral: w.referral.Name}, true
		} else {
			sel := workflow.NewSelector(ctx)
			woke := false
			sel.AddReceive(w.signals, func(c workflow.ReceiveChannel, _ bool) { got = flow.Receive(ctx, c, &t); woke = got })
			if !next.IsZero() {
				sel.AddFuture(w.timer(ctx, next), func(workflow.Future) { woke = true })
			}
			// A selector does not watch the context: with no deadline left
			// (the overdue alert sent, no reminder or review pending) a
			// cancellation would wait for the next transition. Receiving
			// from Done adds no command, so histories replay as before.
			sel.AddReceive(ctx.Done(), func(workflow.ReceiveChannel, bool) { woke = true })
			for !woke { // a signal that did not decode wakes nothing
				sel.Select(ctx)
			}
		}
		if err := ctx.Err(); err != nil {
			// Cancelled through Temporal: a timer made on this context is
			// ready at once, so waiting again would spin without yielding
			// (the worker's deadlock detector then fails every task). No
			// run before this change got past a cancellation here, so no
			// history needs a version to replay.
			return "", info, err
		}
		if w.keepTimer < 1 {
			w.stopTimer()
		}
		now := workflow.Now(ctx)
		if !got {
			for len(pending) > 0 && !now.Before(pending[0].At) {
				p := pending[0]
				pending = pending[1:]
				// A late reminder (the appointment booked at night for the
				// morning) waits for the end of quiet hours if that is still
				// before the appointment.
				sent, _, err := flow.RemindAwake(ctx, w.in.Clinic, person(p.Recipient, w.in.Family), "INTAKE_UPCOMING", w.referral.Name,
					fmt.Sprintf("Reminder: appointment on %s.", local(info.Appointment, p.Recipient.TimeZone)),
					w.intakePurpose(info.Appointment, p), time.Time{}, info.Appointment)
				if err != nil {
					if w.pastFailedNotice(ctx, err, "intake reminder") {
						continue
					}
					return "", info, err
				}
				if sent != "" {
					w.upcoming[sent] = info.Appointment
					sentFor = info.Appointment
				}
			}
			if !w.targetAt.IsZero() && !now.Before(w.targetAt) {
				w.targetAt = time.Time{}
				if err := w.nudgeUnbooked(ctx); err != nil {
					return "", info, err
				}
			}
			if !w.holdReview.IsZero() && !now.Before(w.holdReview) {
				// Still on hold: the counselor is asked again, so that a
				// pause the program forgot does not hold the person for
				// good. The program may have rebooked and its signal not
				// come yet (the outbox relays it): the service is asked
				// first, and a referral no longer on hold is left to that
				// signal, with the review put off rather than dropped.
				still := true
				if flow.Version(ctx, versionHoldRereads, 1) >= 1 {
					var cur activities.ReferralInfo
					if err := flow.Call(ctx, &cur, flow.A.ReferralStatus, w.referral.Name); err != nil {
						return "", info, err
					}
					still = cur.State == "ON_HOLD"
					if !still && cur.State != w.state && w.resyncs(ctx) {
						// Moved, and no signal came of it: taken as one.
						resync, reviewed = true, &cur
					}
				}
				if still {
					to, err := w.counselorNow(ctx, versionHoldRereads)
					if err != nil {
						return "", info, err
					}
					w.holdReviews++
					if err := flow.Remind(ctx, w.in.Clinic, to, "REFERRAL_ESCALATION", w.referral.Name,
						"The intake is still on hold: please check with the program, or cancel the referral so that another program can be offered.",
						fmt.Sprintf("on-hold|%s|%d|review|%d", w.referral.Name, w.pauses, w.holdReviews)); err != nil &&
						!w.pastFailedNotice(ctx, err, "hold review") {
						return "", info, err
					}
				}
				w.holdReview = now.Add(w.settings.IntakeAlert)
			}
			if !w.alerted && !now.Before(w.started.Add(w.settings.IntakeAlert)) && w.state != "COMPLETED" {
				to, err := w.counselorNow(ctx, versionNoticesToCurrent)
				if err != nil {
					return "", info, err
				}
				if err := flow.Remind(ctx, w.in.Clinic, to, "INTAKE_OVERDUE", w.referral.Name,
					"The person who said yes has not started yet: please follow up today.", "intake-overdue"); err != nil &&
					!w.pastFailedNotice(ctx, err, "intake overdue") {
					return "", info, err
				}
				w.alerted = true
				if flow.Version(ctx, versionStallReviews, 1) >= 1 {
					w.stallReview = now.Add(w.settings.IntakeAlert)
				}
			}
			if !w.stallReview.IsZero() && !now.Before(w.stallReview) {
				// Advice to the counselor, not a step of the intake: a
				// review that fails (a referrals outage past the retries)
				// waits for the next, due already.
				moved, err := w.reviewStall(ctx, now)
				if err != nil &&
					!flow.GoOnPast(ctx, err, versionStallReviewBestEffort, "reviewing a stalled intake failed; the next review asks again") {
					return "", info, err
				}
				if moved != nil && w.resyncs(ctx) {
					resync, reviewed = true, moved
				}
			}
			if !resync {
				continue
			}
			t = Transition{Referral: w.referral.Name}
		}
		if t.Referral != w.referral.Name {
			continue // an older referral of this intake, already given up
		}
		resync = false
		// The signal says something changed; the service says what is true
		// (read already by the review that found the change).
		if reviewed != nil {
			info, reviewed = *reviewed, nil
		} else if err := flow.Call(ctx, &info, flow.A.ReferralStatus, w.referral.Name); err != nil {
			return "", info, err
		}
		was := w.state
		w.state, w.appointment = info.State, info.Appointment
		if info.State != "ON_HOLD" {
			w.holdReview = time.Time{}
		}
		if !sentFor.IsZero() && (info.State != "SCHEDULED" || !info.Appointment.Equal(sentFor)) &&
			(info.State != "COMPLETED" || now.Before(sentFor)) {
			// A reminder may still wait (for the end of quiet hours, or for
			// the automation) that names the old time.
			if err := w.cancelStale(ctx, info.State); err != nil && !w.pastFailedNotice(ctx, err, "stale intake reminders") {
				return "", info, err
			}
			sentFor = time.Time{}
		}
		switch info.State {
		case "SCHEDULED":
			if !info.Appointment.Equal(remindersFor) {
				remindersFor = info.Appointment
				var rs []schedule.Recipient
				for _, c := range w.contacts {
					rs = append(rs, c.Recipient())
				}
				pending = schedule.Plan(info.Appointment, now, w.settings.IntakeReminderOffsets, rs)
				if awake := schedule.PlanAwake(info.Appointment, now, w.settings.IntakeReminderOffsets, rs); len(awake) != len(pending) &&
					flow.Version(ctx, versionLateReminderAwake, 1) >= 1 {
					pending = awake
				}
			}
		case "COMPLETED":
			return "entered", info, nil
		case "NO_SHOW":
			if info.NoShows <= noShowsHandled {
				continue
			}
			noShowsHandled = info.NoShows
			pending = nil
			to, err := w.counselorNow(ctx, versionNoticesToCurrent)
			if err != nil {
				return "", info, err
			}
			if int(info.NoShows) > w.settings.MaxNoShows {
				err := flow.Remind(ctx, w.in.Clinic, to, "REFERRAL_ESCALATION", w.referral.Name,
					"The person missed the intake appointment again: please reach out and decide next steps.", "no-show-escalation")
				if err != nil && w.pastFailedNotice(ctx, err, "no-show escalation") {
					err = nil
				}
				return "escalated", info, err
			}
			// Re-engage within the day: the counselor calls, the program
			// rebooks. Due at once, by the service's clock (see
			// flow.RemindAt).
			if err := flow.Remind(ctx, w.in.Clinic, to, "REENGAGEMENT", w.referral.Name,
				"The intake appointment was missed: please reach out today and help rebook.",
				fmt.Sprintf("reengage|%s|%d", w.referral.Name, info.NoShows)); err != nil && !w.pastFailedNotice(ctx, err, "re-engagement") {
				return "", info, err
			}
		case "ON_HOLD":
			// A pause came with the state itself: a run begun before
			// it, which saw one on an older worker, did nothing here.
			if flow.Version(ctx, versionOnHold, 1) < 1 {
				continue
			}
			// The program paused the intake: the booked time will not
			// happen (its reminders were cancelled above), and a
			// rebooking plans reminders anew. The counselor hears of it
			// once per pause, and again every IntakeAlert while it lasts.
			pending, remindersFor = nil, time.Time{}
			if was != "ON_HOLD" {
				w.pauses++
				to, err := w.counselorNow(ctx, versionHoldRereads)
				if err != nil {
					return "", info, err
				}
				if err := flow.Remind(ctx, w.in.Clinic, to, "REFERRAL_ESCALATION", w.referral.Name,
					"The program put the intake on hold: please ask the program what it waits for, and keep the family informed.",
					fmt.Sprintf("on-hold|%s|%d", w.referral.Name, w.pauses)); err != nil && !w.pastFailedNotice(ctx, err, "on hold") {
					return "", info, err
				}
				w.holdReview, w.holdReviews = now.Add(w.settings.IntakeAlert), 0
			}
		case "REJECTED", "CANCELLED":
			return "rejected", info, nil
		}
	}
}

// reviewStall asks the counselor again about an intake that has still not
// started, every IntakeAlert after the overdue alert: a program that
// accepted and then went quiet, an appointment passed with no report, a
// no-show never rebooked would otherwise leave the intake, and the
// intervention waiting on it, open for good with one alert sent. The
// referral is read first: one moving again (its signal on the way), on
// hold (the hold reviews ask), or booked ahead is not stalled.
//
// moved is the referral as read when it is in another state than the
// last signal said, nil otherwise: the change is then taken as a signal
// (see versionResyncOnReview).
func (w *wf) reviewStall(ctx workflow.Context, now time.Time) (moved *activities.ReferralInfo, err error) {
	w.stallReview = now.Add(w.settings.IntakeAlert)
	var cur activities.ReferralInfo
	if err := flow.Call(ctx, &cur, flow.A.ReferralStatus, w.referral.Name); err != nil {
		return nil, err
	}
	if cur.State != w.state {
		moved = &cur
	}
	switch {
	case cur.State == "REQUESTED", cur.State == "ACCEPTED", cur.State == "NO_SHOW",
		cur.State == "SCHEDULED" && !cur.Appointment.After(now):
	default:
		return moved, nil
	}
	to, err := w.counselorNow(ctx, versionNoticesToCurrent)
	if err != nil {
		return moved, err
	}
	w.stallReviews++
	return moved, flow.Remind(ctx, w.in.Clinic, to, "REFERRAL_ESCALATION", w.referral.Name,
		"The intake has still not started: please check with the program, or cancel the referral so that another program can be offered.",
		fmt.Sprintf("intake-overdue|%s|review|%d", w.referral.Name, w.stallReviews))
}

// versionResync guards taking the referral's state as a signal would when
// no signal brought it, read once as the intake starts to follow a
// referral it adopted (and see versionResyncOnReview). Before, a
// referral adopted by the intake (made or converted by hand before the
// intake ran, whose signals the dispatcher counted as delivered for want
// of a workflow) was taken as REQUESTED: turned down, it never went on to
// the next program; admitted, it kept the intake, and the intervention,
// open for good.
const versionResync = "intake-resync-from-status"

// versionResyncOnReview guards a hold or stall review that finds the
// referral moved taking the change as a signal. An id of its own, asked
// only then: an intake that was following its referral when the start's
// read came in (versionResync) gets it too, at its next such review.
const versionResyncOnReview = "intake-resync-on-review"

// resyncs reports whether a review that found the referral moved takes
// the change as a signal.
func (w *wf) resyncs(ctx workflow.Context) bool {
	return flow.Version(ctx, versionResyncOnReview, 1) >= 1
}

// versionPastFailedNotice guards going on when an intake reminder, a
// notice to the counselor or the cancelling of stale reminders fails for
// good (refused, or the interventions service out through a day of
// retries): before, the intake ended, and the person who said yes lost the
// re-engagement, the reviews and the family's support referrals after
// entry. Asked only on such a failure. A read of the referral that fails
// for good still ends the intake, telling the counselor: going on, it
// would follow nothing.
const versionPastFailedNotice = "intake-go-on-past-failed-notice"

// pastFailedNotice reports whether the intake goes on past err, the
// failure of the step what names, and logs it if so.
func (w *wf) pastFailedNotice(ctx workflow.Context, err error, what string) bool {
	return flow.GoOnPast(ctx, err, versionPastFailedNotice, "an intake step failed; going on without it", "step", what)
}

// versionStallReviews guards asking the counselor again, every
// IntakeAlert, about an intake that has not started since the overdue
// alert: before, the alert was the last deadline, and a referral that went
// quiet kept the intake waiting for good.
const versionStallReviews = "review-stalled-intake"

// versionStallReviewBestEffort guards going on when a stall review fails
// for good: before, it ended the intake and the intervention waiting on
// it. Asked only then.
const versionStallReviewBestEffort = "stall-review-best-effort"

// versionOnHold guards answering a referral put on hold (a state added
// with it): reminders of the paused time dropped, the counselor told.
const versionOnHold = "intake-on-hold"

// versionHoldRereads guards reading again before the counselor hears of a
// hold: the family's counselor now (a hold can last weeks, and families
// are reassigned), and, before a review of a hold that lasts, the referral
// (the program may have rebooked, its signal still on the way).
const versionHoldRereads = "hold-rereads"

// versionNoticesToCurrent guards sending the counselor's other notices
// (intake overdue, no-show, no program) to the family's counselor of the
// moment, as the hold notices are: they come days after the meeting.
const versionNoticesToCurrent = "notices-to-current-counselor"

// counselorNow is who the counselor's notices go to: the family's
// counselor now, or, on a run begun before change (the version that
// brought it to these notices), the one who ran the meeting.
func (w *wf) counselorNow(ctx workflow.Context, change string) (activities.Person, error) {
	to := w.in.Counselor
	if flow.Version(ctx, change, 1) < 1 {
		return to, nil
	}
	// A notice waits for this read at most flow.SoonEnough, then goes to
	// the counselor the intake began with: a no-show or an overdue intake
	// must not wait out a day of the families service's outage.
	if err := flow.Call(flow.Soon(ctx, flow.SoonEnough), &to, flow.A.FamilyCounselor, w.in.Family, w.in.Counselor); err != nil {
		if temporal.IsCanceledError(err) {
			return to, err
		}
		workflow.GetLogger(ctx).Warn("counselor not read again; telling the one the intake began with", "error", err)
		return w.in.Counselor, nil
	}
	return to, nil
}

// versionKeepTimer guards keeping the deadline's timer across signals that
// leave the deadline where it was; before it, every signal cancelled the
// timer and the next wait started another, two events each time.
const versionKeepTimer = "keep-intake-timer"

// timer returns a timer that fires at at, reusing the one already running
// for the same time.
func (w *wf) timer(ctx workflow.Context, at time.Time) workflow.Future {
	if w.keepTimer == 0 {
		w.keepTimer = flow.Version(ctx, versionKeepTimer, 1)
	}
	if w.keepTimer >= 1 && w.timerFuture != nil && !w.timerFuture.IsReady() && w.timerAt.Equal(at) {
		return w.timerFuture
	}
	w.stopTimer()
	tctx, cancel := workflow.WithCancel(ctx)
	w.timerFuture, w.timerAt, w.timerCancel = workflow.NewTimer(tctx, max(0, at.Sub(workflow.Now(ctx)))), at, cancel
	return w.timerFuture
}

func (w *wf) stopTimer() {
	if w.timerCancel != nil {
		w.timerCancel()
	}
	w.timerFuture, w.timerCancel = nil, nil
}

// intakePurpose names an intake reminder's request. After a cancellation
// it carries their count: an appointment moved back to a time whose
// reminders were cancelled gets new ones, not the cancelled ones again.
// Runs that never cancelled keep the ids they always had.
func (w *wf) intakePurpose(appointment time.Time, p schedule.Planned) string {
	purpose := fmt.Sprintf("intake|%s|%d|%s|%s", w.referral.Name, appointment.Unix(), p.Recipient.ID, p.Offset)
	if w.cancels > 0 {
		purpose += fmt.Sprintf("|c%d", w.cancels)
	}
	return purpose
}

// cancelStale cancels the intake reminders of the current referral not
// delivered yet, now that it is in state.
func (w *wf) cancelStale(ctx workflow.Context, state string) error {
	if flow.Version(ctx, versionCancelStale, 1) < 1 {
		return nil
	}
	why := map[string]string{"SCHEDULED": "appointment moved", "NO_SHOW": "appointment missed",
		"COMPLETED": "appointment kept", "ON_HOLD": "intake on hold"}[state]
	if why == "" {
		why = "referral ended"
	}
	w.cancels++
	return flow.Call(ctx, nil, flow.A.CancelReminders, activities.CancelRemindersRequest{
		Clinic: w.in.Clinic, Related: w.referral.Name, Kind: "INTAKE_UPCOMING", Reason: why,
		RequestID: flow.RequestID(ctx, fmt.Sprintf("cancel-intake|%d", w.cancels)),
	})
}

// staleReminder reports whether a failed intake reminder's line no longer
// deserves a resend: the appointment it names was moved, missed or kept, or
// the referral it belongs to ended, or its time has come.
func (w *wf) staleReminder(ctx workflow.Context, first string) bool {
	appt, ok := w.upcoming[first]
	if ok && (w.state != "SCHEDULED" || !appt.Equal(w.appointment)) {
		return true
	}
	// Sent again once the appointment began, it reminds of nothing; a run
	// begun before this change sent it.
	return ok && !workflow.Now(ctx).Before(appt) && flow.Version(ctx, versionNoResendAfterStart, 1) >= 1
}

// versionNoResendAfterStart guards calling an intake reminder stale once
// the appointment has begun.
const versionNoResendAfterStart = "no-resend-after-start"

// entered records the result and refers the family to its own support.
func (w *wf) entered(ctx workflow.Context, info activities.ReferralInfo) (Result, error) {
	member := ""
	for _, c := range w.contacts {
		if c.Kind == "member" {
			member = c.ID
		}
	}
	if member != "" {
		if err := flow.Call(ctx, nil, flow.A.CreateSupportReferrals, activities.SupportRequest{
			Family: w.in.Family, Intervention: w.in.Intervention, Member: member,
			Kinds: []string{"FAMILY_COUNSELING", "FAMILY_SUPPORT_GROUP"}, Urgency: "ROUTINE",
			// Added after runs began under this request id: a retry that
			// finds it used with the old reason gets the referral it made
			// (CreateSupportReferrals takes REQUEST_ID_REUSED).
			Reason:    "Support for the family now that their loved one has entered treatment.",
			RequestID: flow.RequestID(ctx, "family-support"),
		}); err != nil {
			if !flow.GoOnPast(ctx, err, versionEnteredPastFailedSupport, "the family's support referrals after treatment entry failed; the counselor is told") {
				return Result{}, err
			}
			// The counselor makes them by hand (failed says so for an
			// intake whose referral completed); the entry stands.
			w.failed(ctx, err)
			w.toldOfFailure = true
		}
	}
	return Result{Outcome: "ENTERED_TREATMENT", Referral: w.referral.Name, Program: w.referral.Program,
		DaysToTreatment: info.DaysToTreatment, Programs: len(w.tried)}, nil
}

func person(r schedule.Recipient, family string) activities.Person {
	return activities.Person{Kind: r.Kind, ID: r.ID, Family: family, Channel: r.Channel, TimeZone: r.TimeZone,
		QuietStart: r.Quiet.Start, QuietEnd: r.Quiet.End}
}

func local(t time.Time, zone string) string {
	if loc, err := time.LoadLocation(zone); err == nil && zone != "" {
		t = t.In(loc)
	} else {
		t = t.UTC()
	}
	return t.Format("Mon Jan 2 at 3:04 PM MST")
}
