package pgdb

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
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

func (db *DB) acquire(ctx context.Context) (*pgxpool.Conn, error) {
	clinic := ClinicOf(ctx)
	if clinic == "" {
		return nil, ErrNoScope
	}
	conn, err := db.Pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("pgdb: acquire: %w", err)
	}
	// Set on every use, so a value left from an earlier request never counts.
	if _, err := conn.Exec(ctx, `SELECT set_config('handoff.clinic', $1, false)`, clinic); err != nil {
		conn.Release()
		return nil, fmt.Errorf("pgdb: scope: %w", err)
	}
	return conn, nil
}

// Query runs a query in the context's clinic scope. The scope and the
// query travel in one round trip.
func (db *DB) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	clinic := ClinicOf(ctx)
	if clinic == "" {
		return nil, ErrNoScope
	}
	conn, err := db.Pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("pgdb: acquire: %w", err)
	}
	b := &pgx.Batch{}
	b.Queue(`SELECT set_config('handoff.clinic', $1, false)`, clinic)
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
	b.Queue(`SELECT set_config('handoff.clinic', $1, false)`, clinic)
	b.Queue(sql, args...)
	br := conn.SendBatch(ctx, b)
	defer br.Close()
	if _, err := br.Exec(); err != nil {
		return pgconn.CommandTag{}, fmt.Errorf("pgdb: scope: %w", err)
	}
	return br.Exec()
}

// Begin starts a transaction in the context's clinic scope. If the context
// carries a Stamp not yet written, the transaction writes it just before
// it commits.
func (db *DB) Begin(ctx context.Context) (pgx.Tx, error) {
	conn, err := db.acquire(ctx)
	if err != nil {
		return nil, err
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		conn.Release()
		return nil, err
	}
	st, _ := ctx.Value(stampKey{}).(*Stamp)
	return &releasingTx{Tx: tx, conn: conn, stamp: st}, nil
}

// Stamp is a statement that the first transaction of a call to commit runs
// just before its commit: the audit record of a call (see grpcserver).
// Written with the change, the record commits if and only if the change
// does, and the call pays for one commit (one WAL flush) instead of two.
// A call that opens no transaction, or whose transactions all roll back,
// leaves the stamp unwritten, and its record is written on its own. The
// rare doubt goes the safe way: if COMMIT reports an error after the
// server committed (a connection lost at that moment), the record may be
// written twice, never lost. Code that commits for a call from another
// goroutine should drop the stamp (WithStamp(ctx, nil)): a commit after
// the call has been recorded would record it again.
type Stamp struct {
	SQL   string
	Args  []any
	taken atomic.Bool // a transaction is writing it
	wrote atomic.Bool // a committed transaction holds it
}

// Written reports whether a committed transaction holds the stamp.
func (s *Stamp) Written() bool { return s != nil && s.wrote.Load() }

type stampKey struct{}

// WithStamp returns ctx whose first committing transaction writes s.
func WithStamp(ctx context.Context, s *Stamp) context.Context {
	return context.WithValue(ctx, stampKey{}, s)
}

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
		r.conn.Release()
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
	conn  *pgxpool.Conn
	done  bool
	stamp *Stamp
}

func (t *releasingTx) release() {
	if !t.done {
		t.done = true
		t.conn.Release()
	}
}

func (t *releasingTx) Commit(ctx context.Context) error {
	defer t.release()
	st := t.stamp
	if st == nil || !st.taken.CompareAndSwap(false, true) {
		return t.Tx.Commit(ctx)
	}
	if _, err := t.Tx.Exec(ctx, st.SQL, st.Args...); err != nil {
		st.taken.Store(false)
		_ = t.Tx.Rollback(ctx)
		return fmt.Errorf("pgdb: write stamp: %w", err)
	}
	if err := t.Tx.Commit(ctx); err != nil {
		// Not known to be written: the record is written on its own.
		st.taken.Store(false)
		return err
	}
	st.wrote.Store(true)
	return nil
}

func (t *releasingTx) Rollback(ctx context.Context) error {
	defer t.release()
	return t.Tx.Rollback(ctx)
}
