// Package telemetry sets up Handoff's traces and metrics: OpenTelemetry
// traces that follow a request from the gateway through the services into
// PostgreSQL and, through the outbox, into Temporal workflows and their
// activities; and Prometheus metrics for RPCs, workflows and activities,
// outbox lag, and reminders. Spans and metrics carry identifiers and SQL
// text, never request bodies or query arguments.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.temporal.io/sdk/client"
	temporalotel "go.temporal.io/sdk/contrib/opentelemetry"
)

// Telemetry holds the providers of one process.
type Telemetry struct {
	registry *prometheus.Registry
	tracer   *sdktrace.TracerProvider
	meter    *sdkmetric.MeterProvider
}

// Config configures telemetry.
type Config struct {
	// Service names the process in traces (handoff-families, ...).
	Service string
	// Exporter receives finished spans (an OTLP exporter in production, a
	// recorder in tests); nil keeps traces in-process only, still
	// propagated so that downstream processes can export them.
	Exporter sdktrace.SpanExporter
}

// Setup installs global trace and metric providers and the W3C trace
// context propagator.
func Setup(cfg Config) (*Telemetry, error) {
	// Built, not merged with resource.Default(): the SDK's default and this
	// semconv package name different schema versions, and Merge refuses
	// that, which left every process as unknown_service.
	// A malformed OTEL_RESOURCE_ATTRIBUTES yields what could be read
	// (ErrPartialResource): the process still starts.
	res, err := resource.New(context.Background(), resource.WithFromEnv(), resource.WithTelemetrySDK(),
		resource.WithAttributes(semconv.ServiceName(cfg.Service)))
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("telemetry resource: %w", err)
	}
	var opts []sdktrace.TracerProviderOption
	opts = append(opts, sdktrace.WithResource(res))
	if cfg.Exporter != nil {
		// Batched: a request never waits on the collector, and a slow or
		// missing collector drops spans rather than stalling the API.
		opts = append(opts, sdktrace.WithBatcher(redactingExporter{cfg.Exporter}))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, err
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp), sdkmetric.WithResource(res),
		// The HTTP server metrics name the server by the request's Host
		// header: anyone could grow them a series per Host they send,
		// until the process runs out of memory. The server is the process.
		sdkmetric.WithView(sdkmetric.NewView(sdkmetric.Instrument{Name: "http.server.*"},
			sdkmetric.Stream{AttributeFilter: attribute.NewDenyKeysFilter("server.address", "server.port")})),
		// The gRPC metrics name the peer's address: a client's calls,
		// balanced over a service's replicas, would grow a series per pod
		// IP, and every rollout new ones, which the exporter keeps for
		// the life of the process.
		sdkmetric.WithView(sdkmetric.NewView(sdkmetric.Instrument{Name: "rpc.*"},
			sdkmetric.Stream{AttributeFilter: attribute.NewDenyKeysFilter("server.address", "server.port",
				"network.peer.address", "network.peer.port", "client.address", "client.port")})))
	otel.SetTracerProvider(tp)
	otel.SetMeterProvider(mp)
	otel.SetTextMapPropagator(propagation.TraceContext{})
	return &Telemetry{registry: reg, tracer: tp, meter: mp}, nil
}

// Handler serves the metrics in Prometheus' text format.
func (t *Telemetry) Handler() http.Handler {
	return promhttp.HandlerFor(t.registry, promhttp.HandlerOpts{})
}

// Shutdown flushes and stops the providers.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	return errors.Join(t.tracer.Shutdown(ctx), t.meter.Shutdown(ctx))
}

// Meter is Handoff's meter.
func Meter() metric.Meter { return otel.Meter("github.com/handoff-health/handoff") }

// Inject writes the trace context of ctx into a carrier (the outbox row).
func Inject(ctx context.Context) map[string]string {
	c := propagation.MapCarrier{}
	otel.GetTextMapPropagator().Inject(ctx, c)
	return c
}

// Extract returns ctx continuing the trace in carrier.
func Extract(ctx context.Context, carrier map[string]string) context.Context {
	return otel.GetTextMapPropagator().Extract(ctx, propagation.MapCarrier(carrier))
}

// TemporalClientOptions adds tracing (workflow and activity spans joined to
// the caller's trace) and the SDK's workflow and activity metrics.
func TemporalClientOptions(o client.Options) (client.Options, error) {
	// Spans record a failed workflow or activity by its error's kinds (see
	// RedactError); the exporter withholds every failure's text.
	ti, err := temporalotel.NewTracingInterceptor(temporalotel.TracerOptions{SpanStarter: redactingStart})
	if err != nil {
		return o, err
	}
	o.Interceptors = append(o.Interceptors, ti)
	o.MetricsHandler = temporalotel.NewMetricsHandler(temporalotel.MetricsHandlerOptions{Meter: otel.Meter("temporal")})
	return o, nil
}
