package main

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
	"go.temporal.io/server/temporaltest"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/families"
	"github.com/handoff-health/handoff/services/grpcclient"
	"github.com/handoff-health/handoff/services/stack"
	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/codec"
	"github.com/handoff-health/handoff/workflows/ids"
	hworker "github.com/handoff-health/handoff/workflows/worker"
)

type flowResult struct {
	Flows                     int
	FullSeconds, NoopSeconds  float64 // each the fastest of its rounds
	FlowRounds, NoopRounds    []float64
	FullRate, NoopRate, Ratio float64
	MeetingWait               time.Duration
	// When the flows finished, from the start: the rate above is set by
	// the last, so a straggler shows here.
	FlowP50, FlowP90, FlowMax time.Duration
	FullEvents, NoopEvents    int // history events per run, child workflows included
	IntakeEvents              int // the MAT intake child's part of FullEvents
	// Flows with a workflow task that timed out, and completions turned
	// down (UnhandledCommand) over all flows.
	TimedOutFlows, TurnedDown int
	TimerRuns                 []timerResult
	// What each run cost the whole machine: if both keep the cores busy,
	// the ratio of rates is the ratio of CPU spent per workflow.
	FullCPU, NoopCPU cpuUse
}

// timerResult is one run of timer probes.
type timerResult struct {
	Timers, Early int
	Lead, Window  time.Duration // the first is due Lead after the start, the last Window later
	Start         time.Duration // how long starting them all took
	P50, P99, Max time.Duration // lateness
}

// The ceiling: a workflow with one activity that does nothing.
func noopWorkflow(ctx workflow.Context) error {
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: 10 * time.Second})
	return workflow.ExecuteActivity(ctx, "NoopActivity").Get(ctx, nil)
}

func noopActivity(context.Context) error { return nil }

// timerProbe sleeps until due, as the reminder timers do, then records how
// late (or early) its activity ran. A timer that fired before due by the
// server's own clock (the time of the task it woke) counts as early by
// that much, even if its activity then ran after due.
func timerProbe(ctx workflow.Context, due time.Time) (time.Duration, error) {
	// A probe whose first task starts after due (a burst on a busy
	// machine) sleeps not at all: the SDK takes a negative sleep as none.
	if err := workflow.Sleep(ctx, due.Sub(workflow.Now(ctx))); err != nil {
		return 0, err
	}
	if fired := workflow.Now(ctx); fired.Before(due) {
		return fired.Sub(due), nil
	}
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: 10 * time.Second})
	var late time.Duration
	err := workflow.ExecuteActivity(ctx, "ProbeActivity", due).Get(ctx, &late)
	return late, err
}

func probeActivity(_ context.Context, due time.Time) (time.Duration, error) {
	return time.Since(due), nil
}

// workflowBench carries interventions from scheduling to a completed MAT
// intake through the real services, worker and relays, against the
// no-op ceiling on the same server, and measures timer lateness.
func workflowBench(ctx context.Context, env *benchEnv, cfg config) (*flowResult, error) {
	pc, err := codec.New("bench", map[string][]byte{"bench": make([]byte, 32)})
	if err != nil {
		return nil, err
	}
	r, err := flowRun(ctx, env, cfg, pc)
	if err != nil {
		return nil, err
	}
	// Timers on a server of their own, so that the histories above do not
	// weigh on them. First the target: cfg.timers scheduled at once, due
	// over a minute, all started before the first is due (as reminders are
	// placed when a meeting is scheduled, days ahead). Then the worst case:
	// all due at one instant, which measures how fast a burst drains.
	lead, window := 30*time.Second, time.Minute
	if cfg.smoke {
		lead, window = 3*time.Second, 2*time.Second
	}
	for _, spread := range []time.Duration{window, 0} {
		t, err := timerRun(ctx, pc, cfg.timers, lead, spread)
		if err != nil {
			return nil, err
		}
		r.TimerRuns = append(r.TimerRuns, t)
	}
	return r, nil
}

// flowRun carries cfg.flows interventions to a completed MAT intake, then
// runs as many no-op workflows on the same server.
func flowRun(ctx context.Context, env *benchEnv, cfg config, pc *codec.Codec) (*flowResult, error) {
	ts := temporaltest.NewServer(temporaltest.WithBaseClientOptions(client.Options{DataConverter: pc.DataConverter(), FailureConverter: pc.FailureConverter()}))
	defer ts.Stop()
	c := ts.GetDefaultClient()
	fast := activities.DefaultSettings()
	fast.HoldLead, fast.ReminderOffsets = time.Second, []time.Duration{time.Second}
	fast.OutcomeGrace, fast.OutcomeEscalation, fast.IntakeReminderOffsets = time.Hour, time.Hour, []time.Duration{time.Second}
	workerToken := env.issuer.MustMint(auth.TokenOptions{Subject: "worker", Clinic: auth.AnyClinic, Roles: []auth.Role{auth.RoleWorker}, TTL: time.Hour})
	// Schemas of its own: the API section's floor writes rows the services
	// would not write.
	prefix := env.prefix + "wf_"
	env.schemas = append(env.schemas, prefix+"families", prefix+"interventions", prefix+"referrals")
	st, err := stack.Start(ctx, stack.Config{Log: env.log, DatabaseURL: env.dsn, SchemaPrefix: prefix, Verifier: env.issuer.Verifier(),
		WorkerToken: func(context.Context) (string, error) { return workerToken, nil }, Temporal: c,
		FamiliesAddr: "127.0.0.1:0", InterventionsAddr: "127.0.0.1:0", ReferralsAddr: "127.0.0.1:0",
		Settings: func(string) activities.Settings { return fast }, RelayInterval: 50 * time.Millisecond})
	if err != nil {
		return nil, err
	}
	defer st.Stop()
	var conns []*grpc.ClientConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	dial := func(addr string) *grpc.ClientConn {
		conn, derr := grpcclient.Dial(addr, grpcclient.Config{})
		if derr != nil {
			err = derr
		}
		conns = append(conns, conn)
		return conn
	}
	fam := familiesv1.NewFamiliesServiceClient(dial(st.FamiliesAddr))
	iv := interventionsv1.NewInterventionsServiceClient(dial(st.InterventionsAddr))
	ref := referralsv1.NewReferralsServiceClient(dial(st.ReferralsAddr))
	if err != nil {
		return nil, err
	}
	wait := 2 * time.Second
	r := &flowResult{Flows: cfg.flows, MeetingWait: wait}
	// The flows run in rounds too, and the fastest counts, as the
	// ceiling's does: the same statistic on both sides of the ratio (the
	// first round also warms the worker and the services, which the
	// no-ops, run after it, find warm).
	var drafts []string
	for round := range flowRounds {
		counselor, ehr, ds, err := prepareFlows(ctx, env, fam, iv, ref, cfg.flows)
		if err != nil {
			return nil, err
		}
		if len(ds) == 0 {
			return nil, fmt.Errorf("no flows to run")
		}
		meter := startCPUMeter()
		done, err := runFlows(ctx, c, iv, ref, counselor, ehr, ds, wait)
		if err != nil {
			return nil, err
		}
		cpu := meter.stop()
		r.FlowRounds = append(r.FlowRounds, done[len(done)-1].Seconds())
		if round > 0 && done[len(done)-1] >= r.FlowMax {
			continue
		}
		drafts, r.FullCPU = ds, cpu
		r.FlowP50, r.FlowP90, r.FlowMax = done[rank(len(done), 50)], done[rank(len(done), 90)], done[len(done)-1]
	}
	r.FullSeconds = r.FlowMax.Seconds()
	r.FullRate = float64(cfg.flows) / r.FullSeconds

	w := worker.New(c, "bench-noop", hworker.Options())
	w.RegisterWorkflowWithOptions(noopWorkflow, workflow.RegisterOptions{Name: "Noop"})
	w.RegisterActivityWithOptions(noopActivity, activity.RegisterOptions{Name: "NoopActivity"})
	if err := w.Start(); err != nil {
		return nil, err
	}
	defer w.Stop()
	var rounds []ceilingRound
	for range noopRounds {
		round, err := noopRound(ctx, c, "bench-noop", cfg.flows)
		if err != nil {
			return nil, err
		}
		rounds = append(rounds, round)
		r.NoopRounds = append(r.NoopRounds, round.seconds)
	}
	best := fastest(rounds)
	r.NoopSeconds, r.NoopCPU = best.seconds, best.cpu
	r.NoopRate = float64(cfg.flows) / r.NoopSeconds
	r.Ratio = r.FullRate / r.NoopRate

	// historyEvents follows the intervention into its MAT intake child;
	// counting the child again on its own would count it twice.
	if r.FullEvents, err = historyEvents(ctx, c, ids.Intervention(drafts[0])); err != nil {
		return nil, err
	}
	if r.IntakeEvents, err = historyEvents(ctx, c, ids.MATIntake(drafts[0])); err != nil {
		return nil, err
	}
	if r.NoopEvents, err = historyEvents(ctx, c, best.id); err != nil {
		return nil, err
	}
	if r.TimedOutFlows, r.TurnedDown, err = flowTrouble(ctx, c, drafts); err != nil {
		return nil, err
	}
	return r, nil
}

// noopRounds is how many times the ceiling runs; flowRounds how many
// times the flows do (each round of flows takes tens of seconds).
const (
	noopRounds = 3
	flowRounds = 2
)

// ceilingRound is one round of no-op workflows.
type ceilingRound struct {
	seconds float64
	cpu     cpuUse
	id      string // one of its workflows
}

// fastest returns the quickest round. It is the ceiling: a round slowed by
// anything else on the machine (PostgreSQL's autovacuum after the flows,
// say) would lower the ceiling and flatter the ratio.
func fastest(rounds []ceilingRound) ceilingRound {
	var best ceilingRound
	for i, r := range rounds {
		if i == 0 || r.seconds < best.seconds {
			best = r
		}
	}
	return best
}

// noopRoundLimit bounds a round of no-ops, which takes seconds.
const noopRoundLimit = 5 * time.Minute

// noopRound starts n no-op workflows at once, as the flows are started, so
// that both times hold the same concurrent start calls, and waits for all.
func noopRound(ctx context.Context, c client.Client, queue string, n int) (ceilingRound, error) {
	// A no-op that never finishes (a worker gone) ends the run, not hangs it.
	ctx, cancel := context.WithTimeout(ctx, noopRoundLimit)
	defer cancel()
	start, meter := time.Now(), startCPUMeter()
	var wg sync.WaitGroup
	started := make([]string, n)
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{TaskQueue: queue}, "Noop")
			if err == nil {
				started[i] = run.GetID()
				err = run.Get(ctx, nil)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	r := ceilingRound{cpu: meter.stop(), seconds: time.Since(start).Seconds()}
	close(errs)
	if err := <-errs; err != nil {
		return r, fmt.Errorf("no-op workflows: %w", err)
	}
	if n > 0 {
		r.id = started[0]
	}
	return r, nil
}

// timerRun starts n probes due from lead ahead to lead+window ahead, evenly,
// and reports how late each one's activity ran.
func timerRun(ctx context.Context, pc *codec.Codec, n int, lead, window time.Duration) (timerResult, error) {
	ts := temporaltest.NewServer(temporaltest.WithBaseClientOptions(client.Options{DataConverter: pc.DataConverter(), FailureConverter: pc.FailureConverter()}))
	defer ts.Stop()
	c := ts.GetDefaultClient()
	w := worker.New(c, "bench-timers", hworker.Options())
	w.RegisterWorkflowWithOptions(timerProbe, workflow.RegisterOptions{Name: "TimerProbe"})
	w.RegisterActivityWithOptions(probeActivity, activity.RegisterOptions{Name: "ProbeActivity"})
	if err := w.Start(); err != nil {
		return timerResult{}, err
	}
	defer w.Stop()
	r := timerResult{Timers: n, Lead: lead, Window: window}
	started := time.Now()
	first := started.Add(lead)
	probes := make([]client.WorkflowRun, n)
	var startErr error
	var mu sync.Mutex
	var sg sync.WaitGroup
	for g := range 8 {
		sg.Add(1)
		go func() {
			defer sg.Done()
			for i := g; i < len(probes); i += 8 {
				due := first.Add(window * time.Duration(i) / time.Duration(n))
				run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{TaskQueue: "bench-timers"}, "TimerProbe", due)
				mu.Lock()
				probes[i] = run
				startErr = cmp.Or(startErr, err)
				mu.Unlock()
			}
		}()
	}
	sg.Wait()
	if startErr != nil {
		return r, startErr
	}
	r.Start = time.Since(started)
	var late []time.Duration
	// The last is due lead+window after the start; a probe still running
	// minutes after that will not finish.
	wctx, cancel := context.WithDeadline(ctx, first.Add(window+2*time.Minute))
	defer cancel()
	for i, p := range probes {
		var l time.Duration
		if err := p.Get(wctx, &l); err != nil {
			return r, err
		}
		// The probe sees the time of the task its timer woke, which comes
		// after the timer fired: the server's record of the firing says
		// whether it came before due.
		due := first.Add(window * time.Duration(i) / time.Duration(n))
		fired, err := timerFired(wctx, c, p.GetID())
		if err != nil {
			return r, err
		}
		if l < 0 || (!fired.IsZero() && fired.Before(due)) {
			r.Early++
		}
		late = append(late, l)
	}
	if len(late) == 0 {
		return r, fmt.Errorf("no timers")
	}
	slices.Sort(late)
	r.P50, r.P99, r.Max = late[rank(len(late), 50)], late[rank(len(late), 99)], late[len(late)-1]
	return r, nil
}

// timerFired is when the server fired the timer of workflow id, by its
// history: zero if it set none (its first task came after due).
func timerFired(ctx context.Context, c client.Client, id string) (time.Time, error) {
	var fired time.Time
	err := walkHistory(ctx, c, id, func(e *historypb.HistoryEvent) {
		if e.GetEventType() == enumspb.EVENT_TYPE_TIMER_FIRED {
			fired = e.GetEventTime().AsTime()
		}
	})
	return fired, err
}

// walkHistory calls visit for each event of a workflow's history and of
// the histories of the child workflows it started, each child after the
// event that started it.
func walkHistory(ctx context.Context, c client.Client, id string, visit func(*historypb.HistoryEvent)) error {
	it := c.GetWorkflowHistory(ctx, id, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		e, err := it.Next()
		if err != nil {
			return fmt.Errorf("history of %s: %w", id, err)
		}
		visit(e)
		if a := e.GetStartChildWorkflowExecutionInitiatedEventAttributes(); a != nil {
			if err := walkHistory(ctx, c, a.GetWorkflowId(), visit); err != nil {
				return err
			}
		}
	}
	return nil
}

// historyEvents counts the events of a workflow and of the child workflows
// it started.
func historyEvents(ctx context.Context, c client.Client, id string) (int, error) {
	n := 0
	err := walkHistory(ctx, c, id, func(*historypb.HistoryEvent) { n++ })
	return n, err
}

// taskTrouble is what went wrong with one flow's workflow tasks, child
// included: tasks that timed out (the worker never answered; under load
// the server can lose a task it recorded as started, see the README) and
// completions the server turned down to deliver a signal first.
type taskTrouble struct {
	TimedOut, TurnedDown int
}

func (t *taskTrouble) visit(e *historypb.HistoryEvent) {
	if e.GetEventType() == enumspb.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT {
		t.TimedOut++
	}
	if a := e.GetWorkflowTaskFailedEventAttributes(); a != nil && a.GetCause() == enumspb.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND {
		t.TurnedDown++
	}
}

// flowTrouble reads every flow's histories after the run: how many flows
// had a workflow task time out, and how many completions were turned down
// in all. A flow that waited out a timeout sets the rate (it counts to the
// last flow), so the report says how many did.
func flowTrouble(ctx context.Context, c client.Client, drafts []string) (late, turnedDown int, err error) {
	for _, d := range drafts {
		var t taskTrouble
		if err := walkHistory(ctx, c, ids.Intervention(d), t.visit); err != nil {
			return 0, 0, err
		}
		if t.TimedOut > 0 {
			late++
		}
		turnedDown += t.TurnedDown
	}
	return late, turnedDown, nil
}

// prepareFlows makes a MAT program with room for n, and n families with
// consent and a draft intervention each, before any clock starts. It
// returns the counselor's and the EHR's contexts and the drafts.
func prepareFlows(ctx context.Context, env *benchEnv, fam familiesv1.FamiliesServiceClient, iv interventionsv1.InterventionsServiceClient,
	ref referralsv1.ReferralsServiceClient, n int) (counselor, ehr context.Context, drafts []string, err error) {
	as := func(subject string, role auth.Role) context.Context {
		return auth.WithToken(ctx, env.issuer.MustMint(auth.TokenOptions{Subject: subject, Clinic: "flows", Roles: []auth.Role{role}, TTL: time.Hour}))
	}
	admin := as("a", auth.RoleClinicAdmin)
	counselor, ehr = as("c", auth.RoleCounselor), as("e", auth.RoleEHR)
	prog, err := ref.CreateProgram(admin, &referralsv1.CreateProgramRequest{Parent: "clinics/flows", Program: &referralsv1.Program{
		DisplayName: "MAT", Services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE}}})
	if err != nil {
		return nil, nil, nil, err
	}
	if _, err := ref.ReportCapacity(admin, &referralsv1.ReportCapacityRequest{Name: prog.GetName(), AvailableSlots: int32(n * 2)}); err != nil {
		return nil, nil, nil, err
	}
	drafts = make([]string, n)
	for i := range drafts {
		f, err := fam.CreateFamily(counselor, &familiesv1.CreateFamilyRequest{Parent: "clinics/flows", Family: &familiesv1.Family{
			LovedOne: &familiesv1.LovedOne{GivenName: "B"}, Counselor: "c",
			Members: []*familiesv1.Member{{Id: "m", GivenName: "M", Relationship: familiesv1.Relationship_RELATIONSHIP_PARENT}}}})
		if err != nil {
			return nil, nil, nil, err
		}
		// The EHR reports the program's answers: it needs the patient's consent.
		if _, err := fam.CreateConsent(counselor, &familiesv1.CreateConsentRequest{Parent: f.GetName(),
			Consent: families.TreatmentConsent("Bench clinic", "e", "B", time.Now())}); err != nil {
			return nil, nil, nil, err
		}
		d, err := iv.CreateIntervention(counselor, &interventionsv1.CreateInterventionRequest{Parent: "clinics/flows", Intervention: &interventionsv1.Intervention{
			Family: f.GetName(), Counselor: fmt.Sprintf("c-%d", i), StartTime: timestamppb.New(time.Now().Add(time.Hour)),
			ExpectedDuration: durationpb.New(15 * time.Minute),
			Place:            &interventionsv1.Place{Kind: &interventionsv1.Place_Video{Video: &interventionsv1.VideoPlace{Link: "https://video.example/x"}}},
			Participants:     []*interventionsv1.Participant{{MemberId: "m", Role: interventionsv1.ParticipantRole_PARTICIPANT_ROLE_SUPPORT}}}})
		if err != nil {
			return nil, nil, nil, err
		}
		drafts[i] = d.GetName()
	}
	return counselor, ehr, drafts, nil
}

// runFlows carries every draft to a completed MAT intake at once, with one
// EHR inbox for all. It returns when each flow finished, counted from the
// start and sorted, or the first error.
func runFlows(ctx context.Context, c client.Client, iv interventionsv1.InterventionsServiceClient, ref referralsv1.ReferralsServiceClient,
	counselor, ehr context.Context, drafts []string, wait time.Duration) ([]time.Duration, error) {
	inbox := newEHRInbox()
	ictx, stopInbox := context.WithCancel(ehr) // the EHR reads its inbox
	defer stopInbox()
	go inbox.run(ictx, ref, "clinics/flows", 100*time.Millisecond)
	var wg sync.WaitGroup
	errs := make(chan error, len(drafts))
	done := make([]time.Duration, len(drafts))
	start := time.Now()
	for i, name := range drafts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := oneFlow(ctx, c, iv, ref, inbox, counselor, ehr, name, wait); err != nil {
				errs <- fmt.Errorf("flow %s: %w", name, err)
			}
			done[i] = time.Since(start)
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	slices.Sort(done)
	return done, nil
}

// oneFlow schedules one intervention, records "accepted" after its start,
// and reports intake through the EHR, once the EHR's inbox has the
// referral, until the workflow completes.
func oneFlow(ctx context.Context, c client.Client, iv interventionsv1.InterventionsServiceClient, ref referralsv1.ReferralsServiceClient,
	inbox *ehrInbox, counselor, ehr context.Context, name string, wait time.Duration) error {
	start := time.Now().Add(wait)
	if _, err := iv.UpdateIntervention(counselor, &interventionsv1.UpdateInterventionRequest{
		Intervention: &interventionsv1.Intervention{Name: name, StartTime: timestamppb.New(start)},
		UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"start_time"}}}); err != nil {
		return err
	}
	if _, err := iv.ScheduleIntervention(counselor, &interventionsv1.ScheduleInterventionRequest{Name: name}); err != nil {
		return err
	}
	time.Sleep(time.Until(start) + 50*time.Millisecond)
	arrived := inbox.expect(name)
	if _, err := iv.RecordOutcome(counselor, &interventionsv1.RecordOutcomeRequest{Name: name, Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_ACCEPTED}); err != nil {
		return err
	}
	var referral string
	select {
	case r, ok := <-arrived:
		if !ok {
			return fmt.Errorf("no referral for %s: %w", name, inbox.failure())
		}
		referral = r
	case <-time.After(60 * time.Second):
		return fmt.Errorf("no referral for %s within 60s", name)
	}
	if _, err := ref.AcceptReferral(ehr, &referralsv1.TransitionReferralRequest{Name: referral}); err != nil {
		return err
	}
	if _, err := ref.ScheduleReferral(ehr, &referralsv1.ScheduleReferralRequest{Name: referral,
		IntakeAppointment: &referralsv1.IntakeAppointment{StartTime: timestamppb.New(time.Now().Add(time.Hour))}}); err != nil {
		return err
	}
	if _, err := ref.CompleteReferral(ehr, &referralsv1.CompleteReferralRequest{Name: referral}); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return c.GetWorkflow(wctx, ids.Intervention(name), "").Get(wctx, nil)
}
