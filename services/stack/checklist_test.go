package stack_test

import (
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
)

// The hold a counselor names on the checklist is checked with the
// referrals service: it must keep a place for this meeting of this family,
// the hold the workflows convert on a yes and give back otherwise. Any
// other is refused as a field violation and changes nothing.
func TestChecklistHoldIsThisMeetingsPlace(t *testing.T) {
	e := start(t)
	mat := ok(e.ref.CreateProgram(e.admin, &referralsv1.CreateProgramRequest{Parent: "clinics/north", Program: &referralsv1.Program{
		DisplayName: "Hillside MAT", Services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE}}}))
	ok(e.ref.ReportCapacity(e.admin, &referralsv1.ReportCapacityRequest{Name: mat.GetName(), AvailableSlots: 10}))
	f, _ := e.family()
	other := ok(e.fam.CreateFamily(e.counsel, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: &familiesv1.Family{
		LovedOne: &familiesv1.LovedOne{GivenName: "Jo"}, Counselor: "counselor-1"}}))
	// Drafts: no workflow of their own takes or ticks a hold.
	draft := func() *interventionsv1.Intervention {
		return ok(e.iv.CreateIntervention(e.counsel, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north",
			Intervention: &interventionsv1.Intervention{Family: f.GetName(), Counselor: "counselor-1"}}))
	}
	iv, another := draft(), draft()
	hold := func(family, intervention string) string {
		return ok(e.ref.HoldSlot(e.counsel, &referralsv1.HoldSlotRequest{Program: mat.GetName(), Family: family,
			Intervention: intervention, ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE})).GetName()
	}
	released := hold(f.GetName(), iv.GetName())
	ok(e.ref.ReleaseHold(e.counsel, &referralsv1.ReleaseHoldRequest{Name: released, Reason: "test"}))
	for _, c := range []struct{ what, hold, want string }{
		{"a hold that does not exist", "clinics/north/holds/00000000-0000-4000-8000-000000000000", "no such hold"},
		{"another family's hold", hold(other.GetName(), ""), "another family"},
		{"a hold of the family for no meeting", hold(f.GetName(), ""), "HoldSlot naming " + iv.GetName()},
		{"a hold for another meeting", hold(f.GetName(), another.GetName()), "HoldSlot naming " + iv.GetName()},
		{"a hold given back", released, "is RELEASED"},
	} {
		_, err := e.iv.UpdateChecklistItem(e.counsel, &interventionsv1.UpdateChecklistItemRequest{Name: iv.GetName(),
			Kind: interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_TREATMENT_OPTION_HELD, Done: true, Hold: c.hold})
		st := status.Convert(err)
		var field string
		for _, d := range st.Details() {
			if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) == 1 {
				field = br.GetFieldViolations()[0].GetField()
			}
		}
		if st.Code() != codes.InvalidArgument || field != "hold" || !strings.Contains(st.Message(), c.want) {
			t.Errorf("%s: %v (field %q); want INVALID_ARGUMENT on hold saying %q", c.what, err, field, c.want)
		}
	}
	if got := ok(e.iv.GetIntervention(e.counsel, &interventionsv1.GetInterventionRequest{Name: iv.GetName()})); got.GetEtag() != iv.GetEtag() {
		t.Fatalf("refused ticks changed the intervention: %v", got.GetChecklist())
	}
	good := hold(f.GetName(), iv.GetName())
	got := ok(e.iv.UpdateChecklistItem(e.counsel, &interventionsv1.UpdateChecklistItemRequest{Name: iv.GetName(),
		Kind: interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_TREATMENT_OPTION_HELD, Done: true, Hold: good}))
	for _, it := range got.GetChecklist() {
		if it.GetKind() == interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_TREATMENT_OPTION_HELD && (!it.GetDone() || it.GetHold() != good) {
			t.Fatalf("the item after a tick with this meeting's hold: %v", it)
		}
	}
}
