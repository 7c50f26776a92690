package gateway_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/consentgate"
	"github.com/handoff-health/handoff/services/gateway"
	"github.com/handoff-health/handoff/services/servicetest"
	"github.com/handoff-health/handoff/services/stack/stacktest"
)

// client speaks to the gateway over HTTP as one caller.
type client struct {
	t     *testing.T
	base  string
	token string
}

type reply struct {
	code   int
	body   map[string]any
	header http.Header
	raw    []byte
}

func (c client) do(method, path string, body any, headers ...string) reply {
	c.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			c.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	set := map[string]bool{}
	for i := 0; i+1 < len(headers); i += 2 {
		// A header named twice is sent twice.
		if set[headers[i]] {
			req.Header.Add(headers[i], headers[i+1])
		} else {
			req.Header.Set(headers[i], headers[i+1])
		}
		set[headers[i]] = true
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := reply{code: resp.StatusCode, header: resp.Header, raw: raw}
	_ = json.Unmarshal(raw, &r.body)
	return r
}

// ok does the call and fails the test unless it answered 200.
func (c client) ok(method, path string, body any, headers ...string) map[string]any {
	c.t.Helper()
	r := c.do(method, path, body, headers...)
	if r.code != http.StatusOK {
		c.t.Fatalf("%s %s: %d %s", method, path, r.code, r.raw)
	}
	return r.body
}

func str(m map[string]any, key string) string { s, _ := m[key].(string); return s }

func list(m map[string]any, key string) []map[string]any {
	var out []map[string]any
	items, _ := m[key].([]any)
	for _, it := range items {
		if mm, ok := it.(map[string]any); ok {
			out = append(out, mm)
		}
	}
	return out
}

func q(filter string) string { return "?filter=" + url.QueryEscape(filter) }

type world struct {
	t                                 *testing.T
	anon, counselor, admin, ehr, auto client
	// worker holds a service token for every clinic.
	worker client
	sys    *stacktest.Env
}

func setup(t *testing.T) *world {
	sys := stacktest.Start(t)
	base := stacktest.Gateway(t, gateway.Config{
		FamiliesAddr: sys.Stack.FamiliesAddr, InterventionsAddr: sys.Stack.InterventionsAddr, ReferralsAddr: sys.Stack.ReferralsAddr,
		Verifier: sys.Issuer.Verifier(), CORSOrigins: []string{"https://app.example.org"},
	})
	as := func(subject string, roles ...auth.Role) client {
		return client{t: t, base: base, token: sys.Token(subject, roles...)}
	}
	return &world{t: t, anon: client{t: t, base: base},
		counselor: as("counselor-1", auth.RoleCounselor), admin: as("admin-1", auth.RoleClinicAdmin),
		ehr: as("ehr", auth.RoleEHR), auto: as("sms-gateway", auth.RoleReminders),
		worker: client{t: t, base: base, token: sys.Issuer.MustMint(auth.TokenOptions{Subject: "worker", Clinic: auth.AnyClinic,
			Roles: []auth.Role{auth.RoleWorker}, TTL: time.Hour})}, sys: sys}
}

func (w *world) directory() string {
	var mat string
	for _, p := range []struct {
		name     string
		services []string
	}{
		{"Riverside MAT", []string{"SERVICE_KIND_MAT_BUPRENORPHINE", "SERVICE_KIND_OUTPATIENT"}},
		{"Family counseling center", []string{"SERVICE_KIND_FAMILY_COUNSELING", "SERVICE_KIND_INDIVIDUAL_COUNSELING"}},
		{"Parents' group", []string{"SERVICE_KIND_FAMILY_SUPPORT_GROUP"}},
		{"Naloxone outreach", []string{"SERVICE_KIND_HARM_REDUCTION_NALOXONE"}},
	} {
		prog := w.admin.ok("POST", "/v1/clinics/north/programs", map[string]any{
			"displayName": p.name, "services": p.services, "sameDayIntake": true, "paymentsAccepted": []string{"PAYMENT_KIND_MEDICAID"}})
		w.admin.ok("POST", "/v1/"+str(prog, "name")+":reportCapacity", map[string]any{"availableSlots": 3})
		if mat == "" {
			mat = str(prog, "name")
		}
	}
	return mat
}

// family creates a family with a contact person, a barrier, a safety screen
// and an agreed, active boundary, all through REST.
func (w *world) family(given string) (family, boundary string) {
	f := w.counselor.ok("POST", "/v1/clinics/north/families", map[string]any{
		"lovedOne": map[string]any{"givenName": given, "mayContactDirectly": true,
			"contactChannels": []any{map[string]any{"kind": "CHANNEL_KIND_SMS", "value": "+15555550111"}}},
		"counselor": "counselor-1", "coverage": map[string]any{"kind": "COVERAGE_KIND_MEDICAID"},
		"members": []any{map[string]any{"id": "mom", "givenName": "Ana", "relationship": "RELATIONSHIP_PARENT",
			"role": "MEMBER_ROLE_CONTACT_PERSON", "consentToContact": true, "timeZone": "America/Chicago",
			"contactChannels": []any{map[string]any{"kind": "CHANNEL_KIND_SMS", "value": "+15555550100"}}}},
	})
	family = str(f, "name")
	// Without the patient's consent the EHR reads nothing (42 CFR Part 2).
	if r := w.ehr.do("GET", "/v1/"+family, nil); r.code != http.StatusForbidden || !strings.Contains(fmt.Sprint(r.body["details"]), "CONSENT_REQUIRED") {
		w.t.Fatalf("EHR read before consent: %d %v", r.code, r.body)
	}
	now := time.Now().UTC()
	w.counselor.ok("POST", "/v1/"+family+"/consents", map[string]any{
		"discloser": "North clinic", "recipients": []string{"ehr"}, "purposes": []string{"PURPOSE_TREATMENT"},
		"information": []string{"INFORMATION_KIND_IDENTITY", "INFORMATION_KIND_REFERRALS", "INFORMATION_KIND_APPOINTMENTS"},
		"expireTime":  now.AddDate(1, 0, 0).Format(time.RFC3339), "signTime": now.Add(-time.Minute).Format(time.RFC3339),
		"signer": given, "revocationRightStated": true})
	// Over REST too, a disclosed record carries the Part 2 notice.
	if r := w.ehr.do("GET", "/v1/"+family, nil); r.code != http.StatusOK || r.header.Get("Grpc-Metadata-"+consentgate.NoticeHeader) != consentgate.Notice {
		w.t.Fatalf("EHR read after consent: %d, notice %q", r.code, r.header.Get("Grpc-Metadata-"+consentgate.NoticeHeader))
	}
	w.counselor.ok("POST", "/v1/"+family+"/barriers", map[string]any{"kind": "BARRIER_KIND_LOGISTICAL_WORK", "notes": "works nights"})
	// CRAFT coaching of the mother: induction first, the rest once screened.
	w.counselor.ok("POST", "/v1/"+family+"/craftSessions", map[string]any{"memberIds": []string{"mom"}, "topics": []string{"CRAFT_TOPIC_INDUCTION"}})
	w.counselor.ok("POST", "/v1/"+family+"/safetyScreens", map[string]any{"result": "SAFETY_RISK_NO_RISK"})
	w.counselor.ok("POST", "/v1/"+family+"/craftSessions", map[string]any{"memberIds": []string{"mom"},
		"topics": []string{"CRAFT_TOPIC_FUNCTIONAL_ANALYSIS", "CRAFT_TOPIC_SELF_CARE"}})
	if p := w.counselor.ok("GET", "/v1/"+family+"/craftProgress", nil); p["sessionCount"] != float64(2) || p["nextTopic"] != "CRAFT_TOPIC_POSITIVE_COMMUNICATION" {
		w.t.Fatalf("craft progress over REST: %v", p)
	}
	b := w.counselor.ok("POST", "/v1/"+family+"/boundaries", map[string]any{
		"category": "BOUNDARY_CATEGORY_NO_FINANCIAL_SUPPORT", "wording": "No cash; we pay bills directly.", "consequence": "No cash gifts."})
	boundary = str(b, "name")
	w.counselor.ok("POST", "/v1/"+boundary+":agree", map[string]any{})
	w.counselor.ok("POST", "/v1/"+boundary+":activate", map[string]any{})
	return family, boundary
}

func (w *world) schedule(family, counselor string, in time.Duration) (string, time.Time) {
	start := time.Now().Add(in).UTC()
	iv := w.counselor.ok("POST", "/v1/clinics/north/interventions", map[string]any{
		"family": family, "counselor": counselor, "startTime": start.Format(time.RFC3339Nano), "expectedDuration": "900s",
		"place":        map[string]any{"inPerson": map[string]any{"address": "12 Elm St", "quietAndPrivateConfirmed": true}},
		"participants": []any{map[string]any{"memberId": "mom", "role": "PARTICIPANT_ROLE_LEAD_SPEAKER"}},
	})
	w.counselor.ok("POST", "/v1/"+str(iv, "name")+":schedule", map[string]any{})
	return str(iv, "name"), start
}

// The whole story through REST only: one family accepts and the person
// enters treatment at the held program; another declines and the boundary
// path runs.
func TestEndToEndThroughREST(t *testing.T) {
	w := setup(t)
	mat := w.directory()

	// Both families first: A's reminders are claimed before its meeting
	// begins, and each call here takes from that margin on a busy machine.
	famA, _ := w.family("Sam")
	famB, boundaryB := w.family("Jo")
	ivA, startA := w.schedule(famA, "counselor-1", 9*time.Second)
	ivB, startB := w.schedule(famB, "counselor-2", 10*time.Second)

	// Reminders become due for the automation, which claims and delivers them.
	stacktest.Eventually(t, 20*time.Second, "due reminders", func() bool {
		return len(list(w.auto.ok("GET", "/v1/clinics/north/reminders"+q(fmt.Sprintf("state = DUE AND related_resource = %q", ivA)), nil), "reminders")) >= 2
	})
	for _, r := range list(w.auto.ok("GET", "/v1/clinics/north/reminders"+q(fmt.Sprintf("state = DUE AND related_resource = %q", ivA)), nil), "reminders") {
		if strings.Contains(strings.ToLower(str(r, "message")), "treatment") {
			t.Fatalf("a reminder message reveals health details: %q", str(r, "message"))
		}
		w.auto.ok("POST", "/v1/"+str(r, "name")+":claim", map[string]any{"claimant": "sms-1", "leaseDuration": "60s"})
		w.auto.ok("POST", "/v1/"+str(r, "name")+":complete", map[string]any{"claimant": "sms-1", "result": "DELIVERY_RESULT_DELIVERED"})
	}

	stacktest.Eventually(t, 20*time.Second, "both meetings to start", func() bool { return time.Now().After(startB) && time.Now().After(startA) })
	w.counselor.ok("POST", "/v1/"+ivA+":recordOutcome", map[string]any{"kind": "OUTCOME_KIND_ACCEPTED", "notes": "said yes"})
	w.counselor.ok("POST", "/v1/"+ivB+":recordOutcome", map[string]any{"kind": "OUTCOME_KIND_DECLINED"})

	// Family A: an immediate MAT referral at the held program.
	var ref map[string]any
	stacktest.Eventually(t, 20*time.Second, "the immediate referral", func() bool {
		refs := list(w.ehr.ok("GET", "/v1/clinics/north/referrals"+q(fmt.Sprintf("intervention = %q AND urgency = IMMEDIATE", ivA)), nil), "referrals")
		if len(refs) == 1 {
			ref = refs[0]
		}
		return ref != nil
	})
	if str(ref, "program") != mat || str(ref, "hold") == "" {
		t.Fatalf("referral %v is not at the held program %s", ref, mat)
	}
	name := str(ref, "name")
	w.ehr.ok("POST", "/v1/"+name+":accept", map[string]any{})
	w.ehr.ok("POST", "/v1/"+name+":schedule", map[string]any{"intakeAppointment": map[string]any{"startTime": time.Now().Add(time.Second).UTC().Format(time.RFC3339Nano)}})
	time.Sleep(1500 * time.Millisecond)
	done := w.ehr.ok("POST", "/v1/"+name+":complete", map[string]any{})
	if str(done, "state") != "REFERRAL_STATE_COMPLETED" || str(done, "fhirTaskStatus") != "completed" {
		t.Fatalf("referral after intake = %v", done)
	}
	// The program reports a dose on the day of entry: counted, and no one is
	// engaged by it alone (HEDIS IET counts the days after).
	dose := w.ehr.ok("POST", "/v1/"+name+":recordFollowUpService", map[string]any{
		"serviceTime": time.Now().UTC().Format(time.RFC3339Nano), "serviceId": "dose-1", "timeZone": "America/Chicago"})
	if fmt.Sprint(dose["followUpServiceCount"]) != "1" || dose["engagementTime"] != nil || str(dose, "state") != "REFERRAL_STATE_COMPLETED" {
		t.Fatalf("referral after a follow-up dose = %v", dose)
	}
	stacktest.Eventually(t, 20*time.Second, "the family-support referral after treatment entry", func() bool {
		return len(list(w.counselor.ok("GET", "/v1/clinics/north/referrals"+q(fmt.Sprintf("intervention = %q AND service_kind = FAMILY_COUNSELING", ivA)), nil), "referrals")) == 1
	})
	// The outcome report, over REST, for the administrator only.
	sum := w.admin.ok("GET", "/v1/clinics/north/referrals:summarize"+q(fmt.Sprintf("intervention = %q AND subject_kind = LOVED_ONE", ivA)), nil)
	if fmt.Sprint(sum["referrals"]) != "1" || fmt.Sprint(sum["enteredTreatment"]) != "1" || fmt.Sprint(sum["enteredWithinThreeDays"]) != "1" ||
		!strings.HasSuffix(str(sum, "medianTimeToTreatmentEntry"), "s") {
		t.Fatalf("outcome summary = %v", sum)
	}
	if r := w.counselor.do("GET", "/v1/clinics/north/referrals:summarize", nil); r.code != http.StatusForbidden {
		t.Fatalf("a counselor asking for the summary: %d %v", r.code, r.body)
	}

	// Family B: reinforced boundaries, support and naloxone referrals, check-ins.
	stacktest.Eventually(t, 20*time.Second, "the reinforced boundary", func() bool {
		return str(w.counselor.ok("GET", "/v1/"+boundaryB, nil), "state") == "BOUNDARY_STATE_REINFORCED"
	})
	for _, kind := range []string{"FAMILY_COUNSELING", "FAMILY_SUPPORT_GROUP", "HARM_REDUCTION_NALOXONE"} {
		stacktest.Eventually(t, 20*time.Second, kind+" referral", func() bool {
			return len(list(w.counselor.ok("GET", "/v1/clinics/north/referrals"+q(fmt.Sprintf("family = %q AND service_kind = %s", famB, kind)), nil), "referrals")) == 1
		})
	}
	stacktest.Eventually(t, 20*time.Second, "check-in reminders", func() bool {
		return len(list(w.counselor.ok("GET", "/v1/clinics/north/reminders"+q(fmt.Sprintf("kind = CHECK_IN AND related_resource = %q", ivB)), nil), "reminders")) >= 1
	})
}

// A call refused at the gateway before it reached a service is in no
// service's audit trail: the log names who made it. One a service
// refused is in that service's trail, and not logged again here.
func TestRefusalsAtTheGatewayNameTheCaller(t *testing.T) {
	sys := stacktest.Start(t)
	logs := &servicetest.LogBuffer{}
	base := stacktest.Gateway(t, gateway.Config{
		FamiliesAddr: sys.Stack.FamiliesAddr, InterventionsAddr: sys.Stack.InterventionsAddr, ReferralsAddr: sys.Stack.ReferralsAddr,
		Verifier: sys.Issuer.Verifier(), Log: slog.New(slog.NewJSONHandler(logs, nil)),
	})
	c := client{t: t, base: base, token: sys.Token("counselor-7", auth.RoleCounselor)}
	refusals := func() int { return strings.Count(logs.String(), `"msg":"refused at the gateway"`) }
	for _, call := range []struct {
		method, path string
		body         any
		headers      []string
		code         int
	}{
		{"GET", "/v1/clinics/north/families?filtr=x", nil, nil, http.StatusBadRequest},
		{"PUT", "/v1/clinics/north/families/f1", map[string]any{}, nil, http.StatusMethodNotAllowed},
		{"GET", "/v1/clinics/north/nothingHere", nil, nil, http.StatusNotFound},
		{"POST", "/v1/clinics/north/families", map[string]any{"requestId": "a"}, []string{"Idempotency-Key", "b"}, http.StatusBadRequest},
		// The middlewares' and the content checks' refusals too.
		{"POST", "/v1/clinics/north/interventions/x:schedule?requestId=k1", map[string]any{}, nil, http.StatusBadRequest},
		{"GET", "/v1/clinics/north/families", map[string]any{"filter": "x"}, nil, http.StatusBadRequest},
		{"POST", "/v1/clinics/north/families", "{}", []string{"Content-Type", "text/plain"}, http.StatusUnsupportedMediaType},
		{"POST", "/v1/clinics/north/families", map[string]any{}, []string{"Idempotency-Key", "a", "Idempotency-Key", "b"}, http.StatusBadRequest},
		{"POST", "/v1/clinics/north/families", strings.Repeat(" ", 5<<20), nil, http.StatusRequestEntityTooLarge},
		{"POST", "/v1/clinics/north/families", map[string]any{}, []string{"Idempotency-Key", strings.Repeat("k", 65)}, http.StatusBadRequest},
	} {
		before := refusals()
		if r := c.do(call.method, call.path, call.body, call.headers...); r.code != call.code {
			t.Fatalf("%s %s: %d %s; want %d", call.method, call.path, r.code, r.raw, call.code)
		}
		if refusals() != before+1 || !strings.Contains(logs.String(), `"subject":"counselor-7"`) {
			t.Fatalf("%s %s refused at the gateway: logged %d times, want once with the subject:\n%s", call.method, call.path, refusals()-before, logs.String())
		}
	}
	// A refusal that logs itself (a disclosure recorded by the EHR) is
	// not logged twice.
	ehr := client{t: t, base: base, token: sys.Token("ehr", auth.RoleEHR)}
	before := refusals()
	if r := ehr.do("POST", "/v1/clinics/north/families/f1/disclosures", map[string]any{}); r.code != http.StatusForbidden {
		t.Fatalf("the EHR recording a disclosure: %d %s; want 403", r.code, r.raw)
	}
	if refusals() != before || !strings.Contains(logs.String(), "a disclosure recorded by a caller not staff refused") {
		t.Fatalf("the EHR's disclosure refused: logged as the gateway's %d times, want its own line only:\n%s", refusals()-before, logs.String())
	}
	if r := c.do("GET", "/v1/clinics/north/families/0193a0c4-7d2e-7b6a-9f31-2c4d5e6f7a8b", nil); r.code != http.StatusNotFound {
		t.Fatalf("a family that is not there: %d %s", r.code, r.raw)
	}
	if refusals() != before {
		t.Fatalf("a service's refusal was logged as the gateway's:\n%s", logs.String())
	}
}

// At the public door only staff record disclosures. The EHR may record
// its own on the families service, where the services that disclose to
// it do so with its token; from the outside it could write into a
// patient's accounting, for good, disclosures of records that never
// reached it, or of another family's. Refused, nothing is recorded;
// staff still record what they send by hand.
func TestOnlyStaffRecordDisclosuresAtTheGateway(t *testing.T) {
	w := setup(t)
	fam, _ := w.family("Sam")
	recorded := func() int {
		return len(list(w.counselor.ok("GET", "/v1/"+fam+"/disclosures?pageSize=1000", nil), "disclosures"))
	}
	before := recorded()
	madeUp := map[string]any{"recipient": "ehr", "information": "INFORMATION_KIND_REFERRALS", "purpose": "PURPOSE_TREATMENT",
		"channel": "DISCLOSURE_CHANNEL_API", "resource": "clinics/north/referrals/0193a0c4-7d2e-7b6a-9f31-2c4d5e6f7a8b"}
	if r := w.ehr.do("POST", "/v1/"+fam+"/disclosures", madeUp); r.code != http.StatusForbidden {
		t.Fatalf("the EHR recording a disclosure of its own making: %d %s; want 403", r.code, r.raw)
	}
	batch := map[string]any{"requests": []any{map[string]any{"parent": fam, "disclosure": madeUp}}}
	if r := w.ehr.do("POST", "/v1/clinics/north/families/-/disclosures:batchCreate", batch); r.code != http.StatusForbidden {
		t.Fatalf("the EHR recording a batch of disclosures: %d %s; want 403", r.code, r.raw)
	}
	// A staff role beside the EHR's makes it no less the EHR's token.
	both := client{t: t, base: w.ehr.base, token: w.sys.Token("ehr", auth.RoleEHR, auth.RoleCounselor)}
	if r := both.do("POST", "/v1/"+fam+"/disclosures", madeUp); r.code != http.StatusForbidden {
		t.Fatalf("a token of the EHR that also holds a staff role recording a disclosure: %d %s; want 403", r.code, r.raw)
	}
	if n := recorded(); n != before {
		t.Fatalf("%d disclosures recorded by refused calls", n-before)
	}
	byHand := map[string]any{"recipient": "ehr", "information": "INFORMATION_KIND_IDENTITY", "purpose": "PURPOSE_TREATMENT",
		"channel": "DISCLOSURE_CHANNEL_MANUAL", "resource": fam}
	w.counselor.ok("POST", "/v1/"+fam+"/disclosures", byHand)
	if n := recorded(); n != before+1 {
		t.Fatalf("a counselor's disclosure by hand: %d recorded; want 1", n-before)
	}
}

// The gateway's own contract: auth, idempotency keys, ETag/If-Match, body
// limit, unknown fields, errors as google.rpc.Status, health, the OpenAPI
// document and its reference page, CORS.
func TestGatewayContract(t *testing.T) {
	w := setup(t)
	// A service token for every clinic is Handoff's own, used on the
	// services directly: at the public door it would read every clinic.
	if r := w.worker.do("GET", "/v1/clinics/north/families", nil); r.code != http.StatusForbidden || r.body["code"] != float64(7) {
		t.Fatalf("a token for every clinic: %d %s", r.code, r.raw)
	}
	// Nor can it ride along as gRPC metadata beside a token the gateway
	// accepts: the services would see two, in no fixed order.
	for i := 0; i < 8; i++ {
		r := w.counselor.do("GET", "/v1/clinics/south/families", nil, "Grpc-Metadata-Authorization", "Bearer "+w.worker.token)
		if r.code != http.StatusNotFound {
			t.Fatalf("a north counselor with a smuggled token for every clinic, asking for south's families: %d %s; want 404", r.code, r.raw)
		}
	}
	if r := w.anon.do("GET", "/v1/clinics/north/families", nil); r.code != http.StatusUnauthorized || r.body["code"] != float64(16) {
		t.Fatalf("no token: %d %s", r.code, r.raw)
	}
	// A refused token is told what is wrong with it, not what the
	// deployment trusts.
	if r := w.anon.do("GET", "/v1/clinics/north/families", nil, "Authorization", "Bearer not.a.jwt"); r.code != http.StatusUnauthorized ||
		r.body["message"] != "invalid token" {
		t.Fatalf("bad token: %d %s", r.code, r.raw)
	}
	body := map[string]any{"lovedOne": map[string]any{"givenName": "Sam"}, "counselor": "counselor-1"}
	a := w.counselor.do("POST", "/v1/clinics/north/families", body, "Idempotency-Key", "key-1")
	b := w.counselor.do("POST", "/v1/clinics/north/families", body, "Idempotency-Key", "key-1")
	if a.code != 200 || b.code != 200 || str(a.body, "name") != str(b.body, "name") {
		t.Fatalf("idempotent create: %d %s / %d %s", a.code, a.raw, b.code, b.raw)
	}
	// A request whose own request id differs from the header is refused,
	// not sent on under one of them.
	if r := w.counselor.do("POST", "/v1/clinics/north/families?requestId=key-2", body, "Idempotency-Key", "key-3"); r.code != http.StatusBadRequest ||
		!strings.Contains(str(r.body, "message"), "Idempotency-Key") {
		t.Fatalf("Idempotency-Key and a different requestId: %d %s; want 400", r.code, r.raw)
	}
	if r := w.counselor.do("POST", "/v1/clinics/north/families?requestId=key-1", body, "Idempotency-Key", "key-1"); r.code != 200 || str(r.body, "name") != str(a.body, "name") {
		t.Fatalf("the same key in the header and the request: %d %s; want the first family", r.code, r.raw)
	}
	// A key that is empty or given twice is refused, not dropped or
	// picked: the retry would make a second family.
	for name, headers := range map[string][]string{
		"empty": {"Idempotency-Key", ""}, "twice": {"Idempotency-Key", "key-1", "Idempotency-Key", "key-9"},
	} {
		if r := w.counselor.do("POST", "/v1/clinics/north/families", body, headers...); r.code != http.StatusBadRequest ||
			!strings.Contains(str(r.body, "message"), "Idempotency-Key") {
			t.Fatalf("Idempotency-Key %s: %d %s; want 400", name, r.code, r.raw)
		}
	}
	// A read takes no key, and is not refused for an empty one.
	if r := w.counselor.do("GET", "/v1/clinics/north/families", nil, "Idempotency-Key", ""); r.code != http.StatusOK {
		t.Fatalf("a read with an empty Idempotency-Key: %d %s; want 200", r.code, r.raw)
	}
	fams := list(w.counselor.ok("GET", "/v1/clinics/north/families", nil), "families")
	if len(fams) != 1 {
		t.Fatalf("a repeated Idempotency-Key created %d families", len(fams))
	}
	// A call that takes no body refuses one that says something, rather
	// than drop it: a delete's etag there would guard nothing, a list's
	// filter would not apply. One that says nothing passes.
	for _, c := range []struct{ verb, path, body string }{
		{"DELETE", "/v1/" + str(a.body, "name"), `{"etag": "\"v0\""}`},
		{"GET", "/v1/clinics/north/families", `{"filter": "state = CLOSED"}`},
	} {
		if r := w.counselor.do(c.verb, c.path, c.body); r.code != http.StatusBadRequest || !strings.Contains(str(r.body, "message"), "takes no body") {
			t.Fatalf("%s %s with a body: %d %s; want 400", c.verb, c.path, r.code, r.raw)
		}
	}
	w.counselor.ok("GET", "/v1/"+str(a.body, "name"), nil)
	for _, empty := range []string{"", " {} ", "null"} {
		if r := w.counselor.do("GET", "/v1/clinics/north/families", empty); r.code != http.StatusOK || len(list(r.body, "families")) != 1 {
			t.Fatalf("a list with the body %q: %d %s; want 200", empty, r.code, r.raw)
		}
	}
	// A verb the path does not take is 405 with the verbs it does, not
	// 501 (a feature the server lacks).
	for _, verb := range []string{"DELETE", "HEAD"} {
		if r := w.counselor.do(verb, "/v1/clinics/north/families", nil); r.code != http.StatusMethodNotAllowed || r.header.Get("Allow") != "GET, POST" {
			t.Fatalf("%s on the families: %d, Allow %q %s; want 405, Allow GET, POST", verb, r.code, r.header.Get("Allow"), r.raw)
		}
	}
	// A write that takes no request id refuses the key rather than drop
	// it: its retry would be recorded again.
	batch := map[string]any{"requests": []any{map[string]any{"parent": str(a.body, "name"), "disclosure": map[string]any{
		"recipient": "ehr-1", "information": "INFORMATION_KIND_IDENTITY", "purpose": "PURPOSE_TREATMENT", "channel": "DISCLOSURE_CHANNEL_API",
		"resource": str(a.body, "name")}}}}
	if r := w.ehr.do("POST", "/v1/clinics/north/families/-/disclosures:batchCreate", batch, "Idempotency-Key", "batch-1"); r.code != http.StatusBadRequest ||
		!strings.Contains(str(r.body, "message"), "takes no request id") {
		t.Fatalf("Idempotency-Key on a batch of disclosures: %d %s; want 400", r.code, r.raw)
	}
	// Records under 42 CFR Part 2: no cache may keep them.
	if a.header.Get("Cache-Control") != "no-store" || a.header.Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("create answered with Cache-Control %q, X-Content-Type-Options %q", a.header.Get("Cache-Control"), a.header.Get("X-Content-Type-Options"))
	}
	name := str(a.body, "name")
	etag := a.header.Get("ETag")
	if etag == "" || strings.Trim(etag, `"`) != str(a.body, "etag") {
		t.Fatalf("ETag header %q, body etag %q", etag, str(a.body, "etag"))
	}
	upd := w.counselor.do("PATCH", "/v1/"+name+"?updateMask=counselor", map[string]any{"counselor": "counselor-2"}, "If-Match", etag)
	if upd.code != 200 {
		t.Fatalf("update with If-Match: %d %s", upd.code, upd.raw)
	}
	stale := w.counselor.do("PATCH", "/v1/"+name+"?updateMask=counselor", map[string]any{"counselor": "counselor-3"}, "If-Match", etag)
	if stale.code != http.StatusPreconditionFailed || stale.body["code"] != float64(10) {
		t.Fatalf("stale If-Match: %d %s; want 412", stale.code, stale.raw)
	}
	// A header grpc-gateway cannot pass on (curly quotes pasted from a
	// document, an accent) is refused, not dropped: dropped, the stale
	// etag would not be checked and the update would go through.
	for _, h := range [][2]string{{"If-Match", "\u201c" + strings.Trim(etag, `"`) + "\u201d"}, {"Idempotency-Key", "r\u00e9f-1"}} {
		if r := w.counselor.do("PATCH", "/v1/"+name+"?updateMask=counselor", map[string]any{"counselor": "counselor-3"}, h[0], h[1]); r.code != http.StatusBadRequest {
			t.Fatalf("%s: %q: %d %s; want 400", h[0], h[1], r.code, r.raw)
		}
	}
	if got := w.counselor.ok("GET", "/v1/"+name, nil); str(got, "counselor") != "counselor-2" {
		t.Fatalf("after the refused updates the counselor is %q", str(got, "counselor"))
	}
	if any := w.counselor.do("PATCH", "/v1/"+name+"?updateMask=counselor", map[string]any{"counselor": "counselor-2"}, "If-Match", "*"); any.code != 200 {
		t.Fatalf("If-Match: *: %d %s", any.code, any.raw)
	}
	// A mask names fields as the body does, in lowerCamelCase, or in
	// proto names; one sent in both spellings is refused, not taken at
	// random.
	tz := w.counselor.do("PATCH", "/v1/"+name+"?updateMask=lovedOne.timeZone", map[string]any{"lovedOne": map[string]any{"timeZone": "America/Chicago"}})
	if lo, _ := tz.body["lovedOne"].(map[string]any); tz.code != 200 || str(lo, "timeZone") != "America/Chicago" {
		t.Fatalf("updateMask=lovedOne.timeZone: %d %s", tz.code, tz.raw)
	}
	if both := w.counselor.do("PATCH", "/v1/"+name+"?updateMask=counselor&update_mask=state", map[string]any{"counselor": "counselor-9"}); both.code != http.StatusBadRequest {
		t.Fatalf("updateMask and update_mask: %d %s; want 400", both.code, both.raw)
	}
	// A PATCH without updateMask changes the fields of its body; the etag
	// in the body guards the version instead of counting as a change.
	cur := w.counselor.ok("GET", "/v1/"+name, nil)
	patched := w.counselor.do("PATCH", "/v1/"+name, map[string]any{"name": name, "counselor": "counselor-3", "etag": str(cur, "etag")})
	if patched.code != 200 || str(patched.body, "counselor") != "counselor-3" {
		t.Fatalf("update with the etag in the body: %d %s", patched.code, patched.raw)
	}
	if again := w.counselor.do("PATCH", "/v1/"+name, map[string]any{"counselor": "counselor-1", "etag": str(cur, "etag")}); again.code != http.StatusConflict {
		t.Fatalf("update with a stale etag in the body: %d %s", again.code, again.raw)
	}
	// The family as read, sent back whole with one field changed: what the
	// server sets (create time, state of the screen) and what cannot change
	// (first contact) are passed over as they are, not refused (AIP-203).
	whole := w.counselor.ok("GET", "/v1/"+name, nil)
	whole["counselor"] = "counselor-2"
	if back := w.counselor.do("PATCH", "/v1/"+name, whole); back.code != 200 || str(back.body, "counselor") != "counselor-2" {
		t.Fatalf("the family as read, sent back with another counselor: %d %s", back.code, back.raw)
	}
	// "If-Match: *" checks no version: the stale etag is still the body's.
	if star := w.counselor.do("PATCH", "/v1/"+name, map[string]any{"counselor": "counselor-1", "etag": str(cur, "etag")}, "If-Match", "*"); star.code != http.StatusConflict {
		t.Fatalf("If-Match: * with a stale etag in the body: %d %s; want 409", star.code, star.raw)
	}
	if empty := w.counselor.do("PATCH", "/v1/"+name+"?updateMask=counselor", map[string]any{"counselor": "counselor-1"}, "If-Match", `""`); empty.code != http.StatusBadRequest {
		t.Fatalf("an empty If-Match: %d %s; want 400", empty.code, empty.raw)
	}
	unknown := w.counselor.do("POST", "/v1/clinics/north/families", `{"lovedOne":{"givenName":"X"},"counselor":"c","favouriteColour":"blue"}`)
	if unknown.code != http.StatusBadRequest || !strings.Contains(string(unknown.raw), "favouriteColour") {
		t.Fatalf("unknown field: %d %s", unknown.code, unknown.raw)
	}
	invalid := w.counselor.do("POST", "/v1/clinics/north/families", map[string]any{"lovedOne": map[string]any{"givenName": ""}})
	if invalid.code != http.StatusBadRequest || !strings.Contains(string(invalid.raw), "google.rpc.BadRequest") {
		t.Fatalf("invalid: %d %s", invalid.code, invalid.raw)
	}
	big := `{"lovedOne":{"givenName":"` + strings.Repeat("x", 2<<20) + `"}}`
	if r := w.counselor.do("POST", "/v1/clinics/north/families", big); r.code != http.StatusRequestEntityTooLarge {
		t.Fatalf("2 MiB body: %d", r.code)
	}
	// The same body sent without a length (chunked) is cut as it is read,
	// and is 413 too.
	chunked, err := http.NewRequest("POST", w.counselor.base+"/v1/clinics/north/families", io.NopCloser(strings.NewReader(big)))
	if err != nil {
		t.Fatal(err)
	}
	chunked.Header.Set("Authorization", "Bearer "+w.counselor.token)
	chunked.Header.Set("Content-Type", "application/json")
	if resp, err := http.DefaultClient.Do(chunked); err != nil || resp.StatusCode != http.StatusRequestEntityTooLarge || resp.ContentLength == 0 {
		t.Fatalf("2 MiB chunked body: %v, %v", resp, err)
	} else {
		resp.Body.Close()
	}
	// A body declared as anything but JSON is refused, not decoded as JSON
	// (nor a form's method override taken).
	for ct, want := range map[string]int{"text/plain": http.StatusUnsupportedMediaType,
		"application/x-www-form-urlencoded": http.StatusUnsupportedMediaType, "application/json; charset=utf-8": http.StatusBadRequest} {
		req, err := http.NewRequest("POST", w.counselor.base+"/v1/clinics/north/families", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+w.counselor.token)
		req.Header.Set("Content-Type", ct)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		// JSON goes through to the service, which refuses the empty family.
		if (resp.StatusCode == http.StatusUnsupportedMediaType) != (want == http.StatusUnsupportedMediaType) {
			t.Fatalf("a body sent as %s: %d; want %s", ct, resp.StatusCode, map[bool]string{true: "415", false: "past the check"}[want == http.StatusUnsupportedMediaType])
		}
	}
	// Nor is a form POST with no body served as the path's other verb.
	for _, path := range []string{"/v1/clinics/north/families/nobody/warningSigns/w1", "/v1/clinics/north/families/nobody"} {
		for range 10 {
			req, err := http.NewRequest("POST", w.counselor.base+path, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", "Bearer "+w.counselor.token)
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") == "" {
				t.Fatalf("an empty form POST to %s: %d (Allow %q); want 405 naming the verbs it takes", path, resp.StatusCode, resp.Header.Get("Allow"))
			}
		}
	}
	// A misspelt query parameter is refused, not dropped (which would list
	// everything as if filtered); known ones work in either spelling.
	if r := w.counselor.do("GET", "/v1/clinics/north/families?filtr=urgent%3Dtrue", nil); r.code != http.StatusBadRequest ||
		!strings.Contains(string(r.raw), "filtr") {
		t.Fatalf("unknown query parameter: %d %s", r.code, r.raw)
	}
	// A parameter the body or the path gives, or any on a call that takes
	// everything in its body, is refused too: grpc-gateway reads none of
	// them, so an etag or request id sent there would guard nothing.
	for _, c := range []struct{ method, path, param string }{
		{"POST", "/v1/clinics/north/families?family.counselor=counselor-9", "family.counselor"},
		{"POST", "/v1/clinics/north/families/x/warningSigns?warningSign.notes=x", "warningSign.notes"},
		{"POST", "/v1/clinics/north/interventions/x:schedule?requestId=k1", "requestId"},
		{"POST", "/v1/clinics/north/referrals/x:accept?etag=v3", "etag"},
	} {
		if r := w.counselor.do(c.method, c.path, map[string]any{}); r.code != http.StatusBadRequest || !strings.Contains(string(r.raw), c.param) {
			t.Fatalf("%s %s: %d %s; want 400 naming %s", c.method, c.path, r.code, r.raw, c.param)
		}
	}
	for _, q := range []string{"pageSize=1", "page_size=1&filter=urgent%3Dfalse"} {
		if r := w.counselor.do("GET", "/v1/clinics/north/families?"+q, nil); r.code != 200 || len(list(r.body, "families")) != 1 {
			t.Fatalf("?%s: %d %s", q, r.code, r.raw)
		}
	}
	if r := w.counselor.do("GET", "/v1/clinics/south/families", nil); r.code != http.StatusNotFound {
		t.Fatalf("another clinic: %d %s", r.code, r.raw)
	}
	if r := w.anon.do("GET", "/healthz", nil); r.code != 200 {
		t.Fatalf("healthz: %d", r.code)
	}
	if r := w.anon.do("GET", "/readyz", nil); r.code != 200 || str(r.body, "families") != "SERVING" {
		t.Fatalf("readyz: %d %s", r.code, r.raw)
	}
	doc := w.anon.do("GET", "/openapi.json", nil)
	paths, _ := doc.body["paths"].(map[string]any)
	if doc.code != 200 || doc.body["swagger"] != "2.0" || paths["/v1/{parent}/families"] == nil && paths["/v1/{parent=clinics/*}/families"] == nil {
		t.Fatalf("openapi: %d, %d paths", doc.code, len(paths))
	}
	page := w.anon.do("GET", "/docs", nil)
	if page.code != 200 || !strings.Contains(string(page.raw), "ScheduleIntervention") && !strings.Contains(string(page.raw), ":schedule") {
		t.Fatalf("docs page: %d", page.code)
	}
	pre := w.anon.do("OPTIONS", "/v1/clinics/north/families", nil, "Origin", "https://app.example.org", "Access-Control-Request-Method", "POST")
	if pre.code != http.StatusNoContent || pre.header.Get("Access-Control-Allow-Origin") != "https://app.example.org" {
		t.Fatalf("preflight: %d %v", pre.code, pre.header)
	}
	// A browser EHR app updates Tasks with PUT and must see the Part 2
	// notice on what it is disclosed.
	if m := pre.header.Get("Access-Control-Allow-Methods"); !strings.Contains(m, "PUT") {
		t.Fatalf("preflight allows %q; want PUT among them", m)
	}
	if e := pre.header.Get("Access-Control-Expose-Headers"); !strings.Contains(e, "Grpc-Metadata-Part2-Notice") || !strings.Contains(e, "Retry-After") {
		t.Fatalf("exposed headers %q; want the Part 2 notice and Retry-After", e)
	}
	if r := w.anon.do("OPTIONS", "/v1/clinics/north/families", nil, "Origin", "https://evil.example", "Access-Control-Request-Method", "POST"); r.header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatal("an unlisted origin was allowed")
	}
	// Answers vary by origin whether or not one was allowed, so that no
	// cache hands one origin's answer to another.
	for _, origin := range []string{"", "https://evil.example"} {
		if r := w.anon.do("GET", "/openapi.json", nil, "Origin", origin); r.header.Get("Vary") != "Origin" {
			t.Fatalf("origin %q: Vary %q; want Origin", origin, r.header.Get("Vary"))
		}
	}
}

// Readiness answers are shared for a second: /readyz takes no token, and
// callers without number must not set off a round of health calls each.
// A service with no answer makes the first check wait out its deadline;
// the calls after it within the second are answered at once, alike.
func TestReadinessAnswersAreShared(t *testing.T) {
	sys := stacktest.Start(t)
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	const check = 400 * time.Millisecond
	c := client{t: t, base: stacktest.Gateway(t, gateway.Config{Verifier: sys.Issuer.Verifier(), ReadyCheckTimeout: check,
		FamiliesAddr: sys.Stack.FamiliesAddr, InterventionsAddr: sys.Stack.InterventionsAddr, ReferralsAddr: sys.Stack.ReferralsAddr,
		WebhooksAddr: silent.Addr().String()})}
	began := time.Now()
	first := c.do("GET", "/readyz", nil)
	if took := time.Since(began); took < check {
		t.Fatalf("the first check took %v; want it to wait out the silent service's %v", took, check)
	}
	for range 5 {
		began = time.Now()
		again := c.do("GET", "/readyz", nil)
		if took := time.Since(began); took >= check || string(again.raw) != string(first.raw) || again.code != first.code {
			t.Fatalf("a check within the second: %d %s in %v; want the first answer (%d %s) at once", again.code, again.raw, took, first.code, first.raw)
		}
	}
}

// The gateway is ready without the webhooks service, which it reports, and
// not without one the API needs.
func TestReadinessNeedsTheCoreServicesOnly(t *testing.T) {
	sys := stacktest.Start(t)
	// The deployed default fits a kubelet's probe timeout of a second; here
	// the check is shorter, so that the bounds below leave room on a busy
	// machine.
	if gateway.DefaultReadyCheckTimeout >= time.Second {
		t.Fatalf("default check time %v: a probe gives up after 1s", gateway.DefaultReadyCheckTimeout)
	}
	const check = 400 * time.Millisecond
	var took time.Duration // the last /readyz alone, the gateway built
	get := func(cfg gateway.Config) reply {
		cfg.Verifier = sys.Issuer.Verifier()
		cfg.ReadyCheckTimeout = check
		c := client{t: t, base: stacktest.Gateway(t, cfg)}
		// The first check also dials each service, which a busy machine
		// can make slower than check; the one timed, once the first answer
		// is no longer given again, is a probe's against a running gateway.
		c.do("GET", "/readyz", nil)
		time.Sleep(1100 * time.Millisecond)
		began := time.Now()
		r := c.do("GET", "/readyz", nil)
		took = time.Since(began)
		return r
	}
	const nobody = "127.0.0.1:1" // nothing listens there
	// A webhooks service that takes connections and never answers: its
	// check runs out its time, not the others'.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var held []net.Conn
	t.Cleanup(func() {
		silent.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	for _, webhooks := range []string{nobody, silent.Addr().String()} {
		r := get(gateway.Config{FamiliesAddr: sys.Stack.FamiliesAddr, InterventionsAddr: sys.Stack.InterventionsAddr,
			ReferralsAddr: sys.Stack.ReferralsAddr, WebhooksAddr: webhooks})
		// Within a kubelet's default probe timeout, or the probe fails
		// whatever the answer would have been.
		if took >= time.Second {
			t.Fatalf("webhooks down (%s): /readyz took %v; a probe gives up after 1s", webhooks, took)
		}
		if r.code != http.StatusOK || str(r.body, "families") != "SERVING" || !strings.HasPrefix(str(r.body, "webhooks"), "unreachable") {
			t.Fatalf("webhooks down (%s): %d %s; want 200 with webhooks reported unreachable", webhooks, r.code, r.raw)
		}
	}
	r := get(gateway.Config{FamiliesAddr: nobody, InterventionsAddr: sys.Stack.InterventionsAddr, ReferralsAddr: sys.Stack.ReferralsAddr})
	if r.code != http.StatusServiceUnavailable || !strings.HasPrefix(str(r.body, "families"), "unreachable") {
		t.Fatalf("families down: %d %s; want 503", r.code, r.raw)
	}
	// A call that cannot reach its service says so, not the way there
	// (grpc-go's message names the address it dialled).
	down := client{t: t, token: sys.Token("counselor-1", auth.RoleCounselor), base: stacktest.Gateway(t, gateway.Config{
		FamiliesAddr: nobody, InterventionsAddr: sys.Stack.InterventionsAddr, ReferralsAddr: sys.Stack.ReferralsAddr,
		Verifier: sys.Issuer.Verifier()})}
	if r := down.do("GET", "/v1/clinics/north/families", nil); r.code != http.StatusServiceUnavailable ||
		strings.Contains(string(r.raw), "127.0.0.1") || !strings.Contains(str(r.body, "message"), "families service could not be reached") {
		t.Fatalf("a call with families down: %d %s; want 503 naming the service, not its address", r.code, r.raw)
	}
	// Two that hang are waited for side by side: one after the other
	// would take twice the check time.
	r = get(gateway.Config{FamiliesAddr: silent.Addr().String(), InterventionsAddr: sys.Stack.InterventionsAddr,
		ReferralsAddr: sys.Stack.ReferralsAddr, WebhooksAddr: silent.Addr().String()})
	if r.code != http.StatusServiceUnavailable || took >= 2*check {
		t.Fatalf("families and webhooks hanging: %d after %v; want 503 within %v", r.code, took, 2*check)
	}
}

// The payload codec is served behind the API's CORS, no-store and log: a
// browser Temporal UI's preflight, sent without a token, gets its answer
// from CORS, and a decoded payload is not cached.
func TestCodecBehindCORSAndNoStore(t *testing.T) {
	sys := stacktest.Start(t)
	var reached []string
	codec := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached = append(reached, r.Method+" "+r.URL.Path)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"payloads":[]}`))
	})
	base := stacktest.Gateway(t, gateway.Config{
		FamiliesAddr: sys.Stack.FamiliesAddr, InterventionsAddr: sys.Stack.InterventionsAddr, ReferralsAddr: sys.Stack.ReferralsAddr,
		Verifier: sys.Issuer.Verifier(), CORSOrigins: []string{"https://ui.example.org"}, Codec: codec,
	})
	c := client{t: t, base: base}
	pre := c.do("OPTIONS", "/codec/decode", nil, "Origin", "https://ui.example.org", "Access-Control-Request-Method", "POST",
		"Access-Control-Request-Headers", "authorization, content-type, x-namespace")
	if pre.code != http.StatusNoContent || pre.header.Get("Access-Control-Allow-Origin") != "https://ui.example.org" ||
		!strings.Contains(pre.header.Get("Access-Control-Allow-Headers"), "X-Namespace") ||
		!strings.Contains(pre.header.Get("Access-Control-Allow-Headers"), "Prefer") {
		t.Fatalf("preflight: %d %v", pre.code, pre.header)
	}
	r := c.do("POST", "/codec/decode", `{"payloads":[]}`, "Origin", "https://ui.example.org", "X-Namespace", "default")
	if r.code != http.StatusOK || r.header.Get("Cache-Control") != "no-store" || r.header.Get("Access-Control-Allow-Origin") != "https://ui.example.org" {
		t.Fatalf("decode: %d %v", r.code, r.header)
	}
	if len(reached) != 1 || reached[0] != "POST /decode" {
		t.Fatalf("the codec saw %v; want only the POST, under /decode", reached)
	}
}
