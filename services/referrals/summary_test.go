package referrals_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
)

// The outcome report counts the referrals a filter selects by state, and
// the waits from first contact (or the referral) to treatment entry of
// those that entered: within 72 hours, within 14 days, median and p90.
func TestSummarizeReferrals(t *testing.T) {
	t.Parallel()
	f := setup(t)
	mat := f.program(t, buprenorphine("Riverside MAT"), 50)
	now := time.Now()
	refer := func(firstContact time.Time) *referralsv1.Referral {
		t.Helper()
		r, err := f.client.CreateReferral(f.ctx, &referralsv1.CreateReferralRequest{Parent: "clinics/north", Referral: &referralsv1.Referral{
			Family: family, Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE},
			ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Program: mat.GetName(),
			Urgency: referralsv1.Urgency_URGENCY_URGENT, Reason: "opioid use disorder, wants to start",
			FirstContactTime: timestamppb.New(firstContact)}})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// enter takes a referral to treatment entry at entered.
	enter := func(r *referralsv1.Referral, entered time.Time) {
		t.Helper()
		if _, err := f.client.AcceptReferral(f.ehr, &referralsv1.TransitionReferralRequest{Name: r.GetName()}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.client.ScheduleReferral(f.ehr, &referralsv1.ScheduleReferralRequest{Name: r.GetName(),
			IntakeAppointment: &referralsv1.IntakeAppointment{StartTime: timestamppb.New(now.Add(-time.Hour))}}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.client.CompleteReferral(f.ehr, &referralsv1.CompleteReferralRequest{Name: r.GetName(),
			TreatmentEntryTime: timestamppb.New(entered)}); err != nil {
			t.Fatal(err)
		}
	}
	// Waits of 1 day, 10 days and 20 days; then, made later, one without a
	// first contact that entered at once (its wait runs from the
	// referral), one accepted, one requested.
	entry := now.Add(-time.Hour)
	for _, wait := range []time.Duration{24 * time.Hour, 10 * 24 * time.Hour, 20 * 24 * time.Hour} {
		enter(refer(entry.Add(-wait)), entry)
	}
	time.Sleep(5 * time.Millisecond)
	cut := time.Now()
	time.Sleep(5 * time.Millisecond)
	walkIn, err := f.client.CreateReferral(f.ctx, &referralsv1.CreateReferralRequest{Parent: "clinics/north", Referral: &referralsv1.Referral{
		Family: family, Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE},
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Program: mat.GetName(),
		Urgency: referralsv1.Urgency_URGENCY_IMMEDIATE, Reason: "opioid use disorder, wants to start"}})
	if err != nil {
		t.Fatal(err)
	}
	enter(walkIn, time.Now())
	accepted := refer(now.Add(-48 * time.Hour))
	if _, err := f.client.AcceptReferral(f.ehr, &referralsv1.TransitionReferralRequest{Name: accepted.GetName()}); err != nil {
		t.Fatal(err)
	}
	refer(now.Add(-time.Hour))
	// A family member's referral, left out by subject_kind below.
	if _, err := f.client.CreateReferral(f.ctx, &referralsv1.CreateReferralRequest{Parent: "clinics/north", Referral: &referralsv1.Referral{
		Family: family, Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_FAMILY_MEMBER, MemberId: "mom"},
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT, Program: mat.GetName(),
		Urgency: referralsv1.Urgency_URGENCY_ROUTINE, Reason: "support for the family"}}); err != nil {
		t.Fatalf("member referral: %v", err)
	}

	sum, err := f.client.SummarizeReferrals(f.admin, &referralsv1.SummarizeReferralsRequest{Parent: "clinics/north",
		Filter: `subject_kind = LOVED_ONE AND create_time >= "` + now.Add(-time.Hour).UTC().Format(time.RFC3339) + `"`})
	if err != nil {
		t.Fatal(err)
	}
	var states []string
	for _, s := range sum.GetStates() {
		states = append(states, fmt.Sprintf("%v=%d", s.GetState(), s.GetCount()))
	}
	if want := "REFERRAL_STATE_REQUESTED=1 REFERRAL_STATE_ACCEPTED=1 REFERRAL_STATE_COMPLETED=4"; sum.GetReferrals() != 6 || strings.Join(states, " ") != want {
		t.Fatalf("summary states = %v of %d; want %s of 6, in the order of the states", states, sum.GetReferrals(), want)
	}
	if sum.GetEnteredTreatment() != 4 || sum.GetEnteredWithinThreeDays() != 2 || sum.GetEnteredWithinTwoWeeks() != 3 {
		t.Fatalf("entered %d, within 3 days %d, within 14 days %d; want 4, 2, 3", sum.GetEnteredTreatment(),
			sum.GetEnteredWithinThreeDays(), sum.GetEnteredWithinTwoWeeks())
	}
	// Waits of about 0, 1, 10 and 20 days: the median, interpolated, 5.5
	// days, the 90th percentile 17.
	if got := sum.GetMedianTimeToTreatmentEntry().AsDuration(); (got - 132*time.Hour).Abs() > 5*time.Second {
		t.Errorf("median = %v, want 132h", got)
	}
	if got := sum.GetP90TimeToTreatmentEntry().AsDuration(); (got - 17*24*time.Hour).Abs() > 5*time.Second {
		t.Errorf("p90 = %v, want 408h", got)
	}
	before, err := f.client.SummarizeReferrals(f.admin, &referralsv1.SummarizeReferralsRequest{Parent: "clinics/north",
		Filter: `create_time < "` + cut.UTC().Format(time.RFC3339Nano) + `"`})
	if err != nil || before.GetReferrals() != 3 || before.GetEnteredWithinThreeDays() != 1 {
		t.Fatalf("referrals made before the cut = %v, %v; want the first 3, one within 3 days", before, err)
	}

	all, err := f.client.SummarizeReferrals(f.admin, &referralsv1.SummarizeReferralsRequest{Parent: "clinics/north"})
	if err != nil || all.GetReferrals() != 7 {
		t.Fatalf("unfiltered summary = %v, %v; want 7 referrals, the member's included", all, err)
	}
	// Nothing selected: zeros, and no durations.
	empty, err := f.client.SummarizeReferrals(f.admin, &referralsv1.SummarizeReferralsRequest{Parent: "clinics/north",
		Filter: `create_time >= "` + now.Add(time.Hour).UTC().Format(time.RFC3339) + `"`})
	if err != nil || empty.GetReferrals() != 0 || len(empty.GetStates()) != 0 || empty.GetEnteredTreatment() != 0 ||
		empty.GetMedianTimeToTreatmentEntry() != nil || empty.GetP90TimeToTreatmentEntry() != nil {
		t.Fatalf("empty summary = %v, %v", empty, err)
	}
	// A field the report does not know, and a counselor asking.
	_, err = f.client.SummarizeReferrals(f.admin, &referralsv1.SummarizeReferralsRequest{Parent: "clinics/north", Filter: `reason = "x"`})
	wantCode(t, err, codes.InvalidArgument)
	_, err = f.client.SummarizeReferrals(f.ctx, &referralsv1.SummarizeReferralsRequest{Parent: "clinics/north"})
	wantCode(t, err, codes.PermissionDenied)
	// Another clinic's, asked by this clinic's administrator: as if it
	// did not exist.
	_, err = f.client.SummarizeReferrals(f.admin, &referralsv1.SummarizeReferralsRequest{Parent: "clinics/south"})
	wantCode(t, err, codes.NotFound)
}
