package referrals

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"

	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
	"github.com/handoff-health/handoff/services/servicetest"
)

// some picks each element of xs with probability one half.
func some[T any](r *rand.Rand, xs []T) []T {
	var out []T
	for _, x := range xs {
		if r.IntN(2) == 0 {
			out = append(out, x)
		}
	}
	return out
}

// The database ranks with scoreSQL and Go explains with score(): on random
// directories and requests the two must give every program the same total,
// and MatchPrograms must return what ranking the whole directory in Go
// returns. The seed is fixed, so a failure reproduces.
func TestScoreSQLAgreesWithScore(t *testing.T) { checkMatching(t, false, false) }

// The same on a directory where many programs share a profile, so that
// MatchPrograms drops profiles and cuts each one short (see MatchPrograms),
// with programs excluded by the request.
func TestMatchingAgreesOnSharedProfiles(t *testing.T) { checkMatching(t, true, false) }

// The same where half the profiles were noted without their features (by
// a release that did not keep them): a program of each speaks for it.
func TestMatchingAgreesWithoutProfileFeatures(t *testing.T) { checkMatching(t, true, true) }

func checkMatching(t *testing.T, clustered, featureless bool) {
	t.Parallel()
	pool, schema := pgtest.Schema(t, Migrations()...)
	srv := New(pgtest.App(t, schema), Config{})
	env := servicetest.Start(t, Policy(), func(s *grpc.Server) { referralsv1.RegisterReferralsServiceServer(s, srv) })
	client := referralsv1.NewReferralsServiceClient(env.Conn)
	admin, counselor := env.As("north", "admin-1", auth.RoleClinicAdmin), env.Counselor("north")
	rnd := rand.New(rand.NewPCG(7, 11))

	allServices := []referralsv1.ServiceKind{bup, methad, referralsv1.ServiceKind_SERVICE_KIND_MAT_NALTREXONE, outpt,
		referralsv1.ServiceKind_SERVICE_KIND_INTENSIVE_OUTPATIENT, inpt, naloxone}
	allPays := []referralsv1.PaymentKind{medicaid, private, sliding, referralsv1.PaymentKind_PAYMENT_KIND_FREE,
		referralsv1.PaymentKind_PAYMENT_KIND_MEDICARE, referralsv1.PaymentKind_PAYMENT_KIND_SELF_PAY}
	localities := []string{"Springfield", "SPRINGFIELD", "Shelbyville", ""}
	postals := []string{"62701", "62702", ""}
	byID := map[string]*referralsv1.Program{}
	n := 80
	if clustered {
		n = 300
	}
	for i := range n {
		services, pays, langs := some(rnd, allServices), some(rnd, allPays), some(rnd, []string{"en", "es", "es-MX", "FR", "zh-Hant"})
		if len(services) == 0 {
			services = []referralsv1.ServiceKind{bup}
		}
		if clustered { // few profiles, many programs each
			services = [][]referralsv1.ServiceKind{{bup, outpt}, {methad}}[rnd.IntN(2)]
			pays = [][]referralsv1.PaymentKind{{medicaid}, {sliding, private}}[rnd.IntN(2)]
			langs = [][]string{{"en"}, {"es-MX", "en"}}[rnd.IntN(2)]
		}
		p, err := client.CreateProgram(admin, &referralsv1.CreateProgramRequest{Parent: "clinics/north", Program: &referralsv1.Program{
			DisplayName: fmt.Sprintf("Program %d", i), Services: services, PaymentsAccepted: pays,
			Telehealth: rnd.IntN(2) == 0, SameDayIntake: rnd.IntN(2) == 0, SameDayInduction: rnd.IntN(2) == 0,
			Languages: langs,
			Address:   &referralsv1.Address{Locality: localities[rnd.IntN(len(localities))], PostalCode: postals[rnd.IntN(len(postals))]},
		}})
		if err != nil {
			t.Fatalf("CreateProgram: %v", err)
		}
		// Few slot counts, so that ties on score and slots fall to the name.
		if p, err = client.ReportCapacity(admin, &referralsv1.ReportCapacityRequest{Name: p.GetName(),
			AvailableSlots: int32(rnd.IntN(3)), Waitlist: rnd.IntN(3) == 0}); err != nil {
			t.Fatalf("ReportCapacity: %v", err)
		}
		byID[p.GetName()[len("clinics/north/programs/"):]] = p
	}
	if featureless {
		tag, err := pool.Exec(context.Background(), `UPDATE program_profiles SET services = NULL, payments = NULL, telehealth = NULL,
			same_day_intake = NULL, same_day_induction = NULL, available_slots = NULL, waitlist = NULL, languages = NULL
			WHERE profile IN (SELECT profile FROM program_profiles ORDER BY profile LIMIT (SELECT count(*) / 2 FROM program_profiles))`)
		if err != nil || tag.RowsAffected() == 0 {
			t.Fatalf("profiles without features: %v, %v", tag, err)
		}
	}
	all := make([]*referralsv1.Program, 0, len(byID))
	for _, p := range byID {
		all = append(all, p)
	}

	urgencies := []referralsv1.Urgency{referralsv1.Urgency_URGENCY_IMMEDIATE, referralsv1.Urgency_URGENCY_URGENT, referralsv1.Urgency_URGENCY_ROUTINE}
	coverages := []referralsv1.CoverageKind{referralsv1.CoverageKind_COVERAGE_KIND_UNSPECIFIED, referralsv1.CoverageKind_COVERAGE_KIND_MEDICAID,
		referralsv1.CoverageKind_COVERAGE_KIND_PRIVATE, referralsv1.CoverageKind_COVERAGE_KIND_UNINSURED_SELF_PAY, referralsv1.CoverageKind_COVERAGE_KIND_OTHER}
	barriers := []referralsv1.BarrierKind{referralsv1.BarrierKind_BARRIER_KIND_FEAR_OF_WITHDRAWAL, referralsv1.BarrierKind_BARRIER_KIND_LOGISTICAL_WORK,
		referralsv1.BarrierKind_BARRIER_KIND_LOGISTICAL_CAREGIVING, referralsv1.BarrierKind_BARRIER_KIND_STIGMA, referralsv1.BarrierKind_BARRIER_KIND_FINANCIAL}
	ctx := context.Background()
	for i := range 150 {
		req := &referralsv1.MatchProgramsRequest{Parent: "clinics/north", Urgency: urgencies[rnd.IntN(len(urgencies))],
			Coverage: coverages[rnd.IntN(len(coverages))], Barriers: some(rnd, barriers), PrefersTelehealth: rnd.IntN(2) == 0,
			ServiceKinds: some(rnd, allServices[:5]), PostalCode: postals[rnd.IntN(len(postals))],
			Locality: []string{"springfield", "Shelbyville", "Ogdenville", ""}[rnd.IntN(4)],
			Language: []string{"es", "EN", "es-mx", "fr", "de", ""}[rnd.IntN(6)], MaxResults: int32(1 + rnd.IntN(12))}
		for range rnd.IntN(4) {
			req.ExcludePrograms = append(req.ExcludePrograms, all[rnd.IntN(len(all))].GetName())
		}

		// Every row's total, database against Go.
		expr, args := scoreSQL(req, 3)
		type scored struct {
			ID    string
			Score int32
		}
		rows, err := pool.Query(ctx, `SELECT id, `+expr+` FROM programs WHERE clinic = $1 AND services && $2`,
			append([]any{"north", enumInts(wanted(req))}, args...)...)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		totals, err := pgx.CollectRows(rows, pgx.RowToStructByPos[scored])
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		for _, s := range totals {
			want, _, ok := score(req, byID[s.ID])
			if req.GetUrgency() == referralsv1.Urgency_URGENCY_IMMEDIATE && !ok {
				continue // left out by the slot condition, not by the score
			}
			if !ok || s.Score != want {
				t.Fatalf("request %d (%v), program %s (%v): database scores %d, Go %d (eligible %v)", i, req, s.ID, byID[s.ID], s.Score, want, ok)
			}
		}

		// The served top matches, against ranking everything in Go.
		want := rank(req, slices.DeleteFunc(slices.Clone(all), func(p *referralsv1.Program) bool {
			return slices.Contains(req.GetExcludePrograms(), p.GetName())
		}))
		want = want[:min(len(want), int(req.GetMaxResults()))]
		resp, err := client.MatchPrograms(counselor, req)
		if err != nil {
			t.Fatalf("request %d: MatchPrograms: %v", i, err)
		}
		name := func(m *referralsv1.ProgramMatch) string {
			return fmt.Sprintf("%s=%d", m.GetProgram().GetName(), m.GetScore())
		}
		var got, wantNames []string
		for _, m := range resp.GetMatches() {
			got = append(got, name(m))
		}
		for _, m := range want {
			wantNames = append(wantNames, name(m))
		}
		if !slices.Equal(got, wantNames) {
			t.Fatalf("request %d (%v):\n served %v\n want   %v", i, req, got, wantNames)
		}
	}
}
