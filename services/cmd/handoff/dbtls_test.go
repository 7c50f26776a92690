package main

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/handoff-health/handoff/services/tlsconf/tlstest"
)

// PostgreSQL off this machine is reached only over TLS that verifies the
// server, unless the network is trusted; this machine may be reached in
// clear.
func TestDatabaseTransport(t *testing.T) {
	// What the machine's environment would add (PGSSLMODE, a root
	// certificate in the home directory) is kept out.
	for _, k := range []string{"PGSSLMODE", "PGSSLROOTCERT", "PGHOST", "PGSSLCERT", "PGSSLKEY"} {
		t.Setenv(k, "")
	}
	t.Setenv("HOME", t.TempDir())
	ca := tlstest.New(t).CAFile
	for _, c := range []struct {
		dsn     string
		trusted bool
		ok      bool
	}{
		{"postgres://u@db.example:5432/h?sslmode=disable", false, false},
		{"postgres://u@db.example:5432/h", false, false}, // prefer: falls back to plaintext
		{"postgres://u@db.example:5432/h?sslmode=require", false, false},
		{"postgres://u@db.example:5432/h?sslmode=verify-full", false, true},
		{"postgres://u@db.example:5432/h?sslmode=verify-ca&sslrootcert=" + ca, false, true},
		// verify-ca without a root certificate checks against the system's
		// roots and no name: any public certificate passes.
		{"postgres://u@db.example:5432/h?sslmode=verify-ca", false, false},
		// require with a root certificate is verify-ca.
		{"postgres://u@db.example:5432/h?sslmode=require&sslrootcert=" + ca, false, true},
		{"postgres://u@/h?host=/var/run/postgresql&sslmode=disable", false, true},
		{"postgres://u@db.example:5432/h?sslmode=disable", true, true},
		{"postgres://u@127.0.0.1:5432/h?sslmode=disable", false, true},
		{"postgres://u@localhost/h?sslmode=disable", false, true},
		{"host=/var/run/postgresql user=u dbname=h sslmode=disable", false, true},
		// Every host of a list counts.
		{"postgres://u@127.0.0.1:5432,db.example:5432/h?sslmode=disable", false, false},
	} {
		err := databaseTransport(c.dsn, c.trusted, databaseWaiver)
		if (err == nil) != c.ok {
			t.Errorf("%s (trusted %v): %v; want ok %v", c.dsn, c.trusted, err, c.ok)
		}
		if err != nil && strings.Contains(err.Error(), "u@") {
			t.Errorf("the refusal repeats the URL: %v", err)
		}
	}
}

// `handoff dev` keeps the rule too: a database off this machine in clear is
// refused before anything connects, unless the network is said trusted.
func TestDevRefusesADatabaseInClear(t *testing.T) {
	for _, k := range []string{"PGSSLMODE", "PGSSLROOTCERT", "PGHOST", "HANDOFF_INSECURE_PLAINTEXT"} {
		t.Setenv(k, "")
	}
	t.Setenv("HOME", t.TempDir())
	err := runDev(t.Context(), slog.New(slog.DiscardHandler), []string{"--database-url", "postgres://u:p@db.example.invalid/handoff", "--data-dir", t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "without verified TLS") || !strings.Contains(err.Error(), "HANDOFF_INSECURE_PLAINTEXT") {
		t.Fatalf("dev with a database in clear off this machine: %v; want it refused, naming dev's switch", err)
	}
	// Trusted, it goes on to connect (and fails on the name, which
	// resolves nowhere): past the check.
	err = runDev(t.Context(), slog.New(slog.DiscardHandler), []string{"--database-url", "postgres://u:p@db.example.invalid/handoff?connect_timeout=2",
		"--data-dir", t.TempDir(), "--insecure-plaintext"})
	if err == nil || strings.Contains(err.Error(), "without verified TLS") {
		t.Fatalf("dev on a trusted network: %v; want past the TLS check", err)
	}
}

// What --insecure-plaintext lets the development system do is said at
// start: the gateway off loopback, the database off this machine in clear;
// on loopback, nothing.
func TestDevWaiversAreSaid(t *testing.T) {
	for _, k := range []string{"PGSSLMODE", "PGSSLROOTCERT", "PGHOST", "PGSSLCERT", "PGSSLKEY"} {
		t.Setenv(k, "")
	}
	t.Setenv("HOME", t.TempDir())
	if w := devWaivers("127.0.0.1:8080", "postgres://postgres@127.0.0.1:5432/handoff?sslmode=disable"); len(w) != 0 {
		t.Fatalf("on loopback: %q; want nothing said", w)
	}
	w := devWaivers("0.0.0.0:8080", "postgres://u:hunter2@db.lan/handoff?sslmode=disable")
	if len(w) != 2 || !strings.Contains(w[0], "0.0.0.0:8080") || !strings.Contains(w[1], "db.lan") {
		t.Fatalf("off this machine: %q; want the gateway's address and the database's host", w)
	}
	if strings.Contains(strings.Join(w, " "), "hunter2") {
		t.Fatalf("the password is in what is logged: %q", w)
	}
}
