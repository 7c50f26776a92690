package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/handoff-health/handoff/services/outbox"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

// relayFixture gives a schema with an outbox, the application's view of it,
// and a function that writes an event whose resource is v.
func relayFixture(t *testing.T) (*pgxpool.Pool, *pgdb.DB, func(v string)) {
	t.Helper()
	pool, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	write := func(v string) {
		ctx := context.Background()
		if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			return outbox.Write(ctx, tx, outbox.Event{Clinic: "north", Type: "t", Resource: v, Payload: wrapperspb.String(v)})
		}); err != nil {
			t.Fatal(err)
		}
	}
	return pool, pgtest.App(t, schema), write
}

// The relay delivers in order, stops at a failure so nothing overtakes it,
// resumes where it stopped, and sets aside an event that cannot decode.
func TestRelayDeliversInOrderAndSetsPoisonAside(t *testing.T) {
	pool, db, write := relayFixture(t)
	ctx := context.Background()
	write("a")
	if _, err := pool.Exec(ctx, `INSERT INTO outbox (clinic, event_type, resource, payload) VALUES ('north', 't', 'poison', '\\xff\\xff')`); err != nil {
		t.Fatal(err)
	}
	write("b")
	write("c")
	var got []string
	failOn := "c"
	// A failed lane waits Interval before its next try: a nanosecond here.
	r := &outbox.Relay{DB: db, Log: slog.New(slog.DiscardHandler), Interval: time.Nanosecond, Deliver: func(_ context.Context, e outbox.Stored) error {
		if e.Resource == failOn {
			return errors.New("temporal down")
		}
		got = append(got, e.Resource)
		return nil
	}}
	if _, err := r.Once(ctx); err == nil {
		t.Fatal("a failed delivery must be reported")
	}
	if len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Fatalf("delivered %v, want [a b]", got)
	}
	failOn = ""
	if n, err := r.Once(ctx); err != nil || n != 1 || got[2] != "c" {
		t.Fatalf("resume: %d, %v, %v", n, err, got)
	}
	var pending int
	var aside string
	if err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE delivered_at IS NULL), max(last_error) FILTER (WHERE resource = 'poison') FROM outbox`).Scan(&pending, &aside); err != nil {
		t.Fatal(err)
	}
	if pending != 0 || aside == "" {
		t.Fatalf("pending %d, poison note %q", pending, aside)
	}
}

// Lanes deliver side by side, each in order: a delivery that hangs holds
// back its own lane only, and not the poll either: the poll returns with
// the other lanes' work recorded while it hangs, later polls leave its
// lane alone while it is under way, and one collects its failure at the
// relay's timeout. It is retried first in its lane after that.
func TestRelayLanesDeliverApartAndInOrder(t *testing.T) {
	pool, db, write := relayFixture(t)
	ctx := context.Background()
	for _, v := range []string{"a1", "b1", "a2", "b2", "a3"} {
		write(v)
	}
	var mu sync.Mutex
	got := map[string][]string{}
	tries := map[string]int{}
	bStarted := make(chan struct{})
	var hang atomic.Bool
	hang.Store(true)
	// Linger is long enough that a poll which waited for lane b (wrongly)
	// is told apart from a correct one on a loaded machine.
	// b1's Timeout is far beyond both the Linger and the bounds below:
	// the second poll must come before b1 fails, on a busy machine too.
	r := &outbox.Relay{DB: db, Log: slog.New(slog.DiscardHandler), Timeout: 8 * time.Second, Interval: time.Nanosecond,
		Linger: 1500 * time.Millisecond,
		Lane:   func(e outbox.Stored) string { return e.Resource[:1] },
		Deliver: func(ctx context.Context, e outbox.Stored) error {
			mu.Lock()
			tries[e.Resource]++
			mu.Unlock()
			switch e.Resource {
			case "a1":
				// Lane a goes only once lane b is under way: one lane at a
				// time would wait here until a1's own timeout.
				select {
				case <-bStarted:
				case <-ctx.Done():
					return ctx.Err()
				}
			case "b1":
				if hang.Load() {
					close(bStarted)
					<-ctx.Done() // a workflow that never takes its update
					return ctx.Err()
				}
			}
			mu.Lock()
			got[e.Resource[:1]] = append(got[e.Resource[:1]], e.Resource)
			mu.Unlock()
			return nil
		}}
	defer r.Wait(ctx)
	state := func(resource string) (delivered bool, attempts int, lastError string) {
		if err := pool.QueryRow(ctx, `SELECT delivered_at IS NOT NULL, attempts, coalesce(last_error, '') FROM outbox WHERE resource = $1`,
			resource).Scan(&delivered, &attempts, &lastError); err != nil {
			t.Fatal(err)
		}
		return
	}
	began := time.Now()
	n, err := r.Once(ctx)
	if err != nil || n != 3 || time.Since(began) > 5*time.Second {
		t.Fatalf("first poll: %d, %v after %v; want lane a's 3 recorded at once, lane b still under way", n, err, time.Since(began))
	}
	mu.Lock()
	if !slices.Equal(got["a"], []string{"a1", "a2", "a3"}) || len(got["b"]) != 0 {
		t.Fatalf("first poll delivered %v; want a1 a2 a3 and nothing of lane b", got)
	}
	mu.Unlock()
	if d, a, _ := state("a3"); !d || a != 1 {
		t.Fatalf("a3: delivered %v, attempts %d; want it recorded by the first poll", d, a)
	}
	// Polls while b1 hangs: lane b is not started again beside itself, and
	// a poll waits only for the lanes it started, not for b.
	write("a4")
	began = time.Now()
	if n, err := r.Once(ctx); err != nil || n != 1 || time.Since(began) >= 4*time.Second {
		t.Fatalf("poll while b1 hangs: %d, %v after %v; want a4, at once", n, err, time.Since(began))
	}
	var failed error
	for deadline := time.Now().Add(15 * time.Second); failed == nil && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		_, failed = r.Once(ctx)
	}
	if !errors.Is(failed, context.DeadlineExceeded) {
		t.Fatalf("the hanging delivery must fail at the timeout, got %v", failed)
	}
	mu.Lock()
	if tries["b1"] != 1 || tries["b2"] != 0 {
		t.Fatalf("tries %v: b1 once, b2 not before b1", tries)
	}
	mu.Unlock()
	if d, a, le := state("b1"); d || a != 1 || le == "" {
		t.Fatalf("b1: delivered %v, attempts %d, error %q; want undelivered, one attempt, its error", d, a, le)
	}
	if d, a, _ := state("b2"); d || a != 0 {
		t.Fatalf("b2 must wait behind b1: delivered %v, attempts %d", d, a)
	}
	hang.Store(false)
	if n, err := r.Once(ctx); err != nil || n != 2 {
		t.Fatalf("retry: %d, %v; want b1 then b2", n, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(got["b"], []string{"b1", "b2"}) {
		t.Fatalf("lane b delivered %v; want b1 then b2", got["b"])
	}
}

// A lane that failed sits out the polls until its wait is over, so a relay
// polling again at once for the other lanes does not hammer it.
func TestRelayFailedLaneWaits(t *testing.T) {
	_, db, write := relayFixture(t)
	ctx := context.Background()
	write("a1")
	write("b1")
	var mu sync.Mutex
	tries := map[string]int{}
	r := &outbox.Relay{DB: db, Log: slog.New(slog.DiscardHandler), Interval: time.Hour,
		Lane: func(e outbox.Stored) string { return e.Resource[:1] },
		Deliver: func(_ context.Context, e outbox.Stored) error {
			mu.Lock()
			defer mu.Unlock()
			tries[e.Resource]++
			if e.Resource[:1] == "a" {
				return errors.New("temporal down")
			}
			return nil
		}}
	if n, err := r.Once(ctx); err == nil || n != 1 {
		t.Fatalf("first poll: %d, %v; want b1 delivered and a1's failure", n, err)
	}
	write("b2")
	if n, err := r.Once(ctx); err != nil || n != 1 {
		t.Fatalf("second poll: %d, %v; want b2 delivered and lane a left alone", n, err)
	}
	if tries["a1"] != 1 || tries["b1"] != 1 || tries["b2"] != 1 {
		t.Fatalf("tries %v: lane a must not be tried again before its wait is over", tries)
	}
}

// A delivery that panics is that event's failure, not the process's: the
// other lanes are delivered, and the event's failure and wait are recorded
// as any other's. So is a failure whose text a text column would refuse
// (a NUL, invalid UTF-8), which would otherwise leave no wait behind.
func TestRelayTakesAPanicAsAFailure(t *testing.T) {
	pool, db, write := relayFixture(t)
	ctx := context.Background()
	write("a1")
	write("b1")
	write("c1")
	var mu sync.Mutex
	var got []string
	r := &outbox.Relay{DB: db, Log: slog.New(slog.DiscardHandler), Interval: time.Hour,
		Lane: func(e outbox.Stored) string { return e.Resource[:1] },
		Deliver: func(_ context.Context, e outbox.Stored) error {
			switch e.Resource {
			case "a1":
				var m map[string]int
				m["boom"]++ // a nil map: a runtime panic
			case "c1":
				return errors.New("refused: \x00\xff")
			}
			mu.Lock()
			defer mu.Unlock()
			got = append(got, e.Resource)
			return nil
		}}
	n, err := r.Once(ctx)
	r.Wait(ctx)
	if n != 1 || err == nil || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("Once = %d, %v; want b1 delivered and a1's panic as its failure", n, err)
	}
	if !slices.Equal(got, []string{"b1"}) {
		t.Fatalf("delivered %v; want b1", got)
	}
	rows, err := pool.Query(ctx, `SELECT resource, attempts, retry_at IS NOT NULL, last_error FROM outbox WHERE resource IN ('a1', 'c1') ORDER BY resource`)
	if err != nil {
		t.Fatal(err)
	}
	type failed struct {
		Resource  string
		Attempts  int
		Waits     bool
		LastError string
	}
	fs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[failed])
	if err != nil {
		t.Fatal(err)
	}
	if len(fs) != 2 {
		t.Fatalf("failed events %+v", fs)
	}
	for _, f := range fs {
		if f.Attempts != 1 || !f.Waits || f.LastError == "" {
			t.Errorf("%s after its failure: %+v; want one attempt, a wait and the error recorded", f.Resource, f)
		}
	}
	if !strings.Contains(fs[0].LastError, "assignment to entry in nil map") {
		t.Errorf("a1's recorded error %q; want the runtime error's text", fs[0].LastError)
	}
}

// A lane's wait after a failure holds for every replica: it is kept with
// the event, so a relay that takes the lock next and never saw the
// failure does not try the event again at once; and it doubles with the
// event's attempts, whoever made them.
func TestRelayFailedLaneWaitsAcrossReplicas(t *testing.T) {
	failedLaneWaitsAcrossReplicas(t, outbox.Dispatch, "attempts", "retry_at")
}

// The same for the webhook sink, which keeps its own count and wait: its
// failures (the webhooks database down) are not the dispatch's.
func TestSinkFailedLaneWaitsAcrossReplicas(t *testing.T) {
	failedLaneWaitsAcrossReplicas(t, outbox.Sink, "sink_attempts", "sink_retry_at")
}

func failedLaneWaitsAcrossReplicas(t *testing.T, consumer outbox.Consumer, attempts, retryAt string) {
	pool, db, write := relayFixture(t)
	ctx := context.Background()
	write("a1")
	write("b1")
	var mu sync.Mutex
	tries := map[string]int{}
	var down atomic.Bool
	down.Store(true)
	replica := func() *outbox.Relay {
		// An Interval far longer than the polls below take on a busy
		// machine: the first wait.
		return &outbox.Relay{DB: db, Log: slog.New(slog.DiscardHandler), Interval: 2 * time.Second, Consumer: consumer,
			Lane: func(e outbox.Stored) string { return e.Resource[:1] },
			Deliver: func(_ context.Context, e outbox.Stored) error {
				mu.Lock()
				defer mu.Unlock()
				tries[e.Resource]++
				if e.Resource[:1] == "a" && down.Load() {
					return errors.New("temporal down")
				}
				return nil
			}}
	}
	one, two := replica(), replica()
	defer one.Wait(ctx)
	defer two.Wait(ctx)
	if n, err := one.Once(ctx); err == nil || n != 1 {
		t.Fatalf("first poll: %d, %v; want b1 delivered and a1's failure", n, err)
	}
	write("b2")
	if n, err := two.Once(ctx); err != nil || n != 1 {
		t.Fatalf("the other replica's poll during the wait: %d, %v; want b2, and lane a left alone", n, err)
	}
	mu.Lock()
	if tries["a1"] != 1 {
		t.Fatalf("tries %v: lane a tried again within its wait", tries)
	}
	mu.Unlock()
	var wait time.Duration
	if err := pool.QueryRow(ctx, `SELECT `+retryAt+` - now() FROM outbox WHERE resource = 'a1'`).Scan(&wait); err != nil || wait <= 0 || wait > 2*time.Second {
		t.Fatalf("a1 waits %v, %v; want at most the Interval", wait, err)
	}
	time.Sleep(wait + 100*time.Millisecond)
	// A second failure, by the other replica, waits twice as long.
	if n, err := two.Once(ctx); err == nil || n != 0 {
		t.Fatalf("past the wait: %d, %v; want a1 tried and failed again", n, err)
	}
	if err := pool.QueryRow(ctx, `SELECT `+retryAt+` - now() FROM outbox WHERE resource = 'a1'`).Scan(&wait); err != nil || wait <= 2*time.Second {
		t.Fatalf("after the second failure a1 waits %v, %v; want more than the first wait", wait, err)
	}
	// However many tries failed, the wait every replica keeps is at most
	// ten seconds: a failure may be the replica's own.
	if _, err := pool.Exec(ctx, `UPDATE outbox SET `+attempts+` = 20, `+retryAt+` = now() WHERE resource = 'a1'`); err != nil {
		t.Fatal(err)
	}
	three := replica() // with no wait of its own
	defer three.Wait(ctx)
	if n, err := three.Once(ctx); err == nil || n != 0 {
		t.Fatalf("after many failures: %d, %v; want a1 tried and failed again", n, err)
	}
	if err := pool.QueryRow(ctx, `SELECT `+retryAt+` - now() FROM outbox WHERE resource = 'a1'`).Scan(&wait); err != nil || wait > 10*time.Second || wait < 9*time.Second {
		t.Fatalf("after many failures a1 waits %v, %v; want ten seconds", wait, err)
	}
	down.Store(false)
	if _, err := pool.Exec(ctx, `UPDATE outbox SET `+retryAt+` = now() WHERE resource = 'a1'`); err != nil {
		t.Fatal(err)
	}
	if n, err := one.Once(ctx); err != nil || n != 1 {
		t.Fatalf("its wait over: %d, %v; want a1", n, err)
	}
}

// A poll reads past the events of a waiting lane, so that a family with a
// whole batch waiting behind a failure does not stop the others.
func TestRelayReadsPastAWaitingLane(t *testing.T) {
	_, db, write := relayFixture(t)
	ctx := context.Background()
	for _, v := range []string{"a1", "a2", "a3", "b1"} {
		write(v)
	}
	var mu sync.Mutex
	var got []string
	r := &outbox.Relay{DB: db, Log: slog.New(slog.DiscardHandler), Interval: time.Hour, Batch: 2,
		Lane: func(e outbox.Stored) string { return e.Resource[:1] },
		Deliver: func(_ context.Context, e outbox.Stored) error {
			if e.Resource[:1] == "a" {
				return errors.New("temporal down")
			}
			mu.Lock()
			defer mu.Unlock()
			got = append(got, e.Resource)
			return nil
		}}
	// The first batch is a1 and a2: lane a fails and waits.
	if n, err := r.Once(ctx); err == nil || n != 0 {
		t.Fatalf("first poll: %d, %v; want a1's failure", n, err)
	}
	// The oldest batch is still all lane a's; the poll reads on to b1.
	if n, err := r.Once(ctx); err != nil || n != 1 || !slices.Equal(got, []string{"b1"}) {
		t.Fatalf("second poll: %d, %v, delivered %v; want b1", n, err, got)
	}
}

// Pending decodes each payload once for every consumer: the message it
// hands over is the same one each time it is asked, and a payload of a
// type this binary does not know is no decode error (its resource still
// counts), only a message error.
func TestPendingDecodesThePayloadOnce(t *testing.T) {
	pool, _, write := relayFixture(t)
	ctx := context.Background()
	write("a1")
	unknown, err := proto.Marshal(&anypb.Any{TypeUrl: "type.googleapis.com/nope.Nope", Value: []byte{1}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO outbox (clinic, event_type, resource, payload) VALUES ('north', 't', 'clinics/north/families/f1/x/1', $1)`, unknown); err != nil {
		t.Fatal(err)
	}
	events, err := outbox.PendingFor(ctx, pool, outbox.Dispatch, 0, 10)
	if err != nil || len(events) != 2 {
		t.Fatalf("pending: %d events, %v", len(events), err)
	}
	// Each carries when its change was written, for the notifications
	// that announce it.
	if c := events[0].Created; c.IsZero() || time.Since(c) > time.Minute || time.Since(c) < 0 {
		t.Fatalf("event created %v, want just now", c)
	}
	m1, err1 := events[0].Message()
	m2, err2 := events[0].Message()
	if err1 != nil || err2 != nil || m1 != m2 {
		t.Fatalf("Message twice: %p %v, %p %v; want one decoded message", m1, err1, m2, err2)
	}
	if s, ok := m1.(*wrapperspb.StringValue); !ok || s.GetValue() != "a1" {
		t.Fatalf("message %v, want the string a1", m1)
	}
	odd := events[1]
	if _, err := odd.Message(); odd.DecodeErr != nil || err == nil {
		t.Fatalf("unknown type: decode error %v, message error %v; want only a message error", odd.DecodeErr, err)
	}
	if lane := outbox.ByFamily(odd); lane != "clinics/north/families/f1" {
		t.Fatalf("unknown type's lane %q, want its family", lane)
	}
	// An event made by hand, not read back, is decoded when asked.
	a, err := anypb.New(wrapperspb.String("b"))
	if err != nil {
		t.Fatal(err)
	}
	if m, err := (outbox.Stored{Payload: a}).Message(); err != nil || m.(*wrapperspb.StringValue).GetValue() != "b" {
		t.Fatalf("hand-made event: %v, %v", m, err)
	}
}

// A payload of a type the binary knows whose bytes do not decode is set
// aside like one whose envelope does not: no try can deliver it, and its
// family's later events must not wait on it.
func TestKnownTypeThatDoesNotDecodeIsSetAside(t *testing.T) {
	pool, db, write := relayFixture(t)
	ctx := context.Background()
	bad, err := proto.Marshal(&anypb.Any{TypeUrl: "type.googleapis.com/google.protobuf.StringValue", Value: []byte{0x0a, 0x05, 'a'}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO outbox (clinic, event_type, resource, payload) VALUES ('north', 't', 'lane', $1)`, bad); err != nil {
		t.Fatal(err)
	}
	write("lane")
	var got []string
	r := &outbox.Relay{DB: db, Log: slog.New(slog.DiscardHandler), Interval: time.Nanosecond,
		Lane: func(e outbox.Stored) string { return e.Resource },
		Deliver: func(_ context.Context, e outbox.Stored) error {
			if _, err := e.Message(); err != nil {
				return err
			}
			got = append(got, e.Resource)
			return nil
		}}
	if n, err := r.Once(ctx); err != nil || n != 2 || len(got) != 1 {
		t.Fatalf("poll: %d, %v, delivered %v; want the bad event set aside and the next delivered", n, err, got)
	}
	var reason string
	if err := pool.QueryRow(ctx, `SELECT last_error FROM outbox WHERE payload = $1 AND delivered_at IS NOT NULL`, bad).Scan(&reason); err != nil ||
		!strings.Contains(reason, "set aside") {
		t.Fatalf("the bad event: %q, %v; want it set aside", reason, err)
	}
}

// Delivered events and request ids past their retention are deleted; an
// event not delivered yet stays, however old, and so do recent ones.
func TestRelayForgetsWhatIsPastItsRetention(t *testing.T) {
	pool, db, write := relayFixture(t)
	ctx := context.Background()
	for _, v := range []string{"old-delivered", "new-delivered", "old-pending"} {
		write(v)
	}
	if _, err := pool.Exec(ctx, `UPDATE outbox SET delivered_at = now() - interval '8 days' WHERE resource = 'old-delivered';
		UPDATE outbox SET delivered_at = now() - interval '1 day' WHERE resource = 'new-delivered';
		UPDATE outbox SET create_time = now() - interval '40 days' WHERE resource = 'old-pending';
		INSERT INTO idempotency_keys (clinic, request_id, method, request_hash, create_time) VALUES
			('north', 'old', 'm', '\x00', now() - interval '31 days'), ('north', 'new', 'm', '\x00', now() - interval '29 days')`); err != nil {
		t.Fatal(err)
	}
	var delivered []string
	r := &outbox.Relay{DB: db, Log: slog.New(slog.DiscardHandler), Deliver: func(_ context.Context, e outbox.Stored) error {
		delivered = append(delivered, e.Resource)
		return errors.New("receiver down") // the pending event stays pending
	}}
	if _, err := r.Once(ctx); err == nil {
		t.Fatal("the failed delivery was not reported")
	}
	var events, keys []string
	rows, _ := pool.Query(ctx, `SELECT resource FROM outbox ORDER BY id`)
	events, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	rows, _ = pool.Query(ctx, `SELECT request_id FROM idempotency_keys ORDER BY request_id`)
	if keys, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(events) != "[new-delivered old-pending]" || fmt.Sprint(keys) != "[new]" || fmt.Sprint(delivered) != "[old-pending]" {
		t.Fatalf("kept events %v and request ids %v (delivered %v); want [new-delivered old-pending] and [new]", events, keys, delivered)
	}
}

// A delivery cut short because the relay stops is no fault of its event:
// it is not counted as a failed attempt, and it is delivered again later.
func TestRelayStoppingIsNoFailure(t *testing.T) {
	pool, db, write := relayFixture(t)
	write("a1")
	started := make(chan struct{})
	r := &outbox.Relay{DB: db, Log: slog.New(slog.DiscardHandler), Linger: time.Millisecond,
		Deliver: func(ctx context.Context, e outbox.Stored) error {
			close(started)
			<-ctx.Done() // a workflow slow to take its update
			return ctx.Err()
		}}
	// The poll leaves the slow delivery running; the relay then stops
	// between polls, as Run does when its context ends there.
	ctx, cancel := context.WithCancel(context.Background())
	if _, err := r.Once(ctx); err != nil {
		t.Fatal(err)
	}
	<-started
	cancel()
	r.Wait(context.Background())
	var attempts int
	var lastError *string
	if err := pool.QueryRow(context.Background(), `SELECT attempts, last_error FROM outbox WHERE resource = 'a1'`).Scan(&attempts, &lastError); err != nil {
		t.Fatal(err)
	}
	if attempts != 0 || lastError != nil {
		t.Fatalf("a delivery cut short by the relay's stop: %d attempts, error %v; want none", attempts, lastError != nil)
	}
}

// The relay gives its connection back without its every-clinic scope: the
// next user of the connection must not inherit it.
func TestRelayLeavesNoScopeOnThePool(t *testing.T) {
	_, db, write := relayFixture(t)
	ctx := context.Background()
	write("a")
	r := &outbox.Relay{DB: db, Log: slog.New(slog.DiscardHandler), Deliver: func(context.Context, outbox.Stored) error { return nil }}
	if n, err := r.Once(ctx); err != nil || n != 1 {
		t.Fatalf("Once = %d, %v", n, err)
	}
	r.Wait(ctx)
	conns := db.Pool.AcquireAllIdle(ctx)
	if len(conns) == 0 {
		t.Fatal("no idle connection to look at")
	}
	for _, c := range conns {
		var scope string
		err := c.QueryRow(ctx, `SELECT coalesce(current_setting('handoff.clinic', true), '')`).Scan(&scope)
		c.Release()
		if err != nil || scope == pgdb.SystemScope {
			t.Fatalf("an idle connection after the relay has clinic scope %q (%v)", scope, err)
		}
	}
}

// An event a newer release wrote is left, for a while, to that release's
// relay: this one would pass over, as delivered, what it does not know.
// Its lane waits behind it without counting a failure, other lanes go on,
// and past the grace (the newer release was rolled back) it is delivered,
// in order.
func TestRelayLeavesANewerReleasesEventsToIt(t *testing.T) {
	pool, db, write := relayFixture(t)
	ctx := context.Background()
	write("a1")
	write("b1")
	write("a2")
	if _, err := pool.Exec(ctx, `UPDATE outbox SET generation = $1 WHERE resource = 'a1'`, outbox.Generation+1); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []string
	r := &outbox.Relay{DB: db, Log: slog.New(slog.DiscardHandler), Interval: time.Nanosecond, NewerGrace: 5 * time.Second,
		Lane: func(e outbox.Stored) string { return e.Resource[:1] },
		Deliver: func(_ context.Context, e outbox.Stored) error {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, e.Resource)
			return nil
		}}
	if n, err := r.Once(ctx); err != nil || n != 1 || !slices.Equal(got, []string{"b1"}) {
		t.Fatalf("first poll: %d, %v, delivered %v; want b1 alone, and no failure", n, err, got)
	}
	var attempts int
	if err := pool.QueryRow(ctx, `SELECT coalesce(sum(attempts), 0) FROM outbox WHERE delivered_at IS NULL`).Scan(&attempts); err != nil || attempts != 0 {
		t.Fatalf("attempts on the events left: %d, %v; want none", attempts, err)
	}
	// An event long written is still left for the grace, which counts
	// from when this relay first left it.
	if _, err := pool.Exec(ctx, `UPDATE outbox SET create_time = now() - interval '1 hour' WHERE resource = 'a1'`); err != nil {
		t.Fatal(err)
	}
	if n, err := r.Once(ctx); err != nil || n != 0 || len(got) != 1 {
		t.Fatalf("an old event within the grace: %d, %v, delivered %v; want it still left", n, err, got)
	}
	time.Sleep(5100 * time.Millisecond)
	if n, err := r.Once(ctx); err != nil || n != 2 || !slices.Equal(got, []string{"b1", "a1", "a2"}) {
		t.Fatalf("past the grace: %d, %v, delivered %v; want a1 then a2", n, err, got)
	}
}

// A newer release's event that this binary cannot decode is left to that
// release for the grace, as any of its events, not set aside for good.
func TestNewerReleasesUndecodableEventIsLeftToIt(t *testing.T) {
	pool, db, _ := relayFixture(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `INSERT INTO outbox (clinic, event_type, resource, payload, generation) VALUES ('north', 't', 'a', '\xffff', $1)`,
		outbox.Generation+1); err != nil {
		t.Fatal(err)
	}
	r := &outbox.Relay{DB: db, Log: slog.New(slog.DiscardHandler), Interval: time.Nanosecond, NewerGrace: time.Hour,
		Deliver: func(context.Context, outbox.Stored) error { return nil }}
	if n, err := r.Once(ctx); err != nil || n != 0 {
		t.Fatalf("poll: %d, %v; want nothing done", n, err)
	}
	var left bool
	if err := pool.QueryRow(ctx, `SELECT delivered_at IS NULL FROM outbox WHERE resource = 'a'`).Scan(&left); err != nil || !left {
		t.Fatalf("the newer release's event: left %v, %v; want it left, not set aside", left, err)
	}
}

// The dispatch and the sink each read the outbox at their own pace: with
// the dispatch failing (Temporal away), the sink still takes every event,
// in order, and marks only its own column; the dispatch's failures are
// its own to count. Both relays run side by side, each under its lock.
func TestConsumersGoAtTheirOwnPace(t *testing.T) {
	pool, db, write := relayFixture(t)
	ctx := context.Background()
	for _, v := range []string{"a", "b", "c"} {
		write(v)
	}
	quiet := slog.New(slog.DiscardHandler)
	dispatch := &outbox.Relay{DB: db, Log: quiet, Interval: time.Nanosecond, AwaitSink: true,
		Deliver: func(context.Context, outbox.Stored) error { return errors.New("temporal away") }}
	var sunk []string
	sink := &outbox.Relay{DB: db, Log: quiet, Consumer: outbox.Sink, Deliver: func(_ context.Context, e outbox.Stored) error {
		sunk = append(sunk, e.Resource)
		return nil
	}}
	if _, err := dispatch.Once(ctx); err == nil {
		t.Fatal("the dispatch's failure was not reported")
	}
	if n, err := sink.Once(ctx); err != nil || n != 3 || fmt.Sprint(sunk) != "[a b c]" {
		t.Fatalf("sink while the dispatch fails: %d, %v, %v; want [a b c]", n, err, sunk)
	}
	var dispatched, sinkPending, attempts int
	if err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE delivered_at IS NOT NULL), count(*) FILTER (WHERE sink_delivered_at IS NULL),
		coalesce(sum(attempts), 0) FROM outbox`).Scan(&dispatched, &sinkPending, &attempts); err != nil {
		t.Fatal(err)
	}
	if dispatched != 0 || sinkPending != 0 || attempts != 1 {
		t.Fatalf("after the sink: %d dispatched, %d pending for the sink, %d attempts; want 0, 0 and the dispatch's one", dispatched, sinkPending, attempts)
	}
	if n, err := sink.Once(ctx); err != nil || n != 0 {
		t.Fatalf("the sink again: %d, %v; want nothing twice", n, err)
	}
}

// With a sink consumer, an event the dispatch delivered long ago is kept
// while the sink has not taken it: pruning it would lose its
// notifications.
func TestRetentionAwaitsTheSink(t *testing.T) {
	pool, db, write := relayFixture(t)
	ctx := context.Background()
	for _, v := range []string{"both-old", "dispatch-only-old"} {
		write(v)
	}
	if _, err := pool.Exec(ctx, `UPDATE outbox SET delivered_at = now() - interval '8 days';
		UPDATE outbox SET sink_delivered_at = now() - interval '8 days' WHERE resource = 'both-old'`); err != nil {
		t.Fatal(err)
	}
	r := &outbox.Relay{DB: db, Log: slog.New(slog.DiscardHandler), AwaitSink: true, Deliver: func(context.Context, outbox.Stored) error { return nil }}
	if _, err := r.Once(ctx); err != nil {
		t.Fatal(err)
	}
	rows, _ := pool.Query(ctx, `SELECT resource FROM outbox ORDER BY id`)
	kept, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || fmt.Sprint(kept) != "[dispatch-only-old]" {
		t.Fatalf("kept %v, %v; want [dispatch-only-old], which the sink has not taken", kept, err)
	}
}

// A consumer other than the two known is a programming error, refused at
// once: it would mark the dispatch's column under a lock of its own.
func TestUnknownConsumerIsRefused(t *testing.T) {
	pool, _, _ := relayFixture(t)
	defer func() {
		if recover() == nil {
			t.Fatal("an unknown consumer read the outbox")
		}
	}()
	_, _ = outbox.PendingFor(context.Background(), pool, outbox.Consumer("audit"), 0, 10)
}
