package interventions_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/consentgate"
)

// The EHR reads appointments only under the patient's consent, checked by
// the real families service and recorded in its accounting.
func TestEHRReadsNeedConsent(t *testing.T) {
	t.Parallel()
	f := setup(t)
	iv := f.draft(t, time.Now().Add(72*time.Hour))
	ehr := f.env.As("north", "ehr-1", auth.RoleEHR)

	_, err := f.client.GetIntervention(ehr, &interventionsv1.GetInterventionRequest{Name: iv.GetName()})
	st := wantCode(t, err, codes.FailedPrecondition)
	if reason(st) != consentgate.ReasonConsentRequired {
		t.Fatalf("refusal reason %q", reason(st))
	}
	list, err := f.client.ListInterventions(ehr, &interventionsv1.ListInterventionsRequest{Parent: "clinics/north"})
	if err != nil || len(list.GetInterventions()) != 0 {
		t.Fatalf("EHR list without consent = %v, %v", list, err)
	}

	now := time.Now()
	co, err := f.families.CreateConsent(f.ctx, &familiesv1.CreateConsentRequest{Parent: f.family.GetName(), Consent: &familiesv1.Consent{
		Discloser:   "North Recovery Clinic",
		Information: []familiesv1.InformationKind{familiesv1.InformationKind_INFORMATION_KIND_APPOINTMENTS},
		Recipients:  []string{"ehr-1"}, Purposes: []familiesv1.Purpose{familiesv1.Purpose_PURPOSE_TREATMENT},
		ExpireTime: timestamppb.New(now.Add(24 * time.Hour)), Signer: "Sam", SignTime: timestamppb.New(now.Add(-time.Hour)),
		RevocationRightStated: true,
	}})
	if err != nil {
		t.Fatalf("CreateConsent: %v", err)
	}
	seen, err := f.client.GetIntervention(ehr, &interventionsv1.GetInterventionRequest{Name: iv.GetName()})
	if err != nil {
		t.Fatalf("EHR read under consent: %v", err)
	}
	// An appointment, not the plan: no place, checklist or notes.
	if seen.GetStartTime() == nil || seen.GetPlace() != nil || len(seen.GetChecklist()) != 0 || seen.GetCarriedOverNotes() != "" {
		t.Fatalf("the EHR sees more than the appointment: %v", seen)
	}
	if full, err := f.client.GetIntervention(f.ctx, &interventionsv1.GetInterventionRequest{Name: iv.GetName()}); err != nil || full.GetPlace() == nil || len(full.GetChecklist()) == 0 {
		t.Fatalf("staff view lost the plan: %v, %v", full, err)
	}
	var md metadata.MD
	list, err = f.client.ListInterventions(ehr, &interventionsv1.ListInterventionsRequest{Parent: "clinics/north"}, grpc.Header(&md))
	if err != nil || len(list.GetInterventions()) != 1 {
		t.Fatalf("EHR list under consent = %v, %v", list, err)
	}
	if n := md.Get(consentgate.NoticeHeader); len(n) != 1 || n[0] != consentgate.Notice {
		t.Fatalf("a disclosed list carries no Part 2 notice: %v", md)
	}
	// The level is not in the appointment, so it cannot be filtered on.
	_, err = f.client.ListInterventions(ehr, &interventionsv1.ListInterventionsRequest{Parent: "clinics/north", Filter: "level = LEVEL_3"})
	wantCode(t, err, codes.InvalidArgument)
	if staff, err := f.client.ListInterventions(f.ctx, &interventionsv1.ListInterventionsRequest{Parent: "clinics/north",
		Filter: "level = " + strings.TrimPrefix(iv.GetLevel().String(), "ESCALATION_LEVEL_")}); err != nil || len(staff.GetInterventions()) != 1 {
		t.Fatalf("staff filter on the level: %v, %v", staff, err)
	}
	ds, err := f.families.ListDisclosures(f.ctx, &familiesv1.ListDisclosuresRequest{Parent: f.family.GetName()})
	if err != nil || len(ds.GetDisclosures()) != 2 || ds.GetDisclosures()[0].GetResource() != iv.GetName() ||
		ds.GetDisclosures()[0].GetConsent() != co.GetName() {
		t.Fatalf("accounting = %v, %v; want the read and the listed intervention", ds, err)
	}
	// Revocation stops the next read at once.
	if _, err := f.families.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: co.GetName()}); err != nil {
		t.Fatal(err)
	}
	_, err = f.client.GetIntervention(ehr, &interventionsv1.GetInterventionRequest{Name: iv.GetName()})
	wantCode(t, err, codes.FailedPrecondition)
}
