package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/handoff-health/handoff/services/families"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

// A one-shot command stopped by a signal before it finished fails, so
// that a migration Job stopped halfway never counts as complete; a
// long-running process stopped by a signal exits 0.
func TestExitCode(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	stopped := fmt.Errorf("migrate: %w", context.Canceled)
	for _, c := range []struct {
		oneShot bool
		err     error
		want    int
	}{
		{false, nil, 0}, {true, nil, 0},
		{false, stopped, 0}, {true, stopped, 1},
		{false, errors.New("boom"), 1}, {true, errors.New("boom"), 1},
		{false, flag.ErrHelp, 2},
	} {
		if got := exitCode(log, "x", c.oneShot, c.err); got != c.want {
			t.Errorf("exitCode(oneShot %v, %v) = %d; want %d", c.oneShot, c.err, got, c.want)
		}
	}
}

// A database URL that does not parse is refused without echoing it: it
// holds the password.
func TestBadDatabaseURLIsNotEchoed(t *testing.T) {
	err := ensureDatabase(context.Background(), "postgres://u:se/cret@h/db")
	if err == nil || strings.Contains(err.Error(), "se/cret") {
		t.Fatalf("ensureDatabase = %v; want an error without the password", err)
	}
}

type stopCounter struct{ n int }

func (s *stopCounter) Stop() { s.n++ }

// A worker that stopped itself on a fatal error ends the process with an
// error; a stop asked by a signal stops the worker and ends cleanly.
func TestWaitWorker(t *testing.T) {
	fatal := make(chan error, 1)
	fatal <- errors.New("namespace not found")
	w := &stopCounter{}
	if err := waitWorker(context.Background(), w, fatal); err == nil || !strings.Contains(err.Error(), "namespace not found") || w.n != 1 {
		t.Fatalf("after a fatal error: %v, %d stops; want the error, and the stop waited for", err, w.n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := waitWorker(ctx, w, make(chan error)); err != nil || w.n != 2 {
		t.Fatalf("after a signal: %v, %d stops; want nil and one stop more", err, w.n)
	}
}

// gRPC without TLS is refused off loopback unless the network is said to
// be trusted.
func TestPlaintextOnlyOnLoopback(t *testing.T) {
	var c common
	for addr, ok := range map[string]bool{"127.0.0.1:7101": true, "localhost:7101": true, "[::1]:7101": true,
		"0.0.0.0:7101": false, ":7101": false, "families:7101": false, "10.0.0.5:7101": false} {
		if err := c.plaintext("calling", addr, nil); (err == nil) != ok {
			t.Errorf("plaintext to %s: %v; allowed %v", addr, err, ok)
		}
	}
	c.insecurePlaintext = true
	if err := c.plaintext("listening on", "0.0.0.0:7101", nil); err != nil {
		t.Errorf("with --insecure-plaintext: %v", err)
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	t.Setenv("HANDOFF_INSECURE_PLAINTEXT", "1")
	var e common
	e.register(fs, false)
	if err := e.plaintext("calling", "families:7101", nil); err != nil {
		t.Errorf("HANDOFF_INSECURE_PLAINTEXT=1: %v", err)
	}
}

// --insecure-plaintext does not waive the database's TLS, which takes a
// switch of its own (a network trusted between the pods may not reach a
// managed database), and what it does waive is named in a warning at
// start.
func TestInsecurePlaintextLeavesTheDatabaseAndSaysWhatItWaives(t *testing.T) {
	for _, k := range []string{"HANDOFF_INSECURE_PLAINTEXT", "HANDOFF_DATABASE_PLAINTEXT", "PGSSLMODE", "PGHOST"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	remote := "postgres://u@db.example.internal/handoff?sslmode=require"
	parse := func(args ...string) serviceFlags {
		t.Helper()
		f, err := serviceDefs[0].parse(append([]string{"--database-url", remote}, args...))
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	f := parse("--insecure-plaintext")
	if err := databaseTransport(f.databaseURL, f.databasePlaintext, databaseWaiver); err == nil || !strings.Contains(err.Error(), "HANDOFF_DATABASE_PLAINTEXT") {
		t.Fatalf("a database in clear with --insecure-plaintext: %v; want it refused, naming HANDOFF_DATABASE_PLAINTEXT", err)
	}
	t.Setenv("HANDOFF_DATABASE_PLAINTEXT", "true")
	f = parse()
	if err := databaseTransport(f.databaseURL, f.databasePlaintext, databaseWaiver); err != nil {
		t.Fatalf("with HANDOFF_DATABASE_PLAINTEXT=true: %v", err)
	}
	if f.insecurePlaintext {
		t.Fatal("HANDOFF_DATABASE_PLAINTEXT set --insecure-plaintext")
	}
	// The migration takes the same switch, and not the other.
	t.Setenv("HANDOFF_DATABASE_PLAINTEXT", "")
	os.Unsetenv("HANDOFF_DATABASE_PLAINTEXT")
	t.Setenv("HANDOFF_INSECURE_PLAINTEXT", "true")
	err := runMigrate(context.Background(), slog.New(slog.DiscardHandler), []string{"--database-url", remote})
	if err == nil || !strings.Contains(err.Error(), "without verified TLS") {
		t.Fatalf("migrate with HANDOFF_INSECURE_PLAINTEXT alone: %v; want the database refused", err)
	}

	// Each hop waived is named once; one over TLS or on loopback is not.
	var c common
	c.register(flag.NewFlagSet("t", flag.ContinueOnError), false)
	c.jwksURL, c.issuer, c.audience, c.otlpEndpoint = "http://issuer.internal/jwks.json", "https://issuer", "handoff", "collector:4317"
	c.temporalAddr = "temporal:7233"
	for _, addr := range []string{"families:7101", "families:7101", "127.0.0.1:7102"} {
		if err := c.plaintext("calling", addr, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.verifier(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.otlpTLS(); err != nil {
		t.Fatal(err)
	}
	if err := c.temporalPlaintext(nil); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	c.warnWaived(slog.New(slog.NewJSONHandler(&logs, nil)))
	var rec struct {
		Level string   `json:"level"`
		Hops  []string `json:"hops"`
	}
	if err := json.Unmarshal(logs.Bytes(), &rec); err != nil {
		t.Fatalf("warning %q: %v", logs.String(), err)
	}
	want := []string{"calling families:7101", "the token signing keys at http://issuer.internal/jwks.json", "traces to collector:4317", "Temporal at temporal:7233"}
	if rec.Level != "WARN" || !slices.Equal(rec.Hops, want) {
		t.Fatalf("warning %s; want WARN with hops %q", logs.String(), want)
	}
}

// Temporal without TLS is refused off loopback too: workflow ids name
// interventions, intakes and overdoses.
func TestTemporalPlaintextOnlyOnLoopback(t *testing.T) {
	for addr, ok := range map[string]bool{"127.0.0.1:7233": true, "localhost:7233": true,
		"temporal-frontend.temporal.svc:7233": false, "10.0.0.5:7233": false} {
		c := common{temporalAddr: addr}
		if err := c.temporalPlaintext(nil); (err == nil) != ok {
			t.Errorf("plaintext to Temporal at %s: %v; allowed %v", addr, err, ok)
		}
		if err := c.temporalPlaintext(&tls.Config{MinVersion: tls.VersionTLS12}); err != nil {
			t.Errorf("TLS to Temporal at %s: %v", addr, err)
		}
		c.insecurePlaintext = true
		if err := c.temporalPlaintext(nil); err != nil {
			t.Errorf("with --insecure-plaintext, Temporal at %s: %v", addr, err)
		}
	}
}

// A token file that is not there, or empty, stops the process at its
// start, rather than leave it ready while every call it makes as itself
// is refused; one that is there is read again when it changes.
func TestTokenFileIsReadAtStart(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	if _, err := startToken(context.Background(), path); err == nil {
		t.Fatal("a missing token file was taken")
	}
	if err := os.WriteFile(path, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := startToken(context.Background(), path); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("an empty token file: %v; want it refused as empty", err)
	}
	if err := os.WriteFile(path, []byte("tok-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tok, err := startToken(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := tok(context.Background()); err != nil || got != "tok-1" {
		t.Fatalf("token = %q, %v; want tok-1", got, err)
	}
	// Emptied later (a Secret rotated badly), the calls say so.
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Second)
	if err := os.Chtimes(path, later, later); err != nil {
		t.Fatal(err)
	}
	if got, err := tok(context.Background()); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Fatalf("token from a file emptied since = %q, %v; want it refused as empty", got, err)
	}
}

// The development system, which serves plain HTTP with open CORS, does not
// listen off loopback unless told the network is trusted: it reads the
// deployed gateway's HANDOFF_GATEWAY_LISTEN, which names every interface.
func TestDevListensOnLoopbackOnly(t *testing.T) {
	// Whatever the environment the tests run in says of the network.
	t.Setenv("HANDOFF_INSECURE_PLAINTEXT", "")
	os.Unsetenv("HANDOFF_INSECURE_PLAINTEXT")
	err := runDev(context.Background(), slog.New(slog.DiscardHandler), []string{"--listen", "0.0.0.0:18080", "--data-dir", t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "loopback only") {
		t.Fatalf("dev on every interface: %v; want it refused", err)
	}
	t.Setenv("HANDOFF_GATEWAY_LISTEN", "0.0.0.0:18080")
	if err := runDev(context.Background(), slog.New(slog.DiscardHandler), []string{"--data-dir", t.TempDir()}); err == nil || !strings.Contains(err.Error(), "loopback only") {
		t.Fatalf("dev with the deployed gateway's address inherited: %v; want it refused", err)
	}
}

// A service that is going to refuse its own settings refuses them before
// it touches the database: a process started with a missing key or token
// file must not migrate a schema first (the migration would run as
// whichever user the URL names, with nothing serving it after).
func TestServiceRefusesItsSettingsBeforeMigrating(t *testing.T) {
	prefix := pgtest.Prefix(t, "families", "interventions", "referrals", "webhooks")
	t.Setenv("HANDOFF_SCHEMA_PREFIX", prefix)
	// Whatever the environment the tests run in says of the network.
	t.Setenv("HANDOFF_INSECURE_PLAINTEXT", "")
	os.Unsetenv("HANDOFF_INSECURE_PLAINTEXT")
	t.Setenv("HANDOFF_DATABASE_URL", pgtest.URL())
	log := slog.New(slog.DiscardHandler)
	missing := filepath.Join(t.TempDir(), "no-such-token")
	for _, c := range []struct {
		service string
		args    []string
		want    string
	}{
		{"webhooks", []string{"--token-file", missing}, "--secret-key are required"},
		{"webhooks", []string{"--token-file", missing, "--secret-key", "not base64!"}, "--secret-key"},
		{"webhooks", []string{"--token-file", missing, "--secret-key", base64.StdEncoding.EncodeToString(make([]byte, 32))}, "no-such-token"},
		{"interventions", []string{"--calendar-token-file", missing}, "no-such-token"},
		// Another service called in clear off this machine.
		{"interventions", []string{"--referrals-address", "referrals:7103"}, "referrals:7103"},
		{"referrals", []string{"--families-address", "families:7101"}, "families:7101"},
		// A database off this machine in clear: --insecure-plaintext does
		// not waive it.
		{"families", []string{"--insecure-plaintext", "--database-url", "postgres://u@db.example.internal/handoff?sslmode=require"},
			"HANDOFF_DATABASE_PLAINTEXT"},
	} {
		var d serviceDef
		for _, def := range serviceDefs {
			if def.name == c.service {
				d = def
			}
		}
		f, err := d.parse(append([]string{"--listen", "127.0.0.1:0"}, c.args...))
		if err != nil {
			t.Fatal(err)
		}
		serveErr := d.serve(context.Background(), log, f, nil, nil, &ops{})
		conn, err := pgx.Connect(context.Background(), pgtest.URL())
		if err != nil {
			t.Fatal(err)
		}
		var schemas []string
		err = conn.QueryRow(context.Background(),
			`SELECT coalesce(array_agg(nspname::text), '{}') FROM pg_namespace WHERE starts_with(nspname, $1)`, prefix).Scan(&schemas)
		conn.Close(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(schemas) != 0 {
			t.Fatalf("%s %v was refused (%v) after migrating %v", c.service, c.args, serveErr, schemas)
		}
		if serveErr == nil || !strings.Contains(serveErr.Error(), c.want) {
			t.Fatalf("%s %v: %v; want it refused (%q)", c.service, c.args, serveErr, c.want)
		}
	}
}

// A service told not to migrate logs in as the services' own role: given
// the owner's URL (here a superuser's) it refuses to start, where it
// would have run with the owner's rights a RESET ROLE away.
func TestServiceNotMigratingRefusesTheOwnersLogin(t *testing.T) {
	prefix := pgtest.Prefix(t, "families")
	t.Setenv("HANDOFF_SCHEMA_PREFIX", prefix)
	ctx := context.Background()
	db, err := openSchema(ctx, slog.New(slog.DiscardHandler), pgtest.URL(), "families", families.Migrations(), true)
	if err != nil {
		t.Fatal(err)
	}
	db.Pool.Close()
	if db, err := openSchema(ctx, slog.New(slog.DiscardHandler), pgtest.URL(), "families", families.Migrations(), false); err == nil || !strings.Contains(err.Error(), "login role") {
		if db != nil {
			db.Pool.Close()
		}
		t.Fatalf("not migrating, as the owner: %v; want it refused", err)
	}
}

// A service that does not migrate waits, not ready, for its release's
// migrations: started before the migration job ran (or against a schema
// that lacks them), it would otherwise serve and fail every call that
// reads what they add. It goes on once they have run.
func TestServiceNotMigratingWaitsForItsMigrations(t *testing.T) {
	prefix := pgtest.Prefix(t, "families")
	t.Setenv("HANDOFF_SCHEMA_PREFIX", prefix)
	defer func(d time.Duration) { migratedPoll = d }(migratedPoll)
	migratedPoll = 50 * time.Millisecond
	ctx := context.Background()
	schema := prefix + "families"
	owner, src := releaseBefore(t, schema)
	role := fmt.Sprintf("handoff_await_%d", time.Now().UnixNano()%1_000_000_000)
	if err := pgdb.EnsureLoginRole(ctx, owner, role, "pw"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = owner.Exec(context.Background(), `DROP ROLE IF EXISTS `+role) })
	login, err := url.Parse(pgtest.URL())
	if err != nil {
		t.Fatal(err)
	}
	login.User = url.UserPassword(role, "pw")
	log := slog.New(slog.DiscardHandler)

	// Given up once it has said what it waits for, however long the first
	// look took on a loaded machine (CI runs the packages side by side): a
	// fixed deadline could end that look instead.
	short, cancel := context.WithCancel(ctx)
	defer cancel()
	db, err := openSchema(short, slog.New(onWarn{cancel}), login.String(), "families", src, false)
	if err == nil {
		db.Pool.Close()
		t.Fatal("opened a schema a migration short; want it to wait")
	}
	if !strings.Contains(err.Error(), "families/0011_consents_by_clinic.sql") {
		t.Fatalf("gave up with %v; want the missing migration named", err)
	}

	opened := make(chan error, 1)
	go func() {
		db, err := openSchema(ctx, log, login.String(), "families", src, false)
		if err == nil {
			db.Pool.Close()
		}
		opened <- err
	}()
	select {
	case err := <-opened:
		t.Fatalf("opened before the migration ran: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := pgdb.Migrate(ctx, owner, schema, src...); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-opened:
		if err != nil {
			t.Fatalf("after the migration: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("still waiting after the migration ran")
	}
}

// releaseBefore migrates the families schema as the release before did
// (every migration up to 0010), and returns its owner's pool, closed when
// the test ends, and this release's migrations.
func releaseBefore(t *testing.T, schema string) (*pgxpool.Pool, []pgdb.Source) {
	t.Helper()
	ctx := context.Background()
	owner, err := pgdb.Open(ctx, pgtest.URL(), schema)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(owner.Close)
	src := families.Migrations()
	if err := pgdb.Migrate(ctx, owner, schema, src[0], pgtest.Before(t, src[1], "0010_disclosure_recipients.sql")); err != nil {
		t.Fatal(err)
	}
	return owner, src
}

// onWarn calls its function at a warning, and writes nothing.
type onWarn struct{ f func() }

func (onWarn) Enabled(context.Context, slog.Level) bool { return true }
func (h onWarn) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		h.f()
	}
	return nil
}
func (h onWarn) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h onWarn) WithGroup(string) slog.Handler      { return h }

// A service given up while it looks at its schema again still names the
// migration it waits for, not the read cut short.
func TestAwaitMigratedGivenUpMidLookNamesWhatItLacks(t *testing.T) {
	prefix := pgtest.Prefix(t, "families")
	ctx := context.Background()
	schema := prefix + "families"
	_, src := releaseBefore(t, schema)
	defer func(d time.Duration) { migratedPoll = d }(migratedPoll)
	migratedPoll = time.Millisecond

	looks, cancel := context.WithCancel(ctx)
	defer cancel()
	cfg, err := pgxpool.ParseConfig(pgtest.URL())
	if err != nil {
		t.Fatal(err)
	}
	// The second look is given up as it starts.
	n := 0
	cfg.ConnConfig.Tracer = queryStart(func(sql string) {
		if strings.Contains(sql, "schema_migrations") {
			if n++; n == 2 {
				cancel()
			}
		}
	})
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	err = awaitMigrated(looks, slog.New(slog.DiscardHandler), &pgdb.DB{Pool: pool}, schema, src)
	if n != 2 {
		t.Fatalf("looked %d times; want the second given up", n)
	}
	if err == nil || !strings.Contains(err.Error(), "families/0011_consents_by_clinic.sql") || !errors.Is(err, context.Canceled) {
		t.Fatalf("gave up with %v; want the missing migration named, and why it gave up", err)
	}
}

// queryStart calls its function with each statement as it starts.
type queryStart func(sql string)

func (f queryStart) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	f(d.SQL)
	return ctx
}
func (queryStart) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
