package referrals

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
)

type svcK = referralsv1.ServiceKind
type payK = referralsv1.PaymentKind

const (
	bup      = referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE
	methad   = referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE
	outpt    = referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT
	inpt     = referralsv1.ServiceKind_SERVICE_KIND_INPATIENT
	naloxone = referralsv1.ServiceKind_SERVICE_KIND_HARM_REDUCTION_NALOXONE
	medicaid = referralsv1.PaymentKind_PAYMENT_KIND_MEDICAID
	private  = referralsv1.PaymentKind_PAYMENT_KIND_PRIVATE_INSURANCE
	sliding  = referralsv1.PaymentKind_PAYMENT_KIND_SLIDING_SCALE
)

type prog struct {
	name                            string
	services                        []svcK
	pays                            []payK
	slots                           int32
	tele, sameIntake, sameInduction bool
	waitlist                        bool
	locality                        string
}

func (p prog) build() *referralsv1.Program {
	return &referralsv1.Program{Name: "clinics/c/programs/" + p.name, Services: p.services, PaymentsAccepted: p.pays,
		Telehealth: p.tele, SameDayIntake: p.sameIntake, SameDayInduction: p.sameInduction,
		Address:  &referralsv1.Address{Locality: p.locality},
		Capacity: &referralsv1.Capacity{AvailableSlots: p.slots, Waitlist: p.waitlist}}
}

// A small directory that makes every barrier rule matter.
var directory = []prog{
	{name: "inpatient-house", services: []svcK{inpt, methad}, pays: []payK{private}, slots: 3},
	{name: "quick-bup", services: []svcK{bup, outpt}, pays: []payK{medicaid}, slots: 1, sameIntake: true, sameInduction: true},
	{name: "tele-bup", services: []svcK{bup}, pays: []payK{medicaid, sliding}, slots: 4, tele: true},
	{name: "full-otp", services: []svcK{methad, outpt}, pays: []payK{medicaid}, slots: 0, waitlist: true, locality: "Springfield"},
	{name: "van", services: []svcK{naloxone}, slots: 50},
}

func TestRankTable(t *testing.T) {
	cases := []struct {
		name string
		req  *referralsv1.MatchProgramsRequest
		// want is the ranking, each program with its reason codes (short).
		want []string
	}{{
		name: "withdrawal fear, immediate, medicaid: same-day induction first; no full programs",
		req: &referralsv1.MatchProgramsRequest{Urgency: referralsv1.Urgency_URGENCY_IMMEDIATE,
			Coverage: referralsv1.CoverageKind_COVERAGE_KIND_MEDICAID,
			Barriers: []referralsv1.BarrierKind{referralsv1.BarrierKind_BARRIER_KIND_FEAR_OF_WITHDRAWAL}},
		want: []string{
			"quick-bup=31 SERVICE_OFFERED CAPACITY_TODAY SAME_DAY_INDUCTION_FOR_WITHDRAWAL_FEAR PAYMENT_ACCEPTED SAME_DAY_INTAKE",
			"tele-bup=21 SERVICE_OFFERED CAPACITY_TODAY PAYMENT_ACCEPTED",
			"inpatient-house=10 SERVICE_OFFERED CAPACITY_TODAY PAYMENT_NOT_ACCEPTED_PENALTY",
		},
	}, {
		name: "stigma and cost, routine, uninsured: telehealth and sliding scale rise; the full program sinks",
		req: &referralsv1.MatchProgramsRequest{Urgency: referralsv1.Urgency_URGENCY_ROUTINE,
			Coverage: referralsv1.CoverageKind_COVERAGE_KIND_UNINSURED_SELF_PAY,
			Barriers: []referralsv1.BarrierKind{referralsv1.BarrierKind_BARRIER_KIND_STIGMA, referralsv1.BarrierKind_BARRIER_KIND_FINANCIAL}},
		want: []string{
			"tele-bup=29 SERVICE_OFFERED CAPACITY_TODAY PAYMENT_ACCEPTED TELEHEALTH_FOR_STIGMA SLIDING_SCALE_OR_FREE_FOR_FINANCIAL",
			"inpatient-house=10 SERVICE_OFFERED CAPACITY_TODAY PAYMENT_NOT_ACCEPTED_PENALTY",
			"quick-bup=10 SERVICE_OFFERED CAPACITY_TODAY PAYMENT_NOT_ACCEPTED_PENALTY",
			"full-otp=-7 SERVICE_OFFERED NO_CAPACITY_PENALTY PAYMENT_NOT_ACCEPTED_PENALTY WAITLIST_PENALTY",
		},
	}, {
		name: "work and caregiving, urgent, in Springfield: outpatient fits; locality counts",
		req: &referralsv1.MatchProgramsRequest{Urgency: referralsv1.Urgency_URGENCY_URGENT, Locality: "springfield",
			Barriers: []referralsv1.BarrierKind{referralsv1.BarrierKind_BARRIER_KIND_LOGISTICAL_WORK, referralsv1.BarrierKind_BARRIER_KIND_LOGISTICAL_CAREGIVING}},
		want: []string{
			"quick-bup=30 SERVICE_OFFERED CAPACITY_TODAY OUTPATIENT_FOR_WORK OUTPATIENT_FOR_CAREGIVING SAME_DAY_INTAKE",
			// A tie goes to more free slots: 4 against 3.
			"tele-bup=16 SERVICE_OFFERED CAPACITY_TODAY",
			"inpatient-house=16 SERVICE_OFFERED CAPACITY_TODAY",
			"full-otp=11 SERVICE_OFFERED NO_CAPACITY_PENALTY OUTPATIENT_FOR_WORK OUTPATIENT_FOR_CAREGIVING WAITLIST_PENALTY SAME_LOCALITY",
		},
	}, {
		name: "harm reduction only: the van alone",
		req:  &referralsv1.MatchProgramsRequest{ServiceKinds: []svcK{naloxone}, Urgency: referralsv1.Urgency_URGENCY_IMMEDIATE},
		want: []string{"van=16 SERVICE_OFFERED CAPACITY_TODAY"},
	}}
	var progs []*referralsv1.Program
	for _, p := range directory {
		progs = append(progs, p.build())
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := rank(tc.req, progs)
			var lines []string
			for i, m := range got {
				if m.GetRank() != int32(i+1) {
					t.Fatalf("rank %d at position %d", m.GetRank(), i)
				}
				var codes []string
				var sum int32
				for _, r := range m.GetReasons() {
					codes = append(codes, strings.TrimPrefix(r.GetCode().String(), "MATCH_REASON_CODE_"))
					sum += r.GetPoints()
					if r.GetExplanation() == "" {
						t.Fatalf("reason %v has no explanation", r.GetCode())
					}
				}
				if sum != m.GetScore() {
					t.Fatalf("score %d is not the sum of its reasons (%d)", m.GetScore(), sum)
				}
				lines = append(lines, fmt.Sprintf("%s=%d %s", strings.TrimPrefix(m.GetProgram().GetName(), "clinics/c/programs/"), m.GetScore(), strings.Join(codes, " ")))
			}
			if strings.Join(lines, "\n") != strings.Join(tc.want, "\n") {
				t.Fatalf("ranking:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(tc.want, "\n"))
			}
			// Deterministic: the same input ranks the same way again.
			again := rank(tc.req, progs)
			for i := range again {
				if again[i].GetProgram().GetName() != got[i].GetProgram().GetName() {
					t.Fatal("ranking is not deterministic")
				}
			}
		})
	}
}

// The primary language subtags are compared, whichever side carries a
// region: the example in the API's documentation, and its mirror.
func TestLanguageMatchesOnThePrimarySubtag(t *testing.T) {
	for _, c := range []struct {
		asked  string
		listed []string
		want   bool
	}{
		{"es-MX", []string{"en", "es"}, true},
		{"es", []string{"es-MX"}, true},
		{"ES", []string{"es"}, true},
		{"es-MX", []string{"en", "fr"}, false},
		{"e", []string{"es"}, false},
	} {
		p := &referralsv1.Program{Name: "clinics/c/programs/p", Services: []svcK{bup}, Languages: c.listed,
			Capacity: &referralsv1.Capacity{AvailableSlots: 1}}
		got := rank(&referralsv1.MatchProgramsRequest{Language: c.asked, Urgency: referralsv1.Urgency_URGENCY_ROUTINE},
			[]*referralsv1.Program{p})
		spoken := false
		for _, r := range got[0].GetReasons() {
			spoken = spoken || r.GetCode() == referralsv1.MatchReasonCode_MATCH_REASON_CODE_LANGUAGE_SPOKEN
		}
		if spoken != c.want {
			t.Errorf("%q against %v: language spoken %v, want %v", c.asked, c.listed, spoken, c.want)
		}
	}
}

// Same-day induction answers a fear of withdrawal for a medication asked
// for that is started in withdrawal: methadone or buprenorphine, not
// naltrexone, which is started after it, and not when no medication is
// asked for.
func TestSameDayInductionCountsForInducedMedicationsAskedFor(t *testing.T) {
	naltrexone := referralsv1.ServiceKind_SERVICE_KIND_MAT_NALTREXONE
	fear := []referralsv1.BarrierKind{referralsv1.BarrierKind_BARRIER_KIND_FEAR_OF_WITHDRAWAL}
	for _, c := range []struct {
		name string
		kind []svcK
		p    prog
		want bool
	}{
		{"naltrexone only, any MAT asked for", nil, prog{name: "n", services: []svcK{naltrexone}, slots: 1, sameInduction: true}, false},
		{"naltrexone asked for", []svcK{naltrexone}, prog{name: "n", services: []svcK{naltrexone, bup}, slots: 1, sameInduction: true}, false},
		{"outpatient asked for", []svcK{outpt}, prog{name: "o", services: []svcK{outpt, methad}, slots: 1, sameInduction: true}, false},
		{"methadone, any MAT asked for", nil, prog{name: "m", services: []svcK{methad}, slots: 1, sameInduction: true}, true},
		{"buprenorphine asked for", []svcK{bup, outpt}, prog{name: "b", services: []svcK{bup}, slots: 1, sameInduction: true}, true},
	} {
		req := &referralsv1.MatchProgramsRequest{ServiceKinds: c.kind, Urgency: referralsv1.Urgency_URGENCY_IMMEDIATE, Barriers: fear}
		_, reasons, ok := score(req, c.p.build())
		got := false
		for _, r := range reasons {
			got = got || r.GetCode() == referralsv1.MatchReasonCode_MATCH_REASON_CODE_SAME_DAY_INDUCTION_FOR_WITHDRAWAL_FEAR
		}
		if !ok || got != c.want {
			t.Errorf("%s: offered %v, same-day induction counted %v; want %v", c.name, ok, got, c.want)
		}
	}
}

// A program that charges nothing is not ranked down for an insured
// family's coverage: it turns no one away for how they would pay.
func TestFreeProgramAcceptsEveryCoverage(t *testing.T) {
	free := referralsv1.PaymentKind_PAYMENT_KIND_FREE
	for _, cov := range []referralsv1.CoverageKind{referralsv1.CoverageKind_COVERAGE_KIND_MEDICAID, referralsv1.CoverageKind_COVERAGE_KIND_MEDICARE,
		referralsv1.CoverageKind_COVERAGE_KIND_PRIVATE, referralsv1.CoverageKind_COVERAGE_KIND_UNINSURED_SELF_PAY, referralsv1.CoverageKind_COVERAGE_KIND_OTHER} {
		req := &referralsv1.MatchProgramsRequest{Coverage: cov, Urgency: referralsv1.Urgency_URGENCY_ROUTINE}
		_, reasons, ok := score(req, prog{name: "free", services: []svcK{bup}, pays: []payK{free}, slots: 1}.build())
		var codes []string
		for _, r := range reasons {
			codes = append(codes, strings.TrimPrefix(r.GetCode().String(), "MATCH_REASON_CODE_"))
		}
		if !ok || !slices.Contains(codes, "PAYMENT_ACCEPTED") || slices.Contains(codes, "PAYMENT_NOT_ACCEPTED_PENALTY") {
			t.Errorf("%v: a free program scored %v (offered %v); want its payment accepted", cov, codes, ok)
		}
	}
}
