package outbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/telemetry"
)

// Relay delivers a service's outbox events at least once, in order within
// a lane. Lane names each event's lane; events of different lanes are
// delivered side by side, up to Parallel lanes at once, so that one slow
// delivery (an update waits on its workflow) holds back its own lane and
// no other: a poll waits Linger for the lanes it started, then records
// what they delivered and returns, leaving slow lanes to go on; later
// polls start other lanes meanwhile and collect the slow ones when they
// end. A lane whose delivery failed waits, with its events, before its
// next try (Interval, doubling to a minute) while the others go on: a poll
// reads past waiting and busy lanes' events, up to maxPages batches, so
// only more than that many events behind them stop the relay (the outbox
// gauges show it). Only one relay per schema delivers at a time (an
// advisory lock, held while any lane is under way), so several replicas of
// a service can run a relay each without reordering events. The relay also
// deletes, once a minute, delivered events and request ids past their
// retention (Keep, KeepRequestIDs).
type Relay struct {
	DB       *pgdb.DB
	Deliver  func(ctx context.Context, e Stored) error // called from several goroutines
	Log      *slog.Logger
	Interval time.Duration // between polls; default 500 ms
	Batch    int           // events per poll; default 100
	// Lane returns an event's lane (ByFamily in Handoff's services); nil
	// puts every event in one lane, delivered strictly in order.
	Lane func(Stored) string
	// Parallel is how many lanes deliver at once; default 16.
	Parallel int
	// Timeout bounds one delivery; default 30 s. Without it a workflow
	// that never takes its update would hold its lane for ever; with it
	// the event fails and is retried.
	Timeout time.Duration
	// Linger is how long a poll waits for the lanes under way before it
	// returns without them; default 1 s.
	Linger time.Duration
	// Keep is how long a delivered event is kept (default DefaultKeep),
	// KeepRequestIDs how long a request id and its stored response are
	// (default DefaultKeepRequestIDs). The relay deletes what is older.
	Keep, KeepRequestIDs time.Duration
	// Consumer is whose delivery mark the relay reads and sets (default
	// Dispatch). A relay per consumer runs over one outbox, each holding a
	// lock of its own; only Dispatch's prunes.
	Consumer Consumer
	// AwaitSink, on Dispatch's relay, keeps a delivered event until the
	// Sink has it too: set where a Sink relay runs over the outbox.
	AwaitSink bool
	// NewerGrace is how long an event a newer release wrote (see
	// Generation) is left for a relay of that release, from when this
	// relay first left it; default DefaultNewerGrace. Past it, this relay
	// delivers the event as best it can: the newer release was rolled
	// back, and its lane must not wait for ever.
	NewerGrace time.Duration

	mu      sync.Mutex // one poll at a time owns the fields below
	blocked map[string]backoff
	pruned  time.Time
	conn    *pgxpool.Conn // holds the lock while lanes are under way
	// lost ends when the relay may have lost the lock it took (a
	// statement on conn failed: a dead session drops its locks), and stops
	// the lanes under way, so that they do not deliver beside the replica
	// that takes the lock next.
	lost context.Context
	lose context.CancelFunc
	// alive is when (since monoEpoch, by the monotonic clock, so that a
	// wall clock stepped back does not lengthen the lease; 0 for never)
	// a statement that then succeeded was
	// last sent on conn: the server had heard from the session by then,
	// and keeps it, and the lock, at least lockLease past it (see lead).
	alive atomic.Int64
	busy  map[string]bool // lanes under way
	sem   chan struct{}   // Parallel lanes deliver at once

	fmu      sync.Mutex // guards finished and leftSince
	finished []laneDone
	// leftSince is when this relay first left each newer release's event
	// it has not delivered: the grace counts from then, not from the
	// event, which may have waited long behind a failure before its turn.
	leftSince map[int64]leftAt
	wake      chan struct{} // a lane finished
}

// backoff is a lane waiting after a failed delivery.
type backoff struct {
	until    time.Time
	failures int
}

func (r *Relay) interval() time.Duration {
	if r.Interval > 0 {
		return r.Interval
	}
	return 500 * time.Millisecond
}

// Run delivers until ctx ends, then waits for the lanes under way to stop
// and records what they delivered. It polls again at once after a poll
// that delivered something, and after Interval otherwise; a failed lane
// sits its wait out meanwhile, so polling at once does not retry it in a
// tight loop.
func (r *Relay) Run(ctx context.Context) {
	r.observe()
	defer r.Wait(context.WithoutCancel(ctx))
	interval := r.interval()
	for {
		n, err := r.Once(ctx)
		if err != nil && ctx.Err() == nil {
			r.Log.Warn("outbox delivery paused", "error", telemetry.LogSafe(err))
		}
		wait := interval
		if n > 0 {
			wait = 0 // more may be waiting
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// DefaultNewerGrace is far longer than a rolling update.
const DefaultNewerGrace = 15 * time.Minute

// laneResult is what one lane did.
type laneResult struct {
	delivered []int64
	setAside  []Stored
	failed    *Stored
	err       error
	// left is an event left for a newer release's relay: the lane stops
	// there, and waits, but the event has not failed.
	left *Stored
}

// laneDone is a lane that finished, with what it did.
type laneDone struct {
	key string
	res laneResult
}

// Once starts delivering the pending events of the lanes that are neither
// under way nor waiting after a failure, oldest first within each lane,
// each lane stopping at its first failure so that later events of that
// lane never overtake it. It waits up to Linger for the lanes under way
// (all of them once ctx has ended), records what those that finished
// delivered or set aside, and returns how many, with their failures
// joined.
func (r *Relay) Once(ctx context.Context) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conn == nil {
		conn, leader, err := r.lead(ctx)
		if err != nil || !leader {
			return 0, err
		}
		r.conn = conn
		r.lost, r.lose = context.WithCancel(context.Background())
		r.alive.Store(int64(time.Since(monoEpoch)))
	}
	now := time.Now()
	// A holder cut off from the database finds out within the lease (a
	// read that does not answer in time costs the session: pgx closes a
	// connection whose statement it gave up on), before the server lets
	// another replica take the lock.
	pctx, cancel := context.WithTimeout(ctx, lockLease/2)
	all, complete, err := r.pending(pctx, r.conn, r.batch(), now)
	cancel()
	if err == nil {
		r.alive.Store(int64(now.Sub(monoEpoch)))
	}
	if err != nil {
		// The session, and the lock with it, may be gone: another replica
		// may take the lock at its next poll and deliver these lanes
		// too. Those under way stop; what they delivered unrecorded is
		// delivered again, at least once as ever, but not by two relays
		// at a time, out of order. An error the server answered on a
		// live session (a statement timeout) leaves the lock held, and
		// the lanes go on.
		if sessionLost(r.conn, err) {
			r.lose()
		}
		// Lanes under way are recorded when they end, whatever this poll
		// could read.
		n, errs := r.record(ctx, r.collect(ctx, 0, nil), ctx.Err() != nil || r.lost.Err() != nil)
		r.release(ctx)
		return n, errors.Join(append(errs, err)...)
	}
	if r.lost.Err() != nil {
		// A statement failed since the lock was taken: nothing new starts
		// until the lanes cut short have ended and the lock is given back
		// and taken again (release closes a session that cannot unlock).
		n, errs := r.record(ctx, r.collect(ctx, 0, nil), true)
		r.release(ctx)
		return n, errors.Join(errs...)
	}
	mine := map[string]bool{}
	for _, l := range r.ready(all, complete, now) {
		r.start(ctx, l)
		mine[l.key] = true
	}
	linger := r.Linger
	if linger <= 0 {
		linger = time.Second
	}
	n, errs := r.record(ctx, r.collect(ctx, linger, mine), ctx.Err() != nil)
	if ctx.Err() == nil && r.Consumer == Dispatch {
		if err := r.prune(ctx, r.conn, time.Now()); err != nil {
			errs = append(errs, fmt.Errorf("outbox relay: %w", err))
		}
	}
	r.release(ctx)
	return n, errors.Join(errs...)
}

// lead takes a connection and, if no other relay of the schema holds it,
// the schema's delivery lock.
func (r *Relay) lead(ctx context.Context) (*pgxpool.Conn, bool, error) {
	conn, err := r.DB.Pool.Acquire(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("outbox relay: acquire: %w", err)
	}
	// One round trip: the lock, and only for its holder the every-clinic
	// scope the relay works in, and keepalives that let the server find a
	// holder gone (its host lost power, or cut off) within a minute: the
	// lock goes only with the session, and the server's defaults (the
	// system's, two hours) would stop every replica's delivery for that
	// long. The server keeps a silent session at least 20 + 4 x 5 = 40
	// seconds, longer than lockLease, within which a holder cut off stops
	// delivering (deliverLane). A replica that is not the leader, asking
	// at every poll, leaves the connection as it found it.
	var leader bool
	if err := conn.QueryRow(ctx, `SELECT l, CASE WHEN l THEN set_config('handoff.clinic', $1, false)
			|| set_config('tcp_keepalives_idle', '20', false) || set_config('tcp_keepalives_interval', '5', false)
			|| set_config('tcp_keepalives_count', '4', false) || set_config('tcp_user_timeout', '45000', false) END
		FROM (SELECT pg_try_advisory_lock(hashtext($2 || current_schema())) AS l) lock`,
		pgdb.SystemScope, r.lockPrefix()).Scan(&leader, new(*string)); err != nil {
		// The lock may be held, and the scope set, whatever failed: the
		// session goes, and both with it.
		_ = conn.Conn().Close(context.WithoutCancel(ctx))
		conn.Release()
		return nil, false, fmt.Errorf("outbox relay: lock: %w", err)
	}
	if !leader {
		conn.Release()
		return nil, false, nil
	}
	return conn, true, nil
}

// monoEpoch is the instant alive counts from; a time.Time from
// time.Now() carries a monotonic reading, and so do those derived from it.
var monoEpoch = time.Now().Add(-time.Second)

// lockLease is how long after the lock's session was last heard from by
// the server (alive) its holder still delivers: less than the server
// keeps a silent session (lead), so that a holder cut off from the
// database has stopped before another replica can take the lock and
// deliver the same lanes.
const lockLease = 35 * time.Second

// lockFresh is how long after its session was last heard from a holder
// starts a new delivery: its polls, every second or two, hear from it far
// more often; silence this long means it may be cut off. Longer for a
// relay that polls less often (fresh).
const lockFresh = 5 * time.Second

// fresh is lockFresh, or four polls if that is longer, but at most half
// the lease.
func (r *Relay) fresh() time.Duration {
	return min(max(lockFresh, 4*r.interval()), lockLease/2)
}

// lockPrefix names the schema's delivery lock of the relay's consumer.
// Dispatch's is the name every release before consumers used, so that a
// relay of either release excludes the other's.
func (r *Relay) lockPrefix() string {
	if r.Consumer == Dispatch {
		return "handoff-outbox-"
	}
	return "handoff-outbox-" + string(r.Consumer) + "-"
}

// giveBack returns conn to the pool without the relay's every-clinic scope:
// whatever takes the connection next must not inherit it (a rolled-back
// transaction's scope falls back to the session's). A connection whose
// scope cannot be cleared is closed, so the pool does not hand it out.
func giveBack(ctx context.Context, conn *pgxpool.Conn) {
	ctx, cancel := settleCtx(ctx)
	defer cancel()
	// The keepalives go back to what the server's configuration gives
	// (reset_val: postgresql.conf, the role's or database's settings).
	if _, err := conn.Exec(ctx, `SELECT set_config('handoff.clinic', '', false),
		(SELECT count(set_config(name, reset_val, false)) FROM pg_settings
			WHERE name IN ('tcp_keepalives_idle', 'tcp_keepalives_interval', 'tcp_keepalives_count', 'tcp_user_timeout'))`); err != nil {
		_ = conn.Conn().Close(ctx)
	}
	conn.Release()
}

// release gives the lock and the connection back once no lane is under
// way: another replica may then deliver.
func (r *Relay) release(ctx context.Context) {
	if r.conn == nil || len(r.busy) > 0 {
		return
	}
	uctx, cancel := settleCtx(ctx)
	defer cancel()
	var unlocked bool
	if err := r.conn.QueryRow(uctx, `SELECT pg_advisory_unlock(hashtext($1 || current_schema()))`, r.lockPrefix()).Scan(&unlocked); err != nil || !unlocked {
		// A session lock left on a pooled connection would stop every
		// relay, this one's next poll included, until the connection
		// closed: close it now (the pool drops a closed connection).
		_ = r.conn.Conn().Close(uctx)
		r.conn.Release()
	} else {
		giveBack(ctx, r.conn)
	}
	r.conn = nil
}

// sessionLost reports whether err, from a statement on conn, may have
// cost the session, and the session's locks with it: a closed connection,
// a failure with no answer from the server, or one the server ended the
// session with (FATAL, PANIC, as pg_terminate_backend does).
func sessionLost(conn *pgxpool.Conn, err error) bool {
	var pg *pgconn.PgError
	return conn.Conn().IsClosed() || !errors.As(err, &pg) || pg.Severity == "FATAL" || pg.Severity == "PANIC"
}

// settleCtx bounds what the relay writes without its context's
// cancellation (the outcomes of lanes, the lock given back), on every poll
// as at shutdown. What is left unrecorded is delivered again.
func settleCtx(ctx context.Context) (context.Context, context.CancelFunc) { return pgdb.Settle(ctx) }

// Wait waits for every lane under way, records what they did, and releases
// the lock. Run does it when it returns; a caller of Once must, after its
// last.
func (r *Relay) Wait(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// The lanes stop because the relay does: their failures are not the
	// events' (Run's context has ended; a caller of Once stops it too).
	if _, errs := r.record(ctx, r.collect(ctx, -1, nil), true); len(errs) > 0 {
		r.Log.Warn("outbox relay stopped", "error", telemetry.LogSafe(errors.Join(errs...)))
	}
	r.release(ctx)
}

func (r *Relay) batch() int {
	if r.Batch > 0 {
		return r.Batch
	}
	return 100
}

// start delivers a lane's events in a goroutine of its own.
func (r *Relay) start(ctx context.Context, l lane) {
	if r.busy == nil {
		r.busy = map[string]bool{}
		parallel := r.Parallel
		if parallel <= 0 {
			parallel = 16
		}
		r.sem = make(chan struct{}, parallel)
		r.wake = make(chan struct{}, 1)
	}
	r.busy[l.key] = true
	lctx, cancel := context.WithCancel(ctx)
	unhook := context.AfterFunc(r.lost, cancel)
	go func() {
		defer cancel()
		defer unhook()
		r.sem <- struct{}{}
		res := r.deliverLane(lctx, l.events)
		<-r.sem
		r.fmu.Lock()
		r.finished = append(r.finished, laneDone{key: l.key, res: res})
		r.fmu.Unlock()
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}()
}

// collect returns the lanes that finished, waiting up to linger for those
// in mine (the lanes this poll started; older slow ones are collected
// when they end, without holding up the poll): not at all for 0; for all
// lanes under way for a negative linger, or once ctx has ended (the lanes
// then stop at once, and what they delivered must be recorded).
func (r *Relay) collect(ctx context.Context, linger time.Duration, mine map[string]bool) []laneDone {
	var timeout <-chan time.Time
	if linger >= 0 {
		t := time.NewTimer(linger)
		defer t.Stop()
		timeout = t.C
	}
	var out []laneDone
	for {
		r.fmu.Lock()
		done := r.finished
		r.finished = nil
		r.fmu.Unlock()
		for _, d := range done {
			delete(r.busy, d.key)
		}
		out = append(out, done...)
		if len(r.busy) == 0 {
			return out
		}
		if ctx.Err() != nil || linger < 0 {
			<-r.wake
			continue
		}
		waiting := false
		for k := range mine {
			waiting = waiting || r.busy[k]
		}
		if !waiting {
			return out
		}
		select {
		case <-r.wake:
		case <-timeout:
			return out
		case <-ctx.Done():
		}
	}
}

// record marks what the finished lanes delivered, sets aside what could
// not decode, notes their failures and starts or ends their waits. What
// was delivered is recorded even if ctx ended meanwhile: an event left
// unmarked is delivered again. stopping says the lanes were cut short by
// the relay's shutdown: their failures are not counted against the events.
func (r *Relay) record(ctx context.Context, done []laneDone, stopping bool) (int, []error) {
	if len(done) == 0 {
		return 0, nil
	}
	rctx, cancel := settleCtx(ctx)
	defer cancel()
	var delivered []int64
	var errs []error
	n := 0
	for _, d := range done {
		res := d.res
		r.settle(d.key, res.failed != nil || res.left != nil, len(res.delivered) > 0, time.Now())
		if res.left != nil {
			r.Log.Info("outbox event left for a newer release's relay", "id", res.left.ID, "type", res.left.Type,
				"generation", res.left.Generation)
		}
		delivered = append(delivered, res.delivered...)
		n += len(res.delivered)
		for _, e := range res.setAside {
			// Retrying cannot help an event that does not decode; it must
			// not hold back its lane. It is set aside with its error for an
			// operator (delivered_at set, last_error says why).
			r.Log.Error("outbox event set aside", "id", e.ID, "type", e.Type, "consumer", string(r.Consumer), "error", telemetry.LogSafe(e.DecodeErr))
			// last_error is the dispatch's; another consumer marks only
			// its own column (the dispatch sets the same event aside).
			var err error
			if r.Consumer == Dispatch {
				_, err = r.conn.Exec(rctx, `UPDATE outbox SET delivered_at = now(), last_error = $2 WHERE id = $1`, e.ID, storable("set aside: "+e.DecodeErr.Error()))
			} else {
				_, err = r.conn.Exec(rctx, `UPDATE outbox SET `+r.Consumer.column()+` = now() WHERE id = $1`, e.ID)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("outbox relay: set aside %d: %w", e.ID, err))
				continue
			}
			n++
		}
		if res.failed != nil && stopping {
			continue // shutting down: no fault of the event's
		}
		if res.failed != nil {
			// The wait is kept with the event too, so that a replica that
			// takes the lock next does not try it at once. It doubles with
			// the consumer's attempts at the event, whichever replica made
			// them, up to storedWaitCap: a failure may be the replica's
			// own (Temporal out of its reach), and a healthy replica waits
			// on it too. The relay that failed waits on for its own,
			// longer wait (settle). last_error is the dispatch's: the
			// gauges and an operator read it as its.
			attempts, retryAt := r.Consumer.retry()
			set := attempts + ` = coalesce(` + attempts + `, 0) + 1, ` + retryAt + ` = now() + least($3 * interval '1 microsecond',
				$2 * power(2, least(coalesce(` + attempts + `, 0), 16)) * interval '1 microsecond')`
			args := []any{res.failed.ID, r.interval().Microseconds(), storedWaitCap.Microseconds()}
			if r.Consumer == Dispatch {
				set += `, last_error = $4`
				args = append(args, storable(res.err.Error()))
			}
			if _, err := r.conn.Exec(rctx, `UPDATE outbox SET `+set+` WHERE id = $1`, args...); err != nil {
				errs = append(errs, fmt.Errorf("outbox relay: record failure: %w", err))
			}
			errs = append(errs, fmt.Errorf("outbox relay: deliver %d (%s): %w", res.failed.ID, res.failed.Type, res.err))
		}
	}
	if len(delivered) > 0 {
		q := `UPDATE outbox SET delivered_at = now(), attempts = attempts + 1 WHERE id = ANY($1)`
		if r.Consumer != Dispatch {
			q = `UPDATE outbox SET ` + r.Consumer.column() + ` = now() WHERE id = ANY($1)`
		}
		if _, err := r.conn.Exec(rctx, q, delivered); err != nil {
			return 0, append(errs, fmt.Errorf("outbox relay: mark %d delivered: %w", len(delivered), err))
		}
	}
	return n, errs
}

// maxPages bounds how many batches a poll reads to find events of lanes
// that are not waiting.
const maxPages = 10

// pending reads batches of pending events, oldest first, until it has a
// batch of events whose lanes are not waiting, or maxPages batches, or
// all, and splits them into lanes, each oldest first; complete says it
// read all. Lane is asked once per event: ByFamily decodes the payload.
func (r *Relay) pending(ctx context.Context, conn *pgxpool.Conn, batch int, now time.Time) (lanes []lane, complete bool, err error) {
	index := map[string]int{}
	var after int64
	ready := 0
	for range maxPages {
		page, err := PendingFor(ctx, conn, r.Consumer, after, batch)
		if err != nil {
			return nil, false, err
		}
		complete = len(page) < batch
		for _, e := range page {
			var k string
			if r.Lane != nil {
				k = r.Lane(e)
			}
			i, ok := index[k]
			if !ok {
				i = len(lanes)
				index[k] = i
				lanes = append(lanes, lane{key: k})
			}
			lanes[i].events = append(lanes[i].events, e)
			if !r.waiting(k, now) && !r.held(lanes[i].events) {
				ready++
			}
		}
		// Without Lane one lane holds every event: reading on cannot find
		// another.
		if r.Lane == nil || len(page) < batch || ready >= batch {
			break
		}
		after = page[len(page)-1].ID
	}
	return lanes, complete, nil
}

// waiting reports whether lane k is under way or still waits after a
// failure.
func (r *Relay) waiting(k string, now time.Time) bool {
	if r.busy[k] {
		return true
	}
	b, ok := r.blocked[k]
	return ok && now.Before(b.until)
}

// lane is one lane's events in a poll, oldest first.
type lane struct {
	key    string
	events []Stored
}

// ready drops the lanes under way or still waiting after a failure, and
// forgets waits that are over for lanes with nothing pending. Only a read
// of every pending event (complete) shows that: a lane left out of a
// partial read still has its events, and forgotten, its next failure
// would wait the shortest time again instead of longer.
func (r *Relay) ready(lanes []lane, complete bool, now time.Time) []lane {
	present := map[string]bool{}
	out := lanes[:0]
	for _, l := range lanes {
		present[l.key] = true
		if r.waiting(l.key, now) || r.held(l.events) {
			continue
		}
		out = append(out, l)
	}
	for k, b := range r.blocked {
		if complete && !present[k] && !now.Before(b.until) {
			delete(r.blocked, k)
		}
	}
	return out
}

// storedWaitCap bounds the wait after a failure that every replica keeps
// (retry_at): a failing family is tried by the replicas together at most
// about this often, and a replica that cannot reach Temporal holds a
// healthy one back no longer.
const storedWaitCap = 10 * time.Second

// held reports whether the consumer waits before trying a lane's first
// event again: a wait after a failure, which this relay or another
// replica's recorded with it.
func (r *Relay) held(lane []Stored) bool {
	return len(lane) > 0 && lane[0].Held
}

// settle starts or lengthens a lane's wait after a failure (Interval,
// doubling, at most a minute) and ends it after a poll without one. A
// failure after the lane delivered something starts the wait afresh: the
// event that failed is not the one the count was of.
func (r *Relay) settle(key string, failed, progressed bool, now time.Time) {
	if !failed {
		delete(r.blocked, key)
		return
	}
	if r.blocked == nil {
		r.blocked = map[string]backoff{}
	}
	b := r.blocked[key]
	if progressed {
		b.failures = 0
	}
	b.failures++
	wait := r.interval() << min(b.failures-1, 16)
	if wait > time.Minute || wait <= 0 {
		wait = time.Minute
	}
	b.until = now.Add(wait)
	r.blocked[key] = b
}

// deliverLane delivers one lane's events in order until one fails.
func (r *Relay) deliverLane(ctx context.Context, lane []Stored) laneResult {
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	var res laneResult
	for _, e := range lane {
		if ctx.Err() != nil {
			return res // shutting down: the rest waits for the next run
		}
		// A newer release's event is left to it first, even one this
		// binary cannot decode: the newer one may.
		if e.Generation > Generation && r.leave(e.ID, time.Now()) {
			res.left = &e
			return res
		}
		if e.DecodeErr != nil {
			res.setAside = append(res.setAside, e)
			continue
		}
		// Only while the lock's session is surely the server's: a
		// delivery ends within the lease, and none starts once the
		// session has been silent a while (the rest waits for the next
		// holder). Relays with no lock (tests) are not held to it.
		var alive time.Time
		if a := r.alive.Load(); a != 0 {
			alive = monoEpoch.Add(time.Duration(a))
			if time.Since(alive) > r.fresh() {
				return res
			}
		}
		deadline := time.Now().Add(timeout)
		if !alive.IsZero() && alive.Add(lockLease).Before(deadline) {
			deadline = alive.Add(lockLease)
		}
		dctx, cancel := context.WithDeadline(e.Context(ctx), deadline)
		err := r.deliver(dctx, e)
		cancel()
		if err != nil {
			res.failed, res.err = &e, err
			return res
		}
		res.delivered = append(res.delivered, e.ID)
	}
	return res
}

// deliver is Deliver with a panic taken as its failure: the relay runs in
// the service's process, and one event that makes Deliver panic would
// otherwise bring the service down, on every replica in turn as each took
// the lock and met the same event. The event fails, and waits, as any
// failure does.
func (r *Relay) deliver(ctx context.Context, e Stored) (err error) {
	defer func() {
		if p := recover(); p != nil {
			r.Log.Error("outbox delivery panicked", "id", e.ID, "type", e.Type, "consumer", string(r.Consumer),
				"panic", fmt.Sprintf("%T", p), "stack", string(debug.Stack()))
			// A runtime error's text says what went wrong and quotes no
			// data; another panic's value might.
			if re, ok := p.(runtime.Error); ok {
				err = fmt.Errorf("outbox relay: delivery panicked: %w", re)
			} else {
				err = fmt.Errorf("outbox relay: delivery panicked (%T)", p)
			}
		}
	}()
	return r.Deliver(ctx, e)
}

// storable is an error's text as a text column takes it: PostgreSQL
// refuses a NUL and invalid UTF-8 (22021), which would fail the update
// that records the failure and its wait, and every replica would try the
// event again at once.
func storable(text string) string {
	return strings.ToValidUTF8(strings.ReplaceAll(text, "\x00", ""), "\uFFFD")
}

// leave reports whether the newer release's event id is still to be left
// for that release's relay at now: within the grace since this relay
// first left it.
func (r *Relay) leave(id int64, now time.Time) bool {
	grace := r.NewerGrace
	if grace <= 0 {
		grace = DefaultNewerGrace
	}
	r.fmu.Lock()
	defer r.fmu.Unlock()
	if r.leftSince == nil {
		r.leftSince = map[int64]leftAt{}
	}
	for k, l := range r.leftSince {
		if now.Sub(l.seen) > 2*grace {
			delete(r.leftSince, k) // not met for long: delivered since by another relay
		}
	}
	l, ok := r.leftSince[id]
	if !ok {
		l.first = now
	}
	// Seen now: an event past its grace but failing for another reason
	// keeps its entry, and is not given a new grace when it comes again.
	l.seen = now
	r.leftSince[id] = l
	return now.Sub(l.first) < grace
}

// leftAt is when a relay first left a newer release's event, and when it
// last met it.
type leftAt struct{ first, seen time.Time }

// observe reports how far delivery lags: events waiting and the age of the
// oldest, per schema, on each metrics scrape.
func (r *Relay) observe() {
	m := otel.Meter("github.com/handoff-health/handoff/services/outbox")
	pending, err1 := m.Int64ObservableGauge("handoff.outbox.pending", metric.WithDescription("outbox events not delivered yet"))
	age, err2 := m.Float64ObservableGauge("handoff.outbox.oldest_pending_age", metric.WithUnit("s"),
		metric.WithDescription("age of the oldest undelivered outbox event"))
	if err1 != nil || err2 != nil {
		return
	}
	_, _ = m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		ctx = pgdb.WithClinic(ctx, pgdb.SystemScope)
		var n int64
		var oldest float64
		if err := r.DB.QueryRow(ctx, `SELECT count(*), coalesce(extract(epoch FROM now() - min(create_time)), 0)
			FROM outbox WHERE `+r.Consumer.column()+` IS NULL`).Scan(&n, &oldest); err != nil {
			return nil // a failed scrape of one gauge must not fail the rest
		}
		attrs := metric.WithAttributes(attribute.String("schema", r.DB.Pool.Config().ConnConfig.RuntimeParams["search_path"]),
			attribute.String("consumer", cmp.Or(string(r.Consumer), "dispatch")))
		o.ObserveInt64(pending, n, attrs)
		o.ObserveFloat64(age, oldest, attrs)
		return nil
	}, pending, age)
}
