package families

import (
	"context"
	"strings"
	"testing"

	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

// The EHR's poll of the clinic's families by update time reads the index
// of the time it sees, not every family of the clinic by id, and finds the
// families that changed which its consents cover.
func TestTheEHRsPollByUpdateTimeReadsItsIndex(t *testing.T) {
	ctx := context.Background()
	pool, schema := pgtest.Schema(t, Migrations()...)
	// Of 100,000 families, 100 changed lately; the EHR's consent covers
	// one in ten, those 100 among them.
	for _, sql := range []string{
		`INSERT INTO families (clinic, id, doc, counselor, state, first_contact_time, update_time, shared_update_time)
			SELECT 'north', lpad(i::text, 8, '0'), '{}', 'counselor-1', 1, timestamptz '2025-01-01',
				CASE WHEN i % 1000 = 0 THEN timestamptz '2026-11-30' ELSE timestamptz '2025-01-01' END,
				CASE WHEN i % 1000 = 0 THEN timestamptz '2026-11-30' ELSE timestamptz '2025-01-01' END
			FROM generate_series(1, 100000) i`,
		`INSERT INTO consents (clinic, family_id, id, discloser, information, recipients, treating_providers, purposes,
				expire_time, signer, sign_time, recorder, member_id)
			SELECT 'north', lpad(i::text, 8, '0'), 'c' || i, 'North', '{1}', '{ehr-1}', false, '{1}',
				now() + interval '1 year', 'Sam', now(), 'counselor-1', ''
			FROM generate_series(10, 100000, 10) i`,
		`ANALYZE families`, `ANALYZE consents`,
	} {
		if _, err := pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	s := New(pgtest.App(t, schema), Config{})
	ehr := auth.WithPrincipal(pgdb.WithClinic(ctx, "north"), auth.Principal{Subject: "ehr-1", Clinic: "north", Roles: []auth.Role{auth.RoleEHR}})
	f, err := aip.ParseFilter(`update_time >= "2026-11-01T00:00:00Z"`, familyFields(ehr))
	if err != nil {
		t.Fatal(err)
	}
	query, args := s.listFamilies(ehr, "north", "", 50, f)
	var plan string
	if err := s.pool.QueryRow(ehr, "EXPLAIN (FORMAT JSON) "+query, args...).Scan(&plan); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(plan, `"families_shared_updated"`) {
		t.Errorf("the EHR's poll by update time does not read families_shared_updated:\n%s", plan)
	}
	rows, err := s.pool.Query(ehr, query, args...)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		n++
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n != 51 {
		t.Errorf("the poll's page read %d families; want %d (a page of 50 and one more, of the 100 changed)", n, 51)
	}
}
