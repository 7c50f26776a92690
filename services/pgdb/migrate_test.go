package pgdb_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

// A migration that meets a table held by a long read fails after the lock
// timeout instead of waiting behind it, with every request queued behind
// the migration. With nothing to change, a start does not lock the table at
// all: every replica's start migrates, and a long read (a dump) must not
// fail each of them.
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
	if err := pgdb.Migrate(ctx, owner, schema, common); err != nil {
		t.Fatalf("Migrate with nothing to change, beside a long read: %v", err)
	}
	alter := pgdb.Source{Name: "alter", FS: fstest.MapFS{
		"m/0001_note.sql": {Data: []byte("ALTER TABLE audit_log ADD COLUMN note text;\n")},
	}, Dir: "m"}
	// The lock timeout's error is the proof it gave up: no bound on the
	// time taken, which counts the wait for the migrations' shared lock
	// other packages' tests hold meanwhile.
	err = pgdb.Migrate(ctx, owner, schema, common, alter)
	if err == nil || !strings.Contains(err.Error(), "lock timeout") {
		t.Fatalf("Migrate altering a table held = %v; want a lock timeout", err)
	}
	if err := reader.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pgdb.Migrate(ctx, owner, schema, common, alter); err != nil {
		t.Fatalf("Migrate once the read ended: %v", err)
	}
}

// Row security is put back where it is not what this version makes: a
// policy of an older form is replaced, one turned off is turned on, and
// a table that is not shared loses a policy sharing its rows of the empty
// clinic (every table had one before version 3).
func TestMigrateRestoresRowSecurity(t *testing.T) {
	common := pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"}
	owner, schema := pgtest.Schema(t, common)
	ctx := context.Background()
	for _, st := range []string{
		`COMMENT ON POLICY clinic_isolation ON ` + schema + `.audit_log IS 'an older form'`,
		`ALTER TABLE ` + schema + `.outbox NO FORCE ROW LEVEL SECURITY`,
		`CREATE POLICY shared_read ON ` + schema + `.idempotency_keys FOR SELECT TO ` + pgdb.AppRole + ` USING (clinic = '')`,
	} {
		if _, err := owner.Exec(ctx, st); err != nil {
			t.Fatal(err)
		}
	}
	if err := pgdb.Migrate(ctx, owner, schema, common); err != nil {
		t.Fatal(err)
	}
	var odd []string
	rows, err := owner.Query(ctx, `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname IN ('audit_log', 'outbox', 'idempotency_keys')
		AND NOT (c.relrowsecurity AND c.relforcerowsecurity
			AND NOT EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'shared_read')
			AND EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'clinic_isolation'
				AND obj_description(p.oid, 'pg_policy') <> 'an older form'))`, schema)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			t.Fatal(err)
		}
		odd = append(odd, name)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(odd) != 0 {
		t.Fatalf("row security not restored on %v", odd)
	}
}

// A no-transaction migration builds its index concurrently (which cannot
// run in a transaction) while another transaction holds a write open on
// the table, is recorded once applied, and is not applied again.
func TestNoTransactionMigration(t *testing.T) {
	common := pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"}
	owner, schema := pgtest.Schema(t, common)
	ctx := context.Background()
	var valid bool
	if err := owner.QueryRow(ctx, `SELECT indisvalid FROM pg_index WHERE indexrelid = ($1 || '.outbox_delivered')::regclass`, schema).Scan(&valid); err != nil || !valid {
		t.Fatalf("outbox_delivered: valid %v, %v", valid, err)
	}
	extra := pgdb.Source{Name: "extra", FS: fstest.MapFS{
		"m/0001_index.sql": {Data: []byte(pgdb.NoTransaction + "\n-- an index on a table in use\n" +
			"DROP INDEX CONCURRENTLY IF EXISTS outbox_by_type;\nCREATE INDEX CONCURRENTLY outbox_by_type ON outbox (event_type);\n")},
	}, Dir: "m"}
	if err := pgdb.Migrate(ctx, owner, schema, common, extra); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := owner.QueryRow(ctx, `SELECT count(*) FROM `+schema+`.schema_migrations WHERE id = 'extra/0001_index.sql'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("recorded %d times, %v", n, err)
	}
	// Applied once: a second run would fail on the index it built had it
	// been recorded as not applied (CREATE without IF NOT EXISTS is fine
	// only after the DROP; here the record alone keeps it from running).
	if _, err := owner.Exec(ctx, `DROP INDEX `+schema+`.outbox_by_type`); err != nil {
		t.Fatal(err)
	}
	if err := pgdb.Migrate(ctx, owner, schema, common, extra); err != nil {
		t.Fatal(err)
	}
	if err := owner.QueryRow(ctx, `SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND indexname = 'outbox_by_type'`, schema).Scan(&n); err != nil || n != 0 {
		t.Fatalf("applied again: %d, %v", n, err)
	}
}

// Data migrations change every clinic's rows when the owner is an ordinary
// role (no superuser, no BYPASSRLS), as managed databases give: once the
// tables are secured, row-level security binds the owner too, and a
// migration without a clinic scope changed nothing and was recorded as
// applied.
func TestDataMigrationsReachEveryClinicAsAnOrdinaryOwner(t *testing.T) {
	ctx := context.Background()
	admin, _ := pgtest.Schema(t)
	owner, schema := ordinaryOwner(t, admin, "CREATEROLE")
	files := fstest.MapFS{"m/0001_t.sql": {Data: []byte("CREATE TABLE t (clinic text NOT NULL, id text NOT NULL, v int NOT NULL DEFAULT 0);\n")}}
	src := pgdb.Source{Name: "test", FS: files, Dir: "m"}
	if err := pgdb.Migrate(ctx, owner, schema, src); err != nil {
		t.Fatal(err)
	}
	// Rows of two clinics, written as the superuser (past row security).
	if _, err := admin.Exec(ctx, `INSERT INTO `+schema+`.t (clinic, id) VALUES ('north', 'a'), ('south', 'b')`); err != nil {
		t.Fatal(err)
	}
	files["m/0002_backfill.sql"] = &fstest.MapFile{Data: []byte("UPDATE t SET v = v + 1;\n")}
	files["m/0003_outside.sql"] = &fstest.MapFile{Data: []byte(pgdb.NoTransaction + "\nUPDATE t SET v = v + 10;\n")}
	if err := pgdb.Migrate(ctx, owner, schema, src); err != nil {
		t.Fatal(err)
	}
	rows, err := admin.Query(ctx, `SELECT clinic || '=' || v FROM `+schema+`.t ORDER BY clinic`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, " ") != "north=11 south=11" {
		t.Fatalf("rows after the data migrations: %v; want every clinic's changed by both", got)
	}
	// The scope does not outlive the migration on the owner's connections.
	var scope string
	if err := owner.QueryRow(ctx, `SELECT coalesce(current_setting('handoff.clinic', true), '')`).Scan(&scope); err != nil || scope == "*" {
		t.Fatalf("the owner's connection after Migrate has clinic scope %q (%v)", scope, err)
	}
}

// A row of the empty clinic in a table that is not shared is no clinic's to
// read or write: not under a clinic's scope, and not under the empty
// setting a connection is given back to the pool with. Before, every
// table shared such rows with every clinic.
func TestRowsOfNoClinicAreNotShared(t *testing.T) {
	owner, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	ctx := context.Background()
	if _, err := owner.Exec(ctx, `INSERT INTO audit_log (clinic, subject, roles, method, outcome) VALUES ('', 's', '{}', 'm', 'OK')`); err != nil {
		t.Fatal(err)
	}
	db := pgtest.App(t, schema)
	var n int
	if err := db.QueryRow(pgdb.WithClinic(ctx, "north"), `SELECT count(*) FROM audit_log`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("clinic north sees %d rows of no clinic (%v); want none", n, err)
	}
	conn, err := db.Pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT set_config('handoff.clinic', '', false)`); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM audit_log`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("an empty scope sees %d rows of no clinic (%v); want none", n, err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO audit_log (clinic, subject, roles, method, outcome) VALUES ('', 's', '{}', 'm', 'OK')`); err == nil {
		t.Fatal("an empty scope wrote a row of no clinic")
	}
}

// The application role reads which migrations have run, and only that:
// a migration not run is named; a schema it may not read the record of
// (migrated by a release before the grant), or one that does not exist,
// has every migration unapplied.
func TestUnappliedAsTheApplicationRole(t *testing.T) {
	ctx := context.Background()
	common := pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"}
	extra := pgdb.Source{Name: "extra", FS: fstest.MapFS{"m/0001_t.sql": {Data: []byte(`CREATE TABLE t (clinic text)`)}}, Dir: "m"}
	owner, schema := pgtest.Schema(t, common)
	app := pgtest.App(t, schema)
	if missing, err := pgdb.Unapplied(ctx, app.Pool, schema, common); err != nil || len(missing) != 0 {
		t.Fatalf("Unapplied of what ran = %v, %v; want nothing", missing, err)
	}
	missing, err := pgdb.Unapplied(ctx, app.Pool, schema, common, extra)
	if err != nil || len(missing) != 2 || missing[0] != "extra/0001_t.sql" || !strings.HasPrefix(missing[1], "secured/") {
		t.Fatalf("Unapplied = %v, %v; want extra/0001_t.sql and the set's secured marker", missing, err)
	}
	// A migration recorded whose set is not secured yet (secure runs after
	// the last of them, in a transaction of its own) is not done.
	if _, err := owner.Exec(ctx, `CREATE TABLE `+schema+`.t (clinic text)`); err != nil {
		t.Fatal(err)
	}
	if _, err := owner.Exec(ctx, `INSERT INTO `+schema+`.schema_migrations (id) VALUES ('extra/0001_t.sql')`); err != nil {
		t.Fatal(err)
	}
	if missing, err := pgdb.Unapplied(ctx, app.Pool, schema, common, extra); err != nil || len(missing) != 1 || !strings.HasPrefix(missing[0], "secured/") {
		t.Fatalf("recorded, not secured: Unapplied = %v, %v; want the secured marker", missing, err)
	}
	if _, err := app.Pool.Exec(pgdb.WithClinic(ctx, "north"), `SELECT 1 FROM `+schema+`.t`); err == nil {
		t.Fatal("the application role reads a table no secure has granted")
	}
	if err := pgdb.Migrate(ctx, owner, schema, common, extra); err != nil {
		t.Fatal(err)
	}
	if missing, err := pgdb.Unapplied(ctx, app.Pool, schema, common, extra); err != nil || len(missing) != 0 {
		t.Fatalf("after the migration: Unapplied = %v, %v; want nothing", missing, err)
	}
	if _, err := app.Pool.Exec(ctx, `INSERT INTO `+schema+`.schema_migrations (id) VALUES ('extra/0002_x.sql')`); err == nil {
		t.Fatal("the application role recorded a migration as run")
	}
	if _, err := owner.Exec(ctx, `REVOKE SELECT ON `+schema+`.schema_migrations FROM `+pgdb.AppRole); err != nil {
		t.Fatal(err)
	}
	if missing, err := pgdb.Unapplied(ctx, app.Pool, schema, common); err != nil || len(missing) == 0 {
		t.Fatalf("unreadable record: Unapplied = %v, %v; want every migration", missing, err)
	}
	if missing, err := pgdb.Unapplied(ctx, app.Pool, schema+"_none", common); err != nil || len(missing) == 0 {
		t.Fatalf("no schema: Unapplied = %v, %v; want every migration", missing, err)
	}
}

// A release rolled back, migrating a schema a newer release migrated,
// leaves the newer release's grants alone: it would grant every table
// whole, and revoke only the append-only rights it knows of, giving the
// application role back UPDATE and DELETE on the newer release's records.
// A release that merged away an earlier migration is not taken for older.
func TestOlderReleaseLeavesANewerReleasesGrants(t *testing.T) {
	ctx := context.Background()
	common := pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"}
	table := func(name string) *fstest.MapFile {
		return &fstest.MapFile{Data: []byte("CREATE TABLE " + name + " (clinic text NOT NULL, id text);\n")}
	}
	older := pgdb.Source{Name: "svc", FS: fstest.MapFS{"m/0001_a.sql": table("a")}, Dir: "m"}
	newer := pgdb.Source{Name: "svc", FS: fstest.MapFS{"m/0001_a.sql": table("a"), "m/0002_ledger.sql": table("ledger")}, Dir: "m"}
	merged := pgdb.Source{Name: "svc", FS: fstest.MapFS{"m/0002_ledger.sql": table("ledger")}, Dir: "m"}
	owner, schema := pgtest.Schema(t, common, newer)
	mayUpdate := func() bool {
		t.Helper()
		var may bool
		if err := owner.QueryRow(ctx, `SELECT has_table_privilege($1, $2, 'UPDATE')`, pgdb.AppRole, schema+".ledger").Scan(&may); err != nil {
			t.Fatal(err)
		}
		return may
	}
	// The newer release keeps its ledger append-only.
	if _, err := owner.Exec(ctx, `REVOKE UPDATE, DELETE ON `+schema+`.ledger FROM `+pgdb.AppRole); err != nil {
		t.Fatal(err)
	}
	if err := pgdb.Migrate(ctx, owner, schema, common, older); err != nil {
		t.Fatalf("the older release's Migrate: %v", err)
	}
	if mayUpdate() {
		t.Fatal("the older release granted UPDATE on the newer release's append-only ledger")
	}
	// Its services, which wait for its migrations, go on.
	if missing, err := pgdb.Unapplied(ctx, owner, schema, common, older); err != nil || len(missing) != 0 {
		t.Fatalf("the older release's migrations still to do: %v, %v; want none", missing, err)
	}
	// A newer release's source this one lacks makes it older too.
	extra := pgdb.Source{Name: "extra", FS: fstest.MapFS{"m/0001_more.sql": table("more")}, Dir: "m"}
	if err := pgdb.Migrate(ctx, owner, schema, common, newer, extra); err != nil {
		t.Fatal(err)
	}
	if _, err := owner.Exec(ctx, `REVOKE UPDATE, DELETE ON `+schema+`.ledger FROM `+pgdb.AppRole); err != nil {
		t.Fatal(err)
	}
	if err := pgdb.Migrate(ctx, owner, schema, common, newer); err != nil {
		t.Fatal(err)
	}
	if mayUpdate() {
		t.Fatal("a release lacking a newer release's source granted UPDATE on its ledger")
	}
	// A row an operator wrote, of no source, is no newer release's.
	if _, err := owner.Exec(ctx, `DELETE FROM `+schema+`.schema_migrations WHERE id LIKE 'extra/%';
		INSERT INTO `+schema+`.schema_migrations (id) VALUES ('restored-from-backup')`); err != nil {
		t.Fatal(err)
	}
	if err := pgdb.Migrate(ctx, owner, schema, common, merged); err != nil {
		t.Fatal(err)
	}
	if !mayUpdate() {
		t.Fatal("a release that merged away 0001 left the grants as if it were older; want them made as it knows them")
	}
}

// ordinaryOwner is a role that may create schemas in the test database,
// with attrs (and no superuser nor BYPASSRLS), as managed databases give
// an owner; it returns a pool logged in as it, and a schema name of its
// own, both dropped when the test ends.
func ordinaryOwner(t *testing.T, admin *pgxpool.Pool, attrs string) (*pgxpool.Pool, string) {
	t.Helper()
	ctx := context.Background()
	role := fmt.Sprintf("handoff_owner_test_%d", time.Now().UnixNano()%1_000_000_000)
	var db string
	if err := admin.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
		t.Fatal(err)
	}
	schema := role + "_s"
	for _, q := range []string{
		`CREATE ROLE ` + role + ` LOGIN NOSUPERUSER NOBYPASSRLS ` + attrs,
		`GRANT CREATE ON DATABASE ` + pgx.Identifier{db}.Sanitize() + ` TO ` + role,
	} {
		if _, err := admin.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	t.Cleanup(func() {
		ctx := context.Background()
		_, _ = admin.Exec(ctx, `DROP SCHEMA IF EXISTS `+schema+` CASCADE`)
		_, _ = admin.Exec(ctx, `REVOKE CREATE ON DATABASE `+pgx.Identifier{db}.Sanitize()+` FROM `+role)
		_, _ = admin.Exec(ctx, `DROP OWNED BY `+role)
		_, _ = admin.Exec(ctx, `DROP ROLE IF EXISTS `+role)
	})
	cfg, err := pgxpool.ParseConfig(admin.Config().ConnString())
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.User = role
	owner, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(owner.Close)
	return owner, schema
}

// An owner that may not create roles, given the application role by hand
// (a provider that lets no one create roles), migrates: secure grants the
// role to the owner only if it lacks it, as granting even a role held
// needs its admin option. Before, every migration failed.
func TestOwnerGivenTheAppRoleByHandMigrates(t *testing.T) {
	ctx := context.Background()
	admin, _ := pgtest.Schema(t)
	owner, schema := ordinaryOwner(t, admin, "NOCREATEROLE")
	var role string
	if err := owner.QueryRow(ctx, `SELECT current_user`).Scan(&role); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, `GRANT `+pgdb.AppRole+` TO `+role); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), `REVOKE `+pgdb.AppRole+` FROM `+role) })
	src := pgdb.Source{Name: "test", FS: fstest.MapFS{
		"m/0001_t.sql": {Data: []byte("CREATE TABLE t (clinic text NOT NULL, id text NOT NULL);\n")},
	}, Dir: "m"}
	if err := pgdb.Migrate(ctx, owner, schema, src); err != nil {
		t.Fatalf("Migrate as an owner given %s by hand: %v", pgdb.AppRole, err)
	}
	var may bool
	if err := admin.QueryRow(ctx, `SELECT has_table_privilege($1, $2, 'SELECT')`, pgdb.AppRole, schema+".t").Scan(&may); err != nil || !may {
		t.Fatalf("%s may read the table made: %v, %v; want it granted", pgdb.AppRole, may, err)
	}
}
