package webhooks

import (
	"context"
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
