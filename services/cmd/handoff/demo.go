package main

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/families"
	"github.com/handoff-health/handoff/services/grpcclient"
	"github.com/handoff-health/handoff/services/stack"
)

// loadDemo creates clinic "demo": a program directory with capacity and one
// family ready for an intervention. Every record is made under a fixed
// request id, so loading it again changes nothing, except what was deleted
// since, which is made again (see remake); the capacity is reported anew
// on every load, as walkthroughs use slots up. It returns the family's
// name.
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
		prog, err := remake("demo-program-"+p.id, func(id string) (*referralsv1.Program, error) {
			prog, err := ref.CreateProgram(admin, &referralsv1.CreateProgramRequest{Parent: "clinics/demo", Program: p.p, RequestId: id})
			if err != nil {
				return nil, err
			}
			// The referrals service keeps its stored answer after a
			// program's deletion: the program itself says whether it is.
			now, err := ref.GetProgram(admin, &referralsv1.GetProgramRequest{Name: prog.GetName()})
			if err == nil && now.GetDeleteTime() != nil {
				err = status.Error(codes.NotFound, prog.GetName()+" was deleted")
			}
			return now, err
		})
		if err != nil {
			return "", fmt.Errorf("program %s: %w", p.id, err)
		}
		if _, err := ref.ReportCapacity(admin, &referralsv1.ReportCapacityRequest{Name: prog.GetName(), AvailableSlots: p.slots}); err != nil {
			return "", fmt.Errorf("capacity %s: %w", p.id, err)
		}
	}
	f, err := remake("demo-family", func(id string) (*familiesv1.Family, error) {
		return fam.CreateFamily(counselor, &familiesv1.CreateFamilyRequest{Parent: "clinics/demo", RequestId: id, Family: demoFamily()})
	})
	if err != nil {
		return "", fmt.Errorf("family: %w", err)
	}
	// The family's records are made under ids of this family: a family
	// made again after a deletion gets its own.
	fid := aip.ID(f.GetName())
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
		if _, err := remake(fmt.Sprintf("demo-barrier-%d-%s", i, fid), func(id string) (*familiesv1.Barrier, error) {
			return fam.CreateBarrier(counselor, &familiesv1.CreateBarrierRequest{Parent: f.GetName(), Barrier: &familiesv1.Barrier{Kind: k}, RequestId: id})
		}); err != nil {
			return "", fmt.Errorf("barrier: %w", err)
		}
	}
	if _, err := remake("demo-screen-"+fid, func(id string) (*familiesv1.SafetyScreen, error) {
		return fam.CreateSafetyScreen(counselor, &familiesv1.CreateSafetyScreenRequest{Parent: f.GetName(), RequestId: id,
			SafetyScreen: &familiesv1.SafetyScreen{Result: familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK}})
	}); err != nil {
		return "", fmt.Errorf("safety screen: %w", err)
	}
	b, err := remake("demo-boundary-"+fid, func(id string) (*familiesv1.Boundary, error) {
		return fam.CreateBoundary(counselor, &familiesv1.CreateBoundaryRequest{Parent: f.GetName(), RequestId: id, Boundary: &familiesv1.Boundary{
			Category:    familiesv1.BoundaryCategory_BOUNDARY_CATEGORY_NO_FINANCIAL_SUPPORT,
			Wording:     "We love you, and we will not give you cash; we will pay for groceries and treatment directly.",
			Consequence: "No cash gifts or loans."}})
	})
	if err != nil {
		return "", fmt.Errorf("boundary: %w", err)
	}
	bid := aip.ID(b.GetName())
	if _, err := remake("demo-agree-"+bid, func(id string) (*familiesv1.Boundary, error) {
		return fam.AgreeBoundary(counselor, &familiesv1.TransitionBoundaryRequest{Name: b.GetName(), RequestId: id})
	}); err != nil {
		return "", fmt.Errorf("agree boundary: %w", err)
	}
	if _, err := remake("demo-activate-"+bid, func(id string) (*familiesv1.Boundary, error) {
		return fam.ActivateBoundary(counselor, &familiesv1.TransitionBoundaryRequest{Name: b.GetName(), RequestId: id})
	}); err != nil {
		return "", fmt.Errorf("activate boundary: %w", err)
	}
	return f.GetName(), nil
}

// remake calls create under id; while the answer is NOT_FOUND (the record
// made under that id was deleted since, and the service forgot its stored
// answer), under id-2, id-3 and so on: each deletion moves the demo on by
// one id, the same on every later load.
func remake[T any](id string, create func(id string) (T, error)) (T, error) {
	out, err := create(id)
	for n := 2; status.Code(err) == codes.NotFound && n <= 50; n++ {
		out, err = create(fmt.Sprintf("%s-%d", id, n))
	}
	return out, err
}

// demoFamily is the demo's family: Sam, his mother and his brother.
func demoFamily() *familiesv1.Family {
	return &familiesv1.Family{
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
	}
}
