package audit

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

// The time bounds of a filter are found on audit_log_time alone, not by
// taking min and max off the transaction order (which would read the
// trail from its oldest record, the scan they exist to avoid), and the
// outcome filter reads its own index.
func TestTimeAndOutcomeFiltersUseTheirIndexes(t *testing.T) {
	pool, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	ctx := context.Background()
	// A year of records, one every two minutes, in transaction order.
	if _, err := pool.Exec(ctx, `INSERT INTO audit_log (clinic, event_time, subject, roles, method, resource, outcome, xact)
		SELECT 'north', now() - interval '365 days' + i * interval '2 minutes', 'user-' || (i % 500), '{}', 'm' || (i % 30),
			'clinics/north/families/f' || (i % 5000), CASE WHEN i % 500 = 0 THEN 'PERMISSION_DENIED' ELSE 'OK' END, (i::text)::xid8
		FROM generate_series(1, 200000) i`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `VACUUM ANALYZE audit_log`); err != nil {
		t.Fatal(err)
	}
	db := pgtest.App(t, schema)
	sctx := pgdb.WithClinic(ctx, "north")
	plan := func(sql string, args ...any) string {
		t.Helper()
		var out []byte
		if err := db.QueryRow(sctx, `EXPLAIN (FORMAT JSON) `+sql, args...).Scan(&out); err != nil {
			t.Fatal(err)
		}
		return string(out)
	}
	from, to := time.Now().Add(-30*24*time.Hour), time.Now().Add(-20*24*time.Hour)
	for _, c := range []struct {
		from, to bool
		args     []any
	}{{true, false, []any{"north", from}}, {true, true, []any{"north", from, to}}} {
		if p := plan(windowQuery(c.from, c.to), c.args...); !strings.Contains(p, `"audit_log_time"`) || strings.Contains(p, `"audit_log_order"`) {
			t.Errorf("the time bounds (from: %v, to: %v) are not read off audit_log_time:\n%s", c.from, c.to, p)
		}
	}
	if p := plan(`SELECT id FROM audit_log WHERE clinic = 'north' AND (xact, id) > ('0'::xid8, 0)
		AND xact < pg_snapshot_xmin(pg_current_snapshot()) AND ` + outcomeColumn + ` = 'PERMISSION_DENIED' ORDER BY xact, id LIMIT 51`); !strings.Contains(p, `"audit_log_outcome"`) {
		t.Errorf("the outcome filter does not read audit_log_outcome:\n%s", p)
	}
}

// A time-bounded listing's first page starts no later than a transaction
// still running when it is read: one that writes a record in the window
// and commits after the bounds are found, its id below every committed
// record's, would otherwise fall before the first page and out of every
// page of the listing.
func TestWindowStartsAtARunningTransaction(t *testing.T) {
	pool, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	ctx := context.Background()
	insert := `INSERT INTO audit_log (clinic, event_time, subject, roles, method, resource, outcome) VALUES ('north', now(), 'u', '{}', 'm', 'r', 'OK')`
	late, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Rollback(ctx) //nolint:errcheck
	if _, err := late.Exec(ctx, insert); err != nil {
		t.Fatal(err)
	}
	var lateXact uint64
	if err := late.QueryRow(ctx, `SELECT pg_current_xact_id()::text::bigint`).Scan(&lateXact); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, insert); err != nil { // committed, with a greater id
		t.Fatal(err)
	}
	db := pgtest.App(t, schema)
	var cur cursor
	found, err := narrowToWindow(pgdb.WithClinic(ctx, "north"), db, "north", &cur, time.Now().Add(-time.Hour), time.Time{}, true, false)
	if err != nil || !found {
		t.Fatalf("bounds: found %v, %v", found, err)
	}
	start, err := strconv.ParseUint(cur.xact, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	if start > lateXact {
		t.Fatalf("the first page starts at transaction %d, past %d, still running with a record in the window", start, lateXact)
	}
}
