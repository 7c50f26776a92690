package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
	"go.temporal.io/sdk/temporal"
	"google.golang.org/grpc/status"

	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/workflows/ids"
)

// RedactError describes err by its kinds alone: the Temporal failure's
// type, the gRPC code and reason, the Go type; never its message. A
// workflow's or activity's error carries a service's words (what it
// refused and why, of which family), which the payload codec seals in
// Temporal's store and which must not reach logs or traces in clear
// either. "" for nil.
func RedactError(err error) string {
	if err == nil {
		return ""
	}
	var (
		app      *temporal.ApplicationError
		timeout  *temporal.TimeoutError
		canceled *temporal.CanceledError
		panicked *temporal.PanicError
	)
	switch {
	case errors.As(err, &app):
		return fmt.Sprintf("application error %s (message withheld)", app.Type())
	case errors.As(err, &timeout):
		return fmt.Sprintf("timeout %s", timeout.TimeoutType())
	case errors.As(err, &canceled):
		return "canceled"
	case errors.As(err, &panicked):
		return "panic (message withheld)"
	}
	if st, ok := status.FromError(err); ok {
		if reason := apperr.Reason(err); reason != "" {
			return fmt.Sprintf("rpc error %s %s (message withheld)", st.Code(), reason)
		}
		return fmt.Sprintf("rpc error %s (message withheld)", st.Code())
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "context deadline exceeded"
	case errors.Is(err, context.Canceled):
		return "context canceled"
	}
	return fmt.Sprintf("%T (message withheld)", err)
}

// redactingSpan records a Temporal workflow's or activity's failure by
// its kinds (RedactError) as the exception event's type, where the
// exporter leaves it; the error's text goes nowhere.
type redactingSpan struct{ trace.Span }

func (s redactingSpan) RecordError(err error, opts ...trace.EventOption) {
	if err == nil {
		return
	}
	s.Span.AddEvent(semconv.ExceptionEventName, append(opts, trace.WithAttributes(semconv.ExceptionType(RedactError(err))))...)
}

// redactingStart starts Temporal's workflow and activity spans as
// redactingSpans.
func redactingStart(ctx context.Context, t trace.Tracer, name string, opts ...trace.SpanStartOption) trace.Span {
	_, span := t.Start(ctx, name, opts...)
	return redactingSpan{span}
}

// redactingExporter passes spans on without any failure's text: a
// failed status's description and an exception event's message, which
// the instrumentations fill from err.Error() or a gRPC status message
// (otelgrpc's client and server spans, Temporal's), and which carry a
// service's words about a family. Done here, where every span leaves the
// process, so that no instrumentation is left out.
type redactingExporter struct{ sdktrace.SpanExporter }

func (e redactingExporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	// Most spans carry no failure nor workflow id: they pass as they are,
	// uncopied.
	out, copied := spans, false
	for i, s := range spans {
		if !failed(s) && !slices.ContainsFunc(s.Attributes(), isWorkflowID) {
			continue
		}
		if !copied {
			out, copied = slices.Clone(spans), true
		}
		out[i] = withheld{s}
	}
	return e.SpanExporter.ExportSpans(ctx, out)
}

// failed reports whether s carries a failure's text: a status
// description, or an exception event's message.
func failed(s sdktrace.ReadOnlySpan) bool {
	if s.Status().Description != "" {
		return true
	}
	for _, ev := range s.Events() {
		for _, a := range ev.Attributes {
			if a.Key == semconv.ExceptionMessageKey {
				return true
			}
		}
	}
	return false
}

// workflowIDKey is the attribute Temporal's tracing interceptor names
// every workflow's and activity's span with, and the key its SDK logs a
// workflow id under.
const (
	workflowIDKey    = "temporalWorkflowID"
	workflowIDLogKey = "WorkflowID"
)

func isWorkflowID(a attribute.KeyValue) bool { return a.Key == workflowIDKey }

// withheld is a span as exported without its failure's text, and with
// its workflow id as ids.Ref gives it.
type withheld struct{ sdktrace.ReadOnlySpan }

func (s withheld) Attributes() []attribute.KeyValue {
	attrs := s.ReadOnlySpan.Attributes()
	i := slices.IndexFunc(attrs, isWorkflowID)
	if i < 0 {
		return attrs
	}
	attrs = slices.Clone(attrs)
	attrs[i] = attribute.String(workflowIDKey, ids.Ref(attrs[i].Value.AsString()))
	return attrs
}

func (s withheld) Status() sdktrace.Status {
	st := s.ReadOnlySpan.Status()
	if st.Description != "" {
		st.Description = "withheld"
	}
	return st
}

func (s withheld) Events() []sdktrace.Event {
	events := slices.Clone(s.ReadOnlySpan.Events())
	for i, ev := range events {
		attrs := make([]attribute.KeyValue, 0, len(ev.Attributes))
		for _, a := range ev.Attributes {
			if a.Key == semconv.ExceptionMessageKey {
				a = semconv.ExceptionMessage("withheld")
			}
			attrs = append(attrs, a)
		}
		events[i].Attributes = attrs
	}
	return events
}

// RedactErrors returns h with every error-valued attribute written as
// RedactError gives it, the SDK's PanicError (a panic's value, as a
// string) withheld, and its WorkflowID as ids.Ref gives it: for the
// Temporal SDK's logs, whose failures carry the services' words.
func RedactErrors(h slog.Handler) slog.Handler { return redactingHandler{h} }

type redactingHandler struct{ slog.Handler }

func (h redactingHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(redactAttr(a))
		return true
	})
	return h.Handler.Handle(ctx, out)
}

func (h redactingHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	safe := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		safe[i] = redactAttr(a)
	}
	return redactingHandler{h.Handler.WithAttrs(safe)}
}

func (h redactingHandler) WithGroup(name string) slog.Handler {
	return redactingHandler{h.Handler.WithGroup(name)}
}

func redactAttr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	if a.Key == workflowIDLogKey && v.Kind() == slog.KindString {
		return slog.String(a.Key, ids.Ref(v.String()))
	}
	if a.Key == "PanicError" {
		// The SDK logs a panic's value as a string under this key; a
		// panic(err) would carry a service's words.
		return slog.String(a.Key, "panic (message withheld)")
	}
	switch v.Kind() {
	case slog.KindAny:
		if err, ok := v.Any().(error); ok {
			return slog.String(a.Key, RedactError(err))
		}
	case slog.KindGroup:
		group := v.Group()
		safe := make([]any, len(group))
		for i, g := range group {
			safe[i] = redactAttr(g)
		}
		return slog.Group(a.Key, safe...)
	}
	return slog.Attr{Key: a.Key, Value: v}
}
