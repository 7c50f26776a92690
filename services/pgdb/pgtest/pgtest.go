// Package pgtest gives each test its own PostgreSQL schema, migrated and
// dropped by the helper, so tests run in parallel and leave nothing behind.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/handoff-health/handoff/services/pgdb"
)

// DefaultURL is the local development server the README sets up.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/handoff_test?sslmode=disable"

// URL returns the test database URL: HANDOFF_TEST_DATABASE_URL or DefaultURL.
func URL() string {
	if u := os.Getenv("HANDOFF_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultURL
}

var ensureOnce sync.Once
var ensureErr error

// ensureDatabase creates the test database if it is missing.
func ensureDatabase(ctx context.Context, dsn string) error {
	ensureOnce.Do(func() {
		u, err := url.Parse(dsn)
		if err != nil {
			ensureErr = err
			return
		}
		db := strings.TrimPrefix(u.Path, "/")
		admin := *u
		admin.Path = "/postgres"
		conn, err := pgx.Connect(ctx, admin.String())
		if err != nil {
			ensureErr = fmt.Errorf("connect to %s: %w (is PostgreSQL running? see README)", admin.Host, err)
			return
		}
		defer conn.Close(ctx)
		var exists bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, db).Scan(&exists); err != nil {
			ensureErr = err
			return
		}
		if !exists {
			if _, err := conn.Exec(ctx, `CREATE DATABASE `+pgx.Identifier{db}.Sanitize()); err != nil && !pgdb.IsUniqueViolation(err) {
				ensureErr = fmt.Errorf("create database %s: %w", db, err)
			}
		}
	})
	return ensureErr
}

// Schema creates a fresh schema, applies sources to it, and returns a pool
// bound to it and its name. The schema is dropped when the test ends.
func Schema(t testing.TB, sources ...pgdb.Source) (*pgxpool.Pool, string) {
	t.Helper()
	ctx := context.Background()
	dsn := URL()
	if err := ensureDatabase(ctx, dsn); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema := "t_" + hex.EncodeToString(b[:])
	pool, err := pgdb.Open(ctx, dsn, schema)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		pool.Close()
		conn, err := pgx.Connect(context.Background(), dsn)
		if err != nil {
			t.Logf("pgtest: drop %s: %v", schema, err)
			return
		}
		defer conn.Close(context.Background())
		if _, err := conn.Exec(context.Background(), `DROP SCHEMA `+schema+` CASCADE`); err != nil {
			t.Logf("pgtest: drop %s: %v", schema, err)
		}
	})
	if err := pgdb.Migrate(ctx, pool, schema, sources...); err != nil {
		t.Fatalf("pgtest: migrate: %v", err)
	}
	return pool, schema
}

// Prefix returns a fresh schema prefix for code that creates its own
// schemas (prefix + name for each name), and drops them when the test ends.
func Prefix(t testing.TB, names ...string) string {
	t.Helper()
	ctx := context.Background()
	dsn := URL()
	if err := ensureDatabase(ctx, dsn); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	var b [5]byte
	_, _ = rand.Read(b[:])
	prefix := "t_" + hex.EncodeToString(b[:]) + "_"
	t.Cleanup(func() {
		conn, err := pgx.Connect(context.Background(), dsn)
		if err != nil {
			t.Logf("pgtest: drop %s*: %v", prefix, err)
			return
		}
		defer conn.Close(context.Background())
		for _, n := range names {
			if _, err := conn.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+prefix+n+` CASCADE`); err != nil {
				t.Logf("pgtest: drop %s: %v", prefix+n, err)
			}
		}
	})
	return prefix
}

// App opens the application-role pool over a schema made by Schema: what
// the services use, under row-level security.
func App(t testing.TB, schema string) *pgdb.DB {
	t.Helper()
	db, err := pgdb.OpenApp(context.Background(), URL(), schema)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(db.Pool.Close)
	return db
}

// Before is src as a schema stood before its migrations after through:
// its files up to and including through, by name (they sort in the order
// they run). An upgrade test migrates a schema with it, writes rows the
// old way, then migrates with all of src.
func Before(t testing.TB, src pgdb.Source, through string) pgdb.Source {
	t.Helper()
	entries, err := fs.ReadDir(src.FS, src.Dir)
	if err != nil {
		t.Fatal(err)
	}
	before, found := fstest.MapFS{}, false
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".sql") || e.Name() > through {
			continue
		}
		found = found || e.Name() == through
		name := path.Join(src.Dir, e.Name())
		b, err := fs.ReadFile(src.FS, name)
		if err != nil {
			t.Fatal(err)
		}
		before[name] = &fstest.MapFile{Data: b}
	}
	if !found {
		t.Fatalf("pgtest: %s has no migration %s", src.Name, through)
	}
	return pgdb.Source{Name: src.Name, FS: before, Dir: src.Dir}
}

// Querier is what Explain runs on: a pool, a connection or a transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Explain returns PostgreSQL's plan of query on q, as text: a test asserts
// which index a statement uses.
func Explain(t testing.TB, q Querier, query string) string {
	t.Helper()
	rows, err := q.Query(context.Background(), "EXPLAIN "+query)
	if err != nil {
		t.Fatalf("pgtest: explain: %v", err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("pgtest: explain: %v", err)
	}
	return strings.Join(lines, "\n")
}
