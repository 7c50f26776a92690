package audit_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	auditv1 "github.com/handoff-health/handoff/gen/go/handoff/audit/v1"
	"github.com/handoff-health/handoff/services/audit"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

// Outcomes are google.rpc.Code names, as the API promises: grpc-go spells
// one of them differently (Canceled).
func TestOutcomeIsTheCodeName(t *testing.T) {
	want := map[codes.Code]string{codes.OK: "OK", codes.Canceled: "CANCELLED", codes.NotFound: "NOT_FOUND",
		codes.PermissionDenied: "PERMISSION_DENIED", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
		codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Unauthenticated: "UNAUTHENTICATED"}
	for c, name := range want {
		if got := audit.Outcome(c); got != name {
			t.Errorf("Outcome(%v) = %q, want %q", c, got, name)
		}
	}
}

// The roles recorded are those authorization compared: a role with a
// stray space granted nothing, and is recorded as it came.
func TestRolesAreRecordedAsGiven(t *testing.T) {
	if got := audit.Roles([]auth.Role{"counselor", " clinic_admin"}); !slices.Equal(got, []string{"counselor", " clinic_admin"}) {
		t.Fatalf("Roles = %q", got)
	}
}

// A cancelled call recorded by an earlier release (CANCELED) reads, and
// is found, under the canonical name.
func TestEarlierCancelledRecordsReadCanonically(t *testing.T) {
	pool, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `INSERT INTO audit_log (clinic, subject, roles, method, outcome)
		VALUES ('north', 'counselor-1', '{counselor}', '/m', 'CANCELED'), ('north', 'counselor-1', '{counselor}', '/m', 'OK')`); err != nil {
		t.Fatal(err)
	}
	db := pgtest.App(t, schema)
	admin := auth.WithPrincipal(pgdb.WithClinic(ctx, "north"), auth.Principal{Subject: "admin-1", Clinic: "north", Roles: []auth.Role{auth.RoleClinicAdmin}})
	// A record shows once the transactions begun before its own have
	// ended: other tests write meanwhile.
	var resp *auditv1.ListAuditEventsResponse
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var err error
		resp, err = audit.List(admin, db, &auditv1.ListAuditEventsRequest{Parent: "clinics/north", Filter: `outcome = "CANCELLED"`})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetAuditEvents()) > 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(resp.GetAuditEvents()) != 1 || resp.GetAuditEvents()[0].GetOutcome() != "CANCELLED" {
		t.Fatalf("cancelled calls = %v; want the one, as CANCELLED", resp.GetAuditEvents())
	}
}
