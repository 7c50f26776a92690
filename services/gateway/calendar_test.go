package gateway_test

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	ics "github.com/arran4/golang-ical"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/families"
	"github.com/handoff-health/handoff/services/gateway"
	"github.com/handoff-health/handoff/services/grpcserver"
	"github.com/handoff-health/handoff/services/interventions"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
	"github.com/handoff-health/handoff/services/servicetest"
	"github.com/handoff-health/handoff/services/stack/stacktest"
)

// A calendar app subscribes to a feed over plain HTTP with no bearer token;
// a reschedule shows as the same event, a wrong token is a 404, and a
// revoked feed's token reads a calendar without meetings.
func TestCalendarFeedOverHTTP(t *testing.T) {
	_, famSchema := pgtest.Schema(t, families.Migrations()...)
	_, ivSchema := pgtest.Schema(t, interventions.Migrations()...)
	env := servicetest.Start(t, families.Policy(), func(s *grpc.Server) {
		familiesv1.RegisterFamiliesServiceServer(s, families.New(pgtest.App(t, famSchema), families.Config{}))
	})
	famClient := familiesv1.NewFamiliesServiceClient(env.Conn)
	ivSrv := interventions.New(pgtest.App(t, ivSchema), interventions.Config{Families: famClient})
	ivConn := env.AlsoWith(t, grpcserver.Config{Policy: interventions.Policy(), Credentials: ivSrv.Credentials()}, func(s *grpc.Server) {
		interventionsv1.RegisterInterventionsServiceServer(s, ivSrv)
	})
	base := stacktest.Gateway(t, gateway.Config{FamiliesAddr: env.Addr, InterventionsAddr: ivConn.Target(),
		ReferralsAddr: "127.0.0.1:1", Verifier: env.Issuer.Verifier()})
	counselor := client{t: t, base: base, token: env.Issuer.MustMint(auth.TokenOptions{Subject: "counselor-1", Clinic: "north", Roles: []auth.Role{auth.RoleCounselor}})}

	ctx := env.Counselor("north")
	fam, err := famClient.CreateFamily(ctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: &familiesv1.Family{
		LovedOne: &familiesv1.LovedOne{GivenName: "Robin"}, Counselor: "counselor-1",
		Members: []*familiesv1.Member{{Id: "dad", GivenName: "Ezra", Relationship: familiesv1.Relationship_RELATIONSHIP_PARENT}}}})
	if err != nil {
		t.Fatal(err)
	}
	ivClient := interventionsv1.NewInterventionsServiceClient(ivConn)
	start := time.Now().Add(72 * time.Hour).Truncate(time.Second)
	iv, err := ivClient.CreateIntervention(ctx, &interventionsv1.CreateInterventionRequest{Parent: "clinics/north",
		Intervention: &interventionsv1.Intervention{Family: fam.GetName(), Counselor: "counselor-1",
			StartTime: timestamppb.New(start), ExpectedDuration: durationpb.New(time.Hour),
			Place: &interventionsv1.Place{Kind: &interventionsv1.Place_Video{Video: &interventionsv1.VideoPlace{
				Link: "https://video.example.org/robin"}}},
			Participants: []*interventionsv1.Participant{{MemberId: "dad", Role: interventionsv1.ParticipantRole_PARTICIPANT_ROLE_LEAD_SPEAKER}}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ivClient.ScheduleIntervention(ctx, &interventionsv1.ScheduleInterventionRequest{Name: iv.GetName()}); err != nil {
		t.Fatal(err)
	}

	feed := counselor.ok("POST", "/v1/clinics/north/calendarFeeds", map[string]any{}, "Idempotency-Key", "feed-http-1")
	feedURL, _ := feed["url"].(string)
	if !strings.HasPrefix(feedURL, "/calendar/v1/clinics/north/calendarFeeds/") {
		t.Fatalf("feed = %v", feed)
	}
	get := func(path string) (int, string, http.Header) {
		t.Helper()
		resp, err := http.Get(base + path) // no Authorization: a calendar app
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}
	read := func() *ics.VEvent {
		t.Helper()
		code, body, h := get(feedURL)
		if code != http.StatusOK || !strings.HasPrefix(h.Get("Content-Type"), "text/calendar") || h.Get("Cache-Control") != "no-store" ||
			h.Get("ETag") == "" || strings.Contains(body, "METHOD:") {
			t.Fatalf("GET feed: %d %v %s", code, h, body)
		}
		for _, secret := range []string{"Robin", "Ezra", "video.example.org"} {
			if strings.Contains(body, secret) {
				t.Fatalf("the feed shows %q", secret)
			}
		}
		cal, err := ics.ParseCalendar(strings.NewReader(body))
		if err != nil {
			t.Fatalf("parse: %v\n%s", err, body)
		}
		if len(cal.Events()) != 1 {
			t.Fatalf("%d events:\n%s", len(cal.Events()), body)
		}
		return cal.Events()[0]
	}
	seq := func(e *ics.VEvent) int {
		n, err := strconv.Atoi(e.GetProperty(ics.ComponentPropertySequence).Value)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	before := read()
	if got, _ := before.GetStartAt(); !got.Equal(start) {
		t.Fatalf("DTSTART %v, want %v", got, start)
	}
	// A calendar app asking whether the feed changed: not since its last
	// read; once the meeting moves, it has.
	_, _, h := get(feedURL)
	etag := h.Get("ETag")
	conditional := func() int {
		t.Helper()
		req, err := http.NewRequest("GET", base+feedURL, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("If-None-Match", etag)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode == http.StatusNotModified && len(b) != 0 {
			t.Fatalf("a 304 with a body: %s", b)
		}
		return resp.StatusCode
	}
	if code := conditional(); code != http.StatusNotModified {
		t.Fatalf("unchanged feed with If-None-Match: %d, want 304", code)
	}
	// Compared weakly, as RFC 9110 has it for If-None-Match, in a list.
	for _, v := range []string{"W/" + etag, `"other", ` + etag} {
		old := etag
		etag = v
		if code := conditional(); code != http.StatusNotModified {
			t.Fatalf("unchanged feed with If-None-Match: %s: %d, want 304", v, code)
		}
		etag = old
	}
	// Or sent on two header lines.
	twoLines, err := http.NewRequest("GET", base+feedURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	twoLines.Header.Add("If-None-Match", `"other"`)
	twoLines.Header.Add("If-None-Match", etag)
	if resp, err := http.DefaultClient.Do(twoLines); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusNotModified {
		t.Fatalf("unchanged feed with its ETag on a second If-None-Match line: %d, want 304", resp.StatusCode)
	}
	// A Range gets the whole calendar, which the export recorded as read.
	_, whole, _ := get(feedURL)
	ranged, err := http.NewRequest("GET", base+feedURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	ranged.Header.Set("Range", "bytes=0-9")
	if resp, err := http.DefaultClient.Do(ranged); err != nil {
		t.Fatal(err)
	} else {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(b) != whole || resp.Header.Get("Accept-Ranges") != "none" {
			t.Fatalf("feed with Range: %d, %d bytes, Accept-Ranges %q; want 200 with the whole %d, and none", resp.StatusCode, len(b),
				resp.Header.Get("Accept-Ranges"), len(whole))
		}
	}
	moved := start.Add(2 * time.Hour)
	if _, err := ivClient.RescheduleIntervention(ctx, &interventionsv1.RescheduleInterventionRequest{Name: iv.GetName(),
		StartTime: timestamppb.New(moved)}); err != nil {
		t.Fatal(err)
	}
	if code := conditional(); code != http.StatusOK {
		t.Fatalf("changed feed with the old ETag: %d, want 200", code)
	}
	after := read()
	if got, _ := after.GetStartAt(); after.Id() != before.Id() || seq(after) <= seq(before) || !got.Equal(moved) {
		t.Fatalf("after a reschedule: UID %s (was %s), SEQUENCE %d (was %d), DTSTART %v", after.Id(), before.Id(), seq(after), seq(before), got)
	}

	path, token, _ := strings.Cut(feedURL, "?token=")
	for name, p := range map[string]string{
		"wrong token":   path + "?token=" + strings.Repeat("A", len(token)),
		"missing token": path,
		"no .ics":       strings.TrimSuffix(path, ".ics") + "?token=" + token,
		"other clinic":  strings.Replace(path, "/north/", "/south/", 1) + "?token=" + token,
	} {
		if code, body, _ := get(p); code != http.StatusNotFound || strings.Contains(body, token) {
			t.Errorf("%s: %d %s", name, code, body)
		}
	}
	// Revoked: the same address shows no meeting at once. A calendar with
	// none, not an error, on which calendar apps would keep showing them.
	name, _ := feed["name"].(string)
	counselor.ok("DELETE", "/v1/"+name, nil)
	code, body, h := get(feedURL)
	cal, err := ics.ParseCalendar(strings.NewReader(body))
	if err != nil || code != http.StatusOK || h.Get("Cache-Control") != "no-store" {
		t.Fatalf("revoked feed: %d %v %v\n%s", code, h, err, body)
	}
	if events := cal.Events(); len(events) != 1 || !strings.HasSuffix(events[0].Id(), ".ended@handoff") {
		t.Fatalf("revoked feed shows:\n%s", body)
	}
}
