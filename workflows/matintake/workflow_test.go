package matintake_test

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
	"github.com/handoff-health/handoff/workflows/flow"
	"github.com/handoff-health/handoff/workflows/flowtest"
	"github.com/handoff-health/handoff/workflows/matintake"
)

const (
	iv     = "clinics/north/interventions/i1"
	family = "clinics/north/families/f1"
)

type harness struct {
	env       *testsuite.TestWorkflowEnvironment
	log       *warnings
	reminders []activities.ReminderRequest
	requests  []activities.ImmediateRequest
	support   []activities.SupportRequest
	status    map[string]activities.ReferralInfo
	// cancelled are the CancelReminders requests, with the time of each.
	cancelled []activities.CancelRemindersRequest
	cancelAt  []time.Time
	// held are the ReleaseHeldFor calls, made at heldAt, each failing
	// with heldErr when set.
	held    []activities.ReleaseHeldRequest
	heldAt  []time.Time
	heldErr error
	// counselor is the family's counselor now, if reassigned.
	counselor activities.Person
	// counselorDown makes FamilyCounselor fail as an outage does.
	counselorDown bool
	// statusErr, when set, is what every ReferralStatus call fails with;
	// supportErr every CreateSupportReferrals call.
	statusErr, supportErr error
	// failKind makes every reminder of that kind fail for good.
	failKind string
	// contacts, when set, are the family's contacts in place of the
	// loved one and mom in Chicago, neither keeping quiet hours.
	contacts []activities.Person
	// adopted makes the referrals handed out ones made before the intake.
	adopted bool
	// reads counts the ReferralStatus calls.
	reads int
}

// warnings is the workflows' logger in these tests: it keeps the warnings
// and passes every line on to the test's log.
type warnings struct {
	t    *testing.T
	seen []string // the warnings
	errs []string // the errors
}

func (w *warnings) line(level, msg string, kv []any) { w.t.Log(append([]any{level, msg}, kv...)...) }
func (w *warnings) Debug(msg string, kv ...any)      { w.line("DEBUG", msg, kv) }
func (w *warnings) Info(msg string, kv ...any)       { w.line("INFO", msg, kv) }
func (w *warnings) Error(msg string, kv ...any) {
	w.errs = append(w.errs, msg)
	w.line("ERROR", msg, kv)
}
func (w *warnings) Warn(msg string, kv ...any) {
	w.seen = append(w.seen, msg)
	w.line("WARN", msg, kv)
}

func newHarness(t *testing.T) *harness {
	var suite testsuite.WorkflowTestSuite
	logs := &warnings{t: t}
	suite.SetLogger(logs)
	env := suite.NewTestWorkflowEnvironment()
	env.SetStartTime(time.Date(2037, 12, 7, 15, 0, 0, 0, time.UTC))
	env.RegisterWorkflowWithOptions(matintake.Workflow, workflow.RegisterOptions{Name: matintake.Name})
	env.RegisterActivity(&activities.Activities{})
	h := &harness{env: env, log: logs, status: map[string]activities.ReferralInfo{}}
	env.OnActivity(flow.A.LoadSettings, mock.Anything, "north").Return(activities.DefaultSettings(), nil)
	env.OnActivity(flow.A.FamilyContacts, mock.Anything, family).Return(func(context.Context, string) ([]activities.Person, error) {
		if h.contacts != nil {
			return h.contacts, nil
		}
		return []activities.Person{
			{Kind: "loved_one", Family: family, Channel: "SMS", TimeZone: "America/Chicago"},
			{Kind: "member", ID: "mom", Family: family, Channel: "SMS", TimeZone: "America/Chicago"},
		}, nil
	})
	env.OnActivity(flow.A.SendReminder, mock.Anything, mock.Anything).Return(
		func(_ context.Context, r activities.ReminderRequest) (string, error) {
			flowtest.Sendable(t, r.Message)
			if r.Kind == h.failKind {
				return "", temporal.NewNonRetryableApplicationError("the interventions service failed", "Internal", nil)
			}
			if r.Due.IsZero() || r.Due.Before(env.Now()) {
				r.Due = env.Now()
			}
			h.reminders = append(h.reminders, r)
			return fmt.Sprintf("clinics/north/reminders/r%d", len(h.reminders)-1), nil
		})
	env.OnActivity(flow.A.CreateSupportReferrals, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.SupportRequest) ([]string, error) {
			h.support = append(h.support, in)
			if h.supportErr != nil {
				return nil, h.supportErr
			}
			return []string{"clinics/north/referrals/support"}, nil
		})
	env.OnActivity(flow.A.CancelReminders, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.CancelRemindersRequest) (int, error) {
			h.cancelled = append(h.cancelled, in)
			h.cancelAt = append(h.cancelAt, env.Now())
			return 1, nil
		})
	env.OnActivity(flow.A.ReleaseHeldFor, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.ReleaseHeldRequest) (int, error) {
			h.held = append(h.held, in)
			h.heldAt = append(h.heldAt, env.Now())
			return 1, h.heldErr
		})
	env.OnActivity(flow.A.ReferralStatus, mock.Anything, mock.Anything).Return(
		func(_ context.Context, name string) (activities.ReferralInfo, error) {
			h.reads++
			return h.status[name], h.statusErr
		})
	env.OnActivity(flow.A.FamilyCounselor, mock.Anything, family, mock.Anything).Return(
		func(_ context.Context, _ string, fallback activities.Person) (activities.Person, error) {
			if h.counselorDown {
				return activities.Person{}, temporal.NewApplicationError("read family: unavailable", "Unavailable")
			}
			if h.counselor.ID != "" {
				return h.counselor, nil
			}
			return fallback, nil
		})
	return h
}

// programs hands out referrals at p1, p2, p3 ... and then none.
func (h *harness) programs(n int) {
	h.env.OnActivity(flow.A.StartImmediateReferral, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.ImmediateRequest) (activities.Referral, error) {
			h.requests = append(h.requests, in)
			i := len(h.requests)
			if i > n {
				return activities.Referral{}, temporal.NewNonRetryableApplicationError("none", "NO_PROGRAM", errors.New("none"))
			}
			return activities.Referral{Name: fmt.Sprintf("clinics/north/referrals/r%d", i), Program: fmt.Sprintf("clinics/north/programs/p%d", i),
				Adopted: h.adopted}, nil
		})
}

// transition sets what the referrals service would answer and signals it.
func (h *harness) transition(at time.Duration, ref string, info activities.ReferralInfo) {
	h.env.RegisterDelayedCallback(func() {
		h.status[ref] = info
		h.env.SignalWorkflow(matintake.SignalReferral, matintake.Transition{Referral: ref, State: info.State})
	}, at)
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

// holdNotices are the counselor's notices of an intake on hold, in order.
func (h *harness) holdNotices() []activities.ReminderRequest { return h.escalations("on hold") }

// escalations are the counselor's REFERRAL_ESCALATION notices that say
// phrase.
func (h *harness) escalations(phrase string) []activities.ReminderRequest {
	var out []activities.ReminderRequest
	for _, r := range h.kinds("REFERRAL_ESCALATION") {
		if strings.Contains(r.Message, phrase) {
			out = append(out, r)
		}
	}
	return out
}

// holdNoticeTimes are when the hold notices were due, from start.
func (h *harness) holdNoticeTimes(start time.Time) []time.Duration {
	return h.escalationTimes("on hold", start)
}

// escalationTimes are when the notices saying phrase were due, from start,
// to the hour.
func (h *harness) escalationTimes(phrase string, start time.Time) []time.Duration {
	var at []time.Duration
	for _, r := range h.escalations(phrase) {
		at = append(at, r.Due.Sub(start).Round(time.Hour))
	}
	return at
}

func input() matintake.Input {
	return matintake.Input{Intervention: iv, Family: family, Clinic: "north", Hold: "clinics/north/holds/h1",
		Counselor: activities.Person{Kind: "counselor", ID: "counselor-1", Channel: "IN_APP"}}
}

// Three programs turn the person down in turn: each time the next match is
// taken, never one already tried, and after the last the counselor is told.
func TestRejectionCascadeAcrossThreePrograms(t *testing.T) {
	h := newHarness(t)
	h.programs(5)
	for i := 1; i <= 3; i++ {
		h.transition(time.Duration(i)*time.Hour, fmt.Sprintf("clinics/north/referrals/r%d", i), activities.ReferralInfo{State: "REJECTED"})
	}
	in := input()
	in.Medications = []string{"MAT_NALTREXONE"}
	h.env.ExecuteWorkflow(matintake.Name, in)
	var res matintake.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "ESCALATED" || res.Programs != 3 {
		t.Fatalf("result %+v, %v", res, err)
	}
	if len(h.requests) != 3 || h.requests[0].Hold == "" || h.requests[1].Hold != "" {
		t.Fatalf("requests = %+v: the held slot goes first, then fresh matches", h.requests)
	}
	for i, r := range h.requests {
		if fmt.Sprint(r.Medications) != "[MAT_NALTREXONE]" {
			t.Fatalf("request %d for %v; want the medication agreed to", i, r.Medications)
		}
	}
	if got := h.requests[2].Exclude; len(got) != 2 || got[0] != "clinics/north/programs/p1" || got[1] != "clinics/north/programs/p2" {
		t.Fatalf("third match excluded %v", got)
	}
	if len(h.kinds("REFERRAL_ESCALATION")) != 1 {
		t.Fatalf("reminders = %+v", h.reminders)
	}
}

// The counselor's notice that the intake failed is sent again if its
// delivery fails, as an escalation's is: the workflow listens for it
// before it ends, and still ends on the failure.
func TestFailedFailureNoticeIsResent(t *testing.T) {
	h := newHarness(t)
	resent := h.resends()
	final := temporal.NewNonRetryableApplicationError("refused", "FailedPrecondition", errors.New("refused"))
	h.env.OnActivity(flow.A.StartImmediateReferral, mock.Anything, mock.Anything).Return(activities.Referral{}, final)
	const notice = "clinics/north/reminders/r0" // the only reminder sent
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: notice})
	}, 20*time.Minute)
	h.env.ExecuteWorkflow(matintake.Name, input())
	if err := h.env.GetWorkflowError(); err == nil || temporal.IsCanceledError(err) {
		t.Fatalf("workflow error %v; want the failure", err)
	}
	if told := h.kinds("REFERRAL_ESCALATION"); len(told) != 1 || !strings.Contains(told[0].Message, "stopped on an error") {
		t.Fatalf("notices %+v; want the one of the failure", told)
	}
	if len(*resent) != 1 || (*resent)[0] != notice {
		t.Fatalf("resent %v; want the failed notice %q", *resent, notice)
	}
}

// An escalation whose delivery fails is sent again: the workflow listens
// for its failures before it ends.
func TestFailedEscalationIsResent(t *testing.T) {
	h := newHarness(t)
	h.programs(0)
	resent := h.resends()
	var escalation string
	h.env.RegisterDelayedCallback(func() {
		if e := h.kinds("REFERRAL_ESCALATION"); len(e) == 1 {
			escalation = "clinics/north/reminders/r0" // the only reminder sent
		}
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: escalation})
	}, 20*time.Minute)
	h.env.ExecuteWorkflow(matintake.Name, input())
	var res matintake.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "ESCALATED" {
		t.Fatalf("result %+v, %v", res, err)
	}
	if escalation == "" || len(*resent) != 1 || (*resent)[0] != escalation {
		t.Fatalf("resent %v; want the failed escalation %q", *resent, escalation)
	}
}

// An escalated intake cancelled while it listens for the escalation's
// failures ends ESCALATED: the parent meeting's workflow keeps the
// escalation in its result.
func TestCancelWhileListeningAfterEscalationKeepsIt(t *testing.T) {
	h := newHarness(t)
	h.programs(0)
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 20*time.Minute)
	h.env.ExecuteWorkflow(matintake.Name, input())
	var res matintake.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "ESCALATED" {
		t.Fatalf("result %+v, %v; want ESCALATED", res, err)
	}
	if e := h.kinds("REFERRAL_ESCALATION"); len(e) != 1 {
		t.Fatalf("escalations %+v; want the counselor told once", e)
	}
}

// A person the program admits on the spot (a walk-in, a same-day warm
// handoff) goes from ACCEPTED to COMPLETED with no appointment between:
// they entered treatment, nobody is reminded of an intake, and the family
// is referred to support.
func TestAdmittedOnTheSpot(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	const r1 = "clinics/north/referrals/r1"
	h.transition(time.Hour, r1, activities.ReferralInfo{State: "ACCEPTED"})
	h.transition(3*time.Hour, r1, activities.ReferralInfo{State: "COMPLETED", DaysToTreatment: 0})
	h.env.ExecuteWorkflow(matintake.Name, input())
	var res matintake.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "ENTERED_TREATMENT" {
		t.Fatalf("result %+v, %v; want ENTERED_TREATMENT", res, err)
	}
	if up := h.kinds("INTAKE_UPCOMING"); len(up) != 0 {
		t.Fatalf("intake reminders %+v; want none, there was no appointment", up)
	}
	if len(h.support) != 1 || h.support[0].Member != "mom" {
		t.Fatalf("family support = %+v", h.support)
	}
}

// A no-show brings re-engagement and a rebooking; the second appointment is
// kept, the person enters treatment, and the family is referred to support.
func TestNoShowThenRebookingThenTreatment(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	const r1 = "clinics/north/referrals/r1"
	start := h.env.Now()
	appt1 := start.Add(20 * time.Hour)
	appt2 := start.Add(50 * time.Hour)
	h.transition(time.Hour, r1, activities.ReferralInfo{State: "ACCEPTED"})
	h.transition(2*time.Hour, r1, activities.ReferralInfo{State: "SCHEDULED", Appointment: appt1})
	h.transition(21*time.Hour, r1, activities.ReferralInfo{State: "NO_SHOW", NoShows: 1})
	h.transition(23*time.Hour, r1, activities.ReferralInfo{State: "SCHEDULED", Appointment: appt2, NoShows: 1})
	h.transition(51*time.Hour, r1, activities.ReferralInfo{State: "COMPLETED", NoShows: 1, DaysToTreatment: 9})
	h.env.ExecuteWorkflow(matintake.Name, input())
	var res matintake.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "ENTERED_TREATMENT" || res.DaysToTreatment != 9 {
		t.Fatalf("result %+v, %v", res, err)
	}
	re := h.kinds("REENGAGEMENT")
	if len(re) != 1 || re[0].Due.After(start.Add(21*time.Hour+24*time.Hour)) {
		t.Fatalf("re-engagement = %+v", re)
	}
	// Intake reminders to the loved one: at once for the first appointment
	// (its 24 h mark had passed) and 2 h before it; then 24 h and 2 h before
	// the rebooked one.
	var at []time.Time
	for _, r := range h.kinds("INTAKE_UPCOMING") {
		if r.To.Kind == "loved_one" {
			at = append(at, r.Due)
		}
	}
	want := []time.Time{start.Add(2 * time.Hour), appt1.Add(-2 * time.Hour), appt2.Add(-24 * time.Hour), appt2.Add(-2 * time.Hour)}
	if fmt.Sprint(at) != fmt.Sprint(want) {
		t.Fatalf("intake reminders to the loved one at %v, want %v", at, want)
	}
	if len(h.support) != 1 || h.support[0].Member != "mom" || h.support[0].Kinds[0] != "FAMILY_COUNSELING" {
		t.Fatalf("family support = %+v", h.support)
	}
	// No intake within 72 h of acceptance? It happened at 51 h: no alert.
	if len(h.kinds("INTAKE_OVERDUE")) != 0 {
		t.Fatal("intake happened within 72 h; no alert is due")
	}
}

// upcomingTo is the name of the nth (from 0) intake reminder to the loved
// one, or "".
func (h *harness) upcomingTo(n int) string {
	for i, r := range h.reminders {
		if r.Kind == "INTAKE_UPCOMING" && r.To.Kind == "loved_one" {
			if n == 0 {
				return fmt.Sprintf("clinics/north/reminders/r%d", i)
			}
			n--
		}
	}
	return ""
}

// A failed intake reminder is sent again while its appointment stands, and
// not once the appointment has been rebooked.
func TestStaleIntakeRemindersAreNotResent(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	const r1 = "clinics/north/referrals/r1"
	start := h.env.Now()
	resent := h.resends()
	h.transition(time.Hour, r1, activities.ReferralInfo{State: "ACCEPTED"})
	h.transition(2*time.Hour, r1, activities.ReferralInfo{State: "SCHEDULED", Appointment: start.Add(20 * time.Hour)})
	var first, second string
	h.env.RegisterDelayedCallback(func() { // the reminder sent at once for the first appointment
		first = h.upcomingTo(0)
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: first})
	}, 3*time.Hour)
	h.env.RegisterDelayedCallback(func() { // the one 2 h before it
		second = h.upcomingTo(1)
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: second})
	}, 18*time.Hour+30*time.Minute)
	h.transition(18*time.Hour+40*time.Minute, r1, activities.ReferralInfo{State: "SCHEDULED", Appointment: start.Add(50 * time.Hour)})
	h.transition(51*time.Hour, r1, activities.ReferralInfo{State: "COMPLETED", DaysToTreatment: 3})
	h.env.ExecuteWorkflow(matintake.Name, input())
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if first == "" || second == "" || first == second {
		t.Fatalf("reminders to fail: %q, %q", first, second)
	}
	if len(*resent) != 1 || (*resent)[0] != first {
		t.Fatalf("resent %v; want only %s (its appointment still stood)", *resent, first)
	}
}

// An intake booked at 22:00 for 10:00 tomorrow, Chicago time, while the
// person is quiet until 08:00, reminds them once, at 08:00: the late
// reminder would wait for the end of their quiet hours and go out with the
// two hours' one.
func TestShortNoticeIntakeInQuietHoursRemindsOnce(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	h.contacts = []activities.Person{{Kind: "loved_one", Family: family, Channel: "SMS", TimeZone: "America/Chicago", QuietStart: "21:00", QuietEnd: "08:00"}}
	chicago := mustZone(t, "America/Chicago")
	start := h.env.Now() // 09:00 in Chicago
	const r1 = "clinics/north/referrals/r1"
	booked := time.Date(2037, 12, 7, 22, 0, 0, 0, chicago)
	appointment := time.Date(2037, 12, 8, 10, 0, 0, 0, chicago)
	h.transition(time.Hour, r1, activities.ReferralInfo{State: "ACCEPTED"})
	h.transition(booked.Sub(start), r1, activities.ReferralInfo{State: "SCHEDULED", Appointment: appointment})
	h.transition(appointment.Sub(start)+time.Hour, r1, activities.ReferralInfo{State: "COMPLETED", DaysToTreatment: 1})
	h.env.ExecuteWorkflow(matintake.Name, input())
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	eight := time.Date(2037, 12, 8, 8, 0, 0, 0, chicago)
	var due []time.Time
	for _, r := range h.kinds("INTAKE_UPCOMING") {
		due = append(due, r.Due)
	}
	if len(due) != 1 || !due[0].Equal(eight) {
		t.Fatalf("intake reminders due at %v; want one, at 08:00 Chicago (%v)", due, eight.UTC())
	}
}

// Intake reminders already created for an appointment that moved, or for
// one that was missed, are cancelled: one still waiting for the end of
// quiet hours must not name the old time. A referral without reminders
// sent has none to cancel.
func TestStaleIntakeRemindersAreCancelled(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	const r1 = "clinics/north/referrals/r1"
	start := h.env.Now()
	h.transition(time.Hour, r1, activities.ReferralInfo{State: "ACCEPTED"})
	h.transition(2*time.Hour, r1, activities.ReferralInfo{State: "SCHEDULED", Appointment: start.Add(20 * time.Hour)})
	h.transition(3*time.Hour, r1, activities.ReferralInfo{State: "SCHEDULED", Appointment: start.Add(50 * time.Hour)})
	h.transition(51*time.Hour, r1, activities.ReferralInfo{State: "NO_SHOW", NoShows: 1})
	h.transition(52*time.Hour, r1, activities.ReferralInfo{State: "SCHEDULED", Appointment: start.Add(100 * time.Hour), NoShows: 1})
	h.transition(101*time.Hour, r1, activities.ReferralInfo{State: "COMPLETED", DaysToTreatment: 4, NoShows: 1})
	h.env.ExecuteWorkflow(matintake.Name, input())
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	// At 3 h the first appointment moved (its 24 h reminder went out at
	// once); at 51 h the second was missed. The third was kept after its
	// time: nothing of it can still be waiting.
	want := []time.Duration{3 * time.Hour, 51 * time.Hour}
	if len(h.cancelled) != len(want) {
		t.Fatalf("cancelled %d times (%+v), want %d", len(h.cancelled), h.cancelled, len(want))
	}
	for i, c := range h.cancelled {
		if c.Related != r1 || c.Kind != "INTAKE_UPCOMING" || h.cancelAt[i].Sub(start) != want[i] {
			t.Fatalf("cancel %d = %+v at %v, want intake reminders of %s at %v", i, c, h.cancelAt[i].Sub(start), r1, want[i])
		}
	}
	if h.cancelled[0].RequestID == h.cancelled[1].RequestID {
		t.Fatal("two cancellations share a request id: the second would change nothing")
	}
}

// The program puts a booked intake on hold: no reminder names the booked
// time after that, the counselor hears of it once however often the
// service says so, and a rebooking is reminded as usual.
func TestIntakeOnHoldStopsItsRemindersUntilRebooked(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	const r1 = "clinics/north/referrals/r1"
	start := h.env.Now()
	first, second := start.Add(60*time.Hour), start.Add(100*time.Hour)
	h.transition(time.Hour, r1, activities.ReferralInfo{State: "ACCEPTED"})
	h.transition(2*time.Hour, r1, activities.ReferralInfo{State: "SCHEDULED", Appointment: first})
	h.transition(10*time.Hour, r1, activities.ReferralInfo{State: "ON_HOLD", Appointment: first})
	h.transition(11*time.Hour, r1, activities.ReferralInfo{State: "ON_HOLD", Appointment: first})
	h.transition(70*time.Hour, r1, activities.ReferralInfo{State: "SCHEDULED", Appointment: second})
	h.transition(101*time.Hour, r1, activities.ReferralInfo{State: "COMPLETED", DaysToTreatment: 4})
	h.env.ExecuteWorkflow(matintake.Name, input())
	var res matintake.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "ENTERED_TREATMENT" {
		t.Fatalf("result = %+v, %v", res, err)
	}
	chicago := mustZone(t, "America/Chicago")
	naming := func(at time.Time) int {
		n := 0
		for _, r := range h.kinds("INTAKE_UPCOMING") {
			if strings.Contains(r.Message, at.In(chicago).Format("Mon Jan 2 at 3:04 PM MST")) {
				n++
			}
		}
		return n
	}
	if n := naming(first); n != 0 {
		t.Errorf("%d reminders name the appointment put on hold", n)
	}
	if n := naming(second); n == 0 {
		t.Error("no reminder names the rebooked appointment")
	}
	holds := h.holdNotices()
	if len(holds) != 1 || holds[0].Due.Sub(start) != 10*time.Hour || holds[0].Related != r1 {
		t.Fatalf("on-hold notices = %+v; want one to the counselor at 10 h about %s", holds, r1)
	}
}

// A pause after reminders went out cancels those not yet delivered; a
// pause that lasts is brought back to the counselor every IntakeAlert; a
// cancellation from hold offers the next program.
func TestLongHoldIsReviewedAndCancellingItMovesOn(t *testing.T) {
	h := newHarness(t)
	h.programs(2)
	const r1, r2 = "clinics/north/referrals/r1", "clinics/north/referrals/r2"
	start := h.env.Now()
	h.transition(time.Hour, r1, activities.ReferralInfo{State: "ACCEPTED"})
	h.transition(2*time.Hour, r1, activities.ReferralInfo{State: "SCHEDULED", Appointment: start.Add(30 * time.Hour)})
	h.transition(8*time.Hour, r1, activities.ReferralInfo{State: "ON_HOLD", Appointment: start.Add(30 * time.Hour)})
	h.transition(160*time.Hour, r1, activities.ReferralInfo{State: "CANCELLED"})
	h.transition(161*time.Hour, r2, activities.ReferralInfo{State: "REJECTED"})
	h.env.ExecuteWorkflow(matintake.Name, input())
	var res matintake.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "ESCALATED" || res.Programs != 2 {
		t.Fatalf("result = %+v, %v; want escalated after two programs", res, err)
	}
	if len(h.cancelled) != 1 || h.cancelled[0].Reason != "intake on hold" || h.cancelAt[0].Sub(start) != 8*time.Hour {
		t.Fatalf("cancellations %+v at %v; want the reminders sent for the paused time cancelled at 8 h", h.cancelled, h.cancelAt)
	}
	at := h.holdNoticeTimes(start)
	if fmt.Sprint(at) != fmt.Sprint([]time.Duration{8 * time.Hour, 80 * time.Hour, 152 * time.Hour}) {
		t.Fatalf("on-hold notices at %v; want the pause at 8 h, then every 72 h while it lasts", at)
	}
	if len(h.requests) < 2 || !slices.Contains(h.requests[1].Exclude, "clinics/north/programs/p1") {
		t.Fatalf("requests %+v; want the next program asked for without the one that cancelled", h.requests)
	}
}

// An appointment moved away and back gets reminders again: those of its
// first booking were cancelled, and new ones are not mistaken for them.
func TestAppointmentMovedBackIsRemindedAgain(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	const r1 = "clinics/north/referrals/r1"
	start := h.env.Now()
	a, b := start.Add(20*time.Hour), start.Add(50*time.Hour)
	h.transition(time.Hour, r1, activities.ReferralInfo{State: "ACCEPTED"})
	h.transition(2*time.Hour, r1, activities.ReferralInfo{State: "SCHEDULED", Appointment: a})
	h.transition(3*time.Hour, r1, activities.ReferralInfo{State: "SCHEDULED", Appointment: b})
	h.transition(4*time.Hour, r1, activities.ReferralInfo{State: "SCHEDULED", Appointment: a})
	h.transition(21*time.Hour, r1, activities.ReferralInfo{State: "COMPLETED", DaysToTreatment: 1})
	h.env.ExecuteWorkflow(matintake.Name, input())
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	var forA []activities.ReminderRequest
	for _, r := range h.kinds("INTAKE_UPCOMING") {
		if strings.Contains(r.Message, a.In(mustZone(t, "America/Chicago")).Format("Mon Jan 2 at 3:04 PM MST")) {
			forA = append(forA, r)
			ids[r.RequestID] = true
		}
	}
	// Two recipients: the 24 h reminder (late, sent at once) at each
	// booking of A, and the 2 h one of the second; each its own request.
	if len(forA) != 6 || len(ids) != 6 {
		t.Fatalf("reminders naming the first time: %d under %d request ids; want 6 under 6", len(forA), len(ids))
	}
}

func mustZone(t *testing.T, name string) *time.Location {
	t.Helper()
	l, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Too many no-shows escalate; 72 h without intake alerts the counselor.
func TestRepeatedNoShowsEscalateAndSlowIntakeAlerts(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	const r1 = "clinics/north/referrals/r1"
	for i := 1; i <= 3; i++ {
		base := time.Duration(i) * 30 * time.Hour
		h.transition(base, r1, activities.ReferralInfo{State: "SCHEDULED", Appointment: h.env.Now().Add(base + 10*time.Hour), NoShows: int32(i - 1)})
		h.transition(base+11*time.Hour, r1, activities.ReferralInfo{State: "NO_SHOW", NoShows: int32(i)})
	}
	h.env.ExecuteWorkflow(matintake.Name, input())
	var res matintake.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "ESCALATED" {
		t.Fatalf("result %+v, %v", res, err)
	}
	if n := len(h.kinds("REENGAGEMENT")); n != 2 {
		t.Fatalf("re-engagements = %d, want 2 (MaxNoShows)", n)
	}
	alert := h.kinds("INTAKE_OVERDUE")
	if len(alert) != 1 || !alert[0].Due.Equal(time.Date(2037, 12, 10, 15, 0, 0, 0, time.UTC)) { // 72 h after the start
		t.Fatalf("intake alert = %+v", alert)
	}
}

// New runs call the services as local activities, and signals that leave
// the next deadline where it was do not restart its timer: an activity costs
// the server three events and a workflow task more than a local one, and
// each timer restart two events.
func TestLocalActivitiesAndOneDeadlineTimer(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	const r1 = "clinics/north/referrals/r1"
	started, cancelled := 0, 0
	h.env.SetOnTimerScheduledListener(func(string, time.Duration) { started++ })
	h.env.SetOnTimerCanceledListener(func(string) { cancelled++ })
	local, remote := 0, 0
	h.env.SetOnLocalActivityStartedListener(func(*activity.Info, context.Context, []any) { local++ })
	h.env.SetOnActivityStartedListener(func(*activity.Info, context.Context, converter.EncodedValues) { remote++ })
	for i := 1; i <= 3; i++ {
		h.transition(time.Duration(i)*time.Hour, r1, activities.ReferralInfo{State: "ACCEPTED"})
	}
	h.transition(4*time.Hour, r1, activities.ReferralInfo{State: "COMPLETED", DaysToTreatment: 1})
	h.env.ExecuteWorkflow(matintake.Name, input())
	var res matintake.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "ENTERED_TREATMENT" {
		t.Fatalf("result %+v, %v", res, err)
	}
	if started != 1 || cancelled != 0 {
		t.Fatalf("timers started %d, cancelled %d; want the intake alert's timer alone, never restarted", started, cancelled)
	}
	// Settings, contacts, the referral, four status reads (one per
	// signal), family support: a referral just made is not read again.
	if local != 8 || remote != 0 {
		t.Fatalf("local activities %d, activities %d; want 8 local and none", local, remote)
	}
}

// The EHR often answers accepted, scheduled and completed together. The
// first signal's status read already says COMPLETED; the two behind it are
// taken, not left for the SDK to warn about.
func TestAnswersArrivingTogetherLeaveNoSignalUnhandled(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	const r1 = "clinics/north/referrals/r1"
	h.env.RegisterDelayedCallback(func() {
		h.status[r1] = activities.ReferralInfo{State: "COMPLETED", DaysToTreatment: 0}
		for _, state := range []string{"ACCEPTED", "SCHEDULED", "COMPLETED"} {
			h.env.SignalWorkflow(matintake.SignalReferral, matintake.Transition{Referral: r1, State: state})
		}
	}, time.Hour)
	h.env.ExecuteWorkflow(matintake.Name, input())
	var res matintake.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "ENTERED_TREATMENT" {
		t.Fatalf("result %+v, %v", res, err)
	}
	for _, w := range h.log.seen {
		if strings.Contains(w, "unhandled signals") {
			t.Fatalf("the workflow warned %q", w)
		}
	}
}

// A review of a long hold asks the service first: a program that rebooked
// while its signal was still on the way is not reported as still holding.
func TestHoldReviewAfterARebookingNotYetSignalled(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	const r1 = "clinics/north/referrals/r1"
	start := h.env.Now()
	h.transition(time.Hour, r1, activities.ReferralInfo{State: "ACCEPTED"})
	h.transition(2*time.Hour, r1, activities.ReferralInfo{State: "SCHEDULED", Appointment: start.Add(30 * time.Hour)})
	h.transition(8*time.Hour, r1, activities.ReferralInfo{State: "ON_HOLD", Appointment: start.Add(30 * time.Hour)})
	rebooked := activities.ReferralInfo{State: "SCHEDULED", Appointment: start.Add(100 * time.Hour)}
	h.env.RegisterDelayedCallback(func() { h.status[r1] = rebooked }, 79*time.Hour) // the review is due at 80 h
	h.transition(85*time.Hour, r1, rebooked)
	h.transition(101*time.Hour, r1, activities.ReferralInfo{State: "COMPLETED", DaysToTreatment: 4})
	h.env.ExecuteWorkflow(matintake.Name, input())
	var res matintake.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "ENTERED_TREATMENT" {
		t.Fatalf("result = %+v, %v", res, err)
	}
	at := h.holdNoticeTimes(start)
	if fmt.Sprint(at) != fmt.Sprint([]time.Duration{8 * time.Hour}) {
		t.Fatalf("on-hold notices at %v; want the pause at 8 h alone: at 80 h the intake was booked again", at)
	}
}

// A hold outlasts a reassignment: the review goes to the family's counselor
// of that moment, not the one who ran the meeting.
func TestHoldReviewReachesTheCurrentCounselor(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	const r1 = "clinics/north/referrals/r1"
	start := h.env.Now()
	h.transition(time.Hour, r1, activities.ReferralInfo{State: "ACCEPTED"})
	h.transition(2*time.Hour, r1, activities.ReferralInfo{State: "SCHEDULED", Appointment: start.Add(30 * time.Hour)})
	h.transition(8*time.Hour, r1, activities.ReferralInfo{State: "ON_HOLD", Appointment: start.Add(30 * time.Hour)})
	h.env.RegisterDelayedCallback(func() {
		h.counselor = activities.Person{Kind: "counselor", ID: "counselor-2", Channel: "IN_APP"}
	}, 40*time.Hour)
	h.transition(90*time.Hour, r1, activities.ReferralInfo{State: "CANCELLED"})
	h.env.ExecuteWorkflow(matintake.Name, input())
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	var to []string
	for _, r := range h.holdNotices() {
		to = append(to, fmt.Sprintf("%s@%v", r.To.ID, r.Due.Sub(start)))
	}
	if want := []string{"counselor-1@8h0m0s", "counselor-2@80h0m0s"}; fmt.Sprint(to) != fmt.Sprint(want) {
		t.Fatalf("on-hold notices %v; want %v", to, want)
	}
}

// While the families service is down the notices still go, to the
// counselor the intake began with: the read of the current one is given
// up after flow.SoonEnough, neither retried for a day nor the end of the
// intake.
func TestIntakeNoticesGoDuringAnOutage(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	const r1 = "clinics/north/referrals/r1"
	h.counselorDown = true
	h.transition(time.Hour, r1, activities.ReferralInfo{State: "SCHEDULED", Appointment: h.env.Now().Add(10 * time.Hour)})
	h.transition(11*time.Hour, r1, activities.ReferralInfo{State: "NO_SHOW", NoShows: 1})
	h.transition(12*time.Hour, r1, activities.ReferralInfo{State: "COMPLETED"})
	var bounds []time.Duration
	h.env.SetOnActivityStartedListener(func(info *activity.Info, _ context.Context, _ converter.EncodedValues) {
		if info.ActivityType.Name == "FamilyCounselor" && !info.IsLocalActivity {
			bounds = append(bounds, info.ScheduleToCloseTimeout)
		}
	})
	h.env.ExecuteWorkflow(matintake.Name, input())
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatalf("workflow error %v; want the intake to go on past the outage", err)
	}
	if re := h.kinds("REENGAGEMENT"); len(re) != 1 || re[0].To.ID != "counselor-1" {
		t.Fatalf("re-engagement notices %+v; want one, to the counselor the intake began with", re)
	}
	if len(bounds) == 0 || slices.ContainsFunc(bounds, func(d time.Duration) bool { return d > flow.SoonEnough }) {
		t.Fatalf("the counselor reads were bounded by %v; want %v at most", bounds, flow.SoonEnough)
	}
}

// The other notices come days after the meeting too: after a reassignment
// the intake alert, the re-engagements and the escalation reach the
// family's counselor of that moment.
func TestIntakeNoticesReachTheCurrentCounselor(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	const r1 = "clinics/north/referrals/r1"
	for i := 1; i <= 3; i++ {
		base := time.Duration(i) * 30 * time.Hour
		h.transition(base, r1, activities.ReferralInfo{State: "SCHEDULED", Appointment: h.env.Now().Add(base + 10*time.Hour), NoShows: int32(i - 1)})
		h.transition(base+11*time.Hour, r1, activities.ReferralInfo{State: "NO_SHOW", NoShows: int32(i)})
	}
	h.env.RegisterDelayedCallback(func() {
		h.counselor = activities.Person{Kind: "counselor", ID: "counselor-2", Channel: "IN_APP"}
	}, 20*time.Hour)
	h.env.ExecuteWorkflow(matintake.Name, input())
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	var to []string
	for _, r := range h.reminders {
		if r.Kind != "INTAKE_UPCOMING" {
			to = append(to, r.Kind+":"+r.To.ID)
		}
	}
	want := []string{"REENGAGEMENT:counselor-2", "REENGAGEMENT:counselor-2", "INTAKE_OVERDUE:counselor-2", "REFERRAL_ESCALATION:counselor-2"}
	if fmt.Sprint(to) != fmt.Sprint(want) {
		t.Fatalf("counselor's notices %v; want %v", to, want)
	}
}

// A failed intake reminder is not sent again once its appointment's time
// has come: it would remind of nothing.
func TestIntakeReminderIsNotResentOnceTheAppointmentBegins(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	const r1 = "clinics/north/referrals/r1"
	start := h.env.Now()
	resent := h.resends()
	h.transition(time.Hour, r1, activities.ReferralInfo{State: "ACCEPTED"})
	h.transition(2*time.Hour, r1, activities.ReferralInfo{State: "SCHEDULED", Appointment: start.Add(20 * time.Hour)})
	var last string
	h.env.RegisterDelayedCallback(func() { // the one 2 h before, failing 5 min before the appointment
		last = h.upcomingTo(1)
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: last})
	}, 20*time.Hour-5*time.Minute)
	h.transition(23*time.Hour, r1, activities.ReferralInfo{State: "COMPLETED", DaysToTreatment: 1})
	h.env.ExecuteWorkflow(matintake.Name, input())
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}
	if last == "" || len(*resent) != 0 {
		t.Fatalf("reminder %q failed before the appointment; resent %v, want none", last, *resent)
	}
}

// resends keeps, in order, the failed reminders the workflow sends again.
func (h *harness) resends() *[]string { return flowtest.Resends(h.env) }

// An intake that ends on an error tells the counselor, who can still act,
// and gives back the places still held for the intervention (a hold a
// referral took is no longer held, and stays the referral's).
func TestFailedIntakeTellsTheCounselor(t *testing.T) {
	for _, tc := range []struct {
		name     string
		referral bool // whether a referral was made before the failure
	}{{"before any referral", false}, {"after a referral", true}} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			released, held := h.releases(), h.heldReleases()
			final := temporal.NewNonRetryableApplicationError("refused", "FailedPrecondition", errors.New("refused"))
			if tc.referral {
				h.programs(1)
				h.statusErr = final
				// The referral's first answer cannot be read.
				h.transition(time.Minute, "clinics/north/referrals/r1", activities.ReferralInfo{State: "ACCEPTED"})
			} else {
				h.env.OnActivity(flow.A.StartImmediateReferral, mock.Anything, mock.Anything).Return(activities.Referral{}, final)
			}
			h.env.ExecuteWorkflow(matintake.Name, input())
			if err := h.env.GetWorkflowError(); err == nil || temporal.IsCanceledError(err) {
				t.Fatalf("workflow error %v; want the failure", err)
			}
			var told []activities.ReminderRequest
			for _, r := range h.kinds("REFERRAL_ESCALATION") {
				if strings.Contains(r.Message, "stopped on an error") {
					told = append(told, r)
				}
			}
			if len(told) != 1 || told[0].To.ID != "counselor-1" {
				t.Fatalf("notices of the failure %+v; want one to counselor-1", told)
			}
			// A referral made is followed up, not doubled by one made by hand.
			if byHand := strings.Contains(told[0].Message, "by hand"); byHand == tc.referral ||
				(tc.referral && told[0].Related != "clinics/north/referrals/r1") {
				t.Fatalf("notice %+v; with a referral made it must name it, and ask for a place by hand only without one", told[0])
			}
			// Every MAT place still held for the intervention goes back
			// (the one it began with, and any a try held elsewhere); a
			// place a referral took over is no longer held.
			if len(*released) != 0 || !releasesTheIntervention(*held) {
				t.Fatalf("holds released by name %+v, by lookup %+v; want one lookup of the intervention's MAT places", *released, *held)
			}
		})
	}
}

// releasesTheIntervention reports whether held is one lookup of the
// intervention's MAT places, naming the intake's own hold, which goes back
// even if a counselor made it.
func releasesTheIntervention(held []activities.ReleaseHeldRequest) bool {
	return len(held) == 1 && held[0].Intervention == iv && held[0].Family == family && !held[0].AnyService && held[0].RequestID != "" &&
		held[0].Hold == input().Hold
}

// An intake that fails looking for the next program, the first having
// turned the person down, asks for a place by hand: the rejected referral
// is no place to follow up.
func TestFailureAfterARejectionAsksForAPlaceByHand(t *testing.T) {
	h := newHarness(t)
	h.env.OnActivity(flow.A.StartImmediateReferral, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.ImmediateRequest) (activities.Referral, error) {
			h.requests = append(h.requests, in)
			if len(h.requests) > 1 {
				return activities.Referral{}, temporal.NewNonRetryableApplicationError("refused", "FailedPrecondition", errors.New("refused"))
			}
			return activities.Referral{Name: "clinics/north/referrals/r1", Program: "clinics/north/programs/p1"}, nil
		})
	h.transition(time.Minute, "clinics/north/referrals/r1", activities.ReferralInfo{State: "REJECTED"})
	h.env.ExecuteWorkflow(matintake.Name, input())
	if err := h.env.GetWorkflowError(); err == nil {
		t.Fatal("workflow error nil; want the failure")
	}
	var told []activities.ReminderRequest
	for _, r := range h.kinds("REFERRAL_ESCALATION") {
		if strings.Contains(r.Message, "stopped on an error") {
			told = append(told, r)
		}
	}
	if len(told) != 1 || !strings.Contains(told[0].Message, "by hand") || told[0].Related != iv {
		t.Fatalf("notices of the failure %+v; want one asking for a place by hand, about the intervention", told)
	}
}

// An intake cancelled through Temporal (here while the referrals service
// keeps failing, or after a referral was made) gives back every MAT place
// still held for the intervention, by lookup: the one it began with, or
// one a failed try held at another program. A place a referral took over
// is no longer held, and stays the referral's.
func TestCancelledIntakeGivesTheHoldBack(t *testing.T) {
	for _, tc := range []struct {
		name     string
		referral bool
	}{{"before any referral", false}, {"after a referral", true}} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			released, held := h.releases(), h.heldReleases()
			if tc.referral {
				h.programs(1)
			} else {
				h.env.OnActivity(flow.A.StartImmediateReferral, mock.Anything, mock.Anything).Return(
					activities.Referral{}, temporal.NewApplicationError("referrals is down", "Unavailable"))
			}
			// The referrals service is retried for longer than this.
			h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 30*time.Second)
			h.env.ExecuteWorkflow(matintake.Name, input())
			if err := h.env.GetWorkflowError(); !temporal.IsCanceledError(err) {
				t.Fatalf("workflow error %v; want cancelled", err)
			}
			if len(*released) != 0 || !releasesTheIntervention(*held) {
				t.Fatalf("holds released by name %+v, by lookup %+v; want one lookup of the intervention's MAT places", *released, *held)
			}
		})
	}
}

// An intake cancelled after its referral was made (its intake booked, a
// reminder of it made) cancels its own reminders of the referral and tells
// the counselor the referral is no longer followed.
func TestCancelledIntakeTidiesUpItsReferral(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	const r1 = "clinics/north/referrals/r1"
	h.transition(time.Hour, r1, activities.ReferralInfo{State: "SCHEDULED", Appointment: h.env.Now().Add(10 * time.Hour)})
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 2*time.Hour)
	h.env.ExecuteWorkflow(matintake.Name, input())
	if err := h.env.GetWorkflowError(); !temporal.IsCanceledError(err) {
		t.Fatalf("workflow error %v; want cancelled", err)
	}
	var tidied bool
	for _, c := range h.cancelled {
		tidied = tidied || (c.Related == r1 && c.Origin != "" && c.Kind == "")
	}
	told := h.kinds("REFERRAL_ESCALATION")
	if !tidied || len(told) != 1 || !strings.Contains(told[0].Message, "no longer followed") || told[0].Related != r1 {
		t.Fatalf("cancellations %+v, counselor told %+v; want the intake's own reminders of %s cancelled and the counselor told", h.cancelled, told, r1)
	}
}

// An intake cancelled while it seeks the next program (the first turned
// the person down, the referrals service now failing) has no place to
// follow up: the counselor is asked to arrange one by hand, about the
// intervention, not told that the rejected referral is still open.
func TestCancelledIntakeAfterARejectionAsksForAPlaceByHand(t *testing.T) {
	h := newHarness(t)
	const r1 = "clinics/north/referrals/r1"
	h.env.OnActivity(flow.A.StartImmediateReferral, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.ImmediateRequest) (activities.Referral, error) {
			h.requests = append(h.requests, in)
			if len(h.requests) == 1 {
				return activities.Referral{Name: r1, Program: "clinics/north/programs/p1"}, nil
			}
			return activities.Referral{}, temporal.NewApplicationError("referrals is down", "Unavailable")
		})
	h.transition(time.Hour, r1, activities.ReferralInfo{State: "REJECTED"})
	// The referrals service is retried for longer than this.
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, time.Hour+30*time.Second)
	h.env.ExecuteWorkflow(matintake.Name, input())
	if err := h.env.GetWorkflowError(); !temporal.IsCanceledError(err) {
		t.Fatalf("workflow error %v; want cancelled", err)
	}
	told := h.kinds("REFERRAL_ESCALATION")
	if len(told) != 1 || told[0].Related != iv || !strings.Contains(told[0].Message, "by hand") {
		t.Fatalf("counselor told %+v; want one notice about the intervention asking for a place by hand", told)
	}
}

// The counselor is told at once, not after the places are given back:
// that release may retry through the referrals service's outage for a day.
func TestNoticeGoesBeforeThePlacesAreGivenBack(t *testing.T) {
	for _, cancel := range []bool{true, false} {
		h := newHarness(t)
		h.programs(1)
		h.heldErr = temporal.NewApplicationError("referrals is down", "Unavailable")
		const r1 = "clinics/north/referrals/r1"
		at := time.Hour + 30*time.Second
		if cancel {
			h.transition(time.Hour, r1, activities.ReferralInfo{State: "SCHEDULED", Appointment: h.env.Now().Add(10 * time.Hour)})
			h.env.RegisterDelayedCallback(h.env.CancelWorkflow, at)
		} else {
			h.statusErr = temporal.NewNonRetryableApplicationError("refused", "FailedPrecondition", errors.New("refused"))
			h.transition(at, r1, activities.ReferralInfo{State: "ACCEPTED"})
		}
		start := h.env.Now()
		h.env.ExecuteWorkflow(matintake.Name, input())
		told := h.kinds("REFERRAL_ESCALATION")
		if len(told) != 1 || told[0].Due.Sub(start) > at+time.Minute {
			t.Fatalf("cancelled %v: counselor told %+v (started %v); want one notice within a minute of the end", cancel, told, start)
		}
		if len(h.held) == 0 || h.heldAt[0].Before(told[0].Due) {
			t.Fatalf("cancelled %v: places given back at %v, the notice at %v; want the release after the notice", cancel, h.heldAt, told[0].Due)
		}
	}
}

// The family's own referrals failing after the person entered treatment
// end nothing: the intake says the person entered treatment (before, it
// failed, and its meeting's workflow with it, the entry lost from both),
// and the counselor makes those referrals by hand, not told to follow up
// a referral that ended in treatment.
func TestFailureAfterEntryAsksForTheFamilysReferrals(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	h.supportErr = temporal.NewNonRetryableApplicationError("refused", "FailedPrecondition", errors.New("refused"))
	h.transition(time.Hour, "clinics/north/referrals/r1", activities.ReferralInfo{State: "COMPLETED", DaysToTreatment: 2})
	h.env.ExecuteWorkflow(matintake.Name, input())
	var res matintake.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "ENTERED_TREATMENT" || res.DaysToTreatment != 2 ||
		res.Referral != "clinics/north/referrals/r1" {
		t.Fatalf("result %+v, %v; want ENTERED_TREATMENT through r1, in 2 days", res, err)
	}
	told := h.kinds("REFERRAL_ESCALATION")
	if len(told) != 1 || !strings.Contains(told[0].Message, "support referrals") || told[0].Related != iv {
		t.Fatalf("counselor told %+v; want one notice about the family's referrals", told)
	}
}

// A cancel while the intake listens for its notice's failures, after the
// family's own referrals failed, ends the wait, not the entry: the intake
// still says the person entered treatment.
func TestCancelWhileListeningAfterEntryKeepsTheEntry(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	h.supportErr = temporal.NewNonRetryableApplicationError("refused", "FailedPrecondition", errors.New("refused"))
	h.transition(time.Hour, "clinics/north/referrals/r1", activities.ReferralInfo{State: "COMPLETED"})
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, time.Hour+10*time.Minute)
	h.env.ExecuteWorkflow(matintake.Name, input())
	var res matintake.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "ENTERED_TREATMENT" {
		t.Fatalf("result %+v, %v; want ENTERED_TREATMENT", res, err)
	}
}

// An intake cancelled after the person entered treatment (while the
// family's own referrals were being made) tells the counselor nothing:
// no referral is left open to follow. The family's referrals say why
// they are made.
func TestCancelledIntakeAfterEntrySendsNoNotice(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	const r1 = "clinics/north/referrals/r1"
	h.supportErr = temporal.NewApplicationError("referrals is down", "Unavailable")
	h.transition(time.Hour, r1, activities.ReferralInfo{State: "COMPLETED"})
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, time.Hour+30*time.Second)
	h.env.ExecuteWorkflow(matintake.Name, input())
	if err := h.env.GetWorkflowError(); !temporal.IsCanceledError(err) {
		t.Fatalf("workflow error %v; want cancelled", err)
	}
	if told := h.kinds("REFERRAL_ESCALATION"); len(told) != 0 {
		t.Fatalf("counselor told %+v after the person entered treatment; want nothing", told)
	}
	if len(h.support) == 0 || !strings.Contains(h.support[0].Reason, "entered treatment") {
		t.Fatalf("family support referrals %+v; want them made for the loved one's entering treatment", h.support)
	}
}

// A cancellation ends the intake when it has no deadline left to wait for:
// the overdue alert sent and no reminder or review pending.
func TestCancelWithNoDeadlineLeft(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 80*time.Hour) // the alert came at 72 h
	h.env.ExecuteWorkflow(matintake.Name, input())
	if err := h.env.GetWorkflowError(); !temporal.IsCanceledError(err) {
		t.Fatalf("workflow error %v; want cancelled", err)
	}
	if n := len(h.kinds("INTAKE_OVERDUE")); n != 1 {
		t.Fatalf("overdue alerts = %d, want 1 before the cancellation", n)
	}
}

// heldReleases are the ReleaseHeldFor calls, each giving back one place.
func (h *harness) heldReleases() *[]activities.ReleaseHeldRequest { return &h.held }

// releases records the ReleaseHold calls, each answered OK.
func (h *harness) releases() *[]activities.ReleaseRequest {
	var released []activities.ReleaseRequest
	h.env.OnActivity(flow.A.ReleaseHold, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.ReleaseRequest) error {
			released = append(released, in)
			return nil
		})
	return &released
}

// A referral that goes quiet after its acceptance keeps the counselor
// asked every IntakeAlert after the overdue alert, not once and then
// never; an intake booked ahead at a review is not stalled.
func TestStalledIntakeIsReviewed(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	const r1 = "clinics/north/referrals/r1"
	start := h.env.Now()
	h.transition(time.Hour, r1, activities.ReferralInfo{State: "ACCEPTED"})
	// Booked at 200 h for 230 h: the review at 216 h finds it ahead.
	h.transition(200*time.Hour, r1, activities.ReferralInfo{State: "SCHEDULED", Appointment: start.Add(230 * time.Hour)})
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 300*time.Hour)
	h.env.ExecuteWorkflow(matintake.Name, input())
	if err := h.env.GetWorkflowError(); !temporal.IsCanceledError(err) {
		t.Fatalf("workflow error %v; want cancelled", err)
	}
	// Accepted with no time: told at the intake target (24 h), then
	// alerted (72 h).
	var overdue []time.Duration
	for _, r := range h.kinds("INTAKE_OVERDUE") {
		overdue = append(overdue, r.Due.Sub(start).Round(time.Hour))
	}
	if fmt.Sprint(overdue) != fmt.Sprint([]time.Duration{24 * time.Hour, 72 * time.Hour}) {
		t.Fatalf("overdue notices at %v; want 24h (none booked) and 72h", overdue)
	}
	at := h.escalationTimes("still not started", start)
	// 72 h alert; reviews at 144 h (accepted, quiet), not at 216 h (booked
	// ahead), at 288 h (its time passed, no report).
	if fmt.Sprint(at) != fmt.Sprint([]time.Duration{144 * time.Hour, 288 * time.Hour}) {
		t.Fatalf("stall reviews at %v; want 144h and 288h", at)
	}
}

// A referral with no intake booked a day after the yes (the program has not
// answered, or accepted with no time) is brought to the counselor then,
// not first at the overdue alert three days on; one booked by then is not,
// though its signal has yet to come.
func TestUnbookedIntakeIsToldAtTheTarget(t *testing.T) {
	for _, c := range []struct {
		name   string
		status string
		want   []time.Duration
	}{
		{"unanswered", "REQUESTED", []time.Duration{24 * time.Hour, 72 * time.Hour}},
		{"accepted, no time", "ACCEPTED", []time.Duration{24 * time.Hour, 72 * time.Hour}},
		{"booked, no signal yet", "SCHEDULED", []time.Duration{72 * time.Hour}},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			h.programs(1)
			const r1 = "clinics/north/referrals/r1"
			start := h.env.Now()
			h.status[r1] = activities.ReferralInfo{State: c.status, Appointment: start.Add(100 * time.Hour)}
			h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 80*time.Hour)
			h.env.ExecuteWorkflow(matintake.Name, input())
			var at []time.Duration
			for _, r := range h.kinds("INTAKE_OVERDUE") {
				at = append(at, r.Due.Sub(start).Round(time.Hour))
			}
			if fmt.Sprint(at) != fmt.Sprint(c.want) {
				t.Fatalf("overdue notices at %v; want %v", at, c.want)
			}
		})
	}
}

// A referral that cannot be read at the intake target does not end the
// intake: the notice is advice, and the overdue alert still comes.
func TestUnreadableReferralAtTheTargetEndsNothing(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	h.statusErr = temporal.NewNonRetryableApplicationError("refused", "FailedPrecondition", errors.New("refused"))
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 80*time.Hour)
	h.env.ExecuteWorkflow(matintake.Name, input())
	if err := h.env.GetWorkflowError(); !temporal.IsCanceledError(err) {
		t.Fatalf("workflow error %v; want the intake followed until its cancel", err)
	}
	if n := len(h.kinds("INTAKE_OVERDUE")); n != 1 {
		t.Fatalf("overdue notices %d; want the 72-hour alert alone", n)
	}
}

// The next program's referral, made after a rejection, is not asked about
// as stalled before its own IntakeAlert has passed.
func TestStallReviewStartsAgainForTheNextProgram(t *testing.T) {
	h := newHarness(t)
	h.programs(2)
	const r1, r2 = "clinics/north/referrals/r1", "clinics/north/referrals/r2"
	start := h.env.Now()
	h.transition(time.Hour, r1, activities.ReferralInfo{State: "ACCEPTED"})
	// Rejected at 143 h, an hour before the first review would be due.
	h.transition(143*time.Hour, r1, activities.ReferralInfo{State: "REJECTED"})
	h.env.RegisterDelayedCallback(func() { h.status[r2] = activities.ReferralInfo{State: "ACCEPTED"} }, 143*time.Hour+time.Minute)
	h.env.RegisterDelayedCallback(h.env.CancelWorkflow, 230*time.Hour)
	h.env.ExecuteWorkflow(matintake.Name, input())
	if err := h.env.GetWorkflowError(); !temporal.IsCanceledError(err) {
		t.Fatalf("workflow error %v; want cancelled", err)
	}
	at := h.escalationTimes("still not started", start)
	if fmt.Sprint(at) != fmt.Sprint([]time.Duration{215 * time.Hour}) {
		t.Fatalf("stall reviews at %v; want one, 72 h after the second referral (215 h)", at)
	}
}

// A stall review that fails for good (the referrals service down past the
// retries) is advice not given, not the end of the intake: the next review
// asks, and the intake still completes.
func TestFailedStallReviewEndsNothing(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	const r1 = "clinics/north/referrals/r1"
	start := h.env.Now()
	h.transition(time.Hour, r1, activities.ReferralInfo{State: "ACCEPTED"})
	h.env.RegisterDelayedCallback(func() { h.statusErr = errors.New("referrals service unavailable") }, 143*time.Hour)
	h.env.RegisterDelayedCallback(func() { h.statusErr = nil }, 150*time.Hour)
	h.transition(250*time.Hour, r1, activities.ReferralInfo{State: "COMPLETED", DaysToTreatment: 10})
	h.env.ExecuteWorkflow(matintake.Name, input())
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatalf("workflow error %v; want the intake to go on past the failed review", err)
	}
	var res matintake.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "ENTERED_TREATMENT" {
		t.Fatalf("result %+v, %v; want ENTERED_TREATMENT", res, err)
	}
	if at := h.escalationTimes("still not started", start); fmt.Sprint(at) != fmt.Sprint([]time.Duration{216 * time.Hour}) {
		t.Fatalf("stall reviews at %v; want the one at 216 h after the failed one at 144 h", at)
	}
}

// A referral the intake adopted (converted or made by hand before it ran)
// may have moved already, and its signals found no workflow: it is read
// as the intake starts to follow it. Admitted, the person is in
// treatment; turned down, the next program is tried.
func TestAdoptedReferralIsReadAtStart(t *testing.T) {
	h := newHarness(t)
	h.adopted = true
	h.programs(1)
	h.status["clinics/north/referrals/r1"] = activities.ReferralInfo{State: "COMPLETED", DaysToTreatment: 1}
	h.env.ExecuteWorkflow(matintake.Name, input())
	var res matintake.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "ENTERED_TREATMENT" || len(h.support) != 1 {
		t.Fatalf("result %+v, %v, support %+v; want the person in treatment and the family referred, with no signal", res, err, h.support)
	}

	h = newHarness(t)
	h.adopted = true
	h.programs(2)
	h.status["clinics/north/referrals/r1"] = activities.ReferralInfo{State: "REJECTED"}
	h.transition(time.Hour, "clinics/north/referrals/r2", activities.ReferralInfo{State: "COMPLETED", DaysToTreatment: 1})
	h.env.ExecuteWorkflow(matintake.Name, input())
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "ENTERED_TREATMENT" || res.Programs != 2 || res.Referral != "clinics/north/referrals/r2" {
		t.Fatalf("result %+v, %v; want the second program's referral, after the first was found turned down", res, err)
	}
}

// A change no signal brought (lost on its way) is found by the next stall
// review, and taken as the signal would have been.
func TestStallReviewTakesAChangeNoSignalBrought(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	h.transition(time.Hour, "clinics/north/referrals/r1", activities.ReferralInfo{State: "ACCEPTED"})
	h.env.RegisterDelayedCallback(func() {
		h.status["clinics/north/referrals/r1"] = activities.ReferralInfo{State: "COMPLETED", DaysToTreatment: 4}
	}, 100*time.Hour)
	start := h.env.Now()
	h.env.ExecuteWorkflow(matintake.Name, input())
	var res matintake.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "ENTERED_TREATMENT" || res.DaysToTreatment != 4 {
		t.Fatalf("result %+v, %v; want the person in treatment, as read", res, err)
	}
	// The overdue alert at 72 h, the review at 144 h found the change.
	if took := h.env.Now().Sub(start); took < 144*time.Hour || took > 145*time.Hour {
		t.Fatalf("the intake ended %v after the start; want at the stall review, 144 h", took)
	}
	if n := len(h.escalations("still not started")); n != 0 {
		t.Fatalf("%d stall notices; want none for a person in treatment", n)
	}
	// The signal's read, the intake target's, and the review's, taken as
	// the next signal's.
	if h.reads != 3 {
		t.Fatalf("%d reads of the referral; want 3", h.reads)
	}
}

// A notice to the counselor that cannot be made at all does not end the
// intake: the person who said yes is still followed into treatment.
func TestFailedNoticeDoesNotEndTheIntake(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	h.failKind = "INTAKE_OVERDUE"
	h.transition(time.Hour, "clinics/north/referrals/r1", activities.ReferralInfo{State: "ACCEPTED"})
	h.transition(80*time.Hour, "clinics/north/referrals/r1", activities.ReferralInfo{State: "COMPLETED", DaysToTreatment: 3})
	h.env.ExecuteWorkflow(matintake.Name, input())
	var res matintake.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "ENTERED_TREATMENT" || len(h.support) != 1 {
		t.Fatalf("result %+v, %v; want the person in treatment past the failed overdue notice", res, err)
	}
	// Logged as an error: the counselor was not told, and an operator
	// alerting on errors must be.
	if !slices.Contains(h.log.errs, "an intake step failed; going on without it") {
		t.Fatalf("errors %q; want the failed notice logged as one", h.log.errs)
	}
}

// An intake begun before the read at the start (it took its referral as
// REQUESTED, and has no marker for that read) still takes a change a
// stall review finds: the review's version is asked apart.
func TestAnIntakeBegunBeforeTheReadIsResyncedByAReview(t *testing.T) {
	h := newHarness(t)
	// Adopted, so that the start asks the read's version, which this run
	// predates.
	h.adopted = true
	h.env.OnGetVersion("epoch-2026-12-07c", workflow.DefaultVersion, 1).Return(workflow.DefaultVersion)
	h.env.OnGetVersion("epoch-2026-12-07b", workflow.DefaultVersion, 1).Return(workflow.DefaultVersion)
	h.env.OnGetVersion("epoch-2026-12-07", workflow.DefaultVersion, 1).Return(workflow.DefaultVersion)
	h.env.OnGetVersion("epoch-2026-12-06c", workflow.DefaultVersion, 1).Return(workflow.DefaultVersion)
	h.env.OnGetVersion("epoch-2026-12-06b", workflow.DefaultVersion, 1).Return(workflow.DefaultVersion)
	h.env.OnGetVersion("epoch-2026-12-06", workflow.DefaultVersion, 1).Return(workflow.DefaultVersion)
	h.env.OnGetVersion("intake-resync-from-status", workflow.DefaultVersion, 1).Return(workflow.DefaultVersion)
	readAtStart := -1
	h.env.RegisterDelayedCallback(func() { readAtStart = h.reads }, time.Minute)
	h.programs(1)
	h.transition(time.Hour, "clinics/north/referrals/r1", activities.ReferralInfo{State: "ACCEPTED"})
	h.env.RegisterDelayedCallback(func() {
		h.status["clinics/north/referrals/r1"] = activities.ReferralInfo{State: "COMPLETED", DaysToTreatment: 4}
	}, 100*time.Hour)
	h.env.ExecuteWorkflow(matintake.Name, input())
	var res matintake.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "ENTERED_TREATMENT" {
		t.Fatalf("result %+v, %v; want the person in treatment, found by the review", res, err)
	}
	if readAtStart != 0 {
		t.Fatalf("%d reads of the referral at the start; want none, the run predating the read", readAtStart)
	}
}

// A signal that does not decode (sent from a tool without the codec, or
// sealed under a key this worker lacks) is dropped, and the intake goes
// on keeping its deadlines: before, it waited in the signal's handler for
// the next transition, and the overdue alert never went.
func TestUndecodableSignalLeavesTheDeadlinesKept(t *testing.T) {
	h := newHarness(t)
	h.programs(1)
	const r1 = "clinics/north/referrals/r1"
	h.env.RegisterDelayedCallback(func() { h.env.SignalWorkflow(matintake.SignalReferral, "not a transition") }, time.Hour)
	h.transition(80*time.Hour, r1, activities.ReferralInfo{State: "COMPLETED", DaysToTreatment: 1})
	h.env.ExecuteWorkflow(matintake.Name, input())
	var res matintake.Result
	if err := h.env.GetWorkflowResult(&res); err != nil || res.Outcome != "ENTERED_TREATMENT" {
		t.Fatalf("result %+v, %v", res, err)
	}
	alert := h.kinds("INTAKE_OVERDUE")
	if len(alert) != 1 || !alert[0].Due.Equal(time.Date(2037, 12, 10, 15, 0, 0, 0, time.UTC)) { // 72 h after the start
		t.Fatalf("intake alert = %+v; want one, 72 h after the start", alert)
	}
}
