package outbox_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/handoff-health/handoff/services/outbox"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

// The relay delivers in order, stops at a failure so nothing overtakes it,
// resumes where it stopped, and sets aside an event that cannot decode.
func TestRelayDeliversInOrderAndSetsPoisonAside(t *testing.T) {
	pool, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	db := pgtest.App(t, schema)
	ctx := context.Background()
	write := func(v string) {
		if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			return outbox.Write(ctx, tx, outbox.Event{Clinic: "north", Type: "t", Resource: v, Payload: wrapperspb.String(v)})
		}); err != nil {
			t.Fatal(err)
		}
	}
	write("a")
	if _, err := pool.Exec(ctx, `INSERT INTO outbox (clinic, event_type, resource, payload) VALUES ('north', 't', 'poison', '\\xff\\xff')`); err != nil {
		t.Fatal(err)
	}
	write("b")
	write("c")
	var got []string
	failOn := "c"
	r := &outbox.Relay{DB: db, Log: slog.New(slog.DiscardHandler), Deliver: func(_ context.Context, e outbox.Stored) error {
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
