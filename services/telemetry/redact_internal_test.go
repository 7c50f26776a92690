package telemetry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.temporal.io/sdk/temporal"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	"github.com/handoff-health/handoff/workflows/ids"
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

// A Temporal span of a failed activity records the failure by its kinds,
// and no span leaves the process with a failure's text: not Temporal's,
// not one an instrumentation such as otelgrpc fills from a status message.
func TestSpansLeaveWithoutAFailuresText(t *testing.T) {
	mem := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(redactingExporter{mem}))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	err := fmt.Errorf("reinforce boundary: %w", refusal(t))
	// As the Temporal tracing interceptor finishes a failed span.
	span := redactingStart(context.Background(), tp.Tracer("test"), "RunActivity:ReinforceBoundary")
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
	span.End()
	// As otelgrpc finishes a failed call.
	_, call := tp.Tracer("test").Start(context.Background(), "handoff.families.v1.FamiliesService/ActivateBoundary")
	call.RecordError(err)
	call.SetStatus(codes.Error, secret)
	call.End()
	spans := mem.GetSpans()
	if len(spans) != 2 {
		t.Fatalf("%d spans exported; want 2", len(spans))
	}
	for i, s := range spans {
		text := s.Status.Description
		for _, e := range s.Events {
			for _, a := range e.Attributes {
				text += " " + a.Value.Emit()
			}
		}
		if strings.Contains(text, "Rivera") || s.Status.Code != codes.Error {
			t.Errorf("span %s says %q (status %v); want no failure's text", s.Name, text, s.Status)
		}
		if i == 0 && !strings.Contains(text, "SAFETY_SCREEN_REQUIRED") {
			t.Errorf("the Temporal span says %q; want the failure's kind", text)
		}
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

// A workflow's id names a family and what befell it: spans and the SDK's
// logs carry it as ids.Ref gives it, its kind and a hash.
func TestWorkflowIDsLeaveAsRefs(t *testing.T) {
	const id = "overdose/clinics/north/families/f-rivera/warningSigns/w1"
	mem := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(redactingExporter{mem}))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	// As the Temporal tracing interceptor starts a workflow's span.
	_, span := tp.Tracer("test").Start(context.Background(), "RunWorkflow:Overdose",
		trace.WithAttributes(attribute.String(workflowIDKey, id), attribute.String("temporalRunID", "r1")))
	span.End()
	spans := mem.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("%d spans exported; want 1", len(spans))
	}
	var got []string
	for _, a := range spans[0].Attributes {
		got = append(got, string(a.Key)+"="+a.Value.Emit())
	}
	if joined := strings.Join(got, " "); strings.Contains(joined, "rivera") || !strings.Contains(joined, workflowIDKey+"="+ids.Ref(id)) ||
		!strings.Contains(joined, "temporalRunID=r1") {
		t.Fatalf("span attributes %s; want the workflow id as its ref, the rest as they were", joined)
	}
	var buf bytes.Buffer
	slog.New(RedactErrors(slog.NewJSONHandler(&buf, nil))).With("WorkflowID", id).Warn("Activity error.", "ActivityType", "CreateReferrals")
	if out := buf.String(); strings.Contains(out, "rivera") || !strings.Contains(out, ids.Ref(id)) || !strings.HasPrefix(ids.Ref(id), "overdose/") {
		t.Fatalf("log %s; want the workflow id as %s", out, ids.Ref(id))
	}
}

// A handler error keeps the code's own context in the log, and loses the
// values PostgreSQL's message or protobuf's decoding quotes.
func TestLogSafe(t *testing.T) {
	pg := &pgconn.PgError{Severity: "ERROR", Code: "22P02", Message: `invalid input syntax for type uuid: "Sam Rivera"`}
	var decode error
	if err := protojson.Unmarshal([]byte(`{"givenName": 12345}`), &familiesv1.LovedOne{}); err != nil {
		decode = err
	}
	for _, c := range []struct {
		err        error
		want, gone string
	}{
		{fmt.Errorf("read family f1: %w", pg), "read family f1: PostgreSQL error SQLSTATE 22P02", "Sam Rivera"},
		{fmt.Errorf("insert member: %w", &pgconn.PgError{Severity: "ERROR", Code: "23505", Message: "duplicate key value violates unique constraint \"members_pkey\"",
			ConstraintName: "members_pkey"}), "insert member: PostgreSQL error SQLSTATE 23505 (constraint members_pkey)", "duplicate"},
		{fmt.Errorf("decode family f1: %w", decode), "decode family f1: proto: a message did not decode", "12345"},
		{errors.New("pgdb: no clinic in context"), "pgdb: no clinic in context", "withheld"},
		// A join (an outbox relay's poll joins its lanes' failures): every
		// branch's PostgreSQL and protobuf text goes, not the first alone.
		{errors.Join(fmt.Errorf("deliver 1: %w", errors.New("temporal down")), fmt.Errorf("deliver 2: %w", pg),
			fmt.Errorf("deliver 3: %w", decode)), "deliver 1: temporal down\ndeliver 2: PostgreSQL error SQLSTATE 22P02\ndeliver 3: proto: a message did not decode", "Sam Rivera"},
		{errors.Join(fmt.Errorf("deliver 3: %w", decode)), "deliver 3: proto: a message did not decode", "12345"},
	} {
		got := LogSafe(c.err)
		if !strings.HasPrefix(got, c.want) || strings.Contains(got, c.gone) {
			t.Errorf("LogSafe(%q) = %q; want it to begin %q, without %q", c.err, got, c.want, c.gone)
		}
	}
	if decode == nil {
		t.Fatal("the bad JSON decoded")
	}
}
