package webhooks_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	webhooksv1 "github.com/handoff-health/handoff/gen/go/handoff/webhooks/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/gateway"
	"github.com/handoff-health/handoff/services/grpcclient"
	"github.com/handoff-health/handoff/services/loopback"
	"github.com/handoff-health/handoff/services/stack/stacktest"
	"github.com/handoff-health/handoff/services/webhooks"
	"github.com/handoff-health/handoff/workflows/ids"
)

// liveReceiver is a real HTTP endpoint on a fixed 127.0.0.1 port that can
// be taken down (connections refused) and brought back, and that fails
// chosen notifications with 503. It verifies every signature, drops
// duplicates by Handoff-Webhook-Id, and records notifications in arrival
// order.
type liveReceiver struct {
	t      *testing.T
	addr   string
	secret string

	mu       sync.Mutex
	srv      *http.Server
	got      []map[string]any
	seen     map[string]bool
	attempts map[string]int // per delivery id, including refused ones the receiver saw
	fail     func(id string, n map[string]any, attempt int) bool
}

func newLiveReceiver(t *testing.T) *liveReceiver {
	// A port kept free of other listeners and of outgoing connections'
	// ports (loopback): it stays unbound while the receiver is down.
	addr, err := loopback.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	r := &liveReceiver{t: t, addr: addr, seen: map[string]bool{}, attempts: map[string]int{}} // down until up()
	t.Cleanup(r.down)
	return r
}

func (r *liveReceiver) url() string { return "http://" + r.addr + "/handoff/hooks" }

func (r *liveReceiver) up() {
	r.t.Helper()
	lis, err := net.Listen("tcp", r.addr)
	if err != nil {
		r.t.Fatalf("receiver back on %s: %v", r.addr, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(r.serve), ReadHeaderTimeout: 5 * time.Second}
	r.mu.Lock()
	r.srv = srv
	r.mu.Unlock()
	go func() { _ = srv.Serve(lis) }()
}

func (r *liveReceiver) down() {
	r.mu.Lock()
	srv := r.srv
	r.srv = nil
	r.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

func (r *liveReceiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := webhooks.Verify(r.secret, req.Header.Get(webhooks.SignatureHeader), body, time.Now()); err != nil {
		r.t.Errorf("receiver: %v", err)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var n map[string]any
	if err := json.Unmarshal(body, &n); err != nil {
		r.t.Errorf("receiver: %v", err)
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	id := req.Header.Get(webhooks.IDHeader)
	r.attempts[id]++
	if r.fail != nil && r.fail(id, n, r.attempts[id]) {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	if !r.seen[id] {
		r.seen[id] = true
		r.got = append(r.got, n)
	}
	w.WriteHeader(http.StatusOK)
}

func (r *liveReceiver) received() []map[string]any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]map[string]any(nil), r.got...)
}

type stackEnv struct {
	sys     *stacktest.Env
	fam     familiesv1.FamiliesServiceClient
	ref     referralsv1.ReferralsServiceClient
	hooks   webhooksv1.WebhooksServiceClient
	counsel context.Context
	admin   context.Context
	as      func(subject string, roles ...auth.Role) context.Context
}

func startStack(t *testing.T) *stackEnv {
	current = t
	sys := stacktest.Start(t)
	dial := func(addr string) *grpc.ClientConn {
		conn, err := grpcclient.Dial(addr, grpcclient.Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	if sys.Stack.WebhooksAddr == "" {
		t.Fatal("the stack runs no webhooks service")
	}
	as := func(subject string, roles ...auth.Role) context.Context {
		return auth.WithToken(context.Background(), sys.Token(subject, roles...))
	}
	return &stackEnv{
		sys:     sys,
		fam:     familiesv1.NewFamiliesServiceClient(dial(sys.Stack.FamiliesAddr)),
		ref:     referralsv1.NewReferralsServiceClient(dial(sys.Stack.ReferralsAddr)),
		hooks:   webhooksv1.NewWebhooksServiceClient(dial(sys.Stack.WebhooksAddr)),
		counsel: as("counselor-1", auth.RoleCounselor), admin: as("admin-1", auth.RoleClinicAdmin),
		as: as,
	}
}

// current is the running stack test; these tests do not run in parallel,
// and ok needs it to fail the test from a one-line call.
var current *testing.T

// ok returns v, failing the test on err.
func ok[T any](v T, err error) T {
	current.Helper()
	if err != nil {
		current.Fatal(err)
	}
	return v
}

// setupClinic creates a family counseling program and a family.
func (e *stackEnv) setupClinic(t *testing.T) (program string, family *familiesv1.Family) {
	p := ok(e.ref.CreateProgram(e.admin, &referralsv1.CreateProgramRequest{Parent: "clinics/north", Program: &referralsv1.Program{
		DisplayName: "Family counseling center", Services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_FAMILY_COUNSELING},
		PaymentsAccepted: []referralsv1.PaymentKind{referralsv1.PaymentKind_PAYMENT_KIND_MEDICAID}}}))
	ok(e.ref.ReportCapacity(e.admin, &referralsv1.ReportCapacityRequest{Name: p.GetName(), AvailableSlots: 20}))
	f := ok(e.fam.CreateFamily(e.counsel, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: &familiesv1.Family{
		LovedOne: &familiesv1.LovedOne{GivenName: "Sam"}, Counselor: "counselor-1",
		Coverage: &familiesv1.Coverage{Kind: familiesv1.CoverageKind_COVERAGE_KIND_MEDICAID}}}))
	return p.GetName(), f
}

// consent records the family's consent to disclose its referrals and
// appointments to recipient.
func (e *stackEnv) consent(f *familiesv1.Family, recipient string) {
	now := time.Now()
	ok(e.fam.CreateConsent(e.counsel, &familiesv1.CreateConsentRequest{Parent: f.GetName(), Consent: &familiesv1.Consent{
		Discloser: "North clinic",
		Information: []familiesv1.InformationKind{familiesv1.InformationKind_INFORMATION_KIND_REFERRALS,
			familiesv1.InformationKind_INFORMATION_KIND_APPOINTMENTS},
		Recipients:            []string{recipient},
		Purposes:              []familiesv1.Purpose{familiesv1.Purpose_PURPOSE_TREATMENT},
		ExpireTime:            timestamppb.New(now.AddDate(1, 0, 0)),
		Signer:                "Sam",
		SignTime:              timestamppb.New(now.Add(-time.Hour)),
		RevocationRightStated: true,
	}}))
}

func (e *stackEnv) referral(t *testing.T, program string, f *familiesv1.Family) *referralsv1.Referral {
	return ok(e.ref.CreateReferral(e.counsel, &referralsv1.CreateReferralRequest{Parent: "clinics/north", Referral: &referralsv1.Referral{
		Family: f.GetName(), Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE},
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_FAMILY_COUNSELING, Program: program,
		Urgency: referralsv1.Urgency_URGENCY_ROUTINE, Reason: "family counseling"}}))
}

// The EHR's endpoint is down while referrals change, comes back, and fails
// one notification a few more times: it still gets every change, in order
// per referral, each one signed.
func TestReceiverSurvivesItsDowntime(t *testing.T) {
	e := startStack(t)
	program, f := e.setupClinic(t)
	rcv := newLiveReceiver(t)
	ehr := e.as("ehr-1", auth.RoleEHR)
	sub := ok(e.hooks.CreateSubscription(ehr, &webhooksv1.CreateSubscriptionRequest{Parent: "clinics/north",
		Subscription: &webhooksv1.Subscription{Url: rcv.url(),
			Topics: []webhooksv1.Topic{webhooksv1.Topic_TOPIC_REFERRAL_CHANGED, webhooksv1.Topic_TOPIC_APPOINTMENT_CHANGED}}}))
	rcv.secret = sub.GetSecret()
	// The EHR hears of the family's referrals only under its consent.
	e.consent(f, "ehr-1")

	// Eight changes to three referrals while the receiver is down.
	want := map[string][]string{}
	note := func(r *referralsv1.Referral, event string) {
		want[r.GetName()] = append(want[r.GetName()], "handoff.referrals.v1.referral."+event)
	}
	r1, r2, r3 := e.referral(t, program, f), e.referral(t, program, f), e.referral(t, program, f)
	note(r1, "created")
	note(r2, "created")
	note(r3, "created")
	ok(e.ref.AcceptReferral(e.counsel, &referralsv1.TransitionReferralRequest{Name: r2.GetName()}))
	note(r2, "accepted")
	ok(e.ref.AcceptReferral(e.counsel, &referralsv1.TransitionReferralRequest{Name: r1.GetName()}))
	note(r1, "accepted")
	ok(e.ref.CancelReferral(e.counsel, &referralsv1.TransitionReferralRequest{Name: r3.GetName(), Reason: "duplicate"}))
	note(r3, "cancelled")
	ok(e.ref.ScheduleReferral(e.counsel, &referralsv1.ScheduleReferralRequest{Name: r1.GetName(),
		IntakeAppointment: &referralsv1.IntakeAppointment{StartTime: timestamppb.New(time.Now().Add(24 * time.Hour))}}))
	note(r1, "scheduled")
	ok(e.ref.ScheduleReferral(e.counsel, &referralsv1.ScheduleReferralRequest{Name: r2.GetName(),
		IntakeAppointment: &referralsv1.IntakeAppointment{StartTime: timestamppb.New(time.Now().Add(48 * time.Hour))}}))
	note(r2, "scheduled")

	deliveries := func(filter string) []*webhooksv1.Delivery {
		resp := ok(e.hooks.ListDeliveries(e.admin, &webhooksv1.ListDeliveriesRequest{Parent: sub.GetName(), Filter: filter}))
		return resp.GetDeliveries()
	}
	// Every change is queued and the first of each referral has been tried
	// against the dead endpoint more than once.
	stacktest.Eventually(t, 20*time.Second, "retries against the dead endpoint", func() bool {
		ds := deliveries("")
		retried := 0
		for _, d := range ds {
			if d.GetAttemptCount() >= 2 {
				retried++
			}
		}
		return len(ds) == 8 && retried == 3
	})
	if got := rcv.received(); len(got) != 0 {
		t.Fatalf("received %d notifications while down", len(got))
	}

	// Back up, but r2's "accepted" fails three more times.
	accepted := deliveries(`resource = "` + r2.GetName() + `" AND event_type = "handoff.referrals.v1.referral.accepted"`)
	if len(accepted) != 1 {
		t.Fatalf("r2 accepted: %d deliveries", len(accepted))
	}
	acceptedID := aipID(accepted[0].GetName())
	rcv.mu.Lock()
	rcv.fail = func(_ string, n map[string]any, attempt int) bool {
		return n["id"] == acceptedID && attempt <= 3
	}
	rcv.mu.Unlock()
	rcv.up()

	stacktest.Eventually(t, 30*time.Second, "all eight notifications", func() bool { return len(rcv.received()) == 8 })
	got := map[string][]string{}
	types := eventTypes(t, e.hooks, e.admin, sub.GetName())
	for _, n := range rcv.received() {
		res, _ := n["resource"].(string)
		id, _ := n["id"].(string)
		got[res] = append(got[res], types[id])
		if n["data"] != nil || n["topic"] != "REFERRAL_CHANGED" {
			t.Errorf("notification %v: want id-only under REFERRAL_CHANGED", n)
		}
	}
	for name, events := range want {
		if len(got[name]) != len(events) {
			t.Fatalf("%s: received %v, want %v", name, got[name], events)
		}
		for i := range events {
			if got[name][i] != events[i] {
				t.Fatalf("%s out of order: received %v, want %v", name, got[name], events)
			}
		}
	}
	for _, d := range deliveries(`resource = "` + r2.GetName() + `" AND event_type = "handoff.referrals.v1.referral.accepted"`) {
		rcv.mu.Lock()
		seen := rcv.attempts[aipID(d.GetName())]
		rcv.mu.Unlock()
		if seen != 4 || d.GetAttemptCount() < 4 {
			t.Fatalf("r2 accepted: receiver saw %d attempts, sender made %d; want 4 and at least 4", seen, d.GetAttemptCount())
		}
	}
	// The receiver counts a POST before the sender records it as delivered.
	stacktest.Eventually(t, 10*time.Second, "eight deliveries recorded as delivered", func() bool { return len(deliveries("state = DELIVERED")) == 8 })
	if dead := deliveries("state = DEAD"); len(dead) != 0 {
		t.Fatalf("dead letters: %v", dead)
	}
}

// The EHR hears that the loved one was admitted while Temporal is away:
// the webhook notifications read the outbox apart from the Temporal
// dispatch, which this same event needs (it starts the TreatmentEntered
// workflow), and so wait on no Temporal. Once Temporal is back, the
// dispatch catches up.
func TestNotificationsDoNotWaitOnTemporal(t *testing.T) {
	e := startStack(t)
	p := ok(e.ref.CreateProgram(e.admin, &referralsv1.CreateProgramRequest{Parent: "clinics/north", Program: &referralsv1.Program{
		DisplayName: "Riverside outpatient", Services: []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT},
		PaymentsAccepted: []referralsv1.PaymentKind{referralsv1.PaymentKind_PAYMENT_KIND_MEDICAID}}}))
	ok(e.ref.ReportCapacity(e.admin, &referralsv1.ReportCapacityRequest{Name: p.GetName(), AvailableSlots: 5}))
	_, f := e.setupClinic(t)
	e.consent(f, "ehr-1")
	rcv := newLiveReceiver(t)
	rcv.up()
	sub := ok(e.hooks.CreateSubscription(e.as("ehr-1", auth.RoleEHR), &webhooksv1.CreateSubscriptionRequest{Parent: "clinics/north",
		Subscription: &webhooksv1.Subscription{Url: rcv.url(), Topics: []webhooksv1.Topic{webhooksv1.Topic_TOPIC_REFERRAL_CHANGED}}}))
	rcv.secret = sub.GetSecret()
	r := ok(e.ref.CreateReferral(e.counsel, &referralsv1.CreateReferralRequest{Parent: "clinics/north", Referral: &referralsv1.Referral{
		Family: f.GetName(), Subject: &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE},
		ServiceKind: referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT, Program: p.GetName(), Urgency: referralsv1.Urgency_URGENCY_URGENT,
		Reason: "outpatient care"}}))
	ok(e.ref.AcceptReferral(e.counsel, &referralsv1.TransitionReferralRequest{Name: r.GetName()}))
	stacktest.Eventually(t, 20*time.Second, "the created and accepted notifications", func() bool { return len(rcv.received()) == 2 })

	e.sys.RelayProxy.Cut()
	ok(e.ref.CompleteReferral(e.counsel, &referralsv1.CompleteReferralRequest{Name: r.GetName()}))
	stacktest.Eventually(t, 20*time.Second, "the admission's notification while Temporal is away", func() bool { return len(rcv.received()) == 3 })
	entered := ids.TreatmentEntered(r.GetName())
	if _, err := e.sys.Temporal.DescribeWorkflowExecution(context.Background(), entered, ""); err == nil {
		t.Fatal("the dispatch reached Temporal through the cut: the test proves nothing")
	}
	e.sys.RelayProxy.Restore()
	stacktest.Eventually(t, 30*time.Second, "the dispatch catching up", func() bool {
		_, err := e.sys.Temporal.DescribeWorkflowExecution(context.Background(), entered, "")
		return err == nil
	})
	if got := rcv.received(); len(got) != 3 {
		t.Fatalf("%d notifications after Temporal came back; want the 3, each once", len(got))
	}
}

// A FULL subscription of the EHR gets nothing until the patient consents
// to the disclosure to its owner, and the data (with the Part 2 notice)
// after, each disclosure recorded in the family's accounting.
func TestFullPayloadNeedsConsent(t *testing.T) {
	e := startStack(t)
	program, f := e.setupClinic(t)
	rcv := newLiveReceiver(t)
	// The EHR subscribes through the REST gateway.
	rest := e.gateway(t)
	var sub struct{ Name, Secret, Owner, Payload string }
	rest.do(http.MethodPost, "/v1/clinics/north/subscriptions", e.sys.Token("ehr-full", auth.RoleEHR),
		`{"url": "`+rcv.url()+`", "topics": ["TOPIC_REFERRAL_CHANGED"], "payload": "PAYLOAD_KIND_FULL"}`, http.StatusOK, &sub)
	if sub.Owner != "ehr-full" || sub.Secret == "" || sub.Payload != "PAYLOAD_KIND_FULL" {
		t.Fatalf("created over REST: %+v", sub)
	}
	rcv.secret = sub.Secret
	// The notification that carries data fails twice before it lands: the
	// accounting must still list one disclosure, not one per attempt.
	rcv.fail = func(_ string, n map[string]any, attempt int) bool { return n["data"] != nil && attempt <= 2 }
	rcv.up()

	r := e.referral(t, program, f)
	// Before consent the EHR hears nothing of the referral: withheld.
	stacktest.Eventually(t, 20*time.Second, "the first notification withheld", func() bool {
		return len(ok(e.hooks.ListDeliveries(e.admin, &webhooksv1.ListDeliveriesRequest{Parent: sub.Name, Filter: "state = WITHDRAWN"})).GetDeliveries()) == 1
	})
	if got := rcv.received(); len(got) != 0 {
		t.Fatalf("before consent: %v", got)
	}

	e.consent(f, "ehr-full")
	ok(e.ref.AcceptReferral(e.counsel, &referralsv1.TransitionReferralRequest{Name: r.GetName()}))
	stacktest.Eventually(t, 20*time.Second, "the notification after consent", func() bool { return len(rcv.received()) == 1 })
	n := rcv.received()[0]
	data, _ := n["data"].(map[string]any)
	if data["name"] != r.GetName() || data["state"] != "REFERRAL_STATE_ACCEPTED" || n["notice"] != webhooks.Notice {
		t.Fatalf("after consent: %v", n)
	}
	rcv.mu.Lock()
	tries := rcv.attempts[n["id"].(string)]
	rcv.mu.Unlock()
	if tries != 3 {
		t.Fatalf("the notification with data took %d attempts, want 3", tries)
	}
	var listed struct {
		Deliveries []struct{ State, Resource string }
	}
	// The receiver counts a POST before the sender records it as delivered.
	stacktest.Eventually(t, 10*time.Second, "the delivery listed as delivered over REST", func() bool {
		listed.Deliveries = nil
		rest.do(http.MethodGet, "/v1/"+sub.Name+"/deliveries?filter="+url.QueryEscape("state = DELIVERED"),
			e.sys.Token("admin-1", auth.RoleClinicAdmin), "", http.StatusOK, &listed)
		return len(listed.Deliveries) == 1
	})
	rest.do(http.MethodGet, "/v1/"+sub.Name+"/deliveries", e.sys.Token("ehr-full", auth.RoleEHR), "", http.StatusForbidden, nil)
	ds := ok(e.fam.ListDisclosures(e.counsel, &familiesv1.ListDisclosuresRequest{Parent: f.GetName()})).GetDisclosures()
	if len(ds) != 1 || ds[0].GetRecipient() != "ehr-full" || ds[0].GetResource() != r.GetName() ||
		ds[0].GetChannel() != familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_WEBHOOK ||
		ds[0].GetInformation() != familiesv1.InformationKind_INFORMATION_KIND_REFERRALS {
		t.Fatalf("accounting of disclosures: %v", ds)
	}
}

// restClient calls the REST gateway.
type restClient struct {
	t    *testing.T
	base string
}

// gateway serves the REST gateway in front of the stack's services.
func (e *stackEnv) gateway(t *testing.T) *restClient {
	base := stacktest.Gateway(t, gateway.Config{
		FamiliesAddr: e.sys.Stack.FamiliesAddr, InterventionsAddr: e.sys.Stack.InterventionsAddr,
		ReferralsAddr: e.sys.Stack.ReferralsAddr, WebhooksAddr: e.sys.Stack.WebhooksAddr, Verifier: e.sys.Issuer.Verifier(),
	})
	return &restClient{t: t, base: base}
}

// do sends a request with a bearer token, checks the status and decodes
// the JSON answer into out (if not nil).
func (c *restClient) do(method, path, token, body string, want int, out any) {
	c.t.Helper()
	req, err := http.NewRequest(method, c.base+path, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		c.t.Fatalf("%s %s = %d %s, want %d", method, path, resp.StatusCode, b, want)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("%s %s: %v", method, path, err)
		}
	}
}
