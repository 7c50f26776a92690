package webhooks

import (
	"context"
	"strings"
	"testing"

	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

// A FULL subscription made before audiences were kept becomes ID_ONLY on
// upgrade, so that the API reports what it will receive; an ID_ONLY one
// is left alone.
func TestUpgradeMakesEarlierFullSubscriptionsIDOnly(t *testing.T) {
	ctx := context.Background()
	pool, schema := pgtest.Schema(t, Migrations()[0], pgtest.Before(t, Migrations()[1], "0002_retention_sink_failures.sql"))
	for id, payload := range map[string]int{"full": 2, "ids": 1} {
		if _, err := pool.Exec(ctx, `INSERT INTO subscriptions (clinic, id, url, topics, payload, owner, secret, create_time)
			VALUES ('north', $1, 'https://ehr.example.org/', '{1}', $2, 'ehr-1', 'sealed', now())`, id, payload); err != nil {
			t.Fatal(err)
		}
	}
	if err := pgdb.Migrate(ctx, pool, schema, Migrations()...); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]int{"full": 1, "ids": 1} {
		var payload int
		var audience string
		if err := pool.QueryRow(ctx, `SELECT payload, audience FROM subscriptions WHERE id = $1`, id).Scan(&payload, &audience); err != nil {
			t.Fatal(err)
		}
		if payload != want || audience != "" {
			t.Fatalf("%s: payload %d, audience %q after the upgrade; want %d and none", id, payload, audience, want)
		}
	}
}

// The data migrations that an ordinary owner's row security kept from
// every row are done again, for the rows they were for only.
func TestUpgradeRedoesDataMigrations(t *testing.T) {
	ctx := context.Background()
	pool, schema := pgtest.Schema(t, Migrations()[0], pgtest.Before(t, Migrations()[1], "0011_finish_time_index.sql"))
	if _, err := pool.Exec(ctx, `UPDATE schema_migrations SET applied_at = now() - interval '1 hour' WHERE id = 'webhooks/0007_outsider.sql'`); err != nil {
		t.Fatal(err)
	}
	// As such an upgrade left them: made before 0003 and 0007, unchanged by
	// them; and two made since, as made.
	for _, q := range []string{
		`INSERT INTO subscriptions (clinic, id, url, topics, payload, owner, secret, create_time, audience, outsider) VALUES
			('north', 'old-full', 'https://ehr.example.org/', '{1}', 2, 'ehr-1', 'sealed', now() - interval '2 hours', '', false),
			('north', 'old-ids', 'https://ehr.example.org/', '{2}', 1, 'ehr-1', 'sealed', now() - interval '2 hours', '', false),
			('north', 'new-full', 'https://ehr.example.org/', '{1}', 2, 'ehr-1', 'sealed', now(), 'ehr', true),
			('north', 'new-staff', 'https://staff.example.org/', '{1}', 1, 'admin-1', 'sealed', now(), '', false)`,
		`INSERT INTO deliveries (clinic, subscription_id, id, source, outbox_id, event_type, topic, resource, family, payload, state)
			VALUES ('north', 'old-full', 'd1', 'referrals', 1, 'handoff.referrals.v1.referral.accepted', 1,
				'clinics/north/referrals/r1', 'clinics/north/families/f1', '\x01', 2)`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if err := pgdb.Migrate(ctx, pool, schema, Migrations()...); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]string{"old-full": "1 true", "old-ids": "1 true", "new-full": "2 true", "new-staff": "1 false"} {
		var got string
		if err := pool.QueryRow(ctx, `SELECT payload || ' ' || outsider FROM subscriptions WHERE id = $1`, id).Scan(&got); err != nil || got != want {
			t.Errorf("%s after the upgrade: payload and outsider %q, %v; want %q", id, got, err, want)
		}
	}
	var kept bool
	if err := pool.QueryRow(ctx, `SELECT payload IS NOT NULL FROM deliveries WHERE id = 'd1'`).Scan(&kept); err != nil || kept {
		t.Errorf("a delivered notification keeps its payload: %v, %v", kept, err)
	}
}

// A clinic's deliveries across its subscriptions are read in order by an
// index of the clinic's own, not by walking every clinic's deliveries by
// seq (a small clinic's few among the large ones'), nor by reading all of
// the clinic's and sorting them.
func TestAClinicsDeliveriesAreListedByItsIndex(t *testing.T) {
	ctx := context.Background()
	pool, schema := pgtest.Schema(t, Migrations()...)
	if _, err := pool.Exec(ctx, `INSERT INTO subscriptions (clinic, id, url, topics, payload, owner, secret)
		SELECT 'c' || (i % 10), 's' || i, 'https://ehr.example.org/', '{1}', 1, 'ehr-1', 'sealed' FROM generate_series(0, 29) AS i`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO deliveries (clinic, subscription_id, id, source, outbox_id, event_type, topic, resource, state)
		SELECT 'c' || (i % 10), 's' || (i % 30), 'd' || i, 'referrals', i, 'handoff.referrals.v1.referral.accepted', 1,
			'clinics/c' || (i % 10) || '/referrals/r' || (i % 3000), 4
		FROM generate_series(1, 60000) AS i WHERE i % 10 <> 3
		UNION ALL
		-- A small clinic among large ones: one delivery in a hundred.
		SELECT 'c3', 's3', 'd' || i, 'referrals', i, 'handoff.referrals.v1.referral.accepted', 1, 'clinics/c3/referrals/r1', 4
		FROM generate_series(1, 60000) AS i WHERE i % 100 = 3`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ANALYZE deliveries`); err != nil {
		t.Fatal(err)
	}
	// ListDeliveries' statement for clinics/c3/subscriptions/-, as the
	// service runs it: as the application role, under row security, with
	// its parameters.
	var plan string
	if err := pgtest.App(t, schema).QueryRow(pgdb.WithClinic(ctx, "c3"), `EXPLAIN (FORMAT JSON) `+deliverySelect+`
		WHERE clinic = $1 AND ($2 = '-' OR subscription_id = $2) AND seq > $3 AND true ORDER BY seq LIMIT $4`,
		"c3", "-", int64(0), 51).Scan(&plan); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(plan, `"deliveries_clinic_order"`) {
		t.Fatalf("a clinic's deliveries are not listed by deliveries_clinic_order:\n%s", plan)
	}
}

// The sender's gauges read the deliveries pending and the dead letters off
// their partial indexes, not the 30 days of finished deliveries, and count
// them right.
func TestTheGaugesReadOnlyWhatTheyCount(t *testing.T) {
	ctx := context.Background()
	pool, schema := pgtest.Schema(t, Migrations()...)
	// 100,000 deliveries: 40 pending (10 of them after a failure), 8
	// dead, the rest delivered.
	for _, sql := range []string{
		`INSERT INTO subscriptions (clinic, id, url, topics, payload, owner, secret)
			VALUES ('north', 's1', 'https://ehr.example.org/hook', '{1}', 1, 'admin-1', 'x')`,
		`INSERT INTO deliveries (clinic, subscription_id, id, source, outbox_id, event_type, topic, resource, state, last_error)
			SELECT 'north', 's1', 'd' || i, 'referrals', i, 'handoff.referrals.v1.referral.accepted', 1,
				'clinics/north/referrals/r' || i,
				CASE WHEN i % 2500 = 0 THEN 1 WHEN i % 14000 = 1 THEN 3 ELSE 2 END,
				CASE WHEN i % 10000 = 0 THEN 'HTTP 503' ELSE '' END
			FROM generate_series(1, 100000) i`,
		`ANALYZE deliveries`,
	} {
		if _, err := pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	db := pgtest.App(t, schema)
	sys := pgdb.WithClinic(ctx, pgdb.SystemScope)
	var plan string
	if err := db.QueryRow(sys, "EXPLAIN (FORMAT JSON) "+gauges).Scan(&plan); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(plan, `"Seq Scan"`) || !strings.Contains(plan, `"deliveries_dead"`) {
		t.Errorf("the gauges' plan reads the table or misses deliveries_dead:\n%s", plan)
	}
	var pending, retrying, dead int64
	if err := db.QueryRow(sys, gauges).Scan(&pending, &retrying, &dead); err != nil {
		t.Fatal(err)
	}
	if pending != 40 || retrying != 10 || dead != 8 {
		t.Errorf("gauges: %d pending, %d retrying, %d dead; want 40, 10 and 8", pending, retrying, dead)
	}
}
