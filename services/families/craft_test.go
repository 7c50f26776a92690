package families_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
)

// session records a CRAFT session with the family's mother on topics.
func (f *fixture) session(ctx context.Context, fam *familiesv1.Family, requestID string, topics ...familiesv1.CraftTopic) (*familiesv1.CraftSession, error) {
	return f.client.CreateCraftSession(ctx, &familiesv1.CreateCraftSessionRequest{Parent: fam.GetName(), RequestId: requestID,
		CraftSession: &familiesv1.CraftSession{MemberIds: []string{"mom"}, Topics: topics, Notes: "she pays his phone bill"}})
}

func (f *fixture) screen(t *testing.T, fam *familiesv1.Family, risk familiesv1.SafetyRisk) {
	t.Helper()
	if _, err := f.client.CreateSafetyScreen(f.ctx, &familiesv1.CreateSafetyScreenRequest{Parent: fam.GetName(),
		SafetyScreen: &familiesv1.SafetyScreen{Result: risk}}); err != nil {
		t.Fatal(err)
	}
}

// CRAFT teaches induction first and screens for domestic violence second:
// nothing past induction is taught before a screen counts, and letting
// consequences fall on the loved one waits out a high risk. Progress
// follows the sessions in the model's order.
func TestCraftSessionsFollowTheScreenAndShowProgress(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	const (
		induction = familiesv1.CraftTopic_CRAFT_TOPIC_INDUCTION
		analysis  = familiesv1.CraftTopic_CRAFT_TOPIC_FUNCTIONAL_ANALYSIS
		talk      = familiesv1.CraftTopic_CRAFT_TOPIC_POSITIVE_COMMUNICATION
		reward    = familiesv1.CraftTopic_CRAFT_TOPIC_REWARDING_NON_USE
		conseq    = familiesv1.CraftTopic_CRAFT_TOPIC_NATURAL_CONSEQUENCES
		selfCare  = familiesv1.CraftTopic_CRAFT_TOPIC_SELF_CARE
	)
	progress := func() *familiesv1.CraftProgress {
		t.Helper()
		p, err := f.client.GetCraftProgress(f.ctx, &familiesv1.GetCraftProgressRequest{Name: fam.GetName() + "/craftProgress"})
		if err != nil {
			t.Fatalf("GetCraftProgress: %v", err)
		}
		return p
	}
	if p := progress(); p.GetSessionCount() != 0 || p.GetNextTopic() != induction || p.GetFirstSessionTime() != nil || len(p.GetCoveredTopics()) != 0 {
		t.Fatalf("progress before any session = %v", p)
	}

	first, err := f.session(f.ctx, fam, "s1", induction)
	if err != nil {
		t.Fatalf("induction without a screen: %v", err)
	}
	if first.GetCounselor() != "counselor-1" {
		t.Fatalf("session counselor = %q", first.GetCounselor())
	}
	again, err := f.session(f.ctx, fam, "s1", induction)
	if err != nil || again.GetName() != first.GetName() {
		t.Fatalf("retried session = %v, %v; want %s", again.GetName(), err, first.GetName())
	}

	_, err = f.session(f.ctx, fam, "s2", induction, analysis)
	st := wantCode(t, err, codes.FailedPrecondition)
	if info := errorInfo(st); info.GetReason() != apperr.ReasonSafetyScreen || info.GetMetadata()["topic"] != analysis.String() {
		t.Fatalf("functional analysis without a screen: %v", info)
	}

	f.screen(t, fam, familiesv1.SafetyRisk_SAFETY_RISK_HIGH_RISK)
	if _, err := f.session(f.ctx, fam, "s3", analysis, talk); err != nil {
		t.Fatalf("coaching under a high risk: %v", err)
	}
	_, err = f.session(f.ctx, fam, "s4", selfCare, conseq)
	st = wantCode(t, err, codes.FailedPrecondition)
	if info := errorInfo(st); info.GetMetadata()["topic"] != conseq.String() || info.GetMetadata()["safety_screen_status"] != "SAFETY_SCREEN_STATUS_HIGH_RISK" {
		t.Fatalf("natural consequences under a high risk: %v", info)
	}

	f.screen(t, fam, familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK)
	held := time.Now().Add(-48 * time.Hour).Truncate(time.Microsecond)
	luis := &familiesv1.CreateCraftSessionRequest{Parent: fam.GetName(), CraftSession: &familiesv1.CraftSession{
		MemberIds: []string{"mom", fam.GetMembers()[1].GetId()}, Topics: []familiesv1.CraftTopic{conseq, reward},
		SessionTime: timestamppb.New(held)}}
	// Held two days ago, before any screen: judged on what was known then.
	_, err = f.client.CreateCraftSession(f.ctx, luis)
	st = wantCode(t, err, codes.FailedPrecondition)
	if info := errorInfo(st); info.GetMetadata()["safety_screen_status"] != "SAFETY_SCREEN_STATUS_MISSING" {
		t.Fatalf("natural consequences taught before any screen, recorded after one: %v", info)
	}
	// A screen done three days ago, recorded late, covers it.
	if _, err := f.client.CreateSafetyScreen(f.ctx, &familiesv1.CreateSafetyScreenRequest{Parent: fam.GetName(),
		SafetyScreen: &familiesv1.SafetyScreen{Result: familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK, ScreenTime: timestamppb.New(held.Add(-24 * time.Hour))}}); err != nil {
		t.Fatal(err)
	}
	backdated, err := f.client.CreateCraftSession(f.ctx, luis)
	if err != nil {
		t.Fatalf("natural consequences under the screen current when it was held: %v", err)
	}
	if !backdated.GetSessionTime().AsTime().Equal(held) {
		t.Fatalf("session time = %v, want %v", backdated.GetSessionTime().AsTime(), held)
	}

	p := progress()
	if p.GetSessionCount() != 3 || p.GetNextTopic() != selfCare ||
		!slices.Equal(p.GetCoveredTopics(), []familiesv1.CraftTopic{induction, analysis, talk, reward, conseq}) {
		t.Fatalf("progress = %v; want 3 sessions, five topics in order, self-care next", p)
	}
	if !p.GetFirstSessionTime().AsTime().Equal(held) || !p.GetLastSessionTime().AsTime().After(held) {
		t.Fatalf("progress spans %v to %v; want from the backdated session %v", p.GetFirstSessionTime().AsTime(), p.GetLastSessionTime().AsTime(), held)
	}
	want := []string{fam.GetMembers()[1].GetId(), "mom"}
	slices.Sort(want)
	if !slices.Equal(p.GetMemberIds(), want) {
		t.Fatalf("progress members = %v, want %v", p.GetMemberIds(), want)
	}

	// Oldest recorded first, a page at a time.
	var names []string
	for tok := ""; ; {
		page, err := f.client.ListCraftSessions(f.ctx, &familiesv1.ListCraftSessionsRequest{Parent: fam.GetName(), PageSize: 2, PageToken: tok})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range page.GetCraftSessions() {
			names = append(names, s.GetName())
		}
		if tok = page.GetNextPageToken(); tok == "" {
			break
		}
	}
	if len(names) != 3 || names[0] != first.GetName() || names[2] != backdated.GetName() {
		t.Fatalf("sessions listed = %v", names)
	}

	// A session recorded in error is retracted: it stays, marked, and
	// leaves the progress; a second retraction is refused.
	if _, err := f.client.RetractCraftSession(f.ctx, &familiesv1.RetractCraftSessionRequest{Name: backdated.GetName()}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a retraction without a reason: %v", err)
	}
	gone, err := f.client.RetractCraftSession(f.ctx, &familiesv1.RetractCraftSessionRequest{Name: backdated.GetName(),
		Reason: "recorded for the wrong family", RequestId: "r1"})
	if err != nil || gone.GetRetractTime() == nil || gone.GetRetractedBy() != "counselor-1" || gone.GetRetractReason() != "recorded for the wrong family" {
		t.Fatalf("retracted session = %v, %v", gone, err)
	}
	if again, err := f.client.RetractCraftSession(f.ctx, &familiesv1.RetractCraftSessionRequest{Name: backdated.GetName(),
		Reason: "recorded for the wrong family", RequestId: "r1"}); err != nil || !again.GetRetractTime().AsTime().Equal(gone.GetRetractTime().AsTime()) {
		t.Fatalf("the retraction retried: %v, %v; want its first answer", again, err)
	}
	_, err = f.client.RetractCraftSession(f.ctx, &familiesv1.RetractCraftSessionRequest{Name: backdated.GetName(), Reason: "twice"})
	wantCode(t, err, codes.FailedPrecondition)
	_, err = f.client.RetractCraftSession(f.ctx, &familiesv1.RetractCraftSessionRequest{Name: fam.GetName() + "/craftSessions/nope", Reason: "x"})
	wantCode(t, err, codes.NotFound)
	if got, err := f.client.GetCraftSession(f.ctx, &familiesv1.GetCraftSessionRequest{Name: backdated.GetName()}); err != nil ||
		got.GetRetractReason() != "recorded for the wrong family" || !slices.Equal(got.GetTopics(), backdated.GetTopics()) {
		t.Fatalf("GetCraftSession of the retracted one = %v, %v", got, err)
	}
	if p := progress(); p.GetSessionCount() != 2 || p.GetNextTopic() != reward ||
		!slices.Equal(p.GetCoveredTopics(), []familiesv1.CraftTopic{induction, analysis, talk}) || !slices.Equal(p.GetMemberIds(), []string{"mom"}) ||
		!p.GetFirstSessionTime().AsTime().Equal(first.GetSessionTime().AsTime()) {
		t.Fatalf("progress after the retraction = %v; want 2 sessions, three topics, rewarding non-use next, the mother alone, from the first session", p)
	}

	// The outbox names the session; its notes stay in the service.
	var events, copies int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*), count(*) FILTER (WHERE position('phone bill'::bytea IN payload) > 0)
		FROM outbox WHERE event_type LIKE 'handoff.families.v1.craft_session.%' AND resource LIKE $1 || '/%'`,
		fam.GetName()).Scan(&events, &copies); err != nil || events != 4 || copies != 0 {
		t.Fatalf("craft events = %d (%d with notes), %v; want 4 (3 created, 1 retracted) without notes", events, copies, err)
	}
}

// The sessions and progress are the clinic's staff's: the EHR and the
// worker read neither; another clinic's counselor finds nothing.
func TestCraftSessionsAreStaffOnly(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	if _, err := f.session(f.ctx, fam, "", familiesv1.CraftTopic_CRAFT_TOPIC_INDUCTION); err != nil {
		t.Fatal(err)
	}
	for _, ctx := range []context.Context{f.env.As("north", "ehr-1", auth.RoleEHR), f.env.As("north", "worker-1", auth.RoleWorker)} {
		_, err := f.client.ListCraftSessions(ctx, &familiesv1.ListCraftSessionsRequest{Parent: fam.GetName()})
		wantCode(t, err, codes.PermissionDenied)
		_, err = f.client.GetCraftProgress(ctx, &familiesv1.GetCraftProgressRequest{Name: fam.GetName() + "/craftProgress"})
		wantCode(t, err, codes.PermissionDenied)
	}
	_, err := f.client.GetCraftProgress(f.env.Counselor("south"), &familiesv1.GetCraftProgressRequest{Name: fam.GetName() + "/craftProgress"})
	wantCode(t, err, codes.NotFound)
	_, err = f.client.GetCraftProgress(f.ctx, &familiesv1.GetCraftProgressRequest{Name: "clinics/north/families/nope/craftProgress"})
	wantCode(t, err, codes.NotFound)
	_, err = f.client.ListCraftSessions(f.ctx, &familiesv1.ListCraftSessionsRequest{Parent: "clinics/north/families/nope"})
	wantCode(t, err, codes.NotFound)
}

// A session recorded as it happens is judged on the family's screen as it
// stands, not by the clocks: a high risk recorded a moment before, by a
// replica whose clock runs a minute ahead, still holds natural
// consequences back. And on the screens of when it was held: a high risk
// then, cleared by a screen since, holds them back too.
func TestALiveSessionSeesTheScreenJustRecorded(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	fam := f.create(t)
	f.screen(t, fam, familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK)
	f.clock.Add(time.Minute)
	f.screen(t, fam, familiesv1.SafetyRisk_SAFETY_RISK_HIGH_RISK)
	f.clock.Add(-time.Minute)
	_, err := f.session(f.ctx, fam, "", familiesv1.CraftTopic_CRAFT_TOPIC_NATURAL_CONSEQUENCES)
	st := wantCode(t, err, codes.FailedPrecondition)
	if info := errorInfo(st); info.GetMetadata()["safety_screen_status"] != "SAFETY_SCREEN_STATUS_HIGH_RISK" {
		t.Fatalf("natural consequences just after a high risk: %v", info)
	}

	// Taught under that high risk a minute after it, recorded two minutes
	// later, after a screen that cleared it: still refused.
	f.clock.Add(2 * time.Minute)
	f.screen(t, fam, familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK)
	held := f.clock.Now().Add(-time.Minute)
	f.clock.Add(time.Minute)
	_, err = f.client.CreateCraftSession(f.ctx, &familiesv1.CreateCraftSessionRequest{Parent: fam.GetName(), CraftSession: &familiesv1.CraftSession{
		MemberIds: []string{"mom"}, Topics: []familiesv1.CraftTopic{familiesv1.CraftTopic_CRAFT_TOPIC_NATURAL_CONSEQUENCES},
		SessionTime: timestamppb.New(held)}})
	st = wantCode(t, err, codes.FailedPrecondition)
	if info := errorInfo(st); info.GetMetadata()["safety_screen_status"] != "SAFETY_SCREEN_STATUS_HIGH_RISK" {
		t.Fatalf("natural consequences taught under a high risk cleared since: %v", info)
	}
	// Taught now, under the screen that cleared it: allowed.
	if _, err := f.session(f.ctx, fam, "", familiesv1.CraftTopic_CRAFT_TOPIC_NATURAL_CONSEQUENCES); err != nil {
		t.Fatalf("natural consequences under a current no risk: %v", err)
	}
}
