package main

import (
	"math"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

func TestParseCPUTimes(t *testing.T) {
	got := parseCPUTimes("cpu  6707 0 5523 20815 396 0 325 5889 40 0")
	// Guest time (40) is inside user already and must not count twice.
	if !got.ok || got.total != 6707+5523+20815+396+325+5889 || got.idle != 20815+396 || got.steal != 5889 {
		t.Fatalf("parseCPUTimes = %+v", got)
	}
	for _, bad := range []string{"", "cpu0 1 2 3 4 5 6 7 8", "cpu 1 2 3", "cpu 1 2 x 4 5 6 7 8"} {
		if parseCPUTimes(bad).ok {
			t.Errorf("parseCPUTimes(%q) accepted a malformed line", bad)
		}
	}
}

func TestStealBetween(t *testing.T) {
	a := cpuTimes{total: 1000, steal: 100, ok: true}
	b := cpuTimes{total: 1200, steal: 150, ok: true}
	if got := stealBetween(a, b); got != 0.25 {
		t.Fatalf("stealBetween = %v, want 0.25", got)
	}
	if got := stealBetween(a, a); !math.IsNaN(got) {
		t.Fatalf("stealBetween with no time passed = %v, want NaN", got)
	}
}

func TestCPUUseLeavesOutIdleAndStolenTime(t *testing.T) {
	a := cpuTimes{total: 1000, idle: 300, steal: 50, ok: true}
	// 400 ticks pass: 100 idle, 60 stolen, so 240 were used.
	b := cpuTimes{total: 1400, idle: 400, steal: 110, ok: true}
	u := cpuUseBetween(a, b, 2*time.Second, 2)
	if u.Busy != 0.6 || math.Abs(u.Seconds-2.4) > 1e-9 || u.Wall != 2*time.Second {
		t.Fatalf("cpuUseBetween = %+v, want 60%% busy and 2.4 CPU seconds", u)
	}
	for _, c := range [][2]cpuTimes{{{}, b}, {a, {}}, {a, a}} {
		if u := cpuUseBetween(c[0], c[1], time.Second, 2); !math.IsNaN(u.Busy) || !math.IsNaN(u.Seconds) {
			t.Errorf("cpuUseBetween(%+v, %+v) = %+v, want NaN", c[0], c[1], u)
		}
	}
}

func TestCPUMeterSeesThisProcessWork(t *testing.T) {
	// The meter reads Linux's /proc/stat; CI and the benchmark hosts are
	// Linux, where an unreadable /proc/stat is a failure, not a skip.
	if !readCPUTimes().ok {
		if runtime.GOOS == "linux" {
			t.Fatal("cannot read /proc/stat")
		}
		t.Skipf("the CPU meter reads /proc/stat, which %s does not have", runtime.GOOS)
	}
	m := startCPUMeter()
	// Spin until this process has used 200 ms of CPU, however long that
	// takes on cores shared with other test packages (a wall-clock spin
	// got 147 ms of a core in 200 ms under CI once). The machine-wide busy
	// time must hold it, less a few of /proc/stat's 10 ms ticks.
	start := selfCPU()
	for deadline := time.Now().Add(10 * time.Second); selfCPU()-start < 0.2; {
		if time.Now().After(deadline) {
			t.Fatal("could not use 200 ms of CPU in 10 s")
		}
	}
	u := m.stop()
	if u.Self < 0.2 || u.Seconds < 0.17 || u.Busy <= 0 || u.Busy > 1 || u.Self > u.Wall.Seconds()*float64(runtime.NumCPU()) {
		t.Fatalf("200 ms of spinning measured as %+v", u)
	}
}

func TestStealSinceWithoutProcStat(t *testing.T) {
	if s := stealSince(cpuTimes{}); !math.IsNaN(s) {
		t.Fatalf("stealSince of an unread start = %v, want NaN", s)
	}
	if pct(math.NaN()) != "n/a" || pct(0.25) != "25%" {
		t.Fatalf("pct formats %q and %q", pct(math.NaN()), pct(0.25))
	}
}

func TestIdleJitterCountsEverySleep(t *testing.T) {
	r := idleJitter(50 * time.Millisecond)
	// At most one wake-up per millisecond, and at least one however
	// loaded the machine is (make test runs packages side by side).
	if r.Sleeps < 1 || r.Sleeps > 50 {
		t.Fatalf("%d sleeps in 50 ms", r.Sleeps)
	}
	if r.Max < r.P99 || r.Over10ms > r.Sleeps {
		t.Fatalf("inconsistent result %+v", r)
	}
}

func TestRankIsNearestRank(t *testing.T) {
	for _, c := range []struct{ n, p, want int }{
		{1, 99, 0}, {1, 50, 0}, {2, 50, 0}, {100, 99, 98}, {100, 50, 49}, {101, 99, 99}, {1000, 99, 989}, {0, 99, 0},
	} {
		if got := rank(c.n, c.p); got != c.want {
			t.Errorf("rank(%d, %d) = %d, want %d", c.n, c.p, got, c.want)
		}
	}
}

// procField reads "name: value" lines as /proc/cpuinfo and /proc/meminfo
// write them, padding and tabs included, and finds the first.
func TestProcField(t *testing.T) {
	f := filepath.Join(t.TempDir(), "info")
	if err := os.WriteFile(f, []byte("processor\t: 0\nmodel name\t: AMD EPYC\nMemTotal:       24617828 kB\nmodel name\t: second\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"model name": "AMD EPYC", "MemTotal": "24617828 kB", "processor": "0"} {
		if got, ok := procField(f, name); !ok || got != want {
			t.Errorf("procField(%q) = %q, %v; want %q", name, got, ok, want)
		}
	}
	if _, ok := procField(f, "model"); ok {
		t.Error("a name's prefix found a field")
	}
}
