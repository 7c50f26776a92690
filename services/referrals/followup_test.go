package referrals_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/referrals"
)

// HEDIS IET counts a person engaged who had two more services on the
// days after the day of treatment entry, through the 34th. The program
// reports each service; the referral counts them and says when the person
// became engaged, and the outcome report counts those engaged after an
// initiation within 14 days. Days are dates where the program is.
func TestFollowUpServicesMakeEngagement(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 10)
	now := f.clock.Now()
	chicago, err := time.LoadLocation("America/Chicago")
	if err != nil {
		t.Fatal(err)
	}
	// Entry late in the evening in Chicago, 60 days ago: already the next
	// day in UTC.
	y, m, d := now.Add(-60 * 24 * time.Hour).In(chicago).Date()
	entry := time.Date(y, m, d, 23, 30, 0, 0, chicago)
	// at is day days after the day of entry, at hh:mm in Chicago.
	at := func(day, hh, mm int) *timestamppb.Timestamp {
		return timestamppb.New(time.Date(y, m, d+day, hh, mm, 0, 0, chicago))
	}
	r := f.booked(t, p.GetName(), timestamppb.New(entry.Add(-2*24*time.Hour)), now.Add(-time.Hour))
	follow := func(req *referralsv1.RecordFollowUpServiceRequest) (*referralsv1.Referral, error) {
		if req.Name == "" {
			req.Name = r.GetName()
		}
		switch req.TimeZone {
		case "":
			req.TimeZone = "America/Chicago"
		case "-":
			req.TimeZone = "" // the referral's own
		}
		return f.client.RecordFollowUpService(f.ehr, req)
	}

	// Not before the person entered treatment, and never after a referral
	// closed without an entry.
	_, err = follow(&referralsv1.RecordFollowUpServiceRequest{ServiceTime: at(1, 9, 0)})
	wantReason(t, err, codes.FailedPrecondition, "RESOURCE_NOT_READY")
	dropped := f.booked(t, p.GetName(), nil, now.Add(-time.Hour))
	if _, err := f.client.CancelReferral(f.ctx, &referralsv1.TransitionReferralRequest{Name: dropped.GetName()}); err != nil {
		t.Fatal(err)
	}
	_, err = follow(&referralsv1.RecordFollowUpServiceRequest{Name: dropped.GetName(), ServiceTime: at(1, 9, 0)})
	wantReason(t, err, codes.FailedPrecondition, "INVALID_STATE_TRANSITION")
	done, err := f.client.CompleteReferral(f.ehr, &referralsv1.CompleteReferralRequest{Name: r.GetName(), TreatmentEntryTime: timestamppb.New(entry)})
	if err != nil {
		t.Fatal(err)
	}

	// Bad times and zones change nothing.
	_, err = follow(&referralsv1.RecordFollowUpServiceRequest{ServiceTime: at(0, 23, 0)})
	wantViolation(t, err, "service_time")
	_, err = follow(&referralsv1.RecordFollowUpServiceRequest{ServiceTime: timestamppb.New(now.Add(24 * time.Hour))})
	wantViolation(t, err, "service_time")
	_, err = follow(&referralsv1.RecordFollowUpServiceRequest{ServiceTime: at(2, 9, 0), TimeZone: "Mars/Olympus"})
	wantViolation(t, err, "time_zone")
	_, err = follow(&referralsv1.RecordFollowUpServiceRequest{})
	wantCode(t, err, codes.InvalidArgument)

	// A dose at intake, the day of entry: counted, engages no one.
	got, err := follow(&referralsv1.RecordFollowUpServiceRequest{ServiceTime: at(0, 23, 45), RequestId: "dose-0"})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetFollowUpServiceCount() != 1 || got.GetEngagementTime() != nil || got.GetState() != referralsv1.ReferralState_REFERRAL_STATE_COMPLETED ||
		len(got.GetHistory()) != len(done.GetHistory()) || got.GetEtag() == done.GetEtag() {
		t.Fatalf("after one service: %d services, engaged %v, %v, history %d (was %d), etag %s (was %s)", got.GetFollowUpServiceCount(),
			got.GetEngagementTime(), got.GetState(), len(got.GetHistory()), len(done.GetHistory()), got.GetEtag(), done.GetEtag())
	}
	// Early the next morning in Chicago (the same date in UTC): the first
	// day after entry.
	if got, err = follow(&referralsv1.RecordFollowUpServiceRequest{ServiceTime: at(1, 0, 30), ServiceId: "enc-1"}); err != nil ||
		got.GetFollowUpServiceCount() != 2 || got.GetEngagementTime() != nil {
		t.Fatalf("first service after the day of entry: %d services, engaged %v, %v; want 2, not engaged", got.GetFollowUpServiceCount(), got.GetEngagementTime(), err)
	}
	// The same service again records nothing: retried with its request
	// id it gets its first answer; sent anew, by its id or by its time,
	// the referral as it stands.
	if again, err := follow(&referralsv1.RecordFollowUpServiceRequest{ServiceTime: at(0, 23, 45), RequestId: "dose-0"}); err != nil ||
		again.GetFollowUpServiceCount() != 1 {
		t.Fatalf("the first report retried: %d services, %v; want its first answer, 1", again.GetFollowUpServiceCount(), err)
	}
	for _, req := range []*referralsv1.RecordFollowUpServiceRequest{{ServiceTime: at(0, 23, 45)}, {ServiceTime: at(1, 0, 30), ServiceId: "enc-1"}} {
		again, err := follow(req)
		if err != nil || again.GetFollowUpServiceCount() != 2 || again.GetEtag() != got.GetEtag() {
			t.Fatalf("the service reported again (%v): %d services, etag %s, %v; want 2, %s", req, again.GetFollowUpServiceCount(), again.GetEtag(), err, got.GetEtag())
		}
	}
	// An id the program gave another time is a mistake, told, not kept;
	// and the referral's days are counted in the zone its first service
	// named, so another zone is refused and none means that one.
	_, err = follow(&referralsv1.RecordFollowUpServiceRequest{ServiceTime: at(1, 0, 31), ServiceId: "enc-1"})
	wantReason(t, err, codes.FailedPrecondition, "ALREADY_RECORDED")
	_, err = follow(&referralsv1.RecordFollowUpServiceRequest{ServiceTime: at(2, 9, 0), TimeZone: "UTC"})
	wantViolation(t, err, "time_zone")
	if cur, err := f.client.GetReferral(f.ctx, &referralsv1.GetReferralRequest{Name: r.GetName()}); err != nil || cur.GetEtag() != got.GetEtag() {
		t.Fatalf("after the refused reports: etag %s, %v; want %s", cur.GetEtag(), err, got.GetEtag())
	}
	// On day 35 it counts as a service but not towards engagement; late on
	// day 34 (later in the day than the entry was) it engages.
	if got, err = follow(&referralsv1.RecordFollowUpServiceRequest{ServiceTime: at(35, 8, 0)}); err != nil || got.GetEngagementTime() != nil {
		t.Fatalf("a service on day 35: engaged %v, %v; want not engaged", got.GetEngagementTime(), err)
	}
	if got, err = follow(&referralsv1.RecordFollowUpServiceRequest{ServiceTime: at(34, 23, 50), TimeZone: "-"}); err != nil ||
		got.GetFollowUpServiceCount() != 4 || !got.GetEngagementTime().AsTime().Equal(at(34, 23, 50).AsTime()) {
		t.Fatalf("second service by day 34: %d services, engaged %v, %v; want 4, engaged on day 34", got.GetFollowUpServiceCount(), got.GetEngagementTime(), err)
	}
	// One reported late, with an earlier time, makes the engagement
	// earlier; two at one time, told apart by their ids, are two.
	for _, id := range []string{"dose-10", "visit-10"} {
		if got, err = follow(&referralsv1.RecordFollowUpServiceRequest{ServiceTime: at(10, 9, 0), ServiceId: id}); err != nil {
			t.Fatal(err)
		}
	}
	if got.GetFollowUpServiceCount() != 6 || !got.GetEngagementTime().AsTime().Equal(at(10, 9, 0).AsTime()) {
		t.Fatalf("two services on day 10: %d services, engaged %v; want 6, engaged on day 10", got.GetFollowUpServiceCount(), got.GetEngagementTime())
	}

	// A service recorded in error is retracted, by its id or (recorded
	// without one) its time: it stops counting, and the engagement moves.
	retract := func(req *referralsv1.RetractFollowUpServiceRequest) (*referralsv1.Referral, error) {
		req.Name = r.GetName()
		return f.client.RetractFollowUpService(f.ehr, req)
	}
	if got, err = retract(&referralsv1.RetractFollowUpServiceRequest{ServiceId: "dose-10", Reason: "another patient's dose"}); err != nil ||
		got.GetFollowUpServiceCount() != 5 || !got.GetEngagementTime().AsTime().Equal(at(10, 9, 0).AsTime()) {
		t.Fatalf("one of day 10's services retracted: %d services, engaged %v, %v; want 5, still day 10", got.GetFollowUpServiceCount(), got.GetEngagementTime(), err)
	}
	if got, err = retract(&referralsv1.RetractFollowUpServiceRequest{ServiceId: "visit-10", Reason: "did not take place"}); err != nil ||
		got.GetFollowUpServiceCount() != 4 || !got.GetEngagementTime().AsTime().Equal(at(34, 23, 50).AsTime()) {
		t.Fatalf("both of day 10's services retracted: %d services, engaged %v, %v; want 4, day 34 again", got.GetFollowUpServiceCount(), got.GetEngagementTime(), err)
	}
	if got, err = retract(&referralsv1.RetractFollowUpServiceRequest{ServiceTime: at(0, 23, 45), Reason: "double entry"}); err != nil ||
		got.GetFollowUpServiceCount() != 3 {
		t.Fatalf("the intake dose retracted by its time: %d services, %v; want 3", got.GetFollowUpServiceCount(), err)
	}
	if again, err := retract(&referralsv1.RetractFollowUpServiceRequest{ServiceId: "visit-10", Reason: "sent twice"}); err != nil ||
		again.GetEtag() != got.GetEtag() || again.GetFollowUpServiceCount() != 3 {
		t.Fatalf("the same retraction again: %v, %v; want the referral unchanged", again, err)
	}
	_, err = follow(&referralsv1.RecordFollowUpServiceRequest{ServiceTime: at(10, 9, 0), ServiceId: "visit-10"})
	wantReason(t, err, codes.FailedPrecondition, "ALREADY_RECORDED")
	_, err = retract(&referralsv1.RetractFollowUpServiceRequest{ServiceId: "never-sent", Reason: "x"})
	wantCode(t, err, codes.NotFound)
	_, err = retract(&referralsv1.RetractFollowUpServiceRequest{ServiceId: "enc-1", ServiceTime: at(1, 0, 30), Reason: "x"})
	wantViolation(t, err, "service_id")
	if cur, err := f.client.GetReferral(f.ctx, &referralsv1.GetReferralRequest{Name: r.GetName()}); err != nil || cur.GetEtag() != got.GetEtag() {
		t.Fatalf("after the refused retractions: etag %s, %v; want %s", cur.GetEtag(), err, got.GetEtag())
	}

	// The outcome report: this one entered within 14 days of first
	// contact and was engaged; one that entered after 20 days, engaged as
	// well, does not count (IET engagement follows an initiation).
	late := f.booked(t, p.GetName(), timestamppb.New(entry.Add(-20*24*time.Hour)), now.Add(-time.Hour))
	if _, err := f.client.CompleteReferral(f.ehr, &referralsv1.CompleteReferralRequest{Name: late.GetName(), TreatmentEntryTime: timestamppb.New(entry)}); err != nil {
		t.Fatal(err)
	}
	var lateGot *referralsv1.Referral
	for _, day := range []int{2, 4} {
		if lateGot, err = follow(&referralsv1.RecordFollowUpServiceRequest{Name: late.GetName(), ServiceTime: at(day, 9, 0)}); err != nil {
			t.Fatal(err)
		}
	}
	if !lateGot.GetEngagementTime().AsTime().Equal(at(4, 9, 0).AsTime()) {
		t.Fatalf("the late entry's engagement = %v, want day 4", lateGot.GetEngagementTime())
	}
	sum, err := f.client.SummarizeReferrals(f.admin, &referralsv1.SummarizeReferralsRequest{Parent: "clinics/north"})
	if err != nil || sum.GetEnteredTreatment() != 2 || sum.GetEnteredWithinTwoWeeks() != 1 || sum.GetEngagedInTreatment() != 1 {
		t.Fatalf("summary = %v, %v; want 2 entered, 1 within 14 days, 1 engaged", sum, err)
	}

	// The event names the referral for subscribers; no workflow needs it.
	var events int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE event_type = 'handoff.referrals.v1.referral.follow_up_recorded'
		AND resource = $1`, r.GetName()).Scan(&events); err != nil || events != 6 {
		t.Fatalf("follow-up events = %d, %v; want 6, one per service recorded", events, err)
	}
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE event_type = 'handoff.referrals.v1.referral.follow_up_retracted'
		AND resource = $1`, r.GetName()).Scan(&events); err != nil || events != 3 {
		t.Fatalf("retraction events = %d, %v; want 3, one per service retracted", events, err)
	}
	// The worker records no outcomes; the services and their retractions
	// are append-only.
	worker := f.env.As("north", "worker", auth.RoleWorker)
	_, err = f.client.RecordFollowUpService(worker, &referralsv1.RecordFollowUpServiceRequest{Name: r.GetName(), ServiceTime: at(5, 9, 0)})
	wantCode(t, err, codes.PermissionDenied)
	_, err = f.client.RetractFollowUpService(worker, &referralsv1.RetractFollowUpServiceRequest{Name: r.GetName(), ServiceId: "enc-1", Reason: "x"})
	wantCode(t, err, codes.PermissionDenied)
	for _, table := range []string{"referral_services", "referral_service_retractions", "referral_service_ids"} {
		for _, priv := range []string{"UPDATE", "DELETE", "TRUNCATE"} {
			var may bool
			if err := f.pool.QueryRow(context.Background(), `SELECT has_table_privilege($1, $2, $3)`, pgdb.AppRole, table, priv).Scan(&may); err != nil || may {
				t.Errorf("%s on %s: %v, %v; want refused", priv, table, may, err)
			}
		}
	}
}

// One service reported with the program's id for it and without, at the
// same time, counts once, in either order, and a retraction by either
// finds it; two services at one time with ids of their own are two, and
// a retraction by that time, which could mean either, is refused.
func TestOneServiceWithAndWithoutItsID(t *testing.T) {
	t.Parallel()
	f := setup(t)
	p := f.program(t, buprenorphine("Riverside MAT"), 10)
	entry := f.clock.Now().Add(-40 * 24 * time.Hour).UTC().Truncate(time.Second)
	r := f.booked(t, p.GetName(), timestamppb.New(entry.Add(-48*time.Hour)), f.clock.Now().Add(-time.Hour))
	done, err := f.client.CompleteReferral(f.ehr, &referralsv1.CompleteReferralRequest{Name: r.GetName(), TreatmentEntryTime: timestamppb.New(entry)})
	if err != nil {
		t.Fatal(err)
	}
	day := func(n int) *timestamppb.Timestamp {
		return timestamppb.New(entry.Add(time.Duration(n) * 24 * time.Hour))
	}
	cur := done
	report := func(at *timestamppb.Timestamp, id string, count int32, unchanged bool) {
		t.Helper()
		got, err := f.client.RecordFollowUpService(f.ehr, &referralsv1.RecordFollowUpServiceRequest{Name: r.GetName(), ServiceTime: at, ServiceId: id})
		if err != nil || got.GetFollowUpServiceCount() != count || (got.GetEtag() == cur.GetEtag()) != unchanged {
			t.Fatalf("service at %v, id %q: %d services, etag %s (was %s), %v; want %d, unchanged %v",
				at.AsTime(), id, got.GetFollowUpServiceCount(), got.GetEtag(), cur.GetEtag(), err, count, unchanged)
		}
		cur = got
	}
	retract := func(at *timestamppb.Timestamp, id string) (*referralsv1.Referral, error) {
		return f.client.RetractFollowUpService(f.ehr, &referralsv1.RetractFollowUpServiceRequest{Name: r.GetName(), ServiceTime: at,
			ServiceId: id, Reason: "recorded in error"})
	}

	// Without its id first, then with it: one service, which the id
	// then names; the same id again is the same service.
	report(day(1), "", 1, false)
	report(day(1), "enc-1", 1, true)
	report(day(1), "enc-1", 1, true)
	report(day(1), "", 1, true)
	// The id named that service at its time: another time is refused.
	_, err = f.client.RecordFollowUpService(f.ehr, &referralsv1.RecordFollowUpServiceRequest{Name: r.GetName(), ServiceTime: day(2), ServiceId: "enc-1"})
	wantReason(t, err, codes.FailedPrecondition, "ALREADY_RECORDED")
	// A second id at that time is another service.
	report(day(1), "enc-1b", 2, false)

	// With its id first, then without: one service.
	report(day(3), "enc-3", 3, false)
	report(day(3), "", 3, true)
	if cur.GetEngagementTime() == nil || !cur.GetEngagementTime().AsTime().Equal(day(1).AsTime()) {
		t.Fatalf("engaged %v; want on day 1, by its two services", cur.GetEngagementTime())
	}

	// Retracted by its id, the service recorded without one stops
	// counting; reported again by its time it is refused, as retracted.
	got, err := retract(nil, "enc-1")
	if err != nil || got.GetFollowUpServiceCount() != 2 {
		t.Fatalf("retracted by the id it was given: %d services, %v; want 2", got.GetFollowUpServiceCount(), err)
	}
	_, err = f.client.RecordFollowUpService(f.ehr, &referralsv1.RecordFollowUpServiceRequest{Name: r.GetName(), ServiceTime: day(1)})
	wantReason(t, err, codes.FailedPrecondition, "ALREADY_RECORDED")
	// Retracted by its time, the service recorded with an id.
	if got, err = retract(day(3), ""); err != nil || got.GetFollowUpServiceCount() != 1 {
		t.Fatalf("retracted by its time: %d services, %v; want 1", got.GetFollowUpServiceCount(), err)
	}
	if again, err := retract(nil, "enc-3"); err != nil || again.GetEtag() != got.GetEtag() {
		t.Fatalf("the same service retracted by its id: %v, %v; want it retracted already, unchanged", again, err)
	}

	// Two with ids of their own at one time: a retraction by the time is
	// refused, and changes nothing.
	report(day(5), "dose-5", 2, false)
	report(day(5), "visit-5", 3, false)
	_, err = retract(day(5), "")
	wantReason(t, err, codes.FailedPrecondition, "AMBIGUOUS")
	if now, err := f.client.GetReferral(f.ctx, &referralsv1.GetReferralRequest{Name: r.GetName()}); err != nil ||
		now.GetEtag() != cur.GetEtag() || now.GetFollowUpServiceCount() != 3 {
		t.Fatalf("after the refused retraction: %d services, etag %s, %v; want 3, %s", now.GetFollowUpServiceCount(), now.GetEtag(), err, cur.GetEtag())
	}
}

// Days after entry are dates in the program's zone, whole across a change
// of daylight saving time.
func TestDaysAreDatesInTheZone(t *testing.T) {
	t.Parallel()
	chicago, err := time.LoadLocation("America/Chicago")
	if err != nil {
		t.Fatal(err)
	}
	entry := time.Date(2026, 3, 7, 23, 30, 0, 0, chicago) // the night before DST began
	for _, c := range []struct {
		at   time.Time
		loc  *time.Location
		want int
	}{
		{time.Date(2026, 3, 8, 0, 30, 0, 0, chicago), chicago, 1},
		{time.Date(2026, 3, 8, 0, 30, 0, 0, chicago), time.UTC, 0},
		{time.Date(2026, 4, 10, 23, 59, 0, 0, chicago), chicago, 34},
		{time.Date(2026, 3, 7, 23, 45, 0, 0, chicago), chicago, 0},
	} {
		if got := referrals.DaysBetween(entry, c.at, c.loc); got != c.want {
			t.Errorf("days from %v to %v in %v = %d, want %d", entry, c.at, c.loc, got, c.want)
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
	disclosed := func() int { return f.disclosures(r.GetName()) }
	before := disclosed()
	_, err := f.client.RecordFollowUpService(f.ehr, &referralsv1.RecordFollowUpServiceRequest{Name: r.GetName(),
		ServiceTime: timestamppb.New(now.Add(time.Hour))})
	wantViolation(t, err, "service_time")
	if n := disclosed(); n != before {
		t.Fatalf("a future service's refusal recorded %d disclosures, want none", n-before)
	}
	_, err = f.client.RecordFollowUpService(f.ehr, &referralsv1.RecordFollowUpServiceRequest{Name: r.GetName(),
		ServiceTime: timestamppb.New(now.Add(-48 * time.Hour))})
	wantViolation(t, err, "service_time")
	if n := disclosed(); n <= before {
		t.Fatalf("a refusal naming the entry time recorded no disclosure")
	}

	// Staff send no zone: the days are read in UTC, and nothing is kept,
	// so the program's first report with its zone is taken, and kept.
	soon := timestamppb.New(now.Add(time.Minute))
	if _, err := f.client.RecordFollowUpService(f.ctx, &referralsv1.RecordFollowUpServiceRequest{Name: r.GetName(), ServiceTime: soon}); err != nil {
		t.Fatalf("a report without a zone: %v", err)
	}
	f.clock.Advance(2 * time.Minute)
	dose := &referralsv1.RecordFollowUpServiceRequest{Name: r.GetName(), ServiceTime: timestamppb.New(now.Add(2 * time.Minute)),
		ServiceId: "dose-1", TimeZone: "America/Chicago"}
	if _, err := f.client.RecordFollowUpService(f.ehr, dose); err != nil {
		t.Fatalf("the program's first report with its zone, after staff's without: %v", err)
	}
	// Each refusal that tells the EHR of the referral's services is
	// recorded as a disclosure: another zone than the one kept, an id
	// recorded at another time, a service to retract that is not there.
	for _, c := range []struct {
		what string
		call func() error
		code codes.Code
	}{
		{"another zone", func() error {
			_, err := f.client.RecordFollowUpService(f.ehr, &referralsv1.RecordFollowUpServiceRequest{Name: r.GetName(),
				ServiceTime: timestamppb.New(now.Add(time.Minute)), ServiceId: "visit-1", TimeZone: "UTC"})
			return err
		}, codes.InvalidArgument},
		{"an id at another time", func() error {
			_, err := f.client.RecordFollowUpService(f.ehr, &referralsv1.RecordFollowUpServiceRequest{Name: r.GetName(),
				ServiceTime: soon, ServiceId: "dose-1"})
			return err
		}, codes.FailedPrecondition},
		{"nothing to retract", func() error {
			_, err := f.client.RetractFollowUpService(f.ehr, &referralsv1.RetractFollowUpServiceRequest{Name: r.GetName(),
				ServiceId: "never-sent", Reason: "x"})
			return err
		}, codes.NotFound},
	} {
		before := disclosed()
		if err := c.call(); status.Code(err) != c.code {
			t.Fatalf("%s: %v, want %v", c.what, err, c.code)
		}
		if disclosed() <= before {
			t.Fatalf("%s: the refusal recorded no disclosure", c.what)
		}
	}
	// Without the patient's consent the EHR retracts nothing, and learns
	// nothing of the referral.
	f.consent.refuse(family)
	_, err = f.client.RetractFollowUpService(f.ehr, &referralsv1.RetractFollowUpServiceRequest{Name: r.GetName(), ServiceId: "dose-1", Reason: "x"})
	wantReason(t, err, codes.FailedPrecondition, "CONSENT_REQUIRED")
	if cur, err := f.client.GetReferral(f.ctx, &referralsv1.GetReferralRequest{Name: r.GetName()}); err != nil || cur.GetFollowUpServiceCount() != 2 {
		t.Fatalf("after a retraction without consent: %d services, %v; want 2", cur.GetFollowUpServiceCount(), err)
	}
}
