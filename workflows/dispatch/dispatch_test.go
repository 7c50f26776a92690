package dispatch_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	"go.temporal.io/server/temporaltest"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/outbox"
	"github.com/handoff-health/handoff/services/servicetest"
	"github.com/handoff-health/handoff/workflows/boundary"
	"github.com/handoff-health/handoff/workflows/dispatch"
	"github.com/handoff-health/handoff/workflows/flow"
	"github.com/handoff-health/handoff/workflows/ids"
	"github.com/handoff-health/handoff/workflows/intervention"
	"github.com/handoff-health/handoff/workflows/matintake"
	"github.com/handoff-health/handoff/workflows/overdose"
	"github.com/handoff-health/handoff/workflows/treatmententered"
)

// serve runs an embedded Temporal server with a worker on the task queue
// holding the workflows register gives it, and returns its client.
func serve(t *testing.T, register func(worker.Registry)) client.Client {
	t.Helper()
	ts := temporaltest.NewServer(temporaltest.WithT(t))
	ts.NewWorker(flow.TaskQueue, register)
	return ts.GetDefaultClient()
}

// minute is a context for a test's calls, cancelled when the test ends.
func minute(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// listener stands in for the boundary and overdose workflows under their
// registered names: it counts the overdose signals it receives and runs
// until told to stop.
func listener(ctx workflow.Context) (int, error) {
	n := 0
	if err := workflow.SetQueryHandler(ctx, "signals", func() (int, error) { return n, nil }); err != nil {
		return 0, err
	}
	overdoses, stop := workflow.GetSignalChannel(ctx, boundary.SignalOverdose), workflow.GetSignalChannel(ctx, "stop")
	for done := false; !done; {
		sel := workflow.NewSelector(ctx)
		sel.AddReceive(overdoses, func(c workflow.ReceiveChannel, _ bool) { c.Receive(ctx, nil); n++ })
		sel.AddReceive(stop, func(c workflow.ReceiveChannel, _ bool) { c.Receive(ctx, nil); done = true })
		sel.Select(ctx)
	}
	return n, nil
}

func overdoseEvent(t *testing.T, sign string) outbox.Stored {
	t.Helper()
	p, err := anypb.New(&familiesv1.WarningSign{Name: sign, Kind: familiesv1.WarningSignKind_WARNING_SIGN_KIND_OVERDOSE,
		CreateTime: timestamppb.Now()})
	if err != nil {
		t.Fatal(err)
	}
	return outbox.Stored{ID: 1, Clinic: "north", Type: "handoff.families.v1.warning_sign.overdose", Resource: sign, Payload: p}
}

// An overdose goes to the family's boundary workflow when one runs, and
// otherwise starts the overdose workflow, once. A redelivery after that
// stays with the overdose workflow even if a boundary workflow started
// since: that one would answer the overdose a second time.
func TestOverdoseDispatch(t *testing.T) {
	c := serve(t, func(r worker.Registry) {
		r.RegisterWorkflowWithOptions(listener, workflow.RegisterOptions{Name: boundary.Name})
		r.RegisterWorkflowWithOptions(listener, workflow.RegisterOptions{Name: overdose.Name})
	})
	ctx := minute(t)
	d := &dispatch.Dispatcher{Client: c, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	signals := func(id string) int {
		t.Helper()
		v, err := c.QueryWorkflow(ctx, id, "", "signals")
		if err != nil {
			t.Fatalf("query %s: %v", id, err)
		}
		var n int
		if err := v.Get(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	startBoundary := func(family string) {
		t.Helper()
		if _, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: ids.Boundary(family), TaskQueue: flow.TaskQueue}, boundary.Name); err != nil {
			t.Fatal(err)
		}
	}

	// No boundary workflow: the overdose workflow starts, once.
	famA := "clinics/north/families/a"
	signA := famA + "/warningSigns/w1"
	for range 2 {
		if err := d.Deliver(ctx, overdoseEvent(t, signA)); err != nil {
			t.Fatal(err)
		}
	}
	desc, err := c.DescribeWorkflowExecution(ctx, ids.Overdose(signA), "")
	if err != nil || desc.GetWorkflowExecutionInfo().GetType().GetName() != overdose.Name {
		t.Fatalf("overdose workflow: %v, %v", desc, err)
	}
	// A refusal starts a boundary workflow; the event comes again.
	startBoundary(famA)
	if err := d.Deliver(ctx, overdoseEvent(t, signA)); err != nil {
		t.Fatal(err)
	}
	if n := signals(ids.Boundary(famA)); n != 0 {
		t.Fatalf("the boundary workflow was told of an overdose the overdose workflow has: %d signals", n)
	}

	// A boundary workflow running: it is told, and no overdose workflow
	// starts.
	famB := "clinics/north/families/b"
	signB := famB + "/warningSigns/w1"
	startBoundary(famB)
	if err := d.Deliver(ctx, overdoseEvent(t, signB)); err != nil {
		t.Fatal(err)
	}
	if n := signals(ids.Boundary(famB)); n != 1 {
		t.Fatalf("boundary workflow signals = %d, want 1", n)
	}
	if _, err := c.DescribeWorkflowExecution(ctx, ids.Overdose(signB), ""); err == nil {
		t.Fatal("an overdose workflow started though the boundary workflow runs")
	}

	// A sign named under no family starts nothing (an overdose workflow
	// with no family to read would only fail).
	odd := "clinics/north/warningSigns/w9"
	if err := d.Deliver(ctx, overdoseEvent(t, odd)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DescribeWorkflowExecution(ctx, ids.Overdose(odd), ""); err == nil {
		t.Fatal("an overdose workflow started for a sign of no family")
	}
}

// flaky fails its first run, as a workflow whose service was out for
// longer than its activities retry, and returns the attempt that succeeded.
func flaky(ctx workflow.Context, _ overdose.Input) (int32, error) {
	if a := workflow.GetInfo(ctx).Attempt; a < 2 {
		return 0, errors.New("the families service was out for a day")
	}
	return workflow.GetInfo(ctx).Attempt, nil
}

// A one-shot workflow whose run fails is run again: its event is
// acknowledged already, and nothing else would start it.
func TestFailedOneShotWorkflowRunsAgain(t *testing.T) {
	c := serve(t, func(r worker.Registry) {
		r.RegisterWorkflowWithOptions(flaky, workflow.RegisterOptions{Name: overdose.Name})
	})
	ctx := minute(t)
	d := &dispatch.Dispatcher{Client: c, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), RetryFirst: 100 * time.Millisecond}
	sign := "clinics/north/families/a/warningSigns/w1"
	if err := d.Deliver(ctx, overdoseEvent(t, sign)); err != nil {
		t.Fatal(err)
	}
	var attempt int32
	if err := c.GetWorkflow(ctx, ids.Overdose(sign), "").Get(ctx, &attempt); err != nil || attempt != 2 {
		t.Fatalf("overdose workflow ended with attempt %d, %v; want its second run to answer", attempt, err)
	}
}

// An event whose payload type this binary does not know is passed over,
// not failed: a failure would hold its family's later events forever.
func TestUnknownPayloadTypeIsPassedOver(t *testing.T) {
	e := outbox.Stored{ID: 7, Clinic: "north", Type: "handoff.future.v9.thing.created", Resource: "clinics/north/things/t1",
		Payload: &anypb.Any{TypeUrl: "type.googleapis.com/handoff.future.v9.Thing", Value: []byte{}}}
	d := &dispatch.Dispatcher{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if err := d.Deliver(context.Background(), e); err != nil {
		t.Fatalf("Deliver = %v, want nil", err)
	}
}

// An outcome for an intervention whose workflow ended without finishing
// (here terminated) is lost unless an operator carries it on: it is logged
// as an error, with the workflow's status. One for a workflow that
// completed is a redelivery, and only noted.
func TestOutcomeForAnEndedWorkflowIsAnError(t *testing.T) {
	c := serve(t, func(r worker.Registry) {
		r.RegisterWorkflowWithOptions(listener, workflow.RegisterOptions{Name: intervention.Name})
	})
	ctx := minute(t)
	var logs bytes.Buffer
	d := &dispatch.Dispatcher{Client: c, Log: slog.New(slog.NewJSONHandler(&logs, nil))}
	outcome := func(iv string) outbox.Stored {
		p, err := anypb.New(&interventionsv1.Intervention{Name: iv, State: interventionsv1.InterventionState_INTERVENTION_STATE_COMPLETED,
			Outcome: &interventionsv1.Outcome{Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_ACCEPTED}})
		if err != nil {
			t.Fatal(err)
		}
		return outbox.Stored{ID: 7, Clinic: "north", Type: "handoff.interventions.v1.intervention.outcome_recorded", Resource: iv, Payload: p}
	}
	ended := func(iv string, end func(id string) error) {
		t.Helper()
		id := ids.Intervention(iv)
		run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: flow.TaskQueue}, intervention.Name)
		if err != nil {
			t.Fatal(err)
		}
		if err := end(id); err != nil {
			t.Fatal(err)
		}
		_ = run.Get(ctx, nil)
	}
	terminated, completed := "clinics/north/interventions/t1", "clinics/north/interventions/c1"
	ended(terminated, func(id string) error { return c.TerminateWorkflow(ctx, id, "", "operator") })
	ended(completed, func(id string) error { return c.SignalWorkflow(ctx, id, "", "stop", nil) })
	for _, iv := range []string{terminated, completed} {
		if err := d.Deliver(ctx, outcome(iv)); err != nil {
			t.Fatalf("%s: %v", iv, err)
		}
	}
	var errorsFor []string
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if rec["level"] == "ERROR" {
			errorsFor = append(errorsFor, fmt.Sprint(rec["workflow"], " ", rec["status"]))
		}
	}
	// The workflow is named by its ref, not its id, which names the
	// meeting.
	if strings.Contains(logs.String(), terminated) {
		t.Fatalf("the logs name the workflow by its id:\n%s", logs.String())
	}
	if want := ids.Ref(ids.Intervention(terminated)) + " Terminated"; len(errorsFor) != 1 || errorsFor[0] != want {
		t.Fatalf("errors logged for %v; want only %q:\n%s", errorsFor, want, logs.String())
	}
}

// slowToCancel stands in for an intervention workflow whose cancel handler
// is accepted but does not finish (as one waiting on its first load while
// a service is down).
func slowToCancel(ctx workflow.Context) error {
	if err := workflow.SetUpdateHandler(ctx, intervention.UpdateCancel, func(ctx workflow.Context, _ intervention.Cancel) error {
		return workflow.Await(ctx, func() bool { return false })
	}); err != nil {
		return err
	}
	return workflow.Await(ctx, func() bool { return false })
}

// A cancellation whose update is accepted but not finished still starts
// the release of the meeting's holds within the event's time: the update's
// result is awaited a little only.
func TestCancelReleasesHoldsBehindASlowUpdate(t *testing.T) {
	c := serve(t, func(r worker.Registry) {
		r.RegisterWorkflowWithOptions(slowToCancel, workflow.RegisterOptions{Name: intervention.Name})
	})
	iv := "clinics/north/interventions/slow"
	if _, err := c.ExecuteWorkflow(context.Background(), client.StartWorkflowOptions{ID: ids.Intervention(iv), TaskQueue: flow.TaskQueue}, intervention.Name); err != nil {
		t.Fatal(err)
	}
	p, err := anypb.New(&interventionsv1.Intervention{Name: iv, Family: "clinics/north/families/f1",
		State: interventionsv1.InterventionState_INTERVENTION_STATE_CANCELLED})
	if err != nil {
		t.Fatal(err)
	}
	d := &dispatch.Dispatcher{Client: c, Log: slog.New(slog.DiscardHandler)}
	// A deadline for the event, far beyond the update's little wait: the
	// update's acceptance itself needs a workflow task, which a loaded
	// embedded server can be slow to give.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := d.Deliver(ctx, outbox.Stored{ID: 9, Clinic: "north", Type: "handoff.interventions.v1.intervention.cancelled", Resource: iv, Payload: p}); err != nil {
		t.Fatalf("Deliver behind a slow update: %v", err)
	}
	if _, err := c.DescribeWorkflowExecution(context.Background(), ids.CancelledHolds(iv), ""); err != nil {
		t.Fatalf("the holds' release did not start: %v", err)
	}
}

// An outcome with no treatment accepted starts the release of what is
// still held for the meeting (a place a counselor held by hand, which the
// meeting's workflow does not know); a yes to medication or other
// treatment leaves the places to the intake.
func TestOutcomeWithoutAYesReleasesHolds(t *testing.T) {
	c := serve(t, func(worker.Registry) {})
	d := &dispatch.Dispatcher{Client: c, Log: slog.New(slog.DiscardHandler)}
	for i, c2 := range []struct {
		o       *interventionsv1.Outcome
		release bool
	}{
		{&interventionsv1.Outcome{Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_DECLINED}, true},
		{&interventionsv1.Outcome{Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_ACCEPTED}, false},
		// Support services alone are referred without a place: a place
		// held by hand would wait for its expiry, for no one.
		{&interventionsv1.Outcome{Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_PARTIALLY_ACCEPTED,
			AcceptedServices: []interventionsv1.ServiceKind{interventionsv1.ServiceKind_SERVICE_KIND_HARM_REDUCTION_NALOXONE}}, true},
		// Medication, or other treatment, goes to an intake, which takes
		// the places held.
		{&interventionsv1.Outcome{Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_PARTIALLY_ACCEPTED,
			AcceptedServices: []interventionsv1.ServiceKind{interventionsv1.ServiceKind_SERVICE_KIND_HARM_REDUCTION_NALOXONE,
				interventionsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE}}, false},
		{&interventionsv1.Outcome{Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_PARTIALLY_ACCEPTED,
			AcceptedServices: []interventionsv1.ServiceKind{interventionsv1.ServiceKind_SERVICE_KIND_INPATIENT}}, false},
	} {
		o := c2.o
		iv := fmt.Sprintf("clinics/north/interventions/o%d", i)
		p, err := anypb.New(&interventionsv1.Intervention{Name: iv, Family: "clinics/north/families/f1",
			State: interventionsv1.InterventionState_INTERVENTION_STATE_COMPLETED, Outcome: o})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Deliver(context.Background(), outbox.Stored{ID: int64(20 + i), Clinic: "north",
			Type: "handoff.interventions.v1.intervention.outcome_recorded", Resource: iv, Payload: p}); err != nil {
			t.Fatalf("%v: %v", o, err)
		}
		_, err = c.DescribeWorkflowExecution(context.Background(), ids.CancelledHolds(iv), "")
		if want := c2.release; (err == nil) != want {
			t.Fatalf("%v: the holds' release started: %v; want %v", o, err == nil, want)
		}
	}
}

// A completed referral of the loved one's treatment (MAT, inpatient,
// outpatient) starts the workflow that ends the family's boundary
// follow-up, whether or not a meeting's intake made it (a redelivery is no
// error); a member's, or one for harm reduction, does not, nor does a
// referral that has only been accepted.
func TestTreatmentEnteredEndsTheFollowUp(t *testing.T) {
	c := serve(t, func(worker.Registry) {})
	d := &dispatch.Dispatcher{Client: c, Log: slog.New(slog.DiscardHandler)}
	lovedOne := &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE}
	for i, c2 := range []struct {
		event   string
		subject *referralsv1.ReferralSubject
		kind    referralsv1.ServiceKind
		want    bool
	}{
		{"completed", lovedOne, referralsv1.ServiceKind_SERVICE_KIND_INPATIENT, true},
		{"completed", lovedOne, referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, true},
		{"completed", lovedOne, referralsv1.ServiceKind_SERVICE_KIND_HARM_REDUCTION_NALOXONE, false},
		{"completed", &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_FAMILY_MEMBER, MemberId: "mom"},
			referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT, false},
		{"accepted", lovedOne, referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT, false},
	} {
		name := fmt.Sprintf("clinics/north/referrals/t%d", i)
		p, err := anypb.New(&referralsv1.Referral{Name: name, Family: "clinics/north/families/f1", Subject: c2.subject, ServiceKind: c2.kind})
		if err != nil {
			t.Fatal(err)
		}
		e := outbox.Stored{ID: int64(40 + i), Clinic: "north", Type: "handoff.referrals.v1.referral." + c2.event, Resource: name, Payload: p}
		for range 2 { // delivered, and delivered again
			if err := d.Deliver(minute(t), e); err != nil {
				t.Fatalf("%s %v: %v", c2.event, c2.kind, err)
			}
		}
		_, err = c.DescribeWorkflowExecution(minute(t), ids.TreatmentEntered(name), "")
		if (err == nil) != c2.want {
			t.Fatalf("%s %v of %v: the follow-up's end started: %v; want %v", c2.event, c2.kind, c2.subject.GetKind(), err == nil, c2.want)
		}
	}
}

// Staff recording an entry on the family (treatment entered outside
// Handoff) ends the follow-up too: TreatmentEntered runs for the family,
// once per announcement.
func TestTreatmentEnteredOnTheFamilyEndsTheFollowUp(t *testing.T) {
	c := serve(t, func(worker.Registry) {})
	d := &dispatch.Dispatcher{Client: c, Log: slog.New(slog.DiscardHandler)}
	const family = "clinics/north/families/f1"
	p, err := anypb.New(&familiesv1.Family{Name: family})
	if err != nil {
		t.Fatal(err)
	}
	e := outbox.Stored{ID: 77, Clinic: "north", Type: "handoff.families.v1.family.treatment_entered", Resource: family, Payload: p}
	for range 2 { // delivered, and delivered again
		if err := d.Deliver(minute(t), e); err != nil {
			t.Fatal(err)
		}
	}
	desc, err := c.DescribeWorkflowExecution(minute(t), ids.TreatmentEnteredByFamily(family, 77), "")
	if err != nil {
		t.Fatalf("the follow-up's end did not start: %v", err)
	}
	if got := desc.GetWorkflowExecutionInfo().GetType().GetName(); got != treatmententered.Name {
		t.Fatalf("started %s; want %s", got, treatmententered.Name)
	}
	it := c.GetWorkflowHistory(minute(t), ids.TreatmentEnteredByFamily(family, 77), "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	first, err := it.Next()
	if err != nil {
		t.Fatal(err)
	}
	var in treatmententered.Input
	if err := converter.GetDefaultDataConverter().FromPayloads(first.GetWorkflowExecutionStartedEventAttributes().GetInput(), &in); err != nil {
		t.Fatal(err)
	}
	if in != (treatmententered.Input{Family: family}) {
		t.Fatalf("started with %+v; want the family, no referral", in)
	}
}

// referralListener stands in for the MAT intake workflow: it counts the
// referral transitions it is told of and runs until told to stop.
func referralListener(ctx workflow.Context) (int, error) {
	n := 0
	if err := workflow.SetQueryHandler(ctx, "signals", func() (int, error) { return n, nil }); err != nil {
		return 0, err
	}
	transitions, stop := workflow.GetSignalChannel(ctx, matintake.SignalReferral), workflow.GetSignalChannel(ctx, "stop")
	for done := false; !done; {
		sel := workflow.NewSelector(ctx)
		sel.AddReceive(transitions, func(c workflow.ReceiveChannel, _ bool) { c.Receive(ctx, nil); n++ })
		sel.AddReceive(stop, func(c workflow.ReceiveChannel, _ bool) { c.Receive(ctx, nil); done = true })
		sel.Select(ctx)
	}
	return n, nil
}

// A service recorded after treatment entry, or retracted, changes the
// referral but is no transition: the intake workflow, if it still runs,
// is not told of it; a transition still is.
func TestFollowUpServiceIsNoIntakeTransition(t *testing.T) {
	c := serve(t, func(r worker.Registry) {
		r.RegisterWorkflowWithOptions(referralListener, workflow.RegisterOptions{Name: matintake.Name})
	})
	ctx := minute(t)
	d := &dispatch.Dispatcher{Client: c, Log: slog.New(slog.DiscardHandler)}
	iv := "clinics/north/interventions/i1"
	if _, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: ids.MATIntake(iv), TaskQueue: flow.TaskQueue}, matintake.Name); err != nil {
		t.Fatal(err)
	}
	name := "clinics/north/referrals/r1"
	p, err := anypb.New(&referralsv1.Referral{Name: name, Family: "clinics/north/families/f1", Intervention: iv,
		State: referralsv1.ReferralState_REFERRAL_STATE_COMPLETED, FollowUpServiceCount: 1})
	if err != nil {
		t.Fatal(err)
	}
	for i, step := range []struct {
		event string
		told  int
	}{{"follow_up_recorded", 0}, {"follow_up_retracted", 0}, {"cancelled", 1}} {
		event := step.event
		e := outbox.Stored{ID: int64(60 + i), Clinic: "north", Type: "handoff.referrals.v1.referral." + event, Resource: name, Payload: p}
		if err := d.Deliver(ctx, e); err != nil {
			t.Fatalf("%s: %v", event, err)
		}
		v, err := c.QueryWorkflow(ctx, ids.MATIntake(iv), "", "signals")
		if err != nil {
			t.Fatal(err)
		}
		var n int
		if err := v.Get(&n); err != nil {
			t.Fatal(err)
		}
		if n != step.told {
			t.Fatalf("after %s the intake was told of %d transitions, want %d", event, n, step.told)
		}
	}
}

// downClient is a Temporal frontend that refuses every start, naming the
// workflow id in its message as the server does.
type downClient struct{ client.Client }

func (downClient) ExecuteWorkflow(_ context.Context, o client.StartWorkflowOptions, _ any, _ ...any) (client.WorkflowRun, error) {
	return nil, serviceerror.NewUnavailable("frontend unavailable for " + o.ID)
}

// A failure the relay logs names the workflow by its ref, not its id (the
// family, and that it was deleted), nor in Temporal's own words; the
// error's kind is still there to test.
func TestFailuresNameTheWorkflowByItsRef(t *testing.T) {
	const family = "clinics/north/families/f-rivera"
	p, err := anypb.New(&familiesv1.Family{Name: family})
	if err != nil {
		t.Fatal(err)
	}
	d := &dispatch.Dispatcher{Client: downClient{}, Log: slog.New(slog.DiscardHandler)}
	err = d.Deliver(context.Background(), outbox.Stored{ID: 3, Clinic: "north", Type: "handoff.families.v1.family.deleted", Resource: family, Payload: p})
	var down *serviceerror.Unavailable
	if err == nil || strings.Contains(err.Error(), "rivera") || !strings.Contains(err.Error(), ids.Ref(ids.FamilyDeleted(family))) || !errors.As(err, &down) {
		t.Fatalf("Deliver = %v; want the workflow's ref, not its id, and the Unavailable kept", err)
	}
}

// unreadUpdates accepts every update and answers its result with err.
type unreadUpdates struct {
	client.Client
	err error
}

func (c unreadUpdates) UpdateWorkflow(_ context.Context, o client.UpdateWorkflowOptions) (client.WorkflowUpdateHandle, error) {
	return answered{o: o, err: c.err}, nil
}

type answered struct {
	o   client.UpdateWorkflowOptions
	err error
}

func (a answered) WorkflowID() string             { return a.o.WorkflowID }
func (a answered) RunID() string                  { return "" }
func (a answered) UpdateID() string               { return a.o.UpdateID }
func (a answered) Get(context.Context, any) error { return a.err }

// An accepted update whose result Temporal failed to answer is no
// rejection: the operator is alerted (an error) only when the workflow
// refused the change.
func TestUnreadUpdateResultIsNoRejection(t *testing.T) {
	const iv = "clinics/north/interventions/i1"
	p, err := anypb.New(&interventionsv1.Intervention{Name: iv, State: interventionsv1.InterventionState_INTERVENTION_STATE_SCHEDULED,
		StartTime: timestamppb.Now(), ExpectedDuration: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		err       error
		wantLevel string
	}{
		{"the frontend down", serviceerror.NewUnavailable("frontend unavailable"), "level=WARN"},
		{"the frontend too busy", serviceerror.NewResourceExhausted(0, "busy"), "level=WARN"},
		{"the workflow's refusal", temporal.NewApplicationError("meeting already over", "Refused"), "level=ERROR"},
		// The run reset or deleted since it accepted: the change may never
		// reach it.
		{"the run gone since", serviceerror.NewNotFound("workflow execution not found"), "level=ERROR"},
	} {
		var logs servicetest.LogBuffer
		d := &dispatch.Dispatcher{Client: unreadUpdates{err: c.err}, Log: slog.New(slog.NewTextHandler(&logs, nil))}
		if err := d.Deliver(context.Background(), outbox.Stored{ID: 4, Clinic: "north", Type: "handoff.interventions.v1.intervention.rescheduled",
			Resource: iv, Payload: p}); err != nil {
			t.Fatalf("%s: Deliver = %v; want the accepted update delivered", c.name, err)
		}
		if out := logs.String(); !strings.Contains(out, c.wantLevel) || strings.Contains(out, "rejected") != (c.wantLevel == "level=ERROR") {
			t.Errorf("%s: log %q; want %s, and 'rejected' only for a refusal", c.name, out, c.wantLevel)
		}
	}
}
