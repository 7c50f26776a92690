package pgdb_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

// stamped makes a schema with the common tables and a context scoped to
// clinic north that carries a stamp: an audit record for clinic, with
// request id id.
func stamped(t *testing.T, clinic, id string) (*pgxpool.Pool, *pgdb.DB, *pgdb.Stamp, context.Context) {
	t.Helper()
	pool, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	st := &pgdb.Stamp{SQL: `INSERT INTO audit_log (clinic, subject, roles, method, resource, outcome, request_id)
		VALUES ($1, 's', '{}', 'M', 'r', 'OK', $2)`, Args: []any{clinic, id}}
	return pool, pgtest.App(t, schema), st, pgdb.WithStamp(pgdb.WithClinic(context.Background(), "north"), st)
}

// A stamp is written by the first transaction of a call that commits, in
// that transaction, exactly once; a rollback leaves it for the next.
func TestStampRidesTheFirstCommit(t *testing.T) {
	t.Parallel()
	pool, db, st, ctx := stamped(t, "north", "stamp-1")
	bg := context.Background()
	records := func() int {
		var n int
		if err := pool.QueryRow(bg, `SELECT count(*) FROM audit_log WHERE request_id = 'stamp-1'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	change := func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO outbox (clinic, event_type, resource, payload)
			VALUES ('north', 'test.changed', 'change-'||txid_current(), ''::bytea)`)
		return err
	}

	rolledBack := errors.New("rolled back")
	if err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error { _ = change(tx); return rolledBack }); !errors.Is(err, rolledBack) {
		t.Fatal(err)
	}
	if st.Written() || records() != 0 {
		t.Fatalf("after a rollback: written %v, %d records; want neither", st.Written(), records())
	}
	var xid int64
	if err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `SELECT txid_current()`).Scan(&xid); err != nil {
			return err
		}
		return change(tx)
	}); err != nil {
		t.Fatal(err)
	}
	if !st.Written() || records() != 1 {
		t.Fatalf("after a commit: written %v, %d records; want one", st.Written(), records())
	}
	var recordXID int64
	if err := pool.QueryRow(bg, `SELECT xmin::text::bigint FROM audit_log WHERE request_id = 'stamp-1'`).Scan(&recordXID); err != nil {
		t.Fatal(err)
	}
	if recordXID != xid {
		t.Errorf("the record was written by transaction %d, the change by %d: want the same", recordXID, xid)
	}
	if err := pgx.BeginFunc(ctx, db, change); err != nil {
		t.Fatal(err)
	}
	if records() != 1 {
		t.Errorf("%d records after a second commit, want still one", records())
	}
}

// A stamp that cannot be written fails its transaction: no change without
// its record.
func TestStampThatFailsFailsItsTransaction(t *testing.T) {
	t.Parallel()
	// Another clinic's row: row-level security refuses it.
	pool, db, st, ctx := stamped(t, "south", "stamp-2")
	bg := context.Background()
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO outbox (clinic, event_type, resource, payload)
			VALUES ('north', 'test.changed', 'change-2', ''::bytea)`)
		return err
	})
	if err == nil {
		t.Fatal("commit succeeded with a stamp row-level security refuses")
	}
	var n int
	if err := pool.QueryRow(bg, `SELECT count(*) FROM outbox WHERE resource = 'change-2'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 || st.Written() {
		t.Errorf("change kept: %d rows, written %v; want the transaction rolled back", n, st.Written())
	}
}

// Only a well-formed clinic id is written into the scoped BEGIN; anything
// else is left to a parameter.
func TestScopedBegin(t *testing.T) {
	t.Parallel()
	for _, c := range []string{"north", "clinic-7", "a", pgdb.SystemScope, strings.Repeat("a", 63)} {
		q, ok := pgdb.ScopedBegin(c)
		if !ok || !strings.Contains(q, "'"+c+"'") {
			t.Errorf("ScopedBegin(%q) = %q, %v; want the clinic as a literal", c, q, ok)
		}
	}
	for _, c := range []string{"", "North", "o'brien", `a\b`, "a b", "a;b", "a'); DROP TABLE x; --", "é", strings.Repeat("a", 64), "**", "-a"} {
		if q, ok := pgdb.ScopedBegin(c); ok {
			t.Errorf("ScopedBegin(%q) = %q; want it refused", c, q)
		}
	}
}

// A clinic that cannot be written as a literal still gets its scope,
// exactly, through a parameter.
func TestBeginScopesAnyClinic(t *testing.T) {
	t.Parallel()
	_, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	db := pgtest.App(t, schema)
	for _, c := range []string{"north", "O'Brien; --"} {
		ctx := pgdb.WithClinic(context.Background(), c)
		var got string
		if err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			return tx.QueryRow(ctx, `SELECT current_setting('handoff.clinic')`).Scan(&got)
		}); err != nil {
			t.Fatalf("%q: %v", c, err)
		}
		if got != c {
			t.Errorf("scope %q inside the transaction, want %q", got, c)
		}
	}
}

// A stamped transaction with one change costs three round trips once its
// statements are prepared (pgx prepares a new statement in a round trip of
// its own, untraced): BEGIN with the scope, the stamp with the change,
// COMMIT, each one traced query. The record is written before the change,
// in the same transaction.
func TestStampTravelsWithTheFirstStatement(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev) })

	pool, db, st, ctx := stamped(t, "north", "stamp-3")
	ctx, parent := tp.Tracer("test").Start(ctx, "call")
	if err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO outbox (clinic, event_type, resource, payload)
			VALUES ('north', 'test.changed', 'change-3', ''::bytea)`)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	parent.End()
	var trips []string
	for _, s := range rec.Ended() {
		if s.Parent().TraceID() == parent.SpanContext().TraceID() && s.Name() == "db.query" {
			for _, a := range s.Attributes() {
				if a.Key == "db.statement" {
					trips = append(trips, strings.Fields(a.Value.AsString())[0])
				}
			}
		}
	}
	if want := []string{"BEGIN;", "INSERT", "commit"}; !slices.Equal(trips, want) {
		t.Errorf("round trips %q, want %q", trips, want)
	}
	if !st.Written() {
		t.Error("stamp not written")
	}
	var recordCmd, changeCmd int
	if err := pool.QueryRow(context.Background(), `SELECT (SELECT cmin::text::int FROM audit_log WHERE request_id = 'stamp-3'),
		(SELECT cmin::text::int FROM outbox WHERE resource = 'change-3')`).Scan(&recordCmd, &changeCmd); err != nil {
		t.Fatal(err)
	}
	if recordCmd >= changeCmd {
		t.Errorf("record written by command %d, the change by %d: want the record first", recordCmd, changeCmd)
	}
}

// records counts the audit records with request id id.
func records(t *testing.T, pool *pgxpool.Pool, id string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM audit_log WHERE request_id = $1`, id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A transaction that runs no statement through the wrapper still writes
// the stamp, just before it commits; one that cannot write it commits
// nothing.
func TestStampWithoutStatementsIsWrittenAtCommit(t *testing.T) {
	t.Parallel()
	pool, db, st, ctx := stamped(t, "north", "stamp-4")
	if err := pgx.BeginFunc(ctx, db, func(pgx.Tx) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if !st.Written() || records(t, pool, "stamp-4") != 1 {
		t.Fatalf("written %v, %d records; want one", st.Written(), records(t, pool, "stamp-4"))
	}

	_, db, st, ctx = stamped(t, "south", "stamp-5")
	if err := pgx.BeginFunc(ctx, db, func(pgx.Tx) error { return nil }); err == nil {
		t.Fatal("commit succeeded with a stamp row-level security refuses")
	}
	if st.Written() {
		t.Error("a refused stamp counted as written")
	}
}

// A first statement that fails before it reaches the server (here its
// context is already done) takes the stamp down with it; a transaction
// that goes on and commits still writes the record.
func TestStampSurvivesAClientSideFailure(t *testing.T) {
	t.Parallel()
	pool, db, st, ctx := stamped(t, "north", "stamp-6")
	if err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		done, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := tx.Exec(done, `SELECT 1`); err == nil {
			t.Error("a statement ran on a context already done")
		}
		_, err := tx.Exec(ctx, `INSERT INTO outbox (clinic, event_type, resource, payload)
			VALUES ('north', 'test.changed', 'change-6', ''::bytea)`)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !st.Written() || records(t, pool, "stamp-6") != 1 {
		t.Fatalf("written %v, %d records; want one", st.Written(), records(t, pool, "stamp-6"))
	}
}

// A savepoint rolled back does not take the record with it: the stamp is
// written before the savepoint begins.
func TestStampOutlivesARolledBackSavepoint(t *testing.T) {
	t.Parallel()
	pool, db, st, ctx := stamped(t, "north", "stamp-7")
	if err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		sp, err := tx.Begin(ctx)
		if err != nil {
			return err
		}
		// Through the transaction, while the savepoint is open.
		if _, err := tx.Exec(ctx, `INSERT INTO outbox (clinic, event_type, resource, payload)
			VALUES ('north', 'test.changed', 'change-7a', ''::bytea)`); err != nil {
			return err
		}
		if err := sp.Rollback(ctx); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO outbox (clinic, event_type, resource, payload)
			VALUES ('north', 'test.changed', 'change-7b', ''::bytea)`)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !st.Written() || records(t, pool, "stamp-7") != 1 {
		t.Fatalf("written %v, %d records; want one", st.Written(), records(t, pool, "stamp-7"))
	}
}

// QueryGenericPlan's setting holds for its own query only: the next query
// on the same connection plans as usual.
func TestGenericPlanLastsOneQuery(t *testing.T) {
	t.Parallel()
	_, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	db := pgtest.App(t, schema)
	ctx := pgdb.WithClinic(context.Background(), "north")
	type seen struct {
		Mode string
		PID  int32
	}
	mode := func(q func(context.Context, string, ...any) (pgx.Rows, error)) seen {
		t.Helper()
		rows, err := q(ctx, `SELECT current_setting('plan_cache_mode'), pg_backend_pid()`)
		if err != nil {
			t.Fatal(err)
		}
		v, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByPos[seen])
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	before := mode(db.Query)
	generic := mode(db.QueryGenericPlan)
	after := mode(db.Query)
	if generic.Mode != "force_generic_plan" {
		t.Fatalf("plan_cache_mode in QueryGenericPlan: %q", generic.Mode)
	}
	// One query at a time: the pool hands out its one idle connection.
	if after.PID != generic.PID || after.Mode != before.Mode {
		t.Fatalf("after QueryGenericPlan on connection %d: %q on connection %d; want %q", generic.PID, after.Mode, after.PID, before.Mode)
	}
}

// A create's deferred stamp passes the statements before the one that
// names what the call made, and goes with that one, naming it, in no round
// trip of its own; StampNames names it ahead, and it goes with the next
// statement, or at the commit when none follows; one nothing named names
// its own resource.
func TestDeferredStampNamesTheRecordMade(t *testing.T) {
	t.Parallel()
	pool, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	db := pgtest.App(t, schema)
	stamp := func(id string) (*pgdb.Stamp, context.Context) {
		args := func(r string) []any { return []any{"north", r, id} }
		st := &pgdb.Stamp{SQL: `INSERT INTO audit_log (clinic, subject, roles, method, resource, outcome, request_id)
			VALUES ($1, 's', '{}', 'M', $2, 'OK', $3)`, Args: args("clinics/north"), Deferred: true, Resource: "clinics/north", Rename: func(r string) []any { return args(r) }}
		return st, pgdb.WithStamp(pgdb.WithClinic(context.Background(), "north"), st)
	}
	insert := func(ctx context.Context, tx pgx.Tx, r string) error {
		_, err := tx.Exec(ctx, `INSERT INTO outbox (clinic, event_type, resource, payload) VALUES ('north', 'test.changed', $1, ''::bytea)`, r)
		return err
	}
	named := func(id string) string {
		t.Helper()
		var r string
		if err := pool.QueryRow(context.Background(), `SELECT resource FROM audit_log WHERE request_id = $1`, id).Scan(&r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	// Named by the statement that writes the record.
	st, ctx := stamp("d-1")
	if err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if err := insert(ctx, tx, "before"); err != nil {
			return err
		}
		if st.Written() {
			t.Error("a deferred stamp went with a statement before the one naming the record")
		}
		// Another clinic's name, or the parent itself, names nothing.
		if _, err := pgdb.ExecNaming(ctx, tx, "clinics/north", `SELECT 1`); err != nil {
			return err
		}
		_, err := pgdb.ExecNaming(ctx, tx, "clinics/north/families/f1", `INSERT INTO outbox (clinic, event_type, resource, payload) VALUES ('north', 'test.created', 'f1', ''::bytea)`)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if got := named("d-1"); got != "clinics/north/families/f1" || records(t, pool, "d-1") != 1 {
		t.Fatalf("record names %q (%d records); want the family, once", got, records(t, pool, "d-1"))
	}
	var recordCmd, createCmd int
	if err := pool.QueryRow(context.Background(), `SELECT (SELECT cmin::text::int FROM audit_log WHERE request_id = 'd-1'),
		(SELECT cmin::text::int FROM outbox WHERE resource = 'f1')`).Scan(&recordCmd, &createCmd); err != nil || recordCmd != createCmd-1 {
		t.Fatalf("record by command %d, the create by %d (%v): want the record just before it", recordCmd, createCmd, err)
	}
	// Named ahead of the statement that writes it (the create knows its
	// name): it goes with that statement.
	_, ctx = stamp("d-2")
	if err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		pgdb.StampNames(tx, "clinics/north/families/f2")
		return insert(ctx, tx, "f2")
	}); err != nil {
		t.Fatal(err)
	}
	if got := named("d-2"); got != "clinics/north/families/f2" {
		t.Fatalf("record names %q; want the family StampNames gave", got)
	}
	if err := pool.QueryRow(context.Background(), `SELECT (SELECT cmin::text::int FROM audit_log WHERE request_id = 'd-2'),
		(SELECT cmin::text::int FROM outbox WHERE resource = 'f2')`).Scan(&recordCmd, &createCmd); err != nil || recordCmd != createCmd-1 {
		t.Fatalf("record by command %d, the create by %d (%v): want it with the statement after StampNames", recordCmd, createCmd, err)
	}
	// Named after the last statement: written at the commit.
	_, ctx = stamp("d-4")
	if err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		if err := insert(ctx, tx, "f4"); err != nil {
			return err
		}
		pgdb.StampNames(tx, "clinics/north/families/f4")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := named("d-4"); got != "clinics/north/families/f4" {
		t.Fatalf("record names %q; want the family StampNames gave", got)
	}
	// Not named at all: the parent, as before.
	_, ctx = stamp("d-3")
	if err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error { return insert(ctx, tx, "f3") }); err != nil {
		t.Fatal(err)
	}
	if got := named("d-3"); got != "clinics/north" {
		t.Fatalf("record names %q; want its own resource", got)
	}
}

// The clinic scope lasts for its transaction only: a connection goes back
// to the pool with none, after every-clinic background work too, and a
// rollback does not bring back the scope of a call before it.
func TestScopeEndsWithItsTransaction(t *testing.T) {
	t.Parallel()
	_, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	app := pgtest.App(t, schema)
	// One connection, so that every step below meets the one before.
	cfg := app.Pool.Config()
	cfg.MaxConns, cfg.MinConns = 1, 0
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	db := &pgdb.DB{Pool: pool}
	bg := context.Background()
	left := func(after string) {
		t.Helper()
		var scope string
		if err := pool.QueryRow(bg, `SELECT coalesce(current_setting('handoff.clinic', true), '')`).Scan(&scope); err != nil {
			t.Fatal(err)
		}
		if scope != "" {
			t.Fatalf("after %s the idle connection has clinic scope %q; want none", after, scope)
		}
	}
	all := pgdb.WithClinic(bg, pgdb.SystemScope)
	var one int
	if err := db.QueryRow(all, `SELECT 1`).Scan(&one); err != nil {
		t.Fatal(err)
	}
	left("a query in every clinic's scope")
	if _, err := db.Exec(all, `SELECT 1`); err != nil {
		t.Fatal(err)
	}
	left("a statement in every clinic's scope")
	if err := pgx.BeginFunc(all, db, func(tx pgx.Tx) error { return tx.QueryRow(all, `SELECT 1`).Scan(&one) }); err != nil {
		t.Fatal(err)
	}
	left("a transaction in every clinic's scope")
	odd := pgdb.WithClinic(bg, "O'Brien")
	if err := pgx.BeginFunc(odd, db, func(tx pgx.Tx) error { return tx.QueryRow(odd, `SELECT 1`).Scan(&one) }); err != nil {
		t.Fatal(err)
	}
	left("a transaction scoped by a parameter")
	// Every clinic's query, then a clinic's transaction that rolls back.
	if err := db.QueryRow(all, `SELECT 1`).Scan(&one); err != nil {
		t.Fatal(err)
	}
	rolledBack := errors.New("rolled back")
	north := pgdb.WithClinic(bg, "north")
	if err := pgx.BeginFunc(north, db, func(pgx.Tx) error { return rolledBack }); !errors.Is(err, rolledBack) {
		t.Fatal(err)
	}
	left("a rolled-back transaction after every clinic's query")
}
