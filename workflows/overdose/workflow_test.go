package overdose_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/boundary"
	"github.com/handoff-health/handoff/workflows/flow"
	"github.com/handoff-health/handoff/workflows/flowtest"
	"github.com/handoff-health/handoff/workflows/ids"
	"github.com/handoff-health/handoff/workflows/overdose"
)

const (
	family = "clinics/north/families/f1"
	sign   = family + "/warningSigns/w1"
)

type harness struct {
	env       *testsuite.TestWorkflowEnvironment
	asked     []activities.OverdosesRequest
	askedAt   []time.Time
	open      []string
	reminders []activities.ReminderRequest
	resends   []activities.ResendRequest
	resendAt  []time.Time
	support   []activities.SupportRequest
	calls     []string // activities in the order they ran
	familyErr error
	// supportErr fails the harm-reduction referrals.
	supportErr error
	// supportDownUntil fails them retryably, as in an outage, until then;
	// supportLastAt is when they were last tried.
	supportDownUntil, supportLastAt time.Time
	// boundary says whether the family's boundary workflow runs; handed
	// are the overdoses signalled to it.
	boundary bool
	handed   []boundary.Overdose
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	env := flowtest.Env(overdose.Workflow, overdose.Name)
	h := &harness{env: env, open: []string{sign}}
	settings := activities.DefaultSettings()
	env.OnActivity(flow.A.LoadSettings, mock.Anything, "north").Return(settings, nil)
	env.OnActivity(flow.A.OverdosesSince, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.OverdosesRequest) ([]string, error) {
			h.asked, h.askedAt = append(h.asked, in), append(h.askedAt, env.Now())
			return h.open, h.familyErr
		})
	env.OnActivity(flow.A.FamilySafety, mock.Anything, family).Return(
		func(context.Context, string) (activities.Safety, error) {
			return activities.Safety{Counselor: activities.Person{Kind: "counselor", ID: "counselor-2"}}, nil
		})
	env.OnSignalExternalWorkflow(mock.Anything, ids.Boundary(family), "", boundary.SignalOverdose, mock.Anything).Return(
		func(_, _, _, _ string, arg any) error {
			if !h.boundary {
				return errors.New("unknown external workflow execution")
			}
			h.handed = append(h.handed, arg.(boundary.Overdose))
			return nil
		})
	env.OnActivity(flow.A.CreateSupportReferrals, mock.Anything, mock.Anything).Return(
		func(_ context.Context, r activities.SupportRequest) ([]string, error) {
			h.supportLastAt = env.Now()
			if env.Now().Before(h.supportDownUntil) {
				return nil, temporal.NewApplicationError("create referral: unavailable", "Unavailable")
			}
			h.support, h.calls = append(h.support, r), append(h.calls, "support")
			if h.supportErr != nil {
				return nil, h.supportErr
			}
			return []string{"clinics/north/referrals/naloxone"}, nil
		})
	env.OnActivity(flow.A.Resend, mock.Anything, mock.Anything).Return(
		func(_ context.Context, r activities.ResendRequest) (activities.Resent, error) {
			h.resends, h.resendAt = append(h.resends, r), append(h.resendAt, env.Now())
			return activities.Resent{Reminder: "clinics/north/reminders/r2", FailsBy: r.Due}, nil
		})
	env.OnActivity(flow.A.SendReminder, mock.Anything, mock.Anything).Return(
		func(_ context.Context, r activities.ReminderRequest) (string, error) {
			flowtest.Sendable(t, r.Message)
			h.reminders, h.calls = append(h.reminders, r), append(h.calls, "remind")
			return "clinics/north/reminders/r1", nil
		})
	return h
}

func (h *harness) run(t *testing.T, recorded time.Time) overdose.Result {
	t.Helper()
	h.env.ExecuteWorkflow(overdose.Name, overdose.Input{Family: family, WarningSign: sign, Recorded: recorded})
	if !h.env.IsWorkflowCompleted() {
		t.Fatal("workflow did not complete")
	}
	if err := h.env.GetWorkflowError(); err != nil {
		t.Fatalf("workflow error: %v", err)
	}
	var res overdose.Result
	if err := h.env.GetWorkflowResult(&res); err != nil {
		t.Fatal(err)
	}
	return res
}

// An unanswered overdose reaches the family's counselor of now after the
// grace, naming the warning sign and saying nothing of what happened.
func TestAlertsTheCounselorAfterTheGrace(t *testing.T) {
	h := newHarness(t)
	start := h.env.Now()
	recorded := start.Add(-time.Second)
	res := h.run(t, recorded)
	if res.Reminder != "clinics/north/reminders/r1" || res.AnsweredBefore ||
		strings.Join(res.Referrals, ",") != "clinics/north/referrals/naloxone" {
		t.Fatalf("result = %+v", res)
	}
	// The alert goes first: it is what a boundary workflow starting now
	// reads as "answered".
	if strings.Join(h.calls, ",") != "remind,support" {
		t.Fatalf("calls = %v", h.calls)
	}
	if len(h.support) != 1 || h.support[0].Family != family || h.support[0].Urgency != "IMMEDIATE" || h.support[0].Member != "" ||
		strings.Join(h.support[0].Kinds, ",") != "HARM_REDUCTION_NALOXONE,HARM_REDUCTION_SYRINGE_SERVICES" || h.support[0].RequestID == "" ||
		h.support[0].Reason != overdose.HarmReductionReason {
		t.Fatalf("harm reduction = %+v", h.support)
	}
	if len(h.asked) != 1 || h.asked[0].Family != family || !h.asked[0].Since.Equal(recorded) {
		t.Fatalf("asked for overdoses %+v", h.asked)
	}
	if waited := h.askedAt[0].Sub(start); waited < activities.DefaultSettings().OverdoseGrace {
		t.Fatalf("checked after %v, before the grace of %v", waited, activities.DefaultSettings().OverdoseGrace)
	}
	if len(h.reminders) != 1 {
		t.Fatalf("reminders = %+v", h.reminders)
	}
	r := h.reminders[0]
	if r.Kind != "OVERDOSE_ALERT" || r.Related != sign || r.To.ID != "counselor-2" || r.Clinic != "north" ||
		r.Origin == "" || r.RequestID == "" || strings.Contains(strings.ToLower(r.Message), "overdose") {
		t.Fatalf("alert = %+v", r)
	}
	if len(h.resends) != 0 {
		t.Fatalf("resent without a failure: %+v", h.resends)
	}
}

// A failed delivery of the alert is sent again after the retry delay; the
// workflow listens for failures long enough and then ends.
func TestFailedAlertIsSentAgain(t *testing.T) {
	h := newHarness(t)
	settings := activities.DefaultSettings()
	start := h.env.Now()
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: "clinics/north/reminders/r1"})
	}, settings.OverdoseGrace+time.Minute)
	res := h.run(t, start)
	if res.Reminder != "clinics/north/reminders/r1" {
		t.Fatalf("result = %+v", res)
	}
	if len(h.resends) != 1 || h.resends[0].Failed != "clinics/north/reminders/r1" || h.resends[0].RequestID == "" {
		t.Fatalf("resends = %+v", h.resends)
	}
	if took := h.env.Now().Sub(start); took < settings.OverdoseGrace+flow.ListenFor(settings) {
		t.Fatalf("the workflow ended after %v, before listening %v", took, flow.ListenFor(settings))
	}
}

// A failed alert is sent again after the retry delay even while the
// harm-reduction referrals that follow it are tried again and again in an
// outage of the referrals service: an urgent alert does not wait behind
// them, up to a day.
func TestFailedAlertIsSentAgainDuringAReferralsOutage(t *testing.T) {
	h := newHarness(t)
	settings := activities.DefaultSettings()
	start := h.env.Now()
	failedAt := start.Add(settings.OverdoseGrace + time.Minute)
	h.supportDownUntil = start.Add(24 * time.Hour)
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: "clinics/north/reminders/r1"})
	}, failedAt.Sub(start))
	res := h.run(t, start)
	if res.Reminder != "clinics/north/reminders/r1" || len(res.Referrals) != 0 {
		t.Fatalf("result = %+v; want the alert, and no referral", res)
	}
	if len(h.resends) != 1 || h.resends[0].Failed != "clinics/north/reminders/r1" {
		t.Fatalf("resends = %+v; want the alert's", h.resends)
	}
	if !h.supportLastAt.After(failedAt) {
		t.Fatalf("the referrals were last tried at +%v, before the alert failed at +%v: the test shows nothing", h.supportLastAt.Sub(start), failedAt.Sub(start))
	}
	if want := failedAt.Add(settings.ReminderRetryDelay); !h.resendAt[0].Equal(want) {
		t.Fatalf("the failed alert was sent again at +%v, the referrals last tried at +%v; want it at +%v, the retry delay after it failed",
			h.resendAt[0].Sub(start), h.supportLastAt.Sub(start), want.Sub(start))
	}
}

// A failed alert is not sent again once the overdose was retracted as
// recorded in error: the workflow asks, just before the resend, whether
// it still stands.
func TestRetractedOverdosesAlertIsNotSentAgain(t *testing.T) {
	h := newHarness(t)
	settings := activities.DefaultSettings()
	start := h.env.Now()
	h.env.RegisterDelayedCallback(func() {
		h.open = nil // retracted
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: "clinics/north/reminders/r1"})
	}, settings.OverdoseGrace+time.Minute)
	res := h.run(t, start)
	if res.Reminder != "clinics/north/reminders/r1" {
		t.Fatalf("result = %+v", res)
	}
	if len(h.resends) != 0 {
		t.Fatalf("resends = %+v; want none for a retracted overdose", h.resends)
	}
	if len(h.asked) != 2 {
		t.Fatalf("asked %d times whether the overdose stands; want before the handover and before the resend", len(h.asked))
	}
}

// A check that cannot be made (the families service down) does not hold
// the alert back: given up after flow.SoonEnough, it sends the alert again.
func TestFailedCheckStillSendsTheAlertAgain(t *testing.T) {
	h := newHarness(t)
	settings := activities.DefaultSettings()
	start := h.env.Now()
	h.env.RegisterDelayedCallback(func() {
		h.familyErr = errors.New("families service unavailable") // retryable
		h.env.SignalWorkflow(flow.SignalReminderFailed, flow.ReminderFailed{Reminder: "clinics/north/reminders/r1"})
	}, settings.OverdoseGrace+time.Minute)
	res := h.run(t, start)
	if res.Reminder != "clinics/north/reminders/r1" {
		t.Fatalf("result = %+v", res)
	}
	if len(h.resends) != 1 {
		t.Fatalf("resends = %+v; want the alert sent again", h.resends)
	}
	if at := h.resendAt[0].Sub(start); at > settings.OverdoseGrace+time.Minute+settings.ReminderRetryDelay+flow.SoonEnough+time.Minute {
		t.Fatalf("sent again %v after the start; want within the check's bound of its time", at)
	}
}

// An overdose another workflow answered in the grace (the boundary
// workflow a refusal started) gets no second alert.
func TestAnsweredMeanwhileSendsNothing(t *testing.T) {
	h := newHarness(t)
	h.open = []string{family + "/warningSigns/w2"} // a later one, not this
	if res := h.run(t, h.env.Now()); !res.AnsweredBefore || res.Reminder != "" {
		t.Fatalf("result = %+v", res)
	}
	if len(h.reminders) != 0 || len(h.support) != 0 {
		t.Fatalf("reminders = %+v", h.reminders)
	}
}

// A family deleted meanwhile has no one to alert: the workflow ends
// quietly instead of failing.
func TestDeletedFamilyEndsQuietly(t *testing.T) {
	h := newHarness(t)
	h.familyErr = temporal.NewNonRetryableApplicationError("list warning signs: not found", "RESOURCE_NOT_FOUND", nil)
	if res := h.run(t, h.env.Now()); res.Reminder != "" || res.AnsweredBefore || len(res.Referrals) != 0 {
		t.Fatalf("result = %+v", res)
	}
	if len(h.reminders) != 0 {
		t.Fatalf("reminders = %+v", h.reminders)
	}
}

// A family deleted between the alert and the referrals ends the workflow
// quietly too, its alert made.
func TestFamilyDeletedAfterTheAlertEndsQuietly(t *testing.T) {
	h := newHarness(t)
	h.supportErr = temporal.NewNonRetryableApplicationError("create referral: not found", "RESOURCE_NOT_FOUND", nil)
	if res := h.run(t, h.env.Now()); res.Reminder == "" || len(res.Referrals) != 0 {
		t.Fatalf("result = %+v", res)
	}
	if len(h.reminders) != 1 || len(h.support) != 1 {
		t.Fatalf("reminders %+v, referrals asked %+v", h.reminders, h.support)
	}
	// Its own alert never counts as an earlier answer (a retried task).
	if len(h.asked) != 1 || h.asked[0].IgnoreFrom != "default-test-workflow-id" {
		t.Fatalf("overdoses asked %+v; want its own alerts ignored", h.asked)
	}
}

// Referrals failing after the alert (a matched program deleted since, a
// referrals outage past its retries) do not fail the run: it would run
// again and alert twice. The counselor is told, and the alert's failed
// deliveries are still listened for.
func TestFailedReferralsKeepTheAlert(t *testing.T) {
	h := newHarness(t)
	h.supportErr = temporal.NewNonRetryableApplicationError("program deleted", "PROGRAM_DELETED", nil)
	res := h.run(t, h.env.Now())
	if res.Reminder == "" || len(res.Referrals) != 0 {
		t.Fatalf("result = %+v", res)
	}
	if len(h.reminders) != 2 || h.reminders[1].Kind != "REFERRAL_ESCALATION" || h.reminders[1].Message != overdose.ReferralsFailed {
		t.Fatalf("reminders %+v; want the alert, then the notice that the referrals failed", h.reminders)
	}
}

// A boundary workflow running when the grace ends (a refusal recorded about
// the same time) is told of the overdose and answers it; this workflow
// then does nothing itself.
func TestHandedToARunningBoundary(t *testing.T) {
	h := newHarness(t)
	h.boundary = true
	res := h.run(t, h.env.Now())
	if !res.HandedToBoundary || res.Reminder != "" || len(res.Referrals) != 0 {
		t.Fatalf("result = %+v", res)
	}
	if len(h.handed) != 1 || h.handed[0].WarningSign != sign {
		t.Fatalf("handed to the boundary workflow: %+v", h.handed)
	}
	// Asked once, before the handover, whether it still waits (it does).
	if len(h.asked) != 1 || len(h.reminders) != 0 || len(h.support) != 0 {
		t.Fatalf("answered it too: asked %v, reminders %v, referrals %v", h.asked, h.reminders, h.support)
	}
}

// An overdose retracted in the grace (recorded in error) is not handed to
// a running boundary workflow, which would answer it: OverdosesSince no
// longer lists it, and the workflow ends with nothing done.
func TestRetractedInTheGraceIsNotHandedOver(t *testing.T) {
	h := newHarness(t)
	h.boundary = true
	h.open = nil
	res := h.run(t, h.env.Now())
	if !res.AnsweredBefore || res.HandedToBoundary || res.Reminder != "" || len(res.Referrals) != 0 {
		t.Fatalf("result = %+v", res)
	}
	if len(h.handed) != 0 || len(h.reminders) != 0 || len(h.support) != 0 {
		t.Fatalf("handed %v, reminders %v, referrals %v; want nothing for a retracted overdose", h.handed, h.reminders, h.support)
	}
}
