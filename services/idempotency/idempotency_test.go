package idempotency_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/idempotency"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

func newFamily() *familiesv1.Family { return &familiesv1.Family{} }

// commonTables gives a test a schema of its own with the common tables,
// its owner's pool, the application's pool on it, and a context of
// subject in clinic north.
func commonTables(t *testing.T, subject string) (*pgxpool.Pool, *pgdb.DB, context.Context) {
	t.Helper()
	owner, schema := pgtest.Schema(t, pgdb.Source{Name: "common", FS: pgdb.Common, Dir: "common"})
	ctx := auth.WithPrincipal(pgdb.WithClinic(context.Background(), "north"), auth.Principal{Subject: subject, Clinic: "north"})
	return owner, pgtest.App(t, schema), ctx
}

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
	owner, db, _ := commonTables(t, "")
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
	if _, err := call(as("worker"), "N", "r1", first); reused(t, err) != "" {
		t.Errorf("the same caller, another method: %v; want a refusal naming nothing", err)
	}
	if runs != 1 {
		t.Fatalf("the call ran %d times; want once", runs)
	}
	// Another caller's id is its own key: it neither gets the first
	// response nor is refused. So no user of the clinic can take, ahead of
	// it, an id the worker will send (the worker's ids follow from
	// resource names): the worker's call still runs.
	if out, err := call(as("counselor-2"), "M", "r1", first); err != nil || runs != 2 || out.GetName() != made {
		t.Fatalf("another caller, the same id and request = %v, %v after %d runs; want a call of its own", out, err, runs)
	}
	if _, err := call(as("counselor-2"), "N", "w1", other); err != nil {
		t.Fatal(err)
	}
	if _, err := call(as("worker"), "M", "w1", first); err != nil || runs != 4 {
		t.Fatalf("the worker's id taken first by another caller: %v after %d runs; want the worker's call run", err, runs)
	}
	if out, err := call(as("worker"), "M", "w1", first); err != nil || runs != 4 || out.GetName() != made {
		t.Fatalf("the worker's retry = %v, %v after %d runs; want its own stored response", out, err, runs)
	}

	// A key stored before callers were belongs, migrated, to the caller
	// "": it holds back no named caller's call.
	if _, err := call(as("worker"), "M", "r2", first); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(scope, `UPDATE idempotency_keys SET caller = '' WHERE request_id = 'r2'`); err != nil {
		t.Fatal(err)
	}
	if _, err := call(as("worker"), "M", "r2", other); err != nil || runs != 6 {
		t.Fatalf("a key without a caller: %v after %d runs; want the worker's call run", err, runs)
	}

	// Where the key is still clinic and id alone (a database not yet
	// migrated), another caller's id is refused as before, not an
	// internal error.
	for _, st := range []string{`ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey`,
		`DELETE FROM idempotency_keys WHERE caller <> 'worker'`, `ALTER TABLE idempotency_keys ADD PRIMARY KEY (clinic, request_id)`} {
		if _, err := owner.Exec(scope, st); err != nil {
			t.Fatalf("%s: %v", st, err)
		}
	}
	if _, err := call(as("worker"), "M", "w9", first); err != nil || runs != 7 {
		t.Fatalf("the worker's call on the old key: %v after %d runs", err, runs)
	}
	if _, err := call(as("counselor-2"), "M", "w9", first); reused(t, err) != "" || runs != 7 {
		t.Fatalf("another caller's id on the old key: %v after %d runs; want REQUEST_ID_REUSED naming nothing", err, runs)
	}
}

// An etag is a precondition, not part of the request: a retry that carries
// a newer one (the resource changed after the first call) gets the first
// response, its own or its resource's etag alike, and so does a retry of a
// call whose key was stored when etags were hashed with the rest.
func TestRetryWithANewerEtagGetsTheFirstResponse(t *testing.T) {
	t.Parallel()
	_, db, ctx := commonTables(t, "ehr")
	const made = "clinics/north/families/f1"
	runs := 0
	call := func(id string, req proto.Message) (*familiesv1.Family, error) {
		return idempotency.InTx(ctx, db, "north", "M", id, req, newFamily, func(pgx.Tx) (*familiesv1.Family, error) {
			runs++
			return &familiesv1.Family{Name: made}, nil
		})
	}
	update := func(etag, counselor string) *familiesv1.UpdateFamilyRequest {
		return &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Name: made, Etag: etag, Counselor: counselor}, RequestId: "u1"}
	}
	if _, err := call("u1", update("1", "c-1")); err != nil || runs != 1 {
		t.Fatalf("first update: %v after %d runs", err, runs)
	}
	if out, err := call("u1", update("2", "c-1")); err != nil || out.GetName() != made || runs != 1 {
		t.Fatalf("retry with the resource's newer etag = %v, %v after %d runs; want the stored response", out, err, runs)
	}
	if _, err := call("u1", update("2", "c-2")); reused(t, err) != made {
		t.Fatalf("another change under the same id: %v; want REQUEST_ID_REUSED", err)
	}
	del := func(etag string) *familiesv1.DeleteFamilyRequest {
		return &familiesv1.DeleteFamilyRequest{Name: made, Etag: etag, RequestId: "d1"}
	}
	if _, err := call("d1", del("1")); err != nil || runs != 2 {
		t.Fatalf("first delete: %v after %d runs", err, runs)
	}
	if _, err := call("d1", del("7")); err != nil || runs != 2 {
		t.Fatalf("retry with a newer etag: %v after %d runs; want the stored response", err, runs)
	}

	// A key stored with the etag in its hash: the same request still matches.
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(del("3"))
	if err != nil {
		t.Fatal(err)
	}
	whole := sha256.Sum256(append([]byte("ehr\x00"), b...))
	if _, err := db.Exec(ctx, `UPDATE idempotency_keys SET request_hash = $1 WHERE request_id = 'd1'`, whole[:]); err != nil {
		t.Fatal(err)
	}
	if _, err := call("d1", del("3")); err != nil || runs != 2 {
		t.Fatalf("retry of a key hashed with its etag: %v after %d runs; want the stored response", err, runs)
	}
	if _, err := call("d1", &familiesv1.DeleteFamilyRequest{Name: made + "x", Etag: "3", RequestId: "d1"}); reused(t, err) != made {
		t.Fatalf("another request under a key hashed with its etag: %v; want REQUEST_ID_REUSED", err)
	}
}

// A replay of a rechecked call runs the check in its own transaction, and
// so does one that came while the first call was still running (it waits
// on the key's row, then replays): the check's refusal is its answer.
func TestRecheckedReplayIsCheckedAgain(t *testing.T) {
	t.Parallel()
	owner, db, ctx := commonTables(t, "staff")
	const made = "clinics/north/families/f1/disclosures/d1"
	var runs, checks atomic.Int32
	var covered atomic.Bool
	covered.Store(true)
	refused := errors.New("no longer covered")
	release := make(chan struct{})
	call := func(block bool) (*familiesv1.Family, error) {
		return idempotency.InTxRechecked(ctx, db, "north", "M", "r1", &familiesv1.GetFamilyRequest{Name: "f1"}, newFamily,
			func(tx pgx.Tx) (*familiesv1.Family, error) {
				runs.Add(1)
				if block {
					<-release
				}
				return &familiesv1.Family{Name: made}, nil
			},
			func(tx pgx.Tx, stored *familiesv1.Family) error {
				checks.Add(1)
				if stored.GetName() != made {
					return fmt.Errorf("the check was given %v, not the stored answer", stored)
				}
				// The check reads in the replay's transaction.
				var n int
				if err := tx.QueryRow(ctx, `SELECT count(*) FROM idempotency_keys WHERE request_id = 'r1'`).Scan(&n); err != nil || n != 1 {
					return fmt.Errorf("the key from the check's transaction: %d, %v", n, err)
				}
				if !covered.Load() {
					return refused
				}
				return nil
			})
	}
	type result struct {
		out *familiesv1.Family
		err error
	}
	first, second := make(chan result, 1), make(chan result, 1)
	go func() { out, err := call(true); first <- result{out, err} }()
	// The second call starts once the first holds the key.
	for runs.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	go func() { out, err := call(false); second <- result{out, err} }()
	// Until the second call waits on the key's row lock (seen as the
	// owner: the application role sees nothing of other sessions).
	for waiting, deadline := 0, time.Now().Add(10*time.Second); waiting == 0; {
		if err := owner.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO idempotency_keys%'`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("the second call never waited on the first call's key")
		}
		time.Sleep(time.Millisecond)
	}
	covered.Store(false) // a revocation while the first call runs
	close(release)
	if r := <-first; r.err != nil || r.out.GetName() != made {
		t.Fatalf("first call = %v, %v", r.out, r.err)
	}
	if r := <-second; !errors.Is(r.err, refused) {
		t.Fatalf("a retry that waited for the first call = %v, %v; want the recheck's refusal", r.out, r.err)
	}
	covered.Store(true)
	if out, err := call(false); err != nil || out.GetName() != made {
		t.Fatalf("a retry once covered again = %v, %v; want the stored response", out, err)
	}
	if runs.Load() != 1 || checks.Load() != 2 {
		t.Fatalf("%d runs and %d checks; want the call run once and each replay checked", runs.Load(), checks.Load())
	}
}

// A recheck that finds what the stored answer rested on gone, but the call
// still possible (a disclosure now under another consent), runs the call
// again: its answer is returned and stored in place of the first.
func TestRecheckMayRunTheCallAgain(t *testing.T) {
	t.Parallel()
	_, db, ctx := commonTables(t, "staff")
	var runs atomic.Int32
	var rerun atomic.Bool
	call := func() (*familiesv1.Family, error) {
		return idempotency.InTxRechecked(ctx, db, "north", "M", "r1", &familiesv1.GetFamilyRequest{Name: "f1"}, newFamily,
			func(pgx.Tx) (*familiesv1.Family, error) {
				return &familiesv1.Family{Name: fmt.Sprintf("clinics/north/families/f1/disclosures/d%d", runs.Add(1))}, nil
			},
			func(_ pgx.Tx, stored *familiesv1.Family) error {
				if rerun.Load() && strings.HasSuffix(stored.GetName(), "/d1") {
					return idempotency.ErrRerun
				}
				return nil
			})
	}
	for i, want := range []string{"d1", "d1", "d2", "d2"} {
		if i == 2 {
			rerun.Store(true) // the first answer's consent revoked, another covering
		}
		out, err := call()
		if err != nil || !strings.HasSuffix(out.GetName(), "/"+want) {
			t.Fatalf("call %d: %v, %v; want %s", i, out, err, want)
		}
	}
	if runs.Load() != 2 {
		t.Fatalf("the call ran %d times; want twice: first, then once rerun, its answer stored", runs.Load())
	}
}

// Two replays at once that would both run the call again take turns on
// the key: the second reads the answer the first stored, and the call
// runs once more, not twice.
func TestConcurrentRerunsRunTheCallOnce(t *testing.T) {
	t.Parallel()
	_, db, ctx := commonTables(t, "staff")
	var runs atomic.Int32
	release := make(chan struct{})
	call := func() (*familiesv1.Family, error) {
		return idempotency.InTxRechecked(ctx, db, "north", "M", "r1", &familiesv1.GetFamilyRequest{Name: "f1"}, newFamily,
			func(pgx.Tx) (*familiesv1.Family, error) {
				n := runs.Add(1)
				if n == 2 {
					<-release // the first rerun takes its time
				}
				return &familiesv1.Family{Name: fmt.Sprintf("clinics/north/families/f1/disclosures/d%d", n)}, nil
			},
			func(_ pgx.Tx, stored *familiesv1.Family) error {
				if strings.HasSuffix(stored.GetName(), "/d1") {
					return idempotency.ErrRerun
				}
				return nil
			})
	}
	if _, err := call(); err != nil {
		t.Fatal(err)
	}
	type result struct {
		out *familiesv1.Family
		err error
	}
	first, second := make(chan result, 1), make(chan result, 1)
	go func() { out, err := call(); first <- result{out, err} }()
	for runs.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	go func() { out, err := call(); second <- result{out, err} }()
	time.Sleep(200 * time.Millisecond) // the second replay reaches the key
	close(release)
	for _, ch := range []chan result{first, second} {
		if r := <-ch; r.err != nil || !strings.HasSuffix(r.out.GetName(), "/d2") {
			t.Fatalf("a replay: %v, %v; want the rerun's answer, d2", r.out, r.err)
		}
	}
	if runs.Load() != 2 {
		t.Fatalf("the call ran %d times; want twice: the first call and one rerun", runs.Load())
	}
}

// ForgetResource forgets the answers naming a record or a record under it,
// and no other: not a sibling whose name it begins (f1 and f10), nor one a
// LIKE wildcard in its name would match, nor one in a collection kept.
func TestForgetResourceForgetsOnlyWhatItNames(t *testing.T) {
	t.Parallel()
	_, db, ctx := commonTables(t, "staff")
	runs := 0
	call := func(id, made string) (*familiesv1.Family, error) {
		return idempotency.InTx(ctx, db, "north", "M", id, &familiesv1.GetFamilyRequest{Name: made}, newFamily,
			func(pgx.Tx) (*familiesv1.Family, error) {
				runs++
				return &familiesv1.Family{Name: made}, nil
			})
	}
	names := map[string]bool{ // made -> forgotten
		"clinics/north/families/a_b":             true,
		"clinics/north/families/a_b/members/m1":  true,
		"clinics/north/families/a_b/consents/c1": false, // kept: it outlives the record
		"clinics/north/families/a_b/consentsX/c": true,
		"clinics/north/families/a_b0":            false,
		"clinics/north/families/aXb/members/m1":  false,
		"clinics/north/families/a":               false,
	}
	for made := range names {
		if _, err := call(made, made); err != nil {
			t.Fatal(err)
		}
	}
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		return idempotency.ForgetResource(ctx, tx, "north", "clinics/north/families/a_b", "consents")
	})
	if err != nil {
		t.Fatal(err)
	}
	for made, forgotten := range names {
		out, err := call(made, made)
		if forgotten {
			if st, _ := status.FromError(err); st.Code() != codes.NotFound || !strings.Contains(st.Message(), made) {
				t.Errorf("%s: %v, %v; want NOT_FOUND naming it", made, out, err)
			}
			if out, ok, err := idempotency.Stored(ctx, db, "north", "M", made, &familiesv1.GetFamilyRequest{Name: made}, newFamily); ok || status.Code(err) != codes.NotFound {
				t.Errorf("%s: Stored = %v, %v, %v; want NOT_FOUND", made, out, ok, err)
			}
		} else if err != nil || out.GetName() != made {
			t.Errorf("%s: %v, %v; want the stored answer", made, out, err)
		}
	}
	if runs != len(names) {
		t.Fatalf("%d runs; want each call run once", runs)
	}
}
