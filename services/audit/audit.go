// Package audit records every call to a Handoff service that reads or
// changes a clinic's data, and lists the record for administrators.
package audit

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	auditv1 "github.com/handoff-health/handoff/gen/go/handoff/audit/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/pgdb"
)

// Event is one call to record.
type Event struct {
	Subject   string
	Roles     []string
	Method    string
	Resource  string
	Outcome   string
	RequestID string
}

// Recorder writes events to a service's audit_log, in the call's clinic
// scope (row-level security checks the clinic).
type Recorder struct {
	DB *pgdb.DB
}

// The time is when the record is written (clock_timestamp), not when its
// transaction began (now()). A record written with a change goes with that
// transaction's first statement (pgdb.Stamp) and draws its id then, so a
// listing paged by id while the change is still uncommitted can pass its
// id by; a listing made after the commit shows it.
const insert = `INSERT INTO audit_log (clinic, subject, roles, method, resource, outcome, request_id, event_time)
	VALUES ($1, $2, $3, $4, $5, $6, $7, clock_timestamp())`

// clean replaces NUL characters, which PostgreSQL's text refuses, in what
// the caller sent (a name, a request id) or its token named: a request
// refused for a NUL must still be recorded, and its refusal must not turn
// into an internal error when the record fails.
func (e Event) clean() Event {
	c := func(s string) string { return strings.ReplaceAll(s, "\x00", "\uFFFD") }
	e.Subject, e.Method, e.Resource, e.Outcome, e.RequestID = c(e.Subject), c(e.Method), c(e.Resource), c(e.Outcome), c(e.RequestID)
	if slices.ContainsFunc(e.Roles, func(r string) bool { return strings.Contains(r, "\x00") }) {
		roles := make([]string, len(e.Roles))
		for i, r := range e.Roles {
			roles[i] = c(r)
		}
		e.Roles = roles
	}
	return e
}

// Record writes one event.
func (r *Recorder) Record(ctx context.Context, e Event) error {
	clinic := pgdb.ClinicOf(ctx)
	if clinic == "" || clinic == pgdb.SystemScope {
		return fmt.Errorf("audit: no clinic scope for %s", e.Method)
	}
	e = e.clean()
	if _, err := r.DB.Exec(ctx, insert, clinic, e.Subject, e.Roles, e.Method, e.Resource, e.Outcome, e.RequestID); err != nil {
		return fmt.Errorf("audit: record %s: %w", e.Method, err)
	}
	return nil
}

// Stamp returns e, with outcome OK, as a statement for the call's first
// committing transaction to write (pgdb.Stamp), or nil without a clinic
// scope. A change then never commits without its record.
func (r *Recorder) Stamp(ctx context.Context, e Event) *pgdb.Stamp {
	clinic := pgdb.ClinicOf(ctx)
	if clinic == "" || clinic == pgdb.SystemScope {
		return nil
	}
	e = e.clean()
	return &pgdb.Stamp{SQL: insert, Args: []any{clinic, e.Subject, e.Roles, e.Method, e.Resource, Outcome(codes.OK), e.RequestID}}
}

var filterFields = map[string]aip.FilterField{
	"subject":  {Column: "subject", Kind: aip.String},
	"method":   {Column: "method", Kind: aip.String},
	"resource": {Column: "resource", Kind: aip.String},
	"outcome":  {Column: "outcome", Kind: aip.String},
	"time":     {Column: "event_time", Kind: aip.Time},
}

// List implements ListAuditEvents over db's audit_log.
func List(ctx context.Context, db *pgdb.DB, req *auditv1.ListAuditEventsRequest) (*auditv1.ListAuditEventsResponse, error) {
	ids, err := aip.Parse(req.GetParent(), "clinics")
	if err != nil {
		return nil, apperr.Field("parent", "%v", err)
	}
	clinic := ids[0]
	if err := auth.CheckClinic(ctx, clinic, req.GetParent()); err != nil {
		return nil, err
	}
	f, after, q, err := aip.ListArgs(req.GetParent(), req.GetFilter(), req.GetPageToken(), filterFields)
	if err != nil {
		return nil, err
	}
	var afterID int64
	if after != "" {
		if afterID, err = strconv.ParseInt(after, 10, 64); err != nil {
			return nil, apperr.Field("page_token", "malformed")
		}
	}
	size := aip.PageSize(req.GetPageSize())
	where, args := f.SQL(4)
	rows, err := db.Query(ctx, `SELECT id, event_time, subject, roles, clinic, method, resource, outcome, request_id
		FROM audit_log WHERE clinic = $1 AND id > $2 AND `+where+` ORDER BY id LIMIT $3`,
		append([]any{clinic, afterID, size + 1}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("list audit events: %w", err)
	}
	type row struct {
		id int64
		e  *auditv1.AuditEvent
	}
	items, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var (
			id  int64
			at  time.Time
			out = &auditv1.AuditEvent{}
		)
		if err := r.Scan(&id, &at, &out.Subject, &out.Roles, &out.Clinic, &out.Method, &out.Resource, &out.Outcome, &out.RequestId); err != nil {
			return row{}, err
		}
		out.Time = timestamppb.New(at)
		return row{id, out}, nil
	})
	if err != nil {
		return nil, fmt.Errorf("list audit events: %w", err)
	}
	items, next := aip.Page(items, size, q, func(r row) string { return strconv.FormatInt(r.id, 10) })
	resp := &auditv1.ListAuditEventsResponse{NextPageToken: next}
	for _, it := range items {
		resp.AuditEvents = append(resp.AuditEvents, it.e)
	}
	return resp, nil
}

// Outcome renders a gRPC code as its canonical name: OK, NOT_FOUND,
// PERMISSION_DENIED.
func Outcome(c codes.Code) string {
	var b strings.Builder
	prev := rune(0)
	for _, r := range c.String() {
		if unicode.IsUpper(r) && unicode.IsLower(prev) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
		prev = r
	}
	return b.String()
}

// Roles renders roles for an event.
func Roles(rs []auth.Role) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = strings.TrimSpace(string(r))
	}
	return out
}
