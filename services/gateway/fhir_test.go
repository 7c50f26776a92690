package gateway_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/fhir/go/fhirversion"
	"github.com/google/fhir/go/jsonformat"

	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/gateway"
	"github.com/handoff-health/handoff/services/grpcclient"
	"github.com/handoff-health/handoff/services/stack/stacktest"
)

const part2Notice = "42 CFR part 2 prohibits unauthorized use or disclosure of these records."

// fhirClient calls /fhir/R4 and checks that every answer is valid FHIR R4.
type fhirClient struct {
	client
	parser *jsonformat.Unmarshaller
}

// call does the request and validates the answer, whatever its status.
func (c fhirClient) call(method, path string, body any, headers ...string) reply {
	c.t.Helper()
	if body != nil {
		headers = append(headers, "Content-Type", "application/fhir+json")
	}
	r := c.do(method, "/fhir/R4/"+path, body, headers...)
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/fhir+json") {
		c.t.Fatalf("%s %s: content type %q: %s", method, path, ct, r.raw)
	}
	// Records under 42 CFR Part 2: no cache may keep them.
	if cc := r.header.Get("Cache-Control"); cc != "no-store" {
		c.t.Fatalf("%s %s: Cache-Control %q, want no-store", method, path, cc)
	}
	if _, err := c.parser.Unmarshal(r.raw); err != nil {
		c.t.Fatalf("%s %s: the answer is not valid FHIR R4: %v\n%s", method, path, err, r.raw)
	}
	return r
}

// read expects 200 and a resource of type typ carrying the Part 2 label and
// notice.
func (c fhirClient) read(path string) map[string]any {
	c.t.Helper()
	r := c.call("GET", path, nil)
	if r.code != http.StatusOK {
		c.t.Fatalf("GET %s: %d %s", path, r.code, r.raw)
	}
	typ := path[:strings.IndexAny(path+"/", "/?")]
	if strings.Contains(path, "?") {
		typ = "Bundle"
	}
	if str(r.body, "resourceType") != typ {
		c.t.Fatalf("GET %s: a %s", path, str(r.body, "resourceType"))
	}
	return r.body
}

// failure expects an OperationOutcome with the HTTP status code.
func (c fhirClient) failure(code int, method, path string, body any, headers ...string) map[string]any {
	c.t.Helper()
	r := c.call(method, path, body, headers...)
	if r.code != code || str(r.body, "resourceType") != "OperationOutcome" {
		c.t.Fatalf("%s %s: %d %s, want %d and an OperationOutcome", method, path, r.code, r.raw, code)
	}
	return r.body
}

func labelled(t *testing.T, res map[string]any) {
	t.Helper()
	meta, _ := res["meta"].(map[string]any)
	var codes []string
	for _, s := range list(meta, "security") {
		codes = append(codes, str(s, "code"))
	}
	text, _ := res["text"].(map[string]any)
	if !slices.Contains(codes, "42CFRPart2") || !slices.Contains(codes, "R") ||
		!strings.Contains(str(text, "div"), part2Notice) {
		t.Fatalf("%s/%s lacks the Part 2 label or notice: %v %v", str(res, "resourceType"), str(res, "id"), meta, text)
	}
}

// bundle returns a searchset's resources, its next link (relative to the
// FHIR base) and its outcome entries.
func bundle(t *testing.T, b map[string]any) (resources []map[string]any, next string, outcomes []map[string]any) {
	t.Helper()
	if str(b, "resourceType") != "Bundle" || str(b, "type") != "searchset" {
		t.Fatalf("not a searchset: %v", b)
	}
	for _, e := range list(b, "entry") {
		res, _ := e["resource"].(map[string]any)
		if str(res, "resourceType") == "OperationOutcome" {
			outcomes = append(outcomes, res)
			continue
		}
		resources = append(resources, res)
	}
	for _, l := range list(b, "link") {
		if str(l, "relation") == "next" {
			_, next, _ = strings.Cut(str(l, "url"), "/fhir/R4/")
		}
	}
	return resources, next, outcomes
}

func ids(res []map[string]any) []string {
	var out []string
	for _, r := range res {
		out = append(out, str(r, "id"))
	}
	return out
}

// publicURL is the gateway's public address in TestFHIR: links in answers
// use it, not the address the test calls.
const publicURL = "https://api.example.org"

// The FHIR interface end to end: an EHR reads and searches what counselors
// recorded through the API, as valid R4 with the Part 2 labels, and writes
// back a referral's status, which moves the referral as the gRPC API does.
// bundleAll reads every page of a search.
func bundleAll(t *testing.T, c fhirClient, path string) []map[string]any {
	t.Helper()
	var all []map[string]any
	for next := path; next != ""; {
		var page []map[string]any
		page, next, _ = bundle(t, c.read(next))
		all = append(all, page...)
	}
	return all
}

func TestFHIR(t *testing.T) {
	sys := stacktest.Start(t)
	base := stacktest.Gateway(t, gateway.Config{
		FamiliesAddr: sys.Stack.FamiliesAddr, InterventionsAddr: sys.Stack.InterventionsAddr, ReferralsAddr: sys.Stack.ReferralsAddr,
		Verifier: sys.Issuer.Verifier(), PublicURL: publicURL,
	})
	counselorToken := sys.Token("counselor-1", auth.RoleCounselor)
	as := func(subject string, roles ...auth.Role) client {
		return client{t: t, base: base, token: sys.Token(subject, roles...)}
	}
	w := &world{t: t, anon: client{t: t, base: base}, counselor: client{t: t, base: base, token: counselorToken},
		admin: as("admin-1", auth.RoleClinicAdmin), ehr: as("ehr", auth.RoleEHR), auto: as("sms-gateway", auth.RoleReminders)}
	parser, err := jsonformat.NewUnmarshaller("UTC", fhirversion.R4)
	if err != nil {
		t.Fatal(err)
	}
	ehr := fhirClient{client: w.ehr, parser: parser}
	anon := fhirClient{client: w.anon, parser: parser}
	conn, err := grpcclient.Dial(sys.Stack.ReferralsAddr, grpcclient.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	referrals := referralsv1.NewReferralsServiceClient(conn)
	asCounselor := auth.WithToken(context.Background(), counselorToken)

	// The directory, two families with the EHR's consent (w.family records
	// it), a third made after a point in time, and a referral and an
	// intervention for the first.
	mat := w.directory()
	famA, _ := w.family("Sam")
	famB, _ := w.family("Jo")
	time.Sleep(20 * time.Millisecond)
	middle := time.Now().UTC()
	time.Sleep(20 * time.Millisecond)
	famC, _ := w.family("Kim")
	idA, idC := lastID(famA), lastID(famC)
	ref := w.counselor.ok("POST", "/v1/clinics/north/referrals", map[string]any{
		"family": famA, "subject": map[string]any{"kind": "SUBJECT_KIND_LOVED_ONE"}, "serviceKind": "SERVICE_KIND_MAT_BUPRENORPHINE",
		"program": mat, "urgency": "URGENCY_IMMEDIATE", "reason": "Ready to start today"})
	refName := str(ref, "name")
	refID := lastID(refName)
	iv, _ := w.schedule(famA, "counselor-1", time.Hour)
	// Family B's meeting is soon: the closed-loop step at the end needs it.
	ivB, startB := w.schedule(famB, "counselor-2", 7*time.Second)

	t.Run("metadata", func(t *testing.T) {
		r := anon.call("GET", "metadata", nil)
		if r.code != http.StatusOK || str(r.body, "resourceType") != "CapabilityStatement" || str(r.body, "fhirVersion") != "4.0.1" {
			t.Fatalf("metadata: %d %s", r.code, r.raw)
		}
		if !strings.Contains(string(r.raw), `"update"`) || !strings.Contains(string(r.raw), `"search-type"`) {
			t.Fatalf("metadata lacks interactions: %s", r.raw)
		}
	})

	t.Run("read", func(t *testing.T) {
		p := ehr.read("Patient/" + idA)
		labelled(t, p)
		if names := list(p, "name"); len(names) == 0 || fmt.Sprint(names[0]["given"]) != "[Sam]" {
			t.Fatalf("Patient name = %v", p["name"])
		}
		labelled(t, ehr.read("RelatedPerson/"+idA+".mom"))
		ct := ehr.read("CareTeam/" + idA)
		labelled(t, ct)
		if len(list(ct, "participant")) != 2 {
			t.Fatalf("CareTeam participants = %v", ct["participant"])
		}
		labelled(t, ehr.read("ServiceRequest/"+refID))
		tk := ehr.read("Task/" + refID)
		labelled(t, tk)
		if str(tk, "status") != "requested" || !strings.Contains(fmt.Sprint(tk["businessStatus"]), "2.0") ||
			str(tk["focus"].(map[string]any), "reference") != "ServiceRequest/"+refID ||
			str(tk["for"].(map[string]any), "reference") != "Patient/"+idA ||
			str(tk["owner"].(map[string]any), "reference") != "HealthcareService/"+lastID(mat) {
			t.Fatalf("Task = %v", tk)
		}
		labelled(t, ehr.read("Appointment/"+lastID(iv)))
		hs := ehr.read("HealthcareService/" + lastID(mat))
		if str(hs, "name") != "Riverside MAT" {
			t.Fatalf("HealthcareService = %v", hs)
		}
		consents, _, _ := bundle(t, ehr.read("Consent?patient=Patient/"+idA))
		if len(consents) != 1 {
			t.Fatalf("consents of %s = %v", idA, consents)
		}
		c := ehr.read("Consent/" + str(consents[0], "id"))
		labelled(t, c)
		if str(c, "status") != "active" || !strings.Contains(fmt.Sprint(c["provision"]), "ehr") {
			t.Fatalf("Consent = %v", c)
		}
	})

	t.Run("errors", func(t *testing.T) {
		anon.failure(http.StatusUnauthorized, "GET", "Patient/"+idA, nil)
		// A record that does not exist answers as one no consent covers:
		// the EHR cannot learn whether a patient's record exists.
		ehr.failure(http.StatusForbidden, "GET", "Task/0193a0c4-7d2e-7b6a-9f31-2c4d5e6f7a8d", nil)
		ehr.failure(http.StatusForbidden, "GET", "Patient/0193a0c4-7d2e-7b6a-9f31-2c4d5e6f7a8e", nil)
		ehr.failure(http.StatusNotFound, "GET", "Patient/Not_An_Id", nil)
		ehr.failure(http.StatusNotFound, "GET", "Observation/x", nil)
		ehr.failure(http.StatusBadRequest, "GET", "Patient?name=Sam", nil)
		ehr.failure(http.StatusBadRequest, "GET", "Patient?_lastUpdated=yesterday", nil)
		ehr.failure(http.StatusMethodNotAllowed, "DELETE", "Task/"+refID, nil)
		// A family whose patient gave no consent is not disclosed.
		f := w.counselor.ok("POST", "/v1/clinics/north/families", map[string]any{
			"lovedOne": map[string]any{"givenName": "Noconsent"}, "counselor": "counselor-1"})
		noConsent := lastID(str(f, "name"))
		for _, path := range []string{"Patient/" + noConsent, "CareTeam/" + noConsent, "RelatedPerson/" + noConsent + ".mom"} {
			o := ehr.failure(http.StatusForbidden, "GET", path, nil)
			// A fixed text: nothing of the family the caller may not see.
			if d := str(list(o, "issue")[0], "diagnostics"); d != "The patient's consent does not cover this disclosure." {
				t.Fatalf("GET %s: diagnostics %q", path, d)
			}
		}
		// A search finds nothing the consent does not cover, whichever
		// service holds it.
		for _, path := range []string{"RelatedPerson?patient=" + noConsent, "CareTeam?patient=" + noConsent,
			"ServiceRequest?patient=" + noConsent, "Task?subject=Patient/" + noConsent, "Appointment?patient=" + noConsent} {
			if res, _, _ := bundle(t, ehr.read(path)); len(res) != 0 {
				t.Fatalf("GET %s without consent = %v", path, ids(res))
			}
		}
	})

	t.Run("search paging", func(t *testing.T) {
		first, next, _ := bundle(t, ehr.read("Patient?_count=2"))
		if len(first) != 2 || next == "" {
			t.Fatalf("first page = %v, next %q", ids(first), next)
		}
		second, last, _ := bundle(t, ehr.read(next))
		if len(second) != 1 || last != "" {
			t.Fatalf("second page = %v, next %q", ids(second), last)
		}
		got := strings.Join(append(ids(first), ids(second)...), ",")
		for _, id := range []string{idA, lastID(famB), idC} {
			if !strings.Contains(got, id) {
				t.Fatalf("pages %s lack %s", got, id)
			}
		}
		for _, res := range append(first, second...) {
			labelled(t, res)
		}
		// Links use the public address, not the one called.
		spoofed := ehr.call("GET", "Patient?_count=2", nil, "X-Forwarded-Proto", "http")
		if spoofed.code != http.StatusOK || strings.Contains(string(spoofed.raw), base) ||
			!strings.Contains(string(spoofed.raw), `"fullUrl":"`+publicURL+`/fhir/R4/Patient/`) ||
			!strings.Contains(string(spoofed.raw), `"url":"`+publicURL+`/fhir/R4/Patient?`) {
			t.Fatalf("links with a spoofed Host: %d %s", spoofed.code, spoofed.raw)
		}
		members, _, _ := bundle(t, ehr.read("RelatedPerson?patient="+idA))
		if len(members) != 1 || str(members[0], "id") != idA+".mom" {
			t.Fatalf("members = %v", ids(members))
		}
		// Every member the EHR may see, one a page, each once: the pages
		// read the families one at a time.
		all, _, _ := bundle(t, ehr.read("RelatedPerson?_count=1000"))
		var paged []string
		for path := "RelatedPerson?_count=1"; path != ""; {
			page, next, _ := bundle(t, ehr.read(path))
			if len(page) > 1 || len(paged) > len(all) {
				t.Fatalf("%s: %d members on a page of one, %d so far", path, len(page), len(paged))
			}
			paged = append(paged, ids(page)...)
			path = next
		}
		if !slices.Equal(paged, ids(all)) || len(all) == 0 {
			t.Fatalf("members one a page %v; in one page %v", paged, ids(all))
		}
		tasks, _, _ := bundle(t, ehr.read("Task?patient="+idA+"&status=requested"))
		if len(tasks) != 1 || str(tasks[0], "id") != refID {
			t.Fatalf("tasks = %v", ids(tasks))
		}
		appts, _, _ := bundle(t, ehr.read("Appointment?patient="+idA))
		if len(appts) != 1 || str(appts[0], "id") != lastID(iv) {
			t.Fatalf("appointments = %v", ids(appts))
		}
		programs, _, _ := bundle(t, ehr.read("HealthcareService?_count=1000"))
		if len(programs) != 4 {
			t.Fatalf("programs = %v", ids(programs))
		}
	})

	t.Run("_lastUpdated", func(t *testing.T) {
		since, _, _ := bundle(t, ehr.read("Patient?_lastUpdated=ge"+url.QueryEscape(middle.Format(time.RFC3339Nano))))
		if len(since) != 1 || str(since[0], "id") != idC {
			t.Fatalf("patients updated since %s = %v, want only %s", middle, ids(since), idC)
		}
		before, _, _ := bundle(t, ehr.read("Patient?_lastUpdated=lt"+url.QueryEscape(middle.Format(time.RFC3339Nano))))
		if len(before) != 2 {
			t.Fatalf("patients updated before %s = %v", middle, ids(before))
		}
		// The clinic's consents that name the EHR, without a patient,
		// polled by when they changed: how it learns of a patient newly
		// covered, whose records may have changed before the consent.
		newly, _, _ := bundle(t, ehr.read("Consent?_lastUpdated=ge"+url.QueryEscape(middle.Format(time.RFC3339Nano))))
		if len(newly) != 1 || !strings.Contains(fmt.Sprint(newly[0]["patient"]), "Patient/"+idC) {
			t.Fatalf("consents since %s = %v; want only %s's", middle, newly, idC)
		}
		every, _, _ := bundle(t, ehr.read("Consent?_count=100"))
		var patients []string
		for _, c := range every {
			patients = append(patients, fmt.Sprint(c["patient"]))
		}
		for _, id := range []string{idA, lastID(famB), idC} {
			if !strings.Contains(strings.Join(patients, " "), "Patient/"+id) {
				t.Fatalf("the clinic's consents for the EHR name %v; want %s's among them", patients, id)
			}
		}
		tomorrow := time.Now().UTC().AddDate(0, 0, 1).Format("2006-01-02")
		none, _, _ := bundle(t, ehr.read("Task?_lastUpdated=ge"+tomorrow))
		today, _, _ := bundle(t, ehr.read("Task?_lastUpdated=lt"+tomorrow))
		if len(none) != 0 || len(today) != 1 {
			t.Fatalf("tasks from tomorrow = %v, before = %v", ids(none), ids(today))
		}
		// One patient's records filtered to nothing disclose nothing: the
		// family is not read, so the accounting records nothing.
		disclosed := func() int {
			return len(list(w.counselor.ok("GET", "/v1/"+famA+"/disclosures?pageSize=1000", nil), "disclosures"))
		}
		was := disclosed()
		for _, path := range []string{"CareTeam", "RelatedPerson"} {
			if got, _, _ := bundle(t, ehr.read(path+"?patient="+idA+"&_lastUpdated=lt2000-01-01")); len(got) != 0 {
				t.Fatalf("%s of %s updated before 2000: %v", path, idA, ids(got))
			}
		}
		if n := disclosed(); n != was {
			t.Fatalf("searches that found nothing recorded %d disclosures", n-was)
		}
		if got, _, _ := bundle(t, ehr.read("CareTeam?patient="+idA+"&_lastUpdated=ge2000-01-01")); len(got) != 1 || disclosed() != was+1 {
			t.Fatalf("CareTeam of %s updated since 2000: %v, %d disclosures recorded", idA, ids(got), disclosed()-was)
		}
	})

	t.Run("Task write-back", func(t *testing.T) {
		tk := ehr.read("Task/" + refID)
		etag := str(tk["meta"].(map[string]any), "versionId")
		put := func(status string, extra map[string]any, headers ...string) reply {
			body := map[string]any{"resourceType": "Task", "id": refID, "status": status, "intent": "order"}
			for k, v := range extra {
				body[k] = v
			}
			return ehr.call("PUT", "Task/"+refID, body, headers...)
		}
		state := func() *referralsv1.Referral {
			rf, err := referrals.GetReferral(asCounselor, &referralsv1.GetReferralRequest{Name: refName})
			if err != nil {
				t.Fatal(err)
			}
			return rf
		}

		// Invalid bodies.
		ehr.failure(http.StatusBadRequest, "PUT", "Task/"+refID, map[string]any{"resourceType": "Task", "id": refID, "status": "bogus", "intent": "order"})
		ehr.failure(http.StatusBadRequest, "PUT", "Task/"+refID, map[string]any{"resourceType": "Task", "id": refID, "intent": "order"})
		ehr.failure(http.StatusBadRequest, "PUT", "Task/"+refID, map[string]any{"resourceType": "Task", "id": "other", "status": "accepted", "intent": "order"})
		ehr.failure(http.StatusBadRequest, "PUT", "Task/"+refID, "{not json")
		ehr.failure(http.StatusRequestEntityTooLarge, "PUT", "Task/"+refID, strings.Repeat(" ", 2<<20))
		// A Task that does not exist: to the EHR, as one no consent covers
		// (it must not learn whether a record exists), not R4's 405, which
		// the server gives others as Tasks are not created by PUT.
		ehr.failure(http.StatusForbidden, "PUT", "Task/0193a0c4-7d2e-7b6a-9f31-2c4d5e6f7a8d",
			map[string]any{"resourceType": "Task", "id": "0193a0c4-7d2e-7b6a-9f31-2c4d5e6f7a8d", "status": "accepted", "intent": "order"})
		// A status that is not the program's; a pause or a cancellation
		// without its reason.
		o := ehr.failure(http.StatusUnprocessableEntity, "PUT", "Task/"+refID, map[string]any{"resourceType": "Task", "id": refID, "status": "draft", "intent": "order"})
		if issue := list(o, "issue")[0]; str(issue, "code") != "business-rule" {
			t.Fatalf("PUT draft: %v", o)
		}
		ehr.failure(http.StatusUnprocessableEntity, "PUT", "Task/"+refID, map[string]any{"resourceType": "Task", "id": refID, "status": "on-hold", "intent": "order"})
		ehr.failure(http.StatusUnprocessableEntity, "PUT", "Task/"+refID, map[string]any{"resourceType": "Task", "id": refID, "status": "cancelled", "intent": "order"})
		if rf := state(); rf.GetState() != referralsv1.ReferralState_REFERRAL_STATE_REQUESTED || rf.GetEtag() != etag {
			t.Fatalf("refused PUTs changed the referral: %v %s", rf.GetState(), rf.GetEtag())
		}

		// The program accepts.
		r := put("accepted", nil, "If-Match", `W/"`+etag+`"`, "Idempotency-Key", "accept-"+refID)
		if r.code != http.StatusOK || str(r.body, "status") != "accepted" || !strings.Contains(fmt.Sprint(r.body["businessStatus"]), "3.0") {
			t.Fatalf("accept: %d %s", r.code, r.raw)
		}
		if st := state().GetState(); st != referralsv1.ReferralState_REFERRAL_STATE_ACCEPTED {
			t.Fatalf("referral after accept = %v", st)
		}
		accepted := r.header.Get("ETag")
		// Clients that sync on Last-Modified get the version's time.
		if lm, err := http.ParseTime(r.header.Get("Last-Modified")); err != nil || time.Since(lm) > time.Minute || time.Until(lm) > time.Second {
			t.Fatalf("accept: Last-Modified %q (%v); want the update's time", r.header.Get("Last-Modified"), err)
		}
		// Its answer lost, the EHR sends the same request again, If-Match
		// and Idempotency-Key as before: the first answer, not a 412.
		if again := put("accepted", nil, "If-Match", `W/"`+etag+`"`, "Idempotency-Key", "accept-"+refID); again.code != http.StatusOK || again.header.Get("ETag") != accepted {
			t.Fatalf("a retried accept: %d %s (etag %s, want %s)", again.code, again.raw, again.header.Get("ETag"), accepted)
		}
		// Resending the status changes nothing.
		if again := put("accepted", nil); again.code != http.StatusOK || again.header.Get("ETag") != accepted {
			t.Fatalf("resend: %d %s (etag %s, was %s)", again.code, again.raw, again.header.Get("ETag"), accepted)
		}
		// A stale If-Match is refused.
		start := time.Now().Add(time.Second).UTC()
		period := map[string]any{"executionPeriod": map[string]any{"start": start.Format(time.RFC3339Nano)}}
		ehr.failure(http.StatusPreconditionFailed, "PUT", "Task/"+refID, map[string]any{"resourceType": "Task", "id": refID,
			"status": "in-progress", "intent": "order", "executionPeriod": period["executionPeriod"]}, "If-Match", `W/"`+etag+`"`)
		// In progress needs the intake time.
		ehr.failure(http.StatusUnprocessableEntity, "PUT", "Task/"+refID, map[string]any{"resourceType": "Task", "id": refID, "status": "in-progress", "intent": "order"})
		r = put("in-progress", period, "If-Match", accepted)
		if r.code != http.StatusOK || str(r.body, "status") != "in-progress" {
			t.Fatalf("schedule: %d %s", r.code, r.raw)
		}
		rf := state()
		if rf.GetState() != referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED ||
			rf.GetIntakeAppointment().GetStartTime().AsTime().Sub(start).Abs() > time.Millisecond {
			t.Fatalf("referral after schedule = %v at %v", rf.GetState(), rf.GetIntakeAppointment().GetStartTime().AsTime())
		}
		disclosed := func() int {
			n := 0
			for _, d := range list(w.counselor.ok("GET", "/v1/"+famA+"/disclosures?pageSize=1000", nil), "disclosures") {
				if str(d, "information") == "INFORMATION_KIND_REFERRALS" && str(d, "resource") == refName &&
					str(d, "recipient") == "ehr" && str(d, "channel") == "DISCLOSURE_CHANNEL_API" {
					n++
				}
			}
			return n
		}
		before := disclosed()
		intake := ehr.read("Appointment/intake-" + refID)
		labelled(t, intake)
		if str(intake, "status") != "booked" {
			t.Fatalf("intake appointment = %v", intake)
		}
		// The appointment is the referral's disclosure, in the accounting.
		if n := disclosed(); n != before+1 {
			t.Fatalf("reading the intake appointment recorded %d referral disclosures, want 1", n-before)
		}
		// The program pauses the intake, and then books it again.
		hold := map[string]any{"statusReason": map[string]any{"text": "waiting for prior authorization"}}
		r = put("on-hold", hold)
		if r.code != http.StatusOK || str(r.body, "status") != "on-hold" || !strings.Contains(fmt.Sprint(r.body["statusReason"]), "prior authorization") {
			t.Fatalf("on-hold: %d %s", r.code, r.raw)
		}
		if st := state().GetState(); st != referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD {
			t.Fatalf("referral after on-hold = %v", st)
		}
		if a := ehr.read("Appointment/intake-" + refID); str(a, "status") != "waitlist" {
			t.Fatalf("the intake appointment on hold = %v", a)
		}
		start = time.Now().Add(time.Second).UTC()
		period = map[string]any{"executionPeriod": map[string]any{"start": start.Format(time.RFC3339Nano)}}
		if r = put("in-progress", period); r.code != http.StatusOK || str(r.body, "status") != "in-progress" {
			t.Fatalf("booked again after the hold: %d %s", r.code, r.raw)
		}
		// The person did not come: a no-show, which the program may book
		// again, so the Task stays in progress (unattended), not failed,
		// which an EHR would take as the end of the loop.
		time.Sleep(time.Until(start) + 500*time.Millisecond)
		r = put("failed", nil)
		if r.code != http.StatusOK || str(r.body, "status") != "in-progress" || !strings.Contains(fmt.Sprint(r.body["businessStatus"]), "5.1.2") {
			t.Fatalf("no-show: %d %s; want in-progress, unattended (5.1.2)", r.code, r.raw)
		}
		if st := state().GetState(); st != referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW {
			t.Fatalf("referral after the no-show = %v", st)
		}
		if again := put("failed", nil); again.code != http.StatusOK {
			t.Fatalf("the no-show reported again: %d %s", again.code, again.raw)
		}
		has := func(search string) bool {
			tasks, _, _ := bundle(t, ehr.read(search))
			return slices.ContainsFunc(tasks, func(tk map[string]any) bool { return str(tk, "id") == refID })
		}
		if !has("Task?status=in-progress&_count=1000") || has("Task?status=failed&_count=1000") {
			t.Fatal("a Task search by status does not find the no-show as in-progress alone")
		}
		start = time.Now().Add(time.Second).UTC()
		period = map[string]any{"executionPeriod": map[string]any{"start": start.Format(time.RFC3339Nano)}}
		if r = put("in-progress", period); r.code != http.StatusOK || str(r.body, "status") != "in-progress" ||
			!strings.Contains(fmt.Sprint(r.body["businessStatus"]), "5.1.1") {
			t.Fatalf("booked again after the no-show: %d %s", r.code, r.raw)
		}
		// The person came: treatment entry.
		time.Sleep(time.Until(start) + 500*time.Millisecond)
		r = put("completed", nil)
		if r.code != http.StatusOK || str(r.body, "status") != "completed" || !strings.Contains(fmt.Sprint(r.body["businessStatus"]), "5.1.4") {
			t.Fatalf("complete: %d %s", r.code, r.raw)
		}
		if st := state().GetState(); st != referralsv1.ReferralState_REFERRAL_STATE_COMPLETED {
			t.Fatalf("referral after complete = %v", st)
		}
		// Completed is final: the service refuses another move.
		ehr.failure(http.StatusUnprocessableEntity, "PUT", "Task/"+refID, map[string]any{"resourceType": "Task", "id": refID, "status": "failed", "intent": "order"})
	})

	// A consent that covers referrals but not intervention meetings: the
	// EHR moves the referral and sees its intake appointment, which is the
	// referral's (the time it wrote into the Task itself), with the
	// disclosure recorded as a referral's. When the consent goes, both go.
	t.Run("intake appointment follows the referral's consent", func(t *testing.T) {
		f := w.counselor.ok("POST", "/v1/clinics/north/families", map[string]any{
			"lovedOne": map[string]any{"givenName": "Lou"}, "counselor": "counselor-1", "coverage": map[string]any{"kind": "COVERAGE_KIND_MEDICAID"},
			"members": []map[string]any{{"id": "dad", "givenName": "Al", "relationship": "RELATIONSHIP_PARENT"}}})
		fam := str(f, "name")
		now := time.Now().UTC()
		cn := w.counselor.ok("POST", "/v1/"+fam+"/consents", map[string]any{
			"discloser": "North clinic", "recipients": []string{"ehr"}, "purposes": []string{"PURPOSE_TREATMENT"},
			"information": []string{"INFORMATION_KIND_IDENTITY", "INFORMATION_KIND_REFERRALS"},
			"expireTime":  now.AddDate(1, 0, 0).Format(time.RFC3339), "signTime": now.Add(-time.Minute).Format(time.RFC3339),
			"signer": "Lou", "revocationRightStated": true})
		var group string
		for _, p := range list(w.admin.ok("GET", "/v1/clinics/north/programs?pageSize=100", nil), "programs") {
			if str(p, "displayName") == "Parents' group" {
				group = str(p, "name")
			}
		}
		// refer refers subject to the group; book has the EHR accept the
		// referral and book its intake at start.
		refer := func(subject map[string]any) (map[string]any, string) {
			t.Helper()
			rf := w.counselor.ok("POST", "/v1/clinics/north/referrals", map[string]any{
				"family": fam, "subject": subject, "serviceKind": "SERVICE_KIND_FAMILY_SUPPORT_GROUP",
				"program": group, "urgency": "URGENCY_ROUTINE", "reason": "Wants a group"})
			return rf, lastID(str(rf, "name"))
		}
		book := func(id string, start time.Time) {
			t.Helper()
			for _, body := range []map[string]any{
				{"resourceType": "Task", "id": id, "status": "accepted", "intent": "order"},
				{"resourceType": "Task", "id": id, "status": "in-progress", "intent": "order",
					"executionPeriod": map[string]any{"start": start.Format(time.RFC3339Nano)}},
			} {
				if r := ehr.call("PUT", "Task/"+id, body); r.code != http.StatusOK {
					t.Fatalf("PUT %s of %s: %d %s", body["status"], id, r.code, r.raw)
				}
			}
		}
		rf, id := refer(map[string]any{"kind": "SUBJECT_KIND_LOVED_ONE"})
		book(id, now.Add(48*time.Hour))
		tk := ehr.read("Task/" + id)
		if str(tk, "status") != "in-progress" {
			t.Fatalf("Task = %v", tk)
		}
		a := ehr.read("Appointment/intake-" + id)
		labelled(t, a)
		period, _ := tk["executionPeriod"].(map[string]any)
		if str(a, "status") != "booked" || period == nil || str(a, "start") != period["start"] {
			t.Fatalf("intake appointment %v does not match the Task's period %v", a, period)
		}
		// The father's own referral, to the same group, is his record, not
		// Lou's: her consent does not cover it. The EHR can neither move
		// nor read nor find it until he consents himself.
		_, dadID := refer(map[string]any{"kind": "SUBJECT_KIND_FAMILY_MEMBER", "memberId": "dad"})
		ehr.failure(http.StatusForbidden, "PUT", "Task/"+dadID, map[string]any{"resourceType": "Task", "id": dadID, "status": "accepted", "intent": "order"})
		ehr.failure(http.StatusForbidden, "GET", "ServiceRequest/"+dadID, nil)
		for next := "Task?_count=1000"; next != ""; {
			var tasks []map[string]any
			tasks, next, _ = bundle(t, ehr.read(next))
			if slices.Contains(ids(tasks), dadID) {
				t.Fatalf("the father's Task was found under Lou's consent alone: %v", ids(tasks))
			}
		}
		// A consent for someone not in the family is refused.
		if r := w.counselor.do("POST", "/v1/"+fam+"/consents", map[string]any{
			"discloser": "North clinic", "recipients": []string{"ehr"}, "purposes": []string{"PURPOSE_TREATMENT"},
			"information": []string{"INFORMATION_KIND_REFERRALS"}, "memberId": "uncle",
			"expireTime": now.AddDate(1, 0, 0).Format(time.RFC3339), "signTime": now.Add(-time.Minute).Format(time.RFC3339),
			"signer": "Bo", "revocationRightStated": true}); r.code != http.StatusBadRequest || !strings.Contains(string(r.raw), "consent.member_id") {
			t.Fatalf("a consent of a stranger: %d %s; want 400 on consent.member_id", r.code, r.raw)
		}
		dadConsent := w.counselor.ok("POST", "/v1/"+fam+"/consents", map[string]any{
			"discloser": "North clinic", "recipients": []string{"ehr"}, "purposes": []string{"PURPOSE_TREATMENT"},
			"information": []string{"INFORMATION_KIND_REFERRALS"}, "memberId": "dad",
			"expireTime": now.AddDate(1, 0, 0).Format(time.RFC3339), "signTime": now.Add(-time.Minute).Format(time.RFC3339),
			"signer": "Al", "revocationRightStated": true})
		if str(dadConsent, "memberId") != "dad" {
			t.Fatalf("the father's consent = %v", dadConsent)
		}
		// His consent is his, not the loved one's: its patient is him,
		// contained, and a search of the loved one's consents leaves it out.
		dads := strings.ReplaceAll(lastID(str(dadConsent, "name")), "-", "") // as FHIR ids spell it
		found := false
		for _, c := range bundleAll(t, ehr, "Consent?_count=1000") {
			if strings.HasSuffix(str(c, "id"), dads) {
				found = true
				if p, _ := c["patient"].(map[string]any); str(p, "reference") != "#member" || !strings.Contains(fmt.Sprint(c["contained"]), ".dad") {
					t.Fatalf("the father's consent: patient %v, contained %v; want him, contained", c["patient"], c["contained"])
				}
			}
		}
		if !found {
			t.Fatal("the father's consent is not among the clinic's")
		}
		for _, c := range bundleAll(t, ehr, "Consent?patient="+lastID(fam)) {
			if strings.HasSuffix(str(c, "id"), dads) {
				t.Fatalf("the father's consent is among the loved one's: %v", c)
			}
		}
		// His own intake: an appointment he takes part in, not the loved one.
		book(dadID, now.Add(72*time.Hour))
		// R4's patient parameter matches the appointments the Patient takes
		// part in; the father's is found without it.
		if appts, _, _ := bundle(t, ehr.read("Appointment?patient="+lastID(fam))); !slices.Equal(ids(appts), []string{"intake-" + id}) {
			t.Fatalf("the patient's appointments = %v; want the loved one's intake only", ids(appts))
		}
		var all []string
		for next := "Appointment?_count=1000"; next != ""; {
			var appts []map[string]any
			appts, next, _ = bundle(t, ehr.read(next))
			all = append(all, ids(appts)...)
		}
		if !slices.Contains(all, "intake-"+dadID) || !slices.Contains(all, "intake-"+id) {
			t.Fatalf("appointments of every patient = %v; want both intakes", all)
		}
		recorded := 0
		for _, d := range list(w.counselor.ok("GET", "/v1/"+fam+"/disclosures?pageSize=1000", nil), "disclosures") {
			if str(d, "information") == "INFORMATION_KIND_APPOINTMENTS" {
				t.Fatalf("an intake appointment was recorded as an intervention meeting: %v", d)
			}
			if str(d, "resource") == str(rf, "name") && str(d, "recipient") == "ehr" {
				recorded++
			}
		}
		// Two PUTs, the Task read, the Appointment read and the search.
		if recorded < 5 {
			t.Fatalf("%d disclosures of the referral recorded, want at least 5", recorded)
		}

		w.counselor.ok("POST", "/v1/"+str(cn, "name")+":revoke", map[string]any{"reason": "changed her mind"})
		o := ehr.failure(http.StatusForbidden, "GET", "Appointment/intake-"+id, nil)
		if d := str(list(o, "issue")[0], "diagnostics"); d != "The patient's consent does not cover this disclosure." ||
			strings.Contains(fmt.Sprint(o), lastID(fam)) {
			t.Fatalf("intake appointment after the revocation: %v", o)
		}
		// Left out of the search for every patient too. The father's own
		// stays: his consent covers it, whatever becomes of Lou's.
		var next = "Appointment?_count=1000"
		dadsStays := false
		for next != "" {
			var appts []map[string]any
			appts, next, _ = bundle(t, ehr.read(next))
			if slices.Contains(ids(appts), "intake-"+id) {
				t.Fatalf("the intake appointment was found after the revocation: %v", ids(appts))
			}
			dadsStays = dadsStays || slices.Contains(ids(appts), "intake-"+dadID)
		}
		if !dadsStays {
			t.Fatal("the father's intake went with Lou's consent; his own covers it")
		}
		// A consent to intervention meetings alone does not cover it: it is
		// the referral's.
		w.counselor.ok("POST", "/v1/"+fam+"/consents", map[string]any{
			"discloser": "North clinic", "recipients": []string{"ehr"}, "purposes": []string{"PURPOSE_TREATMENT"},
			"information": []string{"INFORMATION_KIND_IDENTITY", "INFORMATION_KIND_APPOINTMENTS"},
			"expireTime":  now.AddDate(1, 0, 0).Format(time.RFC3339), "signTime": now.Add(-time.Minute).Format(time.RFC3339),
			"signer": "Lou", "revocationRightStated": true})
		ehr.failure(http.StatusForbidden, "GET", "Appointment/intake-"+id, nil)
		if appts, _, _ := bundle(t, ehr.read("Appointment?patient="+lastID(fam))); slices.Contains(ids(appts), "intake-"+id) {
			t.Fatalf("the intake appointment under an appointments consent: %v", ids(appts))
		}
		// Staff see it: theirs is not a disclosure.
		counselorFHIR := fhirClient{client: w.counselor, parser: parser}
		if a := counselorFHIR.read("Appointment/intake-" + id); str(a, "status") != "booked" {
			t.Fatalf("the counselor's intake appointment = %v", a)
		}
	})

	// The loved one says yes; the intake workflow refers them at once and
	// waits. The program's answers come only through FHIR, and the
	// workflow, hearing that the person entered treatment, refers the
	// family on to counseling.
	t.Run("closed loop", func(t *testing.T) {
		stacktest.Eventually(t, 20*time.Second, "the meeting to start", func() bool { return time.Now().After(startB) })
		w.counselor.ok("POST", "/v1/"+ivB+":recordOutcome", map[string]any{"kind": "OUTCOME_KIND_ACCEPTED", "notes": "said yes"})
		var id string
		stacktest.Eventually(t, 20*time.Second, "the immediate referral", func() bool {
			tasks, _, _ := bundle(t, ehr.read("Task?patient="+lastID(famB)+"&status=requested"))
			if len(tasks) == 1 {
				id = str(tasks[0], "id")
			}
			return id != ""
		})
		put := func(status string, extra map[string]any) {
			body := map[string]any{"resourceType": "Task", "id": id, "status": status, "intent": "order"}
			for k, v := range extra {
				body[k] = v
			}
			if r := ehr.call("PUT", "Task/"+id, body); r.code != http.StatusOK {
				t.Fatalf("%s: %d %s", status, r.code, r.raw)
			}
		}
		put("accepted", nil)
		start := time.Now().Add(time.Second).UTC()
		put("in-progress", map[string]any{"executionPeriod": map[string]any{"start": start.Format(time.RFC3339Nano)}})
		time.Sleep(time.Until(start) + 500*time.Millisecond)
		put("completed", nil)
		stacktest.Eventually(t, 20*time.Second, "the family-counseling referral after treatment entry", func() bool {
			return len(list(w.counselor.ok("GET", "/v1/clinics/north/referrals"+q(fmt.Sprintf("intervention = %q AND service_kind = FAMILY_COUNSELING", ivB)), nil), "referrals")) == 1
		})
	})

	// A family whose circle has no members has no RelatedPerson to show:
	// a search for them does not read it, so nothing is disclosed. (Last:
	// the paging above counts three families.)
	t.Run("RelatedPerson search skips a family without members", func(t *testing.T) {
		fam, _ := w.family("Lee")
		// Its one member leaves the circle.
		cur := w.counselor.ok("GET", "/v1/"+fam, nil)
		w.counselor.ok("PATCH", "/v1/"+fam+"?updateMask=members", map[string]any{"etag": str(cur, "etag"), "members": []any{}})
		disclosed := func() int {
			return len(list(w.counselor.ok("GET", "/v1/"+fam+"/disclosures?pageSize=1000", nil), "disclosures"))
		}
		was := disclosed()
		if got, _, _ := bundle(t, ehr.read("RelatedPerson?patient="+lastID(fam))); len(got) != 0 {
			t.Fatalf("members of a family without members: %v", ids(got))
		}
		all, _, _ := bundle(t, ehr.read("RelatedPerson?_count=1000"))
		for _, id := range ids(all) {
			if strings.HasPrefix(id, lastID(fam)) {
				t.Fatalf("all members include %s", id)
			}
		}
		if n := disclosed(); n != was {
			t.Fatalf("RelatedPerson searches recorded %d disclosures of a family without members", n-was)
		}
		// The family itself is still there for the EHR, and reading it is
		// recorded: the count above could move.
		ehr.read("Patient/" + lastID(fam))
		if n := disclosed(); n != was+1 {
			t.Fatalf("reading the Patient recorded %d disclosures, want 1", n-was)
		}
	})
}

func lastID(name string) string { return name[strings.LastIndex(name, "/")+1:] }
