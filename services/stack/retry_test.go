package stack_test

import (
	"fmt"
	"testing"
	"time"

	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/workflows/activities"
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
	const intervention = "clinics/north/interventions/retried"
	in := activities.ImmediateRequest{Family: f.GetName(), Intervention: intervention, FirstContact: time.Now(), RequestID: "retried-referral"}
	first, err := a.StartImmediateReferral(e.counsel, in)
	if err != nil {
		t.Fatal(err)
	}
	again, err := a.StartImmediateReferral(e.counsel, in) // the same attempt, retried
	if err != nil || again != first {
		t.Fatalf("retry = %+v, %v; want the first attempt's %+v", again, err, first)
	}
	refs := ok(e.ref.ListReferrals(e.counsel, &referralsv1.ListReferralsRequest{Parent: "clinics/north",
		Filter: fmt.Sprintf("intervention = %q", intervention)})).GetReferrals()
	if len(refs) != 1 {
		t.Fatalf("%d referrals for one acceptance: %v", len(refs), refs)
	}
	// A hold taken by an attempt that failed afterwards (here the checklist
	// tick, as the intervention does not exist) is reused by the retry, not
	// joined by a second hold at the next program.
	for range 2 {
		if _, err := a.HoldTreatment(e.counsel, activities.HoldRequest{Family: f.GetName(), Intervention: intervention,
			TTL: time.Hour, RequestID: "hold-1"}); err == nil {
			t.Fatal("the checklist tick should fail for an intervention that does not exist")
		}
	}
	holds := ok(e.ref.ListHolds(e.counsel, &referralsv1.ListHoldsRequest{Parent: "clinics/north",
		Filter: fmt.Sprintf("intervention = %q AND state = HELD", intervention)})).GetHolds()
	if len(holds) != 1 {
		t.Fatalf("%d live holds after a retried hold: %v", len(holds), holds)
	}
}
