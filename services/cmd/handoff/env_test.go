package main

import (
	"context"
	"errors"
	"flag"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/handoff-health/handoff/services/loopback"
)

// A variable set but empty is unset, as fromEnv has it, except where empty
// is documented to mean something.
func TestEmptyVariableIsUnset(t *testing.T) {
	t.Setenv("HANDOFF_FAMILIES_LISTEN", "")
	if got := env("HANDOFF_FAMILIES_LISTEN", "127.0.0.1:7101"); got != "127.0.0.1:7101" {
		t.Fatalf("an empty HANDOFF_FAMILIES_LISTEN gave %q; want the default", got)
	}
	t.Setenv("HANDOFF_WEBHOOKS_ADDRESS", "")
	if got := env("HANDOFF_WEBHOOKS_ADDRESS", "127.0.0.1:7104"); got != "" {
		t.Fatalf("an empty HANDOFF_WEBHOOKS_ADDRESS gave %q; want it kept empty", got)
	}
	t.Setenv("HANDOFF_FAMILIES_LISTEN", "0.0.0.0:7101")
	if got := env("HANDOFF_FAMILIES_LISTEN", "127.0.0.1:7101"); got != "0.0.0.0:7101" {
		t.Fatalf("HANDOFF_FAMILIES_LISTEN gave %q", got)
	}
}

// Environment variables go through the flags' own parsers: "0" is false,
// and a value that means nothing is an error rather than a silent default.
func TestFromEnvParsesLikeTheFlag(t *testing.T) {
	newFlags := func() (*flag.FlagSet, *bool, *time.Duration) {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		return fs, fs.Bool("migrate", true, ""), fs.Duration("stop-timeout", time.Minute, "")
	}
	fs, migrate, stop := newFlags()
	t.Setenv("HANDOFF_MIGRATE", "0")
	t.Setenv("HANDOFF_WORKER_STOP_TIMEOUT", "5s")
	if err := fromEnv(fs, "migrate", "HANDOFF_MIGRATE", "stop-timeout", "HANDOFF_WORKER_STOP_TIMEOUT"); err != nil {
		t.Fatal(err)
	}
	if *migrate || *stop != 5*time.Second {
		t.Fatalf("migrate %v, stop-timeout %v; want false, 5s", *migrate, *stop)
	}
	// The command line still wins.
	if err := fs.Parse([]string{"--migrate=true"}); err != nil || !*migrate {
		t.Fatalf("--migrate=true after the environment: %v, %v", *migrate, err)
	}
	fs, _, _ = newFlags()
	t.Setenv("HANDOFF_MIGRATE", "no thanks")
	err := fromEnv(fs, "migrate", "HANDOFF_MIGRATE")
	if err == nil || !strings.Contains(err.Error(), "HANDOFF_MIGRATE") {
		t.Fatalf("a value that is no bool: %v, want an error naming the variable", err)
	}
}

// A variable set but empty is unset: the flag keeps its default.
func TestFromEnvTakesEmptyAsUnset(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	migrate := fs.Bool("migrate", true, "")
	t.Setenv("HANDOFF_MIGRATE", "")
	if err := fromEnv(fs, "migrate", "HANDOFF_MIGRATE"); err != nil || !*migrate {
		t.Fatalf("HANDOFF_MIGRATE empty: %v, %v; want the default, true", *migrate, err)
	}
}

// A process whose probes cannot be served does not start: it would never be
// ready, and its relays or worker would run meanwhile.
func TestProbesThatCannotListenStopTheStart(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	c := &common{metricsListen: taken.Addr().String()}
	_, _, flush, err := c.observe(context.Background(), slog.New(slog.DiscardHandler), "probe-test")
	if err == nil {
		flush()
		t.Fatalf("observe on a taken address %s: no error", taken.Addr())
	}
	if !strings.Contains(err.Error(), "metrics and probes") {
		t.Fatalf("observe on a taken address: %v; want it to name the probes", err)
	}
}

// The probes outlive the process's context: through a graceful stop
// /readyz answers (not ready) instead of refusing connections, until the
// process ends and runs the returned function.
func TestProbesOutliveTheStopSignal(t *testing.T) {
	addr, err := loopback.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := &common{metricsListen: addr}
	_, o, flush, err := c.observe(ctx, slog.New(slog.DiscardHandler), "probe-test")
	if err != nil {
		t.Fatal(err)
	}
	code := func() int {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for deadline := time.Now().Add(5 * time.Second); code() != http.StatusServiceUnavailable; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("/readyz before the process is ready: %d, want 503", code())
		}
	}
	var stopping atomic.Bool
	o.setReady(func(context.Context) error {
		if stopping.Load() {
			return errors.New("NOT_SERVING")
		}
		return nil
	})
	if got := code(); got != http.StatusOK {
		t.Fatalf("/readyz once ready: %d", got)
	}
	cancel() // SIGTERM
	stopping.Store(true)
	time.Sleep(100 * time.Millisecond)
	if got := code(); got != http.StatusServiceUnavailable {
		t.Fatalf("/readyz during the graceful stop: %d, want 503", got)
	}
	flush()
	if got := code(); got != 0 {
		t.Fatalf("/readyz after the process ended: %d, want no answer", got)
	}
}

// The token verifier's key set comes over TLS unless it is on this machine
// or the network is declared trusted, and tokens must name an audience.
func TestVerifierSettings(t *testing.T) {
	for _, c := range []struct {
		url, audience string
		trusted, ok   bool
	}{
		{"https://login.example.org/.well-known/jwks.json", "handoff", false, true},
		{"http://127.0.0.1:8090/jwks.json", "handoff", false, true},
		{"http://localhost:8090/jwks.json", "handoff", false, true},
		{"http://[::1]:8090/jwks.json", "handoff", false, true},
		{"http://issuer:8090/jwks.json", "handoff", true, true},
		{"http://issuer:8090/jwks.json", "handoff", false, false},
		{"http://10.0.0.5/jwks.json", "handoff", false, false},
		{"ftp://login.example.org/jwks.json", "handoff", true, false},
		{"login.example.org/jwks.json", "handoff", true, false},
		{"https://login.example.org/.well-known/jwks.json", "", false, false},
	} {
		cm := &common{issuer: "https://login.example.org", audience: c.audience, jwksURL: c.url, insecurePlaintext: c.trusted}
		if _, err := cm.verifier(); (err == nil) != c.ok {
			t.Errorf("jwks %q, audience %q, trusted network %v: %v; want accepted %v", c.url, c.audience, c.trusted, err, c.ok)
		}
	}
}

// A service's flags that are no strings are read from the variables their
// help names, parsed by the flag: the webhooks service's attempts before
// a dead letter, say.
func TestServiceFlagsFromTheEnvironment(t *testing.T) {
	var hooks serviceDef
	for _, d := range serviceDefs {
		if d.name == "webhooks" {
			hooks = d
		}
	}
	t.Setenv("HANDOFF_WEBHOOK_MAX_ATTEMPTS", "3")
	f, err := hooks.parse(nil)
	if err != nil || f.webhookMaxAttempts != 3 {
		t.Fatalf("HANDOFF_WEBHOOK_MAX_ATTEMPTS=3: %d, %v; want 3", f.webhookMaxAttempts, err)
	}
	if f, err := hooks.parse([]string{"--max-attempts=5"}); err != nil || f.webhookMaxAttempts != 5 {
		t.Fatalf("--max-attempts=5 after the variable: %d, %v; want the flag to win", f.webhookMaxAttempts, err)
	}
	// A number that makes no sense is refused, not taken for the default.
	for _, n := range []string{"0", "-1"} {
		t.Setenv("HANDOFF_WEBHOOK_MAX_ATTEMPTS", n)
		f, err := hooks.parse(nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := hooks.prepare(context.Background(), &f); err == nil || !strings.Contains(err.Error(), "HANDOFF_WEBHOOK_MAX_ATTEMPTS") {
			t.Fatalf("HANDOFF_WEBHOOK_MAX_ATTEMPTS=%s: %v; want a refusal naming it", n, err)
		}
	}
	t.Setenv("HANDOFF_WEBHOOK_MAX_ATTEMPTS", "many")
	if _, err := hooks.parse(nil); err == nil || !strings.Contains(err.Error(), "HANDOFF_WEBHOOK_MAX_ATTEMPTS") {
		t.Fatalf("a value that is no number: %v; want an error naming the variable", err)
	}
}

// A secret may come from a file (a Secret mounted as a volume) rather
// than the environment: NAME_FILE names it. Set both ways or unreadable,
// or empty, it stops the process before it starts on another value (an
// optional one's empty file is unset); a variable that is not a secret's (a
// token file the process reads itself) is left to its command.
func TestSecretsFromFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	url := write("url", "postgres://handoff_service:s3cret@db:5432/handoff\n")
	got, err := secretFiles([]string{"HANDOFF_DATABASE_URL_FILE=" + url, "HANDOFF_WORKER_TOKEN_FILE=" + url}, fileSecrets, os.ReadFile)
	if err != nil || len(got) != 1 || got["HANDOFF_DATABASE_URL"] != "postgres://handoff_service:s3cret@db:5432/handoff" {
		t.Fatalf("secretFiles = %v, %v; want the database URL alone, without its line end", got, err)
	}
	for name, environ := range map[string][]string{
		"both ways": {"HANDOFF_DATABASE_URL_FILE=" + url, "HANDOFF_DATABASE_URL=postgres://other"},
		"no file":   {"HANDOFF_PAYLOAD_KEYS_FILE=" + filepath.Join(dir, "missing")},
		// Unset, the URL would be the default, a local superuser's.
		"an empty database URL": {"HANDOFF_DATABASE_URL_FILE=" + write("empty-url", "\n")},
	} {
		if got, err := secretFiles(environ, fileSecrets, os.ReadFile); err == nil {
			t.Errorf("%s: %v; want an error", name, got)
		}
	}
	if got, err := secretFiles([]string{"HANDOFF_APP_LOGIN_PASSWORD_FILE=" + write("empty", "\n")}, fileSecrets, os.ReadFile); err != nil || len(got) != 0 {
		t.Fatalf("an empty file: %v, %v; want the variable unset", got, err)
	}
	// A key an operator may leave out of its Secret: no file, unset.
	if got, err := secretFiles([]string{"HANDOFF_WEBHOOK_PREVIOUS_SECRET_KEYS_FILE=" + filepath.Join(dir, "missing")}, fileSecrets, os.ReadFile); err != nil || len(got) != 0 {
		t.Fatalf("an optional key left out: %v, %v; want the variable unset", got, err)
	}
	// Only the command's own secrets are read: the gateway, which never
	// talks to Temporal, is not stopped by an API key file a shared
	// ConfigMap names but only the worker and services mount.
	apiKey := []string{"HANDOFF_TEMPORAL_API_KEY_FILE=" + filepath.Join(dir, "missing")}
	if got, err := secretFiles(apiKey, commands["gateway"].secrets, os.ReadFile); err != nil || len(got) != 0 {
		t.Fatalf("the gateway, Temporal's API key file missing: %v, %v; want it started without", got, err)
	}
	if _, err := secretFiles(apiKey, commands["worker"].secrets, os.ReadFile); err == nil {
		t.Fatal("the worker, Temporal's API key file missing: no error")
	}
	for name, c := range commands {
		for _, v := range c.secrets {
			if !slices.Contains(fileSecrets, v) {
				t.Errorf("%s reads %s, which is not among fileSecrets", name, v)
			}
		}
	}
	defer func(m map[string]string) { fromFiles = m }(fromFiles)
	fromFiles = map[string]string{"HANDOFF_DATABASE_URL": "postgres://from-a-file"}
	t.Setenv("HANDOFF_DATABASE_URL", "")
	if got := env("HANDOFF_DATABASE_URL", defaultDatabaseURL); got != "postgres://from-a-file" {
		t.Fatalf("env gave %q; want the file's value", got)
	}
}

// The gateway's public port serves metrics only in a local run: no metrics
// address given, and the port on loopback.
func TestMetricsOnThePublicPortOnlyLocally(t *testing.T) {
	for _, c := range []struct {
		listen, metrics string
		want            bool
	}{
		{"127.0.0.1:8080", "", true},
		{"localhost:8080", "", true},
		{"[::1]:8080", "", true},
		{"0.0.0.0:8080", "", false},
		{":8080", "", false},
		{"10.0.0.5:8080", "", false},
		{"127.0.0.1:8080", "127.0.0.1:9090", false},
	} {
		if got := metricsOnPublicPort(c.listen, c.metrics); got != c.want {
			t.Errorf("listen %q, metrics %q: on the public port %v; want %v", c.listen, c.metrics, got, c.want)
		}
	}
}

// The development gateway keeps to the same rule: off loopback (on a
// network said trusted), no /metrics; the API and the dev keys still.
func TestDevMetricsOnlyOnLoopback(t *testing.T) {
	named := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte(name)) })
	}
	for _, c := range []struct {
		listen, metricsFrom string
	}{
		{"127.0.0.1:8080", "metrics"},
		{"0.0.0.0:8080", "api"}, // the API's 404, not the metrics
	} {
		mux := devRoutes(c.listen, named("jwks"), named("metrics"), named("api"))
		for path, want := range map[string]string{"/metrics": c.metricsFrom, "/dev-issuer/jwks.json": "jwks", "/v1/x": "api"} {
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
			if rec.Body.String() != want {
				t.Errorf("dev on %s: GET %s answered by %q; want %q", c.listen, path, rec.Body.String(), want)
			}
		}
	}
}

// The migration sets no placeholder or short password for the services'
// login role, which reads every clinic's records; it refuses before it
// reaches the database.
func TestMigrateRefusesAPlaceholderLoginPassword(t *testing.T) {
	for _, pw := range []string{"CHANGE-ME", "change-me-please-now-and-then", "short-but-mine"} {
		err := runMigrate(context.Background(), slog.New(slog.DiscardHandler), []string{
			"--database-url", "postgres://nobody@127.0.0.1:1/none", "--app-login-role", "handoff_service", "--app-login-password", pw})
		if err == nil || !strings.Contains(err.Error(), "--app-login-password") {
			t.Errorf("password %q: %v; want it refused", pw, err)
		}
	}
	if err := loginPasswordProblem("a-long-enough-password-of-its-own"); err != nil {
		t.Fatalf("a password of its own: %v", err)
	}
}
