package interventions

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/handoff-health/handoff/services/aip"
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

// A feed the reads migration could not reach (an ordinary owner's row
// security kept it from every row) counts as read at that upgrade; one
// that has lapsed since, and one made since and never read, are left as
// they are.
func TestUpgradeRedoesTheFeedReadsMigration(t *testing.T) {
	ctx := context.Background()
	pool, schema := pgtest.Schema(t, Migrations()[0], pgtest.Before(t, Migrations()[1], "0009_reminder_send_by.sql"))
	if _, err := pool.Exec(ctx, `UPDATE schema_migrations SET applied_at = now() - interval '1 day'
		WHERE id = 'interventions/0005_calendar_feed_reads.sql'`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO calendar_feeds (clinic, id, owner, token_hash, create_time) VALUES
		('north', 'old', 'counselor-1', '\x00', now() - interval '20 days'),
		('north', 'lapsed', 'counselor-1', '\x02', now() - interval '200 days'),
		('north', 'new', 'counselor-1', '\x01', now())`); err != nil {
		t.Fatal(err)
	}
	if err := pgdb.Migrate(ctx, pool, schema, Migrations()...); err != nil {
		t.Fatal(err)
	}
	var oldRead, lapsedRead, newRead *time.Time
	if err := pool.QueryRow(ctx, `SELECT (SELECT last_read_time FROM calendar_feeds WHERE id = 'old'),
		(SELECT last_read_time FROM calendar_feeds WHERE id = 'lapsed'),
		(SELECT last_read_time FROM calendar_feeds WHERE id = 'new')`).Scan(&oldRead, &lapsedRead, &newRead); err != nil {
		t.Fatal(err)
	}
	if oldRead == nil || time.Since(*oldRead) < 23*time.Hour || time.Since(*oldRead) > 25*time.Hour || lapsedRead != nil || newRead != nil {
		t.Fatalf("last reads after the upgrade: old %v, lapsed %v, new %v; want the old feed read at the earlier upgrade, the others unread",
			oldRead, lapsedRead, newRead)
	}
}

// The upgrade that unpublishes old drafts leaves a draft stored before
// migration 0007 (taken then as published) unpublished, and a meeting that
// was scheduled published.
func TestUpgradeUnpublishesOldDrafts(t *testing.T) {
	ctx := context.Background()
	pool, schema := pgtest.Schema(t, Migrations()[0], pgtest.Before(t, Migrations()[1], "0011_reminder_event_start.sql"))
	if _, err := pool.Exec(ctx, `INSERT INTO interventions (clinic, id, family, counselor, level, duration_seconds, time_zone, doc, state, published)
		VALUES ('north', 'draft', 'clinics/north/families/f1', 'counselor-1', 1, 3600, 'UTC', '{}', 1, true),
			('north', 'held', 'clinics/north/families/f1', 'counselor-1', 1, 3600, 'UTC', '{}', 3, true)`); err != nil {
		t.Fatal(err)
	}
	if err := pgdb.Migrate(ctx, pool, schema, Migrations()...); err != nil {
		t.Fatal(err)
	}
	var draft, held bool
	if err := pool.QueryRow(ctx, `SELECT (SELECT published FROM interventions WHERE id = 'draft'),
		(SELECT published FROM interventions WHERE id = 'held')`).Scan(&draft, &held); err != nil {
		t.Fatal(err)
	}
	if draft || !held {
		t.Fatalf("after the upgrade: the old draft published %v, the held meeting %v; want false, true", draft, held)
	}
}

// Meetings cancelled before migration 0007 were all taken as published:
// the upgrade unpublishes those never scheduled (a draft withdrawn), and
// leaves those the audit trail shows scheduled, or that were rescheduled,
// on the calendars as cancelled.
func TestUpgradeUnpublishesOldCancelledDrafts(t *testing.T) {
	ctx := context.Background()
	pool, schema := pgtest.Schema(t, Migrations()[0], pgtest.Before(t, Migrations()[1], "0006_reschedule_reason.sql"))
	if _, err := pool.Exec(ctx, `INSERT INTO interventions (clinic, id, family, counselor, level, duration_seconds, time_zone, doc, state, reschedule_count)
		VALUES ('north', 'withdrawn', 'clinics/north/families/f1', 'counselor-1', 2, 3600, 'UTC', '{}', 4, 0),
			('north', 'called-off', 'clinics/north/families/f1', 'counselor-1', 1, 3600, 'UTC', '{}', 4, 0),
			('north', 'moved', 'clinics/north/families/f1', 'counselor-1', 1, 3600, 'UTC', '{}', 4, 1),
			('north', 'held', 'clinics/north/families/f1', 'counselor-1', 1, 3600, 'UTC', '{}', 3, 0)`); err != nil {
		t.Fatal(err)
	}
	// The trail: called-off was scheduled; withdrawn's try was refused.
	if _, err := pool.Exec(ctx, `INSERT INTO audit_log (clinic, subject, roles, method, resource, outcome) VALUES
		('north', 'counselor-1', '{counselor}', '/handoff.interventions.v1.InterventionsService/ScheduleIntervention', 'clinics/north/interventions/called-off', 'OK'),
		('north', 'counselor-1', '{counselor}', '/handoff.interventions.v1.InterventionsService/ScheduleIntervention', 'clinics/north/interventions/withdrawn', 'FAILED_PRECONDITION'),
		('north', 'counselor-1', '{counselor}', '/handoff.interventions.v1.InterventionsService/GetIntervention', 'clinics/north/interventions/withdrawn', 'OK')`); err != nil {
		t.Fatal(err)
	}
	if err := pgdb.Migrate(ctx, pool, schema, Migrations()...); err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(ctx, `SELECT id FROM interventions WHERE published ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	published, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"called-off", "held", "moved"}; !slices.Equal(published, want) {
		t.Fatalf("published after the upgrade: %v; want %v (the withdrawn draft unpublished)", published, want)
	}
}

// A family's reminders are read by the index on the family, not by
// walking the clinic's reminders by due time to find them; the gauge of
// reminders due reads only those not delivered, and so does the
// automation's poll for those due.
func TestRemindersOfAFamilyAndTheGaugeUseTheirIndexes(t *testing.T) {
	ctx := context.Background()
	pool, schema := pgtest.Schema(t, Migrations()...)
	// Ten clinics of 500 families each, most reminders long delivered:
	// one in seven is still to send, all past due.
	if _, err := pool.Exec(ctx, `INSERT INTO reminders (clinic, id, recipient_kind, recipient_family, channel, due_time, kind, message, state, origin_workflow)
		SELECT 'c' || (i % 10), 'r' || i, 2, 'clinics/c' || (i % 10) || '/families/f' || (i % 5000), 1,
			now() - interval '1 minute' * i, 1, 'x', CASE WHEN i % 7 = 0 THEN 1 ELSE 4 END,
			'boundary/clinics/c' || (i % 10) || '/families/f' || (i % 5000)
		FROM generate_series(1, 50000) AS i`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ANALYZE reminders`); err != nil {
		t.Fatal(err)
	}
	// As the services run them: as the application role, under row
	// security, with the statements' parameters.
	db := pgtest.App(t, schema)
	f, err := aip.ParseFilter(`state = DUE`, reminderFilter(ctx, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	duePoll, dueArgs := f.SQL(5)
	// What a workflow cancels as it ends: its own reminders still open.
	f, err = aip.ParseFilter(`origin_workflow = "boundary/clinics/c3/families/f3" AND state != DELIVERED AND state != FAILED AND state != CANCELLED`,
		reminderFilter(ctx, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	ownOpen, ownArgs := f.SQL(5)
	// The poll finds a page (and one more) of the clinic's reminders due,
	// and nothing else.
	var want int
	if err := pool.QueryRow(ctx, `SELECT least(count(*), 101) FROM reminders WHERE clinic = 'c3' AND state = 1`).Scan(&want); err != nil {
		t.Fatal(err)
	}
	rows, err := db.Query(pgdb.WithClinic(ctx, "c3"), listReminders(duePoll), append([]any{"c3", time.Time{}, "", 101}, dueArgs...)...)
	if err != nil {
		t.Fatal(err)
	}
	due, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (int16, error) {
		vals, err := r.Values()
		if err != nil {
			return 0, err
		}
		return vals[9].(int16), nil // state
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(due) != want || want == 0 || slices.ContainsFunc(due, func(s int16) bool { return s != int16(rScheduled) }) {
		t.Errorf("the poll for DUE read %d reminders, stored as %v; want the %d scheduled and past due", len(due), due, want)
	}
	for _, c := range []struct {
		scope, query string
		args         []any
		indexes      []string // any of them
	}{
		// ListReminders' statement, with the filter the workflows send.
		{"c3", listReminders(`recipient_family = $5`), []any{"c3", time.Time{}, "", 101, "clinics/c3/families/f3"}, []string{"reminders_family"}},
		{"c3", listReminders(ownOpen), append([]any{"c3", time.Time{}, "", 101}, ownArgs...), []string{"reminders_origin"}},
		// And with the automation's poll, as the filter makes it: an
		// index of the reminders still to send, the clinic's or every
		// clinic's, as the planner weighs them (with few clinics, the
		// smaller one), never one of every reminder ever sent.
		{"c3", listReminders(duePoll), append([]any{"c3", time.Time{}, "", 101}, dueArgs...), []string{"reminders_pending", "reminders_undelivered"}},
		{pgdb.SystemScope, dueUndelivered, nil, []string{"reminders_undelivered"}},
	} {
		var plan string
		if err := db.QueryRow(pgdb.WithClinic(ctx, c.scope), "EXPLAIN (FORMAT JSON) "+c.query, c.args...).Scan(&plan); err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(c.indexes, func(index string) bool { return strings.Contains(plan, `"`+index+`"`) }) {
			t.Errorf("%s\ndoes not use %s:\n%s", c.query, strings.Join(c.indexes, " or "), plan)
		}
	}
}
