package stack_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/api/proxy"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/families"
	"github.com/handoff-health/handoff/services/grpcclient"
	"github.com/handoff-health/handoff/services/stack/stacktest"
	"github.com/handoff-health/handoff/workflows/activities"
	"github.com/handoff-health/handoff/workflows/cancelledholds"
	"github.com/handoff-health/handoff/workflows/codec"
	"github.com/handoff-health/handoff/workflows/contactwithdrawn"
	"github.com/handoff-health/handoff/workflows/familydeleted"
	"github.com/handoff-health/handoff/workflows/ids"
	"github.com/handoff-health/handoff/workflows/intervention"
	"github.com/handoff-health/handoff/workflows/overdose"
	"github.com/handoff-health/handoff/workflows/treatmententered"
)

type env struct {
	t        *testing.T
	temporal client.Client
	proxy    *stacktest.Proxy
	codec    *codec.Codec
	fam      familiesv1.FamiliesServiceClient
	iv       interventionsv1.InterventionsServiceClient
	ref      referralsv1.ReferralsServiceClient
	counsel  context.Context
	admin    context.Context
	ehr      context.Context
	reminder context.Context
	worker   context.Context
}

func start(t *testing.T, adjust ...func(*activities.Settings)) *env {
	t.Helper()
	current = t
	sys := stacktest.Start(t, adjust...)
	dial := func(addr string) *grpc.ClientConn {
		conn, err := grpcclient.Dial(addr, grpcclient.Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	as := func(subject string, roles ...auth.Role) context.Context {
		return auth.WithToken(context.Background(), sys.Token(subject, roles...))
	}
	return &env{t: t, temporal: sys.Temporal, proxy: sys.RelayProxy, codec: sys.Codec,
		fam:     familiesv1.NewFamiliesServiceClient(dial(sys.Stack.FamiliesAddr)),
		iv:      interventionsv1.NewInterventionsServiceClient(dial(sys.Stack.InterventionsAddr)),
		ref:     referralsv1.NewReferralsServiceClient(dial(sys.Stack.ReferralsAddr)),
		counsel: as("counselor-1", auth.RoleCounselor), admin: as("admin-1", auth.RoleClinicAdmin),
		ehr: as("ehr", auth.RoleEHR), reminder: as("sms-gateway", auth.RoleReminders), worker: as("worker", auth.RoleWorker)}
}

// current is the running test; these tests do not run in parallel, and ok
// needs it to fail the test from a one-line call.
var current *testing.T

// ok returns v, failing the test on err.
func ok[T any](v T, err error) T {
	current.Helper()
	if err != nil {
		current.Fatal(err)
	}
	return v
}

// directory creates the clinic's programs: MAT with three slots, family
// support, and harm reduction.
func (e *env) directory() (mat *referralsv1.Program) {

	mk := func(name string, slots int32, kinds ...referralsv1.ServiceKind) *referralsv1.Program {
		p := ok(e.ref.CreateProgram(e.admin, &referralsv1.CreateProgramRequest{Parent: "clinics/north", Program: &referralsv1.Program{
			DisplayName: name, Services: kinds, SameDayIntake: true, SameDayInduction: true,
			PaymentsAccepted: []referralsv1.PaymentKind{referralsv1.PaymentKind_PAYMENT_KIND_MEDICAID}}}))
		return ok(e.ref.ReportCapacity(e.admin, &referralsv1.ReportCapacityRequest{Name: p.GetName(), AvailableSlots: slots}))
	}
	mat = mk("Riverside MAT", 3, referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT)
	mk("Family counseling center", 10, referralsv1.ServiceKind_SERVICE_KIND_FAMILY_COUNSELING, referralsv1.ServiceKind_SERVICE_KIND_INDIVIDUAL_COUNSELING)
	mk("Parents' support group", 10, referralsv1.ServiceKind_SERVICE_KIND_FAMILY_SUPPORT_GROUP)
	mk("Naloxone outreach", 10, referralsv1.ServiceKind_SERVICE_KIND_HARM_REDUCTION_NALOXONE)
	return mat
}

// family creates a family with a contact person, a barrier, a safety
// screen and an active boundary.
func (e *env) family() (*familiesv1.Family, *familiesv1.Boundary) {

	f := ok(e.fam.CreateFamily(e.counsel, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: &familiesv1.Family{
		LovedOne:  &familiesv1.LovedOne{GivenName: "Sam", MayContactDirectly: true, ContactChannels: []*familiesv1.ContactChannel{{Kind: familiesv1.ChannelKind_CHANNEL_KIND_SMS, Value: "+15555550111"}}},
		Counselor: "counselor-1", Coverage: &familiesv1.Coverage{Kind: familiesv1.CoverageKind_COVERAGE_KIND_MEDICAID},
		Members: []*familiesv1.Member{{Id: "mom", GivenName: "Ana", Relationship: familiesv1.Relationship_RELATIONSHIP_PARENT,
			Role: familiesv1.MemberRole_MEMBER_ROLE_CONTACT_PERSON, ConsentToContact: true,
			ContactChannels: []*familiesv1.ContactChannel{{Kind: familiesv1.ChannelKind_CHANNEL_KIND_SMS, Value: "+15555550100"}}}}}}))
	// The EHR reports the program's answers below: the patient consented.
	ok(e.fam.CreateConsent(e.counsel, &familiesv1.CreateConsentRequest{Parent: f.GetName(),
		Consent: families.TreatmentConsent("North clinic", "ehr", "Sam", time.Now())}))
	ok(e.fam.CreateBarrier(e.counsel, &familiesv1.CreateBarrierRequest{Parent: f.GetName(), Barrier: &familiesv1.Barrier{Kind: familiesv1.BarrierKind_BARRIER_KIND_FEAR_OF_WITHDRAWAL}}))
	ok(e.fam.CreateSafetyScreen(e.counsel, &familiesv1.CreateSafetyScreenRequest{Parent: f.GetName(), SafetyScreen: &familiesv1.SafetyScreen{Result: familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK}}))
	b := ok(e.fam.CreateBoundary(e.counsel, &familiesv1.CreateBoundaryRequest{Parent: f.GetName(), Boundary: &familiesv1.Boundary{
		Category: familiesv1.BoundaryCategory_BOUNDARY_CATEGORY_NO_FINANCIAL_SUPPORT, Wording: "No cash; we pay bills directly.", Consequence: "No cash gifts."}}))
	ok(e.fam.AgreeBoundary(e.counsel, &familiesv1.TransitionBoundaryRequest{Name: b.GetName()}))
	b = ok(e.fam.ActivateBoundary(e.counsel, &familiesv1.TransitionBoundaryRequest{Name: b.GetName()}))
	return f, b
}

func (e *env) schedule(f *familiesv1.Family, in time.Duration) *interventionsv1.Intervention {

	iv := ok(e.iv.CreateIntervention(e.counsel, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north", Intervention: &interventionsv1.Intervention{
		Family: f.GetName(), Counselor: "counselor-1", StartTime: timestamppb.New(time.Now().Add(in)), ExpectedDuration: durationpb.New(15 * time.Minute),
		Place:        &interventionsv1.Place{Kind: &interventionsv1.Place_InPerson{InPerson: &interventionsv1.InPersonPlace{Address: "12 Elm St", QuietAndPrivateConfirmed: true}}},
		Participants: []*interventionsv1.Participant{{MemberId: "mom", Role: interventionsv1.ParticipantRole_PARTICIPANT_ROLE_LEAD_SPEAKER}}}}))
	return ok(e.iv.ScheduleIntervention(e.counsel, &interventionsv1.ScheduleInterventionRequest{Name: iv.GetName()}))
}

func (e *env) result(iv string) intervention.Result {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var res intervention.Result
	if err := e.temporal.GetWorkflow(ctx, ids.Intervention(iv), "").Get(ctx, &res); err != nil {
		e.t.Fatalf("intervention workflow: %v", err)
	}
	return res
}

// awaitMeeting waits until iv's workflow runs and its meeting has begun,
// so that an outcome may be recorded.
// awaitHold waits for the workflow to hold a place for iv and tick it on
// the checklist, and returns the hold.
func (e *env) awaitHold(iv *interventionsv1.Intervention) string {
	e.t.Helper()
	var hold string
	stacktest.Eventually(e.t, 15*time.Second, "the treatment hold", func() bool {
		got := ok(e.iv.GetIntervention(e.counsel, &interventionsv1.GetInterventionRequest{Name: iv.GetName()}))
		for _, it := range got.GetChecklist() {
			if it.GetKind() == interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_TREATMENT_OPTION_HELD && it.GetHold() != "" {
				hold = it.GetHold()
			}
		}
		return hold != ""
	})
	return hold
}

// awaitImmediateReferral waits for the intake's one immediate referral
// for iv, and returns it.
func (e *env) awaitImmediateReferral(iv *interventionsv1.Intervention) *referralsv1.Referral {
	e.t.Helper()
	var referral *referralsv1.Referral
	stacktest.Eventually(e.t, 20*time.Second, "the immediate referral", func() bool {
		resp := ok(e.ref.ListReferrals(e.counsel, &referralsv1.ListReferralsRequest{Parent: "clinics/north",
			Filter: fmt.Sprintf("intervention = %q AND urgency = IMMEDIATE", iv.GetName())}))
		if len(resp.GetReferrals()) == 1 {
			referral = resp.GetReferrals()[0]
		}
		return referral != nil
	})
	return referral
}

// awaitEngaged waits for f's record to say the loved one is in treatment.
func (e *env) awaitEngaged(f *familiesv1.Family) {
	e.t.Helper()
	stacktest.Eventually(e.t, 20*time.Second, "the family engaged in treatment", func() bool {
		got := ok(e.fam.GetFamily(e.counsel, &familiesv1.GetFamilyRequest{Name: f.GetName()}))
		return got.GetState() == familiesv1.FamilyState_FAMILY_STATE_ENGAGED_IN_TREATMENT
	})
}

func (e *env) awaitMeeting(iv *interventionsv1.Intervention) {
	e.t.Helper()
	stacktest.Eventually(e.t, 15*time.Second, "the workflow to start", func() bool {
		_, err := e.temporal.DescribeWorkflowExecution(context.Background(), ids.Intervention(iv.GetName()), "")
		return err == nil
	})
	stacktest.Eventually(e.t, 15*time.Second, "the meeting to start", func() bool { return time.Now().After(iv.GetStartTime().AsTime()) })
}

// acceptedUpdate reports whether the workflow's history holds an accepted
// update of the given name.
func (e *env) acceptedUpdate(workflowID, name string) bool {
	it := e.temporal.GetWorkflowHistory(context.Background(), workflowID, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			e.t.Fatal(err)
		}
		if a := ev.GetWorkflowExecutionUpdateAcceptedEventAttributes(); a != nil && a.GetAcceptedRequest().GetInput().GetName() == name {
			return true
		}
	}
	return false
}

// recordHistory writes a workflow's history into the replay tests'
// testdata when HANDOFF_RECORD_HISTORIES is set (make record-histories).
func (e *env) recordHistory(workflowID, pkg, file string) {
	if os.Getenv("HANDOFF_RECORD_HISTORIES") == "" {
		return
	}
	ctx := context.Background()
	it := e.temporal.GetWorkflowHistory(ctx, workflowID, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	h := &historypb.History{}
	for it.HasNext() {
		ev, err := it.Next()
		if err != nil {
			e.t.Fatal(err)
		}
		h.Events = append(h.Events, ev)
	}
	// Saved opened, so the replay tests need no key; the test run's key is
	// thrown away anyway.
	if err := proxy.VisitPayloads(ctx, h, proxy.VisitPayloadsOptions{
		Visitor: func(_ *proxy.VisitPayloadsContext, ps []*commonpb.Payload) ([]*commonpb.Payload, error) {
			out := make([]*commonpb.Payload, len(ps))
			for i, p := range ps {
				d, err := e.codec.Decode([]*commonpb.Payload{p})
				switch {
				case errors.Is(err, codec.ErrUnsealed):
					out[i] = p // search attributes are the server's, not sealed
				case err != nil:
					return nil, err
				default:
					out[i] = d[0]
				}
			}
			return out, nil
		},
	}); err != nil {
		e.t.Fatal(err)
	}
	b, err := protojson.MarshalOptions{Indent: " "}.Marshal(h)
	if err != nil {
		e.t.Fatal(err)
	}
	dir := filepath.Join("..", "..", "workflows", pkg, "testdata")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		e.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, file), b, 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// Accepted: the held slot becomes an immediate referral that reaches
// "completed" when the program reports intake. Reminders become due and
// five racing claimers claim each exactly once.
func TestAcceptedEndsInTreatment(t *testing.T) {
	// The first reminders are due 2 s in, leaving ten before the meeting
	// for the claims, the failure and its resend, which is dropped once
	// the meeting has begun: the embedded server shares two busy cores.
	e := start(t, func(s *activities.Settings) { s.ReminderOffsets = []time.Duration{10 * time.Second, 2 * time.Second} })
	mat := e.directory()
	f, _ := e.family()
	iv := e.schedule(f, 12*time.Second)

	// Reminders (counselor in-app, mom by SMS) become due; five claimers race.
	var due []*interventionsv1.Reminder
	stacktest.Eventually(t, 15*time.Second, "due reminders", func() bool {
		resp := ok(e.iv.ListReminders(e.reminder, &interventionsv1.ListRemindersRequest{Parent: "clinics/north",
			Filter: fmt.Sprintf("state = DUE AND related_resource = %q", iv.GetName())}))
		due = resp.GetReminders()
		return len(due) >= 2
	})
	for _, r := range due {
		var wins atomic.Int32
		var wg sync.WaitGroup
		for i := 0; i < 5; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := e.iv.ClaimReminder(e.reminder, &interventionsv1.ClaimReminderRequest{Name: r.GetName(), Claimant: fmt.Sprintf("w%d", i), LeaseDuration: durationpb.New(time.Minute)})
				if err == nil {
					wins.Add(1)
				} else if status.Code(err) != codes.FailedPrecondition {
					t.Errorf("claim: %v", err)
				}
			}()
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("reminder %s claimed %d times", r.GetName(), wins.Load())
		}
	}
	// The first delivery fails: the workflow sends the reminder again.
	claimant := ok(e.iv.GetReminder(e.reminder, &interventionsv1.GetReminderRequest{Name: due[0].GetName()})).GetClaimedBy()
	ok(e.iv.CompleteReminder(e.reminder, &interventionsv1.CompleteReminderRequest{Name: due[0].GetName(), Claimant: claimant,
		Result: interventionsv1.DeliveryResult_DELIVERY_RESULT_FAILED, Reason: "carrier rejected"}))
	stacktest.Eventually(t, 15*time.Second, "the failed reminder sent again", func() bool {
		for _, r := range ok(e.iv.ListReminders(e.reminder, &interventionsv1.ListRemindersRequest{Parent: "clinics/north",
			Filter: fmt.Sprintf("related_resource = %q", iv.GetName())})).GetReminders() {
			if r.GetName() != due[0].GetName() && r.GetMessage() == due[0].GetMessage() && r.GetRecipient().GetId() == due[0].GetRecipient().GetId() {
				return true
			}
		}
		return false
	})
	// The hold is taken 3 s before the meeting and ticked on the checklist.
	e.awaitHold(iv)
	// A firmer meeting drafted meanwhile (as a boundary workflow proposes
	// one after a refusal) is moot once the loved one says yes.
	draft := ok(e.iv.CreateIntervention(e.counsel, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north", Intervention: &interventionsv1.Intervention{
		Family: f.GetName(), Counselor: "counselor-1", Level: interventionsv1.EscalationLevel_ESCALATION_LEVEL_LEVEL_2, PreviousIntervention: iv.GetName()}}))
	// After the start, "accepted".
	stacktest.Eventually(t, 15*time.Second, "the meeting to start", func() bool { return time.Now().After(iv.GetStartTime().AsTime()) })
	ok(e.iv.RecordOutcome(e.counsel, &interventionsv1.RecordOutcomeRequest{Name: iv.GetName(), Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_ACCEPTED}))
	stacktest.Eventually(t, 20*time.Second, "the draft cancelled", func() bool {
		got := ok(e.iv.GetIntervention(e.counsel, &interventionsv1.GetInterventionRequest{Name: draft.GetName()}))
		return got.GetState() == interventionsv1.InterventionState_INTERVENTION_STATE_CANCELLED && strings.Contains(got.GetCancelReason(), iv.GetName())
	})
	// The MAT intake workflow converts the hold into an immediate referral.
	referral := e.awaitImmediateReferral(iv)
	if referral.GetProgram() != mat.GetName() || referral.GetHold() == "" {
		t.Fatalf("referral %v is not at the held program %s", referral, mat.GetName())
	}
	// The program reports through the EHR: accepted, scheduled, completed.
	ok(e.ref.AcceptReferral(e.ehr, &referralsv1.TransitionReferralRequest{Name: referral.GetName()}))
	// The first booking's reminder (a second before it, in these
	// settings) is created; moved, that reminder, not delivered yet, is
	// cancelled.
	intakeReminders := func(filter string) []*interventionsv1.Reminder {
		return ok(e.iv.ListReminders(e.counsel, &interventionsv1.ListRemindersRequest{Parent: "clinics/north",
			Filter: fmt.Sprintf("kind = INTAKE_UPCOMING AND related_resource = %q", referral.GetName()) + filter})).GetReminders()
	}
	// Booked a few seconds ahead: the signal, the workflow task and the
	// reminder's timer must all come before the appointment, after which
	// no reminder is made, and the embedded server shares two busy cores.
	first := time.Now().Add(6 * time.Second).Truncate(time.Microsecond)
	ok(e.ref.ScheduleReferral(e.ehr, &referralsv1.ScheduleReferralRequest{Name: referral.GetName(),
		IntakeAppointment: &referralsv1.IntakeAppointment{StartTime: timestamppb.New(first)}}))
	stacktest.Eventually(t, 20*time.Second, "reminders of the first appointment", func() bool { return len(intakeReminders("")) > 0 })
	// Each keeps the appointment it announces, for the recipient's
	// calendar.
	for _, r := range intakeReminders("") {
		if !r.GetEventStartTime().AsTime().Equal(first) {
			t.Fatalf("intake reminder %s: event start %v; want the appointment's %v", r.GetName(), r.GetEventStartTime(), first)
		}
	}
	second := time.Now().Add(4 * time.Second)
	ok(e.ref.ScheduleReferral(e.ehr, &referralsv1.ScheduleReferralRequest{Name: referral.GetName(),
		IntakeAppointment: &referralsv1.IntakeAppointment{StartTime: timestamppb.New(second)}}))
	stacktest.Eventually(t, 20*time.Second, "the first appointment's reminders cancelled", func() bool {
		return len(intakeReminders(" AND state = CANCELLED")) > 0
	})
	time.Sleep(time.Until(second.Add(500 * time.Millisecond))) // completed after it began
	ok(e.ref.CompleteReferral(e.ehr, &referralsv1.CompleteReferralRequest{Name: referral.GetName()}))
	res := e.result(iv.GetName())
	if res.Outcome != "ACCEPTED" || res.ChildResult != "ENTERED_TREATMENT" {
		t.Fatalf("result = %+v", res)
	}
	support := ok(e.ref.ListReferrals(e.counsel, &referralsv1.ListReferralsRequest{Parent: "clinics/north",
		Filter: fmt.Sprintf("intervention = %q AND service_kind = FAMILY_COUNSELING", iv.GetName())}))
	if len(support.GetReferrals()) != 1 || support.GetReferrals()[0].GetSubject().GetMemberId() != "mom" {
		t.Fatalf("family support referral = %v", support.GetReferrals())
	}
	intake := ok(e.iv.ListReminders(e.counsel, &interventionsv1.ListRemindersRequest{Parent: "clinics/north",
		Filter: fmt.Sprintf("kind = INTAKE_UPCOMING AND related_resource = %q", referral.GetName())}))
	if len(intake.GetReminders()) < 2 {
		t.Fatalf("intake reminders = %v: the loved one (allowed) and mom", intake.GetReminders())
	}
	// The family's record says the loved one is in treatment.
	e.awaitEngaged(f)
	e.recordHistory(ids.Intervention(iv.GetName()), "intervention", "accepted.json")
	e.recordHistory(ids.MATIntake(iv.GetName()), "matintake", "entered.json")
}

// A partial yes to outpatient care, without medication, is handed to the
// intake as a yes to MAT is: the place held for the meeting becomes an
// immediate outpatient referral at its program, no boundary follow-up
// starts, and the program's admission ends it in treatment.
func TestPartialYesToCareGoesToIntake(t *testing.T) {
	e := start(t)
	mat := e.directory() // offers outpatient care beside buprenorphine
	f, _ := e.family()
	iv := e.schedule(f, 7*time.Second)
	e.awaitHold(iv)
	stacktest.Eventually(t, 15*time.Second, "the meeting to start", func() bool { return time.Now().After(iv.GetStartTime().AsTime()) })
	ok(e.iv.RecordOutcome(e.counsel, &interventionsv1.RecordOutcomeRequest{Name: iv.GetName(),
		Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_PARTIALLY_ACCEPTED, AcceptedServices: []interventionsv1.ServiceKind{interventionsv1.ServiceKind_SERVICE_KIND_OUTPATIENT}}))
	referral := e.awaitImmediateReferral(iv)
	if referral.GetProgram() != mat.GetName() || referral.GetHold() == "" || referral.GetServiceKind() != referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT {
		t.Fatalf("referral %v; want outpatient care at the held program %s", referral, mat.GetName())
	}
	ok(e.ref.AcceptReferral(e.ehr, &referralsv1.TransitionReferralRequest{Name: referral.GetName()}))
	ok(e.ref.CompleteReferral(e.ehr, &referralsv1.CompleteReferralRequest{Name: referral.GetName()}))
	res := e.result(iv.GetName())
	if res.Outcome != "PARTIALLY_ACCEPTED" || res.Child != ids.MATIntake(iv.GetName()) || res.ChildResult != "ENTERED_TREATMENT" {
		t.Fatalf("result = %+v; want the intake, ended in treatment", res)
	}
	// No boundary follow-up: the loved one said yes.
	_, err := e.temporal.DescribeWorkflowExecution(context.Background(), ids.Boundary(f.GetName()), "")
	var nf *serviceerror.NotFound
	if !errors.As(err, &nf) {
		t.Fatalf("the boundary workflow after a yes to outpatient care: %v; want none", err)
	}
	e.awaitEngaged(f)
	e.recordHistory(ids.Intervention(iv.GetName()), "intervention", "partial-care.json")
	e.recordHistory(ids.MATIntake(iv.GetName()), "matintake", "partial-care.json")
}

// A loved one who uses stimulants, for which no medication here is a
// treatment, gets care: the place held ahead of the meeting is outpatient
// care, not the buprenorphine its program offers first, and a plain yes
// becomes an immediate outpatient referral there.
func TestStimulantsAreHeldCareNotMedication(t *testing.T) {
	e := start(t)
	mat := e.directory() // buprenorphine and outpatient care
	f, _ := e.family()
	f = ok(e.fam.GetFamily(e.counsel, &familiesv1.GetFamilyRequest{Name: f.GetName()})) // its screen and boundary changed it
	f.LovedOne.PrimarySubstance = familiesv1.Substance_SUBSTANCE_STIMULANTS
	f = ok(e.fam.UpdateFamily(e.counsel, &familiesv1.UpdateFamilyRequest{Family: f, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"loved_one"}}}))
	iv := e.schedule(f, 5*time.Second)
	hold := ok(e.ref.GetHold(e.counsel, &referralsv1.GetHoldRequest{Name: e.awaitHold(iv)}))
	if hold.GetProgram() != mat.GetName() || hold.GetServiceKind() != referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT {
		t.Fatalf("hold %v; want outpatient care at %s", hold, mat.GetName())
	}
	e.awaitMeeting(iv)
	ok(e.iv.RecordOutcome(e.counsel, &interventionsv1.RecordOutcomeRequest{Name: iv.GetName(), Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_ACCEPTED}))
	referral := e.awaitImmediateReferral(iv)
	if referral.GetHold() != hold.GetName() || referral.GetServiceKind() != referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT {
		t.Fatalf("referral %v; want the held outpatient place converted", referral)
	}
}

// The loved one says no at the meeting, then, during the follow-up, takes
// the outpatient place a counselor referred them to at a window of
// opportunity, and the program admits them on the spot: the boundary
// follow-up is cancelled there (its check-ins never come), the refused
// meeting's workflow ends with it, a firmer meeting drafted meanwhile is
// withdrawn, and the family's record says the loved one is in treatment.
func TestTreatmentEnteredAfterANoEndsTheFollowUp(t *testing.T) {
	// Check-ins a minute apart, so that the follow-up still runs when
	// the referral completes.
	e := start(t, func(s *activities.Settings) {
		s.CheckIns = []time.Duration{time.Minute, 2 * time.Minute, 3 * time.Minute}
	})
	mat := e.directory()
	f, _ := e.family()
	iv := e.schedule(f, 4*time.Second)
	e.awaitMeeting(iv)
	ok(e.iv.RecordOutcome(e.counsel, &interventionsv1.RecordOutcomeRequest{Name: iv.GetName(), Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_DECLINED}))
	stacktest.Eventually(t, 20*time.Second, "the boundary follow-up", func() bool {
		d, err := e.temporal.DescribeWorkflowExecution(context.Background(), ids.Boundary(f.GetName()), "")
		return err == nil && d.GetWorkflowExecutionInfo().GetStatus() == enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING
	})
	// A firmer meeting drafted meanwhile, as the follow-up proposes one.
	draft := ok(e.iv.CreateIntervention(e.counsel, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north", Intervention: &interventionsv1.Intervention{
		Family: f.GetName(), Counselor: "counselor-1", Level: interventionsv1.EscalationLevel_ESCALATION_LEVEL_LEVEL_2, PreviousIntervention: iv.GetName()}}))
	ref := ok(e.ref.CreateReferral(e.counsel, &referralsv1.CreateReferralRequest{Parent: "clinics/north", Referral: &referralsv1.Referral{
		Family: f.GetName(), Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE},
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT, Program: mat.GetName(), Urgency: referralsv1.Urgency_URGENCY_URGENT,
		Reason: "ready to start after a hard week"}}))
	// Made by hand without it, the referral counts days to treatment from
	// the family's first contact, read from the families service.
	if got := ref.GetFirstContactTime(); got == nil || !got.AsTime().Equal(f.GetFirstContactTime().AsTime()) {
		t.Fatalf("referral's first contact %v; want the family's %v", got, f.GetFirstContactTime())
	}
	ok(e.ref.AcceptReferral(e.ehr, &referralsv1.TransitionReferralRequest{Name: ref.GetName()}))
	ok(e.ref.CompleteReferral(e.ehr, &referralsv1.CompleteReferralRequest{Name: ref.GetName()}))
	if res := e.result(iv.GetName()); res.Outcome != "DECLINED" || res.ChildResult != "the boundary workflow was cancelled" {
		t.Fatalf("the refused meeting's result = %+v; want its follow-up cancelled", res)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var entered treatmententered.Result
	if err := e.temporal.GetWorkflow(ctx, ids.TreatmentEntered(ref.GetName()), "").Get(ctx, &entered); err != nil || !entered.Stopped || entered.Withdrawn != 1 {
		t.Fatalf("treatment entered: %+v, %v; want the follow-up stopped and the draft withdrawn", entered, err)
	}
	if got := ok(e.iv.GetIntervention(e.counsel, &interventionsv1.GetInterventionRequest{Name: draft.GetName()})); got.GetState() != interventionsv1.InterventionState_INTERVENTION_STATE_CANCELLED {
		t.Fatalf("the firmer meeting drafted before the loved one entered treatment: %v", got.GetState())
	}
	// Cancelled, not run to its end: its check-ins, a minute away, never
	// come.
	if d, err := e.temporal.DescribeWorkflowExecution(context.Background(), ids.Boundary(f.GetName()), ""); err != nil ||
		d.GetWorkflowExecutionInfo().GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_CANCELED {
		t.Fatalf("the boundary follow-up after the loved one entered treatment: %v, %v; want CANCELED", d.GetWorkflowExecutionInfo().GetStatus(), err)
	}
	if got := ok(e.fam.GetFamily(e.counsel, &familiesv1.GetFamilyRequest{Name: f.GetName()})); got.GetState() != familiesv1.FamilyState_FAMILY_STATE_ENGAGED_IN_TREATMENT {
		t.Fatalf("the family after the loved one entered treatment: %v", got.GetState())
	}
	e.recordHistory(ids.TreatmentEntered(ref.GetName()), "treatmententered", "stopped.json")
	// The follow-up cancelled, its reminders tidied, and the refused
	// meeting's workflow ending on that: paths the runs to an end miss.
	e.recordHistory(ids.Boundary(f.GetName()), "boundary", "cancelled.json")
	e.recordHistory(ids.Intervention(iv.GetName()), "intervention", "declined-follow-up-cancelled.json")
}

// The program cancels an accepted referral through the EHR (either side of
// the closed loop may): the MAT intake workflow offers the next program.
func TestProgramCancelsThroughTheEHR(t *testing.T) {
	nextProgramAfter(t, func(e *env, first *referralsv1.Referral) {
		ok(e.ref.AcceptReferral(e.ehr, &referralsv1.TransitionReferralRequest{Name: first.GetName()}))
		cancelled := ok(e.ref.CancelReferral(e.ehr, &referralsv1.TransitionReferralRequest{Name: first.GetName(), Reason: "no prescriber this week"}))
		if cancelled.GetState() != referralsv1.ReferralState_REFERRAL_STATE_CANCELLED {
			t.Fatalf("after the EHR's cancel: %v", cancelled.GetState())
		}
	})
}

// The counselor voids the intake's referral as entered in error (made at
// the wrong program, say): the dispatcher passes it to the MAT intake as a
// cancellation, and the intake offers the next program.
func TestReferralEnteredInErrorGoesToTheNextProgram(t *testing.T) {
	nextProgramAfter(t, func(e *env, first *referralsv1.Referral) {
		voided := ok(e.ref.MarkReferralEnteredInError(e.counsel, &referralsv1.TransitionReferralRequest{Name: first.GetName(),
			Reason: "made at a program the loved one cannot reach"}))
		if voided.GetState() != referralsv1.ReferralState_REFERRAL_STATE_ENTERED_IN_ERROR {
			t.Fatalf("after the void: %v", voided.GetState())
		}
	})
}

// The held program turns the yes away, at capacity: the intake refers the
// loved one to the next program, whose admission ends it in treatment.
// The replay tests keep this history, the intake's way past a rejection.
func TestRejectedAtCapacityGoesOnToTheNextProgram(t *testing.T) {
	e, iv, second := nextProgramAfter(t, func(e *env, first *referralsv1.Referral) {
		ok(e.ref.RejectReferral(e.ehr, &referralsv1.RejectReferralRequest{Name: first.GetName(),
			Rejection: &referralsv1.Rejection{Reason: referralsv1.RejectionReason_REJECTION_REASON_AT_CAPACITY}}))
	})
	ok(e.ref.AcceptReferral(e.ehr, &referralsv1.TransitionReferralRequest{Name: second.GetName()}))
	ok(e.ref.CompleteReferral(e.ehr, &referralsv1.CompleteReferralRequest{Name: second.GetName()}))
	if res := e.result(iv.GetName()); res.Outcome != "ACCEPTED" || res.ChildResult != "ENTERED_TREATMENT" {
		t.Fatalf("result = %+v; want the loved one in treatment at the next program", res)
	}
	e.recordHistory(ids.MATIntake(iv.GetName()), "matintake", "next-program.json")
}

// nextProgramAfter carries a yes to the held program's referral, closes
// it with end, and waits for the intake's referral to the next program,
// which it returns with the stack and the intervention.
func nextProgramAfter(t *testing.T, end func(e *env, first *referralsv1.Referral)) (*env, *interventionsv1.Intervention, *referralsv1.Referral) {
	e := start(t)
	mat := e.directory()
	p := ok(e.ref.CreateProgram(e.admin, &referralsv1.CreateProgramRequest{Parent: "clinics/north", Program: &referralsv1.Program{
		DisplayName: "Lakeside MAT", Services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE},
		SameDayIntake: true, PaymentsAccepted: []referralsv1.PaymentKind{referralsv1.PaymentKind_PAYMENT_KIND_MEDICAID}}}))
	next := ok(e.ref.ReportCapacity(e.admin, &referralsv1.ReportCapacityRequest{Name: p.GetName(), AvailableSlots: 2}))
	f, _ := e.family()
	iv := e.schedule(f, 7*time.Second)
	stacktest.Eventually(t, 15*time.Second, "the meeting to start", func() bool { return time.Now().After(iv.GetStartTime().AsTime()) })
	ok(e.iv.RecordOutcome(e.counsel, &interventionsv1.RecordOutcomeRequest{Name: iv.GetName(), Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_ACCEPTED}))
	referrals := func() []*referralsv1.Referral {
		return ok(e.ref.ListReferrals(e.counsel, &referralsv1.ListReferralsRequest{Parent: "clinics/north",
			Filter: fmt.Sprintf("intervention = %q AND service_kind = MAT_BUPRENORPHINE", iv.GetName())})).GetReferrals()
	}
	stacktest.Eventually(t, 20*time.Second, "the immediate referral", func() bool { return len(referrals()) == 1 })
	first := referrals()[0]
	if first.GetProgram() != mat.GetName() {
		t.Fatalf("first referral at %s, want the held program %s", first.GetProgram(), mat.GetName())
	}
	end(e, first)
	var second *referralsv1.Referral
	stacktest.Eventually(t, 20*time.Second, "a referral to the next program", func() bool {
		for _, r := range referrals() {
			if r.GetName() != first.GetName() {
				second = r
			}
		}
		return second != nil
	})
	if second.GetProgram() != next.GetName() || second.GetState() != referralsv1.ReferralState_REFERRAL_STATE_REQUESTED {
		t.Fatalf("next referral = %v; want a request to %s", second, next.GetName())
	}
	return e, iv, second
}

// Declined: the boundaries are reinforced, the family referred to support
// and the loved one to naloxone, check-ins scheduled, and the next level
// drafted. The outcome is recorded while Temporal is unreachable: it is
// saved, and reaches the workflow once Temporal is back.
func TestDeclinedReinforcesBoundariesEvenAcrossATemporalOutage(t *testing.T) {
	e := start(t)
	e.directory()
	f, b := e.family()
	iv := e.schedule(f, 4*time.Second)
	e.awaitMeeting(iv)

	e.proxy.Cut()
	ok(e.iv.RecordOutcome(e.counsel, &interventionsv1.RecordOutcomeRequest{Name: iv.GetName(), Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_DECLINED}))
	time.Sleep(1500 * time.Millisecond) // the relay tries and fails meanwhile
	q, err := e.temporal.QueryWorkflow(context.Background(), ids.Intervention(iv.GetName()), "", intervention.QueryStatus)
	if err != nil {
		t.Fatal(err)
	}
	var st intervention.Status
	if err := q.Get(&st); err != nil || st.Outcome != "" {
		t.Fatalf("the outcome reached the workflow while Temporal was unreachable: %+v %v", st, err)
	}
	e.proxy.Restore()

	res := e.result(iv.GetName())
	if res.Outcome != "DECLINED" || res.Child != ids.Boundary(f.GetName()) {
		t.Fatalf("result = %+v", res)
	}
	got := ok(e.fam.GetBoundary(e.counsel, &familiesv1.GetBoundaryRequest{Name: b.GetName()}))
	if got.GetState() != familiesv1.BoundaryState_BOUNDARY_STATE_REINFORCED || got.GetReinforcementCount() != 1 || got.GetHistory()[len(got.GetHistory())-1].GetActor() != "worker" {
		t.Fatalf("boundary = %v", got)
	}
	for _, kind := range []string{"FAMILY_COUNSELING", "FAMILY_SUPPORT_GROUP", "INDIVIDUAL_COUNSELING", "HARM_REDUCTION_NALOXONE"} {
		resp := ok(e.ref.ListReferrals(e.counsel, &referralsv1.ListReferralsRequest{Parent: "clinics/north",
			Filter: fmt.Sprintf("family = %q AND service_kind = %s", f.GetName(), kind)}))
		if len(resp.GetReferrals()) != 1 {
			t.Fatalf("%s referrals = %v", kind, resp.GetReferrals())
		}
	}
	checkIns := ok(e.iv.ListReminders(e.counsel, &interventionsv1.ListRemindersRequest{Parent: "clinics/north",
		Filter: fmt.Sprintf("kind = CHECK_IN AND related_resource = %q", iv.GetName())}))
	if len(checkIns.GetReminders()) != 3 {
		t.Fatalf("check-ins = %d, want 3", len(checkIns.GetReminders()))
	}
	drafts := ok(e.iv.ListInterventions(e.counsel, &interventionsv1.ListInterventionsRequest{Parent: "clinics/north",
		Filter: fmt.Sprintf("family = %q AND state = DRAFT AND level = LEVEL_2", f.GetName())}))
	if len(drafts.GetInterventions()) != 1 || drafts.GetInterventions()[0].GetPreviousIntervention() != iv.GetName() {
		t.Fatalf("level-2 draft = %v", drafts.GetInterventions())
	}
	// The held slot went back to the program.
	progs := ok(e.ref.ListPrograms(e.counsel, &referralsv1.ListProgramsRequest{Parent: "clinics/north", Filter: "service = MAT_BUPRENORPHINE"}))
	if c := progs.GetPrograms()[0].GetCapacity(); c.GetAvailableSlots() != 3 || c.GetHeldSlots() != 0 {
		t.Fatalf("capacity after a refusal = %v", c)
	}
	e.recordHistory(ids.Intervention(iv.GetName()), "intervention", "declined.json")
	e.recordHistory(ids.Boundary(f.GetName()), "boundary", "declined.json")
}

// An overdose recorded right after a refusal: the family's outbox may
// deliver its signal before the intervention workflow has started the
// boundary workflow (the boundary test covers that order), which must
// answer it all the same, and once whichever way it learns of it first:
// here it reads the overdose through the families service at its start
// and then gets the signal too. Both changes are made while Temporal is
// unreachable, so that both events wait and go out together.
func TestOverdoseRightAfterARefusalIsAnswered(t *testing.T) {
	e := start(t)
	e.directory()
	f, _ := e.family()
	iv := e.schedule(f, 4*time.Second)
	e.awaitMeeting(iv)
	e.proxy.Cut()
	ok(e.iv.RecordOutcome(e.counsel, &interventionsv1.RecordOutcomeRequest{Name: iv.GetName(), Kind: interventionsv1.OutcomeKind_OUTCOME_KIND_DECLINED}))
	sign := ok(e.fam.CreateWarningSign(e.counsel, &familiesv1.CreateWarningSignRequest{Parent: f.GetName(),
		WarningSign: &familiesv1.WarningSign{Kind: familiesv1.WarningSignKind_WARNING_SIGN_KIND_OVERDOSE}}))
	e.proxy.Restore()
	// The overdose brings the next check-in within a day, so the workflows
	// do not end here; the alert is what shows the answer.
	alerts := func() int {
		return len(ok(e.iv.ListReminders(e.counsel, &interventionsv1.ListRemindersRequest{Parent: "clinics/north",
			Filter: fmt.Sprintf("kind = OVERDOSE_ALERT AND related_resource = %q", sign.GetName())})).GetReminders())
	}
	stacktest.Eventually(t, 20*time.Second, "the overdose alert", func() bool { return alerts() > 0 })
	// If the overdose came before the boundary workflow ran, the workflow
	// for overdoses no boundary answers started; after its grace it must
	// find the boundary's alert and end without one of its own.
	stacktest.Eventually(t, 20*time.Second, "the overdose workflow, if any, to end", func() bool {
		d, err := e.temporal.DescribeWorkflowExecution(context.Background(), ids.Overdose(sign.GetName()), "")
		var nf *serviceerror.NotFound
		return errors.As(err, &nf) || (err == nil && d.GetWorkflowExecutionInfo().GetStatus() != enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING)
	})
	time.Sleep(time.Second) // a second answer would come within the relays' next polls
	if n := alerts(); n != 1 {
		t.Fatalf("overdose alerts = %d, want 1", n)
	}
}

// An overdose recorded while no boundary workflow watches the family (here
// before any intervention) reaches the family's counselor after the grace,
// once, and refers the loved one to harm reduction; a failed delivery of
// the alert is sent again.
func TestOverdoseWithoutABoundaryAlertsTheCounselor(t *testing.T) {
	e := start(t)
	e.directory()
	f, _ := e.family()
	sign := ok(e.fam.CreateWarningSign(e.counsel, &familiesv1.CreateWarningSignRequest{Parent: f.GetName(),
		WarningSign: &familiesv1.WarningSign{Kind: familiesv1.WarningSignKind_WARNING_SIGN_KIND_OVERDOSE}}))
	alerts := func() []*interventionsv1.Reminder {
		return ok(e.iv.ListReminders(e.worker, &interventionsv1.ListRemindersRequest{Parent: "clinics/north",
			Filter: fmt.Sprintf("kind = OVERDOSE_ALERT AND related_resource = %q", sign.GetName())})).GetReminders()
	}
	stacktest.Eventually(t, 20*time.Second, "the overdose alert", func() bool { return len(alerts()) > 0 })
	got := alerts()
	a := got[0]
	if len(got) != 1 || a.GetRecipient().GetKind() != interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR ||
		a.GetRecipient().GetId() != "counselor-1" || a.GetOriginWorkflow() != ids.Overdose(sign.GetName()) ||
		strings.Contains(strings.ToLower(a.GetMessage()), "overdose") {
		t.Fatalf("alerts = %v", got)
	}
	if since := a.GetCreateTime().AsTime().Sub(sign.GetCreateTime().AsTime()); since < stacktest.Fast().OverdoseGrace {
		t.Fatalf("alerted %v after the overdose, before the grace of %v", since, stacktest.Fast().OverdoseGrace)
	}
	// The automation fails to deliver it: it goes out again.
	claimed := ok(e.iv.ClaimReminder(e.reminder, &interventionsv1.ClaimReminderRequest{Name: a.GetName(), Claimant: "w1", LeaseDuration: durationpb.New(time.Minute)}))
	ok(e.iv.CompleteReminder(e.reminder, &interventionsv1.CompleteReminderRequest{Name: claimed.GetName(), Claimant: "w1",
		Result: interventionsv1.DeliveryResult_DELIVERY_RESULT_FAILED, Reason: "device offline"}))
	stacktest.Eventually(t, 20*time.Second, "the alert sent again", func() bool { return len(alerts()) == 2 })

	var res overdose.Result
	if err := e.temporal.GetWorkflow(context.Background(), ids.Overdose(sign.GetName()), "").Get(context.Background(), &res); err != nil {
		t.Fatal(err)
	}
	if res.Reminder != a.GetName() || res.AnsweredBefore {
		t.Fatalf("result = %+v", res)
	}
	// Harm reduction now: with the alert, the loved one is referred with
	// immediate urgency.
	hr := ok(e.ref.ListReferrals(e.counsel, &referralsv1.ListReferralsRequest{Parent: "clinics/north",
		Filter: fmt.Sprintf("family = %q AND service_kind = HARM_REDUCTION_NALOXONE", f.GetName())})).GetReferrals()
	if len(hr) != 1 || len(res.Referrals) == 0 || hr[0].GetUrgency() != referralsv1.Urgency_URGENCY_IMMEDIATE || hr[0].GetName() != res.Referrals[0] ||
		hr[0].GetSubject().GetKind() != referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE || hr[0].GetReason() != overdose.HarmReductionReason {
		t.Fatalf("harm reduction referrals = %v (workflow made %v)", hr, res.Referrals)
	}
	if n := len(alerts()); n != 2 {
		t.Fatalf("alerts = %d, want the first and its resend", n)
	}
	e.recordHistory(ids.Overdose(sign.GetName()), "overdose", "alerted.json")
}

// An overdose recorded in error and retracted within the grace is not
// answered: no alert, no harm-reduction referral, and the family is urgent
// no more.
func TestRetractedOverdoseIsNotAnswered(t *testing.T) {
	e := start(t)
	e.directory()
	f, _ := e.family()
	sign := ok(e.fam.CreateWarningSign(e.counsel, &familiesv1.CreateWarningSignRequest{Parent: f.GetName(),
		WarningSign: &familiesv1.WarningSign{Kind: familiesv1.WarningSignKind_WARNING_SIGN_KIND_OVERDOSE}}))
	ok(e.fam.RetractWarningSign(e.counsel, &familiesv1.RetractWarningSignRequest{Name: sign.GetName(), Reason: "recorded for the wrong family"}))
	// The overdose's workflow still starts (its event went out); after the
	// grace it finds nothing standing to answer.
	var res overdose.Result
	stacktest.Eventually(t, 20*time.Second, "the overdose workflow to end", func() bool {
		return e.temporal.GetWorkflow(context.Background(), ids.Overdose(sign.GetName()), "").Get(context.Background(), &res) == nil
	})
	if !res.AnsweredBefore || res.Reminder != "" || len(res.Referrals) != 0 {
		t.Fatalf("result = %+v; want nothing done", res)
	}
	alerts := ok(e.iv.ListReminders(e.counsel, &interventionsv1.ListRemindersRequest{Parent: "clinics/north",
		Filter: fmt.Sprintf("kind = OVERDOSE_ALERT AND related_resource = %q", sign.GetName())})).GetReminders()
	hr := ok(e.ref.ListReferrals(e.counsel, &referralsv1.ListReferralsRequest{Parent: "clinics/north",
		Filter: fmt.Sprintf("family = %q AND service_kind = HARM_REDUCTION_NALOXONE", f.GetName())})).GetReferrals()
	if len(alerts) != 0 || len(hr) != 0 {
		t.Fatalf("alerts %v, harm-reduction referrals %v; want none for a retracted overdose", alerts, hr)
	}
	if ok(e.fam.GetFamily(e.counsel, &familiesv1.GetFamilyRequest{Name: f.GetName()})).GetUrgent() {
		t.Fatal("the family is still urgent after its only overdose was retracted")
	}
}

// Cancelled after the hold was taken: the workflow gives the slot back,
// cancels the reminders still pending and ends CANCELLED.
func TestCancelledReleasesTheHold(t *testing.T) {
	e := start(t)
	e.directory()
	f, _ := e.family()
	iv := e.schedule(f, 7*time.Second)
	hold := e.awaitHold(iv)
	// A change other than the time reaches the running workflow, which
	// reads the intervention again.
	ok(e.iv.UpdateIntervention(e.counsel, &interventionsv1.UpdateInterventionRequest{
		Intervention: &interventionsv1.Intervention{Name: iv.GetName(), Level: interventionsv1.EscalationLevel_ESCALATION_LEVEL_LEVEL_2},
		UpdateMask:   &fieldmaskpb.FieldMask{Paths: []string{"level"}}}))
	stacktest.Eventually(t, 15*time.Second, "the workflow to take the change", func() bool {
		return e.acceptedUpdate(ids.Intervention(iv.GetName()), intervention.UpdateReplan)
	})
	ok(e.iv.CancelIntervention(e.counsel, &interventionsv1.CancelInterventionRequest{Name: iv.GetName(), Reason: "family asked to wait"}))
	if res := e.result(iv.GetName()); res.Outcome != "CANCELLED" {
		t.Fatalf("result = %+v", res)
	}
	if got := ok(e.ref.GetHold(e.counsel, &referralsv1.GetHoldRequest{Name: hold})); got.GetState() != referralsv1.HoldState_HOLD_STATE_RELEASED {
		t.Fatalf("hold %s is %v, want released", hold, got.GetState())
	}
	pending := ok(e.iv.ListReminders(e.reminder, &interventionsv1.ListRemindersRequest{Parent: "clinics/north",
		Filter: fmt.Sprintf("state = SCHEDULED AND related_resource = %q", iv.GetName())}))
	if len(pending.GetReminders()) != 0 {
		t.Fatalf("reminders still pending after the cancellation: %v", pending.GetReminders())
	}
	e.recordHistory(ids.Intervention(iv.GetName()), "intervention", "cancelled.json")
}

// A place held by hand for a meeting still a draft goes back when the
// draft is cancelled or deleted: a draft has no workflow of its own, so
// the event starts the CancelledHolds workflow, which releases every live
// hold of the meeting (a service other than MAT too).
func TestCancelledDraftGivesBackItsHolds(t *testing.T) {
	e := start(t)
	mat := e.directory()
	f, _ := e.family()
	draft := func() (*interventionsv1.Intervention, *referralsv1.Hold) {
		iv := ok(e.iv.CreateIntervention(e.counsel, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north",
			Intervention: &interventionsv1.Intervention{Family: f.GetName(), Counselor: "counselor-1"}}))
		h := ok(e.ref.HoldSlot(e.counsel, &referralsv1.HoldSlotRequest{Program: mat.GetName(), Family: f.GetName(),
			Intervention: iv.GetName(), ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT}))
		return iv, h
	}
	cancelled, h1 := draft()
	deleted, h2 := draft()
	ok(e.iv.CancelIntervention(e.counsel, &interventionsv1.CancelInterventionRequest{Name: cancelled.GetName(), Reason: "planned twice"}))
	ok(e.iv.DeleteIntervention(e.counsel, &interventionsv1.DeleteInterventionRequest{Name: deleted.GetName()}))
	for _, h := range []*referralsv1.Hold{h1, h2} {
		stacktest.Eventually(t, 30*time.Second, "the draft's hold to go back", func() bool {
			return ok(e.ref.GetHold(e.counsel, &referralsv1.GetHoldRequest{Name: h.GetName()})).GetState() == referralsv1.HoldState_HOLD_STATE_RELEASED
		})
	}
	if p := ok(e.ref.GetProgram(e.counsel, &referralsv1.GetProgramRequest{Name: mat.GetName()})); p.GetCapacity().GetHeldSlots() != 0 ||
		p.GetCapacity().GetAvailableSlots() != 3 {
		t.Fatalf("capacity after both drafts went: %v; want all 3 slots free again", p.GetCapacity())
	}
	var res cancelledholds.Result
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.temporal.GetWorkflow(ctx, ids.CancelledHolds(cancelled.GetName()), "").Get(ctx, &res); err != nil || res.Released != 1 {
		t.Fatalf("CancelledHolds workflow: %+v, %v; want one hold released", res, err)
	}
	e.recordHistory(ids.CancelledHolds(cancelled.GetName()), "cancelledholds", "cancelled-draft.json")
}

// A family deleted by its administrator: the FamilyDeleted workflow
// cancels its scheduled meeting (whose workflow ends CANCELLED) and its
// draft, and no reminder stays pending for its people.
func TestDeletedFamilyStopsWhatRunsForIt(t *testing.T) {
	e := start(t)
	e.directory()
	f, _ := e.family()
	iv := e.schedule(f, time.Hour)
	// Deleted once the meeting's workflow has done its first steps and
	// waits (no workflow task for three polls in a row): a workflow caught
	// reading the family as it is deleted fails on NOT_FOUND instead (a gap
	// the closing note records).
	idle := 0
	stacktest.Eventually(t, 20*time.Second, "the meeting's workflow to wait for the meeting", func() bool {
		d, err := e.temporal.DescribeWorkflowExecution(context.Background(), ids.Intervention(iv.GetName()), "")
		if err != nil || d.GetPendingWorkflowTask() != nil {
			idle = 0
			return false
		}
		idle++
		return idle >= 3
	})
	draft := ok(e.iv.CreateIntervention(e.counsel, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north",
		Intervention: &interventionsv1.Intervention{Family: f.GetName(), Counselor: "counselor-1"}}))
	ok(e.fam.DeleteFamily(e.admin, &familiesv1.DeleteFamilyRequest{Name: f.GetName()}))

	var res familydeleted.Result
	stacktest.Eventually(t, 30*time.Second, "the FamilyDeleted workflow", func() bool {
		_, err := e.temporal.DescribeWorkflowExecution(context.Background(), ids.FamilyDeleted(f.GetName()), "")
		return err == nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := e.temporal.GetWorkflow(ctx, ids.FamilyDeleted(f.GetName()), "").Get(ctx, &res); err != nil {
		t.Fatalf("FamilyDeleted workflow: %v", err)
	}
	if res.Interventions != 2 || res.BoundaryCancelled {
		t.Fatalf("result = %+v; want the meeting and the draft cancelled, no boundary workflow", res)
	}
	if r := e.result(iv.GetName()); r.Outcome != "CANCELLED" {
		t.Fatalf("the meeting's workflow = %+v; want CANCELLED", r)
	}
	for _, name := range []string{iv.GetName(), draft.GetName()} {
		if got := ok(e.iv.GetIntervention(e.admin, &interventionsv1.GetInterventionRequest{Name: name})); got.GetState() != interventionsv1.InterventionState_INTERVENTION_STATE_CANCELLED {
			t.Fatalf("%s is %v; want CANCELLED", name, got.GetState())
		}
	}
	pending := ok(e.iv.ListReminders(e.reminder, &interventionsv1.ListRemindersRequest{Parent: "clinics/north",
		Filter: fmt.Sprintf("recipient_family = %q AND state = SCHEDULED", f.GetName())}))
	if len(pending.GetReminders()) != 0 {
		t.Fatalf("reminders still pending for the deleted family: %v", pending.GetReminders())
	}
	e.recordHistory(ids.FamilyDeleted(f.GetName()), "familydeleted", "deleted.json")
}

// A family whose case is closed: the FamilyClosed workflow cancels its
// meeting to come (whose workflow ends) and its draft, and the reminders
// pending for its people, giving the closing as the reason. A meeting
// that has begun stays, for its outcome to be recorded.
func TestClosedFamilyStopsWhatRunsForIt(t *testing.T) {
	e := start(t)
	e.directory()
	f, _ := e.family()
	begun := e.schedule(f, 3*time.Second)
	iv := e.schedule(f, time.Hour)
	draft := ok(e.iv.CreateIntervention(e.counsel, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north",
		Intervention: &interventionsv1.Intervention{Family: f.GetName(), Counselor: "counselor-1"}}))
	checkIn := ok(e.iv.CreateReminder(e.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
		Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
			Family: f.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS},
		DueTime: timestamppb.New(time.Now().Add(24 * time.Hour)), Kind: interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN, Message: "How did this week go?"}}))
	time.Sleep(time.Until(begun.GetStartTime().AsTime()) + 200*time.Millisecond)
	ok(e.fam.UpdateFamily(e.counsel, &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: f.GetName(), State: familiesv1.FamilyState_FAMILY_STATE_CLOSED},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"state"}}}))

	var id string
	stacktest.Eventually(t, 30*time.Second, "the FamilyClosed workflow", func() bool {
		resp, err := e.temporal.ListWorkflow(context.Background(), &workflowservice.ListWorkflowExecutionsRequest{Query: "WorkflowType = 'FamilyClosed'"})
		if err != nil || len(resp.GetExecutions()) == 0 {
			return false
		}
		id = resp.GetExecutions()[0].GetExecution().GetWorkflowId()
		return true
	})
	if !strings.HasPrefix(id, "family-closed/"+f.GetName()+"/") {
		t.Fatalf("FamilyClosed workflow id %q", id)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var res familydeleted.Result
	if err := e.temporal.GetWorkflow(ctx, id, "").Get(ctx, &res); err != nil {
		t.Fatalf("FamilyClosed workflow: %v", err)
	}
	if res.Interventions != 2 || res.Reopened || res.Reminders < 1 {
		// The meeting to come and the draft; not the one begun.
		t.Fatalf("result = %+v; want the meeting, the draft and the check-in cancelled", res)
	}
	if r := e.result(iv.GetName()); r.Outcome != "CANCELLED" {
		t.Fatalf("the meeting's workflow = %+v; want CANCELLED", r)
	}
	for _, name := range []string{iv.GetName(), draft.GetName()} {
		got := ok(e.iv.GetIntervention(e.admin, &interventionsv1.GetInterventionRequest{Name: name}))
		if got.GetState() != interventionsv1.InterventionState_INTERVENTION_STATE_CANCELLED || !strings.Contains(got.GetCancelReason(), "case was closed") {
			t.Fatalf("%s is %v (%q); want CANCELLED for the closing", name, got.GetState(), got.GetCancelReason())
		}
	}
	if got := ok(e.iv.GetIntervention(e.admin, &interventionsv1.GetInterventionRequest{Name: begun.GetName()})); got.GetState() != interventionsv1.InterventionState_INTERVENTION_STATE_SCHEDULED {
		t.Fatalf("the meeting that had begun is %v (%q); want it SCHEDULED, awaiting its outcome", got.GetState(), got.GetCancelReason())
	}
	if got := ok(e.iv.GetReminder(e.worker, &interventionsv1.GetReminderRequest{Name: checkIn.GetName()})); got.GetState() != interventionsv1.ReminderState_REMINDER_STATE_CANCELLED {
		t.Fatalf("the check-in is %v; want CANCELLED", got.GetState())
	}
	pending := ok(e.iv.ListReminders(e.reminder, &interventionsv1.ListRemindersRequest{Parent: "clinics/north",
		Filter: fmt.Sprintf("recipient_family = %q AND state = SCHEDULED", f.GetName())}))
	if len(pending.GetReminders()) != 0 {
		t.Fatalf("reminders still pending for the closed family: %v", pending.GetReminders())
	}
	e.recordHistory(id, "familydeleted", "closed.json")
}

// A member who withdraws consent to be contacted gets none of the
// reminders already made for them (one waiting out quiet hours, say): the
// change's event starts the ContactWithdrawn workflow, which cancels them;
// the loved one's and the counselor's stay.
func TestWithdrawnConsentCancelsPendingReminders(t *testing.T) {
	e := start(t)
	f, _ := e.family()
	tomorrow := timestamppb.New(time.Now().Add(24 * time.Hour))
	remind := func(rc *interventionsv1.Recipient) *interventionsv1.Reminder {
		return ok(e.iv.CreateReminder(e.worker, &interventionsv1.CreateReminderRequest{Parent: "clinics/north", Reminder: &interventionsv1.Reminder{
			Recipient: rc, DueTime: tomorrow, Kind: interventionsv1.ReminderKind_REMINDER_KIND_CHECK_IN, Message: "How did this week go?"}}))
	}
	member := remind(&interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, Id: "mom",
		Family: f.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS})
	lovedOne := remind(&interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_LOVED_ONE,
		Family: f.GetName(), Channel: interventionsv1.ChannelKind_CHANNEL_KIND_SMS})
	staff := remind(&interventionsv1.Recipient{Kind: interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR, Id: "counselor-1",
		Channel: interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP})

	cur := ok(e.fam.GetFamily(e.counsel, &familiesv1.GetFamilyRequest{Name: f.GetName()}))
	cur.Members[0].ConsentToContact = false
	ok(e.fam.UpdateFamily(e.counsel, &familiesv1.UpdateFamilyRequest{Family: cur, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"members"}}}))

	state := func(r *interventionsv1.Reminder) *interventionsv1.Reminder {
		return ok(e.iv.GetReminder(e.worker, &interventionsv1.GetReminderRequest{Name: r.GetName()}))
	}
	stacktest.Eventually(t, 30*time.Second, "the member's reminder cancelled", func() bool {
		return state(member).GetState() == interventionsv1.ReminderState_REMINDER_STATE_CANCELLED
	})
	if got := state(member).GetCancelReason(); got != "The recipient may no longer be contacted." {
		t.Fatalf("cancel reason %q", got)
	}
	for _, r := range []*interventionsv1.Reminder{lovedOne, staff} {
		if got := state(r); got.GetState() != interventionsv1.ReminderState_REMINDER_STATE_SCHEDULED {
			t.Fatalf("%v's reminder is %v; want it still SCHEDULED", got.GetRecipient().GetKind(), got.GetState())
		}
	}
	resp, err := e.temporal.ListWorkflow(context.Background(), &workflowservice.ListWorkflowExecutionsRequest{
		Query: "WorkflowType = 'ContactWithdrawn'"})
	if err != nil || len(resp.GetExecutions()) != 1 {
		t.Fatalf("ContactWithdrawn workflows: %v, %v; want one", resp.GetExecutions(), err)
	}
	id := resp.GetExecutions()[0].GetExecution().GetWorkflowId()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var res contactwithdrawn.Result
	if err := e.temporal.GetWorkflow(ctx, id, "").Get(ctx, &res); err != nil || res.Reminders != 1 {
		t.Fatalf("ContactWithdrawn = %+v, %v; want one reminder cancelled", res, err)
	}
	e.recordHistory(id, "contactwithdrawn", "withdrawn.json")
}
