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
	db := pgtest.App(t, schema)
	sctx := pgdb.WithClinic(ctx, "north")
	query := func(filter string) (string, []any) {
		t.Helper()
		f, err := aip.ParseFilter(filter, referralFilter)
		if err != nil {
			t.Fatal(err)
		}
		where, args := f.SQL(2)
		return `SELECT id FROM referrals WHERE clinic = $1 AND ` + where + ` ORDER BY id LIMIT 51`, append([]any{"north"}, args...)
	}
	sql, args := query(`program = "clinics/north/programs/p7"`)
	var plan []byte
	if err := db.QueryRow(sctx, `EXPLAIN (FORMAT JSON) `+sql, args...).Scan(&plan); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(plan), `"referrals_program"`) {
		t.Errorf("a list by program does not read referrals_program:\n%s", plan)
	}
	count := func(filter string) int {
		t.Helper()
		sql, args := query(filter)
		rows, err := db.Query(sctx, sql, args...)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		n := 0
		for rows.Next() {
			n++
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for filter, want := range map[string]int{
		`program = "clinics/north/programs/p7"`:       51, // a page of its 250
		`program = "clinics/south/programs/p7"`:       0,
		`program = "clinics/north/programs/p7/extra"`: 0,
		`program = "clinics/north/families/p7"`:       0,
		`program = "p7"`:                              0,
		`program != "clinics/north/programs/p7"`:      51,
	} {
		if got := count(filter); got != want {
			t.Errorf("%s: %d rows; want %d", filter, got, want)
		}
	}
}
