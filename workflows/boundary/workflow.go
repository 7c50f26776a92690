// Package boundary is the workflow that follows a refusal: safety first,
// then the family's agreed boundaries reinforced, support for the family
// and harm reduction for the loved one, check-ins on a schedule, an
// overdose answered at once, and, after a cool-down or a window of
// opportunity, the next intervention one ARISE level up proposed to the
// counselor. There is one per family at a time.
package boundary

import (
	"fmt"
	"slices"
	"strings"
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
	Name               = "BoundaryReinforcement"
	SignalOverdose     = "overdose"
	SignalSafetyScreen = "safety-screen"
	SignalCheckIn      = "check-in"
	SignalRestart      = "restart"
	QueryStatus        = "status"
)

// Input starts the workflow. State is empty on the first run and carries
// progress across continue-as-new.
type Input struct {
	Family       string
	Clinic       string
	Intervention string
	Level        int32
	Outcome      string
	Counselor    activities.Person
	// MeetingStart is when the refused meeting began: overdoses recorded
	// since then, before this workflow ran to hear of them, are answered
	// when it starts.
	MeetingStart time.Time
	// Accepted are the services the loved one accepted at the refused
	// meeting (a partial yes, or a no with harm reduction accepted) that
	// its workflow referred already; none if those referrals failed.
	Accepted []string `json:",omitempty"`
	State    *State
}

// State is the workflow's progress.
type State struct {
	Cycle       int // bumps on every restart, keeps request ids apart
	Began       time.Time
	Screened    bool // a counselor was asked for a screen, or it was current
	Reinforced  bool
	Referred    bool
	CheckIns    []time.Time // still to come
	CheckInsRun int
	EscalateAt  time.Time
	Escalated   bool
	Proposed    string
	Overdoses   int
	Events      int // signals handled in this run, for continue-as-new
	// Resends carries failed reminders' retries into the next run.
	Resends flow.Resends
	// LastDue is when the latest of the members' reminders can still fail:
	// when it is due (quiet hours can hold one back for hours), or when
	// the member's quiet hours next begin. The workflow listens for its
	// failure at least until then before it ends.
	LastDue time.Time
	// OverdoseSigns are the warning signs already answered: the outbox
	// delivers at least once, and an overdose must be answered once.
	OverdoseSigns []string
	// Refusals counts reinforcements the service refused for a screen
	// that found risk, to tell the counselor of each.
	Refusals int
	// CheckInsSeen are the check-ins already taken ("<intervention>#<n>"):
	// one delivered again after a restart, which begins a new cycle, must
	// not act on the new one.
	CheckInsSeen []string
	// EscalationBlocked is set while the formal meeting the cool-down
	// called for waits for an active boundary that states a consequence.
	EscalationBlocked bool
	// BlockedAtEnd is set once the counselor is told that the check-ins
	// ended with the formal meeting still waiting (see versionBlockedKept).
	BlockedAtEnd bool
	// WindowBeforeScreen is why the next meeting is due, when a check-in
	// reported a window of opportunity (or new warning signs) before the
	// boundaries were reinforced: it is proposed once they are (see
	// versionWindowBeforeScreen).
	WindowBeforeScreen string `json:",omitempty"`
	// EscalationUnsafe is set while the next meeting the workflow would
	// propose waits for a screen that finds the family safe: one since the
	// boundaries were reinforced found risk (see versionGateOnScreen).
	EscalationUnsafe bool
	// UnsafeAtEnd is set once the counselor is told that the check-ins
	// ended with that meeting still waiting.
	UnsafeAtEnd bool
	// MemberLines are the reminders made to members (boundary reminders,
	// check-ins): their failures are not sent again while the latest
	// screen is not current (see versionHoldMembersOnRisk).
	MemberLines []string
	// RiskHolds counts the screens that, after boundaries were
	// reinforced, found risk or were not current: each cancels the
	// members' reminders still to go, under a request id of its own.
	RiskHolds int
	// CheckInsAtBegin is CheckInsRun when the cycle began: the service
	// numbers check-ins per intervention, and so do the counselor's
	// reminders. Request ids keep counting across cycles.
	CheckInsAtBegin int
	// UnsafeNotices and BlockedNotices count the counselor's notices that
	// the next meeting waits for a safe screen, or for a consequence: it
	// can wait for one, then the other, then the first again, and each
	// notice needs a request id of its own, or the service would answer
	// the second with the first and tell the counselor nothing.
	UnsafeNotices, BlockedNotices int
	// Early are check-ins recorded before the workflow ran, read when it
	// started (see versionEarlyCheckIns), still to be taken as their
	// signals would have been.
	Early []CheckIn
	// Later are check-ins of a meeting other than the cycle's, kept for the
	// restart that makes it the cycle's (see versionCheckInsOfNext).
	Later []CheckIn
	// AlertLines are the overdose alerts this workflow made, and its
	// notices that an overdose's urgent referral could not be made:
	// unlike its other reminders, they are still sent again when their
	// delivery fails after a cancel (see versionHearAlertsOut). AlertedAt
	// is when the latest was made.
	AlertLines []string
	AlertedAt  time.Time
}

// versionGateOnScreen guards holding member check-ins and the next
// meeting's proposal while the family's latest screen is not current.
// Before, the gate was passed once, when the boundaries were reinforced: a
// screen finding risk afterwards (a threat of violence at home) left the
// contact person's check-in messages and a firmer meeting to come as
// planned. Asked only when the screen is not current.
const versionGateOnScreen = "gate-on-current-screen"

// versionTightenKeepsSooner guards keeping, when an overdose brings the
// check-ins closer, those already due sooner than the first tightened one.
// Before, a check-in due within the day (or one whose timer had just
// fired) moved to a day after the overdose. Asked only when one is.
const versionTightenKeepsSooner = "tighten-keeps-sooner"

// versionRefusalsCounted guards numbering the counselor's notices of
// refused reinforcements, so that a second refusal is not taken for a
// retry of the first.
const versionRefusalsCounted = "refusals-counted"

// versionOnceEach guards two fixes that change commands: a redelivered
// overdose is answered once, and a continued run reloads the family.
const versionOnceEach = "overdose-once-and-reload-family"

// versionIDsByRun: request ids name the execution's first run, not the
// instant the cycle began.
const versionIDsByRun = "request-ids-by-run"

// versionCurrentCounselor guards reading the family again before an
// overdose alert or a check-in, and addressing the family's counselor of
// that moment rather than the one of the refused meeting: families are
// reassigned, and a later refusal by another counselor restarts this
// workflow without naming them.
const versionCurrentCounselor = "current-counselor"

// versionEarlyOverdoses guards answering, when the workflow starts,
// overdoses recorded since the refused meeting began: their signals found
// no workflow to deliver to.
const versionEarlyOverdoses = "answer-overdoses-before-start"

// versionEarlyCheckIns guards taking, when the workflow starts, the
// check-ins recorded on the refused meeting before it ran: the meeting's
// workflow starts this one after giving back its places and making the
// support referrals, and a check-in recorded meanwhile signalled no
// workflow, and was lost.
const versionEarlyCheckIns = "check-ins-before-start"

// versionCheckInsOfNext guards keeping a check-in of another meeting for
// the restart that makes that meeting the cycle's: a meeting refused while
// this workflow runs restarts it once that meeting's workflow has given
// back its places and referred, and a check-in recorded on it meanwhile
// was taken as the running cycle's (escalating from the meeting before,
// or dropped if that one had), and never by its own. Asked only when one
// comes.
const versionCheckInsOfNext = "check-ins-of-the-next-meeting"

// versionNextCheckInOnce guards passing over another meeting's check-in
// delivered again: before, the second delivery was taken as the running
// cycle's (and could escalate it), and again at that meeting's restart.
// Asked only then.
const versionNextCheckInOnce = "next-meetings-check-in-once"

// versionListenAtEnd guards waiting, before the workflow ends, for the
// delivery failures of its last check-ins and alerts, so that they are
// sent again: a failure signalled to a closed workflow is lost.
const versionListenAtEnd = "listen-before-end"

// versionScreenRefused guards waiting for a new safety screen when the
// families service refuses a reinforcement for want of a safe one (a screen
// that found risk was recorded after the family was read), where the
// workflow used to fail.
const versionScreenRefused = "wait-when-reinforcement-refused"

// versionFamilyGone guards ending quietly when the family's record is
// deleted while the workflow runs (a read of it finds nothing before the
// FamilyDeleted workflow's cancellation arrives), where it used to fail.
const versionFamilyGone = "end-when-family-deleted"

// SummaryFamilyDeleted is the summary of a run that ended because the
// family's record was deleted.
const SummaryFamilyDeleted = "the family's record was deleted"

// versionFamilyClosed guards ending quietly when a step is refused because
// the family's case was closed (FAMILY_CLOSED: no meeting is proposed for
// it), where the workflow, and with it the meeting's, used to fail. The
// FamilyClosed workflow cancels this one, but a run can start or go on
// after that (an outcome recorded late, a cancel that did not reach it).
// Asked only on that failure path.
const versionFamilyClosed = "end-when-family-closed"

// versionEndsInTreatment guards ending when the family reads engaged in
// treatment, asked only then (so only in the epoch that covers it: the id
// would name, in visibility, a family whose loved one is in treatment).
// TreatmentEntered cancels a run under way, but a run started after it (a
// refusal recorded late; the referral's completion delivered before an
// outcome, the two outboxes unordered) went on reinforcing boundaries,
// checking in and proposing a firmer meeting for someone in treatment.
const versionEndsInTreatment = "boundary-ends-in-treatment"

// errInTreatment is the error type readSafety ends a run with when the
// family is engaged in treatment.
const errInTreatment = activities.FamilyInTreatment

// SummaryInTreatment is the summary of a run that ended because the loved
// one is in treatment.
const SummaryInTreatment = "the loved one is in treatment"

// SummaryFamilyClosed is the summary of a run that ended because the
// family's case was closed.
const SummaryFamilyClosed = "the family's case was closed"

// Overdose is SignalOverdose's payload.
type Overdose struct {
	WarningSign string
}

// CheckIn is SignalCheckIn's payload: the counselor's record of a check-in.
type CheckIn struct {
	Intervention        string
	Number              int32
	WindowOfOpportunity bool
	NewWarningSigns     bool
}

// Restart is SignalRestart's payload: another intervention of the family was
// refused while this workflow runs.
type Restart struct {
	Intervention string
	Level        int32
	Outcome      string
	Accepted     []string `json:",omitempty"` // as Input's
}

// Result is how the workflow ended.
type Result struct {
	Summary  string
	Proposed string
	CheckIns int
}

// Status answers QueryStatus.
type Status struct {
	Step        string
	NextCheckIn time.Time
	Proposed    string
	Overdoses   int
}

// eventsPerRun bounds a run's history before it continues as new.
const eventsPerRun = 500

type wf struct {
	in       Input
	st       *State
	settings activities.Settings
	safety   activities.Safety
	step     string
	current  bool // versionCurrentCounselor is on (decided at the first refresh)
	decided  bool
	chain    string // the first run id of this execution, the same after continue-as-new
	byRun    bool   // request ids name chain (versionIDsByRun)
	// outlive says the resends run on a context a cancel does not reach
	// (versionResendsOutlive); ended, that the run has stopped following
	// up (cancelled, or its family's case closed), once the step under way
	// returned; cut is the run's context, which a cancel reaches at once,
	// before that. After either only the alerts' resends go out.
	outlive, ended bool
	cut            workflow.Context
	// unreadScreen says holdMembers, at the last safety screen's signal,
	// could not read the family.
	unreadScreen bool

	overdose, screen, checkIn, restart, failedReminders workflow.ReceiveChannel
}

// Workflow is the boundary reinforcement workflow.
func Workflow(ctx workflow.Context, in Input) (Result, error) {
	ctx = flow.BeginEpoch(ctx)
	w := &wf{in: in, st: in.State, step: "starting", chain: workflow.GetInfo(ctx).FirstRunID,
		overdose: workflow.GetSignalChannel(ctx, SignalOverdose), screen: workflow.GetSignalChannel(ctx, SignalSafetyScreen),
		checkIn: workflow.GetSignalChannel(ctx, SignalCheckIn), restart: workflow.GetSignalChannel(ctx, SignalRestart)}
	if w.st == nil {
		w.st = &State{}
	}
	// A run begun before keeps the ids it has been sending: a task of it
	// tried again under new ids would send its requests twice.
	w.byRun = flow.Version(ctx, versionIDsByRun, 1) >= 1
	if err := workflow.SetQueryHandler(ctx, QueryStatus, func() (Status, error) {
		s := Status{Step: w.step, Proposed: w.st.Proposed, Overdoses: w.st.Overdoses}
		if len(w.st.CheckIns) > 0 {
			s.NextCheckIn = w.st.CheckIns[0]
		}
		return s, nil
	}); err != nil {
		return Result{}, err
	}
	actx := flow.WithActivityOptions(ctx)
	res, err := w.run(actx)
	if temporal.IsCanceledError(err) && w.overdose.Len() > 0 && flow.Version(actx, versionAlertFirst, 1) >= 1 {
		w.answerWaiting(actx)
	}
	if temporal.IsCanceledError(err) {
		w.ended = true
		w.tidyOnCancel(ctx)
		w.answerLate(actx)
		w.hearAlertsOut(ctx)
	}
	if err != nil && w.familyGone(flow.WithActivityOptions(ctx), err) {
		w.step = "done"
		return Result{Summary: SummaryFamilyDeleted, Proposed: w.st.Proposed, CheckIns: w.st.CheckInsRun}, nil
	}
	if err != nil && !temporal.IsCanceledError(err) && w.overdose.Len() > 0 && flow.Version(actx, versionAnswerOnFailure, 1) >= 1 {
		// A step failed for good while an overdose waited behind it: the
		// failure stands, but the overdose is answered first, as on a
		// cancellation.
		w.answerWaiting(actx)
	}
	ended := ""
	if err != nil && activities.ErrorType(err) == activities.FamilyClosed && flow.Version(actx, versionFamilyClosed, 1) >= 1 {
		ended = SummaryFamilyClosed
	} else if err != nil && activities.ErrorType(err) == errInTreatment {
		// readSafety gives it from versionEndsInTreatment on, and the
		// families service refuses a boundary step so (any run).
		ended = SummaryInTreatment
	}
	if ended != "" {
		// Its own reminders still to go are cancelled as on a cancel:
		// the counselor's notices would ask for work on a closed case, or
		// for boundaries with someone in treatment.
		w.ended = true
		w.tidyOnCancel(ctx)
		w.answerLate(actx)
		w.hearAlertsOut(ctx)
		w.step = "done"
		return Result{Summary: ended, Proposed: w.st.Proposed, CheckIns: w.st.CheckInsRun}, nil
	}
	return res, err
}

// tidyOnCancel cancels, as the workflow is cancelled, the reminders it
// made that are still to go: its check-ins, boundary reminders, the
// notice of a proposed meeting and the ask for a safety screen. Cancelled
// with its intervention (through Temporal), it left them, and those held
// back for quiet hours went out in the morning. Not its overdose alerts
// nor the counselor's notice of a failed harm-reduction referral: an
// overdose answered as it stopped still needs them. A yes at a later
// meeting (stopBoundary) and a deleted family cancel them too; a second
// cancel finds nothing left.
func (w *wf) tidyOnCancel(ctx workflow.Context) {
	dctx, stop := workflow.NewDisconnectedContext(ctx)
	defer stop()
	if flow.Version(dctx, versionTidyOnCancel, 1) < 1 {
		return
	}
	if err := flow.Call(flow.WithActivityOptions(dctx), nil, flow.A.CancelReminders, activities.CancelRemindersRequest{
		Clinic: w.in.Clinic, Origin: workflow.GetInfo(ctx).WorkflowExecution.ID, Reason: "boundary workflow cancelled",
		Kinds:     OwnReminderKinds(),
		RequestID: flow.RequestID(dctx, w.id("cancel-reminders|cancelled")),
	}); err != nil {
		workflow.GetLogger(ctx).Error("cancelling the boundary workflow's reminders after it was cancelled failed", "error", err)
	}
}

// answerLate answers the overdoses signalled while the workflow tidied up
// as it ended: the dispatcher sent them here because it still ran, and
// would start no alert of its own. Nothing yields after it, so none can
// come in behind it.
func (w *wf) answerLate(ctx workflow.Context) {
	if w.overdose.Len() > 0 && flow.Version(ctx, versionAnswerAfterTidy, 1) >= 1 {
		w.answerWaiting(ctx)
	}
}

// hearAlertsOut keeps a run that was cancelled, or whose family's case was
// closed, open while an overdose's alert it made can still fail, and
// sends such a failure again: the alert still matters to a loved one
// who overdosed whatever stopped the follow-up, and a failure signalled
// to a closed workflow is lost. An overdose signalled meanwhile is
// answered, and listened for in turn. The wait does not end for a
// restart: a refusal that soon after a yes or a closing joins this run
// and is lost, as it is while the run tidies up.
func (w *wf) hearAlertsOut(ctx workflow.Context) {
	if !w.outlive || !w.alertsAtRisk(ctx) || flow.Version(ctx, versionHearAlertsOut, 1) < 1 {
		return
	}
	dctx, stop := workflow.NewDisconnectedContext(ctx)
	defer stop()
	actx := flow.WithActivityOptions(dctx)
	w.step = "finishing"
	// Listen waits for the latest time any resend can fail at: a member's
	// check-in held for quiet hours may be it, but the tidy-up cancelled
	// that one. An alert goes to the counselor, and fails by when it was
	// made or sent again.
	if w.st.Resends.FailsBy.After(w.st.AlertedAt) {
		w.st.Resends.FailsBy = w.st.AlertedAt
	}
	for {
		if err := flow.Listen(actx, w.settings, &w.st.Resends, time.Time{}, func() bool { return w.overdose.Len() > 0 }); err != nil {
			workflow.GetLogger(ctx).Warn("listening for overdose alerts' failures after the end failed", "error", err)
			return
		}
		if w.overdose.Len() == 0 {
			return
		}
		w.answerWaiting(actx)
	}
}

// alertsAtRisk reports whether an overdose's alert or notice this
// workflow made can still fail: one made or sent again within
// flow.ListenFor (AlertedAt), or a resend of one still waiting.
func (w *wf) alertsAtRisk(ctx workflow.Context) bool {
	if len(w.st.AlertLines) == 0 {
		return false
	}
	if workflow.Now(ctx).Before(w.st.AlertedAt.Add(flow.ListenFor(w.settings))) {
		return true
	}
	return slices.ContainsFunc(w.st.Resends.Pending, func(p flow.Resend) bool {
		return slices.Contains(w.st.AlertLines, w.st.Resends.Line(p.Reminder))
	})
}

// staleResend says whether a failed reminder of line is not to be sent
// again: once the run was cancelled or its case closed, every one but an
// overdose's alerts and notices (tidyOnCancel cancels the rest), and
// before that a member's while the family is not safe (heldForRisk). An
// alert about to go out again counts as made now: it can fail again, and
// a run cancelled meanwhile listens for it (alertsAtRisk).
func (w *wf) staleResend(ctx workflow.Context, line string) bool {
	alert := w.outlive && slices.Contains(w.st.AlertLines, line)
	if alert {
		w.st.AlertedAt = workflow.Now(ctx)
	}
	if w.outlive && (w.ended || w.cut.Err() != nil) {
		return !alert
	}
	return w.heldForRisk(ctx, line)
}

// versionResendsOutlive guards running the resends of failed reminders on
// a context a cancel does not reach. Before, a cancel cut every resend
// short, an overdose alert's among them.
const versionResendsOutlive = "resends-outlive-cancel"

// versionHearAlertsOut guards hearAlertsOut. Before, a run cancelled (a
// yes at a later meeting, treatment entered) or closed ended at once: an
// overdose alert answered as it stopped, or just before, whose delivery
// then failed was never sent again. Asked only when one can still fail,
// in a new epoch.
const versionHearAlertsOut = "hear-alerts-out"

// versionAnswerAfterTidy guards answerLate. Before, an overdose signalled
// while the workflow cancelled its reminders on the way out (a call that
// can wait out an outage of the interventions service) was dropped.
const versionAnswerAfterTidy = "answer-overdoses-after-tidy"

// OwnReminderKinds are the kinds of reminder the workflow makes that end
// with it (a yes, a cancel): its check-ins, boundary reminders, a proposed
// meeting's notice and a screen asked for. Not its overdose alerts, nor a
// failed harm-reduction referral put to the counselor: an overdose answered
// as it stopped still needs them.
func OwnReminderKinds() []string {
	return []string{"CHECK_IN", "BOUNDARY_REMINDER", "ESCALATION_PROPOSED", "SAFETY_SCREEN_NEEDED"}
}

// versionTidyOnCancel guards tidyOnCancel.
const versionTidyOnCancel = "boundary-tidy-on-cancel"

// versionAnswerOnFailure guards answering, when a step fails the workflow,
// the overdoses signalled and not yet taken: before, they were answered
// only on a cancellation, and a failure left them unanswered for good.
const versionAnswerOnFailure = "answer-overdoses-on-failure"

// familyGone reports whether err, which ended the run, came of the
// family's record being deleted: a read found nothing, and the family,
// read again, is not there. The FamilyDeleted workflow cancels this one
// too, but a step can read the family before that arrives: that is no
// failure to alert an operator about.
func (w *wf) familyGone(ctx workflow.Context, err error) bool {
	if t := activities.ErrorType(err); t != "RESOURCE_NOT_FOUND" && t != "NotFound" {
		return false
	}
	if flow.Version(ctx, versionFamilyGone, 1) < 1 {
		return false
	}
	var s activities.Safety
	t := activities.ErrorType(flow.Call(ctx, &s, flow.A.FamilySafety, w.in.Family))
	return t == "RESOURCE_NOT_FOUND" || t == "NotFound"
}

// id makes a purpose unique to this cycle: the workflow id is reused for a
// family's later refusals, so an execution is told apart by its first run
// id (kept across continue-as-new), and a cycle by its number. Neither
// moves when a lost workflow task is tried again, where the instant the
// cycle began (used before) did, and every request of the cycle's first
// task went out again under new ids: referrals and messages twice.
func (w *wf) id(purpose string) string {
	if !w.byRun {
		return fmt.Sprintf("c%d-%d|%s", w.st.Cycle, w.st.Began.UnixNano(), purpose)
	}
	return fmt.Sprintf("c%d-%s|%s", w.st.Cycle, w.chain, purpose)
}

func (w *wf) run(ctx workflow.Context) (Result, error) {
	var err error
	if w.settings, err = flow.Settings(ctx, w.in.Clinic); err != nil {
		return Result{}, err
	}
	rctx := ctx
	if w.outlive = flow.Version(ctx, versionResendsOutlive, 1) >= 1; w.outlive {
		w.cut = ctx
		rctx, _ = workflow.NewDisconnectedContext(ctx)
	}
	w.failedReminders = flow.RetryFailedReminders(rctx, w.settings, &w.st.Resends, w.staleResend)
	if w.st.Began.IsZero() {
		w.begin(ctx)
		if err := w.earlyOverdoses(ctx); err != nil {
			return Result{}, err
		}
		if err := w.earlyCheckIns(ctx); err != nil {
			return Result{}, err
		}
	} else if w.st.Reinforced && w.st.Referred && flow.Version(ctx, versionOnceEach, 1) >= 1 {
		// A continued run: prepare will not read the family again, but the
		// check-ins need its members and contact person.
		if err := w.readSafety(ctx); err != nil {
			return Result{}, err
		}
	}
	for {
		if err := w.listening(ctx, w.prepare); err != nil {
			return Result{}, err
		}
		// A failure that came with the event just handled is taken into
		// the resends first: left in its channel it would count as unread,
		// and a workflow with nothing left to wait for would wait for it.
		flow.Settle(ctx, w.failedReminders)
		if w.st.Screened && len(w.st.CheckIns) == 0 && w.st.Escalated && !w.unread() {
			if err := w.blockedAtEnd(ctx); err != nil {
				return Result{}, err
			}
			if err := w.unsafeAtEnd(ctx); err != nil {
				return Result{}, err
			}
			if flow.Version(ctx, versionListenAtEnd, 1) >= 1 {
				w.step = "finishing"
				if err := flow.Listen(ctx, w.settings, &w.st.Resends, w.st.LastDue, w.signalled); err != nil {
					return Result{}, err
				}
				if w.signalled() {
					// A restart, an overdose or a check-in came in the
					// meantime: handle it, and listen again after.
					if err := w.wait(ctx); err != nil {
						return Result{}, err
					}
					continue
				}
			}
			w.step = "done"
			if w.st.EscalationUnsafe {
				return Result{Summary: "check-ins done, the next meeting waits for a safe screen (the counselor was told)", CheckIns: w.st.CheckInsRun}, nil
			}
			if w.st.BlockedAtEnd && w.st.EscalationBlocked {
				return Result{Summary: "check-ins done, the formal meeting waits for a consequence (the counselor was told)", CheckIns: w.st.CheckInsRun}, nil
			}
			return Result{Summary: "check-ins done, next intervention proposed", Proposed: w.st.Proposed, CheckIns: w.st.CheckInsRun}, nil
		}
		if (w.st.Events >= eventsPerRun || workflow.GetInfo(ctx).GetContinueAsNewSuggested()) && !w.unread() {
			return Result{}, w.continueAsNew(ctx)
		}
		if err := w.wait(ctx); err != nil {
			return Result{}, err
		}
	}
}

// sentFor notes a reminder to member to due at at. Its failure can come
// once it is due or, if to keeps quiet hours, until they begin: a claim
// from then on fails it (the reminder's send_by_time).
func (w *wf) sentFor(at time.Time, to activities.Person) {
	if by, ok, err := schedule.QuietFrom(at, to.Recipient()); err == nil && ok {
		at = by
	}
	if at.After(w.st.LastDue) {
		w.st.LastDue = at
	}
}

// earlyOverdoses answers the overdoses recorded between the refused
// meeting and this workflow's start. The outbox delivers a family's
// overdose signal apart from the intervention's outcome, so it can arrive
// before the intervention workflow has started this one, and a signal to
// a workflow that does not exist is dropped. One also delivered by signal
// is answered once (OverdoseSigns).
func (w *wf) earlyOverdoses(ctx workflow.Context) error {
	if w.in.MeetingStart.IsZero() || flow.Version(ctx, versionEarlyOverdoses, 1) < 1 {
		return nil
	}
	var signs []string
	// Its own alerts leave an overdose open: a first task tried again (the
	// try that alerted was lost) must answer it again, under the same ids.
	// Those of an earlier execution for the family (due before this one
	// started) answered it.
	info := workflow.GetInfo(ctx)
	if err := flow.Call(ctx, &signs, flow.A.OverdosesSince, activities.OverdosesRequest{Family: w.in.Family, Since: w.in.MeetingStart,
		IgnoreFrom: info.WorkflowExecution.ID, IgnoreSince: info.WorkflowStartTime}); err != nil {
		return err
	}
	for _, s := range signs {
		if err := w.onOverdose(ctx, Overdose{WarningSign: s}); err != nil {
			return err
		}
	}
	return nil
}

// earlyCheckIns reads the check-ins recorded on the refused meeting before
// the workflow ran, to take them at its first wait, where their signals
// would have been taken. A signal that comes too is taken once
// (CheckInsSeen).
func (w *wf) earlyCheckIns(ctx workflow.Context) error {
	if flow.Version(ctx, versionEarlyCheckIns, 1) < 1 {
		return nil
	}
	var recorded []activities.CheckInRecord
	if err := flow.Call(ctx, &recorded, flow.A.CheckInsRecorded, w.in.Intervention); err != nil {
		return err
	}
	for _, r := range recorded {
		w.st.Early = append(w.st.Early, CheckIn{Intervention: w.in.Intervention, Number: r.Number,
			WindowOfOpportunity: r.WindowOfOpportunity, NewWarningSigns: r.NewWarningSigns})
	}
	return nil
}

// counselor is who the workflow's reminders to staff go to: the family's
// counselor when last read (prepare reads the family at the start of every
// cycle; refresh before alerts and check-ins), or the refused meeting's
// before the family was read. Only a reminder's recipient depends on it,
// not which commands run, so it needs no version.
func (w *wf) counselor() activities.Person {
	if w.safety.Counselor.ID != "" {
		return w.safety.Counselor
	}
	return w.in.Counselor
}

// refresh reads the family again, so that an alert or a check-in reaches
// its counselor and members of now. The version is decided here, at the
// first alert or check-in, rather than when the run starts: a workflow
// already running when this was deployed, which lasts a month and rarely
// continues as new, then takes it up from its next alert or check-in
// unless one already happened in its history.
func (w *wf) refresh(ctx workflow.Context) error {
	if !w.decided {
		w.current = flow.Version(ctx, versionCurrentCounselor, 1) >= 1
		w.decided = true
	}
	if !w.current {
		return nil
	}
	return w.readSafety(ctx)
}

// begin starts a cycle: check-ins and the escalation counted from now.
func (w *wf) begin(ctx workflow.Context) {
	now := workflow.Now(ctx)
	w.st.Began = now
	w.st.CheckIns = nil
	for _, d := range w.settings.CheckIns {
		w.st.CheckIns = append(w.st.CheckIns, now.Add(d))
	}
	w.st.EscalateAt = now.Add(w.settings.CoolDown)
	w.st.Screened, w.st.Reinforced, w.st.Referred, w.st.Escalated, w.st.Proposed = false, false, false, false, ""
	w.st.EscalationUnsafe, w.st.UnsafeAtEnd, w.st.WindowBeforeScreen = false, false, ""
	w.st.CheckInsAtBegin = w.st.CheckInsRun
	w.st.BlockedAtEnd = false // the new cycle's check-ins have not ended
	// A formal meeting held back in the cycle before is not the new
	// cycle's: it waits for the new cool-down. Asked only when one was
	// held back, so other runs record nothing.
	if w.st.EscalationBlocked && flow.Version(ctx, versionNewCycleClearsBlocked, 1) >= 1 {
		w.st.EscalationBlocked = false
	}
}

// versionNewCycleClearsBlocked guards forgetting, when a new cycle begins,
// a formal meeting held back in the cycle before. Before, the new cycle's
// first check-in proposed it, a day after the refusal instead of after the
// cool-down.
const versionNewCycleClearsBlocked = "new-cycle-clears-blocked-escalation"

// awaitScreen holds the cycle's boundary steps until a safety screen finds
// the family safe (SignalSafetyScreen reruns prepare), asking the counselor
// for one with message unless purpose is empty. A purpose is asked once per
// cycle: asked again, the same request is not sent twice.
func (w *wf) awaitScreen(ctx workflow.Context, purpose, message string) error {
	w.step = "awaiting_safety_screen"
	if purpose == "" {
		return nil
	}
	w.st.Screened = true
	return flow.Remind(ctx, w.in.Clinic, w.counselor(), "SAFETY_SCREEN_NEEDED", w.in.Family, message, w.id(purpose))
}

// versionReadsClosed guards ending when the family reads closed, asked
// only then: a worker of a release before it, during a rollout or after a
// rollback, goes on past such a read, and a history it wrote must replay.
const versionReadsClosed = "boundary-reads-closed"

// readSafety reads the family into w.safety. A family whose case was
// closed ends the run, as a step refused FAMILY_CLOSED does (see
// versionFamilyClosed): no boundary reinforced, member checked in with or
// meeting proposed for a family the clinic no longer works with. Runs
// recorded before the family showed its state read it as open.
func (w *wf) readSafety(ctx workflow.Context) error {
	if err := flow.Call(ctx, &w.safety, flow.A.FamilySafety, w.in.Family); err != nil {
		return err
	}
	if w.safety.Closed && flow.Version(ctx, versionReadsClosed, 1) >= 1 {
		return temporal.NewNonRetryableApplicationError("the family's case was closed", activities.FamilyClosed, nil)
	}
	if w.safety.InTreatment && flow.Version(ctx, versionEndsInTreatment, 1) >= 1 {
		return temporal.NewNonRetryableApplicationError("the loved one is in treatment", errInTreatment, nil)
	}
	return nil
}

// prepare does the one-time steps of a cycle as soon as the family is safe.
func (w *wf) prepare(ctx workflow.Context) error {
	if w.st.Reinforced && w.st.Referred {
		return nil
	}
	if err := w.readSafety(ctx); err != nil {
		return err
	}
	if flow.Version(ctx, versionReferBeforeScreen, 1) >= 1 {
		// Harm reduction and family support raise no danger at home: they
		// do not wait for the screen that boundary steps need.
		if err := w.refer(ctx); err != nil {
			return err
		}
	}
	if w.safety.Status != "CURRENT" {
		// Boundaries can raise the danger at home: no boundary reminders
		// until a counselor has screened the family and, if needed, made a
		// safety plan.
		if w.st.Screened {
			return w.awaitScreen(ctx, "", "") // asked once per cycle
		}
		return w.awaitScreen(ctx, "screen", "Please complete a safety screen with the family before boundary steps continue.")
	}
	w.st.Screened = true
	w.step = "reinforcing"
	if !w.st.Reinforced {
		for _, b := range w.safety.Boundaries {
			err := flow.Call(ctx, nil, flow.A.ReinforceBoundary, activities.ReinforceRequest{
				Boundary: b, Reason: "reinforced after the intervention was " + strings.ToLower(strings.ReplaceAll(w.in.Outcome, "_", " ")),
				RequestID: flow.RequestID(ctx, w.id("reinforce|"+b)),
			})
			if activities.ErrorType(err) == "SAFETY_SCREEN_REQUIRED" &&
				flow.Version(ctx, versionScreenRefused, 1) >= 1 {
				// The family was read safe, and a screen since found
				// risk: the service refused. The boundaries reinforced
				// so far stay so (their ids are kept for the next try);
				// the rest, and the reminders to members, wait for a
				// screen that finds the family safe.
				// Each refusal is news to the counselor: a second one, after a
				// safe screen, must not reuse the first one's request id and
				// be dropped as its retry.
				purpose := "screen-refused|" + b
				if flow.Version(ctx, versionRefusalsCounted, 1) >= 1 {
					w.st.Refusals++
					purpose = fmt.Sprintf("%s|%d", purpose, w.st.Refusals)
				}
				return w.awaitScreen(ctx, purpose,
					"A safety screen recorded since found risk: boundary steps are paused until a new screen finds the family safe.")
			}
			if err != nil {
				return err
			}
		}
		if len(w.safety.Boundaries) > 0 {
			for _, m := range w.safety.Members {
				sent, at, err := flow.RemindAwake(ctx, w.in.Clinic, m, "BOUNDARY_REMINDER", w.in.Family,
					"A note from your counselor: hold to the steps your family agreed on together. We are here if you want to talk.",
					w.id("boundary-reminder|"+m.ID), time.Time{}, time.Time{})
				if err != nil {
					return err
				}
				if sent != "" {
					w.sentFor(at, m)
					w.st.MemberLines = append(w.st.MemberLines, sent)
				}
			}
		}
		w.st.Reinforced = true
	}
	if err := w.refer(ctx); err != nil {
		return err
	}
	w.step = "checking_in"
	if why := w.st.WindowBeforeScreen; why != "" && !w.st.Escalated {
		w.st.WindowBeforeScreen = ""
		return w.escalate(ctx, why)
	}
	return nil
}

// versionReferBeforeScreen guards making a cycle's referrals before the
// safety gate; runs before it made them only once the family was screened
// safe, and a family never screened got no naloxone referral.
const versionReferBeforeScreen = "refer-before-screen"

// refer makes a cycle's referrals once: family support for the contact
// person, harm reduction for the loved one.
func (w *wf) refer(ctx workflow.Context) error {
	if w.st.Referred {
		return nil
	}
	// Asked whether or not the family has a contact person, so that its
	// marker does not tell which families have none who agreed.
	tell := flow.Version(ctx, versionSupportUnreferred, 1) >= 1
	if w.safety.ContactPerson != "" {
		if err := flow.Call(ctx, nil, flow.A.CreateSupportReferrals, activities.SupportRequest{
			Family: w.in.Family, Intervention: w.in.Intervention, Member: w.safety.ContactPerson,
			Kinds: []string{"FAMILY_COUNSELING", "FAMILY_SUPPORT_GROUP", "INDIVIDUAL_COUNSELING"}, Urgency: "ROUTINE",
			RequestID: flow.RequestID(ctx, w.id("family-support")),
		}); err != nil {
			return err
		}
	} else if tell {
		// The family's own support is half of the path after a no: a
		// family no program may reach is put to the counselor, not
		// passed over in silence.
		if err := flow.Remind(ctx, w.in.Clinic, w.counselor(), "REFERRAL_ESCALATION", w.in.Family,
			"The family was not referred to support (family counseling, a support group, individual counseling): "+
				"no contact person on its record agreed to be contacted. Name one who agrees, or refer the family by hand.",
			w.id("family-support-unreferred")); err != nil {
			return err
		}
	}
	// Naloxone the loved one accepted at the meeting was referred by the
	// meeting's workflow: a second referral would reach the program twice.
	if !slices.Contains(w.in.Accepted, "HARM_REDUCTION_NALOXONE") || flow.Version(ctx, versionAcceptedNaloxone, 1) < 1 {
		if err := w.harmReduction(ctx, "URGENT", "harm-reduction", "HARM_REDUCTION_NALOXONE"); err != nil {
			return err
		}
	}
	w.st.Referred = true
	return nil
}

// versionAcceptedNaloxone guards leaving out the naloxone referral when
// the loved one accepted naloxone at the refused meeting, whose workflow
// referred it: before, the program got two. Asked only then (after a
// refusal with naloxone accepted), in a new epoch.
const versionAcceptedNaloxone = "accepted-naloxone-once"

func (w *wf) harmReduction(ctx workflow.Context, urgency, purpose string, kinds ...string) error {
	return flow.Call(ctx, nil, flow.A.CreateSupportReferrals, activities.SupportRequest{
		Family: w.in.Family, Intervention: w.in.Intervention, Kinds: kinds, Urgency: urgency,
		RequestID: flow.RequestID(ctx, w.id(purpose)),
	})
}

// wait sleeps until the next check-in or escalation, or a signal. A
// check-in recorded before the workflow ran is taken first, as its signal
// would have been.
func (w *wf) wait(ctx workflow.Context) error {
	if len(w.st.Early) > 0 {
		ci := w.st.Early[0]
		w.st.Early = w.st.Early[1:]
		w.st.Events++
		return w.listening(ctx, func(workflow.Context) error { return w.onCheckIn(ctx, ci) })
	}
	var next time.Time
	if w.st.Reinforced && len(w.st.CheckIns) > 0 {
		next = w.st.CheckIns[0]
	} else if len(w.st.CheckIns) > 0 && flow.Version(ctx, versionCheckInsUnscreened, 1) >= 1 {
		// Waiting for a safety screen: the check-ins still come, each
		// asking for the screen again.
		next = w.st.CheckIns[0]
	}
	if w.st.Reinforced && !w.st.Escalated && (next.IsZero() || w.st.EscalateAt.Before(next)) {
		next = w.st.EscalateAt
	}
	tctx, cancel := workflow.WithCancel(ctx)
	defer cancel()
	var handle func() error
	sel := workflow.NewSelector(ctx)
	// Cancelled (FamilyDeleted: the family's record was deleted), the
	// workflow ends here; a wait for a signal alone (a safety screen, say)
	// must not hold the cancellation until one comes.
	sel.AddReceive(ctx.Done(), func(workflow.ReceiveChannel, bool) {
		handle = func() error { return temporal.NewCanceledError() }
	})
	overdose := false
	sel.AddReceive(w.overdose, func(c workflow.ReceiveChannel, _ bool) {
		var o Overdose
		if !flow.Receive(ctx, c, &o) {
			return
		}
		overdose = true
		handle = func() error { return w.onOverdose(ctx, o) }
	})
	sel.AddReceive(w.screen, func(c workflow.ReceiveChannel, _ bool) {
		c.Receive(ctx, nil)
		// prepare reads the new screen before boundaries are reinforced;
		// after, a next meeting held back for risk may go ahead.
		handle = func() error {
			read, err := w.holdMembers(ctx)
			if err != nil {
				return err
			}
			if w.unreadScreen && w.st.EscalationUnsafe && w.st.Reinforced && !w.st.UnsafeAtEnd &&
				flow.Version(ctx, versionUnreadScreenWaits, 1) >= 1 {
				// holdMembers could not read the family: read again, with
				// a day's retries, a failure would end the follow-up. The
				// next check-in reads the screen.
				return nil
			}
			return w.proposeOnceSafe(ctx, "once a safety screen found the family safe", read)
		}
	})
	sel.AddReceive(w.checkIn, func(c workflow.ReceiveChannel, _ bool) {
		var ci CheckIn
		if !flow.Receive(ctx, c, &ci) {
			return
		}
		handle = func() error { return w.onCheckIn(ctx, ci) }
	})
	sel.AddReceive(w.restart, func(c workflow.ReceiveChannel, _ bool) {
		var r Restart
		if !flow.Receive(ctx, c, &r) {
			return
		}
		handle = func() error {
			w.in.Intervention, w.in.Level, w.in.Outcome, w.in.Accepted = r.Intervention, r.Level, r.Outcome, r.Accepted
			w.st.Cycle++
			w.begin(ctx)
			// The check-ins of the restarted meeting that came before the
			// restart are taken now, as its own.
			for _, ci := range w.st.Later {
				if ci.Intervention == w.in.Intervention {
					w.st.Early = append(w.st.Early, ci)
				}
			}
			w.st.Later = nil
			return nil
		}
	})
	if !next.IsZero() {
		sel.AddFuture(workflow.NewTimer(tctx, max(0, next.Sub(workflow.Now(ctx)))), func(workflow.Future) {
			handle = func() error { return w.onTime(ctx) }
		})
	}
	for handle == nil { // a signal that did not decode wakes nothing
		sel.Select(ctx)
		if handle == nil && next.IsZero() {
			// Nor is there a timer to wait for: the run looks again at
			// whether it is done (at its end, it now is).
			return nil
		}
	}
	w.st.Events++
	if overdose {
		return handle()
	}
	return w.listening(ctx, func(workflow.Context) error { return handle() })
}

// versionOverdoseDuringSteps guards answering overdoses while a step runs
// (reading the family, referring, reinforcing, a check-in): before, an
// overdose waited for the step to end, up to the day a call to a service
// that is down may be retried for, though its alert needs only the
// reminders.
const versionOverdoseDuringSteps = "overdose-during-steps"

// listening runs step while a coroutine of its own answers the overdoses
// signalled meanwhile, and returns once both are done: the first error
// of either, the step's first. Every answer started is finished before
// listening returns, on a context a cancellation does not cut short, as
// the workflow must not end or continue as new in the middle of one.
func (w *wf) listening(ctx workflow.Context, step func(workflow.Context) error) error {
	if flow.Version(ctx, versionOverdoseDuringSteps, 1) < 1 {
		return step(ctx)
	}
	lctx, stop := workflow.WithCancel(ctx)
	exited := false
	var answerErr error
	workflow.Go(lctx, func(c workflow.Context) {
		defer func() { exited = true }()
		for {
			var o Overdose
			got := false
			sel := workflow.NewSelector(c)
			stopped := false
			sel.AddReceive(c.Done(), func(workflow.ReceiveChannel, bool) { stopped = true })
			sel.AddReceive(w.overdose, func(ch workflow.ReceiveChannel, _ bool) { got = flow.Receive(c, ch, &o) })
			for !got && !stopped { // a signal that did not decode wakes nothing
				sel.Select(c)
			}
			if !got {
				return
			}
			// Disconnected: stopping the listener must not cut an answer
			// short. (A coroutine blocks only on a context of its own.)
			actx, done := workflow.NewDisconnectedContext(c)
			if err := w.onOverdose(actx, o); err != nil && answerErr == nil {
				answerErr = err
			}
			done()
		}
	})
	err := step(ctx)
	stop()
	// Waited for until the listener has returned, not until no answer is
	// running: a signal can be handed to its selector in the same pass in
	// which the step ends, before it counts as an answer. Stopped, it
	// finishes what it took and then sees Done, the first of its cases.
	dctx, cancel := workflow.NewDisconnectedContext(ctx)
	defer cancel()
	if werr := workflow.Await(dctx, func() bool { return exited }); werr != nil && err == nil {
		err = werr
	}
	if err == nil {
		err = answerErr
	}
	return err
}

func (w *wf) onTime(ctx workflow.Context) error {
	now := workflow.Now(ctx)
	checkedIn := len(w.st.CheckIns) > 0 && !now.Before(w.st.CheckIns[0])
	if checkedIn {
		if err := w.refresh(ctx); err != nil {
			return err
		}
	}
	for len(w.st.CheckIns) > 0 && !now.Before(w.st.CheckIns[0]) {
		w.st.CheckIns = w.st.CheckIns[1:]
		w.st.CheckInsRun++
		n := w.st.CheckInsRun
		message := fmt.Sprintf("Check in with the family (check-in %d) and record what they tell you.", n-w.st.CheckInsAtBegin)
		// Decided once, for the counselor's message and the members' alike.
		gated := w.st.Reinforced && w.safety.Status != "CURRENT" && flow.Version(ctx, versionGateOnScreen, 1) >= 1
		switch {
		case !w.st.Reinforced:
			message += " The safety screen asked for is still missing: boundary steps wait for it."
		case gated:
			message += " The latest safety screen is not current or found risk: the family hears nothing from us until a new one finds them safe."
		}
		if err := flow.Remind(ctx, w.in.Clinic, w.counselor(), "CHECK_IN", w.in.Intervention, message, w.id(fmt.Sprintf("check-in|%d", n))); err != nil &&
			!w.pastFailedCheckIn(ctx, err, "counselor") {
			return err
		}
		for _, m := range w.safety.Members {
			// Reminders to members wait for a safe screen, check-ins' too:
			// before it only the counselor is asked to check in.
			if m.ID == w.safety.ContactPerson && w.st.Reinforced && !gated {
				sent, at, err := flow.RemindAwake(ctx, w.in.Clinic, m, "CHECK_IN", w.in.Family,
					"Your counselor will check in with you soon. How are you doing?", w.id(fmt.Sprintf("check-in|%d|%s", n, m.ID)),
					time.Time{}, time.Time{})
				if err != nil && !w.pastFailedCheckIn(ctx, err, "member") {
					return err
				}
				if sent != "" {
					w.sentFor(at, m)
					w.st.MemberLines = append(w.st.MemberLines, sent)
				}
			}
		}
	}
	// A firmer meeting follows boundaries held, never a family still
	// waiting for its safety screen (whose check-ins also come here).
	if w.st.Reinforced && !w.st.Escalated && !now.Before(w.st.EscalateAt) {
		return w.escalate(ctx, "after the cool-down")
	}
	// A formal meeting that waited for a boundary stating a consequence
	// is proposed at the first check-in that finds one (the family was
	// just read for it).
	if checkedIn && w.st.EscalationBlocked && w.st.Reinforced && len(w.safety.WithConsequence) > 0 &&
		flow.Version(ctx, versionRetryBlockedEscalation, 1) >= 1 {
		if w.st.BlockedAtEnd && flow.Version(ctx, versionHeldAtEndIsTheirs, 1) >= 1 {
			return nil
		}
		w.st.EscalationBlocked = false
		return w.escalate(ctx, "once a boundary stated a consequence")
	}
	// A meeting held back for a screen that found risk is proposed at the
	// first check-in that finds the family safe (it was just read).
	if checkedIn && w.st.EscalationUnsafe && w.safety.Status == "CURRENT" {
		if w.st.UnsafeAtEnd && flow.Version(ctx, versionHeldAtEndIsTheirs, 1) >= 1 {
			return nil
		}
		w.st.EscalationUnsafe = false
		return w.escalate(ctx, "once a safety screen found the family safe")
	}
	return nil
}

// versionPastFailedCheckIn guards going on when a check-in's reminder could
// not be made at all (refused for good for a reason flow.Remind does not
// skip, or the interventions service failing through a day of retries):
// before, the failure ended the
// follow-up, and the family had no check-ins, boundary steps, next
// meeting or answers to overdoses after it. Asked only on such a failure.
const versionPastFailedCheckIn = "boundary-go-on-past-failed-check-in"

// pastFailedCheckIn reports whether the follow-up goes on past err, the
// failure to make a check-in's reminder to who, and logs it if so. A
// refusal that says the follow-up is over (the family closed or deleted,
// the loved one in treatment) still ends it, as Workflow tells.
func (w *wf) pastFailedCheckIn(ctx workflow.Context, err error, who string) bool {
	if followUpOver(err) {
		return false
	}
	return flow.GoOnPast(ctx, err, versionPastFailedCheckIn, "a check-in reminder could not be made; the follow-up goes on without it",
		"recipient_kind", who)
}

// followUpOver reports whether err is a refusal that says the follow-up
// is over: the family closed or not there, the loved one in treatment.
func followUpOver(err error) bool {
	switch activities.ErrorType(err) {
	case activities.FamilyClosed, errInTreatment, "RESOURCE_NOT_FOUND", "NotFound":
		return true
	}
	return false
}

// versionHeldAtEndIsTheirs guards leaving to the counselor a meeting they
// were told, as the check-ins ended, to draft by hand (BlockedAtEnd,
// UnsafeAtEnd): a check-in an overdose brought after that proposed it
// anyway, and the counselor found a second draft beside their own. Asked
// only then: an overdose after the check-ins ended, in a new epoch.
const versionHeldAtEndIsTheirs = "held-at-end-is-theirs"

// holdMembers keeps members from hearing from us once a screen recorded
// after boundaries were reinforced is not current or found risk (a threat
// at home): the check-ins and boundary reminders made to them and still to
// go, one held back for quiet hours among them, are cancelled. New ones
// wait for a safe screen already (gated at each check-in). read says
// whether it read the family into w.safety.
func (w *wf) holdMembers(ctx workflow.Context) (read bool, err error) {
	if !w.st.Reinforced || flow.Version(ctx, versionHoldMembersOnRisk, 1) < 1 {
		return false, nil
	}
	log := workflow.GetLogger(ctx)
	w.unreadScreen = false
	if err := w.readSafety(ctx); err != nil {
		if followUpOver(err) || temporal.IsCanceledError(err) || ctx.Err() != nil {
			return false, err // the run ends as for any read that finds it so, or as cancelled
		}
		// A signal is no reason to fail the family's follow-up: the
		// resends are held all the same (heldForRisk), and the next
		// check-in reads the screen again.
		log.Error("family not read after a safety screen; members' reminders not cancelled", "error", err)
		w.unreadScreen = true
		return false, nil
	}
	if w.safety.Status == "CURRENT" || len(w.safety.Members) == 0 {
		return true, nil
	}
	w.st.RiskHolds++
	if err := flow.Call(ctx, nil, flow.A.CancelReminders, activities.CancelRemindersRequest{
		Clinic: w.in.Clinic, Origin: workflow.GetInfo(ctx).WorkflowExecution.ID, Kinds: []string{"CHECK_IN", "BOUNDARY_REMINDER"},
		Only: w.safety.Members, Reason: "a safety screen found risk: the family hears nothing until a new one finds them safe",
		RequestID: flow.RequestID(ctx, w.id(fmt.Sprintf("hold-members|%d", w.st.RiskHolds))),
	}); err != nil {
		if temporal.IsCanceledError(err) || ctx.Err() != nil {
			return true, err // cancelled meanwhile: the run ends as cancelled, and tidies up
		}
		log.Error("cancelling the members' reminders after a safety screen found risk failed", "error", err)
	}
	return true, nil
}

// heldForRisk reports whether a failed reminder to a member (line, the
// first of its resends) must not go out again: the latest screen, read
// now, is not current or found risk. A read that fails, or takes longer
// than flow.SoonEnough, holds it too: a check-in can wait for the next
// one, a message into a home at risk cannot be taken back.
func (w *wf) heldForRisk(ctx workflow.Context, line string) bool {
	if !slices.Contains(w.st.MemberLines, line) || flow.Version(ctx, versionHoldMembersOnRisk, 1) < 1 {
		return false
	}
	// Not into w.safety: the run reads it in between its own steps.
	var s activities.Safety
	if err := flow.Call(flow.Soon(ctx, flow.SoonEnough), &s, flow.A.FamilySafety, w.in.Family); err != nil {
		workflow.GetLogger(ctx).Warn("family not read before sending a member's reminder again; holding it", "error", err)
		return true
	}
	// Nor to a family whose loved one entered treatment since the run's
	// last read: it ends at its next one.
	return s.Closed || s.Status != "CURRENT" || s.InTreatment && flow.Version(ctx, versionEndsInTreatment, 1) >= 1
}

// versionHoldMembersOnRisk guards holdMembers and heldForRisk. Before, a
// screen that found risk after boundaries were reinforced stopped new
// messages to members, but not those already made, nor the resends of
// failed ones.
const versionHoldMembersOnRisk = "hold-members-on-risk"

// versionUnreadScreenWaits guards leaving a next meeting held back for
// risk to the next check-in when the family could not be read at a safety
// screen's signal. Before, proposeOnceSafe read it again, and a failure
// there failed the whole follow-up, though holdMembers had let its own go.
// Asked only then, in a new epoch.
const versionUnreadScreenWaits = "unread-screen-waits"

// proposeOnceSafe proposes the next meeting held back for a screen that
// found risk (EscalationUnsafe) if the family, read now, is safe: at the
// safe screen itself, or a check-in reporting a window of opportunity,
// rather than at the next scheduled check-in, up to weeks later. Once the
// counselor was told at the end to draft it by hand, it is theirs. read
// says the family was just read (holdMembers), and is not read again.
func (w *wf) proposeOnceSafe(ctx workflow.Context, why string, read bool) error {
	if !w.st.EscalationUnsafe || !w.st.Reinforced || w.st.UnsafeAtEnd || flow.Version(ctx, versionEscalateWhenSafe, 1) < 1 {
		return nil
	}
	if !read {
		if err := w.readSafety(ctx); err != nil {
			return err
		}
	}
	if w.safety.Status != "CURRENT" {
		return nil
	}
	w.st.EscalationUnsafe = false
	return w.escalate(ctx, why)
}

// versionEscalateWhenSafe guards proposeOnceSafe. Before, a meeting held
// back for risk waited for the next scheduled check-in after a safe
// screen. Asked only while one is held back.
const versionEscalateWhenSafe = "escalate-when-safe"

// versionBlockedKept guards not dropping a formal meeting still waiting for
// a consequence: a check-in reporting a window of opportunity tries it
// again, and a workflow whose check-ins end with it waiting tells the
// counselor so, and says so in its result. Before, a blocked escalation
// counted as done: the workflow ended as if the meeting were proposed, and
// a window of opportunity was ignored. Asked only when one is blocked.
const versionBlockedKept = "blocked-escalation-kept"

// blockedAtEnd tells the counselor, once, that the check-ins are over with
// the formal meeting still waiting for a boundary stating a consequence.
func (w *wf) blockedAtEnd(ctx workflow.Context) error {
	if !w.st.EscalationBlocked || w.st.BlockedAtEnd || flow.Version(ctx, versionBlockedKept, 1) < 1 {
		return nil
	}
	w.st.BlockedAtEnd = true
	return flow.Remind(ctx, w.in.Clinic, w.counselor(), "ESCALATION_PROPOSED", w.in.Family,
		"The family's check-ins are over and the formal meeting still waits for a boundary that states a consequence: once one is agreed, draft the meeting by hand.",
		w.id("escalation-blocked-at-end"))
}

// unsafeAtEnd tells the counselor, once, that the check-ins are over with
// the next meeting still waiting for a screen that finds the family safe:
// nothing is left to propose it at. No version: only runs that asked
// versionGateOnScreen hold a meeting so.
func (w *wf) unsafeAtEnd(ctx workflow.Context) error {
	if !w.st.EscalationUnsafe || w.st.UnsafeAtEnd {
		return nil
	}
	w.st.UnsafeAtEnd = true
	return flow.Remind(ctx, w.in.Clinic, w.counselor(), "SAFETY_SCREEN_NEEDED", w.in.Family,
		"The family's check-ins are over and the next meeting still waits for a safety screen that finds the family safe: once one is recorded, draft the meeting by hand.",
		w.id("escalation-unsafe-at-end"))
}

// versionRetryBlockedEscalation guards proposing, at a later check-in, the
// formal meeting that waited for a boundary stating a consequence. Before,
// the counselor was told once to agree one, and nothing followed when they
// did.
const versionRetryBlockedEscalation = "retry-blocked-escalation"

// onOverdose answers an overdose at once: harm reduction now, the counselor
// alerted, and check-ins brought closer.
func (w *wf) onOverdose(ctx workflow.Context, o Overdose) error {
	if o.WarningSign != "" && slices.Contains(w.st.OverdoseSigns, o.WarningSign) &&
		flow.Version(ctx, versionOnceEach, 1) >= 1 {
		return nil // a redelivery of one already answered
	}
	if o.WarningSign != "" {
		w.st.OverdoseSigns = append(w.st.OverdoseSigns, o.WarningSign)
	}
	w.st.Overdoses++
	n := w.st.Overdoses
	if flow.Version(ctx, versionAlertFirst, 1) >= 1 {
		return w.answerOverdose(ctx, o, n)
	}
	if err := w.harmReduction(ctx, "IMMEDIATE", fmt.Sprintf("overdose|%d", n), "HARM_REDUCTION_NALOXONE", "HARM_REDUCTION_SYRINGE_SERVICES"); err != nil {
		return err
	}
	if err := w.refresh(ctx); err != nil {
		return err
	}
	_, err := w.alert(ctx, o, n)
	return err
}

// alert tells the counselor of overdose n and brings check-ins closer. It
// returns what the alert is about: the warning sign it answers, so that a
// later run of this workflow for the family can tell it was answered
// (OverdosesSince), or else the family.
func (w *wf) alert(ctx workflow.Context, o Overdose, n int) (string, error) {
	about := w.in.Family
	if o.WarningSign != "" {
		about = o.WarningSign
	}
	name, err := flow.RemindAt(ctx, w.in.Clinic, w.counselor(), "OVERDOSE_ALERT", about,
		"Urgent: please contact the family today.", w.id(fmt.Sprintf("overdose-alert|%d", n)), time.Time{})
	if err != nil {
		return about, err
	}
	w.alerted(ctx, name)
	now := workflow.Now(ctx)
	var sooner []time.Time
	for _, t := range w.st.CheckIns {
		if t.Before(now.Add(24 * time.Hour)) {
			sooner = append(sooner, t)
		}
	}
	if len(sooner) == 0 || flow.Version(ctx, versionTightenKeepsSooner, 1) < 1 {
		sooner = nil
	}
	w.st.CheckIns = append(sooner, tighten(w.st.CheckIns, now, 24*time.Hour, w.settings.TightenedCheckIn)...)
	return about, nil
}

// versionAlertFirst guards answering an overdose with the counselor's
// alert first and on a context of its own. Before, the alert waited behind
// the harm-reduction referral (a failed referral failed the workflow with
// no alert sent), and a cancellation (a yes at a later meeting stops this
// workflow) cut an answer short or left a waiting overdose unanswered.
const versionAlertFirst = "overdose-alert-first"

// answerOverdose is onOverdose from versionAlertFirst on. It runs on a
// disconnected context, so that a cancellation arriving meanwhile does not
// cut it short: the family read again (failing that, the counselor last
// read is alerted), the counselor alerted, check-ins brought closer, and
// harm reduction referred; a referral that cannot be made is put to the
// counselor instead of failing the workflow.
func (w *wf) answerOverdose(ctx workflow.Context, o Overdose, n int) error {
	dctx, stop := workflow.NewDisconnectedContext(ctx)
	defer stop()
	log := workflow.GetLogger(ctx)
	// The alert waits for this read at most flow.SoonEnough, not the day
	// an ordinary call may retry for.
	if err := w.refresh(flow.Soon(dctx, flow.SoonEnough)); err != nil {
		if t := activities.ErrorType(err); t == "RESOURCE_NOT_FOUND" || t == "NotFound" {
			return err // the family was deleted: see familyGone
		}
		log.Warn("family not read again before an overdose alert; alerting the counselor last read", "error", err)
	}
	about, err := w.alert(dctx, o, n)
	if err != nil {
		return err
	}
	if err := w.harmReduction(dctx, "IMMEDIATE", fmt.Sprintf("overdose|%d", n), "HARM_REDUCTION_NALOXONE", "HARM_REDUCTION_SYRINGE_SERVICES"); err != nil {
		log.Warn("urgent referral after an overdose failed; telling the counselor", "error", err)
		name, err := flow.RemindAt(dctx, w.in.Clinic, w.counselor(), "REFERRAL_ESCALATION", about,
			"An urgent referral for the family could not be made: please make it by hand.", w.id(fmt.Sprintf("overdose-referral-failed|%d", n)), time.Time{})
		w.alerted(dctx, name)
		return err
	}
	return nil
}

// alerted notes name, an overdose's alert or notice just made (empty when
// none was), among AlertLines.
func (w *wf) alerted(ctx workflow.Context, name string) {
	if name != "" {
		w.st.AlertLines = append(w.st.AlertLines, name)
		w.st.AlertedAt = workflow.Now(ctx)
	}
}

// answerWaiting answers, as the workflow is cancelled, the overdoses
// signalled to it and not yet taken: nobody else will (the dispatcher
// sent them here because this workflow ran). Failures are logged; the
// cancellation stands.
func (w *wf) answerWaiting(ctx workflow.Context) {
	for {
		var o Overdose
		if !w.overdose.ReceiveAsync(&o) {
			return
		}
		if err := w.onOverdose(ctx, o); err != nil {
			workflow.GetLogger(ctx).Error("overdose signalled before the cancellation not answered", "error", err)
		}
	}
}

// tighten brings check-ins closer after an overdose: one within first, then
// none further apart than gap, up to the last one planned.
func tighten(checkIns []time.Time, now time.Time, first, gap time.Duration) []time.Time {
	end := now.Add(first)
	if len(checkIns) > 0 && checkIns[len(checkIns)-1].After(end) {
		end = checkIns[len(checkIns)-1]
	}
	out := []time.Time{now.Add(first)}
	for t := now.Add(first + gap); t.Before(end); t = t.Add(gap) {
		out = append(out, t)
	}
	if last := out[len(out)-1]; end.After(last) {
		out = append(out, end)
	}
	return out
}

func (w *wf) onCheckIn(ctx workflow.Context, ci CheckIn) error {
	key := fmt.Sprintf("%s#%d", ci.Intervention, ci.Number)
	if slices.Contains(w.st.CheckInsSeen, key) && flow.Version(ctx, versionCheckInOnce, 1) >= 1 {
		return nil // delivered again
	}
	if ci.Intervention != "" && ci.Intervention != w.in.Intervention {
		// Another meeting's: its restart takes it (a late one of an
		// earlier meeting is let go then). Delivered again, it is kept
		// once, and not taken as this cycle's either.
		kept := slices.Contains(w.st.Later, ci)
		if !kept && flow.Version(ctx, versionCheckInsOfNext, 1) >= 1 {
			w.st.Later = append(w.st.Later, ci)
			return nil
		}
		if kept && flow.Version(ctx, versionNextCheckInOnce, 1) >= 1 {
			return nil
		}
	}
	w.st.CheckInsSeen = append(w.st.CheckInsSeen, key)
	// Asked at every check-in, so that its marker does not tell which
	// families saw new signs.
	signs := flow.Version(ctx, versionSignsAtCheckIn, 1) >= 1 && ci.NewWarningSigns
	why := fmt.Sprintf("the family reported a window of opportunity at check-in %d", ci.Number)
	if signs && !ci.WindowOfOpportunity {
		why = fmt.Sprintf("the family reported new warning signs at check-in %d", ci.Number)
	}
	opening := ci.WindowOfOpportunity || signs
	if opening && !w.st.Escalated && w.st.Reinforced {
		return w.escalate(ctx, why)
	}
	if opening && !w.st.Escalated && !w.st.Reinforced && flow.Version(ctx, versionWindowBeforeScreen, 1) >= 1 {
		// Kept for when the boundaries are reinforced (prepare): the next
		// check-in may be weeks off, and the cool-down further.
		w.st.WindowBeforeScreen = why
		return nil
	}
	// A next meeting held back for a screen that found risk goes ahead if
	// the family is safe now (this check-in may come before the screen's
	// own signal).
	if opening && w.st.EscalationUnsafe && !w.st.EscalationBlocked {
		// Not with one held for a consequence too (a run begun before
		// new-cycle-clears-blocked-escalation can hold both): that one is
		// tried below, as before.
		return w.proposeOnceSafe(ctx, why, false)
	}
	// A formal meeting held back for a consequence is proposed if one is
	// stated now; if not, it waits on (the counselor was asked already).
	if opening && w.st.EscalationBlocked && w.st.Reinforced && !w.st.BlockedAtEnd &&
		flow.Version(ctx, versionBlockedKept, 1) >= 1 {
		if err := w.readSafety(ctx); err != nil {
			return err
		}
		if len(w.safety.WithConsequence) == 0 {
			return nil
		}
		w.st.EscalationBlocked = false
		return w.escalate(ctx, why)
	}
	return nil
}

// versionWindowBeforeScreen guards keeping a window of opportunity (or new
// warning signs) reported at a check-in before the boundaries were
// reinforced, while the family waited for a safety screen, and proposing
// the next meeting once they are. Before, the check-in was marked seen and
// forgotten, and the meeting waited for the cool-down. Asked only then, in
// a new epoch.
const versionWindowBeforeScreen = "window-before-screen"

// versionSignsAtCheckIn guards taking new warning signs reported at a
// check-in (a job lost, a charge, trouble at home) as the time to
// intervene, as a window of opportunity is: the next meeting is proposed
// then, not after the cool-down. Before, the answer was recorded and not
// read.
const versionSignsAtCheckIn = "warning-signs-at-check-in"

// versionCheckInsUnscreened guards keeping the check-ins of a family
// waiting for its safety screen. Before, they came only once boundaries
// were reinforced: a counselor who missed the one request for a screen
// heard nothing more of the family.
const versionCheckInsUnscreened = "check-ins-before-screen"

// versionCheckInOnce guards taking each check-in once: before, one
// delivered again after a restart (the outbox delivers at least once)
// could propose the next meeting of the new cycle.
const versionCheckInOnce = "check-in-once"

// versionLevelTwoSeries guards ARISE's series of level 2 meetings: after a
// level 2 meeting, another is proposed until the family has held
// levelTwoMeetings of them, and only then a formal (level 3) one. Before,
// one level 2 meeting refused led straight to level 3. Asked at every
// escalation, whatever the level, so that its marker tells nothing of the
// meeting.
const versionLevelTwoSeries = "level-two-series"

// levelTwoMeetings is how many level 2 meetings ARISE holds at most before
// a formal intervention (one to five).
const levelTwoMeetings = 5

// versionSupportUnreferred guards telling the counselor that a family
// with no contact person who agreed to be contacted was referred to no
// support after a no. Before, the referral was skipped in silence.
const versionSupportUnreferred = "support-unreferred-told"

// escalate proposes the next intervention one ARISE level up (at level 2,
// another level 2 meeting while the series lasts). A formal
// intervention (level 3) states consequences, so it is proposed only when
// the family has active boundaries that state them.
func (w *wf) escalate(ctx workflow.Context, why string) error {
	w.st.Escalated = true
	level := min(w.in.Level+1, 3)
	series := flow.Version(ctx, versionLevelTwoSeries, 1) >= 1
	if err := w.readSafety(ctx); err != nil {
		return err
	}
	if w.safety.Status != "CURRENT" && flow.Version(ctx, versionGateOnScreen, 1) >= 1 {
		// A firmer meeting can raise the danger at home as boundaries
		// can: it waits for a screen that finds the family safe.
		w.st.EscalationUnsafe = true
		w.st.UnsafeNotices++
		return flow.Remind(ctx, w.in.Clinic, w.counselor(), "SAFETY_SCREEN_NEEDED", w.in.Family,
			"The family may be ready for the next meeting, but the latest safety screen is not current or found risk: "+
				"it is proposed once a new screen finds the family safe.",
			w.id(numbered("escalation-unsafe", w.st.UnsafeNotices)))
	}
	held := 0
	if series && w.in.Level == 2 {
		// ARISE's level 2 is a series of network meetings: a formal
		// intervention comes only once the series is spent.
		if err := flow.Call(ctx, &held, flow.A.MeetingsHeld, activities.MeetingsRequest{Family: w.in.Family, Level: 2}); err != nil {
			return err
		}
		if held < levelTwoMeetings {
			level = 2
		}
	}
	if level == 3 && len(w.safety.WithConsequence) == 0 {
		w.st.EscalationBlocked = true
		w.st.BlockedNotices++
		return flow.Remind(ctx, w.in.Clinic, w.counselor(), "ESCALATION_PROPOSED", w.in.Family,
			"The family may be ready for a formal meeting, but no active boundary states a consequence yet: agree one first.",
			w.id(numbered("escalation-blocked", w.st.BlockedNotices)))
	}
	notes := fmt.Sprintf("Proposed %s, after the level %d meeting (%s).", why, w.in.Level, strings.ToLower(strings.ReplaceAll(w.in.Outcome, "_", " ")))
	if level == 2 && w.in.Level == 2 {
		notes += fmt.Sprintf(" Another level 2 meeting: ARISE holds up to %d before a formal intervention, and the family has held %d.",
			levelTwoMeetings, held)
	}
	if level == 3 {
		slices.Sort(w.safety.WithConsequence)
		notes += " Consequences to state are those of the active boundaries: " + strings.Join(w.safety.WithConsequence, ", ") + "."
	}
	if err := flow.Call(ctx, &w.st.Proposed, flow.A.ProposeIntervention, activities.ProposeRequest{
		Previous: w.in.Intervention, Level: level, Notes: notes, RequestID: flow.RequestID(ctx, w.id("propose")),
	}); err != nil {
		return err
	}
	return flow.Remind(ctx, w.in.Clinic, w.counselor(), "ESCALATION_PROPOSED", w.st.Proposed,
		fmt.Sprintf("A level %d family meeting is drafted for your review.", level), w.id("proposed"))
}

// numbered is the purpose of the nth notice of its kind: the first keeps
// the purpose alone, as before there were more (a run begun then counts
// from zero, and its first notice keeps its id), the later ones number it.
// Only an activity's input: replay does not compare it, so no version.
func numbered(purpose string, n int) string {
	if n <= 1 {
		return purpose
	}
	return fmt.Sprintf("%s|%d", purpose, n)
}

// unread reports whether a signal waits to be handled: a run must not
// continue as new over it, or it would be lost.
func (w *wf) unread() bool {
	return w.signalled() || w.failedReminders.Len() > 0
}

// signalled reports whether a signal that wait handles is waiting, or a
// check-in recorded before the workflow ran.
func (w *wf) signalled() bool {
	if len(w.st.Early) > 0 {
		return true
	}
	for _, c := range []workflow.ReceiveChannel{w.overdose, w.screen, w.checkIn, w.restart} {
		if c.Len() > 0 {
			return true
		}
	}
	return false
}

// continueAsNew starts a fresh run with the progress so far, once every
// handler has finished.
func (w *wf) continueAsNew(ctx workflow.Context) error {
	if err := workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) }); err != nil {
		return err
	}
	if ctx.Err() != nil {
		// Cancelled in the task that brought the run's last event (Await
		// does not say so when its condition holds already): a new run
		// would not inherit the cancel. A run that continued before is
		// closed, so no open history replays this (a query or reset of
		// such a closed run would not replay).
		return temporal.NewCanceledError()
	}
	w.st.Events = 0
	in := w.in
	in.State = w.st
	return workflow.NewContinueAsNewError(ctx, Name, in)
}
