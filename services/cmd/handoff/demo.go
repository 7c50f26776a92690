package main

import (
	"context"
	"fmt"
	"time"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/families"
	"github.com/handoff-health/handoff/services/grpcclient"
	"github.com/handoff-health/handoff/services/stack"
)

// loadDemo creates clinic "demo": a program directory with capacity and one
// family ready for an intervention. Every call has a fixed request id, so
// loading it again changes nothing. It returns the family's name.
func loadDemo(ctx context.Context, st *stack.Stack, iss *auth.Issuer) (string, error) {
	admin := auth.WithToken(ctx, iss.MustMint(auth.TokenOptions{Subject: "admin-1", Clinic: "demo", Roles: []auth.Role{auth.RoleClinicAdmin}}))
	counselor := auth.WithToken(ctx, iss.MustMint(auth.TokenOptions{Subject: "counselor-1", Clinic: "demo", Roles: []auth.Role{auth.RoleCounselor}}))
	refConn, err := grpcclient.Dial(st.ReferralsAddr, grpcclient.Config{})
	if err != nil {
		return "", err
	}
	defer refConn.Close()
	famConn, err := grpcclient.Dial(st.FamiliesAddr, grpcclient.Config{})
	if err != nil {
		return "", err
	}
	defer famConn.Close()
	ref := referralsv1.NewReferralsServiceClient(refConn)
	fam := familiesv1.NewFamiliesServiceClient(famConn)

	programs := []struct {
		id    string
		p     *referralsv1.Program
		slots int32
	}{
		{"mat-bup", &referralsv1.Program{DisplayName: "Riverside Recovery: same-day buprenorphine", Organization: "Riverside Health",
			Services:         []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT},
			PaymentsAccepted: []referralsv1.PaymentKind{referralsv1.PaymentKind_PAYMENT_KIND_MEDICAID, referralsv1.PaymentKind_PAYMENT_KIND_PRIVATE_INSURANCE},
			SameDayIntake:    true, SameDayInduction: true, Telehealth: true, Hours: "Mon-Sat 07:00-19:00",
			Address: &referralsv1.Address{Lines: []string{"400 River Rd"}, Locality: "Springfield", Region: "IL", PostalCode: "62701", Country: "US"}}, 3},
		{"mat-otp", &referralsv1.Program{DisplayName: "Lakeside opioid treatment program (methadone)", Organization: "Lakeside OTP",
			Services:         []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE},
			PaymentsAccepted: []referralsv1.PaymentKind{referralsv1.PaymentKind_PAYMENT_KIND_MEDICAID, referralsv1.PaymentKind_PAYMENT_KIND_SLIDING_SCALE},
			Hours:            "Daily 05:30-13:00", Address: &referralsv1.Address{Locality: "Springfield", PostalCode: "62702"}}, 2},
		{"family", &referralsv1.Program{DisplayName: "Family counseling center",
			Services:         []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_FAMILY_COUNSELING, referralsv1.ServiceKind_SERVICE_KIND_INDIVIDUAL_COUNSELING},
			PaymentsAccepted: []referralsv1.PaymentKind{referralsv1.PaymentKind_PAYMENT_KIND_SLIDING_SCALE}}, 10},
		{"group", &referralsv1.Program{DisplayName: "Parents and partners support group",
			Services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_FAMILY_SUPPORT_GROUP}, PaymentsAccepted: []referralsv1.PaymentKind{referralsv1.PaymentKind_PAYMENT_KIND_FREE}}, 20},
		{"naloxone", &referralsv1.Program{DisplayName: "Naloxone and syringe services outreach",
			Services:         []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_HARM_REDUCTION_NALOXONE, referralsv1.ServiceKind_SERVICE_KIND_HARM_REDUCTION_SYRINGE_SERVICES},
			PaymentsAccepted: []referralsv1.PaymentKind{referralsv1.PaymentKind_PAYMENT_KIND_FREE}}, 50},
	}
	for _, p := range programs {
		prog, err := ref.CreateProgram(admin, &referralsv1.CreateProgramRequest{Parent: "clinics/demo", Program: p.p, RequestId: "demo-program-" + p.id})
		if err != nil {
			return "", fmt.Errorf("program %s: %w", p.id, err)
		}
		if _, err := ref.ReportCapacity(admin, &referralsv1.ReportCapacityRequest{Name: prog.GetName(), AvailableSlots: p.slots,
			RequestId: "demo-capacity-" + p.id}); err != nil {
			return "", fmt.Errorf("capacity %s: %w", p.id, err)
		}
	}
	f, err := fam.CreateFamily(counselor, &familiesv1.CreateFamilyRequest{Parent: "clinics/demo", RequestId: "demo-family", Family: &familiesv1.Family{
		LovedOne: &familiesv1.LovedOne{GivenName: "Sam", PreferredName: "Sam", PrimarySubstance: familiesv1.Substance_SUBSTANCE_FENTANYL,
			TimeZone: "America/Chicago", MayContactDirectly: true,
			ContactChannels: []*familiesv1.ContactChannel{{Kind: familiesv1.ChannelKind_CHANNEL_KIND_SMS, Value: "+15555550111"}}},
		Members: []*familiesv1.Member{
			{Id: "mom", GivenName: "Ana", Relationship: familiesv1.Relationship_RELATIONSHIP_PARENT, Role: familiesv1.MemberRole_MEMBER_ROLE_CONTACT_PERSON,
				ContactChannels:  []*familiesv1.ContactChannel{{Kind: familiesv1.ChannelKind_CHANNEL_KIND_SMS, Value: "+15555550100"}},
				PreferredChannel: familiesv1.ChannelKind_CHANNEL_KIND_SMS, TimeZone: "America/Chicago",
				QuietHours: &familiesv1.QuietHours{Start: "22:00", End: "07:00"}, ConsentToContact: true},
			{Id: "brother", GivenName: "Luis", Relationship: familiesv1.Relationship_RELATIONSHIP_SIBLING, ConsentToContact: true,
				ContactChannels: []*familiesv1.ContactChannel{{Kind: familiesv1.ChannelKind_CHANNEL_KIND_EMAIL, Value: "luis@example.org"}}, TimeZone: "America/Denver"},
		},
		Coverage: &familiesv1.Coverage{Kind: familiesv1.CoverageKind_COVERAGE_KIND_MEDICAID}, Counselor: "counselor-1",
	}})
	if err != nil {
		return "", fmt.Errorf("family: %w", err)
	}
	// Sam consented to the clinic's EHR seeing referrals and appointments
	// (42 CFR Part 2); without it the EHR's reads are refused.
	// Its times change from run to run, so a rerun looks before it records
	// instead of reusing a request id.
	consents, err := fam.ListConsents(counselor, &familiesv1.ListConsentsRequest{Parent: f.GetName()})
	if err != nil {
		return "", fmt.Errorf("consents: %w", err)
	}
	if len(consents.GetConsents()) == 0 {
		if _, err := fam.CreateConsent(counselor, &familiesv1.CreateConsentRequest{Parent: f.GetName(),
			Consent: families.TreatmentConsent("Demo Recovery Clinic", "ehr-integration", "Sam", time.Now())}); err != nil {
			return "", fmt.Errorf("consent: %w", err)
		}
	}
	for i, k := range []familiesv1.BarrierKind{familiesv1.BarrierKind_BARRIER_KIND_FEAR_OF_WITHDRAWAL, familiesv1.BarrierKind_BARRIER_KIND_LOGISTICAL_WORK} {
		if _, err := fam.CreateBarrier(counselor, &familiesv1.CreateBarrierRequest{Parent: f.GetName(), Barrier: &familiesv1.Barrier{Kind: k},
			RequestId: fmt.Sprintf("demo-barrier-%d", i)}); err != nil {
			return "", fmt.Errorf("barrier: %w", err)
		}
	}
	if _, err := fam.CreateSafetyScreen(counselor, &familiesv1.CreateSafetyScreenRequest{Parent: f.GetName(), RequestId: "demo-screen",
		SafetyScreen: &familiesv1.SafetyScreen{Result: familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK}}); err != nil {
		return "", fmt.Errorf("safety screen: %w", err)
	}
	b, err := fam.CreateBoundary(counselor, &familiesv1.CreateBoundaryRequest{Parent: f.GetName(), RequestId: "demo-boundary", Boundary: &familiesv1.Boundary{
		Category:    familiesv1.BoundaryCategory_BOUNDARY_CATEGORY_NO_FINANCIAL_SUPPORT,
		Wording:     "We love you, and we will not give you cash; we will pay for groceries and treatment directly.",
		Consequence: "No cash gifts or loans."}})
	if err != nil {
		return "", fmt.Errorf("boundary: %w", err)
	}
	if _, err := fam.AgreeBoundary(counselor, &familiesv1.TransitionBoundaryRequest{Name: b.GetName(), RequestId: "demo-boundary-agree"}); err != nil {
		return "", fmt.Errorf("agree boundary: %w", err)
	}
	if _, err := fam.ActivateBoundary(counselor, &familiesv1.TransitionBoundaryRequest{Name: b.GetName(), RequestId: "demo-boundary-activate"}); err != nil {
		return "", fmt.Errorf("activate boundary: %w", err)
	}
	return f.GetName(), nil
}
