package families_test

import (
	"context"
	"testing"

	"google.golang.org/grpc/codes"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	"github.com/handoff-health/handoff/services/auth"
)

// With the service layer's clinic check turned off, row-level security alone
// still shows another clinic nothing and lets it change nothing. (Not
// parallel: the switch is process-wide.)
func TestRowLevelSecurityAloneIsolatesClinics(t *testing.T) {
	f := setup(t)
	fam := f.create(t)
	b, err := f.client.CreateBoundary(f.ctx, &familiesv1.CreateBoundaryRequest{Parent: fam.GetName(), Boundary: &familiesv1.Boundary{
		Category: familiesv1.BoundaryCategory_BOUNDARY_CATEGORY_NO_EXCUSES, Wording: "No cover stories."}})
	if err != nil {
		t.Fatal(err)
	}
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
