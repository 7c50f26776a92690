package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// result is one measured load run.
type result struct {
	Ops        int
	Errors     int
	Duration   time.Duration
	Throughput float64 // operations per second
	Offered    float64 // the rate an open-loop run asked for
	P50, P99   time.Duration
	Max        time.Duration
	// SyncMax and SyncSlow are what a disk probe saw during the run: the
	// slowest fsync of a small file, and how many took over 10 ms.
	SyncMax  time.Duration
	SyncSlow int
	// Steal is the share of the machine's CPU time the hypervisor gave to
	// other guests during the run, StealPeak the largest share in any
	// 100 ms of it (both NaN where /proc/stat cannot be read).
	Steal, StealPeak float64
	// Rounds holds each round's throughput, in order, when the result
	// merges rounds (see interleave).
	Rounds []float64
	lat    []time.Duration // sorted, kept so that rounds can be merged
}

// closedLoop runs op from conc workers back to back for d and measures
// throughput and latency: the saturation point at that concurrency.
func closedLoop(ctx context.Context, conc int, d time.Duration, op func(ctx context.Context, worker, i int) error) result {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var mu sync.Mutex
	var lat []time.Duration
	var errs atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			for i := 0; ctx.Err() == nil; i++ {
				t0 := time.Now()
				// The call is not cut off at the deadline (it runs without
				// it), so an error past the deadline is a real one too.
				err := op(context.WithoutCancel(ctx), w, i)
				if err != nil {
					errs.Add(1)
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return summarize(lat, int(errs.Load()), time.Since(start))
}

// saturate warms op up untimed (pools, connections, caches), then
// measures it in a closed loop, so no path pays for going first.
func saturate(ctx context.Context, conc int, d time.Duration, op func(ctx context.Context, worker, i int) error) result {
	warm := closedLoop(ctx, conc, d/5, op)
	r := closedLoop(ctx, conc, d, op)
	// Failures while warming up count: a path failing now and then must
	// not pass because its failures fell in the untimed part.
	r.Errors += warm.Errors
	return r
}

// openLoop starts op at a fixed rate for d, whatever the latency, and
// measures latency: how the system behaves below saturation. The schedule
// begins with openLoopWarmup(d) at the same rate, untimed: a run's first
// 100 ms, right after another path's run, held dozens of requests over
// 10 ms that no later 100 ms did, which is the switch between paths, not
// the path. A disk probe and a CPU steal sampler run alongside the timed
// part (see probe). A failed operation fails the run.
func openLoop(ctx context.Context, rate float64, d time.Duration, op func(ctx context.Context) error) (result, error) {
	var mu sync.Mutex
	var lat []time.Duration
	var errs atomic.Int64
	var wg sync.WaitGroup
	interval := time.Duration(float64(time.Second) / rate)
	warm := int(openLoopWarmup(d) / interval)
	n := int(d / interval)
	var probe *probe
	var measured time.Time
	start := time.Now()
	for i := 0; i < warm+n; i++ {
		due := start.Add(time.Duration(i) * interval)
		if w := time.Until(due); w > 0 {
			time.Sleep(w)
		}
		timed := i >= warm
		if i == warm {
			probe, measured = startProbe(), due
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// From when the request was due, not when it left: a sender
			// that falls behind must not hide the wait (coordinated omission).
			if err := op(ctx); err != nil {
				errs.Add(1) // a failure fails the run, warm-up or not
				return
			}
			if !timed {
				return
			}
			l := time.Since(due)
			mu.Lock()
			lat = append(lat, l)
			mu.Unlock()
		}()
	}
	if probe == nil { // d shorter than one interval
		probe, measured = startProbe(), time.Now()
	}
	wg.Wait()
	r := summarize(lat, int(errs.Load()), time.Since(measured))
	r.Offered = rate
	if r.Ops == 0 && r.Errors == 0 {
		// No latency at all would read as a p99 of 0, under any target.
		return r, fmt.Errorf("no timed operation in %s at %.0f/s", d, rate)
	}
	if err := probe.finish(&r); err != nil {
		return r, fmt.Errorf("probe: %w", err)
	}
	if r.Errors > 0 {
		return r, fmt.Errorf("%d errors in %d operations", r.Errors, r.Errors+r.Ops)
	}
	return r, nil
}

// openLoopWarmup is how long an open-loop run of d goes on untimed first:
// a fifth of it, as saturate warms up, and no more than a second, as the
// pgbench runs are cut.
func openLoopWarmup(d time.Duration) time.Duration { return min(d/5, time.Second) }

// interleave runs each named path rounds times, the paths taking turns in
// an order that rotates every round (a b c, b c a, c a b), and merges each
// path's rounds. Load on a shared machine drifts (stolen CPU, a neighbour's
// burst); taking turns spreads a drift over every path instead of charging
// it to whichever path happened to run through it, and the rotation keeps
// any one path from always going first.
func interleave(rounds int, names []string, run func(name string) (result, error)) (map[string]result, error) {
	per := map[string][]result{}
	for k := range rounds {
		for i := range names {
			name := names[(i+k)%len(names)]
			r, err := run(name)
			if err != nil {
				return nil, fmt.Errorf("%s, round %d: %w", name, k+1, err)
			}
			per[name] = append(per[name], r)
		}
	}
	out := map[string]result{}
	for name, rs := range per {
		out[name] = merge(rs)
	}
	return out, nil
}

// merge makes one result of rounds of the same path: throughput over their
// summed time, percentiles over all their latencies, the probe's worst and
// its steal share weighted by each round's length.
func merge(rs []result) result {
	var lat []time.Duration
	var d time.Duration
	errs, slow := 0, 0
	syncMax, steal, peak := time.Duration(0), 0.0, 0.0
	var rounds []float64
	for _, r := range rs {
		rounds = append(rounds, r.Throughput)
		lat = append(lat, r.lat...)
		d += r.Duration
		errs += r.Errors
		slow += r.SyncSlow
		syncMax = max(syncMax, r.SyncMax)
		steal += r.Steal * r.Duration.Seconds()
		peak = math.Max(peak, r.StealPeak) // NaN, where steal cannot be read, stays NaN
	}
	m := summarize(lat, errs, d)
	if len(rs) > 0 {
		m.Offered = rs[0].Offered
	}
	m.SyncMax, m.SyncSlow, m.StealPeak, m.Rounds = syncMax, slow, peak, rounds
	if d > 0 {
		m.Steal = steal / d.Seconds()
	}
	return m
}

// rank is the index of the p-th percentile in n sorted values, by the
// nearest-rank method: the smallest value with at least p% at or below it.
func rank(n, p int) int { return max(0, (n*p+99)/100-1) }

func summarize(lat []time.Duration, errs int, d time.Duration) result {
	slices.Sort(lat)
	r := result{Ops: len(lat), Errors: errs, Duration: d, lat: lat}
	if len(lat) > 0 {
		r.Throughput = float64(len(lat)) / d.Seconds()
		r.P50 = lat[rank(len(lat), 50)]
		r.P99 = lat[rank(len(lat), 99)]
		r.Max = lat[len(lat)-1]
	}
	return r
}

// paired times n sequential calls of each of two ops, taking turns (a b,
// b a, a b, ...), after warm untimed calls of each, and returns each op's
// p50 and p99. Taking turns puts whatever the machine does meanwhile (a
// checkpoint, autovacuum) on both sides of a ratio. Timed one op's calls
// after the other's, the scale section's match ratio read 1.78 in one full
// run and 0.88 and 1.25 in two runs of that section alone.
func paired(ctx context.Context, n, warm int, ops [2]func(ctx context.Context) error) ([2]result, error) {
	var out [2]result
	for range warm {
		for _, op := range ops {
			if err := op(ctx); err != nil {
				return out, err
			}
		}
	}
	var lat [2][]time.Duration
	var spent [2]time.Duration
	for i := range n {
		for k := range 2 {
			j := k
			if i%2 == 1 {
				j = 1 - k
			}
			t0 := time.Now()
			if err := ops[j](ctx); err != nil {
				return out, err
			}
			d := time.Since(t0)
			lat[j] = append(lat[j], d)
			spent[j] += d
		}
	}
	for j := range 2 {
		out[j] = summarize(lat[j], 0, spent[j])
	}
	return out, nil
}

// probeSyncEvery is sparse on purpose: the probe shares the disk with
// PostgreSQL's WAL, and at one fsync every 5 ms (200 a second, each an ext4
// journal commit) it slowed the commits it was there to watch. In one run
// without it, the floor met p99 < 10 ms at half of saturation, which it
// missed in every run with it. A stall long enough to matter still spans
// a probe.
const probeSyncEvery = 50 * time.Millisecond

// probeDisk runs the disk probe alongside the timed runs (-probe-disk).
// Off by default: sparse as it is, its fsyncs queue behind and ahead of
// the WAL's on the same disk, so it raises the p99 it would explain. The
// disk is probed at rest instead (idleDisk), before any load.
var probeDisk = false

// probe watches the machine while an open-loop run goes on. It writes
// 8 kB to a file of its own and fsyncs it every probeSyncEvery: commits
// wait on the same kind of sync, so a stall in the load that the probe
// also saw came from the disk, not from Handoff. And it reads the CPU time
// the hypervisor stole every 100 ms: a stolen slice stalls whatever was on
// that CPU.
type probe struct {
	stop      chan struct{}
	done      sync.WaitGroup
	syncs     int
	syncMax   time.Duration
	syncSlow  int
	start     cpuTimes
	stealPeak float64
	err       error
}

func startProbe() *probe {
	p := &probe{stop: make(chan struct{}), start: readCPUTimes(), stealPeak: math.NaN()}
	if probeDisk {
		p.startDisk()
	}
	p.done.Add(1)
	go func() {
		defer p.done.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		last := p.start
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
			}
			now := readCPUTimes()
			if s := stealBetween(last, now); !math.IsNaN(s) && (math.IsNaN(p.stealPeak) || s > p.stealPeak) {
				p.stealPeak = s
			}
			last = now
		}
	}()
	return p
}

func (p *probe) startDisk() {
	p.done.Add(1)
	go func() {
		defer p.done.Done()
		p.err = p.syncLoop()
	}()
}

func (p *probe) syncLoop() error {
	f, err := os.CreateTemp("", "handoff-bench-sync-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 8<<10)
	for i := int64(0); ; i++ {
		select {
		case <-p.stop:
			return nil
		case <-time.After(probeSyncEvery):
		}
		t := time.Now()
		if _, err := f.WriteAt(buf, (i%1024)*int64(len(buf))); err != nil {
			return err
		}
		if err := f.Sync(); err != nil {
			return err
		}
		d := time.Since(t)
		p.syncs++
		p.syncMax = max(p.syncMax, d)
		if d > 10*time.Millisecond {
			p.syncSlow++
		}
	}
}

// idleDisk runs the disk probe alone for d, before any load: how the disk
// PostgreSQL commits to answers a small fsync when nothing else asks.
func idleDisk(d time.Duration) (syncs int, slowest time.Duration, over10ms int, err error) {
	p := &probe{stop: make(chan struct{})}
	p.startDisk()
	time.Sleep(d)
	close(p.stop)
	p.done.Wait()
	return p.syncs, p.syncMax, p.syncSlow, p.err
}

// finish stops the probe and adds what it saw to r.
func (p *probe) finish(r *result) error {
	r.Steal = stealSince(p.start)
	close(p.stop)
	p.done.Wait()
	r.SyncMax, r.SyncSlow, r.StealPeak = p.syncMax, p.syncSlow, p.stealPeak
	return p.err
}
