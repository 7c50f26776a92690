package intervention_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/boundary"
	"github.com/handoff-health/handoff/workflows/flow"
	"github.com/handoff-health/handoff/workflows/flowtest"
	"github.com/handoff-health/handoff/workflows/ids"
	"github.com/handoff-health/handoff/workflows/intervention"
	"github.com/handoff-health/handoff/workflows/matintake"
)

const name = "clinics/north/interventions/i1"

// sent records the reminders the workflow created, with the workflow time
// at which it created them.
type sent struct {
	mu   sync.Mutex
	list []activities.ReminderRequest
}

// add records r and returns the reminder's name, r<index>.
func (s *sent) add(r activities.ReminderRequest) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.list = append(s.list, r)
	return fmt.Sprintf("clinics/north/reminders/r%d", len(s.list)-1)
}

// nameOf is the name add gave the first reminder of kind, or "".
func (s *sent) nameOf(kind string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, r := range s.list {
		if r.Kind == kind {
			return fmt.Sprintf("clinics/north/reminders/r%d", i)
		}
	}
	return ""
}

func (s *sent) byKind(kind string) []activities.ReminderRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []activities.ReminderRequest
	for _, r := range s.list {
		if r.Kind == kind {
			out = append(out, r)
		}
	}
	return out
}

type harness struct {
	env      *testsuite.TestWorkflowEnvironment
	sent     *sent
	start    time.Time
	holdAt   time.Time
	released []string
	// withdrawn are the WithdrawDrafts calls.
	withdrawn []activities.WithdrawDraftsRequest
	// releaseErr and cancelErr, when set, are what ReleaseHold and
	// CancelReminders fail with.
	releaseErr, cancelErr error
	// onRelease, when set, answers the nth ReleaseHold instead.
	onRelease func(n int) error
	// releaseBudgets are the schedule-to-close timeouts of the ReleaseHold
	// calls the server retries (the test environment stops retries after
	// ten attempts, so a day's budget shows only here).
	releaseBudgets []time.Duration
	cancels        []string
	// stopped are the workflows asked to cancel (the boundary, on a yes).
	stopped []string
	// cancelled are the CancelReminders requests, whole.
	cancelled []activities.CancelRemindersRequest
	oldPlan   activities.Plan
	// hold answers HoldTreatment; tests replace it.
	hold func(activities.HoldRequest) (activities.HoldResult, error)
	// onSend, when set, may fail a SendReminder before it is made.
	onSend func(activities.ReminderRequest) error
	// calls lists ReleaseHold and CancelReminders in the order called.
	calls []string
	// plan answers LoadPlan; tests change it. planErr, once set, is what
	// LoadPlan fails with instead.
	mu      sync.Mutex
	plan    activities.Plan
	planErr error
}

func newHarness(t *testing.T, startIn time.Duration, settings activities.Settings) *harness {
	t.Helper()
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestWorkflowEnvironment()
	// A fixed Monday noon UTC keeps time zone arithmetic readable.
	env.SetStartTime(time.Date(2037, 12, 7, 12, 0, 0, 0, time.UTC))
	env.RegisterWorkflowWithOptions(intervention.Workflow, workflow.RegisterOptions{Name: intervention.Name})
	env.RegisterWorkflowWithOptions(matintake.Workflow, workflow.RegisterOptions{Name: matintake.Name})
	env.RegisterWorkflowWithOptions(boundary.Workflow, workflow.RegisterOptions{Name: boundary.Name})
	env.RegisterActivity(&activities.Activities{})
	h := &harness{env: env, sent: &sent{}, start: env.Now().Add(startIn)}
	env.OnActivity(flow.A.LoadSettings, mock.Anything, "north").Return(settings, nil)
	h.plan = activities.Plan{
		Clinic: "north", Intervention: name, Family: "clinics/north/families/f1",
		Counselor: activities.Person{Kind: "counselor", ID: "counselor-1", Channel: "IN_APP", TimeZone: "America/Chicago"},
		Start:     h.start, Duration: time.Hour, Level: 1, State: "SCHEDULED",
		Participants: []activities.Person{{Kind: "member", ID: "mom", Family: "clinics/north/families/f1", Channel: "SMS",
			TimeZone: "America/New_York", QuietStart: "21:00", QuietEnd: "08:00"}},
	}
	env.OnActivity(flow.A.LoadPlan, mock.Anything, name).Return(func(context.Context, string) (activities.Plan, error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.plan, h.planErr
	})
	env.OnActivity(flow.A.SendReminder, mock.Anything, mock.Anything).Return(
		func(_ context.Context, r activities.ReminderRequest) (string, error) {
			flowtest.Sendable(t, r.Message)
			if h.onSend != nil {
				if err := h.onSend(r); err != nil {
					return "", err
				}
			}
			r.Due = env.Now() // when the workflow sent it
			return h.sent.add(r), nil
		})
	h.hold = func(activities.HoldRequest) (activities.HoldResult, error) {
		return activities.HoldResult{Hold: "clinics/north/holds/h1", Program: "clinics/north/programs/p1"}, nil
	}
	env.OnActivity(flow.A.HoldTreatment, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.HoldRequest) (activities.HoldResult, error) {
			h.holdAt = env.Now()
			return h.hold(in)
		})
	env.OnActivity(flow.A.ReleaseHold, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.ReleaseRequest) error {
			if info := activity.GetInfo(ctx); !info.IsLocalActivity {
				h.releaseBudgets = append(h.releaseBudgets, info.ScheduleToCloseTimeout)
			}
			h.released = append(h.released, in.Hold)
			h.calls = append(h.calls, "release")
			if h.onRelease != nil {
				return h.onRelease(len(h.released))
			}
			return h.releaseErr
		})
	env.OnActivity(flow.A.CancelReminders, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.CancelRemindersRequest) (int, error) {
			h.cancels = append(h.cancels, in.Reason)
			h.calls = append(h.calls, "cancel reminders")
			h.cancelled = append(h.cancelled, in)
			return 0, h.cancelErr
		})
	env.OnActivity(flow.A.WithdrawDrafts, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.WithdrawDraftsRequest) (int, error) {
			h.withdrawn = append(h.withdrawn, in)
			return 1, nil
		})
	env.OnRequestCancelExternalWorkflow(mock.Anything, mock.Anything, mock.Anything).Return(
		func(_ string, id, _ string) error {
			h.stopped = append(h.stopped, id)
			return nil
		})
	return h
}

func defaults() activities.Settings { return activities.DefaultSettings() }

func (h *harness) update(at time.Duration, name string, arg any, rejected *error) {
	h.env.RegisterDelayedCallback(func() {
		h.env.UpdateWorkflow(name, "", &testsuite.TestUpdateCallback{
			OnReject: func(err error) {
				if rejected != nil {
					*rejected = err
				}
			},
			OnAccept:   func() {},
			OnComplete: func(any, error) {},
		}, arg)
	}, at)
}

func mustLoc(t *testing.T, zone string) *time.Location {
	l, err := time.LoadLocation(zone)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// The meeting is Friday 2037-12-11 at 18:00 New York (23:00 UTC). The hold
// is taken 72 h before; reminders go out 72 h, 24 h and 2 h before, each
// placed in its recipient's zone and out of quiet hours.
func TestRemindersAndHoldAtTheRightInstants(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour+11*time.Hour, defaults())
	ny, chi := mustLoc(t, "America/New_York"), mustLoc(t, "America/Chicago")
	if want := time.Date(2037, 12, 11, 18, 0, 0, 0, ny); !h.start.Equal(want) {
		t.Fatalf("start = %v, want %v", h.start, want)
	}
	// Refused hours early; taken half a minute before the start by the
	// workflow's clock, which may run behind the service's that accepted it.
	var early, skewed error
	h.update(4*24*time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "DECLINED"}, &early)
	h.update(4*24*time.Hour+11*time.Hour-30*time.Second, intervention.UpdateOutcome, intervention.Outcome{Kind: "DECLINED"}, &skewed)
	h.env.OnWorkflow(boundary.Name, mock.Anything, mock.Anything).Return(boundary.Result{Summary: "ok"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if !h.env.IsWorkflowCompleted() || h.env.GetWorkflowError() != nil {
		t.Fatalf("workflow: completed %v, error %v", h.env.IsWorkflowCompleted(), h.env.GetWorkflowError())
	}
	if early == nil {
		t.Fatal("an outcome hours before the start must be rejected")
	}
	if skewed != nil {
		t.Fatalf("an outcome the service accepted, seconds before the start by the workflow's clock: %v", skewed)
	}
	if want := h.start.Add(-72 * time.Hour); !h.holdAt.Equal(want) {
		t.Fatalf("hold taken at %v, want %v", h.holdAt, want)
	}
	got := map[string][]time.Time{}
	for _, r := range h.sent.byKind("INTERVENTION_UPCOMING") {
		got[r.To.ID] = append(got[r.To.ID], r.Due)
	}
	want := map[string][]time.Time{
		// The counselor has no quiet hours: exactly 72, 24 and 2 h before.
		"counselor-1": {time.Date(2037, 12, 8, 17, 0, 0, 0, chi), time.Date(2037, 12, 10, 17, 0, 0, 0, chi), time.Date(2037, 12, 11, 15, 0, 0, 0, chi)},
		// Mom: 18:00 the days before and 16:00 on the day, all outside 21:00-08:00.
		"mom": {time.Date(2037, 12, 8, 18, 0, 0, 0, ny), time.Date(2037, 12, 10, 18, 0, 0, 0, ny), time.Date(2037, 12, 11, 16, 0, 0, 0, ny)},
	}
	for who, times := range want {
		if len(got[who]) != len(times) {
			t.Fatalf("%s got %v, want %v", who, got[who], times)
		}
		for i := range times {
			if !got[who][i].Equal(times[i]) {
				t.Fatalf("%s reminder %d at %v, want %v", who, i, got[who][i], times[i])
			}
		}
	}
	var res intervention.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "DECLINED" || res.Child != "boundary/clinics/north/families/f1" {
		t.Fatalf("result = %+v, %v", res, err)
	}
	if len(h.released) != 1 {
		t.Fatalf("a declined intervention must release its hold: %v", h.released)
	}
}

// A reminder that would fall in the recipient's quiet hours moves out of
// them: mom's 2 h reminder for a 09:00 meeting would be 07:00, inside
// 21:00-08:00, so it goes at 08:00.
func TestQuietHoursMoveReminders(t *testing.T) {
	h := newHarness(t, 3*24*time.Hour+2*time.Hour, defaults()) // Thursday 14:00 UTC = 09:00 New York
	ny := mustLoc(t, "America/New_York")
	h.update(3*24*time.Hour+3*time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	var last time.Time
	for _, r := range h.sent.byKind("INTERVENTION_UPCOMING") {
		if r.To.ID == "mom" {
			last = r.Due
		}
	}
	if want := time.Date(2037, 12, 10, 8, 0, 0, 0, ny); !last.Equal(want) {
		t.Fatalf("mom's last reminder at %v, want %v", last.In(ny), want)
	}
}

// A reschedule re-arms every timer and cancels what was sent for the old time.
func TestRescheduleRearms(t *testing.T) {
	h := newHarness(t, 5*24*time.Hour, defaults())
	newStart := h.start.Add(2 * 24 * time.Hour)
	var rejected error
	h.update(time.Hour, intervention.UpdateReschedule, intervention.Reschedule{Start: newStart, Duration: time.Hour}, &rejected)
	h.update(7*24*time.Hour+time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil || rejected != nil {
		t.Fatalf("workflow error %v, reschedule rejected %v", err, rejected)
	}
	if want := newStart.Add(-72 * time.Hour); !h.holdAt.Equal(want) {
		t.Fatalf("hold at %v, want %v (72 h before the new time)", h.holdAt, want)
	}
	for _, r := range h.sent.byKind("INTERVENTION_UPCOMING") {
		if r.To.ID != "counselor-1" {
			continue
		}
		off := newStart.Sub(r.Due)
		if off != 72*time.Hour && off != 24*time.Hour && off != 2*time.Hour {
			t.Fatalf("counselor reminder at %v is %v before the new start", r.Due, off)
		}
	}
	if len(h.cancels) == 0 || h.cancels[0] != "rescheduled" {
		t.Fatalf("reminders for the old time were not cancelled: %v", h.cancels)
	}
}

// A new length alone (the same start and zone) keeps the reminders: none
// is cancelled or sent twice. A hold that would lapse before the new end is
// released and taken again at once, until the new end.
func TestLongerMeetingKeepsItsReminders(t *testing.T) {
	settings := defaults()
	settings.HoldSlack = time.Hour // the hold lapses an hour after the meeting
	h := newHarness(t, 4*24*time.Hour, settings)
	var untils []time.Time
	h.hold = func(in activities.HoldRequest) (activities.HoldResult, error) {
		untils = append(untils, in.Until)
		return activities.HoldResult{Hold: fmt.Sprintf("clinics/north/holds/h%d", len(untils)), Program: "clinics/north/programs/p1"}, nil
	}
	lengthened(t, h)
	if slices.Contains(h.cancels, "rescheduled") {
		t.Fatalf("reminders cancelled for a new length: %v", h.cancels)
	}
	got := map[string][]time.Duration{}
	for _, r := range h.sent.byKind("INTERVENTION_UPCOMING") {
		got[r.To.ID] = append(got[r.To.ID], h.start.Sub(r.Due))
	}
	if c := got["counselor-1"]; len(c) != 3 || c[0] != 72*time.Hour || c[1] != 24*time.Hour || c[2] != 2*time.Hour {
		t.Fatalf("the counselor's reminders, before the start: %v; want 72 h, 24 h and 2 h, once each", c)
	}
	if len(got["mom"]) != 3 {
		t.Fatalf("mom's reminders, before the start: %v; want three", got["mom"])
	}
	// (The second is given back too, after the postponement.)
	if len(h.released) == 0 || h.released[0] != "clinics/north/holds/h1" || len(untils) != 2 ||
		!untils[1].Equal(h.start.Add(3*time.Hour)) {
		t.Fatalf("released %v, holds until %v; want the first released and a second held until the new end", h.released, untils)
	}
}

// lengthened runs h's meeting, lengthened to three hours at 36 h (after
// the 72 h reminders and the hold, before the 24 h reminders), to its
// postponement after the start.
func lengthened(t *testing.T, h *harness) {
	t.Helper()
	var rejected error
	h.update(36*time.Hour, intervention.UpdateReschedule,
		intervention.Reschedule{Start: h.start, Duration: 3 * time.Hour, TimeZone: "America/Chicago"}, &rejected)
	h.update(4*24*time.Hour+4*time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil || rejected != nil {
		t.Fatalf("workflow error %v, reschedule rejected %v", err, rejected)
	}
}

// A place adopted rather than made (a counselor's, held by hand) lapses
// when it lapses, not at the slack the workflow would have asked for: a
// longer meeting that outlasts it gives it back and holds again.
func TestLongerMeetingRetakesAnAdoptedHold(t *testing.T) {
	settings := defaults()
	settings.HoldSlack = 4 * time.Hour
	h := newHarness(t, 4*24*time.Hour, settings)
	var untils []time.Time
	h.hold = func(in activities.HoldRequest) (activities.HoldResult, error) {
		untils = append(untils, in.Until)
		// The first is the counselor's, held until an hour past the end
		// the meeting had then.
		return activities.HoldResult{Hold: fmt.Sprintf("clinics/north/holds/h%d", len(untils)), Program: "clinics/north/programs/p1",
			Expires: in.Until.Add(time.Hour)}, nil
	}
	lengthened(t, h)
	if len(h.released) == 0 || h.released[0] != "clinics/north/holds/h1" || len(untils) != 2 ||
		!untils[1].Equal(h.start.Add(3*time.Hour)) {
		t.Fatalf("released %v, holds until %v; want the adopted place, which lapses before the new end, "+
			"released and a second held until the new end", h.released, untils)
	}
}

// A new length that arrives after the meeting began (the outbox may be
// late) keeps the place held: no hold is taken once a meeting has begun,
// and the yes recorded then hands the place to the intake.
func TestLengthAfterTheStartKeepsTheHold(t *testing.T) {
	settings := defaults()
	settings.HoldSlack = time.Hour
	h := newHarness(t, 4*24*time.Hour, settings)
	intake := h.intakeRuns()
	var rejected error
	h.update(4*24*time.Hour+10*time.Minute, intervention.UpdateReschedule,
		intervention.Reschedule{Start: h.start, Duration: 3 * time.Hour, TimeZone: "America/Chicago"}, &rejected)
	h.update(4*24*time.Hour+2*time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "ACCEPTED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil || rejected != nil {
		t.Fatalf("workflow error %v, reschedule rejected %v", err, rejected)
	}
	if len(h.released) != 0 || intake.Hold != "clinics/north/holds/h1" {
		t.Fatalf("released %v, intake given hold %q; want the held place kept for the yes", h.released, intake.Hold)
	}
}

// Participants and the counselor change after the first reminders: later
// reminders go to whoever takes part now, none is sent twice, and the time
// stays the workflow's even if the plan read says otherwise.
func TestReplanFollowsNewParticipants(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour, defaults())
	changeAt := 36 * time.Hour // after the 72 h reminders, before the 24 h ones
	h.oldPlan = h.plan
	h.env.RegisterDelayedCallback(func() {
		h.mu.Lock()
		h.plan.Counselor.ID = "counselor-2"
		h.plan.Participants = []activities.Person{{Kind: "member", ID: "dad", Family: "clinics/north/families/f1", Channel: "EMAIL",
			TimeZone: "America/New_York"}}
		h.plan.Start = h.start.Add(24 * time.Hour) // a reschedule not yet delivered
		h.mu.Unlock()
	}, changeAt-time.Minute)
	var rejected error
	h.update(changeAt, intervention.UpdateReplan, intervention.Replan{}, &rejected)
	h.update(4*24*time.Hour+2*time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil || rejected != nil {
		t.Fatalf("workflow error %v, replan rejected %v", err, rejected)
	}
	t0 := h.start.Add(-4 * 24 * time.Hour)
	got := map[string][]time.Duration{} // recipient -> hours before the meeting
	for _, r := range h.sent.byKind("INTERVENTION_UPCOMING") {
		if r.Due.Sub(t0) < changeAt && r.To.ID != "mom" && r.To.ID != "counselor-1" {
			t.Fatalf("%s reminded before the change", r.To.ID)
		}
		got[r.To.ID] = append(got[r.To.ID], h.start.Sub(r.Due).Round(time.Hour))
	}
	if len(got["mom"]) != 1 || len(got["counselor-1"]) != 1 {
		t.Fatalf("before the change: mom %v, counselor-1 %v; want the 72 h reminder each, once", got["mom"], got["counselor-1"])
	}
	if len(got["dad"]) != 2 || len(got["counselor-2"]) != 2 {
		t.Fatalf("after the change: dad %v, counselor-2 %v; want the 24 h and 2 h reminders of the same meeting", got["dad"], got["counselor-2"])
	}
	for _, d := range append(got["dad"], got["counselor-2"]...) {
		if d < time.Hour || d > 25*time.Hour {
			t.Fatalf("a reminder %v before the meeting: the replan moved the time", d)
		}
	}
	// What was already made for mom and counselor-1 is cancelled, theirs
	// only, and only meeting reminders (an overdue outcome stays).
	if len(h.cancelled) == 0 || h.cancelled[0].Reason != "no longer taking part" || h.cancelled[0].Kind != "INTERVENTION_UPCOMING" ||
		fmt.Sprint(h.cancelled[0].Only) != fmt.Sprint([]activities.Person{h.oldPlan.Counselor, h.oldPlan.Participants[0]}) {
		t.Fatalf("cancelled %+v; want the removed people's reminders", h.cancelled)
	}
}

// A replan that arrives as a reminder falls due does not swallow it: the
// 24 h reminder goes to a counselor once, whichever comes first.
func TestReplanAtADueReminderKeepsIt(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour, defaults())
	h.env.RegisterDelayedCallback(func() {
		h.mu.Lock()
		h.plan.Counselor.ID = "counselor-2"
		h.mu.Unlock()
	}, 3*24*time.Hour-time.Minute)
	h.update(3*24*time.Hour, intervention.UpdateReplan, intervention.Replan{}, nil)
	h.update(4*24*time.Hour+2*time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range h.sent.byKind("INTERVENTION_UPCOMING") {
		if r.To.Kind == "counselor" && h.start.Sub(r.Due) == 24*time.Hour {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("24 h reminders to a counselor: %d, want 1", n)
	}
}

// A counselor handed the family over just before a reminder fell due: the
// service refuses it to the old counselor (NOT_A_PARTICIPANT) before the
// workflow hears of the change. The new counselor gets the reminder due
// then, and the later one; the old one gets none, and nobody gets one
// twice.
func TestRefusedReminderGoesToTheNewCounselor(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour, defaults())
	h.onSend = func(r activities.ReminderRequest) error {
		h.mu.Lock()
		defer h.mu.Unlock()
		if r.Kind == "INTERVENTION_UPCOMING" && r.To.Kind == "counselor" && r.To.ID != h.plan.Counselor.ID {
			return temporal.NewNonRetryableApplicationError("create reminder: not a participant", flow.NotAParticipant, nil)
		}
		return nil
	}
	h.env.RegisterDelayedCallback(func() {
		h.mu.Lock()
		h.plan.Counselor.ID = "counselor-2"
		h.mu.Unlock()
	}, 3*24*time.Hour-time.Minute)
	// The change reaches the workflow a minute after the reminder fell due.
	h.update(3*24*time.Hour+time.Minute, intervention.UpdateReplan, intervention.Replan{}, nil)
	h.update(4*24*time.Hour+2*time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	got := map[string][]time.Duration{} // counselor -> hours before the meeting
	for _, r := range h.sent.byKind("INTERVENTION_UPCOMING") {
		if r.To.Kind == "counselor" {
			got[r.To.ID] = append(got[r.To.ID], h.start.Sub(r.Due).Round(time.Minute))
		}
	}
	if fmt.Sprint(got["counselor-1"]) != "[72h0m0s]" || fmt.Sprint(got["counselor-2"]) != "[24h0m0s 2h0m0s]" {
		t.Fatalf("meeting reminders to counselors: %v; want counselor-1 the 72 h one, counselor-2 the 24 h one when due and the 2 h one", got)
	}
}

// A refusal the plan read again does not explain (it still names the
// counselor) is tried once more, then skipped as before: no loop of
// reads and refusals.
func TestRefusalThePlanDoesNotExplainIsSkipped(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour, defaults())
	refusals := 0
	h.onSend = func(r activities.ReminderRequest) error {
		if r.Kind == "INTERVENTION_UPCOMING" && r.To.Kind == "counselor" && h.start.Sub(h.env.Now()) == 24*time.Hour {
			refusals++
			return temporal.NewNonRetryableApplicationError("create reminder: not a participant", flow.NotAParticipant, nil)
		}
		return nil
	}
	h.update(4*24*time.Hour+2*time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	var got []time.Duration
	for _, r := range h.sent.byKind("INTERVENTION_UPCOMING") {
		if r.To.Kind == "counselor" {
			got = append(got, h.start.Sub(r.Due))
		}
	}
	if refusals != 2 || fmt.Sprint(got) != "[72h0m0s 2h0m0s]" {
		t.Fatalf("the 24 h reminder refused %d times, counselor reminded %v before; want 2 refusals and the 72 h and 2 h reminders", refusals, got)
	}
}

// A meeting booked at 07:00 for 09:00 New York time, while mom is quiet
// until 08:00, reminds her once, at 08:00: the late reminder would wait
// for the end of her quiet hours and go out with the two hours' one.
func TestShortNoticeInQuietHoursRemindsOnce(t *testing.T) {
	h := newHarness(t, 2*time.Hour, defaults())
	// Due when made, or, if not given, at once.
	var mom []time.Time
	h.onSend = func(r activities.ReminderRequest) error {
		if r.Kind == "INTERVENTION_UPCOMING" && r.To.ID == "mom" {
			mom = append(mom, cmp.Or(r.Due, h.env.Now()))
		}
		return nil
	}
	h.update(3*time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	eight := time.Date(2037, 12, 7, 8, 0, 0, 0, mustLoc(t, "America/New_York"))
	if len(mom) != 1 || !mom[0].Equal(eight) {
		t.Fatalf("mom's meeting reminders due at %v; want one, at 08:00 New York (%v)", mom, eight.UTC())
	}
}

// A participant added once the meeting has begun (the service allows the
// edit until the outcome) gets no reminder of a meeting under way, though
// their 2 h reminder, moved to the end of their quiet hours (06:30 New
// York for a 07:00 meeting), falls after the last one sent.
func TestReplanAfterTheStartRemindsNobody(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour, defaults())
	h.env.RegisterDelayedCallback(func() {
		h.mu.Lock()
		h.plan.Participants = append(h.plan.Participants, activities.Person{Kind: "member", ID: "dad",
			Family: "clinics/north/families/f1", Channel: "EMAIL", TimeZone: "America/New_York", QuietStart: "04:00", QuietEnd: "06:30"})
		h.mu.Unlock()
	}, 4*24*time.Hour+5*time.Minute)
	var rejected error
	h.update(4*24*time.Hour+10*time.Minute, intervention.UpdateReplan, intervention.Replan{}, &rejected)
	h.update(4*24*time.Hour+2*time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil || rejected != nil {
		t.Fatalf("workflow error %v, replan rejected %v", err, rejected)
	}
	for _, r := range h.sent.byKind("INTERVENTION_UPCOMING") {
		if r.To.ID == "dad" {
			t.Fatalf("dad reminded at %v of a meeting that began at %v", r.Due, h.start)
		}
	}
}

// Cancel releases the hold and cancels pending reminders.
func TestCancelCleansUp(t *testing.T) {
	cancelCleansUp(t, nil)
}

// cancelCleansUp cancels a meeting, ReleaseHold failing with releaseErr,
// and checks that it ended CANCELLED, the release tried and the reminders
// cancelled.
func cancelCleansUp(t *testing.T, releaseErr error) {
	t.Helper()
	h := newHarness(t, 2*24*time.Hour, defaults())
	h.releaseErr = releaseErr
	h.update(24*time.Hour, intervention.UpdateCancel, intervention.Cancel{Reason: "family moved"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	var res intervention.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "CANCELLED" {
		t.Fatalf("result %+v, %v", res, err)
	}
	if len(h.released) != 1 || len(h.cancels) == 0 || h.cancels[len(h.cancels)-1] != "intervention cancelled" {
		t.Fatalf("released %v, cancelled reminders %v", h.released, h.cancels)
	}
	// The reminders first: a release may retry for a day while the
	// referrals service is down, and they would go out meanwhile.
	if n := len(h.calls); n < 2 || h.calls[n-2] != "cancel reminders" || h.calls[n-1] != "release" {
		t.Fatalf("calls %v; want the reminders cancelled, then the hold released", h.calls)
	}
}

// A meeting called off after its first reminder went out tells those it
// reminded that it is off (not the counselor), out of their quiet hours,
// and sends the notice again if its delivery fails. One called off before
// any reminder went out tells no one.
func TestCalledOffMeetingIsToldToThoseReminded(t *testing.T) {
	for _, c := range []struct {
		name     string
		cancelAt time.Duration
		told     int
	}{
		{"after the first reminder", 2 * 24 * time.Hour, 1},
		{"before any reminder", 12 * time.Hour, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			// The meeting is four days on at noon UTC: the first reminder
			// (three days ahead) went out on the first day.
			h := newHarness(t, 4*24*time.Hour, defaults())
			resent := h.resends()
			h.update(c.cancelAt, intervention.UpdateCancel, intervention.Cancel{Reason: "family moved"}, nil)
			h.env.RegisterDelayedCallback(func() {
				if n := h.sent.nameOf("INTERVENTION_CANCELLED"); n != "" {
					h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: n})
				}
			}, c.cancelAt+time.Minute)
			h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
			var res intervention.Result
			if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "CANCELLED" {
				t.Fatalf("result %+v, %v", res, err)
			}
			told := h.sent.byKind("INTERVENTION_CANCELLED")
			if len(told) != c.told {
				t.Fatalf("called-off notices %+v; want %d", told, c.told)
			}
			if c.told == 0 {
				if len(*resent) != 0 {
					t.Fatalf("resent %v; want nothing", *resent)
				}
				return
			}
			if n := told[0]; n.To.ID != "mom" || n.Related != name || !strings.Contains(n.Message, "called off") || !n.AwakeBy.Equal(h.start) {
				t.Fatalf("notice %+v; want mom told the meeting is called off, out of her quiet hours", n)
			}
			if len(*resent) != 1 || (*resent)[0] != h.sent.nameOf("INTERVENTION_CANCELLED") {
				t.Fatalf("resent %v; want the failed notice sent again", *resent)
			}
		})
	}
}

// A called-off notice can fail until its recipient's quiet hours begin,
// hours after it is due: the workflow is still open then, and sends it
// again. Mom's quiet hours are 21:00 to 08:00 in New York; called off at
// 07:00 there, the notice is due at 08:00 and fails at 21:00.
func TestCalledOffNoticeFailingAtQuietHoursIsResent(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour, defaults())
	resent := h.resends()
	cancelAt := 2 * 24 * time.Hour
	h.update(cancelAt, intervention.UpdateCancel, intervention.Cancel{Reason: "family moved"}, nil)
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: h.sent.nameOf("INTERVENTION_CANCELLED")})
	}, cancelAt+14*time.Hour+30*time.Minute) // 21:30 in New York
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	var res intervention.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "CANCELLED" {
		t.Fatalf("result %+v, %v", res, err)
	}
	if len(*resent) != 1 || (*resent)[0] != h.sent.nameOf("INTERVENTION_CANCELLED") {
		t.Fatalf("resent %v; want the notice that failed as quiet hours began sent again", *resent)
	}
}

// A cancel through Temporal (an operator's) while the workflow listens for
// its called-off notices' failures ends the listen: the resends it would
// wait for are cut short with the run.
func TestTemporalCancelEndsTheCalledOffListen(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour, defaults())
	h.update(2*24*time.Hour, intervention.UpdateCancel, intervention.Cancel{Reason: "family moved"}, nil)
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 2*24*time.Hour+5*time.Minute)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if len(h.sent.byKind("INTERVENTION_CANCELLED")) != 1 {
		t.Fatalf("called-off notices %+v; want mom's", h.sent.byKind("INTERVENTION_CANCELLED"))
	}
	if took := h.env.Now().Sub(h.start.Add(-4 * 24 * time.Hour)); took > 2*24*time.Hour+10*time.Minute {
		t.Fatalf("the run ended %v in; want at the operator's cancel, 2 days and 5 minutes in", took)
	}
}

// slowFirstReminder is a meeting half an hour away, with mom and dad
// taking part, whose reminders are all due at once: the first one's
// creation fails and is tried again a second later, so that an update
// can arrive while they are being made.
func slowFirstReminder(t *testing.T) *harness {
	t.Helper()
	h := newHarness(t, 30*time.Minute, defaults())
	h.plan.Participants = append(h.plan.Participants, activities.Person{Kind: "member", ID: "dad",
		Family: "clinics/north/families/f1", Channel: "SMS", TimeZone: "America/New_York"})
	tries := 0
	h.onSend = func(r activities.ReminderRequest) error {
		if r.Kind != "INTERVENTION_UPCOMING" {
			return nil
		}
		if tries++; tries == 1 {
			return errors.New("interventions service unavailable")
		}
		return nil
	}
	return h
}

// A cancel that arrives while the meeting's reminders are being made (a
// service slow to answer) stops the making: no reminder for the others,
// no hold taken; the reminders are cancelled before the hold is released.
func TestCancelStopsRemindersBeingMade(t *testing.T) {
	h := slowFirstReminder(t)
	// The first reminder's creation fails and is tried again a second
	// later; the cancel arrives meanwhile.
	h.update(500*time.Millisecond, intervention.UpdateCancel, intervention.Cancel{Reason: "family moved"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	var res intervention.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "CANCELLED" {
		t.Fatalf("result %+v, %v", res, err)
	}
	if made := h.sent.byKind("INTERVENTION_UPCOMING"); len(made) != 1 {
		t.Fatalf("meeting reminders made: %+v; want only the one whose creation was under way", made)
	}
	if !h.holdAt.IsZero() {
		t.Fatalf("a hold was taken at %v for a cancelled meeting", h.holdAt)
	}
	if fmt.Sprint(h.calls) != "[cancel reminders]" {
		t.Fatalf("calls %v; want the reminders cancelled, and no hold to release", h.calls)
	}
}

// A change of participants that arrives while the meeting's reminders are
// being made does not stop the making: every reminder due then is made,
// none counted as made and left out.
func TestReplanDuringRemindersLeavesNoneOut(t *testing.T) {
	h := slowFirstReminder(t)
	// The first reminder's creation fails and is tried again a second
	// later; a change of the meeting's details arrives meanwhile.
	h.update(500*time.Millisecond, intervention.UpdateReplan, intervention.Replan{}, nil)
	h.update(2*time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	whom := map[string]bool{}
	for _, r := range h.sent.byKind("INTERVENTION_UPCOMING") {
		whom[r.To.ID] = true
	}
	if len(whom) != 3 {
		t.Fatalf("meeting reminders made for %v; want the counselor, mom and dad", whom)
	}
}

// Cancelled through Temporal rather than by the cancel update (an
// operator, say): the hold is released and the reminders cancelled all the
// same, though the workflow ends cancelled; the reminders first, as the
// cancel update does, since a release may retry for a day while they go
// out.
func TestTemporalCancelCleansUp(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour, defaults())
	h.env.RegisterDelayedCallback(func() { h.env.CancelWorkflow() }, 2*24*time.Hour)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); !temporal.IsCanceledError(err) {
		t.Fatalf("workflow error %v, want cancelled", err)
	}
	if len(h.released) != 1 || h.released[0] != "clinics/north/holds/h1" ||
		len(h.cancels) != 1 || h.cancels[0] != "intervention workflow cancelled" {
		t.Fatalf("released %v, cancelled reminders %v", h.released, h.cancels)
	}
	if fmt.Sprint(h.calls) != "[cancel reminders release]" {
		t.Fatalf("calls %v; want the reminders cancelled, then the hold released", h.calls)
	}
}

// No outcome: the counselor is reminded after the grace period, the
// supervisors a day later; then a duplicate outcome is refused.
func TestLateOutcomeEscalatesAndDuplicateIsRejected(t *testing.T) {
	h := newHarness(t, time.Hour, defaults())
	var dup error
	at := time.Hour + time.Hour + 2*time.Hour + 24*time.Hour + time.Hour // after both alerts
	h.update(at, intervention.UpdateOutcome, intervention.Outcome{Kind: "ACCEPTED"}, nil)
	h.update(at+time.Minute, intervention.UpdateOutcome, intervention.Outcome{Kind: "DECLINED"}, &dup)
	h.env.OnWorkflow(matintake.Name, mock.Anything, mock.Anything).After(2*time.Minute).Return(matintake.Result{Outcome: "ENTERED_TREATMENT"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	end := h.start.Add(time.Hour)
	overdue, esc := h.sent.byKind("OUTCOME_OVERDUE"), h.sent.byKind("OUTCOME_ESCALATION")
	if len(overdue) != 1 || !overdue[0].Due.Equal(end.Add(2*time.Hour)) || overdue[0].To.ID != "counselor-1" {
		t.Fatalf("overdue = %+v", overdue)
	}
	if len(esc) != 1 || !esc[0].Due.Equal(end.Add(26*time.Hour)) || esc[0].To.Kind != "supervisor" {
		t.Fatalf("escalation = %+v", esc)
	}
	// Each names the meeting's time, so that the service refuses it if
	// the meeting moved before the workflow heard.
	if !overdue[0].Meeting.Equal(h.start) || !esc[0].Meeting.Equal(h.start) {
		t.Fatalf("overdue for the meeting at %v, escalation at %v; want both at %v", overdue[0].Meeting, esc[0].Meeting, h.start)
	}
	if dup == nil {
		t.Fatal("a second outcome must be rejected")
	}
	var res intervention.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.ChildResult != "ENTERED_TREATMENT" || res.Child != "mat-intake/"+name {
		t.Fatalf("result = %+v, %v", res, err)
	}
	// The meeting's reminders are cancelled after the intake started, and
	// only those this workflow made: the intake's own notices to the
	// counselor name the same intervention.
	var outcome []activities.CancelRemindersRequest
	for _, c := range h.cancelled {
		if c.Reason == "outcome recorded" {
			outcome = append(outcome, c)
		}
	}
	if len(outcome) != 1 || outcome[0].Origin == "" || outcome[0].Origin == res.Child {
		t.Fatalf("cancelled after the yes: %+v; want one cancel limited to this workflow's reminders", outcome)
	}
}

// No program has a free slot: the counselor hears once, and the workflow
// tries again every HoldRetry until one is free.
func TestNoCapacityRetriesAndTellsCounselorOnce(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour, defaults())
	var tries []time.Time
	h.hold = func(activities.HoldRequest) (activities.HoldResult, error) {
		tries = append(tries, h.env.Now())
		if len(tries) < 3 {
			return activities.HoldResult{}, temporal.NewNonRetryableApplicationError("full", "NO_CAPACITY", errors.New("full"))
		}
		return activities.HoldResult{Hold: "clinics/north/holds/h9"}, nil
	}
	h.update(4*24*time.Hour+2*time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if len(tries) != 3 || tries[1].Sub(tries[0]) != 6*time.Hour || tries[2].Sub(tries[1]) != 6*time.Hour {
		t.Fatalf("tries = %v", tries)
	}
	told := h.sent.byKind("TREATMENT_HOLD_UNAVAILABLE")
	if len(told) != 1 {
		t.Fatalf("counselor told %d times, want once", len(told))
	}
	// Sent once a run and naming no time: not refused for a meeting moved
	// meanwhile, which would lose it for good.
	if !told[0].Meeting.IsZero() {
		t.Fatalf("the notice is tied to the meeting at %v; want it to stand whatever the meeting's time", told[0].Meeting)
	}
}

// A move cancels the meeting's reminders, the notice that no place is held
// among them if it had yet to go out: the next try that finds no place
// tells the counselor again, under a request id of its own.
func TestNoCapacityIsToldAgainAfterAMove(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour, defaults())
	resent := h.resends()
	h.hold = func(activities.HoldRequest) (activities.HoldResult, error) {
		return activities.HoldResult{}, temporal.NewNonRetryableApplicationError("full", "NO_CAPACITY", errors.New("full"))
	}
	h.update(24*time.Hour+time.Hour, intervention.UpdateReschedule, intervention.Reschedule{Start: h.start.Add(24 * time.Hour), Duration: time.Hour}, nil)
	// The first notice's failure comes after the move: not sent again, as
	// the next try says it anew.
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: h.sent.nameOf("TREATMENT_HOLD_UNAVAILABLE")})
	}, 24*time.Hour+2*time.Hour)
	h.update(5*24*time.Hour+2*time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	told := h.sent.byKind("TREATMENT_HOLD_UNAVAILABLE")
	if len(told) != 2 || told[0].RequestID == told[1].RequestID {
		t.Fatalf("counselor told %+v; want twice, once before the move and once after, each under its own id", told)
	}
	if len(*resent) != 0 {
		t.Fatalf("resent %v; want the notice from before the move left, the new one saying it", *resent)
	}
}

// A referrals service that keeps failing delays neither the reminders due
// with the hold nor the next ones: a try gives up within its budget and
// is made again within the half hour, not after a day of retries.
func TestFailingHoldDelaysNoReminder(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour, defaults())
	first := map[string]time.Time{} // each try's request id, first seen
	var order []string
	h.hold = func(in activities.HoldRequest) (activities.HoldResult, error) {
		if _, ok := first[in.RequestID]; !ok {
			first[in.RequestID] = h.env.Now()
			order = append(order, in.RequestID)
		}
		if len(order) < 3 {
			return activities.HoldResult{}, errors.New("referrals: unavailable")
		}
		return activities.HoldResult{Hold: "clinics/north/holds/h9"}, nil
	}
	h.update(4*24*time.Hour+2*time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	// The counselor has no quiet hours: each reminder at its exact time.
	var got []time.Time
	for _, r := range h.sent.byKind("INTERVENTION_UPCOMING") {
		if r.To.ID == "counselor-1" {
			got = append(got, r.Due)
		}
	}
	want := []time.Time{h.start.Add(-72 * time.Hour), h.start.Add(-24 * time.Hour), h.start.Add(-2 * time.Hour)}
	if len(got) != len(want) {
		t.Fatalf("counselor reminders at %v, want %v", got, want)
	}
	for i := range want {
		if !got[i].Equal(want[i]) {
			t.Fatalf("counselor reminder %d at %v, want %v", i, got[i], want[i])
		}
	}
	if len(order) != 3 {
		t.Fatalf("%d tries, want 3", len(order))
	}
	if !first[order[0]].Equal(want[0]) {
		t.Fatalf("first try at %v, want %v", first[order[0]], want[0])
	}
	for i := 1; i < 3; i++ {
		if gap := first[order[i]].Sub(first[order[i-1]]); gap < 15*time.Minute || gap > 30*time.Minute {
			t.Fatalf("try %d came %v after the one before, want 15-30 minutes", i, gap)
		}
	}
	if len(h.released) != 1 || h.released[0] != "clinics/north/holds/h9" {
		t.Fatalf("released = %v, want the hold taken on the third try", h.released)
	}
	// An outage says nothing of the programs' room: the counselor's one
	// notice is kept for when no program has a place.
	if n := len(h.sent.byKind("TREATMENT_HOLD_UNAVAILABLE")); n != 0 {
		t.Fatalf("counselor told %d times that no program could hold a place, during an outage", n)
	}
}

// A failed reminder is sent again after the retry delay, up to the retry
// limit counted along the line of resends.
func TestFailedRemindersAreRetried(t *testing.T) {
	h := newHarness(t, 3*24*time.Hour, defaults())
	var resent []time.Time
	h.env.OnActivity(flow.A.Resend, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.ResendRequest) (activities.Resent, error) {
			resent = append(resent, h.env.Now())
			return activities.Resent{Reminder: fmt.Sprintf("clinics/north/reminders/again-%d", len(resent)), FailsBy: in.Due}, nil
		})
	fail := func(at time.Duration, name string) {
		h.env.RegisterDelayedCallback(func() {
			h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: name})
		}, at)
	}
	fail(time.Hour, "clinics/north/reminders/first")
	for i := 1; i <= 3; i++ { // each resend fails again
		fail(time.Hour+time.Duration(i)*30*time.Minute, fmt.Sprintf("clinics/north/reminders/again-%d", i))
	}
	h.update(3*24*time.Hour+time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if len(resent) != 3 {
		t.Fatalf("resent %d times, want 3 (the retry limit)", len(resent))
	}
	if want := time.Date(2037, 12, 7, 13, 15, 0, 0, time.UTC); !resent[0].Equal(want) {
		t.Fatalf("first resend at %v, want %v: 15 min after the failure", resent[0], want)
	}
}

// A meeting reminder whose delivery failed is not sent again once a
// reschedule has replaced the time it names; other failures still are.
func TestStaleMeetingRemindersAreNotResent(t *testing.T) {
	h := newHarness(t, 3*24*time.Hour, defaults())
	resent := h.resends()
	var upcoming string
	h.env.RegisterDelayedCallback(func() {
		// The 72 h reminders went out when the workflow began.
		upcoming = h.sent.nameOf("INTERVENTION_UPCOMING")
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: upcoming})
	}, time.Hour)
	h.update(time.Hour+5*time.Minute, intervention.UpdateReschedule,
		intervention.Reschedule{Start: h.start.Add(2 * 24 * time.Hour), Duration: time.Hour}, nil)
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: "clinics/north/reminders/other"})
	}, 2*time.Hour)
	h.update(5*24*time.Hour+time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if upcoming == "" {
		t.Fatal("no meeting reminder was sent in the first hour")
	}
	if len(*resent) != 1 || (*resent)[0] != "clinics/north/reminders/other" {
		t.Fatalf("resent %v; want only the reminder unrelated to the old time", *resent)
	}
}

// The outcome-overdue notice whose delivery failed is not sent again once
// a reschedule has moved the meeting into the future: it would chase an
// outcome that is not yet due. Other failures still are.
func TestStaleOverdueNoticeIsNotResent(t *testing.T) {
	h := newHarness(t, time.Hour, defaults())
	resent := h.resends()
	var overdue string
	overdueAt := time.Hour + time.Hour + 2*time.Hour // the end, then the grace
	h.env.RegisterDelayedCallback(func() {
		overdue = h.sent.nameOf("OUTCOME_OVERDUE")
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: overdue})
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: "clinics/north/reminders/other"})
	}, overdueAt+5*time.Minute)
	h.update(overdueAt+10*time.Minute, intervention.UpdateReschedule,
		intervention.Reschedule{Start: h.start.Add(2 * 24 * time.Hour), Duration: time.Hour}, nil)
	// Moved, the meeting is one to prepare again, not one whose outcome
	// is awaited.
	var steps []string
	for _, at := range []time.Duration{overdueAt + 5*time.Minute, overdueAt + 20*time.Minute} {
		h.env.RegisterDelayedCallback(func() {
			v, err := h.env.QueryWorkflow(intervention.QueryStatus)
			var st intervention.Status
			if err == nil {
				err = v.Get(&st)
			}
			steps = append(steps, fmt.Sprint(st.Step, err))
		}, at)
	}
	h.update(2*24*time.Hour+2*time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if overdue == "" {
		t.Fatal("no outcome-overdue notice was sent")
	}
	if len(*resent) != 1 || (*resent)[0] != "clinics/north/reminders/other" {
		t.Fatalf("resent %v; want only the reminder unrelated to the moved meeting", *resent)
	}
	if fmt.Sprint(steps) != "[awaiting_outcome<nil> preparing<nil>]" {
		t.Fatalf("status steps before and after the move %v; want awaiting_outcome, then preparing", steps)
	}
}

// A notice made after the outcome (referrals that could not be made) is
// sent again if its delivery fails, ten minutes on: while the follow-up
// runs, and also when the follow-up ends soon after (the family's boundary
// workflow was already running, or the intake ended quickly), as the
// workflow listens before it ends.
func TestNoticeAfterTheOutcomeIsResent(t *testing.T) {
	for _, c := range []struct {
		name     string
		outcome  intervention.Outcome
		boundary time.Duration // how long the boundary follow-up runs
	}{
		{"a refusal, the follow-up running", intervention.Outcome{Kind: "DECLINED", AcceptedServices: []string{"HARM_REDUCTION_NALOXONE"}}, 3 * time.Hour},
		{"a refusal, the follow-up ending at once", intervention.Outcome{Kind: "DECLINED", AcceptedServices: []string{"HARM_REDUCTION_NALOXONE"}}, 0},
		{"a yes, the intake ending at once", intervention.Outcome{Kind: "ACCEPTED", AcceptedServices: []string{"MAT_BUPRENORPHINE", "HARM_REDUCTION_NALOXONE"}}, 0},
	} {
		h := newHarness(t, 4*24*time.Hour, defaults())
		resent := h.resends()
		refused := temporal.NewNonRetryableApplicationError("no", "NotFound", errors.New("program not found"))
		h.env.OnActivity(flow.A.CreateSupportReferrals, mock.Anything, mock.Anything).Return(nil, refused)
		h.env.OnWorkflow(boundary.Name, mock.Anything, mock.Anything).Return(
			func(ctx workflow.Context, _ boundary.Input) (boundary.Result, error) {
				return boundary.Result{Summary: "ok"}, workflow.Sleep(ctx, c.boundary)
			})
		h.env.OnWorkflow(matintake.Name, mock.Anything, mock.Anything).Return(matintake.Result{Outcome: "ENTERED_TREATMENT"}, nil)
		outcomeAt := 4*24*time.Hour + time.Hour
		h.update(outcomeAt, intervention.UpdateOutcome, c.outcome, nil)
		var notice string
		h.env.RegisterDelayedCallback(func() {
			notice = h.sent.nameOf("REFERRAL_ESCALATION")
			h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: notice})
		}, outcomeAt+10*time.Minute)
		h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
		if err := h.env.GetWorkflowError(); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if notice == "" || len(*resent) != 1 || (*resent)[0] != notice {
			t.Fatalf("%s: notice %q, resent %v; want the failed notice sent again", c.name, notice, *resent)
		}
	}
}

// A meeting reminder that failed just before the meeting is not sent again
// once the meeting has begun: it would remind of nothing. Other failures
// still are.
func TestMeetingReminderIsNotResentOnceTheMeetingBegins(t *testing.T) {
	h := newHarness(t, 3*24*time.Hour, defaults())
	resent := h.resends()
	var upcoming string
	// Its failure comes five minutes before the start; the resend would be
	// due ten minutes after it.
	h.env.RegisterDelayedCallback(func() {
		upcoming = h.sent.nameOf("INTERVENTION_UPCOMING")
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: upcoming})
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: "clinics/north/reminders/other"})
	}, 3*24*time.Hour-5*time.Minute)
	h.update(3*24*time.Hour+time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if upcoming == "" {
		t.Fatal("no meeting reminder was sent")
	}
	if len(*resent) != 1 || (*resent)[0] != "clinics/north/reminders/other" {
		t.Fatalf("resent %v; want only the reminder unrelated to the meeting's time", *resent)
	}
}

// Partially accepted without MAT: the accepted service is referred at once,
// the hold goes back, and the boundary path runs.
func TestPartiallyAcceptedRoutesToAcceptedServiceAndBoundaries(t *testing.T) {
	h, support, boundaryIn := partialRefusal(t, nil)
	if len(support) != 1 || support[0].Kinds[0] != "HARM_REDUCTION_NALOXONE" || support[0].Member != "" || support[0].Urgency != "URGENT" {
		t.Fatalf("referrals = %+v", support)
	}
	if len(h.released) != 1 || boundaryIn.Outcome != "PARTIALLY_ACCEPTED" || boundaryIn.Family != "clinics/north/families/f1" {
		t.Fatalf("released %v, boundary input %+v", h.released, boundaryIn)
	}
	// The boundary workflow hears what was referred, and does not refer
	// it again.
	if fmt.Sprint(boundaryIn.Accepted) != "[HARM_REDUCTION_NALOXONE]" {
		t.Fatalf("boundary input accepted %v; want the naloxone referred", boundaryIn.Accepted)
	}
}

// partialRefusal runs a meeting whose outcome accepts harm reduction only,
// ReleaseHold failing with releaseErr, and returns the support referrals
// made and the boundary workflow's input.
func partialRefusal(t *testing.T, releaseErr error) (*harness, []activities.SupportRequest, boundary.Input) {
	t.Helper()
	h := newHarness(t, 4*24*time.Hour, defaults())
	h.releaseErr = releaseErr
	var support []activities.SupportRequest
	h.env.OnActivity(flow.A.CreateSupportReferrals, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.SupportRequest) ([]string, error) {
			support = append(support, in)
			return nil, nil
		})
	boundaryIn := h.boundaryStarts()
	h.update(4*24*time.Hour+time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "PARTIALLY_ACCEPTED",
		AcceptedServices: []string{"HARM_REDUCTION_NALOXONE"}}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	return h, support, *boundaryIn
}

// A partial yes to outpatient care, without medication, is a yes too: it
// goes to the intake with the care accepted (and the place held), not down
// the boundary path of a refusal; the other services accepted are
// referred beside it.
func TestPartialYesToCareGoesToIntake(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour, defaults())
	support, intake := h.supportReferrals(), h.intakeRuns()
	boundaryIn := h.boundaryStarts()
	h.update(4*24*time.Hour+time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "PARTIALLY_ACCEPTED",
		AcceptedServices: []string{"FAMILY_COUNSELING", "OUTPATIENT"}}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(intake.Medications) != "[OUTPATIENT]" || intake.Hold != "clinics/north/holds/h1" || len(h.released) != 0 {
		t.Fatalf("intake input %+v, released %v; want the outpatient care, with the place held", intake, h.released)
	}
	if boundaryIn.Family != "" {
		t.Fatalf("the boundary path started after a yes: %+v", boundaryIn)
	}
	if len(*support) != 1 || fmt.Sprint((*support)[0].Kinds) != "[FAMILY_COUNSELING]" {
		t.Fatalf("support referrals %+v; want family counseling alone", *support)
	}
	var res intervention.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "PARTIALLY_ACCEPTED" || res.Child != ids.MATIntake(name) ||
		res.ChildResult != "ENTERED_TREATMENT" {
		t.Fatalf("result %+v, %v", res, err)
	}
}

// Partially accepted with MAT among the services goes to MAT intake, and the
// other services accepted are referred too.
func TestPartiallyAcceptedWithMATGoesToIntake(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour, defaults())
	support, intake := h.supportReferrals(), h.intakeRuns()
	h.update(4*24*time.Hour+time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "PARTIALLY_ACCEPTED",
		AcceptedServices: []string{"MAT_BUPRENORPHINE", "FAMILY_COUNSELING"}}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if intake.Hold != "clinics/north/holds/h1" || len(h.released) != 0 {
		t.Fatalf("intake input %+v, released %v: the held slot must go to intake", intake, h.released)
	}
	// The intake refers to the medication agreed to, not any.
	if fmt.Sprint(intake.Medications) != "[MAT_BUPRENORPHINE]" {
		t.Fatalf("intake medications %v; want [MAT_BUPRENORPHINE]", intake.Medications)
	}
	// A boundary workflow running from an earlier refusal stops on a yes.
	if len(h.stopped) != 1 || h.stopped[0] != ids.Boundary(intake.Family) {
		t.Fatalf("cancel requested of %v; want the family's boundary workflow", h.stopped)
	}
	// Its check-ins and boundary reminders to the family, not sent yet,
	// too, and the rest the boundary workflow made: the counselor's
	// check-ins about the refused meeting, a proposed meeting's notice. It
	// made them all, so all go by their origin, in one cancellation.
	var kinds []string
	byOrigin := 0
	for _, c := range h.cancelled {
		if c.Related == intake.Family {
			t.Fatalf("family reminders cancelled by kind %s beside the origin's: listed twice", c.Kind)
		}
		if c.Origin == ids.Boundary(intake.Family) && c.Related == "" {
			byOrigin++
			kinds = c.Kinds
			// Not an overdose's alert or its referral put to the
			// counselor: those still need doing.
			if slices.Contains(c.Kinds, "OVERDOSE_ALERT") || slices.Contains(c.Kinds, "REFERRAL_ESCALATION") || len(c.Kinds) == 0 {
				t.Fatalf("cancelled by origin, kinds %v: overdose answers would go too", c.Kinds)
			}
		}
	}
	if byOrigin != 1 || !slices.Contains(kinds, "CHECK_IN") || !slices.Contains(kinds, "BOUNDARY_REMINDER") {
		t.Fatalf("cancellations %+v; want one of every reminder the boundary workflow made, check-ins and boundary reminders among them", h.cancelled)
	}
	if len(*support) != 1 || len((*support)[0].Kinds) != 1 || (*support)[0].Kinds[0] != "FAMILY_COUNSELING" {
		t.Fatalf("other accepted services referred: %+v", *support)
	}
	// Referred as accepted, not in the boundary path's words.
	if r := (*support)[0].Reason; r == "" || strings.Contains(r, "declined") || strings.Contains(r, "not in treatment") {
		t.Fatalf("other accepted services referred with reason %q; want one of their own", r)
	}
}

// A meeting scheduled before the epoch that made the accepted services'
// reason (its run begun at an older one) still refers them as accepted
// on a yes to medication: that change, sensitive, is never asked live in
// such a run, and the yes to medication asks its own.
func TestAcceptedBesideMATHasItsReasonInAnOlderRun(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour, defaults())
	h.env.OnGetVersion("epoch-2026-12-07c", workflow.DefaultVersion, 1).Return(workflow.DefaultVersion)
	support, _ := h.supportReferrals(), h.intakeRuns()
	h.update(4*24*time.Hour+time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "PARTIALLY_ACCEPTED",
		AcceptedServices: []string{"MAT_BUPRENORPHINE", "FAMILY_COUNSELING"}}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if len(*support) != 1 || (*support)[0].Reason != "Accepted at a family intervention." {
		t.Fatalf("other accepted services referred: %+v; want them referred as accepted", *support)
	}
}

// A partial yes to care without medication in such a run asks neither
// change live: the yes is the sensitive state, and an id asked would
// record it in the run's TemporalChangeVersion.
func TestAcceptedBesideCareAsksNoChangeInAnOlderRun(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour, defaults())
	h.env.OnGetVersion("epoch-2026-12-07c", workflow.DefaultVersion, 1).Return(workflow.DefaultVersion)
	asked := 0
	h.env.OnGetVersion("accepted-beside-mat-reason", workflow.DefaultVersion, 1).Run(func(mock.Arguments) { asked++ }).Return(workflow.Version(1))
	support, _ := h.supportReferrals(), h.intakeRuns()
	h.update(4*24*time.Hour+time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "PARTIALLY_ACCEPTED",
		AcceptedServices: []string{"FAMILY_COUNSELING", "OUTPATIENT"}}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if asked != 0 || len(*support) != 1 {
		t.Fatalf("accepted-beside-mat-reason asked %d times, support %+v; want it never asked, on a yes to care alone", asked, *support)
	}
}

// The workflow starts after the meeting's start (the outbox was late) with
// no hold yet: it must not spin on a hold deadline it cannot act on.
func TestLateStartDoesNotSpin(t *testing.T) {
	h := newHarness(t, -time.Minute, defaults())
	h.update(time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if !h.holdAt.IsZero() {
		t.Fatal("no hold is taken after the meeting started")
	}
}

// boundaryStarts answers the boundary child workflow at once and keeps
// the input it was started with.
// supportReferrals collects the support referrals the workflow asks for.
func (h *harness) supportReferrals() *[]activities.SupportRequest {
	var support []activities.SupportRequest
	h.env.OnActivity(flow.A.CreateSupportReferrals, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.SupportRequest) ([]string, error) {
			support = append(support, in)
			return nil, nil
		})
	return &support
}

// intakeRuns stands in for the intake, which ends in treatment, and keeps
// the input it was given.
func (h *harness) intakeRuns() *matintake.Input {
	var intake matintake.Input
	h.env.OnWorkflow(matintake.Name, mock.Anything, mock.Anything).Return(
		func(_ workflow.Context, in matintake.Input) (matintake.Result, error) {
			intake = in
			return matintake.Result{Outcome: "ENTERED_TREATMENT"}, nil
		})
	return &intake
}

func (h *harness) boundaryStarts() *boundary.Input {
	var started boundary.Input
	h.env.OnWorkflow(boundary.Name, mock.Anything, mock.Anything).Return(
		func(_ workflow.Context, in boundary.Input) (boundary.Result, error) {
			started = in
			return boundary.Result{Summary: "ok"}, nil
		})
	return &started
}

// resends keeps, in order, the failed reminders the workflow sends again.
func (h *harness) resends() *[]string { return flowtest.Resends(h.env) }

// A hold that cannot be given back (it lapses at its expiry anyway) does
// not stop what comes after: a cancelled meeting's reminders are
// cancelled, and a refusal gets its support referrals and boundary
// follow-up.
func TestFailedReleaseStopsNothingElse(t *testing.T) {
	refused := temporal.NewNonRetryableApplicationError("no", "PermissionDenied", errors.New("no"))
	t.Run("cancel", func(t *testing.T) { cancelCleansUp(t, refused) })
	t.Run("refusal", func(t *testing.T) {
		h, support, boundaryIn := partialRefusal(t, refused)
		if len(h.released) != 1 || len(support) != 1 || boundaryIn.Outcome != "PARTIALLY_ACCEPTED" {
			t.Fatalf("release tried %v, support referrals %+v, boundary input %+v", h.released, support, boundaryIn)
		}
	})
}

// Referrals to the services accepted beside a refusal that cannot be made
// (a program deleted meanwhile, say) do not stop the follow-up: the
// counselor is told to make them by hand, and the boundary workflow runs.
func TestFailedSupportReferralsStopNoFollowUp(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour, defaults())
	refused := temporal.NewNonRetryableApplicationError("no", "NotFound", errors.New("program not found"))
	h.env.OnActivity(flow.A.CreateSupportReferrals, mock.Anything, mock.Anything).Return(nil, refused)
	boundaryIn := h.boundaryStarts()
	h.update(4*24*time.Hour+time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "DECLINED",
		AcceptedServices: []string{"HARM_REDUCTION_NALOXONE"}}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatalf("workflow error %v; want the follow-up to go on", err)
	}
	if boundaryIn.Outcome != "DECLINED" {
		t.Fatalf("boundary input %+v; want the boundary workflow started for the refusal", *boundaryIn)
	}
	// Not referred here, the naloxone is the boundary workflow's to refer.
	if len(boundaryIn.Accepted) != 0 {
		t.Fatalf("boundary input accepted %v; want nothing, as nothing was referred", boundaryIn.Accepted)
	}
	told := h.sent.byKind("REFERRAL_ESCALATION")
	if len(told) != 1 || told[0].To.ID != "counselor-1" || !strings.Contains(told[0].Message, "by hand") {
		t.Fatalf("counselor told %+v; want one notice to make the referrals by hand", told)
	}
}

// The meeting's reminders that cannot be cancelled after a refusal stop
// no follow-up: the place is given back and the boundary workflow runs.
func TestFailedReminderCancelStopsNoFollowUp(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour, defaults())
	h.cancelErr = temporal.NewNonRetryableApplicationError("no", "PermissionDenied", errors.New("refused"))
	boundaryIn := h.boundaryStarts()
	h.update(4*24*time.Hour+time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "DECLINED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatalf("workflow error %v; want the follow-up to go on", err)
	}
	if len(h.released) != 1 || boundaryIn.Outcome != "DECLINED" {
		t.Fatalf("released %v, boundary input %+v; want the place given back and the boundary workflow started", h.released, *boundaryIn)
	}
}

// On a yes the intake starts first: cleanup that fails after it (a
// service refusing to cancel the meeting's reminders, the other
// referrals) neither holds the intake back nor ends it, and the counselor
// hears of referrals that could not be made.
func TestYesStartsIntakeBeforeTidyingUp(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour, defaults())
	refused := temporal.NewNonRetryableApplicationError("no", "PermissionDenied", errors.New("no"))
	h.cancelErr = refused
	h.env.OnActivity(flow.A.CreateSupportReferrals, mock.Anything, mock.Anything).Return(nil, refused)
	var intake matintake.Input
	cancelsBefore := -1 // reminder cancellations made when the intake began
	h.env.OnWorkflow(matintake.Name, mock.Anything, mock.Anything).Return(
		func(_ workflow.Context, in matintake.Input) (matintake.Result, error) {
			intake, cancelsBefore = in, len(h.cancelled)
			return matintake.Result{Outcome: "ENTERED_TREATMENT"}, nil
		})
	h.update(4*24*time.Hour+time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "PARTIALLY_ACCEPTED",
		AcceptedServices: []string{"MAT_BUPRENORPHINE", "FAMILY_COUNSELING"}}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if cancelsBefore != 0 || len(h.cancelled) == 0 {
		t.Fatalf("%d reminder cancellations before the intake began, %d in all; want none before, some after", cancelsBefore, len(h.cancelled))
	}
	// The family's drafts (the firmer meeting a boundary workflow
	// proposed) are moot after the yes.
	if len(h.withdrawn) != 1 || h.withdrawn[0].Family != "clinics/north/families/f1" || !strings.Contains(h.withdrawn[0].Reason, name) {
		t.Fatalf("drafts withdrawn %+v; want the family's, once, naming this meeting", h.withdrawn)
	}
	var res intervention.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.ChildResult != "ENTERED_TREATMENT" || intake.Hold != "clinics/north/holds/h1" {
		t.Fatalf("result %+v, %v, intake input %+v; want the intake run with the hold", res, err, intake)
	}
	told := 0
	for _, r := range h.sent.byKind("REFERRAL_ESCALATION") {
		if strings.Contains(r.Message, "other services") && r.To.ID == "counselor-1" {
			told++
		}
	}
	if told != 1 {
		t.Fatalf("%d notices of the failed referrals to the counselor; want 1", told)
	}
}

// A hold try that got no answer may have held a place all the same: a
// meeting cancelled before any try succeeded gives back, by lookup,
// whatever the referrals service holds for it.
func TestCancelGivesBackAHoldWithoutAnAnswer(t *testing.T) {
	h := newHarness(t, 2*24*time.Hour, defaults())
	h.hold = func(activities.HoldRequest) (activities.HoldResult, error) {
		return activities.HoldResult{}, temporal.NewNonRetryableApplicationError("no answer", "DeadlineExceeded", errors.New("no answer"))
	}
	var lookups []activities.ReleaseHeldRequest
	h.env.OnActivity(flow.A.ReleaseHeldFor, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.ReleaseHeldRequest) (int, error) {
			lookups = append(lookups, in)
			return 1, nil
		})
	h.update(24*time.Hour, intervention.UpdateCancel, intervention.Cancel{Reason: "family moved"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	var res intervention.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "CANCELLED" {
		t.Fatalf("result %+v, %v", res, err)
	}
	if h.holdAt.IsZero() || len(lookups) != 1 || lookups[0].Intervention != name || lookups[0].Family != "clinics/north/families/f1" {
		t.Fatalf("hold tried at %v; releases by lookup %+v; want one for the meeting", h.holdAt, lookups)
	}
	if len(h.released) != 0 {
		t.Fatalf("released by name %v; the workflow knew of no hold", h.released)
	}
}

// A release that ends in a cancellation (the workflow cancelled through
// Temporal while it ran) is not a failed release to go past: the
// workflow ends cancelled, as before, and gives the hold back first.
func TestCancellationDuringAReleaseEndsTheWorkflow(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour, defaults())
	h.onRelease = func(n int) error {
		if n == 1 {
			// The cancellation lands while the release runs and cuts it off.
			h.env.CancelWorkflow()
			return temporal.NewCanceledError()
		}
		return nil
	}
	h.update(4*24*time.Hour+2*time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	// The hold goes back all the same, on a context the cancellation does
	// not reach, under the same request id.
	if err := h.env.GetWorkflowError(); !temporal.IsCanceledError(err) || len(h.released) != 2 || h.released[1] != h.released[0] {
		t.Fatalf("workflow error %v after releases %v; want cancelled, the hold released again", err, h.released)
	}
}

// A reschedule past the hold's expiry whose release is refused goes on:
// the old hold lapses on its own, a new one is taken for the new time, and
// the yes recorded at the new meeting still starts the intake with it.
func TestFailedReleaseOnRescheduleGoesOn(t *testing.T) {
	h := newHarness(t, 2*24*time.Hour, defaults())
	h.releaseErr = temporal.NewNonRetryableApplicationError("no", "PermissionDenied", errors.New("no"))
	holds := 0
	h.hold = func(activities.HoldRequest) (activities.HoldResult, error) {
		holds++
		return activities.HoldResult{Hold: fmt.Sprintf("clinics/north/holds/h%d", holds), Program: "clinics/north/programs/p1"}, nil
	}
	newStart := h.start.Add(5 * 24 * time.Hour)
	var rejected error
	h.update(time.Hour, intervention.UpdateReschedule, intervention.Reschedule{Start: newStart, Duration: time.Hour}, &rejected)
	intake := h.intakeRuns()
	h.update(7*24*time.Hour+time.Hour, intervention.UpdateOutcome,
		intervention.Outcome{Kind: "ACCEPTED", AcceptedServices: []string{"MAT_BUPRENORPHINE"}}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil || rejected != nil {
		t.Fatalf("workflow error %v, reschedule rejected %v", err, rejected)
	}
	if len(h.released) != 1 || h.released[0] != "clinics/north/holds/h1" {
		t.Fatalf("releases tried %v; want the first hold's", h.released)
	}
	if want := newStart.Add(-72 * time.Hour); holds != 2 || !h.holdAt.Equal(want) {
		t.Fatalf("%d holds, the last at %v; want 2, the second at %v", holds, h.holdAt, want)
	}
	var res intervention.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.ChildResult != "ENTERED_TREATMENT" || intake.Hold != "clinics/north/holds/h2" {
		t.Fatalf("result %+v, %v, intake input %+v; want the intake run with the new hold", res, err, *intake)
	}
}

// A reschedule whose second sweep of the old time's reminders fails for
// good (the service cancelled them as it moved the meeting) goes on: the
// new time's reminders go out and the outcome is followed up. Before, the
// workflow failed there.
func TestFailedCancelOnRescheduleGoesOn(t *testing.T) {
	h := newHarness(t, 2*24*time.Hour, defaults())
	h.cancelErr = temporal.NewNonRetryableApplicationError("no", "PermissionDenied", errors.New("no"))
	newStart := h.start.Add(5 * 24 * time.Hour)
	var rejected error
	h.update(time.Hour, intervention.UpdateReschedule, intervention.Reschedule{Start: newStart, Duration: time.Hour}, &rejected)
	h.update(7*24*time.Hour+time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil || rejected != nil {
		t.Fatalf("workflow error %v, reschedule rejected %v; want it to go on", err, rejected)
	}
	if len(h.cancels) == 0 || h.cancels[0] != "rescheduled" {
		t.Fatalf("cancels tried %v; want the old time's first", h.cancels)
	}
	n := 0
	for _, r := range h.sent.byKind("INTERVENTION_UPCOMING") {
		if off := newStart.Sub(r.Due); r.To.ID == "counselor-1" && (off == 72*time.Hour || off == 24*time.Hour || off == 2*time.Hour) {
			n++
		}
	}
	if n != 3 {
		t.Fatalf("%d of the counselor's reminders placed for the new time; want 3", n)
	}
}

// failPlanReads has LoadPlan fail for good from at on, after change (if
// any) to the plan it would have read.
func (h *harness) failPlanReads(at time.Duration, change func(*activities.Plan)) {
	h.env.RegisterDelayedCallback(func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if change != nil {
			change(&h.plan)
		}
		h.planErr = temporal.NewNonRetryableApplicationError("no", "PermissionDenied", errors.New("no"))
	}, at)
}

// A change of participants whose plan cannot be read (for good) leaves
// the reminders to the plan read before, and the workflow goes on to
// follow up the outcome. Before, it failed there.
func TestFailedReplanReadGoesOn(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour, defaults())
	changeAt := 36 * time.Hour
	h.failPlanReads(changeAt-time.Minute, nil)
	var rejected error
	h.update(changeAt, intervention.UpdateReplan, intervention.Replan{}, &rejected)
	h.update(4*24*time.Hour+2*time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil || rejected != nil {
		t.Fatalf("workflow error %v, replan rejected %v; want it to go on", err, rejected)
	}
	got := map[string]int{}
	for _, r := range h.sent.byKind("INTERVENTION_UPCOMING") {
		got[r.To.ID]++
	}
	if got["mom"] != 3 || got["counselor-1"] != 3 {
		t.Fatalf("reminders %v; want the 72, 24 and 2 h reminders each, from the plan read before", got)
	}
}

// After a failed read of a changed plan, the follow-up reads it again: a
// yes goes to the intake with the counselor who took the family over,
// not the one the failed read left in place.
func TestFollowUpReadsAPlanItCouldNotReadBefore(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour, defaults())
	changeAt := 36 * time.Hour
	h.failPlanReads(changeAt-time.Minute, func(p *activities.Plan) { p.Counselor.ID = "counselor-2" })
	h.env.RegisterDelayedCallback(func() {
		h.mu.Lock()
		h.planErr = nil
		h.mu.Unlock()
	}, 4*24*time.Hour)
	h.update(changeAt, intervention.UpdateReplan, intervention.Replan{}, nil)
	intake := h.intakeRuns()
	h.update(4*24*time.Hour+time.Hour, intervention.UpdateOutcome,
		intervention.Outcome{Kind: "ACCEPTED", AcceptedServices: []string{"MAT_BUPRENORPHINE"}}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatalf("workflow error %v", err)
	}
	if intake.Counselor.ID != "counselor-2" {
		t.Fatalf("the intake went to %q; want counselor-2, read again after the failed read", intake.Counselor.ID)
	}
}

// A release that keeps failing after a reschedule holds the workflow up
// for holdBudget, not for the day of an activity's retries: the new
// time's reminders are armed, and the first goes out on time.
func TestFailingReleaseOnRescheduleDelaysNoReminder(t *testing.T) {
	// A hold that lapses an hour after the meeting, so that moving it two
	// days on outlives the hold.
	settings := defaults()
	settings.HoldSlack = time.Hour
	h := newHarness(t, 2*24*time.Hour, settings)
	h.releaseErr = errors.New("referrals service unavailable") // retryable
	var releasedAt []time.Time
	h.onRelease = func(int) error { releasedAt = append(releasedAt, h.env.Now()); return h.releaseErr }
	newStart := h.start.Add(2 * 24 * time.Hour)
	var rejected error
	h.update(time.Hour, intervention.UpdateReschedule, intervention.Reschedule{Start: newStart, Duration: time.Hour}, &rejected)
	h.update(4*24*time.Hour+2*time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil || rejected != nil {
		t.Fatalf("workflow error %v, reschedule rejected %v", err, rejected)
	}
	if len(releasedAt) == 0 || releasedAt[0].After(h.start.Add(-46*time.Hour)) {
		t.Fatalf("releases tried at %v; want the first at the reschedule, 47 h before the old time", releasedAt)
	}
	for _, b := range h.releaseBudgets {
		if b > 5*time.Minute {
			t.Fatalf("a release was given %v, its retries included; want it bounded by the hold's budget (5m)", b)
		}
	}
	if len(h.releaseBudgets) == 0 {
		t.Fatal("no release handed to the server's retries")
	}
	// The first reminder the counselor got after the reschedule (an hour
	// after the workflow began, 47 h before the old time).
	var first time.Time
	for _, r := range h.sent.byKind("INTERVENTION_UPCOMING") {
		if r.To.ID == "counselor-1" && r.Due.After(h.start.Add(-47*time.Hour)) && (first.IsZero() || r.Due.Before(first)) {
			first = r.Due
		}
	}
	if want := newStart.Add(-72 * time.Hour); !first.Equal(want) {
		t.Fatalf("the counselor's first reminder of the new time went at %v; want %v, 72 h before it", first, want)
	}
}

// A meeting reminder or a notice that cannot be made at all (the service
// still failing after a day of retries) is gone without, not the end of
// the workflow: the reminders after it go out, and the outcome recorded
// later still finds the workflow.
func TestUnmadeReminderEndsNothing(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour, defaults())
	refused := map[string]int{}
	h.onSend = func(r activities.ReminderRequest) error {
		if (r.Kind == "INTERVENTION_UPCOMING" && r.To.ID == "mom" && h.start.Sub(h.env.Now()) >= 24*time.Hour) || r.Kind == "OUTCOME_OVERDUE" {
			refused[r.Kind]++
			// Retried until the budget is out (the test environment
			// stops at ten attempts, the server after a day).
			return errors.New("interventions service unavailable")
		}
		return nil
	}
	h.update(4*24*time.Hour+4*time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatalf("workflow error %v; want it to go on past the reminders it could not make", err)
	}
	if refused["INTERVENTION_UPCOMING"] == 0 || refused["OUTCOME_OVERDUE"] == 0 {
		t.Fatalf("refusals %v; want mom's early reminders and the overdue notice refused", refused)
	}
	var last time.Duration = -1
	for _, r := range h.sent.byKind("INTERVENTION_UPCOMING") {
		if r.To.ID == "mom" {
			last = h.start.Sub(r.Due)
		}
	}
	if last < 0 || last >= 24*time.Hour {
		t.Fatalf("mom's last reminder %v before the meeting; want the one after those refused made", last)
	}
	var res intervention.Result
	if err := h.env.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
}

// A participant who gave no time zone is reminded in the meeting's (the
// plan says so, EventZone): when the meeting moves to another zone, the
// reminders after the move name its time in the new one. One who gave a
// zone keeps theirs.
func TestMeetingZoneMovesWithTheMeeting(t *testing.T) {
	h := newHarness(t, 4*24*time.Hour, defaults())
	h.plan.Participants = []activities.Person{
		{Kind: "member", ID: "mom", Family: "clinics/north/families/f1", Channel: "SMS", TimeZone: "America/Chicago", EventZone: true},
		{Kind: "member", ID: "dad", Family: "clinics/north/families/f1", Channel: "SMS", TimeZone: "America/New_York"},
	}
	var rejected error
	h.update(36*time.Hour, intervention.UpdateReschedule,
		intervention.Reschedule{Start: h.start, Duration: time.Hour, TimeZone: "America/Los_Angeles"}, &rejected)
	h.update(4*24*time.Hour+2*time.Hour, intervention.UpdateOutcome, intervention.Outcome{Kind: "POSTPONED"}, nil)
	h.env.ExecuteWorkflow(intervention.Name, intervention.Input{Intervention: name})
	if err := h.env.GetWorkflowError(); err != nil || rejected != nil {
		t.Fatalf("workflow error %v, reschedule rejected %v", err, rejected)
	}
	t0 := h.start.Add(-4 * 24 * time.Hour)
	zones := map[string][]string{}
	for _, r := range h.sent.byKind("INTERVENTION_UPCOMING") {
		if r.Due.Sub(t0) > 36*time.Hour && r.To.ID != "counselor-1" {
			zones[r.To.ID] = append(zones[r.To.ID], r.To.TimeZone)
		}
	}
	if len(zones["mom"]) == 0 || len(zones["dad"]) == 0 {
		t.Fatalf("reminders after the move: %v; want mom's and dad's", zones)
	}
	for _, z := range zones["mom"] {
		if z != "America/Los_Angeles" {
			t.Fatalf("mom's reminders after the move in %v; want the meeting's new zone", zones["mom"])
		}
	}
	for _, z := range zones["dad"] {
		if z != "America/New_York" {
			t.Fatalf("dad's reminders after the move in %v; want his own zone", zones["dad"])
		}
	}
}
