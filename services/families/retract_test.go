package families_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	"github.com/handoff-health/handoff/services/auth"
)

// A warning sign recorded in error is retracted, not changed: it stays
// listed with who retracted it and why, a retry returns the first answer,
// a second retraction is refused, and the family stays urgent while any
// overdose of it stands.
func TestRetractWarningSign(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	ctx := f.ctx
	sign := func(kind familiesv1.WarningSignKind) *familiesv1.WarningSign {
		t.Helper()
		w, err := f.client.CreateWarningSign(ctx, &familiesv1.CreateWarningSignRequest{Parent: fam.GetName(),
			WarningSign: &familiesv1.WarningSign{Kind: kind}})
		if err != nil {
			t.Fatalf("CreateWarningSign(%v): %v", kind, err)
		}
		return w
	}
	family := func() *familiesv1.Family {
		t.Helper()
		got, err := f.client.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	first, second := sign(familiesv1.WarningSignKind_WARNING_SIGN_KIND_OVERDOSE), sign(familiesv1.WarningSignKind_WARNING_SIGN_KIND_OVERDOSE)
	jobLoss := sign(familiesv1.WarningSignKind_WARNING_SIGN_KIND_JOB_LOSS)

	// Bad input changes nothing: no reason, a blank one, a malformed name,
	// a sign that does not exist, the worker (who may not).
	before := digest(t, f.pool)
	for what, req := range map[string]*familiesv1.RetractWarningSignRequest{
		"no reason":    {Name: first.GetName()},
		"blank reason": {Name: first.GetName(), Reason: "  "},
		"bad name":     {Name: fam.GetName() + "/barriers/x", Reason: "wrong family"},
	} {
		_, err := f.client.RetractWarningSign(ctx, req)
		if st := wantCode(t, err, codes.InvalidArgument); !strings.Contains(fmt.Sprint(st.Details()), map[bool]string{true: "name", false: "reason"}[what == "bad name"]) {
			t.Fatalf("%s: refusal %v; want the field named", what, st.Details())
		}
	}
	_, err := f.client.RetractWarningSign(ctx, &familiesv1.RetractWarningSignRequest{Name: fam.GetName() + "/warningSigns/nope", Reason: "wrong family"})
	wantCode(t, err, codes.NotFound)
	_, err = f.client.RetractWarningSign(f.env.As("north", "worker", auth.RoleWorker),
		&familiesv1.RetractWarningSignRequest{Name: first.GetName(), Reason: "wrong family"})
	wantCode(t, err, codes.PermissionDenied)
	if after := digest(t, f.pool); after != before {
		t.Fatal("a refused retraction changed the database")
	}

	urgent := family()
	req := &familiesv1.RetractWarningSignRequest{Name: first.GetName(), Reason: "entered for the wrong family", RequestId: "r-1"}
	got, err := f.client.RetractWarningSign(ctx, req)
	if err != nil || got.GetRetractTime() == nil || got.GetRetractedBy() != "counselor-1" || got.GetRetractReason() != req.GetReason() ||
		got.GetKind() != familiesv1.WarningSignKind_WARNING_SIGN_KIND_OVERDOSE || got.GetCreateTime().AsTime() != first.GetCreateTime().AsTime() {
		t.Fatalf("RetractWarningSign = %v, %v; want the sign as recorded, retracted by counselor-1 for the reason given", got, err)
	}
	// Another overdose stands: the family stays urgent, at its version.
	if now := family(); !now.GetUrgent() || now.GetEtag() != urgent.GetEtag() {
		t.Fatalf("after retracting one of two overdoses: urgent %v, etag %s (was %s); want urgent, unchanged", now.GetUrgent(), now.GetEtag(), urgent.GetEtag())
	}
	again, err := f.client.RetractWarningSign(ctx, req)
	if err != nil || !again.GetRetractTime().AsTime().Equal(got.GetRetractTime().AsTime()) {
		t.Fatalf("the retry = %v, %v; want the first answer", again, err)
	}
	_, err = f.client.RetractWarningSign(ctx, &familiesv1.RetractWarningSignRequest{Name: first.GetName(), Reason: "again"})
	if st := wantCode(t, err, codes.FailedPrecondition); errorInfo(st).GetReason() != "INVALID_STATE_TRANSITION" {
		t.Fatalf("a second retraction: %v; want INVALID_STATE_TRANSITION", st.Details())
	}
	if read, err := f.client.GetWarningSign(ctx, &familiesv1.GetWarningSignRequest{Name: first.GetName()}); err != nil ||
		read.GetRetractReason() != req.GetReason() || !proto.Equal(read, got) {
		t.Fatalf("GetWarningSign = %v, %v; want the first retraction kept, as it was answered (%v)", read, err, got)
	}

	// A job loss retracted leaves urgency alone.
	if _, err := f.client.RetractWarningSign(ctx, &familiesv1.RetractWarningSignRequest{Name: jobLoss.GetName(), Reason: "misheard"}); err != nil {
		t.Fatal(err)
	}
	if now := family(); !now.GetUrgent() || now.GetEtag() != urgent.GetEtag() {
		t.Fatalf("after retracting a job loss: urgent %v, etag %s; want urgent at %s", now.GetUrgent(), now.GetEtag(), urgent.GetEtag())
	}
	// The last standing overdose retracted: the family is urgent no more.
	if _, err := f.client.RetractWarningSign(ctx, &familiesv1.RetractWarningSignRequest{Name: second.GetName(), Reason: "it was a fall"}); err != nil {
		t.Fatal(err)
	}
	calm := family()
	if calm.GetUrgent() || calm.GetEtag() == urgent.GetEtag() {
		t.Fatalf("after retracting every overdose: urgent %v, etag %s; want not urgent, a new version", calm.GetUrgent(), calm.GetEtag())
	}
	if list, err := f.client.ListFamilies(ctx, &familiesv1.ListFamiliesRequest{Parent: "clinics/north", Filter: "urgent = true"}); err != nil ||
		len(list.GetFamilies()) != 0 {
		t.Fatalf("urgent families = %v, %v; want none", list, err)
	}

	// The signs stay listed; the workflows ask for the overdoses that stand.
	all, err := f.client.ListWarningSigns(ctx, &familiesv1.ListWarningSignsRequest{Parent: fam.GetName()})
	if err != nil || len(all.GetWarningSigns()) != 3 {
		t.Fatalf("ListWarningSigns = %v, %v; want all three", all, err)
	}
	for _, w := range all.GetWarningSigns() {
		if w.GetRetractTime() == nil || w.GetRetractReason() == "" {
			t.Fatalf("%s listed without its retraction", w.GetName())
		}
	}
	standing, err := f.client.ListWarningSigns(ctx, &familiesv1.ListWarningSignsRequest{Parent: fam.GetName(), Filter: "kind = OVERDOSE AND retracted = false"})
	if err != nil || len(standing.GetWarningSigns()) != 0 {
		t.Fatalf("standing overdoses = %v, %v; want none", standing, err)
	}

	// A new overdose marks the family urgent again, and is the one listed.
	third := sign(familiesv1.WarningSignKind_WARNING_SIGN_KIND_OVERDOSE)
	if !family().GetUrgent() {
		t.Fatal("an overdose after the retractions must mark the family urgent")
	}
	standing, err = f.client.ListWarningSigns(ctx, &familiesv1.ListWarningSignsRequest{Parent: fam.GetName(), Filter: "kind = OVERDOSE AND retracted = false"})
	if err != nil || len(standing.GetWarningSigns()) != 1 || standing.GetWarningSigns()[0].GetName() != third.GetName() {
		t.Fatalf("standing overdoses = %v, %v; want %s", standing, err, third.GetName())
	}
	retracted, err := f.client.ListWarningSigns(ctx, &familiesv1.ListWarningSignsRequest{Parent: fam.GetName(), Filter: "retracted = true"})
	if err != nil || len(retracted.GetWarningSigns()) != 3 {
		t.Fatalf("retracted signs = %v, %v; want three", retracted, err)
	}

	// Each retraction is an event naming the sign; the reason stays out.
	var events, leaks int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*), count(*) FILTER (WHERE position('wrong family'::bytea IN payload) > 0)
		FROM outbox WHERE event_type = 'handoff.families.v1.warning_sign.retracted' AND resource LIKE $1 || '/%'`,
		fam.GetName()).Scan(&events, &leaks); err != nil || events != 3 || leaks != 0 {
		t.Fatalf("%d retraction events, %d with the reason, %v; want 3 and none", events, leaks, err)
	}
}
