package referrals

import (
	"context"
	"strings"
	"testing"

	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

// A list filtered by program reads that program's referrals off their
// index, not the clinic's whole history in id order, and matches only
// the program named: not one of another clinic, nor a name with more to
// it.
func TestProgramFilterReadsItsIndex(t *testing.T) {
	ctx := context.Background()
	pool, schema := pgtest.Schema(t, Migrations()...)
	if _, err := pool.Exec(ctx, `INSERT INTO programs (clinic, id, doc, services, payments, telehealth, same_day_intake,
		same_day_induction, available_slots, waitlist, locality, postal_code, languages)
		SELECT c, 'p' || i, '{}', '{1}', '{1}', false, false, false, 1, false, 'town', '00001', '{en}'
		FROM generate_series(0, 399) i, (VALUES ('north'), ('south')) v(c)`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO referrals (clinic, id, family, subject_kind, service_kind, program_id, urgency, reason, state)
		SELECT 'north', lpad(i::text, 8, '0'), 'clinics/north/families/f' || (i % 1000), 1, 1, 'p' || (i % 400), 1, 'r', 1
		FROM generate_series(1, 100000) i`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO referrals (clinic, id, family, subject_kind, service_kind, program_id, urgency, reason, state)
		VALUES ('south', 'x1', 'clinics/south/families/f1', 1, 1, 'p7', 1, 'r', 1)`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ANALYZE referrals`); err != nil {
		t.Fatal(err)
	}
	l := lister{t: t, db: pgtest.App(t, schema)}
	if plan := l.plan(`program = "clinics/north/programs/p7"`); !strings.Contains(plan, `"referrals_program"`) {
		t.Errorf("a list by program does not read referrals_program:\n%s", plan)
	}
	for filter, want := range map[string]int{
		`program = "clinics/north/programs/p7"`:       51, // a page of its 250
		`program = "clinics/south/programs/p7"`:       0,
		`program = "clinics/north/programs/p7/extra"`: 0,
		`program = "clinics/north/families/p7"`:       0,
		`program = "p7"`:                              0,
		`program != "clinics/north/programs/p7"`:      51,
	} {
		if got := l.count(filter); got != want {
			t.Errorf("%s: %d rows; want %d", filter, got, want)
		}
	}
}

// The EHR's polls of the whole clinic, by Task status and by update time,
// read an index: most of the clinic's referrals are long closed, and a
// walk by id would read them all to fill a page of the few open or
// changed. A status standing for two states finds both.
func TestPollFiltersReadTheirIndexes(t *testing.T) {
	ctx := context.Background()
	pool, schema := pgtest.Schema(t, Migrations()...)
	if _, err := pool.Exec(ctx, `INSERT INTO programs (clinic, id, doc, services, payments, telehealth, same_day_intake,
		same_day_induction, available_slots, waitlist, locality, postal_code, languages)
		VALUES ('north', 'p', '{}', '{1}', '{1}', false, false, false, 1, false, 'town', '00001', '{en}')`); err != nil {
		t.Fatal(err)
	}
	// Of 100,000, 30 requested, 31 booked and 31 missed lately; the rest
	// completed long ago.
	if _, err := pool.Exec(ctx, `INSERT INTO referrals (clinic, id, family, subject_kind, service_kind, program_id, urgency, reason,
			state, update_time)
		SELECT 'north', lpad(i::text, 8, '0'), 'clinics/north/families/f' || (i % 1000), 1, 1, 'p', 1, 'r',
			CASE WHEN i % 3331 = 0 THEN 1 WHEN i % 3331 = 1 THEN 4 WHEN i % 3331 = 2 THEN 6 ELSE 5 END,
			CASE WHEN i % 3331 < 3 THEN timestamptz '2026-11-30' ELSE timestamptz '2025-01-01' END
		FROM generate_series(1, 100000) i`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ANALYZE referrals`); err != nil {
		t.Fatal(err)
	}
	l := lister{t: t, db: pgtest.App(t, schema)}
	for filter, index := range map[string]string{
		`fhir_task_status = "requested"`:        "referrals_state",
		`update_time >= "2026-11-01T00:00:00Z"`: "referrals_updated",
		`fhir_task_status = "in-progress"`:      "referrals_state",
	} {
		if plan := l.plan(filter); !strings.Contains(plan, `"`+index+`"`) {
			t.Errorf("%s does not read %s:\n%s", filter, index, plan)
		}
	}
	for filter, want := range map[string]int{
		`fhir_task_status = "requested"`:                                              30,
		`fhir_task_status = "in-progress"`:                                            51, // a page of the 62
		`fhir_task_status = "failed"`:                                                 0,
		`fhir_task_status != "completed"`:                                             51, // a page of the 92
		`update_time >= "2026-11-01T00:00:00Z" AND fhir_task_status != "in-progress"`: 30,
	} {
		if got := l.count(filter); got != want {
			t.Errorf("%s: %d rows; want %d", filter, got, want)
		}
	}
}

// lister runs ListReferrals' query for a filter of the north clinic.
type lister struct {
	t  *testing.T
	db *pgdb.DB
}

func (l lister) query(filter string) (string, []any) {
	l.t.Helper()
	f, err := aip.ParseFilter(filter, referralFilter)
	if err != nil {
		l.t.Fatal(err)
	}
	where, args := f.SQL(2)
	return `SELECT id FROM referrals WHERE clinic = $1 AND ` + where + ` ORDER BY id LIMIT 51`, append([]any{"north"}, args...)
}

// plan is the query's plan, as JSON.
func (l lister) plan(filter string) string {
	l.t.Helper()
	sql, args := l.query(filter)
	var plan []byte
	if err := l.db.QueryRow(pgdb.WithClinic(context.Background(), "north"), `EXPLAIN (FORMAT JSON) `+sql, args...).Scan(&plan); err != nil {
		l.t.Fatal(err)
	}
	return string(plan)
}

// count is how many rows the query's first page holds.
func (l lister) count(filter string) int {
	l.t.Helper()
	sql, args := l.query(filter)
	rows, err := l.db.Query(pgdb.WithClinic(context.Background(), "north"), sql, args...)
	if err != nil {
		l.t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		n++
	}
	if err := rows.Err(); err != nil {
		l.t.Fatal(err)
	}
	return n
}
