// Command bench measures Handoff against the floor it cannot beat and
// writes a Markdown report: `make bench` (full) or `go run ./bench -smoke`
// (the short version CI runs to keep it working; its report goes to the
// temporary directory, not over the published results).
//
// Everything runs in this one process on loopback against the local
// PostgreSQL and an in-process Temporal server, so ratios measured in the
// same run are what to compare; absolute times drift with the machine.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/pgdb"
)

type benchEnv struct {
	dsn     string
	prefix  string
	schemas []string
	issuer  *auth.Issuer
	log     *slog.Logger
}

// schema creates prefix+name, migrates it, and returns the owner pool and
// the application-role DB.
func (e *benchEnv) schema(ctx context.Context, name string, sources []pgdb.Source) (*pgxpool.Pool, *pgdb.DB, error) {
	owner, err := pgdb.Open(ctx, e.dsn, e.prefix+name)
	if err != nil {
		return nil, nil, err
	}
	e.schemas = append(e.schemas, e.prefix+name)
	if err := pgdb.Migrate(ctx, owner, e.prefix+name, sources...); err != nil {
		return nil, nil, err
	}
	db, err := pgdb.OpenApp(ctx, e.dsn, e.prefix+name)
	return owner, db, err
}

// closePools closes what schema opened, so that a finished section holds
// no connections through the sections after it.
func closePools(owner *pgxpool.Pool, db *pgdb.DB) {
	if db != nil {
		db.Pool.Close()
	}
	if owner != nil {
		owner.Close()
	}
}

// settle drops schemas a finished section made and checkpoints, so that
// the next section does not share the machine with the database's
// background work on rows nothing reads any more.
func (e *benchEnv) settle(ctx context.Context, names ...string) error {
	conn, err := pgx.Connect(ctx, e.dsn)
	if err != nil {
		return fmt.Errorf("settle: %w", err)
	}
	defer conn.Close(ctx)
	for _, n := range names {
		if _, err := conn.Exec(ctx, `DROP SCHEMA IF EXISTS `+e.prefix+n+` CASCADE`); err != nil {
			return fmt.Errorf("settle: drop %s: %w", e.prefix+n, err)
		}
		e.schemas = slices.DeleteFunc(e.schemas, func(s string) bool { return s == e.prefix+n })
	}
	checkpoint(ctx, conn)
	return nil
}

// checkpoint writes the database's dirty pages out now, not during the
// measurements that follow.
func (e *benchEnv) checkpoint(ctx context.Context) {
	conn, err := pgx.Connect(ctx, e.dsn)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: checkpoint: %v (continuing)\n", err)
		return
	}
	defer conn.Close(ctx)
	checkpoint(ctx, conn)
}

// CHECKPOINT needs a superuser or pg_checkpoint; without either the run
// goes on, unsettled, and says so.
func checkpoint(ctx context.Context, conn *pgx.Conn) {
	if _, err := conn.Exec(ctx, `CHECKPOINT`); err != nil {
		fmt.Fprintf(os.Stderr, "bench: checkpoint: %v (continuing)\n", err)
	}
}

// cleanup drops every schema the run made.
func (e *benchEnv) cleanup() {
	conn, err := pgx.Connect(context.Background(), e.dsn)
	if err != nil {
		return
	}
	defer conn.Close(context.Background())
	for _, s := range e.schemas {
		_, _ = conn.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+s+` CASCADE`)
	}
}

type config struct {
	smoke      bool
	only       string
	conc       int
	duration   time.Duration
	rounds     int // of each API path, taking turns
	small, big int
	flows      int
	timers     int
}

func main() {
	smoke := flag.Bool("smoke", false, "a short run that only checks the suite works")
	out := flag.String("out", "", "where to write the Markdown report (default bench/results/<date>T<time>Z.md and latest.md)")
	dsn := flag.String("database-url", envOr("HANDOFF_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/handoff_test?sslmode=disable"), "PostgreSQL URL")
	only := flag.String("only", "", "run one section only: api, scale, workflows or processes (the report then has just that section)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.BoolVar(&probeDisk, "probe-disk", false, "run the disk probe alongside the timed open-loop runs too (it slows the commits it watches)")
	flag.Parse()
	switch *only {
	case "", "api", "scale", "workflows", "processes":
	default:
		fmt.Fprintf(os.Stderr, "bench: -only %q: want api, scale, workflows or processes\n", *only)
		os.Exit(2)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fail(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fail(err)
		}
		defer pprof.StopCPUProfile()
	}
	cfg := config{conc: 8, duration: 5 * time.Second, rounds: 3, small: 10_000, big: 1_000_000, flows: 100, timers: 1000}
	if *smoke {
		cfg = config{smoke: true, conc: 2, duration: 500 * time.Millisecond, rounds: 2, small: 1_000, big: 5_000, flows: 3, timers: 50}
	}
	cfg.only = *only
	ctx := context.Background()
	var b [4]byte
	_, _ = rand.Read(b[:])
	iss, err := auth.NewIssuer("https://bench.local", "handoff")
	if err != nil {
		fail(err)
	}
	env := &benchEnv{dsn: *dsn, prefix: "bench_" + hex.EncodeToString(b[:]) + "_", issuer: iss,
		log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	defer env.cleanup()
	onFail = env.cleanup
	if err := ensureDatabase(ctx, *dsn); err != nil {
		fail(err)
	}
	rep := &report{cfg: cfg, started: time.Now(), postgres: serverVersion(ctx, *dsn), commit: sourceCommit()}
	step("the machine at rest")
	rep.jitter = idleJitter(cfg.duration)
	if rep.jitter.DiskSyncs, rep.jitter.DiskMax, rep.jitter.DiskOver10ms, err = idleDisk(cfg.duration); err != nil {
		fail(fmt.Errorf("disk probe at rest: %w", err))
	}
	rss := startRSSSampler()
	rep.rssIdle = rss.current()

	run := func(section string) bool { return *only == "" || *only == section }
	if run("api") {
		step("API floor and overhead")
		if rep.api, err = apiBench(ctx, env, cfg.conc, cfg.rounds, cfg.duration); err != nil {
			fail(err)
		}
		rep.rssLoad = rss.peak()
	}
	if run("scale") {
		step("scale of data")
		if rep.scale, err = scaleBench(ctx, env, cfg); err != nil {
			fail(err)
		}
		// The million rows the section wrote would otherwise be vacuumed
		// and checkpointed during the sections after it.
		if err := env.settle(ctx, scaleSchemas()...); err != nil {
			fail(err)
		}
	}
	if run("workflows") {
		step("workflows")
		if rep.flows, err = workflowBench(ctx, env, cfg); err != nil {
			fail(err)
		}
	}
	if run("processes") {
		step("memory of each process")
		if rep.procs, rep.deployed, err = processBench(ctx, env, cfg); err != nil {
			fail(err)
		}
	}
	// peak starts a new window each time: the API section's is kept apart.
	rep.rssPeak = max(rep.rssLoad, rss.peak())
	rep.finished = time.Now()
	md := rep.markdown()
	paths := reportPaths(*out, *only, *smoke, rep.started)
	for _, p := range paths {
		if err := os.WriteFile(p, []byte(md), 0o644); err != nil {
			fail(err)
		}
	}
	step("report written to " + strings.Join(paths, " and "))
	fmt.Print(md)
}

// reportPaths is where a run's report goes. Only a full run without -out
// replaces the published results; a run of one section, or a smoke run,
// goes to the temporary directory, so that neither is taken for them.
func reportPaths(out, only string, smoke bool, started time.Time) []string {
	switch {
	case out != "":
		return []string{out}
	case only != "" || smoke:
		name := "handoff-bench"
		if smoke {
			name += "-smoke"
		}
		if only != "" {
			name += "-" + only
		}
		return []string{filepath.Join(os.TempDir(), name+".md")}
	}
	// By the minute: a second run the same day keeps the first's file.
	when := started.UTC().Format("2006-01-02T1504Z")
	return []string{filepath.Join("bench", "results", when+".md"), filepath.Join("bench", "results", "latest.md")}
}

func step(s string) { fmt.Fprintf(os.Stderr, "==> %s\n", s) }

// onFail drops what the run made before fail exits (defers do not run).
var onFail = func() {}

func fail(err error) {
	onFail()
	pprof.StopCPUProfile() // what was sampled is kept; a no-op when not profiling
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}

func envOr(k, d string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return d
}

// serverVersion is the version of the PostgreSQL server at dsn, the one
// measured (psql --version would name the client on this machine).
func serverVersion(ctx context.Context, dsn string) string {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return "PostgreSQL, version unknown"
	}
	defer conn.Close(ctx)
	var v string
	// The settings that decide a commit's latency, beside the version.
	if err := conn.QueryRow(ctx, `SELECT 'PostgreSQL ' || current_setting('server_version') ||
		', shared_buffers ' || current_setting('shared_buffers') || ', synchronous_commit ' || current_setting('synchronous_commit') ||
		', fsync ' || current_setting('fsync')`).Scan(&v); err != nil {
		return "PostgreSQL, version unknown"
	}
	return v
}

func ensureDatabase(ctx context.Context, dsn string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err == nil {
		conn.Close(ctx)
		return nil
	}
	cfg, perr := pgx.ParseConfig(dsn)
	if perr != nil {
		return perr
	}
	db := cfg.Database
	cfg.Database = "postgres"
	admin, err2 := pgx.ConnectConfig(ctx, cfg)
	if err2 != nil {
		return fmt.Errorf("PostgreSQL: %w", err)
	}
	defer admin.Close(ctx)
	_, err = admin.Exec(ctx, `CREATE DATABASE `+pgx.Identifier{db}.Sanitize())
	return err
}
