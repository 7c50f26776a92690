package fhir

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/consentgate"
	"github.com/handoff-health/handoff/services/referrals/taskstatus"
)

// refusal is the families service's answer without a covering consent,
// whose message names the family, as the service's does.
func refusal(family string) error {
	st, _ := status.New(codes.FailedPrecondition, "no active consent of "+family+" covers disclosing it to \"ehr\"").
		WithDetails(&errdetails.ErrorInfo{Reason: consentgate.ReasonConsentRequired, Domain: "handoff.health",
			Metadata: map[string]string{"family": family}})
	return st.Err()
}

// fakeFamilies serves one family; its consent covers the information kinds
// in covers, and it refuses the family itself unless IDENTITY is covered.
type fakeFamilies struct {
	familiesv1.FamiliesServiceClient
	mu          sync.Mutex
	family      *familiesv1.Family
	covers      map[familiesv1.InformationKind]bool
	disclosures []*familiesv1.CreateDisclosureRequest
}

func (f *fakeFamilies) GetFamily(_ context.Context, in *familiesv1.GetFamilyRequest, _ ...grpc.CallOption) (*familiesv1.Family, error) {
	if in.GetName() != f.family.GetName() {
		return nil, status.Error(codes.NotFound, in.GetName()+" not found")
	}
	if !f.covers[familiesv1.InformationKind_INFORMATION_KIND_IDENTITY] {
		return nil, refusal(f.family.GetName())
	}
	return f.family, nil
}

// ListFamilies answers a search for the one family by id, as the service
// filters it: only under a covering consent and, asked for members, only
// with some.
func (f *fakeFamilies) ListFamilies(_ context.Context, in *familiesv1.ListFamiliesRequest, _ ...grpc.CallOption) (*familiesv1.ListFamiliesResponse, error) {
	filter := in.GetFilter()
	if in.GetPageToken() != "" || !strings.Contains(filter, fmt.Sprintf("id = %q", lastSegment(f.family.GetName()))) ||
		!f.covers[familiesv1.InformationKind_INFORMATION_KIND_IDENTITY] ||
		(strings.Contains(filter, "has_members = true") && len(f.family.GetMembers()) == 0) {
		return &familiesv1.ListFamiliesResponse{}, nil
	}
	return &familiesv1.ListFamiliesResponse{Families: []*familiesv1.Family{f.family}}, nil
}

func (f *fakeFamilies) CreateDisclosure(_ context.Context, in *familiesv1.CreateDisclosureRequest, _ ...grpc.CallOption) (*familiesv1.Disclosure, error) {
	if !f.covers[in.GetDisclosure().GetInformation()] {
		return nil, refusal(in.GetParent())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.disclosures = append(f.disclosures, in)
	return in.GetDisclosure(), nil
}

func (f *fakeFamilies) BatchCreateDisclosures(_ context.Context, in *familiesv1.BatchCreateDisclosuresRequest, _ ...grpc.CallOption) (*familiesv1.BatchCreateDisclosuresResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := &familiesv1.BatchCreateDisclosuresResponse{}
	for _, r := range in.GetRequests() {
		if f.covers[r.GetDisclosure().GetInformation()] {
			f.disclosures = append(f.disclosures, r)
			out.Disclosures = append(out.Disclosures, r.GetDisclosure())
		}
	}
	return out, nil
}

func (f *fakeFamilies) recorded() []*familiesv1.CreateDisclosureRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*familiesv1.CreateDisclosureRequest(nil), f.disclosures...)
}

// fakeReferrals serves one referral and counts transitions.
type fakeReferrals struct {
	referralsv1.ReferralsServiceClient
	referral    *referralsv1.Referral
	transitions int
	getErr      error
	// reads counts GetReferral calls (each a disclosure to the EHR);
	// etags are the etags the transitions were sent.
	reads int
	etags []string
	// raced, when set, is the referral another request moved it to just
	// before this one's step: the step is refused as stale (ABORTED) and
	// the referral becomes raced.
	raced *referralsv1.Referral
	// cancelled and paused are the reason of each CancelReferral and
	// PauseReferral call.
	cancelled, paused []string
	// filters is the filter of each ListReferrals call.
	filters []string
	// listed is when ListReferrals was last called.
	listed time.Time
	// rejected is the rejection of each RejectReferral call.
	rejected []*referralsv1.Rejection
	// refuse, when set, is every step's answer.
	refuse error
	// program is the one program ListPrograms has; deleted ones are
	// listed only with show_deleted, as the service does.
	program *referralsv1.Program
}

func (r *fakeReferrals) ListPrograms(_ context.Context, in *referralsv1.ListProgramsRequest, _ ...grpc.CallOption) (*referralsv1.ListProgramsResponse, error) {
	if r.program == nil || (r.program.GetDeleteTime() != nil && !in.GetShowDeleted()) {
		return &referralsv1.ListProgramsResponse{}, nil
	}
	return &referralsv1.ListProgramsResponse{Programs: []*referralsv1.Program{r.program}}, nil
}

func (r *fakeReferrals) GetReferral(_ context.Context, in *referralsv1.GetReferralRequest, _ ...grpc.CallOption) (*referralsv1.Referral, error) {
	r.reads++
	if r.getErr != nil {
		return nil, r.getErr
	}
	if in.GetName() != r.referral.GetName() {
		return nil, status.Error(codes.NotFound, in.GetName()+" not found")
	}
	return r.referral, nil
}

func (r *fakeReferrals) ListReferrals(_ context.Context, in *referralsv1.ListReferralsRequest, _ ...grpc.CallOption) (*referralsv1.ListReferralsResponse, error) {
	r.filters = append(r.filters, in.GetFilter())
	r.listed = time.Now()
	return &referralsv1.ListReferralsResponse{Referrals: []*referralsv1.Referral{r.referral}}, nil
}

func (r *fakeReferrals) transition() (*referralsv1.Referral, error) {
	if r.refuse != nil {
		return nil, r.refuse
	}
	if r.raced != nil {
		r.referral, r.raced = r.raced, nil
		return nil, status.Error(codes.Aborted, r.referral.GetName()+" changed since it was read")
	}
	r.transitions++
	return r.referral, nil
}

func (r *fakeReferrals) AcceptReferral(_ context.Context, in *referralsv1.TransitionReferralRequest, _ ...grpc.CallOption) (*referralsv1.Referral, error) {
	r.etags = append(r.etags, in.GetEtag())
	return r.transition()
}

func (r *fakeReferrals) CancelReferral(_ context.Context, in *referralsv1.TransitionReferralRequest, _ ...grpc.CallOption) (*referralsv1.Referral, error) {
	r.cancelled = append(r.cancelled, in.GetReason())
	return r.transition()
}

func (r *fakeReferrals) PauseReferral(_ context.Context, in *referralsv1.TransitionReferralRequest, _ ...grpc.CallOption) (*referralsv1.Referral, error) {
	r.paused = append(r.paused, in.GetReason())
	return r.transition()
}

func (r *fakeReferrals) RejectReferral(_ context.Context, in *referralsv1.RejectReferralRequest, _ ...grpc.CallOption) (*referralsv1.Referral, error) {
	r.rejected = append(r.rejected, in.GetRejection())
	// As the service: the reason is checked before the request id is.
	if in.GetRejection().GetReason() == referralsv1.RejectionReason_REJECTION_REASON_UNSPECIFIED {
		return nil, status.Error(codes.InvalidArgument, "rejection.reason is required")
	}
	return r.transition()
}

type fakeInterventions struct {
	interventionsv1.InterventionsServiceClient
}

func (fakeInterventions) ListInterventions(context.Context, *interventionsv1.ListInterventionsRequest, ...grpc.CallOption) (*interventionsv1.ListInterventionsResponse, error) {
	return &interventionsv1.ListInterventionsResponse{}, nil
}

type fixture struct {
	t         *testing.T
	h         http.Handler
	issuer    *auth.Issuer
	families  *fakeFamilies
	referrals *fakeReferrals
}

func newFixture(t *testing.T, baseURL string, state referralsv1.ReferralState, covers ...familiesv1.InformationKind) *fixture {
	t.Helper()
	issuer, err := auth.NewIssuer("https://issuer.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	fx := &fixture{t: t, issuer: issuer,
		families:  &fakeFamilies{family: sampleFamily(), covers: map[familiesv1.InformationKind]bool{}},
		referrals: &fakeReferrals{referral: sampleReferral(state)}}
	for _, k := range covers {
		fx.families.covers[k] = true
	}
	fx.h, err = New(Config{Families: fx.families, Referrals: fx.referrals, Interventions: fakeInterventions{},
		Verifier: issuer.Verifier(), BaseURL: baseURL})
	if err != nil {
		t.Fatal(err)
	}
	return fx
}

type answer struct {
	code   int
	raw    string
	body   map[string]any
	header http.Header
}

// do calls the handler as subject (an EHR unless roles say otherwise).
func (fx *fixture) do(method, path, body string, headers ...string) answer {
	fx.t.Helper()
	return fx.doAs("ehr", []auth.Role{auth.RoleEHR}, method, path, body, headers...)
}

func (fx *fixture) doAs(subject string, roles []auth.Role, method, path, body string, headers ...string) answer {
	fx.t.Helper()
	req := httptest.NewRequest(method, "http://gateway.internal"+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+fx.issuer.MustMint(auth.TokenOptions{Subject: subject, Clinic: "north", Roles: roles}))
	if body != "" {
		req.Header.Set("Content-Type", "application/fhir+json")
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
	rec := httptest.NewRecorder()
	fx.h.ServeHTTP(rec, req)
	raw, _ := io.ReadAll(rec.Body)
	a := answer{code: rec.Code, raw: string(raw), header: rec.Header()}
	if err := json.Unmarshal(raw, &a.body); err != nil && len(raw) > 0 {
		fx.t.Fatalf("%s %s: not JSON: %s", method, path, raw)
	}
	return a
}

func diagnostics(a answer) string {
	issues, _ := a.body["issue"].([]any)
	if len(issues) == 0 {
		return ""
	}
	d, _ := issues[0].(map[string]any)["diagnostics"].(string)
	return d
}

func issueCode(a answer) string {
	issues, _ := a.body["issue"].([]any)
	if len(issues) == 0 {
		return ""
	}
	c, _ := issues[0].(map[string]any)["code"].(string)
	return c
}

func entryIDs(a answer) []string {
	var out []string
	entries, _ := a.body["entry"].([]any)
	for _, e := range entries {
		res, _ := e.(map[string]any)["resource"].(map[string]any)
		if res["resourceType"] != "OperationOutcome" {
			out = append(out, res["id"].(string))
		}
	}
	return out
}

// A Task carrying a modifier extension or implicit rules, at the top or in
// a backbone element, may mean something else than it says ("entered in
// error"): it is refused (422) before the referral is read or changed.
func TestPutTaskWithAModifierIsRefused(t *testing.T) {
	ext := `[{"url":"http://example.org/fhir/entered-in-error","valueBoolean":true}]`
	head := `{"resourceType":"Task","id":"` + refID + `","intent":"order","status":"cancelled","statusReason":{"text":"x"}`
	for _, c := range []struct{ body, want string }{
		{head + `,"modifierExtension":` + ext + `}`, "Task.modifierExtension"},
		{head + `,"restriction":{"repetitions":1,"modifierExtension":` + ext + `}}`, "Task.restriction.modifierExtension"},
		{head + `,"implicitRules":"http://example.org/rules"}`, "Task.implicitRules"},
		{head + `,"contained":[{"resourceType":"Patient","id":"p1","modifierExtension":` + ext + `}],"for":{"reference":"#p1"}}`, "modifierExtension"},
	} {
		fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_ACCEPTED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
		a := fx.do("PUT", "/fhir/R4/Task/"+refID, c.body)
		if a.code != http.StatusUnprocessableEntity || !strings.Contains(a.raw, c.want) || fx.referrals.reads != 0 || fx.referrals.transitions != 0 {
			t.Errorf("%s: %d %s after %d reads, %d transitions; want 422 naming it, before any read", c.want, a.code, a.raw, fx.referrals.reads, fx.referrals.transitions)
		}
	}
	// The same Task without them is acted on.
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_ACCEPTED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	if a := fx.do("PUT", "/fhir/R4/Task/"+refID, head+`}`); a.code != http.StatusOK || fx.referrals.transitions != 1 {
		t.Fatalf("without them: %d %s after %d transitions; want it cancelled", a.code, a.raw, fx.referrals.transitions)
	}
	// Sent as application/json+fhir, the type DSTU2 named, it is read as
	// FHIR JSON; as XML it is refused.
	for mt, want := range map[string]int{"application/json+fhir": http.StatusOK, "application/fhir+xml": http.StatusUnsupportedMediaType,
		"application/fhir+json; fhirVersion=4.0": http.StatusOK, "application/fhir+json; fhirVersion=5.0": http.StatusUnsupportedMediaType} {
		fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_ACCEPTED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
		if a := fx.do("PUT", "/fhir/R4/Task/"+refID, head+`}`, "Content-Type", mt); a.code != want {
			t.Errorf("a Task sent as %s: %d %s; want %d", mt, a.code, a.raw, want)
		}
	}
}

// The receiving program may cancel a referral through the EHR, as either
// side of the closed loop may: the PUT cancels it with the statusReason as
// the reason. Resent to a cancelled referral it changes nothing.
func TestPutTaskCancelled(t *testing.T) {
	body := `{"resourceType":"Task","id":"` + refID + `","intent":"order","status":"cancelled","statusReason":{"text":"moved out of the area"}}`
	for _, state := range []referralsv1.ReferralState{
		referralsv1.ReferralState_REFERRAL_STATE_ACCEPTED, referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED,
	} {
		fx := newFixture(t, "", state, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
		a := fx.do("PUT", "/fhir/R4/Task/"+refID, body)
		if a.code != http.StatusOK || a.body["resourceType"] != "Task" {
			t.Fatalf("%v: PUT cancelled: %d %s", state, a.code, a.raw)
		}
		if fx.referrals.transitions != 1 || len(fx.referrals.cancelled) != 1 || fx.referrals.cancelled[0] != "moved out of the area" {
			t.Errorf("%v: %d transitions, cancellations %q; want one, with the statusReason", state, fx.referrals.transitions, fx.referrals.cancelled)
		}
	}
	// Without a reason it is refused before the referral is read.
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_ACCEPTED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	bare := `{"resourceType":"Task","id":"` + refID + `","intent":"order","status":"cancelled"}`
	if a := fx.do("PUT", "/fhir/R4/Task/"+refID, bare); a.code != http.StatusUnprocessableEntity || issueCode(a) != "business-rule" ||
		fx.referrals.reads != 0 || fx.referrals.transitions != 0 {
		t.Fatalf("cancelled without a reason: %d %s after %d reads; want 422 before any read", a.code, a.raw, fx.referrals.reads)
	}
	// A rejection without a reason leaves the counselor nothing to look
	// for another program by: refused the same way. A coded reason alone
	// will do, whatever the case of its code.
	bare = `{"resourceType":"Task","id":"` + refID + `","intent":"order","status":"rejected"}`
	if a := fx.do("PUT", "/fhir/R4/Task/"+refID, bare); a.code != http.StatusUnprocessableEntity || !strings.Contains(a.raw, "AT_CAPACITY") ||
		fx.referrals.reads != 0 || fx.referrals.transitions != 0 {
		t.Fatalf("rejected without a reason: %d %s after %d reads; want 422 naming the codes, before any read", a.code, a.raw, fx.referrals.reads)
	}
	coded := `{"resourceType":"Task","id":"` + refID + `","intent":"order","status":"rejected","statusReason":{"coding":[{"system":"` +
		sysRejection + `","code":"not_eligible"}]}}`
	if a := fx.do("PUT", "/fhir/R4/Task/"+refID, coded); a.code != http.StatusOK || len(fx.referrals.rejected) != 1 ||
		fx.referrals.rejected[0].GetReason() != referralsv1.RejectionReason_REJECTION_REASON_NOT_ELIGIBLE {
		t.Fatalf("rejected with a coded reason: %d %s, rejections %v; want NOT_ELIGIBLE", a.code, a.raw, fx.referrals.rejected)
	}
	// The rejection retried after its answer was lost: the Task is
	// rejected at a newer version, and the retry goes to the service with
	// its key and its reason, for the service to answer from its record.
	fx = newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REJECTED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	if a := fx.do("PUT", "/fhir/R4/Task/"+refID, coded, "If-Match", `W/"v1"`, "Idempotency-Key", "k1"); a.code != http.StatusOK ||
		len(fx.referrals.rejected) != 1 || fx.referrals.rejected[0].GetReason() != referralsv1.RejectionReason_REJECTION_REASON_NOT_ELIGIBLE {
		t.Fatalf("a rejection retried with its key: %d %s, rejections %v; want 200 with NOT_ELIGIBLE sent", a.code, a.raw, fx.referrals.rejected)
	}
	fx = newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_CANCELLED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	if a := fx.do("PUT", "/fhir/R4/Task/"+refID, body); a.code != http.StatusOK || fx.referrals.transitions != 0 {
		t.Fatalf("PUT cancelled to a cancelled referral: %d %s after %d transitions; want a no-op", a.code, a.raw, fx.referrals.transitions)
	}
	// The CapabilityStatement offers it.
	a := fx.do("GET", "/fhir/R4/metadata", "")
	offered := false
	for _, res := range a.body["rest"].([]any)[0].(map[string]any)["resource"].([]any) {
		r := res.(map[string]any)
		if r["type"] != "Task" {
			continue
		}
		for _, in := range r["interaction"].([]any) {
			doc, _ := in.(map[string]any)["documentation"].(string)
			set, _, _ := strings.Cut(doc, ")")
			offered = offered || strings.Contains(set, "cancelled")
		}
	}
	if !offered {
		t.Error("the Task update does not offer cancelled")
	}
	// If-Match is honoured, not required: "versioned-update" would tell
	// the EHR that an update without it fails.
	for _, res := range a.body["rest"].([]any)[0].(map[string]any)["resource"].([]any) {
		if r := res.(map[string]any); r["type"] == "Task" && r["versioning"] != "versioned" {
			t.Errorf("Task versioning %v; want versioned", r["versioning"])
		}
	}
}

// A directory synced by _lastUpdated learns of a program's closing: the
// search lists deleted programs, inactive.
func TestHealthcareServiceSearchShowsDeletedPrograms(t *testing.T) {
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED)
	fx.referrals.program = &referralsv1.Program{Name: "clinics/north/programs/p1", DisplayName: "Riverside MAT",
		UpdateTime: ts(time.Now()), DeleteTime: ts(time.Now())}
	a := fx.do("GET", "/fhir/R4/HealthcareService?_lastUpdated=ge2020-01-01", "")
	entries, _ := a.body["entry"].([]any)
	if a.code != http.StatusOK || len(entries) != 1 {
		t.Fatalf("search: %d %s; want the deleted program", a.code, a.raw)
	}
	if res := entries[0].(map[string]any)["resource"].(map[string]any); res["active"] != false {
		t.Fatalf("the deleted program: %v; want active false", res)
	}
}

// The program puts a booked intake on hold with a reason, which the Task
// then carries; without one the PUT is refused before the referral is read.
func TestPutTaskOnHold(t *testing.T) {
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	bare := `{"resourceType":"Task","id":"` + refID + `","intent":"order","status":"on-hold"}`
	if a := fx.do("PUT", "/fhir/R4/Task/"+refID, bare); a.code != http.StatusUnprocessableEntity || fx.referrals.reads != 0 {
		t.Fatalf("on-hold without a reason: %d %s after %d reads; want 422 before any read", a.code, a.raw, fx.referrals.reads)
	}
	body := `{"resourceType":"Task","id":"` + refID + `","intent":"order","status":"on-hold","statusReason":{"text":"waiting for prior authorization"}}`
	if a := fx.do("PUT", "/fhir/R4/Task/"+refID, body); a.code != http.StatusOK || len(fx.referrals.paused) != 1 ||
		fx.referrals.paused[0] != "waiting for prior authorization" {
		t.Fatalf("on-hold: %d %s, pauses %q", a.code, a.raw, fx.referrals.paused)
	}
	held := task(sampleReferral(referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD))
	if reason, _ := held["statusReason"].(obj); held["status"] != "on-hold" || reason["text"] != "waiting for prior authorization" {
		t.Fatalf("an on-hold Task = %v / %v", held["status"], held["statusReason"])
	}
	if bs, _ := held["businessStatus"].(obj); bs["text"] != "on hold" {
		t.Fatalf("an on-hold Task's businessStatus = %v", held["businessStatus"])
	}
	// The program paused its Task; the clinic's request stands.
	if sr := serviceRequest(sampleReferral(referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD)); sr["status"] != "active" {
		t.Fatalf("the ServiceRequest of an intake on hold is %v; want active", sr["status"])
	}
	if a := intakeAppointment(sampleReferral(referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD)); a["status"] != "waitlist" {
		t.Fatalf("the appointment of an intake on hold is %v; want waitlist (to be booked again; cancelled is final)", a["status"])
	}
}

// A PUT honours the client's return preference (Prefer, RFC 7240): no
// body for return=minimal, an OperationOutcome for return=OperationOutcome,
// the Task otherwise; the version headers go with each, and the answer
// says which preference it applied.
func TestPutTaskReturnPreference(t *testing.T) {
	body := `{"resourceType":"Task","id":"` + refID + `","intent":"order","status":"accepted"}`
	for _, c := range []struct {
		prefer, applied, resourceType string
	}{
		{"return=minimal", "return=minimal", ""},
		{`handling=strict, return="OperationOutcome"`, "return=OperationOutcome", "OperationOutcome"},
		{"return=representation", "", "Task"},
		{"", "", "Task"},
	} {
		fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
		var headers []string
		if c.prefer != "" {
			headers = []string{"Prefer", c.prefer}
		}
		a := fx.do("PUT", "/fhir/R4/Task/"+refID, body, headers...)
		if a.code != http.StatusOK || fx.referrals.transitions != 1 || a.header.Get("ETag") == "" || a.header.Get("Last-Modified") == "" {
			t.Fatalf("Prefer %q: %d %v after %d transitions; want 200 with the version headers, the Task accepted", c.prefer, a.code, a.header, fx.referrals.transitions)
		}
		if got := a.header.Get("Preference-Applied"); got != c.applied {
			t.Errorf("Prefer %q: Preference-Applied %q, want %q", c.prefer, got, c.applied)
		}
		if c.resourceType == "" && a.raw != "" {
			t.Errorf("Prefer %q: body %s, want none", c.prefer, a.raw)
		}
		// The PUT read the referral as a disclosure: every answer carries
		// the Part 2 notice, in the resource or, without one, a header.
		if c.resourceType == "" && a.header.Get("Part2-Notice") != consentgate.Notice {
			t.Errorf("Prefer %q: no body and Part2-Notice %q; want the notice", c.prefer, a.header.Get("Part2-Notice"))
		}
		if c.resourceType != "" && !strings.Contains(a.raw, "42CFRPart2") {
			t.Errorf("Prefer %q: %s without the Part 2 labels", c.prefer, a.raw)
		}
		if c.resourceType != "" && a.body["resourceType"] != c.resourceType {
			t.Errorf("Prefer %q: body %s, want a %s", c.prefer, a.raw, c.resourceType)
		}
	}
}

// A PUT that sends the Task's status again with other content (a new
// reason for the pause, another rejection, another entry) is refused:
// none is a step the referral takes, and a 200 would say the counselor
// reads it. The same content again is answered as the Task stands.
func TestPutTaskSameStatusOtherContent(t *testing.T) {
	entered := time.Now().Add(-time.Hour).Truncate(time.Microsecond)
	booked := time.Now().Add(3 * time.Hour).Truncate(time.Microsecond)
	put := func(state referralsv1.ReferralState, status, rest string) (answer, *fixture) {
		fx := newFixture(t, "", state, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
		if state == referralsv1.ReferralState_REFERRAL_STATE_COMPLETED {
			fx.referrals.referral.TreatmentEntryTime = ts(entered)
		}
		if state == referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED {
			fx.referrals.referral.IntakeAppointment.StartTime = ts(booked)
		}
		return fx.do("PUT", "/fhir/R4/Task/"+refID, `{"resourceType":"Task","id":"`+refID+`","intent":"order","status":"`+status+`"`+rest+`}`), fx
	}
	for _, c := range []struct {
		name          string
		state         referralsv1.ReferralState
		status, rest  string
		want          int
		wantInMessage string
	}{
		{"on hold, the same reason", referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD, "on-hold",
			`,"statusReason":{"text":"waiting for prior authorization"}`, http.StatusOK, ""},
		{"on hold, another reason", referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD, "on-hold",
			`,"statusReason":{"text":"waiting for a bed"}`, http.StatusUnprocessableEntity, "statusReason"},
		{"cancelled, another reason", referralsv1.ReferralState_REFERRAL_STATE_CANCELLED, "cancelled",
			`,"statusReason":{"text":"went elsewhere"}`, http.StatusUnprocessableEntity, "statusReason"},
		{"rejected, its code's display in another case", referralsv1.ReferralState_REFERRAL_STATE_REJECTED, "rejected",
			`,"statusReason":{"coding":[{"system":"` + sysRejection + `","code":"AT_CAPACITY","display":"At capacity"}]}`, http.StatusOK, ""},
		{"rejected, another code", referralsv1.ReferralState_REFERRAL_STATE_REJECTED, "rejected",
			`,"statusReason":{"coding":[{"system":"` + sysRejection + `","code":"NOT_ELIGIBLE"}],"text":"at capacity"}`, http.StatusUnprocessableEntity, "statusReason"},
		// OTHER named is a code sent, not text alone.
		{"rejected, OTHER named over another code", referralsv1.ReferralState_REFERRAL_STATE_REJECTED, "rejected",
			`,"statusReason":{"coding":[{"system":"` + sysRejection + `","code":"OTHER"}],"text":"at capacity"}`, http.StatusUnprocessableEntity, "statusReason"},
		{"rejected, other details", referralsv1.ReferralState_REFERRAL_STATE_REJECTED, "rejected",
			`,"statusReason":{"text":"no beds until March"}`, http.StatusUnprocessableEntity, "statusReason"},
		{"completed, the same entry", referralsv1.ReferralState_REFERRAL_STATE_COMPLETED, "completed",
			`,"executionPeriod":{"end":"` + entered.UTC().Format(time.RFC3339Nano) + `"}`, http.StatusOK, ""},
		{"rejected, its code alone", referralsv1.ReferralState_REFERRAL_STATE_REJECTED, "rejected",
			`,"statusReason":{"coding":[{"system":"` + sysRejection + `","code":"AT_CAPACITY"}]}`, http.StatusOK, ""},
		{"on hold, written back with its line breaks and spaces changed", referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD, "on-hold",
			`,"statusReason":{"text":" waiting for\r\nprior   authorization"}`, http.StatusOK, ""},
		{"completed, the same entry to the second", referralsv1.ReferralState_REFERRAL_STATE_COMPLETED, "completed",
			`,"executionPeriod":{"end":"` + entered.Truncate(time.Second).UTC().Format(time.RFC3339) + `"}`, http.StatusOK, ""},
		{"in progress, the same booking to the second", referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED, "in-progress",
			`,"executionPeriod":{"start":"` + booked.Truncate(time.Second).UTC().Format(time.RFC3339) + `"}`, http.StatusOK, ""},
		{"completed, another entry", referralsv1.ReferralState_REFERRAL_STATE_COMPLETED, "completed",
			`,"executionPeriod":{"end":"` + entered.Add(-24*time.Hour).UTC().Format(time.RFC3339Nano) + `"}`, http.StatusUnprocessableEntity, "executionPeriod.end"},
	} {
		a, fx := put(c.state, c.status, c.rest)
		if a.code != c.want || fx.referrals.transitions != 0 || !strings.Contains(a.raw, c.wantInMessage) {
			t.Errorf("%s: %d %s after %d transitions; want %d and none", c.name, a.code, a.raw, fx.referrals.transitions, c.want)
		}
	}
	// A reason stored with a control character is read with a space in
	// its place, and written back so it is the same reason.
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	fx.referrals.referral.History[0].Reason = "waiting for\vprior authorization"
	read := fx.do("GET", "/fhir/R4/Task/"+refID, "")
	reason, _ := read.body["statusReason"].(map[string]any)
	text, _ := reason["text"].(string)
	back := `{"resourceType":"Task","id":"` + refID + `","intent":"order","status":"on-hold","statusReason":{"text":"` + text + `"}}`
	if a := fx.do("PUT", "/fhir/R4/Task/"+refID, back); read.code != http.StatusOK || text != "waiting for prior authorization" ||
		a.code != http.StatusOK || fx.referrals.transitions != 0 {
		t.Fatalf("a stored reason read (%d, %q) and written back: %d %s; want 200 and no transition", read.code, text, a.code, a.raw)
	}
}

// A search answers an empty searchset where consent refuses the read
// behind it, as the services' own lists do; a read by id answers 403.
// Neither names the family or anything but what was asked for.
func TestConsentRefusals(t *testing.T) {
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED)
	for _, path := range []string{
		"/fhir/R4/RelatedPerson?patient=" + famID, "/fhir/R4/CareTeam?subject=Patient/" + famID,
		"/fhir/R4/RelatedPerson/_search?patient=" + famID,
	} {
		method := "GET"
		if strings.Contains(path, "_search") {
			method = "POST"
		}
		a := fx.do(method, path, "")
		if a.code != http.StatusOK || a.body["resourceType"] != "Bundle" || a.body["type"] != "searchset" ||
			len(entryIDs(a)) != 0 || a.body["total"] != float64(0) {
			t.Errorf("%s without consent: %d %s", path, a.code, a.raw)
		}
	}
	fx.referrals.getErr = refusal(fx.families.family.GetName())
	for _, path := range []string{"/fhir/R4/RelatedPerson/" + famID + ".mom", "/fhir/R4/Patient/" + famID, "/fhir/R4/Task/" + refID} {
		a := fx.do("GET", path, "")
		if a.code != http.StatusForbidden || issueCode(a) != "forbidden" || diagnostics(a) != consentRefusedText {
			t.Errorf("GET %s without consent: %d %s", path, a.code, a.raw)
		}
		if strings.Contains(a.raw, "families/") || strings.Contains(a.raw, `"ehr"`) {
			t.Errorf("GET %s: the refusal names the family or the recipient: %s", path, a.raw)
		}
	}
}

// A POST search reads its parameters from a form-encoded body; a body of
// any other type is refused (415) rather than ignored, which would have
// answered everything the caller may see.
func TestPostSearchBody(t *testing.T) {
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED,
		familiesv1.InformationKind_INFORMATION_KIND_IDENTITY, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	// The body is read: its parameter reaches the search (the self link),
	// and an unknown one is refused as it would be in the URL.
	form := fx.do("POST", "/fhir/R4/Task/_search", "patient="+famID, "Content-Type", "application/x-www-form-urlencoded")
	if form.code != http.StatusOK || form.body["type"] != "searchset" || !strings.Contains(form.raw, "Task?patient="+famID) {
		t.Fatalf("form search: %d %s", form.code, form.raw)
	}
	if a := fx.do("POST", "/fhir/R4/Task/_search", "colour=red", "Content-Type", "application/x-www-form-urlencoded"); a.code != http.StatusBadRequest {
		t.Fatalf("form search with an unknown parameter: %d %s", a.code, a.raw)
	}
	// _format in the body asks for the format as it would in the URL,
	// and overrides Accept.
	form = fx.do("POST", "/fhir/R4/Task/_search", "_format=xml&patient="+famID, "Content-Type", "application/x-www-form-urlencoded")
	if form.code != http.StatusNotAcceptable {
		t.Fatalf("form search for XML: %d %s; want 406", form.code, form.raw)
	}
	form = fx.do("POST", "/fhir/R4/Task/_search", "_format=json&patient="+famID, "Content-Type", "application/x-www-form-urlencoded",
		"Accept", "application/fhir+xml")
	if form.code != http.StatusOK {
		t.Fatalf("form search for JSON, XML accepted: %d %s; want 200", form.code, form.raw)
	}
	// A body that cannot be read is refused, not searched without it.
	if a := fx.do("POST", "/fhir/R4/Task/_search", "_format=json&patient="+famID+"%", "Content-Type", "application/x-www-form-urlencoded"); a.code != http.StatusBadRequest {
		t.Fatalf("form search with an unreadable body: %d %s; want 400", a.code, a.raw)
	}
	// A GET's body is never read: its parameters would be dropped and the
	// search would answer everything, so it is refused.
	for _, path := range []string{"/fhir/R4/Task", "/fhir/R4/Task/" + refID} {
		a := fx.do("GET", path, "patient="+famID+"&status=requested", "Content-Type", "application/x-www-form-urlencoded")
		if a.code != http.StatusBadRequest || a.body["resourceType"] != "OperationOutcome" {
			t.Fatalf("GET %s with a body: %d %s; want 400", path, a.code, a.raw)
		}
	}
	if a := fx.do("DELETE", "/fhir/R4/Task/_search", ""); a.code != http.StatusMethodNotAllowed || a.header.Get("Allow") != "POST" {
		t.Fatalf("DELETE of the search: %d, Allow %q; want 405 with Allow: POST", a.code, a.header.Get("Allow"))
	}
	if a := fx.do("POST", "/fhir/R4/metadata", ""); a.code != http.StatusMethodNotAllowed || a.header.Get("Allow") != "GET, HEAD" {
		t.Fatalf("POST of the capability statement: %d, Allow %q; want 405 with Allow: GET, HEAD", a.code, a.header.Get("Allow"))
	}
	for _, ct := range []string{"application/json", "multipart/form-data; boundary=x", ""} {
		a := fx.do("POST", "/fhir/R4/Task/_search", "colour=red", "Content-Type", ct)
		if a.code != http.StatusUnsupportedMediaType || a.body["resourceType"] != "OperationOutcome" {
			t.Fatalf("body as %q: %d %s", ct, a.code, a.raw)
		}
	}
}

// An intake appointment is part of the referral: the referrals service
// checks and records its disclosure under the referrals consent, and the
// handler asks for no consent of another kind (an appointments consent
// alone must not be needed, and the Task shows the same time anyway).
func TestIntakeAppointmentIsTheReferrals(t *testing.T) {
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED,
		familiesv1.InformationKind_INFORMATION_KIND_IDENTITY, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	intake := "/fhir/R4/Appointment/" + intakePrefix + refID
	task := fx.do("GET", "/fhir/R4/Task/"+refID, "")
	if task.code != http.StatusOK {
		t.Fatalf("Task under a referrals consent: %d %s", task.code, task.raw)
	}
	a := fx.do("GET", intake, "")
	if a.code != http.StatusOK || a.body["id"] != intakePrefix+refID || a.body["status"] != "booked" {
		t.Fatalf("intake appointment under a referrals consent: %d %s", a.code, a.raw)
	}
	period, _ := task.body["executionPeriod"].(map[string]any)
	if period["start"] == nil || period["start"] != a.body["start"] {
		t.Fatalf("Task executionPeriod %v and Appointment start %v disagree", period, a.body["start"])
	}
	s := fx.do("GET", "/fhir/R4/Appointment?patient="+famID, "")
	if s.code != http.StatusOK || strings.Join(entryIDs(s), ",") != intakePrefix+refID {
		t.Fatalf("appointments under a referrals consent: %d %s", s.code, s.raw)
	}
	if got := fx.families.recorded(); len(got) != 0 {
		t.Fatalf("the handler recorded disclosures of its own (the referrals service records them): %v", got)
	}

	// The referrals service's refusal is the appointment's.
	fx.referrals.getErr = refusal(fx.families.family.GetName())
	if a := fx.do("GET", intake, ""); a.code != http.StatusForbidden || diagnostics(a) != consentRefusedText {
		t.Fatalf("intake appointment of a referral the consent does not cover: %d %s", a.code, a.raw)
	}
	fx.referrals.getErr = nil

	// Before the program books one there is no intake appointment to show.
	fx.referrals.referral.IntakeAppointment = nil
	if a := fx.do("GET", intake, ""); a.code != http.StatusNotFound {
		t.Fatalf("intake appointment of an unscheduled referral: %d %s", a.code, a.raw)
	}
}

// An update of a Task that does not exist is R4's 405 (this server does not
// create Tasks by PUT), not a 404, which would say it has no Task endpoint.
func TestPutUnknownTaskIsNotAllowed(t *testing.T) {
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_ACCEPTED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	body := func(id string) string {
		return `{"resourceType":"Task","id":"` + id + `","intent":"order","status":"accepted"}`
	}
	const malformed = "Not.A.Handoff.Id" // a FHIR id, never one of ours
	if a := fx.do("PUT", "/fhir/R4/Task/"+malformed, body(malformed)); a.code != http.StatusMethodNotAllowed || a.header.Get("Allow") != "GET" {
		t.Fatalf("PUT to a malformed id: %d %s, Allow %q; want 405 with Allow: GET", a.code, a.raw, a.header.Get("Allow"))
	}
	fx.referrals.getErr = status.Error(codes.NotFound, "no such referral")
	if a := fx.do("PUT", "/fhir/R4/Task/"+refID, body(refID)); a.code != http.StatusMethodNotAllowed || a.header.Get("Allow") != "GET" ||
		fx.referrals.transitions != 0 {
		t.Fatalf("PUT to an unknown Task: %d %s, Allow %q, %d transitions; want 405 with Allow: GET and none",
			a.code, a.raw, a.header.Get("Allow"), fx.referrals.transitions)
	}
	// A read of it is still a 404.
	if a := fx.do("GET", "/fhir/R4/Task/"+refID, ""); a.code != http.StatusNotFound {
		t.Fatalf("GET of an unknown Task: %d %s", a.code, a.raw)
	}
}

// Diagnostics speak of the resource asked for only.
func TestDiagnosticsNameOnlyTheRequest(t *testing.T) {
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	fam := fx.families.family.GetName()
	for _, c := range []struct {
		err  error
		code int
		want string
	}{
		{status.Error(codes.NotFound, fam+" not found"), http.StatusNotFound, "Task/" + refID + " not found"},
		{status.Error(codes.PermissionDenied, "no access to "+fam), http.StatusForbidden, "this caller may not access Task/" + refID},
		{status.Error(codes.FailedPrecondition, fam+" is closed; "+fx.referrals.referral.GetName()+" cannot move"),
			http.StatusUnprocessableEntity, "a related record is closed; " + fx.referrals.referral.GetName() + " cannot move"},
		{refusal(fam), http.StatusForbidden, consentRefusedText},
	} {
		fx.referrals.getErr = c.err
		a := fx.do("GET", "/fhir/R4/Task/"+refID, "")
		if a.code != c.code || diagnostics(a) != c.want {
			t.Errorf("%v: %d %q, want %d %q", c.err, a.code, diagnostics(a), c.code, c.want)
		}
		if strings.Contains(a.raw, famID) {
			t.Errorf("%v: the outcome names the family: %s", c.err, a.raw)
		}
	}
}

// With a base URL set, links do not follow the request's Host or
// X-Forwarded-Proto.
func TestBaseURL(t *testing.T) {
	for _, base := range []string{"https://api.example.org", "https://api.example.org/", "https://api.example.org/fhir/R4"} {
		fx := newFixture(t, base, referralsv1.ReferralState_REFERRAL_STATE_REQUESTED,
			familiesv1.InformationKind_INFORMATION_KIND_IDENTITY, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
		a := fx.do("GET", "/fhir/R4/Task?patient="+famID, "", "Host", "evil.example", "X-Forwarded-Proto", "http")
		if a.code != http.StatusOK {
			t.Fatalf("%s: %d %s", base, a.code, a.raw)
		}
		if strings.Contains(a.raw, "evil.example") || strings.Contains(a.raw, "gateway.internal") ||
			!strings.Contains(a.raw, `"fullUrl":"https://api.example.org/fhir/R4/Task/`+refID+`"`) ||
			!strings.Contains(a.raw, `"url":"https://api.example.org/fhir/R4/Task?patient=`) {
			t.Errorf("%s: links = %s", base, a.raw)
		}
	}
	// Without one, the request's host is used, as before.
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	if a := fx.do("GET", "/fhir/R4/Task", ""); !strings.Contains(a.raw, `"fullUrl":"http://gateway.internal/fhir/R4/Task/`) {
		t.Errorf("without a base URL: %s", a.raw)
	}
	for _, bad := range []string{"api.example.org", "ftp://x/", "https://x/fhir/R4?a=b", "https:///fhir"} {
		if _, err := New(Config{Families: &fakeFamilies{}, Referrals: &fakeReferrals{}, Interventions: fakeInterventions{},
			Verifier: &auth.Verifier{}, BaseURL: bad}); err == nil {
			t.Errorf("base URL %q accepted", bad)
		}
	}
}

// What the request alone decides is refused before the referral is read
// (a read by the EHR is a disclosure).
func TestTaskPutRefusesBeforeReading(t *testing.T) {
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	body := `{"resourceType":"Task","id":"` + refID + `","intent":"order","status":"accepted"}`
	if a := fx.do("PUT", "/fhir/R4/Task/"+refID, body, "Idempotency-Key", strings.Repeat("k", 65)); a.code != http.StatusBadRequest {
		t.Fatalf("a long Idempotency-Key: %d %s", a.code, a.raw)
	}
	for _, st := range []string{"draft", "requested", "received", "entered-in-error"} {
		notTheProgramS := `{"resourceType":"Task","id":"` + refID + `","intent":"order","status":"` + st + `"}`
		if a := fx.do("PUT", "/fhir/R4/Task/"+refID, notTheProgramS); a.code != http.StatusUnprocessableEntity || issueCode(a) != "business-rule" {
			t.Fatalf("%s: %d %s", st, a.code, a.raw)
		}
	}
	// A time without a time of day, or an in-progress Task without its
	// start, is refused from the body alone too: a read before it would be
	// an EHR disclosure for an answer that never leaves.
	// A malformed time is a 400; a well-formed Task missing what this
	// server's rules need is R4's 422.
	for b, code := range map[string]int{`"status":"in-progress","executionPeriod":{"start":"2026-05-01"}`: http.StatusBadRequest,
		`"status":"in-progress"`: http.StatusUnprocessableEntity,
		`"status":"completed","executionPeriod":{"end":"2026-05-01"}`: http.StatusBadRequest} {
		dateOnly := `{"resourceType":"Task","id":"` + refID + `","intent":"order",` + b + `}`
		if a := fx.do("PUT", "/fhir/R4/Task/"+refID, dateOnly); a.code != code {
			t.Fatalf("%s: %d %s; want %d", b, a.code, a.raw, code)
		}
	}
	if fx.referrals.reads != 0 || fx.referrals.transitions != 0 {
		t.Fatalf("refused PUTs read the referral %d times and moved it %d times", fx.referrals.reads, fx.referrals.transitions)
	}
}

// Without If-Match a step is made against the version read: when an
// identical PUT won the race, this one reads again, finds the Task as it
// asked and answers it without a second step.
func TestTaskPutWithoutIfMatchLosesARaceQuietly(t *testing.T) {
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	fx.referrals.referral.Etag = "v1"
	won := proto.Clone(fx.referrals.referral).(*referralsv1.Referral)
	won.State, won.Etag = referralsv1.ReferralState_REFERRAL_STATE_ACCEPTED, "v2"
	fx.referrals.raced = won
	a := fx.do("PUT", "/fhir/R4/Task/"+refID, `{"resourceType":"Task","id":"`+refID+`","intent":"order","status":"accepted"}`)
	if a.code != http.StatusOK || a.body["status"] != "accepted" {
		t.Fatalf("PUT accepted after losing a race: %d %s", a.code, a.raw)
	}
	if fx.referrals.transitions != 0 || strings.Join(fx.referrals.etags, ",") != "v1" || fx.referrals.reads != 2 {
		t.Fatalf("steps %d with etags %v after %d reads; want none made, one tried against v1, two reads",
			fx.referrals.transitions, fx.referrals.etags, fx.referrals.reads)
	}
}

// "If-Match: *" asks for no particular version: the step goes against the
// version read.
func TestTaskPutIfMatchAny(t *testing.T) {
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	fx.referrals.referral.Etag = "v7"
	a := fx.do("PUT", "/fhir/R4/Task/"+refID, `{"resourceType":"Task","id":"`+refID+`","intent":"order","status":"accepted"}`, "If-Match", "*")
	if a.code != http.StatusOK || strings.Join(fx.referrals.etags, ",") != "v7" {
		t.Fatalf("If-Match *: %d %s; etags sent %v", a.code, a.raw, fx.referrals.etags)
	}
	// A list names no one version: refused, not misread as one.
	fx = newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	fx.referrals.referral.Etag = "v7"
	a = fx.do("PUT", "/fhir/R4/Task/"+refID, `{"resourceType":"Task","id":"`+refID+`","intent":"order","status":"accepted"}`, "If-Match", `W/"v6", W/"v7"`)
	if a.code != http.StatusBadRequest || fx.referrals.transitions != 0 {
		t.Fatalf("If-Match with a list: %d %s after %d transitions; want 400", a.code, a.raw, fx.referrals.transitions)
	}
}

// If-Match and Idempotency-Key are refused, before the referral is read,
// as the REST gateway refuses them: a byte that is not printable ASCII
// (the call would fail as an internal error), an empty etag (the write
// would go through unguarded), a key named twice or empty (a retry could
// run twice).
func TestTaskPutRefusesBadHeaders(t *testing.T) {
	task := `{"resourceType":"Task","id":"` + refID + `","intent":"order","status":"accepted"}`
	for name, headers := range map[string][]string{
		"a key not ASCII":  {"Idempotency-Key", "caf\xe9"},
		"an empty etag":    {"If-Match", `""`},
		"a weak empty tag": {"If-Match", `W/""`},
		"two keys":         {"Idempotency-Key", "k1", "Idempotency-Key", "k2"},
		"an empty key":     {"Idempotency-Key", ""},
	} {
		fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
		a := fx.do("PUT", "/fhir/R4/Task/"+refID, task, headers...)
		if a.code != http.StatusBadRequest || fx.referrals.transitions != 0 || fx.referrals.reads != 0 {
			t.Errorf("%s: %d %s after %d reads, %d transitions; want 400 and nothing read", name, a.code, a.raw, fx.referrals.reads, fx.referrals.transitions)
		}
	}
}

// An EHR that reads a paused or cancelled Task and writes it back unchanged
// changes nothing: the Task it read carries the statusReason the write
// asks for. A reason sent as a coding alone counts; one longer than the
// referral keeps is refused before the referral is read.
func TestPutTaskReadBackAndReasons(t *testing.T) {
	for _, state := range []referralsv1.ReferralState{referralsv1.ReferralState_REFERRAL_STATE_CANCELLED, referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD} {
		fx := newFixture(t, "", state, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
		read := fx.do("GET", "/fhir/R4/Task/"+refID, "")
		if reason, _ := read.body["statusReason"].(map[string]any); read.code != http.StatusOK || reason["text"] == nil {
			t.Fatalf("%v: GET Task: %d, statusReason %v", state, read.code, read.body["statusReason"])
		}
		if a := fx.do("PUT", "/fhir/R4/Task/"+refID, read.raw); a.code != http.StatusOK || fx.referrals.transitions != 0 {
			t.Errorf("%v: the Task written back as read: %d %s after %d transitions; want 200 and none", state, a.code, a.raw, fx.referrals.transitions)
		}
	}
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	coded := `{"resourceType":"Task","id":"` + refID + `","intent":"order","status":"on-hold",` +
		`"statusReason":{"coding":[{"system":"http://example.org/hold","code":"auth","display":"awaiting prior authorization"}]}}`
	if a := fx.do("PUT", "/fhir/R4/Task/"+refID, coded); a.code != http.StatusOK || len(fx.referrals.paused) != 1 ||
		fx.referrals.paused[0] != "awaiting prior authorization" {
		t.Fatalf("on-hold with a coded reason: %d %s, pauses %q", a.code, a.raw, fx.referrals.paused)
	}
	fx = newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	long := `{"resourceType":"Task","id":"` + refID + `","intent":"order","status":"cancelled","statusReason":{"text":"` + strings.Repeat("é", 501) + `"}}`
	if a := fx.do("PUT", "/fhir/R4/Task/"+refID, long); a.code != http.StatusBadRequest || fx.referrals.reads != 0 || fx.referrals.transitions != 0 {
		t.Fatalf("a reason of 501 characters: %d %s after %d reads; want 400 before any read", a.code, a.raw, fx.referrals.reads)
	}
}

// A referral completed straight from accepted (admitted on the spot) has
// no intake appointment; its Task's period is the admission, as the EHR
// wrote it back, and names no Appointment.
func TestAdmittedOnTheSpotTask(t *testing.T) {
	r := sampleReferral(referralsv1.ReferralState_REFERRAL_STATE_COMPLETED)
	r.IntakeAppointment = nil
	tk := task(r)
	p, _ := tk["executionPeriod"].(obj)
	if want := instant(r.GetTreatmentEntryTime()); p["start"] != want || p["end"] != want || tk["output"] != nil {
		t.Fatalf("admitted on the spot: executionPeriod %v, output %v; want the admission at %v and no appointment", p, tk["output"], want)
	}
	if got := businessCode(tk); got != "7.0" {
		t.Errorf("admitted on the spot: business status %s; want 7.0, the fulfilment completed, no event", got)
	}
}

// businessCode is the BSeR code of a Task's business status.
func businessCode(tk obj) string {
	bs, _ := tk["businessStatus"].(obj)
	codings, _ := bs["coding"].([]any)
	if len(codings) != 1 {
		return fmt.Sprint(bs)
	}
	c, _ := codings[0].(obj)
	return fmt.Sprint(c["code"])
}

// A referral completed without its booked intake (admitted while it was on
// hold, or well before the booked time): the appointment did not take
// place, and the Task's period does not end before it starts.
func TestCompletedWithoutTheBookedIntake(t *testing.T) {
	r := sampleReferral(referralsv1.ReferralState_REFERRAL_STATE_COMPLETED) // booked an hour from now, entered now
	if a := intakeAppointment(r); a["status"] != "cancelled" {
		t.Errorf("admitted an hour before the booked intake: appointment %v; want cancelled", a["status"])
	}
	p, _ := task(r)["executionPeriod"].(obj)
	if p["start"] != p["end"] {
		t.Errorf("admitted before the booked intake: executionPeriod %v; want it to start at the admission", p)
	}
	if got := businessCode(task(r)); got != "7.0" {
		t.Errorf("admitted an hour before the booked intake: business status %s; want 7.0, not the event's 5.1.4", got)
	}
	r.TreatmentEntryTime = ts(r.GetIntakeAppointment().GetStartTime().AsTime().Add(-10 * time.Minute))
	if a := intakeAppointment(r); a["status"] != "fulfilled" {
		t.Errorf("admitted ten minutes before the booked start: appointment %v; want fulfilled", a["status"])
	}
	if got := businessCode(task(r)); got != "5.1.4" {
		t.Errorf("admitted at the booked intake: business status %s; want 5.1.4, the event completed", got)
	}
	r.History = []*referralsv1.ReferralEvent{{FromState: referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD,
		ToState: referralsv1.ReferralState_REFERRAL_STATE_COMPLETED, Time: r.GetUpdateTime()}}
	if a := intakeAppointment(r); a["status"] != "cancelled" {
		t.Errorf("admitted while the intake was on hold: appointment %v; want cancelled", a["status"])
	}
	if got := businessCode(task(r)); got != "7.0" {
		t.Errorf("admitted while the intake was on hold: business status %s; want 7.0", got)
	}
	r.History[0].FromState = referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW
	if a := intakeAppointment(r); a["status"] != "noshow" {
		t.Errorf("admitted after missing the intake: appointment %v; want noshow, as it was", a["status"])
	}
	if got := businessCode(task(r)); got != "7.0" {
		t.Errorf("admitted after missing the intake: business status %s; want 7.0, not the event's 5.1.4", got)
	}
}

// manyFamilies is a clinic of n families of one member each, listed one
// at a time by index as the page token, the calls counted.
type manyFamilies struct {
	*fakeFamilies
	n     int
	calls atomic.Int32
}

func (f *manyFamilies) ListFamilies(_ context.Context, in *familiesv1.ListFamiliesRequest, _ ...grpc.CallOption) (*familiesv1.ListFamiliesResponse, error) {
	f.calls.Add(1)
	i := 0
	if in.GetPageToken() != "" {
		i, _ = strconv.Atoi(in.GetPageToken())
	}
	fam := sampleFamily()
	fam.Name = fmt.Sprintf("clinics/north/families/00000000-0000-4000-8000-%012d", i)
	fam.Members = fam.GetMembers()[:1]
	resp := &familiesv1.ListFamiliesResponse{Families: []*familiesv1.Family{fam}}
	if i+1 < f.n {
		resp.NextPageToken = strconv.Itoa(i + 1)
	}
	return resp, nil
}

// A RelatedPerson search of the whole clinic at the largest _count reads a
// bounded number of families, one call each, and links on to the rest.
func TestRelatedPersonPageReadsBoundedFamilies(t *testing.T) {
	const bound = 50
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED, familiesv1.InformationKind_INFORMATION_KIND_IDENTITY)
	many := &manyFamilies{fakeFamilies: fx.families, n: 400}
	h, err := New(Config{Families: many, Referrals: fx.referrals, Interventions: fakeInterventions{}, Verifier: fx.issuer.Verifier()})
	if err != nil {
		t.Fatal(err)
	}
	fx.h = h
	a := fx.do("GET", "/fhir/R4/RelatedPerson?_count=1000", "")
	if a.code != http.StatusOK {
		t.Fatalf("search: %d %s", a.code, a.raw)
	}
	entries, _ := a.body["entry"].([]any)
	if calls := many.calls.Load(); calls > bound || len(entries) != int(calls) {
		t.Fatalf("one page read %d families (%d members); want at most %d", calls, len(entries), bound)
	}
	next := false
	links, _ := a.body["link"].([]any)
	for _, l := range links {
		next = next || l.(map[string]any)["relation"] == "next"
	}
	if !next {
		t.Fatal("no next link to the families left")
	}
}

// A RelatedPerson page holds at most _count members, though a page of
// families can hold more: the rest follow through the next link.
func TestRelatedPersonPagesHoldCountMembers(t *testing.T) {
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED, familiesv1.InformationKind_INFORMATION_KIND_IDENTITY)
	var got []string
	path := "/fhir/R4/RelatedPerson?patient=" + famID + "&_count=1"
	for pages := 0; path != ""; pages++ {
		if pages > 3 {
			t.Fatalf("more pages than members: %v", got)
		}
		a := fx.do("GET", path, "")
		if a.code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, a.code, a.raw)
		}
		entries, _ := a.body["entry"].([]any)
		if len(entries) > 1 {
			t.Fatalf("GET %s: %d entries for _count=1", path, len(entries))
		}
		for _, e := range entries {
			got = append(got, e.(map[string]any)["resource"].(map[string]any)["id"].(string))
		}
		path = ""
		links, _ := a.body["link"].([]any)
		for _, l := range links {
			if l := l.(map[string]any); l["relation"] == "next" {
				u, err := url.Parse(l["url"].(string))
				if err != nil {
					t.Fatal(err)
				}
				path = u.RequestURI()
			}
		}
	}
	// The second member's id is long: its FHIR id carries a hash of it.
	if len(got) != 2 || got[0] != famID+".mom" || !strings.HasPrefix(got[1], famID+".H") {
		t.Fatalf("members over the pages: %v; want mom's, then the other's", got)
	}
	// Without _count, the services' page size (50): both in one page.
	if a := fx.do("GET", "/fhir/R4/RelatedPerson?patient="+famID, ""); a.code != http.StatusOK || len(a.body["entry"].([]any)) != 2 {
		t.Fatalf("without _count: %d %s", a.code, a.raw)
	}
	// Members removed since the last page: the next one holds what is
	// left of them, not an error for following a link this server gave.
	if a := fx.do("GET", "/fhir/R4/RelatedPerson?patient="+famID+"&page_token=m9."+famID+".", ""); a.code != http.StatusOK || a.body["entry"] != nil {
		t.Fatalf("a page token past the members: %d %s", a.code, a.raw)
	}
	// One given before page tokens named their family is followed still.
	if a := fx.do("GET", "/fhir/R4/RelatedPerson?patient="+famID+"&page_token=m1.", ""); a.code != http.StatusOK || len(a.body["entry"].([]any)) != 1 {
		t.Fatalf("a page token of the earlier form: %d %s", a.code, a.raw)
	}
	if a := fx.do("GET", "/fhir/R4/RelatedPerson?patient="+famID+"&page_token=x9.", ""); a.code != http.StatusBadRequest {
		t.Fatalf("a page token this server never gave: %d %s", a.code, a.raw)
	}
}

// A refused token is logged for the operator, with where it came from and
// why, and never the token itself; the caller hears only that it failed.
func TestRefusedTokensAreLogged(t *testing.T) {
	issuer, err := auth.NewIssuer("https://issuer.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := auth.NewIssuer("https://stranger.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	h, err := New(Config{Families: &fakeFamilies{family: sampleFamily()}, Referrals: &fakeReferrals{}, Interventions: fakeInterventions{},
		Verifier: issuer.Verifier(), Log: slog.New(slog.NewJSONHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, token, log string
		code             int
	}{
		{"another issuer's token", stranger.MustMint(auth.TokenOptions{Subject: "mallory", Clinic: "north", Roles: []auth.Role{auth.RoleEHR}}),
			"authentication failed", http.StatusUnauthorized},
		{"no token", "", "authentication failed", http.StatusUnauthorized},
		{"a token for every clinic", issuer.MustMint(auth.TokenOptions{Subject: "worker", Clinic: auth.AnyClinic, Roles: []auth.Role{auth.RoleWorker}}),
			"service token or one without a clinic refused", http.StatusForbidden},
		{"the worker's role for one clinic", issuer.MustMint(auth.TokenOptions{Subject: "admin-made", Clinic: "north", Roles: []auth.Role{auth.RoleWorker}}),
			"service token or one without a clinic refused", http.StatusForbidden},
	} {
		logs.Reset()
		req := httptest.NewRequest(http.MethodGet, "http://gateway.internal"+Prefix+"/Patient", nil)
		req.RemoteAddr = "203.0.113.9:4711"
		if c.token != "" {
			req.Header.Set("Authorization", "Bearer "+c.token)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != c.code {
			t.Errorf("%s: status %d, want %d", c.name, rec.Code, c.code)
		}
		line := logs.String()
		if !strings.Contains(line, c.log) || !strings.Contains(line, "203.0.113.9:4711") || !strings.Contains(line, `"level":"WARN"`) {
			t.Errorf("%s: log %q; want a WARN %q with the remote address", c.name, line, c.log)
		}
		if c.token != "" && strings.Contains(line, c.token) {
			t.Errorf("%s: the token is in the log", c.name)
		}
	}
}

// A read takes no parameter but _format and _pretty: one asking for part of the
// resource (_summary, _elements) is refused, not answered with all of it.
func TestReadRefusesParametersItIgnores(t *testing.T) {
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED,
		familiesv1.InformationKind_INFORMATION_KIND_IDENTITY, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	for _, q := range []string{"_summary=true", "_elements=name", "_format=json&foo=1"} {
		if a := fx.do("GET", "/fhir/R4/Patient/"+famID+"?"+q, ""); a.code != http.StatusBadRequest || issueCode(a) != "not-supported" {
			t.Errorf("?%s: %d %s; want 400 not-supported", q, a.code, a.raw)
		}
	}
	// _format and _pretty change only the layout: taken on reads and
	// searches alike.
	for _, path := range []string{"/fhir/R4/Patient/" + famID + "?_format=json", "/fhir/R4/Patient/" + famID + "?_pretty=true",
		"/fhir/R4/Task?_pretty=true"} {
		if a := fx.do("GET", path, ""); a.code != http.StatusOK {
			t.Fatalf("%s: %d %s", path, a.code, a.raw)
		}
	}
}

// Only JSON is written: a client that takes only XML, by _format or by
// Accept, is told 406 rather than sent a body it cannot read; one that
// takes JSON among others gets it.
func TestOnlyJSONIsWritten(t *testing.T) {
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED,
		familiesv1.InformationKind_INFORMATION_KIND_IDENTITY, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	for _, c := range []struct {
		path, accept string
		code         int
	}{
		{"/fhir/R4/Patient?_format=xml", "", http.StatusNotAcceptable},
		{"/fhir/R4/Patient/" + famID + "?_format=application/fhir%2Bxml", "", http.StatusNotAcceptable},
		{"/fhir/R4/metadata", "application/fhir+xml", http.StatusNotAcceptable},
		{"/fhir/R4/Patient", "application/fhir+json;q=0, application/fhir+xml", http.StatusNotAcceptable},
		{"/fhir/R4/RelatedPerson?_format=json&patient=" + famID, "", http.StatusOK},
		{"/fhir/R4/Patient/" + famID, "application/fhir+xml;q=0.9, application/fhir+json;q=0.5", http.StatusOK},
		{"/fhir/R4/metadata", "*/*", http.StatusOK},
		{"/fhir/R4/metadata?_format=JSON", "text/html,application/xhtml+xml", http.StatusOK},
		{"/fhir/R4/RelatedPerson?_format=application/FHIR%2BJSON&patient=" + famID, "application/fhir+xml", http.StatusOK},
		{"/fhir/R4/RelatedPerson?patient=" + famID, "application/json", http.StatusOK},
		// The type DSTU2 named, which older clients still send.
		{"/fhir/R4/Patient/" + famID, "application/json+fhir", http.StatusOK},
		{"/fhir/R4/metadata", "application/xml+fhir", http.StatusNotAcceptable},
		// Another FHIR version than R4 is not what is written here.
		{"/fhir/R4/metadata", "application/fhir+json; fhirVersion=3.0", http.StatusNotAcceptable},
		{"/fhir/R4/metadata", "application/fhir+json; fhirVersion=3.0, application/fhir+json; fhirVersion=4.0", http.StatusOK},
		{"/fhir/R4/Patient/" + famID, "application/fhir+json; fhirVersion=4.0.1", http.StatusOK},
		{"/fhir/R4/metadata?_format=application/fhir%2Bjson%3BfhirVersion=3.0", "", http.StatusNotAcceptable},
		{"/fhir/R4/metadata?_format=application/fhir%2Bjson%3BfhirVersion=4.0", "", http.StatusOK},
	} {
		var headers []string
		if c.accept != "" {
			headers = []string{"Accept", c.accept}
		}
		a := fx.do("GET", c.path, "", headers...)
		if a.code != c.code {
			t.Errorf("GET %s, Accept %q: %d %s; want %d", c.path, c.accept, a.code, a.raw, c.code)
		}
	}
}

// listedFamilies serves families in name order, one page at a time; a
// page token is the name of the last family given.
type listedFamilies struct {
	fakeFamilies
	list []*familiesv1.Family
	// failAfter, when set, is how many calls are answered before the
	// service becomes unavailable; calls counts them.
	failAfter, calls int
}

func (l *listedFamilies) ListFamilies(_ context.Context, in *familiesv1.ListFamiliesRequest, _ ...grpc.CallOption) (*familiesv1.ListFamiliesResponse, error) {
	if l.calls++; l.failAfter > 0 && l.calls > l.failAfter {
		return nil, status.Error(codes.Unavailable, "families is down")
	}
	var out []*familiesv1.Family
	for _, f := range l.list {
		if f.GetName() > in.GetPageToken() && len(out) < int(in.GetPageSize()) {
			out = append(out, f)
		}
	}
	resp := &familiesv1.ListFamiliesResponse{Families: out}
	if len(out) > 0 && out[len(out)-1] != l.list[len(l.list)-1] {
		resp.NextPageToken = out[len(out)-1].GetName()
	}
	return resp, nil
}

// familyOf is a family of the clinic north with members of the given ids.
func familyOf(id string, members ...string) *familiesv1.Family {
	f := &familiesv1.Family{Name: "clinics/north/families/" + id}
	for _, m := range members {
		f.Members = append(f.Members, &familiesv1.Member{Id: m, GivenName: m})
	}
	return f
}

// searchPages returns a reader of one page of a search through h, as a
// counselor: the ids of its entries and its next link.
func searchPages(t *testing.T, h http.Handler, issuer *auth.Issuer) func(path string) ([]string, string) {
	return func(path string) (ids []string, next string) {
		t.Helper()
		req := httptest.NewRequest(http.MethodGet, "http://gateway.internal"+path, nil)
		req.Header.Set("Authorization", "Bearer "+issuer.MustMint(auth.TokenOptions{Subject: "ehr", Clinic: "north", Roles: []auth.Role{auth.RoleCounselor}}))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var body struct {
			Entry []struct {
				Resource struct{ ID string } `json:"resource"`
			} `json:"entry"`
			Link []struct{ Relation, URL string } `json:"link"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || rec.Code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, rec.Code, rec.Body)
		}
		for _, e := range body.Entry {
			ids = append(ids, e.Resource.ID)
		}
		for _, l := range body.Link {
			if l.Relation == "next" {
				u, _ := url.Parse(l.URL)
				next = u.RequestURI()
			}
		}
		return ids, next
	}
}

// Members added or removed before the last one a page gave move it: the
// next page goes on after it wherever it now is, and skips or repeats no
// one, in the client's order.
func TestRelatedPersonPagesSurviveMembersChanging(t *testing.T) {
	issuer, err := auth.NewIssuer("https://issuer.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	a := familyOf("a0000000-0000-0000-0000-000000000001", "mom", "dad", "aunt", "uncle", "gran")
	fams := &listedFamilies{list: []*familiesv1.Family{a}}
	h, err := New(Config{Families: fams, Referrals: &fakeReferrals{}, Interventions: fakeInterventions{}, Verifier: issuer.Verifier()})
	if err != nil {
		t.Fatal(err)
	}
	get := searchPages(t, h, issuer)
	short := func(ids []string) (out []string) {
		for _, id := range ids {
			out = append(out, id[strings.LastIndex(id, ".")+1:])
		}
		return out
	}
	first, next := get(Prefix + "/RelatedPerson?_count=2")
	if !slices.Equal(short(first), []string{"mom", "dad"}) || next == "" {
		t.Fatalf("first page %v, next %q", first, next)
	}
	// Mom, given already, is removed: the page goes on at aunt, not uncle.
	a.Members = a.Members[1:]
	second, next := get(next)
	if !slices.Equal(short(second), []string{"aunt", "uncle"}) || next == "" {
		t.Fatalf("the page after a member given was removed: %v; want aunt and uncle", second)
	}
	// A member added at the front: the page goes on at gran, not uncle
	// again.
	a.Members = append([]*familiesv1.Member{{Id: "kid", GivenName: "kid"}}, a.Members...)
	if third, _ := get(next); !slices.Equal(short(third), []string{"gran"}) {
		t.Fatalf("the page after a member was added at the front: %v; want gran", third)
	}
}

// A family whose members spanned a page is deleted before the next page
// is read: the next page starts the family after it from its first
// member, not that many members in.
func TestRelatedPersonPagesSurviveAFamilyGone(t *testing.T) {
	issuer, err := auth.NewIssuer("https://issuer.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	a, b := familyOf("a0000000-0000-0000-0000-000000000001", "mom", "dad", "aunt"), familyOf("b0000000-0000-0000-0000-000000000002", "sis", "bro")
	fams := &listedFamilies{list: []*familiesv1.Family{a, b}}
	h, err := New(Config{Families: fams, Referrals: &fakeReferrals{}, Interventions: fakeInterventions{}, Verifier: issuer.Verifier()})
	if err != nil {
		t.Fatal(err)
	}
	get := searchPages(t, h, issuer)
	first, next := get(Prefix + "/RelatedPerson?_count=2")
	if len(first) != 2 || next == "" {
		t.Fatalf("first page %v, next %q; want two of the first family's members and a next link", first, next)
	}
	fams.list = []*familiesv1.Family{b}
	second, _ := get(next)
	if len(second) != 2 || !strings.HasSuffix(second[0], ".sis") || !strings.HasSuffix(second[1], ".bro") {
		t.Fatalf("the page after the first family went: %v; want both of the second's members", second)
	}
	// The families service failing after a family was read (and recorded
	// as disclosed): what was read goes out, with a next link that reads
	// again from the family that failed.
	fams.list, fams.calls, fams.failAfter = []*familiesv1.Family{a, b}, 0, 1
	short, next := get(Prefix + "/RelatedPerson?_count=10")
	if len(short) != 3 || !strings.HasSuffix(short[0], ".mom") || next == "" {
		t.Fatalf("the page when the second read failed: %v, next %q; want the first family's three members and a next link", short, next)
	}
	fams.failAfter = 0
	if rest, _ := get(next); len(rest) != 2 || !strings.HasSuffix(rest[0], ".sis") {
		t.Fatalf("the page after the failed read: %v; want the second family's members", rest)
	}
}

// A family member's own referral is a ServiceRequest of the family's
// Patient (FHIR requires a Patient subject) but a Task for the member: a
// Task search by patient or subject asks for the loved one's referrals
// only, a ServiceRequest search for all of the family's.
func TestMemberReferralTaskIsForTheMember(t *testing.T) {
	member := sampleReferral(referralsv1.ReferralState_REFERRAL_STATE_REQUESTED)
	member.Subject = &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_FAMILY_MEMBER, MemberId: "mom"}
	fam := lastSegment(member.GetFamily())
	if got := task(member)["for"]; !reflect.DeepEqual(got, ref("RelatedPerson", pairID(fam, "mom"))) {
		t.Fatalf("a member's Task is for %v; want the member's RelatedPerson", got)
	}
	// The member is the request's patient, contained and linked to the
	// member's RelatedPerson, never the loved one's Patient.
	sr := serviceRequest(member)
	contained, _ := sr["contained"].([]any)
	if len(contained) != 1 {
		t.Fatalf("a member's ServiceRequest contains %v; want the member as a Patient", sr["contained"])
	}
	patientOf := contained[0].(obj)
	if got := sr["subject"]; !reflect.DeepEqual(got, obj{"reference": "#" + fmt.Sprint(patientOf["id"])}) || patientOf["resourceType"] != "Patient" ||
		!reflect.DeepEqual(patientOf["link"], []any{obj{"other": ref("RelatedPerson", pairID(fam, "mom")), "type": "seealso"}}) {
		t.Fatalf("a member's ServiceRequest: subject %v, contained %v; want the contained Patient linked to the member", got, patientOf)
	}
	// And R4 takes it as a ServiceRequest.
	mustBeR4(t, "a member's ServiceRequest", sr)
	if got := serviceRequest(sampleReferral(referralsv1.ReferralState_REFERRAL_STATE_REQUESTED))["subject"]; !reflect.DeepEqual(got, ref("Patient", fam)) {
		t.Fatalf("the loved one's ServiceRequest subject is %v; want the Patient", got)
	}
	own := sampleReferral(referralsv1.ReferralState_REFERRAL_STATE_REQUESTED)
	if got := task(own)["for"]; !reflect.DeepEqual(got, ref("Patient", fam)) {
		t.Fatalf("the loved one's Task is for %v; want the Patient", got)
	}
	for _, c := range []struct {
		path string
		own  bool
	}{
		{"/fhir/R4/Task?patient=" + famID, true},
		{"/fhir/R4/Task?subject=Patient/" + famID, true},
		{"/fhir/R4/Task", false},
		{"/fhir/R4/ServiceRequest?patient=" + famID, true},
		{"/fhir/R4/ServiceRequest?subject=Patient/" + famID, true},
		{"/fhir/R4/ServiceRequest", false},
	} {
		fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
		if a := fx.do("GET", c.path, ""); a.code != http.StatusOK || len(fx.referrals.filters) != 1 {
			t.Fatalf("%s: %d %s, %d lists", c.path, a.code, a.raw, len(fx.referrals.filters))
		}
		if got := strings.Contains(fx.referrals.filters[0], lovedOnesOwn); got != c.own {
			t.Errorf("%s: filter %q; want the loved one's own only: %v", c.path, fx.referrals.filters[0], c.own)
		}
	}
}

// A searchset's timestamp is when the search began, not when it ended: a
// client polling by _lastUpdated from it must not skip a change made
// while the search ran.
func TestSearchsetTimestampPrecedesTheSearch(t *testing.T) {
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	a := fx.do("GET", "/fhir/R4/Task?patient="+famID, "")
	if a.code != http.StatusOK {
		t.Fatalf("search: %d %s", a.code, a.raw)
	}
	stamp, err := time.Parse(time.RFC3339Nano, a.body["timestamp"].(string))
	if err != nil {
		t.Fatal(err)
	}
	if !stamp.Before(fx.referrals.listed) {
		t.Fatalf("the searchset's timestamp %v is not before the search's read at %v", stamp, fx.referrals.listed)
	}
}

// An answer that follows a read of the referral (a step refused for its
// state, a stale version resent, an intake not booked) tells of it: it
// carries the Part 2 labels and notice as the Task would. One refused
// before any read tells nothing, and carries none.
func TestAnswersAfterADisclosureCarryTheNotice(t *testing.T) {
	labelled := func(a answer) bool {
		meta, _ := a.body["meta"].(map[string]any)
		sec, _ := json.Marshal(meta["security"])
		text, _ := a.body["text"].(map[string]any)
		div, _ := text["div"].(string)
		return strings.Contains(string(sec), `"42CFRPart2"`) && strings.Contains(div, part2Notice)
	}
	accept := `{"resourceType":"Task","id":"` + refID + `","intent":"order","status":"accepted"}`
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	fx.referrals.refuse = apperr.InvalidTransition(fx.referrals.referral.GetName(), "COMPLETED", "ACCEPTED")
	if a := fx.do("PUT", "/fhir/R4/Task/"+refID, accept); a.code < 400 || a.code >= 500 || !labelled(a) {
		t.Fatalf("a step refused for the referral's state: %d %s; want a 4xx under the notice", a.code, a.raw)
	}
	fx = newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_ACCEPTED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	if a := fx.do("PUT", "/fhir/R4/Task/"+refID, accept, "If-Match", `W/"v999"`); a.code != http.StatusPreconditionFailed || !labelled(a) {
		t.Fatalf("the current status resent with a stale version: %d %s; want 412 under the notice", a.code, a.raw)
	}
	if a := fx.do("PUT", "/fhir/R4/Task/"+refID, accept, "Idempotency-Key", strings.Repeat("k", 65)); a.code != http.StatusBadRequest || labelled(a) {
		t.Fatalf("a PUT refused before any read: %d %s; want 400 without the notice", a.code, a.raw)
	}
	fx.referrals.referral.IntakeAppointment = nil
	if a := fx.do("GET", "/fhir/R4/Appointment/"+intakePrefix+refID, ""); a.code != http.StatusNotFound || !labelled(a) {
		t.Fatalf("the intake appointment of a referral with none booked: %d %s; want 404 under the notice", a.code, a.raw)
	}
	// The family was read (and its disclosure recorded) to look for the
	// member: that it has none of that id is told under the notice.
	fx = newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED, familiesv1.InformationKind_INFORMATION_KIND_IDENTITY)
	if a := fx.do("GET", "/fhir/R4/RelatedPerson/"+famID+".nobody", ""); a.code != http.StatusNotFound || !labelled(a) {
		t.Fatalf("a member the family does not have: %d %s; want 404 under the notice", a.code, a.raw)
	}
	if a := fx.do("GET", "/fhir/R4/RelatedPerson/"+famID+".mom", ""); a.code != http.StatusOK || !labelled(a) {
		t.Fatalf("a member the family has: %d %s; want 200 under the notice", a.code, a.raw)
	}
}

// A search body over the limit is 413 whether or not it gave its length
// (a chunked body is cut off as it is read).
func TestOversizedSearchBodyIsTooLarge(t *testing.T) {
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	body := "patient=" + famID + "&_id=" + strings.Repeat("x", 2<<20)
	for _, chunked := range []bool{false, true} {
		req := httptest.NewRequest("POST", "http://gateway.internal/fhir/R4/Task/_search", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Authorization", "Bearer "+fx.issuer.MustMint(auth.TokenOptions{Subject: "ehr", Clinic: "north", Roles: []auth.Role{auth.RoleEHR}}))
		if chunked {
			req.ContentLength = -1
		}
		rec := httptest.NewRecorder()
		fx.h.ServeHTTP(rec, req)
		if rec.Code != http.StatusRequestEntityTooLarge {
			t.Errorf("chunked %v: %d %s; want 413", chunked, rec.Code, rec.Body.String())
		}
	}
}

// A path with a trailing slash is no interaction: 404, not a 405 whose
// Allow names the method just refused.
func TestTrailingSlashIsNotFound(t *testing.T) {
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED, familiesv1.InformationKind_INFORMATION_KIND_IDENTITY)
	for _, path := range []string{"/fhir/R4/Patient/", "/fhir/R4/Patient/" + famID + "/"} {
		if a := fx.do("GET", path, ""); a.code != http.StatusNotFound || a.header.Get("Allow") != "" || a.body["resourceType"] != "OperationOutcome" {
			t.Errorf("GET %s: %d, Allow %q, %s; want 404 with an OperationOutcome", path, a.code, a.header.Get("Allow"), a.raw)
		}
	}
	if a := fx.do("GET", "/fhir/R4/Patient", ""); a.code != http.StatusOK {
		t.Errorf("GET /fhir/R4/Patient: %d %s", a.code, a.raw)
	}
}

// errReader fails its first read, as a client that hangs up mid-body.
type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

// A Task body that cannot be read, short of the limit, is the client's
// fault (400), not one too large (413).
func TestUnreadableTaskBodyIsBadRequest(t *testing.T) {
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	req := httptest.NewRequest("PUT", "http://gateway.internal/fhir/R4/Task/"+refID, errReader{})
	req.ContentLength = -1
	req.Header.Set("Content-Type", "application/fhir+json")
	req.Header.Set("Authorization", "Bearer "+fx.issuer.MustMint(auth.TokenOptions{Subject: "ehr", Clinic: "north", Roles: []auth.Role{auth.RoleEHR}}))
	rec := httptest.NewRecorder()
	fx.h.ServeHTTP(rec, req)
	if rec.Code != http.StatusBadRequest {
		t.Fatalf("an unreadable Task body: %d %s; want 400", rec.Code, rec.Body.String())
	}
}

// HEAD would run a read or a search, and the services would record as
// disclosed what an answer cut to its headers never sends: refused, but
// for the CapabilityStatement, which discloses nothing.
func TestHeadIsRefusedWhereItWouldDisclose(t *testing.T) {
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED,
		familiesv1.InformationKind_INFORMATION_KIND_IDENTITY, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	for _, path := range []string{"/fhir/R4/Patient/" + famID, "/fhir/R4/Task?patient=" + famID, "/fhir/R4/Patient"} {
		if a := fx.do("HEAD", path, ""); a.code != http.StatusMethodNotAllowed || a.header.Get("Allow") != "GET" {
			t.Errorf("HEAD %s: %d, Allow %q; want 405, GET", path, a.code, a.header.Get("Allow"))
		}
	}
	if a := fx.do("HEAD", "/fhir/R4/metadata", ""); a.code != http.StatusOK {
		t.Errorf("HEAD metadata: %d", a.code)
	}
}

// A birth date stored before dates were checked as dates (1994-02-30) is
// left out of the Patient, not a reason to fail its every read.
func TestImpossibleBirthDateIsLeftOut(t *testing.T) {
	fx := newFixture(t, "", referralsv1.ReferralState_REFERRAL_STATE_REQUESTED, familiesv1.InformationKind_INFORMATION_KIND_IDENTITY)
	// Year 0000 too: Go parses it, and FHIR's date has no such year.
	for _, bd := range []string{"1994-02-30", "0000-01-01"} {
		fx.families.family.LovedOne.BirthDate = bd
		a := fx.do("GET", "/fhir/R4/Patient/"+famID, "")
		if a.code != http.StatusOK || a.body["birthDate"] != nil || a.body["resourceType"] != "Patient" {
			t.Fatalf("a Patient with an impossible birth date %s: %d %s; want it, without the date", bd, a.code, a.raw)
		}
	}
	fx.families.family.LovedOne.BirthDate = "1994-03-02"
	if a := fx.do("GET", "/fhir/R4/Patient/"+famID, ""); a.body["birthDate"] != "1994-03-02" {
		t.Fatalf("a real birth date: %s", a.raw)
	}
}

// Every referral state has a Task status (searched for through the
// referrals service's fhir_task_status, which the gateway's FHIR test
// checks against these); a referral voided as entered in error says so on
// the request, the Task (with the reason given) and its appointment.
func TestEnteredInErrorReferral(t *testing.T) {
	for v, name := range referralsv1.ReferralState_name {
		st := referralsv1.ReferralState(v)
		if st == referralsv1.ReferralState_REFERRAL_STATE_UNSPECIFIED {
			continue
		}
		if !taskstatus.Known(taskstatus.Of(st)) {
			t.Errorf("%s: Task status %q", name, taskstatus.Of(st))
		}
	}
	r := sampleReferral(referralsv1.ReferralState_REFERRAL_STATE_ENTERED_IN_ERROR)
	r.History = append(r.History, &referralsv1.ReferralEvent{FromState: referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED,
		ToState: referralsv1.ReferralState_REFERRAL_STATE_ENTERED_IN_ERROR, Reason: "the wrong family", Time: r.GetUpdateTime()})
	if sr := serviceRequest(r); sr["status"] != "entered-in-error" {
		t.Errorf("ServiceRequest status %v", sr["status"])
	}
	tk := task(r)
	if tk["status"] != "entered-in-error" || fmt.Sprint(tk["statusReason"]) != fmt.Sprint(concept("the wrong family")) ||
		fmt.Sprint(tk["businessStatus"]) != fmt.Sprint(concept("entered in error")) {
		t.Errorf("Task status %v, reason %v, business status %v", tk["status"], tk["statusReason"], tk["businessStatus"])
	}
	if a := intakeAppointment(r); a["status"] != "entered-in-error" {
		t.Errorf("appointment status %v", a["status"])
	}
}
