package main

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

type report struct {
	cfg                       config
	started, finished         time.Time
	api                       map[string]result
	scale                     *scaleResult
	flows                     *flowResult
	rssIdle, rssLoad, rssPeak int64
	procs                     []procMem
	deployed                  map[string]result // the families service in its own process
	jitter                    jitterResult      // the machine before any load
	postgres                  string            // the server's version and commit settings
	commit                    string            // the source measured (sourceCommit)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }

// mib gives a resident size; none is 0, so 0 is one that could not be read,
// and says so in the words CI's smoke check looks for.
func mib(b int64) string {
	if b <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20))
}

// diskProbeNote says whether the disk probe ran alongside the timed runs.
func diskProbeNote() string {
	if probeDisk {
		return fmt.Sprintf(", and writes 8 kB to a file of its own and fsyncs it every %s (-probe-disk)", probeSyncEvery)
	}
	return "; the disk was probed at rest only (see above), as its fsyncs would slow the commits measured"
}

// syncCells are the disk probe's two cells of r's row: its slowest fsync
// and how many took over 10 ms, or dashes where it did not run.
func syncCells(r result) (string, string) {
	if !probeDisk {
		return "—", "—"
	}
	return ms(r.SyncMax), strconv.Itoa(r.SyncSlow)
}

func steal(r result) string { return pct(r.Steal) + " (" + pct(r.StealPeak) + ")" }

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func (r *report) markdown() string {
	var b strings.Builder
	kind, cmd := "full", "`make bench`"
	if r.cfg.smoke {
		kind, cmd = "smoke (short; numbers are not meaningful)", "`go run ./bench -smoke`"
	}
	if r.cfg.only != "" {
		kind, cmd = r.cfg.only+" only", "`go run ./bench -only "+r.cfg.only+"`"
	}
	fmt.Fprintf(&b, "# Handoff benchmarks, %s\n\n", r.started.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "Run: %s, %s, on commit %s. Machine: %s, %d CPUs, %s of memory, %s/%s. Versions: %s, %s. Took %s.\n\n",
		kind, cmd, r.commit, cpuModel(), runtime.NumCPU(), memTotal(), runtime.GOOS, runtime.GOARCH, runtime.Version(), deps(),
		r.finished.Sub(r.started).Round(time.Second))
	fmt.Fprintf(&b, "The API, scale and workflow sections run in one process on loopback (load generator, services and an in-process "+
		"Temporal server), against the local PostgreSQL (%s); the memory and as-deployed sections run each part in a `handoff` process "+
		"of its own, and pgbench is a program of its own. Compare ratios from the same run.\n\n", r.postgres)
	j := r.jitter
	fmt.Fprintf(&b, "The machine at rest, before any load: a thread sleeping 1 ms at a time for %s woke up to %s late "+
		"(p99 %s; %d of %d wake-ups over 10 ms), and the hypervisor gave %s of the CPU time to other guests (steal). "+
		"A stall of the machine's own delays every request in flight, so it bounds the p99 any service here can reach; "+
		"the open-loop tables show the steal during each run. Then, alone on the machine for %s, a probe wrote 8 kB to a file "+
		"of its own and fsynced it every %s, as a commit waits on the WAL's fsync: the slowest of %d took %s, %d over 10 ms.\n\n",
		j.Duration, ms(j.Max), ms(j.P99), j.Over10ms, j.Sleeps, pct(j.Steal), j.Duration, probeSyncEvery, j.DiskSyncs, ms(j.DiskMax), j.DiskOver10ms)

	if r.api != nil {
		r.apiSection(&b)
	}
	if r.scale != nil {
		r.scaleSection(&b)
	}
	if r.flows != nil {
		r.flowSection(&b)
	}
	if r.procs != nil {
		b.WriteString("## Memory of each process\n\nThe system as deployed, one `handoff` process per part (the Temporal server stays in the " +
			"benchmark's process, standing in for the cluster). Idle is read two seconds after every part is up; the peak is sampled every 100 ms " +
			"while the gateway serves creates and lists and interventions run to a completed intake, and then while the families service " +
			"is driven directly (the latency as deployed, below). " +
			"Private is the part not backed by a file: the rest is mostly the pages of the one `handoff` binary, which the processes share.\n\n" +
			"| process | idle: resident (private) | peak under load: resident (private) |\n|---|---:|---:|\n")
		for _, p := range r.procs {
			fmt.Fprintf(&b, "| %s | %s (%s) | %s (%s) |\n", p.Name, mib(p.Idle), mib(p.IdlePrivate), mib(p.Peak), mib(p.PeakPrivate))
		}
		b.WriteString("\n")
	}
	if d := r.deployed; d != nil {
		b.WriteString("## Latency as deployed\n\nThe API section's gRPC runs again, against the families service in its own `handoff` process " +
			"(the load generator stays on the same cores): saturation at the same concurrency, then open loop at half of it, with a probe that reads the CPU time stolen every 100 ms" + diskProbeNote() + ".\n\n" +
			"| operation | saturation | rate at half | p50 | p99 | max | probe: slowest fsync | probe: fsyncs over 10 ms | CPU steal: run (worst 100 ms) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, op := range []string{"get", "create"} {
			s, h := d[op], d[op+" at half saturation"]
			slowest, over := syncCells(h)
			fmt.Fprintf(&b, "| %s | %.0f/s | %.0f/s | %s | %s | %s | %s | %s | %s |\n", op, s.Throughput, h.Offered, ms(h.P50), ms(h.P99), ms(h.Max), slowest, over, steal(h))
		}
		hg, hc := d["get at half saturation"], d["create at half saturation"]
		fmt.Fprintf(&b, "\nTarget p99 < 10 ms at half of saturation, as deployed: %s.\n\n", verdict(hg.P99 < 10*time.Millisecond && hc.P99 < 10*time.Millisecond))
	}
	b.WriteString("## Memory of the benchmark's own process (every part in one, with the load generator and the Temporal server)\n\n" +
		"| when | resident |\n|---|---:|\n")
	fmt.Fprintf(&b, "| before any section started (no server or service running yet) | %s |\n", mib(r.rssIdle))
	if r.api != nil {
		fmt.Fprintf(&b, "| peak under API load | %s |\n", mib(r.rssLoad))
	}
	fmt.Fprintf(&b, "| peak over the whole run | %s |\n\n", mib(r.rssPeak))
	b.WriteString("Rerun with `make bench` (about ten minutes on 2 cores), one section with `go run ./bench -only api|scale|workflows|processes`; `go run ./bench -smoke -out /tmp/bench.md` is the short check CI runs.\n")
	return b.String()
}

func (r *report) apiSection(b *strings.Builder) {
	a := r.api
	fmt.Fprintf(b, "## API floor and overhead (%d concurrent callers; each path runs %d rounds of %s, the paths taking turns, and its rounds are merged)\n\n", r.cfg.conc, r.cfg.rounds, r.cfg.duration)
	b.WriteString("| path | operation | throughput | p50 | p99 |\n|---|---|---:|---:|---:|\n")
	for _, op := range []string{"create", "get"} {
		for _, path := range []string{"floor", "grpc", "gateway"} {
			x := a[path+" "+op]
			fmt.Fprintf(b, "| %s | %s | %.0f/s | %s | %s |\n", map[string]string{"floor": "(a) net/http + pgx floor",
				"grpc": "(b) gRPC service", "gateway": "(c) REST gateway"}[path], op, x.Throughput, ms(x.P50), ms(x.P99))
		}
	}
	b.WriteString("\n| ratio | create | get | create, round by round | get, round by round | target |\n|---|---:|---:|---|---|---|\n")
	bc, bg := a["grpc create"].Throughput/a["floor create"].Throughput, a["grpc get"].Throughput/a["floor get"].Throughput
	cc, cg := a["gateway create"].Throughput/a["grpc create"].Throughput, a["gateway get"].Throughput/a["grpc get"].Throughput
	fmt.Fprintf(b, "| b/a (gRPC vs floor) | %.2f | %.2f | %s | %s | ≥ 0.70: %s |\n", bc, bg,
		roundRatios(a["grpc create"], a["floor create"]), roundRatios(a["grpc get"], a["floor get"]), verdict(bc >= 0.7 && bg >= 0.7))
	fmt.Fprintf(b, "| c/b (gateway vs gRPC) | %.2f | %.2f | %s | %s | ≥ 0.70: %s |\n", cc, cg,
		roundRatios(a["gateway create"], a["grpc create"]), roundRatios(a["gateway get"], a["grpc get"]), verdict(cc >= 0.7 && cg >= 0.7))
	b.WriteString("\nThe target is judged on the merged rounds; the ratio of each round shows how much one run on this machine can move. " +
		"These runs are closed loops (each caller sends its next request when the last returns), so their p50 and p99 understate the tail: " +
		"a stall delays only the requests in flight. The latency target is judged below, in open loop.\n")
	hg, hc := a["grpc get at half saturation"], a["grpc create at half saturation"]
	fg, fc := a["floor get at half saturation"], a["floor create at half saturation"]
	fmt.Fprintf(b, "\nBelow saturation (open loop at a fixed rate, %d rounds of %s per run taking turns, each after %s at the same rate untimed, each latency counted from when its request was due; meanwhile a probe reads the CPU time stolen by the hypervisor every 100 ms%s):\n\n", r.cfg.rounds, r.cfg.duration, openLoopWarmup(r.cfg.duration), diskProbeNote())
	b.WriteString("| path | operation | offered rate | p50 | p99 | max | probe: slowest fsync | probe: fsyncs over 10 ms | CPU steal: run (worst 100 ms) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, op := range []string{"get", "create"} {
		for _, row := range []struct{ key, label string }{
			{"grpc " + op + " at half saturation", "(b) gRPC service, half of saturation"},
			{"floor " + op + " at half saturation", "(a) floor, the same rate"},
			{"pgbench " + op + " at half saturation", "(0) PostgreSQL alone: pgbench, the floor's statements, the same rate"},
			{"grpc " + op + " at quarter saturation", "(b) gRPC service, a quarter of saturation"},
			{"gateway " + op + " at half saturation", "(c) REST gateway, half of its own saturation"},
		} {
			x, ok := a[row.key]
			if !ok {
				fmt.Fprintf(b, "| %s | %s | not run: %v | | | | | | |\n", row.label, op, errNoPgbench)
				continue
			}
			slowest, over := syncCells(x)
			fmt.Fprintf(b, "| %s | %s | %.0f/s | %s | %s | %s | %s | %s | %s |\n", row.label, op, x.Offered, ms(x.P50), ms(x.P99), ms(x.Max), slowest, over, steal(x))
		}
	}
	fmt.Fprintf(b, "\nTarget p99 < 10 ms at half of saturation: %s (get %s, create %s); the floor at the same rate: get %s, create %s",
		verdict(hg.P99 < 10*time.Millisecond && hc.P99 < 10*time.Millisecond), ms(hg.P99), ms(hc.P99), ms(fg.P99), ms(fc.P99))
	pg, okg := a["pgbench get at half saturation"]
	pc, okc := a["pgbench create at half saturation"]
	if okg && okc {
		fmt.Fprintf(b, "; PostgreSQL alone: get %s, create %s", ms(pg.P99), ms(pc.P99))
	}
	gg, gc := a["gateway get at half saturation"], a["gateway create at half saturation"]
	fmt.Fprintf(b, "; the REST gateway at half of its own saturation: get %s, create %s (%s)", ms(gg.P99), ms(gc.P99),
		verdict(gg.P99 < 10*time.Millisecond && gc.P99 < 10*time.Millisecond))
	b.WriteString(".\n\n")
	b.WriteString("The floor sends the service's statements in the same round trips, as the same database role under row-level security, " +
		"audit record included; it leaves out gRPC, validation, the token check and protobuf. " +
		"pgbench, PostgreSQL's own load driver (a C program, outside this process), sends the floor's statements in as many round trips " +
		"(its insert returns the new id, which the read-back uses; the audit record goes with the outbox event, as the floor's does) on as many connections as the floor's pool, each transaction timed from when it was due, after a warm-up of " + pgbenchWarmup.String() + ", and running " + pgbenchDrain.String() +
		" past the measured window, whose transactions are left out (when its time runs out pgbench never starts those still waiting): no Go, no HTTP. " +
		"It spaces transactions as a Poisson process at the rate (the other rows space requests evenly), which queues a little more " +
		"at the same rate; its p99 is what this machine's database and disk give at that rate with nothing of Handoff in the way " +
		"(pgbench shares the cores with PostgreSQL, as every row's load generator does).\n\n")
}

func (r *report) scaleSection(b *strings.Builder) {
	s := r.scale
	fmt.Fprintf(b, "## Scale of data (%d vs %d families and programs, each size in tables of its own)\n\n", s.Small, s.Big)
	b.WriteString("| query | whole call: p50 small | p50 big | ratio | the query alone: p50 small | p50 big | ratio | target: both ratios < 1.5 | the query alone: p99 small | p99 big |\n" +
		"|---|---:|---:|---:|---:|---:|---:|---|---:|---:|\n")
	row := func(name string, call, query [2]result, callRatio, queryRatio float64) {
		fmt.Fprintf(b, "| %s | %s | %s | %.2f | %s | %s | %.2f | %s | %s | %s |\n", name, ms(call[0].P50), ms(call[1].P50), callRatio,
			ms(query[0].P50), ms(query[1].P50), queryRatio, verdict(callRatio < 1.5 && queryRatio < 1.5), ms(query[0].P99), ms(query[1].P99))
	}
	row("ListFamilies, first page of 50", s.ListFirst, s.ListFirstQuery, s.ListFirstRatio, s.ListFirstQueryRatio)
	row("ListFamilies, a page a quarter to three quarters through (a new place each sample), with a filter", s.ListDeep, s.ListDeepQuery,
		s.ListDeepRatio, s.ListDeepQueryRatio)
	row("MatchPrograms, immediate, with coverage, barrier, town, postal code and language (new ones each sample), top 10", s.Match, s.MatchQuery,
		s.MatchRatio, s.MatchQueryRatio)
	b.WriteString("\nEach sample is timed twice. The whole gRPC call also pays for the token check and the call's audit record " +
		"(a commit of its own, which waits for the WAL's flush), the same at either size, and such fixed costs pull a ratio towards 1. " +
		"The query alone is the service's one statement that does the work (the page of families; the match), sent with the clinic's scope in one round trip, from when the service sends it " +
		"until it has read its last row, as the span its database layer wraps every statement in measures it. " +
		"Timing it records a span for each statement the call sends, which the whole call includes at either size; whole calls before this " +
		"timing (runs before 2026-12-06 17:44) did not. Both sizes are read warm, from memory, so neither ratio is of the disk.\n")
	fmt.Fprintf(b, "\nPrograms are spread over 100 towns and 1,000 postal codes; they fall into %d (small) and %d (big) profiles, "+
		"the features a match scores. A match's work grows with the number of profiles, not of programs: the seed draws each program's "+
		"services, payments and languages from a few sets, so the big directory has about as many profiles as the small, and the match's ratio "+
		"measures more programs of like kinds. A directory whose programs had many more distinct features would match more slowly at either size. "+
		"Seeding took %s (small) and %s (big).\n\n",
		s.Profiles[0], s.Profiles[1], s.InsertSmall.Round(time.Millisecond), s.InsertBig.Round(time.Millisecond))
}

// cpuPerWorkflow says what each run cost the whole machine, every process
// counted (the benchmark's, which holds the Temporal server, the worker and
// the services, and PostgreSQL's), so that a reader can tell a ratio of
// work from a ratio of waiting.
func cpuPerWorkflow(f *flowResult) string {
	if math.IsNaN(f.FullCPU.Seconds) || math.IsNaN(f.NoopCPU.Seconds) || f.Flows == 0 {
		return "What the machine spent on each could not be measured here (no /proc/stat).\n\n"
	}
	per := func(s float64) float64 { return s / float64(f.Flows) * 1000 }
	full, noop := per(f.FullCPU.Seconds), per(f.NoopCPU.Seconds)
	return fmt.Sprintf("What the machine spent on each, every process counted (PostgreSQL and this one, which holds the Temporal server, "+
		"the worker and the services): during the flows the cores were %s busy, %.0f ms of CPU per flow (%.0f ms in this process); "+
		"during the fastest round of no-ops %s busy, %.0f ms per no-op (%.0f ms in this process). CPU per no-op over CPU per flow is %.2f, against the "+
		"ratio of rates %.2f: where both runs keep the cores busy, the rates stand in the ratio of the work each workflow costs.\n\n",
		pct(f.FullCPU.Busy), full, per(f.FullCPU.Self), pct(f.NoopCPU.Busy), noop, per(f.NoopCPU.Self), noop/full, f.Ratio)
}

func (r *report) flowSection(b *strings.Builder) {
	f := r.flows
	fmt.Fprintf(b, "## Workflows (%d at once)\n\n", f.Flows)
	b.WriteString("| run | took | per second |\n|---|---:|---:|\n")
	fmt.Fprintf(b, "| scheduling to a completed MAT intake, through the services, relays and worker (each waits %s for its meeting to start), the fastest of %d rounds | %.1f s | %.2f |\n",
		f.MeetingWait, len(f.FlowRounds), f.FullSeconds, f.FullRate)
	fmt.Fprintf(b, "| ceiling: a no-op workflow with one activity, the fastest of %d rounds | %.1f s | %.2f |\n", len(f.NoopRounds), f.NoopSeconds, f.NoopRate)
	fmt.Fprintf(b, "\nIn the fastest round the flows finished %.1f s (half of them), %.1f s (nine in ten) and %.1f s (the last) after the start; the rate counts to the last. "+
		"%d of %d flows had a workflow task time out, which costs a flow the task's 10 s timeout (under load the server can lose a task it has "+
		"recorded as started; see the README); the server turned down %d workflow task completions in all to deliver a signal first "+
		"(UnhandledCommand; each costs a failed task and a replay).\n",
		f.FlowP50.Seconds(), f.FlowP90.Seconds(), f.FlowMax.Seconds(), f.TimedOutFlows, f.Flows, f.TurnedDown)
	secs := func(rounds []float64) string {
		out := make([]string, len(rounds))
		for i, sec := range rounds {
			out[i] = fmt.Sprintf("%.1f s", sec)
		}
		return strings.Join(out, ", ")
	}
	fmt.Fprintf(b, "\nThe rounds of flows, each of %d new interventions, took %s; the ceiling's, one after another, %s. On each side the fastest counts: "+
		"a round slowed by something else on the machine cannot lower the ceiling and flatter the ratio, and the flows are judged by the "+
		"same statistic (their first round also warms the worker and the services, which the no-ops, run after, find warm). "+
		"The history and task counts below are the fastest round's.\n", f.Flows, secs(f.FlowRounds), secs(f.NoopRounds))
	fmt.Fprintf(b, "\nRatio %.2f; target ≥ 0.50: %s.", f.Ratio, verdict(f.Ratio >= 0.5))
	if work := f.FullSeconds - f.MeetingWait.Seconds(); work > 0 && f.NoopRate > 0 {
		// Not the verdict: the wait is part of carrying a meeting through.
		fmt.Fprintf(b, " Without the %s every flow waits for its meeting to start, the flows took %.1f s: %.2f per second, %.2f of the ceiling.",
			f.MeetingWait, work, float64(f.Flows)/work, float64(f.Flows)/work/f.NoopRate)
	}
	b.WriteString("\n\n")
	fullEv, noopEv := float64(f.FullEvents)*f.FullRate, float64(f.NoopEvents)*f.NoopRate
	fmt.Fprintf(b, "What the server does for each: an intervention carried to intake is %d history events (%d in its workflow, %d in the MAT intake child), "+
		"the no-op %d (the flow loads the plan and settings, holds a place, places reminders, waits for the outcome, starts the referral "+
		"and follows its answers). In history events per second that is %.0f against %.0f (%.2f); the flow's events also wait on the services "+
		"and PostgreSQL, on the same cores.\n\n",
		f.FullEvents, f.FullEvents-f.IntakeEvents, f.IntakeEvents, f.NoopEvents, fullEv, noopEv, fullEv/noopEv)
	b.WriteString(cpuPerWorkflow(f))
	b.WriteString("Timer timeliness: workflow timers are what reminders wait on (a workflow sleeps until a reminder's time, then creates it); " +
		"lateness is measured in the activity that runs when a timer fires, on a fresh embedded server each time; " +
		"a timer is early if the server recorded it fired (its TimerFired event) before it was due, or its workflow woke before then. " +
		"Each run is judged. The first has timers scheduled together and due over a minute, all started before the first is due, " +
		"as reminders of meetings spread over a day fall due; the second, the worst case, has them all due at one instant, " +
		"as if every meeting began on the same hour, and shows how fast the embedded server drains a backlog.\n\n" +
		"| timers | due | starting them took | early | p50 late | p99 late | max late | target: none early, p99 < 2 s |\n|---:|---|---:|---:|---:|---:|---:|---|\n")
	for _, t := range f.TimerRuns {
		due := fmt.Sprintf("all at one instant, %s after the first start", t.Lead)
		if t.Window > 0 {
			due = fmt.Sprintf("spread evenly over %s, from %s after the first start", t.Window, t.Lead)
		}
		v := verdict(t.Early == 0 && t.P99 < 2*time.Second && t.Start < t.Lead)
		if t.Window == 0 {
			v += " (the worst case)"
		}
		fmt.Fprintf(b, "| %d | %s | %s | %d | %s | %s | %s | %s |\n", t.Timers, due, t.Start.Round(time.Millisecond), t.Early,
			ms(t.P50), ms(t.P99), ms(t.Max), v)
	}
	b.WriteString("\n")
}

// memTotal is the machine's memory as /proc/meminfo gives it.
func memTotal() string {
	v, ok := procField("/proc/meminfo", "MemTotal")
	kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(v, "kB")), 10, 64)
	if !ok || err != nil {
		return "unknown"
	}
	return fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
}

// procField is the value of the first "name: value" line of a /proc file.
func procField(file, name string) (string, bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == name {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

// sourceCommit is the commit the benchmark runs (go run stamps none into
// the binary), "+ changes" when the work tree differs from it.
func sourceCommit() string {
	out, err := exec.Command("git", "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		return "unknown (not a git work tree)"
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		c += " + uncommitted changes"
	}
	return c
}

func cpuModel() string {
	if v, ok := procField("/proc/cpuinfo", "model name"); ok {
		return v
	}
	return "unknown CPU"
}

func deps() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	want := map[string]bool{"go.temporal.io/server": true, "go.temporal.io/sdk": true, "google.golang.org/grpc": true,
		"github.com/jackc/pgx/v5": true, "github.com/grpc-ecosystem/grpc-gateway/v2": true}
	var out []string
	for _, d := range info.Deps {
		if want[d.Path] {
			out = append(out, d.Path+" "+d.Version)
		}
	}
	return strings.Join(out, ", ")
}

// roundRatios lists x/y round by round, as "0.98, 1.04, 0.95".
func roundRatios(x, y result) string {
	var parts []string
	for k := range min(len(x.Rounds), len(y.Rounds)) {
		if y.Rounds[k] > 0 {
			parts = append(parts, fmt.Sprintf("%.2f", x.Rounds[k]/y.Rounds[k]))
		}
	}
	return strings.Join(parts, ", ")
}
