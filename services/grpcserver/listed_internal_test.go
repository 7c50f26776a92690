package grpcserver

import (
	"fmt"
	"slices"
	"testing"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/audit"
)

// What a list or search answered with is named in the audit record: its
// items' names, a match's program's, plain names, at most
// audit.MaxRecords; a single record's answer names nothing more.
func TestListedNames(t *testing.T) {
	fams := &familiesv1.ListFamiliesResponse{Families: []*familiesv1.Family{{Name: "clinics/north/families/a"}, {Name: "clinics/north/families/b"}},
		NextPageToken: "clinics/north/families/b"}
	if got := listedNames(fams); !slices.Equal(got, []string{"clinics/north/families/a", "clinics/north/families/b"}) {
		t.Errorf("families: %v", got)
	}
	matches := &referralsv1.MatchProgramsResponse{Matches: []*referralsv1.ProgramMatch{{Program: &referralsv1.Program{Name: "clinics/north/programs/p"}}}}
	if got := listedNames(matches); !slices.Equal(got, []string{"clinics/north/programs/p"}) {
		t.Errorf("matches: %v", got)
	}
	covered := &familiesv1.ListCoveredFamiliesResponse{Families: []string{"clinics/north/families/c"}}
	if got := listedNames(covered); !slices.Equal(got, []string{"clinics/north/families/c"}) {
		t.Errorf("covered: %v", got)
	}
	one := &familiesv1.Family{Name: "clinics/north/families/a", Members: []*familiesv1.Member{{Id: "m"}}}
	if got := listedNames(one); got != nil {
		t.Errorf("a family's answer: %v; want none", got)
	}
	many := &familiesv1.ListFamiliesResponse{}
	for i := range audit.MaxRecords + 5 {
		many.Families = append(many.Families, &familiesv1.Family{Name: fmt.Sprintf("clinics/north/families/f%d", i)})
	}
	if got := listedNames(many); len(got) != audit.MaxRecords {
		t.Errorf("%d names of %d families; want %d", len(got), len(many.Families), audit.MaxRecords)
	}
}
