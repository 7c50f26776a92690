package stack_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"go.temporal.io/sdk/temporal"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/stack/stacktest"
	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/ids"
)

// An activity retried after its reply was lost must not refer the person a
// second time: the first attempt took the program's last slot, so a fresh
// match would pass that program over and refer them elsewhere too.
func TestRetriedImmediateReferralMakesOne(t *testing.T) {
	e := start(t)
	f, _ := e.family()
	for _, name := range []string{"First MAT", "Second MAT", "Third MAT"} {
		p := ok(e.ref.CreateProgram(e.admin, &referralsv1.CreateProgramRequest{Parent: "clinics/north", Program: &referralsv1.Program{
			DisplayName: name, Services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE},
			SameDayIntake: true, PaymentsAccepted: []referralsv1.PaymentKind{referralsv1.PaymentKind_PAYMENT_KIND_MEDICAID}}}))
		ok(e.ref.ReportCapacity(e.admin, &referralsv1.ReportCapacityRequest{Name: p.GetName(), AvailableSlots: 1}))
	}
	a := &activities.Activities{Families: e.fam, Interventions: e.iv, Referrals: e.ref}
	// A draft: it has no workflow of its own to interfere.
	intervention := ok(e.iv.CreateIntervention(e.counsel, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north", Intervention: &interventionsv1.Intervention{
		Family: f.GetName(), Counselor: "counselor-1", StartTime: timestamppb.New(time.Now().Add(time.Hour)), ExpectedDuration: durationpb.New(15 * time.Minute),
		Place: &interventionsv1.Place{Kind: &interventionsv1.Place_Video{Video: &interventionsv1.VideoPlace{Link: "https://video.example/x"}}}}})).GetName()
	in := activities.ImmediateRequest{Family: f.GetName(), Intervention: intervention, FirstContact: time.Now(), RequestID: "retried-referral"}
	first, err := a.StartImmediateReferral(e.counsel, in)
	if err != nil {
		t.Fatal(err)
	}
	again, err := a.StartImmediateReferral(e.counsel, in) // the same attempt, retried
	// The same referral, said to be one made before the retry (the
	// intake reads such a referral before following it).
	if err != nil || again.Name != first.Name || again.Program != first.Program || first.Adopted || !again.Adopted {
		t.Fatalf("retry = %+v, %v; want the first attempt's %+v, adopted", again, err, first)
	}
	refs := ok(e.ref.ListReferrals(e.counsel, &referralsv1.ListReferralsRequest{Parent: "clinics/north",
		Filter: fmt.Sprintf("intervention = %q", intervention)})).GetReferrals()
	if len(refs) != 1 {
		t.Fatalf("%d referrals for one acceptance: %v", len(refs), refs)
	}
	// A hold taken by an attempt that failed afterwards is reused by the
	// retry, not joined by a second hold at the next program. Here the
	// checklist tick fails: its request id was used before, for another
	// request.
	ok(e.iv.UpdateChecklistItem(e.counsel, &interventionsv1.UpdateChecklistItemRequest{Name: intervention,
		Kind: interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_QUIET_PRIVATE_PLACE, Done: true, RequestId: "hold-1-checklist"}))
	for range 2 {
		if _, err := a.HoldTreatment(e.counsel, activities.HoldRequest{Family: f.GetName(), Intervention: intervention,
			TTL: time.Hour, RequestID: "hold-1"}); err == nil {
			t.Fatal("the checklist tick should fail under a request id used for another request")
		}
	}
	holds := ok(e.ref.ListHolds(e.counsel, &referralsv1.ListHoldsRequest{Parent: "clinics/north",
		Filter: fmt.Sprintf("intervention = %q AND state = HELD", intervention)})).GetHolds()
	if len(holds) != 1 {
		t.Fatalf("%d live holds after a retried hold: %v", len(holds), holds)
	}
}

// A meeting cancelled while its workflow was about to hold a place: the
// places held for it were given back when it was cancelled, by a workflow
// that runs once, so a hold taken after would stay held for no one until
// it lapsed. The referrals service refuses it (INTERVENTION_ENDED, which
// the activity does not retry) and nothing is held.
func TestNoHoldForACancelledIntervention(t *testing.T) {
	e := start(t)
	mat := e.directory()
	f, _ := e.family()
	// A draft, cancelled: closed, with no workflow of its own to interfere.
	iv := ok(e.iv.CreateIntervention(e.counsel, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north", Intervention: &interventionsv1.Intervention{
		Family: f.GetName(), Counselor: "counselor-1", StartTime: timestamppb.New(time.Now().Add(time.Hour)), ExpectedDuration: durationpb.New(15 * time.Minute),
		Place: &interventionsv1.Place{Kind: &interventionsv1.Place_Video{Video: &interventionsv1.VideoPlace{Link: "https://video.example/x"}}}}}))
	ok(e.iv.CancelIntervention(e.counsel, &interventionsv1.CancelInterventionRequest{Name: iv.GetName(), Reason: "family asked to wait"}))
	stacktest.Eventually(t, 30*time.Second, "the CancelledHolds workflow to end", func() bool {
		d, err := e.temporal.DescribeWorkflowExecution(context.Background(), ids.CancelledHolds(iv.GetName()), "")
		return err == nil && d.GetWorkflowExecutionInfo().GetCloseTime() != nil
	})
	a := &activities.Activities{Families: e.fam, Interventions: e.iv, Referrals: e.ref}
	got, err := a.HoldTreatment(e.counsel, activities.HoldRequest{Family: f.GetName(), Intervention: iv.GetName(),
		TTL: time.Hour, RequestID: "late-hold"})
	var app *temporal.ApplicationError
	if !errors.As(err, &app) || app.Type() != "INTERVENTION_ENDED" || !app.NonRetryable() || got.Hold != "" {
		t.Fatalf("HoldTreatment on a cancelled intervention = %+v, %v; want INTERVENTION_ENDED, not retried, nothing held", got, err)
	}
	holds := ok(e.ref.ListHolds(e.counsel, &referralsv1.ListHoldsRequest{Parent: "clinics/north",
		Filter: fmt.Sprintf("intervention = %q", iv.GetName())})).GetHolds()
	if p := ok(e.ref.GetProgram(e.counsel, &referralsv1.GetProgramRequest{Name: mat.GetName()})); len(holds) != 0 ||
		p.GetCapacity().GetAvailableSlots() != mat.GetCapacity().GetAvailableSlots() {
		t.Fatalf("holds %v, %d slots free of %d; want none held", holds, p.GetCapacity().GetAvailableSlots(), mat.GetCapacity().GetAvailableSlots())
	}
}

// A yes names the medication agreed to: the place held for another is
// converted to it where its program offers it, and given back where it
// does not, for a program that does.
func TestYesIsReferredForTheMedicationAgreedTo(t *testing.T) {
	e := start(t)
	f, _ := e.family()
	program := func(name string, kinds ...referralsv1.ServiceKind) string {
		p := ok(e.ref.CreateProgram(e.admin, &referralsv1.CreateProgramRequest{Parent: "clinics/north", Program: &referralsv1.Program{
			DisplayName: name, Services: kinds, SameDayIntake: true,
			PaymentsAccepted: []referralsv1.PaymentKind{referralsv1.PaymentKind_PAYMENT_KIND_MEDICAID}}}))
		ok(e.ref.ReportCapacity(e.admin, &referralsv1.ReportCapacityRequest{Name: p.GetName(), AvailableSlots: 1}))
		return p.GetName()
	}
	const methadone, buprenorphine, naltrexone = referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE,
		referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, referralsv1.ServiceKind_SERVICE_KIND_MAT_NALTREXONE
	both := program("Both MAT", methadone, buprenorphine)
	methadoneOnly := program("Methadone MAT", methadone)
	naltrexoneOnly := program("Naltrexone MAT", naltrexone)
	a := &activities.Activities{Families: e.fam, Interventions: e.iv, Referrals: e.ref}
	for _, c := range []struct {
		heldAt, agreed, wantProgram string
		wantKind                    referralsv1.ServiceKind
		wantHold                    referralsv1.HoldState
	}{
		{methadoneOnly, "MAT_NALTREXONE", naltrexoneOnly, naltrexone, referralsv1.HoldState_HOLD_STATE_RELEASED},
		{both, "MAT_BUPRENORPHINE", both, buprenorphine, referralsv1.HoldState_HOLD_STATE_CONVERTED},
	} {
		iv := ok(e.iv.CreateIntervention(e.counsel, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north", Intervention: &interventionsv1.Intervention{
			Family: f.GetName(), Counselor: "counselor-1", StartTime: timestamppb.New(time.Now().Add(time.Hour)), ExpectedDuration: durationpb.New(15 * time.Minute),
			Place: &interventionsv1.Place{Kind: &interventionsv1.Place_Video{Video: &interventionsv1.VideoPlace{Link: "https://video.example/x"}}}}})).GetName()
		hold := ok(e.ref.HoldSlot(e.counsel, &referralsv1.HoldSlotRequest{Program: c.heldAt, ServiceKind: methadone,
			Family: f.GetName(), Intervention: iv, Ttl: durationpb.New(time.Hour)})).GetName()
		ref, err := a.StartImmediateReferral(e.counsel, activities.ImmediateRequest{Family: f.GetName(), Intervention: iv, Hold: hold,
			FirstContact: time.Now(), RequestID: "yes-" + c.agreed, Medications: []string{c.agreed}})
		if err != nil || ref.Program != c.wantProgram {
			t.Fatalf("agreed to %s, held at %s: referral %+v, %v; want one at %s", c.agreed, c.heldAt, ref, err, c.wantProgram)
		}
		if r := ok(e.ref.GetReferral(e.counsel, &referralsv1.GetReferralRequest{Name: ref.Name})); r.GetServiceKind() != c.wantKind {
			t.Fatalf("agreed to %s: referred for %v", c.agreed, r.GetServiceKind())
		}
		if h := ok(e.ref.GetHold(e.counsel, &referralsv1.GetHoldRequest{Name: hold})); h.GetState() != c.wantHold {
			t.Fatalf("agreed to %s: the methadone hold is %v; want %v", c.agreed, h.GetState(), c.wantHold)
		}
	}
}

// Cancelling every reminder one workflow made, whatever each is about,
// reaches the service's filter as it parses, and leaves other workflows'
// reminders alone.
func TestCancelRemindersByOriginAlone(t *testing.T) {
	e := start(t)
	f, _ := e.family()
	remind := func(origin, related string, kind interventionsv1.ReminderKind) string {
		return ok(e.iv.CreateReminder(e.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
			Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR, Id: "counselor-1",
				Family: f.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP},
			DueTime: timestamppb.New(time.Now().Add(time.Hour)), Kind: kind,
			Message: "Please contact the family.", RelatedResource: related, OriginWorkflow: origin}})).GetName()
	}
	const checkIn, escalation, alert = interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN,
		interventionsv1.ReminderKind_REMINDER_KIND_ESCALATION_PROPOSED, interventionsv1.ReminderKind_REMINDER_KIND_OVERDOSE_ALERT
	boundaryOrigin := ids.Boundary(f.GetName())
	// The notice of a drafted meeting is made only while the draft stands.
	next := ok(e.iv.CreateIntervention(e.counsel, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north", Intervention: &interventionsv1.Intervention{
		Family: f.GetName(), Counselor: "counselor-1", StartTime: timestamppb.New(time.Now().Add(72 * time.Hour)), ExpectedDuration: durationpb.New(time.Hour),
		Place: &interventionsv1.Place{Kind: &interventionsv1.Place_Video{Video: &interventionsv1.VideoPlace{Link: "https://video.example/x"}}}}})).GetName()
	mine := []string{remind(boundaryOrigin, f.GetName(), checkIn), remind(boundaryOrigin, "clinics/north/interventions/refused", checkIn),
		remind(boundaryOrigin, next, escalation)}
	kept := []string{remind(boundaryOrigin, f.GetName()+"/warningSigns/w1", alert), // not a kind asked for
		remind("intervention/clinics/north/interventions/other", f.GetName(), checkIn)} // another workflow's
	a := &activities.Activities{Families: e.fam, Interventions: e.iv, Referrals: e.ref}
	n, err := a.CancelReminders(e.worker, activities.CancelRemindersRequest{Clinic: "north", Origin: boundaryOrigin,
		Kinds: []string{"CHECK_IN", "ESCALATION_PROPOSED"}, Reason: "the loved one accepted treatment", RequestID: "by-origin"})
	if err != nil || n != len(mine) {
		t.Fatalf("cancelled %d, %v; want the %d the workflow made of those kinds", n, err, len(mine))
	}
	for _, name := range append(mine, kept...) {
		r := ok(e.iv.GetReminder(e.worker, &interventionsv1.GetReminderRequest{Name: name}))
		if cancelled := r.GetState() == interventionsv1.ReminderState_REMINDER_STATE_CANCELLED; cancelled == slices.Contains(kept, name) {
			t.Fatalf("reminder %s (%v, origin %s) is %v", name, r.GetKind(), r.GetOriginWorkflow(), r.GetState())
		}
	}
}

// A hold the workflow took before a reschedule (its release failed) lapses
// before the new meeting ends: the next hold try gives it back and takes a
// place that lasts, instead of adopting it. (A counselor's is left to
// them: the activities' tests.)
func TestHoldLapsingBeforeTheMeetingIsNotAdopted(t *testing.T) {
	e := start(t)
	e.directory()
	f, _ := e.family()
	iv := ok(e.iv.CreateIntervention(e.counsel, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north", Intervention: &interventionsv1.Intervention{
		Family: f.GetName(), Counselor: "counselor-1", StartTime: timestamppb.New(time.Now().Add(72 * time.Hour)), ExpectedDuration: durationpb.New(time.Hour),
		Place: &interventionsv1.Place{Kind: &interventionsv1.Place_Video{Video: &interventionsv1.VideoPlace{Link: "https://video.example/x"}}}}})).GetName()
	a := &activities.Activities{Families: e.fam, Interventions: e.iv, Referrals: e.ref}
	short, err := a.HoldTreatment(e.worker, activities.HoldRequest{Family: f.GetName(), Intervention: iv, TTL: 2 * time.Hour, RequestID: "before"})
	if err != nil {
		t.Fatal(err)
	}
	until := time.Now().Add(73 * time.Hour)
	got, err := a.HoldTreatment(e.worker, activities.HoldRequest{Family: f.GetName(), Intervention: iv, TTL: 75 * time.Hour,
		Until: until, RequestID: "after"})
	if err != nil || got.Hold == "" || got.Hold == short.Hold {
		t.Fatalf("hold after the reschedule %+v, %v; want a new one, not %s", got, err, short.Hold)
	}
	if h := ok(e.ref.GetHold(e.counsel, &referralsv1.GetHoldRequest{Name: short.Hold})); h.GetState() != referralsv1.HoldState_HOLD_STATE_RELEASED {
		t.Fatalf("the short hold is %v; want RELEASED", h.GetState())
	}
	if h := ok(e.ref.GetHold(e.counsel, &referralsv1.GetHoldRequest{Name: got.Hold})); h.GetExpireTime().AsTime().Before(until) {
		t.Fatalf("the new hold lapses at %v, before the meeting ends at %v", h.GetExpireTime().AsTime(), until)
	}
	// Tried again, the same request adopts the hold it took.
	again, err := a.HoldTreatment(e.worker, activities.HoldRequest{Family: f.GetName(), Intervention: iv, TTL: 75 * time.Hour,
		Until: until, RequestID: "after"})
	if err != nil || again.Hold != got.Hold {
		t.Fatalf("the retried hold %+v, %v; want %s", again, err, got.Hold)
	}
}

// The worker counts a family's level 2 meetings held, through the
// interventions service's own filter: a draft, or a meeting at another
// level, is not one.
func TestMeetingsHeldCountsOnlyHeldMeetingsAtTheLevel(t *testing.T) {
	e := start(t)
	e.directory()
	f, _ := e.family()
	a := &activities.Activities{Families: e.fam, Interventions: e.iv, Referrals: e.ref}
	level2 := func(in time.Duration) *interventionsv1.Intervention {
		return ok(e.iv.CreateIntervention(e.counsel, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north", Intervention: &interventionsv1.Intervention{
			Family: f.GetName(), Counselor: "counselor-1", Level: interventionsv1.EscalationLevel_ESCALATION_LEVEL_LEVEL_2,
			StartTime: timestamppb.New(time.Now().Add(in)), ExpectedDuration: durationpb.New(15 * time.Minute),
			Place:        &interventionsv1.Place{Kind: &interventionsv1.Place_Video{Video: &interventionsv1.VideoPlace{Link: "https://video.example/x"}}},
			Participants: []*interventionsv1.Participant{{MemberId: "mom", Role: interventionsv1.ParticipantRole_PARTICIPANT_ROLE_LEAD_SPEAKER}}}}))
	}
	level2(time.Hour) // a draft
	iv := ok(e.iv.ScheduleIntervention(e.counsel, &interventionsv1.ScheduleInterventionRequest{Name: level2(3 * time.Second).GetName()}))
	e.awaitMeeting(iv)
	ok(e.iv.RecordOutcome(e.counsel, &interventionsv1.RecordOutcomeRequest{Name: iv.GetName(), Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_DECLINED}))
	for level, want := range map[int32]int{2: 1, 3: 0} {
		if n, err := a.MeetingsHeld(e.worker, activities.MeetingsRequest{Family: f.GetName(), Level: level}); err != nil || n != want {
			t.Fatalf("level %d meetings held: %d, %v; want %d", level, n, err, want)
		}
	}
}
