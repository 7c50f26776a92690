package intake_test

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/referrals/intake"
)

// An appointment is off the calendar on hold, cancelled or entered in
// error, and completed only when the person entered treatment some other
// way than at it.
func TestHidden(t *testing.T) {
	start := time.Date(2026, 12, 7, 15, 0, 0, 0, time.UTC)
	at := func(entry time.Time) *referralsv1.Referral {
		return &referralsv1.Referral{State: referralsv1.ReferralState_REFERRAL_STATE_COMPLETED,
			IntakeAppointment:  &referralsv1.IntakeAppointment{StartTime: timestamppb.New(start)},
			TreatmentEntryTime: timestamppb.New(entry)}
	}
	kept, before := at(start.Add(10*time.Minute)), at(start.Add(-2*time.Hour))
	from := func(r *referralsv1.Referral, st referralsv1.ReferralState) *referralsv1.Referral {
		c := proto.CloneOf(r)
		c.History = []*referralsv1.ReferralEvent{{FromState: st, ToState: referralsv1.ReferralState_REFERRAL_STATE_COMPLETED}}
		return c
	}
	for _, c := range []struct {
		st   referralsv1.ReferralState
		r    *referralsv1.Referral
		want bool
	}{
		{referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED, kept, false},
		{referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW, kept, false},
		{referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD, kept, true},
		{referralsv1.ReferralState_REFERRAL_STATE_CANCELLED, kept, true},
		{referralsv1.ReferralState_REFERRAL_STATE_ENTERED_IN_ERROR, kept, true},
		{referralsv1.ReferralState_REFERRAL_STATE_COMPLETED, kept, false},
		{referralsv1.ReferralState_REFERRAL_STATE_COMPLETED, before, true},
		{referralsv1.ReferralState_REFERRAL_STATE_COMPLETED, from(kept, referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD), true},
		// Missed, then admitted: the missed appointment stays as it was.
		{referralsv1.ReferralState_REFERRAL_STATE_COMPLETED, from(kept, referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW), false},
	} {
		if got := intake.Hidden(c.st, c.r); got != c.want {
			t.Errorf("%v, entered %v: hidden %v, want %v", c.st, c.r.GetTreatmentEntryTime().AsTime(), got, c.want)
		}
	}
}

// Completed after missing the booked intake, the person entered treatment
// some other way than at it: the appointment did not take place.
func TestMissedThenAdmittedIsSuperseded(t *testing.T) {
	start := time.Date(2026, 12, 7, 15, 0, 0, 0, time.UTC)
	r := &referralsv1.Referral{State: referralsv1.ReferralState_REFERRAL_STATE_COMPLETED,
		IntakeAppointment:  &referralsv1.IntakeAppointment{StartTime: timestamppb.New(start)},
		TreatmentEntryTime: timestamppb.New(start.Add(48 * time.Hour)),
		History: []*referralsv1.ReferralEvent{
			{FromState: referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED, ToState: referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW},
			{FromState: referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW, ToState: referralsv1.ReferralState_REFERRAL_STATE_COMPLETED}}}
	if !intake.Superseded(r) || !intake.CompletedWithout(r) {
		t.Fatalf("missed, then admitted two days later: superseded %v, completed without %v; want both", intake.Superseded(r), intake.CompletedWithout(r))
	}
	if got := intake.CompletedFrom(r); got != referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW {
		t.Fatalf("completed from %v; want NO_SHOW", got)
	}
}
