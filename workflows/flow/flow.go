// Package flow holds what Handoff's workflows share: activity options with
// explicit timeouts and retries, request ids made deterministic inside the
// workflow, and sending a reminder.
package flow

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"reflect"
	"slices"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/ids"
	"github.com/handoff-health/handoff/workflows/schedule"
)

// A is the nil receiver through which workflows name activities.
var A *activities.Activities

// TaskQueue is the task queue of Handoff's worker.
const TaskQueue = "handoff"

// versionLocalActivities guards calling the services as local activities.
// Histories from before it scheduled every call as an activity and replay
// that way.
const versionLocalActivities = "local-activities"

type localKey struct{}

// WithActivityOptions gives every activity a 30 s attempt, retries with
// backoff for up to a day, and stops at once on the errors activities mark
// non-retryable (invalid argument, not found, failed precondition). It also
// decides, once per run, whether Call tries a local activity first: every
// call is a short, idempotent request to a Handoff service, and a local
// activity records one marker where an activity costs the server three
// events and a workflow task of its own.
func WithActivityOptions(ctx workflow.Context) workflow.Context {
	retry := &temporal.RetryPolicy{
		InitialInterval:    time.Second,
		BackoffCoefficient: 2,
		MaximumInterval:    time.Minute,
	}
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: 30 * time.Second,
		// Workflows run for weeks: a service outage of an hour must delay
		// them, not end them. Every mutating call is idempotent.
		ScheduleToCloseTimeout: 24 * time.Hour,
		RetryPolicy:            retry,
	})
	// The local try is short on purpose: its retries run inside the
	// workflow task, and past the task's timeout each one would add a
	// marker and a timer to the history. A service still failing after
	// localBudget is left to the server's retries through an activity.
	ctx = workflow.WithLocalActivityOptions(ctx, workflow.LocalActivityOptions{
		StartToCloseTimeout:    localAttempt,
		ScheduleToCloseTimeout: localBudget,
		RetryPolicy:            retry,
	})
	local := Version(ctx, versionLocalActivities, 1) >= 1
	ctx = workflow.WithValue(ctx, freshKey{}, Version(ctx, versionFreshResults, 1) >= 1)
	return workflow.WithValue(ctx, localKey{}, local)
}

// versionFreshResults guards decoding a call's result apart before it is
// stored (see fresh). A run begun before decoded it into the caller's
// value, and one whose coroutines raced over a slice replays that way.
const versionFreshResults = "fresh-results"

type freshKey struct{}

// Soon is ctx with its activities given up d after they are scheduled,
// the server's retries included (Call's local try, localBudget, comes
// before): for a read whose answer is worth less than not waiting for it,
// the caller going on without it (the counselor last read) when it fails.
// Only timing changes, no command.
func Soon(ctx workflow.Context, d time.Duration) workflow.Context {
	return workflow.WithScheduleToCloseTimeout(ctx, d)
}

// SoonEnough is how long, past the local try, a read that only refines a
// notice may hold the notice back.
const SoonEnough = 2 * time.Minute

// How long a local try may take: an attempt, and all attempts with their
// backoff (1, 2, 4 and 8 s, each shorter than a workflow task's default
// timeout of 10 s, so no retry waits on a server timer).
const (
	localAttempt = 5 * time.Second
	localBudget  = 25 * time.Second
)

// Call runs an activity of Activities and decodes its result into out (nil
// for none). In runs that WithActivityOptions set for it, it tries a local
// activity first and falls back to an activity when the local try failed
// with an error worth retrying: the same arguments and request id, so the
// service does nothing twice.
func Call(ctx workflow.Context, out any, activity any, args ...any) error {
	into := out
	if f, _ := ctx.Value(freshKey{}).(bool); f {
		into = fresh(out)
	}
	err := call(ctx, into, activity, args...)
	if err == nil && out != nil && into != out {
		// workflowcheck reads reflect's panic path (it names the caller
		// from the stack) as non-deterministic; a store is not.
		reflect.ValueOf(out).Elem().Set(reflect.ValueOf(into).Elem()) //workflowcheck:ignore
	}
	return err
}

// fresh is a new zero value of what out points to, or nil for nil. A
// result decoded straight into out would be written into the backing
// arrays of the slices out holds: another coroutine of the workflow,
// blocked while ranging over one of them (a step going through the
// family's boundaries while an overdose's answer reads the family
// again), would find its elements changed under it. Decoded apart and
// then stored, the result leaves those arrays as they were; the value
// stored is the same (results carry no maps to merge into), but a step
// ranging over such a slice may now go otherwise, so runs begun before
// keep the old way (versionFreshResults).
func fresh(out any) any {
	if out == nil {
		return nil
	}
	return reflect.New(reflect.TypeOf(out).Elem()).Interface()
}

func call(ctx workflow.Context, out any, activity any, args ...any) error {
	if local, _ := ctx.Value(localKey{}).(bool); local {
		err := workflow.ExecuteLocalActivity(ctx, activity, args...).Get(ctx, out)
		if !worthRetrying(err) {
			return err
		}
		workflow.GetLogger(ctx).Warn("local activity failed; handing it to the server's retries", "error", err)
	}
	return workflow.ExecuteActivity(ctx, activity, args...).Get(ctx, out)
}

// worthRetrying reports whether a failed local try should go on as an
// activity: not when it succeeded, was cancelled, or failed with an error
// the activity marked final.
func worthRetrying(err error) bool {
	if err == nil || temporal.IsCanceledError(err) {
		return false
	}
	_, final := refusal(err)
	return !final
}

// refusal is the application error in err's chain that an activity
// marked final (non-retryable), if there is one.
func refusal(err error) (*temporal.ApplicationError, bool) {
	var app *temporal.ApplicationError
	if errors.As(err, &app) && app.NonRetryable() {
		return app, true
	}
	return nil, false
}

// Refused reports whether err holds a refusal no retry can fix: a step
// that failed for good, not one that ran out of time or tries.
func Refused(err error) bool {
	_, final := refusal(err)
	return final
}

// GoOnPast reports whether a workflow goes on past err, a step that failed
// for good, under change, the version that made it go on where it used to
// fail; it logs msg with kv if so, as an error: something the workflow
// should have done (a reminder, a notice to staff, a release) is gone
// without after its retries, and an operator alerting on errors must hear
// of it (the README says so). A cancellation through Temporal never
// goes on: it ends the workflow. The version is asked only here, on the
// failure, so runs that never fail there record nothing of it.
func GoOnPast(ctx workflow.Context, err error, change, msg string, kv ...any) bool {
	if temporal.IsCanceledError(err) || Version(ctx, change, 1) < 1 {
		return false
	}
	workflow.GetLogger(ctx).Error(msg, append(kv, "error", err)...)
	return true
}

// RequestID derives the request id of one mutating call from the workflow id
// and a purpose unique within the workflow. A retried activity, or a replay,
// sends the same id, so the service changes nothing twice (AIP-155).
func RequestID(ctx workflow.Context, purpose string) string {
	sum := sha256.Sum256([]byte(workflow.GetInfo(ctx).WorkflowExecution.ID + "|" + purpose))
	return hex.EncodeToString(sum[:20])
}

// Remind creates a reminder due now for to.
func Remind(ctx workflow.Context, clinic string, to activities.Person, kind, related, message, purpose string) error {
	_, err := RemindAt(ctx, clinic, to, kind, related, message, purpose, time.Time{})
	return err
}

// RemindAt creates a reminder due at due for to and returns its name; a
// zero due is now. A recipient who may no longer be contacted (consent
// withdrawn, member removed) is skipped with an empty name, not a reason to
// end a workflow that runs for weeks on a snapshot of the family.
//
// "Now" is left to the service's clock, never workflow.Now: a step whose
// workflow task is lost after its local activities ran (a worker stopped
// mid-task) runs them again at a later workflow time, and the request id,
// the same, would then come with another request.
func RemindAt(ctx workflow.Context, clinic string, to activities.Person, kind, related, message, purpose string, due time.Time) (string, error) {
	return remind(ctx, activities.ReminderRequest{Clinic: clinic, To: to, Kind: kind, Related: related, Message: message, Due: due}, purpose)
}

// RemindOfMeeting is RemindAt now, for a notice about the meeting
// related that starts at meeting as the workflow knows it: the service
// refuses it (and it is skipped) if the meeting has moved since, which
// the workflow is then still to hear.
func RemindOfMeeting(ctx workflow.Context, clinic string, to activities.Person, kind, related, message, purpose string, meeting time.Time) (string, error) {
	return remind(ctx, activities.ReminderRequest{Clinic: clinic, To: to, Kind: kind, Related: related, Message: message, Meeting: meeting}, purpose)
}

// remind makes the reminder req, under the request id of purpose.
func remind(ctx workflow.Context, req activities.ReminderRequest, purpose string) (string, error) {
	name, _, err := remindWhy(ctx, req, purpose)
	return name, err
}

// remindWhy is remind that also says why a reminder was skipped: the
// reason the service gave (NotAParticipant, say), or "" when it was made
// or the step failed.
func remindWhy(ctx workflow.Context, req activities.ReminderRequest, purpose string) (string, string, error) {
	to, kind := req.To, req.Kind
	req.RequestID, req.Origin = RequestID(ctx, "remind|"+purpose), workflow.GetInfo(ctx).WorkflowExecution.ID
	var name string
	err := Call(ctx, &name, A.SendReminder, req)
	switch reason := activities.ErrorType(err); reason {
	// MEETING_NOT_SCHEDULED, NOT_A_PARTICIPANT: the meeting was cancelled,
	// held or moved, or the recipient taken off it, before this workflow
	// heard of it; the change reaches it next.
	case "CONTACT_NOT_ALLOWED", "InvalidArgument", "MEETING_NOT_SCHEDULED", NotAParticipant:
		workflow.GetLogger(ctx).Warn("reminder skipped", "kind", kind, "recipient_kind", to.Kind, "recipient", to.ID, "error", err)
		return "", reason, nil
	case "REQUEST_ID_REUSED":
		// The id is this step's own: an earlier try of it, whose workflow
		// task was lost, made the reminder from what it read then (a
		// counselor since changed, a quiet hour since begun). That one
		// stands; the step does not fail for it. SendReminder returns
		// its name when the service gives it; under a key stored before
		// the service did, its name is not known here and its failed
		// delivery is not resent.
		workflow.GetLogger(ctx).Warn("reminder made by an earlier try", "kind", kind, "recipient_kind", to.Kind, "recipient", to.ID)
		return "", "", nil
	}
	return name, "", err
}

// NotAParticipant is the service's refusal of a meeting reminder to
// someone who no longer takes part in the meeting (or no longer leads
// it): the plan the workflow holds is older than the service's.
const NotAParticipant = "NOT_A_PARTICIPANT"

// RemindAwake is RemindAt for a message to a family member or the loved
// one, due at due (zero for now) or, if that falls in their quiet hours,
// when those end, unless that is not before by (what the message is about;
// zero for nothing). The reminder is created now either way; the automation
// delivers it when it is due, which RemindAwake returns: its failure can
// come no earlier (see Listen).
func RemindAwake(ctx workflow.Context, clinic string, to activities.Person, kind, related, message, purpose string, due, by time.Time) (string, time.Time, error) {
	name, at, _, err := RemindAwakeWhy(ctx, clinic, to, kind, related, message, purpose, due, by)
	return name, at, err
}

// RemindAwakeWhy is RemindAwake that also says why the service turned the
// reminder down, when it did for a reason RemindAt skips (see remindWhy).
func RemindAwakeWhy(ctx workflow.Context, clinic string, to activities.Person, kind, related, message, purpose string, due, by time.Time) (string, time.Time, string, error) {
	now := due.IsZero()
	if now {
		due = workflow.Now(ctx)
	}
	at, err := schedule.Awake(due, to.Recipient(), by)
	if err != nil {
		// The recipient's zone or quiet hours do not parse: send at due
		// rather than not at all.
		workflow.GetLogger(ctx).Warn("quiet hours not applied", "recipient_kind", to.Kind, "recipient", to.ID, "error", err)
		at = due
	}
	if now && at.Equal(due) {
		// Not moved by quiet hours: due now by the service's clock (see
		// RemindAt), and the activity looks at the quiet hours again when
		// it makes the reminder, in case a retried try falls in them.
		name, why, err := remindWhy(ctx, activities.ReminderRequest{Clinic: clinic, To: to, Kind: kind, Related: related, Message: message,
			Awake: true, AwakeBy: by}, purpose)
		return name, at, why, err
	}
	// by goes along for the send-by time: the activity leaves it out when
	// by falls in the quiet hours it would begin.
	name, why, err := remindWhy(ctx, activities.ReminderRequest{Clinic: clinic, To: to, Kind: kind, Related: related, Message: message,
		Due: at, AwakeBy: by}, purpose)
	return name, at, why, err
}

// SignalReminderFailed tells the workflow that created a reminder that its
// delivery failed (from the interventions service's outbox).
const SignalReminderFailed = "reminder-failed"

// ReminderFailed is SignalReminderFailed's payload.
type ReminderFailed struct {
	Reminder string
}

// Resends is where the retries of failed reminders stand. It is plain data
// so that a workflow continuing as new carries it over: without it the new
// run would forget resends still waiting and count every line from zero.
// Attempts and First keep one entry per reminder ever resent, so that a
// repeated failure signal still counts against its line; failures are
// rare, so this stays small.
type Resends struct {
	Attempts map[string]int    // reminder -> resends before it, in its line
	First    map[string]string // reminder -> the first reminder of its line
	Pending  []Resend          // in the order the failures came
	// FailsBy is the latest time a resend made so far can still fail at
	// (see activities.Resent): quiet hours can move a resend hours past
	// the time asked, and Listen waits for it.
	FailsBy time.Time
}

// Line is the first reminder of name's line: name itself, or the one it
// was sent again for.
func (r *Resends) Line(name string) string {
	if f, ok := r.First[name]; ok {
		return f
	}
	return name
}

// Resend is a failed reminder waiting to be sent again at At.
type Resend struct {
	Reminder string
	At       time.Time
}

// versionSkipStale guards the check that drops resends the workflow calls
// stale; histories from before it never made that check.
const versionSkipStale = "skip-stale-resends"

// versionRecheckStale guards asking again once a resend is made: the
// meeting may have moved or ended while it was being made (a slow service,
// retries), after the workflow cancelled the reminders it knew of.
const versionRecheckStale = "recheck-stale-after-resend"

// RetryFailedReminders runs, for the workflow's lifetime, the policy for
// reminders whose delivery failed: each is sent again after
// ReminderRetryDelay, up to ReminderRetries times counted from the first
// reminder of its line. stale, when not nil, is asked with the first
// reminder of a line just before each resend, on the resend's own
// context (one it may block on, to run an activity); a reminder about a
// meeting that moved or is over must not go out again. r holds the state (a
// continued run passes the one its predecessor left) and is updated in
// place. It returns the signal channel, so that a workflow about to
// continue as new can check that nothing is left unread.
func RetryFailedReminders(ctx workflow.Context, s activities.Settings, r *Resends, stale func(ctx workflow.Context, first string) bool) workflow.ReceiveChannel {
	if r.Attempts == nil {
		r.Attempts = map[string]int{}
	}
	if r.First == nil {
		r.First = map[string]string{}
	}
	// The command sequence is the one this function always produced (a timer
	// and an activity per failure signal, repeats included: the request id
	// makes a repeated resend return the same reminder), so older histories
	// replay; only the stale check is new, behind versionSkipStale.
	resend := func(ctx workflow.Context, p Resend) {
		if d := p.At.Sub(workflow.Now(ctx)); d > 0 {
			if err := workflow.Sleep(ctx, d); err != nil {
				return
			}
		}
		defer func() { // the resend is decided, so it no longer waits
			if i := slices.IndexFunc(r.Pending, func(q Resend) bool { return q.Reminder == p.Reminder && q.At.Equal(p.At) }); i >= 0 {
				r.Pending = slices.Delete(r.Pending, i, i+1)
			}
		}()
		line, n := r.Line(p.Reminder), r.Attempts[p.Reminder]
		if stale != nil && Version(ctx, versionSkipStale, 1) >= 1 && stale(ctx, line) {
			workflow.GetLogger(ctx).Info("stale reminder not sent again", "reminder", p.Reminder)
			return
		}
		// A resend still running when the workflow continues as new runs
		// again in the next run; its request id, the same in every run,
		// makes the service return the reminder it already created.
		var next string
		req := activities.ResendRequest{Failed: p.Reminder, Due: p.At, RequestID: RequestID(ctx, "resend|"+p.Reminder)}
		var err error
		if Version(ctx, versionResendFailsBy, 1) >= 1 {
			var out activities.Resent
			err = Call(ctx, &out, A.Resend, req)
			if next = out.Reminder; err == nil && out.FailsBy.After(r.FailsBy) {
				r.FailsBy = out.FailsBy
			}
		} else {
			err = Call(ctx, &next, A.ResendReminder, req)
		}
		if err != nil {
			// Gone without after its retries (an overdose alert's resend
			// among them): an operator alerting on errors must hear of it.
			// A cancellation is no such loss.
			log := workflow.GetLogger(ctx).Error
			if temporal.IsCanceledError(err) {
				log = workflow.GetLogger(ctx).Warn
			}
			log("resending a failed reminder failed", "reminder", p.Reminder, "error", err)
			return
		}
		r.Attempts[next], r.First[next] = n+1, line
		if stale != nil && next != "" && Version(ctx, versionRecheckStale, 1) >= 1 && stale(ctx, line) {
			// Made after the workflow cancelled what it knew of: nobody
			// else would cancel this one, and it names the old time.
			if err := Call(ctx, nil, A.CancelReminder, activities.CancelReminderRequest{Name: next,
				Reason: "what it reminds of changed while it was being sent again", RequestID: RequestID(ctx, "cancel-resend|"+next)}); err != nil {
				workflow.GetLogger(ctx).Warn("cancelling a stale resend failed", "reminder", next, "error", err)
			}
		}
	}
	// Resends a previous run left waiting.
	for _, p := range r.Pending {
		workflow.Go(ctx, func(ctx workflow.Context) { resend(ctx, p) })
	}
	ch := workflow.GetSignalChannel(ctx, SignalReminderFailed)
	stayUnread := Version(ctx, versionFailuresStayUnread, 1) >= 1
	workflow.Go(ctx, func(ctx workflow.Context) {
		// A goroutine blocked in Receive takes a signal out of the channel
		// when it is delivered, before the goroutine runs: a workflow
		// checking the channel for unread signals in between (about to
		// continue as new) would find none, and the failure, in neither
		// the channel nor r.Pending, would be lost. Waiting for the
		// channel to hold one leaves it there until it is in r.Pending
		// (Settle waits for that). The wait ignores cancellation, as
		// Receive did.
		wctx, _ := workflow.NewDisconnectedContext(ctx)
		for {
			var f ReminderFailed
			if stayUnread {
				_ = workflow.Await(wctx, func() bool { return ch.Len() > 0 })
				if !ch.ReceiveAsync(&f) {
					continue
				}
			} else {
				ch.Receive(ctx, &f)
			}
			if r.Attempts[f.Reminder] >= s.ReminderRetries {
				continue
			}
			p := Resend{Reminder: f.Reminder, At: workflow.Now(ctx).Add(s.ReminderRetryDelay)}
			r.Pending = append(r.Pending, p)
			// Each failure waits on its own, so several do not queue.
			workflow.Go(ctx, func(ctx workflow.Context) { resend(ctx, p) })
		}
	})
	return ch
}

// versionResendFailsBy guards resending through A.Resend, which tells
// until when the resend can fail (Resends.FailsBy). Runs begun before it
// call A.ResendReminder, and Listen could end before a resend that quiet
// hours moved was even due.
const versionResendFailsBy = "resend-fails-by"

// versionFailuresStayUnread guards leaving a reminder failure in its
// channel until RetryFailedReminders has put it in the resends. Runs begun
// before it take each failure out with Receive, in the same order of
// commands as ever.
const versionFailuresStayUnread = "failures-stay-unread"

// versionSkipUndecodable guards Receive's skipping a signal that does not
// decode. Before it, the handler blocked in Receive until the next signal
// on the same channel, deaf to the timers and the cancellation of the
// selector it was called from; a run that met one then replays as it ran.
const versionSkipUndecodable = "skip-undecodable-signal"

// Receive takes the signal a selector found on c into valuePtr, and
// reports whether it got one. A signal that does not decode (sealed under
// a key this worker lacks, or sent from a tool without the codec) is
// dropped by the SDK and reported false: the caller selects again, still
// hearing its timers and its cancellation, where c.Receive would wait
// for the next signal on c alone, which may never come.
func Receive(ctx workflow.Context, c workflow.ReceiveChannel, valuePtr any) bool {
	if c.ReceiveAsync(valuePtr) {
		return true
	}
	if Version(ctx, versionSkipUndecodable, 1) >= 1 {
		return false
	}
	c.Receive(ctx, valuePtr)
	return true
}

// Settle waits until every reminder failure delivered so far (failed is
// what RetryFailedReminders returned) is in the resends. A workflow calls
// it before deciding to end or continue as new: a failure that came in the
// same task as the event it acts on is otherwise still in the channel, and
// a workflow that counts it as unread, and waits for a signal instead of
// ending, would wait for one that may never come.
func Settle(ctx workflow.Context, failed workflow.ReceiveChannel) {
	if failed.Len() == 0 || Version(ctx, versionFailuresStayUnread, 1) < 1 {
		return
	}
	_ = workflow.Await(ctx, func() bool { return failed.Len() == 0 })
}

// ListenFor is how long a workflow about to end waits for the delivery
// failures of the reminders it sent last: each resend waits
// ReminderRetryDelay, and the automation is given as long again to
// attempt it.
func ListenFor(s activities.Settings) time.Duration {
	return 2 * time.Duration(s.ReminderRetries) * s.ReminderRetryDelay
}

// Listen keeps a workflow that RetryFailedReminders serves open before it
// ends, so that the failures of its last reminders are still sent again:
// a failure signalled to a closed workflow is lost. It waits until the
// last of those reminders is due (until; zero when all are due already),
// then ListenFor, then for the resends still waiting (as long again at
// most), and listens again after a round that resent anything, for the
// resends' own failures, from the time the last of them can fail
// (r.FailsBy) if that is later. stop, when not nil, ends the wait early:
// the workflow has a signal to act on.
func Listen(ctx workflow.Context, s activities.Settings, r *Resends, until time.Time, stop func() bool) error {
	d := ListenFor(s)
	if d <= 0 {
		return nil
	}
	if stop == nil {
		stop = func() bool { return false }
	}
	if Version(ctx, versionListenPastLastDue, 1) < 1 {
		// One round from the end, as runs begun before the change did.
		if _, err := workflow.AwaitWithTimeout(ctx, d, stop); err != nil || stop() {
			return err
		}
		_, err := workflow.AwaitWithTimeout(ctx, d, func() bool { return len(r.Pending) == 0 || stop() })
		return err
	}
	// A round runs from now until ListenFor after the latest time a
	// reminder can fail at: one timer, not a wait and then a round. Only
	// runs that resend through A.Resend set r.FailsBy, so older histories
	// keep their timers.
	length := func(until time.Time) time.Duration {
		if r.FailsBy.After(until) {
			until = r.FailsBy
		}
		if wait := until.Sub(workflow.Now(ctx)); wait > 0 {
			return d + wait
		}
		return d
	}
	for round := length(until); ; round = length(time.Time{}) {
		// Every resend made adds an entry; resends are bounded by
		// ReminderRetries per line, so the rounds end.
		made := len(r.Attempts)
		if _, err := workflow.AwaitWithTimeout(ctx, round, stop); err != nil || stop() {
			return err
		}
		if _, err := workflow.AwaitWithTimeout(ctx, d, func() bool { return len(r.Pending) == 0 || stop() }); err != nil || stop() {
			return err
		}
		if len(r.Attempts) == made && !unreadFailure(ctx, r) {
			return nil
		}
	}
}

// versionListenSettles guards listening again for a failure that came in
// the same workflow task as the end of Listen's last round: the workflow
// would otherwise end with it still in its channel, and drop it.
const versionListenSettles = "listen-settles"

// unreadFailure reports whether a reminder failure waited in its channel
// and, taken into the resends (Settle), is to be sent again: one past its
// line's retries is dropped, and calls for no other round. The version is
// asked only when one waits.
func unreadFailure(ctx workflow.Context, r *Resends) bool {
	ch := workflow.GetSignalChannel(ctx, SignalReminderFailed)
	if ch.Len() == 0 || Version(ctx, versionListenSettles, 1) < 1 {
		return false
	}
	Settle(ctx, ch)
	return len(r.Pending) > 0
}

// versionListenPastLastDue guards listening from the last reminder's due
// time, and again after a round that resent something. Runs begun before
// it listened one round from the end: a check-in held back by quiet hours
// past that round, or a resend made in its last minutes, failed unheard.
const versionListenPastLastDue = "listen-past-last-due"

// Settings loads the clinic's settings through an activity, so that replays
// see the settings the workflow ran with.
func Settings(ctx workflow.Context, clinic string) (activities.Settings, error) {
	var s activities.Settings
	err := Call(ctx, &s, A.LoadSettings, clinic)
	return s, err
}

// ForFamily begins a workflow about one family: the epoch, the activity
// options, and the family's name checked, a name of no family being a
// final error.
func ForFamily(ctx workflow.Context, family string) (workflow.Context, error) {
	ctx = BeginEpoch(ctx)
	ctx = WithActivityOptions(ctx)
	if aip.Clinic(family) == "" {
		return ctx, temporal.NewNonRetryableApplicationError("not a family name: "+family, "InvalidArgument", nil)
	}
	return ctx, nil
}

// CancelBoundary asks the family's boundary workflow to stop: true when one
// ran and took the request, false and no error when none runs, and the
// server's error otherwise, which each caller weighs for itself.
func CancelBoundary(ctx workflow.Context, family string) (bool, error) {
	err := workflow.RequestCancelExternalWorkflow(ctx, ids.Boundary(family), "").Get(ctx, nil)
	var none *temporal.UnknownExternalWorkflowExecutionError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &none):
		return false, nil
	}
	return false, err
}

// Final is err as a one-shot workflow returns it: an activity's failure
// that no retry can fix (a non-retryable application error, such as a
// service's FAILED_PRECONDITION) becomes the workflow's own, at the top.
// Temporal retries a workflow under its retry policy (the dispatcher's
// one-shot policy, for a week) on any failure but an application failure
// marked non-retryable at the top; an activity failure wrapping one (what
// Call's fallback to a server activity gives back, and what a local try
// gives the test environment) is retried, and each rerun meets the same
// refusal while the run shows as running. Other errors are returned as
// they are.
func Final(err error) error {
	app, final := refusal(err)
	if !final {
		return err
	}
	if top, ok := err.(*temporal.ApplicationError); ok && top == app {
		return err
	}
	return temporal.NewApplicationErrorWithOptions(app.Message(), app.Type(), temporal.ApplicationErrorOptions{
		NonRetryable: true, Cause: err, Category: app.Category()})
}
