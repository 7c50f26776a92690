package main

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

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
)

type flowResult struct {
	Flows                        int
	FullSeconds, NoopSeconds     float64
	FullRate, NoopRate, Ratio    float64
	MeetingWait                  time.Duration
	Timers                       int
	TimerP50, TimerP99, TimerMax time.Duration
	Early                        int
	TimerStart, TimerLead        time.Duration // how long starting the probes took, and how far out they were due
}

// The ceiling: a workflow with one activity that does nothing.
func noopWorkflow(ctx workflow.Context) error {
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: 10 * time.Second})
	return workflow.ExecuteActivity(ctx, "NoopActivity").Get(ctx, nil)
}

func noopActivity(context.Context) error { return nil }

// timerProbe sleeps until due, as the reminder timers do, then records how
// late (or early) its activity ran.
func timerProbe(ctx workflow.Context, due time.Time) (time.Duration, error) {
	if err := workflow.Sleep(ctx, due.Sub(workflow.Now(ctx))); err != nil {
		return 0, err
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
	k := make([]byte, 32)
	pc, err := codec.New("bench", map[string][]byte{"bench": k})
	if err != nil {
		return nil, err
	}
	ts := temporaltest.NewServer(temporaltest.WithBaseClientOptions(client.Options{DataConverter: pc.DataConverter()}))
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
	as := func(subject string, role auth.Role) context.Context {
		return auth.WithToken(ctx, env.issuer.MustMint(auth.TokenOptions{Subject: subject, Clinic: "flows", Roles: []auth.Role{role}, TTL: time.Hour}))
	}
	counselor, admin, ehr := as("c", auth.RoleCounselor), as("a", auth.RoleClinicAdmin), as("e", auth.RoleEHR)
	prog, err := ref.CreateProgram(admin, &referralsv1.CreateProgramRequest{Parent: "clinics/flows", Program: &referralsv1.Program{
		DisplayName: "MAT", Services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE}}})
	if err != nil {
		return nil, err
	}
	if _, err := ref.ReportCapacity(admin, &referralsv1.ReportCapacityRequest{Name: prog.GetName(), AvailableSlots: int32(cfg.flows * 2)}); err != nil {
		return nil, err
	}
	// Families and drafts are prepared before the clock starts.
	wait := 2 * time.Second
	drafts := make([]string, cfg.flows)
	for i := range drafts {
		f, err := fam.CreateFamily(counselor, &familiesv1.CreateFamilyRequest{Parent: "clinics/flows", Family: &familiesv1.Family{
			LovedOne: &familiesv1.LovedOne{GivenName: "B"}, Counselor: "c",
			Members: []*familiesv1.Member{{Id: "m", GivenName: "M", Relationship: familiesv1.Relationship_RELATIONSHIP_PARENT}}}})
		if err != nil {
			return nil, err
		}
		// The EHR reports the program's answers: it needs the patient's consent.
		if _, err := fam.CreateConsent(counselor, &familiesv1.CreateConsentRequest{Parent: f.GetName(),
			Consent: families.TreatmentConsent("Bench clinic", "e", "B", time.Now())}); err != nil {
			return nil, err
		}
		d, err := iv.CreateIntervention(counselor, &interventionsv1.CreateInterventionRequest{Parent: "clinics/flows", Intervention: &interventionsv1.Intervention{
			Family: f.GetName(), Counselor: fmt.Sprintf("c-%d", i), StartTime: timestamppb.New(time.Now().Add(time.Hour)),
			ExpectedDuration: durationpb.New(15 * time.Minute),
			Place:            &interventionsv1.Place{Kind: &interventionsv1.Place_Video{Video: &interventionsv1.VideoPlace{Link: "https://video.example/x"}}},
			Participants:     []*interventionsv1.Participant{{MemberId: "m", Role: interventionsv1.ParticipantRole_PARTICIPANT_ROLE_SUPPORT}}}})
		if err != nil {
			return nil, err
		}
		drafts[i] = d.GetName()
	}
	r := &flowResult{Flows: cfg.flows, MeetingWait: wait}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, cfg.flows)
	for i, name := range drafts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := oneFlow(ctx, c, iv, ref, counselor, ehr, name, wait); err != nil {
				errs <- fmt.Errorf("flow %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	r.FullSeconds = time.Since(start).Seconds()
	r.FullRate = float64(cfg.flows) / r.FullSeconds

	w := worker.New(c, "bench-noop", worker.Options{})
	w.RegisterWorkflowWithOptions(noopWorkflow, workflow.RegisterOptions{Name: "Noop"})
	w.RegisterActivityWithOptions(noopActivity, activity.RegisterOptions{Name: "NoopActivity"})
	w.RegisterWorkflowWithOptions(timerProbe, workflow.RegisterOptions{Name: "TimerProbe"})
	w.RegisterActivityWithOptions(probeActivity, activity.RegisterOptions{Name: "ProbeActivity"})
	if err := w.Start(); err != nil {
		return nil, err
	}
	defer w.Stop()
	start = time.Now()
	runs := make([]client.WorkflowRun, cfg.flows)
	for i := range runs {
		if runs[i], err = c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{TaskQueue: "bench-noop"}, "Noop"); err != nil {
			return nil, err
		}
	}
	for _, run := range runs {
		if err := run.Get(ctx, nil); err != nil {
			return nil, err
		}
	}
	r.NoopSeconds = time.Since(start).Seconds()
	r.NoopRate = float64(cfg.flows) / r.NoopSeconds
	r.Ratio = r.FullRate / r.NoopRate

	// Timers: all due at one instant, far enough out that every probe has
	// set its timer first (starting them is timed and reported: a start
	// that ran past the due time would count start-up as lateness).
	lead := 15 * time.Second
	if cfg.smoke {
		lead = 3 * time.Second
	}
	started := time.Now()
	due := started.Add(lead)
	probes := make([]client.WorkflowRun, cfg.timers)
	var startErr error
	var mu sync.Mutex
	var sg sync.WaitGroup
	for g := range 8 {
		sg.Add(1)
		go func() {
			defer sg.Done()
			for i := g; i < len(probes); i += 8 {
				run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{TaskQueue: "bench-noop"}, "TimerProbe", due)
				mu.Lock()
				probes[i] = run
				startErr = cmp.Or(startErr, err)
				mu.Unlock()
			}
		}()
	}
	sg.Wait()
	if startErr != nil {
		return nil, startErr
	}
	r.TimerStart, r.TimerLead = time.Since(started), lead
	var late []time.Duration
	for _, p := range probes {
		var l time.Duration
		if err := p.Get(ctx, &l); err != nil {
			return nil, err
		}
		if l < 0 {
			r.Early++
		}
		late = append(late, l)
	}
	slices.Sort(late)
	r.Timers = len(late)
	r.TimerP50, r.TimerP99, r.TimerMax = late[len(late)/2], late[len(late)*99/100], late[len(late)-1]
	return r, nil
}

// oneFlow schedules one intervention, records "accepted" after its start,
// and reports intake through the EHR until the workflow completes.
func oneFlow(ctx context.Context, c client.Client, iv interventionsv1.InterventionsServiceClient, ref referralsv1.ReferralsServiceClient,
	counselor, ehr context.Context, name string, wait time.Duration) error {
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
	if _, err := iv.RecordOutcome(counselor, &interventionsv1.RecordOutcomeRequest{Name: name, Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_ACCEPTED}); err != nil {
		return err
	}
	var referral string
	for deadline := time.Now().Add(60 * time.Second); referral == ""; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("no referral for %s", name)
		}
		resp, err := ref.ListReferrals(ehr, &referralsv1.ListReferralsRequest{Parent: "clinics/flows", Filter: fmt.Sprintf("intervention = %q", name)})
		if err != nil {
			return err
		}
		if len(resp.GetReferrals()) > 0 {
			referral = resp.GetReferrals()[0].GetName()
		}
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
