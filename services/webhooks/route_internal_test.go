package webhooks

import (
	"slices"
	"testing"

	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	webhooksv1 "github.com/handoff-health/handoff/gen/go/handoff/webhooks/v1"
	"github.com/handoff-health/handoff/services/outbox"
)

// Every referral change is REFERRAL_CHANGED; one that books, settles or
// pauses an intake appointment is APPOINTMENT_CHANGED too.
func TestReferralEventTopics(t *testing.T) {
	booked := &referralsv1.Referral{IntakeAppointment: &referralsv1.IntakeAppointment{}}
	for _, c := range []struct {
		event       string
		ref         *referralsv1.Referral
		appointment bool
	}{
		{"accepted", &referralsv1.Referral{}, false},
		{"scheduled", booked, true},
		{"on_hold", booked, true},
		{"cancelled", booked, true},
		{"cancelled", &referralsv1.Referral{}, false},
		{"completed", booked, true},
		{"no_show", booked, true},
		{"entered_in_error", booked, true},
		{"entered_in_error", &referralsv1.Referral{}, false},
	} {
		r := routeOf(referralEvents+c.event, c.ref, outbox.Generation)
		if !slices.Contains(r.topics, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED) {
			t.Errorf("%s: topics %v lack REFERRAL_CHANGED", c.event, r.topics)
		}
		if got := slices.Contains(r.topics, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED); got != c.appointment {
			t.Errorf("%s (appointment %v): APPOINTMENT_CHANGED %v, want %v", c.event, c.ref.GetIntakeAppointment() != nil, got, c.appointment)
		}
	}
}

// An intervention change is APPOINTMENT_CHANGED when it changes the
// appointment; a check-in (which follows only a meeting without a yes),
// a checklist tick and an edit of what the appointment leaves out leave it
// as it was and announce nothing.
func TestInterventionEventTopics(t *testing.T) {
	for event, want := range map[string]bool{
		"created": true, "scheduled": true, "rescheduled": true, "cancelled": true, "outcome_recorded": true,
		"updated": true, "deleted": true, "check_in_recorded": false, "checklist_updated": false, "details_updated": false,
	} {
		r := routeOf(interventionEvents+event, nil, outbox.Generation)
		if got := slices.Contains(r.topics, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED); got != want || len(r.topics) > 1 {
			t.Errorf("%s: topics %v, want APPOINTMENT_CHANGED %v", event, r.topics, want)
		}
	}
}

// The automation's full payload of a reminder is what it reads through the
// API: not why one was cancelled, which workflow made it (an overdose
// alert's, a MAT intake's), its kind or the record under a family it
// concerns.
func TestReminderPayloadLeavesOutWhyAndWhichWorkflow(t *testing.T) {
	rem := &interventionsv1.Reminder{Name: "clinics/north/reminders/r1", Message: "Reminder: meeting at 6 pm.",
		RelatedResource: "clinics/north/interventions/i1", CancelReason: "the loved one accepted treatment",
		OriginWorkflow: "mat-intake/clinics/north/interventions/i1", Kind: interventionsv1.ReminderKind_REMINDER_KIND_INTAKE_UPCOMING}
	got, ok := viewFor(audienceReminders, rem)
	r, _ := got.(*interventionsv1.Reminder)
	if !ok || r.GetOriginWorkflow() != "" || r.GetCancelReason() != "" || r.GetMessage() != rem.GetMessage() ||
		r.GetRelatedResource() != rem.GetRelatedResource() || r.GetKind() != interventionsv1.ReminderKind_REMINDER_KIND_UNSPECIFIED {
		t.Fatalf("the automation's payload = %v, %v", got, ok)
	}
	rem.RelatedResource = "clinics/north/families/f1/warningSigns/w1"
	if got, _ := viewFor(audienceReminders, rem); got.(*interventionsv1.Reminder).GetRelatedResource() != "clinics/north/families/f1" {
		t.Fatalf("the automation's payload of a warning sign's reminder = %v; want the family only", got)
	}
	if rem.GetOriginWorkflow() == "" {
		t.Fatal("the view changed the event's own reminder")
	}
	if _, ok := viewFor(audienceEHR, rem); ok {
		t.Fatal("the EHR may read a reminder")
	}
}

// An unpublished draft's events are routed nowhere, but only those written
// by a release that records published (outbox generation 5): an older
// event carries no published, and its meeting may well have been
// scheduled, so it is routed as it was.
func TestDraftRoutingFollowsTheGeneration(t *testing.T) {
	cancelled := &interventionsv1.Intervention{State: interventionsv1.InterventionState_INTERVENTION_STATE_CANCELLED}
	if r := routeOf(interventionEvents+"cancelled", cancelled, 5); len(r.topics) != 0 {
		t.Fatalf("an unpublished draft's cancellation at generation 5: %v; want no topic", r.topics)
	}
	if r := routeOf(interventionEvents+"cancelled", cancelled, 4); !slices.Equal(r.topics, []webhooksv1.Topic{webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED}) {
		t.Fatalf("a cancellation written by generation 4: %v; want APPOINTMENT_CHANGED", r.topics)
	}
}
