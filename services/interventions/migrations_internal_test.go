package interventions

import (
	"context"
	"testing"
	"time"

	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

// A feed made long before its reads were kept, and read all along, does
// not lapse at the upgrade: it counts as read then.
func TestUpgradeKeepsOldCalendarFeedsAlive(t *testing.T) {
	ctx := context.Background()
	pool, schema := pgtest.Schema(t, Migrations()[0], pgtest.Before(t, Migrations()[1], "0004_calendar_feeds.sql"))
	created := time.Now().Add(-200 * 24 * time.Hour)
	if _, err := pool.Exec(ctx, `INSERT INTO calendar_feeds (clinic, id, owner, token_hash, create_time)
		VALUES ('north', 'f1', 'counselor-1', '\x00', $1)`, created); err != nil {
		t.Fatal(err)
	}
	if err := pgdb.Migrate(ctx, pool, schema, Migrations()...); err != nil {
		t.Fatal(err)
	}
	var read *time.Time
	if err := pool.QueryRow(ctx, `SELECT last_read_time FROM calendar_feeds WHERE id = 'f1'`).Scan(&read); err != nil {
		t.Fatal(err)
	}
	if read == nil || !time.Now().Before(feedExpiry(created, *read)) {
		t.Fatalf("a feed from before the upgrade: last read %v, lapses at %v", read, feedExpiry(created, time.Time{}))
	}
}
