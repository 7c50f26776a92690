package interventions_test

import (
	"context"
	"crypto/sha256"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	ics "github.com/arran4/golang-ical"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/consentgate"
	"github.com/handoff-health/handoff/services/families"
	"github.com/handoff-health/handoff/services/grpcclient"
	"github.com/handoff-health/handoff/services/grpcserver"
	"github.com/handoff-health/handoff/services/interventions"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
	"github.com/handoff-health/handoff/services/referrals"
	"github.com/handoff-health/handoff/services/servicetest"
)

// feedToken splits a feed's url into its name and token.
func feedToken(t *testing.T, feed *interventionsv1.CalendarFeed) string {
	t.Helper()
	want := "/calendar/v1/" + feed.GetName() + ".ics?token="
	token, ok := strings.CutPrefix(feed.GetUrl(), want)
	if !ok || len(token) < 40 {
		t.Fatalf("url %q, want %s<token>", feed.GetUrl(), want)
	}
	return token
}

// export reads a feed as a calendar app does: no bearer token, only the
// feed's secret. It checks the stream's framing and parses it with an
// iCalendar parser.
func export(t *testing.T, f *fixture, name, token string) (*ics.Calendar, string) {
	t.Helper()
	body, err := f.client.ExportCalendarFeed(context.Background(), &interventionsv1.ExportCalendarFeedRequest{Name: name, Token: token})
	if err != nil {
		t.Fatalf("ExportCalendarFeed: %v", err)
	}
	if body.GetContentType() != "text/calendar; charset=utf-8" {
		t.Fatalf("content type %q", body.GetContentType())
	}
	raw := string(body.GetData())
	if !strings.HasSuffix(raw, "\r\n") {
		t.Fatal("the stream does not end with CRLF")
	}
	for _, line := range strings.Split(strings.TrimSuffix(raw, "\r\n"), "\r\n") {
		if len(line) > 75 || strings.ContainsAny(line, "\r\n") {
			t.Fatalf("bad content line %q", line)
		}
	}
	cal, err := ics.ParseCalendar(strings.NewReader(raw))
	if err != nil {
		t.Fatalf("parse feed: %v\n%s", err, raw)
	}
	return cal, raw
}

// wantEnded fails unless the feed name, read with token, answers that it
// ended: a calendar whose only event is the notice, which makes calendar
// apps drop the meetings they show (an error would leave them showing).
func wantEnded(t *testing.T, f *fixture, name, token string) {
	t.Helper()
	cal, raw := export(t, f, name, token)
	events := cal.Events()
	if len(events) != 1 || events[0].Id() != path.Base(name)+".ended@handoff" ||
		!strings.Contains(raw, "DTSTART;VALUE=DATE:"+f.clock.Now().UTC().Format("20060102")) ||
		!strings.Contains(prop(events[0], ics.ComponentPropertySummary), "feed ended") {
		t.Fatalf("an ended feed answers:\n%s", raw)
	}
}

func eventOf(t *testing.T, cal *ics.Calendar, uid string) *ics.VEvent {
	t.Helper()
	var found *ics.VEvent
	for _, e := range cal.Events() {
		if e.Id() == uid {
			if found != nil {
				t.Fatalf("two events with UID %s", uid)
			}
			found = e
		}
	}
	if found == nil {
		t.Fatalf("no event with UID %s", uid)
	}
	return found
}

func prop(e *ics.VEvent, p ics.ComponentProperty) string {
	if v := e.GetProperty(p); v != nil {
		return v.Value
	}
	return ""
}

func sequence(t *testing.T, e *ics.VEvent) int {
	t.Helper()
	n, err := strconv.Atoi(prop(e, ics.ComponentPropertySequence))
	if err != nil {
		t.Fatalf("SEQUENCE: %v", err)
	}
	return n
}

func TestCalendarFeed(t *testing.T) {
	t.Parallel()
	f := setup(t)
	feed, err := f.client.CreateCalendarFeed(f.ctx, &interventionsv1.CreateCalendarFeedRequest{Parent: "clinics/north", RequestId: "feed-1"})
	if err != nil {
		t.Fatalf("CreateCalendarFeed: %v", err)
	}
	token := feedToken(t, feed)
	if feed.GetOwner() != "counselor-1" || feed.GetCreateTime() == nil {
		t.Fatalf("feed = %v", feed)
	}

	// Own feeds only, and never their url.
	list, err := f.client.ListCalendarFeeds(f.ctx, &interventionsv1.ListCalendarFeedsRequest{Parent: "clinics/north"})
	if err != nil || len(list.GetCalendarFeeds()) != 1 || list.GetCalendarFeeds()[0].GetName() != feed.GetName() ||
		list.GetCalendarFeeds()[0].GetUrl() != "" {
		t.Fatalf("ListCalendarFeeds = %v, %v", list, err)
	}
	other := f.env.As("north", "counselor-2", auth.RoleCounselor)
	if list, err := f.client.ListCalendarFeeds(other, &interventionsv1.ListCalendarFeedsRequest{Parent: "clinics/north"}); err != nil ||
		len(list.GetCalendarFeeds()) != 0 {
		t.Fatalf("another counselor lists %v, %v", list, err)
	}

	// One meeting scheduled then moved, one scheduled then cancelled, one
	// left a draft.
	start := f.clock.Now().Add(48 * time.Hour).Truncate(time.Second)
	moved := f.draft(t, start)
	if moved, err = f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: moved.GetName()}); err != nil {
		t.Fatal(err)
	}
	dropped := f.draft(t, start.Add(72*time.Hour))
	if _, err = f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: dropped.GetName()}); err != nil {
		t.Fatal(err)
	}
	draftOnly := f.draft(t, start.Add(96*time.Hour))
	uid := func(iv *interventionsv1.Intervention) string {
		return iv.GetName()[strings.LastIndex(iv.GetName(), "/")+1:] + "@handoff"
	}

	cal, raw := export(t, f, feed.GetName(), token)
	if len(cal.Events()) != 2 {
		t.Fatalf("%d events, want the two scheduled ones:\n%s", len(cal.Events()), raw)
	}
	before := eventOf(t, cal, uid(moved))
	if got, _ := before.GetStartAt(); !got.Equal(start) {
		t.Fatalf("DTSTART %v, want %v", got, start)
	}
	if end, _ := before.GetEndAt(); !end.Equal(start.Add(time.Hour)) {
		t.Fatalf("DTEND %v", end)
	}
	if prop(before, ics.ComponentPropertyStatus) != "CONFIRMED" || prop(before, ics.ComponentPropertySummary) != "Family intervention" {
		t.Fatalf("event:\n%s", raw)
	}
	if strings.Contains(raw, uid(draftOnly)) {
		t.Fatal("a draft is in the feed")
	}
	// The trail names each meeting an export gave the calendar service:
	// the first read's record goes with the feed's read time, the next's
	// on its own. Before, neither named any.
	exported := func(want int) {
		t.Helper()
		rows, err := f.pool.Query(context.Background(), `SELECT l.records, (SELECT count(*) FROM audit_records r WHERE r.audit_id = l.id)
			FROM audit_log l WHERE l.method LIKE '%/ExportCalendarFeed' ORDER BY l.id`)
		if err != nil {
			t.Fatal(err)
		}
		type row struct {
			Records []string
			Rows    int
		}
		got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
		if err != nil {
			t.Fatal(err)
		}
		names := []string{moved.GetName(), dropped.GetName()}
		slices.Sort(names)
		for i, r := range got {
			slices.Sort(r.Records)
			if !slices.Equal(r.Records, names) || r.Rows != len(names) {
				t.Errorf("export %d recorded %v (%d rows for the record filter); want %v", i+1, r.Records, r.Rows, names)
			}
		}
		if len(got) != want {
			t.Fatalf("%d exports recorded; want %d", len(got), want)
		}
	}
	exported(1)

	// A reschedule is the same event, newer.
	newStart := start.Add(24 * time.Hour)
	if _, err := f.client.RescheduleIntervention(f.ctx, &interventionsv1.RescheduleInterventionRequest{Name: moved.GetName(),
		StartTime: timestamppb.New(newStart), Reason: "the family asked for Monday"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.CancelIntervention(f.ctx, &interventionsv1.CancelInterventionRequest{Name: dropped.GetName(),
		Reason: "Sam is in hospital"}); err != nil {
		t.Fatal(err)
	}
	// A draft cancelled was never on the calendar: nothing to take off it.
	if _, err := f.client.CancelIntervention(f.ctx, &interventionsv1.CancelInterventionRequest{Name: draftOnly.GetName(),
		Reason: "planned twice"}); err != nil {
		t.Fatal(err)
	}
	cal, raw = export(t, f, feed.GetName(), token)
	exported(2)
	if len(cal.Events()) != 2 || strings.Contains(raw, uid(draftOnly)) {
		t.Fatalf("%d events, want the two that were scheduled, not the draft cancelled:\n%s", len(cal.Events()), raw)
	}
	after := eventOf(t, cal, uid(moved))
	if got, _ := after.GetStartAt(); !got.Equal(newStart) {
		t.Fatalf("DTSTART after reschedule %v, want %v", got, newStart)
	}
	if sequence(t, after) <= sequence(t, before) {
		t.Fatalf("SEQUENCE %d after a reschedule, was %d", sequence(t, after), sequence(t, before))
	}
	if a, _ := after.GetLastModifiedAt(); a.Before(mustTime(before.GetLastModifiedAt())) {
		t.Fatalf("LAST-MODIFIED went back")
	}
	if st := prop(eventOf(t, cal, uid(dropped)), ics.ComponentPropertyStatus); st != "CANCELLED" {
		t.Fatalf("cancelled meeting has STATUS %q", st)
	}
	// A change outside systems do not see (a checklist tick; a check-in
	// after a refusal likewise) leaves the event as it was: the calendar
	// service holding the feed is one.
	if _, err := f.client.UpdateChecklistItem(f.ctx, &interventionsv1.UpdateChecklistItemRequest{Name: moved.GetName(),
		Kind: interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_QUIET_PRIVATE_PLACE, Done: true}); err != nil {
		t.Fatal(err)
	}
	ticked, _ := export(t, f, feed.GetName(), token)
	if again := eventOf(t, ticked, uid(moved)); sequence(t, again) != sequence(t, after) ||
		prop(again, ics.ComponentPropertyLastModified) != prop(after, ics.ComponentPropertyLastModified) {
		t.Fatalf("a checklist tick moved the event: SEQUENCE %d, was %d; LAST-MODIFIED %s, was %s", sequence(t, again), sequence(t, after),
			prop(again, ics.ComponentPropertyLastModified), prop(after, ics.ComponentPropertyLastModified))
	}
	// No names, places or notes: the feed leaves Handoff for phones and
	// calendar providers.
	for _, secret := range []string{"Sam", "Ana", "Luis", "Elm", "hospital", "Monday", "+1555", token} {
		if strings.Contains(raw, secret) {
			t.Fatalf("the feed shows %q:\n%s", secret, raw)
		}
	}

	// Wrong, missing or someone else's token: as if the feed did not exist.
	mine, err := f.client.CreateCalendarFeed(other, &interventionsv1.CreateCalendarFeedRequest{Parent: "clinics/north"})
	if err != nil {
		t.Fatal(err)
	}
	for name, req := range map[string]*interventionsv1.ExportCalendarFeedRequest{
		"wrong token":       {Name: feed.GetName(), Token: token[:len(token)-1] + "x"},
		"no token":          {Name: feed.GetName()},
		"other feed token":  {Name: feed.GetName(), Token: feedToken(t, mine)},
		"no such feed":      {Name: "clinics/north/calendarFeeds/nope", Token: token},
		"other clinic":      {Name: strings.Replace(feed.GetName(), "north", "south", 1), Token: token},
		"not a feed's name": {Name: "clinics/north", Token: token},
	} {
		_, err := f.client.ExportCalendarFeed(context.Background(), req)
		wantCode(t, err, codes.NotFound)
		_ = name
	}
	// A bearer token does not stand in for the feed's token.
	_, err = f.client.ExportCalendarFeed(f.ctx, &interventionsv1.ExportCalendarFeedRequest{Name: feed.GetName()})
	wantCode(t, err, codes.NotFound)

	// Another counselor cannot revoke the feed; its owner can.
	_, err = f.client.DeleteCalendarFeed(other, &interventionsv1.DeleteCalendarFeedRequest{Name: feed.GetName()})
	wantCode(t, err, codes.NotFound)
	export(t, f, feed.GetName(), token)
	if _, err := f.client.DeleteCalendarFeed(f.ctx, &interventionsv1.DeleteCalendarFeedRequest{Name: feed.GetName()}); err != nil {
		t.Fatal(err)
	}
	// Revoked: its token reads a calendar without the meetings, any other
	// still nothing, and it cannot be revoked twice.
	wantEnded(t, f, feed.GetName(), token)
	_, err = f.client.ExportCalendarFeed(context.Background(), &interventionsv1.ExportCalendarFeedRequest{Name: feed.GetName(), Token: feedToken(t, mine)})
	wantCode(t, err, codes.NotFound)
	_, err = f.client.DeleteCalendarFeed(f.ctx, &interventionsv1.DeleteCalendarFeedRequest{Name: feed.GetName()})
	wantCode(t, err, codes.NotFound)
	// A clinic administrator revokes anyone's feed.
	admin := f.env.As("north", "admin-1", auth.RoleClinicAdmin)
	if _, err := f.client.DeleteCalendarFeed(admin, &interventionsv1.DeleteCalendarFeedRequest{Name: mine.GetName()}); err != nil {
		t.Fatalf("admin revokes: %v", err)
	}
}

// A retried create is the same feed; since the token is kept nowhere, the
// retry's new token replaces the first one, which then reads the calendar
// that says the feed ended (its answer may have reached a calendar app,
// which on a 404, as before, would keep showing what it last read).
func TestCalendarFeedCreateRetry(t *testing.T) {
	t.Parallel()
	f := setup(t)
	req := &interventionsv1.CreateCalendarFeedRequest{Parent: "clinics/north", RequestId: "retry-me"}
	first, err := f.client.CreateCalendarFeed(f.ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	second, err := f.client.CreateCalendarFeed(f.ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if second.GetName() != first.GetName() || feedToken(t, second) == feedToken(t, first) {
		t.Fatalf("first %v, retry %v", first, second)
	}
	wantEnded(t, f, first.GetName(), feedToken(t, first))
	if _, raw := export(t, f, second.GetName(), feedToken(t, second)); strings.Contains(raw, ".ended@handoff") {
		t.Fatalf("the retry's token reads an ended feed:\n%s", raw)
	}
	// A third submit: both tokens before it read the ended calendar.
	third, err := f.client.CreateCalendarFeed(f.ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	wantEnded(t, f, first.GetName(), feedToken(t, first))
	wantEnded(t, f, second.GetName(), feedToken(t, second))
	middle := second
	second = third
	var stored int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM idempotency_keys
		WHERE position($1 in encode(response, 'escape')) > 0 OR position($2 in encode(response, 'escape')) > 0
		OR position($3 in encode(response, 'escape')) > 0`,
		feedToken(t, first), feedToken(t, middle), feedToken(t, second)).Scan(&stored); err != nil || stored != 0 {
		t.Fatalf("a feed token is stored in an idempotency row (%d, %v)", stored, err)
	}
	list, err := f.client.ListCalendarFeeds(f.ctx, &interventionsv1.ListCalendarFeedsRequest{Parent: "clinics/north"})
	if err != nil || len(list.GetCalendarFeeds()) != 1 {
		t.Fatalf("ListCalendarFeeds = %v, %v", list, err)
	}
	// Revoked, the feed is not brought back by a retry of its create:
	// the token that retry would return must not read the meetings.
	if _, err := f.client.DeleteCalendarFeed(f.ctx, &interventionsv1.DeleteCalendarFeedRequest{Name: second.GetName()}); err != nil {
		t.Fatal(err)
	}
	_, err = f.client.CreateCalendarFeed(f.ctx, req)
	wantCode(t, err, codes.NotFound)
	wantEnded(t, f, second.GetName(), feedToken(t, second))
	// The tokens replaced before the revocation stay ended too.
	wantEnded(t, f, first.GetName(), feedToken(t, first))
	wantEnded(t, f, middle.GetName(), feedToken(t, middle))
	// A replica a release behind answers the retry by setting the token
	// again, revoked or not: the token it handed out reads no meetings.
	rearmed := "a-token-an-older-replica-handed-out"
	h := sha256.Sum256([]byte(rearmed))
	if _, err := f.pool.Exec(context.Background(), `UPDATE calendar_feeds SET token_hash = $2 WHERE id = $1`, path.Base(second.GetName()), h[:]); err != nil {
		t.Fatal(err)
	}
	wantEnded(t, f, second.GetName(), rearmed)
	if list, err := f.client.ListCalendarFeeds(f.ctx, &interventionsv1.ListCalendarFeedsRequest{Parent: "clinics/north"}); err != nil || len(list.GetCalendarFeeds()) != 0 {
		t.Fatalf("ListCalendarFeeds after the revocation = %v, %v", list, err)
	}
}

func mustTime(t time.Time, _ error) time.Time { return t }

// A feed nobody reads for 90 days stops working; reading it keeps it
// alive, and reads within the hour do not write again.
func TestCalendarFeedLapsesUnread(t *testing.T) {
	t.Parallel()
	f := setup(t)
	create := func() *interventionsv1.CalendarFeed {
		feed, err := f.client.CreateCalendarFeed(f.ctx, &interventionsv1.CreateCalendarFeedRequest{Parent: "clinics/north"})
		if err != nil {
			t.Fatal(err)
		}
		return feed
	}
	unread, used := create(), create()
	if !unread.GetExpireTime().AsTime().Equal(unread.GetCreateTime().AsTime().Add(90*24*time.Hour)) || unread.GetLastReadTime() != nil {
		t.Fatalf("a new feed: %v", unread)
	}
	listed := func() map[string]*interventionsv1.CalendarFeed {
		list, err := f.client.ListCalendarFeeds(f.ctx, &interventionsv1.ListCalendarFeedsRequest{Parent: "clinics/north"})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]*interventionsv1.CalendarFeed{}
		for _, c := range list.GetCalendarFeeds() {
			out[c.GetName()] = c
		}
		return out
	}
	export(t, f, used.GetName(), feedToken(t, used))
	first := listed()[used.GetName()].GetLastReadTime()
	if first == nil || listed()[unread.GetName()].GetLastReadTime() != nil {
		t.Fatalf("after one read: %v", listed())
	}
	f.clock.Advance(30 * time.Minute)
	export(t, f, used.GetName(), feedToken(t, used))
	if again := listed()[used.GetName()].GetLastReadTime(); !again.AsTime().Equal(first.AsTime()) {
		t.Fatalf("a read within the hour wrote the time again: %v, was %v", again.AsTime(), first.AsTime())
	}
	f.clock.Advance(60 * 24 * time.Hour)
	export(t, f, used.GetName(), feedToken(t, used))
	read := listed()[used.GetName()]
	if !read.GetLastReadTime().AsTime().After(first.AsTime().Add(59*24*time.Hour)) ||
		!read.GetExpireTime().AsTime().Equal(read.GetLastReadTime().AsTime().Add(90*24*time.Hour)) {
		t.Fatalf("after a read 60 days on: %v", read)
	}
	f.clock.Advance(31 * 24 * time.Hour)
	wantEnded(t, f, unread.GetName(), feedToken(t, unread))
	if got := listed()[unread.GetName()].GetLastReadTime(); got != nil {
		t.Fatalf("reading a lapsed feed recorded a read (%v): it would live again", got.AsTime())
	}
	export(t, f, used.GetName(), feedToken(t, used))
	// Read or not, a feed works a year at most: a phone still subscribed
	// after its counselor left does not keep the clinic's meetings.
	end := used.GetCreateTime().AsTime().Add(365 * 24 * time.Hour)
	ending := path.Base(used.GetName()) + ".ending@handoff"
	for f.clock.Now().Add(80 * 24 * time.Hour).Before(end) {
		f.clock.Advance(80 * 24 * time.Hour)
		cal, raw := export(t, f, used.GetName(), feedToken(t, used))
		for _, e := range cal.Events() {
			if e.Id() == ending {
				t.Fatalf("%v before its end, the feed shows:\n%s", end.Sub(f.clock.Now()), raw)
			}
		}
	}
	if got := listed()[used.GetName()].GetExpireTime().AsTime(); !got.Equal(end) {
		t.Fatalf("a feed read a year long expires at %v, want a year after its creation (%v)", got, end)
	}
	// Two weeks before, its calendar says when it ends, on the day read.
	f.clock.Advance(end.Add(-14 * 24 * time.Hour).Sub(f.clock.Now()))
	cal, raw := export(t, f, used.GetName(), feedToken(t, used))
	if e := eventOf(t, cal, ending); !strings.Contains(prop(e, ics.ComponentPropertySummary), end.UTC().Format("2 January 2006")) ||
		!strings.Contains(raw, "DTSTART;VALUE=DATE:"+f.clock.Now().UTC().Format("20060102")) || prop(e, ics.ComponentPropertyTransp) != "TRANSPARENT" {
		t.Fatalf("two weeks before its end, the feed shows:\n%s", raw)
	}
	f.clock.Advance(end.Sub(f.clock.Now()))
	wantEnded(t, f, used.GetName(), feedToken(t, used))
}

// The feed shows the intake appointments of the counselor's clients, read
// through the referrals API as the calendar reader: a rebooking moves the
// same event, a cancelled referral cancels it, and other counselors'
// clients stay out.
func TestCalendarFeedIntakeAppointments(t *testing.T) {
	t.Parallel()
	_, famSchema := pgtest.Schema(t, families.Migrations()...)
	_, refSchema := pgtest.Schema(t, referrals.Migrations()...)
	_, ivSchema := pgtest.Schema(t, interventions.Migrations()...)
	env := servicetest.Start(t, families.Policy(), func(s *grpc.Server) {
		familiesv1.RegisterFamiliesServiceServer(s, families.New(pgtest.App(t, famSchema), families.Config{}))
	})
	famClient := familiesv1.NewFamiliesServiceClient(env.Conn)
	refConn := env.Also(t, referrals.Policy(), func(s *grpc.Server) {
		referralsv1.RegisterReferralsServiceServer(s, referrals.New(pgtest.App(t, refSchema),
			referrals.Config{Consent: &consentgate.Gate{Families: famClient}, Families: famClient}))
	})
	// The calendar reader's connections carry its own token: a feed's
	// reader has none to forward.
	reader := func(addr string) *grpc.ClientConn {
		conn, err := grpcclient.Dial(addr, grpcclient.Config{Token: func(context.Context) (string, error) {
			return env.Issuer.MustMint(auth.TokenOptions{Subject: "calendar-reader", Clinic: auth.AnyClinic,
				Roles: []auth.Role{auth.RoleCalendarReader}}), nil
		}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	ivSrv := interventions.New(pgtest.App(t, ivSchema), interventions.Config{Families: famClient,
		CalendarFamilies:  familiesv1.NewFamiliesServiceClient(reader(env.Addr)),
		CalendarReferrals: referralsv1.NewReferralsServiceClient(reader(refConn.Target()))})
	ivConn := env.AlsoWith(t, grpcserver.Config{Policy: interventions.Policy(), Credentials: ivSrv.Credentials()}, func(s *grpc.Server) {
		interventionsv1.RegisterInterventionsServiceServer(s, ivSrv)
	})
	ivClient := interventionsv1.NewInterventionsServiceClient(ivConn)
	refClient := referralsv1.NewReferralsServiceClient(refConn)
	ctx, admin := env.Counselor("north"), env.As("north", "admin-1", auth.RoleClinicAdmin)

	prog, err := refClient.CreateProgram(admin, &referralsv1.CreateProgramRequest{Parent: "clinics/north", Program: &referralsv1.Program{
		DisplayName: "Riverside MAT", Organization: "Riverside Health",
		Services:         []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE},
		PaymentsAccepted: []referralsv1.PaymentKind{referralsv1.PaymentKind_PAYMENT_KIND_MEDICAID},
		Address:          &referralsv1.Address{Locality: "Springfield", PostalCode: "62701"}}})
	if err != nil {
		t.Fatal(err)
	}
	referral := func(counselor, lovedOne string) *referralsv1.Referral {
		t.Helper()
		fam, err := famClient.CreateFamily(ctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: &familiesv1.Family{
			LovedOne: &familiesv1.LovedOne{GivenName: lovedOne}, Counselor: counselor}})
		if err != nil {
			t.Fatal(err)
		}
		r, err := refClient.CreateReferral(ctx, &referralsv1.CreateReferralRequest{Parent: "clinics/north", Referral: &referralsv1.Referral{
			Family: fam.GetName(), Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE},
			ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Program: prog.GetName(),
			Urgency: referralsv1.Urgency_URGENCY_URGENT, Reason: "opioid use disorder, wants to start"}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := refClient.AcceptReferral(ctx, &referralsv1.TransitionReferralRequest{Name: r.GetName()}); err != nil {
			t.Fatal(err)
		}
		return r
	}
	book := func(r *referralsv1.Referral, at time.Time) {
		t.Helper()
		if _, err := refClient.ScheduleReferral(ctx, &referralsv1.ScheduleReferralRequest{Name: r.GetName(),
			IntakeAppointment: &referralsv1.IntakeAppointment{StartTime: timestamppb.New(at), Location: "120 Main Street",
				Notes: "Bring photo ID"}}); err != nil {
			t.Fatal(err)
		}
	}
	mine, theirs := referral("counselor-1", "Robin"), referral("counselor-2", "Kim")
	at := time.Now().Add(48 * time.Hour).Truncate(time.Second)
	book(mine, at)
	book(theirs, at)

	feed, err := ivClient.CreateCalendarFeed(ctx, &interventionsv1.CreateCalendarFeedRequest{Parent: "clinics/north"})
	if err != nil {
		t.Fatal(err)
	}
	token := feedToken(t, feed)
	f := &fixture{client: ivClient}
	uid := aip.ID(mine.GetName()) + "@handoff"
	cal, raw := export(t, f, feed.GetName(), token)
	if len(cal.Events()) != 1 {
		t.Fatalf("%d events, want my client's intake only:\n%s", len(cal.Events()), raw)
	}
	before := eventOf(t, cal, uid)
	if got, _ := before.GetStartAt(); !got.Equal(at) || prop(before, ics.ComponentPropertySummary) != "Intake appointment" ||
		prop(before, ics.ComponentPropertyStatus) != "CONFIRMED" {
		t.Fatalf("intake event:\n%s", raw)
	}

	rebooked := at.Add(26 * time.Hour)
	book(mine, rebooked)
	cal, _ = export(t, f, feed.GetName(), token)
	after := eventOf(t, cal, uid)
	if got, _ := after.GetStartAt(); !got.Equal(rebooked) || sequence(t, after) <= sequence(t, before) {
		t.Fatalf("after rebooking: DTSTART %v, SEQUENCE %d (was %d)", got, sequence(t, after), sequence(t, before))
	}
	// On hold the booked time will not happen; booked again, it will.
	if _, err := refClient.PauseReferral(ctx, &referralsv1.TransitionReferralRequest{Name: mine.GetName(), Reason: "waiting for prior authorization"}); err != nil {
		t.Fatal(err)
	}
	cal, _ = export(t, f, feed.GetName(), token)
	if st := prop(eventOf(t, cal, uid), ics.ComponentPropertyStatus); st != "CANCELLED" {
		t.Fatalf("an intake on hold has STATUS %q", st)
	}
	book(mine, rebooked)
	cal, _ = export(t, f, feed.GetName(), token)
	if st := prop(eventOf(t, cal, uid), ics.ComponentPropertyStatus); st != "CONFIRMED" {
		t.Fatalf("an intake booked again after a hold has STATUS %q", st)
	}
	if _, err := refClient.CancelReferral(ctx, &referralsv1.TransitionReferralRequest{Name: mine.GetName()}); err != nil {
		t.Fatal(err)
	}
	cal, raw = export(t, f, feed.GetName(), token)
	if st := prop(eventOf(t, cal, uid), ics.ComponentPropertyStatus); st != "CANCELLED" {
		t.Fatalf("cancelled referral has STATUS %q", st)
	}
	for _, secret := range []string{"Robin", "Kim", "Riverside", "Main Street", "photo", "opioid", aip.ID(theirs.GetName())} {
		if strings.Contains(raw, secret) {
			t.Fatalf("the feed shows %q:\n%s", secret, raw)
		}
	}
}

// A clinic administrator lists every feed of the clinic, to find and
// revoke those of a counselor who left; counselors still see only their
// own, and no list carries a url.
func TestCalendarFeedsAdminListsAll(t *testing.T) {
	t.Parallel()
	f := setup(t)
	leaver := f.env.As("north", "counselor-2", auth.RoleCounselor)
	admin := f.env.As("north", "admin-1", auth.RoleClinicAdmin)
	mine, err := f.client.CreateCalendarFeed(f.ctx, &interventionsv1.CreateCalendarFeedRequest{Parent: "clinics/north"})
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := f.client.CreateCalendarFeed(leaver, &interventionsv1.CreateCalendarFeedRequest{Parent: "clinics/north"})
	if err != nil {
		t.Fatal(err)
	}
	names := func(ctx context.Context, filter string) []string {
		t.Helper()
		list, err := f.client.ListCalendarFeeds(ctx, &interventionsv1.ListCalendarFeedsRequest{Parent: "clinics/north", Filter: filter})
		if err != nil {
			t.Fatalf("ListCalendarFeeds(%q): %v", filter, err)
		}
		var out []string
		for _, feed := range list.GetCalendarFeeds() {
			if feed.GetUrl() != "" {
				t.Fatalf("listed feed %s carries its url", feed.GetName())
			}
			out = append(out, feed.GetName()+"|"+feed.GetOwner())
		}
		return out
	}
	all := names(admin, "")
	if len(all) != 2 {
		t.Fatalf("admin lists %v, want both feeds", all)
	}
	if got := names(admin, `owner = "counselor-2"`); len(got) != 1 || got[0] != theirs.GetName()+"|counselor-2" {
		t.Fatalf("admin lists %v for owner counselor-2", got)
	}
	if got := names(f.ctx, ""); len(got) != 1 || got[0] != mine.GetName()+"|counselor-1" {
		t.Fatalf("counselor-1 lists %v, want only its own", got)
	}
	if got := names(f.ctx, `owner = "counselor-2"`); len(got) != 0 {
		t.Fatalf("counselor-1 filtering on another owner lists %v", got)
	}
	// The administrator revokes the leaver's feed.
	if _, err := f.client.DeleteCalendarFeed(admin, &interventionsv1.DeleteCalendarFeedRequest{Name: theirs.GetName()}); err != nil {
		t.Fatalf("admin DeleteCalendarFeed: %v", err)
	}
	if got := names(leaver, ""); len(got) != 0 {
		t.Fatalf("after revocation counselor-2 lists %v", got)
	}
	wantEnded(t, f, theirs.GetName(), feedToken(t, theirs))
}

// A meeting scheduled by a replica a release behind (which knows nothing
// of the published column) and cancelled later still shows as cancelled,
// so calendars drop it: the database marks every scheduled meeting.
func TestCalendarFeedCancelledAfterAnOlderReplicaScheduledIt(t *testing.T) {
	t.Parallel()
	f := setup(t)
	feed := f.feed(t)
	iv := f.draft(t, f.clock.Now().Add(48*time.Hour).Truncate(time.Second))
	id := iv.GetName()[strings.LastIndex(iv.GetName(), "/")+1:]
	// What the older release's ScheduleIntervention writes.
	if _, err := f.pool.Exec(context.Background(), `UPDATE interventions SET state = $2, version = version + 1 WHERE id = $1`,
		id, int16(interventionsv1.InterventionState_INTERVENTION_STATE_SCHEDULED)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.CancelIntervention(f.ctx, &interventionsv1.CancelInterventionRequest{Name: iv.GetName(), Reason: "moved away"}); err != nil {
		t.Fatal(err)
	}
	cal, raw := export(t, f, feed.GetName(), feedToken(t, feed))
	if st := prop(eventOf(t, cal, id+"@handoff"), ics.ComponentPropertyStatus); st != "CANCELLED" {
		t.Fatalf("the meeting has STATUS %q, want CANCELLED:\n%s", st, raw)
	}
}

// feed is a new calendar feed of the counselor's, of clinic north.
func (f *fixture) feed(t *testing.T) *interventionsv1.CalendarFeed {
	t.Helper()
	feed, err := f.client.CreateCalendarFeed(f.ctx, &interventionsv1.CreateCalendarFeedRequest{Parent: "clinics/north"})
	if err != nil {
		t.Fatal(err)
	}
	return feed
}

// downFamilies answers the calendar reader's family lists as a families
// service that is restarting would.
type downFamilies struct {
	familiesv1.FamiliesServiceClient
	code codes.Code
}

func (d downFamilies) ListFamilies(context.Context, *familiesv1.ListFamiliesRequest, ...grpc.CallOption) (*familiesv1.ListFamiliesResponse, error) {
	return nil, status.Error(d.code, "families: detail of another service")
}

// A feed read while the families service is out answers with the outage's
// code, for the calendar app to try again, not INTERNAL, which pages; and
// with a message of its own, not the other service's. Its overload is
// UNAVAILABLE: RESOURCE_EXHAUSTED would say the caller's quota is spent.
func TestCalendarFeedDuringAnOutage(t *testing.T) {
	_, ivSchema := pgtest.Schema(t, interventions.Migrations()...)
	env := servicetest.Start(t, interventions.Policy(), func(*grpc.Server) {})
	for _, code := range []codes.Code{codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted} {
		ivSrv := interventions.New(pgtest.App(t, ivSchema), interventions.Config{
			CalendarFamilies: downFamilies{code: code}, CalendarReferrals: referralsv1.NewReferralsServiceClient(env.Conn)})
		conn := env.AlsoWith(t, grpcserver.Config{Policy: interventions.Policy(), Credentials: ivSrv.Credentials()}, func(s *grpc.Server) {
			interventionsv1.RegisterInterventionsServiceServer(s, ivSrv)
		})
		client := interventionsv1.NewInterventionsServiceClient(conn)
		feed, err := client.CreateCalendarFeed(env.Counselor("north"), &interventionsv1.CreateCalendarFeedRequest{Parent: "clinics/north"})
		if err != nil {
			t.Fatal(err)
		}
		_, err = client.ExportCalendarFeed(context.Background(), &interventionsv1.ExportCalendarFeedRequest{Name: feed.GetName(), Token: feedToken(t, feed)})
		want := code
		if code == codes.ResourceExhausted {
			want = codes.Unavailable
		}
		if st := status.Convert(err); st.Code() != want || strings.Contains(st.Message(), "another service") {
			t.Fatalf("families answering %v: the feed answered %v", code, err)
		}
	}
}

// A feed past its limit leaves out its oldest meetings, not those to come:
// a calendar deletes what a feed stops showing.
func TestCalendarFeedPastItsLimitKeepsWhatComes(t *testing.T) {
	t.Parallel()
	f := setup(t)
	feed := f.feed(t)
	iv := f.draft(t, f.clock.Now().Add(48*time.Hour).Truncate(time.Second))
	iv, err := f.client.ScheduleIntervention(f.ctx, &interventionsv1.ScheduleInterventionRequest{Name: iv.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	id := iv.GetName()[strings.LastIndex(iv.GetName(), "/")+1:]
	// 1,000 meetings held over the past weeks, copies of it but for their
	// ids and times: with the one to come, one more than a feed holds.
	if _, err := f.pool.Exec(context.Background(), `INSERT INTO interventions
		SELECT (jsonb_populate_record(i, jsonb_build_object('id', 'past-' || g,
			'start_time', now() - make_interval(mins => 10 * g), 'end_time', now() - make_interval(mins => 10 * g - 5)))).*
		FROM interventions i, generate_series(1, 1000) g WHERE i.id = $1`, id); err != nil {
		t.Fatal(err)
	}
	cal, _ := export(t, f, feed.GetName(), feedToken(t, feed))
	uids := map[string]bool{}
	for _, e := range cal.Events() {
		uids[e.Id()] = true
	}
	if len(uids) != 1000 || !uids[id+"@handoff"] || uids["past-1000@handoff"] || !uids["past-1@handoff"] {
		t.Fatalf("%d events, the meeting to come %v, the oldest %v, the newest past %v; want 1000 with the meeting to come and without the oldest",
			len(uids), uids[id+"@handoff"], uids["past-1000@handoff"], uids["past-1@handoff"])
	}
	// The read's audit record names every meeting the feed gave out.
	var named []string
	if err := f.pool.QueryRow(context.Background(), `SELECT records FROM audit_log
		WHERE method LIKE '%/ExportCalendarFeed' ORDER BY id DESC LIMIT 1`).Scan(&named); err != nil {
		t.Fatal(err)
	}
	parent := iv.GetName()[:strings.LastIndex(iv.GetName(), "/")+1]
	for uid := range uids {
		if !slices.Contains(named, parent+strings.TrimSuffix(uid, "@handoff")) {
			t.Fatalf("%s was given to the calendar service but its read's audit record (%d names) does not name it", uid, len(named))
		}
	}
}

// One owner holds at most MaxFeedsPerOwner live feeds: a loop of creates
// does not mint bearer secrets without end. A revoked one, or one that
// lapsed, frees its place; another owner's count is its own.
func TestCalendarFeedsPerOwnerAreCapped(t *testing.T) {
	t.Parallel()
	f := setup(t)
	var feeds []*interventionsv1.CalendarFeed
	for range interventions.MaxFeedsPerOwner {
		feed, err := f.client.CreateCalendarFeed(f.ctx, &interventionsv1.CreateCalendarFeedRequest{Parent: "clinics/north"})
		if err != nil {
			t.Fatal(err)
		}
		feeds = append(feeds, feed)
	}
	_, err := f.client.CreateCalendarFeed(f.ctx, &interventionsv1.CreateCalendarFeedRequest{Parent: "clinics/north"})
	wantCode(t, err, codes.ResourceExhausted)
	other := f.env.As("north", "counselor-2", auth.RoleCounselor)
	if _, err := f.client.CreateCalendarFeed(other, &interventionsv1.CreateCalendarFeedRequest{Parent: "clinics/north"}); err != nil {
		t.Fatalf("another owner's first feed: %v", err)
	}
	if _, err := f.client.DeleteCalendarFeed(f.ctx, &interventionsv1.DeleteCalendarFeedRequest{Name: feeds[0].GetName()}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.CreateCalendarFeed(f.ctx, &interventionsv1.CreateCalendarFeedRequest{Parent: "clinics/north"}); err != nil {
		t.Fatalf("a feed after one was revoked: %v", err)
	}
	_, err = f.client.CreateCalendarFeed(f.ctx, &interventionsv1.CreateCalendarFeedRequest{Parent: "clinics/north"})
	wantCode(t, err, codes.ResourceExhausted)
	// Never read for the idle time, they have lapsed.
	f.clock.Advance(91 * 24 * time.Hour)
	if _, err := f.client.CreateCalendarFeed(f.ctx, &interventionsv1.CreateCalendarFeedRequest{Parent: "clinics/north"}); err != nil {
		t.Fatalf("a feed once the others lapsed: %v", err)
	}
}
