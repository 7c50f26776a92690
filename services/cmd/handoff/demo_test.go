package main

import (
	"context"
	"testing"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/grpcclient"
	"github.com/handoff-health/handoff/services/stack/stacktest"
)

// The demo loads again, as `make run` does on every start, after someone
// deleted what it made (a barrier, a program, the family): what is gone is
// made again, the rest is left as it is, and the capacity is reported anew.
func TestDemoLoadsAgainAfterItsRecordsAreDeleted(t *testing.T) {
	sys := stacktest.Start(t)
	ctx := context.Background()
	load := func() string {
		t.Helper()
		name, err := loadDemo(ctx, sys.Stack, sys.Issuer)
		if err != nil {
			t.Fatalf("loading the demo: %v", err)
		}
		return name
	}
	as := func(subject string, role auth.Role) context.Context {
		return auth.WithToken(ctx, sys.Issuer.MustMint(auth.TokenOptions{Subject: subject, Clinic: "demo", Roles: []auth.Role{role}}))
	}
	admin, counselor := as("admin-1", auth.RoleClinicAdmin), as("counselor-1", auth.RoleCounselor)
	famConn, err := grpcclient.Dial(sys.Stack.FamiliesAddr, grpcclient.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer famConn.Close()
	refConn, err := grpcclient.Dial(sys.Stack.ReferralsAddr, grpcclient.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer refConn.Close()
	fam, ref := familiesv1.NewFamiliesServiceClient(famConn), referralsv1.NewReferralsServiceClient(refConn)
	barriers := func(family string) int {
		t.Helper()
		list, err := fam.ListBarriers(counselor, &familiesv1.ListBarriersRequest{Parent: family})
		if err != nil {
			t.Fatal(err)
		}
		return len(list.GetBarriers())
	}
	programs := func() []*referralsv1.Program {
		t.Helper()
		list, err := ref.ListPrograms(admin, &referralsv1.ListProgramsRequest{Parent: "clinics/demo"})
		if err != nil {
			t.Fatal(err)
		}
		return list.GetPrograms()
	}

	first := load()
	if again := load(); again != first || barriers(first) != 2 || len(programs()) != 5 {
		t.Fatalf("loaded twice: %s then %s, %d barriers, %d programs; want one family with 2 barriers, 5 programs",
			first, again, barriers(first), len(programs()))
	}
	// A barrier and a program deleted, a program's slots used up.
	list, err := fam.ListBarriers(counselor, &familiesv1.ListBarriersRequest{Parent: first})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fam.DeleteBarrier(counselor, &familiesv1.DeleteBarrierRequest{Name: list.GetBarriers()[0].GetName()}); err != nil {
		t.Fatal(err)
	}
	progs := programs()
	if _, err := ref.DeleteProgram(admin, &referralsv1.DeleteProgramRequest{Name: progs[0].GetName()}); err != nil {
		t.Fatal(err)
	}
	if _, err := ref.ReportCapacity(admin, &referralsv1.ReportCapacityRequest{Name: progs[1].GetName(), AvailableSlots: 0}); err != nil {
		t.Fatal(err)
	}
	if again := load(); again != first || barriers(first) != 2 || len(programs()) != 5 {
		t.Fatalf("after deletions: %s (first %s), %d barriers, %d programs; want the same family with 2 barriers, 5 programs",
			again, first, barriers(first), len(programs()))
	}
	if p, err := ref.GetProgram(admin, &referralsv1.GetProgramRequest{Name: progs[1].GetName()}); err != nil || p.GetCapacity().GetAvailableSlots() == 0 {
		t.Fatalf("the used-up program after loading: %v, %v; want its slots reported again", p, err)
	}
	// The family deleted: a new one is made, and kept on the next load.
	if _, err := fam.DeleteFamily(admin, &familiesv1.DeleteFamilyRequest{Name: first}); err != nil {
		t.Fatal(err)
	}
	second := load()
	if second == first || barriers(second) != 2 {
		t.Fatalf("after the family's deletion: %s (first %s), %d barriers; want a new family with 2 barriers", second, first, barriers(second))
	}
	if third := load(); third != second {
		t.Fatalf("loaded again: %s; want %s", third, second)
	}
}
