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
