package main

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuTimes is the machine-wide line of /proc/stat: all CPU time so far,
// the part of it no one used (idle, waiting for I/O included) and the part
// the hypervisor gave to other guests (steal).
type cpuTimes struct {
	total, idle, steal uint64
	ok                 bool
}

func readCPUTimes() cpuTimes {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return cpuTimes{}
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	if !s.Scan() {
		return cpuTimes{}
	}
	return parseCPUTimes(s.Text())
}

// parseCPUTimes reads the first line of /proc/stat:
// cpu user nice system idle iowait irq softirq steal [guest guest_nice].
func parseCPUTimes(line string) cpuTimes {
	fields := strings.Fields(line)
	if len(fields) < 9 || fields[0] != "cpu" {
		return cpuTimes{}
	}
	var t cpuTimes
	for i, f := range fields[1:9] { // guest time is already counted in user
		v, err := strconv.ParseUint(f, 10, 64)
		if err != nil {
			return cpuTimes{}
		}
		t.total += v
		switch i {
		case 3, 4: // idle, iowait
			t.idle += v
		case 7:
			t.steal = v
		}
	}
	t.ok = true
	return t
}

// stealSince is the share of CPU time stolen between then and now, or NaN
// where /proc/stat is not there to read.
func stealSince(then cpuTimes) float64 { return stealBetween(then, readCPUTimes()) }

func stealBetween(a, b cpuTimes) float64 {
	if !a.ok || !b.ok || b.total <= a.total {
		return math.NaN()
	}
	return float64(b.steal-a.steal) / float64(b.total-a.total)
}

// cpuUse is how much of the machine's CPU every process together used
// over a stretch of time.
type cpuUse struct {
	Busy    float64       // share of the machine's CPU time, NaN where /proc/stat cannot be read
	Seconds float64       // CPU seconds used, all cores together
	Self    float64       // of them, this process's (NaN where getrusage fails)
	Wall    time.Duration // how long the stretch was
}

// cpuUseBetween counts as used what was neither idle nor stolen: time the
// hypervisor gave away was not there to use.
func cpuUseBetween(a, b cpuTimes, wall time.Duration, cores int) cpuUse {
	u := cpuUse{Busy: math.NaN(), Seconds: math.NaN(), Wall: wall}
	if !a.ok || !b.ok || b.total <= a.total {
		return u
	}
	used := float64((b.total - a.total) - (b.idle - a.idle) - (b.steal - a.steal))
	u.Busy = used / float64(b.total-a.total)
	u.Seconds = u.Busy * wall.Seconds() * float64(cores)
	return u
}

// cpuMeter measures what a stretch of work costs the whole machine: the
// benchmark's process, PostgreSQL and anything else running.
type cpuMeter struct {
	start cpuTimes
	self  float64
	at    time.Time
}

func startCPUMeter() cpuMeter {
	return cpuMeter{start: readCPUTimes(), self: selfCPU(), at: time.Now()}
}

func (m cpuMeter) stop() cpuUse {
	u := cpuUseBetween(m.start, readCPUTimes(), time.Since(m.at), runtime.NumCPU())
	u.Self = selfCPU() - m.self
	return u
}

// selfCPU is the CPU time this process has used so far, user and system,
// in seconds.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return math.NaN()
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func pct(f float64) string {
	if math.IsNaN(f) {
		return "n/a"
	}
	return fmt.Sprintf("%.0f%%", f*100)
}

// jitterResult is how late a thread woke from 1 ms sleeps on an idle
// machine: what any request would lose to the machine itself.
type jitterResult struct {
	Duration time.Duration
	Sleeps   int
	P99, Max time.Duration
	Over10ms int
	Steal    float64
	// The disk probe at rest (idleDisk): fsyncs made, the slowest, and
	// how many took over 10 ms.
	DiskSyncs, DiskOver10ms int
	DiskMax                 time.Duration
}

// idleJitter sleeps 1 ms at a time on a thread of its own for d, before
// any load, and records each oversleep. Nothing of Handoff runs then, so a
// late wake-up is the machine's: the hypervisor or the kernel.
func idleJitter(d time.Duration) jitterResult {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := readCPUTimes()
	var late []time.Duration
	for end := time.Now().Add(d); time.Now().Before(end); {
		t := time.Now()
		time.Sleep(time.Millisecond)
		late = append(late, max(0, time.Since(t)-time.Millisecond))
	}
	slices.Sort(late)
	r := jitterResult{Duration: d, Sleeps: len(late), Steal: stealSince(before)}
	if n := len(late); n > 0 {
		r.P99, r.Max = late[rank(n, 99)], late[n-1]
		for _, l := range late {
			if l > 10*time.Millisecond {
				r.Over10ms++
			}
		}
	}
	return r
}
