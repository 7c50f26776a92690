package pgdb

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/handoff-health/handoff/services/aip"
)

// AppRole is the PostgreSQL role the services act as: it owns nothing, has
// no BYPASSRLS, may read and write the service tables, and may only append
// to the audit log. Row-level security on every clinic table admits only the
// rows of the clinic set for the transaction, so a bug in the service layer
// still leaks nothing across clinics.
const AppRole = "handoff_app"

// SystemScope is the clinic scope of background work that serves every
// clinic (outbox relays, hold expiry). Requests never get it: clinic ids in
// resource names are lowercase letters, digits and hyphens.
const SystemScope = "*"

type scopeKey struct{}

// WithClinic returns ctx whose database work is confined to clinic.
func WithClinic(ctx context.Context, clinic string) context.Context {
	return context.WithValue(ctx, scopeKey{}, clinic)
}

// ClinicOf returns the clinic scope in ctx.
func ClinicOf(ctx context.Context) string {
	c, _ := ctx.Value(scopeKey{}).(string)
	return c
}

// ErrNoScope is returned for database work without a clinic scope: it fails
// closed rather than run unscoped.
var ErrNoScope = errors.New("pgdb: no clinic scope in context")

// DB runs every query as AppRole with the clinic scope from the context.
type DB struct {
	Pool *pgxpool.Pool
}

// scopeSQL sets the clinic scope for the current transaction: the implicit
// one of a batch, or one begun. It is set on every use, and, local to the
// transaction, it ends with it: a connection goes back to the pool with no
// scope, whatever its last user had (every clinic's, for background work),
// and a rollback cannot bring back a scope set before it.
const scopeSQL = `SELECT set_config('handoff.clinic', $1, true)`

// ScopedBegin returns the statement that begins a transaction and sets the
// clinic scope in the same round trip, with the clinic written into it as a
// literal: BEGIN travels in the simple protocol, which takes no
// parameters. It refuses (false) anything but a valid resource id
// (aip.ValidID: lowercase letters, digits and hyphens) or SystemScope, so
// nothing else is ever written into SQL; the caller then sets the scope
// with a parameter, inside the transaction, in a round trip of its own.
func ScopedBegin(clinic string) (string, bool) {
	if clinic != SystemScope && !aip.ValidID(clinic) {
		return "", false
	}
	return "BEGIN; SELECT set_config('handoff.clinic', '" + clinic + "', true)", true
}

// Query runs a query in the context's clinic scope. The scope and the
// query travel in one round trip.
func (db *DB) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return db.query(ctx, false, sql, args...)
}

// QueryGenericPlan is Query with the statement's generic plan, made once
// per connection, where PostgreSQL would plan it anew for each call's
// arguments. For a query whose plan does not depend on them (index
// lookups bounded by LIMITs) and whose planning costs more than it runs,
// and grows with the tables' size. The setting lasts only for the call's
// implicit transaction.
func (db *DB) QueryGenericPlan(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return db.query(ctx, true, sql, args...)
}

// scopeGenericSQL is scopeSQL that also makes the statements after it, until
// the end of the batch's implicit transaction, use their generic plans.
const scopeGenericSQL = `SELECT set_config('handoff.clinic', $1, true), set_config('plan_cache_mode', 'force_generic_plan', true)`

func (db *DB) query(ctx context.Context, generic bool, sql string, args ...any) (pgx.Rows, error) {
	clinic := ClinicOf(ctx)
	if clinic == "" {
		return nil, ErrNoScope
	}
	conn, err := db.Pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("pgdb: acquire: %w", err)
	}
	scope := scopeSQL
	if generic {
		scope = scopeGenericSQL
	}
	b := &pgx.Batch{}
	b.Queue(scope, clinic)
	b.Queue(sql, args...)
	br := conn.SendBatch(ctx, b)
	if _, err := br.Exec(); err != nil {
		br.Close()
		conn.Release()
		return nil, fmt.Errorf("pgdb: scope: %w", err)
	}
	rows, err := br.Query()
	if err != nil {
		br.Close()
		conn.Release()
		return nil, err
	}
	return &releasingRows{Rows: rows, batch: br, conn: conn}, nil
}

// QueryRow runs a one-row query in the context's clinic scope.
func (db *DB) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	rows, err := db.Query(ctx, sql, args...)
	if err != nil {
		return errRow{err}
	}
	return rowOf{rows}
}

// Exec runs a statement in the context's clinic scope, in one round trip
// with the scope.
func (db *DB) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	clinic := ClinicOf(ctx)
	if clinic == "" {
		return pgconn.CommandTag{}, ErrNoScope
	}
	conn, err := db.Pool.Acquire(ctx)
	if err != nil {
		return pgconn.CommandTag{}, fmt.Errorf("pgdb: acquire: %w", err)
	}
	defer conn.Release()
	b := &pgx.Batch{}
	b.Queue(scopeSQL, clinic)
	b.Queue(sql, args...)
	br := conn.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return pgconn.CommandTag{}, fmt.Errorf("pgdb: scope: %w", err)
	}
	return br.Exec()
}

// Begin starts a transaction in the context's clinic scope, the scope
// travelling with BEGIN. If the context carries a Stamp not yet written,
// the transaction writes it with its first statement (or, if it has none,
// just before it commits).
func (db *DB) Begin(ctx context.Context) (pgx.Tx, error) {
	clinic := ClinicOf(ctx)
	if clinic == "" {
		return nil, ErrNoScope
	}
	conn, err := db.Pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("pgdb: acquire: %w", err)
	}
	begin, ok := ScopedBegin(clinic)
	// A failed begin may leave the connection in a transaction: the pool
	// closes such a connection rather than reuse it.
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{BeginQuery: begin})
	if err != nil {
		conn.Release()
		return nil, fmt.Errorf("pgdb: begin: %w", err)
	}
	if !ok {
		if _, err := tx.Exec(ctx, scopeSQL, clinic); err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
			conn.Release()
			return nil, fmt.Errorf("pgdb: scope: %w", err)
		}
	}
	st, _ := ctx.Value(stampKey{}).(*Stamp)
	return &releasingTx{Tx: tx, conn: conn, stamp: st}, nil
}

// Stamp is a statement that the first transaction of a call to commit
// writes: the audit record of a call (see grpcserver). Written with the
// change, the record commits if and only if the change does, and the call
// pays for one commit (one WAL flush) instead of two. It goes in one round
// trip with the transaction's first statement, not one of its own (in a
// batch: that statement must be one statement, sent with parameters); a
// transaction that rolls back takes it back, for the next to write.
// A call that opens no transaction, or whose transactions all roll back,
// leaves the stamp unwritten, and its record is written on its own. The
// rare doubt goes the safe way: if COMMIT reports an error after the
// server committed (a connection lost at that moment), the record may be
// written twice, never lost. Code that commits for a call from another
// goroutine should drop the stamp (WithStamp(ctx, nil)): a commit after
// the call has been recorded would record it again.
type Stamp struct {
	SQL  string
	Args []any
	// A call that creates a record is recorded by the record's name, which
	// it knows only once it writes the record: a Deferred stamp waits for
	// the statement that names a record under Resource (ExecNaming), and
	// goes with it, its arguments from Rename. Commit writes it as it is
	// if no statement named one.
	Deferred bool
	Resource string
	// Within is the prefix of the names a deferred stamp takes; empty for
	// the records under Resource. A call that makes a record elsewhere
	// (a hold for a program) gives its clinic's.
	Within string
	Rename func(resource string) []any
	// Fill, if set, gives the statement and arguments to write in place
	// of SQL and the arguments chosen above, when the stamp is written:
	// for a record that names what the call noted up to then: the first
	// statement of the transaction that carries it (or its commit, if it
	// has none), not the commit.
	Fill  func(args []any) (string, []any)
	taken atomic.Bool // a transaction is writing it
	wrote atomic.Bool // a committed transaction holds it
}

// takes reports whether a deferred stamp may name resource.
func (s *Stamp) takes(resource string) bool {
	if s.Within != "" {
		return strings.HasPrefix(resource, s.Within)
	}
	return strings.HasPrefix(resource, s.Resource+"/")
}

// statement is what writing s with args sends.
func (s *Stamp) statement(args []any) (string, []any) {
	if s.Fill != nil {
		return s.Fill(args)
	}
	return s.SQL, args
}

// Written reports whether a committed transaction holds the stamp.
func (s *Stamp) Written() bool { return s != nil && s.wrote.Load() }

type stampKey struct{}

// WithStamp returns ctx whose first committing transaction writes s.
func WithStamp(ctx context.Context, s *Stamp) context.Context {
	return context.WithValue(ctx, stampKey{}, s)
}

// releasingRows closes the batch its rows came from, and gives back the
// connection (nil inside a transaction, which keeps it).
type releasingRows struct {
	pgx.Rows
	batch pgx.BatchResults
	conn  *pgxpool.Conn
	done  bool
}

func (r *releasingRows) Close() {
	r.Rows.Close()
	if !r.done {
		r.done = true
		if r.batch != nil {
			_ = r.batch.Close()
		}
		if r.conn != nil {
			r.conn.Release()
		}
	}
}

func (r *releasingRows) Next() bool {
	if r.Rows.Next() {
		return true
	}
	r.Close()
	return false
}

type rowOf struct{ rows pgx.Rows }

func (r rowOf) Scan(dest ...any) error {
	defer r.rows.Close()
	if !r.rows.Next() {
		if err := r.rows.Err(); err != nil {
			return err
		}
		return pgx.ErrNoRows
	}
	if err := r.rows.Scan(dest...); err != nil {
		return err
	}
	r.rows.Close()
	return r.rows.Err()
}

type errRow struct{ err error }

func (e errRow) Scan(...any) error { return e.err }

type releasingTx struct {
	pgx.Tx
	conn    *pgxpool.Conn
	done    bool
	stamp   *Stamp
	claimed bool   // this transaction has written the stamp, uncommitted
	named   string // the record a deferred stamp is to name (StampNames)
}

func (t *releasingTx) release() {
	if !t.done {
		t.done = true
		t.conn.Release()
	}
}

// claim returns the stamp, and the arguments to write it with, if this
// transaction is the one to write it now, with a statement: not a deferred
// one (see Stamp.Deferred) until StampNames has named the record it is for.
func (t *releasingTx) claim() (*Stamp, []any) {
	if t.stamp != nil && t.stamp.Deferred && (t.named == "" || t.stamp.Rename == nil) {
		return nil, nil
	}
	st := t.claimAny()
	if st == nil {
		return nil, nil
	}
	if st.Deferred {
		return st, st.Rename(t.named)
	}
	return st, st.Args
}

// claimAny is claim for a deferred stamp too.
func (t *releasingTx) claimAny() *Stamp {
	if t.stamp == nil || t.claimed || t.stamp.wrote.Load() || !t.stamp.taken.CompareAndSwap(false, true) {
		return nil
	}
	t.claimed = true
	return t.stamp
}

// StampNames has a deferred stamp waiting in tx name resource, a record
// it takes (under its resource, or Within): it then goes with tx's next statement (or at the
// commit, if none comes). For a create that knows the name of what it
// makes before writing it, and a retry that answers with what the first
// call made.
func StampNames(tx pgx.Tx, resource string) {
	if t, ok := tx.(*releasingTx); ok && t.stamp != nil && t.stamp.Deferred && t.stamp.takes(resource) {
		t.named = resource
	}
}

// ExecNaming runs sql, a statement that writes the record named resource,
// on tx. A deferred stamp waiting in tx for a record under its resource
// goes with it, in one round trip, recording the call by that name.
func ExecNaming(ctx context.Context, tx pgx.Tx, resource, sql string, args ...any) (pgconn.CommandTag, error) {
	t, ok := tx.(*releasingTx)
	if !ok || t.stamp == nil || !t.stamp.Deferred || t.stamp.Rename == nil || !t.stamp.takes(resource) {
		return tx.Exec(ctx, sql, args...)
	}
	st := t.claimAny()
	if st == nil {
		return tx.Exec(ctx, sql, args...)
	}
	return t.execWithStamp(ctx, st, st.Rename(resource), sql, args)
}

// unclaim hands the stamp back: it is not known to be in the transaction.
func (t *releasingTx) unclaim() {
	if t.claimed {
		t.claimed = false
		t.stamp.taken.Store(false)
	}
}

// withStamp sends st and then sql in one batch and returns the batch with
// the stamp's result read. If that fails the stamp is handed back: a
// failure on the client's side (an argument that cannot be encoded, a
// context already done) sends nothing, and a transaction that goes on and
// commits must still write it; one on the server's side aborts the
// transaction, which then cannot commit anything.
func (t *releasingTx) withStamp(ctx context.Context, st *Stamp, stampArgs []any, sql string, args []any) (pgx.BatchResults, error) {
	b := &pgx.Batch{}
	stampSQL, stampArgs := st.statement(stampArgs)
	b.Queue(stampSQL, stampArgs...)
	b.Queue(sql, args...)
	br := t.Tx.SendBatch(ctx, b)
	if _, err := br.Exec(); err != nil {
		_ = br.Close()
		t.unclaim()
		return nil, fmt.Errorf("pgdb: audit stamp with the first statement: %w", err)
	}
	return br, nil
}

// Begin starts a savepoint. Statements inside it pass the wrapper by, and
// rolling back to it would take back a stamp written inside it, so an
// unwritten stamp is written first, on its own.
func (t *releasingTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if err := t.writeStamp(ctx); err != nil {
		return nil, err
	}
	return t.Tx.Begin(ctx)
}

// writeStamp writes a stamp no statement has carried yet, on its own, and
// hands it back if that fails.
func (t *releasingTx) writeStamp(ctx context.Context) error {
	st := t.claimAny()
	if st == nil {
		return nil
	}
	args := st.Args
	if st.Deferred && t.named != "" && st.Rename != nil {
		args = st.Rename(t.named)
	}
	sql, args := st.statement(args)
	if _, err := t.Tx.Exec(ctx, sql, args...); err != nil {
		t.unclaim()
		return fmt.Errorf("pgdb: write stamp: %w", err)
	}
	return nil
}

func (t *releasingTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	st, stampArgs := t.claim()
	if st == nil {
		return t.Tx.Exec(ctx, sql, args...)
	}
	return t.execWithStamp(ctx, st, stampArgs, sql, args)
}

// execWithStamp runs sql in one batch with st, written with stampArgs.
func (t *releasingTx) execWithStamp(ctx context.Context, st *Stamp, stampArgs []any, sql string, args []any) (pgconn.CommandTag, error) {
	br, err := t.withStamp(ctx, st, stampArgs, sql, args)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return tag, err
}

func (t *releasingTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	st, stampArgs := t.claim()
	if st == nil {
		return t.Tx.Query(ctx, sql, args...)
	}
	br, err := t.withStamp(ctx, st, stampArgs, sql, args)
	if err != nil {
		return nil, err
	}
	rows, err := br.Query()
	if err != nil {
		_ = br.Close()
		return nil, err
	}
	return &releasingRows{Rows: rows, batch: br}, nil
}

func (t *releasingTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if t.stamp == nil || t.claimed || t.stamp.Written() {
		return t.Tx.QueryRow(ctx, sql, args...)
	}
	rows, err := t.Query(ctx, sql, args...)
	if err != nil {
		return errRow{err}
	}
	return rowOf{rows}
}

func (t *releasingTx) Commit(ctx context.Context) error {
	defer t.release()
	if err := t.writeStamp(ctx); err != nil { // no statement carried it
		_ = t.Tx.Rollback(ctx)
		return err
	}
	err := t.Tx.Commit(ctx)
	if err != nil {
		// Not known to be written: the record is written on its own.
		t.unclaim()
	} else if t.claimed {
		t.claimed = false
		t.stamp.wrote.Store(true)
	}
	return err
}

func (t *releasingTx) Rollback(ctx context.Context) error {
	defer t.release()
	t.unclaim()
	return t.Tx.Rollback(ctx)
}

// SettleTimeout bounds a write that must go on past its caller's
// cancellation (an outcome recorded at shutdown): on a database that
// stopped answering without closing the connection, or a row held
// elsewhere, shutdown must not wait for TCP to give up. A variable for
// the tests.
var SettleTimeout = 10 * time.Second

// Settle is ctx without its cancellation, bounded by SettleTimeout.
func Settle(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), SettleTimeout)
}
