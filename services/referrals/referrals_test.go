package referrals_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/consentgate"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
	"github.com/handoff-health/handoff/services/referrals"
	"github.com/handoff-health/handoff/services/servicetest"
)

// clock is a test clock that tests move forward.
type clock struct{ offset atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

type fixture struct {
	env    *servicetest.Env
	pool   *pgxpool.Pool
	srv    *referrals.Server
	clock  *clock
	client referralsv1.ReferralsServiceClient
	ctx    context.Context // counselor of clinic "north"
	admin  context.Context
	ehr    context.Context
	// consent stands in for the families service's consent check; the
	// stack tests use the real one.
	consent *fakeConsent
}

func setup(t testing.TB) *fixture {
	t.Helper()
	pool, schema := pgtest.Schema(t, referrals.Migrations()...)
	c := &clock{}
	consent := &fakeConsent{refused: map[string]bool{}, requestIDs: map[string]bool{}, revokedLate: map[string]bool{}}
	srv := referrals.New(pgtest.App(t, schema), referrals.Config{Now: c.Now, Consent: &consentgate.Gate{Families: consent}, Families: consent,
		Interventions: consent})
	env := servicetest.Start(t, referrals.Policy(), func(s *grpc.Server) { referralsv1.RegisterReferralsServiceServer(s, srv) })
	env.Server.SetAuditor(srv.Auditor())
	return &fixture{env: env, pool: pool, srv: srv, clock: c, consent: consent, client: referralsv1.NewReferralsServiceClient(env.Conn),
		ctx: env.Counselor("north"), admin: env.As("north", "admin-1", auth.RoleClinicAdmin),
		ehr: env.As("north", "ehr", auth.RoleEHR)}
}

func (f *fixture) program(t testing.TB, p *referralsv1.Program, slots int32) *referralsv1.Program {
	t.Helper()
	out, err := f.client.CreateProgram(f.admin, &referralsv1.CreateProgramRequest{Parent: "clinics/north", Program: p})
	if err != nil {
		t.Fatalf("CreateProgram: %v", err)
	}
	out, err = f.client.ReportCapacity(f.admin, &referralsv1.ReportCapacityRequest{Name: out.GetName(), AvailableSlots: slots})
	if err != nil {
		t.Fatalf("ReportCapacity: %v", err)
	}
	return out
}

func buprenorphine(name string) *referralsv1.Program {
	return &referralsv1.Program{DisplayName: name, Organization: "Riverside Health",
		Services:         []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT},
		PaymentsAccepted: []referralsv1.PaymentKind{referralsv1.PaymentKind_PAYMENT_KIND_MEDICAID},
		SameDayIntake:    true, SameDayInduction: true, Telehealth: true,
		Address: &referralsv1.Address{Locality: "Springfield", PostalCode: "62701"}}
}

func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("got %v (%v), want %v", got, err, want)
	}
}

// hold holds a buprenorphine place at program for the family, for
// intervention if one is named.
func (f *fixture) hold(t *testing.T, program, intervention string) *referralsv1.Hold {
	t.Helper()
	h, err := f.client.HoldSlot(f.ctx, &referralsv1.HoldSlotRequest{Program: program,
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Family: family, Intervention: intervention})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func (f *fixture) capacity(t *testing.T, name string) (available, held int32) {
	t.Helper()
	p, err := f.client.GetProgram(f.ctx, &referralsv1.GetProgramRequest{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return p.GetCapacity().GetAvailableSlots(), p.GetCapacity().GetHeldSlots()
}

// holder begins a transaction that a test holds a lock in, and returns it
// with its backend's pid, to watch who waits on it. It is rolled back at
// the end unless the test commits it.
func (f *fixture) holder(t *testing.T) (pgx.Tx, int) {
	t.Helper()
	ctx := context.Background()
	tx, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(ctx) }) // a no-op once committed
	var pid int
	if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	return tx, pid
}

const family = "clinics/north/families/f1"

// 50 concurrent holds on a program with 7 free slots: exactly 7 succeed.
func TestHoldsNeverOversell(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 7)
	var ok, full atomic.Int32
	var wg sync.WaitGroup
	holds := make(chan string, 50)
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h, err := f.client.HoldSlot(f.ctx, &referralsv1.HoldSlotRequest{Program: p.GetName(),
				ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Family: family,
				Intervention: fmt.Sprintf("clinics/north/interventions/i%d", i)})
			switch status.Code(err) {
			case codes.OK:
				ok.Add(1)
				holds <- h.GetName()
			case codes.FailedPrecondition:
				full.Add(1)
			default:
				t.Errorf("hold %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	close(holds)
	if ok.Load() != 7 || full.Load() != 43 {
		t.Fatalf("%d holds succeeded and %d were refused; want 7 and 43", ok.Load(), full.Load())
	}
	if a, h := f.capacity(t, p.GetName()); a != 0 || h != 7 {
		t.Fatalf("capacity = %d free, %d held; want 0, 7", a, h)
	}
	// A release gives its slot back.
	first := <-holds
	if _, err := f.client.ReleaseHold(f.ctx, &referralsv1.ReleaseHoldRequest{Name: first, Reason: "intervention cancelled"}); err != nil {
		t.Fatalf("ReleaseHold: %v", err)
	}
	_, err := f.client.ReleaseHold(f.ctx, &referralsv1.ReleaseHoldRequest{Name: first})
	wantCode(t, err, codes.FailedPrecondition)
	if a, h := f.capacity(t, p.GetName()); a != 1 || h != 6 {
		t.Fatalf("after release: %d free, %d held; want 1, 6", a, h)
	}
	// Expiry gives every remaining slot back.
	f.clock.Advance(73 * time.Hour)
	// Before the sweeper runs, lists already show the holds as expired.
	for state, want := range map[string]int{"HELD": 0, "EXPIRED": 6} {
		resp, err := f.client.ListHolds(f.ctx, &referralsv1.ListHoldsRequest{Parent: "clinics/north", Filter: "state = " + state})
		if err != nil || len(resp.GetHolds()) != want {
			t.Fatalf("holds in state %s before the sweep: %d, %v; want %d", state, len(resp.GetHolds()), err, want)
		}
		// With the reason the sweep will store: the sweep changes
		// nothing of what the holds show but their update time.
		for _, h := range resp.GetHolds() {
			if h.GetReleaseReason() != "expired" {
				t.Fatalf("a hold shown expired before the sweep has release reason %q; want \"expired\"", h.GetReleaseReason())
			}
		}
	}
	// In batches of 4: the sweep goes on until a batch is short.
	f.srv.SetExpireBatch(4)
	if err := f.srv.ExpireHolds(context.Background()); err != nil {
		t.Fatal(err)
	}
	if a, h := f.capacity(t, p.GetName()); a != 7 || h != 0 {
		t.Fatalf("after expiry: %d free, %d held; want 7, 0", a, h)
	}
	// Each batch is stamped when it runs, not when the sweep began: a
	// FHIR client polling by _lastUpdated between two batches of a
	// backlog would otherwise never see the later ones change.
	var stamps int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(DISTINCT update_time) FROM holds WHERE release_reason = 'expired'`).Scan(&stamps); err != nil || stamps != 2 {
		t.Fatalf("the six expired holds bear %d update times (%v); want one per batch, 2", stamps, err)
	}
	second := <-holds
	got, err := f.client.GetHold(f.ctx, &referralsv1.GetHoldRequest{Name: second})
	if err != nil || got.GetState() != referralsv1.HoldState_HOLD_STATE_EXPIRED || got.GetReleaseReason() != "expired" {
		t.Fatalf("expired hold = %v, %v", got, err)
	}
	_, err = f.client.ConvertHold(f.ctx, &referralsv1.ConvertHoldRequest{Name: second, Reason: "accepted"})
	wantCode(t, err, codes.FailedPrecondition)
	var negative bool
	if err := f.pool.QueryRow(context.Background(), `SELECT bool_or(available_slots < 0 OR held_slots < 0) FROM programs`).Scan(&negative); err != nil || negative {
		t.Fatalf("negative capacity: %v %v", negative, err)
	}
}

// A yes whose hold lapsed before the sweep reached it is refused, and the
// slot is free at once: the match that follows must find it.
func TestConvertingALapsedHoldFreesItsSlot(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 1)
	h := f.hold(t, p.GetName(), "clinics/north/interventions/i1")
	f.clock.Advance(73 * time.Hour)
	_, err := f.client.ConvertHold(f.ctx, &referralsv1.ConvertHoldRequest{Name: h.GetName(), Reason: "accepted"})
	wantCode(t, err, codes.FailedPrecondition)
	if a, held := f.capacity(t, p.GetName()); a != 1 || held != 0 {
		t.Fatalf("after converting a lapsed hold: %d free, %d held; want 1, 0 before any sweep", a, held)
	}
	var events int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox
		WHERE event_type = 'handoff.referrals.v1.hold.expired' AND resource = $1`, h.GetName()).Scan(&events); err != nil || events != 1 {
		t.Fatalf("hold.expired events: %d, %v; want 1", events, err)
	}
	// The refused call is recorded as refused, not also as done.
	rows, err := f.pool.Query(context.Background(), `SELECT outcome FROM audit_log WHERE method LIKE '%/ConvertHold' ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	outcomes, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(outcomes) != 1 || outcomes[0] == "OK" {
		t.Fatalf("audit records of the refused conversion: %v, %v; want one, not OK", outcomes, err)
	}
}

// A hold and the referral its conversion makes are recorded in the audit
// trail by their own names, as a create's record is, so that "who made
// this hold?" and "who made this referral?" find their creation; a retried
// conversion answered from its first call too.
func TestHoldAndConversionAreAuditedByWhatTheyMade(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 2)
	h := f.hold(t, p.GetName(), "clinics/north/interventions/i1")
	convert := &referralsv1.ConvertHoldRequest{Name: h.GetName(), Reason: "accepted", RequestId: "convert-1"}
	r, err := f.client.ConvertHold(f.ctx, convert)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.ConvertHold(f.ctx, convert); err != nil {
		t.Fatalf("the conversion retried: %v", err)
	}
	records := func(method string) []string {
		t.Helper()
		rows, err := f.pool.Query(context.Background(), `SELECT resource FROM audit_log WHERE method LIKE '%/'||$1 AND outcome = 'OK' ORDER BY id`, method)
		if err != nil {
			t.Fatal(err)
		}
		out, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := records("HoldSlot"); len(got) != 1 || got[0] != h.GetName() {
		t.Errorf("HoldSlot recorded as %v; want the hold it made, %s", got, h.GetName())
	}
	if got := records("ConvertHold"); len(got) != 2 || got[0] != r.GetName() || got[1] != r.GetName() {
		t.Errorf("ConvertHold, then its retry, recorded as %v; want the referral made, %s, twice", got, r.GetName())
	}
}

// A retry whose first call commits just after the retry found no stored
// answer gets the referral made, not a refusal for the hold the first
// call converted.
func TestConversionRetriedAsTheFirstCommitsGetsItsReferral(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 2)
	h := f.hold(t, p.GetName(), "")
	convert := &referralsv1.ConvertHoldRequest{Name: h.GetName(), Reason: "accepted", RequestId: "convert-race",
		Etag: h.GetEtag()}
	var first *referralsv1.Referral
	var looked atomic.Bool
	f.srv.AfterStored(func(method string) {
		if !strings.HasSuffix(method, "/ConvertHold") || looked.Swap(true) {
			return
		}
		// The retry has looked for an answer; the first call ends now.
		var err error
		if first, err = f.client.ConvertHold(f.ctx, convert); err != nil {
			t.Errorf("the first call: %v", err)
		}
	})
	retry, err := f.client.ConvertHold(f.ctx, convert)
	if err != nil {
		t.Fatalf("the retry as the first call committed: %v; want the referral it made", err)
	}
	if first == nil || retry.GetName() != first.GetName() {
		t.Errorf("the retry answered %s; want the first call's %s", retry.GetName(), first.GetName())
	}
	var n int
	if err := f.pool.QueryRow(f.ctx, `SELECT count(*) FROM referrals`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("%d referrals; want the one", n)
	}
}

// A list of programs agrees with GetHold before the sweep runs: a lapsed
// hold's slot is free in it.
func TestListedProgramsFreeLapsedHolds(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 1)
	if _, err := f.client.HoldSlot(f.ctx, &referralsv1.HoldSlotRequest{Program: p.GetName(),
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Family: family,
		Intervention: "clinics/north/interventions/i1", Ttl: durationpb.New(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(2 * time.Minute)
	list, err := f.client.ListPrograms(f.ctx, &referralsv1.ListProgramsRequest{Parent: "clinics/north"})
	if err != nil || len(list.GetPrograms()) != 1 {
		t.Fatalf("ListPrograms = %v, %v", list, err)
	}
	if c := list.GetPrograms()[0].GetCapacity(); c.GetAvailableSlots() != 1 || c.GetHeldSlots() != 0 {
		t.Fatalf("listed capacity after the hold lapsed: %v; want 1 free, 0 held", c)
	}
}

func TestHoldConvertAndIdempotency(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 2)
	req := &referralsv1.HoldSlotRequest{Program: p.GetName(), ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE,
		Family: family, Intervention: "clinics/north/interventions/i1", Ttl: durationpb.New(time.Hour), RequestId: "hold-i1"}
	h1, err := f.client.HoldSlot(f.ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	h2, err := f.client.HoldSlot(f.ctx, req)
	if err != nil || h2.GetName() != h1.GetName() {
		t.Fatalf("repeated hold = %v, %v; want %s", h2.GetName(), err, h1.GetName())
	}
	if a, h := f.capacity(t, p.GetName()); a != 1 || h != 1 {
		t.Fatalf("a repeated request id took a second slot: %d free, %d held", a, h)
	}
	future := &referralsv1.ConvertHoldRequest{Name: h1.GetName(), Reason: "accepted MAT at the intervention",
		FirstContactTime: timestamppb.New(f.clock.Now().Add(10 * 24 * time.Hour)), RequestId: "convert-i1-future"}
	_, err = f.client.ConvertHold(f.ctx, future)
	wantCode(t, err, codes.InvalidArgument)
	if a, h := f.capacity(t, p.GetName()); a != 1 || h != 1 {
		t.Fatalf("a refused conversion changed the hold: %d free, %d held", a, h)
	}
	conv := &referralsv1.ConvertHoldRequest{Name: h1.GetName(), Reason: "accepted MAT at the intervention",
		FirstContactTime: timestamppb.New(f.clock.Now().Add(-10 * 24 * time.Hour)), RequestId: "convert-i1"}
	r1, err := f.client.ConvertHold(f.ctx, conv)
	if err != nil {
		t.Fatal(err)
	}
	if r1.GetUrgency() != referralsv1.Urgency_URGENCY_IMMEDIATE || r1.GetState() != referralsv1.ReferralState_REFERRAL_STATE_REQUESTED ||
		r1.GetHold() != h1.GetName() || r1.GetSubject().GetKind() != referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE {
		t.Fatalf("converted referral = %v", r1)
	}
	r2, err := f.client.ConvertHold(f.ctx, conv)
	if err != nil || r2.GetName() != r1.GetName() {
		t.Fatalf("repeated convert = %v, %v", r2.GetName(), err)
	}
	if a, h := f.capacity(t, p.GetName()); a != 1 || h != 0 {
		t.Fatalf("after convert: %d free, %d held; want 1, 0 (the slot is used)", a, h)
	}
	acc := &referralsv1.TransitionReferralRequest{Name: r1.GetName(), RequestId: "accept-1"}
	for i := 0; i < 3; i++ {
		if _, err := f.client.AcceptReferral(f.ehr, acc); err != nil {
			t.Fatalf("repeated accept %d: %v", i, err)
		}
	}
	got, _ := f.client.GetReferral(f.ctx, &referralsv1.GetReferralRequest{Name: r1.GetName()})
	if len(got.GetHistory()) != 2 {
		t.Fatalf("history = %v; a repeated request id must not add transitions", got.GetHistory())
	}
	// An appointment long past or beyond any booking horizon is refused.
	for _, at := range []time.Time{f.clock.Now().AddDate(0, -1, 0), f.clock.Now().AddDate(2, 0, 0)} {
		_, err = f.client.ScheduleReferral(f.ehr, &referralsv1.ScheduleReferralRequest{Name: r1.GetName(),
			IntakeAppointment: &referralsv1.IntakeAppointment{StartTime: timestamppb.New(at)}})
		wantCode(t, err, codes.InvalidArgument)
	}
	// A walk-in booked at the edge of the window: a retry after the window
	// moved past it gets the first answer, not a refusal.
	walkIn := &referralsv1.ScheduleReferralRequest{Name: r1.GetName(), RequestId: "walk-in-1", IntakeAppointment: &referralsv1.IntakeAppointment{
		StartTime: timestamppb.New(f.clock.Now().Add(-7*24*time.Hour + time.Minute))}}
	first, err := f.client.ScheduleReferral(f.ehr, walkIn)
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(2 * time.Minute)
	if again, err := f.client.ScheduleReferral(f.ehr, walkIn); err != nil || again.GetEtag() != first.GetEtag() {
		t.Fatalf("retried booking = %v, %v; want the first answer (etag %s)", again.GetEtag(), err, first.GetEtag())
	}
	suite4 := &referralsv1.ScheduleReferralRequest{Name: r1.GetName(),
		IntakeAppointment: &referralsv1.IntakeAppointment{StartTime: timestamppb.New(f.clock.Now().Add(3 * time.Hour)), Location: "Suite 4"}}
	booked, err := f.client.ScheduleReferral(f.ehr, suite4)
	if err != nil {
		t.Fatal(err)
	}
	// The same booking sent again without a request id is no second one.
	events := func() (n int) {
		if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE resource = $1`, r1.GetName()).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	sent := events()
	f.clock.Advance(time.Minute)
	if again, err := f.client.ScheduleReferral(f.ehr, suite4); err != nil || again.GetEtag() != booked.GetEtag() ||
		len(again.GetHistory()) != len(booked.GetHistory()) || events() != sent {
		t.Fatalf("the same booking again: %v, %v (history %d, was %d; events %d, were %d); want the referral as it stood",
			again.GetEtag(), err, len(again.GetHistory()), len(booked.GetHistory()), events(), sent)
	}
	// With a reason of its own, it is a step the history keeps.
	suite4.Reason = "confirmed by phone"
	if noted, err := f.client.ScheduleReferral(f.ehr, suite4); err != nil || len(noted.GetHistory()) != len(booked.GetHistory())+1 ||
		noted.GetHistory()[len(noted.GetHistory())-1].GetReason() != "confirmed by phone" {
		t.Fatalf("the same booking with a reason: %v, %v; want the reason in the history", noted.GetHistory(), err)
	}
	// An entry before the referral began is refused and changes nothing.
	// The refusal tells when the first contact was: to the EHR it is a
	// disclosure, recorded, with the notice.
	f.consent.mu.Lock()
	before := len(f.consent.allowed)
	f.consent.mu.Unlock()
	var refusedMD metadata.MD
	_, err = f.client.CompleteReferral(f.ehr, &referralsv1.CompleteReferralRequest{Name: r1.GetName(),
		TreatmentEntryTime: timestamppb.New(time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC))}, grpc.Header(&refusedMD))
	wantCode(t, err, codes.InvalidArgument)
	f.consent.mu.Lock()
	after := len(f.consent.allowed)
	f.consent.mu.Unlock()
	if after != before+1 || len(refusedMD.Get(consentgate.NoticeHeader)) != 1 {
		t.Fatalf("a completion refused for its time: %d disclosures recorded, notice %q; want one, with the notice",
			after-before, refusedMD.Get(consentgate.NoticeHeader))
	}
	if got, _ := f.client.GetReferral(f.ctx, &referralsv1.GetReferralRequest{Name: r1.GetName()}); got.GetState() != referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED {
		t.Fatalf("after a refused completion the referral is %v", got.GetState())
	}
	done, err := f.client.CompleteReferral(f.ehr, &referralsv1.CompleteReferralRequest{Name: r1.GetName()})
	if err != nil || done.GetDaysToTreatmentEntry() != 10 || done.GetFhirTaskStatus() != "completed" || done.GetTreatmentEntryTime() == nil {
		t.Fatalf("completed = %v, %v", done, err)
	}
}

// Every pair of states: the legal transitions work, all others are refused
// with FAILED_PRECONDITION and change nothing.
func TestReferralStateMachine(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 5)
	S := func(s referralsv1.ReferralState) referralsv1.ReferralState { return s }
	const (
		req  = referralsv1.ReferralState_REFERRAL_STATE_REQUESTED
		acc  = referralsv1.ReferralState_REFERRAL_STATE_ACCEPTED
		rej  = referralsv1.ReferralState_REFERRAL_STATE_REJECTED
		sch  = referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED
		comp = referralsv1.ReferralState_REFERRAL_STATE_COMPLETED
		ns   = referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW
		can  = referralsv1.ReferralState_REFERRAL_STATE_CANCELLED
		hold = referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD
		eie  = referralsv1.ReferralState_REFERRAL_STATE_ENTERED_IN_ERROR
	)
	// Paths that reach each state from REQUESTED.
	paths := map[referralsv1.ReferralState][]referralsv1.ReferralState{
		req: {}, acc: {acc}, rej: {rej}, sch: {acc, sch}, comp: {acc, sch, comp}, ns: {acc, sch, ns}, can: {can},
		hold: {acc, sch, hold}, eie: {eie},
	}
	legal := map[[2]referralsv1.ReferralState]bool{
		{req, acc}: true, {req, rej}: true, {req, can}: true,
		{acc, sch}: true, {acc, rej}: true, {acc, can}: true, {acc, comp}: true,
		{sch, comp}: true, {sch, ns}: true, {sch, can}: true, {sch, sch}: true, {sch, hold}: true,
		// A missed intake, then admitted without a new booking (a walk-in).
		{ns, sch}: true, {ns, can}: true, {ns, comp}: true,
		{hold, sch}: true, {hold, can}: true, {hold, comp}: true,
		// Voided from anything but a treatment entry, or a void.
		{req, eie}: true, {acc, eie}: true, {rej, eie}: true, {sch, eie}: true, {ns, eie}: true, {can, eie}: true, {hold, eie}: true,
	}
	move := func(name string, to referralsv1.ReferralState) error {
		var err error
		switch to {
		case acc:
			_, err = f.client.AcceptReferral(f.ehr, &referralsv1.TransitionReferralRequest{Name: name})
		case rej:
			_, err = f.client.RejectReferral(f.ehr, &referralsv1.RejectReferralRequest{Name: name,
				Rejection: &referralsv1.Rejection{Reason: referralsv1.RejectionReason_REJECTION_REASON_AT_CAPACITY}})
		case sch:
			_, err = f.client.ScheduleReferral(f.ehr, &referralsv1.ScheduleReferralRequest{Name: name,
				IntakeAppointment: &referralsv1.IntakeAppointment{StartTime: timestamppb.New(time.Now().Add(-time.Minute))}})
		case comp:
			_, err = f.client.CompleteReferral(f.ehr, &referralsv1.CompleteReferralRequest{Name: name})
		case ns:
			_, err = f.client.MarkReferralNoShow(f.ehr, &referralsv1.TransitionReferralRequest{Name: name})
		case can:
			_, err = f.client.CancelReferral(f.ctx, &referralsv1.TransitionReferralRequest{Name: name})
		case hold:
			_, err = f.client.PauseReferral(f.ehr, &referralsv1.TransitionReferralRequest{Name: name, Reason: "waiting for prior authorization"})
		case eie:
			_, err = f.client.MarkReferralEnteredInError(f.ctx, &referralsv1.TransitionReferralRequest{Name: name, Reason: "the wrong family"})
		}
		return err
	}
	targets := []referralsv1.ReferralState{acc, rej, sch, comp, ns, can, hold, eie}
	for from, path := range paths {
		for _, to := range targets {
			t.Run(fmt.Sprintf("%v->%v", S(from), to), func(t *testing.T) {
				r, err := f.client.CreateReferral(f.ctx, &referralsv1.CreateReferralRequest{Parent: "clinics/north", Referral: &referralsv1.Referral{
					Family: family, Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE},
					ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Program: p.GetName(),
					Urgency: referralsv1.Urgency_URGENCY_URGENT, Reason: "opioid use disorder, wants to start"}})
				if err != nil {
					t.Fatal(err)
				}
				for _, s := range path {
					if err := move(r.GetName(), s); err != nil {
						t.Fatalf("path to %v, step %v: %v", from, s, err)
					}
				}
				before, _ := f.client.GetReferral(f.ctx, &referralsv1.GetReferralRequest{Name: r.GetName()})
				err = move(r.GetName(), to)
				after, _ := f.client.GetReferral(f.ctx, &referralsv1.GetReferralRequest{Name: r.GetName()})
				if legal[[2]referralsv1.ReferralState{from, to}] {
					if err != nil || after.GetState() != to {
						t.Fatalf("legal move refused: %v, state %v", err, after.GetState())
					}
					return
				}
				wantCode(t, err, codes.FailedPrecondition)
				if after.GetEtag() != before.GetEtag() {
					t.Fatal("a refused transition changed the referral")
				}
			})
		}
	}
}

// A held slot was agreed for its service: a program that stops offering it
// meanwhile still converts the hold (the person's "yes" does not fail),
// while new referrals for the service are refused.
func TestHoldConvertsAfterItsServiceWasDropped(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 2)
	h, err := f.client.HoldSlot(f.ctx, &referralsv1.HoldSlotRequest{Program: p.GetName(), ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE,
		Family: family, Intervention: "clinics/north/interventions/i1", Ttl: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.UpdateProgram(f.admin, &referralsv1.UpdateProgramRequest{
		Program:    &referralsv1.Program{Name: p.GetName(), Services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"services"}}}); err != nil {
		t.Fatal(err)
	}
	r, err := f.client.ConvertHold(f.ctx, &referralsv1.ConvertHoldRequest{Name: h.GetName(), Reason: "accepted MAT at the intervention"})
	if err != nil || r.GetServiceKind() != referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE {
		t.Fatalf("converting a hold whose service the program dropped: %v, %v", r, err)
	}
	_, err = f.client.CreateReferral(f.ctx, &referralsv1.CreateReferralRequest{Parent: "clinics/north", Referral: &referralsv1.Referral{
		Family: family, Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE},
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Program: p.GetName(), Urgency: referralsv1.Urgency_URGENCY_URGENT,
		Reason: "opioid use disorder, wants to start"}})
	wantCode(t, err, codes.FailedPrecondition)
}

// A place held for one medication converts to another the program offers
// (the loved one's yes names what they agreed to); one it does not offer is
// refused, and the hold stays held.
func TestHoldConvertsToTheServiceAgreedTo(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p, h := f.heldAt(t, referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE, referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE)
	_, err := f.client.ConvertHold(f.ctx, &referralsv1.ConvertHoldRequest{Name: h.GetName(), Reason: "accepted naltrexone",
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_NALTREXONE})
	if wantCode(t, err, codes.FailedPrecondition); apperr.Reason(err) != "SERVICE_NOT_OFFERED" {
		t.Fatalf("a service the program does not offer: %v; want SERVICE_NOT_OFFERED", err)
	}
	if got, err := f.client.GetHold(f.ctx, &referralsv1.GetHoldRequest{Name: h.GetName()}); err != nil || got.GetState() != referralsv1.HoldState_HOLD_STATE_HELD {
		t.Fatalf("after a refused conversion the hold is %v (%v); want HELD", got.GetState(), err)
	}
	r, err := f.client.ConvertHold(f.ctx, &referralsv1.ConvertHoldRequest{Name: h.GetName(), Reason: "accepted buprenorphine",
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE})
	if err != nil || r.GetServiceKind() != referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE || r.GetProgram() != p.GetName() {
		t.Fatalf("converting to buprenorphine: %v, %v", r, err)
	}
	if a, held := f.capacity(t, p.GetName()); a != 1 || held != 0 {
		t.Fatalf("after the conversion: %d free, %d held; want 1, 0", a, held)
	}
}

// A conversion to another service checks the program under its lock: a
// program dropping that service while the conversion runs is waited for,
// and the conversion is refused, not made for a service it no longer
// offers. The program's update is held open here until the conversion
// waits on it.
func TestConversionToAnotherServiceWaitsForTheProgramsUpdate(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p, h := f.heldAt(t, referralsv1.ServiceKind_SERVICE_KIND_MAT_NALTREXONE, referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE)
	ctx := context.Background()
	update, pid := f.holder(t)
	if _, err := update.Exec(ctx, `UPDATE programs SET services = $2, version = version + 1 WHERE clinic = 'north' AND id = $1`,
		p.GetName()[strings.LastIndex(p.GetName(), "/")+1:], []int16{int16(referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE)}); err != nil {
		t.Fatal(err)
	}
	converted := make(chan error, 1)
	go func() {
		_, err := f.client.ConvertHold(f.ctx, &referralsv1.ConvertHoldRequest{Name: h.GetName(), Reason: "accepted naltrexone",
			ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_NALTREXONE})
		converted <- err
	}()
	f.awaitBlocked(t, pid, converted, "ConvertHold did not wait for the program's update")
	if err := update.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	err := <-converted
	if wantCode(t, err, codes.FailedPrecondition); apperr.Reason(err) != "SERVICE_NOT_OFFERED" {
		t.Fatalf("converting to a service dropped meanwhile: %v; want SERVICE_NOT_OFFERED", err)
	}
	if got, err := f.client.GetHold(f.ctx, &referralsv1.GetHoldRequest{Name: h.GetName()}); err != nil || got.GetState() != referralsv1.HoldState_HOLD_STATE_HELD {
		t.Fatalf("after the refused conversion the hold is %v (%v); want HELD", got.GetState(), err)
	}
}

// The reason of an open referral can be corrected (with the etag read);
// once the referral is closed, it is what the program was sent and stays.
func TestUpdateReferralChangesTheReasonWhileOpen(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p, r := f.urgentReferral(t)
	update := func(etag, reason string, paths ...string) (*referralsv1.Referral, error) {
		return f.client.UpdateReferral(f.ctx, &referralsv1.UpdateReferralRequest{
			Referral:   &referralsv1.Referral{Name: r.GetName(), Etag: etag, Reason: reason, Program: "clinics/north/programs/other"},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: paths}})
	}
	_, err := update(r.GetEtag(), "corrected", "reason", "program")
	wantCode(t, err, codes.InvalidArgument)
	_, err = update(r.GetEtag(), " ", "reason")
	wantCode(t, err, codes.InvalidArgument)
	got, err := update(r.GetEtag(), "opioid use disorder, asked to start this week", "reason")
	if err != nil || got.GetReason() != "opioid use disorder, asked to start this week" || got.GetProgram() != p.GetName() || got.GetEtag() == r.GetEtag() {
		t.Fatalf("updating the reason: %v, %v", got, err)
	}
	_, err = update(r.GetEtag(), "again", "reason")
	wantCode(t, err, codes.Aborted)
	cancelled, err := f.client.CancelReferral(f.ctx, &referralsv1.TransitionReferralRequest{Name: r.GetName(), Reason: "moved away"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = update(cancelled.GetEtag(), "rewritten after the fact", "reason")
	if wantCode(t, err, codes.FailedPrecondition); apperr.Reason(err) != "REFERRAL_CLOSED" {
		t.Fatalf("updating a cancelled referral: %v; want REFERRAL_CLOSED", err)
	}
	if after, err := f.client.GetReferral(f.ctx, &referralsv1.GetReferralRequest{Name: r.GetName()}); err != nil ||
		after.GetEtag() != cancelled.GetEtag() || after.GetReason() != got.GetReason() {
		t.Fatalf("the refused update changed the referral: %v, %v", after, err)
	}
}

// urgentReferral makes a buprenorphine program with five free slots and
// refers the loved one to it, URGENT.
func (f *fixture) urgentReferral(t *testing.T) (*referralsv1.Program, *referralsv1.Referral) {
	t.Helper()
	p := f.program(t, buprenorphine("Riverside MAT"), 5)
	r, err := f.client.CreateReferral(f.ctx, &referralsv1.CreateReferralRequest{Parent: "clinics/north", Referral: &referralsv1.Referral{
		Family: family, Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE},
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Program: p.GetName(), Urgency: referralsv1.Urgency_URGENCY_URGENT,
		Reason: "opioid use disorder, wants to start"}})
	if err != nil {
		t.Fatal(err)
	}
	return p, r
}

// heldAt makes a program offering buprenorphine and also, and holds a
// place at it for kind.
func (f *fixture) heldAt(t *testing.T, also, kind referralsv1.ServiceKind) (*referralsv1.Program, *referralsv1.Hold) {
	t.Helper()
	prog := buprenorphine("Riverside MAT")
	prog.Services = append(prog.Services, also)
	p := f.program(t, prog, 2)
	h, err := f.client.HoldSlot(f.ctx, &referralsv1.HoldSlotRequest{Program: p.GetName(), ServiceKind: kind,
		Family: family, Intervention: "clinics/north/interventions/i1", Ttl: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	return p, h
}

// awaitBlocked waits until a statement waits on a lock the session pid
// holds; done ending first (the call did not wait) fails the test with
// msg.
func (f *fixture) awaitBlocked(t *testing.T, pid int, done <-chan error, msg string) {
	t.Helper()
	for waiting := 0; waiting == 0; {
		if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))`, pid).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			t.Fatalf("%s: %v", msg, err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// A pause needs its reason, and keeps it in the history; the answer says
// on-hold to FHIR systems.
func TestPauseNeedsAReason(t *testing.T) {
	t.Parallel()
	f := setup(t)
	_, r := f.urgentReferral(t)
	if _, err := f.client.AcceptReferral(f.ehr, &referralsv1.TransitionReferralRequest{Name: r.GetName()}); err != nil {
		t.Fatal(err)
	}
	r, err := f.client.ScheduleReferral(f.ehr, &referralsv1.ScheduleReferralRequest{Name: r.GetName(),
		IntakeAppointment: &referralsv1.IntakeAppointment{StartTime: timestamppb.New(time.Now().Add(time.Hour))}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.client.PauseReferral(f.ehr, &referralsv1.TransitionReferralRequest{Name: r.GetName(), Reason: "  "})
	wantCode(t, err, codes.InvalidArgument)
	if !strings.Contains(status.Convert(err).Message(), "reason") {
		t.Fatalf("the refusal does not name the reason: %v", err)
	}
	if got, _ := f.client.GetReferral(f.ctx, &referralsv1.GetReferralRequest{Name: r.GetName()}); got.GetEtag() != r.GetEtag() {
		t.Fatal("a refused pause changed the referral")
	}
	// The program cancels through the EHR only with a reason.
	_, err = f.client.CancelReferral(f.ehr, &referralsv1.TransitionReferralRequest{Name: r.GetName()})
	wantCode(t, err, codes.InvalidArgument)
	paused, err := f.client.PauseReferral(f.ehr, &referralsv1.TransitionReferralRequest{Name: r.GetName(), Reason: "waiting for prior authorization"})
	if err != nil {
		t.Fatal(err)
	}
	h := paused.GetHistory()
	if paused.GetState() != referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD || paused.GetFhirTaskStatus() != "on-hold" ||
		len(h) == 0 || h[len(h)-1].GetReason() != "waiting for prior authorization" {
		t.Fatalf("paused = %v", paused)
	}
}

func TestReferralValidationAndIsolation(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 1)
	valid := func() *referralsv1.Referral {
		return &referralsv1.Referral{Family: family, Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE},
			ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Program: p.GetName(),
			Urgency: referralsv1.Urgency_URGENCY_ROUTINE, Reason: "wants treatment"}
	}
	cases := map[string]func(*referralsv1.Referral){
		"no reason":                func(r *referralsv1.Referral) { r.Reason = "" },
		"member without id":        func(r *referralsv1.Referral) { r.Subject.Kind = referralsv1.SubjectKind_SUBJECT_KIND_FAMILY_MEMBER },
		"family of another clinic": func(r *referralsv1.Referral) { r.Family = "clinics/south/families/f1" },
		"malformed program":        func(r *referralsv1.Referral) { r.Program = "programs/x" },
		"no urgency":               func(r *referralsv1.Referral) { r.Urgency = 0 },
		"undefined service kind":   func(r *referralsv1.Referral) { r.ServiceKind = 77 },
		"oversized reason":         func(r *referralsv1.Referral) { r.Reason = string(make([]byte, 600)) },
		// Days to treatment count from it; a treatment entry could never
		// follow it.
		"future first contact": func(r *referralsv1.Referral) {
			r.FirstContactTime = timestamppb.New(f.clock.Now().Add(30 * 24 * time.Hour))
		},
		"a family that does not exist": func(r *referralsv1.Referral) { r.Family = "clinics/north/families/gone" },
		"a member not of the family": func(r *referralsv1.Referral) {
			r.Subject = &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_FAMILY_MEMBER, MemberId: "uncle"}
		},
		// Its workflow would take the referral for its own loved one's.
		"another family's intervention":       func(r *referralsv1.Referral) { r.Intervention = "clinics/north/interventions/others" },
		"an intervention that does not exist": func(r *referralsv1.Referral) { r.Intervention = "clinics/north/interventions/gone" },
	}
	f.consent.missing = map[string]bool{"clinics/north/families/gone": true}
	for name, mut := range cases {
		r := valid()
		mut(r)
		_, err := f.client.CreateReferral(f.ctx, &referralsv1.CreateReferralRequest{Parent: "clinics/north", Referral: r})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: got %v, want InvalidArgument", name, err)
		}
	}
	r := valid()
	r.ServiceKind = referralsv1.ServiceKind_SERVICE_KIND_INPATIENT
	_, err := f.client.CreateReferral(f.ctx, &referralsv1.CreateReferralRequest{Parent: "clinics/north", Referral: r})
	wantCode(t, err, codes.FailedPrecondition)
	// Another clinic sees nothing.
	south := f.env.Counselor("south")
	_, err = f.client.GetProgram(south, &referralsv1.GetProgramRequest{Name: p.GetName()})
	wantCode(t, err, codes.NotFound)
	_, err = f.client.HoldSlot(south, &referralsv1.HoldSlotRequest{Program: p.GetName(),
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Family: "clinics/south/families/f1"})
	wantCode(t, err, codes.NotFound)
	// Counselors may not edit the directory.
	_, err = f.client.ReportCapacity(f.ctx, &referralsv1.ReportCapacityRequest{Name: p.GetName(), AvailableSlots: 3})
	wantCode(t, err, codes.PermissionDenied)
	_, err = f.client.ReportCapacity(f.admin, &referralsv1.ReportCapacityRequest{Name: p.GetName(), AvailableSlots: -1})
	wantCode(t, err, codes.InvalidArgument)
	// A count past any program's would leave no room for the slots holds
	// give back (the column is 32 bits).
	_, err = f.client.ReportCapacity(f.admin, &referralsv1.ReportCapacityRequest{Name: p.GetName(), AvailableSlots: 2147483647})
	if wantCode(t, err, codes.InvalidArgument); !slices.Contains(apperr.ViolatedFields(err), "available_slots") {
		t.Fatalf("refusal of a huge count names %v", apperr.ViolatedFields(err))
	}
	// A hold for no one would take a real slot.
	_, err = f.client.HoldSlot(f.ctx, &referralsv1.HoldSlotRequest{Program: p.GetName(),
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Family: "clinics/north/families/gone"})
	wantCode(t, err, codes.InvalidArgument)
	// A hold naming another family's meeting would be taken by that
	// meeting's workflow for its own loved one.
	for _, iv := range []string{"clinics/north/interventions/others", "clinics/north/interventions/gone"} {
		_, err = f.client.HoldSlot(f.ctx, &referralsv1.HoldSlotRequest{Program: p.GetName(),
			ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Family: family, Intervention: iv})
		wantViolation(t, err, "intervention")
	}
	if got, err := f.client.GetProgram(f.ctx, &referralsv1.GetProgramRequest{Name: p.GetName()}); err != nil ||
		got.GetCapacity().GetHeldSlots() != 0 {
		t.Fatalf("a refused hold holds a slot: %v %v", got.GetCapacity(), err)
	}
	var n int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM referrals`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("referrals = %d, %v: refused requests must write nothing", n, err)
	}
}

func TestMatchProgramsOverGRPC(t *testing.T) {
	t.Parallel()
	f := setup(t)
	bup := f.program(t, buprenorphine("Riverside MAT"), 2)
	full := f.program(t, buprenorphine("Full MAT"), 0)
	f.program(t, &referralsv1.Program{DisplayName: "Naloxone van",
		Services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_HARM_REDUCTION_NALOXONE}}, 9)
	resp, err := f.client.MatchPrograms(f.ctx, &referralsv1.MatchProgramsRequest{Parent: "clinics/north",
		Urgency: referralsv1.Urgency_URGENCY_IMMEDIATE, Coverage: referralsv1.CoverageKind_COVERAGE_KIND_MEDICAID,
		Barriers: []referralsv1.BarrierKind{referralsv1.BarrierKind_BARRIER_KIND_FEAR_OF_WITHDRAWAL}})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetMatches()) != 1 || resp.GetMatches()[0].GetProgram().GetName() != bup.GetName() {
		t.Fatalf("immediate match = %v; want only %s (the full program and the van must be left out)", resp.GetMatches(), bup.GetName())
	}
	resp, err = f.client.MatchPrograms(f.ctx, &referralsv1.MatchProgramsRequest{Parent: "clinics/north",
		Urgency: referralsv1.Urgency_URGENCY_ROUTINE, ExcludePrograms: []string{bup.GetName()}})
	if err != nil || len(resp.GetMatches()) != 1 || resp.GetMatches()[0].GetProgram().GetName() != full.GetName() {
		t.Fatalf("routine match excluding %s = %v, %v", bup.GetName(), resp.GetMatches(), err)
	}
}

// A match given the person's age leaves out the programs that would turn
// them away for it, even where they would score best; without an age it
// leaves out none. Ages are set on create and by update mask, and a pair
// that cannot hold is refused with its field, changing nothing.
func TestMatchLeavesOutProgramsForOtherAges(t *testing.T) {
	t.Parallel()
	f := setup(t)
	aged := func(name string, minAge, maxAge int32, best bool) *referralsv1.Program {
		p := buprenorphine(name)
		p.MinAge, p.MaxAge = minAge, maxAge
		if !best { // another profile, scored lower
			p.SameDayInduction, p.Telehealth = false, false
		}
		return f.program(t, p, 3)
	}
	// Four adult programs that score best: more than the three asked for,
	// so that a match counting them for a 15-year-old would stop there.
	var adults []string
	for i := range 4 {
		adults = append(adults, aged(fmt.Sprintf("Adult MAT %d", i), 18, 0, true).GetName())
	}
	teen := aged("Teen MAT", 12, 17, false).GetName()
	anyone := aged("Open MAT", 0, 0, false).GetName()
	match := func(age int32) []string {
		t.Helper()
		// Telehealth and a fear of withdrawal score the adult programs'
		// profile above the other.
		resp, err := f.client.MatchPrograms(f.ctx, &referralsv1.MatchProgramsRequest{Parent: "clinics/north", Age: age, MaxResults: 3,
			PrefersTelehealth: true, Barriers: []referralsv1.BarrierKind{referralsv1.BarrierKind_BARRIER_KIND_FEAR_OF_WITHDRAWAL}})
		if err != nil {
			t.Fatalf("match at %d: %v", age, err)
		}
		var out []string
		for _, m := range resp.GetMatches() {
			out = append(out, m.GetProgram().GetName())
		}
		slices.Sort(out)
		return out
	}
	want := []string{anyone, teen}
	slices.Sort(want)
	if got := match(15); !slices.Equal(got, want) {
		t.Fatalf("a 15-year-old's matches = %v; want the teen and the open program", got)
	}
	for _, name := range match(40) {
		if name == teen {
			t.Fatalf("a 40-year-old matched the teen program: %v", match(40))
		}
	}
	if got := match(0); len(got) != 3 || !slices.Contains(adults, got[0]) {
		t.Fatalf("matches without an age = %v; want three of the best, the adult programs", got)
	}
	if got := match(17); !slices.Equal(got, want) {
		t.Fatalf("a 17-year-old's matches = %v; want the teen and the open program (17 is the teen program's last year)", got)
	}

	// Set and changed with the program; a pair that cannot hold is refused.
	p, err := f.client.GetProgram(f.ctx, &referralsv1.GetProgramRequest{Name: teen})
	if err != nil || p.GetMinAge() != 12 || p.GetMaxAge() != 17 {
		t.Fatalf("GetProgram = ages %d to %d, %v; want 12 to 17", p.GetMinAge(), p.GetMaxAge(), err)
	}
	bad := buprenorphine("Backwards")
	bad.MinAge, bad.MaxAge = 21, 18
	_, err = f.client.CreateProgram(f.admin, &referralsv1.CreateProgramRequest{Parent: "clinics/north", Program: bad})
	if st, _ := status.FromError(err); st.Code() != codes.InvalidArgument || !strings.Contains(fmt.Sprint(st.Details()), "program.max_age") {
		t.Fatalf("create with ages 21 to 18: %v; want INVALID_ARGUMENT naming program.max_age", err)
	}
	bad.MinAge, bad.MaxAge = 200, 0
	_, err = f.client.CreateProgram(f.admin, &referralsv1.CreateProgramRequest{Parent: "clinics/north", Program: bad})
	wantCode(t, err, codes.InvalidArgument)
	_, err = f.client.UpdateProgram(f.admin, &referralsv1.UpdateProgramRequest{Program: &referralsv1.Program{Name: teen, MaxAge: 10},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"max_age"}}})
	wantCode(t, err, codes.InvalidArgument)
	p, err = f.client.UpdateProgram(f.admin, &referralsv1.UpdateProgramRequest{Program: &referralsv1.Program{Name: teen, MaxAge: 20},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"max_age"}}})
	if err != nil || p.GetMinAge() != 12 || p.GetMaxAge() != 20 {
		t.Fatalf("UpdateProgram(max_age 20) = ages %d to %d, %v; want 12 to 20", p.GetMinAge(), p.GetMaxAge(), err)
	}
	resp, err := f.client.MatchPrograms(f.ctx, &referralsv1.MatchProgramsRequest{Parent: "clinics/north", Age: 19})
	if err != nil || !slices.ContainsFunc(resp.GetMatches(), func(m *referralsv1.ProgramMatch) bool { return m.GetProgram().GetName() == teen }) {
		t.Fatalf("a 19-year-old's matches after the teen program took up to 20 = %v, %v; want it among them", resp.GetMatches(), err)
	}
}

func BenchmarkMatchPrograms10k(b *testing.B) {
	f := setup(b)
	ctx := context.Background()
	// A directory of 10,000 programs, a third of them offering MAT.
	if _, err := f.pool.Exec(ctx, `INSERT INTO programs (clinic, id, doc, services, payments, telehealth, same_day_intake,
		same_day_induction, available_slots, waitlist)
		SELECT 'north', 'p' || i, jsonb_build_object('display_name', 'Program ' || i),
			CASE i % 3 WHEN 0 THEN '{2,5}'::smallint[] WHEN 1 THEN '{9,10}'::smallint[] ELSE '{7}'::smallint[] END,
			CASE i % 2 WHEN 0 THEN '{1}'::smallint[] ELSE '{5,6}'::smallint[] END,
			i % 4 = 0, i % 5 = 0, i % 7 = 0, i % 6, i % 11 = 0
		FROM generate_series(1, 10000) i`); err != nil {
		b.Fatal(err)
	}
	req := &referralsv1.MatchProgramsRequest{Parent: "clinics/north", Urgency: referralsv1.Urgency_URGENCY_IMMEDIATE,
		Coverage: referralsv1.CoverageKind_COVERAGE_KIND_MEDICAID,
		Barriers: []referralsv1.BarrierKind{referralsv1.BarrierKind_BARRIER_KIND_FEAR_OF_WITHDRAWAL, referralsv1.BarrierKind_BARRIER_KIND_LOGISTICAL_WORK}}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resp, err := f.client.MatchPrograms(f.ctx, req)
		if err != nil || len(resp.GetMatches()) != 10 {
			b.Fatalf("match: %d results, %v", len(resp.GetMatches()), err)
		}
	}
}

// fakeConsent refuses disclosures of the families in refused, lists covered
// as the families whose consent covers the caller, and counts the
// disclosures it allowed.
type fakeConsent struct {
	mu      sync.Mutex
	refused map[string]bool
	covered []string
	allowed []string
	// members are the members whose own consent covers their referrals,
	// as consentgate.MemberKey gives them; a member's referral is refused
	// otherwise, whatever the family's consent.
	members []*familiesv1.CoveredMember
	// missing are families that do not exist; every other one does, with
	// the member "mom".
	missing    map[string]bool
	requestIDs map[string]bool
	// revokedLate are families whose consent passes the check
	// (validate_only) and is revoked before the record.
	revokedLate map[string]bool
	// firstContact is every family's first contact.
	firstContact *timestamppb.Timestamp
}

func (c *fakeConsent) GetFamily(_ context.Context, in *familiesv1.GetFamilyRequest, _ ...grpc.CallOption) (*familiesv1.Family, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.missing[in.GetName()] {
		return nil, status.Error(codes.NotFound, in.GetName()+" not found")
	}
	return &familiesv1.Family{Name: in.GetName(), Members: []*familiesv1.Member{{Id: "mom"}}, FirstContactTime: c.firstContact}, nil
}

// GetIntervention stands in for the interventions service: every
// intervention is of the family f1 and scheduled, but ".../others" (of
// f2), ".../gone" (none), and those whose ids name how they ended
// (endedInterventions).
func (c *fakeConsent) GetIntervention(_ context.Context, in *interventionsv1.GetInterventionRequest, _ ...grpc.CallOption) (*interventionsv1.Intervention, error) {
	switch in.GetName() {
	case "clinics/north/interventions/gone":
		return nil, status.Error(codes.NotFound, in.GetName()+" not found")
	case "clinics/north/interventions/others":
		return &interventionsv1.Intervention{Name: in.GetName(), Family: "clinics/north/families/f2"}, nil
	}
	iv := &interventionsv1.Intervention{Name: in.GetName(), Family: family, State: interventionsv1.InterventionState_INTERVENTION_STATE_SCHEDULED}
	if ended, ok := endedInterventions[strings.TrimPrefix(in.GetName(), "clinics/north/interventions/")]; ok {
		iv.State, iv.Outcome = ended.state, ended.outcome
	}
	return iv, nil
}

// endedInterventions are interventions, by id, that ended: how, and
// whether a place may still be held for them.
var endedInterventions = map[string]struct {
	state    interventionsv1.InterventionState
	outcome  *interventionsv1.Outcome
	holdable bool
}{
	"cancelled": {interventionsv1.InterventionState_INTERVENTION_STATE_CANCELLED, nil, false},
	"declined": {interventionsv1.InterventionState_INTERVENTION_STATE_COMPLETED,
		&interventionsv1.Outcome{Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_DECLINED}, false},
	"support-only": {interventionsv1.InterventionState_INTERVENTION_STATE_COMPLETED, &interventionsv1.Outcome{
		Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_PARTIALLY_ACCEPTED, AcceptedServices: []interventionsv1.ServiceKind{interventionsv1.ServiceKind_SERVICE_KIND_PEER_SUPPORT}}, false},
	"accepted": {interventionsv1.InterventionState_INTERVENTION_STATE_COMPLETED,
		&interventionsv1.Outcome{Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_ACCEPTED}, true},
	"outpatient-only": {interventionsv1.InterventionState_INTERVENTION_STATE_COMPLETED, &interventionsv1.Outcome{
		Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_PARTIALLY_ACCEPTED, AcceptedServices: []interventionsv1.ServiceKind{interventionsv1.ServiceKind_SERVICE_KIND_OUTPATIENT}}, true},
}

// A place is not held for an intervention that ended with no one to take
// it (cancelled, or no treatment accepted): the places held for it were
// given back when it ended, and one taken after would keep a slot from
// everyone until it lapsed. A yes still takes one. A refusal takes nothing.
func TestNoHoldForAnInterventionThatEnded(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 5)
	for id, ended := range endedInterventions {
		h, err := f.client.HoldSlot(f.ctx, &referralsv1.HoldSlotRequest{Program: p.GetName(),
			ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Family: family, Intervention: "clinics/north/interventions/" + id})
		if ended.holdable {
			if err != nil || h.GetState() != referralsv1.HoldState_HOLD_STATE_HELD {
				t.Errorf("%s: hold %v, %v; want a place held", id, h, err)
			}
			continue
		}
		if st := status.Convert(err); st.Code() != codes.FailedPrecondition || apperr.Reason(err) != referrals.ReasonInterventionEnded ||
			!strings.Contains(st.Message(), id) {
			t.Errorf("%s: hold %v, %v; want FAILED_PRECONDITION %s naming the intervention", id, h, err, referrals.ReasonInterventionEnded)
		}
	}
	if available, held := f.capacity(t, p.GetName()); available != 3 || held != 2 {
		t.Errorf("capacity %d free, %d held; want 3 and 2 (a place for each yes, none for the rest)", available, held)
	}
}

func (c *fakeConsent) ListCoveredFamilies(context.Context, *familiesv1.ListCoveredFamiliesRequest, ...grpc.CallOption) (*familiesv1.ListCoveredFamiliesResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return &familiesv1.ListCoveredFamiliesResponse{Families: c.covered, Members: c.members}, nil
}

// memberRefused reports whether d is a member's own record no consent of
// that member covers. The caller holds c.mu.
func (c *fakeConsent) memberRefused(family string, d *familiesv1.Disclosure) bool {
	if d.GetMemberId() == "" {
		return false
	}
	for _, m := range c.members {
		if m.GetFamily() == family && m.GetMemberId() == d.GetMemberId() {
			return false
		}
	}
	return true
}

func (c *fakeConsent) BatchCreateDisclosures(_ context.Context, in *familiesv1.BatchCreateDisclosuresRequest, _ ...grpc.CallOption) (*familiesv1.BatchCreateDisclosuresResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := &familiesv1.BatchCreateDisclosuresResponse{}
	for _, r := range in.GetRequests() {
		if r.GetDisclosure().GetMemberId() != "" && !c.memberRefused(r.GetParent(), r.GetDisclosure()) ||
			r.GetDisclosure().GetMemberId() == "" && !c.refused[r.GetParent()] {
			c.allowed = append(c.allowed, r.GetDisclosure().GetResource())
			out.Disclosures = append(out.Disclosures, r.GetDisclosure())
		}
	}
	return out, nil
}

func (c *fakeConsent) CreateDisclosure(_ context.Context, in *familiesv1.CreateDisclosureRequest, _ ...grpc.CallOption) (*familiesv1.Disclosure, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if in.GetDisclosure().GetMemberId() == "" && c.refused[in.GetParent()] || c.memberRefused(in.GetParent(), in.GetDisclosure()) {
		return nil, apperr.FailedPrecondition(consentgate.ReasonConsentRequired, "no consent", nil)
	}
	if c.revokedLate[in.GetParent()] && !in.GetValidateOnly() {
		return nil, apperr.FailedPrecondition(consentgate.ReasonConsentRequired, "revoked", nil)
	}
	// As the families service: a check records nothing, a retried record
	// with its request id records nothing more.
	if in.GetValidateOnly() || (in.GetRequestId() != "" && c.requestIDs[in.GetRequestId()]) {
		return in.GetDisclosure(), nil
	}
	if in.GetRequestId() != "" {
		c.requestIDs[in.GetRequestId()] = true
	}
	c.allowed = append(c.allowed, in.GetDisclosure().GetResource())
	return in.GetDisclosure(), nil
}

func (c *fakeConsent) refuse(family string) {
	c.mu.Lock()
	c.refused[family] = true
	c.mu.Unlock()
}

func TestEHRNeedsConsent(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside"), 5)
	mk := func(family string) *referralsv1.Referral {
		r, err := f.client.CreateReferral(f.ctx, &referralsv1.CreateReferralRequest{Parent: "clinics/north", Referral: &referralsv1.Referral{
			Family: family, Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE},
			ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Program: p.GetName(),
			Urgency: referralsv1.Urgency_URGENCY_URGENT, Reason: "wants to start"}})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	open, closed := mk("clinics/north/families/open"), mk("clinics/north/families/closed")
	mk("clinics/north/families/closed")
	f.consent.refuse("clinics/north/families/closed")
	f.consent.mu.Lock()
	f.consent.covered = []string{"clinics/north/families/open"}
	f.consent.mu.Unlock()

	_, err := f.client.GetReferral(f.ehr, &referralsv1.GetReferralRequest{Name: closed.GetName()})
	wantCode(t, err, codes.FailedPrecondition)
	// One that does not exist answers the same: the EHR cannot tell.
	_, err = f.client.GetReferral(f.ehr, &referralsv1.GetReferralRequest{Name: "clinics/north/referrals/no-such-one"})
	wantCode(t, err, codes.FailedPrecondition)
	if !consentgate.Refused(err) {
		t.Fatalf("a missing referral, to the EHR: %v; want the consent refusal", err)
	}
	_, err = f.client.AcceptReferral(f.ehr, &referralsv1.TransitionReferralRequest{Name: "clinics/north/referrals/no-such-one"})
	wantCode(t, err, codes.FailedPrecondition)
	if !consentgate.Refused(err) {
		t.Fatalf("a write-back to a missing referral, from the EHR: %v; want the consent refusal", err)
	}
	// A refused write-back changes nothing.
	_, err = f.client.AcceptReferral(f.ehr, &referralsv1.TransitionReferralRequest{Name: closed.GetName()})
	wantCode(t, err, codes.FailedPrecondition)
	cur, err := f.client.GetReferral(f.ctx, &referralsv1.GetReferralRequest{Name: closed.GetName()})
	if err != nil || cur.GetState() != referralsv1.ReferralState_REFERRAL_STATE_REQUESTED || cur.GetEtag() != closed.GetEtag() {
		t.Fatalf("refused write-back changed the referral: %v %v", cur, err)
	}
	// The list leaves out what no consent covers, in SQL: a page of one
	// filtered on the hidden family is empty and has no token that would
	// betray that its referrals exist.
	list, err := f.client.ListReferrals(f.ehr, &referralsv1.ListReferralsRequest{Parent: "clinics/north"})
	if err != nil || len(list.GetReferrals()) != 1 || list.GetReferrals()[0].GetName() != open.GetName() {
		t.Fatalf("EHR list = %v, %v; want only %s", list, err, open.GetName())
	}
	probe, err := f.client.ListReferrals(f.ehr, &referralsv1.ListReferralsRequest{Parent: "clinics/north", PageSize: 1,
		Filter: `family = "clinics/north/families/closed"`})
	if err != nil || len(probe.GetReferrals()) != 0 || probe.GetNextPageToken() != "" {
		t.Fatalf("EHR probe of a hidden family = %v, %v; want an empty last page", probe, err)
	}
	if _, err := f.client.AcceptReferral(f.ehr, &referralsv1.TransitionReferralRequest{Name: open.GetName()}); err != nil {
		t.Fatalf("write-back under consent: %v", err)
	}
	// Staff are the program, not recipients: no checks for them.
	f.consent.mu.Lock()
	allowed := append([]string(nil), f.consent.allowed...)
	f.consent.mu.Unlock()
	if len(allowed) != 2 || allowed[0] != open.GetName() || allowed[1] != open.GetName() {
		t.Fatalf("disclosures recorded: %v; want the listed and the accepted referral", allowed)
	}
	// A write-back refused for its state tells the state (ACCEPTED): it is
	// recorded as a disclosure and carries the notice. One refused for its
	// etag tells only that the referral changed, and records nothing.
	var refusedMD metadata.MD
	_, err = f.client.AcceptReferral(f.ehr, &referralsv1.TransitionReferralRequest{Name: open.GetName()}, grpc.Header(&refusedMD))
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(status.Convert(err).Message(), "ACCEPTED") {
		t.Fatalf("refusal %q does not name the state", status.Convert(err).Message())
	}
	if got := refusedMD.Get(consentgate.NoticeHeader); len(got) != 1 || got[0] != consentgate.Notice {
		t.Fatalf("a refusal naming the state: notice header = %q", got)
	}
	_, err = f.client.RejectReferral(f.ehr, &referralsv1.RejectReferralRequest{Name: open.GetName(), Etag: open.GetEtag(),
		Rejection: &referralsv1.Rejection{Reason: referralsv1.RejectionReason_REJECTION_REASON_AT_CAPACITY}})
	wantCode(t, err, codes.Aborted)
	f.consent.mu.Lock()
	allowed = append([]string(nil), f.consent.allowed...)
	f.consent.mu.Unlock()
	if len(allowed) != 3 || allowed[2] != open.GetName() {
		t.Fatalf("disclosures recorded: %v; want one more, for the refusal that named the state", allowed)
	}
	// A retried write-back with its request id is one disclosure, and
	// every answer, the stored one too, carries the Part 2 notice.
	for i := range 2 {
		var md metadata.MD
		if _, err := f.client.RejectReferral(f.ehr, &referralsv1.RejectReferralRequest{Name: open.GetName(), RequestId: "reject-1",
			Rejection: &referralsv1.Rejection{Reason: referralsv1.RejectionReason_REJECTION_REASON_AT_CAPACITY}}, grpc.Header(&md)); err != nil {
			t.Fatalf("write-back with a request id: %v", err)
		}
		if got := md.Get(consentgate.NoticeHeader); len(got) != 1 || got[0] != consentgate.Notice {
			t.Fatalf("write-back %d: notice header = %q", i, got)
		}
	}
	f.consent.mu.Lock()
	allowed = append([]string(nil), f.consent.allowed...)
	f.consent.mu.Unlock()
	if len(allowed) != 4 || allowed[3] != open.GetName() {
		t.Fatalf("disclosures recorded: %v; want one more, for the rejection", allowed)
	}
	// A retry is the families service's to check again, as a record under
	// the first call's request id: there, under lock, a revocation since
	// counts (and a renewal is recorded anew). The stored answer is not
	// sent on a check that takes no lock and records nothing.
	f.consent.mu.Lock()
	f.consent.revokedLate[open.GetFamily()] = true
	f.consent.mu.Unlock()
	_, err = f.client.RejectReferral(f.ehr, &referralsv1.RejectReferralRequest{Name: open.GetName(), RequestId: "reject-1",
		Rejection: &referralsv1.Rejection{Reason: referralsv1.RejectionReason_REJECTION_REASON_AT_CAPACITY}})
	if !consentgate.Refused(err) {
		t.Fatalf("a retried write-back after its consent was revoked: %v; want the consent refusal", err)
	}
	f.consent.mu.Lock()
	delete(f.consent.revokedLate, open.GetFamily())
	f.consent.mu.Unlock()
	// A consent revoked between the check and the record rolls the step
	// back: the EHR is refused, and nothing changed or was recorded.
	late := mk("clinics/north/families/late")
	f.consent.mu.Lock()
	f.consent.revokedLate["clinics/north/families/late"] = true
	f.consent.mu.Unlock()
	_, err = f.client.AcceptReferral(f.ehr, &referralsv1.TransitionReferralRequest{Name: late.GetName()})
	wantCode(t, err, codes.FailedPrecondition)
	cur, err = f.client.GetReferral(f.ctx, &referralsv1.GetReferralRequest{Name: late.GetName()})
	if err != nil || cur.GetState() != referralsv1.ReferralState_REFERRAL_STATE_REQUESTED || cur.GetEtag() != late.GetEtag() {
		t.Fatalf("a step whose disclosure was refused changed the referral: %v %v", cur, err)
	}
	f.consent.mu.Lock()
	n := len(f.consent.allowed)
	f.consent.mu.Unlock()
	if n != 4 {
		t.Fatalf("%d disclosures recorded, want still 4", n)
	}
}

// A request id sent again with another request is refused with the
// REQUEST_ID_REUSED reason whichever way the service finds it (the stored
// answer read before acting, or the key claimed in the transaction): the
// worker's activities tell it from a malformed request by that reason.
func TestReusedRequestIDSaysSo(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p1, p2 := f.program(t, buprenorphine("One"), 2), f.program(t, buprenorphine("Two"), 2)
	req := func(program string) *referralsv1.CreateReferralRequest {
		return &referralsv1.CreateReferralRequest{Parent: "clinics/north", RequestId: "support-1", Referral: &referralsv1.Referral{
			Family: family, Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE},
			ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Program: program,
			Urgency: referralsv1.Urgency_URGENCY_ROUTINE, Reason: "wants treatment"}}
	}
	first, err := f.client.CreateReferral(f.ctx, req(p1.GetName()))
	if err != nil {
		t.Fatal(err)
	}
	if again, err := f.client.CreateReferral(f.ctx, req(p1.GetName())); err != nil || again.GetName() != first.GetName() {
		t.Fatalf("the same request again: %v, %v", again, err)
	}
	_, err = f.client.CreateReferral(f.ctx, req(p2.GetName()))
	wantCode(t, err, codes.InvalidArgument)
	st := status.Convert(err)
	reason := ""
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			reason = info.GetReason()
		}
	}
	if reason != "REQUEST_ID_REUSED" {
		t.Fatalf("reason = %q, want REQUEST_ID_REUSED (%v)", reason, st.Details())
	}
}

// wantReason is wantCode that also checks the ErrorInfo reason.
func wantReason(t *testing.T, err error, code codes.Code, reason string) {
	t.Helper()
	wantCode(t, err, code)
	if got := apperr.Reason(err); got != reason {
		t.Fatalf("%v: reason %q, want %s", err, got, reason)
	}
}

// A retry of the create of a program since removed outright answers
// NOT_FOUND, not a copy of it, and makes none again.
func TestRetryOfARemovedProgramsCreate(t *testing.T) {
	t.Parallel()
	f := setup(t)
	req := &referralsv1.CreateProgramRequest{Parent: "clinics/north", Program: buprenorphine("Pop-up MAT"), RequestId: "create-popup"}
	p, err := f.client.CreateProgram(f.admin, req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.DeleteProgram(f.admin, &referralsv1.DeleteProgramRequest{Name: p.GetName()}); err != nil {
		t.Fatal(err)
	}
	again, err := f.client.CreateProgram(f.admin, req)
	wantCode(t, err, codes.NotFound)
	if again != nil {
		t.Fatalf("the retry returned %v", again)
	}
	resp, err := f.client.ListPrograms(f.admin, &referralsv1.ListProgramsRequest{Parent: "clinics/north", ShowDeleted: true})
	if err != nil || len(resp.GetPrograms()) != 0 {
		t.Fatalf("programs after the retry: %v, %v; want none", resp.GetPrograms(), err)
	}
}

// A program nothing names is removed; one that holds or referrals name is
// kept with delete_time, out of lists and matches, taking nothing new,
// until it is undeleted. One that holds slots is not deleted at all.
func TestDeletingAProgram(t *testing.T) {
	t.Parallel()
	f := setup(t)
	unused := f.program(t, buprenorphine("Closed MAT"), 1)
	if _, err := f.client.DeleteProgram(f.admin, &referralsv1.DeleteProgramRequest{Name: unused.GetName()}); err != nil {
		t.Fatal(err)
	}
	_, err := f.client.GetProgram(f.ctx, &referralsv1.GetProgramRequest{Name: unused.GetName()})
	wantCode(t, err, codes.NotFound)

	p := f.program(t, buprenorphine("Riverside MAT"), 3)
	bup := referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE
	h, err := f.client.HoldSlot(f.ctx, &referralsv1.HoldSlotRequest{Program: p.GetName(), ServiceKind: bup, Family: family,
		Intervention: "clinics/north/interventions/i1"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.client.DeleteProgram(f.admin, &referralsv1.DeleteProgramRequest{Name: p.GetName()})
	wantReason(t, err, codes.FailedPrecondition, "PROGRAM_HOLDS_SLOTS")
	if _, err := f.client.ReleaseHold(f.ctx, &referralsv1.ReleaseHoldRequest{Name: h.GetName(), Reason: "meeting postponed"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.DeleteProgram(f.admin, &referralsv1.DeleteProgramRequest{Name: p.GetName(), RequestId: "delete-p"}); err != nil {
		t.Fatal(err)
	}
	deleted, err := f.client.GetProgram(f.ctx, &referralsv1.GetProgramRequest{Name: p.GetName()})
	if err != nil || deleted.GetDeleteTime() == nil {
		t.Fatalf("a deleted program a hold names: %v, %v; want it kept with delete_time", deleted, err)
	}
	// Deleting it again changes nothing.
	if _, err := f.client.DeleteProgram(f.admin, &referralsv1.DeleteProgramRequest{Name: p.GetName()}); err != nil {
		t.Fatal(err)
	}
	if again, _ := f.client.GetProgram(f.ctx, &referralsv1.GetProgramRequest{Name: p.GetName()}); again.GetEtag() != deleted.GetEtag() {
		t.Fatalf("a second delete changed the program: etag %s, was %s", again.GetEtag(), deleted.GetEtag())
	}
	listed := func(show bool) bool {
		resp, err := f.client.ListPrograms(f.ctx, &referralsv1.ListProgramsRequest{Parent: "clinics/north", ShowDeleted: show})
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range resp.GetPrograms() {
			if q.GetName() == p.GetName() {
				return true
			}
		}
		return false
	}
	matched := func() bool {
		resp, err := f.client.MatchPrograms(f.ctx, &referralsv1.MatchProgramsRequest{Parent: "clinics/north",
			Urgency: referralsv1.Urgency_URGENCY_ROUTINE, ServiceKinds: []referralsv1.ServiceKind{bup}})
		if err != nil {
			t.Fatal(err)
		}
		return len(resp.GetMatches()) == 1 && resp.GetMatches()[0].GetProgram().GetName() == p.GetName()
	}
	if listed(false) || !listed(true) || matched() {
		t.Fatalf("deleted: listed %v, listed with show_deleted %v, matched %v; want false, true, false", listed(false), listed(true), matched())
	}
	_, err = f.client.HoldSlot(f.ctx, &referralsv1.HoldSlotRequest{Program: p.GetName(), ServiceKind: bup, Family: family,
		Intervention: "clinics/north/interventions/i2"})
	wantReason(t, err, codes.FailedPrecondition, "PROGRAM_DELETED")
	_, err = f.client.CreateReferral(f.ctx, &referralsv1.CreateReferralRequest{Parent: "clinics/north", Referral: &referralsv1.Referral{
		Family: family, Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE},
		ServiceKind: bup, Program: p.GetName(), Urgency: referralsv1.Urgency_URGENCY_URGENT, Reason: "wants to start"}})
	wantReason(t, err, codes.FailedPrecondition, "PROGRAM_DELETED")
	_, err = f.client.ReportCapacity(f.admin, &referralsv1.ReportCapacityRequest{Name: p.GetName(), AvailableSlots: 5})
	wantReason(t, err, codes.FailedPrecondition, "PROGRAM_DELETED")
	if a, _ := f.capacity(t, p.GetName()); a != 3 {
		t.Fatalf("free slots %d after refused changes, want 3", a)
	}

	back, err := f.client.UndeleteProgram(f.admin, &referralsv1.UndeleteProgramRequest{Name: p.GetName()})
	if err != nil || back.GetDeleteTime() != nil {
		t.Fatalf("undelete = %v, %v", back, err)
	}
	if !listed(false) || !matched() {
		t.Fatalf("undeleted: listed %v, matched %v", listed(false), matched())
	}
	// The slots it had when deleted are as old as the deletion: it takes
	// no one until it reports again.
	if back.GetCapacity().GetAvailableSlots() != 0 || back.GetCapacity().GetUpdateTime() != nil {
		t.Fatalf("undeleted capacity %v; want no free slot and no report", back.GetCapacity())
	}
	_, err = f.client.HoldSlot(f.ctx, &referralsv1.HoldSlotRequest{Program: p.GetName(), ServiceKind: bup, Family: family,
		Intervention: "clinics/north/interventions/i2"})
	wantReason(t, err, codes.FailedPrecondition, "NO_CAPACITY")
	if _, err := f.client.ReportCapacity(f.admin, &referralsv1.ReportCapacityRequest{Name: p.GetName(), AvailableSlots: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.HoldSlot(f.ctx, &referralsv1.HoldSlotRequest{Program: p.GetName(), ServiceKind: bup, Family: family,
		Intervention: "clinics/north/interventions/i2"}); err != nil {
		t.Fatalf("a hold once it reported again: %v", err)
	}
	_, err = f.client.UndeleteProgram(f.admin, &referralsv1.UndeleteProgramRequest{Name: p.GetName()})
	wantCode(t, err, codes.AlreadyExists)
	_, err = f.client.UndeleteProgram(f.ctx, &referralsv1.UndeleteProgramRequest{Name: p.GetName()})
	wantCode(t, err, codes.PermissionDenied)
}

// The worker acts for every clinic: it may make and read referrals, as its
// workflows do, but not record a program's answer, cancel a referral or
// change one. Refused before the handler, whatever the referral.
func TestWorkerCannotRecordOutcomes(t *testing.T) {
	t.Parallel()
	f := setup(t)
	worker := f.env.As(auth.AnyClinic, "worker", auth.RoleWorker)
	name := "clinics/north/referrals/r1"
	plain := &referralsv1.TransitionReferralRequest{Name: name, Reason: "x"}
	for method, call := range map[string]func() error{
		"AcceptReferral":     func() error { _, err := f.client.AcceptReferral(worker, plain); return err },
		"CancelReferral":     func() error { _, err := f.client.CancelReferral(worker, plain); return err },
		"PauseReferral":      func() error { _, err := f.client.PauseReferral(worker, plain); return err },
		"MarkReferralNoShow": func() error { _, err := f.client.MarkReferralNoShow(worker, plain); return err },
		"CompleteReferral": func() error {
			_, err := f.client.CompleteReferral(worker, &referralsv1.CompleteReferralRequest{Name: name})
			return err
		},
		"GetHold": func() error {
			_, err := f.client.GetHold(worker, &referralsv1.GetHoldRequest{Name: "clinics/north/holds/h1"})
			return err
		},
	} {
		if code := status.Code(call()); code != codes.PermissionDenied {
			t.Errorf("worker %s: %v; want PermissionDenied", method, code)
		}
	}
	if _, err := f.client.ListReferrals(worker, &referralsv1.ListReferralsRequest{Parent: "clinics/north",
		Filter: `family = "clinics/north/families/f1"`}); err != nil {
		t.Errorf("worker ListReferrals of a family: %v; its workflows need it", err)
	}
}

// The calendar reader's view of a referral is its times and state: a
// filter on what that view leaves out is refused, not answered.
func TestCalendarReaderCannotFilterOnWhatItCannotSee(t *testing.T) {
	t.Parallel()
	f := setup(t)
	cal := f.env.As(auth.AnyClinic, "calendar-reader", auth.RoleCalendarReader)
	for _, filter := range []string{"service_kind = MAT_BUPRENORPHINE", "urgency = IMMEDIATE",
		`program = "clinics/north/programs/p1"`, `intervention = "clinics/north/interventions/i1"`,
		// The view's update time is the appointment's; the referral's own
		// moves with what the view leaves out (a follow-up, a reason).
		`update_time > "2026-12-01T00:00:00Z"`} {
		_, err := f.client.ListReferrals(cal, &referralsv1.ListReferralsRequest{Parent: "clinics/north", Filter: filter})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("calendar reader, filter %s: %v; want INVALID_ARGUMENT", filter, err)
		}
	}
	if _, err := f.client.ListReferrals(cal, &referralsv1.ListReferralsRequest{Parent: "clinics/north",
		Filter: `intake_time >= "2026-12-01T00:00:00Z"`}); err != nil {
		t.Errorf("calendar reader, intake_time filter: %v", err)
	}
	if _, err := f.client.ListReferrals(f.ctx, &referralsv1.ListReferralsRequest{Parent: "clinics/north", Filter: "urgency = IMMEDIATE"}); err != nil {
		t.Errorf("counselor, urgency filter: %v", err)
	}
}

// A Task status FHIR does not have (a typo) is refused in a list's or a
// summary's filter: it matched nothing, and with != everything, without a
// word. One FHIR has and no referral state maps to matches none.
func TestUnknownTaskStatusIsRefused(t *testing.T) {
	t.Parallel()
	f := setup(t)
	for _, filter := range []string{`fhir_task_status != "complete"`, `fhir_task_status = "In-Progress"`} {
		_, err := f.client.ListReferrals(f.ctx, &referralsv1.ListReferralsRequest{Parent: "clinics/north", Filter: filter})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("list, filter %s: %v; want INVALID_ARGUMENT", filter, err)
		}
		_, err = f.client.SummarizeReferrals(f.admin, &referralsv1.SummarizeReferralsRequest{Parent: "clinics/north", Filter: filter})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("summary, filter %s: %v; want INVALID_ARGUMENT", filter, err)
		}
	}
	if _, err := f.client.ListReferrals(f.ctx, &referralsv1.ListReferralsRequest{Parent: "clinics/north",
		Filter: `fhir_task_status = "failed"`}); err != nil {
		t.Errorf("list, a Task status no state has: %v", err)
	}
}

// wantViolation fails unless err is INVALID_ARGUMENT with a violation of field.
func wantViolation(t *testing.T, err error, field string) {
	t.Helper()
	wantCode(t, err, codes.InvalidArgument)
	if !slices.Contains(apperr.ViolatedFields(err), field) {
		t.Fatalf("%v: want a violation of %s", err, field)
	}
}

// disclosures is how many disclosures of the resource name the consent
// check has recorded.
func (f *fixture) disclosures(name string) int {
	f.consent.mu.Lock()
	defer f.consent.mu.Unlock()
	n := 0
	for _, res := range f.consent.allowed {
		if res == name {
			n++
		}
	}
	return n
}

// A no-show counts against the person and starts re-engagement: it cannot
// be recorded before the appointment began, and the refusal changes
// nothing.
func TestNoShowNotBeforeTheAppointment(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 2)
	r := f.booked(t, p.GetName(), nil, f.clock.Now().Add(2*time.Hour))
	disclosed := func() int { return f.disclosures(r.GetName()) }
	before := disclosed()
	_, err := f.client.MarkReferralNoShow(f.ehr, &referralsv1.TransitionReferralRequest{Name: r.GetName(), RequestId: "ns-1"})
	wantReason(t, err, codes.FailedPrecondition, "TOO_EARLY")
	got, err := f.client.GetReferral(f.ctx, &referralsv1.GetReferralRequest{Name: r.GetName()})
	if err != nil || got.GetState() != referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED || got.GetNoShowCount() != 0 ||
		got.GetEtag() != r.GetEtag() {
		t.Fatalf("after a refused no-show: %v %d %s, %v; want SCHEDULED, 0, %s", got.GetState(), got.GetNoShowCount(), got.GetEtag(), err, r.GetEtag())
	}
	f.clock.Advance(3 * time.Hour)
	got, err = f.client.MarkReferralNoShow(f.ehr, &referralsv1.TransitionReferralRequest{Name: r.GetName(), RequestId: "ns-1"})
	if err != nil || got.GetState() != referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW || got.GetNoShowCount() != 1 {
		t.Fatalf("no-show after the appointment: %v %d, %v", got.GetState(), got.GetNoShowCount(), err)
	}
	// The refusal (it told the appointment was still ahead) and the step
	// are two disclosures, though the request id is one.
	if n := disclosed() - before; n != 2 {
		t.Fatalf("%d disclosures of the referral recorded; want 2, the refusal's and the step's", n)
	}
}

// unsweptHold makes a program of one slot and a hold on it that is past
// its expiry, which the sweep has not reached.
func (f *fixture) unsweptHold(t *testing.T) (*referralsv1.Program, *referralsv1.Hold) {
	t.Helper()
	p := f.program(t, buprenorphine("Riverside MAT"), 1)
	h, err := f.client.HoldSlot(f.ctx, &referralsv1.HoldSlotRequest{Program: p.GetName(), Family: family,
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Ttl: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(2 * time.Hour)
	return p, h
}

// A hold past its expiry that the sweep has not reached yet shows as
// EXPIRED, and holds nothing that would keep its program from being
// deleted.
func TestDeleteProgramPastAnUnsweptHold(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p, h := f.unsweptHold(t)
	if got, err := f.client.GetHold(f.ctx, &referralsv1.GetHoldRequest{Name: h.GetName()}); err != nil || got.GetState() != referralsv1.HoldState_HOLD_STATE_EXPIRED {
		t.Fatalf("hold past expiry: %v, %v; want EXPIRED", got.GetState(), err)
	}
	// With the etag just read: expiring the hold on the way changes the
	// program, but not before its etag is checked.
	cur, err := f.client.GetProgram(f.admin, &referralsv1.GetProgramRequest{Name: p.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.DeleteProgram(f.admin, &referralsv1.DeleteProgramRequest{Name: p.GetName(), Etag: cur.GetEtag()}); err != nil {
		t.Fatalf("DeleteProgram past an expired hold: %v", err)
	}
}

// A capacity report after a hold's expiry, before the sweep reached it,
// counts that hold's slot as free, as the program does: the slot is not
// given back again on top of the report when the sweep comes.
func TestCapacityReportPastAnUnsweptHold(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p, _ := f.unsweptHold(t)
	got, err := f.client.ReportCapacity(f.admin, &referralsv1.ReportCapacityRequest{Name: p.GetName(), AvailableSlots: 3})
	if err != nil {
		t.Fatalf("ReportCapacity: %v", err)
	}
	if c := got.GetCapacity(); c.GetAvailableSlots() != 3 || c.GetHeldSlots() != 0 {
		t.Errorf("the report's answer: %d free, %d held; want 3, 0", c.GetAvailableSlots(), c.GetHeldSlots())
	}
	if err := f.srv.ExpireHolds(f.ctx); err != nil {
		t.Fatal(err)
	}
	if free, held := f.capacity(t, p.GetName()); free != 3 || held != 0 {
		t.Errorf("after the sweep: %d free, %d held; want the 3 reported, 0", free, held)
	}
}

// A first contact a little ahead (within the clock skew allowed, another
// clock) counts from now, as the families service keeps it: an entry
// into treatment reported now, with its time or without, is not refused
// as before it.
func TestFirstContactAheadCountsFromNow(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 1)
	h, err := f.client.HoldSlot(f.ctx, &referralsv1.HoldSlotRequest{Program: p.GetName(), Family: family,
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Ttl: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	ahead := f.clock.Now().Add(4 * time.Minute).Truncate(time.Microsecond)
	// fromNow reports whether a kept time is the clock's between sent and
	// the answer, not ahead.
	sent := f.clock.Now().Truncate(time.Microsecond)
	fromNow := func(kept *timestamppb.Timestamp) bool {
		return !kept.AsTime().Before(sent) && !kept.AsTime().After(f.clock.Now())
	}
	r, err := f.client.ConvertHold(f.ctx, &referralsv1.ConvertHoldRequest{Name: h.GetName(), Reason: "accepted MAT",
		FirstContactTime: timestamppb.New(ahead)})
	if err != nil {
		t.Fatal(err)
	}
	if !fromNow(r.GetFirstContactTime()) {
		t.Fatalf("first contact sent as %v: kept as %v; want now", ahead, r.GetFirstContactTime().AsTime())
	}
	f.book(t, r.GetName(), f.clock.Now().Add(-time.Minute))
	now := f.clock.Now().Truncate(time.Microsecond)
	done, err := f.client.CompleteReferral(f.ehr, &referralsv1.CompleteReferralRequest{Name: r.GetName(), TreatmentEntryTime: timestamppb.New(now)})
	if err != nil || !done.GetTreatmentEntryTime().AsTime().Equal(now) {
		t.Fatalf("completion at now: %v, %v; want entered now, %v", done.GetTreatmentEntryTime(), err, now)
	}
	// And by hand, CreateReferral, the same.
	byHand, err := f.client.CreateReferral(f.ctx, &referralsv1.CreateReferralRequest{Parent: "clinics/north", Referral: &referralsv1.Referral{
		Family: family, Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE},
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Program: p.GetName(), Urgency: referralsv1.Urgency_URGENCY_ROUTINE,
		Reason: "asked for it", FirstContactTime: timestamppb.New(ahead)}})
	if err != nil || !fromNow(byHand.GetFirstContactTime()) {
		t.Fatalf("a referral made by hand with its first contact ahead: %v, %v; want now", byHand.GetFirstContactTime(), err)
	}
	// A time given before the first contact is still refused.
	r2 := f.booked(t, p.GetName(), timestamppb.New(f.clock.Now().Add(-time.Hour)), f.clock.Now().Add(-time.Minute))
	_, err = f.client.CompleteReferral(f.ehr, &referralsv1.CompleteReferralRequest{Name: r2.GetName(),
		TreatmentEntryTime: timestamppb.New(f.clock.Now().Add(-2 * time.Hour))})
	wantViolation(t, err, "treatment_entry_time")
}

// booked makes an urgent MAT referral of the loved one at program (with
// first contact at first, if set), accepted and scheduled for start.
func (f *fixture) booked(t *testing.T, program string, first *timestamppb.Timestamp, start time.Time) *referralsv1.Referral {
	t.Helper()
	r, err := f.client.CreateReferral(f.ctx, &referralsv1.CreateReferralRequest{Parent: "clinics/north", Referral: &referralsv1.Referral{
		Family: family, Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE},
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Program: program,
		Urgency: referralsv1.Urgency_URGENCY_URGENT, Reason: "wants to start", FirstContactTime: first}})
	if err != nil {
		t.Fatal(err)
	}
	return f.book(t, r.GetName(), start)
}

// book accepts the referral name and schedules it for start.
func (f *fixture) book(t *testing.T, name string, start time.Time) *referralsv1.Referral {
	t.Helper()
	if _, err := f.client.AcceptReferral(f.ehr, &referralsv1.TransitionReferralRequest{Name: name}); err != nil {
		t.Fatal(err)
	}
	r, err := f.client.ScheduleReferral(f.ehr, &referralsv1.ScheduleReferralRequest{Name: name,
		IntakeAppointment: &referralsv1.IntakeAppointment{StartTime: timestamppb.New(start)}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// The expiry sweep runs while a program is deleted, over one of its holds
// past its expiry. The sweep locks the hold and then the program; the
// delete must take them in the same order, or each waits on the other and
// PostgreSQL kills one. The sweep is played here in SQL so that the
// delete can be made to arrive between its two steps.
func TestDeleteProgramWhileTheSweepExpiresAHold(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p, h := f.unsweptHold(t)
	ctx := context.Background()
	sweep, pid := f.holder(t)
	holdID, programID := h.GetName()[strings.LastIndex(h.GetName(), "/")+1:], p.GetName()[strings.LastIndex(p.GetName(), "/")+1:]
	if _, err := sweep.Exec(ctx, `UPDATE holds SET state = $2, release_reason = 'expired', version = version + 1
		WHERE clinic = 'north' AND id = $1`, holdID, int16(referralsv1.HoldState_HOLD_STATE_EXPIRED)); err != nil {
		t.Fatal(err)
	}
	deleted := make(chan error, 1)
	go func() {
		_, err := f.client.DeleteProgram(f.admin, &referralsv1.DeleteProgramRequest{Name: p.GetName()})
		deleted <- err
	}()
	// Wait until the delete waits on the sweep's lock.
	f.awaitBlocked(t, pid, deleted, "DeleteProgram did not wait for the hold being expired")
	if _, err := sweep.Exec(ctx, `UPDATE programs SET available_slots = available_slots + 1, held_slots = held_slots - 1,
		version = version + 1 WHERE clinic = 'north' AND id = $1`, programID); err != nil {
		t.Fatalf("the sweep's second step: %v", err)
	}
	if err := sweep.Commit(ctx); err != nil {
		t.Fatalf("commit the sweep: %v", err)
	}
	if err := <-deleted; err != nil {
		t.Fatalf("DeleteProgram while the sweep expired a hold: %v", err)
	}
	var available, held int32
	if err := f.pool.QueryRow(ctx, `SELECT available_slots, held_slots FROM programs WHERE clinic = 'north' AND id = $1`, programID).Scan(&available, &held); err != nil {
		t.Fatal(err)
	}
	if available != 1 || held != 0 {
		t.Fatalf("after the sweep and the delete: %d available, %d held; want the slot given back once: 1, 0", available, held)
	}
}

// A hold that lapses is announced like a release: the sweep and a hold on
// the same program each write one hold.expired event per hold, carrying the
// hold as it now is.
func TestExpiredHoldsAreAnnounced(t *testing.T) {
	t.Parallel()
	f := setup(t)
	a := f.program(t, buprenorphine("Riverside MAT"), 2)
	b := f.program(t, buprenorphine("Lakeside MAT"), 1)
	hold := func(p *referralsv1.Program, ttl time.Duration) *referralsv1.Hold {
		t.Helper()
		h, err := f.client.HoldSlot(f.ctx, &referralsv1.HoldSlotRequest{Program: p.GetName(),
			ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Family: family, Ttl: durationpb.New(ttl)})
		if err != nil {
			t.Fatalf("HoldSlot: %v", err)
		}
		return h
	}
	ha, hb := hold(a, time.Hour), hold(b, time.Hour)
	expired := func(name string) []*referralsv1.Hold { return f.expiredEvents(t, name) }
	f.clock.Advance(2 * time.Hour)
	// A new hold on a expires the due one there first, and only there.
	hold(a, time.Hour)
	if got := expired(ha.GetName()); len(got) != 1 || got[0].GetState() != referralsv1.HoldState_HOLD_STATE_EXPIRED ||
		got[0].GetReleaseReason() != "expired" || got[0].GetEtag() == ha.GetEtag() {
		t.Fatalf("events for the hold expired by HoldSlot: %v", got)
	}
	if got := expired(hb.GetName()); len(got) != 0 {
		t.Fatalf("a hold on another program was announced before the sweep: %v", got)
	}
	for range 2 { // a second sweep finds nothing new to announce
		if err := f.srv.ExpireHolds(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if got := expired(hb.GetName()); len(got) != 1 || got[0].GetState() != referralsv1.HoldState_HOLD_STATE_EXPIRED {
		t.Fatalf("events for the hold expired by the sweep: %v", got)
	}
	if got := expired(ha.GetName()); len(got) != 1 {
		t.Fatalf("the sweep announced an expired hold again: %d events", len(got))
	}
}

// A referral's history is append-only for the service's database role.
func TestReferralHistoryIsAppendOnly(t *testing.T) {
	t.Parallel()
	f := setup(t)
	for _, priv := range []string{"UPDATE", "DELETE", "TRUNCATE"} {
		var may bool
		if err := f.pool.QueryRow(context.Background(), `SELECT has_table_privilege($1, 'referral_events', $2)`, pgdb.AppRole, priv).Scan(&may); err != nil || may {
			t.Errorf("%s on referral_events: %v, %v; want refused", priv, may, err)
		}
	}
	var may bool
	if err := f.pool.QueryRow(context.Background(), `SELECT has_table_privilege($1, 'referral_events', 'INSERT')`, pgdb.AppRole).Scan(&may); err != nil || !may {
		t.Errorf("INSERT on referral_events: %v, %v; want allowed", may, err)
	}
}

// A hold past its expiry that the sweep has not reached yet holds no slot:
// a program read and an immediate match count it as free, as the hold
// itself already says EXPIRED.
func TestALapsedHoldIsFreeBeforeTheSweep(t *testing.T) {
	t.Parallel()
	f := setup(t)
	hold := func(p *referralsv1.Program) {
		t.Helper()
		if _, err := f.client.HoldSlot(f.ctx, &referralsv1.HoldSlotRequest{Program: p.GetName(),
			ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Family: family,
			Intervention: "clinics/north/interventions/i1"}); err != nil {
			t.Fatal(err)
		}
	}
	read, matched := f.program(t, buprenorphine("Read first"), 1), f.program(t, buprenorphine("Matched"), 1)
	hold(read)
	hold(matched)
	f.clock.Advance(73 * time.Hour)
	if a, held := f.capacity(t, read.GetName()); a != 1 || held != 0 {
		t.Fatalf("program read past its hold's expiry: %d free, %d held; want 1, 0", a, held)
	}
	resp, err := f.client.MatchPrograms(f.ctx, &referralsv1.MatchProgramsRequest{Parent: "clinics/north",
		Urgency: referralsv1.Urgency_URGENCY_IMMEDIATE})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range resp.GetMatches() {
		names = append(names, m.GetProgram().GetName())
	}
	if !slices.Contains(names, matched.GetName()) {
		t.Fatalf("immediate match past a hold's expiry found %v; want %s among them", names, matched.GetName())
	}
	var expired int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox
		WHERE event_type = 'handoff.referrals.v1.hold.expired'`).Scan(&expired); err != nil || expired != 2 {
		t.Fatalf("hold.expired events: %d, %v; want 2", expired, err)
	}
	// The reads are recorded as the reads they were, once each.
	var reads int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM audit_log
		WHERE method LIKE '%/GetProgram' OR method LIKE '%/MatchPrograms'`).Scan(&reads); err != nil || reads != 2 {
		t.Fatalf("audit records of the reads: %d, %v; want 2", reads, err)
	}
}

// References to another clinic's program, and page tokens of another
// query, are refused on their field; a missing program is a field of the
// request, not a missing referral.
func TestProgramReferencesAreChecked(t *testing.T) {
	t.Parallel()
	f := setup(t)
	_, err := f.client.MatchPrograms(f.ctx, &referralsv1.MatchProgramsRequest{Parent: "clinics/north",
		ExcludePrograms: []string{"clinics/south/programs/x"}})
	if fields := apperr.ViolatedFields(err); status.Code(err) != codes.InvalidArgument || !slices.Equal(fields, []string{"exclude_programs[0]"}) {
		t.Fatalf("exclusion of another clinic's program: %v (fields %v); want INVALID_ARGUMENT on exclude_programs[0]", err, fields)
	}

	kept, gone := f.program(t, buprenorphine("Kept"), 1), f.program(t, buprenorphine("Gone"), 1)
	// Held once, so that its deletion keeps it, marked deleted.
	h := f.hold(t, gone.GetName(), "clinics/north/interventions/i1")
	if _, err := f.client.ReleaseHold(f.ctx, &referralsv1.ReleaseHoldRequest{Name: h.GetName(), Reason: "meeting postponed"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.DeleteProgram(f.admin, &referralsv1.DeleteProgramRequest{Name: gone.GetName()}); err != nil {
		t.Fatal(err)
	}
	page, err := f.client.ListPrograms(f.ctx, &referralsv1.ListProgramsRequest{Parent: "clinics/north", PageSize: 1, ShowDeleted: true})
	if err != nil || page.GetNextPageToken() == "" {
		t.Fatalf("first page with deleted programs: %v, %v; want a next page", page, err)
	}
	_, err = f.client.ListPrograms(f.ctx, &referralsv1.ListProgramsRequest{Parent: "clinics/north", PageSize: 1, PageToken: page.GetNextPageToken()})
	if fields := apperr.ViolatedFields(err); status.Code(err) != codes.InvalidArgument || !slices.Equal(fields, []string{"page_token"}) {
		t.Fatalf("a show_deleted token without the flag: %v (fields %v); want INVALID_ARGUMENT on page_token", err, fields)
	}
	if _, err := f.client.ListPrograms(f.ctx, &referralsv1.ListProgramsRequest{Parent: "clinics/north", PageSize: 1,
		ShowDeleted: true, PageToken: page.GetNextPageToken()}); err != nil {
		t.Fatalf("the token with its own query: %v", err)
	}
	if all, err := f.client.ListPrograms(f.ctx, &referralsv1.ListProgramsRequest{Parent: "clinics/north"}); err != nil ||
		len(all.GetPrograms()) != 1 || all.GetPrograms()[0].GetName() != kept.GetName() {
		t.Fatalf("programs not deleted: %v, %v; want %s alone", all, err, kept.GetName())
	}

	_, err = f.client.CreateReferral(f.ctx, &referralsv1.CreateReferralRequest{Parent: "clinics/north", Referral: &referralsv1.Referral{
		Family: family, Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE},
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Program: "clinics/north/programs/no-such-one",
		Urgency: referralsv1.Urgency_URGENCY_URGENT, Reason: "wants to start"}})
	if fields := apperr.ViolatedFields(err); status.Code(err) != codes.InvalidArgument || !slices.Equal(fields, []string{"referral.program"}) {
		t.Fatalf("a referral to a missing program: %v (fields %v); want INVALID_ARGUMENT on referral.program", err, fields)
	}
}

// A list that fails after reading the page records no disclosure: the
// accounting lists only what left.
func TestFailedEHRListDisclosesNothing(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside"), 5)
	if _, err := f.client.CreateReferral(f.ctx, &referralsv1.CreateReferralRequest{Parent: "clinics/north", Referral: &referralsv1.Referral{
		Family: family, Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE},
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Program: p.GetName(),
		Urgency: referralsv1.Urgency_URGENCY_URGENT, Reason: "wants to start"}}); err != nil {
		t.Fatal(err)
	}
	f.consent.mu.Lock()
	f.consent.covered = []string{family}
	f.consent.mu.Unlock()
	// The history read fails: its table is out of the service's reach.
	if _, err := f.pool.Exec(context.Background(), `ALTER TABLE referral_events RENAME TO referral_events_away`); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.ListReferrals(f.ehr, &referralsv1.ListReferralsRequest{Parent: "clinics/north"}); err == nil {
		t.Fatal("list without its history answered")
	}
	f.consent.mu.Lock()
	allowed := slices.Clone(f.consent.allowed)
	f.consent.mu.Unlock()
	if len(allowed) != 0 {
		t.Fatalf("a failed list recorded disclosures of %v", allowed)
	}
}

// A program that turns a referral away for want of room is shown full, so
// that holds and immediate matches stop sending it people, whatever it
// last reported; places held there stay held. Another reason, or a second
// rejection at a program already full, changes nothing of the program.
func TestRejectionAtCapacityShowsTheProgramFull(t *testing.T) {
	t.Parallel()
	f := setup(t)
	refer := func(p string) *referralsv1.Referral {
		t.Helper()
		r, err := f.client.CreateReferral(f.ctx, &referralsv1.CreateReferralRequest{Parent: "clinics/north", Referral: &referralsv1.Referral{
			Family: family, Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE},
			ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Program: p, Urgency: referralsv1.Urgency_URGENCY_URGENT,
			Reason: "wants to start"}})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	rejections := 0
	reject := func(name string, why referralsv1.RejectionReason) {
		t.Helper()
		rejections++
		if _, err := f.client.RejectReferral(f.ehr, &referralsv1.RejectReferralRequest{Name: name, RequestId: fmt.Sprintf("reject-%d", rejections),
			Rejection: &referralsv1.Rejection{Reason: why}}); err != nil {
			t.Fatal(err)
		}
	}
	reported := func(p string) int {
		t.Helper()
		var n int
		if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox
			WHERE event_type = 'handoff.referrals.v1.program.capacity_reported' AND resource = $1`, p).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// Another reason says nothing of room.
	p := f.program(t, buprenorphine("Riverside MAT"), 5)
	reject(refer(p.GetName()).GetName(), referralsv1.RejectionReason_REJECTION_REASON_NOT_ELIGIBLE)
	if a, _ := f.capacity(t, p.GetName()); a != 5 || reported(p.GetName()) != 1 {
		t.Fatalf("after a rejection for eligibility: %d free, %d reports; want 5 and the one report", a, reported(p.GetName()))
	}
	h, err := f.client.HoldSlot(f.ctx, &referralsv1.HoldSlotRequest{Program: p.GetName(), ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE,
		Family: family, Intervention: "clinics/north/interventions/i1", Ttl: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(time.Minute)
	full := refer(p.GetName())
	reject(full.GetName(), referralsv1.RejectionReason_REJECTION_REASON_AT_CAPACITY)
	got, err := f.client.GetProgram(f.ctx, &referralsv1.GetProgramRequest{Name: p.GetName()})
	if err != nil || got.GetCapacity().GetAvailableSlots() != 0 || got.GetCapacity().GetHeldSlots() != 1 ||
		!got.GetCapacity().GetUpdateTime().AsTime().After(p.GetCapacity().GetUpdateTime().AsTime()) || got.GetEtag() == p.GetEtag() {
		t.Fatalf("after a rejection at capacity: %v, %v; want no free slot, the hold kept, the report time and etag moved", got.GetCapacity(), err)
	}
	if n := reported(p.GetName()); n != 2 {
		t.Fatalf("%d capacity events; want one more, for the rejection", n)
	}
	// Holds and immediate matches pass it over now.
	_, err = f.client.HoldSlot(f.ctx, &referralsv1.HoldSlotRequest{Program: p.GetName(), ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE,
		Family: family, Intervention: "clinics/north/interventions/i2", Ttl: durationpb.New(time.Hour)})
	wantCode(t, err, codes.FailedPrecondition)
	m, err := f.client.MatchPrograms(f.ctx, &referralsv1.MatchProgramsRequest{Parent: "clinics/north", Urgency: referralsv1.Urgency_URGENCY_IMMEDIATE})
	if err != nil || len(m.GetMatches()) != 0 {
		t.Fatalf("immediate match after the rejection: %v, %v; want none", m.GetMatches(), err)
	}
	// The place held is still the family's to convert.
	if _, err := f.client.ConvertHold(f.ctx, &referralsv1.ConvertHoldRequest{Name: h.GetName(), Reason: "said yes"}); err != nil {
		t.Fatalf("converting the place held before the rejection: %v", err)
	}
	// Full already: a second rejection (a retry's stored answer aside)
	// leaves the program as it is.
	before, err := f.client.GetProgram(f.ctx, &referralsv1.GetProgramRequest{Name: p.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	reject(refer(p.GetName()).GetName(), referralsv1.RejectionReason_REJECTION_REASON_AT_CAPACITY)
	after, err := f.client.GetProgram(f.ctx, &referralsv1.GetProgramRequest{Name: p.GetName()})
	if err != nil || after.GetEtag() != before.GetEtag() || reported(p.GetName()) != 2 {
		t.Fatalf("a second rejection at a full program: etag %q then %q, %d reports, %v; want no change", before.GetEtag(), after.GetEtag(), reported(p.GetName()), err)
	}
	// Its next report opens it again.
	if _, err := f.client.ReportCapacity(f.admin, &referralsv1.ReportCapacityRequest{Name: p.GetName(), AvailableSlots: 2}); err != nil {
		t.Fatal(err)
	}
	if a, _ := f.capacity(t, p.GetName()); a != 2 {
		t.Fatalf("after the next report: %d free, want 2", a)
	}
	// A program deleted since (marked: a referral names it) is left as
	// it is, as a report to it is refused.
	gone := f.program(t, buprenorphine("Closed MAT"), 3)
	late := refer(gone.GetName())
	if _, err := f.client.DeleteProgram(f.admin, &referralsv1.DeleteProgramRequest{Name: gone.GetName()}); err != nil {
		t.Fatal(err)
	}
	deleted, err := f.client.GetProgram(f.ctx, &referralsv1.GetProgramRequest{Name: gone.GetName()})
	if err != nil || deleted.GetDeleteTime() == nil {
		t.Fatalf("the deleted program: %v, %v", deleted, err)
	}
	reject(late.GetName(), referralsv1.RejectionReason_REJECTION_REASON_AT_CAPACITY)
	if after, err := f.client.GetProgram(f.ctx, &referralsv1.GetProgramRequest{Name: gone.GetName()}); err != nil ||
		after.GetEtag() != deleted.GetEtag() || reported(gone.GetName()) != 1 {
		t.Fatalf("a rejection at a deleted program: etag %q then %q, %d reports, %v; want no change", deleted.GetEtag(), after.GetEtag(), reported(gone.GetName()), err)
	}
}

// A referral made without the family's first contact takes it from the
// family's record, so that days to treatment count from when the family
// first came, not from a referral made by hand weeks later; one given is
// kept, and a first contact the record holds in the future is not copied.
func TestReferralTakesTheFamilysFirstContact(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 5)
	came := time.Now().Add(-20 * 24 * time.Hour).Truncate(time.Microsecond)
	f.consent.mu.Lock()
	f.consent.firstContact = timestamppb.New(came)
	f.consent.mu.Unlock()
	refer := func(first *timestamppb.Timestamp) *referralsv1.Referral {
		t.Helper()
		r, err := f.client.CreateReferral(f.ctx, &referralsv1.CreateReferralRequest{Parent: "clinics/north", Referral: &referralsv1.Referral{
			Family: family, Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE},
			ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Program: p.GetName(), Urgency: referralsv1.Urgency_URGENCY_URGENT,
			Reason: "ready to start", FirstContactTime: first}})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if got := refer(nil).GetFirstContactTime(); got == nil || !got.AsTime().Equal(came) {
		t.Fatalf("first contact %v; want the family's, %v", got, came)
	}
	given := time.Now().Add(-2 * 24 * time.Hour).Truncate(time.Microsecond)
	if got := refer(timestamppb.New(given)).GetFirstContactTime(); !got.AsTime().Equal(given) {
		t.Fatalf("first contact %v; want the one given, %v", got.AsTime(), given)
	}
	// Days to treatment count from it.
	r := refer(nil)
	if _, err := f.client.AcceptReferral(f.ehr, &referralsv1.TransitionReferralRequest{Name: r.GetName()}); err != nil {
		t.Fatal(err)
	}
	done, err := f.client.CompleteReferral(f.ehr, &referralsv1.CompleteReferralRequest{Name: r.GetName()})
	if err != nil || done.GetDaysToTreatmentEntry() < 19 {
		t.Fatalf("days to treatment %d, %v; want about 20, from the family's first contact", done.GetDaysToTreatmentEntry(), err)
	}
	f.consent.mu.Lock()
	f.consent.firstContact = timestamppb.New(time.Now().Add(48 * time.Hour))
	f.consent.mu.Unlock()
	if got := refer(nil).GetFirstContactTime(); got != nil {
		t.Fatalf("first contact %v copied from the future", got.AsTime())
	}
}

// A hold whose family was deleted before it was converted (the family's
// workflow releases it a moment later) makes no referral: the conversion is
// refused and the slot stays held. A hold of a family on record converts,
// counting days to treatment from the family's first contact when the
// call gives none, as CreateReferral does.
func TestConvertingAHoldOfADeletedFamily(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 2)
	h, err := f.client.HoldSlot(f.ctx, &referralsv1.HoldSlotRequest{Program: p.GetName(), ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE,
		Family: family, Ttl: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	came := time.Now().Add(-5 * 24 * time.Hour).Truncate(time.Microsecond)
	f.consent.mu.Lock()
	f.consent.missing = map[string]bool{family: true}
	f.consent.firstContact = timestamppb.New(came)
	f.consent.mu.Unlock()
	conv := &referralsv1.ConvertHoldRequest{Name: h.GetName(), Reason: "accepted MAT at the intervention"}
	_, err = f.client.ConvertHold(f.ctx, conv)
	if wantCode(t, err, codes.FailedPrecondition); apperr.Reason(err) != apperr.ReasonNotReady {
		t.Fatalf("converting a deleted family's hold: %v; want %s", err, apperr.ReasonNotReady)
	}
	if a, held := f.capacity(t, p.GetName()); a != 1 || held != 1 {
		t.Fatalf("a refused conversion changed the program: %d free, %d held; want 1, 1", a, held)
	}
	if list, err := f.client.ListReferrals(f.ctx, &referralsv1.ListReferralsRequest{Parent: "clinics/north"}); err != nil || len(list.GetReferrals()) != 0 {
		t.Fatalf("referrals after the refusal: %v, %v; want none", list.GetReferrals(), err)
	}
	// A hold released meanwhile (as the family's workflow releases it) is
	// refused for its state, as before the family was read.
	other, err := f.client.HoldSlot(f.ctx, &referralsv1.HoldSlotRequest{Program: p.GetName(), ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE,
		Family: "clinics/north/families/f9", Ttl: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.ReleaseHold(f.ctx, &referralsv1.ReleaseHoldRequest{Name: other.GetName(), Reason: "family deleted"}); err != nil {
		t.Fatal(err)
	}
	f.consent.mu.Lock()
	f.consent.missing["clinics/north/families/f9"] = true
	f.consent.mu.Unlock()
	_, err = f.client.ConvertHold(f.ctx, &referralsv1.ConvertHoldRequest{Name: other.GetName(), Reason: "accepted MAT at the intervention"})
	if wantCode(t, err, codes.FailedPrecondition); apperr.Reason(err) != apperr.ReasonInvalidTransition {
		t.Fatalf("converting a released hold of a deleted family: %v; want %s", err, apperr.ReasonInvalidTransition)
	}
	f.consent.mu.Lock()
	f.consent.missing = nil
	f.consent.mu.Unlock()
	r, err := f.client.ConvertHold(f.ctx, conv)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.GetFirstContactTime(); got == nil || !got.AsTime().Equal(came) {
		t.Fatalf("first contact %v; want the family's, %v", got, came)
	}
}

// A first contact or an entry into treatment before 1990 is an unset time
// sent as one (the epoch): refused as a field violation, not kept to skew
// days to treatment for good.
func TestReportedTimesBefore1990AreRefused(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 2)
	epoch := timestamppb.New(time.Unix(0, 0))
	_, err := f.client.CreateReferral(f.ctx, &referralsv1.CreateReferralRequest{Parent: "clinics/north", Referral: &referralsv1.Referral{
		Family: family, Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE},
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Program: p.GetName(), Urgency: referralsv1.Urgency_URGENCY_URGENT,
		Reason: "ready to start", FirstContactTime: epoch}})
	if wantCode(t, err, codes.InvalidArgument); !slices.Equal(apperr.ViolatedFields(err), []string{"referral.first_contact_time"}) {
		t.Fatalf("violations %v; want referral.first_contact_time", apperr.ViolatedFields(err))
	}
	h, err := f.client.HoldSlot(f.ctx, &referralsv1.HoldSlotRequest{Program: p.GetName(), ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE,
		Family: family, Ttl: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.client.ConvertHold(f.ctx, &referralsv1.ConvertHoldRequest{Name: h.GetName(), Reason: "accepted MAT", FirstContactTime: epoch})
	if wantCode(t, err, codes.InvalidArgument); !slices.Equal(apperr.ViolatedFields(err), []string{"first_contact_time"}) {
		t.Fatalf("violations %v; want first_contact_time", apperr.ViolatedFields(err))
	}
	r, err := f.client.ConvertHold(f.ctx, &referralsv1.ConvertHoldRequest{Name: h.GetName(), Reason: "accepted MAT"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.AcceptReferral(f.ehr, &referralsv1.TransitionReferralRequest{Name: r.GetName()}); err != nil {
		t.Fatal(err)
	}
	_, err = f.client.CompleteReferral(f.ehr, &referralsv1.CompleteReferralRequest{Name: r.GetName(), TreatmentEntryTime: epoch})
	if wantCode(t, err, codes.InvalidArgument); !slices.Equal(apperr.ViolatedFields(err), []string{"treatment_entry_time"}) {
		t.Fatalf("violations %v; want treatment_entry_time", apperr.ViolatedFields(err))
	}
	if got, _ := f.client.GetReferral(f.ctx, &referralsv1.GetReferralRequest{Name: r.GetName()}); got.GetState() != referralsv1.ReferralState_REFERRAL_STATE_ACCEPTED {
		t.Fatalf("after a refused completion the referral is %v", got.GetState())
	}
}

// A referral made in error is voided by the clinic, with a reason: it stays
// readable, ENTERED_IN_ERROR with the reason in its history, emits its own
// event, and counts nowhere in the summary. The program (the EHR) and the
// worker may not void one; bad input, or a treatment entry, changes
// nothing; a retry answers as the first call did.
func TestMarkReferralEnteredInError(t *testing.T) {
	t.Parallel()
	f := setup(t)
	_, r := f.urgentReferral(t)
	_, kept := f.urgentReferral(t)
	worker := f.env.As("north", "worker", auth.RoleWorker)
	for _, ctx := range []context.Context{f.ehr, worker} {
		_, err := f.client.MarkReferralEnteredInError(ctx, &referralsv1.TransitionReferralRequest{Name: r.GetName(), Reason: "the wrong family"})
		wantCode(t, err, codes.PermissionDenied)
	}
	for _, reason := range []string{"", "   "} {
		_, err := f.client.MarkReferralEnteredInError(f.ctx, &referralsv1.TransitionReferralRequest{Name: r.GetName(), Reason: reason})
		wantCode(t, err, codes.InvalidArgument)
		if !strings.Contains(status.Convert(err).Message(), "reason") {
			t.Fatalf("refusal %q does not name the field", status.Convert(err).Message())
		}
	}
	_, err := f.client.MarkReferralEnteredInError(f.ctx, &referralsv1.TransitionReferralRequest{Name: "clinics/north/referrals/none", Reason: "x"})
	wantCode(t, err, codes.NotFound)
	if got, _ := f.client.GetReferral(f.ctx, &referralsv1.GetReferralRequest{Name: r.GetName()}); got.GetEtag() != r.GetEtag() {
		t.Fatal("refused calls changed the referral")
	}
	req := &referralsv1.TransitionReferralRequest{Name: r.GetName(), Reason: "referred under the wrong family", RequestId: "void-1"}
	void, err := f.client.MarkReferralEnteredInError(f.ctx, req)
	if err != nil || void.GetState() != referralsv1.ReferralState_REFERRAL_STATE_ENTERED_IN_ERROR || void.GetFhirTaskStatus() != "entered-in-error" {
		t.Fatalf("void = %v, %v", void, err)
	}
	if h := void.GetHistory(); h[len(h)-1].GetReason() != req.GetReason() || h[len(h)-1].GetActor() == "" {
		t.Fatalf("history %v; want the reason and who", h)
	}
	again, err := f.client.MarkReferralEnteredInError(f.ctx, req)
	if err != nil || again.GetEtag() != void.GetEtag() {
		t.Fatalf("retry = %v, %v; want the first answer", again, err)
	}
	_, err = f.client.MarkReferralEnteredInError(f.ctx, &referralsv1.TransitionReferralRequest{Name: r.GetName(), Reason: "again"})
	wantCode(t, err, codes.FailedPrecondition)
	// Final: its reason no longer changes either.
	_, err = f.client.UpdateReferral(f.ctx, &referralsv1.UpdateReferralRequest{Referral: &referralsv1.Referral{Name: r.GetName(), Reason: "rewritten"},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"reason"}}})
	wantCode(t, err, codes.FailedPrecondition)
	if got, _ := f.client.GetReferral(f.ctx, &referralsv1.GetReferralRequest{Name: r.GetName()}); got.GetEtag() != void.GetEtag() {
		t.Fatal("an update of the voided referral changed it")
	}
	var events int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox
		WHERE event_type = 'handoff.referrals.v1.referral.entered_in_error' AND resource = $1`, r.GetName()).Scan(&events); err != nil || events != 1 {
		t.Fatalf("entered_in_error events: %d, %v; want 1", events, err)
	}
	// The summary counts the other referral alone.
	sum, err := f.client.SummarizeReferrals(f.admin, &referralsv1.SummarizeReferralsRequest{Parent: "clinics/north"})
	if err != nil || sum.GetReferrals() != 1 || len(sum.GetStates()) != 1 || sum.GetStates()[0].GetState() != referralsv1.ReferralState_REFERRAL_STATE_REQUESTED {
		t.Fatalf("summary %v, %v; want the one referral not voided", sum, err)
	}
	// A treatment entry is not voided here.
	if _, err := f.client.AcceptReferral(f.ehr, &referralsv1.TransitionReferralRequest{Name: kept.GetName()}); err != nil {
		t.Fatal(err)
	}
	done, err := f.client.CompleteReferral(f.ehr, &referralsv1.CompleteReferralRequest{Name: kept.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.client.MarkReferralEnteredInError(f.ctx, &referralsv1.TransitionReferralRequest{Name: kept.GetName(), Reason: "x"})
	wantCode(t, err, codes.FailedPrecondition)
	if got, _ := f.client.GetReferral(f.ctx, &referralsv1.GetReferralRequest{Name: kept.GetName()}); got.GetEtag() != done.GetEtag() {
		t.Fatal("a refused void changed the completed referral")
	}
}

// A family member's own referral is the member's record: the EHR reads,
// lists and moves it only under the member's own consent, never under the
// loved one's, and the disclosure names the member.
func TestMembersReferralNeedsTheirOwnConsent(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside"), 5)
	const fam = "clinics/north/families/open"
	mk := func(subject *referralsv1.ReferralSubject) *referralsv1.Referral {
		r, err := f.client.CreateReferral(f.ctx, &referralsv1.CreateReferralRequest{Parent: "clinics/north", Referral: &referralsv1.Referral{
			Family: fam, Subject: subject, ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT, Program: p.GetName(),
			Urgency: referralsv1.Urgency_URGENCY_ROUTINE, Reason: "family counseling"}})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	own := mk(&referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE})
	moms := mk(&referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_FAMILY_MEMBER, MemberId: "mom"})
	f.consent.mu.Lock()
	f.consent.covered = []string{fam}
	f.consent.mu.Unlock()
	listed := func() []string {
		t.Helper()
		var names []string
		for _, size := range []int32{1, 100} {
			names = names[:0]
			token := ""
			for {
				page, err := f.client.ListReferrals(f.ehr, &referralsv1.ListReferralsRequest{Parent: "clinics/north", PageSize: size, PageToken: token})
				if err != nil {
					t.Fatal(err)
				}
				for _, r := range page.GetReferrals() {
					names = append(names, r.GetName())
				}
				if token = page.GetNextPageToken(); token == "" {
					break
				}
			}
		}
		slices.Sort(names)
		return names
	}

	// Under the loved one's consent alone: his referral, not hers.
	_, err := f.client.GetReferral(f.ehr, &referralsv1.GetReferralRequest{Name: moms.GetName()})
	if !consentgate.Refused(err) {
		t.Fatalf("the member's referral under the loved one's consent: %v; want the consent refusal", err)
	}
	_, err = f.client.AcceptReferral(f.ehr, &referralsv1.TransitionReferralRequest{Name: moms.GetName()})
	if !consentgate.Refused(err) {
		t.Fatalf("a write-back to the member's referral under the loved one's consent: %v; want the consent refusal", err)
	}
	if got := listed(); !slices.Equal(got, []string{own.GetName()}) {
		t.Fatalf("EHR list = %v; want the loved one's referral only", got)
	}
	if cur, err := f.client.GetReferral(f.ctx, &referralsv1.GetReferralRequest{Name: moms.GetName()}); err != nil ||
		cur.GetState() != referralsv1.ReferralState_REFERRAL_STATE_REQUESTED {
		t.Fatalf("the refused write-back changed the member's referral: %v, %v", cur, err)
	}

	// Under hers alone: hers, not his.
	f.consent.mu.Lock()
	f.consent.covered = nil
	f.consent.members = []*familiesv1.CoveredMember{{Family: fam, MemberId: "mom"}}
	f.consent.refused[fam] = true
	f.consent.allowed = nil
	f.consent.mu.Unlock()
	if got := listed(); !slices.Equal(got, []string{moms.GetName()}) {
		t.Fatalf("EHR list = %v; want the member's referral only", got)
	}
	if _, err := f.client.GetReferral(f.ehr, &referralsv1.GetReferralRequest{Name: moms.GetName()}); err != nil {
		t.Fatalf("the member's referral under her consent: %v", err)
	}
	if _, err := f.client.AcceptReferral(f.ehr, &referralsv1.TransitionReferralRequest{Name: moms.GetName()}); err != nil {
		t.Fatalf("a write-back to the member's referral under her consent: %v", err)
	}
	_, err = f.client.GetReferral(f.ehr, &referralsv1.GetReferralRequest{Name: own.GetName()})
	if !consentgate.Refused(err) {
		t.Fatalf("the loved one's referral under the member's consent: %v; want the consent refusal", err)
	}
}

// A hold says who made it and whether a workflow did, on every read, so
// that a workflow giving back its own places leaves a counselor's.
func TestHoldSaysWhoHeldIt(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 3)
	hold := func(ctx context.Context) *referralsv1.Hold {
		t.Helper()
		h, err := f.client.HoldSlot(ctx, &referralsv1.HoldSlotRequest{Program: p.GetName(),
			ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Family: family,
			Intervention: "clinics/north/interventions/i1"})
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	byHand := hold(f.ctx)
	byWorkflow := hold(f.env.As("north", "handoff-worker", auth.RoleWorker))
	if byHand.GetHolder() != "counselor-1" || byHand.GetWorkflowHeld() {
		t.Fatalf("the counselor's hold = %v; want held by counselor-1, not a workflow", byHand)
	}
	if byWorkflow.GetHolder() != "handoff-worker" || !byWorkflow.GetWorkflowHeld() {
		t.Fatalf("the worker's hold = %v; want held by the worker, a workflow", byWorkflow)
	}
	list, err := f.client.ListHolds(f.ctx, &referralsv1.ListHoldsRequest{Parent: "clinics/north"})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, h := range list.GetHolds() {
		seen[h.GetName()] = h.GetWorkflowHeld()
	}
	if w, ok := seen[byWorkflow.GetName()]; !ok || !w {
		t.Fatalf("listed %v; want the worker's hold as a workflow's", list.GetHolds())
	}
	if w, ok := seen[byHand.GetName()]; !ok || w {
		t.Fatalf("listed %v; want the counselor's hold as a person's", list.GetHolds())
	}
	// As the sweep returns them, in the events it writes, they still say so.
	f.clock.Advance(73 * time.Hour)
	if err := f.srv.ExpireHolds(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, want := range []*referralsv1.Hold{byHand, byWorkflow} {
		events := f.expiredEvents(t, want.GetName())
		if len(events) != 1 {
			t.Fatalf("hold.expired events of %s: %v; want one", want.GetName(), events)
		}
		if got := events[0]; got.GetState() != referralsv1.HoldState_HOLD_STATE_EXPIRED || got.GetHolder() != want.GetHolder() ||
			got.GetWorkflowHeld() != want.GetWorkflowHeld() {
			t.Fatalf("expired as %v; want %s, held by %q (workflow %v)", got, want.GetName(), want.GetHolder(), want.GetWorkflowHeld())
		}
	}
}

// The calendar reader's view of a referral carries its appointment's own
// version and update time: a write that leaves the appointment as it was
// (a reason edited, an admission at the appointment) moves neither, so a
// calendar host sees no edit of the event; a rebooking or a pause does.
func TestCalendarSeesOnlyTheAppointmentChange(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 2)
	r := f.booked(t, p.GetName(), nil, f.clock.Now().Add(2*time.Hour))
	seen := func() (string, time.Time) { return f.calendarSees(t, r.GetName()) }
	etag, at := seen()

	f.clock.Advance(time.Minute)
	r.Reason = "wants to start this week"
	if _, err := f.client.UpdateReferral(f.ctx, &referralsv1.UpdateReferralRequest{Referral: r,
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"reason"}}}); err != nil {
		t.Fatal(err)
	}
	if e, u := seen(); e != etag || !u.Equal(at) {
		t.Fatalf("after a reason edit the calendar sees %s at %v; want %s at %v, unchanged", e, u, etag, at)
	}

	f.clock.Advance(time.Minute)
	if _, err := f.client.ScheduleReferral(f.ehr, &referralsv1.ScheduleReferralRequest{Name: r.GetName(),
		IntakeAppointment: &referralsv1.IntakeAppointment{StartTime: timestamppb.New(f.clock.Now().Add(3 * time.Hour))}}); err != nil {
		t.Fatal(err)
	}
	rebooked, rebookedAt := seen()
	if rebooked == etag || !rebookedAt.After(at) {
		t.Fatalf("after a rebooking the calendar sees %s at %v; want a new version after %v", rebooked, rebookedAt, at)
	}

	// Admitted at the appointment: the event stands as it was.
	f.clock.Advance(3*time.Hour + time.Minute)
	if _, err := f.client.CompleteReferral(f.ehr, &referralsv1.CompleteReferralRequest{Name: r.GetName()}); err != nil {
		t.Fatal(err)
	}
	if e, u := seen(); e != rebooked || !u.Equal(rebookedAt) {
		t.Fatalf("after the admission the calendar sees %s at %v; want %s at %v, unchanged", e, u, rebooked, rebookedAt)
	}

	// A pause cancels the event: that is an edit the calendar must see.
	r = f.booked(t, p.GetName(), nil, f.clock.Now().Add(2*time.Hour))
	etag, at = seen()
	f.clock.Advance(time.Minute)
	if _, err := f.client.PauseReferral(f.ehr, &referralsv1.TransitionReferralRequest{Name: r.GetName(), Reason: "waiting for prior authorization"}); err != nil {
		t.Fatal(err)
	}
	if e, u := seen(); e == etag || !u.After(at) {
		t.Fatalf("after a pause the calendar sees %s at %v; want a new version after %v", e, u, at)
	}
}

// A referral written before the calendar had a version of its own counts
// on from the version feeds had already sent (migration 0013): its
// SEQUENCE does not go back, and only what changes the event adds.
func TestCalendarVersionCountsOnFromWhatFeedsSent(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 2)
	r := f.booked(t, p.GetName(), nil, f.clock.Now().Add(2*time.Hour))
	for _, reason := range []string{"one", "two", "three"} {
		f.clock.Advance(time.Second)
		r.Reason = reason
		var err error
		if r, err = f.client.UpdateReferral(f.ctx, &referralsv1.UpdateReferralRequest{Referral: r,
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"reason"}}}); err != nil {
			t.Fatal(err)
		}
	}
	// As the migration leaves a referral written before it.
	if _, err := f.pool.Exec(context.Background(), `UPDATE referrals SET calendar_base = version, calendar_base_time = update_time WHERE id = $1`,
		aip.ID(r.GetName())); err != nil {
		t.Fatal(err)
	}
	seen := func() (string, time.Time) { return f.calendarSees(t, r.GetName()) }
	if e, u := seen(); e != r.GetEtag() || !u.Equal(r.GetUpdateTime().AsTime()) {
		t.Fatalf("the calendar sees %s at %v; want %s at %v, what feeds sent before", e, u, r.GetEtag(), r.GetUpdateTime().AsTime())
	}
	f.clock.Advance(time.Minute)
	moved, err := f.client.ScheduleReferral(f.ehr, &referralsv1.ScheduleReferralRequest{Name: r.GetName(),
		IntakeAppointment: &referralsv1.IntakeAppointment{StartTime: timestamppb.New(f.clock.Now().Add(3 * time.Hour))}})
	if err != nil {
		t.Fatal(err)
	}
	base, _ := aip.ParseEtag(r.GetEtag())
	if e, u := seen(); e != aip.Etag(base+1) || !u.Equal(moved.GetUpdateTime().AsTime()) {
		t.Fatalf("after a rebooking the calendar sees %s at %v; want %s at %v", e, u, aip.Etag(base+1), moved.GetUpdateTime().AsTime())
	}
}

// expiredEvents are the holds the outbox's hold.expired events of the hold
// name carry, oldest first.
func (f *fixture) expiredEvents(t *testing.T, name string) []*referralsv1.Hold {
	t.Helper()
	rows, err := f.pool.Query(context.Background(), `SELECT payload FROM outbox
		WHERE event_type = 'handoff.referrals.v1.hold.expired' AND resource = $1 ORDER BY id`, name)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []*referralsv1.Hold
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			t.Fatal(err)
		}
		var a anypb.Any
		h := &referralsv1.Hold{}
		if err := proto.Unmarshal(b, &a); err != nil {
			t.Fatal(err)
		}
		if err := a.UnmarshalTo(h); err != nil {
			t.Fatal(err)
		}
		out = append(out, h)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// calendarSees is the version and update time the calendar reader's list
// gives the referral name.
func (f *fixture) calendarSees(t *testing.T, name string) (string, time.Time) {
	t.Helper()
	cal := f.env.As(auth.AnyClinic, "calendar-reader", auth.RoleCalendarReader)
	list, err := f.client.ListReferrals(cal, &referralsv1.ListReferralsRequest{Parent: "clinics/north"})
	if err != nil {
		t.Fatal(err)
	}
	for _, got := range list.GetReferrals() {
		if got.GetName() == name {
			return got.GetEtag(), got.GetUpdateTime().AsTime()
		}
	}
	t.Fatalf("the calendar reader does not see %s", name)
	return "", time.Time{}
}

// A referral converted from a hold that ends without the person taking
// the place (cancelled, rejected for another reason than room, voided)
// gives the place back, once: the program had counted it free. Not after
// the program reported its capacity since the conversion, nor when it
// turned the referral away for want of room.
func TestAnUnusedConvertedPlaceGoesBack(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 3)
	convert := func(program string) *referralsv1.Referral {
		t.Helper()
		h := f.hold(t, program, "")
		ref, err := f.client.ConvertHold(f.ctx, &referralsv1.ConvertHoldRequest{Name: h.GetName(), Reason: "accepted"})
		if err != nil {
			t.Fatal(err)
		}
		return ref
	}
	free := func(program string, want int32, after string) {
		t.Helper()
		if a, h := f.capacity(t, program); a != want || h != 0 {
			t.Fatalf("%s: %d free, %d held; want %d free", after, a, h, want)
		}
	}
	cancelled := convert(p.GetName())
	free(p.GetName(), 2, "after a conversion")
	cancel := &referralsv1.TransitionReferralRequest{Name: cancelled.GetName(), Reason: "went elsewhere", RequestId: "cancel-1"}
	for range 2 { // the retry gets the first answer, and no second place
		if _, err := f.client.CancelReferral(f.ctx, cancel); err != nil {
			t.Fatal(err)
		}
	}
	free(p.GetName(), 3, "after the referral was cancelled")
	if _, err := f.client.MarkReferralEnteredInError(f.ctx, &referralsv1.TransitionReferralRequest{Name: cancelled.GetName(), Reason: "the wrong family"}); err != nil {
		t.Fatal(err)
	}
	free(p.GetName(), 3, "after the cancelled referral was voided")

	rejected := convert(p.GetName())
	if _, err := f.client.RejectReferral(f.ehr, &referralsv1.RejectReferralRequest{Name: rejected.GetName(),
		Rejection: &referralsv1.Rejection{Reason: referralsv1.RejectionReason_REJECTION_REASON_NOT_ELIGIBLE, Details: "under 18"}}); err != nil {
		t.Fatal(err)
	}
	free(p.GetName(), 3, "after a rejection for eligibility")

	voided := convert(p.GetName())
	if _, err := f.client.AcceptReferral(f.ehr, &referralsv1.TransitionReferralRequest{Name: voided.GetName()}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.MarkReferralEnteredInError(f.ctx, &referralsv1.TransitionReferralRequest{Name: voided.GetName(), Reason: "the wrong person"}); err != nil {
		t.Fatal(err)
	}
	free(p.GetName(), 3, "after an accepted referral was voided")

	// The program reports after the conversion: its count stands.
	reported := convert(p.GetName())
	if _, err := f.client.ReportCapacity(f.admin, &referralsv1.ReportCapacityRequest{Name: p.GetName(), AvailableSlots: 5}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.CancelReferral(f.ctx, &referralsv1.TransitionReferralRequest{Name: reported.GetName()}); err != nil {
		t.Fatal(err)
	}
	free(p.GetName(), 5, "after a cancellation that followed a report")

	// Turned away for want of room, the last place included: none goes
	// back to a program that says it has none.
	last := f.program(t, buprenorphine("Last place"), 1)
	full := convert(last.GetName())
	free(last.GetName(), 0, "after the last place was converted")
	if _, err := f.client.RejectReferral(f.ehr, &referralsv1.RejectReferralRequest{Name: full.GetName(),
		Rejection: &referralsv1.Rejection{Reason: referralsv1.RejectionReason_REJECTION_REASON_AT_CAPACITY}}); err != nil {
		t.Fatal(err)
	}
	free(last.GetName(), 0, "after a rejection at capacity")
}

// A referral completed at its booked intake says "event completed"
// (BSeR 5.1.4); one completed with no intake booked, admitted on the spot,
// says "fulfillment completed" (7.0), as its FHIR Task does, and so does
// one completed after its booked intake was missed.
func TestBusinessStatusOfACompletedReferral(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p, spot := f.urgentReferral(t)
	if _, err := f.client.AcceptReferral(f.ehr, &referralsv1.TransitionReferralRequest{Name: spot.GetName()}); err != nil {
		t.Fatal(err)
	}
	booked := f.booked(t, p.GetName(), nil, time.Now().Add(-time.Minute))
	// Missed, then admitted without a new booking: the event did not take place.
	missed := f.booked(t, p.GetName(), nil, time.Now().Add(-time.Minute))
	if _, err := f.client.MarkReferralNoShow(f.ehr, &referralsv1.TransitionReferralRequest{Name: missed.GetName()}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{booked.GetName(): "event completed", spot.GetName(): "fulfillment completed",
		missed.GetName(): "fulfillment completed"} {
		got, err := f.client.CompleteReferral(f.ehr, &referralsv1.CompleteReferralRequest{Name: name})
		if err != nil || got.GetBusinessStatus() != want {
			t.Fatalf("completed %s: %q, %v; want %q", name, got.GetBusinessStatus(), err, want)
		}
	}
}

// The worker's token is good for every clinic: it lists referrals and
// holds only of one family or meeting, as the workflows do, not a whole
// clinic's, which a leaked token would page out clinic by clinic.
func TestWorkerListsOnlyOneFamilysOrMeetings(t *testing.T) {
	t.Parallel()
	f := setup(t)
	worker := f.env.As(auth.AnyClinic, "worker", auth.RoleWorker)
	for name, filter := range map[string]string{"none": "", "other field": `state = HELD`, "not =": `family != "clinics/north/families/f1"`,
		// Every hold and referral not made from a meeting has it.
		"the empty intervention": `intervention = ""`} {
		_, err := f.client.ListHolds(worker, &referralsv1.ListHoldsRequest{Parent: "clinics/north", Filter: filter})
		wantCode(t, err, codes.PermissionDenied)
		_, err = f.client.ListReferrals(worker, &referralsv1.ListReferralsRequest{Parent: "clinics/north",
			Filter: strings.ReplaceAll(filter, "state = HELD", "urgency = IMMEDIATE")})
		wantCode(t, err, codes.PermissionDenied)
		_ = name
	}
	for _, filter := range []string{`family = "clinics/north/families/f1"`, `intervention = "clinics/north/interventions/i1" AND state = HELD`} {
		if _, err := f.client.ListHolds(worker, &referralsv1.ListHoldsRequest{Parent: "clinics/north", Filter: filter}); err != nil {
			t.Errorf("ListHolds(%s): %v", filter, err)
		}
		if _, err := f.client.ListReferrals(worker, &referralsv1.ListReferralsRequest{Parent: "clinics/north",
			Filter: strings.TrimSuffix(filter, " AND state = HELD")}); err != nil {
			t.Errorf("ListReferrals(%s): %v", filter, err)
		}
	}
	// Staff list the clinic's as ever.
	if _, err := f.client.ListHolds(f.ctx, &referralsv1.ListHoldsRequest{Parent: "clinics/north"}); err != nil {
		t.Fatal(err)
	}
}

// A step that changes nothing, answered after waiting for another that
// changed the referral, shows the referral as it now stands, its history
// included: before, the history came from the snapshot taken before the
// wait (the row lock refreshes the row, not the history joined to it).
func TestUnchangedAfterAWaitShowsTheHistoryAsItStands(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p, _ := f.urgentReferral(t)
	start := f.clock.Now().Add(48 * time.Hour)
	r := f.booked(t, p.GetName(), nil, start)
	tx, pid := f.holder(t)
	ctx := context.Background()
	id := r.GetName()[strings.LastIndex(r.GetName(), "/")+1:]
	scheduled := int16(referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED)
	if _, err := tx.Exec(ctx, `UPDATE referrals SET version = version + 1 WHERE clinic = 'north' AND id = $1`, id); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO referral_events (clinic, referral_id, from_state, to_state, actor, reason)
		VALUES ('north', $1, $2, $2, 'ehr', 'confirmed by phone')`, id, scheduled); err != nil {
		t.Fatal(err)
	}
	type answer struct {
		r   *referralsv1.Referral
		err error
	}
	answered := make(chan answer, 1)
	done := make(chan error, 1)
	go func() {
		got, err := f.client.ScheduleReferral(f.ehr, &referralsv1.ScheduleReferralRequest{Name: r.GetName(),
			IntakeAppointment: &referralsv1.IntakeAppointment{StartTime: timestamppb.New(start)}})
		answered <- answer{got, err}
		done <- err
	}()
	f.awaitBlocked(t, pid, done, "the same booking did not wait for the step under way")
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	a := <-answered
	if a.err != nil {
		t.Fatal(a.err)
	}
	now, err := f.client.GetReferral(f.ctx, &referralsv1.GetReferralRequest{Name: r.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	if a.r.GetEtag() != now.GetEtag() || len(a.r.GetHistory()) != len(now.GetHistory()) {
		t.Fatalf("answered etag %s with %d steps; the referral stands at %s with %d", a.r.GetEtag(), len(a.r.GetHistory()),
			now.GetEtag(), len(now.GetHistory()))
	}
}

// A referral left out of an EHR's page because its family's consent was
// revoked between the list's scope and the record of its disclosures is
// not named by the page token either (tokens are not sealed: the id would
// show): the token is keyed by the last referral kept, and a page left
// with nothing is ABORTED, to be read again. Before, the token named it.
func TestPageTokenNamesNoReferralLeftOut(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 5)
	const kept, revoked = "clinics/north/families/kept", "clinics/north/families/revoked"
	mk := func(fam string) string {
		t.Helper()
		r, err := f.client.CreateReferral(f.ctx, &referralsv1.CreateReferralRequest{Parent: "clinics/north", Referral: &referralsv1.Referral{
			Family: fam, Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE},
			ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Program: p.GetName(), Urgency: referralsv1.Urgency_URGENCY_URGENT,
			Reason: "wants to start"}})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetName()
	}
	a1, b1, a2 := mk(kept), mk(revoked), mk(kept)
	f.consent.mu.Lock()
	f.consent.covered = []string{kept, revoked} // covered when the scope is read
	f.consent.refused[revoked] = true           // revoked by the record
	f.consent.mu.Unlock()
	after := func(token string) string { return servicetest.PageTokenAfter(t, token) }
	list := func(size int32, token string) (*referralsv1.ListReferralsResponse, error) {
		return f.client.ListReferrals(f.ehr, &referralsv1.ListReferralsRequest{Parent: "clinics/north", PageSize: size, PageToken: token})
	}
	page, err := list(2, "")
	if err != nil || len(page.GetReferrals()) != 1 || page.GetReferrals()[0].GetName() != a1 {
		t.Fatalf("first page %v, %v; want %s alone", page, err, a1)
	}
	if got := after(page.GetNextPageToken()); got != aip.ID(a1) {
		t.Fatalf("the token resumes after %q; want after %s, the last referral shown, not %s", got, aip.ID(a1), aip.ID(b1))
	}
	page, err = list(2, page.GetNextPageToken())
	if err != nil || len(page.GetReferrals()) != 1 || page.GetReferrals()[0].GetName() != a2 || page.GetNextPageToken() != "" {
		t.Fatalf("second page %v, %v; want %s alone, the last", page, err, a2)
	}
	// One at a time: the page of b1 alone has nothing left to show.
	page, err = list(1, "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = list(1, page.GetNextPageToken())
	wantCode(t, err, codes.Aborted)
}

// A postal code matches however it is typed, as a town's name does: case,
// spaces and hyphens aside. The program's address shows it as given.
func TestPostalCodesMatchHoweverTyped(t *testing.T) {
	t.Parallel()
	f := setup(t)
	here, there := buprenorphine("Here"), buprenorphine("There")
	here.Address = &referralsv1.Address{Locality: "Ottawa", PostalCode: "K1A 0B1"}
	there.Address = &referralsv1.Address{Locality: "Kanata", PostalCode: "K2K-1X1"}
	h := f.program(t, here, 1)
	f.program(t, there, 5) // more free places: first, but for the postal code
	for _, typed := range []string{"k1a0b1", "K1A 0B1", " k1a-0b1 "} {
		resp, err := f.client.MatchPrograms(f.ctx, &referralsv1.MatchProgramsRequest{Parent: "clinics/north",
			Urgency: referralsv1.Urgency_URGENCY_ROUTINE, PostalCode: typed})
		if err != nil || len(resp.GetMatches()) != 2 {
			t.Fatalf("%q: %v, %v", typed, resp, err)
		}
		first := resp.GetMatches()[0]
		same := slices.ContainsFunc(first.GetReasons(), func(r *referralsv1.MatchReason) bool {
			return r.GetCode() == referralsv1.MatchReasonCode_MATCH_REASON_CODE_SAME_POSTAL_CODE
		})
		if first.GetProgram().GetName() != h.GetName() || !same {
			t.Fatalf("%q: first %s (%v); want %s, in the family's postal code", typed, first.GetProgram().GetName(), first.GetReasons(), h.GetName())
		}
		if pc := first.GetProgram().GetAddress().GetPostalCode(); pc != "K1A 0B1" {
			t.Fatalf("%q: the program's postal code shows as %q; want it as given", typed, pc)
		}
	}
}
