package main

import (
	"flag"
	"strings"
	"testing"
	"time"
)

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
