package idempotency_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/idempotency"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

func newFamily() *familiesv1.Family { return &familiesv1.Family{} }

// reused returns the resource a REQUEST_ID_REUSED error names, failing the
// test on any other error.
func reused(t *testing.T, err error) string {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != codes.InvalidArgument {
		t.Fatalf("error = %v; want INVALID_ARGUMENT", err)
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() == "REQUEST_ID_REUSED" {
			return info.GetMetadata()["resource"]
		}
	}
	t.Fatalf("error = %v; want reason REQUEST_ID_REUSED", err)
	return ""
}

// A request id sent again with the same request returns the stored
// response without running the call; with another request it is refused,
// and the refusal names what the first request made only to the caller who
// sent it, for the same method.
func TestReusedIDNamesWhatItMadeToItsCaller(t *testing.T) {
	t.Parallel()
	_, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	db := pgtest.App(t, schema)
	scope := pgdb.WithClinic(context.Background(), "north")
	as := func(subject string) context.Context {
		return auth.WithPrincipal(scope, auth.Principal{Subject: subject, Clinic: "north"})
	}
	const made = "clinics/north/families/f1"
	runs := 0
	call := func(ctx context.Context, method, id string, req *familiesv1.GetFamilyRequest) (*familiesv1.Family, error) {
		return idempotency.InTx(ctx, db, "north", method, id, req, newFamily, func(pgx.Tx) (*familiesv1.Family, error) {
			runs++
			return &familiesv1.Family{Name: made}, nil
		})
	}
	first := &familiesv1.GetFamilyRequest{Name: "first"}
	other := &familiesv1.GetFamilyRequest{Name: "changed since"}
	if out, err := call(as("worker"), "M", "r1", first); err != nil || out.GetName() != made || runs != 1 {
		t.Fatalf("first call = %v, %v after %d runs", out, err, runs)
	}
	if out, err := call(as("worker"), "M", "r1", first); err != nil || out.GetName() != made || runs != 1 {
		t.Fatalf("the same request again = %v, %v after %d runs; want the stored response, not a second run", out, err, runs)
	}
	_, err := call(as("worker"), "M", "r1", other)
	if got := reused(t, err); got != made {
		t.Fatalf("same caller, another request: names %q; want %q", got, made)
	}
	if out, ok, err := idempotency.Stored(as("worker"), db, "north", "M", "r1", other, newFamily); ok || out != nil || reused(t, err) != made {
		t.Fatalf("Stored, another request = %v, %v, %v; want the refusal naming %s", out, ok, err, made)
	}
	for _, c := range []struct {
		name, subject, method string
		req                   *familiesv1.GetFamilyRequest
	}{
		{"another caller, the same request", "counselor-2", "M", first},
		{"another caller, another request", "counselor-2", "M", other},
		{"the same caller, another method", "worker", "N", first},
	} {
		_, err := call(as(c.subject), c.method, "r1", c.req)
		if got := reused(t, err); got != "" {
			t.Errorf("%s: the refusal names %q; want nothing", c.name, got)
		}
	}
	if runs != 1 {
		t.Fatalf("the call ran %d times; want once", runs)
	}

	// A key stored before callers were names nothing to anyone.
	if _, err := call(as("worker"), "M", "r2", first); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(scope, `UPDATE idempotency_keys SET caller = NULL WHERE request_id = 'r2'`); err != nil {
		t.Fatal(err)
	}
	if _, err := call(as("worker"), "M", "r2", other); reused(t, err) != "" {
		t.Fatalf("a key without a caller: %v; want a refusal naming nothing", err)
	}
}
