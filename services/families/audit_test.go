package families_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	auditv1 "github.com/handoff-health/handoff/gen/go/handoff/audit/v1"
	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

// N calls that touch a clinic's data leave exactly N audit rows, with who,
// role, method, resource, outcome and request id; the application role can
// add rows but never change or delete them.
func TestEveryCallIsAudited(t *testing.T) {
	t.Parallel()
	f := setup(t)
	count := func() int {
		var n int
		if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM audit_log`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := count()
	fam, err := f.client.CreateFamily(f.ctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: sampleFamily(), RequestId: "audit-req-1"})
	if err != nil {
		t.Fatal(err)
	}
	// The change and its record commit together, in one transaction.
	var familyTx, recordTx string
	if err := f.pool.QueryRow(context.Background(), `SELECT xmin::text FROM families WHERE id = $1`, aip.ID(fam.GetName())).Scan(&familyTx); err != nil {
		t.Fatal(err)
	}
	if err := f.pool.QueryRow(context.Background(), `SELECT xmin::text FROM audit_log WHERE request_id = 'audit-req-1'`).Scan(&recordTx); err != nil {
		t.Fatal(err)
	}
	if familyTx != recordTx {
		t.Errorf("the family was written by transaction %s, its audit record by %s: want one", familyTx, recordTx)
	}
	calls := []func() error{
		func() error {
			_, err := f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
			return err
		},
		func() error {
			_, err := f.client.ListFamilies(f.ctx, &familiesv1.ListFamiliesRequest{Parent: "clinics/north"})
			return err
		},
		func() error {
			_, err := f.client.ListBarriers(f.ctx, &familiesv1.ListBarriersRequest{Parent: fam.GetName()})
			return err
		},
		// A refused call is recorded too, with its outcome.
		func() error {
			_, err := f.client.DeleteFamily(f.ctx, &familiesv1.DeleteFamilyRequest{Name: fam.GetName()})
			return err
		},
	}
	for _, c := range calls {
		_ = c()
	}
	if got := count() - before; got != 1+len(calls) {
		t.Fatalf("%d audit rows for %d calls", got, 1+len(calls))
	}
	admin := f.env.As("north", "admin-1", auth.RoleClinicAdmin)
	client := familiesv1.NewFamiliesServiceClient(f.env.Conn)
	// A record shows once the transactions begun before its own have ended:
	// the package's other tests write meanwhile.
	var resp *auditv1.ListAuditEventsResponse
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err = client.ListAuditEvents(admin, &auditv1.ListAuditEventsRequest{Parent: "clinics/north", Filter: `subject = "counselor-1"`})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetAuditEvents()) >= 5 || time.Now().After(deadline) {
			break
		}
	}
	if len(resp.GetAuditEvents()) != 5 {
		t.Fatalf("events = %v", resp.GetAuditEvents())
	}
	first, last := resp.GetAuditEvents()[0], resp.GetAuditEvents()[4]
	// A create is recorded by the record it made, not by its parent: "who
	// created this family?" finds it.
	if first.GetMethod() != "/handoff.families.v1.FamiliesService/CreateFamily" || first.GetResource() != fam.GetName() ||
		first.GetRequestId() != "audit-req-1" || first.GetOutcome() != "OK" || first.GetRoles()[0] != "counselor" {
		t.Fatalf("first event = %v", first)
	}
	if last.GetOutcome() != "PERMISSION_DENIED" || last.GetResource() != fam.GetName() {
		t.Fatalf("last event = %v", last)
	}
	_, err = client.ListAuditEvents(f.ctx, &auditv1.ListAuditEventsRequest{Parent: "clinics/north"})
	wantCode(t, err, codes.PermissionDenied)
	// A retried create, given its first answer without a commit, is
	// recorded by that record too; so is a child's, under its family.
	if _, err := f.client.CreateFamily(f.ctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: sampleFamily(), RequestId: "audit-req-1"}); err != nil {
		t.Fatal(err)
	}
	b, err := f.client.CreateBarrier(f.ctx, &familiesv1.CreateBarrierRequest{Parent: fam.GetName(), Barrier: &familiesv1.Barrier{Kind: familiesv1.BarrierKind_BARRIER_KIND_STIGMA}})
	if err != nil {
		t.Fatal(err)
	}
	// An overdose's event is no *.created one: its record names the sign
	// all the same, and goes with the sign's insert, in no round trip of
	// its own.
	ws, err := f.client.CreateWarningSign(f.ctx, &familiesv1.CreateWarningSignRequest{Parent: fam.GetName(),
		WarningSign: &familiesv1.WarningSign{Kind: familiesv1.WarningSignKind_WARNING_SIGN_KIND_OVERDOSE}})
	if err != nil {
		t.Fatal(err)
	}
	var recordCmd, signCmd int
	if err := f.pool.QueryRow(context.Background(), `SELECT (SELECT cmin::text::int FROM audit_log WHERE method LIKE '%/CreateWarningSign' AND resource = $1),
		(SELECT cmin::text::int FROM warning_signs WHERE id = $2)`, ws.GetName(), aip.ID(ws.GetName())).Scan(&recordCmd, &signCmd); err != nil || recordCmd != signCmd-1 {
		t.Fatalf("the overdose's record by command %d, its insert by %d (%v): want the record, naming the sign, just before it", recordCmd, signCmd, err)
	}
	var named []string
	rows, err := f.pool.Query(context.Background(), `SELECT resource FROM audit_log WHERE method LIKE '%/Create%' AND method NOT LIKE '%/CreateWarningSign'
		AND subject = 'counselor-1' ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var r string
		if err := rows.Scan(&r); err != nil {
			t.Fatal(err)
		}
		named = append(named, r)
	}
	if want := []string{fam.GetName(), fam.GetName(), b.GetName()}; !slices.Equal(named, want) {
		t.Fatalf("the creates' records name %v; want %v", named, want)
	}
	// Another clinic's administrator sees none of it.
	other, err := client.ListAuditEvents(f.env.As("south", "admin-2", auth.RoleClinicAdmin), &auditv1.ListAuditEventsRequest{Parent: "clinics/north"})
	wantCode(t, err, codes.NotFound)
	_ = other

	app := pgtest.App(t, f.schema)
	ctx := pgdb.WithClinic(context.Background(), "north")
	for _, stmt := range []string{`UPDATE audit_log SET outcome = 'OK'`, `DELETE FROM audit_log`, `TRUNCATE audit_log`} {
		if _, err := app.Exec(ctx, stmt); err == nil {
			t.Fatalf("the application role could run %q", stmt)
		}
	}
	if _, err := app.Exec(ctx, `INSERT INTO audit_log (clinic, subject, roles, method, outcome) VALUES ('north', 's', '{}', 'm', 'OK')`); err != nil {
		t.Fatalf("the application role cannot append: %v", err)
	}
}

// A NUL in a name or a request id (which PostgreSQL's text refuses) is a
// field violation, not an internal error, and the refused call is still
// recorded.
func TestNULInANameIsRefusedAndRecorded(t *testing.T) {
	t.Parallel()
	f := setup(t)
	_, err := f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: "clinics/north/families/a\x00b"})
	if st := wantCode(t, err, codes.InvalidArgument); !strings.Contains(st.Message(), "name") {
		t.Fatalf("refusal %q names no field", st.Message())
	}
	_, err = f.client.CreateFamily(f.ctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: sampleFamily(), RequestId: "r\x00"})
	wantCode(t, err, codes.InvalidArgument)
	var n int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM audit_log
		WHERE outcome = 'INVALID_ARGUMENT' AND (resource LIKE '%' || U&'\FFFD' || '%' OR request_id LIKE '%' || U&'\FFFD' || '%')`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("%d records of the refused calls (%v); want 2", n, err)
	}
}

// A record whose transaction commits late is not passed by: the list shows
// no record of a transaction younger than one still running, so a reader
// paging through cannot move past it while it is uncommitted.
func TestAuditListWaitsForLateCommits(t *testing.T) {
	t.Parallel()
	f := setup(t)
	ctx := context.Background()
	const resource = "clinics/north/families/late-commit"
	late, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Rollback(ctx)
	if _, err := late.Exec(ctx, `INSERT INTO audit_log (clinic, subject, roles, method, resource, outcome)
		VALUES ('north', 'late-writer', '{}', 'm', $1, 'OK')`, resource); err != nil {
		t.Fatal(err)
	}
	// Two records committed after the late one drew its id.
	for range 2 {
		_, err := f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: resource})
		wantCode(t, err, codes.NotFound)
	}
	client := familiesv1.NewFamiliesServiceClient(f.env.Conn)
	admin := f.env.As("north", "admin-1", auth.RoleClinicAdmin)
	list := func(token string) *auditv1.ListAuditEventsResponse {
		t.Helper()
		resp, err := client.ListAuditEvents(admin, &auditv1.ListAuditEventsRequest{
			Parent: "clinics/north", Filter: `resource = "` + resource + `"`, PageSize: 1, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	first := list("")
	if len(first.GetAuditEvents()) != 0 {
		t.Fatalf("with an older transaction still running the list showed %v", first.GetAuditEvents())
	}
	if err := late.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	// Follow the pages from where the reader stood, as a reader would.
	var subjects []string
	for deadline := time.Now().Add(30 * time.Second); len(subjects) < 3 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		subjects = nil
		for token := first.GetNextPageToken(); ; {
			resp := list(token)
			for _, e := range resp.GetAuditEvents() {
				subjects = append(subjects, e.GetSubject())
			}
			if token = resp.GetNextPageToken(); token == "" {
				break
			}
		}
	}
	if want := []string{"late-writer", "counselor-1", "counselor-1"}; !slices.Equal(subjects, want) {
		t.Fatalf("records after the late commit = %v, want %v", subjects, want)
	}
	// A token of the form minted before records noted their transaction
	// (a bare id) still resumes, and a broken one is a field violation.
	filter := `resource = "` + resource + `"`
	old := list(aip.EncodePageToken("0", aip.QueryHash("families audit events", "clinics/north", filter)))
	if len(old.GetAuditEvents()) != 1 || old.GetAuditEvents()[0].GetSubject() != "late-writer" {
		t.Fatalf("a bare-id token's page = %v", old.GetAuditEvents())
	}
	for _, key := range []string{"x:1", "1:x", "1:-2", "-1"} {
		_, err := client.ListAuditEvents(admin, &auditv1.ListAuditEventsRequest{
			Parent: "clinics/north", Filter: filter, PageToken: aip.EncodePageToken(key, aip.QueryHash("families audit events", "clinics/north", filter))})
		if st := wantCode(t, err, codes.InvalidArgument); !strings.Contains(st.Message(), "page_token") {
			t.Fatalf("token key %q: refusal %q names no field", key, st.Message())
		}
	}
}

// A list shows the caller every record on its page, and its audit record
// names each: "who saw this family's record?" (filter record = ...)
// finds the lists that showed it beside the calls that named it, and not
// the lists that did not.
func TestAListIsAuditedByTheRecordsItShowed(t *testing.T) {
	t.Parallel()
	f := setup(t)
	var fams []*familiesv1.Family
	for i := range 3 {
		fam, err := f.client.CreateFamily(f.ctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: sampleFamily(),
			RequestId: "records-" + string(rune('a'+i))})
		if err != nil {
			t.Fatal(err)
		}
		fams = append(fams, fam)
	}
	reader := f.env.As("north", "counselor-9", auth.RoleCounselor)
	page, err := f.client.ListFamilies(reader, &familiesv1.ListFamiliesRequest{Parent: "clinics/north", PageSize: 2})
	if err != nil || len(page.GetFamilies()) != 2 {
		t.Fatalf("ListFamilies = %v, %v", page, err)
	}
	shown := []string{page.GetFamilies()[0].GetName(), page.GetFamilies()[1].GetName()}
	var unshown string
	for _, fam := range fams {
		if !slices.Contains(shown, fam.GetName()) {
			unshown = fam.GetName()
		}
	}
	if _, err := f.client.GetFamily(reader, &familiesv1.GetFamilyRequest{Name: unshown}); err != nil {
		t.Fatal(err)
	}
	admin := f.env.As("north", "admin-1", auth.RoleClinicAdmin)
	events := func(filter string) []*auditv1.AuditEvent {
		t.Helper()
		var got []*auditv1.AuditEvent
		// A record shows once the transactions begun before its own end.
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			resp, err := f.client.ListAuditEvents(admin, &auditv1.ListAuditEventsRequest{Parent: "clinics/north",
				Filter: `subject = "counselor-9" AND ` + filter})
			if err != nil {
				t.Fatal(err)
			}
			got = resp.GetAuditEvents()
			if len(got) > 0 || time.Now().After(deadline) {
				return got
			}
		}
	}
	list := events(`record = "` + shown[1] + `"`)
	if len(list) != 1 || !strings.HasSuffix(list[0].GetMethod(), "/ListFamilies") || list[0].GetResource() != "clinics/north" ||
		!slices.Equal(list[0].GetRecords(), shown) {
		t.Fatalf("who saw %s: %v; want the list, naming the two families it showed", shown[1], list)
	}
	got := events(`record = "` + unshown + `"`)
	if len(got) != 1 || !strings.HasSuffix(got[0].GetMethod(), "/GetFamily") || len(got[0].GetRecords()) != 0 {
		t.Fatalf("who saw %s: %v; want the get alone, the list did not show it", unshown, got)
	}
	_, err = f.client.ListAuditEvents(admin, &auditv1.ListAuditEventsRequest{Parent: "clinics/north", Filter: `record != "` + unshown + `"`})
	wantCode(t, err, codes.InvalidArgument)
	// A service identity's list is recorded by its parent alone: the
	// calendar reader lists a clinic's families at every feed read.
	reader = f.env.As("*", "calendar-reader", auth.RoleCalendarReader)
	if _, err := f.client.ListFamilies(reader, &familiesv1.ListFamiliesRequest{Parent: "clinics/north", Filter: `counselor = "counselor-1"`}); err != nil {
		t.Fatal(err)
	}
	var records *[]string
	for deadline := time.Now().Add(30 * time.Second); records == nil && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		resp, err := f.client.ListAuditEvents(admin, &auditv1.ListAuditEventsRequest{Parent: "clinics/north", Filter: `subject = "calendar-reader"`})
		if err != nil {
			t.Fatal(err)
		}
		if evs := resp.GetAuditEvents(); len(evs) > 0 {
			r := evs[0].GetRecords()
			records = &r
		}
	}
	if records == nil || len(*records) != 0 {
		t.Fatalf("the calendar reader's list recorded %v; want no records", records)
	}
}
