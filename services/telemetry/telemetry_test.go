package telemetry_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/gateway"
	"github.com/handoff-health/handoff/services/stack/stacktest"
	"github.com/handoff-health/handoff/services/telemetry"
)

// callersTrace is the trace id a client puts in its traceparent.
const callersTrace = "4bf92f3577b34da6a3ce929d0e0e4736"

// One trace follows a request from the gateway through the interventions
// service and its database, through the outbox into Temporal, to a workflow
// activity; and the metrics endpoint exposes the named metrics.
func TestTraceSpansGatewayServiceAndActivity(t *testing.T) {
	spans := tracetest.NewInMemoryExporter()
	tel, err := telemetry.Setup(telemetry.Config{Service: "handoff-test", Exporter: spans})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background()) //nolint:errcheck
	sys := stacktest.Start(t)
	gw, err := gateway.New(context.Background(), gateway.Config{FamiliesAddr: sys.Stack.FamiliesAddr,
		InterventionsAddr: sys.Stack.InterventionsAddr, ReferralsAddr: sys.Stack.ReferralsAddr, Verifier: sys.Issuer.Verifier()})
	if err != nil {
		t.Fatal(err)
	}
	defer gw.Close()
	lis, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := &http.Server{Handler: gw, ReadHeaderTimeout: time.Second}
	go func() { _ = srv.Serve(lis) }()
	defer srv.Close()
	base := "http://" + lis.Addr().String() + "/v1/"
	token := sys.Token("counselor-1", auth.RoleCounselor)
	call := func(method, path string, body any) map[string]any {
		t.Helper()
		b, _ := json.Marshal(body)
		req, _ := http.NewRequest(method, base+path, bytes.NewReader(b))
		req.Header.Set("Authorization", "Bearer "+token)
		// A caller's own trace, unsampled: the gateway is the door to the
		// internet, and neither follows it nor lets it turn tracing off.
		req.Header.Set("Traceparent", "00-"+callersTrace+"-00f067aa0ba902b7-00")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, raw)
		}
		var out map[string]any
		_ = json.Unmarshal(raw, &out)
		return out
	}
	fam := call("POST", "clinics/north/families", map[string]any{"lovedOne": map[string]any{"givenName": "T"}, "counselor": "counselor-1",
		"members": []any{map[string]any{"id": "mom", "givenName": "M", "relationship": "RELATIONSHIP_PARENT"}}})
	iv := call("POST", "clinics/north/interventions", map[string]any{"family": fam["name"], "counselor": "counselor-1",
		"startTime": time.Now().Add(time.Hour).UTC().Format(time.RFC3339), "expectedDuration": "900s",
		"place":        map[string]any{"video": map[string]any{"link": "https://video.example/x"}},
		"participants": []any{map[string]any{"memberId": "mom", "role": "PARTICIPANT_ROLE_SUPPORT"}}})
	call("POST", iv["name"].(string)+":schedule", map[string]any{})

	// The workflow's first activity runs within a second or two.
	var trace string
	stacktest.Eventually(t, 20*time.Second, "the LoadPlan activity span", func() bool {
		for _, s := range spans.GetSpans() {
			if s.Name == "RunActivity:LoadPlan" {
				trace = s.SpanContext.TraceID().String()
				return true
			}
		}
		return false
	})
	names := map[string]bool{}
	for _, s := range spans.GetSpans() {
		if s.SpanContext.TraceID().String() == trace {
			names[s.Name] = true
		}
		if s.SpanContext.TraceID().String() == callersTrace {
			t.Fatalf("span %q follows the caller's trace", s.Name)
		}
	}
	for _, want := range []string{"HTTP POST", "handoff.interventions.v1.InterventionsService/ScheduleIntervention", "db.query",
		"StartWorkflow:Intervention", "RunActivity:LoadPlan", "handoff.families.v1.FamiliesService/GetFamily"} {
		if !names[want] {
			t.Errorf("trace %s has no %q span; it has %v", trace, want, names)
		}
	}

	rec := httptest.NewRecorder()
	tel.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	metrics := rec.Body.String()
	// The series deploy/README's alerts are written on.
	for _, want := range []string{"rpc_server_call_duration_seconds_count{", `rpc_response_status_code="OK"`, "handoff_outbox_pending", "handoff_outbox_oldest_pending_age", "temporal_", "handoff_reminders_due_undelivered"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// stuckExporter is a collector that never answers until released.
type stuckExporter struct{ release chan struct{} }

func (e stuckExporter) ExportSpans(ctx context.Context, _ []sdktrace.ReadOnlySpan) error {
	select {
	case <-e.release:
	case <-ctx.Done():
	}
	return nil
}
func (e stuckExporter) Shutdown(context.Context) error { return nil }

// A collector that does not answer must not hold up the requests whose
// spans it is sent: spans are exported in the background.
func TestStuckCollectorDoesNotStallSpans(t *testing.T) {
	exp := stuckExporter{release: make(chan struct{})}
	tel, err := telemetry.Setup(telemetry.Config{Service: "handoff-test", Exporter: exp})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		close(exp.release)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tel.Shutdown(ctx)
	}()
	tracer := otel.Tracer("test")
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 3 {
			_, span := tracer.Start(context.Background(), "request")
			span.End()
		}
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("ending three spans waited on a stuck collector")
	}
}

// Spans carry the process's name: a collector tells the services apart by
// it.
func TestSpansNameTheService(t *testing.T) {
	// A malformed attribute list from the environment does not stop it.
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment=prod,broken")
	spans := tracetest.NewInMemoryExporter()
	tel, err := telemetry.Setup(telemetry.Config{Service: "handoff-x", Exporter: spans})
	if err != nil {
		t.Fatal(err)
	}
	_, span := otel.Tracer("test").Start(context.Background(), "op")
	span.End()
	defer tel.Shutdown(context.Background()) //nolint:errcheck
	// Flushed, not shut down: shutting down empties the recorder.
	if err := otel.GetTracerProvider().(*sdktrace.TracerProvider).ForceFlush(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := spans.GetSpans()
	if len(got) != 1 {
		t.Fatalf("%d spans; want 1", len(got))
	}
	for _, kv := range got[0].Resource.Attributes() {
		if kv.Key == "service.name" {
			if v := kv.Value.AsString(); v != "handoff-x" {
				t.Fatalf("service.name %q; want handoff-x", v)
			}
			return
		}
	}
	t.Fatalf("no service.name in %v", got[0].Resource.Attributes())
}

// The HTTP server metrics keep no series per Host header: a client could
// otherwise grow them without bound.
func TestHTTPMetricsIgnoreTheHost(t *testing.T) {
	tel, err := telemetry.Setup(telemetry.Config{Service: "handoff-test"})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background()) //nolint:errcheck
	h := otelhttp.NewHandler(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}), "test")
	for _, host := range []string{"a.example", "b.example:8443", "c.example"} {
		r := httptest.NewRequest(http.MethodGet, "/v1/x", nil)
		r.Host = host
		h.ServeHTTP(httptest.NewRecorder(), r)
	}
	rec := httptest.NewRecorder()
	tel.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body := rec.Body.String()
	if !strings.Contains(body, "http_server_request_duration_seconds") {
		t.Fatalf("no HTTP server metrics in %s", body)
	}
	// The port as a label's value: as a bare number it may be any value's
	// digits (a byte count, a duration).
	for _, leak := range []string{"a.example", "b.example", `"8443"`, "server_address", "server_port"} {
		if strings.Contains(body, leak) {
			t.Fatalf("the metrics hold %q: a series per Host", leak)
		}
	}
}

// The gRPC metrics do not name the peer's address or port: balanced over
// a service's replicas, a client would grow a series per pod IP.
func TestGRPCMetricsIgnoreThePeer(t *testing.T) {
	tel, err := telemetry.Setup(telemetry.Config{Service: "handoff-test"})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(context.Background()) //nolint:errcheck
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.StatsHandler(otelgrpc.NewServerHandler()))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(lis) //nolint:errcheck
	defer srv.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	// The server records its call as the call ends on its side, which
	// may be after the client has its answer: read until both are there.
	var body string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		rec := httptest.NewRecorder()
		tel.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		body = rec.Body.String()
		if strings.Contains(body, "rpc_client_") && strings.Contains(body, "rpc_server_") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no gRPC client and server metrics in %s", body)
		}
	}
	_, port, _ := net.SplitHostPort(lis.Addr().String())
	for _, leak := range []string{"127.0.0.1", `"` + port + `"`, "server_address", "server_port", "network_peer"} {
		if strings.Contains(body, leak) {
			t.Fatalf("the metrics hold %q: a series per peer", leak)
		}
	}
}
