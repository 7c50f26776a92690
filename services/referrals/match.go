package referrals

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
)

// Points of each match reason. Fixed here, not by requests, so that a rank
// means the same thing for every family. Offering the service and having a
// slot when it is needed weigh most; the barrier-specific fits come next.
var points = map[referralsv1.MatchReasonCode]int32{
	referralsv1.MatchReasonCode_MATCH_REASON_CODE_SERVICE_OFFERED:                        10,
	referralsv1.MatchReasonCode_MATCH_REASON_CODE_SAME_DAY_INDUCTION_FOR_WITHDRAWAL_FEAR: 6,
	referralsv1.MatchReasonCode_MATCH_REASON_CODE_OUTPATIENT_FOR_WORK:                    5,
	referralsv1.MatchReasonCode_MATCH_REASON_CODE_OUTPATIENT_FOR_CAREGIVING:              5,
	referralsv1.MatchReasonCode_MATCH_REASON_CODE_TELEHEALTH_FOR_STIGMA:                  4,
	referralsv1.MatchReasonCode_MATCH_REASON_CODE_TELEHEALTH_PREFERRED:                   3,
	referralsv1.MatchReasonCode_MATCH_REASON_CODE_PAYMENT_ACCEPTED:                       5,
	referralsv1.MatchReasonCode_MATCH_REASON_CODE_SLIDING_SCALE_OR_FREE_FOR_FINANCIAL:    4,
	referralsv1.MatchReasonCode_MATCH_REASON_CODE_CAPACITY_TODAY:                         6,
	referralsv1.MatchReasonCode_MATCH_REASON_CODE_SAME_DAY_INTAKE:                        4,
	referralsv1.MatchReasonCode_MATCH_REASON_CODE_SAME_POSTAL_CODE:                       3,
	referralsv1.MatchReasonCode_MATCH_REASON_CODE_SAME_LOCALITY:                          2,
	referralsv1.MatchReasonCode_MATCH_REASON_CODE_LANGUAGE_SPOKEN:                        3,
	referralsv1.MatchReasonCode_MATCH_REASON_CODE_WAITLIST_PENALTY:                       -3,
	referralsv1.MatchReasonCode_MATCH_REASON_CODE_NO_CAPACITY_PENALTY:                    -8,
	referralsv1.MatchReasonCode_MATCH_REASON_CODE_PAYMENT_NOT_ACCEPTED_PENALTY:           -6,
}

var matServices = []referralsv1.ServiceKind{
	referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE,
	referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE,
	referralsv1.ServiceKind_SERVICE_KIND_MAT_NALTREXONE,
}

// coveragePays lists the payments that cover each kind of coverage.
var coveragePays = map[referralsv1.CoverageKind][]referralsv1.PaymentKind{
	referralsv1.CoverageKind_COVERAGE_KIND_MEDICAID: {referralsv1.PaymentKind_PAYMENT_KIND_MEDICAID},
	referralsv1.CoverageKind_COVERAGE_KIND_MEDICARE: {referralsv1.PaymentKind_PAYMENT_KIND_MEDICARE},
	referralsv1.CoverageKind_COVERAGE_KIND_PRIVATE:  {referralsv1.PaymentKind_PAYMENT_KIND_PRIVATE_INSURANCE},
	referralsv1.CoverageKind_COVERAGE_KIND_UNINSURED_SELF_PAY: {referralsv1.PaymentKind_PAYMENT_KIND_SELF_PAY,
		referralsv1.PaymentKind_PAYMENT_KIND_SLIDING_SCALE, referralsv1.PaymentKind_PAYMENT_KIND_FREE},
	referralsv1.CoverageKind_COVERAGE_KIND_OTHER: {referralsv1.PaymentKind_PAYMENT_KIND_SLIDING_SCALE, referralsv1.PaymentKind_PAYMENT_KIND_FREE},
}

// wanted returns the services a request asks for (any MAT when empty).
func wanted(req *referralsv1.MatchProgramsRequest) []referralsv1.ServiceKind {
	if len(req.GetServiceKinds()) == 0 {
		return matServices
	}
	return req.GetServiceKinds()
}

// score rates one program for one request. ok is false when the program
// must not be offered at all: it offers none of the wanted services, or the
// need is immediate and it has no free slot.
func score(req *referralsv1.MatchProgramsRequest, p *referralsv1.Program) (int32, []*referralsv1.MatchReason, bool) {
	var reasons []*referralsv1.MatchReason
	add := func(code referralsv1.MatchReasonCode, format string, args ...any) {
		reasons = append(reasons, &referralsv1.MatchReason{Code: code, Points: points[code], Explanation: fmt.Sprintf(format, args...)})
	}
	offers := func(kinds ...referralsv1.ServiceKind) bool {
		for _, k := range kinds {
			if slices.Contains(p.GetServices(), k) {
				return true
			}
		}
		return false
	}
	var offered []string
	for _, k := range wanted(req) {
		if offers(k) {
			offered = append(offered, serviceLabel(k))
		}
	}
	if len(offered) == 0 {
		return 0, nil, false
	}
	urgency := req.GetUrgency()
	slots := p.GetCapacity().GetAvailableSlots()
	if urgency == referralsv1.Urgency_URGENCY_IMMEDIATE && slots == 0 {
		return 0, nil, false
	}
	add(referralsv1.MatchReasonCode_MATCH_REASON_CODE_SERVICE_OFFERED, "Offers %s.", strings.Join(offered, ", "))
	if slots > 0 {
		add(referralsv1.MatchReasonCode_MATCH_REASON_CODE_CAPACITY_TODAY, "Has %d intake slot(s) free now.", slots)
	} else {
		add(referralsv1.MatchReasonCode_MATCH_REASON_CODE_NO_CAPACITY_PENALTY, "Has no intake slot free now.")
	}
	if p.GetSameDayIntake() && (urgency == referralsv1.Urgency_URGENCY_IMMEDIATE || urgency == referralsv1.Urgency_URGENCY_URGENT) {
		add(referralsv1.MatchReasonCode_MATCH_REASON_CODE_SAME_DAY_INTAKE, "Sees new people the same day.")
	}
	barriers := req.GetBarriers()
	has := func(b referralsv1.BarrierKind) bool { return slices.Contains(barriers, b) }
	outpatient := offers(referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT, referralsv1.ServiceKind_SERVICE_KIND_INTENSIVE_OUTPATIENT)
	if has(referralsv1.BarrierKind_BARRIER_KIND_FEAR_OF_WITHDRAWAL) && p.GetSameDayInduction() && offers(matServices...) {
		add(referralsv1.MatchReasonCode_MATCH_REASON_CODE_SAME_DAY_INDUCTION_FOR_WITHDRAWAL_FEAR,
			"Can start medication the same day, so withdrawal need not be faced alone.")
	}
	if has(referralsv1.BarrierKind_BARRIER_KIND_LOGISTICAL_WORK) && outpatient {
		add(referralsv1.MatchReasonCode_MATCH_REASON_CODE_OUTPATIENT_FOR_WORK, "Outpatient care fits around a job.")
	}
	if has(referralsv1.BarrierKind_BARRIER_KIND_LOGISTICAL_CAREGIVING) && outpatient {
		add(referralsv1.MatchReasonCode_MATCH_REASON_CODE_OUTPATIENT_FOR_CAREGIVING, "Outpatient care keeps time for caring for family.")
	}
	if has(referralsv1.BarrierKind_BARRIER_KIND_STIGMA) && p.GetTelehealth() {
		add(referralsv1.MatchReasonCode_MATCH_REASON_CODE_TELEHEALTH_FOR_STIGMA, "Offers telehealth, so care can start privately from home.")
	}
	if req.GetPrefersTelehealth() && p.GetTelehealth() {
		add(referralsv1.MatchReasonCode_MATCH_REASON_CODE_TELEHEALTH_PREFERRED, "Offers telehealth, as preferred.")
	}
	if pays, known := coveragePays[req.GetCoverage()]; known {
		accepted := false
		for _, k := range pays {
			accepted = accepted || slices.Contains(p.GetPaymentsAccepted(), k)
		}
		if accepted {
			add(referralsv1.MatchReasonCode_MATCH_REASON_CODE_PAYMENT_ACCEPTED, "Accepts the family's coverage.")
		} else {
			add(referralsv1.MatchReasonCode_MATCH_REASON_CODE_PAYMENT_NOT_ACCEPTED_PENALTY, "Does not list the family's coverage.")
		}
	}
	if has(referralsv1.BarrierKind_BARRIER_KIND_FINANCIAL) && (slices.Contains(p.GetPaymentsAccepted(), referralsv1.PaymentKind_PAYMENT_KIND_SLIDING_SCALE) ||
		slices.Contains(p.GetPaymentsAccepted(), referralsv1.PaymentKind_PAYMENT_KIND_FREE)) {
		add(referralsv1.MatchReasonCode_MATCH_REASON_CODE_SLIDING_SCALE_OR_FREE_FOR_FINANCIAL, "Charges on a sliding scale or nothing.")
	}
	if pc := req.GetPostalCode(); pc != "" && pc == p.GetAddress().GetPostalCode() {
		add(referralsv1.MatchReasonCode_MATCH_REASON_CODE_SAME_POSTAL_CODE, "Is in the family's postal code.")
	} else if loc := req.GetLocality(); loc != "" && strings.EqualFold(loc, p.GetAddress().GetLocality()) {
		add(referralsv1.MatchReasonCode_MATCH_REASON_CODE_SAME_LOCALITY, "Is in the family's town.")
	}
	if lang := req.GetLanguage(); lang != "" {
		for _, l := range p.GetLanguages() {
			if strings.EqualFold(l, lang) || strings.HasPrefix(strings.ToLower(l), strings.ToLower(lang)+"-") {
				add(referralsv1.MatchReasonCode_MATCH_REASON_CODE_LANGUAGE_SPOKEN, "Staff speak the family's language.")
				break
			}
		}
	}
	if p.GetCapacity().GetWaitlist() {
		add(referralsv1.MatchReasonCode_MATCH_REASON_CODE_WAITLIST_PENALTY, "Keeps a waitlist, so a start may be delayed.")
	}
	var total int32
	for _, r := range reasons {
		total += r.GetPoints()
	}
	slices.SortStableFunc(reasons, func(a, b *referralsv1.MatchReason) int {
		return cmp.Compare(abs(b.GetPoints()), abs(a.GetPoints()))
	})
	return total, reasons, true
}

func abs(x int32) int32 {
	if x < 0 {
		return -x
	}
	return x
}

func serviceLabel(k referralsv1.ServiceKind) string {
	return strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(k.String(), "SERVICE_KIND_"), "_", " "))
}

// rank scores every program and orders the eligible ones: by score, then
// by free slots, then by name, numbering them from 1.
func rank(req *referralsv1.MatchProgramsRequest, progs []*referralsv1.Program) []*referralsv1.ProgramMatch {
	var matches []*referralsv1.ProgramMatch
	for _, p := range progs {
		if total, reasons, ok := score(req, p); ok {
			matches = append(matches, &referralsv1.ProgramMatch{Program: p, Score: total, Reasons: reasons})
		}
	}
	slices.SortFunc(matches, func(a, b *referralsv1.ProgramMatch) int {
		return cmp.Or(
			cmp.Compare(b.GetScore(), a.GetScore()),
			cmp.Compare(b.GetProgram().GetCapacity().GetAvailableSlots(), a.GetProgram().GetCapacity().GetAvailableSlots()),
			cmp.Compare(a.GetProgram().GetName(), b.GetProgram().GetName()),
		)
	})
	for i, m := range matches {
		m.Rank = int32(i + 1)
	}
	return matches
}

// MatchPrograms implements the API. PostgreSQL narrows the directory to the
// programs that offer a wanted service (GIN index on services) and, for an
// immediate need, have a free slot; the ranking itself is plain Go so that
// every point can be explained.
func (s *Server) MatchPrograms(ctx context.Context, req *referralsv1.MatchProgramsRequest) (*referralsv1.MatchProgramsResponse, error) {
	clinic, err := parentClinic(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	excluded := []string{} // not nil: NULL would exclude everything
	for i, name := range req.GetExcludePrograms() {
		r, err := parse(fmt.Sprintf("exclude_programs[%d]", i), name, "programs")
		if err != nil {
			return nil, err
		}
		excluded = append(excluded, r.id)
	}
	limit := int(req.GetMaxResults())
	if limit == 0 {
		limit = 10
	}
	minSlots := 0
	if req.GetUrgency() == referralsv1.Urgency_URGENCY_IMMEDIATE {
		minSlots = 1
	}
	rows, err := s.pool.Query(ctx, programSelect+` WHERE clinic = $1 AND services && $2 AND NOT (id = ANY($3))
		AND available_slots >= $4`, clinic, enumInts(wanted(req)), excluded, minSlots)
	if err != nil {
		return nil, fmt.Errorf("match programs: %w", err)
	}
	progs, err := pgx.CollectRows(rows, scanProgram(clinic))
	if err != nil {
		return nil, fmt.Errorf("match programs: %w", err)
	}
	matches := rank(req, progs)
	if len(matches) > limit {
		matches = matches[:limit]
	}
	return &referralsv1.MatchProgramsResponse{Matches: matches}, nil
}
