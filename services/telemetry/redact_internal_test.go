package telemetry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.temporal.io/sdk/temporal"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// secret is what a service's refusal may say of a family.
const secret = "Rivera's newest safety screen is high risk"

func refusal(t *testing.T) error {
	t.Helper()
	st, err := status.New(grpccodes.FailedPrecondition, secret).WithDetails(&errdetails.ErrorInfo{Reason: "SAFETY_SCREEN_REQUIRED"})
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

// An error is described by its kinds, never its text.
func TestRedactErrorKeepsKindsOnly(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{fmt.Errorf("activity: %w", temporal.NewNonRetryableApplicationError(secret, "SAFETY_SCREEN_REQUIRED", nil)),
			"application error SAFETY_SCREEN_REQUIRED (message withheld)"},
		{fmt.Errorf("activate boundary: %w", refusal(t)), "rpc error FailedPrecondition SAFETY_SCREEN_REQUIRED (message withheld)"},
		{status.Error(grpccodes.Unavailable, secret), "rpc error Unavailable (message withheld)"},
		{fmt.Errorf("%s: %w", secret, context.DeadlineExceeded), "context deadline exceeded"},
		{errors.New(secret), "*errors.errorString (message withheld)"},
	} {
		if got := RedactError(c.err); got != c.want {
			t.Errorf("RedactError(%v) = %q; want %q", c.err, got, c.want)
		}
	}
}

// A Temporal span of a failed activity records the failure by its kinds:
// the exception event and the status carry none of its text.
func TestTemporalSpansRecordErrorsByKind(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	err := fmt.Errorf("reinforce boundary: %w", refusal(t))
	span := redactingStart(context.Background(), tp.Tracer("test"), "RunActivity:ReinforceBoundary")
	// As the tracing interceptor finishes a failed span.
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
	span.End()
	ended := rec.Ended()
	if len(ended) != 1 {
		t.Fatalf("%d spans ended; want 1", len(ended))
	}
	s := ended[0]
	text := s.Status().Description
	for _, e := range s.Events() {
		for _, a := range e.Attributes {
			text += " " + a.Value.Emit()
		}
	}
	if strings.Contains(text, "Rivera") || !strings.Contains(text, "SAFETY_SCREEN_REQUIRED") || s.Status().Code != codes.Error {
		t.Fatalf("the span says %q (status %v); want the error's kind, not its text", text, s.Status())
	}
}

// Logs through RedactErrors write an error attribute by its kinds, given
// on the record or earlier with With, and in a group.
func TestRedactErrorsInLogs(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(RedactErrors(slog.NewJSONHandler(&buf, nil)))
	log.With("Error", refusal(t)).Warn("activity failed", "cause", errors.New(secret), slog.Group("g", "err", refusal(t)), "ActivityType", "ReinforceBoundary",
		"PanicError", fmt.Sprintf("%v", errors.New(secret)))
	out := buf.String()
	if strings.Contains(out, "Rivera") || !strings.Contains(out, "SAFETY_SCREEN_REQUIRED") || !strings.Contains(out, `"ActivityType":"ReinforceBoundary"`) {
		t.Fatalf("log %s; want errors by kind, other attributes as they are", out)
	}
}
