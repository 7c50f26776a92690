package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The floor's statements as pgbench scripts, in as many round trips,
// made from the floor's own SQL so that the two cannot drift apart.
// pgbench is PostgreSQL's own load driver, a C program outside this
// process: at a given rate it shows what PostgreSQL and the disk alone give,
// with no Go runtime, HTTP or gRPC in the way. Its -R spaces transactions
// as a Poisson process, where openLoop spaces requests evenly, which
// queues a little more at the same rate, not less.
var (
	// A read: the clinic scope and the read in one pipeline, then the scope
	// and the audit record in another, as the floor sends its two batches.
	pgbenchGet = `\startpipeline
` + bind(floorScope, ":clinic") + `;
` + bind(floorSelect, ":clinic", ":id") + `;
\endpipeline
\startpipeline
` + bind(floorScope, ":clinic") + `;
` + bind(floorAudit, ":clinic", "'bench'", "'{counselor}'", "'GetFamily'", ":name", "'OK'", "''") + `;
\endpipeline
`
	// A create: five round trips, as the floor's: BEGIN with the scope;
	// the insert; the read-back; the audit record with the outbox event;
	// COMMIT. The id is made in the insert, time-ordered as the floor's
	// UUIDv7 ids are, and read back (\gset) for the record to name it.
	pgbenchCreate = `\set r random(1, 1000000000)
\startpipeline
BEGIN;
` + bind(floorScope, ":clinic") + `;
\endpipeline
` + bind(floorInsert, ":clinic", "to_char(clock_timestamp(), 'YYYYMMDDHH24MISSUS') || '-' || :client_id || '-' || :r", ":doc", "'c-1'") + `
	RETURNING id \gset
` + bind(floorSelect, ":clinic", ":id") + `;
\startpipeline
` + bind(floorAudit, ":clinic", "'bench'", "'{counselor}'", "'CreateFamily'", "'clinics/' || :clinic || '/families/' || :id", "'OK'", "''") + `;
` + bind(floorOutbox, ":clinic", "'family.created'", ":id", ":doc", "NULL") + `;
\endpipeline
COMMIT;
`
)

// bind puts args[i] (a pgbench variable or an SQL expression) in place of
// sql's parameter $i+1; it panics on a count that does not match, a
// mistake in the scripts above.
func bind(sql string, args ...string) string {
	for i := len(args); i >= 1; i-- { // $10 before $1
		p := "$" + strconv.Itoa(i)
		if !strings.Contains(sql, p) {
			panic(fmt.Sprintf("bench: %s not in %q", p, sql))
		}
		sql = strings.ReplaceAll(sql, p, args[i-1])
	}
	if strings.Contains(sql, "$") {
		panic(fmt.Sprintf("bench: parameters left unbound in %q", sql))
	}
	return sql
}

// errNoPgbench says the machine has no pgbench; the report then leaves its
// rows out and says why.
var errNoPgbench = errors.New("pgbench not found on PATH (it comes with PostgreSQL's client or server package)")

// pgbenchDSN is dsn with the application role and schema set at connection
// start, as pgdb.OpenApp sets them, so pgbench runs under the same
// row-level security as the floor.
func pgbenchDSN(dsn, role, schema string) (string, error) {
	opts := fmt.Sprintf("-c role=%s -c search_path=%s", role, schema)
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("pgbench dsn: %w", err)
		}
		q := u.Query()
		if o := q.Get("options"); o != "" {
			opts = o + " " + opts
		}
		q.Set("options", opts)
		u.RawQuery = libpqQuery(q)
		return u.String(), nil
	}
	if strings.Contains(dsn, "options=") {
		return "", fmt.Errorf("pgbench dsn: a key/value dsn with options of its own is not supported; use a URL")
	}
	return dsn + " options='" + opts + "'", nil
}

// libpqQuery encodes a URL query for libpq, which does not read "+" as a
// space, as url.Values.Encode writes it.
func libpqQuery(q url.Values) string { return strings.ReplaceAll(q.Encode(), "+", "%20") }

// withoutPassword takes the password out of a URL dsn, from its user part
// or its query, and returns both.
// A key/value dsn is returned as it is: pgbenchDSN's callers pass URLs.
func withoutPassword(dsn string) (string, string, error) {
	if !strings.HasPrefix(dsn, "postgres://") && !strings.HasPrefix(dsn, "postgresql://") {
		return dsn, "", nil
	}
	u, err := url.Parse(dsn)
	if err != nil {
		return "", "", fmt.Errorf("pgbench dsn: %w", err)
	}
	password, ok := u.User.Password()
	if ok {
		u.User = url.User(u.User.Username())
	}
	if q := u.Query(); q.Has("password") {
		password = q.Get("password")
		q.Del("password")
		u.RawQuery = libpqQuery(q)
	}
	return u.String(), password, nil
}

// pgbenchWarmup is cut from the front of each pgbench run: pgbench starts
// its schedule before its connections are up and its statements prepared,
// and the first transactions' wait for that showed as up to 80 ms of lag.
const pgbenchWarmup = time.Second

// pgbenchDrain is added to the end of each pgbench run and its
// transactions left out: when -T runs out, pgbench never starts those due
// and still waiting, so the last ones measured would be those that did not
// wait. Those due within the measured window have this long to start.
const pgbenchDrain = 2 * time.Second

// pgbenchLoop runs script through pgbench at rate for d (whole seconds, at
// least one) after a warm-up, on conns connections, with the probe
// alongside, and measures each transaction from when it was due, as
// openLoop does.
func pgbenchLoop(ctx context.Context, dsn, script string, vars map[string]string, conns int, rate float64, d time.Duration) (result, error) {
	bin, err := exec.LookPath("pgbench")
	if err != nil {
		return result{}, errNoPgbench
	}
	dir, err := os.MkdirTemp("", "handoff-pgbench-*")
	if err != nil {
		return result{}, err
	}
	defer os.RemoveAll(dir)
	file := filepath.Join(dir, "script.sql")
	if err := os.WriteFile(file, []byte(script), 0o600); err != nil {
		return result{}, err
	}
	secs := max(1, int(math.Ceil(d.Seconds())))
	// One thread: pgbench gives each thread a schedule of its own at its
	// share of the rate, which would make two queues where the floor has
	// one pool.
	args := []string{"-n", "-M", "prepared", "-f", file, "-R", strconv.FormatFloat(rate, 'f', 1, 64),
		"-T", strconv.Itoa(secs + int((pgbenchWarmup+pgbenchDrain)/time.Second)), "-c", strconv.Itoa(conns), "-j", "1",
		"-l", "--log-prefix", filepath.Join(dir, "tx")}
	for k, v := range vars {
		args = append(args, "-D", k+"="+v)
	}
	// A password goes to pgbench in its environment, not on its command
	// line, where any user of the machine could read it.
	dsn, password, err := withoutPassword(dsn)
	if err != nil {
		return result{}, err
	}
	cmd := exec.CommandContext(ctx, bin, append(args, dsn)...)
	if password != "" {
		cmd.Env = append(os.Environ(), "PGPASSWORD="+password)
	}
	probe := startProbe()
	out, err := cmd.CombinedOutput()
	r := result{}
	if perr := probe.finish(&r); perr != nil && err == nil {
		err = fmt.Errorf("probe: %w", perr)
	}
	if err != nil {
		return r, fmt.Errorf("pgbench: %w: %s", err, failureLines(string(out)))
	}
	logs, err := filepath.Glob(filepath.Join(dir, "tx.*"))
	if err != nil || len(logs) == 0 {
		return r, fmt.Errorf("pgbench wrote no transaction log: %s", failureLines(string(out)))
	}
	var txs []pgbenchTx
	for _, name := range logs {
		t, err := readPgbenchLog(name)
		if err != nil {
			return r, err
		}
		txs = append(txs, t...)
	}
	lat, errs, complete := afterWarmup(txs, pgbenchWarmup, time.Duration(secs)*time.Second)
	if !complete && rate*pgbenchDrain.Seconds() >= 10 {
		// With one thread pgbench starts its schedule in order, so one due
		// after the window shows that every one due in it started. Without
		// one, those left waiting at the end, the slowest, are missing
		// (at a rate that puts ten or more in the drain: fewer could
		// leave it empty by chance).
		return r, fmt.Errorf("pgbench fell more than %s behind its schedule: transactions due at the end of the measured window never started, so its latencies would leave out the slowest", pgbenchDrain)
	}
	s := summarize(lat, errs, time.Duration(secs)*time.Second)
	s.Offered, s.SyncMax, s.SyncSlow, s.Steal, s.StealPeak = rate, r.SyncMax, r.SyncSlow, r.Steal, r.StealPeak
	if s.Errors > 0 || s.Ops == 0 {
		return s, fmt.Errorf("pgbench: %d failed transactions in %d", s.Errors, s.Errors+s.Ops)
	}
	return s, nil
}

// pgbenchTx is one line of pgbench's transaction log.
type pgbenchTx struct {
	due     time.Time     // when the schedule wanted it to start
	latency time.Duration // from due to done; 0 when it failed
	failed  bool
}

// afterWarmup returns the latencies of the transactions due from warmup
// after the first one on, for d, and how many of those failed: not those
// due in the drain after it (see pgbenchDrain). complete says whether one
// due in the drain was logged.
func afterWarmup(txs []pgbenchTx, warmup, d time.Duration) (lat []time.Duration, failed int, complete bool) {
	if len(txs) == 0 {
		return nil, 0, false
	}
	first := txs[0].due
	for _, t := range txs {
		if t.due.Before(first) {
			first = t.due
		}
	}
	for _, t := range txs {
		switch {
		case t.due.Before(first.Add(warmup)):
		case !t.due.Before(first.Add(warmup + d)):
			complete = true
		case t.failed:
			failed++
		default:
			lat = append(lat, t.latency)
		}
	}
	return lat, failed, complete
}

// readPgbenchLog reads one of pgbench's per-transaction logs.
func readPgbenchLog(name string) ([]pgbenchTx, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parsePgbenchLog(bufio.NewScanner(f), name)
}

// parsePgbenchLog reads lines of client, transaction, time µs, script,
// completion time (epoch s and µs) and schedule lag µs, the last there only
// with a rate set. With a rate set pgbench counts a transaction's time from
// when it was scheduled, so the lag is already in it: the transaction was
// due at completion less that time. A failed or skipped one has no time;
// it is placed at its completion.
func parsePgbenchLog(sc *bufio.Scanner, name string) ([]pgbenchTx, error) {
	var txs []pgbenchTx
	for line := 1; sc.Scan(); line++ {
		f := strings.Fields(sc.Text())
		if len(f) < 7 {
			return nil, fmt.Errorf("%s:%d: want 7 fields with a rate set, got %d", name, line, len(f))
		}
		var n [3]int64
		for i, k := range []int{4, 5, 6} {
			v, err := strconv.ParseInt(f[k], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("%s:%d: field %d %q: %w", name, line, k+1, f[k], err)
			}
			n[i] = v
		}
		done := time.Unix(n[0], n[1]*1000)
		took, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil { // "skipped" or "failed"
			txs = append(txs, pgbenchTx{due: done, failed: true})
			continue
		}
		d := time.Duration(took) * time.Microsecond
		txs = append(txs, pgbenchTx{due: done.Add(-d), latency: d})
	}
	return txs, sc.Err()
}

// failureLines picks what says why out of pgbench's output: its errors and
// the server's, or else its last lines.
func failureLines(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var why []string
	for _, l := range lines {
		if strings.Contains(strings.ToLower(l), "error") || strings.Contains(l, "aborted") {
			why = append(why, strings.TrimSpace(l))
		}
	}
	if len(why) == 0 {
		why = lines[max(0, len(lines)-5):]
	}
	return strings.Join(why[:min(len(why), 5)], "; ")
}
