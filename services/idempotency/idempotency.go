// Package idempotency makes mutating calls safe to retry (AIP-155): the first
// call with a request id stores its response in the same transaction as its
// change, and every later call with that id gets the stored response back.
package idempotency

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/pgdb"
)

// Do runs fn inside tx unless requestID was seen before in clinic from the
// same caller, in which case it returns the response stored by the first
// call. A reused id with a different request (or method) is
// INVALID_ARGUMENT. Each caller's ids are its own: another's id, however
// alike, is another key. With an empty requestID fn simply runs.
//
// Concurrent calls with one id from one caller are serialised by the key's
// primary key (clinic, caller, id): the second insert waits for the first
// transaction, then finds its response.
func Do[T proto.Message](ctx context.Context, tx pgx.Tx, clinic, method, requestID string,
	req proto.Message, newResp func() T, fn func() (T, error)) (T, error) {
	return do(ctx, tx, clinic, method, requestID, req, newResp, fn, nil)
}

// ErrRerun, from a recheck, runs the call again in place of its stored
// answer, and stores the new one: what the answer rested on has changed,
// and the call can still be made (a disclosure under another consent).
var ErrRerun = errors.New("idempotency: run the call again")

func do[T proto.Message](ctx context.Context, tx pgx.Tx, clinic, method, requestID string,
	req proto.Message, newResp func() T, fn func() (T, error), recheck func(T) error) (T, error) {
	var zero T
	if requestID == "" {
		out, err := fn()
		if err == nil {
			nameStamp(tx, out)
		}
		return out, err
	}
	hash, err := requestHash(ctx, withoutEtags(req))
	if err != nil {
		return zero, fmt.Errorf("idempotency: hash request: %w", err)
	}
	tag, err := tx.Exec(ctx, `INSERT INTO idempotency_keys (clinic, request_id, method, request_hash, caller)
		VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING`, clinic, requestID, method, hash, caller(ctx))
	if err != nil {
		return zero, fmt.Errorf("idempotency: claim key: %w", err)
	}
	if tag.RowsAffected() == 0 {
		var k key
		// A replay that may run the call again (ErrRerun) locks the key
		// first: two at once would otherwise both read the first answer
		// and both run the call. The second waits, then reads the answer
		// the first stored.
		lock := ""
		if recheck != nil {
			lock = " FOR UPDATE"
		}
		err := tx.QueryRow(ctx, `SELECT method, request_hash, response, caller, COALESCE(resource, ''), forgotten FROM idempotency_keys
			WHERE clinic = $1 AND request_id = $2 AND caller = $3`+lock, clinic, requestID, caller(ctx)).Scan(
			&k.method, &k.hash, &k.resp, &k.caller, &k.resource, &k.forgotten)
		if errors.Is(err, pgx.ErrNoRows) {
			// The id is held under another caller: only where the key is
			// still clinic and id alone (a database not yet migrated to
			// 0011). Refused as before.
			return zero, apperr.RequestIDReused(requestID, "")
		}
		if err != nil {
			return zero, fmt.Errorf("idempotency: read key: %w", err)
		}
		out, err := answer(ctx, k, requestID, method, req, hash, newResp)
		if err == nil && recheck != nil {
			if err = recheck(out); errors.Is(err, ErrRerun) {
				return run(ctx, tx, clinic, requestID, fn)
			}
		}
		if err != nil {
			return zero, err
		}
		nameStamp(tx, out)
		return out, nil
	}
	return run(ctx, tx, clinic, requestID, fn)
}

// nameStamp has the call's audit record, if it waits for the name of what
// the call created, name out (pgdb.StampNames).
func nameStamp(tx pgx.Tx, out proto.Message) {
	if n := name(out); n != "" {
		pgdb.StampNames(tx, n)
	}
}

// run makes the call under the claimed key and stores its answer.
func run[T proto.Message](ctx context.Context, tx pgx.Tx, clinic, requestID string, fn func() (T, error)) (T, error) {
	var zero T
	out, err := fn()
	if err != nil {
		return zero, err
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(out)
	if err != nil {
		return zero, fmt.Errorf("idempotency: encode response: %w", err)
	}
	var resource *string
	if n := name(out); n != "" {
		resource = &n
	}
	// A create's audit record, if no statement of the call has carried it
	// yet (no event named what it made), goes with this one, naming it.
	if _, err := pgdb.ExecNaming(ctx, tx, name(out), `UPDATE idempotency_keys SET response = $3, resource = $4
		WHERE clinic = $1 AND request_id = $2 AND caller = $5`, clinic, requestID, b, resource, caller(ctx)); err != nil {
		return zero, fmt.Errorf("idempotency: store response: %w", err)
	}
	return out, nil
}

// withoutEtags is req without its etag, or the etag of the resource it
// carries (an update's). An etag is a precondition on the version the
// caller read, not part of what it asks: a retry made after someone else
// changed the resource carries the newer etag (the FHIR write-back fills
// in the current one when the EHR sends no If-Match), and must get the
// first call's response, not REQUEST_ID_REUSED.
func withoutEtags(req proto.Message) proto.Message {
	if req == nil {
		return nil
	}
	out := proto.Clone(req)
	r := out.ProtoReflect()
	clearEtag(r)
	r.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() == protoreflect.MessageKind && !fd.IsList() && !fd.IsMap() {
			clearEtag(v.Message())
		}
		return true
	})
	return out
}

func clearEtag(r protoreflect.Message) {
	if fd := r.Descriptor().Fields().ByName("etag"); fd != nil && fd.Kind() == protoreflect.StringKind && !fd.IsList() {
		r.Clear(fd)
	}
}

// requestHash binds a request id to the request and to the caller: another
// user who sends the same id and body must not receive the first caller's
// stored response as if the change were theirs.
func requestHash(ctx context.Context, req proto.Message) ([]byte, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(req)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	if p, ok := auth.FromContext(ctx); ok {
		h.Write([]byte(p.Subject))
	}
	h.Write([]byte{0})
	h.Write(b)
	return h.Sum(nil), nil
}

// caller is who sends the request: the token's subject, "" without one.
func caller(ctx context.Context) string {
	p, _ := auth.FromContext(ctx)
	return p.Subject
}

// name is the resource name a response carries in its name field, or "".
func name(m proto.Message) string { return aip.StringField(m, "name") }

// InTx runs fn in a new transaction of db under Do's guarantees.
func InTx[T proto.Message](ctx context.Context, db interface {
	Begin(context.Context) (pgx.Tx, error)
}, clinic, method, requestID string,
	req proto.Message, newResp func() T, fn func(pgx.Tx) (T, error)) (T, error) {
	return InTxRechecked(ctx, db, clinic, method, requestID, req, newResp, fn, nil)
}

// InTxRechecked is InTx for a call whose stored answer holds only while
// something it checked still holds (a consent covering a disclosure): a
// replay runs recheck on the stored answer in its transaction, after the
// key's row lock, so a retry that waited for the first call is checked
// too, and gets recheck's error instead of the stored response (or, for
// ErrRerun, the answer of the call run again). A nil recheck is InTx.
func InTxRechecked[T proto.Message](ctx context.Context, db interface {
	Begin(context.Context) (pgx.Tx, error)
}, clinic, method, requestID string,
	req proto.Message, newResp func() T, fn func(pgx.Tx) (T, error), recheck func(pgx.Tx, T) error) (T, error) {
	var out T
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		var err error
		var check func(T) error
		if recheck != nil {
			check = func(stored T) error { return recheck(tx, stored) }
		}
		out, err = do(ctx, tx, clinic, method, requestID, req, newResp, func() (T, error) { return fn(tx) }, check)
		return err
	})
	return out, err
}

// Stored returns the response a finished earlier call with requestID gave,
// if there is one. Handlers that must consult another service before
// acting call it first, so that a retry returns the first result instead of
// being judged against what has changed since.
func Stored[T proto.Message](ctx context.Context, db interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, clinic, method, requestID string, req proto.Message, newResp func() T) (T, bool, error) {
	var zero T
	if requestID == "" {
		return zero, false, nil
	}
	var k key
	err := db.QueryRow(ctx, `SELECT method, request_hash, response, caller, COALESCE(resource, ''), forgotten FROM idempotency_keys
		WHERE clinic = $1 AND request_id = $2 AND caller = $3 AND (response IS NOT NULL OR forgotten)`,
		clinic, requestID, caller(ctx)).Scan(
		&k.method, &k.hash, &k.resp, &k.caller, &k.resource, &k.forgotten)
	if errors.Is(err, pgx.ErrNoRows) {
		return zero, false, nil
	}
	if err != nil {
		return zero, false, fmt.Errorf("idempotency: read key: %w", err)
	}
	hash, err := requestHash(ctx, withoutEtags(req))
	if err != nil {
		return zero, false, fmt.Errorf("idempotency: hash request: %w", err)
	}
	out, err := answer(ctx, k, requestID, method, req, hash, newResp)
	if err != nil {
		return zero, false, err
	}
	return out, true, nil
}

// Refused is for a refusal a handler decided before its transaction, on
// what it read after Stored found no answer. The first call with
// requestID may have committed in between and changed what was read (a
// hold it converted, an etag it moved), and its retry would then be
// refused for the first call's own work. Refused returns that call's
// stored answer if there is one now, and err otherwise.
func Refused[T proto.Message](ctx context.Context, db interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, clinic, method, requestID string, req proto.Message, newResp func() T, err error) (T, error) {
	if out, ok, serr := Stored(ctx, db, clinic, method, requestID, req, newResp); ok || serr != nil {
		return out, serr
	}
	var zero T
	return zero, err
}

// key is a stored request id.
type key struct {
	method    string
	hash      []byte
	resp      []byte
	caller    *string // nil for keys stored before callers were
	resource  string  // what the response names, if known
	forgotten bool    // the response was dropped with its record
}

// answer is what a call with a request id already stored gets: the stored
// response for the same request, or REQUEST_ID_REUSED for another, naming
// what the first request made when the caller and method are the same.
// hash leaves the etags out; keys stored before it did hashed req whole.
func answer[T proto.Message](ctx context.Context, k key, requestID, method string, req proto.Message, hash []byte, newResp func() T) (T, error) {
	same := bytes.Equal(k.hash, hash)
	if !same && k.method == method {
		if whole, err := requestHash(ctx, req); err == nil {
			same = bytes.Equal(k.hash, whole)
		}
	}
	if k.method == method && same && k.forgotten {
		// Answered as a first call would be now; the id still keeps the
		// call from running twice (a create is not made again).
		var zero T
		return zero, apperr.NotFound(k.resource)
	}
	if k.method == method && same {
		out := newResp()
		if err := proto.Unmarshal(k.resp, out); err != nil {
			var zero T
			return zero, fmt.Errorf("idempotency: decode stored response: %w", err)
		}
		return out, nil
	}
	made := ""
	if c := caller(ctx); k.method == method && k.caller != nil && c != "" && *k.caller == c && k.resp != nil && !k.forgotten {
		if out := newResp(); proto.Unmarshal(k.resp, out) == nil {
			made = name(out)
		}
	}
	var zero T
	return zero, apperr.RequestIDReused(requestID, made)
}

// ForgetResource drops, in q (the deleting transaction), the stored
// responses that name resource or a record under it, but for the
// collections kept (records that outlive it): a retry must not get back a
// copy of what was deleted. The request ids stay, so the calls are not run
// again; a retry gets NOT_FOUND for what its response named.
func ForgetResource(ctx context.Context, q Execer, clinic, resource string, kept ...string) error {
	escape := strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace
	under := escape(resource) + "/"
	keep := []string{}
	for _, c := range kept {
		keep = append(keep, under+escape(c)+"/%")
	}
	if _, err := q.Exec(ctx, `UPDATE idempotency_keys SET response = NULL, forgotten = true
		WHERE clinic = $1 AND (resource = $2 OR (resource LIKE $3 AND NOT resource LIKE ANY($4))) AND NOT forgotten`,
		clinic, resource, under+"%", keep); err != nil {
		return fmt.Errorf("idempotency: forget the responses about %s: %w", resource, err)
	}
	return nil
}

// Forget deletes up to limit request ids stored before before, oldest
// first, and returns how many it deleted. A stored response can hold what
// the call returned (a signing secret, a record): it is kept only as long
// as a retry of the call can still come.
func Forget(ctx context.Context, q Execer, before time.Time, limit int) (int64, error) {
	tag, err := q.Exec(ctx, `DELETE FROM idempotency_keys k USING (
			SELECT clinic, caller, request_id FROM idempotency_keys WHERE create_time < $1 ORDER BY create_time LIMIT $2) old
		WHERE k.clinic = old.clinic AND k.request_id = old.request_id AND k.caller = old.caller`, before, limit)
	if err != nil {
		return 0, fmt.Errorf("idempotency: forget request ids: %w", err)
	}
	return tag.RowsAffected(), nil
}

// Execer runs a statement: a pool, a connection or a transaction.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}
