package boundary_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/boundary"
	"github.com/handoff-health/handoff/workflows/flow"
	"github.com/handoff-health/handoff/workflows/flowtest"
)

const (
	family = "clinics/north/families/f1"
	iv     = "clinics/north/interventions/i1"
	day    = 24 * time.Hour
)

type harness struct {
	env        *testsuite.TestWorkflowEnvironment
	t0         time.Time
	safety     activities.Safety
	reminders  []activities.ReminderRequest // Due is when the workflow sent each
	dueAsked   []time.Time                  // the due time each asked for
	reinforced []time.Time
	support    []activities.SupportRequest
	proposed   []activities.ProposeRequest
	// earlyOverdoses answers OverdosesSince.
	earlyOverdoses []string
	// earlyCheckIns answers CheckInsRecorded.
	earlyCheckIns  []activities.CheckInRecord
	checkInsAsked  []string
	overdosesAsked []activities.OverdosesRequest
	// refuse, if set, answers ReinforceBoundary before it is recorded.
	refuse     func(activities.ReinforceRequest) error
	reinforces []activities.ReinforceRequest // every call, refused or not
	// gone, once set, makes every read of the family find nothing, as
	// after an administrator deleted it.
	gone bool
	// closed makes the families service refuse a proposal FAMILY_CLOSED.
	closed bool
	// down, once set, makes every read of the family fail as an outage
	// does: retryably.
	down bool
	// broken makes FamilySafety fail for good.
	broken bool
	// failSupport, if set, may refuse a support referral.
	failSupport func(activities.SupportRequest) error
	// sent, if set, hears of each reminder as it is sent (from the
	// activity's goroutine).
	sent chan activities.ReminderRequest
	// cancelled are the CancelReminders calls.
	cancelled []activities.CancelRemindersRequest
	// failCancel, if set, may refuse a CancelReminders call.
	failCancel func(activities.CancelRemindersRequest) error
	// failReminder, if set, may refuse a SendReminder call; a refused
	// reminder is not in reminders.
	failReminder func(activities.ReminderRequest) error
	// nameFor, if set, names each reminder sent; else every one is
	// clinics/north/reminders/r.
	nameFor func(activities.ReminderRequest) string
	// duringCancel, if set, runs in each CancelReminders call (from the
	// activity's goroutine).
	duringCancel func(activities.CancelRemindersRequest)
	// levelTwoHeld answers MeetingsHeld for level 2: by default the
	// series is spent, and a refused level 2 meeting leads to level 3.
	levelTwoHeld  int
	meetingsAsked []activities.MeetingsRequest
	// logs hears the workflow's log lines.
	logs *lines
}

// lines is a logger that keeps the messages logged as errors: what an
// operator alerting on errors hears of.
type lines struct {
	t    *testing.T
	errs []string
}

func (l *lines) line(level, msg string, kv []any) { l.t.Log(append([]any{level, msg}, kv...)...) }
func (l *lines) Debug(msg string, kv ...any)      { l.line("DEBUG", msg, kv) }
func (l *lines) Info(msg string, kv ...any)       { l.line("INFO", msg, kv) }
func (l *lines) Warn(msg string, kv ...any)       { l.line("WARN", msg, kv) }
func (l *lines) Error(msg string, kv ...any) {
	l.errs = append(l.errs, msg)
	l.line("ERROR", msg, kv)
}

// logged reports whether an error was logged whose message holds part.
func (l *lines) logged(part string) bool {
	return slices.ContainsFunc(l.errs, func(m string) bool { return strings.Contains(m, part) })
}

// consequenceAgreedOn starts the family with no boundary stating a
// consequence, and has them agree one (b2) after d.
func (h *harness) consequenceAgreedOn(d time.Duration) {
	h.safety.WithConsequence = nil
	h.env.RegisterDelayedCallback(func() {
		h.safety.WithConsequence = []string{family + "/boundaries/b2"}
	}, d)
}

// screened records a screen of status on day after, as a counselor does,
// and tells the workflow.
func (h *harness) screened(status string, after time.Duration) {
	h.env.RegisterDelayedCallback(func() {
		h.safety.Status = status
		h.env.SignalWorkflow(boundary.SignalSafetyScreen, nil)
	}, after)
}

func newHarness(t *testing.T, status string) *harness {
	var suite testsuite.WorkflowTestSuite
	logs := &lines{t: t}
	suite.SetLogger(logs)
	env := suite.NewTestWorkflowEnvironment()
	env.SetStartTime(time.Date(2037, 12, 7, 15, 0, 0, 0, time.UTC))
	env.RegisterWorkflowWithOptions(boundary.Workflow, workflow.RegisterOptions{Name: boundary.Name})
	env.RegisterActivity(&activities.Activities{})
	h := &harness{env: env, t0: env.Now(), logs: logs, safety: activities.Safety{
		Status: status, Boundaries: []string{family + "/boundaries/b1", family + "/boundaries/b2"},
		WithConsequence: []string{family + "/boundaries/b2"}, ContactPerson: "mom",
		Members: []activities.Person{{Kind: "member", ID: "mom", Family: family, Channel: "SMS"}, {Kind: "member", ID: "dad", Family: family, Channel: "EMAIL"}},
	}}
	env.OnActivity(flow.A.LoadSettings, mock.Anything, "north").Return(activities.DefaultSettings(), nil)
	env.OnActivity(flow.A.FamilySafety, mock.Anything, family).Return(
		func(context.Context, string) (activities.Safety, error) {
			if h.gone {
				return activities.Safety{}, temporal.NewNonRetryableApplicationError("read family: not found", "NotFound", nil)
			}
			if h.down {
				return activities.Safety{}, temporal.NewApplicationError("read family: unavailable", "Unavailable")
			}
			if h.broken {
				return activities.Safety{}, temporal.NewNonRetryableApplicationError("read family: internal", "Internal", nil)
			}
			return h.safety, nil
		})
	env.OnActivity(flow.A.SendReminder, mock.Anything, mock.Anything).Return(
		func(_ context.Context, r activities.ReminderRequest) (string, error) {
			flowtest.Sendable(t, r.Message)
			if h.failReminder != nil {
				if err := h.failReminder(r); err != nil {
					return "", err
				}
			}
			h.dueAsked = append(h.dueAsked, r.Due)
			r.Due = env.Now()
			h.reminders = append(h.reminders, r)
			if h.sent != nil {
				h.sent <- r
			}
			if h.nameFor != nil {
				return h.nameFor(r), nil
			}
			return "clinics/north/reminders/r", nil
		})
	env.OnActivity(flow.A.CheckInsRecorded, mock.Anything, mock.Anything).Return(
		func(_ context.Context, intervention string) ([]activities.CheckInRecord, error) {
			h.checkInsAsked = append(h.checkInsAsked, intervention)
			return h.earlyCheckIns, nil
		})
	env.OnActivity(flow.A.OverdosesSince, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.OverdosesRequest) ([]string, error) {
			h.overdosesAsked = append(h.overdosesAsked, in)
			return h.earlyOverdoses, nil
		})
	env.OnActivity(flow.A.ReinforceBoundary, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.ReinforceRequest) error {
			h.reinforces = append(h.reinforces, in)
			if h.refuse != nil {
				if err := h.refuse(in); err != nil {
					return err
				}
			}
			h.reinforced = append(h.reinforced, env.Now())
			return nil
		})
	env.OnActivity(flow.A.CreateSupportReferrals, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.SupportRequest) ([]string, error) {
			if h.failSupport != nil {
				if err := h.failSupport(in); err != nil {
					return nil, err
				}
			}
			h.support = append(h.support, in)
			return nil, nil
		})
	env.OnActivity(flow.A.ProposeIntervention, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.ProposeRequest) (string, error) {
			if h.closed {
				return "", temporal.NewNonRetryableApplicationError("create intervention: the family is CLOSED", activities.FamilyClosed, nil)
			}
			h.proposed = append(h.proposed, in)
			return "clinics/north/interventions/next", nil
		})
	env.OnActivity(flow.A.CancelReminders, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.CancelRemindersRequest) (int, error) {
			h.cancelled = append(h.cancelled, in)
			if h.duringCancel != nil {
				h.duringCancel(in)
			}
			if h.failCancel != nil {
				if err := h.failCancel(in); err != nil {
					return 0, err
				}
			}
			return 1, nil
		})
	h.levelTwoHeld = 5
	env.OnActivity(flow.A.MeetingsHeld, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.MeetingsRequest) (int, error) {
			h.meetingsAsked = append(h.meetingsAsked, in)
			return h.levelTwoHeld, nil
		})
	return h
}

// resends records the failed reminders Resend is asked to send again; the
// n-th resend is named again-n, due as asked.
func (h *harness) resends() *[]string {
	var resent []string
	h.env.OnActivity(flow.A.Resend, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.ResendRequest) (activities.Resent, error) {
			resent = append(resent, in.Failed)
			return activities.Resent{Reminder: fmt.Sprintf("clinics/north/reminders/again-%d", len(resent)), FailsBy: in.Due}, nil
		})
	return &resent
}

// immediateReferrals counts the IMMEDIATE support referrals (an overdose's
// harm reduction).
func (h *harness) immediateReferrals() int {
	n := 0
	for _, s := range h.support {
		if s.Urgency == "IMMEDIATE" {
			n++
		}
	}
	return n
}

func (h *harness) kinds(kind string) []activities.ReminderRequest {
	var out []activities.ReminderRequest
	for _, r := range h.reminders {
		if r.Kind == kind {
			out = append(out, r)
		}
	}
	return out
}

func input(level int32) boundary.Input {
	return boundary.Input{Family: family, Clinic: "north", Intervention: iv, Level: level, Outcome: "DECLINED",
		Counselor: activities.Person{Kind: "counselor", ID: "counselor-1", Channel: "IN_APP"}}
}

// Over 30 days: boundaries reinforced, members reminded, family support and
// naloxone referred, check-ins at days 1, 7 and 30, and at day 14 the next
// intervention proposed one level up (level 2).
func TestThirtyDaysOfFollowUpAndEscalationToLevelTwo(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	var res boundary.Result
	if err := h.env.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	if len(h.reinforced) != 2 || !h.reinforced[0].Equal(h.t0) {
		t.Fatalf("reinforced = %v", h.reinforced)
	}
	if n := len(h.kinds("BOUNDARY_REMINDER")); n != 2 {
		t.Fatalf("boundary reminders = %d, want one per consenting member", n)
	}
	if len(h.support) != 2 || h.support[0].Member != "mom" || len(h.support[0].Kinds) != 3 ||
		h.support[1].Member != "" || h.support[1].Kinds[0] != "HARM_REDUCTION_NALOXONE" {
		t.Fatalf("referrals = %+v", h.support)
	}
	var counselorCheckIns []time.Duration
	for _, r := range h.kinds("CHECK_IN") {
		if r.To.Kind == "counselor" {
			counselorCheckIns = append(counselorCheckIns, r.Due.Sub(h.t0))
		}
	}
	if len(counselorCheckIns) != 3 || counselorCheckIns[0] != day || counselorCheckIns[1] != 7*day || counselorCheckIns[2] != 30*day {
		t.Fatalf("check-ins at %v", counselorCheckIns)
	}
	if len(h.proposed) != 1 || h.proposed[0].Level != 2 || h.proposed[0].Previous != iv {
		t.Fatalf("proposed = %+v", h.proposed)
	}
	if p := h.kinds("ESCALATION_PROPOSED"); len(p) != 1 || p[0].Due.Sub(h.t0) != 14*day {
		t.Fatalf("escalation reminder = %+v", p)
	}
	if res.CheckIns != 3 || res.Proposed == "" {
		t.Fatalf("result = %+v", res)
	}
}

// Without a current safety screen nothing is reinforced and no member is
// reminded; the counselor is asked once; a recorded screen opens the gate.
func TestSafetyGate(t *testing.T) {
	h := newHarness(t, "HIGH_RISK")
	h.env.RegisterDelayedCallback(func() {
		if len(h.reinforced) != 0 || len(h.kinds("BOUNDARY_REMINDER")) != 0 {
			t.Error("boundary steps ran without a safe screen")
		}
		// Harm reduction and family support do not wait for the screen.
		var kinds []string
		for _, r := range h.support {
			kinds = append(kinds, r.Kinds...)
		}
		if !slices.Contains(kinds, "HARM_REDUCTION_NALOXONE") || !slices.Contains(kinds, "FAMILY_COUNSELING") {
			t.Errorf("referred before the screen: %v; want naloxone and family support", kinds)
		}
		h.safety.Status = "CURRENT"
		h.env.SignalWorkflow(boundary.SignalSafetyScreen, nil)
	}, 3*day)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if asks := h.kinds("SAFETY_SCREEN_NEEDED"); len(asks) != 1 || !asks[0].Due.Equal(h.t0) {
		t.Fatalf("screen requests = %+v", asks)
	}
	if len(h.reinforced) != 2 || h.reinforced[0].Sub(h.t0) != 3*day {
		t.Fatalf("reinforced at %v, want at day 3 when the screen arrived", h.reinforced)
	}
	if len(h.support) != 2 {
		t.Fatalf("support referrals %+v; want family support and naloxone once each", h.support)
	}
}

// A family never screened still gets its check-ins, each asking the
// counselor again for the screen; nothing that needs a safe screen
// happens, not even the escalation after the cool-down.
func TestCheckInsComeWhileTheScreenIsMissing(t *testing.T) {
	h := newHarness(t, "HIGH_RISK")
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 40*day)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); !temporal.IsCanceledError(err) {
		t.Fatalf("want the cancellation at day 40, got %v", err)
	}
	var days []time.Duration
	for _, r := range h.kinds("CHECK_IN") {
		if r.To.Kind == "counselor" {
			days = append(days, r.Due.Sub(h.t0)/day)
			if !strings.Contains(r.Message, "safety screen") {
				t.Errorf("check-in %q does not ask for the screen", r.Message)
			}
		}
	}
	if !slices.Equal(days, []time.Duration{1, 7, 30}) {
		t.Fatalf("counselor check-ins on days %v, want 1, 7 and 30", days)
	}
	for _, r := range h.reminders {
		if r.To.Kind == "member" {
			t.Fatalf("a member was reminded (%s) before a safe screen", r.Kind)
		}
	}
	if len(h.reinforced) != 0 || len(h.kinds("BOUNDARY_REMINDER")) != 0 || len(h.proposed) != 0 || len(h.kinds("ESCALATION_PROPOSED")) != 0 {
		t.Fatalf("reinforced %v, boundary reminders %d, proposed %+v: nothing waits only on time", h.reinforced,
			len(h.kinds("BOUNDARY_REMINDER")), h.proposed)
	}
}

// A screen that comes after some check-ins opens the gate: boundaries are
// reinforced then, the check-ins left no longer ask for a screen, and the
// cool-down, over by then, proposes the next meeting.
func TestLateScreenAfterCheckIns(t *testing.T) {
	h := newHarness(t, "HIGH_RISK")
	h.screened("CURRENT", 20*day)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if len(h.reinforced) != 2 || h.reinforced[0].Sub(h.t0) != 20*day {
		t.Fatalf("reinforced at %v, want day 20", h.reinforced)
	}
	if len(h.proposed) != 1 || h.kinds("ESCALATION_PROPOSED")[0].Due.Sub(h.t0) != 20*day {
		t.Fatalf("proposed %+v at %+v, want one on day 20", h.proposed, h.kinds("ESCALATION_PROPOSED"))
	}
	var asking []bool
	for _, r := range h.kinds("CHECK_IN") {
		if r.To.Kind == "counselor" {
			asking = append(asking, strings.Contains(r.Message, "safety screen"))
		}
	}
	if !slices.Equal(asking, []bool{true, true, false}) {
		t.Fatalf("check-ins asking for the screen: %v, want the two before it only", asking)
	}
	var members []time.Duration
	for _, r := range h.kinds("CHECK_IN") {
		if r.To.Kind == "member" {
			members = append(members, r.Due.Sub(h.t0)/day)
		}
	}
	if !slices.Equal(members, []time.Duration{30}) {
		t.Fatalf("member check-ins on days %v, want only day 30's, after the screen", members)
	}
}

// A screen that found risk, recorded between the workflow's read of the
// family and a reinforcement, makes the service refuse it: the workflow
// waits for a safe screen (asking for one) instead of failing, and then
// reinforces what is left under the ids it used before.
func TestRefusedReinforcementWaitsForASafeScreen(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.refuse = func(in activities.ReinforceRequest) error {
		if strings.HasSuffix(in.Boundary, "/b2") && h.env.Now().Equal(h.t0) {
			h.safety.Status = "HIGH_RISK" // the screen recorded meanwhile
			return temporal.NewNonRetryableApplicationError("reinforce boundary: needs a safe screen", "SAFETY_SCREEN_REQUIRED", nil)
		}
		return nil
	}
	h.env.RegisterDelayedCallback(func() {
		if n := len(h.kinds("BOUNDARY_REMINDER")); n != 0 {
			t.Errorf("%d boundary reminders sent before a safe screen", n)
		}
		h.safety.Status = "CURRENT"
		h.env.SignalWorkflow(boundary.SignalSafetyScreen, nil)
	}, 3*day)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatalf("the workflow failed on a refused reinforcement: %v", err)
	}
	if asks := h.kinds("SAFETY_SCREEN_NEEDED"); len(asks) != 1 || !asks[0].Due.Equal(h.t0) || !strings.Contains(asks[0].Message, "found risk") {
		t.Fatalf("screen requests = %+v; want one, at the refusal, saying why", asks)
	}
	var b2 []string
	for _, r := range h.reinforces {
		if strings.HasSuffix(r.Boundary, "/b2") {
			b2 = append(b2, r.RequestID)
		}
	}
	if len(b2) != 2 || b2[0] != b2[1] {
		t.Fatalf("b2 reinforcement request ids = %q; want the refused one tried again under its id", b2)
	}
	if n := len(h.reinforced); n != 3 || h.reinforced[2].Sub(h.t0) != 3*day {
		t.Fatalf("reinforced at %v; want b1 at once, then b1 (again) and b2 at day 3", h.reinforced)
	}
	if rem := h.kinds("BOUNDARY_REMINDER"); len(rem) != 2 || rem[0].Due.Sub(h.t0) != 3*day {
		t.Fatalf("boundary reminders = %+v; want one per member at day 3", rem)
	}
}

// An overdose while the families service is down is alerted within
// minutes, to the counselor last read: the read of the family before the
// alert is given up after flow.SoonEnough, not retried for a day.
func TestOverdoseAlertDoesNotWaitOutAnOutage(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.env.RegisterDelayedCallback(func() { h.down = true }, 3*day-time.Minute)
	h.env.RegisterDelayedCallback(func() { h.down = false }, 3*day+6*time.Hour)
	// The test environment does not play an activity's retries out over
	// hours: the bound is read from the read's own options.
	var bounds []time.Duration
	h.env.SetOnActivityStartedListener(func(info *activity.Info, _ context.Context, _ converter.EncodedValues) {
		if info.ActivityType.Name == "FamilySafety" && !info.IsLocalActivity && h.down {
			bounds = append(bounds, info.ScheduleToCloseTimeout)
		}
	})
	h.runWithOverdoseOnDay3(t)
	if len(bounds) == 0 || slices.ContainsFunc(bounds, func(d time.Duration) bool { return d > flow.SoonEnough }) {
		t.Fatalf("the family read during the outage was bounded by %v; want %v at most", bounds, flow.SoonEnough)
	}
	alert := h.kinds("OVERDOSE_ALERT")
	if len(alert) != 1 || alert[0].Due.Sub(h.t0) > 3*day+5*time.Minute || alert[0].To.ID != "counselor-1" {
		t.Fatalf("overdose alert = %+v; want one within five minutes of day 3, to the counselor last read", alert)
	}
}

// An overdose in the middle of the check-ins: naloxone and syringe services
// referred at once, the counselor alerted, and check-ins brought closer.
func TestOverdoseTightensCheckIns(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.runWithOverdoseOnDay3(t)
	alert := h.kinds("OVERDOSE_ALERT")
	if len(alert) != 1 || alert[0].Due.Sub(h.t0) != 3*day {
		t.Fatalf("overdose alert = %+v", alert)
	}
	immediate := false
	for _, s := range h.support {
		immediate = immediate || (s.Urgency == "IMMEDIATE" && len(s.Kinds) == 2 && s.Kinds[0] == "HARM_REDUCTION_NALOXONE")
	}
	if !immediate {
		t.Fatalf("no immediate harm-reduction referral: %+v", h.support)
	}
	var after []time.Duration
	for _, r := range h.kinds("CHECK_IN") {
		if r.To.Kind == "counselor" && r.Due.Sub(h.t0) > 3*day {
			after = append(after, r.Due.Sub(h.t0))
		}
	}
	// Before: days 7 and 30. After the overdose on day 3: day 4, then at
	// most 3 days apart, up to day 30.
	if len(after) < 8 || after[0] != 4*day || after[len(after)-1] != 30*day {
		t.Fatalf("check-ins after the overdose at %v", after)
	}
	for i := 1; i < len(after); i++ {
		if after[i]-after[i-1] > 3*day {
			t.Fatalf("gap of %v between check-ins after an overdose", after[i]-after[i-1])
		}
	}
}

// A family handed to another counselor after the refusal: the overdose
// alert, the check-ins and the proposal go to the family's counselor of
// now, and the contact person is read again before each check-in.
func TestAlertsFollowTheFamilysCounselor(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.env.RegisterDelayedCallback(func() {
		h.safety.Counselor = activities.Person{Kind: "counselor", ID: "counselor-2", Channel: "IN_APP"}
		h.safety.Members = []activities.Person{{Kind: "member", ID: "mom", Family: family, Channel: "EMAIL"}}
	}, 2*day)
	h.runWithOverdoseOnDay3(t)
	for _, kind := range []string{"OVERDOSE_ALERT", "CHECK_IN", "ESCALATION_PROPOSED"} {
		for _, r := range h.kinds(kind) {
			if r.To.Kind != "counselor" {
				if kind == "CHECK_IN" && r.Due.Sub(h.t0) > 2*day && r.To.Channel != "EMAIL" {
					t.Fatalf("a check-in after the change went to the contact person's old channel: %+v", r)
				}
				continue
			}
			want := "counselor-2"
			if r.Due.Sub(h.t0) < 2*day {
				want = "counselor-1"
			}
			if r.To.ID != want {
				t.Fatalf("%s on day %v went to %s, want %s", kind, r.Due.Sub(h.t0)/day, r.To.ID, want)
			}
		}
	}
	if len(h.kinds("OVERDOSE_ALERT")) != 1 {
		t.Fatalf("overdose alerts = %+v", h.kinds("OVERDOSE_ALERT"))
	}
}

// An overdose recorded after the refused meeting began but before this
// workflow started (its signal found no workflow) is answered at the
// start, and once only when its signal comes too.
func TestOverdoseBeforeTheStartIsAnswered(t *testing.T) {
	h := newHarness(t, "CURRENT")
	early := family + "/warningSigns/w0"
	h.earlyOverdoses = []string{early}
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(boundary.SignalOverdose, boundary.Overdose{WarningSign: early})
	}, time.Hour)
	in := input(1)
	in.MeetingStart = h.t0.Add(-2 * time.Hour)
	h.env.ExecuteWorkflow(boundary.Name, in)
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	// Its own alerts (a lost first try's) do not answer an overdose for it.
	if len(h.overdosesAsked) != 1 || !h.overdosesAsked[0].Since.Equal(in.MeetingStart) || h.overdosesAsked[0].Family != family ||
		h.overdosesAsked[0].IgnoreFrom != "default-test-workflow-id" {
		t.Fatalf("asked for overdoses %+v", h.overdosesAsked)
	}
	if alert := h.kinds("OVERDOSE_ALERT"); len(alert) != 1 || !alert[0].Due.Equal(h.t0) || alert[0].Related != early {
		t.Fatalf("overdose alerts %+v; want one, at the start, naming the warning sign", alert)
	}
	immediate := h.immediateReferrals()
	if immediate != 1 {
		t.Fatalf("immediate harm-reduction referrals: %d, want 1 (%+v)", immediate, h.support)
	}
}

// Messages to family members wait out their quiet hours; the counselor's
// do not.
func TestMemberMessagesWaitOutQuietHours(t *testing.T) {
	h := newHarness(t, "CURRENT")
	// Check-ins fall at 15:00 UTC, 10:00 in New York: inside mom's quiet
	// hours (09:00-17:00, a night-shift worker).
	h.safety.Members = []activities.Person{{Kind: "member", ID: "mom", Family: family, Channel: "SMS",
		TimeZone: "America/New_York", QuietStart: "09:00", QuietEnd: "17:00"}}
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for i, r := range h.reminders {
		due := h.dueAsked[i].In(ny)
		switch {
		case r.To.ID == "mom":
			seen++
			if due.Hour() != 17 || due.Minute() != 0 || !h.dueAsked[i].After(r.Due) {
				t.Fatalf("%s to mom sent %v is due %v; want 17:00 New York, later", r.Kind, r.Due, due)
			}
		case r.To.Kind == "counselor" && !h.dueAsked[i].IsZero():
			// Zero: due now, by the service's clock.
			t.Fatalf("%s to the counselor asked due %v, sent %v: want at once", r.Kind, h.dueAsked[i], r.Due)
		}
	}
	if seen < 4 { // a boundary reminder and three check-ins
		t.Fatalf("%d messages to mom", seen)
	}
}

// The outbox delivers at least once: an overdose delivered twice is
// answered once; another overdose is answered again.
func TestRedeliveredOverdoseIsAnsweredOnce(t *testing.T) {
	h := newHarness(t, "CURRENT")
	for _, at := range []time.Duration{3 * day, 3*day + time.Minute} {
		h.env.RegisterDelayedCallback(func() {
			h.env.SignalWorkflow(boundary.SignalOverdose, boundary.Overdose{WarningSign: family + "/warningSigns/w1"})
		}, at)
	}
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(boundary.SignalOverdose, boundary.Overdose{WarningSign: family + "/warningSigns/w2"})
	}, 5*day)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	alert := h.kinds("OVERDOSE_ALERT")
	if len(alert) != 2 || alert[0].Due.Sub(h.t0) != 3*day || alert[1].Due.Sub(h.t0) != 5*day {
		t.Fatalf("overdose alerts = %+v; want one for w1 on day 3 and one for w2 on day 5", alert)
	}
	immediate := h.immediateReferrals()
	if immediate != 2 {
		t.Fatalf("%d immediate harm-reduction referrals, want 2", immediate)
	}
}

// A continued run still reminds the family's contact person at each
// check-in: it reloads the family instead of running on an empty one.
func TestContinuedRunRemindsTheContactPerson(t *testing.T) {
	h := newHarness(t, "CURRENT")
	in := input(1)
	in.State = &boundary.State{Began: h.t0.Add(-day), Screened: true, Reinforced: true, Referred: true,
		CheckIns: []time.Time{h.t0.Add(time.Hour)}, EscalateAt: h.t0.Add(20 * day)}
	h.env.ExecuteWorkflow(boundary.Name, in)
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	var toMom int
	for _, r := range h.kinds("CHECK_IN") {
		if r.To.ID == "mom" {
			toMom++
		}
	}
	if toMom != 1 {
		t.Fatalf("check-in reminders to the contact person: %d, want 1 (%+v)", toMom, h.kinds("CHECK_IN"))
	}
	if len(h.reinforced) != 0 {
		t.Fatalf("a continued run reinforced again: %v", h.reinforced)
	}
}

// A window of opportunity reported at a check-in escalates at once, not
// after the cool-down; at level 3 the draft names the boundaries whose
// consequences will be stated.
func TestWindowOfOpportunityEscalatesToLevelThree(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(boundary.SignalCheckIn, boundary.CheckIn{Intervention: iv, Number: 1, WindowOfOpportunity: true})
	}, 2*day)
	h.env.ExecuteWorkflow(boundary.Name, input(2))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if len(h.proposed) != 1 || h.proposed[0].Level != 3 {
		t.Fatalf("proposed = %+v", h.proposed)
	}
	if p := h.kinds("ESCALATION_PROPOSED"); len(p) != 1 || p[0].Due.Sub(h.t0) != 2*day {
		t.Fatalf("escalation at %+v, want day 2", p)
	}
	if want := family + "/boundaries/b2"; !strings.Contains(h.proposed[0].Notes, want) {
		t.Fatalf("notes %q do not name %s", h.proposed[0].Notes, want)
	}
}

// A safety screen's signal that finds the family unreadable does not end
// the follow-up, though a meeting waits for a safe screen: the next
// check-in reads the family, and proposes the meeting then.
func TestUnreadScreenLeavesTheHeldMeetingToTheNextCheckIn(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.screened("HIGH_RISK", 10*day) // the cool-down finds risk: the meeting waits
	h.env.RegisterDelayedCallback(func() { h.broken = true }, 20*day)
	h.screened("CURRENT", 20*day+time.Hour)
	h.env.RegisterDelayedCallback(func() { h.broken = false }, 21*day)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	var res boundary.Result
	if err := h.env.GetWorkflowResult(&res); err != nil {
		t.Fatalf("workflow error = %v; want the follow-up to go on", err)
	}
	p := h.kinds("ESCALATION_PROPOSED")
	if len(h.proposed) != 1 || len(p) != 1 || p[0].Due.Sub(h.t0) != 30*day {
		t.Fatalf("proposed %+v, notices %+v; want the meeting proposed at the day-30 check-in", h.proposed, p)
	}
}

// Naloxone the loved one accepted at the refused meeting (a partial yes),
// which the meeting's workflow referred, is not referred a second time;
// the family's own support still is.
func TestAcceptedNaloxoneIsReferredOnce(t *testing.T) {
	h := newHarness(t, "CURRENT")
	in := input(1)
	in.Outcome, in.Accepted = "PARTIALLY_ACCEPTED", []string{"HARM_REDUCTION_NALOXONE"}
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 2*day)
	h.env.ExecuteWorkflow(boundary.Name, in)
	if err := h.env.GetWorkflowError(); !temporal.IsCanceledError(err) {
		t.Fatalf("workflow error = %v; want cancelled", err)
	}
	if len(h.support) != 1 || h.support[0].Member != "mom" {
		t.Fatalf("referrals %+v; want the family's support alone", h.support)
	}
}

// A window of opportunity reported at a check-in while the family waits for
// its safety screen is kept: the next meeting is proposed once the safe
// screen lets the boundaries be reinforced, not after the cool-down.
func TestWindowBeforeTheScreenIsKept(t *testing.T) {
	h := newHarness(t, "MISSING")
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(boundary.SignalCheckIn, boundary.CheckIn{Intervention: iv, Number: 1, WindowOfOpportunity: true})
	}, day+time.Hour)
	h.screened("CURRENT", 2*day)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	p := h.kinds("ESCALATION_PROPOSED")
	if len(h.proposed) != 1 || len(p) != 1 || p[0].Due.Sub(h.t0) != 2*day {
		t.Fatalf("proposed %+v, notices %+v; want the next meeting proposed on day 2, at the safe screen", h.proposed, p)
	}
	if len(h.reinforced) == 0 || h.reinforced[0].After(p[0].Due) {
		t.Fatalf("reinforced %v; want the boundaries reinforced first", h.reinforced)
	}
	if !strings.Contains(h.proposed[0].Notes, "window of opportunity at check-in 1") {
		t.Fatalf("notes %q do not say why", h.proposed[0].Notes)
	}
}

// A window of opportunity recorded at a check-in before the workflow ran
// (the meeting's workflow was still giving back places and referring, and
// the signal found no workflow) is taken when it starts, as the signal
// would have been: the formal meeting is proposed at once, not after the
// cool-down. The same check-in signalled as well counts once.
func TestCheckInRecordedBeforeTheStartIsTaken(t *testing.T) {
	for _, signalled := range []bool{false, true} {
		h := newHarness(t, "CURRENT")
		h.earlyCheckIns = []activities.CheckInRecord{{Number: 1, WindowOfOpportunity: true}}
		if signalled {
			h.env.RegisterDelayedCallback(func() {
				h.env.SignalWorkflow(boundary.SignalCheckIn, boundary.CheckIn{Intervention: iv, Number: 1, WindowOfOpportunity: true})
			}, time.Hour)
		}
		h.env.ExecuteWorkflow(boundary.Name, input(2))
		if err := h.env.GetWorkflowError(); err != nil {
			t.Fatal(err)
		}
		if len(h.proposed) != 1 || h.proposed[0].Level != 3 {
			t.Fatalf("signalled %v: proposed = %+v; want one level 3 meeting", signalled, h.proposed)
		}
		if p := h.kinds("ESCALATION_PROPOSED"); len(p) != 1 || p[0].Due.Sub(h.t0) >= time.Hour {
			t.Fatalf("signalled %v: escalation at %+v; want it at the start, not after the cool-down", signalled, p)
		}
		if !slices.Equal(h.checkInsAsked, []string{iv}) {
			t.Fatalf("signalled %v: check-ins read for %v; want the refused meeting's, once", signalled, h.checkInsAsked)
		}
	}
}

// Level 3 without an active boundary that states a consequence: no draft;
// the counselor is asked to agree one first, and told when the check-ins
// end with the meeting still waiting, which the result says too: it is
// not dropped as if proposed.
func TestLevelThreeNeedsStatedConsequences(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.safety.WithConsequence = nil
	h.env.ExecuteWorkflow(boundary.Name, input(2))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	told := h.kinds("ESCALATION_PROPOSED")
	if len(h.proposed) != 0 || len(told) != 2 || told[0].Due.Sub(h.t0) != 14*day || told[1].Due.Sub(h.t0) != 30*day ||
		!strings.Contains(told[1].Message, "check-ins are over") {
		t.Fatalf("proposed %+v, reminders %+v; want none, and notices on days 14 and 30", h.proposed, told)
	}
	var res boundary.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || !strings.Contains(res.Summary, "waits for a consequence") || res.Proposed != "" {
		t.Fatalf("result %+v, %v; want it to say the formal meeting waits", res, err)
	}
}

// A new cycle begun after the counselor was told the last one ended with
// the formal meeting waiting is told again at its own end.
func TestEachCycleEndingBlockedIsTold(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.safety.WithConsequence = nil
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(boundary.SignalRestart, boundary.Restart{Intervention: "clinics/north/interventions/i3", Level: 2, Outcome: "DECLINED"})
	}, 30*day+10*time.Minute)
	h.env.ExecuteWorkflow(boundary.Name, input(2))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	var ends []int
	for _, r := range h.kinds("ESCALATION_PROPOSED") {
		if strings.Contains(r.Message, "check-ins are over") {
			ends = append(ends, int(r.Due.Sub(h.t0).Round(day)/day))
		}
	}
	if len(ends) != 2 {
		t.Fatalf("told of a blocked end on days %v; want once per cycle", ends)
	}
}

// A window of opportunity reported while the formal meeting waits for a
// consequence tries it again: agreed by then (day 20), it is proposed at
// the check-in that reports it (day 21), not left for a later one.
func TestWindowOfOpportunityRetriesABlockedFormalMeeting(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.consequenceAgreedOn(20 * day)
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(boundary.SignalCheckIn, boundary.CheckIn{Intervention: iv, Number: 3, WindowOfOpportunity: true})
	}, 21*day)
	h.env.ExecuteWorkflow(boundary.Name, input(2))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	days := h.days("ESCALATION_PROPOSED")
	if len(h.proposed) != 1 || h.proposed[0].Level != 3 || !slices.Equal(days, []time.Duration{14, 21}) {
		t.Fatalf("proposed %+v, escalation notices on days %v; want one level 3 proposal, on day 21", h.proposed, days)
	}
}

// A formal meeting held back for want of a stated consequence is proposed
// at the first check-in after the family agreed one: the day-30 check-in,
// when a boundary with a consequence came on day 20.
func TestBlockedFormalMeetingIsProposedOnceAConsequenceIsAgreed(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.consequenceAgreedOn(20 * day)
	h.env.ExecuteWorkflow(boundary.Name, input(2))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if len(h.proposed) != 1 || h.proposed[0].Level != 3 || !strings.Contains(h.proposed[0].Notes, family+"/boundaries/b2") {
		t.Fatalf("proposed %+v; want one level 3 meeting stating b2's consequence", h.proposed)
	}
	days := h.days("ESCALATION_PROPOSED")
	if !slices.Equal(days, []time.Duration{14, 30}) {
		t.Fatalf("escalation notices on days %v; want the hold-up on day 14 and the proposal on day 30", days)
	}
}

// A new cycle does not inherit the formal meeting held back in the one
// before: the level 3 meeting held on day 20 (a consequence agreed by then)
// was refused, and the next is proposed after the new cycle's cool-down,
// not at its first check-in.
func TestNewCycleWaitsItsCoolDownAfterABlockedEscalation(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.consequenceAgreedOn(20 * day)
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(boundary.SignalRestart, boundary.Restart{Intervention: "clinics/north/interventions/i3", Level: 3, Outcome: "DECLINED"})
	}, 20*day)
	h.env.ExecuteWorkflow(boundary.Name, input(2))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	days := h.days("ESCALATION_PROPOSED")
	if !slices.Equal(days, []time.Duration{14, 34}) || len(h.proposed) != 1 || h.proposed[0].Level != 3 {
		t.Fatalf("escalation notices on days %v, proposed %+v; want the hold-up on day 14 and one level 3 proposal on day 34", days, h.proposed)
	}
}

// A long run continues as new once it has handled many events, carrying
// its progress; nothing is lost.
func TestContinuesAsNewCarryingState(t *testing.T) {
	h := newHarness(t, "CURRENT")
	for i := 0; i < 501; i++ {
		h.env.RegisterDelayedCallback(func() {
			h.env.SignalWorkflow(boundary.SignalCheckIn, boundary.CheckIn{Intervention: iv, Number: 1})
		}, 12*time.Hour+time.Duration(i)*time.Second)
	}
	// A delivery failure shortly before the run ends: its resend is still
	// waiting and must travel to the next run.
	failedAt := 12*time.Hour + 250*time.Second
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: "clinics/north/reminders/failed-1"})
	}, failedAt)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	err := h.env.GetWorkflowError()
	var can *workflow.ContinueAsNewError
	if !errors.As(err, &can) {
		t.Fatalf("want continue-as-new, got %v", err)
	}
	if len(h.reinforced) != 2 || len(h.kinds("CHECK_IN")) != 0 {
		t.Fatalf("before continuing: reinforced %d, check-ins %d", len(h.reinforced), len(h.kinds("CHECK_IN")))
	}
	var next boundary.Input
	if err := converter.GetDefaultDataConverter().FromPayloads(can.Input, &next); err != nil {
		t.Fatal(err)
	}
	if next.State == nil || !next.State.Reinforced || !next.State.Referred || len(next.State.CheckIns) != 3 || next.State.Events != 0 {
		t.Fatalf("carried state = %+v", next.State)
	}
	want := []flow.Resend{{Reminder: "clinics/north/reminders/failed-1", At: h.t0.Add(failedAt + 15*time.Minute)}}
	if got := next.State.Resends.Pending; len(got) != 1 || got[0].Reminder != want[0].Reminder || !got[0].At.Equal(want[0].At) {
		t.Fatalf("carried resends = %+v, want %+v", got, want)
	}
}

// A run that continues another picks up its waiting resends at their time,
// and a line that already used its retries gets no more.
func TestCarriedResendsAreSentAndCounted(t *testing.T) {
	h := newHarness(t, "CURRENT")
	type resent struct {
		failed string
		at     time.Time
	}
	var got []resent
	h.env.OnActivity(flow.A.Resend, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.ResendRequest) (activities.Resent, error) {
			got = append(got, resent{in.Failed, h.env.Now()})
			return activities.Resent{Reminder: "clinics/north/reminders/again-" + in.Failed[len("clinics/north/reminders/"):], FailsBy: in.Due}, nil
		})
	in := input(1)
	in.State = &boundary.State{Resends: flow.Resends{
		Pending:  []flow.Resend{{Reminder: "clinics/north/reminders/waiting", At: h.t0.Add(10 * time.Minute)}},
		Attempts: map[string]int{"clinics/north/reminders/spent": 3, "clinics/north/reminders/waiting": 1},
		First:    map[string]string{"clinics/north/reminders/spent": "clinics/north/reminders/a", "clinics/north/reminders/waiting": "clinics/north/reminders/b"},
	}}
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: "clinics/north/reminders/spent"})
	}, time.Hour)
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: "clinics/north/reminders/again-waiting"})
	}, 2*time.Hour)
	// The third resend of the line fails too: the line has used its three
	// retries only if the count carried over.
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: "clinics/north/reminders/again-again-waiting"})
	}, 3*time.Hour)
	h.env.ExecuteWorkflow(boundary.Name, in)
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].failed != "clinics/north/reminders/waiting" || !got[0].at.Equal(h.t0.Add(10*time.Minute)) ||
		got[1].failed != "clinics/north/reminders/again-waiting" || !got[1].at.Equal(h.t0.Add(2*time.Hour+15*time.Minute)) {
		t.Fatalf("resends = %+v; want the carried one at +10m, its own failure again at +2h15m, then none: the line is spent", got)
	}
}

// The day-30 check-ins are the last reminders: a failure of theirs,
// signalled after them, is still sent again before the workflow ends, and
// a refusal that arrives meanwhile starts a new cycle rather than finding
// no workflow to signal.
func TestLastCheckInFailureIsResentAndARestartStillCounts(t *testing.T) {
	h := newHarness(t, "CURRENT")
	resent := h.resends()
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: "clinics/north/reminders/r"})
	}, 30*day+20*time.Minute)
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(boundary.SignalRestart, boundary.Restart{Intervention: "clinics/north/interventions/i2", Level: 2, Outcome: "DECLINED"})
	}, 30*day+time.Hour)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if len(*resent) != 1 || (*resent)[0] != "clinics/north/reminders/r" {
		t.Fatalf("resent %v; want the failed day-30 check-in", *resent)
	}
	if len(h.reinforced) != 4 || h.reinforced[2].Sub(h.t0) != 30*day+time.Hour {
		t.Fatalf("reinforced at %v; want a second cycle from the refusal at day 30 + 1h", h.reinforced)
	}
}

// The last check-in to a member with quiet hours can fail hours after it
// was due: its failure is still heard and sent again. Check-ins fall at
// 15:00 UTC.
func TestLastCheckInFailingLateForQuietHoursIsStillHeard(t *testing.T) {
	for _, c := range []struct {
		name            string
		quietStart, end string
		failsAt         time.Duration
	}{
		// 10:00 in New York falls in quiet hours 09:00-17:00: the day-30
		// check-in is due when they end, 22:00 UTC, 7 h later.
		{"held by quiet hours", "09:00", "17:00", 30*day + 7*time.Hour + 5*time.Minute},
		// Outside quiet hours 21:00-08:00: due at once, and failed if not
		// sent by 21:00 in New York, 02:00 UTC, 11 h later.
		{"failed as quiet hours begin", "21:00", "08:00", 30*day + 11*time.Hour + 10*time.Minute},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, "CURRENT")
			h.safety.Members = []activities.Person{{Kind: "member", ID: "mom", Family: family, Channel: "SMS",
				TimeZone: "America/New_York", QuietStart: c.quietStart, QuietEnd: c.end}}
			resent := h.resends()
			h.env.RegisterDelayedCallback(func() {
				h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: "clinics/north/reminders/r"})
			}, c.failsAt)
			h.env.ExecuteWorkflow(boundary.Name, input(1))
			if err := h.env.GetWorkflowError(); err != nil {
				t.Fatal(err)
			}
			if len(*resent) != 1 {
				t.Fatalf("resent %v; want the day-30 check-in", *resent)
			}
		})
	}
}

// A failure late in the last listening round is sent again, and that
// resend's own failure is heard too: the workflow listens another round
// after one that resent something.
func TestLastResendsOwnFailureIsHeard(t *testing.T) {
	h := newHarness(t, "CURRENT")
	resent := h.resends()
	// The day-30 check-in fails 80 minutes in (of 90), is sent again 15
	// minutes later, and that one fails at 2 h.
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: "clinics/north/reminders/r"})
	}, 30*day+80*time.Minute)
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: "clinics/north/reminders/again-1"})
	}, 30*day+2*time.Hour)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if want := []string{"clinics/north/reminders/r", "clinics/north/reminders/again-1"}; !slices.Equal(*resent, want) {
		t.Fatalf("resent %v; want %v", *resent, want)
	}
}

// Another refusal while the workflow runs starts a new cycle: boundaries
// are reinforced again and the check-ins count from the new refusal.
func TestRestartStartsANewCycle(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(boundary.SignalRestart, boundary.Restart{Intervention: "clinics/north/interventions/i2", Level: 2, Outcome: "DID_NOT_ATTEND"})
	}, 10*day)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if len(h.reinforced) != 4 || h.reinforced[2].Sub(h.t0) != 10*day {
		t.Fatalf("reinforced at %v", h.reinforced)
	}
	if len(h.proposed) != 1 || h.proposed[0].Level != 3 || h.proposed[0].Previous != "clinics/north/interventions/i2" {
		t.Fatalf("proposed = %+v", h.proposed)
	}
	if last := h.kinds("ESCALATION_PROPOSED"); len(last) != 1 || last[0].Due.Sub(h.t0) != 24*day {
		t.Fatalf("escalation at %+v, want day 24 (14 days after the second refusal)", last)
	}
	// The service numbers check-ins per intervention: the new cycle's are
	// those of i2, from 1 again, as the counselor's reminders say.
	var numbers []string
	wantNumbers := []int{1, 2, 1, 2, 3}
	for _, r := range h.kinds("CHECK_IN") {
		if r.To.Kind == "counselor" {
			numbers = append(numbers, fmt.Sprintf("%s %d", r.Related[strings.LastIndex(r.Related, "/")+1:], r.Due.Sub(h.t0)/day))
			if len(numbers) > len(wantNumbers) {
				continue
			}
			if want := fmt.Sprintf("(check-in %d)", wantNumbers[len(numbers)-1]); !strings.Contains(r.Message, want) {
				t.Errorf("check-in on day %d of %s says %q, want %q", r.Due.Sub(h.t0)/day, r.Related, r.Message, want)
			}
		}
	}
	if !slices.Equal(numbers, []string{iv[strings.LastIndex(iv, "/")+1:] + " 1", iv[strings.LastIndex(iv, "/")+1:] + " 7", "i2 11", "i2 17", "i2 40"}) {
		t.Fatalf("counselor check-ins (intervention, day): %v", numbers)
	}
}

// A screen that finds risk after the boundaries were reinforced holds what
// reaches the family, and the next meeting, until one finds them safe
// again: the contact person's check-ins stop, the counselor's say why, and
// the meeting the cool-down calls for is proposed at the first check-in
// after a safe screen.
func TestALaterRiskyScreenHoldsMessagesAndTheNextMeeting(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.screened("HIGH_RISK", 5*day)
	h.screened("CURRENT", 20*day)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	var members, warned []time.Duration
	for _, r := range h.kinds("CHECK_IN") {
		switch {
		case r.To.Kind == "member":
			members = append(members, r.Due.Sub(h.t0)/day)
		case strings.Contains(r.Message, "found risk"):
			warned = append(warned, r.Due.Sub(h.t0)/day)
		}
	}
	if !slices.Equal(members, []time.Duration{1, 30}) || !slices.Equal(warned, []time.Duration{7}) {
		t.Fatalf("member check-ins on days %v, counselor's saying why not on %v; want 1 and 30, and 7", members, warned)
	}
	held := h.kinds("SAFETY_SCREEN_NEEDED")
	if len(held) != 1 || held[0].Due.Sub(h.t0) != 14*day || !strings.Contains(held[0].Message, "next meeting") {
		t.Fatalf("screen requests %+v; want one on day 14 about the next meeting", held)
	}
	if p := h.kinds("ESCALATION_PROPOSED"); len(h.proposed) != 1 || len(p) != 1 || p[0].Due.Sub(h.t0) != 20*day ||
		!strings.Contains(h.proposed[0].Notes, "once a safety screen found the family safe") {
		t.Fatalf("proposed %+v at %+v; want one, on day 20 with the safe screen", h.proposed, p)
	}
}

// A next meeting held for a risky screen, then for want of a consequence,
// then for a risky screen again, tells the counselor each time: the
// second notice of a kind has a request id of its own, which the service
// does not answer with the first.
func TestEachHoldOfTheNextMeetingIsTold(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.safety.WithConsequence = nil
	h.screened("HIGH_RISK", 5*day)
	h.screened("CURRENT", 20*day)
	h.env.RegisterDelayedCallback(func() { h.safety.WithConsequence = []string{family + "/boundaries/b2"} }, 22*day)
	h.screened("HIGH_RISK", 25*day)
	h.env.ExecuteWorkflow(boundary.Name, input(2))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	var days []time.Duration
	ids := map[string]bool{}
	for _, r := range h.kinds("SAFETY_SCREEN_NEEDED") {
		if strings.Contains(r.Message, "next meeting") && !strings.Contains(r.Message, "check-ins are over") {
			days = append(days, r.Due.Sub(h.t0)/day)
			ids[r.RequestID] = true
		}
	}
	if !slices.Equal(days, []time.Duration{14, 30}) || len(ids) != 2 {
		t.Fatalf("the meeting held for risk told on days %v under %d request ids; want days 14 and 30, each its own", days, len(ids))
	}
	blocked := 0
	for _, r := range h.kinds("ESCALATION_PROPOSED") {
		if strings.Contains(r.Message, "agree one first") {
			blocked++
		}
	}
	if blocked != 1 {
		t.Fatalf("%d notices of the meeting held for a consequence; want 1, on day 20", blocked)
	}
}

// A screen recorded after boundaries were reinforced that finds risk keeps
// members from hearing from us: the check-ins and boundary reminders made
// to them and still to go are cancelled (the counselor's are not), and a
// member's reminder that failed is not sent again while the family is not
// safe. Before the screen, a failed one is sent again.
func TestARiskyScreenAfterReinforcementHoldsWhatMembersWereSent(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.nameMembers()
	resent := h.resends()
	// Mom's boundary reminder fails while the family is safe; her day-1
	// check-in fails too, and a screen finds risk before it is sent again.
	h.env.RegisterDelayedCallback(func() { h.failMom("BOUNDARY_REMINDER") }, 2*time.Hour)
	h.env.RegisterDelayedCallback(func() { h.failMom("CHECK_IN") }, day+time.Hour)
	h.screened("HIGH_RISK", day+time.Hour+5*time.Minute)
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 3*day)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); !temporal.IsCanceledError(err) {
		t.Fatalf("workflow error = %v; want cancelled", err)
	}
	if len(*resent) != 1 || !strings.Contains((*resent)[0], "mom-BOUNDARY_REMINDER") {
		t.Fatalf("resent %v; want mom's boundary reminder alone, failed before the risky screen", *resent)
	}
	var held *activities.CancelRemindersRequest
	for i, c := range h.cancelled {
		if strings.Contains(c.Reason, "found risk") {
			held = &h.cancelled[i]
		}
	}
	if held == nil || fmt.Sprint(held.Kinds) != "[CHECK_IN BOUNDARY_REMINDER]" || len(held.Only) != 2 || held.Origin == "" || held.RequestID == "" {
		t.Fatalf("cancellations %+v; want the members' check-ins and boundary reminders cancelled at the risky screen", h.cancelled)
	}
	for _, p := range held.Only {
		if p.Kind != "member" {
			t.Fatalf("the hold cancels reminders to %+v; want members only", held.Only)
		}
	}
}

// nameMembers names each reminder to a member by its recipient, kind and
// order (failMom's names); the rest are clinics/north/reminders/r.
func (h *harness) nameMembers() {
	h.nameFor = func(r activities.ReminderRequest) string {
		if r.To.Kind == "member" {
			return fmt.Sprintf("clinics/north/reminders/%s-%s-%d", r.To.ID, r.Kind, len(h.reminders))
		}
		return "clinics/north/reminders/r"
	}
}

// failMom signals that mom's reminders of kind sent so far failed.
func (h *harness) failMom(kind string) {
	for i, r := range h.reminders {
		if r.To.ID == "mom" && r.Kind == kind {
			h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: fmt.Sprintf("clinics/north/reminders/mom-%s-%d", kind, i+1)})
		}
	}
}

// A member's reminder that failed is not sent again to a family whose loved
// one entered treatment since the run last read it.
func TestNoResendToAFamilyInTreatment(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.nameMembers()
	resent := h.resends()
	h.env.RegisterDelayedCallback(func() {
		h.safety.InTreatment = true
		h.failMom("BOUNDARY_REMINDER")
	}, 2*time.Hour)
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 20*time.Hour)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); !temporal.IsCanceledError(err) {
		t.Fatalf("workflow error = %v; want cancelled", err)
	}
	if len(*resent) != 0 {
		t.Fatalf("resent %v; want nothing to a family in treatment", *resent)
	}
}

// A screen signal does not fail the family's follow-up: when the members'
// reminders cannot be cancelled after a screen found risk, the workflow
// goes on (its check-ins still come to the counselor) and ends as usual.
func TestAFailedHoldAfterARiskyScreenDoesNotEndTheFollowUp(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.failCancel = func(in activities.CancelRemindersRequest) error {
		if strings.Contains(in.Reason, "found risk") {
			return temporal.NewNonRetryableApplicationError("cancel reminders: refused", "PermissionDenied", nil)
		}
		return nil
	}
	h.screened("HIGH_RISK", 2*day)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	var res boundary.Result
	if err := h.env.GetWorkflowResult(&res); err != nil {
		t.Fatalf("workflow error = %v; want the follow-up to go on", err)
	}
	if res.CheckIns != 3 || !strings.Contains(res.Summary, "waits for a safe screen") {
		t.Fatalf("result %+v; want the three check-ins, and the next meeting waiting for a safe screen", res)
	}
	if len(h.cancelled) == 0 || !strings.Contains(h.cancelled[0].Reason, "found risk") {
		t.Fatalf("cancellations %+v; want the hold tried", h.cancelled)
	}
	// Messages may still go into a home at risk: an operator must hear.
	if !h.logs.logged("found risk failed") {
		t.Fatalf("errors logged %q; want the failed hold among them", h.logs.errs)
	}
}

// A check-in reporting a window of opportunity proposes a meeting held
// back for risk if the family is safe by then, though the screen's own
// signal has not come yet; while it still is not, nothing is proposed.
func TestAWindowOfOpportunityProposesAMeetingHeldForRiskOnceSafe(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.screened("HIGH_RISK", 5*day)
	window := func(n int32) func() {
		return func() {
			h.env.SignalWorkflow(boundary.SignalCheckIn, boundary.CheckIn{Intervention: iv, Number: n, WindowOfOpportunity: true})
		}
	}
	h.env.RegisterDelayedCallback(window(2), 15*day)
	h.env.RegisterDelayedCallback(func() { h.safety.Status = "CURRENT" }, 16*day)
	h.env.RegisterDelayedCallback(window(3), 17*day)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if p := h.kinds("ESCALATION_PROPOSED"); len(h.proposed) != 1 || len(p) != 1 || p[0].Due.Sub(h.t0) != 17*day ||
		!strings.Contains(h.proposed[0].Notes, "window of opportunity at check-in 3") {
		t.Fatalf("proposed %+v at %+v; want one, on day 17 at the window of opportunity", h.proposed, p)
	}
}

// A meeting held for a risky screen that no safe one follows is not
// proposed, and the workflow says so: the counselor is told when the
// check-ins end, and the result does not claim a proposal.
func TestAMeetingHeldForAnUnsafeScreenIsToldAtTheEnd(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.screened("HIGH_RISK", 5*day)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	var res boundary.Result
	if err := h.env.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	if len(h.proposed) != 0 || res.Proposed != "" || !strings.Contains(res.Summary, "waits for a safe screen") {
		t.Fatalf("proposed %+v, result %+v; want nothing proposed and a summary saying why", h.proposed, res)
	}
	asked := h.kinds("SAFETY_SCREEN_NEEDED")
	if len(asked) != 2 || asked[0].Due.Sub(h.t0) != 14*day || asked[1].Due.Sub(h.t0) != 30*day || !strings.Contains(asked[1].Message, "check-ins are over") {
		t.Fatalf("screen requests %+v; want the hold on day 14 and the end on day 30", asked)
	}
}

// A meeting the counselor was told, as the check-ins ended, to draft by
// hand stays theirs: an overdose after that brings a check-in, which found
// the family safe or a consequence agreed, and proposed a second draft
// beside the counselor's own.
func TestAMeetingLeftToTheCounselorAtTheEndStaysTheirs(t *testing.T) {
	for _, c := range []struct {
		name  string
		level int32
		setUp func(h *harness)
	}{
		{"held for a risky screen", 1, func(h *harness) {
			h.screened("HIGH_RISK", 5*day)
			h.env.RegisterDelayedCallback(func() { h.safety.Status = "CURRENT" }, 30*day+20*time.Minute)
		}},
		{"held for a consequence", 2, func(h *harness) {
			h.consequenceAgreedOn(30*day + 20*time.Minute)
		}},
	} {
		h := newHarness(t, "CURRENT")
		c.setUp(h)
		h.env.RegisterDelayedCallback(func() {
			h.env.SignalWorkflow(boundary.SignalOverdose, boundary.Overdose{WarningSign: family + "/warningSigns/w1"})
		}, 30*day+30*time.Minute)
		h.env.ExecuteWorkflow(boundary.Name, input(c.level))
		if err := h.env.GetWorkflowError(); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		late := 0
		for _, r := range h.kinds("CHECK_IN") {
			if r.To.Kind == "counselor" && r.Due.After(h.t0.Add(30*day+time.Hour)) {
				late++
			}
		}
		if len(h.kinds("OVERDOSE_ALERT")) != 1 || late != 1 {
			t.Fatalf("%s: %d alerts, %d check-ins after the end; want the overdose answered and a check-in brought", c.name,
				len(h.kinds("OVERDOSE_ALERT")), late)
		}
		if len(h.proposed) != 0 {
			t.Errorf("%s: proposed %+v after the counselor was told to draft it by hand; want nothing", c.name, h.proposed)
		}
	}
}

// An overdose keeps a check-in already due within the day: the tightened
// ones come after it, not in its place.
func TestOverdoseKeepsASoonerCheckIn(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(boundary.SignalOverdose, boundary.Overdose{WarningSign: family + "/warningSigns/w1"})
	}, 6*day+20*time.Hour) // four hours before the day-7 check-in
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	var at []time.Duration
	for _, r := range h.kinds("CHECK_IN") {
		if r.To.Kind == "counselor" {
			at = append(at, r.Due.Sub(h.t0))
		}
	}
	if len(at) < 4 || at[1] != 7*day || at[2] != 7*day+20*time.Hour {
		t.Fatalf("counselor check-ins at %v; want day 7 kept, then the tightened ones from a day after the overdose", at)
	}
}

// A family handed to another counselor before the refusal's workflow
// began: the request for a safety screen, sent before any alert or
// check-in, goes to the family's counselor of now, read at the start.
func TestFirstRemindersGoToTheFamilysCounselor(t *testing.T) {
	h := newHarness(t, "STALE")
	h.safety.Counselor = activities.Person{Kind: "counselor", ID: "counselor-2", Channel: "IN_APP"}
	h.screened("CURRENT", day)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	asks := h.kinds("SAFETY_SCREEN_NEEDED")
	if len(asks) != 1 || asks[0].To.ID != "counselor-2" {
		t.Fatalf("screen requests = %+v, want one to counselor-2", asks)
	}
}

// The request ids of a cycle do not depend on when its first workflow task
// ran: a task lost and tried again later must send the ids the first try
// sent, or every message and referral of the cycle's start goes out twice.
func TestRequestIDsDoNotMoveWithTheClock(t *testing.T) {
	ids := func(start time.Time) []string {
		h := newHarness(t, "CURRENT")
		h.env.SetStartTime(start)
		h.env.ExecuteWorkflow(boundary.Name, input(1))
		if err := h.env.GetWorkflowError(); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range h.reminders {
			out = append(out, r.RequestID)
		}
		return out
	}
	first := ids(time.Date(2037, 12, 7, 15, 0, 0, 0, time.UTC))
	again := ids(time.Date(2037, 12, 7, 15, 0, 7, 0, time.UTC))
	if len(first) == 0 || !slices.Equal(first, again) {
		t.Fatalf("request ids seven seconds apart differ:\n%v\n%v", first, again)
	}
}

// A second refusal in the same cycle, after a safe screen, tells the
// counselor again: its notice has a request id of its own.
func TestSecondRefusalIsReportedToo(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.refuse = func(in activities.ReinforceRequest) error {
		if strings.HasSuffix(in.Boundary, "/b2") && h.env.Now().Sub(h.t0) < 5*day {
			h.safety.Status = "HIGH_RISK"
			return temporal.NewNonRetryableApplicationError("reinforce boundary: needs a safe screen", "SAFETY_SCREEN_REQUIRED", nil)
		}
		return nil
	}
	for _, at := range []time.Duration{3 * day, 6 * day} {
		h.env.RegisterDelayedCallback(func() {
			h.safety.Status = "CURRENT"
			h.env.SignalWorkflow(boundary.SignalSafetyScreen, nil)
		}, at)
	}
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	asks := h.kinds("SAFETY_SCREEN_NEEDED")
	if len(asks) != 2 || asks[0].RequestID == asks[1].RequestID || asks[1].Due.Sub(h.t0) != 3*day {
		t.Fatalf("screen requests = %+v; want two, at the refusals (day 0 and day 3), under ids of their own", asks)
	}
	if rem := h.kinds("BOUNDARY_REMINDER"); len(rem) != 2 || rem[0].Due.Sub(h.t0) != 6*day {
		t.Fatalf("boundary reminders = %+v; want one per member at day 6", rem)
	}
}

// Cancelled while it waits for a safety screen (a signal, no timer), as
// the FamilyDeleted workflow cancels it, the workflow ends cancelled
// rather than holding the cancellation until a screen comes.
func TestCancelledWhileAwaitingAScreen(t *testing.T) {
	h := newHarness(t, "HIGH_RISK")
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 2*day)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); !temporal.IsCanceledError(err) {
		t.Fatalf("workflow error = %v; want cancelled", err)
	}
	if n := len(h.kinds("BOUNDARY_REMINDER")); n != 0 {
		t.Fatalf("%d boundary reminders sent to an unsafe family", n)
	}
}

// Cancelled through Temporal (its intervention cancelled by an operator),
// the workflow cancels the reminders it made that are still to go, those
// held back for quiet hours among them, but not its overdose alerts.
func TestCancelledWorkflowTidiesItsReminders(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 2*day)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); !temporal.IsCanceledError(err) {
		t.Fatalf("workflow error = %v; want cancelled", err)
	}
	if len(h.reminders) == 0 || h.reminders[0].Origin == "" {
		t.Fatalf("reminders %+v; want some made before the cancellation, with their origin", h.reminders)
	}
	if len(h.cancelled) != 1 || h.cancelled[0].Origin != h.reminders[0].Origin || h.cancelled[0].RequestID == "" ||
		fmt.Sprint(h.cancelled[0].Kinds) != "[CHECK_IN BOUNDARY_REMINDER ESCALATION_PROPOSED SAFETY_SCREEN_NEEDED]" {
		t.Fatalf("cancellations %+v; want the workflow's own check-ins, boundary reminders and notices, by origin", h.cancelled)
	}
}

// The family's record is deleted while the workflow waits for a check-in:
// the read before the check-in finds nothing, and the workflow ends as
// done (the FamilyDeleted workflow's cancellation may come after), not as
// a failure for an operator to look into, and sends nothing more.
func TestFamilyDeletedMidwayEndsQuietly(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.env.RegisterDelayedCallback(func() { h.gone = true }, 3*day)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	var res boundary.Result
	if err := h.env.GetWorkflowResult(&res); err != nil {
		t.Fatalf("workflow error = %v; want it ended", err)
	}
	if res.Summary != boundary.SummaryFamilyDeleted || res.CheckIns != 1 {
		t.Fatalf("result %+v; want the family deleted after the first check-in", res)
	}
	for _, r := range h.reminders {
		if r.Due.After(h.t0.Add(3 * day)) {
			t.Fatalf("a reminder sent after the family was deleted: %+v", r)
		}
	}
}

// An overdose signalled just before the workflow is cancelled (a yes at a
// later meeting stops it) is still answered: the dispatcher sent it here
// because this workflow ran, and nobody else will.
func TestOverdoseWaitingAtCancellationIsAnswered(t *testing.T) {
	h := newHarness(t, "HIGH_RISK")
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(boundary.SignalOverdose, boundary.Overdose{WarningSign: family + "/warningSigns/w1"})
		h.env.CancelWorkflow()
	}, 2*day)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); !temporal.IsCanceledError(err) {
		t.Fatalf("workflow error = %v; want cancelled", err)
	}
	if alert := h.kinds("OVERDOSE_ALERT"); len(alert) != 1 || alert[0].Related != family+"/warningSigns/w1" {
		t.Fatalf("overdose alerts %+v; want one about w1", alert)
	}
	if h.immediateReferrals() != 1 {
		t.Fatalf("immediate referrals %+v; want the overdose's", h.support)
	}
}

// An overdose signalled while the cancelled workflow cancels its reminders
// on the way out (a call that may wait out an outage) is answered too: the
// dispatcher sent it here because the workflow still ran. So is one that
// comes as a workflow whose family's case was closed tidies up.
func TestOverdoseWhileTidyingUpIsAnswered(t *testing.T) {
	for _, end := range []string{"cancelled", "family closed"} {
		t.Run(end, func(t *testing.T) {
			h := newHarness(t, "CURRENT")
			h.duringCancel = func(activities.CancelRemindersRequest) {
				h.env.SignalWorkflow(boundary.SignalOverdose, boundary.Overdose{WarningSign: family + "/warningSigns/w9"})
			}
			if end == "cancelled" {
				h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 2*day)
			} else {
				h.closed = true // the proposal of the next meeting finds it closed
			}
			h.env.ExecuteWorkflow(boundary.Name, input(1))
			if len(h.cancelled) != 1 {
				t.Fatalf("cancellations %+v; want the tidy-up's", h.cancelled)
			}
			if alert := h.kinds("OVERDOSE_ALERT"); len(alert) != 1 || alert[0].Related != family+"/warningSigns/w9" {
				t.Fatalf("overdose alerts %+v; want one about w9", alert)
			}
			if h.immediateReferrals() != 1 {
				t.Fatalf("immediate referrals %+v; want the overdose's", h.support)
			}
		})
	}
}

// An overdose's alert whose delivery fails around a cancel (a yes at a
// later meeting stops the workflow) is still sent again: the failure
// comes after the cancel, or came before it and its resend was waiting.
// An overdose signalled while the run listens is answered. The run's other
// reminders are not sent again: the cancel took them away.
func TestOverdoseAlertsFailingAroundACancelAreSentAgain(t *testing.T) {
	for _, c := range []struct {
		name             string
		failAt, cancelAt time.Duration
	}{
		{"failing after the cancel", 2*day + 5*time.Minute, 2*day + time.Minute},
		{"failing before the cancel", 2*day + time.Minute, 2*day + 5*time.Minute},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, "CURRENT")
			resent := h.resends()
			made := map[string]int{}
			h.nameFor = func(r activities.ReminderRequest) string {
				made[r.Kind]++
				return fmt.Sprintf("clinics/north/reminders/%s-%d", r.Kind, made[r.Kind])
			}
			h.env.RegisterDelayedCallback(func() {
				h.env.SignalWorkflow(boundary.SignalOverdose, boundary.Overdose{WarningSign: family + "/warningSigns/w1"})
			}, 2*day)
			h.env.RegisterDelayedCallback(func() {
				for _, r := range []string{"OVERDOSE_ALERT-1", "BOUNDARY_REMINDER-1"} {
					h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: "clinics/north/reminders/" + r})
				}
			}, c.failAt)
			h.env.RegisterDelayedCallback(h.env.CancelWorkflow, c.cancelAt)
			h.env.RegisterDelayedCallback(func() {
				h.env.SignalWorkflow(boundary.SignalOverdose, boundary.Overdose{WarningSign: family + "/warningSigns/w2"})
			}, 2*day+30*time.Minute)
			h.env.ExecuteWorkflow(boundary.Name, input(1))
			if err := h.env.GetWorkflowError(); !temporal.IsCanceledError(err) {
				t.Fatalf("workflow error = %v; want cancelled", err)
			}
			if made["BOUNDARY_REMINDER"] == 0 {
				t.Fatalf("reminders %v; want a boundary reminder before the cancel", made)
			}
			if fmt.Sprint(*resent) != "[clinics/north/reminders/OVERDOSE_ALERT-1]" {
				t.Errorf("sent again %v; want the overdose alert alone", *resent)
			}
			if alerts := h.kinds("OVERDOSE_ALERT"); len(alerts) != 2 || alerts[1].Related != family+"/warningSigns/w2" {
				t.Errorf("overdose alerts %+v; want w1's and w2's", alerts)
			}
		})
	}
}

// A cancelled run whose overdose alerts can no longer fail ends at the
// cancel: it waits only for an alert still at risk, not for another
// reminder sent again lately.
func TestCancelledLongAfterAnOverdoseEndsAtOnce(t *testing.T) {
	h := newHarness(t, "CURRENT")
	resent := h.resends()
	h.nameFor = func(r activities.ReminderRequest) string { return "clinics/north/reminders/" + r.Kind }
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(boundary.SignalOverdose, boundary.Overdose{WarningSign: family + "/warningSigns/w1"})
	}, 2*day)
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: "clinics/north/reminders/BOUNDARY_REMINDER"})
	}, 5*day-30*time.Minute)
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 5*day)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); !temporal.IsCanceledError(err) {
		t.Fatalf("workflow error = %v; want cancelled", err)
	}
	if len(h.kinds("OVERDOSE_ALERT")) != 1 {
		t.Fatalf("overdose alerts %+v; want w1's", h.kinds("OVERDOSE_ALERT"))
	}
	if len(*resent) != 1 {
		t.Fatalf("sent again %v; want the boundary reminder, before the cancel", *resent)
	}
	if took := h.env.Now().Sub(h.t0); took != 5*day {
		t.Fatalf("the run ended %v after it began; want at the cancel, 5 days in", took)
	}
}

// A cancelled run listening for its alerts' failures waits as long as an
// alert can fail, not as long as a member's check-in held for quiet hours
// could have: the tidy-up cancelled that one.
func TestAlertsHeardOutDoNotWaitOnAMembersQuietHours(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.nameFor = func(r activities.ReminderRequest) string { return "clinics/north/reminders/" + r.Kind }
	h.env.OnActivity(flow.A.Resend, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.ResendRequest) (activities.Resent, error) {
			// Held for the member's quiet hours: it can fail until the
			// next evening.
			return activities.Resent{Reminder: "clinics/north/reminders/again", FailsBy: in.Due.Add(20 * time.Hour)}, nil
		})
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: "clinics/north/reminders/BOUNDARY_REMINDER"})
	}, 2*day-30*time.Minute)
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(boundary.SignalOverdose, boundary.Overdose{WarningSign: family + "/warningSigns/w1"})
	}, 2*day)
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 2*day+time.Minute)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); !temporal.IsCanceledError(err) {
		t.Fatalf("workflow error = %v; want cancelled", err)
	}
	if took := h.env.Now().Sub(h.t0); took > 2*day+4*time.Hour {
		t.Fatalf("the run ended %v after it began; want within hours of the cancel, 2 days in", took)
	}
}

// A cancel that comes while an overdose is being answered (its urgent
// referral waits on a referrals service that is down) stops the resends of
// the run's other reminders at once, not once the answer is done: a
// boundary reminder failed before it is not sent after the yes that
// cancelled the run.
func TestACancelDuringAnOverdoseAnswerStopsOtherResends(t *testing.T) {
	h := newHarness(t, "CURRENT")
	resent := h.resends()
	h.nameFor = func(r activities.ReminderRequest) string { return "clinics/north/reminders/" + r.Kind }
	up := h.t0.Add(2*day + 20*time.Minute)
	h.failSupport = func(in activities.SupportRequest) error {
		if in.Urgency == "IMMEDIATE" && h.env.Now().Before(up) {
			return temporal.NewApplicationError("create referral: unavailable", "Unavailable")
		}
		return nil
	}
	// The failure's resend is due at 2d+5m, while the referral is tried.
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: "clinics/north/reminders/BOUNDARY_REMINDER"})
	}, 2*day-10*time.Minute)
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(boundary.SignalOverdose, boundary.Overdose{WarningSign: family + "/warningSigns/w1"})
	}, 2*day+time.Minute)
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 2*day+2*time.Minute)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); !temporal.IsCanceledError(err) {
		t.Fatalf("workflow error = %v; want cancelled", err)
	}
	if len(h.kinds("OVERDOSE_ALERT")) != 1 || h.immediateReferrals()+len(h.kinds("REFERRAL_ESCALATION")) != 1 {
		t.Fatalf("alerts %d, referrals %+v; want the overdose answered, its referral made or put to the counselor",
			len(h.kinds("OVERDOSE_ALERT")), h.support)
	}
	if len(*resent) != 0 {
		t.Fatalf("sent again %v after the cancel; want nothing", *resent)
	}
}

// An overdose is answered while a step is still running (here the first
// support referral, the referrals service slow to answer): its alert does
// not wait up to a day behind a call being retried.
func TestOverdoseIsAnsweredWhileAStepRuns(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.sent = make(chan activities.ReminderRequest, 100)
	duringStep := false
	h.failSupport = func(in activities.SupportRequest) error {
		if in.Urgency != "URGENT" || duringStep {
			return nil
		}
		h.env.SignalWorkflow(boundary.SignalOverdose, boundary.Overdose{WarningSign: family + "/warningSigns/w1"})
		for timeout := time.After(10 * time.Second); ; {
			select {
			case r := <-h.sent:
				if r.Kind == "OVERDOSE_ALERT" {
					duringStep = true
					return nil
				}
			case <-timeout:
				return nil // the step ends without the alert
			}
		}
	}
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, day)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if !duringStep {
		t.Fatal("the overdose was not answered while the support referral ran")
	}
	if alert := h.kinds("OVERDOSE_ALERT"); len(alert) != 1 || alert[0].Related != family+"/warningSigns/w1" {
		t.Fatalf("overdose alerts %+v; want one about w1", alert)
	}
}

// A step that fails the workflow while an overdose waits behind it does
// not leave the overdose unanswered: the failure stands, and the
// counselor is alerted all the same.
func TestOverdoseWaitingAtAFailureIsAnswered(t *testing.T) {
	h := newHarness(t, "HIGH_RISK")
	// As in a run begun before steps listened for overdoses, where the
	// overdose waits behind the step: the failure's own answer is tested.
	// The change is covered since epoch-2026-12-05: the run is one begun
	// at the epoch before, which asks it.
	for _, e := range []string{"epoch-2026-12-07c", "epoch-2026-12-07b", "epoch-2026-12-07", "epoch-2026-12-06c", "epoch-2026-12-06b", "epoch-2026-12-06", "epoch-2026-12-05d", "epoch-2026-12-05c", "epoch-2026-12-05b", "epoch-2026-12-05"} {
		h.env.OnGetVersion(e, workflow.DefaultVersion, 1).Return(workflow.DefaultVersion)
	}
	h.env.OnGetVersion("overdose-during-steps", workflow.DefaultVersion, 1).Return(workflow.DefaultVersion)
	h.refuse = func(activities.ReinforceRequest) error {
		h.env.SignalWorkflow(boundary.SignalOverdose, boundary.Overdose{WarningSign: family + "/warningSigns/w1"})
		return temporal.NewNonRetryableApplicationError("reinforce boundary: refused", "PermissionDenied", nil)
	}
	h.screened("CURRENT", 2*day)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); err == nil || temporal.IsCanceledError(err) {
		t.Fatalf("workflow error = %v; want the refusal", err)
	}
	if alert := h.kinds("OVERDOSE_ALERT"); len(alert) != 1 || alert[0].Related != family+"/warningSigns/w1" {
		t.Fatalf("overdose alerts %+v; want one about w1", alert)
	}
}

// The alert goes first: a harm-reduction referral that cannot be made
// does not hold it back nor end the workflow; the counselor is asked to
// make it by hand.
func TestOverdoseAlertGoesFirstAndAFailedReferralIsPutToTheCounselor(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.failSupport = func(in activities.SupportRequest) error {
		if in.Urgency == "IMMEDIATE" {
			return temporal.NewNonRetryableApplicationError("program deleted", "PROGRAM_DELETED", nil)
		}
		return nil
	}
	h.runWithOverdoseOnDay3(t)
	if alert := h.kinds("OVERDOSE_ALERT"); len(alert) != 1 || alert[0].Due.Sub(h.t0) != 3*day {
		t.Fatalf("overdose alerts %+v; want one on day 3", alert)
	}
	var byHand []activities.ReminderRequest
	for _, r := range h.kinds("REFERRAL_ESCALATION") {
		if strings.Contains(r.Message, "could not be made") {
			byHand = append(byHand, r)
		}
	}
	if len(byHand) != 1 || byHand[0].To.ID != "counselor-1" {
		t.Fatalf("notices of the failed referral %+v; want one to counselor-1", byHand)
	}
}

// A check-in delivered again after a restart (the outbox delivers at least
// once) is not taken twice: it escalated the first cycle, and must not
// propose the next meeting of the new one.
func TestCheckInDeliveredAgainAfterARestartIsTakenOnce(t *testing.T) {
	h := newHarness(t, "CURRENT")
	window := boundary.CheckIn{Intervention: iv, Number: 1, WindowOfOpportunity: true}
	h.env.RegisterDelayedCallback(func() { h.env.SignalWorkflow(boundary.SignalCheckIn, window) }, 2*day)
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(boundary.SignalRestart, boundary.Restart{Intervention: "clinics/north/interventions/i2", Level: 2, Outcome: "DECLINED"})
	}, 5*day)
	h.env.RegisterDelayedCallback(func() { h.env.SignalWorkflow(boundary.SignalCheckIn, window) }, 6*day)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	var at []time.Duration
	for _, r := range h.kinds("ESCALATION_PROPOSED") {
		at = append(at, r.Due.Sub(h.t0))
	}
	// Day 2 for the check-in; day 19, the cool-down after the restart on
	// day 5, for the new cycle, not day 6 for the same check-in again.
	if len(at) != 2 || at[0] != 2*day || at[1] != 19*day {
		t.Fatalf("escalations at %v; want days 2 and 19", at)
	}
}

// A check-in of a meeting refused while the workflow runs, recorded before
// that meeting's restart arrives, is that meeting's: the running cycle does
// not escalate on it, and the restarted cycle takes it as its own, at once.
func TestCheckInBeforeARestartIsTheNextMeetingsOwn(t *testing.T) {
	for _, deliveries := range []int{1, 2} {
		checkInBeforeARestart(t, deliveries)
	}
}

// checkInBeforeARestart runs TestCheckInBeforeARestartIsTheNextMeetingsOwn
// with the check-in delivered that many times (the outbox redelivers).
func checkInBeforeARestart(t *testing.T, deliveries int) {
	h := newHarness(t, "CURRENT")
	const next = "clinics/north/interventions/i2"
	for i := range deliveries {
		h.env.RegisterDelayedCallback(func() {
			h.env.SignalWorkflow(boundary.SignalCheckIn, boundary.CheckIn{Intervention: next, Number: 1, WindowOfOpportunity: true})
		}, 2*day+time.Duration(i)*time.Minute)
	}
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(boundary.SignalRestart, boundary.Restart{Intervention: next, Level: 2, Outcome: "DECLINED"})
	}, 2*day+time.Hour)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if len(h.proposed) == 0 || h.proposed[0].Previous != next {
		t.Fatalf("delivered %d times: proposed %+v; want the first proposal to follow %s, the meeting the check-in was recorded on", deliveries, h.proposed, next)
	}
	if at := h.kinds("ESCALATION_PROPOSED")[0].Due.Sub(h.t0); at < 2*day+time.Hour || at >= 3*day {
		t.Fatalf("delivered %d times: first escalation at %v; want it at the restart, day 2", deliveries, at)
	}
}

// runWithOverdoseOnDay3 runs a level-1 refusal's workflow with warning
// sign w1, an overdose, signalled on day 3, and requires it to succeed.
// days are the days, from the start, the reminders of kind were sent on.
func (h *harness) days(kind string) []time.Duration {
	var out []time.Duration
	for _, r := range h.kinds(kind) {
		out = append(out, r.Due.Sub(h.t0)/day)
	}
	return out
}

func (h *harness) runWithOverdoseOnDay3(t *testing.T) {
	t.Helper()
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(boundary.SignalOverdose, boundary.Overdose{WarningSign: family + "/warningSigns/w1"})
	}, 3*day)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
}

// ARISE's level 2 is a series: a refused level 2 meeting leads to another
// level 2 meeting until the family has held five, and only then to a
// formal one (which waits for a consequence, as ever). A refused level 1
// meeting does not count meetings.
func TestLevelTwoIsASeries(t *testing.T) {
	for _, c := range []struct {
		level, held int
		want        int32
		asked       bool
	}{{1, 0, 2, false}, {2, 1, 2, true}, {2, 4, 2, true}, {2, 5, 3, true}} {
		h := newHarness(t, "CURRENT")
		h.levelTwoHeld = c.held
		h.env.ExecuteWorkflow(boundary.Name, input(int32(c.level)))
		var res boundary.Result
		if err := h.env.GetWorkflowResult(&res); err != nil {
			t.Fatal(err)
		}
		if len(h.proposed) != 1 || h.proposed[0].Level != c.want {
			t.Fatalf("after level %d with %d level 2 meetings held: proposed %+v; want one at level %d", c.level, c.held, h.proposed, c.want)
		}
		if asked := len(h.meetingsAsked) > 0; asked != c.asked || asked && h.meetingsAsked[0] != (activities.MeetingsRequest{Family: family, Level: 2}) {
			t.Fatalf("after level %d: meetings counted %+v; want counted: %v", c.level, h.meetingsAsked, c.asked)
		}
		if series := strings.Contains(h.proposed[0].Notes, "has held"); series != (c.level == 2 && c.want == 2) {
			t.Fatalf("after level %d with %d held: notes %q", c.level, c.held, h.proposed[0].Notes)
		}
	}
}

// A family with no contact person who agreed to be contacted can be
// referred to no support: the counselor is told so, once, and the loved
// one's harm reduction is referred all the same.
func TestNoContactPersonIsPutToTheCounselor(t *testing.T) {
	for _, contact := range []string{"", "mom"} {
		h := newHarness(t, "CURRENT")
		h.safety.ContactPerson = contact
		h.env.ExecuteWorkflow(boundary.Name, input(1))
		var res boundary.Result
		if err := h.env.GetWorkflowResult(&res); err != nil {
			t.Fatal(err)
		}
		var told []activities.ReminderRequest
		for _, r := range h.kinds("REFERRAL_ESCALATION") {
			if strings.Contains(r.Message, "not referred to support") {
				told = append(told, r)
			}
		}
		members := 0
		for _, s := range h.support {
			if s.Member != "" {
				members++
			}
		}
		if contact == "" && (len(told) != 1 || told[0].To.Kind != "counselor" || members != 0) {
			t.Fatalf("no contact person: counselor told %+v, member referrals %d; want one notice, none made", told, members)
		}
		if contact != "" && (len(told) != 0 || members != 1) {
			t.Fatalf("a contact person: notices %+v, member referrals %d; want none, and hers", told, members)
		}
		if len(h.support)-members == 0 {
			t.Fatalf("contact %q: no harm-reduction referral", contact)
		}
	}
}

// New warning signs reported at a check-in are the time to intervene: the
// next meeting is proposed then, as for a window of opportunity, not after
// the cool-down, and the draft says why. A check-in reporting neither
// waits for the cool-down.
func TestNewWarningSignsAtACheckInEscalate(t *testing.T) {
	for _, signs := range []bool{true, false} {
		h := newHarness(t, "CURRENT")
		h.env.RegisterDelayedCallback(func() {
			h.env.SignalWorkflow(boundary.SignalCheckIn, boundary.CheckIn{Intervention: iv, Number: 1, NewWarningSigns: signs})
		}, 2*day)
		h.env.ExecuteWorkflow(boundary.Name, input(1))
		if err := h.env.GetWorkflowError(); err != nil {
			t.Fatal(err)
		}
		p := h.kinds("ESCALATION_PROPOSED")
		if len(h.proposed) != 1 || len(p) != 1 {
			t.Fatalf("signs %v: proposed %+v, notices %+v; want one", signs, h.proposed, p)
		}
		if early := p[0].Due.Sub(h.t0) == 2*day; early != signs {
			t.Fatalf("signs %v: proposed on %v after the start", signs, p[0].Due.Sub(h.t0))
		}
		if signs && !strings.Contains(h.proposed[0].Notes, "new warning signs at check-in 1") {
			t.Fatalf("notes %q do not say why", h.proposed[0].Notes)
		}
	}
}

// The family's case is closed while the workflow runs (the FamilyClosed
// workflow's cancel missed it, or has yet to come): the proposal of the
// next meeting is refused FAMILY_CLOSED, and the workflow ends as done,
// cancelling its own reminders still to go, rather than fail, and the
// meeting's workflow with it.
func TestFamilyClosedMidwayEndsQuietly(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.closed = true
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	var res boundary.Result
	if err := h.env.GetWorkflowResult(&res); err != nil {
		t.Fatalf("workflow error = %v; want it ended", err)
	}
	if res.Summary != boundary.SummaryFamilyClosed || res.Proposed != "" {
		t.Fatalf("result %+v; want the family closed, nothing proposed", res)
	}
	if len(h.cancelled) != 1 || h.cancelled[0].Origin == "" {
		t.Fatalf("cancellations %+v; want the workflow's own reminders cancelled", h.cancelled)
	}
}

// The family's case is closed, or its loved one enters treatment (the
// cancel from TreatmentEntered missed), between two check-ins: the read
// before the next one shows it, and the workflow ends as done, sending
// nothing more.
func TestFamilyClosedOrInTreatmentBeforeACheckInEndsQuietly(t *testing.T) {
	for _, c := range []struct {
		summary string
		set     func(*activities.Safety)
	}{
		{boundary.SummaryFamilyClosed, func(s *activities.Safety) { s.Closed = true }},
		{boundary.SummaryInTreatment, func(s *activities.Safety) { s.InTreatment = true }},
	} {
		t.Run(c.summary, func(t *testing.T) {
			h := newHarness(t, "CURRENT")
			h.env.RegisterDelayedCallback(func() { c.set(&h.safety) }, 3*day)
			h.env.ExecuteWorkflow(boundary.Name, input(1))
			var res boundary.Result
			if err := h.env.GetWorkflowResult(&res); err != nil {
				t.Fatalf("workflow error = %v; want it ended", err)
			}
			if res.Summary != c.summary || res.CheckIns != 1 || len(h.proposed) != 0 {
				t.Fatalf("result %+v, proposed %v; want it ended after the first check-in, nothing proposed", res, h.proposed)
			}
			for _, r := range h.reminders {
				if r.Due.After(h.t0.Add(3 * day)) {
					t.Fatalf("a reminder sent after the read that ends it: %+v", r)
				}
			}
		})
	}
}

// A follow-up started for a family whose loved one is already in treatment
// (the refusal recorded after TreatmentEntered ran, which cancels only a
// run under way) reinforces no boundary, checks in with no one and
// proposes nothing: it ends as done at its first read of the family.
func TestFollowUpOfAFamilyInTreatmentEndsQuietly(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.safety.InTreatment = true
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	var res boundary.Result
	if err := h.env.GetWorkflowResult(&res); err != nil {
		t.Fatalf("workflow error = %v; want it ended", err)
	}
	if res.Summary != boundary.SummaryInTreatment || len(h.reinforces) != 0 || len(h.proposed) != 0 || len(h.reminders) != 0 {
		t.Fatalf("result %+v, reinforced %v, proposed %v, reminders %v; want it ended, nothing done", res, h.reinforces, h.proposed, h.reminders)
	}
}

// Staff record the treatment entry after the follow-up read the family
// (its cancel still in the outbox): the families service refuses the
// reinforcement FAMILY_IN_TREATMENT, and the run ends as done, not failed,
// proposing nothing.
func TestReinforcementRefusedInTreatmentEndsQuietly(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.refuse = func(activities.ReinforceRequest) error {
		return temporal.NewNonRetryableApplicationError("reinforce boundary: in treatment", activities.FamilyInTreatment, nil)
	}
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	var res boundary.Result
	if err := h.env.GetWorkflowResult(&res); err != nil {
		t.Fatalf("workflow error = %v; want it ended", err)
	}
	if res.Summary != boundary.SummaryInTreatment || len(h.reinforced) != 0 || len(h.proposed) != 0 {
		t.Fatalf("result %+v, reinforced %v, proposed %v; want it ended in treatment, nothing done", res, h.reinforced, h.proposed)
	}
}

// Signals that do not decode (sent from a tool without the codec, or
// sealed under a key this worker lacks) are dropped, and the follow-up
// goes on: its check-ins come on time and a real overdose is answered.
// Before, the handler waited for the next signal on the same channel,
// deaf to the check-in timers and to every other signal.
func TestUndecodableSignalsLeaveTheFollowUpGoing(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.env.SetTestTimeout(time.Minute) // the old code waited for good
	for i, name := range []string{boundary.SignalCheckIn, boundary.SignalOverdose, boundary.SignalRestart} {
		h.env.RegisterDelayedCallback(func() { h.env.SignalWorkflow(name, "not a payload") }, time.Duration(i+1)*6*time.Hour)
	}
	h.runWithOverdoseOnDay3(t)
	var checkIns []time.Duration
	for _, r := range h.kinds("CHECK_IN") {
		if r.To.Kind == "counselor" {
			checkIns = append(checkIns, r.Due.Sub(h.t0))
		}
	}
	if len(checkIns) == 0 || checkIns[0] != day {
		t.Fatalf("counselor check-ins at %v; want the first at day 1", checkIns)
	}
	if alert := h.kinds("OVERDOSE_ALERT"); len(alert) != 1 || alert[0].Due.Sub(h.t0) > 3*day+5*time.Minute {
		t.Fatalf("overdose alert = %+v; want one within five minutes of day 3", alert)
	}
}

// One that comes as the follow-up listens at its end, with nothing left
// to wait for, lets it end: before, it waited for another signal.
func TestUndecodableSignalAtTheEndLetsTheFollowUpEnd(t *testing.T) {
	h := newHarness(t, "CURRENT")
	h.env.SetTestTimeout(time.Minute)
	h.env.RegisterDelayedCallback(func() { h.env.SignalWorkflow(boundary.SignalCheckIn, "not a payload") }, 30*day+time.Minute)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	var res boundary.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.CheckIns != 3 {
		t.Fatalf("result %+v, %v; want the follow-up ended after its three check-ins", res, err)
	}
}

// A check-in whose reminder cannot be made (refused for good, or failing
// through a day of retries) is gone without: the follow-up goes on to the
// next check-in and the next meeting, where it used to end. A refusal that
// says the follow-up is over still ends it.
func TestAFailedCheckInDoesNotEndTheFollowUp(t *testing.T) {
	h := newHarness(t, "CURRENT")
	counselorCheckIns := 0
	h.failReminder = func(r activities.ReminderRequest) error {
		if r.Kind == "CHECK_IN" && r.To.Kind == "counselor" {
			// Day 7's: refused for good, for a reason flow.Remind does
			// not skip.
			if counselorCheckIns++; counselorCheckIns == 2 {
				return temporal.NewNonRetryableApplicationError("create reminder: refused", "FailedPrecondition", nil)
			}
		}
		if r.Kind == "CHECK_IN" && r.To.ID == "mom" && counselorCheckIns == 1 {
			return temporal.NewApplicationError("create reminder: deadline exceeded", "DeadlineExceeded") // retried, then gone
		}
		return nil
	}
	h.env.SetTestTimeout(time.Minute)
	h.env.ExecuteWorkflow(boundary.Name, input(1))
	var res boundary.Result
	if err := h.env.GetWorkflowResult(&res); err != nil {
		t.Fatalf("workflow error = %v; want the follow-up to go on", err)
	}
	var at []time.Duration
	for _, r := range h.kinds("CHECK_IN") {
		if r.To.Kind == "counselor" {
			at = append(at, r.Due.Sub(h.t0))
		}
	}
	if len(at) != 2 || at[0] != day || at[1] != 30*day {
		t.Fatalf("counselor check-ins made at %v; want days 1 and 30, the one of day 7 gone without", at)
	}
	if len(h.proposed) != 1 {
		t.Fatalf("proposed %+v; want the next meeting still proposed", h.proposed)
	}
	if !h.logs.logged("check-in reminder could not be made") {
		t.Fatalf("errors logged %q; want the check-ins gone without", h.logs.errs)
	}

	closed := newHarness(t, "CURRENT")
	closed.failReminder = func(r activities.ReminderRequest) error {
		if r.Kind == "CHECK_IN" {
			return temporal.NewNonRetryableApplicationError("create reminder: closed", activities.FamilyClosed, nil)
		}
		return nil
	}
	closed.env.ExecuteWorkflow(boundary.Name, input(1))
	if err := closed.env.GetWorkflowResult(&res); err != nil || res.Summary != boundary.SummaryFamilyClosed {
		t.Fatalf("a check-in refused as the family closed: %+v, %v; want the follow-up ended as closed", res, err)
	}
}
