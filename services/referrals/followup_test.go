package referrals_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/pgdb"
)

// HEDIS IET counts a person engaged who had two more services within 34
// days of treatment entry. The program reports each service; the referral
// counts them and says when the person became engaged, and the outcome
// report counts those engaged after an initiation within 14 days.
func TestFollowUpServicesMakeEngagement(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 10)
	now := f.clock.Now()
	// As stored: PostgreSQL keeps microseconds.
	entry := now.Add(-40 * 24 * time.Hour).Truncate(time.Microsecond)
	r := f.booked(t, p.GetName(), timestamppb.New(entry.Add(-2*24*time.Hour)), now.Add(-time.Hour))
	follow := func(req *referralsv1.RecordFollowUpServiceRequest) (*referralsv1.Referral, error) {
		if req.Name == "" {
			req.Name = r.GetName()
		}
		return f.client.RecordFollowUpService(f.ehr, req)
	}
	at := func(days int) *timestamppb.Timestamp {
		return timestamppb.New(entry.Add(time.Duration(days) * 24 * time.Hour))
	}

	// Not before the person entered treatment.
	_, err := follow(&referralsv1.RecordFollowUpServiceRequest{ServiceTime: at(1)})
	wantReason(t, err, codes.FailedPrecondition, "RESOURCE_NOT_READY")
	done, err := f.client.CompleteReferral(f.ehr, &referralsv1.CompleteReferralRequest{Name: r.GetName(), TreatmentEntryTime: timestamppb.New(entry)})
	if err != nil {
		t.Fatal(err)
	}

	// Bad times change nothing.
	_, err = follow(&referralsv1.RecordFollowUpServiceRequest{ServiceTime: at(-1)})
	wantViolation(t, err, "service_time")
	_, err = follow(&referralsv1.RecordFollowUpServiceRequest{ServiceTime: timestamppb.New(now.Add(24 * time.Hour))})
	wantViolation(t, err, "service_time")
	_, err = follow(&referralsv1.RecordFollowUpServiceRequest{})
	wantCode(t, err, codes.InvalidArgument)

	// One service within the window: counted, not yet engaged.
	got, err := follow(&referralsv1.RecordFollowUpServiceRequest{ServiceTime: at(3), RequestId: "dose-1"})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetFollowUpServiceCount() != 1 || got.GetEngagementTime() != nil || got.GetState() != referralsv1.ReferralState_REFERRAL_STATE_COMPLETED ||
		len(got.GetHistory()) != len(done.GetHistory()) || got.GetEtag() == done.GetEtag() {
		t.Fatalf("after one service: %d services, engaged %v, %v, history %d (was %d), etag %s (was %s)", got.GetFollowUpServiceCount(),
			got.GetEngagementTime(), got.GetState(), len(got.GetHistory()), len(done.GetHistory()), got.GetEtag(), done.GetEtag())
	}
	// The same report again, by request id or by its time, records nothing.
	for _, req := range []*referralsv1.RecordFollowUpServiceRequest{{ServiceTime: at(3), RequestId: "dose-1"}, {ServiceTime: at(3)}} {
		again, err := follow(req)
		if err != nil || again.GetFollowUpServiceCount() != 1 || again.GetEtag() != got.GetEtag() {
			t.Fatalf("the service reported again: %d services, etag %s, %v; want 1, %s", again.GetFollowUpServiceCount(), again.GetEtag(), err, got.GetEtag())
		}
	}
	// One outside the window counts as a service but not towards
	// engagement; a second inside it, reported after, engages.
	if got, err = follow(&referralsv1.RecordFollowUpServiceRequest{ServiceTime: at(36)}); err != nil || got.GetEngagementTime() != nil {
		t.Fatalf("a service after 34 days: engaged %v, %v; want not engaged", got.GetEngagementTime(), err)
	}
	if got, err = follow(&referralsv1.RecordFollowUpServiceRequest{ServiceTime: at(20)}); err != nil ||
		got.GetFollowUpServiceCount() != 3 || !got.GetEngagementTime().AsTime().Equal(at(20).AsTime()) {
		t.Fatalf("second service within 34 days: %d services, engaged %v, %v; want 3, engaged at day 20", got.GetFollowUpServiceCount(), got.GetEngagementTime(), err)
	}
	// One reported late, with an earlier time, makes the engagement earlier.
	if got, err = follow(&referralsv1.RecordFollowUpServiceRequest{ServiceTime: at(10)}); err != nil ||
		!got.GetEngagementTime().AsTime().Equal(at(10).AsTime()) {
		t.Fatalf("an earlier service reported late: engaged %v, %v; want day 10", got.GetEngagementTime(), err)
	}

	// The outcome report: this one entered within 14 days of first
	// contact and was engaged; one that entered after 20 days, engaged as
	// well, does not count (IET engagement follows an initiation).
	late := f.booked(t, p.GetName(), timestamppb.New(entry.Add(-20*24*time.Hour)), now.Add(-time.Hour))
	if _, err := f.client.CompleteReferral(f.ehr, &referralsv1.CompleteReferralRequest{Name: late.GetName(), TreatmentEntryTime: timestamppb.New(entry)}); err != nil {
		t.Fatal(err)
	}
	for _, d := range []int{2, 4} {
		if _, err := follow(&referralsv1.RecordFollowUpServiceRequest{Name: late.GetName(), ServiceTime: at(d)}); err != nil {
			t.Fatal(err)
		}
	}
	sum, err := f.client.SummarizeReferrals(f.admin, &referralsv1.SummarizeReferralsRequest{Parent: "clinics/north"})
	if err != nil || sum.GetEnteredTreatment() != 2 || sum.GetEnteredWithinTwoWeeks() != 1 || sum.GetEngagedInTreatment() != 1 {
		t.Fatalf("summary = %v, %v; want 2 entered, 1 within 14 days, 1 engaged", sum, err)
	}

	// The event names the referral for subscribers; no workflow needs it.
	var events int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE event_type = 'handoff.referrals.v1.referral.follow_up_recorded'
		AND resource = $1`, r.GetName()).Scan(&events); err != nil || events != 4 {
		t.Fatalf("follow-up events = %d, %v; want 4, one per service recorded", events, err)
	}
	// The worker records no outcomes; the services are append-only.
	_, err = f.client.RecordFollowUpService(f.env.As("north", "worker", auth.RoleWorker), &referralsv1.RecordFollowUpServiceRequest{Name: r.GetName(), ServiceTime: at(5)})
	wantCode(t, err, codes.PermissionDenied)
	for _, priv := range []string{"UPDATE", "DELETE", "TRUNCATE"} {
		var may bool
		if err := f.pool.QueryRow(context.Background(), `SELECT has_table_privilege($1, 'referral_services', $2)`, pgdb.AppRole, priv).Scan(&may); err != nil || may {
			t.Errorf("%s on referral_services: %v, %v; want refused", priv, may, err)
		}
	}
}

// To the EHR, a refusal that tells the entry time (a service before it)
// discloses the referral, and is recorded as a disclosure; a service in
// the future is refused before the referral is read.
func TestFollowUpRefusalsThatTellAreDisclosures(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 10)
	now := f.clock.Now()
	r := f.booked(t, p.GetName(), nil, now.Add(-time.Hour))
	if _, err := f.client.CompleteReferral(f.ehr, &referralsv1.CompleteReferralRequest{Name: r.GetName()}); err != nil {
		t.Fatal(err)
	}
	disclosed := func() int {
		f.consent.mu.Lock()
		defer f.consent.mu.Unlock()
		n := 0
		for _, res := range f.consent.allowed {
			if res == r.GetName() {
				n++
			}
		}
		return n
	}
	before := disclosed()
	_, err := f.client.RecordFollowUpService(f.ehr, &referralsv1.RecordFollowUpServiceRequest{Name: r.GetName(),
		ServiceTime: timestamppb.New(now.Add(time.Hour))})
	wantViolation(t, err, "service_time")
	if n := disclosed(); n != before {
		t.Fatalf("a future service's refusal recorded %d disclosures, want none", n-before)
	}
	_, err = f.client.RecordFollowUpService(f.ehr, &referralsv1.RecordFollowUpServiceRequest{Name: r.GetName(),
		ServiceTime: timestamppb.New(now.Add(-2 * time.Hour))})
	wantViolation(t, err, "service_time")
	if n := disclosed(); n <= before {
		t.Fatalf("a refusal naming the entry time recorded no disclosure")
	}
}
