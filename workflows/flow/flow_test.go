package flow_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/flow"
)

// loadSettings is a workflow that makes one call through flow.Call.
func loadSettings(ctx workflow.Context) (activities.Settings, error) {
	var s activities.Settings
	err := flow.Call(flow.WithActivityOptions(ctx), &s, flow.A.LoadSettings, "north")
	return s, err
}

// rereads reads the family's safety twice into one value, keeping the
// first read's boundaries as a step ranging over them would, and returns
// what that step then sees.
func rereads(ctx workflow.Context) ([]string, error) {
	ctx = flow.WithActivityOptions(ctx)
	var s activities.Safety
	if err := flow.Call(ctx, &s, flow.A.FamilySafety, "clinics/north/families/f1"); err != nil {
		return nil, err
	}
	ranging := s.Boundaries
	if err := flow.Call(ctx, &s, flow.A.FamilySafety, "clinics/north/families/f1"); err != nil {
		return nil, err
	}
	if len(s.Boundaries) != 1 {
		return nil, errors.New("the second read was not stored")
	}
	return ranging, nil
}

// A result read again into the same value leaves the slices the first
// one stored as they were: a coroutine ranging over them while it is read
// again must not see their elements change (a boundary skipped, another
// reinforced twice).
func TestCallLeavesTheSlicesOfWhatItReplaces(t *testing.T) {
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(rereads)
	env.RegisterActivity(&activities.Activities{})
	reads := 0
	env.OnActivity(flow.A.FamilySafety, mock.Anything, mock.Anything).Return(func(context.Context, string) (activities.Safety, error) {
		reads++
		if reads == 1 {
			return activities.Safety{Boundaries: []string{"b1", "b2", "b3"}}, nil
		}
		return activities.Safety{Boundaries: []string{"b3"}}, nil
	})
	env.ExecuteWorkflow(rereads)
	var got []string
	if err := env.GetWorkflowResult(&got); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"b1", "b2", "b3"}) {
		t.Fatalf("the first read's boundaries became %v after the second read; want b1, b2, b3", got)
	}
}

type counts struct{ local, remote, calls int }

// run runs loadSettings against a LoadSettings that fails with err for its
// first failures calls.
func run(t *testing.T, failures int, err error) (activities.Settings, error, counts) {
	t.Helper()
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(loadSettings)
	env.RegisterActivity(&activities.Activities{})
	var c counts
	env.SetOnLocalActivityStartedListener(func(*activity.Info, context.Context, []any) { c.local++ })
	env.SetOnActivityStartedListener(func(*activity.Info, context.Context, converter.EncodedValues) { c.remote++ })
	want := activities.DefaultSettings()
	want.MaxPrograms = 7
	env.OnActivity(flow.A.LoadSettings, mock.Anything, "north").Return(func(context.Context, string) (activities.Settings, error) {
		c.calls++
		if c.calls <= failures {
			return activities.Settings{}, err
		}
		return want, nil
	})
	env.ExecuteWorkflow(loadSettings)
	var got activities.Settings
	werr := env.GetWorkflowError()
	if werr == nil {
		if err := env.GetWorkflowResult(&got); err != nil {
			t.Fatal(err)
		}
	}
	return got, werr, c
}

func TestCallRunsLocallyWhenTheServiceAnswers(t *testing.T) {
	got, err, c := run(t, 0, nil)
	if err != nil || got.MaxPrograms != 7 {
		t.Fatalf("result %+v, %v", got, err)
	}
	if c.local != 1 || c.remote != 0 {
		t.Fatalf("local %d, activities %d; want one local call", c.local, c.remote)
	}
}

// A service that keeps failing past the local budget is handed to the
// server's retries, and the workflow still gets its answer.
func TestCallFallsBackToAnActivityWhenTheLocalTryRunsOut(t *testing.T) {
	got, err, c := run(t, 8, errors.New("unavailable"))
	if err != nil || got.MaxPrograms != 7 {
		t.Fatalf("result %+v, %v", got, err)
	}
	if c.local < 2 || c.remote < 1 {
		t.Fatalf("local %d, activities %d; want local retries, then an activity", c.local, c.remote)
	}
	if c.local >= 8 {
		t.Fatalf("local tries %d: the local budget did not stop them", c.local)
	}
}

// An error the activity marked final ends the call at once, locally.
func TestCallDoesNotRetryAFinalError(t *testing.T) {
	_, err, c := run(t, 100, temporal.NewNonRetryableApplicationError("no such clinic", "NOT_FOUND", nil))
	if activities.ErrorType(err) != "NOT_FOUND" {
		t.Fatalf("error %v, want NOT_FOUND", err)
	}
	if c.local != 1 || c.remote != 0 || c.calls != 1 {
		t.Fatalf("local %d, activities %d, calls %d; want one local call", c.local, c.remote, c.calls)
	}
}

// meetingAt is what remindNow's reminders by RemindAwake are about.
var meetingAt = time.Date(2037, 12, 4, 18, 0, 0, 0, time.UTC)

// remindNow sends three reminders due "now": one by Remind, two by
// RemindAwake to a member in and out of quiet hours.
func remindNow(ctx workflow.Context) error {
	ctx = flow.WithActivityOptions(ctx)
	if err := flow.Remind(ctx, "north", activities.Person{Kind: "counselor", ID: "c1", Channel: "IN_APP"},
		"CHECK_IN", "", "Call the family.", "counselor"); err != nil {
		return err
	}
	for _, m := range []activities.Person{
		{Kind: "member", ID: "awake", Family: "clinics/north/families/f1", Channel: "SMS", TimeZone: "UTC", QuietStart: "22:00", QuietEnd: "07:00"},
		{Kind: "member", ID: "asleep", Family: "clinics/north/families/f1", Channel: "SMS", TimeZone: "UTC", QuietStart: "09:00", QuietEnd: "17:00"},
	} {
		if _, _, err := flow.RemindAwake(ctx, "north", m, "CHECK_IN", "", "How are you doing?", m.ID, time.Time{}, meetingAt); err != nil {
			return err
		}
	}
	return nil
}

// A reminder due now leaves its time to the service's clock (a zero Due),
// so a step tried again later sends the same request; one that quiet hours
// move is due when they end, a time of day the same for every try. Both
// carry what they are about, for their send-by times.
func TestRemindersDueNowCarryNoTime(t *testing.T) {
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(remindNow)
	env.RegisterActivity(&activities.Activities{})
	start := time.Date(2037, 12, 3, 12, 0, 0, 0, time.UTC) // noon: quiet for "asleep" only
	env.SetStartTime(start)
	due, about := map[string]time.Time{}, map[string]time.Time{}
	env.OnActivity(flow.A.SendReminder, mock.Anything, mock.Anything).Return(func(_ context.Context, r activities.ReminderRequest) (string, error) {
		due[r.To.ID], about[r.To.ID] = r.Due, r.AwakeBy
		return "clinics/north/reminders/" + r.To.ID, nil
	})
	env.ExecuteWorkflow(remindNow)
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if len(due) != 3 || !due["c1"].IsZero() || !due["awake"].IsZero() || !due["asleep"].Equal(start.Add(5*time.Hour)) {
		t.Fatalf("due times asked %v; want zero, zero and 17:00", due)
	}
	if !about["awake"].Equal(meetingAt) || !about["asleep"].Equal(meetingAt) {
		t.Fatalf("what the reminders are about %v; want %v for both", about, meetingAt)
	}
}

// A reminder its step's earlier try already made, from what it read then,
// comes back REQUEST_ID_REUSED: the step goes on without it instead of
// failing the workflow.
func TestReminderMadeByAnEarlierTryDoesNotFailTheStep(t *testing.T) {
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(remindNow)
	env.RegisterActivity(&activities.Activities{})
	env.SetStartTime(time.Date(2037, 12, 3, 12, 0, 0, 0, time.UTC))
	calls := 0
	env.OnActivity(flow.A.SendReminder, mock.Anything, mock.Anything).Return(func(context.Context, activities.ReminderRequest) (string, error) {
		calls++
		if calls == 1 {
			return "", temporal.NewNonRetryableApplicationError("create reminder: request id reused", "REQUEST_ID_REUSED", nil)
		}
		return "clinics/north/reminders/r", nil
	})
	env.ExecuteWorkflow(remindNow)
	if err := env.GetWorkflowError(); err != nil || calls != 3 {
		t.Fatalf("workflow error %v after %d reminders; want none after 3", err, calls)
	}
}

// stillCurrent says whether the resendOnce workflow's reminder is still
// current; the resend's mock changes it, as a reschedule handled while the
// resend was being made would.
var stillCurrent atomic.Bool

// resendOnce serves failed reminders for an hour.
func resendOnce(ctx workflow.Context) error {
	ctx = flow.WithActivityOptions(ctx)
	var r flow.Resends
	flow.RetryFailedReminders(ctx, activities.DefaultSettings(), &r, func(workflow.Context, string) bool { return !stillCurrent.Load() })
	return workflow.Sleep(ctx, time.Hour)
}

// A resend made while what it reminds of changed (the workflow cancelled
// the reminders it knew of meanwhile) is cancelled once made; one still
// current stays.
func TestResendMadeStaleMeanwhileIsCancelled(t *testing.T) {
	for _, changed := range []bool{true, false} {
		var suite testsuite.WorkflowTestSuite
		env := suite.NewTestWorkflowEnvironment()
		env.RegisterWorkflow(resendOnce)
		env.RegisterActivity(&activities.Activities{})
		stillCurrent.Store(true)
		env.OnActivity(flow.A.Resend, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.ResendRequest) (activities.Resent, error) {
			stillCurrent.Store(!changed)
			return activities.Resent{Reminder: "clinics/north/reminders/again", FailsBy: in.Due}, nil
		})
		var cancelled []string
		env.OnActivity(flow.A.CancelReminder, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.CancelReminderRequest) (bool, error) {
			cancelled = append(cancelled, in.Name)
			return true, nil
		})
		env.RegisterDelayedCallback(func() {
			env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: "clinics/north/reminders/first"})
		}, time.Minute)
		env.ExecuteWorkflow(resendOnce)
		if err := env.GetWorkflowError(); err != nil {
			t.Fatal(err)
		}
		if want := map[bool]int{true: 1, false: 0}[changed]; len(cancelled) != want || (want == 1 && cancelled[0] != "clinics/north/reminders/again") {
			t.Fatalf("changed meanwhile %v: cancelled %v, want %d (the resend)", changed, cancelled, want)
		}
	}
}

// remindOnce is a workflow that makes one meeting reminder through
// flow.Remind and returns its name.
func remindOnce(ctx workflow.Context) (string, error) {
	ctx = flow.WithActivityOptions(ctx)
	return flow.RemindAt(ctx, "north", activities.Person{Kind: "member", ID: "mom", Family: "clinics/north/families/f1", Channel: "SMS"},
		"INTERVENTION_UPCOMING", "clinics/north/interventions/i1", "Reminder: family meeting tomorrow.", "upcoming", time.Time{})
}

// A reminder the service refuses because the meeting is no longer
// scheduled, or the recipient no longer takes part (the workflow has yet
// to hear of the change), is skipped, not the end of the workflow; another
// refusal still fails it.
func TestRemindSkipsAMeetingNoLongerScheduled(t *testing.T) {
	for reason, skipped := range map[string]bool{"MEETING_NOT_SCHEDULED": true, "NOT_A_PARTICIPANT": true, "INVALID_STATE_TRANSITION": false} {
		var suite testsuite.WorkflowTestSuite
		env := suite.NewTestWorkflowEnvironment()
		env.RegisterWorkflow(remindOnce)
		env.RegisterActivity(&activities.Activities{})
		env.OnActivity(flow.A.SendReminder, mock.Anything, mock.Anything).Return("",
			temporal.NewNonRetryableApplicationError("create reminder: refused", reason, nil))
		env.ExecuteWorkflow(remindOnce)
		err := env.GetWorkflowError()
		var name string
		if err == nil {
			if rerr := env.GetWorkflowResult(&name); rerr != nil {
				t.Fatal(rerr)
			}
		}
		if (err == nil) != skipped || name != "" {
			t.Errorf("refused with %s: name %q, workflow error %v; skipped %v", reason, name, err, skipped)
		}
	}
}

// listenOnce serves failed reminders, then listens before it ends.
func listenOnce(ctx workflow.Context) error {
	ctx = flow.WithActivityOptions(ctx)
	var r flow.Resends
	flow.RetryFailedReminders(ctx, activities.DefaultSettings(), &r, nil)
	return flow.Listen(ctx, activities.DefaultSettings(), &r, time.Time{}, nil)
}

// A resend that quiet hours move hours past the time asked is listened
// for until it can fail, and its failure is sent again: ListenFor alone
// (90 minutes) would have closed the workflow long before it was due.
func TestListenWaitsForAResendMovedPastQuietHours(t *testing.T) {
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(listenOnce)
	env.RegisterActivity(&activities.Activities{})
	start := time.Date(2037, 12, 3, 21, 0, 0, 0, time.UTC)
	env.SetStartTime(start)
	morning := start.Add(10 * time.Hour)
	var resent []string
	env.OnActivity(flow.A.Resend, mock.Anything, mock.Anything).Return(func(_ context.Context, in activities.ResendRequest) (activities.Resent, error) {
		resent = append(resent, in.Failed)
		if len(resent) == 1 {
			// Due when the member's quiet hours end.
			return activities.Resent{Reminder: "clinics/north/reminders/morning", FailsBy: morning}, nil
		}
		return activities.Resent{Reminder: "clinics/north/reminders/again", FailsBy: in.Due}, nil
	})
	env.RegisterDelayedCallback(func() {
		env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: "clinics/north/reminders/evening"})
	}, time.Minute)
	env.RegisterDelayedCallback(func() {
		env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: "clinics/north/reminders/morning"})
	}, morning.Add(5*time.Minute).Sub(start))
	env.ExecuteWorkflow(listenOnce)
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(resent, []string{"clinics/north/reminders/evening", "clinics/north/reminders/morning"}) {
		t.Fatalf("resent %v; want the evening's reminder, then the morning's resend", resent)
	}
}

// Final lifts a refusal no retry can fix to the top of the error, where
// Temporal's retry of a one-shot workflow looks; anything else it leaves.
func TestFinalLiftsANonRetryableRefusal(t *testing.T) {
	refused := temporal.NewNonRetryableApplicationError("closed", "FAMILY_CLOSED", nil)
	lifted := flow.Final(fmt.Errorf("activity: %w", refused))
	top, ok := lifted.(*temporal.ApplicationError)
	if !ok || !top.NonRetryable() || top.Type() != "FAMILY_CLOSED" || top.Message() != "closed" || !errors.Is(lifted, refused) {
		t.Fatalf("Final of a wrapped refusal = %#v; want a non-retryable FAMILY_CLOSED at the top, wrapping it", lifted)
	}
	transient := fmt.Errorf("activity: %w", temporal.NewApplicationError("down", "Unavailable"))
	plain := errors.New("down")
	for _, err := range []error{nil, transient, plain, refused} {
		if got := flow.Final(err); got != err {
			t.Errorf("Final(%v) = %v; want it unchanged", err, got)
		}
	}
}
