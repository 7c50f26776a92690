package consentgate_test

import (
	"testing"

	"google.golang.org/protobuf/types/known/timestamppb"

	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
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
