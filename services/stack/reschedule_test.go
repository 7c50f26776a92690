package stack_test

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/stack/stacktest"
	"github.com/handoff-health/handoff/workflows/ids"
	"github.com/handoff-health/handoff/workflows/intervention"
)

// A meeting moved after its first reminder went out: that reminder, not
// delivered yet, is cancelled, and the new time's reminders reach whoever
// takes part then, dad too, who joined after the move. Nobody comes: the
// place held for the new time goes back and the boundary follow-up
// starts. The replay tests keep this history: the most common change to
// a meeting, a reschedule, and a change of participants, run through it.
func TestRescheduledMeetingRemindsForTheNewTime(t *testing.T) {
	e := start(t)
	e.directory()
	f, _ := e.family()
	cur := ok(e.fam.GetFamily(e.counsel, &familiesv1.GetFamilyRequest{Name: f.GetName()}))
	cur.Members = append(cur.Members, &familiesv1.Member{Id: "dad", GivenName: "Luis", Relationship: familiesv1.Relationship_RELATIONSHIP_PARENT,
		Role: familiesv1.MemberRole_MEMBER_ROLE_SUPPORT, ConsentToContact: true,
		ContactChannels: []*familiesv1.ContactChannel{{Kind: familiesv1.ChannelKind_CHANNEL_KIND_SMS, Value: "+15555550101"}}})
	ok(e.fam.UpdateFamily(e.counsel, &familiesv1.UpdateFamilyRequest{Family: cur, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"members"}}}))

	iv := e.schedule(f, 7*time.Second)
	reminders := func(filter string) []*interventionsv1.Reminder {
		return ok(e.iv.ListReminders(e.counsel, &interventionsv1.ListRemindersRequest{Parent: "clinics/north",
			Filter: fmt.Sprintf("kind = INTERVENTION_UPCOMING AND related_resource = %q", iv.GetName()) + filter})).GetReminders()
	}
	// The first reminders, 5 s before the meeting, are made for its time.
	var before []*interventionsv1.Reminder
	stacktest.Eventually(t, 15*time.Second, "the first reminders", func() bool {
		before = reminders("")
		return len(before) > 0
	})
	// Far enough ahead that dad joins before the new time's first
	// reminders are due (10 s in): two relay hops and two workflow
	// updates come first, on a busy machine.
	moved := time.Now()
	start := moved.Add(15 * time.Second)
	ok(e.iv.RescheduleIntervention(e.counsel, &interventionsv1.RescheduleInterventionRequest{Name: iv.GetName(), StartTime: timestamppb.New(start)}))
	stacktest.Eventually(t, 15*time.Second, "the old time's reminders cancelled", func() bool {
		for _, r := range before {
			got := ok(e.iv.GetReminder(e.counsel, &interventionsv1.GetReminderRequest{Name: r.GetName()}))
			if got.GetState() != interventionsv1.ReminderState_REMINDER_STATE_CANCELLED {
				return false
			}
		}
		return true
	})
	// Dad joins the meeting: the workflow reads the plan again.
	ok(e.iv.UpdateIntervention(e.counsel, &interventionsv1.UpdateInterventionRequest{
		Intervention: &interventionsv1.Intervention{Name: iv.GetName(), Participants: []*interventionsv1.Participant{
			{MemberId: "mom", Role: interventionsv1.ParticipantRole_PARTICIPANT_ROLE_LEAD_SPEAKER},
			{MemberId: "dad", Role: interventionsv1.ParticipantRole_PARTICIPANT_ROLE_SUPPORT}}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"participants"}}}))
	stacktest.Eventually(t, 15*time.Second, "the workflow to take the new participant", func() bool {
		return e.acceptedUpdate(ids.Intervention(iv.GetName()), intervention.UpdateReplan)
	})
	// Both reminders of the new time reach the counselor, mom and dad.
	stacktest.Eventually(t, 30*time.Second, "the new time's reminders", func() bool {
		got := map[string]int{}
		for _, r := range reminders("") {
			if r.GetDueTime().AsTime().After(moved) && r.GetState() != interventionsv1.ReminderState_REMINDER_STATE_CANCELLED {
				got[r.GetRecipient().GetId()]++
			}
		}
		return got["counselor-1"] == 2 && got["mom"] == 2 && got["dad"] == 2
	})
	for _, r := range reminders("") {
		if r.GetDueTime().AsTime().After(moved) && r.GetDueTime().AsTime().After(start) {
			t.Fatalf("reminder %s due %v, after the meeting's new start %v", r.GetName(), r.GetDueTime().AsTime(), start)
		}
	}
	hold := e.awaitHold(iv)

	stacktest.Eventually(t, 15*time.Second, "the new time", func() bool { return time.Now().After(start) })
	ok(e.iv.RecordOutcome(e.counsel, &interventionsv1.RecordOutcomeRequest{Name: iv.GetName(), Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_DID_NOT_ATTEND}))
	res := e.result(iv.GetName())
	if res.Outcome != "DID_NOT_ATTEND" || res.Child != ids.Boundary(f.GetName()) {
		t.Fatalf("result = %+v; want DID_NOT_ATTEND and the boundary follow-up", res)
	}
	if got := ok(e.ref.GetHold(e.counsel, &referralsv1.GetHoldRequest{Name: hold})); got.GetState() != referralsv1.HoldState_HOLD_STATE_RELEASED {
		t.Fatalf("hold %s is %v after nobody came; want released", hold, got.GetState())
	}
	e.recordHistory(ids.Intervention(iv.GetName()), "intervention", "rescheduled.json")
}
