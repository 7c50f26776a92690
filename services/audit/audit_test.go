package audit_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var err error
		resp, err = audit.List(admin, db, "families", &auditv1.ListAuditEventsRequest{Parent: "clinics/north", Filter: `outcome = "CANCELLED"`})
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

// A time-bounded list pages through the records written within the
// bounds, in transaction order, each once, whatever the page size; a
// window with none in it is empty.
func TestTimeBoundedListPagesTheWindow(t *testing.T) {
	pool, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	ctx := context.Background()
	base := time.Now().UTC().Truncate(time.Second)
	day := func(n int) time.Time { return base.AddDate(0, 0, -n) }
	// Ten records, one a day, each in a transaction of its own.
	for n := 10; n >= 1; n-- {
		if _, err := pool.Exec(ctx, `INSERT INTO audit_log (clinic, event_time, subject, roles, method, outcome)
			VALUES ('north', $1, 'counselor-1', '{counselor}', $2, 'OK')`, day(n), fmt.Sprintf("/m%d", n)); err != nil {
			t.Fatal(err)
		}
	}
	db := pgtest.App(t, schema)
	admin := auth.WithPrincipal(pgdb.WithClinic(ctx, "north"), auth.Principal{Subject: "admin-1", Clinic: "north", Roles: []auth.Role{auth.RoleClinicAdmin}})
	list := func(filter string, size int32) []string {
		t.Helper()
		var got []string
		for token, pages := "", 0; ; pages++ {
			if pages > 20 {
				t.Fatalf("%s: more pages than records: %v", filter, got)
			}
			resp, err := audit.List(admin, db, "families", &auditv1.ListAuditEventsRequest{Parent: "clinics/north", Filter: filter, PageSize: size, PageToken: token})
			if err != nil {
				t.Fatalf("%s: %v", filter, err)
			}
			for _, e := range resp.GetAuditEvents() {
				got = append(got, e.GetMethod())
			}
			if token = resp.GetNextPageToken(); token == "" {
				return got
			}
		}
	}
	// The records show once the transactions begun before them have
	// ended: other tests write meanwhile.
	for deadline := time.Now().Add(30 * time.Second); len(list("", 100)) < 10; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the records never showed")
		}
	}
	at := func(n int) string { return day(n).Format(time.RFC3339) }
	for _, c := range []struct {
		filter string
		want   string
	}{
		{fmt.Sprintf(`time >= %q AND time < %q`, at(6), at(2)), "/m6 /m5 /m4 /m3"},
		{fmt.Sprintf(`time > %q`, at(4)), "/m3 /m2 /m1"},
		{fmt.Sprintf(`time >= %q AND time <= %q AND method = "/m7"`, at(9), at(5)), "/m7"},
		{fmt.Sprintf(`time <= %q`, at(9)), "/m10 /m9"},
		{fmt.Sprintf(`time < %q AND method != "/m5"`, at(3)), "/m10 /m9 /m8 /m7 /m6 /m4"},
		{fmt.Sprintf(`time >= %q`, day(-1).Format(time.RFC3339)), ""},
		{fmt.Sprintf(`time >= %q AND time <= %q`, at(3), at(7)), ""},
	} {
		for _, size := range []int32{1, 2, 100} {
			if got := strings.Join(list(c.filter, size), " "); got != c.want {
				t.Errorf("%s, pages of %d: %q; want %q", c.filter, size, got, c.want)
			}
		}
	}
}

// A call's stamp names what the call noted (Disclose) before its first
// statement went out, in the rows the record filter reads; one noted after
// is not in it, and the call is told it needs another record.
func TestStampNamesWhatWasNotedBeforeIt(t *testing.T) {
	pool, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	db := pgtest.App(t, schema)
	ctx, noted := audit.Gathering(pgdb.WithClinic(context.Background(), "north"))
	st := (&audit.Recorder{DB: db}).Stamp(ctx, audit.Event{Subject: "calendar", Roles: []string{"calendar_feed"}, Method: "/m", Resource: "clinics/north/calendarFeeds/f"})
	audit.Disclose(ctx, "clinics/north/interventions/before")
	tx, err := db.Begin(pgdb.WithStamp(ctx, st))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) }) // a no-op once committed
	if _, err := tx.Exec(ctx, `SELECT 1`); err != nil {
		t.Fatal(err)
	}
	if names, late := noted(); late != nil || len(names) != 1 {
		t.Fatalf("noted %v, late %v, before anything more was noted; want one, none late", names, late)
	}
	audit.Disclose(ctx, "clinics/north/interventions/after")
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var recorded []string
	if err := pool.QueryRow(context.Background(), `SELECT array_agg(record ORDER BY record) FROM audit_records`).Scan(&recorded); err != nil {
		t.Fatal(err)
	}
	if !st.Written() || !slices.Equal(recorded, []string{"clinics/north/interventions/before"}) {
		t.Fatalf("stamp written %v, records %v; want the one noted before the first statement", st.Written(), recorded)
	}
	if names, late := noted(); !slices.Equal(late, []string{"clinics/north/interventions/after"}) || len(names) != 2 {
		t.Fatalf("noted %v, late %v; want both, the second late", names, late)
	}
}

// A page token of one service's trail is refused by another's: both have
// the same parent and filters, and its cursor is a place in the first
// one's table, which the second would silently page from.
func TestPageTokenServesItsOwnTrail(t *testing.T) {
	pool, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	ctx := context.Background()
	for n := range 3 {
		if _, err := pool.Exec(ctx, `INSERT INTO audit_log (clinic, subject, roles, method, outcome)
			VALUES ('north', 'counselor-1', '{counselor}', $1, 'OK')`, fmt.Sprintf("/m%d", n)); err != nil {
			t.Fatal(err)
		}
	}
	db := pgtest.App(t, schema)
	admin := auth.WithPrincipal(pgdb.WithClinic(ctx, "north"), auth.Principal{Subject: "admin-1", Clinic: "north", Roles: []auth.Role{auth.RoleClinicAdmin}})
	var token string
	for deadline := time.Now().Add(30 * time.Second); token == ""; time.Sleep(20 * time.Millisecond) {
		resp, err := audit.List(admin, db, "families", &auditv1.ListAuditEventsRequest{Parent: "clinics/north", PageSize: 1})
		if err != nil {
			t.Fatal(err)
		}
		if token = resp.GetNextPageToken(); token == "" && time.Now().After(deadline) {
			t.Fatal("no second page")
		}
	}
	if _, err := audit.List(admin, db, "interventions", &auditv1.ListAuditEventsRequest{Parent: "clinics/north", PageSize: 1, PageToken: token}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("the families trail's token on the interventions trail: %v, want InvalidArgument", err)
	}
	next, err := audit.List(admin, db, "families", &auditv1.ListAuditEventsRequest{Parent: "clinics/north", PageSize: 1, PageToken: token})
	if err != nil || len(next.GetAuditEvents()) != 1 || next.GetAuditEvents()[0].GetMethod() != "/m1" {
		t.Fatalf("the second page of its own trail: %v, %v", next.GetAuditEvents(), err)
	}
}
