package webhooks_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	webhooksv1 "github.com/handoff-health/handoff/gen/go/handoff/webhooks/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/outbox"
)

// A FULL subscription is refused to a role whose API reads do not include
// what a topic would carry; a refused request stores nothing.
func TestFullPayloadFollowsTheOwnersReads(t *testing.T) {
	f := setup(t)
	reminders := f.env.As("north", "reminders-1", auth.RoleReminders)
	full := webhooksv1.PayloadKind_PAYLOAD_KIND_FULL
	for _, c := range []struct {
		name   string
		ctx    context.Context
		topics []webhooksv1.Topic
		code   codes.Code
	}{
		{"an administrator", f.admin, []webhooksv1.Topic{webhooksv1.Topic_TOPIC_REFERRAL_CHANGED}, codes.PermissionDenied},
		// A topic the role does not read is refused in any form.
		{"the reminder automation, referrals", reminders, []webhooksv1.Topic{webhooksv1.Topic_TOPIC_REMINDER_DUE, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED}, codes.PermissionDenied},
		{"the reminder automation, appointments", reminders, []webhooksv1.Topic{webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED}, codes.PermissionDenied},
		{"the EHR, reminders", f.ehr, []webhooksv1.Topic{webhooksv1.Topic_TOPIC_REMINDER_DUE}, codes.PermissionDenied},
		// One the token reads as an administrator, but not in full as
		// the reminder automation.
		{"the reminder automation that also administers, referrals", f.env.As("north", "reminders-2", auth.RoleReminders, auth.RoleClinicAdmin),
			[]webhooksv1.Topic{webhooksv1.Topic_TOPIC_REFERRAL_CHANGED}, codes.InvalidArgument},
	} {
		_, err := f.client.CreateSubscription(c.ctx, &webhooksv1.CreateSubscriptionRequest{Parent: "clinics/north",
			Subscription: &webhooksv1.Subscription{Url: "https://hooks.example.org/", Topics: c.topics, Payload: full}})
		if status.Code(err) != c.code {
			t.Fatalf("%s: FULL subscription = %v, want %s", c.name, err, c.code)
		}
		if c.code == codes.InvalidArgument && violatedField(err) != "subscription.payload" {
			t.Fatalf("%s: violation on %q, want subscription.payload", c.name, violatedField(err))
		}
	}
	// Identifiers tell when a resource changes: only to a role that reads
	// it. The EHR is the outside system even with an administrator's role.
	for _, c := range []struct {
		name  string
		ctx   context.Context
		topic webhooksv1.Topic
	}{
		{"the reminder automation, referrals", reminders, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED},
		{"the EHR, reminders", f.ehr, webhooksv1.Topic_TOPIC_REMINDER_DUE},
		{"the EHR that also administers, reminders", f.env.As("north", "ehr-2", auth.RoleEHR, auth.RoleClinicAdmin), webhooksv1.Topic_TOPIC_REMINDER_DUE},
	} {
		_, err := f.client.CreateSubscription(c.ctx, &webhooksv1.CreateSubscriptionRequest{Parent: "clinics/north",
			Subscription: &webhooksv1.Subscription{Url: "https://hooks.example.org/", Topics: []webhooksv1.Topic{c.topic}}})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("%s: ID_ONLY subscription = %v, want PermissionDenied", c.name, err)
		}
	}
	var n int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM subscriptions`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("refused subscriptions stored: %d, %v", n, err)
	}
	// What each may have, it gets; the administrator subscribes to
	// identifiers.
	f.subscribe(t, f.ehr, "https://ehr.example.org/", full, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED)
	f.subscribe(t, reminders, "https://reminders.example.org/", full, webhooksv1.Topic_TOPIC_REMINDER_DUE)
	f.subscribe(t, f.admin, "https://admin.example.org/", webhooksv1.PayloadKind_PAYLOAD_KIND_ID_ONLY, webhooksv1.Topic_TOPIC_REFERRAL_CHANGED)
}

func violatedField(err error) string {
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) > 0 {
			return br.GetFieldViolations()[0].GetField()
		}
	}
	return ""
}

// An intervention leaves in a webhook as outside systems read it through
// the API: no place, plan, level, checklist or notes. A FULL subscription
// whose owner's reads are unknown (made before audiences were kept) gets
// identifiers only, and no disclosure is asked for.
func TestFullInterventionIsTheAppointment(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	rcv, _ := f.receiving(t, f.ehr, webhooksv1.PayloadKind_PAYLOAD_KIND_FULL, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED)
	old := newReceiver(t)
	legacy := f.subscribe(t, f.env.As("north", "ehr-2", auth.RoleEHR), old.srv.URL,
		webhooksv1.PayloadKind_PAYLOAD_KIND_FULL, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED)
	old.secret.Store(legacy.GetSecret())
	if _, err := f.pool.Exec(ctx, `UPDATE subscriptions SET audience = '' WHERE id = $1`, aipID(legacy.GetName())); err != nil {
		t.Fatal(err)
	}
	fam := &fakeFamilies{}
	fam.consent.Store(true)

	iv := &interventionsv1.Intervention{
		Name: "clinics/north/interventions/i1", Family: "clinics/north/families/f1", Counselor: "counselor-1",
		Level: interventionsv1.EscalationLevel_ESCALATION_LEVEL_LEVEL_3, StartTime: timestamppb.New(time.Now().Add(time.Hour)),
		State:     interventionsv1.InterventionState_INTERVENTION_STATE_COMPLETED,
		Place:     &interventionsv1.Place{Kind: &interventionsv1.Place_InPerson{InPerson: &interventionsv1.InPersonPlace{Address: "12 Elm Street"}}},
		Checklist: []*interventionsv1.ChecklistItem{{}},
		Outcome: &interventionsv1.Outcome{Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_DECLINED, Notes: "said he would leave",
			RecordTime: timestamppb.Now()},
		CarriedOverNotes: "letters from the children", CancelReason: "none",
	}
	for _, e := range []outbox.Stored{event(t, "handoff.interventions.v1.intervention.outcome_recorded", iv, iv.GetName())} {
		if n, err := f.sink.Enqueue(ctx, "interventions", e); err != nil || n != 2 {
			t.Fatalf("Enqueue = %d, %v; want a delivery for each subscription", n, err)
		}
	}
	runSender(t, fastSender(f.db, fam, 10))
	eventually(t, 5*time.Second, "both notifications", func() bool { return len(rcv.received()) == 1 && len(old.received()) == 1 })
	cut, bare := rcv.received()[0], old.received()[0]
	if cut["data"] == nil || cut["notice"] == nil || bare["data"] != nil || bare["notice"] != nil {
		t.Fatalf("want data for the EHR's subscription only: %v; %v", cut, bare)
	}
	data := cut["data"].(map[string]any)
	for _, kept := range []string{"name", "family", "startTime", "state"} {
		if data[kept] == nil {
			t.Fatalf("the appointment lost %s: %v", kept, data)
		}
	}
	// The outcome too: a decline is the patient's decision about
	// treatment; only a meeting the loved one missed shows one.
	for _, dropped := range []string{"level", "place", "checklist", "carriedOverNotes", "cancelReason", "outcome"} {
		if data[dropped] != nil {
			t.Fatalf("the appointment carries %s: %v", dropped, data)
		}
	}
	fam.mu.Lock()
	defer fam.mu.Unlock()
	if rs := fam.records(); len(rs) != 1 || rs[0].GetDisclosure().GetRecipient() != "ehr-1" {
		t.Fatalf("disclosures recorded: %v; want one, to ehr-1", rs)
	}
}
