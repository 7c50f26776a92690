package families_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// stmt is one statement of a change in flight.
type stmt struct {
	sql  string
	args []any
}

// inFlight makes a change in a transaction it leaves open, holding its
// locks until the test commits it or ends (rolled back then).
func inFlight(t *testing.T, pool *pgxpool.Pool, stmts ...stmt) pgx.Tx {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(ctx) })
	for _, st := range stmts {
		if _, err := tx.Exec(ctx, st.sql, st.args...); err != nil {
			t.Fatal(err)
		}
	}
	return tx
}

// waitsOn runs call beside tx, a change left uncommitted, and returns once
// call waits on one of tx's locks, with where call's error will come. It
// fails the test if call answers first: it did not wait for the change.
func waitsOn(t *testing.T, pool *pgxpool.Pool, tx pgx.Tx, call func() error) <-chan error {
	t.Helper()
	ctx := context.Background()
	var holder int
	if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&holder); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- call() }()
	for deadline := time.Now().Add(10 * time.Second); ; {
		var waiting int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))`, holder).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			return done
		}
		select {
		case err := <-done:
			t.Fatalf("the call did not wait for the change in flight: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the call never waited on the change in flight")
		}
	}
}
