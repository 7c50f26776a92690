// Package pgdb opens Handoff's PostgreSQL pools, applies each service's
// embedded migrations into the service's own schema, and runs transactions.
package pgdb

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"path"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/handoff-health/handoff/services/apperr"
)

// Common holds the tables every service keeps in its own schema: the outbox,
// idempotency keys and the audit log.
//
//go:embed common/*.sql
var Common embed.FS

var schemaPattern = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// Open connects a pool whose sessions resolve unqualified table names in
// schema, so one service's SQL never names another service's tables.
func Open(ctx context.Context, dsn, schema string) (*pgxpool.Pool, error) {
	cfg, err := poolConfig(dsn, schema)
	if err != nil {
		return nil, err
	}
	return connect(ctx, cfg)
}

// OpenApp connects a pool that acts as AppRole (SET ROLE when the URL's
// user is the owner, as in development), wrapped to scope every query to the
// context's clinic. Migrate must have run first: it creates the role.
func OpenApp(ctx context.Context, dsn, schema string) (*DB, error) {
	cfg, err := poolConfig(dsn, schema)
	if err != nil {
		return nil, err
	}
	cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		var user string
		if err := c.QueryRow(ctx, `SELECT current_user`).Scan(&user); err != nil {
			return err
		}
		if user == AppRole {
			return nil
		}
		_, err := c.Exec(ctx, `SET ROLE `+AppRole)
		return err
	}
	pool, err := connect(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := checkAppRole(ctx, pool, AppRole); err != nil {
		pool.Close()
		return nil, err
	}
	return &DB{Pool: pool}, nil
}

// CheckLoginRole refuses db, a pool OpenApp made, if the user it logged in
// as could take back what the application role keeps from it: a
// superuser, a role that bypasses row-level security, or the owner of
// schema, or a member of one (RESET ROLE or SET ROLE reaches it). OpenApp
// takes the owner's URL for development, where the same process
// migrates; a process told not to migrate is meant to log in as the
// services' own role (EnsureLoginRole), and one given the owner's URL
// instead would run with the owner's rights a statement away.
func CheckLoginRole(ctx context.Context, db *DB, schema string) error {
	var user string
	var owns bool
	if err := db.Pool.QueryRow(ctx, `SELECT session_user, EXISTS (SELECT 1 FROM pg_roles l JOIN pg_roles r ON pg_has_role(l.oid, r.oid, 'MEMBER')
		WHERE l.rolname = session_user AND `+tooStrong(`(SELECT nspowner FROM pg_namespace WHERE nspname = $1::text)`, `true`)+`)`,
		schema).Scan(&user, &owns); err != nil {
		return fmt.Errorf("pgdb: read the rights of the login role: %w", err)
	}
	if owns {
		return fmt.Errorf("pgdb: the database URL logs in as %q, which is, or may act as, a superuser, a role that bypasses row-level security or that may create roles or replicate, the owner of %s, or a role that reads or writes past row security (the server's files, pg_write_all_data): give the services their own login role (handoff migrate --app-login-role)", user, schema)
	}
	return nil
}

// tooStrong is the condition on r, a role login role l may act as (l
// itself among them), under which l could take back what AppRole keeps
// from it (see EnsureLoginRole): owner is the owner's oid, and own says
// whether l's own CREATEROLE and REPLICATION count. EnsureLoginRole and
// CheckLoginRole judge by it alike.
func tooStrong(owner, own string) string {
	return `(r.rolsuper OR r.rolbypassrls OR r.oid = ` + owner + `
		OR r.rolname IN ('pg_read_server_files', 'pg_write_server_files', 'pg_execute_server_program', 'pg_write_all_data')
		OR ((r.rolcreaterole OR r.rolreplication) AND (r.oid <> l.oid OR ` + own + `)))`
}

// checkAppRole refuses to serve as role if it gets past row-level
// security: Migrate creates the role without those rights, but leaves one
// that already exists as it is (made by hand, or by an earlier setup),
// and a superuser or BYPASSRLS role would read every clinic's rows
// without a word.
func checkAppRole(ctx context.Context, q Querier, role string) error {
	var bypasses bool
	if err := q.QueryRow(ctx, `SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = $1::text`, role).Scan(&bypasses); err != nil {
		return fmt.Errorf("pgdb: read the rights of %s: %w", role, err)
	}
	if bypasses {
		return fmt.Errorf("pgdb: the application role %q is a superuser or bypasses row-level security, which would show every clinic's rows to every clinic: ALTER ROLE %s NOSUPERUSER NOBYPASSRLS", role, role)
	}
	return nil
}

// poolConfig is the configuration both kinds of pool share: the schema as
// search path, a name that shows in pg_stat_activity, and query tracing.
func poolConfig(dsn, schema string) (*pgxpool.Config, error) {
	if !schemaPattern.MatchString(schema) {
		return nil, fmt.Errorf("pgdb: invalid schema name %q", schema)
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("pgdb: parse dsn: %w", err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schema
	cfg.ConnConfig.RuntimeParams["application_name"] = "handoff-" + schema
	cfg.ConnConfig.Tracer = queryTracer{}
	if !strings.Contains(dsn, "pool_max_conns") {
		// pgx sizes a pool by the machine's CPUs, not the container's: on
		// a large node every replica's pools would open that many
		// connections each, past a managed server's limit as the
		// services scale out. GOMAXPROCS follows the container's CPU
		// limit; pool_max_conns in the URL still decides.
		cfg.MaxConns = int32(max(4, runtime.GOMAXPROCS(0)))
	}
	return cfg, nil
}

// connect opens the pool and checks that the server answers.
func connect(ctx context.Context, cfg *pgxpool.Config) (*pgxpool.Pool, error) {
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pgdb: connect: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("pgdb: ping %s: %w", cfg.ConnConfig.Host, err)
	}
	return pool, nil
}

// Source is one set of migrations: files named NNNN_description.sql.
type Source struct {
	Name string
	FS   fs.FS
	Dir  string
}

// Migrate creates schema if needed and applies, in order, every migration of
// sources that has not been applied yet, each in its own transaction. An
// advisory lock serialises concurrent starters.
func Migrate(ctx context.Context, pool *pgxpool.Pool, schema string, sources ...Source) error {
	if !schemaPattern.MatchString(schema) {
		return fmt.Errorf("pgdb: invalid schema name %q", schema)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("pgdb: acquire: %w", err)
	}
	defer conn.Release()
	// One lock for every schema: some migrations create database-wide
	// extensions, which must not race.
	// Taken by polling, not by a statement that waits: a waiting statement
	// holds a snapshot, which another starter's CREATE INDEX CONCURRENTLY
	// (under this lock) would wait out, while it waits for the lock:
	// a deadlock.
	for {
		var got bool
		if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext('handoff-migrate'))`).Scan(&got); err != nil {
			return fmt.Errorf("pgdb: lock: %w", err)
		}
		if got {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgdb: lock: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	defer conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtext('handoff-migrate'))`) //nolint:errcheck
	stmts := []string{
		`CREATE SCHEMA IF NOT EXISTS ` + schema,
		`CREATE TABLE IF NOT EXISTS ` + schema + `.schema_migrations (
			id text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`,
	}
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("pgdb: prepare schema %s: %w", schema, err)
		}
	}
	all, err := migrations(sources)
	if err != nil {
		return err
	}
	for _, m := range all {
		if err := apply(ctx, conn.Conn(), schema, m.id, m.src.FS, m.file); err != nil {
			return err
		}
	}
	newer, err := newerRecorded(ctx, conn.Conn(), schema, all)
	if err != nil {
		return err
	}
	marker, err := securedMarker(sources)
	if err != nil {
		return err
	}
	if len(newer) > 0 {
		// A newer release migrated the schema (this one was rolled back):
		// its grants are for tables this release does not know, which
		// secure would grant whole (ON ALL TABLES), revoking only the
		// append-only rights it knows of. They are left as they are. The
		// newer release secured every table this one's migrations made,
		// so its marker is this one's to record: its services wait for it.
		slog.WarnContext(ctx, "schema migrated by a newer release: its grants and row security are left to it",
			"schema", schema, "newer", strings.Join(newer, ", "))
		if _, err := conn.Exec(ctx, `INSERT INTO `+schema+`.schema_migrations (id) VALUES ($1) ON CONFLICT DO NOTHING`, marker); err != nil {
			return fmt.Errorf("pgdb: record %s secured: %w", schema, err)
		}
		return nil
	}
	return secure(ctx, conn.Conn(), schema, marker)
}

// newerRecorded returns the migrations recorded in schema that come after
// the last of their source in all, or are of a source all lacks: a newer
// release's. One this release merged away or dropped, numbered before its
// source's last, is not newer.
func newerRecorded(ctx context.Context, conn *pgx.Conn, schema string, all []migration) ([]string, error) {
	last := map[string]string{}
	for _, m := range all {
		last[m.src.Name] = max(last[m.src.Name], path.Base(m.file))
	}
	rows, err := conn.Query(ctx, `SELECT id FROM `+schema+`.schema_migrations WHERE id NOT LIKE 'secured/%' ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("pgdb: read %s migrations: %w", schema, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("pgdb: read %s migrations: %w", schema, err)
	}
	var newer []string
	for _, id := range ids {
		// A source this release does not know is a newer release's too;
		// an id of no source (not one Migrate records) is no release's.
		src, file, ok := strings.Cut(id, "/")
		if l, known := last[src]; ok && (!known || file > l) {
			newer = append(newer, id)
		}
	}
	return newer, nil
}

// migration is one file of a source, and the id it is recorded under.
type migration struct {
	src      Source
	file, id string
}

// migrations are sources' migrations in the order they run: the one list
// Migrate applies and Unapplied and the secured marker name.
func migrations(sources []Source) ([]migration, error) {
	var out []migration
	for _, src := range sources {
		files, err := fs.Glob(src.FS, path.Join(src.Dir, "*.sql"))
		if err != nil {
			return nil, fmt.Errorf("pgdb: list %s migrations: %w", src.Name, err)
		}
		slices.Sort(files)
		for _, f := range files {
			out = append(out, migration{src: src, file: f, id: src.Name + "/" + path.Base(f)})
		}
	}
	return out, nil
}

// migrationIDs are the ids of sources' migrations, in the order they run.
func migrationIDs(sources []Source) ([]string, error) {
	all, err := migrations(sources)
	ids := make([]string, len(all))
	for i, m := range all {
		ids[i] = m.id
	}
	return ids, err
}

// securedMarker is the id secure records, in its transaction, once it has
// granted and secured what sources' migrations made: a marker of that set
// of migrations, so that a service waiting for them (Unapplied) goes on
// only once the tables they add are the application role's to use, not
// when the last of them is recorded, before.
func securedMarker(sources []Source) (string, error) {
	ids, err := migrationIDs(sources)
	if err != nil {
		return "", err
	}
	// The policies' form too: a release that changes only what secure
	// does must have it done before its services go on.
	h := sha256.Sum256([]byte(policyVersion + "\n" + strings.Join(ids, "\n")))
	return "secured/" + hex.EncodeToString(h[:8]), nil
}

// Unapplied returns the migrations of sources that schema has no record
// of, and the marker that secure has granted and secured what they made
// (securedMarker): what a release's migration has yet to do. A schema that
// does not exist, or whose record q may not read (no release that grants
// the application role that read has migrated it), has it all to do.
func Unapplied(ctx context.Context, q *pgxpool.Pool, schema string, sources ...Source) ([]string, error) {
	if !schemaPattern.MatchString(schema) {
		return nil, fmt.Errorf("pgdb: invalid schema name %q", schema)
	}
	want, err := migrationIDs(sources)
	if err != nil {
		return nil, err
	}
	marker, err := securedMarker(sources)
	if err != nil {
		return nil, err
	}
	want = append(want, marker)
	rows, err := q.Query(ctx, `SELECT id FROM `+schema+`.schema_migrations WHERE id = ANY($1)`, want)
	var applied []string
	if err == nil {
		applied, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "42501" || pgErr.Code == "42P01" || pgErr.Code == "3F000") {
		// insufficient_privilege, undefined_table, invalid_schema_name
		return want, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pgdb: read applied migrations of %s: %w", schema, err)
	}
	return slices.DeleteFunc(want, func(id string) bool { return slices.Contains(applied, id) }), nil
}

// MigrateLockTimeout bounds how long a migration waits for a table's lock.
// Its ALTERs and policy changes take exclusive locks; waiting behind a long
// read (a report, a dump) would queue every request behind the migration,
// so it fails instead, and the migration job or the service's restart
// tries again.
var MigrateLockTimeout = 10 * time.Second

func lockTimeout() string {
	return fmt.Sprintf("SET LOCAL lock_timeout = %d", MigrateLockTimeout.Milliseconds())
}

// policyVersion names the form of the row-level security policies secure
// creates. Change it with the policies: tables whose policy carries another
// (or none) get the new ones at the next migration.
const policyVersion = "handoff-clinic-isolation-3"

// sharedTables hold rows of the empty clinic that every clinic reads (the
// built-in talking points). No other table gets that policy: a row of
// the empty clinic written there by mistake must not be every clinic's to
// read.
var sharedTables = []string{"talking_points"}

// appendOnly names the tables whose rows the services may not change or
// remove, with the rights secure takes from AppRole on them (and
// EnsureLoginRole refuses a login role holding by another way).
//
// Records the law asks us to keep are append-only for the services: the
// audit trail, the accounting of disclosures and the revocations of
// consent. Signed consents change (a revocation stamps them, through a
// grant on those columns alone) but are never deleted. So are the
// histories the services only ever add to: a referral's moves and the
// services after its treatment entry (their retractions, and the ids that
// name those reported without one), a boundary's moves, and the warning
// signs (and their retractions), safety screens and CRAFT sessions (and
// theirs) recorded for a family. Deleting a family still takes its rows
// with it: a foreign key's cascade runs as the table's owner.
var appendOnly = map[string]string{
	"audit_log":                    "UPDATE, DELETE, TRUNCATE",
	"audit_records":                "UPDATE, DELETE, TRUNCATE",
	"disclosures":                  "UPDATE, DELETE, TRUNCATE",
	"consent_revocations":          "UPDATE, DELETE, TRUNCATE",
	"consents":                     "DELETE, TRUNCATE",
	"referral_events":              "UPDATE, DELETE, TRUNCATE",
	"referral_services":            "UPDATE, DELETE, TRUNCATE",
	"referral_service_retractions": "UPDATE, DELETE, TRUNCATE",
	"referral_service_ids":         "UPDATE, DELETE, TRUNCATE",
	"boundary_events":              "UPDATE, DELETE, TRUNCATE",
	"warning_signs":                "UPDATE, DELETE, TRUNCATE",
	"warning_sign_retractions":     "UPDATE, DELETE, TRUNCATE",
	"safety_screens":               "UPDATE, DELETE, TRUNCATE",
	"craft_sessions":               "UPDATE, DELETE, TRUNCATE",
	"craft_session_retractions":    "UPDATE, DELETE, TRUNCATE",
}

// consentStamp are the columns of a signed consent AppRole may update:
// those a revocation stamps.
var consentStamp = []string{"revoke_time", "update_time", "version"}

// secure grants AppRole what the services need and puts row-level security
// on every table that has a clinic column. It runs after every migration
// set, so tables added later are covered too.
func secure(ctx context.Context, conn *pgx.Conn, schema, marker string) error {
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		stmts := []string{
			lockTimeout(),
			`DO $$ BEGIN
				IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '` + AppRole + `') THEN
					CREATE ROLE ` + AppRole + ` NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
				END IF;
			END $$`,
			// Granted only if its rights are not the owner's already:
			// granting a role, even one held, needs its admin option,
			// which an owner given the role by hand (a provider that lets
			// no one create roles) may lack. USAGE, not MEMBER: on
			// PostgreSQL 16 the owner that creates the role holds it with
			// the admin option alone, not its rights, and row security
			// would hide every row from the data migrations.
			`DO $$ BEGIN
				IF NOT pg_has_role(current_user, '` + AppRole + `', 'USAGE') THEN
					GRANT ` + AppRole + ` TO current_user;
				END IF;
			END $$`,
			`GRANT USAGE ON SCHEMA ` + schema + ` TO ` + AppRole,
			`GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ` + schema + ` TO ` + AppRole,
			`GRANT USAGE ON ALL SEQUENCES IN SCHEMA ` + schema + ` TO ` + AppRole,
			`REVOKE ALL ON ` + schema + `.schema_migrations FROM ` + AppRole,
			// Read only, so that a service not migrating can tell whether
			// its release's migrations have run (Unapplied).
			`GRANT SELECT ON ` + schema + `.schema_migrations TO ` + AppRole,
		}
		for table, privs := range appendOnly {
			stmts = append(stmts, `DO $$ BEGIN
				IF to_regclass('`+schema+`.`+table+`') IS NOT NULL THEN
					REVOKE `+privs+` ON `+schema+`.`+table+` FROM `+AppRole+`;
				END IF;
			END $$`)
		}
		// A revocation stamps a consent; nothing else about a signed consent
		// may change, so its terms cannot be widened after the fact.
		stmts = append(stmts, `DO $$ BEGIN
				IF to_regclass('`+schema+`.consents') IS NOT NULL THEN
					REVOKE UPDATE ON `+schema+`.consents FROM `+AppRole+`;
					GRANT UPDATE (`+strings.Join(consentStamp, ", ")+`) ON `+schema+`.consents TO `+AppRole+`;
				END IF;
			END $$`)
		for _, st := range stmts {
			if _, err := tx.Exec(ctx, st); err != nil {
				return fmt.Errorf("pgdb: secure %s: %w", schema, err)
			}
		}
		// Tables whose row security is already what this version puts in
		// place are left alone: ALTER TABLE and CREATE POLICY take an
		// exclusive lock, and every replica's start runs this, so a
		// long read (a dump) would queue the table's requests behind each
		// start and then fail it at the lock timeout, over and over.
		rows, err := tx.Query(ctx, `SELECT col.table_name FROM information_schema.columns col
			JOIN pg_class c ON c.relname = col.table_name
			JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = col.table_schema
			WHERE col.table_schema = $1 AND col.column_name = 'clinic' AND c.relkind IN ('r', 'p')
			AND NOT (c.relrowsecurity AND c.relforcerowsecurity
				AND EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'shared_read') = (col.table_name = ANY($3))
				AND EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'clinic_isolation'
					AND obj_description(p.oid, 'pg_policy') = $2))
			ORDER BY col.table_name`, schema, policyVersion, sharedTables)
		if err != nil {
			return fmt.Errorf("pgdb: secure %s: %w", schema, err)
		}
		tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("pgdb: secure %s: %w", schema, err)
		}
		for _, t := range tables {
			q := schema + "." + pgx.Identifier{t}.Sanitize()
			// Rows of clinic '' are shared content (built-in talking points):
			// readable everywhere (a SELECT-only policy) in the shared tables
			// only, changed by no clinic. An empty setting (a connection
			// given back to the pool) is no clinic, not the shared one.
			//
			// The setting is read in a sub-select, once per statement. Read
			// bare, the planner takes its value to estimate the policy and
			// counts "clinic = 'north'" twice, once from the query and once
			// from the policy: a clinic with 1% of the rows was estimated at
			// 0.01% of them, and its keyset pages sorted the clinic's rows
			// instead of reading the index in order.
			stmts := []string{
				`ALTER TABLE ` + q + ` ENABLE ROW LEVEL SECURITY`,
				`ALTER TABLE ` + q + ` FORCE ROW LEVEL SECURITY`,
				`DROP POLICY IF EXISTS clinic_isolation ON ` + q,
				`DROP POLICY IF EXISTS shared_read ON ` + q,
				`CREATE POLICY clinic_isolation ON ` + q + ` TO ` + AppRole + `
					USING (clinic = (SELECT nullif(current_setting('handoff.clinic', true), ''))
						OR (SELECT current_setting('handoff.clinic', true)) = '*')
					WITH CHECK (clinic = (SELECT nullif(current_setting('handoff.clinic', true), ''))
						OR (SELECT current_setting('handoff.clinic', true)) = '*')`,
				`COMMENT ON POLICY clinic_isolation ON ` + q + ` IS '` + policyVersion + `'`,
			}
			if slices.Contains(sharedTables, t) {
				stmts = append(stmts, `CREATE POLICY shared_read ON `+q+` FOR SELECT TO `+AppRole+` USING (clinic = '')`)
			}
			for _, st := range stmts {
				if _, err := tx.Exec(ctx, st); err != nil {
					return fmt.Errorf("pgdb: row security on %s: %w", q, err)
				}
			}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+schema+`.schema_migrations (id) VALUES ($1) ON CONFLICT DO NOTHING`, marker); err != nil {
			return fmt.Errorf("pgdb: record %s secured: %w", schema, err)
		}
		return nil
	})
}

// NoTransaction, as a migration's first line, applies it outside a
// transaction, one statement (ended by a semicolon at the end of a line)
// at a time: for CREATE INDEX CONCURRENTLY, which builds an index on a
// large table without holding off its writes, and cannot run in a
// transaction. Each statement must be safe to run again (a migration cut
// short is applied again from its start): DROP INDEX CONCURRENTLY IF
// EXISTS before CREATE INDEX CONCURRENTLY removes what a build cut short
// leaves, an invalid index.
const NoTransaction = "-- handoff:no-transaction"

func apply(ctx context.Context, conn *pgx.Conn, schema, id string, fsys fs.FS, file string) error {
	body, err := fs.ReadFile(fsys, file)
	if err != nil {
		return fmt.Errorf("pgdb: read %s: %w", id, err)
	}
	if strings.HasPrefix(string(body), NoTransaction) {
		return applyOutsideTx(ctx, conn, schema, id, string(body))
	}
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL search_path TO `+schema); err != nil {
			return fmt.Errorf("pgdb: %s: %w", id, err)
		}
		// Every clinic's rows: once the tables are secured, row-level
		// security binds the owner too (a member of AppRole, the policies
		// forced), and a data migration run without a clinic scope would
		// change no row and still be recorded as applied.
		if _, err := tx.Exec(ctx, `SELECT set_config('handoff.clinic', '*', true)`); err != nil {
			return fmt.Errorf("pgdb: %s: %w", id, err)
		}
		if _, err := tx.Exec(ctx, lockTimeout()); err != nil {
			return fmt.Errorf("pgdb: %s: %w", id, err)
		}
		tag, err := tx.Exec(ctx, `INSERT INTO schema_migrations (id) VALUES ($1) ON CONFLICT DO NOTHING`, id)
		if err != nil {
			return fmt.Errorf("pgdb: record %s: %w", id, err)
		}
		if tag.RowsAffected() == 0 {
			return nil // already applied
		}
		if _, err := tx.Exec(ctx, string(body)); err != nil {
			return fmt.Errorf("pgdb: apply %s: %w", id, err)
		}
		return nil
	})
}

// applyOutsideTx applies a NoTransaction migration, statement by
// statement, and records it once all have run.
func applyOutsideTx(ctx context.Context, conn *pgx.Conn, schema, id, body string) error {
	var done bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+schema+`.schema_migrations WHERE id = $1)`, id).Scan(&done); err != nil {
		return fmt.Errorf("pgdb: %s: %w", id, err)
	}
	if done {
		return nil
	}
	// The session's settings, for this migration only.
	if _, err := conn.Exec(ctx, `SELECT set_config('search_path', $1, false), set_config('lock_timeout', $2, false),
		set_config('handoff.clinic', '*', false)`, schema, fmt.Sprint(MigrateLockTimeout.Milliseconds())); err != nil {
		return fmt.Errorf("pgdb: %s: %w", id, err)
	}
	defer conn.Exec(context.WithoutCancel(ctx), `RESET search_path; RESET lock_timeout; RESET handoff.clinic`) //nolint:errcheck
	for _, st := range strings.SplitAfter(body, ";\n") {
		if strings.TrimSpace(stripComments(st)) == "" {
			continue
		}
		if _, err := conn.Exec(ctx, st); err != nil {
			return fmt.Errorf("pgdb: apply %s: %w", id, err)
		}
	}
	if _, err := conn.Exec(ctx, `INSERT INTO `+schema+`.schema_migrations (id) VALUES ($1) ON CONFLICT DO NOTHING`, id); err != nil {
		return fmt.Errorf("pgdb: record %s: %w", id, err)
	}
	return nil
}

// stripComments drops the SQL line comments of st.
func stripComments(st string) string {
	var b strings.Builder
	for _, line := range strings.Split(st, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "--") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// IsUniqueViolation reports whether err is a unique-constraint violation.
func IsUniqueViolation(err error) bool { return sqlState(err) == "23505" }

// IsExclusionViolation reports whether err is an exclusion-constraint violation.
func IsExclusionViolation(err error) bool { return sqlState(err) == "23P01" }

func sqlState(err error) string {
	var pgErr interface{ SQLState() string }
	if errors.As(err, &pgErr) {
		return pgErr.SQLState()
	}
	return ""
}

// Querier is what both a pool and a transaction offer for reads.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// One collects exactly one row. No row is NOT_FOUND for name, so a missing
// resource and another clinic's resource look the same.
func One[T any](rows pgx.Rows, err error, name string, scan pgx.RowToFunc[T]) (T, error) {
	var zero T
	if err != nil {
		return zero, fmt.Errorf("read %s: %w", name, err)
	}
	v, err := pgx.CollectExactlyOneRow(rows, scan)
	if errors.Is(err, pgx.ErrNoRows) {
		return zero, apperr.NotFound(name)
	}
	if err != nil {
		return zero, fmt.Errorf("read %s: %w", name, err)
	}
	return v, nil
}

// EnsureLoginRole makes name a role the services can log in as that holds
// AppRole's rights and nothing of the owner's: with it, code running in a
// service cannot RESET ROLE back to the owner and lift row-level security
// or rewrite the audit trail. With a password the role is created if
// missing and its password set (the migrating user needs CREATEROLE);
// without one it must exist already, as managed databases often have their
// roles made by an administrator, and is only granted AppRole. AppRole must
// exist: Migrate creates it.
func EnsureLoginRole(ctx context.Context, pool *pgxpool.Pool, name, password string) error {
	if !schemaPattern.MatchString(name) || name == AppRole {
		return fmt.Errorf("pgdb: %q cannot be the services' login role", name)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("pgdb: acquire: %w", err)
	}
	defer conn.Release()
	var self bool
	if err := conn.QueryRow(ctx, `SELECT $1::text = current_user`, name).Scan(&self); err != nil {
		return fmt.Errorf("pgdb: login role: %w", err)
	}
	if self {
		return fmt.Errorf("pgdb: the services' login role %q must not be the owner that migrates", name)
	}
	// A role made by hand (or made before) may hold more than AppRole: a
	// superuser, one that bypasses row-level security or is a member of
	// the owner could take back what the role is meant to keep from it,
	// and so could one that is a member of any role that can (SET ROLE
	// reaches it, however far up), or of a role that can create roles and
	// grant itself more. Its own CREATEROLE goes with the password (ALTER
	// ROLE below), so only without one is it refused. Replication and the
	// server's file and program roles get past row-level security too:
	// logical decoding streams every clinic's changes, and raw table
	// files or COPY TO PROGRAM read them; REPLICATION of its own goes
	// with the password as CREATEROLE does. Refused before anything is
	// changed or granted to it.
	var owner bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles l JOIN pg_roles r ON pg_has_role(l.oid, r.oid, 'MEMBER')
		WHERE l.rolname = $1::text AND `+tooStrong(`(SELECT oid FROM pg_roles WHERE rolname = current_user)`, `$2`)+`)`,
		name, password == "").Scan(&owner); err != nil {
		return fmt.Errorf("pgdb: login role %s: %w", name, err)
	}
	if owner {
		return fmt.Errorf("pgdb: the services' login role %q is a superuser, bypasses row-level security, can create roles, replicates, reads or writes the server's files, writes every table (pg_write_all_data), or is a member of the owner or of a role that may: give the services a role without those rights", name)
	}
	// Rights on the append-only records that come some other way than
	// AppRole (granted to the role, to a group it may SET ROLE to whether
	// or not it inherits, to PUBLIC, on a column, or its own tables) would
	// let the services rewrite them: AppRole's REVOKE does not reach
	// those. Any schema Migrate made is looked at. A consent's columns
	// AppRole may update (consentStamp) are the exception. No row (a role
	// not made yet) is none.
	var rewrites string
	// By oid, not by name: a schema dropped while this reads the catalog
	// (another tenant's, a test's) is then no table, not an error.
	if err := conn.QueryRow(ctx, `SELECT coalesce(min(format('%I.%I', n.nspname, c.relname)), '')
		FROM pg_roles l JOIN pg_roles r ON pg_has_role(l.oid, r.oid, 'MEMBER')
		CROSS JOIN pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE l.rolname = $1::text AND c.relkind IN ('r', 'p') AND c.relname = ANY($2::text[])
			AND EXISTS (SELECT 1 FROM pg_class m WHERE m.relnamespace = c.relnamespace AND m.relname = 'schema_migrations'
				AND m.relkind IN ('r', 'p'))
			AND (has_table_privilege(r.oid, c.oid, 'UPDATE, DELETE, TRUNCATE')
				OR EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
					AND a.attnum > 0 AND NOT a.attisdropped
					AND NOT (c.relname = 'consents' AND a.attname = ANY($3::text[]))
					AND has_column_privilege(r.oid, c.oid, a.attnum, 'UPDATE')))`,
		name, slices.Collect(maps.Keys(appendOnly)), consentStamp).Scan(&rewrites); err != nil {
		return fmt.Errorf("pgdb: login role %s: %w", name, err)
	}
	if rewrites != "" {
		return fmt.Errorf("pgdb: the services' login role %q may update, delete or truncate %s, whose rows the services only ever add: revoke that right (granted to it, to a group of it, or as its owner)", name, rewrites)
	}
	if password != "" {
		// Sent as its SCRAM verifier, not in clear (see scramVerifier);
		// a password with other than ASCII goes in clear, for the server
		// to prepare, as before.
		verifier, ok, err := scramVerifier(password)
		if err != nil {
			return err
		}
		if !ok {
			verifier = password
		}
		var ddl string
		if err := conn.QueryRow(ctx, `SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1::text)
				THEN format('ALTER ROLE %I LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION INHERIT PASSWORD %L', $1::text, $2::text)
				ELSE format('CREATE ROLE %I LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION INHERIT PASSWORD %L', $1::text, $2::text) END`,
			name, verifier).Scan(&ddl); err != nil {
			return fmt.Errorf("pgdb: login role: %w", err)
		}
		if _, err := conn.Exec(ctx, ddl); err != nil {
			return fmt.Errorf("pgdb: create login role %s: %w", name, err)
		}
	}
	if _, err := conn.Exec(ctx, `GRANT `+AppRole+` TO `+name); err != nil {
		return fmt.Errorf("pgdb: grant %s to %s: %w", AppRole, name, err)
	}
	return nil
}
