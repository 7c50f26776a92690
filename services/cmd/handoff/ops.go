package main

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/handoff-health/handoff/services/telemetry"
)

// ops is what a process serves on its plaintext metrics address
// (HANDOFF_METRICS_LISTEN) for the platform: Prometheus metrics and the
// liveness and readiness probes. The gRPC ports demand a client
// certificate under mutual TLS, which the kubelet's probes cannot present.
type ops struct {
	ready atomic.Pointer[func(context.Context) error]
}

// setReady installs the readiness check; until then the process is
// starting and not ready.
func (o *ops) setReady(check func(context.Context) error) { o.ready.Store(&check) }

func (o *ops) handler(tel *telemetry.Telemetry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", tel.Handler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		err := errors.New("starting")
		if check := o.ready.Load(); check != nil {
			// Under the kubelet's default probe timeout of a second: a
			// probe that times out counts as not ready.
			ctx, cancel := context.WithTimeout(r.Context(), 800*time.Millisecond)
			defer cancel()
			err = (*check)(ctx)
		}
		if err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	return mux
}

// serving is the readiness of a gRPC service: its health service says
// SERVING, which it stops saying when the process is told to stop, so the
// platform takes it out of rotation while in-flight calls finish.
func serving(h healthpb.HealthServer) func(context.Context) error {
	return func(ctx context.Context) error {
		resp, err := h.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return err
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return errors.New(resp.GetStatus().String())
		}
		return nil
	}
}
