package pgdb_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/handoff-health/handoff/services/audit"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

// The row-level security policy must not make the planner count the
// clinic twice. A clinic with 1% of a table's rows, whose estimate the
// policy divided by a hundred more, had its keyset pages planned as a
// scan and a sort of all its rows instead of an ordered index read.
func TestPolicyKeepsTheClinicsRowEstimate(t *testing.T) {
	t.Parallel()
	pool, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `INSERT INTO audit_log (clinic, subject, roles, method, outcome)
		SELECT CASE WHEN i % 100 = 0 THEN 'small' ELSE 'big' END, 's', '{}', 'm', 'OK' FROM generate_series(1, 100000) i`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ANALYZE audit_log`); err != nil {
		t.Fatal(err)
	}
	db := pgtest.App(t, schema)
	var out []byte
	if err := db.QueryRow(pgdb.WithClinic(ctx, "small"), `EXPLAIN (FORMAT JSON) SELECT id FROM audit_log WHERE clinic = 'small'`).Scan(&out); err != nil {
		t.Fatal(err)
	}
	var plan []struct {
		Plan struct {
			Rows float64 `json:"Plan Rows"`
		}
	}
	if err := json.Unmarshal(out, &plan); err != nil || len(plan) != 1 {
		t.Fatalf("plan %s: %v", out, err)
	}
	// 1,000 rows are the clinic's; the double count estimated about 10.
	if got := plan[0].Plan.Rows; got < 250 {
		t.Errorf("the planner expects %.0f of the clinic's 1000 rows: the policy is counted with the query's own clinic condition\n%s", got, out)
	}
	var n int
	if err := db.QueryRow(pgdb.WithClinic(ctx, "small"), `SELECT count(*) FROM audit_log`).Scan(&n); err != nil || n != 1000 {
		t.Errorf("clinic small sees %d rows (%v), want its 1000", n, err)
	}
}

// "Who touched this record?", "what did this person do?" and "who called
// this method?" read only their own part of the trail: an index serves
// each filter, where the clinic's index alone read its whole trail, kept
// for years, in transaction order.
func TestAuditFiltersUseTheirIndexes(t *testing.T) {
	t.Parallel()
	pool, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `INSERT INTO audit_log (clinic, subject, roles, method, resource, outcome)
		SELECT 'north', 'user-' || (i % 500), '{}', 'm' || (i % 30),
			'clinics/north/families/f' || (i % 5000), 'OK' FROM generate_series(1, 100000) i`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ANALYZE audit_log`); err != nil {
		t.Fatal(err)
	}
	db := pgtest.App(t, schema)
	for filter, index := range map[string]string{
		`resource = 'clinics/north/families/f42'`: "audit_log_resource",
		`subject = 'user-42'`:                     "audit_log_subject",
		`method = 'm7'`:                           "audit_log_method",
	} {
		var out []byte
		// The shape of audit.List's query.
		if err := db.QueryRow(pgdb.WithClinic(ctx, "north"), `EXPLAIN (FORMAT JSON) SELECT id FROM audit_log
			WHERE clinic = 'north' AND (xact, id) > ('0'::xid8, 0) AND xact < pg_snapshot_xmin(pg_current_snapshot())
			AND `+filter+` ORDER BY xact, id LIMIT 51`).Scan(&out); err != nil {
			t.Fatal(err)
		}
		if want := `"` + index + `"`; !strings.Contains(string(out), want) {
			t.Errorf("a filter on %s does not read index %s:\n%s", filter, want, out)
		}
	}
}

// "Who saw this record?" reads the lists that returned it, and the calls
// that named it, through their indexes, not the clinic's whole trail.
func TestAuditRecordFilterUsesItsIndexes(t *testing.T) {
	t.Parallel()
	pool, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	ctx := context.Background()
	// One call in ten a list of 20 families.
	if _, err := pool.Exec(ctx, `WITH e AS (INSERT INTO audit_log (clinic, subject, roles, method, resource, outcome, records)
		SELECT 'north', 'user-' || (i % 500), '{}', 'm', 'clinics/north/families/f' || (i % 5000), 'OK',
			CASE WHEN i % 10 = 0 THEN ARRAY(SELECT 'clinics/north/families/f' || ((i + j) % 5000) FROM generate_series(1, 20) j) END
		FROM generate_series(1, 100000) i RETURNING id, records)
		INSERT INTO audit_records (clinic, record, audit_id) SELECT 'north', r, e.id FROM e, unnest(e.records) r`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ANALYZE audit_log; ANALYZE audit_records`); err != nil {
		t.Fatal(err)
	}
	db := pgtest.App(t, schema)
	var out []byte
	// The shape of audit.List's query, with the filter as it renders it.
	if err := db.QueryRow(pgdb.WithClinic(ctx, "north"), `EXPLAIN (FORMAT JSON) SELECT id FROM audit_log
		WHERE clinic = 'north' AND (xact, id) > ('0'::xid8, 0) AND xact < pg_snapshot_xmin(pg_current_snapshot())
		AND (`+audit.RecordFilter("$1")+`) ORDER BY xact, id LIMIT 51`,
		"clinics/north/families/f42").Scan(&out); err != nil {
		t.Fatal(err)
	}
	for _, index := range []string{"audit_records_record", "audit_log_resource", "audit_log_pkey"} {
		if !strings.Contains(string(out), `"`+index+`"`) {
			t.Errorf("a filter on record does not read index %s:\n%s", index, out)
		}
	}
	if strings.Contains(string(out), `"Seq Scan"`) {
		t.Errorf("a filter on record scans a table:\n%s", out)
	}
}
