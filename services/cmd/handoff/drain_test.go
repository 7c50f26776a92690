package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"
)

// A stop lets a request in flight finish within the drain, and one still
// running after it is cut off without making the stop an error (which
// would exit 1 on every rollout that met a slow call).
func TestStopDrainsThenClosesQuietly(t *testing.T) {
	if drainFor <= 15*time.Second {
		t.Fatalf("drain %v; it must outlast a gateway call (15 s)", drainFor)
	}
	for _, c := range []struct {
		name     string
		takes    time.Duration
		answered bool
	}{{"finishes within the drain", 100 * time.Millisecond, true}, {"outlasts the drain", 2 * time.Second, false}} {
		t.Run(c.name, func(t *testing.T) {
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			started := make(chan struct{})
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				close(started)
				select {
				case <-time.After(c.takes):
					_, _ = io.WriteString(w, "done")
				case <-r.Context().Done():
				}
			})
			ctx, stop := context.WithCancel(context.Background())
			served := make(chan error, 1)
			go func() { served <- serveOn(ctx, slog.New(slog.DiscardHandler), lis, h, 500*time.Millisecond) }()
			answer := make(chan error, 1)
			go func() {
				resp, err := http.Get("http://" + lis.Addr().String())
				if err == nil {
					_, err = io.ReadAll(resp.Body)
					resp.Body.Close()
				}
				answer <- err
			}()
			<-started
			stop()
			if err := <-served; err != nil {
				t.Fatalf("the stop returned %v; want nil", err)
			}
			if err := <-answer; (err == nil) != c.answered {
				t.Fatalf("the request's answer: %v; want answered %v", err, c.answered)
			}
		})
	}
}

// A server that fails before the stop signal ends the process: the parts
// beside it (the outbox relay, the sweeps) stop too, instead of keeping a
// process that answers nobody alive.
func TestServerFailureStopsTheParts(t *testing.T) {
	failed := errors.New("accept: listener gone")
	stopped := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- runWith(context.Background(), func(context.Context) error { return failed },
			func(ctx context.Context) { <-ctx.Done(); close(stopped) })
	}()
	select {
	case err := <-done:
		if !errors.Is(err, failed) {
			t.Fatalf("runWith = %v, want the server's error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("runWith still waits for its parts after the server failed")
	}
	select {
	case <-stopped:
	default:
		t.Fatal("runWith returned before its part stopped")
	}
}

// The gateway's own readiness turns at the stop signal, so the load
// balancer stops sending while it drains.
func TestGatewayNotReadyOnceStopping(t *testing.T) {
	ctx, stop := context.WithCancel(context.Background())
	ready := upUntil(ctx)
	if err := ready(context.Background()); err != nil {
		t.Fatalf("before the stop: %v", err)
	}
	stop()
	if err := ready(context.Background()); err == nil {
		t.Fatal("ready after the stop signal")
	}
}
