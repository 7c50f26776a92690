package interventions

import (
	"context"
	"testing"
	"time"

	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

// A feed's read is recorded in a transaction that carries the call's
// audit record: when the record cannot be written, the read is not
// recorded either (here the stamp names a table that does not exist).
func TestFeedReadCommitsOnlyWithItsAuditRecord(t *testing.T) {
	ctx := context.Background()
	pool, schema := pgtest.Schema(t, Migrations()...)
	if _, err := pool.Exec(ctx, `INSERT INTO calendar_feeds (clinic, id, owner, token_hash, create_time)
		VALUES ('north', 'f1', 'counselor-1', '\x00', now())`); err != nil {
		t.Fatal(err)
	}
	s := New(pgtest.App(t, schema), Config{})
	scoped := pgdb.WithClinic(ctx, "north")
	failing := pgdb.WithStamp(scoped, &pgdb.Stamp{SQL: `INSERT INTO no_such_audit_log VALUES ($1)`, Args: []any{"x"}})
	if err := s.feedRead(failing, ref{"north", "f1"}, time.Time{}); err == nil {
		t.Fatal("the read was recorded though its audit record could not be")
	}
	var read *time.Time
	if err := pool.QueryRow(ctx, `SELECT last_read_time FROM calendar_feeds WHERE id = 'f1'`).Scan(&read); err != nil {
		t.Fatal(err)
	}
	if read != nil {
		t.Fatalf("last read %v committed without its audit record", read)
	}
	if err := s.feedRead(scoped, ref{"north", "f1"}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT last_read_time FROM calendar_feeds WHERE id = 'f1'`).Scan(&read); err != nil || read == nil {
		t.Fatalf("last read %v, %v; want it recorded", read, err)
	}
}

// A feed past its limit keeps the events that start last, meetings and
// intakes alike: an old intake, listed after the meetings, goes before a
// newer meeting does.
func TestFeedPastItsLimitKeepsTheNewest(t *testing.T) {
	at := func(h int) time.Time { return time.Date(2026, 12, 1, h, 0, 0, 0, time.UTC) }
	events := []calendarEvent{{uid: "m1", start: at(5)}, {uid: "m2", start: at(6)}, {uid: "intake-old", start: at(1)}}
	var kept []string
	for _, e := range newest(events, 2) {
		kept = append(kept, e.uid)
	}
	if len(kept) != 2 || kept[0] != "m1" || kept[1] != "m2" {
		t.Fatalf("kept %v; want the two meetings, not the older intake", kept)
	}
	if got := newest(events[:2], 2); len(got) != 2 {
		t.Fatalf("under the limit: %d kept", len(got))
	}
}
