// Package audit records every call to a Handoff service that reads or
// changes a clinic's data, and lists the record for administrators.
package audit

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	rpccode "google.golang.org/genproto/googleapis/rpc/code"
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
	// Creates says the call creates a record under Resource (its parent):
	// the record's name, once known, takes Resource's place (see Stamp).
	Creates bool
	// Elsewhere says the record it creates lies elsewhere in Resource's
	// clinic (HoldSlot names a program and makes a hold).
	Elsewhere bool
	// Records are the names of the records a list or search returned
	// (nil for other calls): the caller saw each.
	Records []string
}

// MaxRecords is the most names an event keeps of what a list returned:
// the largest page a list gives.
const MaxRecords = 1000

// disclosed gathers the names of the records a call passes on in an
// answer that is not a list (a calendar feed's export), for its record.
type disclosed struct {
	mu     sync.Mutex
	names  []string
	filled int // how many names the stamp was last written with (Stamp's Fill); -1 before
}

type disclosedKey struct{}

// Gathering returns ctx in which Disclose notes names for the call's
// record, and a function that returns those noted so far, and those of
// them noted after the call's stamp was written (Stamp): a record written
// with the call's first statement names only what was noted by then, and
// the call then needs one more record, naming the rest (each name once in
// the trail, so that a count of who saw a record counts the call once).
func Gathering(ctx context.Context) (context.Context, func() (names, late []string)) {
	d := &disclosed{filled: -1}
	return context.WithValue(ctx, disclosedKey{}, d), func() ([]string, []string) {
		d.mu.Lock()
		defer d.mu.Unlock()
		var late []string
		if d.filled >= 0 && len(d.names) > d.filled {
			late = slices.Clone(d.names[d.filled:])
		}
		return slices.Clone(d.names), late
	}
}

// fill returns the names noted so far, for the stamp being written.
func (d *disclosed) fill() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.filled = len(d.names)
	return slices.Clone(d.names)
}

// Disclose notes that the call's answer holds the records named, so that
// its audit record names each (at most MaxRecords), as a list's does. A
// handler whose answer is not a list of records calls it, best before its
// first transaction begins: its first statement may carry the call's
// record (Stamp), which names only what was noted by then, and a name
// noted later costs the call a second record. Without Gathering it does
// nothing.
func Disclose(ctx context.Context, names ...string) {
	d, ok := ctx.Value(disclosedKey{}).(*disclosed)
	if !ok {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, n := range names {
		if len(d.names) == MaxRecords {
			return
		}
		d.names = append(d.names, n)
	}
}

// Recorder writes events to a service's audit_log, in the call's clinic
// scope (row-level security checks the clinic).
type Recorder struct {
	DB *pgdb.DB
}

// The time is when the record is written (clock_timestamp), not when its
// transaction began (now()). A record written with a change goes with that
// transaction's first statement (pgdb.Stamp); the column default notes its
// transaction (xact), which List pages by.
const insert = `INSERT INTO audit_log (clinic, subject, roles, method, resource, outcome, request_id, records, event_time)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8, clock_timestamp())`

// insertListed is insert for a call that returned records: the event,
// and a row for each record for the `record` filter, in one statement.
const insertListed = `WITH e AS (` + insert + ` RETURNING id)
	INSERT INTO audit_records (clinic, record, audit_id) SELECT $1, r, e.id FROM e, unnest($8::text[]) r`

// clean replaces NUL characters, which PostgreSQL's text refuses, in what
// the caller sent (a name, a request id) or its token named: a request
// refused for a NUL must still be recorded, and its refusal must not turn
// into an internal error when the record fails.
//
// The resource and request id are cut to maxField bytes: they are what the
// caller sent, recorded before it is validated, and a table the services
// may only add to must not take a megabyte a call.
func (e Event) clean() Event {
	c := func(s string) string { return strings.ReplaceAll(s, "\x00", "\uFFFD") }
	e.Subject, e.Method, e.Resource, e.Outcome, e.RequestID = c(e.Subject), c(e.Method), c(cut(e.Resource)), c(e.Outcome), c(cut(e.RequestID))
	if e.Records != nil {
		records := make([]string, 0, min(len(e.Records), MaxRecords))
		for _, r := range e.Records[:min(len(e.Records), MaxRecords)] {
			records = append(records, c(cut(r)))
		}
		e.Records = records
	}
	if slices.ContainsFunc(e.Roles, func(r string) bool { return strings.Contains(r, "\x00") }) {
		roles := make([]string, len(e.Roles))
		for i, r := range e.Roles {
			roles[i] = c(r)
		}
		e.Roles = roles
	}
	return e
}

// maxField is the most of a resource name or request id recorded; longer
// ones are cut and marked so. A valid name is far shorter.
const maxField = 512

// cut shortens s to maxField bytes, on a character boundary, marked "…".
func cut(s string) string {
	if len(s) <= maxField {
		return s
	}
	n := maxField
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// Record writes one event.
func (r *Recorder) Record(ctx context.Context, e Event) error {
	clinic := pgdb.ClinicOf(ctx)
	if clinic == "" || clinic == pgdb.SystemScope {
		return fmt.Errorf("audit: no clinic scope for %s", e.Method)
	}
	e = e.clean()
	stmt := insert
	if len(e.Records) > 0 {
		stmt = insertListed
	}
	if _, err := r.DB.Exec(ctx, stmt, clinic, e.Subject, e.Roles, e.Method, e.Resource, e.Outcome, e.RequestID, e.Records); err != nil {
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
	args := func(resource string) []any {
		return []any{clinic, e.Subject, e.Roles, e.Method, resource, Outcome(codes.OK), e.RequestID, []string(nil)}
	}
	// A create's record waits for the statement that writes the record it
	// makes, to name it (pgdb.ExecNaming); committed without one, it names
	// the parent.
	st := &pgdb.Stamp{SQL: insert, Args: args(e.Resource), Deferred: e.Creates, Resource: e.Resource,
		Rename: func(resource string) []any { return args(Event{Resource: resource}.clean().Resource) }}
	if d, ok := ctx.Value(disclosedKey{}).(*disclosed); ok {
		// What the call noted (Disclose) before the stamp is written is
		// named; the interceptor records the rest (Gathering).
		st.Fill = func(a []any) (string, []any) {
			names := Event{Records: d.fill()}.clean().Records
			if len(names) == 0 {
				return insert, a
			}
			a = slices.Clone(a)
			a[len(a)-1] = names
			return insertListed, a
		}
	}
	if e.Elsewhere {
		st.Within = e.Within(clinic)
	}
	return st
}

// Within is the prefix of the names of the records a create of e may
// make: those under its resource, or, for one that makes its record
// elsewhere (Elsewhere), any in clinic.
func (e Event) Within(clinic string) string {
	if e.Elsewhere {
		return "clinics/" + clinic + "/"
	}
	return e.Resource + "/"
}

var filterFields = map[string]aip.FilterField{
	"subject":  {Column: "subject", Kind: aip.String},
	"method":   {Column: "method", Kind: aip.String},
	"resource": {Column: "resource", Kind: aip.String},
	"outcome":  {Column: outcomeColumn, Kind: aip.String},
	"time":     {Column: "event_time", Kind: aip.Time},
	"record":   {Kind: aip.Custom, Render: RecordFilter},
}

// RecordFilter is the `record` filter's condition: the events that named
// the record p or returned it in a list, each found by its own index in
// the record's clinic (a name's second segment; the query's clinic bounds
// it anyway). A join on the ids, not an OR: under row security the
// planner reads an OR of the two by no index.
func RecordFilter(p string) string {
	return fmt.Sprintf(`id IN (SELECT a.id FROM audit_log a WHERE a.clinic = split_part(%[1]s, '/', 2) AND a.resource = %[1]s
		UNION ALL SELECT r.audit_id FROM audit_records r WHERE r.clinic = split_part(%[1]s, '/', 2) AND r.record = %[1]s)`, p)
}

// List implements ListAuditEvents over db's audit_log, the trail the
// service named keeps. Its page tokens serve that trail only: every
// service's trail has the same parent and filters, and a token's cursor
// is a place in one service's table, which another's would silently page
// from.
func List(ctx context.Context, db *pgdb.DB, service string, req *auditv1.ListAuditEventsRequest) (*auditv1.ListAuditEventsResponse, error) {
	ids, err := aip.Parse(req.GetParent(), "clinics")
	if err != nil {
		return nil, apperr.Field("parent", "%v", err)
	}
	clinic := ids[0]
	if err := auth.CheckClinic(ctx, clinic, req.GetParent()); err != nil {
		return nil, err
	}
	f, after, q, err := aip.ListArgs(service+" audit events", req.GetParent(), req.GetFilter(), req.GetPageToken(), filterFields)
	if err != nil {
		return nil, err
	}
	cur, err := parseCursor(after)
	if err != nil {
		return nil, err
	}
	size := aip.PageSize(req.GetPageSize())
	where, args := f.SQL(5)
	// The trail is read in transaction order, which a time bound does not
	// index: from a lower bound, the scan would start at the clinic's
	// oldest record and read on until a page filled, and to an upper one
	// its last page would read on to the newest. Every record in the
	// bounds lies between the least and the greatest transaction of the
	// records written within them, which audit_log_time finds without
	// reading the table: the first page starts at the least, and every
	// page ends by the greatest, which its token carries on. An upper bound
	// alone is left as it is: finding its greatest would read every record
	// before it, mostly more than a last page reads after it.
	if from, to, fromOK, toOK := f.TimeBounds("event_time"); after == "" && fromOK {
		// An upper bound is kept only well past: records up to one not
		// yet past may still be written, by transactions that begin after
		// this page, and would fall past the greatest found now.
		toOK = toOK && to.Before(time.Now().Add(-time.Minute))
		found, err := narrowToWindow(ctx, db, clinic, &cur, from, to, fromOK, toOK)
		if err != nil {
			return nil, err
		}
		if !found {
			return &auditv1.ListAuditEventsResponse{}, nil
		}
	}
	if cur.hi != "" {
		args = append(args, cur.hi)
		where += fmt.Sprintf(` AND xact <= $%d::text::xid8`, 4+len(args))
	}
	// In transaction order, and only records of transactions older than
	// every one still running: a record whose transaction commits late
	// cannot land behind a page already read (ids are drawn at the write,
	// not the commit). A record shows once the transactions begun before
	// its own have ended, normally within milliseconds.
	rows, err := db.Query(ctx, `SELECT xact::text, id, event_time, subject, roles, clinic, method, resource, `+outcomeColumn+`, request_id, records
		FROM audit_log WHERE clinic = $1 AND (xact, id) > ($2::text::xid8, $3)
		AND xact < pg_snapshot_xmin(pg_current_snapshot()) AND `+where+` ORDER BY xact, id LIMIT $4`,
		append([]any{clinic, cur.xact, cur.id, size + 1}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("list audit events: %w", err)
	}
	type row struct {
		cur cursor
		e   *auditv1.AuditEvent
	}
	items, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var (
			c   cursor
			at  time.Time
			out = &auditv1.AuditEvent{}
		)
		if err := r.Scan(&c.xact, &c.id, &at, &out.Subject, &out.Roles, &out.Clinic, &out.Method, &out.Resource, &out.Outcome, &out.RequestId, &out.Records); err != nil {
			return row{}, err
		}
		out.Time = timestamppb.New(at)
		return row{c, out}, nil
	})
	if err != nil {
		return nil, fmt.Errorf("list audit events: %w", err)
	}
	items, next := aip.Page(items, size, q, func(r row) string { c := r.cur; c.hi = cur.hi; return c.String() })
	resp := &auditv1.ListAuditEventsResponse{NextPageToken: next}
	for _, it := range items {
		resp.AuditEvents = append(resp.AuditEvents, it.e)
	}
	return resp, nil
}

// narrowToWindow moves cur up to the least transaction of the clinic's
// records written from from (with fromOK), and bounds it by the greatest
// of those written to to (with toOK); found is false when there are none.
func narrowToWindow(ctx context.Context, db *pgdb.DB, clinic string, cur *cursor, from, to time.Time, fromOK, toOK bool) (found bool, err error) {
	var lo, hi *string
	args := []any{clinic}
	if fromOK {
		args = append(args, from)
	}
	if toOK {
		args = append(args, to)
	}
	if err := db.QueryRow(ctx, windowQuery(fromOK, toOK), args...).Scan(&lo, &hi); err != nil {
		return false, fmt.Errorf("list audit events: find the time bounds: %w", err)
	}
	if lo == nil {
		return false, nil
	}
	if fromOK {
		// The first page: from the window's first transaction, every
		// record of it.
		cur.xact, cur.id = *lo, 0
	}
	if toOK {
		cur.hi = *hi
	}
	return true, nil
}

// windowQuery reads the least and greatest transaction of a clinic's
// ($1) records written from $2 (with from) and to the next parameter
// (with to). OFFSET 0 keeps the planner from taking min and max off the
// transaction order instead, walking it from one end to the first record
// in the window: the scan this avoids.
func windowQuery(from, to bool) string {
	window, n := "TRUE", 2
	if from {
		window, n = `event_time >= $2`, 3
	}
	if to {
		window += fmt.Sprintf(` AND event_time <= $%d`, n)
	}
	// The greatest is at least the snapshot's xmax: a transaction still
	// running may yet commit a record within the bounds, and its id is
	// below xmax. The least is at most the snapshot's xmin for the same
	// reason: such a transaction's id may lie below every committed
	// record's in the bounds, and a first page starting past it would
	// leave its record out of every page that follows. A transaction
	// left open for long (on any clinic's behalf) so makes a first page
	// read the clinic's records from when it began: the price of not
	// losing one.
	return `SELECT CASE WHEN lo IS NOT NULL THEN least(lo, pg_snapshot_xmin(pg_current_snapshot()))::text END,
		greatest(hi, pg_snapshot_xmax(pg_current_snapshot()))::text
		FROM (SELECT min(xact) AS lo, max(xact) AS hi
		FROM (SELECT xact FROM audit_log WHERE clinic = $1 AND ` + window + ` OFFSET 0) w) m`
}

// cursor is where a page of the audit trail ends: a record's transaction
// and id.
type cursor struct {
	xact string // an xid8, as text: pgx has no type for it
	id   int64
	// hi, when the filter has an upper time bound, is the greatest
	// transaction within the bounds: found once, on the first page.
	hi string
}

func (c cursor) String() string {
	s := c.xact + ":" + strconv.FormatInt(c.id, 10)
	if c.hi != "" {
		s += ":" + c.hi
	}
	return s
}

// parseCursor reads a page token's key. A bare id is a token minted before
// records noted their transaction: it resumes among the records written
// before that (transaction 0), so it repeats newer records rather than
// pass any by.
func parseCursor(after string) (cursor, error) {
	if after == "" {
		return cursor{xact: "0"}, nil
	}
	xact, id, found := strings.Cut(after, ":")
	if !found {
		xact, id = "0", after
	}
	id, hi, bounded := strings.Cut(id, ":")
	x, xerr := strconv.ParseUint(xact, 10, 64)
	n, ierr := strconv.ParseInt(id, 10, 64)
	h, herr := strconv.ParseUint(hi, 10, 64)
	if xerr != nil || ierr != nil || n < 0 || bounded && herr != nil {
		return cursor{}, apperr.Field("page_token", "malformed")
	}
	c := cursor{xact: strconv.FormatUint(x, 10), id: n}
	if bounded {
		c.hi = strconv.FormatUint(h, 10)
	}
	return c, nil
}

// Outcome renders a gRPC code as its canonical name: OK, NOT_FOUND,
// PERMISSION_DENIED, CANCELLED (google.rpc.Code's, which grpc-go's
// String spells Canceled).
func Outcome(c codes.Code) string {
	return rpccode.Code(c).String()
}

// outcomeColumn reads the outcome as Outcome now renders it: releases
// before it stored a cancelled call as CANCELED. The records stay as they
// were written; reads and filters see the canonical name.
const outcomeColumn = `(CASE outcome WHEN 'CANCELED' THEN 'CANCELLED' ELSE outcome END)`

// Roles renders roles for an event exactly as the token gave them, as
// authorization compared them: a role with a stray space granted nothing,
// and the record must not show it as if it had.
func Roles(rs []auth.Role) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = string(r)
	}
	return out
}
