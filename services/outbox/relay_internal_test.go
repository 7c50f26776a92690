package outbox

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

// A failing lane's wait grows with each failure, also when a poll that
// read only part of the pending events left the lane out: its events are
// still there, and its next failure must wait longer, not the shortest
// time again. A poll that read everything and did not find the lane
// forgets it.
func TestLaneOutsideAPartialReadKeepsItsBackoff(t *testing.T) {
	r := &Relay{Interval: time.Second}
	t0 := time.Unix(1_000_000, 0)
	r.settle("a", true, false, t0)
	r.settle("a", true, false, t0.Add(time.Second)) // waits 2s, until t0+3s
	later := t0.Add(10 * time.Second)               // the wait is over
	others := []lane{{key: "b"}}
	if got := r.ready(others, false, later); len(got) != 1 {
		t.Fatalf("ready = %v; want lane b", got)
	}
	if b, ok := r.blocked["a"]; !ok || b.failures != 2 {
		t.Fatalf("after a partial read without lane a: %+v, %v; want its 2 failures kept", b, ok)
	}
	r.settle("a", true, false, later)
	if wait := r.blocked["a"].until.Sub(later); wait != 4*time.Second {
		t.Fatalf("the third failure waits %v; want 4s", wait)
	}
	// A try that delivered the event failing so far, and failed on the
	// next, waits the shortest time: the count was of the other event.
	next := later.Add(5 * time.Second)
	r.settle("a", true, true, next)
	if b := r.blocked["a"]; b.failures != 1 || b.until.Sub(next) != time.Second {
		t.Fatalf("a failure after progress: %+v; want one failure, a wait of 1s", b)
	}
	r.ready(others, true, later.Add(time.Minute))
	if _, ok := r.blocked["a"]; ok {
		t.Fatal("a complete read without lane a, its wait over, kept it")
	}
}

// A relay whose session dies (and its lock with it) while a lane is under
// way stops that lane at its next poll: another replica may take the lock
// and deliver the same lane, and the two must not deliver it side by
// side, out of order.
func TestLanesStopWhenTheLockMayBeLost(t *testing.T) {
	pool, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	db := pgtest.App(t, schema)
	ctx := context.Background()
	for _, v := range []string{"a1", "a2"} {
		if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			return Write(ctx, tx, Event{Clinic: "north", Type: "t", Resource: v, Payload: wrapperspb.String(v)})
		}); err != nil {
			t.Fatal(err)
		}
	}
	started, stopped := make(chan struct{}), make(chan error, 1)
	var mu sync.Mutex
	var delivered []string
	r := &Relay{DB: db, Log: slog.New(slog.DiscardHandler), Timeout: time.Minute, Linger: 10 * time.Millisecond,
		Lane: func(Stored) string { return "a" },
		Deliver: func(ctx context.Context, e Stored) error {
			if e.Resource == "a1" {
				select {
				case <-started:
				default:
					close(started)
					<-ctx.Done()
					stopped <- ctx.Err()
					return ctx.Err()
				}
			}
			mu.Lock()
			delivered = append(delivered, e.Resource)
			mu.Unlock()
			return nil
		}}
	defer r.Wait(ctx)
	if _, err := r.Once(ctx); err != nil {
		t.Fatal(err)
	}
	<-started
	if _, err := pool.Exec(ctx, `SELECT pg_terminate_backend($1)`, r.conn.Conn().PgConn().PID()); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Once(ctx); err == nil {
		t.Fatal("a poll on the dead session succeeded")
	}
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("the lane went on delivering after its relay's session died")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(delivered) != 0 {
		t.Fatalf("delivered %v after the session died; want nothing", delivered)
	}
}

// Only an error that may have cost the session stops the lanes: one the
// server answered on a live session (a statement that failed) leaves the
// lock held.
func TestSessionLostOnlyWhenItMayBe(t *testing.T) {
	pool, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	db := pgtest.App(t, schema)
	ctx := context.Background()
	conn, err := db.Pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	_, failed := conn.Exec(ctx, `SELECT 1/0`)
	if failed == nil || sessionLost(conn, failed) {
		t.Fatalf("a statement that failed on a live session (%v): lost %v; want false", failed, sessionLost(conn, failed))
	}
	if _, err := pool.Exec(ctx, `SELECT pg_terminate_backend($1)`, conn.Conn().PgConn().PID()); err != nil {
		t.Fatal(err)
	}
	_, ended := conn.Exec(ctx, `SELECT 1`)
	if ended == nil || !sessionLost(conn, ended) {
		t.Fatalf("after the session was ended (%v): lost %v; want true", ended, sessionLost(conn, ended))
	}
}

// The relay that holds the delivery lock asks the server to find its
// session gone within a minute, but not before 40 seconds of silence
// (longer than lockLease): the lock goes only with the session, and a
// holder whose host died would otherwise stop every replica's delivery
// for the system's keepalive time (two hours). Given back, the connection
// goes back to the server's defaults.
func TestLeaderSessionIsFoundGoneSoon(t *testing.T) {
	_, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	ctx := context.Background()
	r := &Relay{DB: pgtest.App(t, schema), Log: slog.New(slog.DiscardHandler)}
	conn, leader, err := r.lead(ctx)
	if err != nil || !leader {
		t.Fatalf("lead: %v, %v", leader, err)
	}
	var viaSocket bool
	if err := conn.QueryRow(ctx, `SELECT inet_client_addr() IS NULL`).Scan(&viaSocket); err != nil {
		t.Fatal(err)
	}
	if viaSocket {
		// Not skipped: what it checks matters in every deployment, and the
		// tests' database is reached over TCP (pgtest.DefaultURL, CI).
		t.Fatal("the test database is reached through a Unix socket, where TCP keepalives read as zero: " +
			"point HANDOFF_TEST_DATABASE_URL at a TCP address (127.0.0.1) to check them")
	}
	settings := func() map[string]string {
		out := map[string]string{}
		for _, name := range []string{"tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout"} {
			var got string
			if err := conn.QueryRow(ctx, `SELECT current_setting($1)`, name).Scan(&got); err != nil {
				t.Fatal(err)
			}
			out[name] = got
		}
		return out
	}
	if got, want := fmt.Sprint(settings()), fmt.Sprint(map[string]string{"tcp_keepalives_idle": "20", "tcp_keepalives_interval": "5",
		"tcp_keepalives_count": "4", "tcp_user_timeout": "45000"}); got != want {
		t.Errorf("the leader's session: %s; want %s", got, want)
	}
	if silent := 20*time.Second + 4*5*time.Second; silent <= lockLease {
		t.Errorf("the server keeps a silent session %v, no longer than the lease %v", silent, lockLease)
	}
	// Another replica's poll finds the lock held.
	if _, leader, err := r.lead(ctx); err != nil || leader {
		t.Fatalf("a second lead: %v, %v; want the lock held", leader, err)
	}
	pid := conn.Conn().PgConn().PID()
	giveBack(ctx, conn)
	// The pool's one idle connection: the one just given back.
	conn, err = r.DB.Pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if conn.Conn().PgConn().PID() != pid {
		t.Fatalf("the pool handed out session %d, not the one given back (%d)", conn.Conn().PgConn().PID(), pid)
	}
	if got := settings(); got["tcp_keepalives_idle"] == "20" || got["tcp_user_timeout"] != "0" {
		t.Errorf("a connection given back keeps the leader's settings: %v", got)
	}
}

// A holder whose lock's session has not been heard from lately starts no
// delivery, and one it starts ends within the lease: cut off from the
// database, it must have stopped before the server ends the session and
// another replica takes the lock and delivers the same lane.
func TestLaneStopsWhenTheLockMayHaveLapsed(t *testing.T) {
	var deadlines []time.Time
	r := &Relay{Timeout: time.Minute, Deliver: func(ctx context.Context, e Stored) error {
		d, _ := ctx.Deadline()
		deadlines = append(deadlines, d)
		return nil
	}}
	lane := []Stored{{ID: 1}, {ID: 2}}
	heard := time.Now().Add(-time.Second)
	r.alive.Store(int64(heard.Sub(monoEpoch)))
	if res := r.deliverLane(context.Background(), lane); len(res.delivered) != 2 || len(deadlines) != 2 ||
		!deadlines[0].Equal(heard.Add(lockLease)) {
		t.Fatalf("heard from a second ago: delivered %v, deadlines %v; want both, by %v", res.delivered, deadlines, heard.Add(lockLease))
	}
	deadlines = nil
	r.alive.Store(int64(time.Now().Add(-lockFresh - time.Second).Sub(monoEpoch)))
	if res := r.deliverLane(context.Background(), lane); len(res.delivered) != 0 || len(deadlines) != 0 || res.failed != nil {
		t.Fatalf("silent for %v: delivered %v, failed %v; want nothing tried", lockFresh+time.Second, res.delivered, res.failed)
	}
}
