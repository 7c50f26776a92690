package pgdb_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

// A migration that meets a table held by a long read fails after the lock
// timeout instead of waiting behind it, with every request queued behind
// the migration.
func TestMigrateGivesUpOnAHeldLock(t *testing.T) {
	common := pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"}
	owner, schema := pgtest.Schema(t, common)
	ctx := context.Background()
	// A long read: a transaction that has read the audit log and stays open.
	reader, err := owner.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Rollback(ctx) //nolint:errcheck
	if _, err := reader.Exec(ctx, `SELECT count(*) FROM `+schema+`.audit_log`); err != nil {
		t.Fatal(err)
	}
	was := pgdb.MigrateLockTimeout
	pgdb.MigrateLockTimeout = 300 * time.Millisecond
	defer func() { pgdb.MigrateLockTimeout = was }()
	start := time.Now()
	err = pgdb.Migrate(ctx, owner, schema, common)
	if err == nil || !strings.Contains(err.Error(), "lock timeout") {
		t.Fatalf("Migrate with a table held = %v; want a lock timeout", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Migrate took %v to give up", took)
	}
	if err := reader.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pgdb.Migrate(ctx, owner, schema, common); err != nil {
		t.Fatalf("Migrate once the read ended: %v", err)
	}
}
