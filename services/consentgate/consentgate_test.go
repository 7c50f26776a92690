package consentgate_test

import (
	"context"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/consentgate"
)

// An outside system's appointment tells whether the loved one came, not
// what they decided about treatment.
func TestAppointmentOutcomeIsAttendanceOnly(t *testing.T) {
	at := timestamppb.Now()
	for kind, shown := range map[interventionsv1.OutcomeKind]bool{
		interventionsv1.OutcomeKind_OUTCOME_KIND_ACCEPTED:           false,
		interventionsv1.OutcomeKind_OUTCOME_KIND_PARTIALLY_ACCEPTED: false,
		interventionsv1.OutcomeKind_OUTCOME_KIND_DECLINED:           false,
		interventionsv1.OutcomeKind_OUTCOME_KIND_POSTPONED:          false,
		interventionsv1.OutcomeKind_OUTCOME_KIND_DID_NOT_ATTEND:     true,
	} {
		a := consentgate.Appointment(&interventionsv1.Intervention{Name: "clinics/north/interventions/i1",
			State:   interventionsv1.InterventionState_INTERVENTION_STATE_COMPLETED,
			Outcome: &interventionsv1.Outcome{Kind: kind, Notes: "said he would leave", RecordTime: at}})
		if got := a.GetOutcome() != nil; got != shown {
			t.Errorf("%v: outcome shown %v, want %v", kind, got, shown)
		}
		if a.GetOutcome().GetNotes() != "" || (shown && (a.GetOutcome().GetKind() != kind || !a.GetOutcome().GetRecordTime().AsTime().Equal(at.AsTime()))) {
			t.Errorf("%v: outcome %v", kind, a.GetOutcome())
		}
		if a.GetState() != interventionsv1.InterventionState_INTERVENTION_STATE_COMPLETED {
			t.Errorf("%v: state %v, want the meeting's", kind, a.GetState())
		}
	}
}

// discloser answers every disclosure with err.
type discloser struct {
	consentgate.Discloser
	err error
}

func (d discloser) CreateDisclosure(context.Context, *familiesv1.CreateDisclosureRequest, ...grpc.CallOption) (*familiesv1.Disclosure, error) {
	return nil, d.err
}

// A refusal reaches the caller as the families service gave it; any other
// failure is wrapped, so that the server answers in words of its own and
// not with the network's (an address, a transport error).
func TestOnlyRefusalsPassThrough(t *testing.T) {
	ehr := auth.WithPrincipal(context.Background(), auth.Principal{Subject: "ehr", Clinic: "north", Roles: []auth.Role{auth.RoleEHR}})
	refusal, err := status.New(codes.FailedPrecondition, "no consent").WithDetails(&errdetails.ErrorInfo{Reason: consentgate.ReasonConsentRequired})
	if err != nil {
		t.Fatal(err)
	}
	got := (&consentgate.Gate{Families: discloser{err: refusal.Err()}}).Check(ehr, consentgate.LovedOne("clinics/north/families/f1"), "clinics/north/referrals/r1",
		familiesv1.InformationKind_INFORMATION_KIND_REFERRALS, "")
	if _, direct := got.(interface{ GRPCStatus() *status.Status }); !direct || !consentgate.Refused(got) {
		t.Fatalf("a refusal came back as %v; want the families service's status itself", got)
	}
	down := status.Error(codes.Unavailable, `connection error: desc = "transport: dial tcp 10.0.3.7:9443: connect: connection refused"`)
	got = (&consentgate.Gate{Families: discloser{err: down}}).Check(ehr, consentgate.LovedOne("clinics/north/families/f1"), "clinics/north/referrals/r1",
		familiesv1.InformationKind_INFORMATION_KIND_REFERRALS, "")
	if _, direct := got.(interface{ GRPCStatus() *status.Status }); direct || status.Code(got) != codes.Unavailable {
		t.Fatalf("an unreachable families service came back as %T %v; want it wrapped, still UNAVAILABLE", got, got)
	}
}

// The record a reminder concerns is cut to its top-level one.
func TestTopResource(t *testing.T) {
	for in, want := range map[string]string{
		"clinics/c/families/f/warningSigns/w": "clinics/c/families/f",
		"clinics/c/families/f":                "clinics/c/families/f",
		"clinics/c/interventions/i":           "clinics/c/interventions/i",
		"clinics/c":                           "clinics/c",
		"":                                    "",
	} {
		if got := consentgate.TopResource(in); got != want {
			t.Errorf("TopResource(%q) = %q; want %q", in, got, want)
		}
	}
}
