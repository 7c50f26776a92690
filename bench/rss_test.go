package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMemoryNotReadSaysSo(t *testing.T) {
	if v := readRSSOf("self", "VmRSS:"); v <= 0 {
		t.Fatalf("this process's VmRSS read as %d", v)
	}
	for _, c := range []struct{ pid, field string }{{"self", "NoSuchField:"}, {"0", "VmRSS:"}} {
		v := readRSSOf(c.pid, c.field)
		if v != 0 {
			t.Fatalf("/proc/%s/status %s read as %d, want 0 (not read)", c.pid, c.field, v)
		}
		// The report's cell must say so where CI's smoke check looks.
		if got := mib(v); !strings.Contains(got, "n/a") {
			t.Fatalf("a size not read is reported as %q", got)
		}
	}
	if got := mib(3 << 20); got != "3 MiB" {
		t.Fatalf("mib(3 MiB) = %q", got)
	}
}

func TestOnlyAFullRunReplacesThePublishedResults(t *testing.T) {
	started := time.Date(2026, 12, 8, 3, 4, 5, 0, time.UTC)
	full := reportPaths("", "", false, started)
	if len(full) != 2 || full[0] != filepath.Join("bench", "results", "2026-12-08T0304Z.md") || full[1] != filepath.Join("bench", "results", "latest.md") {
		t.Fatalf("a full run writes %v", full)
	}
	for _, c := range []struct {
		only  string
		smoke bool
	}{{"api", false}, {"", true}, {"workflows", true}} {
		for _, p := range reportPaths("", c.only, c.smoke, started) {
			if strings.HasPrefix(p, filepath.Join("bench", "results")) {
				t.Fatalf("-only %q -smoke=%v writes %s, over the published results", c.only, c.smoke, p)
			}
		}
	}
	if got := reportPaths("x.md", "", true, started); len(got) != 1 || got[0] != "x.md" {
		t.Fatalf("-out x.md writes %v", got)
	}
}
