package referrals

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/apperr"
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

// coveragePays lists the payments that cover each kind of coverage. A
// program that charges nothing turns no one away for how they would pay,
// so it covers every kind: an insured person is not steered from it.
var coveragePays = map[referralsv1.CoverageKind][]referralsv1.PaymentKind{
	referralsv1.CoverageKind_COVERAGE_KIND_MEDICAID: {referralsv1.PaymentKind_PAYMENT_KIND_MEDICAID, referralsv1.PaymentKind_PAYMENT_KIND_FREE},
	referralsv1.CoverageKind_COVERAGE_KIND_MEDICARE: {referralsv1.PaymentKind_PAYMENT_KIND_MEDICARE, referralsv1.PaymentKind_PAYMENT_KIND_FREE},
	referralsv1.CoverageKind_COVERAGE_KIND_PRIVATE: {referralsv1.PaymentKind_PAYMENT_KIND_PRIVATE_INSURANCE,
		referralsv1.PaymentKind_PAYMENT_KIND_FREE},
	referralsv1.CoverageKind_COVERAGE_KIND_UNINSURED_SELF_PAY: {referralsv1.PaymentKind_PAYMENT_KIND_SELF_PAY,
		referralsv1.PaymentKind_PAYMENT_KIND_SLIDING_SCALE, referralsv1.PaymentKind_PAYMENT_KIND_FREE},
	referralsv1.CoverageKind_COVERAGE_KIND_OTHER: {referralsv1.PaymentKind_PAYMENT_KIND_SLIDING_SCALE, referralsv1.PaymentKind_PAYMENT_KIND_FREE},
}

// induced are the medications a program can start the same day, in
// withdrawal; naltrexone is started only after it.
var induced = []referralsv1.ServiceKind{
	referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE,
	referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE,
}

// inducedWanted returns the wanted medications a program can start the
// same day: same-day induction answers a fear of withdrawal only for a
// medication asked for, and only one started in withdrawal.
func inducedWanted(req *referralsv1.MatchProgramsRequest) []referralsv1.ServiceKind {
	var out []referralsv1.ServiceKind
	for _, k := range wanted(req) {
		if slices.Contains(induced, k) && !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	return out
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
	if iw := inducedWanted(req); has(referralsv1.BarrierKind_BARRIER_KIND_FEAR_OF_WITHDRAWAL) && p.GetSameDayInduction() && len(iw) > 0 && offers(iw...) {
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
		accepted, listed := false, false
		for _, k := range pays {
			in := slices.Contains(p.GetPaymentsAccepted(), k)
			accepted = accepted || in
			listed = listed || in && k != referralsv1.PaymentKind_PAYMENT_KIND_FREE
		}
		if listed {
			add(referralsv1.MatchReasonCode_MATCH_REASON_CODE_PAYMENT_ACCEPTED, "Accepts the family's coverage.")
		} else if accepted {
			add(referralsv1.MatchReasonCode_MATCH_REASON_CODE_PAYMENT_ACCEPTED, "Charges nothing.")
		} else {
			add(referralsv1.MatchReasonCode_MATCH_REASON_CODE_PAYMENT_NOT_ACCEPTED_PENALTY, "Does not list the family's coverage.")
		}
	}
	if has(referralsv1.BarrierKind_BARRIER_KIND_FINANCIAL) && (slices.Contains(p.GetPaymentsAccepted(), referralsv1.PaymentKind_PAYMENT_KIND_SLIDING_SCALE) ||
		slices.Contains(p.GetPaymentsAccepted(), referralsv1.PaymentKind_PAYMENT_KIND_FREE)) {
		add(referralsv1.MatchReasonCode_MATCH_REASON_CODE_SLIDING_SCALE_OR_FREE_FOR_FINANCIAL, "Charges on a sliding scale or nothing.")
	}
	if pc := postalKey(req.GetPostalCode()); pc != "" && pc == postalKey(p.GetAddress().GetPostalCode()) {
		add(referralsv1.MatchReasonCode_MATCH_REASON_CODE_SAME_POSTAL_CODE, "Is in the family's postal code.")
	} else if loc := req.GetLocality(); loc != "" && strings.EqualFold(loc, p.GetAddress().GetLocality()) {
		add(referralsv1.MatchReasonCode_MATCH_REASON_CODE_SAME_LOCALITY, "Is in the family's town.")
	}
	if lang := req.GetLanguage(); lang != "" {
		for _, l := range p.GetLanguages() {
			if strings.EqualFold(primaryLanguage(l), primaryLanguage(lang)) {
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

// MatchPrograms implements the API. A program's score is its profile's
// score (the features in programs.profile, the same for every program of a
// profile) plus a place bonus of at most a few points. So one query, in one
// round trip:
//   - scores one program of each of the clinic's profiles and counts up to
//     max_results eligible programs in it;
//   - finds t, the score of the profile where the eligible programs, best
//     profiles first, reach max_results: at least max_results programs
//     score t or more, so a profile whose score plus the largest place bonus
//     is below t holds none of the best, and is dropped;
//   - of each profile kept, reads only its first max_results programs in
//     match order for each place tier (postal code, town, the rest), scores
//     those few in full and returns the best, in the order score() and
//     rank() give.
//
// The work thus grows with the number of profiles, not of programs; score()
// then explains the few programs returned.
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
		if r.clinic != clinic {
			// As every reference in this service: another clinic's program
			// would otherwise exclude this clinic's of the same id.
			return nil, apperr.Field(fmt.Sprintf("exclude_programs[%d]", i), "must be in the same clinic")
		}
		excluded = append(excluded, r.id)
	}
	// A hold past its expiry that the sweep has not reached holds no
	// slot: the match counts it as free.
	s.returnLapsed(ctx, clinic, "")
	limit := int(req.GetMaxResults())
	if limit == 0 {
		limit = 10
	}
	minSlots := 0
	if req.GetUrgency() == referralsv1.Urgency_URGENCY_IMMEDIATE {
		minSlots = 1
	}
	// $1 clinic, $2 wanted services, $3 excluded ids, $4 minimum slots, $5
	// limit, $6 the largest place bonus, then the static score's, the age's,
	// the places' and the score's arguments.
	bonus := int32(0)
	if postalKey(req.GetPostalCode()) != "" {
		bonus = points[referralsv1.MatchReasonCode_MATCH_REASON_CODE_SAME_POSTAL_CODE]
	} else if req.GetLocality() != "" {
		bonus = points[referralsv1.MatchReasonCode_MATCH_REASON_CODE_SAME_LOCALITY]
	}
	args := []any{clinic, enumInts(wanted(req)), excluded, minSlots, limit, bonus}
	static := proto.Clone(req).(*referralsv1.MatchProgramsRequest)
	static.PostalCode, static.Locality = "", ""
	staticExpr, staticArgs := scoreSQL(static, len(args)+1)
	args = append(args, staticArgs...)

	// The person's age leaves out the programs that would turn them away
	// for it: in the profiles' counts too, or the pruning below would
	// count programs the tiers then pass over, and return too few.
	ages := func(string) string { return "" }
	if age := req.GetAge(); age > 0 {
		args = append(args, age)
		n := len(args)
		ages = func(t string) string {
			return fmt.Sprintf(" AND %[1]s.min_age <= $%[2]d AND (%[1]s.max_age = 0 OR %[1]s.max_age >= $%[2]d)", t, n)
		}
	}
	var tiers []string
	tier := func(cond string) {
		tiers = append(tiers, `(SELECT * FROM programs p WHERE p.clinic = $1 AND p.profile = g.profile AND NOT (p.id = ANY($3))
			AND p.delete_time IS NULL`+ages("p")+cond+`
			ORDER BY p.available_slots DESC, p.id COLLATE "C" LIMIT $5)`)
	}
	rest := ""
	if pc := postalKey(req.GetPostalCode()); pc != "" {
		args = append(args, pc)
		tier(fmt.Sprintf(" AND p.postal_code = $%d", len(args)))
		rest += fmt.Sprintf(" AND p.postal_code <> $%d", len(args))
	}
	if loc := req.GetLocality(); loc != "" {
		args = append(args, strings.ToLower(loc))
		tier(fmt.Sprintf(" AND p.locality = $%d", len(args)) + rest)
		rest += fmt.Sprintf(" AND p.locality <> $%d", len(args))
	}
	tier(rest)
	expr, exprArgs := scoreSQL(req, len(args)+1)
	args = append(args, exprArgs...)
	// The generic plan: planned for each call's arguments, the query took
	// longer to plan than to run, and longer the bigger the directory
	// (1.2 ms more at a million programs than at ten thousand); its shape
	// (index probes per profile, bounded by LIMITs) does not depend on them.
	rows, err := s.pool.QueryGenericPlan(ctx, `WITH profiles AS (
			SELECT g.profile, one.score, (SELECT count(*) FROM (SELECT FROM programs e
				WHERE e.clinic = $1 AND e.profile = g.profile AND NOT (e.id = ANY($3)) AND e.delete_time IS NULL`+ages("e")+` LIMIT $5) n) AS eligible
			FROM program_profiles g CROSS JOIN LATERAL (SELECT `+staticExpr+` AS score
				-- The profile's features, kept with it; a profile noted
				-- before they were (by a release that did not know them)
				-- has any one of its programs speak for it.
				FROM (SELECT g.services, g.payments, g.telehealth, g.same_day_intake, g.same_day_induction,
						g.available_slots, g.waitlist, g.languages WHERE g.services IS NOT NULL
					UNION ALL
					(SELECT services, payments, telehealth, same_day_intake, same_day_induction,
						available_slots, waitlist, languages
					FROM programs WHERE g.services IS NULL AND clinic = $1 AND profile = g.profile LIMIT 1)) one
				WHERE services && $2 AND available_slots >= $4) one
			WHERE g.clinic = $1),
		kept AS (
			SELECT profile FROM profiles WHERE eligible > 0 AND score + $6 >= coalesce(
				(SELECT score FROM (SELECT score, sum(eligible) OVER (ORDER BY score DESC ROWS UNBOUNDED PRECEDING) AS seen
					FROM profiles) x WHERE seen >= $5 ORDER BY score DESC LIMIT 1), -2147483648)),
		candidates AS (
			SELECT c.* FROM kept g CROSS JOIN LATERAL (`+strings.Join(tiers, " UNION ALL ")+`) c)
		`+strings.Replace(programSelect, " FROM programs", " FROM candidates", 1)+`
		ORDER BY `+expr+` DESC, available_slots DESC, id COLLATE "C" LIMIT $5`, args...)
	if err != nil {
		return nil, fmt.Errorf("match programs: %w", err)
	}
	progs, err := pgx.CollectRows(rows, scanProgram(clinic))
	if err != nil {
		return nil, fmt.Errorf("match programs: %w", err)
	}
	return &referralsv1.MatchProgramsResponse{Matches: rank(req, progs)}, nil
}

// scoreSQL is score()'s total as a SQL expression over a programs row, for
// a row that offers a wanted service. Its parameters are numbered from
// first. The program's locality and languages are stored lower-cased, so
// the request's are lower-cased here to compare the way score() does.
// TestScoreSQLAgreesWithScore keeps the two in step.
func scoreSQL(req *referralsv1.MatchProgramsRequest, first int) (string, []any) {
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", first+len(args)-1)
	}
	pt := func(c referralsv1.MatchReasonCode) string { return fmt.Sprint(points[c]) }
	when := func(cond string, c referralsv1.MatchReasonCode) string {
		return fmt.Sprintf(" + CASE WHEN %s THEN %s ELSE 0 END", cond, pt(c))
	}
	barriers := req.GetBarriers()
	has := func(b referralsv1.BarrierKind) bool { return slices.Contains(barriers, b) }
	// Every argument must appear in the expression (PostgreSQL cannot type an
	// unused parameter), so this one is added on first use.
	outpatientArg := ""
	outpatient := func() string {
		if outpatientArg == "" {
			outpatientArg = arg(enumInts([]referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT, referralsv1.ServiceKind_SERVICE_KIND_INTENSIVE_OUTPATIENT}))
		}
		return outpatientArg
	}
	var b strings.Builder
	b.WriteString("(" + pt(referralsv1.MatchReasonCode_MATCH_REASON_CODE_SERVICE_OFFERED))
	fmt.Fprintf(&b, " + CASE WHEN available_slots > 0 THEN %s ELSE %s END",
		pt(referralsv1.MatchReasonCode_MATCH_REASON_CODE_CAPACITY_TODAY), pt(referralsv1.MatchReasonCode_MATCH_REASON_CODE_NO_CAPACITY_PENALTY))
	if u := req.GetUrgency(); u == referralsv1.Urgency_URGENCY_IMMEDIATE || u == referralsv1.Urgency_URGENCY_URGENT {
		b.WriteString(when("same_day_intake", referralsv1.MatchReasonCode_MATCH_REASON_CODE_SAME_DAY_INTAKE))
	}
	if iw := inducedWanted(req); has(referralsv1.BarrierKind_BARRIER_KIND_FEAR_OF_WITHDRAWAL) && len(iw) > 0 {
		b.WriteString(when("same_day_induction AND services && "+arg(enumInts(iw)),
			referralsv1.MatchReasonCode_MATCH_REASON_CODE_SAME_DAY_INDUCTION_FOR_WITHDRAWAL_FEAR))
	}
	if has(referralsv1.BarrierKind_BARRIER_KIND_LOGISTICAL_WORK) {
		b.WriteString(when("services && "+outpatient(), referralsv1.MatchReasonCode_MATCH_REASON_CODE_OUTPATIENT_FOR_WORK))
	}
	if has(referralsv1.BarrierKind_BARRIER_KIND_LOGISTICAL_CAREGIVING) {
		b.WriteString(when("services && "+outpatient(), referralsv1.MatchReasonCode_MATCH_REASON_CODE_OUTPATIENT_FOR_CAREGIVING))
	}
	if has(referralsv1.BarrierKind_BARRIER_KIND_STIGMA) {
		b.WriteString(when("telehealth", referralsv1.MatchReasonCode_MATCH_REASON_CODE_TELEHEALTH_FOR_STIGMA))
	}
	if req.GetPrefersTelehealth() {
		b.WriteString(when("telehealth", referralsv1.MatchReasonCode_MATCH_REASON_CODE_TELEHEALTH_PREFERRED))
	}
	if pays, known := coveragePays[req.GetCoverage()]; known {
		fmt.Fprintf(&b, " + CASE WHEN payments && %s THEN %s ELSE %s END", arg(enumInts(pays)),
			pt(referralsv1.MatchReasonCode_MATCH_REASON_CODE_PAYMENT_ACCEPTED), pt(referralsv1.MatchReasonCode_MATCH_REASON_CODE_PAYMENT_NOT_ACCEPTED_PENALTY))
	}
	if has(referralsv1.BarrierKind_BARRIER_KIND_FINANCIAL) {
		b.WriteString(when("payments && "+arg(enumInts([]referralsv1.PaymentKind{referralsv1.PaymentKind_PAYMENT_KIND_SLIDING_SCALE, referralsv1.PaymentKind_PAYMENT_KIND_FREE})),
			referralsv1.MatchReasonCode_MATCH_REASON_CODE_SLIDING_SCALE_OR_FREE_FOR_FINANCIAL))
	}
	var place []string
	if pc := postalKey(req.GetPostalCode()); pc != "" {
		place = append(place, fmt.Sprintf("WHEN postal_code = %s THEN %s", arg(pc), pt(referralsv1.MatchReasonCode_MATCH_REASON_CODE_SAME_POSTAL_CODE)))
	}
	if loc := req.GetLocality(); loc != "" {
		place = append(place, fmt.Sprintf("WHEN locality = %s THEN %s", arg(strings.ToLower(loc)), pt(referralsv1.MatchReasonCode_MATCH_REASON_CODE_SAME_LOCALITY)))
	}
	if len(place) > 0 {
		b.WriteString(" + CASE " + strings.Join(place, " ") + " ELSE 0 END")
	}
	if lang := req.GetLanguage(); lang != "" {
		l := arg(strings.ToLower(primaryLanguage(lang)))
		b.WriteString(when(fmt.Sprintf("EXISTS (SELECT 1 FROM unnest(languages) AS l WHERE split_part(l, '-', 1) = %s)", l),
			referralsv1.MatchReasonCode_MATCH_REASON_CODE_LANGUAGE_SPOKEN))
	}
	b.WriteString(when("waitlist", referralsv1.MatchReasonCode_MATCH_REASON_CODE_WAITLIST_PENALTY))
	b.WriteString(")")
	return b.String(), args
}

// primaryLanguage is a BCP-47 tag's primary language subtag: "es" of
// "es-MX". Matching compares only these, so a family asking for "es-MX" is
// matched with a program listing "es", and the other way round.
func primaryLanguage(tag string) string {
	p, _, _ := strings.Cut(tag, "-")
	return p
}
