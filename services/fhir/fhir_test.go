package fhir

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/fhir/go/fhirversion"
	"github.com/google/fhir/go/jsonformat"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/consentgate"
)

const (
	famID  = "0193a0c4-7d2e-7b6a-9f31-2c4d5e6f7a8b"
	consID = "0193a0c4-7d2e-7b6a-9f31-2c4d5e6f7a8c"
	refID  = "0193a0c4-7d2e-7b6a-9f31-2c4d5e6f7a8d"
)

func ts(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

func sampleFamily() *familiesv1.Family {
	now := time.Now()
	return &familiesv1.Family{
		Name: "clinics/north/families/" + famID,
		LovedOne: &familiesv1.LovedOne{GivenName: "Sam", FamilyName: "Rivera", PreferredName: "Sammy", BirthDate: "1994-03-02",
			MayContactDirectly: true, ContactChannels: []*familiesv1.ContactChannel{{Kind: familiesv1.ChannelKind_CHANNEL_KIND_SMS, Value: "+15555550111"}}},
		Members: []*familiesv1.Member{
			{Id: "mom", GivenName: "Ana", Relationship: familiesv1.Relationship_RELATIONSHIP_PARENT, Role: familiesv1.MemberRole_MEMBER_ROLE_CONTACT_PERSON,
				ConsentToContact: true, ContactChannels: []*familiesv1.ContactChannel{{Kind: familiesv1.ChannelKind_CHANNEL_KIND_EMAIL, Value: "ana@example.org"}}},
			{Id: strings.Repeat("a", 40), GivenName: "Lee", Relationship: familiesv1.Relationship_RELATIONSHIP_OTHER},
		},
		Counselor: "counselor-1", State: familiesv1.FamilyState_FAMILY_STATE_ACTIVE,
		CreateTime: ts(now.Add(-time.Hour)), UpdateTime: ts(now), Etag: "v3",
	}
}

func sampleReferral(state referralsv1.ReferralState) *referralsv1.Referral {
	now := time.Now()
	r := &referralsv1.Referral{
		Name: "clinics/north/referrals/" + refID, Family: "clinics/north/families/" + famID,
		Subject:     &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE},
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, Program: "clinics/north/programs/p1",
		Urgency: referralsv1.Urgency_URGENCY_IMMEDIATE, Reason: "Ready today", State: state,
		CreateTime: ts(now.Add(-time.Hour)), UpdateTime: ts(now), Etag: "v2",
	}
	switch state {
	case referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED, referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW,
		referralsv1.ReferralState_REFERRAL_STATE_COMPLETED, referralsv1.ReferralState_REFERRAL_STATE_CANCELLED,
		referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD, referralsv1.ReferralState_REFERRAL_STATE_ENTERED_IN_ERROR:
		r.IntakeAppointment = &referralsv1.IntakeAppointment{StartTime: ts(now.Add(time.Hour)), Notes: "Bring ID", Telehealth: true}
	case referralsv1.ReferralState_REFERRAL_STATE_REJECTED:
		r.Rejection = &referralsv1.Rejection{Reason: referralsv1.RejectionReason_REJECTION_REASON_AT_CAPACITY}
	}
	if state == referralsv1.ReferralState_REFERRAL_STATE_COMPLETED {
		r.TreatmentEntryTime = ts(now)
	}
	if state == referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD {
		r.History = []*referralsv1.ReferralEvent{{FromState: referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED, ToState: state,
			Reason: "waiting for prior authorization", Time: ts(now)}}
	}
	if state == referralsv1.ReferralState_REFERRAL_STATE_CANCELLED {
		r.History = []*referralsv1.ReferralEvent{{FromState: referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED, ToState: state,
			Reason: "moved out of the area", Time: ts(now)}}
	}
	return r
}

// Every mapping, in every state, renders as valid FHIR R4 with the Part 2
// labels where they belong.
func TestResourcesAreValidR4(t *testing.T) {
	s, err := newServer(Config{})
	if err != nil {
		t.Fatal(err)
	}
	f := sampleFamily()
	now := time.Now()
	resources := []obj{patient(f), careTeam(f), relatedPerson(f, f.GetMembers()[0]), relatedPerson(f, f.GetMembers()[1])}
	for st := range referralsv1.ReferralState_name {
		rf := sampleReferral(referralsv1.ReferralState(st))
		resources = append(resources, serviceRequest(rf), task(rf))
		if a := intakeAppointment(rf); a != nil {
			resources = append(resources, a)
		}
	}
	member := sampleReferral(referralsv1.ReferralState_REFERRAL_STATE_REQUESTED)
	member.Subject = &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_FAMILY_MEMBER, MemberId: "mom"}
	resources = append(resources, serviceRequest(member), task(member))
	for st := range interventionsv1.InterventionState_name {
		iv := &interventionsv1.Intervention{Name: "clinics/north/interventions/i1", Family: f.GetName(), Counselor: "counselor-1",
			State: interventionsv1.InterventionState(st), Participants: []*interventionsv1.Participant{{MemberId: "mom"}},
			UpdateTime: ts(now), Etag: "v1", CancelReason: "moved"}
		if st != int32(interventionsv1.InterventionState_INTERVENTION_STATE_DRAFT) {
			iv.StartTime, iv.ExpectedDuration = ts(now), durationpb.New(90*time.Minute)
		}
		resources = append(resources, appointment(iv))
	}
	resources = append(resources, healthcareService(&referralsv1.Program{Name: "clinics/north/programs/p1", DisplayName: "Riverside MAT",
		Organization: "Riverside", Services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE},
		Languages: []string{"en", "es"}, Phone: "+15555550123", SameDayIntake: true, Hours: "Mon-Fri", UpdateTime: ts(now), Etag: "v1",
		MinAge: 18}))
	resources = append(resources, consent(&familiesv1.Consent{Name: f.GetName() + "/consents/" + consID, Discloser: "North clinic",
		Information: []familiesv1.InformationKind{familiesv1.InformationKind_INFORMATION_KIND_IDENTITY, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS},
		Recipients:  []string{"ehr", "county-ehr"}, TreatingProviders: true, Purposes: []familiesv1.Purpose{familiesv1.Purpose_PURPOSE_TREATMENT},
		ExpireTime: ts(now.AddDate(1, 0, 0)), Signer: "Sam Rivera", SignTime: ts(now.Add(-time.Hour)), RevocationRightStated: true,
		State: familiesv1.ConsentState_CONSENT_STATE_ACTIVE, Revocations: []*familiesv1.Revocation{{Recipient: "county-ehr", RevokeTime: ts(now)}},
		UpdateTime: ts(now), Etag: "v2"}))
	resources = append(resources, outcome("error", "forbidden", "no consent"))
	for _, res := range resources {
		b, err := s.render(res)
		if err != nil {
			t.Errorf("%s %v: %v", res["resourceType"], res["id"], err)
			continue
		}
		labelled := strings.Contains(string(b), `"42CFRPart2"`) && strings.Contains(string(b), part2Notice)
		switch res["resourceType"] {
		case "HealthcareService", "OperationOutcome":
		default:
			if !labelled {
				t.Errorf("%s has no Part 2 label and notice: %s", res["resourceType"], b)
			}
		}
	}
	// The bundle around them is valid too.
	var entries []obj
	for _, res := range resources[:len(resources)-1] {
		entries = append(entries, entry(res))
	}
	q := query{typ: "Patient"}
	if _, err := s.render(searchBundle("http://x/fhir/R4", q, page{entries: entries, next: "abc", outcomes: []obj{outcome("warning", "forbidden", "x")}}, time.Now())); err != nil {
		t.Fatal(err)
	}
}

// An invalid answer is caught before it leaves.
func TestRenderRejectsInvalid(t *testing.T) {
	s, err := newServer(Config{})
	if err != nil {
		t.Fatal(err)
	}
	bad := task(sampleReferral(referralsv1.ReferralState_REFERRAL_STATE_REQUESTED))
	bad["status"] = "nonsense"
	if _, err := s.render(bad); err == nil {
		t.Fatal("a Task with a bad status rendered")
	}
	// Its answer is a 500 without the version headers set for it.
	rec := httptest.NewRecorder()
	writeVersionHeaders(rec, bad)
	s.writeResource(rec, http.StatusOK, bad)
	if rec.Code != http.StatusInternalServerError || rec.Header().Get("ETag") != "" || rec.Header().Get("Last-Modified") != "" {
		t.Fatalf("invalid answer: %d, ETag %q, Last-Modified %q; want 500 without either",
			rec.Code, rec.Header().Get("ETag"), rec.Header().Get("Last-Modified"))
	}
}

// Text stored before the services refused the control characters FHIR's
// string refuses still renders, each such character a space; tabs, line
// breaks and characters JSON escapes for HTML stay as they were.
func TestRenderScrubsStoredControlCharacters(t *testing.T) {
	s, err := newServer(Config{})
	if err != nil {
		t.Fatal(err)
	}
	r := sampleReferral(referralsv1.ReferralState_REFERRAL_STATE_REQUESTED)
	r.Reason = "pasted\vfrom\x1bWord\x00,\b\f <kept> & \\u000b\tand\r\nkept"
	b, err := s.render(serviceRequest(r))
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	var got struct {
		ReasonCode []struct{ Text string } `json:"reasonCode"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	want := "pasted from Word ,   <kept> & \\u000b\tand\r\nkept"
	if len(got.ReasonCode) != 1 || got.ReasonCode[0].Text != want {
		t.Fatalf("reasonCode = %+v; want the text %q", got.ReasonCode, want)
	}
}

func TestPairIDs(t *testing.T) {
	for _, c := range []struct{ parent, child string }{
		{famID, "mom"}, {famID, consID}, {famID, strings.Repeat("b", 63)}, {"f1", "m-2"},
	} {
		id := pairID(c.parent, c.child)
		if len(id) > 64 || !fhirID(id) {
			t.Fatalf("pairID(%q, %q) = %q is not a FHIR id", c.parent, c.child, id)
		}
		p, ch, hash, ok := splitPairID(id)
		if !ok || p != c.parent || !matches(c.child, ch, hash) {
			t.Fatalf("splitPairID(%q) = %q %q %q %v", id, p, ch, hash, ok)
		}
	}
	for _, bad := range []string{"", "x", "a.b.c", "A.b", strings.Repeat("g", 64)} {
		if _, _, _, ok := splitPairID(bad); ok {
			t.Errorf("splitPairID(%q) accepted", bad)
		}
	}
}

func fhirID(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return s != ""
}

const testBase = "https://handoff.example/fhir/R4"

func TestLastUpdated(t *testing.T) {
	q, err := parseQuery("Patient", map[string][]string{"_lastUpdated": {"ge2026-01-01", "lt2026-02"}}, testBase)
	if err != nil {
		t.Fatal(err)
	}
	want := `update_time >= "2026-01-01T00:00:00Z" AND update_time < "2026-02-01T00:00:00Z"`
	if got := q.filter(); got != want {
		t.Fatalf("filter = %s, want %s", got, want)
	}
	q, err = parseQuery("Task", map[string][]string{"_lastUpdated": {"2026-03-04T05:06:07Z"}, "patient": {"Patient/f1"}, "status": {"accepted"}}, testBase)
	if err != nil {
		t.Fatal(err)
	}
	if got := q.filter(`family = "x"`); got != `family = "x" AND update_time >= "2026-03-04T05:06:07Z" AND update_time < "2026-03-04T05:06:08Z"` {
		t.Fatalf("filter = %s", got)
	}
	for _, bad := range []map[string][]string{
		{"_lastUpdated": {"sa2026"}}, {"_lastUpdated": {"yesterday"}}, {"name": {"x"}}, {"_count": {"0"}},
		// A decimal comma, which Go's parser takes and FHIR's grammar does not.
		{"_lastUpdated": {"eq2026-03-01T10:00:00,5Z"}}, {"_lastUpdated": {"gt2026-03-01T10:00:00,5"}},
		{"status": {"accepted,rejected"}}, {"patient": {"Group/x"}}, {"patient": {"https://ehr.example/fhir/NotPatient/x"}},
		// Another server's Patient, or another base on this host.
		{"patient": {"https://ehr.example/fhir/R4/Patient/f1"}}, {"subject": {"https://handoff.example/other/Patient/f1"}},
		// Empty: dropped, the search would cover the whole clinic.
		{"patient": {""}}, {"subject": {""}}, {"status": {""}}, {"_count": {""}},
	} {
		if _, err := parseQuery("Task", bad, testBase); err == nil {
			t.Errorf("parseQuery(%v) accepted", bad)
		}
	}
	// A client may send the absolute reference it took from a fullUrl.
	for _, ref := range []string{"f1", "Patient/f1", "https://handoff.example/fhir/R4/Patient/f1", "http://HANDOFF.example/fhir/R4/Patient/f1"} {
		if q, err := parseQuery("Task", map[string][]string{"patient": {ref}}, testBase); err != nil || q.patient != "f1" {
			t.Errorf("patient=%s: %q, %v; want f1", ref, q.patient, err)
		}
	}
	// The links carry the count applied.
	if q, err := parseQuery("Patient", map[string][]string{"_count": {"5000"}}, testBase); err != nil || q.size != 1000 ||
		q.params.Get("_count") != "1000" {
		t.Errorf("_count=5000: size %d, params %v, %v; want 1000 in both", q.size, q.params, err)
	}
	// Without a patient, the clinic's consents (for a polling EHR).
	if q, err := parseQuery("Consent", map[string][]string{}, testBase); err != nil || q.patient != "" {
		t.Errorf("a Consent search without patient: %+v, %v; want the clinic's", q, err)
	}
	// A + in an offset sent unencoded arrives as a space.
	for v, want := range map[string]string{
		"ge2026-03-01T00:00:00 01:00": `update_time >= "2026-02-28T23:00:00Z"`,
		"lt2026-03-01T00:00 05:30":    `update_time < "2026-02-28T18:30:00Z"`,
	} {
		q, err := parseQuery("Patient", map[string][]string{"_lastUpdated": {v}}, testBase)
		if err != nil || q.filter() != want {
			t.Errorf("_lastUpdated=%s: %s, %v; want %s", v, q.filter(), err, want)
		}
	}
	// A time without a zone is in UTC, as dates are; bounds past year
	// 9999 are its last instant (an upper one, no bound at all).
	for v, want := range map[string]string{
		"ge2026-03-01T10:00:00":       `update_time >= "2026-03-01T10:00:00Z"`,
		"lt2026-03-01T10:00":          `update_time < "2026-03-01T10:00:00Z"`,
		"2026-03-01T10:00:00.5":       `update_time >= "2026-03-01T10:00:00.5Z" AND update_time < "2026-03-01T10:00:00.6Z"`,
		"le9999-12-31":                ``,
		"eq9999":                      `update_time >= "9999-01-01T00:00:00Z"`,
		"gt9999-12-31":                `update_time >= "9999-12-31T23:59:59.999999Z"`,
		"lt9999-12-31T23:59:59Z":      `update_time < "9999-12-31T23:59:59Z"`,
		"ge9999-12-31T23:59:59+00:00": `update_time >= "9999-12-31T23:59:59Z"`,
	} {
		q, err := parseQuery("Patient", map[string][]string{"_lastUpdated": {v}}, testBase)
		if err != nil || q.filter() != want {
			t.Errorf("_lastUpdated=%s: %s, %v; want %s", v, q.filter(), err, want)
		}
	}
	if _, err := parseQuery("Patient", map[string][]string{"_lastUpdated": {"ge2026-03-01 01:00"}}, testBase); err == nil {
		t.Error("a date with a space in it was taken")
	}
	// Fractional seconds are as precise as their digits.
	for v, want := range map[string]string{
		"2026-03-04T05:06:07.1Z":      `update_time >= "2026-03-04T05:06:07.1Z" AND update_time < "2026-03-04T05:06:07.2Z"`,
		"2026-03-04T05:06:07.123Z":    `update_time >= "2026-03-04T05:06:07.123Z" AND update_time < "2026-03-04T05:06:07.124Z"`,
		"2026-03-04T05:06:07.123456Z": `update_time >= "2026-03-04T05:06:07.123456Z" AND update_time < "2026-03-04T05:06:07.123457Z"`,
		// Finer than stored: a microsecond still, or nothing would match.
		"2026-03-04T05:06:07.1234560Z":  `update_time >= "2026-03-04T05:06:07.123456Z" AND update_time < "2026-03-04T05:06:07.123457Z"`,
		"2026-03-04T05:06:07.500+02:00": `update_time >= "2026-03-04T03:06:07.5Z" AND update_time < "2026-03-04T03:06:07.501Z"`,
	} {
		q, err := parseQuery("Patient", map[string][]string{"_lastUpdated": {v}}, testBase)
		if err != nil || q.filter() != want {
			t.Errorf("_lastUpdated=%s: %s, %v; want %s", v, q.filter(), err, want)
		}
	}
}

func TestErrorStatuses(t *testing.T) {
	consentErr, _ := status.New(codes.FailedPrecondition, "no consent").WithDetails(&errdetails.ErrorInfo{Reason: consentgate.ReasonConsentRequired, Domain: "handoff.health"})
	for _, c := range []struct {
		st   *status.Status
		code int
	}{
		{consentErr, http.StatusForbidden},
		{status.New(codes.FailedPrecondition, "bad move"), http.StatusUnprocessableEntity},
		{status.New(codes.NotFound, "x"), http.StatusNotFound},
		{status.New(codes.InvalidArgument, "x"), http.StatusBadRequest},
		{status.New(codes.PermissionDenied, "x"), http.StatusForbidden},
		{status.New(codes.Unauthenticated, "x"), http.StatusUnauthorized},
		// 412 answers a stale If-Match only; a conflict the client set no
		// precondition for is 409.
		{status.Convert(apperr.EtagMismatch("clinics/north/referrals/r1")), http.StatusPreconditionFailed},
		{status.New(codes.Aborted, "the request conflicted with another one: retry it"), http.StatusConflict},
		// A caller that went away is no server error (nor logged as one).
		{status.New(codes.Canceled, "context canceled"), 499},
		// A quota of ours is 429; grpc's own size limit is no reason to
		// retry, nor a method a service lacks.
		{status.Convert(apperr.QuotaExceeded("clinics/north", "too many subscriptions")), http.StatusTooManyRequests},
		{status.New(codes.ResourceExhausted, "grpc: received message larger than max (9000000 vs. 4194304)"), http.StatusInternalServerError},
		{status.New(codes.Unimplemented, "unknown method"), http.StatusNotImplemented},
	} {
		if got, _ := httpStatus(c.st); got != c.code {
			t.Errorf("%v: %d, want %d", c.st.Code(), got, c.code)
		}
	}
}

func TestCapabilityStatementIsValid(t *testing.T) {
	s, err := newServer(Config{})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{header: http.Header{}}
	req, _ := http.NewRequest("GET", "http://h/fhir/R4/metadata", nil)
	s.metadata(rec, req)
	if rec.code != http.StatusOK {
		t.Fatalf("metadata: %d %s", rec.code, rec.body)
	}
	var cs map[string]any
	if err := json.Unmarshal(rec.body, &cs); err != nil || cs["resourceType"] != "CapabilityStatement" {
		t.Fatalf("metadata: %s", rec.body)
	}
}

type recorder struct {
	header http.Header
	code   int
	body   []byte
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) WriteHeader(code int)        { r.code = code }
func (r *recorder) Write(b []byte) (int, error) { r.body = append(r.body, b...); return len(b), nil }

// The referral's Task and ServiceRequest name who asks, the clinic, as the
// closed-loop guides require of the Task (Gravity's SDOHCC Task for
// referral management: requester, focus, for and owner).
func TestReferralNamesItsRequester(t *testing.T) {
	r := sampleReferral(referralsv1.ReferralState_REFERRAL_STATE_REQUESTED)
	want := obj{"type": "Organization", "identifier": obj{"system": sysResourceName, "value": "clinics/north"}}
	for kind, res := range map[string]obj{"Task": task(r), "ServiceRequest": serviceRequest(r)} {
		if got, _ := res["requester"].(obj); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s.requester = %v; want %v", kind, res["requester"], want)
		}
		for _, f := range []string{"focus", "for", "owner"} {
			if kind == "Task" && res[f] == nil {
				t.Errorf("Task.%s is missing", f)
			}
		}
	}
}

func TestTaskChange(t *testing.T) {
	s, err := newServer(Config{})
	if err != nil {
		t.Fatal(err)
	}
	scheduled := sampleReferral(referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED)
	at := scheduled.GetIntakeAppointment().GetStartTime().AsTime().UTC()
	for _, c := range []struct {
		name   string
		cur    *referralsv1.Referral
		body   string
		none   bool
		status string
		fails  bool
	}{
		{"same appointment", scheduled, `"status":"in-progress","executionPeriod":{"start":"` + at.Format(time.RFC3339Nano) + `"}`, true, "in-progress", false},
		{"rebooked", scheduled, `"status":"in-progress","executionPeriod":{"start":"` + at.Add(time.Hour).Format(time.RFC3339Nano) + `"}`, false, "in-progress", false},
		{"no-show", scheduled, `"status":"failed"`, false, "failed", false},
		// Reported again, it changes nothing: it reads in-progress.
		{"no-show again", sampleReferral(referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW), `"status":"failed"`, true, "failed", false},
		// Booked again, it needs the new time, though it reads in-progress.
		{"a no-show booked again without a time", sampleReferral(referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW), `"status":"in-progress"`, false, "", true},
		{"needs a time", sampleReferral(referralsv1.ReferralState_REFERRAL_STATE_ACCEPTED), `"status":"in-progress"`, false, "", true},
		// A bare date would be read as midnight UTC: the evening before
		// across the Americas.
		{"a date without a time", scheduled, `"status":"in-progress","executionPeriod":{"start":"2026-05-01"}`, false, "", true},
		{"entered on a date only", scheduled, `"status":"completed","executionPeriod":{"end":"2026-05-01"}`, false, "", true},
		{"not the program's", scheduled, `"status":"draft"`, false, "", true},
	} {
		tk, err := s.parseTask([]byte(`{"resourceType":"Task","id":"`+refID+`","intent":"order",`+c.body+`}`), refID)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		ch, err := change(c.cur, tk)
		if c.fails {
			if err == nil {
				t.Errorf("%s: accepted", c.name)
			}
			continue
		}
		if err != nil || ch.none != c.none || ch.status != c.status {
			t.Errorf("%s: %+v, %v", c.name, ch, err)
		}
	}
	// A rebooking moves the appointment the program gave: where, what to
	// bring and whether by video stay.
	moved := at.Add(time.Hour)
	tk, err := s.parseTask([]byte(`{"resourceType":"Task","id":"`+refID+`","intent":"order","status":"in-progress","executionPeriod":{"start":"`+
		moved.Format(time.RFC3339Nano)+`"}}`), refID)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := change(scheduled, tk)
	want := proto.Clone(scheduled.GetIntakeAppointment()).(*referralsv1.IntakeAppointment)
	want.StartTime = timestamppb.New(moved.Truncate(time.Microsecond)) // FHIR times carry microseconds
	if err != nil || !proto.Equal(ch.appointment, want) {
		t.Fatalf("rebooked appointment %v, %v; want %v", ch.appointment, err, want)
	}
	tk, err = s.parseTask([]byte(`{"resourceType":"Task","id":"`+refID+`","intent":"order","status":"rejected",
		"statusReason":{"coding":[{"system":"`+sysRejection+`","code":"AT_CAPACITY"}],"text":"full this week"}}`), refID)
	if err != nil {
		t.Fatal(err)
	}
	ch, err = change(sampleReferral(referralsv1.ReferralState_REFERRAL_STATE_REQUESTED), tk)
	if err != nil || ch.rejection.GetReason() != referralsv1.RejectionReason_REJECTION_REASON_AT_CAPACITY || ch.rejection.GetDetails() != "full this week" {
		t.Fatalf("rejection = %v, %v", ch.rejection, err)
	}
}

// The EHR's view of an intervention has no level; its Appointment says
// nothing of one rather than "level 1". Staff views keep it.
func TestAppointmentStatesOnlyAKnownLevel(t *testing.T) {
	iv := &interventionsv1.Intervention{Name: "clinics/north/interventions/i1", Family: "clinics/north/families/f1",
		State: interventionsv1.InterventionState_INTERVENTION_STATE_SCHEDULED}
	if d := appointment(iv)["description"]; d != "Family intervention meeting" {
		t.Fatalf("without a level: %q", d)
	}
	iv.Level = interventionsv1.EscalationLevel_ESCALATION_LEVEL_LEVEL_3
	if d := appointment(iv)["description"]; d != "Family intervention meeting (level 3)" {
		t.Fatalf("with level 3: %q", d)
	}
}

// A consent's classes follow what each kind discloses: referrals include
// their intake appointments, so a referrals consent lists Appointment; a
// type shared by two kinds is listed once.
func TestConsentClasses(t *testing.T) {
	classes := func(kinds ...familiesv1.InformationKind) string {
		c := consent(&familiesv1.Consent{Name: "clinics/north/families/f1/consents/c1", Information: kinds,
			Recipients: []string{"ehr"}, State: familiesv1.ConsentState_CONSENT_STATE_ACTIVE})
		var got []string
		for _, cl := range c["provision"].(obj)["class"].([]any) {
			got = append(got, cl.(obj)["code"].(string))
		}
		return strings.Join(got, ",")
	}
	for _, c := range []struct {
		kinds []familiesv1.InformationKind
		want  string
	}{
		{[]familiesv1.InformationKind{familiesv1.InformationKind_INFORMATION_KIND_REFERRALS}, "ServiceRequest,Task,Appointment"},
		{[]familiesv1.InformationKind{familiesv1.InformationKind_INFORMATION_KIND_APPOINTMENTS}, "Appointment"},
		{[]familiesv1.InformationKind{familiesv1.InformationKind_INFORMATION_KIND_REFERRALS, familiesv1.InformationKind_INFORMATION_KIND_APPOINTMENTS},
			"ServiceRequest,Task,Appointment"},
	} {
		if got := classes(c.kinds...); got != c.want {
			t.Errorf("classes of %v = %s, want %s", c.kinds, got, c.want)
		}
	}
}

// A member's own consent names the member as its grantor and limits the
// permit to the records whose subject the member is; the loved one's names
// no one but its signer.
func TestMembersConsentNamesTheMember(t *testing.T) {
	mk := func(member string) obj {
		return consent(&familiesv1.Consent{Name: "clinics/north/families/f1/consents/c1", MemberId: member, Signer: "Ana",
			Information: []familiesv1.InformationKind{familiesv1.InformationKind_INFORMATION_KIND_REFERRALS},
			Recipients:  []string{"ehr"}, State: familiesv1.ConsentState_CONSENT_STATE_ACTIVE})
	}
	moms := mk("mom")
	member := ref("RelatedPerson", pairID("f1", "mom"))
	if p := moms["performer"].([]any); len(p) != 2 || !reflect.DeepEqual(p[0], member) {
		t.Fatalf("performer = %v; want the member, then the signer", p)
	}
	subject := false
	for _, a := range moms["provision"].(obj)["actor"].([]any) {
		if reflect.DeepEqual(a.(obj)["reference"], member) && strings.Contains(fmt.Sprint(a.(obj)["role"]), "SBJ") {
			subject = true
		}
	}
	if !subject {
		t.Fatalf("provision actors %v; want the member as the subject", moms["provision"].(obj)["actor"])
	}
	if p := mk("")["performer"].([]any); len(p) != 1 || strings.Contains(fmt.Sprint(p), "RelatedPerson") {
		t.Fatalf("the loved one's consent's performer = %v; want the signer only", p)
	}
	// Its patient is the member, contained and linked to the member's
	// RelatedPerson, not the loved one's Patient, in whose chart an EHR
	// would file it; the loved one's is the Patient's.
	contained, _ := moms["contained"].([]any)
	if len(contained) != 1 || !reflect.DeepEqual(moms["patient"], obj{"reference": "#" + memberPatientID}) ||
		!reflect.DeepEqual(contained[0].(obj)["link"], []any{obj{"other": member, "type": "seealso"}}) {
		t.Fatalf("a member's consent: patient %v, contained %v; want the member, contained", moms["patient"], moms["contained"])
	}
	if own := mk(""); !reflect.DeepEqual(own["patient"], ref("Patient", "f1")) || own["contained"] != nil {
		t.Fatalf("the loved one's consent: patient %v, contained %v", own["patient"], own["contained"])
	}
	mustBeR4(t, "a member's consent", moms)
}

// mustBeR4 fails the test unless the validating R4 parser takes res.
func mustBeR4(t *testing.T, what string, res obj) {
	t.Helper()
	raw, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	in, err := jsonformat.NewUnmarshaller("UTC", fhirversion.R4)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.Unmarshal(raw); err != nil {
		t.Fatalf("%s is not valid R4: %v\n%s", what, err, raw)
	}
}

// The ages a program takes are its eligibility, in words; a program that
// takes any age states none.
func TestProgramAgesAreItsEligibility(t *testing.T) {
	for _, c := range []struct {
		minAge, maxAge int32
		want           string
	}{{18, 0, "Ages 18 and over"}, {12, 17, "Ages 12 to 17"}, {0, 25, "Ages up to 25"}, {0, 0, ""}} {
		hs := healthcareService(&referralsv1.Program{Name: "clinics/north/programs/p1", MinAge: c.minAge, MaxAge: c.maxAge})
		got := ""
		if e, ok := hs["eligibility"].([]any); ok && len(e) == 1 {
			got, _ = e[0].(obj)["comment"].(string)
		}
		if _, set := hs["eligibility"]; got != c.want || set != (c.want != "") {
			t.Errorf("ages %d to %d: eligibility %v; want %q", c.minAge, c.maxAge, hs["eligibility"], c.want)
		}
	}
}

// A deleted program that referrals still name is an inactive service.
func TestDeletedProgramIsInactive(t *testing.T) {
	p := &referralsv1.Program{Name: "clinics/north/programs/p1", DisplayName: "Riverside MAT"}
	if hs := healthcareService(p); hs["active"] != true {
		t.Fatalf("a program in the directory: active = %v", hs["active"])
	}
	p.DeleteTime = timestamppb.Now()
	if hs := healthcareService(p); hs["active"] != false {
		t.Fatalf("a deleted program: active = %v", hs["active"])
	}
}

// A service out of reach, or too slow, is the client's to retry, and says
// so (a 503 with Retry-After), not "internal error"; what failed inside
// stays an internal error.
func TestServiceFailuresSayWhetherToRetry(t *testing.T) {
	s, err := newServer(Config{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		err        error
		code       int
		retryAfter string
		text       string
	}{
		{status.Error(codes.Unavailable, "families at 10.0.0.7 refused"), http.StatusServiceUnavailable, "5", "temporarily unavailable: retry"},
		{status.Error(codes.DeadlineExceeded, "slow"), http.StatusGatewayTimeout, "", "the request took too long: retry"},
		{status.Error(codes.Internal, "pq: relation does not exist"), http.StatusInternalServerError, "", "internal error"},
	} {
		rec := &recorder{header: http.Header{}}
		s.writeErr(rec, c.err, "Patient/p1")
		if rec.code != c.code || rec.header.Get("Retry-After") != c.retryAfter || !strings.Contains(string(rec.body), c.text) {
			t.Errorf("%v: %d, Retry-After %q, %s; want %d, %q, %q", c.err, rec.code, rec.header.Get("Retry-After"), rec.body, c.code, c.retryAfter, c.text)
		}
	}
	// A conflict met by a read (a page emptied under it) is for the
	// client to send again; a stale If-Match stays a 412.
	emptied := status.Error(codes.Aborted, "the page emptied as it was read: read it again")
	stale := apperr.EtagMismatch("clinics/north/referrals/r1")
	for _, c := range []struct {
		err        error
		code       int
		retryAfter string
	}{
		{readErr(emptied), http.StatusServiceUnavailable, "5"},
		{readErr(stale), http.StatusPreconditionFailed, ""},
		{emptied, http.StatusConflict, ""}, // a write's conflict stays a 409
	} {
		rec := &recorder{header: http.Header{}}
		s.writeErr(rec, c.err, "Task records")
		if rec.code != c.code || rec.header.Get("Retry-After") != c.retryAfter {
			t.Errorf("%v: %d, Retry-After %q; want %d, %q", c.err, rec.code, rec.header.Get("Retry-After"), c.code, c.retryAfter)
		}
	}
}

// A token that cannot be checked because the identity provider's keys are
// out of reach is a 503 the client may retry, not a 401 that says the
// token is bad, and says nothing of where the keys live.
func TestKeysOutOfReachAre503(t *testing.T) {
	iss, err := auth.NewIssuer("https://issuer.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	s, err := newServer(Config{Log: slog.New(slog.NewJSONHandler(&logs, nil)), Verifier: &auth.Verifier{Issuer: "https://issuer.test", Audience: "handoff",
		Keys: &auth.JWKS{URL: "http://127.0.0.1:1/internal-idp/jwks", MinRefresh: time.Millisecond}}})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{header: http.Header{}}
	req := httptest.NewRequest(http.MethodGet, "/fhir/R4/Patient/x", nil)
	req.Header.Set("Authorization", "Bearer "+iss.MustMint(auth.TokenOptions{Subject: "ehr-1", Clinic: "north", Roles: []auth.Role{auth.RoleEHR}}))
	s.authed(func(context.Context, http.ResponseWriter, *http.Request, caller) {
		t.Fatal("served without a checked token")
	})(rec, req)
	if rec.code != http.StatusServiceUnavailable || strings.Contains(string(rec.body), "127.0.0.1") || rec.header.Get("Retry-After") == "" {
		t.Fatalf("%d %s, Retry-After %q; want 503 without the keys' address, and when to retry", rec.code, rec.body, rec.header.Get("Retry-After"))
	}
	// The operator hears why.
	if line := logs.String(); !strings.Contains(line, "signing keys unavailable") || !strings.Contains(line, "internal-idp") {
		t.Fatalf("log %q; want the cause, which names the key set's address", line)
	}
}
