package referrals

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

// The upgrade that keeps a profile's features fills them in from its
// programs, drops profiles no program has, and notes the features of
// profiles made after it.
func TestUpgradeFillsProfileFeatures(t *testing.T) {
	ctx := context.Background()
	pool, schema := pgtest.Schema(t, Migrations()[0], pgtest.Before(t, Migrations()[1], "0003_program_delete_time.sql"))
	insert := func(id string, slots int, services string) {
		t.Helper()
		if _, err := pool.Exec(ctx, `INSERT INTO programs (clinic, id, doc, services, payments, telehealth, same_day_intake,
			same_day_induction, available_slots, waitlist, locality, postal_code, languages)
			VALUES ('north', $1, '{}', $3::smallint[], '{1}', true, false, true, $2, false, 'town', '00001', '{es}')`, id, slots, services); err != nil {
			t.Fatal(err)
		}
	}
	insert("p1", 3, "{2,5}")
	insert("p2", 0, "{7}")
	// p2's profile then has no program left.
	if _, err := pool.Exec(ctx, `UPDATE programs SET available_slots = 2 WHERE id = 'p2'`); err != nil {
		t.Fatal(err)
	}
	if err := pgdb.Migrate(ctx, pool, schema, Migrations()...); err != nil {
		t.Fatal(err)
	}
	insert("p3", 0, "{9}")
	rows, err := pool.Query(ctx, `SELECT g.profile = p.profile AND g.services = p.services AND g.payments = p.payments
			AND g.telehealth = p.telehealth AND g.same_day_intake = p.same_day_intake AND g.same_day_induction = p.same_day_induction
			AND g.available_slots = (p.available_slots > 0)::int AND g.waitlist = p.waitlist AND g.languages = p.languages
		FROM program_profiles g LEFT JOIN programs p ON p.clinic = g.clinic AND p.profile = g.profile ORDER BY p.id`)
	if err != nil {
		t.Fatal(err)
	}
	var same []bool
	for rows.Next() {
		var ok *bool
		if err := rows.Scan(&ok); err != nil {
			t.Fatal(err)
		}
		same = append(same, ok != nil && *ok)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(same) != 3 || !same[0] || !same[1] || !same[2] {
		t.Fatalf("profiles after the upgrade, each against its program: %v; want three, each with its program's features", same)
	}
}

// An intervention's holds and referrals, as the yes path lists them, and
// whether anything names a program, are found through an index, not by
// reading the clinic's whole history.
func TestLookupsByInterventionAndProgramUseIndexes(t *testing.T) {
	ctx := context.Background()
	pool, _ := pgtest.Schema(t, Migrations()...)
	for _, q := range []string{
		`INSERT INTO programs (clinic, id, doc, services) VALUES ('north', 'p1', '{}', '{1}'), ('north', 'p2', '{}', '{1}')`,
		`INSERT INTO holds (clinic, id, program_id, service_kind, family, intervention, expire_time, state)
			SELECT 'north', 'h' || i, 'p1', 1, 'clinics/north/families/f' || i, 'clinics/north/interventions/i' || i, now(), 2
			FROM generate_series(1, 20000) i`,
		// One in a hundred has an intake booked, in December 2026.
		`INSERT INTO referrals (clinic, id, family, subject_kind, service_kind, program_id, urgency, reason, intervention, state, appointment)
			SELECT 'north', 'r' || i, 'clinics/north/families/f' || i, 1, 1, 'p1', 1, 'x', 'clinics/north/interventions/i' || i, 1,
				CASE WHEN i % 100 = 0 THEN jsonb_build_object('startTime', format('2026-12-%sT15:00:00Z', lpad((1 + i % 28)::text, 2, '0'))) END
			FROM generate_series(1, 20000) i`,
		`ANALYZE holds`, `ANALYZE referrals`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	for query, index := range map[string]string{
		`SELECT id FROM holds WHERE clinic = 'north' AND intervention = 'clinics/north/interventions/i7' AND id > '' ORDER BY id LIMIT 51`:     "holds_intervention",
		`SELECT id FROM referrals WHERE clinic = 'north' AND intervention = 'clinics/north/interventions/i7' AND id > '' ORDER BY id LIMIT 51`: "referrals_intervention",
		`SELECT EXISTS (SELECT 1 FROM holds WHERE clinic = 'north' AND program_id = 'p2')`:                                                     "holds_any_program",
		`SELECT EXISTS (SELECT 1 FROM referrals WHERE clinic = 'north' AND program_id = 'p2')`:                                                 "referrals_program",
		// A calendar feed's window of intakes, and a deleted family's holds.
		`SELECT id FROM referrals WHERE clinic = 'north' AND intake_time >= '2026-12-20T00:00:00Z' AND id > '' ORDER BY id LIMIT 1001`: "referrals_intake",
		`SELECT id FROM holds WHERE clinic = 'north' AND family = 'clinics/north/families/f7' AND id > '' ORDER BY id LIMIT 51`:        "holds_family",
	} {
		if plan := pgtest.Explain(t, pool, query); !strings.Contains(plan, index) {
			t.Errorf("%s\nplan:\n%s\nwant it to use %s", query, plan, index)
		}
	}
}

// Profiles the profile migrations could not note (an ordinary owner's row
// security kept them from every row) are noted, with their features, on
// the upgrade that redoes them; a profile noted already keeps its row.
func TestUpgradeRedoesTheProfileMigrations(t *testing.T) {
	ctx := context.Background()
	pool, schema := pgtest.Schema(t, Migrations()[0], pgtest.Before(t, Migrations()[1], "0005_lookup_indexes.sql"))
	if _, err := pool.Exec(ctx, `INSERT INTO programs (clinic, id, doc, services, payments, available_slots, languages)
		VALUES ('north', 'p1', '{}', '{2,5}', '{1}', 3, '{es}'), ('north', 'p2', '{}', '{7}', '{}', 0, '{}')`); err != nil {
		t.Fatal(err)
	}
	// As such an upgrade left them: p1's profile missing, p2's without its
	// features.
	if _, err := pool.Exec(ctx, `DELETE FROM program_profiles g USING programs p
		WHERE p.id = 'p1' AND g.clinic = p.clinic AND g.profile = p.profile`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE program_profiles g SET services = NULL, payments = NULL, available_slots = NULL
		FROM programs p WHERE p.id = 'p2' AND g.clinic = p.clinic AND g.profile = p.profile`); err != nil {
		t.Fatal(err)
	}
	if err := pgdb.Migrate(ctx, pool, schema, Migrations()...); err != nil {
		t.Fatal(err)
	}
	got := texts(t, pool, `SELECT p.id || ' ' || coalesce(g.services::text, 'none') || ' ' || coalesce(g.available_slots::text, 'none')
		FROM programs p LEFT JOIN program_profiles g ON g.clinic = p.clinic AND g.profile = p.profile ORDER BY p.id`)
	if strings.Join(got, ", ") != "p1 {2,5} 1, p2 {7} 0" {
		t.Fatalf("profiles after the upgrade: %v; want each program's profile with its features", got)
	}
}

// The upgrade that keeps the intake's start in a column fills it in for
// the appointments booked before it, and the column follows the
// appointment however it is written after: by this release, or by a
// replica of the one before it during the rollout, which knows nothing of
// the column.
func TestUpgradeKeepsTheIntakeTime(t *testing.T) {
	ctx := context.Background()
	pool, schema := pgtest.Schema(t, Migrations()[0], pgtest.Before(t, Migrations()[1], "0006_redo_data_migrations.sql"))
	if _, err := pool.Exec(ctx, `INSERT INTO programs (clinic, id, doc, services) VALUES ('north', 'p1', '{}', '{1}');
		INSERT INTO referrals (clinic, id, family, subject_kind, service_kind, program_id, urgency, reason, state, appointment)
		VALUES ('north', 'booked', 'clinics/north/families/f1', 1, 1, 'p1', 1, 'x', 3, '{"startTime":"2026-12-10T15:00:00Z","location":"Main St"}'),
			('north', 'unbooked', 'clinics/north/families/f2', 1, 1, 'p1', 1, 'x', 1, NULL)`); err != nil {
		t.Fatal(err)
	}
	if err := pgdb.Migrate(ctx, pool, schema, Migrations()...); err != nil {
		t.Fatal(err)
	}
	// As the release before writes a booking, and a new referral.
	if _, err := pool.Exec(ctx, `UPDATE referrals SET appointment = '{"startTime":"2026-12-11T09:30:00.500Z"}' WHERE id = 'unbooked';
		INSERT INTO referrals (clinic, id, family, subject_kind, service_kind, program_id, urgency, reason, state)
		VALUES ('north', 'new', 'clinics/north/families/f3', 1, 1, 'p1', 1, 'x', 1)`); err != nil {
		t.Fatal(err)
	}
	got := texts(t, pool, `SELECT id || ' ' || coalesce(to_char(intake_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS'), 'none')
		FROM referrals ORDER BY id`)
	if want := "booked 2026-12-10 15:00:00.000, new none, unbooked 2026-12-11 09:30:00.500"; strings.Join(got, ", ") != want {
		t.Fatalf("intake times: %v; want %s", got, want)
	}
}

// A program's postal code written before 0015, as typed, is matched by its
// key after the upgrade; one already a key is left as it was.
func TestUpgradeKeysThePostalCodes(t *testing.T) {
	ctx := context.Background()
	pool, schema := pgtest.Schema(t, Migrations()[0], pgtest.Before(t, Migrations()[1], "0014_poll_indexes.sql"))
	if _, err := pool.Exec(ctx, `INSERT INTO programs (clinic, id, doc, services, postal_code) VALUES
		('north', 'typed', '{"address":{"postalCode":"k1a 0b1"}}', '{1}', 'k1a 0b1'),
		('north', 'hyphen', '{}', '{1}', 'k2k-1x1'),
		('north', 'key', '{}', '{1}', '62701')`); err != nil {
		t.Fatal(err)
	}
	if err := pgdb.Migrate(ctx, pool, schema, Migrations()...); err != nil {
		t.Fatal(err)
	}
	got := texts(t, pool, `SELECT id || ' ' || postal_code || ' ' || coalesce(doc->'address'->>'postalCode', '') FROM programs ORDER BY id`)
	if want := "hyphen K2K1X1 , key 62701 , typed K1A0B1 k1a 0b1"; strings.Join(got, ", ") != want {
		t.Fatalf("postal codes: %v; want %s", got, want)
	}
}

// texts runs a query of one text column and returns its rows.
func texts(t *testing.T, pool *pgxpool.Pool, query string) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), query)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return got
}
