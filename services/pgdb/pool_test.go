package pgdb_test

import (
	"runtime"
	"testing"

	"github.com/handoff-health/handoff/services/pgdb"
)

// A pool opens at most as many connections as the process may use CPUs
// (at least four), not as many as the machine has: replicas on a large
// node would otherwise each open that many per pool, past a managed
// server's limit. A URL's pool_max_conns still decides.
func TestPoolSizeFollowsTheProcessNotTheMachine(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	cfg, err := pgdb.PoolConfig("postgres://handoff@db.example/handoff", "families")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxConns != 4 {
		t.Fatalf("one CPU to use: %d connections at most; want 4", cfg.MaxConns)
	}
	runtime.GOMAXPROCS(6)
	if cfg, err = pgdb.PoolConfig("postgres://handoff@db.example/handoff", "families"); err != nil || cfg.MaxConns != 6 {
		t.Fatalf("six CPUs to use: %v connections at most (%v); want 6", cfg.MaxConns, err)
	}
	if cfg, err = pgdb.PoolConfig("postgres://handoff@db.example/handoff?pool_max_conns=25", "families"); err != nil || cfg.MaxConns != 25 {
		t.Fatalf("pool_max_conns=25: %v connections at most (%v); want 25", cfg.MaxConns, err)
	}
}
