package families_test

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

// With the service layer's clinic check turned off, row-level security alone
// still shows another clinic nothing and lets it change nothing. (Not
// parallel: the switch is process-wide.)
func TestRowLevelSecurityAloneIsolatesClinics(t *testing.T) {
	f := setup(t)
	fam := f.create(t)
	b := f.boundary(t, fam)
	var err error
	restore := auth.DisableClinicCheckForTesting()
	defer restore()
	south := f.env.Counselor("south")

	_, err = f.client.GetFamily(south, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	wantCode(t, err, codes.NotFound)
	list, err := f.client.ListFamilies(south, &familiesv1.ListFamiliesRequest{Parent: "clinics/north"})
	if err != nil || len(list.GetFamilies()) != 0 {
		t.Fatalf("south listed north's families: %v, %v", list, err)
	}
	_, err = f.client.CreateBarrier(south, &familiesv1.CreateBarrierRequest{Parent: fam.GetName(),
		Barrier: &familiesv1.Barrier{Kind: familiesv1.BarrierKind_BARRIER_KIND_STIGMA}})
	wantCode(t, err, codes.NotFound)
	_, err = f.client.AgreeBoundary(south, &familiesv1.TransitionBoundaryRequest{Name: b.GetName()})
	wantCode(t, err, codes.NotFound)
	// Writing a row that claims to be north's, in south's scope, is refused
	// by the policy's WITH CHECK.
	_, err = f.client.CreateFamily(south, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: sampleFamily()})
	if err == nil {
		t.Fatal("south created a family in north")
	}
	var n int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM families`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("families = %d, %v", n, err)
	}
	// The check is back: north still sees its own.
	restore()
	if _, err := f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()}); err != nil {
		t.Fatal(err)
	}
}

// The histories the service only adds to cannot be rewritten through its
// database role, even by a statement no handler would send; deleting the
// family still takes them with it.
func TestHistoriesAreAppendOnlyForTheService(t *testing.T) {
	t.Parallel()
	f := setup(t)
	fam := f.create(t)
	b := f.boundary(t, fam)
	if _, err := f.client.AgreeBoundary(f.ctx, &familiesv1.TransitionBoundaryRequest{Name: b.GetName()}); err != nil {
		t.Fatal(err)
	}
	ws, err := f.client.CreateWarningSign(f.ctx, &familiesv1.CreateWarningSignRequest{Parent: fam.GetName(),
		WarningSign: &familiesv1.WarningSign{Kind: familiesv1.WarningSignKind_WARNING_SIGN_KIND_OVERDOSE}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.RetractWarningSign(f.ctx, &familiesv1.RetractWarningSignRequest{Name: ws.GetName(), Reason: "wrong family"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.CreateSafetyScreen(f.ctx, &familiesv1.CreateSafetyScreenRequest{Parent: fam.GetName(),
		SafetyScreen: &familiesv1.SafetyScreen{Result: familiesv1.SafetyRisk_SAFETY_RISK_NO_RISK}}); err != nil {
		t.Fatal(err)
	}
	cs, err := f.session(f.ctx, fam, "", familiesv1.CraftTopic_CRAFT_TOPIC_INDUCTION)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.RetractCraftSession(f.ctx, &familiesv1.RetractCraftSessionRequest{Name: cs.GetName(), Reason: "wrong family"}); err != nil {
		t.Fatal(err)
	}
	tables := []string{"boundary_events", "warning_signs", "warning_sign_retractions", "safety_screens", "craft_sessions", "craft_session_retractions"}
	count := func() (n int) {
		t.Helper()
		for _, table := range tables {
			var c int
			if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM `+table).Scan(&c); err != nil {
				t.Fatal(err)
			}
			n += c
		}
		return n
	}
	if n := count(); n < len(tables) {
		t.Fatalf("%d history rows, want at least one in each table", n)
	}
	app := pgtest.App(t, f.schema)
	north := pgdb.WithClinic(context.Background(), "north")
	for _, table := range tables {
		for _, st := range []string{`UPDATE ` + table + ` SET clinic = clinic`, `DELETE FROM ` + table, `TRUNCATE ` + table} {
			if _, err := app.Exec(north, st); err == nil || !strings.Contains(err.Error(), "permission denied") {
				t.Errorf("%s as the service: %v, want permission denied", st, err)
			}
		}
	}
	if _, err := f.client.DeleteFamily(f.env.As("north", "admin-1", auth.RoleClinicAdmin), &familiesv1.DeleteFamilyRequest{Name: fam.GetName()}); err != nil {
		t.Fatalf("DeleteFamily: %v", err)
	}
	if n := count(); n != 0 {
		t.Fatalf("%d history rows left after the family was deleted", n)
	}
}

// boundary proposes a boundary for fam.
func (f *fixture) boundary(t *testing.T, fam *familiesv1.Family) *familiesv1.Boundary {
	t.Helper()
	b, err := f.client.CreateBoundary(f.ctx, &familiesv1.CreateBoundaryRequest{Parent: fam.GetName(), Boundary: &familiesv1.Boundary{
		Category: familiesv1.BoundaryCategory_BOUNDARY_CATEGORY_NO_EXCUSES, Wording: "No cover stories."}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}
