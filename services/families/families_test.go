package families_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/boundaries"
	"github.com/handoff-health/handoff/services/families"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
	"github.com/handoff-health/handoff/services/servicetest"
)

type fixture struct {
	env    *servicetest.Env
	pool   *pgxpool.Pool
	schema string
	client familiesv1.FamiliesServiceClient
	ctx    context.Context // a counselor of clinic "north"
}

func setup(t testing.TB) *fixture {
	t.Helper()
	pool, schema := pgtest.Schema(t, families.Migrations()...)
	srv := families.New(pgtest.App(t, schema), families.Config{})
	env := servicetest.Start(t, families.Policy(), func(s *grpc.Server) {
		familiesv1.RegisterFamiliesServiceServer(s, srv)
	})
	env.Server.SetAuditor(srv.Auditor())
	return &fixture{env: env, pool: pool, schema: schema, client: familiesv1.NewFamiliesServiceClient(env.Conn), ctx: env.Counselor("north")}
}

func sampleFamily() *familiesv1.Family {
	return &familiesv1.Family{
		LovedOne: &familiesv1.LovedOne{
			GivenName: "Sam", FamilyName: "Rivera", PreferredName: "Sammy", BirthDate: "1994-03-02",
			PrimarySubstance: familiesv1.Substance_SUBSTANCE_FENTANYL, TimeZone: "America/Chicago",
			ContactChannels: []*familiesv1.ContactChannel{{Kind: familiesv1.ChannelKind_CHANNEL_KIND_SMS, Value: "+15555550101"}},
		},
		Members: []*familiesv1.Member{{
			Id: "mom", GivenName: "Ana", Relationship: familiesv1.Relationship_RELATIONSHIP_PARENT,
			Role:             familiesv1.MemberRole_MEMBER_ROLE_CONTACT_PERSON,
			ContactChannels:  []*familiesv1.ContactChannel{{Kind: familiesv1.ChannelKind_CHANNEL_KIND_EMAIL, Value: "ana@example.org"}},
			PreferredChannel: familiesv1.ChannelKind_CHANNEL_KIND_EMAIL, TimeZone: "America/Chicago",
			QuietHours: &familiesv1.QuietHours{Start: "22:00", End: "07:00"}, ConsentToContact: true,
		}, {GivenName: "Luis", Relationship: familiesv1.Relationship_RELATIONSHIP_SIBLING}},
		Coverage:  &familiesv1.Coverage{Kind: familiesv1.CoverageKind_COVERAGE_KIND_MEDICAID},
		Counselor: "counselor-1",
	}
}

func (f *fixture) create(t testing.TB) *familiesv1.Family {
	t.Helper()
	fam, err := f.client.CreateFamily(f.ctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: sampleFamily()})
	if err != nil {
		t.Fatalf("CreateFamily: %v", err)
	}
	return fam
}

func wantCode(t *testing.T, err error, want codes.Code) *status.Status {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != want {
		t.Fatalf("got %v (%v), want %v", st.Code(), err, want)
	}
	return st
}

// Where the loved one would travel from, and their language, are kept
// for matching programs; a language that is no BCP-47 code is refused with
// its field, and nothing is made.
func TestLovedOnesPlaceAndLanguage(t *testing.T) {
	t.Parallel()
	f := setup(t)
	in := sampleFamily()
	in.LovedOne.Locality, in.LovedOne.PostalCode, in.LovedOne.Language, in.LovedOne.PrefersTelehealth = "Riverside", "60546", "es-MX", true
	fam, err := f.client.CreateFamily(f.ctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: in})
	if err != nil {
		t.Fatal(err)
	}
	got, err := f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	if lo := got.GetLovedOne(); err != nil || lo.GetLocality() != "Riverside" || lo.GetPostalCode() != "60546" || lo.GetLanguage() != "es-MX" || !lo.GetPrefersTelehealth() {
		t.Fatalf("read back: %v, %v", got.GetLovedOne(), err)
	}
	bad := sampleFamily()
	bad.LovedOne.Language = "Spanish please"
	_, err = f.client.CreateFamily(f.ctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: bad})
	if st := wantCode(t, err, codes.InvalidArgument); !strings.Contains(fmt.Sprint(st.Details()), "loved_one.language") {
		t.Fatalf("refusal %v; want the field named", st.Details())
	}
	list, err := f.client.ListFamilies(f.ctx, &familiesv1.ListFamiliesRequest{Parent: "clinics/north"})
	if err != nil || len(list.GetFamilies()) != 1 {
		t.Fatalf("families after the refusal: %d, %v; want the first only", len(list.GetFamilies()), err)
	}
}

func TestFamilyLifecycle(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	if fam.GetState() != familiesv1.FamilyState_FAMILY_STATE_ACTIVE || fam.GetEtag() == "" {
		t.Fatalf("new family: state %v etag %q", fam.GetState(), fam.GetEtag())
	}
	if fam.GetMembers()[1].GetId() == "" || fam.GetMembers()[1].GetRole() != familiesv1.MemberRole_MEMBER_ROLE_SUPPORT {
		t.Fatalf("member defaults not applied: %v", fam.GetMembers()[1])
	}
	if fam.GetSafetyScreenStatus() != familiesv1.SafetyScreenStatus_SAFETY_SCREEN_STATUS_MISSING {
		t.Fatalf("screen status = %v", fam.GetSafetyScreenStatus())
	}
	got, err := f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	if err != nil || !proto.Equal(got, fam) {
		t.Fatalf("GetFamily = %v, %v; want %v", got, err, fam)
	}

	upd := &familiesv1.Family{Name: fam.GetName(), Etag: fam.GetEtag(),
		LovedOne: &familiesv1.LovedOne{TimeZone: "America/Denver"}, State: familiesv1.FamilyState_FAMILY_STATE_ENGAGED_IN_TREATMENT}
	got, err = f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: upd,
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"loved_one.time_zone", "state"}}})
	if err != nil {
		t.Fatalf("UpdateFamily: %v", err)
	}
	if got.GetLovedOne().GetTimeZone() != "America/Denver" || got.GetLovedOne().GetGivenName() != "Sam" ||
		got.GetState() != familiesv1.FamilyState_FAMILY_STATE_ENGAGED_IN_TREATMENT || got.GetEtag() == fam.GetEtag() {
		t.Fatalf("after update: %v", got)
	}
	// The old etag is stale now.
	_, err = f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: upd,
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"state"}}})
	wantCode(t, err, codes.Aborted)

	list, err := f.client.ListFamilies(f.ctx, &familiesv1.ListFamiliesRequest{Parent: "clinics/north", Filter: "state = ENGAGED_IN_TREATMENT"})
	if err != nil || len(list.GetFamilies()) != 1 {
		t.Fatalf("ListFamilies(engaged) = %v, %v", list, err)
	}
	list, err = f.client.ListFamilies(f.ctx, &familiesv1.ListFamiliesRequest{Parent: "clinics/north", Filter: "state = ACTIVE"})
	if err != nil || len(list.GetFamilies()) != 0 {
		t.Fatalf("ListFamilies(active) = %v, %v", list, err)
	}
	// has_members: this family has two; one without any is made here.
	bare := sampleFamily()
	bare.Members = nil
	bareFam, err := f.client.CreateFamily(f.ctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: bare})
	if err != nil {
		t.Fatalf("CreateFamily without members: %v", err)
	}
	for filter, want := range map[string]string{"has_members = true": fam.GetName(), "has_members = false": bareFam.GetName()} {
		list, err = f.client.ListFamilies(f.ctx, &familiesv1.ListFamiliesRequest{Parent: "clinics/north", Filter: filter})
		if err != nil || len(list.GetFamilies()) != 1 || list.GetFamilies()[0].GetName() != want {
			t.Fatalf("ListFamilies(%s) = %v, %v; want %s alone", filter, list, err, want)
		}
	}

	if _, err := f.client.DeleteFamily(f.env.As("north", "admin-1", "clinic_admin"), &familiesv1.DeleteFamilyRequest{Name: fam.GetName()}); err != nil {
		t.Fatalf("DeleteFamily: %v", err)
	}
	_, err = f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	wantCode(t, err, codes.NotFound)

	var events int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE resource = $1`, fam.GetName()).Scan(&events); err != nil || events != 4 {
		t.Fatalf("outbox events = %d, %v; want 4 (created, updated, treatment entered, deleted)", events, err)
	}
	// The events name the family and hold nothing of it: they outlive the
	// delete by days.
	var copies int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE resource = $1
		AND (position('Rivera'::bytea IN payload) > 0 OR position('ana@example.org'::bytea IN payload) > 0)`, fam.GetName()).Scan(&copies); err != nil || copies != 0 {
		t.Fatalf("%d outbox events hold the family's details, %v; want none", copies, err)
	}
}

func TestBarriersWarningSignsAndScreens(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	ctx := f.ctx

	b, err := f.client.CreateBarrier(ctx, &familiesv1.CreateBarrierRequest{Parent: fam.GetName(),
		Barrier: &familiesv1.Barrier{Kind: familiesv1.BarrierKind_BARRIER_KIND_FEAR_OF_WITHDRAWAL, Notes: "tried alone twice"}})
	if err != nil {
		t.Fatalf("CreateBarrier: %v", err)
	}
	if _, err := f.client.CreateBarrier(ctx, &familiesv1.CreateBarrierRequest{Parent: fam.GetName(),
		Barrier: &familiesv1.Barrier{Kind: familiesv1.BarrierKind_BARRIER_KIND_LOGISTICAL_WORK}}); err != nil {
		t.Fatalf("CreateBarrier: %v", err)
	}
	b, err = f.client.UpdateBarrier(ctx, &familiesv1.UpdateBarrierRequest{
		Barrier:    &familiesv1.Barrier{Name: b.GetName(), Notes: "tried alone three times", Etag: b.GetEtag()},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"notes"}}})
	if err != nil || b.GetNotes() != "tried alone three times" {
		t.Fatalf("UpdateBarrier = %v, %v", b, err)
	}
	_, err = f.client.UpdateBarrier(ctx, &familiesv1.UpdateBarrierRequest{
		Barrier: &familiesv1.Barrier{Name: b.GetName()}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"kind"}}})
	wantCode(t, err, codes.InvalidArgument)
	b, err = f.client.ResolveBarrier(ctx, &familiesv1.ResolveBarrierRequest{Name: b.GetName(), Notes: "learned about buprenorphine"})
	if err != nil || b.GetResolveTime() == nil {
		t.Fatalf("ResolveBarrier = %v, %v", b, err)
	}
	_, err = f.client.ResolveBarrier(ctx, &familiesv1.ResolveBarrierRequest{Name: b.GetName()})
	st := wantCode(t, err, codes.FailedPrecondition)
	if info := errorInfo(st); info.GetReason() != "INVALID_STATE_TRANSITION" {
		t.Fatalf("reason = %q", info.GetReason())
	}
	open, err := f.client.ListBarriers(ctx, &familiesv1.ListBarriersRequest{Parent: fam.GetName(), Filter: "resolved = false"})
	if err != nil || len(open.GetBarriers()) != 1 || open.GetBarriers()[0].GetKind() != familiesv1.BarrierKind_BARRIER_KIND_LOGISTICAL_WORK {
		t.Fatalf("ListBarriers(open) = %v, %v", open, err)
	}
	if _, err := f.client.DeleteBarrier(ctx, &familiesv1.DeleteBarrierRequest{Name: open.GetBarriers()[0].GetName()}); err != nil {
		t.Fatalf("DeleteBarrier: %v", err)
	}
	if got, err := f.client.GetBarrier(ctx, &familiesv1.GetBarrierRequest{Name: b.GetName()}); err != nil || got.GetNotes() == "" {
		t.Fatalf("GetBarrier = %v, %v", got, err)
	}

	ws, err := f.client.CreateWarningSign(ctx, &familiesv1.CreateWarningSignRequest{Parent: fam.GetName(),
		WarningSign: &familiesv1.WarningSign{Kind: familiesv1.WarningSignKind_WARNING_SIGN_KIND_JOB_LOSS}})
	if err != nil || ws.GetRecordedBy() != "counselor-1" {
		t.Fatalf("CreateWarningSign = %v, %v", ws, err)
	}
	if got, _ := f.client.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()}); got.GetUrgent() {
		t.Fatal("a job loss must not mark the family urgent")
	}
	if _, err := f.client.CreateWarningSign(ctx, &familiesv1.CreateWarningSignRequest{Parent: fam.GetName(),
		WarningSign: &familiesv1.WarningSign{Kind: familiesv1.WarningSignKind_WARNING_SIGN_KIND_OVERDOSE, Notes: "found by her sister"}}); err != nil {
		t.Fatalf("CreateWarningSign(overdose): %v", err)
	}
	if got, _ := f.client.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()}); !got.GetUrgent() {
		t.Fatal("an overdose must mark the family urgent")
	}
	signs, err := f.client.ListWarningSigns(ctx, &familiesv1.ListWarningSignsRequest{Parent: fam.GetName(), Filter: "kind = OVERDOSE"})
	if err != nil || len(signs.GetWarningSigns()) != 1 {
		t.Fatalf("ListWarningSigns = %v, %v", signs, err)
	}
	// The boundary workflow asks for overdoses recorded since a meeting.
	for since, want := range map[time.Time]int{
		signs.GetWarningSigns()[0].GetCreateTime().AsTime().Add(-time.Minute): 1,
		signs.GetWarningSigns()[0].GetCreateTime().AsTime().Add(time.Minute):  0,
	} {
		got, err := f.client.ListWarningSigns(ctx, &familiesv1.ListWarningSignsRequest{Parent: fam.GetName(),
			Filter: fmt.Sprintf("kind = OVERDOSE AND create_time >= %q", since.UTC().Format(time.RFC3339Nano))})
		if err != nil || len(got.GetWarningSigns()) != want {
			t.Fatalf("overdoses since %v = %v, %v; want %d", since, got, err, want)
		}
	}
	if got, err := f.client.GetWarningSign(ctx, &familiesv1.GetWarningSignRequest{Name: ws.GetName()}); err != nil || !proto.Equal(got, ws) {
		t.Fatalf("GetWarningSign = %v, %v", got, err)
	}

	if _, err := f.client.CreateSafetyScreen(ctx, &familiesv1.CreateSafetyScreenRequest{Parent: fam.GetName(),
		SafetyScreen: &familiesv1.SafetyScreen{Result: familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK,
			ScreenTime: timestamppb.New(time.Now().Add(-100 * 24 * time.Hour))}}); err != nil {
		t.Fatalf("CreateSafetyScreen: %v", err)
	}
	if got, _ := f.client.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()}); got.GetSafetyScreenStatus() != familiesv1.SafetyScreenStatus_SAFETY_SCREEN_STATUS_EXPIRED {
		t.Fatalf("a 100-day-old screen must count as expired, got %v", got.GetSafetyScreenStatus())
	}
	if _, err := f.client.CreateSafetyScreen(ctx, &familiesv1.CreateSafetyScreenRequest{Parent: fam.GetName(),
		SafetyScreen: &familiesv1.SafetyScreen{Result: familiesv1.SafetyRisk_SAFETY_RISK_RISK_WITH_PLAN, SafetyPlanInPlace: true}}); err != nil {
		t.Fatalf("CreateSafetyScreen: %v", err)
	}
	got, _ := f.client.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	if got.GetSafetyScreenStatus() != familiesv1.SafetyScreenStatus_SAFETY_SCREEN_STATUS_CURRENT ||
		got.GetLatestSafetyScreen().GetResult() != familiesv1.SafetyRisk_SAFETY_RISK_RISK_WITH_PLAN {
		t.Fatalf("latest screen = %v (%v)", got.GetLatestSafetyScreen(), got.GetSafetyScreenStatus())
	}
	screens, err := f.client.ListSafetyScreens(ctx, &familiesv1.ListSafetyScreensRequest{Parent: fam.GetName()})
	if err != nil || len(screens.GetSafetyScreens()) != 2 {
		t.Fatalf("ListSafetyScreens = %v, %v", screens, err)
	}
	// The worker acts on whether a screen is current, never on what it
	// found: its reads, single or listed, leave the screen out.
	worker := f.env.As(auth.AnyClinic, "worker", auth.RoleWorker)
	wgot, err := f.client.GetFamily(worker, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	if err != nil || wgot.GetLatestSafetyScreen() != nil || wgot.GetSafetyScreenStatus() != familiesv1.SafetyScreenStatus_SAFETY_SCREEN_STATUS_CURRENT ||
		wgot.GetEtag() != got.GetEtag() {
		t.Fatalf("the worker's read: screen %v, status %v, etag %q (%v); want no screen, CURRENT, the family's etag",
			wgot.GetLatestSafetyScreen(), wgot.GetSafetyScreenStatus(), wgot.GetEtag(), err)
	}
	// It lists no families: its token is good for every clinic, and no
	// workflow needs a list.
	if _, err := f.client.ListFamilies(worker, &familiesv1.ListFamiliesRequest{Parent: "clinics/north"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("the worker's list: %v; want PermissionDenied", err)
	}
	// The barriers and warning signs it lists come without their notes:
	// the workflows read their kinds and times. The staff's have them.
	for who, c := range map[string]context.Context{"worker": worker, "counselor": ctx} {
		barriers, err := f.client.ListBarriers(c, &familiesv1.ListBarriersRequest{Parent: fam.GetName()})
		if err != nil || len(barriers.GetBarriers()) != 1 || barriers.GetBarriers()[0].GetKind() != b.GetKind() {
			t.Fatalf("%s: ListBarriers = %v, %v; want the one left", who, barriers, err)
		}
		signs, err := f.client.ListWarningSigns(c, &familiesv1.ListWarningSignsRequest{Parent: fam.GetName(), Filter: "kind = OVERDOSE"})
		if err != nil || len(signs.GetWarningSigns()) != 1 || signs.GetWarningSigns()[0].GetCreateTime() == nil {
			t.Fatalf("%s: ListWarningSigns = %v, %v; want the overdose", who, signs, err)
		}
		bn, sn := barriers.GetBarriers()[0].GetNotes(), signs.GetWarningSigns()[0].GetNotes()
		if staff := who == "counselor"; (bn != "") != staff || (sn == "found by her sister") != staff || (!staff && sn != "") {
			t.Errorf("%s: notes %q and %q; want them for the staff alone", who, bn, sn)
		}
	}
	// The events name what changed and hold nothing of it.
	var copies int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE resource LIKE $1 || '/%'
		AND position('tried alone'::bytea IN payload) > 0`, fam.GetName()).Scan(&copies); err != nil || copies != 0 {
		t.Fatalf("%d outbox events hold a barrier's notes, %v; want none", copies, err)
	}
	// But the overdose's says when it was recorded: its workflow counts
	// from then.
	var raw []byte
	if err := f.pool.QueryRow(context.Background(), `SELECT payload FROM outbox WHERE event_type = 'handoff.families.v1.warning_sign.overdose'
		AND resource LIKE $1 || '/%'`, fam.GetName()).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	var wrapped anypb.Any
	var sign familiesv1.WarningSign
	if err := proto.Unmarshal(raw, &wrapped); err != nil {
		t.Fatal(err)
	}
	if err := wrapped.UnmarshalTo(&sign); err != nil || sign.GetName() != signs.GetWarningSigns()[0].GetName() ||
		!sign.GetCreateTime().AsTime().Equal(signs.GetWarningSigns()[0].GetCreateTime().AsTime()) {
		t.Fatalf("overdose event payload = %v, %v; want its name and create time", &sign, err)
	}

	// The family's lists share its name as their parent; a page token is
	// still bound to its own list, not taken by another to skip its rows.
	first, err := f.client.ListWarningSigns(ctx, &familiesv1.ListWarningSignsRequest{Parent: fam.GetName(), PageSize: 1})
	if err != nil || first.GetNextPageToken() == "" {
		t.Fatalf("ListWarningSigns(page_size 1) = %v, %v; want a next page", first, err)
	}
	tok := first.GetNextPageToken()
	_, err = f.client.ListBarriers(ctx, &familiesv1.ListBarriersRequest{Parent: fam.GetName(), PageToken: tok})
	wantCode(t, err, codes.InvalidArgument)
	_, err = f.client.ListSafetyScreens(ctx, &familiesv1.ListSafetyScreensRequest{Parent: fam.GetName(), PageToken: tok})
	wantCode(t, err, codes.InvalidArgument)
	_, err = f.client.ListBoundaries(ctx, &familiesv1.ListBoundariesRequest{Parent: fam.GetName(), PageToken: tok})
	wantCode(t, err, codes.InvalidArgument)
	if next, err := f.client.ListWarningSigns(ctx, &familiesv1.ListWarningSignsRequest{Parent: fam.GetName(), PageToken: tok}); err != nil ||
		len(next.GetWarningSigns()) != 1 {
		t.Fatalf("the token on its own list = %v, %v; want the second sign", next, err)
	}
}

// A retried call about a deleted barrier gets no copy of it back: the
// stored answers held its notes.
func TestRetriesAfterDeleteBarrierGetNoCopy(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	create := &familiesv1.CreateBarrierRequest{Parent: fam.GetName(), RequestId: "barrier-1",
		Barrier: &familiesv1.Barrier{Kind: familiesv1.BarrierKind_BARRIER_KIND_FEAR_OF_WITHDRAWAL, Notes: "CANARYBARRIER"}}
	b, err := f.client.CreateBarrier(f.ctx, create)
	if err != nil {
		t.Fatal(err)
	}
	resolve := &familiesv1.ResolveBarrierRequest{Name: b.GetName(), Notes: "CANARYRESOLVED", RequestId: "resolve-1"}
	if _, err := f.client.ResolveBarrier(f.ctx, resolve); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.DeleteBarrier(f.ctx, &familiesv1.DeleteBarrierRequest{Name: b.GetName()}); err != nil {
		t.Fatal(err)
	}
	_, err = f.client.CreateBarrier(f.ctx, create)
	wantCode(t, err, codes.NotFound)
	_, err = f.client.ResolveBarrier(f.ctx, resolve)
	wantCode(t, err, codes.NotFound)
	var kept int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM idempotency_keys
		WHERE position('CANARY'::bytea IN response) > 0`).Scan(&kept); err != nil || kept != 0 {
		t.Fatalf("%d stored answers hold the deleted barrier, %v; want none", kept, err)
	}
}

func errorInfo(st *status.Status) *errdetails.ErrorInfo {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info
		}
	}
	return nil
}

func TestBoundaryStateMachine(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	ctx := f.ctx
	b, err := f.client.CreateBoundary(ctx, &familiesv1.CreateBoundaryRequest{Parent: fam.GetName(), Boundary: &familiesv1.Boundary{
		Category: familiesv1.BoundaryCategory_BOUNDARY_CATEGORY_NO_FINANCIAL_SUPPORT,
		Wording:  "We will not give you cash, but we will pay the clinic directly.", Consequence: "No cash gifts."}})
	if err != nil || b.GetState() != familiesv1.BoundaryState_BOUNDARY_STATE_PROPOSED {
		t.Fatalf("CreateBoundary = %v, %v", b, err)
	}
	tr := func(fn func(context.Context, *familiesv1.TransitionBoundaryRequest, ...grpc.CallOption) (*familiesv1.Boundary, error)) (*familiesv1.Boundary, error) {
		return fn(ctx, &familiesv1.TransitionBoundaryRequest{Name: b.GetName(), Reason: "family session 2"})
	}
	// Illegal: activate or reinforce before agreeing.
	_, err = tr(f.client.ActivateBoundary)
	wantCode(t, err, codes.FailedPrecondition)
	_, err = tr(f.client.ReinforceBoundary)
	wantCode(t, err, codes.FailedPrecondition)

	b, err = f.client.UpdateBoundary(ctx, &familiesv1.UpdateBoundaryRequest{
		Boundary:   &familiesv1.Boundary{Name: b.GetName(), Wording: "No cash. We pay the clinic directly."},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"wording"}}})
	if err != nil {
		t.Fatalf("UpdateBoundary: %v", err)
	}
	if b, err = tr(f.client.AgreeBoundary); err != nil || b.GetState() != familiesv1.BoundaryState_BOUNDARY_STATE_AGREED {
		t.Fatalf("agree = %v, %v", b, err)
	}
	_, err = f.client.UpdateBoundary(ctx, &familiesv1.UpdateBoundaryRequest{
		Boundary: &familiesv1.Boundary{Name: b.GetName(), Wording: "changed"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"wording"}}})
	wantCode(t, err, codes.FailedPrecondition)

	// The safety gate: no screen, then a high-risk screen, both refuse.
	_, err = tr(f.client.ActivateBoundary)
	if info := errorInfo(wantCode(t, err, codes.FailedPrecondition)); info.GetReason() != "SAFETY_SCREEN_REQUIRED" {
		t.Fatalf("reason = %v", info)
	}
	screen := func(r familiesv1.SafetyRisk) {
		t.Helper()
		if _, err := f.client.CreateSafetyScreen(ctx, &familiesv1.CreateSafetyScreenRequest{Parent: fam.GetName(),
			SafetyScreen: &familiesv1.SafetyScreen{Result: r}}); err != nil {
			t.Fatalf("CreateSafetyScreen: %v", err)
		}
	}
	screen(familiesv1.SafetyRisk_SAFETY_RISK_HIGH_RISK)
	_, err = tr(f.client.ActivateBoundary)
	wantCode(t, err, codes.FailedPrecondition)
	time.Sleep(5 * time.Millisecond) // the newer screen must sort after the older one
	screen(familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK)
	if b, err = tr(f.client.ActivateBoundary); err != nil || b.GetState() != familiesv1.BoundaryState_BOUNDARY_STATE_ACTIVE {
		t.Fatalf("activate = %v, %v", b, err)
	}
	for i := 0; i < 2; i++ {
		if b, err = tr(f.client.ReinforceBoundary); err != nil || b.GetState() != familiesv1.BoundaryState_BOUNDARY_STATE_REINFORCED {
			t.Fatalf("reinforce = %v, %v", b, err)
		}
	}
	if b.GetReinforcementCount() != 2 {
		t.Fatalf("reinforcement_count = %d", b.GetReinforcementCount())
	}
	// A screen that finds risk after activation stops reinforcement too,
	// and the refusal changes nothing; a later safe screen lets it go on.
	time.Sleep(5 * time.Millisecond)
	screen(familiesv1.SafetyRisk_SAFETY_RISK_HIGH_RISK)
	_, err = tr(f.client.ReinforceBoundary)
	if info := errorInfo(wantCode(t, err, codes.FailedPrecondition)); info.GetReason() != "SAFETY_SCREEN_REQUIRED" {
		t.Fatalf("reinforce after a high-risk screen: reason = %v", info)
	}
	if got, err := f.client.GetBoundary(ctx, &familiesv1.GetBoundaryRequest{Name: b.GetName()}); err != nil ||
		got.GetReinforcementCount() != 2 || got.GetEtag() != b.GetEtag() {
		t.Fatalf("after the refusal: %v, %v; want it unchanged", got, err)
	}
	time.Sleep(5 * time.Millisecond)
	screen(familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK)
	if b, err = tr(f.client.ReinforceBoundary); err != nil || b.GetReinforcementCount() != 3 {
		t.Fatalf("reinforce after a safe screen = %v, %v", b, err)
	}
	if b, err = tr(f.client.RetireBoundary); err != nil || b.GetState() != familiesv1.BoundaryState_BOUNDARY_STATE_RETIRED {
		t.Fatalf("retire = %v, %v", b, err)
	}
	for _, fn := range []func(context.Context, *familiesv1.TransitionBoundaryRequest, ...grpc.CallOption) (*familiesv1.Boundary, error){
		f.client.AgreeBoundary, f.client.ActivateBoundary, f.client.ReinforceBoundary, f.client.RetireBoundary} {
		_, err = tr(fn)
		wantCode(t, err, codes.FailedPrecondition)
	}
	got, err := f.client.GetBoundary(ctx, &familiesv1.GetBoundaryRequest{Name: b.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	var path []familiesv1.BoundaryState
	for _, e := range got.GetHistory() {
		path = append(path, e.GetToState())
		if e.GetActor() != "counselor-1" {
			t.Fatalf("event actor = %q", e.GetActor())
		}
	}
	want := []familiesv1.BoundaryState{1, 2, 3, 4, 4, 4, 5}
	if fmt.Sprint(path) != fmt.Sprint(want) {
		t.Fatalf("history = %v, want %v", path, want)
	}
	list, err := f.client.ListBoundaries(ctx, &familiesv1.ListBoundariesRequest{Parent: fam.GetName(), Filter: "state = RETIRED"})
	if err != nil || len(list.GetBoundaries()) != 1 || len(list.GetBoundaries()[0].GetHistory()) != 7 {
		t.Fatalf("ListBoundaries = %v, %v", list, err)
	}
}

// A first contact a little ahead (another clock, within the skew allowed)
// is kept as the creation time, not after the family itself: it cannot
// be changed later, and days to treatment count from it.
func TestFirstContactAheadIsKeptAsNow(t *testing.T) {
	t.Parallel()
	f := setup(t)
	x := sampleFamily()
	x.FirstContactTime = timestamppb.New(time.Now().Add(4 * time.Minute))
	fam, err := f.client.CreateFamily(f.ctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: x})
	if err != nil || !fam.GetFirstContactTime().AsTime().Equal(fam.GetCreateTime().AsTime()) {
		t.Fatalf("first contact sent 4 min ahead: kept %v (created %v), %v; want the creation time",
			fam.GetFirstContactTime().AsTime(), fam.GetCreateTime().AsTime(), err)
	}
}

// The same create sent 20 times at once with one request id makes one row.
func TestCreateIdempotentUnderConcurrency(t *testing.T) {
	t.Parallel()
	f := setup(t)
	req := &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: sampleFamily(), RequestId: "5b0c2c8e-req"}
	names := make([]string, 20)
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fam, err := f.client.CreateFamily(f.ctx, req)
			names[i], errs[i] = fam.GetName(), err
		}()
	}
	wg.Wait()
	for i := range names {
		if errs[i] != nil || names[i] != names[0] {
			t.Fatalf("call %d: %q, %v; want %q", i, names[i], errs[i], names[0])
		}
	}
	var n int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM families`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("families rows = %d, %v", n, err)
	}
	// The same id with a different request is refused.
	other := proto.Clone(req).(*familiesv1.CreateFamilyRequest)
	other.Family.Counselor = "someone-else"
	_, err := f.client.CreateFamily(f.ctx, other)
	wantCode(t, err, codes.InvalidArgument)
	// Another counselor reusing the id, even with the same body, does not
	// receive the first caller's family as their own: the id is theirs, a
	// key of its own, and makes their family.
	theirs, err := f.client.CreateFamily(f.env.As("north", "counselor-2", "counselor"), req)
	if err != nil || theirs.GetName() == names[0] {
		t.Fatalf("another counselor's call with the same id = %v, %v; want a family of its own", theirs.GetName(), err)
	}
}

// Deleting a family forgets the stored answers of the calls about it
// (copies of its members and their contacts): a retry of its creation or
// of an update is told it is gone, and neither makes anything again. The
// answers about another family stay.
func TestRetriesAfterDeleteFamilyGetNotFound(t *testing.T) {
	t.Parallel()
	f := setup(t)
	create := &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: sampleFamily(), RequestId: "create-1"}
	fam, err := f.client.CreateFamily(f.ctx, create)
	if err != nil {
		t.Fatal(err)
	}
	keep := &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: sampleFamily(), RequestId: "create-2"}
	other, err := f.client.CreateFamily(f.ctx, keep)
	if err != nil {
		t.Fatal(err)
	}
	update := &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: fam.GetName(), Counselor: "counselor-2"},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"counselor"}}, RequestId: "update-1"}
	if _, err := f.client.UpdateFamily(f.ctx, update); err != nil {
		t.Fatal(err)
	}
	del := &familiesv1.DeleteFamilyRequest{Name: fam.GetName(), RequestId: "delete-1"}
	admin := f.env.As("north", "admin-1", "clinic_admin")
	if _, err := f.client.DeleteFamily(admin, del); err != nil {
		t.Fatalf("DeleteFamily: %v", err)
	}
	_, err = f.client.UpdateFamily(f.ctx, update)
	if st := wantCode(t, err, codes.NotFound); !strings.Contains(st.Message(), fam.GetName()) {
		t.Fatalf("retried update after the delete: %v; want NOT_FOUND naming the family", st.Message())
	}
	_, err = f.client.CreateFamily(f.ctx, create)
	wantCode(t, err, codes.NotFound)
	// The delete's own retry is answered as before.
	if _, err := f.client.DeleteFamily(admin, del); err != nil {
		t.Fatalf("retried delete: %v", err)
	}
	if again, err := f.client.CreateFamily(f.ctx, keep); err != nil || again.GetName() != other.GetName() {
		t.Fatalf("retried creation of another family = %v, %v; want %s", again, err, other.GetName())
	}
	var n int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM families`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("families rows = %d, %v; want only the other family", n, err)
	}
	var kept int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM idempotency_keys
		WHERE position('Rivera'::bytea IN response) > 0`).Scan(&kept); err != nil || kept != 1 {
		t.Fatalf("%d stored answers hold a family, %v; want only the other family's creation", kept, err)
	}
}

// 20 concurrent updates with the same etag: exactly one wins, the rest are
// ABORTED, and the winner's change is what is stored.
func TestUpdateEtagRace(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	var wg sync.WaitGroup
	results := make([]error, 20)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, results[i] = f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{
				Family:     &familiesv1.Family{Name: fam.GetName(), Etag: fam.GetEtag(), Counselor: fmt.Sprintf("counselor-%d", i)},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"counselor"}}})
		}()
	}
	wg.Wait()
	winner := -1
	for i, err := range results {
		switch status.Code(err) {
		case codes.OK:
			if winner >= 0 {
				t.Fatalf("two winners: %d and %d", winner, i)
			}
			winner = i
		case codes.Aborted:
		default:
			t.Fatalf("update %d: %v", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no update won")
	}
	got, _ := f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	if got.GetCounselor() != fmt.Sprintf("counselor-%d", winner) {
		t.Fatalf("stored counselor %q, winner was %d", got.GetCounselor(), winner)
	}
}

// Walking 1,000 families with page size 37 while rows are inserted returns
// every pre-existing row exactly once.
func TestPaginationUnderInserts(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := context.Background()
	// Pre-existing rows get the same kind of ids as new ones (time-ordered),
	// so rows inserted during the walk land among the pages still to come.
	pre := make([]string, 1000)
	for i := range pre {
		pre[i] = aip.NewID()
	}
	if _, err := f.pool.Exec(ctx, `INSERT INTO families (clinic, id, doc, counselor, state, first_contact_time)
		SELECT 'north', id, '{"loved_one":{"given_name":"X"}}', 'c', 1, now() FROM unnest($1::text[]) id`, pre); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	inserted := make(chan int)
	go func() {
		n := 0
		defer func() { inserted <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := f.client.CreateFamily(f.ctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: sampleFamily()}); err != nil {
				t.Errorf("concurrent insert: %v", err)
				return
			}
			n++
		}
	}()
	seen := map[string]int{}
	token := ""
	pages := 0
	for {
		resp, err := f.client.ListFamilies(f.ctx, &familiesv1.ListFamiliesRequest{Parent: "clinics/north", PageSize: 37, PageToken: token})
		if err != nil {
			t.Fatalf("page %d: %v", pages, err)
		}
		pages++
		if len(resp.GetFamilies()) > 37 {
			t.Fatalf("page of %d", len(resp.GetFamilies()))
		}
		for _, fam := range resp.GetFamilies() {
			seen[fam.GetName()]++
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	close(stop)
	if n := <-inserted; n == 0 {
		t.Fatal("no concurrent insert landed during the walk: the test proved nothing")
	}
	for _, id := range pre {
		name := "clinics/north/families/" + id
		if seen[name] != 1 {
			t.Fatalf("%s seen %d times", name, seen[name])
		}
	}
	for name, n := range seen {
		if n != 1 {
			t.Fatalf("%s seen %d times", name, n)
		}
	}
	// A token cannot be replayed against another query.
	resp, _ := f.client.ListFamilies(f.ctx, &familiesv1.ListFamiliesRequest{Parent: "clinics/north", PageSize: 5})
	_, err := f.client.ListFamilies(f.ctx, &familiesv1.ListFamiliesRequest{Parent: "clinics/north", PageSize: 5,
		PageToken: resp.GetNextPageToken(), Filter: "urgent = true"})
	wantCode(t, err, codes.InvalidArgument)
	// A size over the maximum is taken as the maximum (AIP-132), not
	// refused; a negative one is refused.
	all, err := f.client.ListFamilies(f.ctx, &familiesv1.ListFamiliesRequest{Parent: "clinics/north", PageSize: 5000})
	if err != nil || len(all.GetFamilies()) != aip.MaxPageSize || all.GetNextPageToken() == "" {
		t.Fatalf("ListFamilies(page_size 5000) = %d families, %v; want %d of the %d and a next page", len(all.GetFamilies()), err,
			aip.MaxPageSize, len(seen))
	}
	_, err = f.client.ListFamilies(f.ctx, &familiesv1.ListFamiliesRequest{Parent: "clinics/north", PageSize: -1})
	wantCode(t, err, codes.InvalidArgument)
}

// digest summarises every table of the schema, to prove a refused request
// changed nothing.
func digest(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	var out string
	for _, table := range []string{"families", "barriers", "warning_signs", "warning_sign_retractions", "safety_screens", "craft_sessions", "craft_session_retractions", "boundaries", "boundary_events", "outbox", "idempotency_keys"} {
		var d *string
		if err := pool.QueryRow(context.Background(), `SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM `+table+` t`).Scan(&d); err != nil {
			t.Fatal(err)
		}
		if d != nil {
			out += table + ":" + *d + " "
		}
	}
	return out
}

// An update whose family names no family says so of family.name, plainly:
// not with the text of another error folded into its own.
func TestUpdateWithoutAFamilyNameSaysSo(t *testing.T) {
	t.Parallel()
	f := setup(t)
	_, err := f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Counselor: "counselor-2"},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"counselor"}}})
	st := wantCode(t, err, codes.InvalidArgument)
	if !slices.Equal(apperr.ViolatedFields(err), []string{"family.name"}) || strings.Count(fmt.Sprint(st.Message(), st.Details()), "rpc error") != 0 {
		t.Fatalf("update without a name: %q %v; want one violation of family.name, in plain words", st.Message(), st.Details())
	}
}

func TestBadInputChangesNothing(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	b := f.boundary(t, fam)
	noted, err := f.client.CreateBarrier(f.ctx, &familiesv1.CreateBarrierRequest{Parent: fam.GetName(), Barrier: &familiesv1.Barrier{
		Kind: familiesv1.BarrierKind_BARRIER_KIND_STIGMA, Notes: strings.Repeat("n", 1500)}})
	if err != nil {
		t.Fatal(err)
	}
	long := string(make([]byte, 3000))
	other := f.env.Counselor("south")
	noRole := f.env.As("north", "someone", auth.RoleCalendarReader) // lists families, reads none
	withFamily := func(mut func(*familiesv1.Family)) *familiesv1.CreateFamilyRequest {
		x := sampleFamily()
		mut(x)
		return &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: x}
	}
	cases := []struct {
		name  string
		ctx   context.Context
		call  func(context.Context) error
		code  codes.Code
		field string
	}{
		{"empty create", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateFamily(ctx, &familiesv1.CreateFamilyRequest{})
			return err
		}, codes.InvalidArgument, "parent"},
		{"missing given name", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateFamily(ctx, withFamily(func(x *familiesv1.Family) { x.LovedOne.GivenName = "" }))
			return err
		}, codes.InvalidArgument, "family.loved_one.given_name"},
		{"a given name of spaces", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateFamily(ctx, withFamily(func(x *familiesv1.Family) { x.LovedOne.GivenName = "   " }))
			return err
		}, codes.InvalidArgument, "family.loved_one.given_name"},
		{"a member's given name of spaces", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateFamily(ctx, withFamily(func(x *familiesv1.Family) { x.Members[0].GivenName = " " }))
			return err
		}, codes.InvalidArgument, "family.members[0].given_name"},
		{"the loved one's name blanked", f.ctx, func(ctx context.Context) error {
			_, err := f.client.UpdateFamily(ctx, &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: fam.GetName(),
				LovedOne: &familiesv1.LovedOne{GivenName: "\t"}}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"loved_one.given_name"}}})
			return err
		}, codes.InvalidArgument, "family.loved_one.given_name"},
		{"a family created closed", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateFamily(ctx, withFamily(func(x *familiesv1.Family) { x.State = familiesv1.FamilyState_FAMILY_STATE_CLOSED }))
			return err
		}, codes.InvalidArgument, "family.state"},
		{"oversized notes", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateBarrier(ctx, &familiesv1.CreateBarrierRequest{Parent: fam.GetName(),
				Barrier: &familiesv1.Barrier{Kind: familiesv1.BarrierKind_BARRIER_KIND_STIGMA, Notes: long}})
			return err
		}, codes.InvalidArgument, "barrier.notes"},
		{"wrong enum", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateBarrier(ctx, &familiesv1.CreateBarrierRequest{Parent: fam.GetName(),
				Barrier: &familiesv1.Barrier{Kind: 99}})
			return err
		}, codes.InvalidArgument, "barrier.kind"},
		{"unknown time zone", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateFamily(ctx, withFamily(func(x *familiesv1.Family) { x.Members[0].TimeZone = "Mars/Olympus" }))
			return err
		}, codes.InvalidArgument, "family.members[0].time_zone"},
		{"bad quiet hours", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateFamily(ctx, withFamily(func(x *familiesv1.Family) { x.Members[0].QuietHours.Start = "25:00" }))
			return err
		}, codes.InvalidArgument, "family.members[0].quiet_hours.start"},
		{"quiet hours that start where they end", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateFamily(ctx, withFamily(func(x *familiesv1.Family) { x.Members[0].QuietHours.End = x.Members[0].QuietHours.Start }))
			return err
		}, codes.InvalidArgument, "family.members[0].quiet_hours.end"},
		{"quiet hours without a time zone", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateFamily(ctx, withFamily(func(x *familiesv1.Family) { x.Members[0].TimeZone = "" }))
			return err
		}, codes.InvalidArgument, "family.members[0].time_zone"},
		{"a date of birth that is no date", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateFamily(ctx, withFamily(func(x *familiesv1.Family) { x.LovedOne.BirthDate = "1994-02-30" }))
			return err
		}, codes.InvalidArgument, "family.loved_one.birth_date"},
		// Year 0000 parses, and FHIR has no such year.
		{"a date of birth in year 0", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateFamily(ctx, withFamily(func(x *familiesv1.Family) { x.LovedOne.BirthDate = "0000-01-01" }))
			return err
		}, codes.InvalidArgument, "family.loved_one.birth_date"},
		{"a date of birth in 1850", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateFamily(ctx, withFamily(func(x *familiesv1.Family) { x.LovedOne.BirthDate = "1850-06-01" }))
			return err
		}, codes.InvalidArgument, "family.loved_one.birth_date"},
		{"a date of birth to come", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateFamily(ctx, withFamily(func(x *familiesv1.Family) { x.LovedOne.BirthDate = "2090-01-01" }))
			return err
		}, codes.InvalidArgument, "family.loved_one.birth_date"},
		{"a phone number not in E.164 form", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateFamily(ctx, withFamily(func(x *familiesv1.Family) { x.Members[0].ContactChannels[0].Value = "call me" }))
			return err
		}, codes.InvalidArgument, "family.members[0].contact_channels[0].value"},
		{"an e-mail address with a name", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateFamily(ctx, withFamily(func(x *familiesv1.Family) {
				x.LovedOne.ContactChannels = []*familiesv1.ContactChannel{{Kind: familiesv1.ChannelKind_CHANNEL_KIND_EMAIL, Value: "Ana <ana@example.org>"}}
			}))
			return err
		}, codes.InvalidArgument, "family.loved_one.contact_channels[0].value"},
		{"duplicate member ids", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateFamily(ctx, withFamily(func(x *familiesv1.Family) { x.Members[1].Id = "mom" }))
			return err
		}, codes.InvalidArgument, "family.members[1].id"},
		{"malformed name", f.ctx, func(ctx context.Context) error {
			_, err := f.client.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: "clinics/north/family/x"})
			return err
		}, codes.InvalidArgument, "name"},
		{"future first contact", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateFamily(ctx, withFamily(func(x *familiesv1.Family) {
				x.FirstContactTime = timestamppb.New(time.Now().Add(90 * 24 * time.Hour))
			}))
			return err
		}, codes.InvalidArgument, "family.first_contact_time"},
		{"first contact at a zero time", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateFamily(ctx, withFamily(func(x *familiesv1.Family) { x.FirstContactTime = &timestamppb.Timestamp{} }))
			return err
		}, codes.InvalidArgument, "family.first_contact_time"},
		{"an overdose at a zero time", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateWarningSign(ctx, &familiesv1.CreateWarningSignRequest{Parent: fam.GetName(),
				WarningSign: &familiesv1.WarningSign{Kind: familiesv1.WarningSignKind_WARNING_SIGN_KIND_OVERDOSE, OccurTime: &timestamppb.Timestamp{}}})
			return err
		}, codes.InvalidArgument, "warning_sign.occur_time"},
		{"a screen at a zero time", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateSafetyScreen(ctx, &familiesv1.CreateSafetyScreenRequest{Parent: fam.GetName(),
				SafetyScreen: &familiesv1.SafetyScreen{Result: familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK, ScreenTime: &timestamppb.Timestamp{}}})
			return err
		}, codes.InvalidArgument, "safety_screen.screen_time"},
		{"future warning sign", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateWarningSign(ctx, &familiesv1.CreateWarningSignRequest{Parent: fam.GetName(),
				WarningSign: &familiesv1.WarningSign{Kind: familiesv1.WarningSignKind_WARNING_SIGN_KIND_OVERDOSE,
					OccurTime: timestamppb.New(time.Now().Add(48 * time.Hour))}})
			return err
		}, codes.InvalidArgument, "warning_sign.occur_time"},
		{"risk without plan", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateSafetyScreen(ctx, &familiesv1.CreateSafetyScreenRequest{Parent: fam.GetName(),
				SafetyScreen: &familiesv1.SafetyScreen{Result: familiesv1.SafetyRisk_SAFETY_RISK_RISK_WITH_PLAN}})
			return err
		}, codes.InvalidArgument, "safety_screen.safety_plan_in_place"},
		{"bad filter", f.ctx, func(ctx context.Context) error {
			_, err := f.client.ListFamilies(ctx, &familiesv1.ListFamiliesRequest{Parent: "clinics/north", Filter: "name = x"})
			return err
		}, codes.InvalidArgument, "filter"},
		{"update of an output-only field", f.ctx, func(ctx context.Context) error {
			_, err := f.client.UpdateFamily(ctx, &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: fam.GetName(), Urgent: true},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"urgent"}}})
			return err
		}, codes.InvalidArgument, "update_mask"},
		{"another clinic's family", other, func(ctx context.Context) error {
			_, err := f.client.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
			return err
		}, codes.NotFound, ""},
		{"another clinic's boundary", other, func(ctx context.Context) error {
			_, err := f.client.AgreeBoundary(ctx, &familiesv1.TransitionBoundaryRequest{Name: b.GetName()})
			return err
		}, codes.NotFound, ""},
		{"create in another clinic", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateFamily(ctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/south", Family: sampleFamily()})
			return err
		}, codes.NotFound, ""},
		{"coverage without its kind", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateFamily(ctx, withFamily(func(x *familiesv1.Family) { x.Coverage = &familiesv1.Coverage{Payer: "Acme"} }))
			return err
		}, codes.InvalidArgument, "family.coverage.kind"},
		{"resolving notes past their limit", f.ctx, func(ctx context.Context) error {
			_, err := f.client.ResolveBarrier(ctx, &familiesv1.ResolveBarrierRequest{Name: noted.GetName(), Notes: strings.Repeat("r", 600)})
			return err
		}, codes.InvalidArgument, "notes"},
		{"a time out of range", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateWarningSign(ctx, &familiesv1.CreateWarningSignRequest{Parent: fam.GetName(),
				WarningSign: &familiesv1.WarningSign{Kind: familiesv1.WarningSignKind_WARNING_SIGN_KIND_JOB_LOSS,
					OccurTime: &timestamppb.Timestamp{Seconds: -1e11}}})
			return err
		}, codes.InvalidArgument, "warning_sign.occur_time"},
		{"a NUL character in a name", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateFamily(ctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: &familiesv1.Family{
				LovedOne: &familiesv1.LovedOne{GivenName: "Sa\x00m"}, Counselor: "counselor-1"}})
			return err
		}, codes.InvalidArgument, "family.loved_one.given_name"},
		{"missing family", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateBarrier(ctx, &familiesv1.CreateBarrierRequest{Parent: "clinics/north/families/nope",
				Barrier: &familiesv1.Barrier{Kind: familiesv1.BarrierKind_BARRIER_KIND_STIGMA}})
			return err
		}, codes.NotFound, ""},
		{"illegal transition", f.ctx, func(ctx context.Context) error {
			_, err := f.client.ReinforceBoundary(ctx, &familiesv1.TransitionBoundaryRequest{Name: b.GetName()})
			return err
		}, codes.FailedPrecondition, ""},
		{"stale etag", f.ctx, func(ctx context.Context) error {
			_, err := f.client.AgreeBoundary(ctx, &familiesv1.TransitionBoundaryRequest{Name: b.GetName(), Etag: "v999"})
			return err
		}, codes.Aborted, ""},
		{"wrong role", noRole, func(ctx context.Context) error {
			_, err := f.client.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
			return err
		}, codes.PermissionDenied, ""},
		{"no token", context.Background(), func(ctx context.Context) error {
			_, err := f.client.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
			return err
		}, codes.Unauthenticated, ""},
		{"craft session with no member", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateCraftSession(ctx, &familiesv1.CreateCraftSessionRequest{Parent: fam.GetName(), CraftSession: &familiesv1.CraftSession{
				Topics: []familiesv1.CraftTopic{familiesv1.CraftTopic_CRAFT_TOPIC_INDUCTION}}})
			return err
		}, codes.InvalidArgument, "craft_session.member_ids"},
		{"craft session with someone outside the family", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateCraftSession(ctx, &familiesv1.CreateCraftSessionRequest{Parent: fam.GetName(), CraftSession: &familiesv1.CraftSession{
				MemberIds: []string{"mom", "neighbour"}, Topics: []familiesv1.CraftTopic{familiesv1.CraftTopic_CRAFT_TOPIC_INDUCTION}}})
			return err
		}, codes.InvalidArgument, "craft_session.member_ids[1]"},
		{"craft session with a topic twice", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateCraftSession(ctx, &familiesv1.CreateCraftSessionRequest{Parent: fam.GetName(), CraftSession: &familiesv1.CraftSession{
				MemberIds: []string{"mom"}, Topics: []familiesv1.CraftTopic{familiesv1.CraftTopic_CRAFT_TOPIC_INDUCTION, familiesv1.CraftTopic_CRAFT_TOPIC_INDUCTION}}})
			return err
		}, codes.InvalidArgument, "craft_session.topics"},
		{"craft session tomorrow", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateCraftSession(ctx, &familiesv1.CreateCraftSessionRequest{Parent: fam.GetName(), CraftSession: &familiesv1.CraftSession{
				MemberIds: []string{"mom"}, Topics: []familiesv1.CraftTopic{familiesv1.CraftTopic_CRAFT_TOPIC_INDUCTION},
				SessionTime: timestamppb.New(time.Now().Add(24 * time.Hour))}})
			return err
		}, codes.InvalidArgument, "craft_session.session_time"},
		{"craft training past induction before a screen", f.ctx, func(ctx context.Context) error {
			_, err := f.client.CreateCraftSession(ctx, &familiesv1.CreateCraftSessionRequest{Parent: fam.GetName(), CraftSession: &familiesv1.CraftSession{
				MemberIds: []string{"mom"}, Topics: []familiesv1.CraftTopic{familiesv1.CraftTopic_CRAFT_TOPIC_SELF_CARE}}})
			return err
		}, codes.FailedPrecondition, ""},
		{"craft progress misnamed", f.ctx, func(ctx context.Context) error {
			_, err := f.client.GetCraftProgress(ctx, &familiesv1.GetCraftProgressRequest{Name: fam.GetName() + "/craftProgress/x"})
			return err
		}, codes.InvalidArgument, "name"},
		{"counselor may not delete", f.ctx, func(ctx context.Context) error {
			_, err := f.client.DeleteFamily(ctx, &familiesv1.DeleteFamilyRequest{Name: fam.GetName()})
			return err
		}, codes.PermissionDenied, ""},
	}
	before := digest(t, f.pool)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call(tc.ctx)
			st := wantCode(t, err, tc.code)
			if tc.field != "" {
				if !slices.Contains(apperr.ViolatedFields(err), tc.field) {
					t.Fatalf("no field violation for %q in %v", tc.field, st.Details())
				}
			}
			if after := digest(t, f.pool); after != before {
				t.Fatalf("database changed")
			}
		})
	}
}

func BenchmarkGetFamily(b *testing.B) {
	f := setup(b)
	fam := f.create(b)
	req := &familiesv1.GetFamilyRequest{Name: fam.GetName()}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := f.client.GetFamily(f.ctx, req); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkCreateFamily(b *testing.B) {
	f := setup(b)
	req := &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: sampleFamily()}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := f.client.CreateFamily(f.ctx, req); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// Coverage needs its kind when given or changed; a family stored without
// one before that was checked is still updated in its other fields.
func TestCoverageKindWhenGivenOrChanged(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	ctx := context.Background()
	if _, err := f.pool.Exec(ctx, `UPDATE families SET doc = jsonb_set(doc, '{coverage}', '{"payer": "Acme"}') WHERE id = $1`,
		fam.GetName()[strings.LastIndex(fam.GetName(), "/")+1:]); err != nil {
		t.Fatal(err)
	}
	cur, err := f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	if err != nil || cur.GetCoverage().GetPayer() != "Acme" {
		t.Fatalf("stored coverage = %v, %v", cur.GetCoverage(), err)
	}
	cur.Counselor = "counselor-2"
	if _, err := f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: cur,
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"counselor"}}}); err != nil {
		t.Fatalf("updating another field of a family whose coverage has no kind: %v", err)
	}
	_, err = f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: fam.GetName(),
		Coverage: &familiesv1.Coverage{Payer: "Other"}}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"coverage"}}})
	wantCode(t, err, codes.InvalidArgument)
}

// A high-risk screen being recorded while a boundary is activated is seen
// by the activation, which waits for it: the boundary stays agreed.
func TestActivationWaitsForAScreenInFlight(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	screen, err := f.client.CreateSafetyScreen(f.ctx, &familiesv1.CreateSafetyScreenRequest{Parent: fam.GetName(),
		SafetyScreen: &familiesv1.SafetyScreen{Result: familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.client.CreateBoundary(f.ctx, &familiesv1.CreateBoundaryRequest{Parent: fam.GetName(), Boundary: &familiesv1.Boundary{
		Category: familiesv1.BoundaryCategory_BOUNDARY_CATEGORY_NO_FINANCIAL_SUPPORT,
		Wording:  "We will not give you cash, but we will pay the clinic directly.", Consequence: "No cash gifts."}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.AgreeBoundary(f.ctx, &familiesv1.TransitionBoundaryRequest{Name: b.GetName()}); err != nil {
		t.Fatal(err)
	}
	// Another counselor's screen, in a transaction not yet committed, as
	// CreateSafetyScreen makes it: the family held FOR SHARE, the row in.
	famID := fam.GetName()[len("clinics/north/families/"):]
	tx := inFlight(t, f.pool, stmt{`SELECT 1 FROM families WHERE clinic = 'north' AND id = $1 FOR SHARE`, []any{famID}},
		stmt{`INSERT INTO safety_screens (clinic, family_id, id, result, safety_plan, screened_by, screen_time)
		VALUES ('north', $1, 'in-flight', $2, false, 'counselor-2', $3)`, []any{famID,
			int16(familiesv1.SafetyRisk_SAFETY_RISK_HIGH_RISK), screen.GetScreenTime().AsTime().Add(time.Minute)}})
	ctx := context.Background()
	// The activation must wait on this transaction's lock: one that did
	// not would answer before the screen commits.
	done := waitsOn(t, f.pool, tx, func() error {
		_, err := f.client.ActivateBoundary(f.ctx, &familiesv1.TransitionBoundaryRequest{Name: b.GetName()})
		return err
	})
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	wantCode(t, <-done, codes.FailedPrecondition)
	got, err := f.client.GetBoundary(f.ctx, &familiesv1.GetBoundaryRequest{Name: b.GetName()})
	if err != nil || got.GetState() != familiesv1.BoundaryState_BOUNDARY_STATE_AGREED {
		t.Fatalf("boundary after the high-risk screen = %v, %v; want still AGREED", got.GetState(), err)
	}
}

// Listing the records of a family that does not exist is NOT_FOUND, not an
// empty list; a family with none lists none.
func TestListsOfAMissingFamilyAreNotFound(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	for _, parent := range []string{fam.GetName(), "clinics/north/families/no-such-family"} {
		var errs []error
		_, err := f.client.ListBarriers(f.ctx, &familiesv1.ListBarriersRequest{Parent: parent})
		errs = append(errs, err)
		_, err = f.client.ListWarningSigns(f.ctx, &familiesv1.ListWarningSignsRequest{Parent: parent})
		errs = append(errs, err)
		_, err = f.client.ListSafetyScreens(f.ctx, &familiesv1.ListSafetyScreensRequest{Parent: parent})
		errs = append(errs, err)
		_, err = f.client.ListBoundaries(f.ctx, &familiesv1.ListBoundariesRequest{Parent: parent})
		errs = append(errs, err)
		want := codes.OK
		if parent != fam.GetName() {
			want = codes.NotFound
		}
		for i, err := range errs {
			if status.Code(err) != want {
				t.Fatalf("list %d of %s: %v, want %v", i, parent, err, want)
			}
		}
	}
}

// A member stored before equal quiet-hour ends were refused does not block
// an unrelated update of the family; changing that member's quiet hours to
// equal ends is still refused.
func TestOldQuietHoursDoNotBlockUpdates(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	f.storeDoc(t, fam, `jsonb_set(doc, '{members,0,quiet_hours,end}', '"22:00"')`)
	got, err := f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: fam.GetName(), Counselor: "counselor-2"},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"counselor"}}})
	if err != nil || got.GetCounselor() != "counselor-2" {
		t.Fatalf("an unrelated update of a family with old equal quiet ends: %v, %v", got, err)
	}
	members := got.GetMembers()
	members[1].QuietHours, members[1].TimeZone = &familiesv1.QuietHours{Start: "08:00", End: "08:00"}, "America/Chicago"
	_, err = f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: fam.GetName(), Members: members},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"members"}}})
	wantCode(t, err, codes.InvalidArgument)
}

// Quiet hours stored without a time zone, before one was required with
// them, do not block an unrelated update; new hours, or a zone taken
// away, need one.
func TestQuietHoursNeedTheMembersZone(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	f.storeDoc(t, fam, `doc #- '{members,0,time_zone}'`)
	got, err := f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: fam.GetName(), Counselor: "counselor-2"},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"counselor"}}})
	if err != nil || got.GetMembers()[0].GetTimeZone() != "" || got.GetMembers()[0].GetQuietHours() == nil {
		t.Fatalf("an unrelated update of a member stored with quiet hours and no zone: %v, %v", got, err)
	}
	members := got.GetMembers()
	members[0].GivenName = "Ana María" // the member as stored, hours and all
	if _, err := f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: fam.GetName(), Members: members},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"members"}}}); err != nil {
		t.Fatalf("an update that keeps the stored hours: %v", err)
	}
	for name, change := range map[string]func(m []*familiesv1.Member){
		"new hours for the member without a zone": func(m []*familiesv1.Member) { m[0].QuietHours.Start = "21:00" },
		"hours for another member without a zone": func(m []*familiesv1.Member) {
			m[1].QuietHours = &familiesv1.QuietHours{Start: "22:00", End: "06:00"}
		},
	} {
		cur, err := f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
		if err != nil {
			t.Fatal(err)
		}
		m := cur.GetMembers()
		change(m)
		_, err = f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: fam.GetName(), Members: m},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"members"}}})
		wantCode(t, err, codes.InvalidArgument)
		if v := apperr.ViolatedFields(err); len(v) != 1 || !strings.HasSuffix(v[0], ".time_zone") {
			t.Fatalf("%s: violations %v; want the member's time_zone alone", name, v)
		}
	}
	after, err := f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	if err != nil || after.GetEtag() == "" || after.GetMembers()[0].GetQuietHours().GetStart() != "22:00" || after.GetMembers()[1].GetQuietHours() != nil {
		t.Fatalf("a refused update changed the family: %v, %v", after, err)
	}
}

// A time zone stored before "Local" was refused does not block an update,
// least of all the withdrawal of consent to contact; a new one is refused.
func TestOldTimeZonesDoNotBlockUpdates(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	f.storeDoc(t, fam, `jsonb_set(jsonb_set(doc, '{members,0,time_zone}', '"Local"'),
		'{loved_one,time_zone}', '"Local"')`)
	cur, err := f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	if err != nil || cur.GetMembers()[0].GetTimeZone() != "Local" || cur.GetLovedOne().GetTimeZone() != "Local" {
		t.Fatalf("the stored zones were not changed for the test: %v, %v", cur, err)
	}
	members := cur.GetMembers()
	members[0].ConsentToContact = false
	if _, err := f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: fam.GetName(), Members: members},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"members"}}}); err != nil {
		t.Fatalf("withdrawing a member's consent beside an old zone: %v", err)
	}
	lo := cur.GetLovedOne()
	lo.MayContactDirectly = false
	if _, err := f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: fam.GetName(), LovedOne: lo},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"loved_one"}}}); err != nil {
		t.Fatalf("an update of the loved one beside their old zone: %v", err)
	}
	members[1].TimeZone = "Local"
	_, err = f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: fam.GetName(), Members: members},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"members"}}})
	if wantCode(t, err, codes.InvalidArgument); !slices.Contains(apperr.ViolatedFields(err), "family.members[1].time_zone") {
		t.Fatalf("a new \"Local\" zone: %v; want a violation on family.members[1].time_zone", apperr.ViolatedFields(err))
	}
}

// A contact channel stored before values were checked against their kind
// does not block an unrelated update; a new bad value is refused.
func TestOldContactValuesDoNotBlockUpdates(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	f.storeDoc(t, fam, `jsonb_set(doc, '{members,0,contact_channels,0,value}', '"ana at example"')`)
	cur, err := f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	if err != nil || cur.GetMembers()[0].GetContactChannels()[0].GetValue() != "ana at example" {
		t.Fatalf("the stored value was not changed for the test: %v, %v", cur.GetMembers(), err)
	}
	members := cur.GetMembers()
	members[1].GivenName = "Luisa"
	if _, err := f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: fam.GetName(), Members: members},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"members"}}}); err != nil {
		t.Fatalf("an update of another member, the old value kept: %v", err)
	}
	members[1].ContactChannels = []*familiesv1.ContactChannel{{Kind: familiesv1.ChannelKind_CHANNEL_KIND_PHONE, Value: "0101"}}
	_, err = f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: fam.GetName(), Members: members},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"members"}}})
	if st := wantCode(t, err, codes.InvalidArgument); !slices.Contains(apperr.ViolatedFields(err), "family.members[1].contact_channels[0].value") {
		t.Fatalf("a new bad phone number: %v", st.Details())
	}
}

// A screen dated a little ahead (a device's clock) is recorded as of now:
// kept ahead, it would stay the latest over a high risk recorded after it.
// Each screen moves the family's etag and update time, which show it.
func TestALaterScreenIsTheLatest(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam, err := f.client.CreateFamily(f.ctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: sampleFamily()})
	if err != nil {
		t.Fatal(err)
	}
	ahead, err := f.client.CreateSafetyScreen(f.ctx, &familiesv1.CreateSafetyScreenRequest{Parent: fam.GetName(),
		SafetyScreen: &familiesv1.SafetyScreen{Result: familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK,
			ScreenTime: timestamppb.New(time.Now().Add(4 * time.Minute))}})
	if err != nil {
		t.Fatal(err)
	}
	if ahead.GetScreenTime().AsTime().After(time.Now()) {
		t.Fatalf("a screen dated ahead kept its time %v", ahead.GetScreenTime().AsTime())
	}
	screened, err := f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	if screened.GetEtag() == fam.GetEtag() || !screened.GetUpdateTime().AsTime().After(fam.GetUpdateTime().AsTime()) {
		t.Fatalf("after a screen: etag %s, updated %v; before: %s, %v; want both moved", screened.GetEtag(),
			screened.GetUpdateTime().AsTime(), fam.GetEtag(), fam.GetUpdateTime().AsTime())
	}
	if _, err := f.client.CreateSafetyScreen(f.ctx, &familiesv1.CreateSafetyScreenRequest{Parent: fam.GetName(),
		SafetyScreen: &familiesv1.SafetyScreen{Result: familiesv1.SafetyRisk_SAFETY_RISK_HIGH_RISK}}); err != nil {
		t.Fatal(err)
	}
	got, err := f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	if err != nil || got.GetLatestSafetyScreen().GetResult() != familiesv1.SafetyRisk_SAFETY_RISK_HIGH_RISK {
		t.Fatalf("latest screen = %v, %v; want the high risk recorded last", got.GetLatestSafetyScreen(), err)
	}
	if got.GetEtag() == screened.GetEtag() {
		t.Fatalf("etag %s unchanged by a new screen", got.GetEtag())
	}
}

// A high risk entered with an earlier time than a no risk recorded before
// it (the time of the call it came from, or a slow clock) is not hidden
// behind it: it counts until a screen done after it was recorded.
func TestABackdatedHighRiskIsNotHidden(t *testing.T) {
	t.Parallel()
	if familiesv1.SafetyRisk_SAFETY_RISK_HIGH_RISK != 3 {
		t.Fatal("HIGH_RISK is not 3: the screens' order (LatestScreen) names it by its number")
	}
	f := setup(t)
	fam, err := f.client.CreateFamily(f.ctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: sampleFamily()})
	if err != nil {
		t.Fatal(err)
	}
	screen := func(result familiesv1.SafetyRisk, ago time.Duration) {
		t.Helper()
		ss := &familiesv1.SafetyScreen{Result: result}
		if ago > 0 {
			ss.ScreenTime = timestamppb.New(time.Now().Add(-ago))
		}
		if _, err := f.client.CreateSafetyScreen(f.ctx, &familiesv1.CreateSafetyScreenRequest{Parent: fam.GetName(), SafetyScreen: ss}); err != nil {
			t.Fatal(err)
		}
	}
	status := func() (familiesv1.SafetyScreenStatus, familiesv1.SafetyRisk) {
		t.Helper()
		got, err := f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
		if err != nil {
			t.Fatal(err)
		}
		return got.GetSafetyScreenStatus(), got.GetLatestSafetyScreen().GetResult()
	}
	screen(familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK, 0)
	screen(familiesv1.SafetyRisk_SAFETY_RISK_HIGH_RISK, 3*time.Minute)
	if st, r := status(); st != familiesv1.SafetyScreenStatus_SAFETY_SCREEN_STATUS_HIGH_RISK || r != familiesv1.SafetyRisk_SAFETY_RISK_HIGH_RISK {
		t.Fatalf("after a high risk dated before the no risk recorded first: %v, latest %v; want HIGH_RISK", st, r)
	}
	// A no risk done before the high risk was recorded does not lift it.
	screen(familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK, 2*time.Minute)
	if st, _ := status(); st != familiesv1.SafetyScreenStatus_SAFETY_SCREEN_STATUS_HIGH_RISK {
		t.Fatalf("after a no risk done before the high risk was recorded: %v; want HIGH_RISK still", st)
	}
	// Nor is it an expired screen when it was done long ago but entered
	// now: it ages from when it was recorded.
	screen(familiesv1.SafetyRisk_SAFETY_RISK_HIGH_RISK, 400*24*time.Hour)
	if st, r := status(); st != familiesv1.SafetyScreenStatus_SAFETY_SCREEN_STATUS_HIGH_RISK || r != familiesv1.SafetyRisk_SAFETY_RISK_HIGH_RISK {
		t.Fatalf("after a high risk done 400 days ago, entered now: %v, latest %v; want HIGH_RISK", st, r)
	}
	// One done now does.
	screen(familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK, 0)
	if st, r := status(); st != familiesv1.SafetyScreenStatus_SAFETY_SCREEN_STATUS_CURRENT || r != familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK {
		t.Fatalf("after a no risk done now: %v, latest %v; want CURRENT", st, r)
	}
}

// An update writes only the parts of the stored document it changes: a
// field a newer release stored (read here during a rollout, or after a
// rollback, and unknown to this one) outlives an update of other fields.
func TestUpdateKeepsFieldsOfANewerRelease(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam, err := f.client.CreateFamily(f.ctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: sampleFamily()})
	if err != nil {
		t.Fatal(err)
	}
	id := fam.GetName()[len("clinics/north/families/"):]
	ctx := context.Background()
	if _, err := f.pool.Exec(ctx, `UPDATE families SET doc = jsonb_set(jsonb_set(doc, '{members,0,do_not_text}', 'true'), '{future_field}', '"kept"')
		WHERE clinic = 'north' AND id = $1`, id); err != nil {
		t.Fatal(err)
	}
	cur, err := f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	if err != nil {
		t.Fatalf("a row with fields of a newer release: %v", err)
	}
	// The counselor, then the coverage: neither touches the members.
	cur.Counselor = "counselor-2"
	if cur, err = f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: cur, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"counselor"}}}); err != nil {
		t.Fatal(err)
	}
	cur.Coverage = nil
	if _, err = f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: cur, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"coverage"}}}); err != nil {
		t.Fatal(err)
	}
	var doNotText, future, coverage *string
	if err := f.pool.QueryRow(ctx, `SELECT doc #>> '{members,0,do_not_text}', doc ->> 'future_field', doc ->> 'coverage' FROM families WHERE clinic = 'north' AND id = $1`, id).
		Scan(&doNotText, &future, &coverage); err != nil {
		t.Fatal(err)
	}
	if doNotText == nil || *doNotText != "true" || future == nil || *future != "kept" {
		t.Fatalf("after updates of other fields: members[0].do_not_text %v, future_field %v; want both kept", doNotText, future)
	}
	if coverage != nil {
		t.Fatalf("coverage %s after it was cleared", *coverage)
	}
}

// A family's read finds the screen that counts for it in one step of an
// index ordered as LatestScreen ranks them, not by sorting all of the
// family's screens.
func TestLatestScreenReadsItsIndex(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.Schema(t, families.Migrations()...)
	ctx := context.Background()
	for _, q := range []string{
		`INSERT INTO families (clinic, id, doc, counselor, state, first_contact_time)
			SELECT 'north', 'f' || i, '{}', 'c', 1, now() FROM generate_series(1, 2000) i`,
		`INSERT INTO safety_screens (clinic, family_id, id, result, safety_plan, screened_by, screen_time)
			SELECT 'north', 'f' || (i % 2000 + 1), 's' || i, 1 + i % 3, false, 'c', now() - i * interval '1 minute'
			FROM generate_series(1, 40000) i`,
		`ANALYZE families`, `ANALYZE safety_screens`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	plan := pgtest.Explain(t, pool, `SELECT s.id FROM families f LEFT JOIN LATERAL `+families.LatestScreen+` s ON true
		WHERE f.clinic = 'north' AND f.id = 'f42'`)
	if !strings.Contains(plan, "safety_screens_counts_from") || strings.Contains(plan, "Sort") {
		t.Errorf("a family's read does not take its screen from safety_screens_counts_from:\n%s", plan)
	}
}

// A member removed from the family keeps their id: consents, referrals
// and sessions name them by it, and a member's own consent covers what is
// made under it. A new member given that id is refused, and nothing
// changes; one without an id is given a new one.
func TestRemovedMembersIDIsNotTakenAgain(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	update := func(members []*familiesv1.Member, etag string) (*familiesv1.Family, error) {
		return f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{
			Family:     &familiesv1.Family{Name: fam.GetName(), Members: members, Etag: etag},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"members"}}})
	}
	// Mom leaves.
	var rest []*familiesv1.Member
	for _, m := range fam.GetMembers() {
		if m.GetId() != "mom" {
			rest = append(rest, m)
		}
	}
	left, err := update(rest, fam.GetEtag())
	if err != nil {
		t.Fatal(err)
	}
	// Someone else under her id is refused on that member's field.
	stranger := &familiesv1.Member{Id: "mom", GivenName: "Bea", Relationship: familiesv1.Relationship_RELATIONSHIP_OTHER_RELATIVE}
	_, err = update(append(slices.Clone(rest), stranger), left.GetEtag())
	wantCode(t, err, codes.InvalidArgument)
	if got := apperr.ViolatedFields(err); !slices.Equal(got, []string{fmt.Sprintf("family.members[%d].id", len(rest))}) {
		t.Fatalf("violations %v; want the new member's id", got)
	}
	if got, err := f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()}); err != nil || got.GetEtag() != left.GetEtag() {
		t.Fatalf("after the refusal: %v, %v; want the family unchanged", got, err)
	}
	// Without an id she joins under a new one.
	stranger.Id = ""
	joined, err := update(append(slices.Clone(rest), stranger), left.GetEtag())
	if err != nil {
		t.Fatal(err)
	}
	if id := joined.GetMembers()[len(rest)].GetId(); id == "" || id == "mom" {
		t.Fatalf("the new member's id %q; want a new one", id)
	}
	// A member removed by a replica that knows nothing of retired ids (a
	// release behind, during a rolling update) is retired all the same.
	if _, err := f.pool.Exec(context.Background(), `UPDATE families SET doc = jsonb_set(doc, '{members}', '[]'::jsonb), version = version + 1
		WHERE id = $1`, aip.ID(fam.GetName())); err != nil {
		t.Fatal(err)
	}
	bare, err := f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	luis := &familiesv1.Member{Id: rest[0].GetId(), GivenName: "Someone else", Relationship: familiesv1.Relationship_RELATIONSHIP_SIBLING}
	_, err = update([]*familiesv1.Member{luis}, bare.GetEtag())
	wantCode(t, err, codes.InvalidArgument)
}

// The calendar reader learns which families a counselor's feed covers and
// nothing more: not their state (in treatment), nor an update time that
// an overdose or a screen moves, and it cannot filter on them either.
func TestCalendarReaderSeesOnlyWhoseFamiliesTheyAre(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	cal := f.env.As(auth.AnyClinic, "calendar-reader", auth.RoleCalendarReader)
	list, err := f.client.ListFamilies(cal, &familiesv1.ListFamiliesRequest{Parent: "clinics/north", Filter: `counselor = "counselor-1"`})
	if err != nil || len(list.GetFamilies()) != 1 {
		t.Fatalf("the calendar reader's list: %v, %v", list, err)
	}
	want := &familiesv1.Family{Name: fam.GetName(), Counselor: "counselor-1"}
	if got := list.GetFamilies()[0]; !proto.Equal(got, want) {
		t.Fatalf("the calendar reader sees %v; want %v", got, want)
	}
	for _, filter := range []string{"state = ENGAGED_IN_TREATMENT", `update_time >= "2026-01-01T00:00:00Z"`, "has_members = true"} {
		_, err := f.client.ListFamilies(cal, &familiesv1.ListFamiliesRequest{Parent: "clinics/north", Filter: filter})
		wantCode(t, err, codes.InvalidArgument)
	}
	// It lists one counselor's families at a time: its token serves every
	// clinic, and must not page out each one's families and caseloads.
	for _, filter := range []string{"", `counselor != "counselor-1"`, `counselor = ""`} {
		_, err := f.client.ListFamilies(cal, &familiesv1.ListFamiliesRequest{Parent: "clinics/north", Filter: filter})
		wantCode(t, err, codes.PermissionDenied)
	}
}

// A stated consequence must state one: without it the boundary would be
// agreed and kept, yet never count for a formal meeting. Refused on
// create and on an update that empties it, and nothing is stored.
func TestStatedConsequenceStatesOne(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	_, err := f.client.CreateBoundary(f.ctx, &familiesv1.CreateBoundaryRequest{Parent: fam.GetName(), Boundary: &familiesv1.Boundary{
		Category: familiesv1.BoundaryCategory_BOUNDARY_CATEGORY_STATED_CONSEQUENCE, Wording: "If you use at home", Consequence: "  "}})
	wantCode(t, err, codes.InvalidArgument)
	if got := apperr.ViolatedFields(err); !slices.Equal(got, []string{"boundary.consequence"}) {
		t.Fatalf("violations %v; want boundary.consequence", got)
	}
	b, err := f.client.CreateBoundary(f.ctx, &familiesv1.CreateBoundaryRequest{Parent: fam.GetName(), Boundary: &familiesv1.Boundary{
		Category: familiesv1.BoundaryCategory_BOUNDARY_CATEGORY_STATED_CONSEQUENCE, Wording: "If you use at home",
		Consequence: "you will stay with your brother"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.client.UpdateBoundary(f.ctx, &familiesv1.UpdateBoundaryRequest{Boundary: &familiesv1.Boundary{Name: b.GetName(), Etag: b.GetEtag()},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"consequence"}}})
	wantCode(t, err, codes.InvalidArgument)
	got, err := f.client.GetBoundary(f.ctx, &familiesv1.GetBoundaryRequest{Name: b.GetName()})
	if err != nil || got.GetConsequence() != b.GetConsequence() || got.GetEtag() != b.GetEtag() {
		t.Fatalf("after the refused update: %v, %v; want it unchanged", got, err)
	}
	list, err := f.client.ListBoundaries(f.ctx, &familiesv1.ListBoundariesRequest{Parent: fam.GetName()})
	if err != nil || len(list.GetBoundaries()) != 1 {
		t.Fatalf("boundaries %v, %v; want the one stated", list, err)
	}
}

// A move into ENGAGED_IN_TREATMENT writes family.treatment_entered, by
// which the worker ends the family's boundary follow-up: staff recording
// treatment entered outside Handoff stopped nothing before. Once per move,
// with the family's name alone; an entry recorded again is no second.
func TestTreatmentEntryIsAnnounced(t *testing.T) {
	f := setup(t)
	fam := f.create(t)
	entries := func() int {
		t.Helper()
		var n int
		if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE resource = $1
			AND event_type = 'handoff.families.v1.family.treatment_entered' AND generation = 7`, fam.GetName()).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	record := func() {
		t.Helper()
		if _, err := f.client.RecordTreatmentEntry(f.ctx, &familiesv1.RecordTreatmentEntryRequest{Name: fam.GetName()}); err != nil {
			t.Fatalf("record treatment entry: %v", err)
		}
	}
	setState := func(st familiesv1.FamilyState) {
		t.Helper()
		if _, err := f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: fam.GetName(), State: st},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"state"}}}); err != nil {
			t.Fatalf("set state %v: %v", st, err)
		}
	}
	if n := entries(); n != 0 {
		t.Fatalf("%d entries announced for a new family", n)
	}
	record()
	record()
	if n := entries(); n != 1 {
		t.Fatalf("%d entries announced after recording one twice; want 1", n)
	}
	var payload []byte
	if err := f.pool.QueryRow(context.Background(), `SELECT payload FROM outbox WHERE resource = $1
		AND event_type = 'handoff.families.v1.family.treatment_entered'`, fam.GetName()).Scan(&payload); err != nil {
		t.Fatal(err)
	}
	var a anypb.Any
	var announced familiesv1.Family
	if err := proto.Unmarshal(payload, &a); err != nil || a.UnmarshalTo(&announced) != nil ||
		!proto.Equal(&announced, &familiesv1.Family{Name: fam.GetName()}) {
		t.Fatalf("family.treatment_entered payload %x reads %v; want the family's name alone", payload, &announced)
	}
	// Left treatment, and entered again through the family's state.
	setState(familiesv1.FamilyState_FAMILY_STATE_ACTIVE)
	setState(familiesv1.FamilyState_FAMILY_STATE_ENGAGED_IN_TREATMENT)
	if n := entries(); n != 2 {
		t.Fatalf("%d entries announced after a second entry; want 2", n)
	}
}

// Closing a family writes family.closed, which the worker acts on (it
// stops the family's meetings, follow-up, held places and reminders): once
// per closing, with the family's name alone. While closed, the reminder
// automation is told no one may be contacted; reopened, it sees the
// consents again.
func TestClosingAFamilyIsAnnouncedAndEndsContact(t *testing.T) {
	f := setup(t)
	fam := f.create(t)
	setState := func(st familiesv1.FamilyState) {
		t.Helper()
		if _, err := f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: fam.GetName(), State: st},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"state"}}}); err != nil {
			t.Fatalf("set state %v: %v", st, err)
		}
	}
	closings := func() int {
		t.Helper()
		var n int
		if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE resource = $1
			AND event_type = 'handoff.families.v1.family.closed' AND position('Rivera'::bytea IN payload) = 0`, fam.GetName()).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	automation := f.env.As("north", "sms-1", auth.RoleReminders)
	contactable := func() (lovedOne bool, members []string) {
		t.Helper()
		got, err := f.client.GetFamily(automation, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range got.GetMembers() {
			if m.GetConsentToContact() || len(m.GetContactChannels()) > 0 {
				members = append(members, m.GetId())
			}
		}
		return got.GetLovedOne().GetMayContactDirectly() || len(got.GetLovedOne().GetContactChannels()) > 0, members
	}

	setState(familiesv1.FamilyState_FAMILY_STATE_ENGAGED_IN_TREATMENT)
	if n := closings(); n != 0 {
		t.Fatalf("%d family.closed events before it closed", n)
	}
	setState(familiesv1.FamilyState_FAMILY_STATE_CLOSED)
	if n := closings(); n != 1 {
		t.Fatalf("%d family.closed events after closing; want 1", n)
	}
	// Written by the database (migration 0009): it decodes as the
	// relays read it, the family's name alone, of the generation that
	// brought it.
	var payload []byte
	var generation int
	if err := f.pool.QueryRow(context.Background(), `SELECT payload, generation FROM outbox WHERE resource = $1
		AND event_type = 'handoff.families.v1.family.closed'`, fam.GetName()).Scan(&payload, &generation); err != nil {
		t.Fatal(err)
	}
	var a anypb.Any
	var announced familiesv1.Family
	if err := proto.Unmarshal(payload, &a); err != nil || a.UnmarshalTo(&announced) != nil ||
		!proto.Equal(&announced, &familiesv1.Family{Name: fam.GetName()}) || generation != 6 {
		t.Fatalf("family.closed payload %x (generation %d) reads %v; want the family's name alone, generation 6", payload, generation, &announced)
	}
	if lo, ms := contactable(); lo || len(ms) != 0 {
		t.Fatalf("the automation may contact the loved one %v and members %v of a closed family; want no one", lo, ms)
	}
	// Another change while closed is no second closing.
	if _, err := f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: fam.GetName(), Counselor: "counselor-2"},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"counselor"}}}); err != nil {
		t.Fatal(err)
	}
	if n := closings(); n != 1 {
		t.Fatalf("%d family.closed events after an edit of a closed family; want 1", n)
	}
	// Not straight to ENGAGED_IN_TREATMENT, which RecordTreatmentEntry
	// refuses for a closed family: opened again first.
	_, err := f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: fam.GetName(),
		State: familiesv1.FamilyState_FAMILY_STATE_ENGAGED_IN_TREATMENT}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"state"}}})
	if st := wantCode(t, err, codes.FailedPrecondition); apperr.Reason(err) != apperr.ReasonInvalidTransition {
		t.Fatalf("a closed family set ENGAGED_IN_TREATMENT: %v (%v); want INVALID_STATE_TRANSITION", err, st.Details())
	}
	setState(familiesv1.FamilyState_FAMILY_STATE_ACTIVE)
	if _, ms := contactable(); !slices.Equal(ms, []string{"mom"}) {
		t.Fatalf("members contactable once reopened: %v; want mom", ms)
	}
	setState(familiesv1.FamilyState_FAMILY_STATE_CLOSED)
	if n := closings(); n != 2 {
		t.Fatalf("%d family.closed events after closing twice; want 2", n)
	}
}

// A name of spaces stored before it was refused does not block an update
// of anything else (closing the case, withdrawing consent); changed to
// another blank, it is refused.
func TestOldBlankNamesDoNotBlockUpdates(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	f.storeDoc(t, fam, `jsonb_set(jsonb_set(doc, '{loved_one,given_name}', '"  "'),
		'{members,0,given_name}', '" "')`)
	if _, err := f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: fam.GetName(),
		State: familiesv1.FamilyState_FAMILY_STATE_CLOSED}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"state"}}}); err != nil {
		t.Fatalf("closing a family whose names were stored blank: %v", err)
	}
	_, err := f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: fam.GetName(),
		LovedOne: &familiesv1.LovedOne{GivenName: "\t"}}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"loved_one.given_name"}}})
	if wantCode(t, err, codes.InvalidArgument); !slices.Contains(apperr.ViolatedFields(err), "family.loved_one.given_name") {
		t.Fatalf("a blank name changed to another: %v; want it refused", apperr.ViolatedFields(err))
	}
}

// A family whose case was closed, or whose loved one is in treatment,
// takes no boundary step: no boundary is activated or reinforced, by the
// counselor or by the follow-up whose read of the family came before the
// change. Active again, it may go on. (Before, a family in treatment was
// not refused.)
func TestBoundaryStepsRefusedForAClosedFamily(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	ctx := f.ctx
	if _, err := f.client.CreateSafetyScreen(ctx, &familiesv1.CreateSafetyScreenRequest{Parent: fam.GetName(),
		SafetyScreen: &familiesv1.SafetyScreen{Result: familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK}}); err != nil {
		t.Fatal(err)
	}
	boundary := func() *familiesv1.Boundary {
		t.Helper()
		b, err := f.client.CreateBoundary(ctx, &familiesv1.CreateBoundaryRequest{Parent: fam.GetName(), Boundary: &familiesv1.Boundary{
			Category: familiesv1.BoundaryCategory_BOUNDARY_CATEGORY_NO_FINANCIAL_SUPPORT, Wording: "No cash; we pay the clinic directly."}})
		if err != nil {
			t.Fatal(err)
		}
		if b, err = f.client.AgreeBoundary(ctx, &familiesv1.TransitionBoundaryRequest{Name: b.GetName()}); err != nil {
			t.Fatal(err)
		}
		return b
	}
	active, agreed := boundary(), boundary()
	active, err := f.client.ActivateBoundary(ctx, &familiesv1.TransitionBoundaryRequest{Name: active.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	setState := func(st familiesv1.FamilyState) {
		t.Helper()
		if _, err := f.client.UpdateFamily(ctx, &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: fam.GetName(), State: st},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"state"}}}); err != nil {
			t.Fatal(err)
		}
	}
	worker := f.env.As(auth.AnyClinic, "worker", auth.RoleWorker)
	for state, reason := range map[familiesv1.FamilyState]string{
		familiesv1.FamilyState_FAMILY_STATE_CLOSED:               apperr.ReasonFamilyClosed,
		familiesv1.FamilyState_FAMILY_STATE_ENGAGED_IN_TREATMENT: apperr.ReasonFamilyInTreatment,
	} {
		setState(state)
		for _, c := range []struct {
			name string
			call func() error
		}{
			{"the worker reinforcing", func() error {
				_, err := f.client.ReinforceBoundary(worker, &familiesv1.TransitionBoundaryRequest{Name: active.GetName()})
				return err
			}},
			{"the counselor activating", func() error {
				_, err := f.client.ActivateBoundary(ctx, &familiesv1.TransitionBoundaryRequest{Name: agreed.GetName()})
				return err
			}},
		} {
			if info := errorInfo(wantCode(t, c.call(), codes.FailedPrecondition)); info.GetReason() != reason {
				t.Fatalf("%s, the family %v: reason %v; want %s", c.name, state, info, reason)
			}
		}
		for _, b := range []*familiesv1.Boundary{active, agreed} {
			if got, err := f.client.GetBoundary(ctx, &familiesv1.GetBoundaryRequest{Name: b.GetName()}); err != nil || got.GetEtag() != b.GetEtag() {
				t.Fatalf("%s after the refusals, the family %v: %v, %v; want it unchanged", b.GetName(), state, got, err)
			}
		}
		setState(familiesv1.FamilyState_FAMILY_STATE_ACTIVE)
	}
	if b, err := f.client.ReinforceBoundary(worker, &familiesv1.TransitionBoundaryRequest{Name: active.GetName()}); err != nil || b.GetReinforcementCount() != 1 {
		t.Fatalf("reinforcing once the case is open again: %v, %v", b, err)
	}
}

// A boundary read while it moves shows its state and its history as of one
// moment: as many reinforcements in the history as its count says, by
// GetBoundary and by ListBoundaries alike.
func TestBoundaryStateAndHistoryAreReadTogether(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	b := f.boundary(t, fam)
	if _, err := f.client.CreateSafetyScreen(f.ctx, &familiesv1.CreateSafetyScreenRequest{Parent: fam.GetName(),
		SafetyScreen: &familiesv1.SafetyScreen{Result: familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK}}); err != nil {
		t.Fatal(err)
	}
	step := func(fn func(context.Context, *familiesv1.TransitionBoundaryRequest, ...grpc.CallOption) (*familiesv1.Boundary, error)) {
		if _, err := fn(f.ctx, &familiesv1.TransitionBoundaryRequest{Name: b.GetName()}); err != nil {
			t.Error(err)
		}
	}
	step(f.client.AgreeBoundary)
	step(f.client.ActivateBoundary)
	consistent := func(how string, got *familiesv1.Boundary) {
		n := int32(0)
		for _, e := range got.GetHistory() {
			if e.GetToState() == familiesv1.BoundaryState_BOUNDARY_STATE_REINFORCED {
				n++
			}
		}
		if last := got.GetHistory()[len(got.GetHistory())-1].GetToState(); n != got.GetReinforcementCount() || last != got.GetState() {
			t.Errorf("%s: %s with %d reinforcements, its history %d, ending %s", how, got.GetState(), got.GetReinforcementCount(), n, last)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 60 {
			step(f.client.ReinforceBoundary)
		}
	}()
	for reads := 0; ; reads++ {
		select {
		case <-done:
			if reads < 10 {
				t.Fatalf("only %d reads while the boundary moved", reads)
			}
			return
		default:
		}
		one, err := f.client.GetBoundary(f.ctx, &familiesv1.GetBoundaryRequest{Name: b.GetName()})
		if err != nil {
			t.Fatal(err)
		}
		consistent("GetBoundary", one)
		list, err := f.client.ListBoundaries(f.ctx, &familiesv1.ListBoundariesRequest{Parent: fam.GetName()})
		if err != nil || len(list.GetBoundaries()) != 1 {
			t.Fatalf("ListBoundaries: %v, %v", list, err)
		}
		consistent("ListBoundaries", list.GetBoundaries()[0])
		if t.Failed() {
			<-done
			return
		}
	}
}

// storeDoc sets fam's stored document to expr (SQL over doc), as an
// earlier release may have left it, past the service's checks.
func (f *fixture) storeDoc(t *testing.T, fam *familiesv1.Family, expr string) {
	t.Helper()
	if _, err := f.pool.Exec(context.Background(), `UPDATE families SET doc = `+expr+` WHERE clinic = 'north' AND id = $1`,
		aip.ID(fam.GetName())); err != nil {
		t.Fatal(err)
	}
}

// A screen is recorded after every screen the family already has, though
// its time was read first (it waited on the family's lock while another
// screen took it) or on a replica whose clock is behind: a high risk
// recorded last counts, not the no risk recorded before it. The family's
// update time moves forward with it, for readers that sync on it.
func TestScreenRecordedLastCountsThoughItsClockIsBehind(t *testing.T) {
	f := setupConsent(t)
	fam := f.create(t)
	screen := func(r familiesv1.SafetyRisk) *familiesv1.SafetyScreen {
		t.Helper()
		out, err := f.client.CreateSafetyScreen(f.ctx, &familiesv1.CreateSafetyScreenRequest{Parent: fam.GetName(),
			SafetyScreen: &familiesv1.SafetyScreen{Result: r}})
		if err != nil {
			t.Fatalf("CreateSafetyScreen %v: %v", r, err)
		}
		return out
	}
	screen(familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK)
	before, err := f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Add(-2 * time.Second)
	high := screen(familiesv1.SafetyRisk_SAFETY_RISK_HIGH_RISK)
	got, err := f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetLatestSafetyScreen().GetName() != high.GetName() || got.GetSafetyScreenStatus() != familiesv1.SafetyScreenStatus_SAFETY_SCREEN_STATUS_HIGH_RISK {
		t.Fatalf("latest screen %v (%v); want the high risk recorded last, %s", got.GetLatestSafetyScreen(), got.GetSafetyScreenStatus(), high.GetName())
	}
	// Done when its replica says, recorded after the screen before it.
	if done, clk := high.GetScreenTime().AsTime(), f.clock.Now().Truncate(time.Microsecond); !done.Equal(clk) ||
		!high.GetCreateTime().AsTime().After(before.GetLatestSafetyScreen().GetCreateTime().AsTime()) {
		t.Errorf("a screen given no time: done %v (clock %v), recorded %v after %v; want done by the clock, recorded after",
			done, clk, high.GetCreateTime().AsTime(), before.GetLatestSafetyScreen().GetCreateTime().AsTime())
	}
	if !got.GetUpdateTime().AsTime().After(before.GetUpdateTime().AsTime()) {
		t.Errorf("update time %v after the screen, %v before: want it moved forward", got.GetUpdateTime().AsTime(), before.GetUpdateTime().AsTime())
	}
}

// The worker, whose token serves every clinic, is given a boundary's
// state, counts and times: not the family's words, what they will do, nor
// why staff moved it. Its workflows ask only whether a consequence is
// stated, which they still can. The staff see it all.
func TestWorkerGetsBoundariesWithoutTheirWords(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	ctx := f.ctx
	f.screen(t, fam, familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK)
	b, err := f.client.CreateBoundary(ctx, &familiesv1.CreateBoundaryRequest{Parent: fam.GetName(), Boundary: &familiesv1.Boundary{
		Category: familiesv1.BoundaryCategory_BOUNDARY_CATEGORY_STATED_CONSEQUENCE, Wording: "No using at home", Consequence: "He moves to his brother's"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []func(context.Context, *familiesv1.TransitionBoundaryRequest, ...grpc.CallOption) (*familiesv1.Boundary, error){
		f.client.AgreeBoundary, f.client.ActivateBoundary} {
		if _, err := step(ctx, &familiesv1.TransitionBoundaryRequest{Name: b.GetName(), Reason: "he broke the door when we refused money"}); err != nil {
			t.Fatal(err)
		}
	}
	worker := f.env.As(auth.AnyClinic, "worker", auth.RoleWorker)
	reinforced, err := f.client.ReinforceBoundary(worker, &familiesv1.TransitionBoundaryRequest{Name: b.GetName(), Reason: "declined at the meeting"})
	if err != nil {
		t.Fatal(err)
	}
	listed, err := f.client.ListBoundaries(worker, &familiesv1.ListBoundariesRequest{Parent: fam.GetName()})
	if err != nil || len(listed.GetBoundaries()) != 1 {
		t.Fatalf("the worker's list: %v, %v", listed, err)
	}
	for how, got := range map[string]*familiesv1.Boundary{"reinforced": reinforced, "listed": listed.GetBoundaries()[0]} {
		text := prototext.Format(got)
		for _, words := range []string{"No using at home", "brother", "broke the door", "declined at the meeting", "counselor-1"} {
			if strings.Contains(text, words) {
				t.Errorf("the worker's boundary (%s) holds %q: %s", how, words, text)
			}
		}
		if !boundaries.StatesConsequence(got) || got.GetReinforcementCount() != 1 || len(got.GetHistory()) != 4 {
			t.Errorf("the worker's boundary (%s): %s; want it in force, stating a consequence, reinforced once, with its four steps", how, text)
		}
	}
	staff, err := f.client.GetBoundary(ctx, &familiesv1.GetBoundaryRequest{Name: b.GetName()})
	if err != nil || staff.GetWording() != "No using at home" || staff.GetConsequence() != "He moves to his brother's" ||
		staff.GetHistory()[1].GetReason() != "he broke the door when we refused money" {
		t.Fatalf("the staff's boundary: %v, %v; want its words", staff, err)
	}
}
