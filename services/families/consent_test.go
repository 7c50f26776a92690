package families_test

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/consentgate"
	"github.com/handoff-health/handoff/services/families"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
	"github.com/handoff-health/handoff/services/servicetest"
)

// clock is a settable clock for expiry tests.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

type consentFixture struct {
	*fixture
	clock *clock
	app   *pgdb.DB
	admin context.Context
}

func setupConsent(t *testing.T) *consentFixture {
	t.Helper()
	pool, schema := pgtest.Schema(t, families.Migrations()...)
	clk := &clock{now: time.Now()}
	app := pgtest.App(t, schema)
	srv := families.New(app, families.Config{Now: clk.Now})
	env := servicetest.Start(t, families.Policy(), func(s *grpc.Server) {
		familiesv1.RegisterFamiliesServiceServer(s, srv)
	})
	env.Server.SetAuditor(srv.Auditor())
	f := &fixture{env: env, pool: pool, schema: schema, client: familiesv1.NewFamiliesServiceClient(env.Conn), ctx: env.Counselor("north")}
	return &consentFixture{fixture: f, clock: clk, app: app, admin: env.As("north", "admin-1", auth.RoleClinicAdmin)}
}

func (f *consentFixture) ehr(subject string) context.Context {
	return f.env.As("north", subject, auth.RoleEHR)
}

func (f *consentFixture) consent(t *testing.T, fam string, c *familiesv1.Consent) *familiesv1.Consent {
	t.Helper()
	out, err := f.client.CreateConsent(f.ctx, &familiesv1.CreateConsentRequest{Parent: fam, Consent: c})
	if err != nil {
		t.Fatalf("CreateConsent: %v", err)
	}
	return out
}

func (f *consentFixture) validConsent(recipients ...string) *familiesv1.Consent {
	now := f.clock.Now()
	return &familiesv1.Consent{
		Discloser:   "North Recovery Clinic",
		Information: []familiesv1.InformationKind{familiesv1.InformationKind_INFORMATION_KIND_IDENTITY},
		Recipients:  recipients,
		Purposes:    []familiesv1.Purpose{familiesv1.Purpose_PURPOSE_TREATMENT},
		ExpireTime:  timestamppb.New(now.Add(365 * 24 * time.Hour)),
		Signer:      "Sam Rivera", SignTime: timestamppb.New(now.Add(-time.Hour)),
		RevocationRightStated: true,
	}
}

func wantConsentRequired(t *testing.T, err error) {
	t.Helper()
	st := wantCode(t, err, codes.FailedPrecondition)
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() == families.ReasonConsentRequired {
			return
		}
	}
	t.Fatalf("refusal without reason %s: %v", families.ReasonConsentRequired, st.Details())
}

func (f *consentFixture) disclosures(t *testing.T, fam string) []*familiesv1.Disclosure {
	t.Helper()
	resp, err := f.client.ListDisclosures(f.ctx, &familiesv1.ListDisclosuresRequest{Parent: fam})
	if err != nil {
		t.Fatalf("ListDisclosures: %v", err)
	}
	return resp.GetDisclosures()
}

// A disclosure to a recipient of spaces is refused, though a consent to
// the patient's treating providers would cover any name: it would stand
// in the accounting of disclosures for good, naming no one.
func TestDisclosureToABlankRecipientIsRefused(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	fam := f.create(t)
	co := f.validConsent()
	co.TreatingProviders = true
	if _, err := f.client.CreateConsent(f.ctx, &familiesv1.CreateConsentRequest{Parent: fam.GetName(), Consent: co}); err != nil {
		t.Fatal(err)
	}
	_, err := f.client.CreateDisclosure(f.ctx, &familiesv1.CreateDisclosureRequest{Parent: fam.GetName(), Disclosure: &familiesv1.Disclosure{
		Recipient: "   ", Information: familiesv1.InformationKind_INFORMATION_KIND_IDENTITY, Purpose: familiesv1.Purpose_PURPOSE_TREATMENT,
		Resource: fam.GetName(), Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_MANUAL}})
	wantCode(t, err, codes.InvalidArgument)
	if !slices.Contains(apperr.ViolatedFields(err), "disclosure.recipient") {
		t.Fatalf("violations %v; want disclosure.recipient", apperr.ViolatedFields(err))
	}
	if got := f.disclosures(t, fam.GetName()); len(got) != 0 {
		t.Fatalf("recorded %v", got)
	}
}

func TestConsentValidation(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	fam := f.create(t)
	now := f.clock.Now()
	cases := map[string]struct {
		mutate func(*familiesv1.Consent)
		field  string
	}{
		"no discloser":   {func(c *familiesv1.Consent) { c.Discloser = "" }, "consent.discloser"},
		"no information": {func(c *familiesv1.Consent) { c.Information = nil }, "consent.information"},
		"no purpose":     {func(c *familiesv1.Consent) { c.Purposes = nil }, "consent.purposes"},
		"no recipient":   {func(c *familiesv1.Consent) { c.Recipients = nil }, "consent.recipients"},
		"treating providers, not for treatment": {func(c *familiesv1.Consent) {
			c.Recipients, c.TreatingProviders, c.Purposes = nil, true, []familiesv1.Purpose{familiesv1.Purpose_PURPOSE_PAYMENT}
		}, "consent.purposes"},
		// Named recipients too: the designation would still show the
		// consent to every treating provider, covering nothing for them.
		"named recipients and treating providers, not for treatment": {func(c *familiesv1.Consent) {
			c.TreatingProviders, c.Purposes = true, []familiesv1.Purpose{familiesv1.Purpose_PURPOSE_PAYMENT}
		}, "consent.purposes"},
		"no signer": {func(c *familiesv1.Consent) { c.Signer = "" }, "consent.signer"},
		// A name of spaces names no one.
		"a blank signer":    {func(c *familiesv1.Consent) { c.Signer = "  " }, "consent.signer"},
		"a blank discloser": {func(c *familiesv1.Consent) { c.Discloser = " \t" }, "consent.discloser"},
		"a blank recipient": {func(c *familiesv1.Consent) { c.Recipients = append(c.Recipients, " ") }, "consent.recipients[1]"},
		// Matched as spelt: "ehr-1 " would cover none of ehr-1's reads.
		"a recipient with a space after it": {func(c *familiesv1.Consent) { c.Recipients = []string{"ehr-1 "} }, "consent.recipients[0]"},
		// An unset time sent as one.
		"signed in 1970":       {func(c *familiesv1.Consent) { c.SignTime = timestamppb.New(time.Unix(0, 0)) }, "consent.sign_time"},
		"no expiry":            {func(c *familiesv1.Consent) { c.ExpireTime = nil }, "consent.expire_time"},
		"expired":              {func(c *familiesv1.Consent) { c.ExpireTime = timestamppb.New(now.Add(-time.Minute)) }, "consent.expire_time"},
		"signed in the future": {func(c *familiesv1.Consent) { c.SignTime = timestamppb.New(now.Add(time.Hour)) }, "consent.sign_time"},
		// A year mistyped by a century: an authorization for ever.
		"ends in 2206": {func(c *familiesv1.Consent) {
			c.ExpireTime = timestamppb.New(c.GetSignTime().AsTime().AddDate(180, 0, 0))
		},
			"consent.expire_time"},
		"ends ten years and a day after": {func(c *familiesv1.Consent) {
			c.ExpireTime = timestamppb.New(c.GetSignTime().AsTime().AddDate(families.MaxConsentYears, 0, 1))
		}, "consent.expire_time"},
		"right to revoke not stated": {func(c *familiesv1.Consent) { c.RevocationRightStated = false },
			"consent.revocation_right_stated"},
		// Apart by less than the microsecond the table keeps: equal there.
		"ends as it is signed": {func(c *familiesv1.Consent) {
			at := now.Add(30 * time.Second).Truncate(time.Microsecond) // within the minute a clock may be ahead
			c.SignTime, c.ExpireTime = timestamppb.New(at.Add(100*time.Nanosecond)), timestamppb.New(at.Add(200*time.Nanosecond))
		}, "consent.expire_time"},
	}
	for name, tc := range cases {
		c := f.validConsent("ehr-1")
		tc.mutate(c)
		_, err := f.client.CreateConsent(f.ctx, &familiesv1.CreateConsentRequest{Parent: fam.GetName(), Consent: c})
		st := wantCode(t, err, codes.InvalidArgument)
		if !slices.Contains(apperr.ViolatedFields(err), tc.field) {
			t.Errorf("%s: no violation of %s in %v", name, tc.field, st.Details())
		}
	}
	list, err := f.client.ListConsents(f.ctx, &familiesv1.ListConsentsRequest{Parent: fam.GetName()})
	if err != nil || len(list.GetConsents()) != 0 {
		t.Fatalf("refused consents were recorded: %v %v", list, err)
	}
	// The EHR may not record consents, only staff.
	_, err = f.client.CreateConsent(f.ehr("ehr-1"), &familiesv1.CreateConsentRequest{Parent: fam.GetName(), Consent: f.validConsent("ehr-1")})
	wantCode(t, err, codes.PermissionDenied)
	// Signed by a clock up to a minute ahead: taken, and signed now, so
	// that it reads ACTIVE only while it covers what it names.
	ahead := f.validConsent("ehr-1")
	ahead.SignTime = timestamppb.New(now.Add(50 * time.Second))
	co, err := f.client.CreateConsent(f.ctx, &familiesv1.CreateConsentRequest{Parent: fam.GetName(), Consent: ahead})
	if err != nil || co.GetSignTime().AsTime().After(f.clock.Now()) || co.GetState() != familiesv1.ConsentState_CONSENT_STATE_ACTIVE {
		t.Fatalf("a consent signed 50 s ahead: sign time %v (now %v), state %v, %v", co.GetSignTime().AsTime(), f.clock.Now(), co.GetState(), err)
	}
	if _, err := f.client.GetFamily(f.ehr("ehr-1"), &familiesv1.GetFamilyRequest{Name: fam.GetName()}); err != nil {
		t.Fatalf("the EHR's read under the active consent: %v", err)
	}
	// Under the treating-providers designation, a revocation naming the
	// provider with a space is refused, not taken for another (unlisted)
	// name while any-ehr goes on reading.
	tp := f.validConsent()
	tp.TreatingProviders = true
	tpc, err := f.client.CreateConsent(f.ctx, &familiesv1.CreateConsentRequest{Parent: fam.GetName(), Consent: tp})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: tpc.GetName(), Recipient: " any-ehr", RecipientUnlisted: true})
	if st := wantCode(t, err, codes.InvalidArgument); !slices.Contains(apperr.ViolatedFields(err), "recipient") {
		t.Fatalf("revoking for \" any-ehr\": %v", st.Details())
	}
}

// A consent recorded with a request id answers its retry with the
// consent it made, even once that has expired: the retry is not judged
// again against the clock, and makes nothing new.
func TestConsentRetryAfterItsExpiry(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	fam := f.create(t)
	c := f.validConsent("ehr-1")
	c.ExpireTime = timestamppb.New(f.clock.Now().Add(time.Hour))
	req := &familiesv1.CreateConsentRequest{Parent: fam.GetName(), Consent: c, RequestId: "consent-1"}
	first, err := f.client.CreateConsent(f.ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Add(2 * time.Hour)
	again, err := f.client.CreateConsent(f.ctx, req)
	if err != nil || again.GetName() != first.GetName() {
		t.Fatalf("the retry after the expiry: %v, %v; want %s", again.GetName(), err, first.GetName())
	}
	list, err := f.client.ListConsents(f.ctx, &familiesv1.ListConsentsRequest{Parent: fam.GetName()})
	if err != nil || len(list.GetConsents()) != 1 {
		t.Fatalf("consents after the retry: %v, %v; want the one", list.GetConsents(), err)
	}
	// A new request with the same expiry is refused, as before.
	_, err = f.client.CreateConsent(f.ctx, &familiesv1.CreateConsentRequest{Parent: fam.GetName(), Consent: c, RequestId: "consent-2"})
	if wantCode(t, err, codes.InvalidArgument); !slices.Contains(apperr.ViolatedFields(err), "consent.expire_time") {
		t.Fatalf("a new request with a past expiry: %v; want a violation of consent.expire_time", err)
	}
}

func TestDisclosureNeedsCoveringConsent(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	fam := f.create(t)
	ehr := f.ehr("ehr-1")

	// No consent: the EHR's read is refused and nothing is recorded.
	_, err := f.client.GetFamily(ehr, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	wantConsentRequired(t, err)
	if d := f.disclosures(t, fam.GetName()); len(d) != 0 {
		t.Fatalf("refused disclosure was recorded: %v", d)
	}
	// Staff read as before: they are the program, not a recipient.
	if _, err := f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()}); err != nil {
		t.Fatalf("counselor read: %v", err)
	}

	// A consent to someone else does not count.
	f.consent(t, fam.GetName(), f.validConsent("ehr-2"))
	_, err = f.client.GetFamily(ehr, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	wantConsentRequired(t, err)

	co := f.consent(t, fam.GetName(), f.validConsent("ehr-1"))
	if co.GetState() != familiesv1.ConsentState_CONSENT_STATE_ACTIVE || co.GetRecorder() != "counselor-1" {
		t.Fatalf("new consent: %v", co)
	}
	var md metadata.MD
	got, err := f.client.GetFamily(ehr, &familiesv1.GetFamilyRequest{Name: fam.GetName()}, grpc.Header(&md))
	if err != nil || got.GetName() != fam.GetName() {
		t.Fatalf("read under consent: %v %v", got, err)
	}
	// The disclosed answer carries the Part 2 notice; staff's does not.
	if n := md.Get(consentgate.NoticeHeader); len(n) != 1 || n[0] != families.Notice {
		t.Fatalf("notice on a disclosed read: %v", md)
	}
	md = nil
	if _, err := f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()}, grpc.Header(&md)); err != nil || len(md.Get(consentgate.NoticeHeader)) != 0 {
		t.Fatalf("staff read: %v, %v", md, err)
	}
	ds := f.disclosures(t, fam.GetName())
	if len(ds) != 1 || ds[0].GetRecipient() != "ehr-1" || ds[0].GetConsent() != co.GetName() ||
		ds[0].GetResource() != fam.GetName() || ds[0].GetNotice() != families.Notice ||
		ds[0].GetChannel() != familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_API {
		t.Fatalf("accounting after one read: %v", ds)
	}

	// The consent covers identity for treatment only.
	disclose := func(ctx context.Context, d *familiesv1.Disclosure) error {
		_, err := f.client.CreateDisclosure(ctx, &familiesv1.CreateDisclosureRequest{Parent: fam.GetName(), Disclosure: d})
		return err
	}
	ref := &familiesv1.Disclosure{Recipient: "ehr-1", Information: familiesv1.InformationKind_INFORMATION_KIND_REFERRALS,
		Purpose: familiesv1.Purpose_PURPOSE_TREATMENT, Resource: "clinics/north/referrals/r1", Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_API}
	wantConsentRequired(t, disclose(ehr, ref))
	pay := &familiesv1.Disclosure{Recipient: "ehr-1", Information: familiesv1.InformationKind_INFORMATION_KIND_IDENTITY,
		Purpose: familiesv1.Purpose_PURPOSE_PAYMENT, Resource: fam.GetName(), Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_MANUAL}
	wantConsentRequired(t, disclose(f.ctx, pay))
	// An integration records only its own reads through the API, for
	// treatment: the accounting is append-only, and an entry it made up
	// (a fax, a payment) could not be taken back.
	for _, d := range []*familiesv1.Disclosure{pay, {Recipient: "ehr-1", Information: familiesv1.InformationKind_INFORMATION_KIND_IDENTITY,
		Purpose: familiesv1.Purpose_PURPOSE_TREATMENT, Resource: fam.GetName(), Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_MANUAL}} {
		if st := wantCode(t, disclose(ehr, d), codes.InvalidArgument); !strings.Contains(st.Message(), "must be") {
			t.Fatalf("a made-up entry (%v, %v): %q", d.GetPurpose(), d.GetChannel(), st.Message())
		}
	}
	// An integration discloses only to itself.
	other := &familiesv1.Disclosure{Recipient: "ehr-2", Information: familiesv1.InformationKind_INFORMATION_KIND_IDENTITY,
		Purpose: familiesv1.Purpose_PURPOSE_TREATMENT, Resource: fam.GetName(), Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_API}
	wantCode(t, disclose(ehr, other), codes.InvalidArgument)
	// A resource of another clinic is not this family's record.
	foreign := &familiesv1.Disclosure{Recipient: "ehr-1", Information: familiesv1.InformationKind_INFORMATION_KIND_IDENTITY,
		Purpose: familiesv1.Purpose_PURPOSE_TREATMENT, Resource: "clinics/south/families/x", Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_API}
	wantCode(t, disclose(ehr, foreign), codes.InvalidArgument)
	// Nor is another family's: this consent answers for this family.
	otherFam := f.create(t)
	sibling := &familiesv1.Disclosure{Recipient: "ehr-1", Information: familiesv1.InformationKind_INFORMATION_KIND_IDENTITY,
		Purpose: familiesv1.Purpose_PURPOSE_TREATMENT, Resource: otherFam.GetName() + "/warningSigns/w1", Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_API}
	wantCode(t, disclose(ehr, sibling), codes.InvalidArgument)
	wantCode(t, disclose(f.ctx, sibling), codes.InvalidArgument)
	// Nor a name that only looks like a record of the clinic: read as
	// another service's record, it would escape the family check.
	for _, resource := range []string{"clinics/north/families//" + aip.ID(otherFam.GetName()), "clinics/north/families/F1",
		"clinics/north/x/../families/f1", "clinics/north", "clinics/north/referrals/r1/"} {
		bad := &familiesv1.Disclosure{Recipient: "ehr-2", Information: familiesv1.InformationKind_INFORMATION_KIND_IDENTITY,
			Purpose: familiesv1.Purpose_PURPOSE_TREATMENT, Resource: resource, Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_MANUAL}
		if fields := apperr.ViolatedFields(disclose(f.ctx, bad)); !slices.Contains(fields, "disclosure.resource") {
			t.Errorf("staff disclosure of %q: violations %v, want disclosure.resource", resource, fields)
		}
	}
	// Nor a read the API never gives under the kind it names: the
	// accounting is append-only, and the entry could never be taken back.
	for info, resource := range map[familiesv1.InformationKind]string{
		familiesv1.InformationKind_INFORMATION_KIND_IDENTITY:     fam.GetName() + "/safetyScreens/s1",
		familiesv1.InformationKind_INFORMATION_KIND_REFERRALS:    "clinics/north/interventions/i1",
		familiesv1.InformationKind_INFORMATION_KIND_APPOINTMENTS: fam.GetName(),
	} {
		madeUp := &familiesv1.Disclosure{Recipient: "ehr-1", Information: info, Purpose: familiesv1.Purpose_PURPOSE_TREATMENT,
			Resource: resource, Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_API}
		err := disclose(ehr, madeUp)
		if fields := apperr.ViolatedFields(err); status.Code(err) != codes.InvalidArgument || !slices.Contains(fields, "disclosure.resource") {
			t.Fatalf("an integration's %v read of %s: %v (fields %v); want INVALID_ARGUMENT on disclosure.resource", info, resource, err, fields)
		}
	}
	// Staff record a referral faxed to a program under the named consent.
	fax := &familiesv1.Disclosure{Recipient: "ehr-2", Information: familiesv1.InformationKind_INFORMATION_KIND_IDENTITY,
		Purpose: familiesv1.Purpose_PURPOSE_TREATMENT, Resource: fam.GetName(), Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_MANUAL}
	if err := disclose(f.ctx, fax); err != nil {
		t.Fatalf("manual disclosure: %v", err)
	}
	// A retried record of the same fax is recorded once.
	for range 2 {
		if _, err := f.client.CreateDisclosure(f.ctx, &familiesv1.CreateDisclosureRequest{Parent: fam.GetName(), Disclosure: fax, RequestId: "fax-2"}); err != nil {
			t.Fatalf("manual disclosure with a request id: %v", err)
		}
	}
	if n := len(f.disclosures(t, fam.GetName())); n != 3 {
		t.Fatalf("accounting holds %d disclosures, want 3 (refusals record nothing, a retry records nothing more)", n)
	}
	// validate_only checks the consent and records nothing, request id or not.
	identity := &familiesv1.Disclosure{Recipient: "ehr-1", Information: familiesv1.InformationKind_INFORMATION_KIND_IDENTITY,
		Purpose: familiesv1.Purpose_PURPOSE_TREATMENT, Resource: fam.GetName(), Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_API}
	for _, id := range []string{"", "check-1", "check-1"} {
		got, err := f.client.CreateDisclosure(ehr, &familiesv1.CreateDisclosureRequest{Parent: fam.GetName(), Disclosure: identity,
			ValidateOnly: true, RequestId: id})
		if err != nil || got.GetName() != "" || got.GetConsent() != co.GetName() || got.GetDiscloser() != "ehr-1" {
			t.Fatalf("validate_only (request id %q): %v %v", id, got, err)
		}
	}
	_, err = f.client.CreateDisclosure(ehr, &familiesv1.CreateDisclosureRequest{Parent: fam.GetName(), Disclosure: ref, ValidateOnly: true})
	wantConsentRequired(t, err)
	if n := len(f.disclosures(t, fam.GetName())); n != 3 {
		t.Fatalf("accounting holds %d disclosures after checks, want 3: a check records nothing", n)
	}
	// A real record under the id a check used is still recorded.
	if _, err := f.client.CreateDisclosure(ehr, &familiesv1.CreateDisclosureRequest{Parent: fam.GetName(), Disclosure: identity, RequestId: "check-1"}); err != nil {
		t.Fatalf("record after checks: %v", err)
	}
	if n := len(f.disclosures(t, fam.GetName())); n != 4 {
		t.Fatalf("accounting holds %d disclosures, want 4", n)
	}
	// The consent is visible to the EHR it names, not to another EHR.
	if _, err := f.client.GetConsent(ehr, &familiesv1.GetConsentRequest{Name: co.GetName()}); err != nil {
		t.Fatalf("named EHR reads its consent: %v", err)
	}
	_, err = f.client.GetConsent(f.ehr("ehr-3"), &familiesv1.GetConsentRequest{Name: co.GetName()})
	wantCode(t, err, codes.NotFound)
	list, err := f.client.ListConsents(f.ehr("ehr-3"), &familiesv1.ListConsentsRequest{Parent: fam.GetName()})
	if err != nil || len(list.GetConsents()) != 0 {
		t.Fatalf("another EHR lists consents not given to it: %v %v", list, err)
	}
}

func TestRevocationTakesEffectAtOnce(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	fam := f.create(t)
	co := f.consent(t, fam.GetName(), f.validConsent("ehr-1", "ehr-2"))
	read := func(subject string) error {
		_, err := f.client.GetFamily(f.ehr(subject), &familiesv1.GetFamilyRequest{Name: fam.GetName()})
		return err
	}
	for _, s := range []string{"ehr-1", "ehr-2"} {
		if err := read(s); err != nil {
			t.Fatalf("%s before revocation: %v", s, err)
		}
	}
	// A stale etag is refused.
	_, err := f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: co.GetName(), Recipient: "ehr-2", Etag: "v99"})
	wantCode(t, err, codes.Aborted)
	// Not a recipient of this consent.
	_, err = f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: co.GetName(), Recipient: "ehr-9"})
	wantCode(t, err, codes.InvalidArgument)

	one, err := f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: co.GetName(), Recipient: "ehr-2",
		Reason: "moved to another clinic", Etag: co.GetEtag()})
	if err != nil {
		t.Fatalf("revoke for ehr-2: %v", err)
	}
	if one.GetState() != familiesv1.ConsentState_CONSENT_STATE_ACTIVE || len(one.GetRevocations()) != 1 ||
		one.GetRevocations()[0].GetRecipient() != "ehr-2" || one.GetEtag() == co.GetEtag() {
		t.Fatalf("after revoking one recipient: %v", one)
	}
	wantConsentRequired(t, read("ehr-2"))
	if err := read("ehr-1"); err != nil {
		t.Fatalf("ehr-1 after ehr-2's revocation: %v", err)
	}
	// Revoking again changes nothing.
	again, err := f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: co.GetName(), Recipient: "ehr-2"})
	if err != nil || again.GetEtag() != one.GetEtag() {
		t.Fatalf("repeated revocation changed the consent: %v %v", again, err)
	}
	// Staff record a fax to ehr-1 with a request id; the fax fails.
	fax := &familiesv1.CreateDisclosureRequest{Parent: fam.GetName(), RequestId: "fax-1", Disclosure: &familiesv1.Disclosure{
		Recipient: "ehr-1", Information: familiesv1.InformationKind_INFORMATION_KIND_IDENTITY, Purpose: familiesv1.Purpose_PURPOSE_TREATMENT,
		Resource: fam.GetName(), Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_MANUAL}}
	if _, err := f.client.CreateDisclosure(f.ctx, fax); err != nil {
		t.Fatalf("fax before revocation: %v", err)
	}
	all, err := f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: co.GetName()})
	if err != nil || all.GetState() != familiesv1.ConsentState_CONSENT_STATE_REVOKED {
		t.Fatalf("revoke all: %v %v", all, err)
	}
	wantConsentRequired(t, read("ehr-1"))
	// Its retry, with the same request id, is not answered "covered" from
	// the record of the first: the revocation counts at once.
	_, err = f.client.CreateDisclosure(f.ctx, fax)
	wantConsentRequired(t, err)
}

// A retry of a recorded disclosure after its consent was revoked, while
// a renewal now covers it, is recorded again under the renewal: the
// accounting never says it went under a consent revoked before it went.
// A retry while the first consent still covers is its first answer.
func TestRetryAfterARenewalIsRecordedUnderIt(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	fam := f.create(t)
	first := f.consent(t, fam.GetName(), f.validConsent("ehr-1"))
	fax := &familiesv1.CreateDisclosureRequest{Parent: fam.GetName(), RequestId: "fax-1", Disclosure: &familiesv1.Disclosure{
		Recipient: "ehr-1", Information: familiesv1.InformationKind_INFORMATION_KIND_IDENTITY, Purpose: familiesv1.Purpose_PURPOSE_TREATMENT,
		Resource: fam.GetName(), Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_MANUAL}}
	d1, err := f.client.CreateDisclosure(f.ctx, fax)
	if err != nil || d1.GetConsent() != first.GetName() {
		t.Fatalf("the fax: %v, %v; want it under %s", d1, err, first.GetName())
	}
	renewal := f.consent(t, fam.GetName(), f.validConsent("ehr-1"))
	if again, err := f.client.CreateDisclosure(f.ctx, fax); err != nil || again.GetName() != d1.GetName() {
		t.Fatalf("a retry while the first consent covers: %v, %v; want the first answer", again, err)
	}
	if _, err := f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: first.GetName()}); err != nil {
		t.Fatal(err)
	}
	d2, err := f.client.CreateDisclosure(f.ctx, fax)
	if err != nil || d2.GetConsent() != renewal.GetName() || d2.GetName() == d1.GetName() {
		t.Fatalf("the retry after the first consent was revoked: %v, %v; want a new record under %s", d2, err, renewal.GetName())
	}
	if again, err := f.client.CreateDisclosure(f.ctx, fax); err != nil || again.GetName() != d2.GetName() {
		t.Fatalf("a retry after that: %v, %v; want the new answer", again, err)
	}
	if got := f.disclosures(t, fam.GetName()); len(got) != 2 {
		t.Fatalf("the accounting holds %d entries; want the first and the one under the renewal", len(got))
	}
	if _, err := f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: renewal.GetName()}); err != nil {
		t.Fatal(err)
	}
	_, err = f.client.CreateDisclosure(f.ctx, fax)
	wantConsentRequired(t, err)
}

// A consent revoked for each recipient it names, one by one, covers no one:
// it shows as REVOKED, not ACTIVE.
func TestConsentRevokedForEveryRecipientIsRevoked(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	fam := f.create(t)
	co := f.consent(t, fam.GetName(), f.validConsent("ehr-1", "ehr-2"))
	for i, r := range []string{"ehr-1", "ehr-2"} {
		got, err := f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: co.GetName(), Recipient: r})
		want := []familiesv1.ConsentState{familiesv1.ConsentState_CONSENT_STATE_ACTIVE, familiesv1.ConsentState_CONSENT_STATE_REVOKED}[i]
		if err != nil || got.GetState() != want {
			t.Fatalf("after revoking %s: %v, %v; want %v", r, got.GetState(), err, want)
		}
	}
}

// Two recipients revoked at the same moment: the second revocation,
// having waited for the first's lock, sees the first's record and revokes
// the whole consent.
func TestConcurrentRevocationsRevokeTheWhole(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	fam := f.create(t)
	co := f.consent(t, fam.GetName(), f.validConsent("ehr-1", "ehr-2"))
	ctx := context.Background()
	id := co.GetName()[strings.LastIndex(co.GetName(), "/")+1:]
	tx, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT 1 FROM consents WHERE id = $1 FOR UPDATE`, id); err != nil {
		t.Fatal(err)
	}
	var holder int
	if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&holder); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 2)
	for _, r := range []string{"ehr-1", "ehr-2"} {
		go func() {
			_, err := f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: co.GetName(), Recipient: r})
			errs <- err
		}()
	}
	// Both wait on the row before it is let go: blocked by this test's
	// transaction, the second through the first (other tests' sessions on
	// the same server do not count).
	deadline := time.Now().Add(10 * time.Second)
	for {
		var waiting int
		if err := f.pool.QueryRow(ctx, `WITH RECURSIVE blocked AS (
				SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))
				UNION SELECT a.pid FROM pg_stat_activity a JOIN blocked b ON b.pid = ANY(pg_blocking_pids(a.pid)))
			SELECT count(*) FROM blocked`, holder).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d revocations waiting on the consent; want 2", waiting)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	got, err := f.client.GetConsent(f.ctx, &familiesv1.GetConsentRequest{Name: co.GetName()})
	if err != nil || got.GetState() != familiesv1.ConsentState_CONSENT_STATE_REVOKED || len(got.GetRevocations()) != 2 {
		t.Fatalf("after both recipients were revoked at once: %v with %d revocations, %v; want REVOKED with 2",
			got.GetState(), len(got.GetRevocations()), err)
	}
}

// A read by the EHR, or a retried record of a fax, that overlaps a
// revocation in progress waits for it, and is refused: nothing goes out
// after the revocation has answered.
func TestDisclosureWaitsForARevocationInProgress(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	for name, disclose := range map[string]func(fam string) (func() error, error){
		"an EHR read": func(fam string) (func() error, error) {
			return func() error {
				_, err := f.client.GetFamily(f.ehr("ehr-1"), &familiesv1.GetFamilyRequest{Name: fam})
				return err
			}, nil
		},
		"a retried fax": func(fam string) (func() error, error) {
			fax := &familiesv1.CreateDisclosureRequest{Parent: fam, RequestId: "fax-" + aip.ID(fam), Disclosure: &familiesv1.Disclosure{
				Recipient: "ehr-1", Information: familiesv1.InformationKind_INFORMATION_KIND_IDENTITY, Purpose: familiesv1.Purpose_PURPOSE_TREATMENT,
				Resource: fam, Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_MANUAL}}
			_, err := f.client.CreateDisclosure(f.ctx, fax) // its answer lost
			return func() error { _, err := f.client.CreateDisclosure(f.ctx, fax); return err }, err
		},
	} {
		t.Run(name, func(t *testing.T) {
			fam := f.create(t)
			co := f.consent(t, fam.GetName(), f.validConsent("ehr-1"))
			again, err := disclose(fam.GetName())
			if err != nil {
				t.Fatal(err)
			}
			// The revocation, stopped between its changes and its commit.
			tx := inFlight(t, f.pool, stmt{`SELECT 1 FROM consents WHERE id = $1 FOR UPDATE`, []any{aip.ID(co.GetName())}},
				stmt{`UPDATE consents SET revoke_time = now(), version = version + 1 WHERE id = $1`, []any{aip.ID(co.GetName())}})
			done := waitsOn(t, f.pool, tx, again)
			if err := tx.Commit(context.Background()); err != nil {
				t.Fatal(err)
			}
			wantConsentRequired(t, <-done)
		})
	}
}

func TestTreatingProvidersAndExpiry(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	fam := f.create(t)
	c := f.validConsent()
	c.TreatingProviders = true
	c.Purposes = []familiesv1.Purpose{familiesv1.Purpose_PURPOSE_TREATMENT, familiesv1.Purpose_PURPOSE_PAYMENT}
	c.ExpireTime = timestamppb.New(f.clock.Now().Add(48 * time.Hour))
	co := f.consent(t, fam.GetName(), c)
	// The general designation covers any treating provider, for treatment.
	if _, err := f.client.GetFamily(f.ehr("any-ehr"), &familiesv1.GetFamilyRequest{Name: fam.GetName()}); err != nil {
		t.Fatalf("treating provider read: %v", err)
	}
	// Not for payment (recorded by staff: an integration records only its
	// reads for treatment).
	_, err := f.client.CreateDisclosure(f.ctx, &familiesv1.CreateDisclosureRequest{Parent: fam.GetName(),
		Disclosure: &familiesv1.Disclosure{Recipient: "any-ehr", Information: familiesv1.InformationKind_INFORMATION_KIND_IDENTITY,
			Purpose: familiesv1.Purpose_PURPOSE_PAYMENT, Resource: fam.GetName(), Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_API}})
	wantConsentRequired(t, err)
	// Staff sending a referral to a program disclose to a treating
	// provider; a webhook pushes to a subscriber Handoff cannot tell to be
	// one (the reminder automation is a vendor): it needs a named consent.
	for _, ch := range []familiesv1.DisclosureChannel{familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_MANUAL,
		familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_WEBHOOK} {
		_, err = f.client.CreateDisclosure(f.ctx, &familiesv1.CreateDisclosureRequest{Parent: fam.GetName(),
			Disclosure: &familiesv1.Disclosure{Recipient: "sms-vendor", Information: familiesv1.InformationKind_INFORMATION_KIND_IDENTITY,
				Purpose: familiesv1.Purpose_PURPOSE_TREATMENT, Resource: fam.GetName(), Channel: ch}})
		if ch == familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_WEBHOOK {
			wantConsentRequired(t, err)
		} else if err != nil {
			t.Fatalf("a referral sent to a treating provider: %v", err)
		}
	}
	// Revoked for one treating provider, named as the accounting knows it:
	// a name that received nothing (a typo) is refused, not stored while
	// the provider meant goes on reading.
	_, err = f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: co.GetName(), Recipient: "any-ehr-typo"})
	wantCode(t, err, codes.InvalidArgument)
	if _, err := f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: co.GetName(), Recipient: "any-ehr"}); err != nil {
		t.Fatalf("revoking for a provider that read: %v", err)
	}
	_, err = f.client.GetFamily(f.ehr("any-ehr"), &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	wantConsentRequired(t, err)
	if _, err := f.client.GetFamily(f.ehr("other-ehr"), &familiesv1.GetFamilyRequest{Name: fam.GetName()}); err != nil {
		t.Fatalf("another treating provider after one was revoked: %v", err)
	}
	// Another family's patient may shut out a provider before it reads
	// their record: one the clinic's accounting knows, from any family.
	next := f.create(t)
	nextConsent := f.consent(t, next.GetName(), c)
	if _, err := f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: nextConsent.GetName(), Recipient: "other-ehr"}); err != nil {
		t.Fatalf("revoking in advance for a provider known to the clinic: %v", err)
	}
	_, err = f.client.GetFamily(f.ehr("other-ehr"), &familiesv1.GetFamilyRequest{Name: next.GetName()})
	wantConsentRequired(t, err)
	_, err = f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: nextConsent.GetName(), Recipient: "other-ehr-typo"})
	wantCode(t, err, codes.InvalidArgument)
	// A provider the clinic has disclosed nothing to yet is shut out in
	// advance when the caller says the name is meant; its first read is
	// then refused, while the designation goes on covering the others.
	if _, err := f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: nextConsent.GetName(), Recipient: "st-marys-ehr",
		RecipientUnlisted: true}); err != nil {
		t.Fatalf("revoking in advance for a provider not yet disclosed to, the name confirmed: %v", err)
	}
	_, err = f.client.GetFamily(f.ehr("st-marys-ehr"), &familiesv1.GetFamilyRequest{Name: next.GetName()})
	wantConsentRequired(t, err)
	if _, err := f.client.GetFamily(f.ehr("any-ehr"), &familiesv1.GetFamilyRequest{Name: next.GetName()}); err != nil {
		t.Fatalf("another treating provider after one was shut out in advance: %v", err)
	}
	// Nor is the consent shown to the provider shut out: it would tell it
	// that the patient is the program's (before, the family's list and
	// GetConsent showed it, revoked for it). The others still see it.
	_, err = f.client.GetConsent(f.ehr("st-marys-ehr"), &familiesv1.GetConsentRequest{Name: nextConsent.GetName()})
	wantCode(t, err, codes.NotFound)
	for subject, want := range map[string]int{"st-marys-ehr": 0, "any-ehr": 1} {
		got, err := f.client.ListConsents(f.ehr(subject), &familiesv1.ListConsentsRequest{Parent: next.GetName()})
		if err != nil || len(got.GetConsents()) != want {
			t.Fatalf("%s lists the family's consents %v, %v; want %d", subject, got, err, want)
		}
	}
	if _, err := f.client.GetConsent(f.ehr("any-ehr"), &familiesv1.GetConsentRequest{Name: nextConsent.GetName()}); err != nil {
		t.Fatalf("a treating provider not shut out reads the consent: %v", err)
	}
	// Past its expiry the consent covers nothing. Its state changed
	// without a write, and its version and update time say so: a reader
	// holding the active copy (by etag, or polling by update time) must
	// see the change.
	active, err := f.client.ListConsents(f.ctx, &familiesv1.ListConsentsRequest{Parent: fam.GetName()})
	if err != nil || len(active.GetConsents()) != 1 || active.GetConsents()[0].GetState() != familiesv1.ConsentState_CONSENT_STATE_ACTIVE {
		t.Fatalf("consent before its expiry: %v %v", active, err)
	}
	// The EHR's own view of it (its part, versioned apart) too.
	ehrActive, err := f.client.ListConsents(f.ehr("other-ehr"), &familiesv1.ListConsentsRequest{Parent: fam.GetName()})
	if err != nil || len(ehrActive.GetConsents()) != 1 {
		t.Fatalf("the EHR's consents before the expiry: %v %v", ehrActive, err)
	}
	f.clock.Add(49 * time.Hour)
	_, err = f.client.GetFamily(f.ehr("any-ehr"), &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	wantConsentRequired(t, err)
	list, err := f.client.ListConsents(f.ctx, &familiesv1.ListConsentsRequest{Parent: fam.GetName()})
	if err != nil || len(list.GetConsents()) != 1 || list.GetConsents()[0].GetState() != familiesv1.ConsentState_CONSENT_STATE_EXPIRED {
		t.Fatalf("expired consent: %v %v", list, err)
	}
	before, after := active.GetConsents()[0], list.GetConsents()[0]
	if after.GetEtag() == before.GetEtag() || !after.GetUpdateTime().AsTime().Equal(after.GetExpireTime().AsTime()) {
		t.Fatalf("expired consent: etag %q (was %q), updated %v, expired %v; want a new etag, updated at the expiry",
			after.GetEtag(), before.GetEtag(), after.GetUpdateTime().AsTime(), after.GetExpireTime().AsTime())
	}
	ehrExpired, err := f.client.ListConsents(f.ehr("other-ehr"), &familiesv1.ListConsentsRequest{Parent: fam.GetName()})
	if err != nil || len(ehrExpired.GetConsents()) != 1 {
		t.Fatalf("the EHR's consents after the expiry: %v %v", ehrExpired, err)
	}
	if e, was := ehrExpired.GetConsents()[0], ehrActive.GetConsents()[0]; e.GetState() != familiesv1.ConsentState_CONSENT_STATE_EXPIRED ||
		e.GetEtag() == was.GetEtag() || !e.GetUpdateTime().AsTime().Equal(e.GetExpireTime().AsTime()) {
		t.Fatalf("the EHR's view after the expiry: %v, etag %q (was %q), updated %v; want EXPIRED, a new etag, updated at the expiry",
			e.GetState(), e.GetEtag(), was.GetEtag(), e.GetUpdateTime().AsTime())
	}
	// The etag read after the expiry is the current one: a revocation
	// sent with it goes through; one sent with the active copy's does not.
	_, err = f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: co.GetName(), Etag: before.GetEtag(), Reason: "moved away"})
	wantCode(t, err, codes.Aborted)
	if _, err := f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: co.GetName(), Etag: after.GetEtag(), Reason: "moved away"}); err != nil {
		t.Fatalf("revoking an expired consent with its current etag: %v", err)
	}
}

func TestEHRListSeesOnlyConsentedFamilies(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	fams := []*familiesv1.Family{f.create(t), f.create(t), f.create(t)}
	f.consent(t, fams[1].GetName(), f.validConsent("ehr-1"))
	var seen []string
	token := ""
	for page := 0; ; page++ {
		resp, err := f.client.ListFamilies(f.ehr("ehr-1"), &familiesv1.ListFamiliesRequest{Parent: "clinics/north", PageSize: 1, PageToken: token})
		if err != nil {
			t.Fatalf("EHR list: %v", err)
		}
		for _, fam := range resp.GetFamilies() {
			seen = append(seen, fam.GetName())
		}
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
		if page > 3 {
			t.Fatal("the list does not end")
		}
	}
	if len(seen) != 1 || seen[0] != fams[1].GetName() {
		t.Fatalf("EHR saw %v, want only %s", seen, fams[1].GetName())
	}
	if ds := f.disclosures(t, fams[1].GetName()); len(ds) != 1 {
		t.Fatalf("listing disclosed %d times, want 1", len(ds))
	}
	if ds := f.disclosures(t, fams[0].GetName()); len(ds) != 0 {
		t.Fatalf("a hidden family has disclosures: %v", ds)
	}
}

func TestAccountingOutlivesFamilyAndIsAppendOnly(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	fam := f.create(t)
	sign := &familiesv1.CreateConsentRequest{Parent: fam.GetName(), Consent: f.validConsent("ehr-1"), RequestId: "consent-1"}
	co, err := f.client.CreateConsent(f.ctx, sign)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.GetFamily(f.ehr("ehr-1"), &familiesv1.GetFamilyRequest{Name: fam.GetName()}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.client.DeleteFamily(f.admin, &familiesv1.DeleteFamilyRequest{Name: fam.GetName()}); err != nil {
		t.Fatalf("DeleteFamily: %v", err)
	}
	// The answer of the consent's recording outlives the family with it:
	// a retry gets the consent, not NOT_FOUND for a record still there.
	if again, err := f.client.CreateConsent(f.ctx, sign); err != nil || again.GetName() != co.GetName() {
		t.Fatalf("the consent's recording retried after the delete = %v, %v; want %s", again, err, co.GetName())
	}
	if ds := f.disclosures(t, fam.GetName()); len(ds) != 1 {
		t.Fatalf("accounting after the family was deleted: %v", ds)
	}
	// A filter that finds nothing in what outlives the family is an empty
	// page, as for a family still there, not the family not found.
	if resp, err := f.client.ListDisclosures(f.ctx, &familiesv1.ListDisclosuresRequest{Parent: fam.GetName(),
		Filter: `recipient = "nobody"`}); err != nil || len(resp.GetDisclosures()) != 0 {
		t.Fatalf("a deleted family's accounting filtered to nothing: %v, %v; want an empty page", resp, err)
	}
	if resp, err := f.client.ListConsents(f.ctx, &familiesv1.ListConsentsRequest{Parent: fam.GetName(),
		Filter: `update_time > "2999-01-01T00:00:00Z"`}); err != nil || len(resp.GetConsents()) != 0 {
		t.Fatalf("a deleted family's consents filtered to nothing: %v, %v; want an empty page", resp, err)
	}
	if _, err := f.client.ListDisclosures(f.ctx, &familiesv1.ListDisclosuresRequest{Parent: "clinics/north/families/0193a0c4-7d2e-7b6a-9f31-2c4d5e6f7a8b"}); status.Code(err) != codes.NotFound {
		t.Fatalf("the accounting of a family never recorded: %v; want NOT_FOUND", err)
	}
	if _, err := f.client.GetConsent(f.ctx, &familiesv1.GetConsentRequest{Name: co.GetName()}); err != nil {
		t.Fatalf("signed consent after the family was deleted: %v", err)
	}
	// The services' role cannot rewrite the record.
	ctx := pgdb.WithClinic(context.Background(), "north")
	for _, stmt := range []string{
		`UPDATE disclosures SET recipient = 'someone-else'`,
		`DELETE FROM disclosures`,
		`DELETE FROM consents`,
		`DELETE FROM consent_revocations`,
	} {
		if _, err := f.app.Exec(ctx, stmt); err == nil {
			t.Errorf("%s: allowed to the application role", stmt)
		}
	}
}

func TestOutsideSystemsSeeTheMinimum(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	fam := f.create(t)
	if _, err := f.client.CreateSafetyScreen(f.ctx, &familiesv1.CreateSafetyScreenRequest{Parent: fam.GetName(),
		SafetyScreen: &familiesv1.SafetyScreen{Result: familiesv1.SafetyRisk_SAFETY_RISK_RISK_WITH_PLAN, SafetyPlanInPlace: true, Notes: "partner threatened her"}}); err != nil {
		t.Fatal(err)
	}
	// A token that is both the EHR and an administrator is still the EHR:
	// no consent, no read, and the refusal names nothing but the record.
	both := f.env.As("north", "ehr-1", auth.RoleEHR, auth.RoleClinicAdmin)
	_, err := f.client.GetFamily(both, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	st := wantCode(t, err, codes.FailedPrecondition)
	if strings.Contains(st.Message(), "families/") {
		t.Fatalf("refusal names the family: %q", st.Message())
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			for k, v := range info.GetMetadata() {
				if k != "resource" {
					t.Fatalf("refusal metadata %s=%s", k, v)
				}
			}
		}
	}

	c := f.validConsent("ehr-1", "ehr-2")
	co := f.consent(t, fam.GetName(), c)
	if _, err := f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: co.GetName(), Recipient: "ehr-2",
		Reason: "she said the other hospital talked to her husband"}); err != nil {
		t.Fatal(err)
	}
	got, err := f.client.GetFamily(f.ehr("ehr-1"), &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetLovedOne().GetGivenName() != "Sam" || len(got.GetMembers()) != 2 {
		t.Fatalf("identity missing: %v", got)
	}
	// How to reach someone only where the clinic may: Sam did not agree to
	// be contacted directly, Ana agreed to be.
	if len(got.GetLovedOne().GetContactChannels()) != 0 || len(got.GetMembers()[0].GetContactChannels()) != 1 {
		t.Fatalf("contact channels disclosed: loved one %v, contact person %v", got.GetLovedOne().GetContactChannels(), got.GetMembers()[0].GetContactChannels())
	}
	// The disclosure and the call's audit record commit together: the
	// accounting never holds a disclosure the audit trail lacks.
	if _, err := f.client.ListFamilies(f.ehr("ehr-1"), &familiesv1.ListFamiliesRequest{Parent: "clinics/north"}); err != nil {
		t.Fatal(err)
	}
	for _, method := range []string{"GetFamily", "ListFamilies"} {
		var disclosureTx, recordTx string
		if err := f.pool.QueryRow(context.Background(), `SELECT d.xmin::text, a.xmin::text
			FROM disclosures d, audit_log a
			WHERE d.recipient = 'ehr-1' AND a.subject = 'ehr-1' AND a.method LIKE '%/' || $1 AND d.xmin = a.xmin`, method).
			Scan(&disclosureTx, &recordTx); err != nil {
			t.Fatalf("%s: no disclosure written in its audit record's transaction: %v", method, err)
		}
	}
	if got.GetLatestSafetyScreen() != nil || got.GetCoverage() != nil || got.GetUrgent() ||
		got.GetLovedOne().GetPrimarySubstance() != familiesv1.Substance_SUBSTANCE_UNSPECIFIED ||
		got.GetSafetyScreenStatus() != familiesv1.SafetyScreenStatus_SAFETY_SCREEN_STATUS_UNSPECIFIED {
		t.Fatalf("an identity consent disclosed more than identity: %v", got)
	}
	// That the loved one entered treatment is more than identity: the EHR
	// sees the family ACTIVE, lists it so, and finds none in treatment.
	inTreatment, err := f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{
		Family:     &familiesv1.Family{Name: fam.GetName(), State: familiesv1.FamilyState_FAMILY_STATE_ENGAGED_IN_TREATMENT},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"state"}}})
	if err != nil {
		t.Fatal(err)
	}
	if seen, err := f.client.GetFamily(f.ehr("ehr-1"), &familiesv1.GetFamilyRequest{Name: fam.GetName()}); err != nil ||
		seen.GetState() != familiesv1.FamilyState_FAMILY_STATE_ACTIVE || inTreatment.GetState() != familiesv1.FamilyState_FAMILY_STATE_ENGAGED_IN_TREATMENT {
		t.Fatalf("a family in treatment, as the EHR sees it: %v, %v", seen.GetState(), err)
	}
	for filter, want := range map[string]int{"state = ACTIVE": 1, "state = ENGAGED_IN_TREATMENT": 0} {
		l, err := f.client.ListFamilies(f.ehr("ehr-1"), &familiesv1.ListFamiliesRequest{Parent: "clinics/north", Filter: filter})
		if err != nil || len(l.GetFamilies()) != want || (want == 1 && l.GetFamilies()[0].GetState() != familiesv1.FamilyState_FAMILY_STATE_ACTIVE) {
			t.Fatalf("the EHR lists %q: %v, %v; want %d", filter, l.GetFamilies(), err, want)
		}
	}
	// Nor can it be learned by filtering on what the view leaves out.
	_, err = f.client.ListFamilies(f.ehr("ehr-1"), &familiesv1.ListFamiliesRequest{Parent: "clinics/north", Filter: "urgent = true"})
	wantCode(t, err, codes.InvalidArgument)
	if l, err := f.client.ListFamilies(f.ehr("ehr-1"), &familiesv1.ListFamiliesRequest{Parent: "clinics/north", Filter: "state = ACTIVE"}); err != nil {
		t.Fatalf("the EHR filters on its view's fields: %v, %v", l, err)
	}
	if _, err := f.client.ListFamilies(f.ctx, &familiesv1.ListFamiliesRequest{Parent: "clinics/north", Filter: "urgent = true"}); err != nil {
		t.Fatalf("staff filter on urgency: %v", err)
	}
	// Who may be contacted, and no more, for the reminder automation; a
	// counselor who also runs it reads the whole record.
	got, err = f.client.GetFamily(f.env.As("north", "sms-1", auth.RoleReminders), &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	if err != nil || got.GetLovedOne().GetGivenName() != "" || got.GetState() != familiesv1.FamilyState_FAMILY_STATE_UNSPECIFIED || got.GetEtag() != "" {
		t.Fatalf("the reminder automation's view: %v, %v; want who may be contacted only", got, err)
	}
	// And where: the channels of those who may be, none of the others'.
	if m := got.GetMembers()[0]; len(m.GetContactChannels()) != 1 || m.GetContactChannels()[0].GetValue() != "ana@example.org" ||
		m.GetPreferredChannel() != familiesv1.ChannelKind_CHANNEL_KIND_EMAIL || len(got.GetLovedOne().GetContactChannels()) != 0 {
		t.Fatalf("the automation's view of where to reach people: %v", got)
	}
	open := sampleFamily()
	open.LovedOne.MayContactDirectly = true
	open.Members[1].ContactChannels = []*familiesv1.ContactChannel{{Kind: familiesv1.ChannelKind_CHANNEL_KIND_SMS, Value: "+15555550199"}}
	opened, err := f.client.CreateFamily(f.ctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: open})
	if err != nil {
		t.Fatal(err)
	}
	got, err = f.client.GetFamily(f.env.As("north", "sms-1", auth.RoleReminders), &familiesv1.GetFamilyRequest{Name: opened.GetName()})
	if err != nil || len(got.GetLovedOne().GetContactChannels()) != 1 || got.GetLovedOne().GetContactChannels()[0].GetValue() != "+15555550101" ||
		len(got.GetMembers()[1].GetContactChannels()) != 0 {
		t.Fatalf("the automation's view of a loved one who may be contacted and a member who may not: %v, %v", got, err)
	}
	got, err = f.client.GetFamily(f.env.As("north", "sms-1", auth.RoleReminders, auth.RoleCounselor), &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	if err != nil || got.GetLovedOne().GetGivenName() == "" {
		t.Fatalf("a counselor who also runs the automation: %v, %v; want the whole record", got, err)
	}
	seen, err := f.client.GetConsent(f.ehr("ehr-1"), &familiesv1.GetConsentRequest{Name: co.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	if seen.GetSigner() != "" || seen.GetRecorder() != "" || !slices.Equal(seen.GetRecipients(), []string{"ehr-1"}) || len(seen.GetRevocations()) != 0 {
		t.Fatalf("the EHR sees others' part of the consent: %v", seen)
	}
	// ehr-2 sees that the consent is over for it, not why.
	seen2, err := f.client.GetConsent(f.ehr("ehr-2"), &familiesv1.GetConsentRequest{Name: co.GetName()})
	if err != nil || seen2.GetState() != familiesv1.ConsentState_CONSENT_STATE_REVOKED || len(seen2.GetRevocations()) != 1 ||
		seen2.GetRevocations()[0].GetReason() != "" || slices.Contains(seen2.GetRecipients(), "ehr-1") {
		t.Fatalf("revoked recipient's view: %v, %v", seen2, err)
	}
}

func TestRevocationRetryAndSignedTerms(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	fam := f.create(t)
	co := f.consent(t, fam.GetName(), f.validConsent("ehr-1"))
	req := &familiesv1.RevokeConsentRequest{Name: co.GetName(), Etag: co.GetEtag()}
	first, err := f.client.RevokeConsent(f.ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	// The first answer was lost; the retry carries the etag it read before.
	again, err := f.client.RevokeConsent(f.ctx, req)
	if err != nil || again.GetEtag() != first.GetEtag() {
		t.Fatalf("retried revocation: %v, %v", again, err)
	}
	ctx := pgdb.WithClinic(context.Background(), "north")
	// The terms of a signed consent cannot be rewritten by the services' role ...
	if _, err := f.app.Exec(ctx, `UPDATE consents SET expire_time = expire_time + interval '10 years'`); err == nil {
		t.Fatal("the application role may change a consent's expiry")
	}
	if _, err := f.app.Exec(ctx, `UPDATE consents SET recipients = recipients || '{someone}'`); err == nil {
		t.Fatal("the application role may add recipients")
	}
	// ... and clearing the stamp does not bring a revoked consent back: the
	// append-only revocation still counts.
	if _, err := f.app.Exec(ctx, `UPDATE consents SET revoke_time = NULL`); err != nil {
		t.Fatal(err)
	}
	_, err = f.client.GetFamily(f.ehr("ehr-1"), &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	wantConsentRequired(t, err)
}

func TestCoveredFamiliesAndBatchDisclosures(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	a, b, gone := f.create(t), f.create(t), f.create(t)
	f.consent(t, a.GetName(), f.validConsent("ehr-1"))
	f.consent(t, b.GetName(), f.validConsent("ehr-2"))
	// A deleted family's consent outlives it, but the family is no more:
	// its identity is listed no more, its referrals (which go on) are.
	goneConsent := f.validConsent("ehr-1")
	goneConsent.Information = append(goneConsent.Information, familiesv1.InformationKind_INFORMATION_KIND_REFERRALS)
	f.consent(t, gone.GetName(), goneConsent)
	if _, err := f.client.DeleteFamily(f.admin, &familiesv1.DeleteFamilyRequest{Name: gone.GetName()}); err != nil {
		t.Fatal(err)
	}
	ehr := f.ehr("ehr-1")
	cov, err := f.client.ListCoveredFamilies(ehr, &familiesv1.ListCoveredFamiliesRequest{Parent: "clinics/north",
		Information: familiesv1.InformationKind_INFORMATION_KIND_IDENTITY})
	if err != nil || !slices.Equal(cov.GetFamilies(), []string{a.GetName()}) {
		t.Fatalf("covered for ehr-1 = %v, %v; want only %s", cov, err, a.GetName())
	}
	cov, err = f.client.ListCoveredFamilies(ehr, &familiesv1.ListCoveredFamiliesRequest{Parent: "clinics/north",
		Information: familiesv1.InformationKind_INFORMATION_KIND_REFERRALS})
	if err != nil || !slices.Equal(cov.GetFamilies(), []string{gone.GetName()}) {
		t.Fatalf("covered for referrals = %v, %v; want only the deleted family's (a's consent covers identity only)", cov, err)
	}
	one := func(fam string, recipient string) *familiesv1.CreateDisclosureRequest {
		return &familiesv1.CreateDisclosureRequest{Parent: fam, Disclosure: &familiesv1.Disclosure{Recipient: recipient,
			Information: familiesv1.InformationKind_INFORMATION_KIND_IDENTITY, Purpose: familiesv1.Purpose_PURPOSE_TREATMENT,
			Resource: fam, Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_API}}
	}
	resp, err := f.client.BatchCreateDisclosures(ehr, &familiesv1.BatchCreateDisclosuresRequest{Parent: "clinics/north",
		Requests: []*familiesv1.CreateDisclosureRequest{one(a.GetName(), "ehr-1"), one(b.GetName(), "ehr-1")}})
	if err != nil || len(resp.GetDisclosures()) != 1 || resp.GetDisclosures()[0].GetResource() != a.GetName() {
		t.Fatalf("batch = %v, %v; want only the covered family", resp, err)
	}
	if n := len(f.disclosures(t, b.GetName())); n != 0 {
		t.Fatalf("an uncovered disclosure was recorded (%d)", n)
	}
	_, err = f.client.BatchCreateDisclosures(ehr, &familiesv1.BatchCreateDisclosuresRequest{Parent: "clinics/north",
		Requests: []*familiesv1.CreateDisclosureRequest{one(b.GetName(), "ehr-2")}})
	wantCode(t, err, codes.InvalidArgument)
	// A dry run or a request id inside a batch is refused, and nothing is
	// recorded.
	dry, keyed := one(a.GetName(), "ehr-1"), one(a.GetName(), "ehr-1")
	dry.ValidateOnly, keyed.RequestId = true, "r-1"
	before := len(f.disclosures(t, a.GetName()))
	_, err = f.client.BatchCreateDisclosures(ehr, &familiesv1.BatchCreateDisclosuresRequest{Parent: "clinics/north",
		Requests: []*familiesv1.CreateDisclosureRequest{dry, keyed}})
	wantCode(t, err, codes.InvalidArgument)
	if got := apperr.ViolatedFields(err); !slices.Contains(got, "requests[0].validate_only") || !slices.Contains(got, "requests[1].request_id") {
		t.Fatalf("violations %v", got)
	}
	if n := len(f.disclosures(t, a.GetName())); n != before {
		t.Fatalf("a refused batch recorded %d disclosures", n-before)
	}
}

// Staff listing the consents or disclosures of a family that does not
// exist are told so (AIP-132), not given an empty list that reads as "no
// consent on file"; the EHR gets the empty list either way, which tells it
// nothing of whether the family exists.
func TestListsOfAMissingFamily(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	fam := f.create(t)
	missing := "clinics/north/families/no-such-family"
	_, err := f.client.ListConsents(f.ctx, &familiesv1.ListConsentsRequest{Parent: missing})
	wantCode(t, err, codes.NotFound)
	_, err = f.client.ListDisclosures(f.ctx, &familiesv1.ListDisclosuresRequest{Parent: missing})
	wantCode(t, err, codes.NotFound)
	for _, parent := range []string{missing, fam.GetName()} {
		if got, err := f.client.ListConsents(f.ehr("ehr-1"), &familiesv1.ListConsentsRequest{Parent: parent}); err != nil || len(got.GetConsents()) != 0 {
			t.Fatalf("the EHR listing the consents of %s: %v, %v; want an empty list", parent, got, err)
		}
	}
	// An existing family with none listed is an empty list for staff.
	if got, err := f.client.ListConsents(f.ctx, &familiesv1.ListConsentsRequest{Parent: fam.GetName()}); err != nil || len(got.GetConsents()) != 0 {
		t.Fatalf("consents of a family without any: %v, %v", got, err)
	}
	if got, err := f.client.ListDisclosures(f.ctx, &familiesv1.ListDisclosuresRequest{Parent: fam.GetName()}); err != nil || len(got.GetDisclosures()) != 0 {
		t.Fatalf("disclosures of a family without any: %v, %v", got, err)
	}
	// A disclosure staff record for a family that never was is NOT_FOUND,
	// not a missing consent; for one that exists, the missing consent.
	for parent, want := range map[string]codes.Code{missing: codes.NotFound, fam.GetName(): codes.FailedPrecondition} {
		for _, validateOnly := range []bool{false, true} {
			_, err := f.client.CreateDisclosure(f.ctx, &familiesv1.CreateDisclosureRequest{Parent: parent, ValidateOnly: validateOnly,
				Disclosure: &familiesv1.Disclosure{Recipient: "program-x", Information: familiesv1.InformationKind_INFORMATION_KIND_IDENTITY,
					Purpose: familiesv1.Purpose_PURPOSE_TREATMENT, Resource: parent, Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_MANUAL}})
			wantCode(t, err, want)
		}
	}
}

// A consent revoked for another recipient is, to the EHR, the same
// version as before, last changed when it was before: its etag and update
// time tell nothing of other recipients. A revocation it sees (its own, or
// of the whole consent) is a new version, changed then.
func TestOutsidersConsentVersionIsTheirPartsOwn(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	fam := f.create(t)
	co := f.consent(t, fam.GetName(), f.validConsent("ehr-1", "ehr-2"))
	ehr := f.ehr("ehr-1")
	read := func() *familiesv1.Consent {
		t.Helper()
		got, err := f.client.GetConsent(ehr, &familiesv1.GetConsentRequest{Name: co.GetName()})
		if err != nil {
			t.Fatal(err)
		}
		list, err := f.client.ListConsents(ehr, &familiesv1.ListConsentsRequest{Parent: fam.GetName()})
		if err != nil || len(list.GetConsents()) != 1 || !proto.Equal(list.GetConsents()[0], got) {
			t.Fatalf("listed %v, %v; want what GetConsent shows, %v", list, err, got)
		}
		return got
	}
	before := read()
	f.clock.Add(time.Hour)
	if _, err := f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: co.GetName(), Recipient: "ehr-2"}); err != nil {
		t.Fatal(err)
	}
	if after := read(); !proto.Equal(after, before) {
		t.Fatalf("after another recipient's revocation the EHR sees %v; want %v unchanged", after, before)
	}
	f.clock.Add(time.Hour)
	if _, err := f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: co.GetName(), Recipient: "ehr-1"}); err != nil {
		t.Fatal(err)
	}
	own := read()
	if own.GetEtag() == before.GetEtag() || !own.GetUpdateTime().AsTime().Equal(f.clock.Now().Truncate(time.Microsecond)) ||
		own.GetState() != familiesv1.ConsentState_CONSENT_STATE_REVOKED {
		t.Fatalf("after its own revocation the EHR sees %v; want a new version, changed now, REVOKED", own)
	}
}

// What the EHR sees of a family has a version and an update time of its
// own: an overdose, a coverage change or entering treatment, which its view
// leaves out, must not move them, or the etag and an update_time filter
// would tell it that one happened. A change it can see moves them.
func TestOutsidersDoNotSeeHiddenChangesHappen(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	fam := f.create(t)
	f.consent(t, fam.GetName(), f.validConsent("ehr-1"))
	ehr := f.ehr("ehr-1")
	read := func(ctx context.Context) *familiesv1.Family {
		t.Helper()
		got, err := f.client.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: fam.GetName()})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	since := func(at time.Time) int {
		t.Helper()
		l, err := f.client.ListFamilies(ehr, &familiesv1.ListFamiliesRequest{Parent: "clinics/north",
			Filter: fmt.Sprintf("update_time > %q", at.UTC().Format(time.RFC3339Nano))})
		if err != nil {
			t.Fatal(err)
		}
		return len(l.GetFamilies())
	}
	before := read(ehr)
	f.clock.Add(time.Minute)
	if _, err := f.client.CreateWarningSign(f.ctx, &familiesv1.CreateWarningSignRequest{Parent: fam.GetName(),
		WarningSign: &familiesv1.WarningSign{Kind: familiesv1.WarningSignKind_WARNING_SIGN_KIND_OVERDOSE}}); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(time.Minute)
	for _, u := range []*familiesv1.UpdateFamilyRequest{
		{Family: &familiesv1.Family{Name: fam.GetName(), Coverage: &familiesv1.Coverage{Kind: familiesv1.CoverageKind_COVERAGE_KIND_PRIVATE, Payer: "Acme"}},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"coverage"}}},
		{Family: &familiesv1.Family{Name: fam.GetName(), State: familiesv1.FamilyState_FAMILY_STATE_ENGAGED_IN_TREATMENT},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"state"}}},
	} {
		if _, err := f.client.UpdateFamily(f.ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	staff, seen := read(f.ctx), read(ehr)
	if staff.GetEtag() == before.GetEtag() {
		t.Fatal("staff see no new version after three changes")
	}
	if seen.GetEtag() != before.GetEtag() || !seen.GetUpdateTime().AsTime().Equal(before.GetUpdateTime().AsTime()) {
		t.Fatalf("the EHR's view moved with changes it cannot see: etag %s -> %s, update time %v -> %v",
			before.GetEtag(), seen.GetEtag(), before.GetUpdateTime().AsTime(), seen.GetUpdateTime().AsTime())
	}
	if n := since(before.GetUpdateTime().AsTime()); n != 0 {
		t.Fatalf("the EHR's update_time filter finds %d families changed in ways it cannot see", n)
	}
	// A writer a release behind knows nothing of the outsiders' version:
	// its change counts as one they see, so none is hidden from them.
	if _, err := f.pool.Exec(context.Background(), `UPDATE `+f.schema+`.families
		SET urgent = false, version = version + 1, update_time = update_time + interval '30 seconds'`); err != nil {
		t.Fatal(err)
	}
	older := read(ehr)
	if older.GetEtag() != "v2" || !older.GetUpdateTime().AsTime().After(before.GetUpdateTime().AsTime()) || since(before.GetUpdateTime().AsTime()) != 1 {
		t.Fatalf("after an older writer the EHR sees etag %s (was %s), update time %v: want v2, later", older.GetEtag(),
			before.GetEtag(), older.GetUpdateTime().AsTime())
	}
	before = older
	// A change it can see moves both, the etag by one: its steps do not
	// count the changes it cannot see.
	f.clock.Add(time.Minute)
	lo := proto.Clone(staff.GetLovedOne()).(*familiesv1.LovedOne)
	lo.PreferredName = "Sam R."
	if _, err := f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{
		Family:     &familiesv1.Family{Name: fam.GetName(), LovedOne: lo},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"loved_one"}}}); err != nil {
		t.Fatal(err)
	}
	after := read(ehr)
	if after.GetEtag() != "v3" || !after.GetUpdateTime().AsTime().After(before.GetUpdateTime().AsTime()) ||
		since(before.GetUpdateTime().AsTime()) != 1 || after.GetLovedOne().GetPreferredName() != "Sam R." {
		t.Fatalf("a change the EHR sees: etag %s -> %s, update time %v -> %v", before.GetEtag(), after.GetEtag(),
			before.GetUpdateTime().AsTime(), after.GetUpdateTime().AsTime())
	}
}

// To the EHR a family that does not exist (never made, or deleted) is
// refused as one its consent does not cover: the answer must not tell
// whether a patient's record exists. Staff still hear NOT_FOUND.
func TestEHRCannotTellAMissingFamily(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	fam := f.create(t)
	missing := "clinics/north/families/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
	var answers []string
	for _, name := range []string{missing, fam.GetName()} {
		_, err := f.client.GetFamily(f.ehr("ehr-1"), &familiesv1.GetFamilyRequest{Name: name})
		st := wantCode(t, err, codes.FailedPrecondition)
		answers = append(answers, strings.ReplaceAll(st.Message(), name, "NAME"))
		if !strings.Contains(fmt.Sprint(st.Details()), families.ReasonConsentRequired) {
			t.Fatalf("%s: %v; want %s", name, st.Details(), families.ReasonConsentRequired)
		}
	}
	if answers[0] != answers[1] {
		t.Fatalf("missing and uncovered families answer differently: %q vs %q", answers[0], answers[1])
	}
	_, err := f.client.GetFamily(f.ctx, &familiesv1.GetFamilyRequest{Name: missing})
	wantCode(t, err, codes.NotFound)
}

// The webhook sender, which serves every clinic, records only what it
// does: a notification sent for treatment. Its token cannot fill a
// family's accounting with faxes or payments, nor probe consents for them.
func TestWebhookSenderRecordsOnlyItsNotifications(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	fam := f.create(t)
	c := f.validConsent("sms-vendor")
	c.Purposes = []familiesv1.Purpose{familiesv1.Purpose_PURPOSE_TREATMENT, familiesv1.Purpose_PURPOSE_PAYMENT}
	f.consent(t, fam.GetName(), c)
	sender := f.env.As(auth.AnyClinic, "webhook-sender", auth.RoleWebhookSender)
	disclosure := func(ch familiesv1.DisclosureChannel, p familiesv1.Purpose) *familiesv1.Disclosure {
		return &familiesv1.Disclosure{Recipient: "sms-vendor", Information: familiesv1.InformationKind_INFORMATION_KIND_IDENTITY,
			Purpose: p, Resource: fam.GetName(), Channel: ch}
	}
	for field, d := range map[string]*familiesv1.Disclosure{
		"disclosure.channel": disclosure(familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_MANUAL, familiesv1.Purpose_PURPOSE_TREATMENT),
		"disclosure.purpose": disclosure(familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_WEBHOOK, familiesv1.Purpose_PURPOSE_PAYMENT),
	} {
		for _, validateOnly := range []bool{false, true} {
			_, err := f.client.CreateDisclosure(sender, &familiesv1.CreateDisclosureRequest{Parent: fam.GetName(), Disclosure: d, ValidateOnly: validateOnly})
			wantCode(t, err, codes.InvalidArgument)
			if !slices.Contains(apperr.ViolatedFields(err), field) {
				t.Fatalf("%s (validate only %v): violations %v", field, validateOnly, apperr.ViolatedFields(err))
			}
		}
	}
	if _, err := f.client.CreateDisclosure(sender, &familiesv1.CreateDisclosureRequest{Parent: fam.GetName(),
		Disclosure: disclosure(familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_WEBHOOK, familiesv1.Purpose_PURPOSE_TREATMENT)}); err != nil {
		t.Fatalf("the sender recording a notification it sends: %v", err)
	}
	got, err := f.client.ListDisclosures(f.ctx, &familiesv1.ListDisclosuresRequest{Parent: fam.GetName()})
	if err != nil || len(got.GetDisclosures()) != 1 || got.GetDisclosures()[0].GetChannel() != familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_WEBHOOK {
		t.Fatalf("the accounting: %v, %v; want the one notification", got.GetDisclosures(), err)
	}
}

// The loved one's entry into treatment is recorded on the family by the
// worker (or staff): ACTIVE becomes ENGAGED_IN_TREATMENT once, with one
// family.updated event; a retry, or a second referral completing, changes
// nothing; a closed family refuses it. The EHR, under an identity
// consent, sees neither the state nor a new version; it may not record it.
func TestTreatmentEntryIsRecordedOnce(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	fam := f.create(t)
	f.consent(t, fam.GetName(), f.validConsent("ehr-1"))
	seenBefore, err := f.client.GetFamily(f.ehr("ehr-1"), &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	if err != nil {
		t.Fatal(err)
	}
	worker := f.env.As(auth.AnyClinic, "worker", auth.RoleWorker)
	req := &familiesv1.RecordTreatmentEntryRequest{Name: fam.GetName(), RequestId: "entry-1"}
	got, err := f.client.RecordTreatmentEntry(worker, req)
	if err != nil || got.GetState() != familiesv1.FamilyState_FAMILY_STATE_ENGAGED_IN_TREATMENT || got.GetLatestSafetyScreen() != nil {
		t.Fatalf("recorded: %v, %v; want ENGAGED_IN_TREATMENT in the worker's view", got, err)
	}
	again, err := f.client.RecordTreatmentEntry(worker, req)
	if err != nil || again.GetEtag() != got.GetEtag() {
		t.Fatalf("retried: %v, %v; want the first answer", again, err)
	}
	second, err := f.client.RecordTreatmentEntry(f.ctx, &familiesv1.RecordTreatmentEntryRequest{Name: fam.GetName()})
	if err != nil || second.GetEtag() != got.GetEtag() {
		t.Fatalf("recorded again by a counselor: %v, %v; want no change", second, err)
	}
	var events int
	if err := f.pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox WHERE resource = $1 AND event_type = 'handoff.families.v1.family.updated'`,
		fam.GetName()).Scan(&events); err != nil || events != 1 {
		t.Fatalf("family.updated events: %d, %v; want 1", events, err)
	}
	seen, err := f.client.GetFamily(f.ehr("ehr-1"), &familiesv1.GetFamilyRequest{Name: fam.GetName()})
	if err != nil || seen.GetState() != familiesv1.FamilyState_FAMILY_STATE_ACTIVE || seen.GetEtag() != seenBefore.GetEtag() {
		t.Fatalf("the EHR's view after: %v (etag %s, before %s), %v; want ACTIVE at the same version", seen.GetState(), seen.GetEtag(), seenBefore.GetEtag(), err)
	}
	_, err = f.client.RecordTreatmentEntry(f.ehr("ehr-1"), &familiesv1.RecordTreatmentEntryRequest{Name: fam.GetName()})
	wantCode(t, err, codes.PermissionDenied)
	closed := f.create(t)
	closed.State = familiesv1.FamilyState_FAMILY_STATE_CLOSED
	if _, err := f.client.UpdateFamily(f.ctx, &familiesv1.UpdateFamilyRequest{Family: closed, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"state"}}}); err != nil {
		t.Fatal(err)
	}
	_, err = f.client.RecordTreatmentEntry(worker, &familiesv1.RecordTreatmentEntryRequest{Name: closed.GetName()})
	wantCode(t, err, codes.FailedPrecondition)
	_, err = f.client.RecordTreatmentEntry(worker, &familiesv1.RecordTreatmentEntryRequest{Name: "clinics/north/families/gone"})
	wantCode(t, err, codes.NotFound)
}

// A member's own referral is the member's record: the loved one's consent
// does not cover disclosing it, and the member's own consent covers it and
// nothing of the loved one's. The accounting names the member, and the
// covered list names the member apart from the families.
func TestMembersOwnRecordsNeedTheirOwnConsent(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	fam := f.create(t)
	referrals := func(c *familiesv1.Consent) *familiesv1.Consent {
		c.Information = []familiesv1.InformationKind{familiesv1.InformationKind_INFORMATION_KIND_REFERRALS}
		return c
	}
	ehr := f.ehr("ehr-1")
	disclose := func(member, resource string) (*familiesv1.Disclosure, error) {
		return f.client.CreateDisclosure(ehr, &familiesv1.CreateDisclosureRequest{Parent: fam.GetName(), Disclosure: &familiesv1.Disclosure{
			Recipient: "ehr-1", Information: familiesv1.InformationKind_INFORMATION_KIND_REFERRALS, Purpose: familiesv1.Purpose_PURPOSE_TREATMENT,
			Resource: resource, Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_API, MemberId: member}})
	}
	covered := func() *familiesv1.ListCoveredFamiliesResponse {
		t.Helper()
		cov, err := f.client.ListCoveredFamilies(ehr, &familiesv1.ListCoveredFamiliesRequest{Parent: "clinics/north",
			Information: familiesv1.InformationKind_INFORMATION_KIND_REFERRALS})
		if err != nil {
			t.Fatal(err)
		}
		return cov
	}

	// A consent of someone who is not in the family is refused on its field.
	stranger := referrals(f.validConsent("ehr-1"))
	stranger.MemberId = "uncle"
	_, err := f.client.CreateConsent(f.ctx, &familiesv1.CreateConsentRequest{Parent: fam.GetName(), Consent: stranger})
	wantCode(t, err, codes.InvalidArgument)
	if got := apperr.ViolatedFields(err); !slices.Equal(got, []string{"consent.member_id"}) {
		t.Fatalf("violations %v; want consent.member_id", got)
	}

	// A member's consent covers referrals only: the family and its meetings
	// are the loved one's records.
	identity := f.validConsent("ehr-1")
	identity.MemberId = "mom"
	_, err = f.client.CreateConsent(f.ctx, &familiesv1.CreateConsentRequest{Parent: fam.GetName(), Consent: identity})
	wantCode(t, err, codes.InvalidArgument)
	if got := apperr.ViolatedFields(err); !slices.Equal(got, []string{"consent.information"}) {
		t.Fatalf("violations %v; want consent.information", got)
	}
	if n := len(f.consentsOf(t, fam.GetName())); n != 0 {
		t.Fatalf("%d consents after the refusals; want none", n)
	}

	f.consent(t, fam.GetName(), referrals(f.validConsent("ehr-1")))
	_, err = disclose("mom", "clinics/north/referrals/r-mom")
	wantConsentRequired(t, err)
	if _, err := disclose("", "clinics/north/referrals/r-sam"); err != nil {
		t.Fatalf("the loved one's referral under her consent: %v", err)
	}
	if cov := covered(); !slices.Equal(cov.GetFamilies(), []string{fam.GetName()}) || len(cov.GetMembers()) != 0 {
		t.Fatalf("covered = %v; want the family and no member", cov)
	}

	moms := referrals(f.validConsent("ehr-1"))
	moms.MemberId, moms.Signer = "mom", "Ana"
	if got := f.consent(t, fam.GetName(), moms); got.GetMemberId() != "mom" {
		t.Fatalf("the member's consent = %v", got)
	}
	d, err := disclose("mom", "clinics/north/referrals/r-mom")
	if err != nil || d.GetMemberId() != "mom" {
		t.Fatalf("the member's referral under her own consent: %v, %v", d, err)
	}
	var recorded *familiesv1.Disclosure
	for _, x := range f.disclosures(t, fam.GetName()) {
		if x.GetResource() == "clinics/north/referrals/r-mom" {
			recorded = x
		}
	}
	if recorded.GetMemberId() != "mom" || recorded.GetConsent() == "" {
		t.Fatalf("the accounting's entry = %v; want the member named", recorded)
	}
	// Each patient's own accounting, as given to them on request, holds
	// theirs alone.
	accounting := func(filter string) (own []string, err error) {
		resp, err := f.client.ListDisclosures(f.ctx, &familiesv1.ListDisclosuresRequest{Parent: fam.GetName(), Filter: filter})
		for _, x := range resp.GetDisclosures() {
			own = append(own, x.GetMemberId()+" "+x.GetResource())
		}
		return own, err
	}
	if got, err := accounting(`member_id = "mom"`); err != nil || !slices.Equal(got, []string{"mom clinics/north/referrals/r-mom"}) {
		t.Fatalf("mom's accounting = %v, %v; want her referral alone", got, err)
	}
	if got, err := accounting(`member_id = ""`); err != nil || len(got) == 0 || slices.ContainsFunc(got, func(s string) bool { return !strings.HasPrefix(s, " ") }) {
		t.Fatalf("the loved one's accounting = %v, %v; want his entries and none of a member's", got, err)
	}
	if got, err := accounting(`recipient = "nobody" AND disclose_time >= "2000-01-01T00:00:00Z"`); err != nil || len(got) != 0 {
		t.Fatalf("an accounting for a recipient never disclosed to = %v, %v; want none", got, err)
	}
	if _, err := accounting(`consent = "x"`); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a filter on no such field: %v; want InvalidArgument", err)
	}
	// Each patient's consents apart, for the EHR too (FHIR's
	// Consent?patient= asks for the loved one's), alone or with a time.
	consentsOf := func(filter string) (own []string) {
		t.Helper()
		for _, ctx := range []context.Context{f.ctx, f.ehr("ehr-1")} {
			resp, err := f.client.ListConsents(ctx, &familiesv1.ListConsentsRequest{Parent: fam.GetName(), Filter: filter})
			if err != nil {
				t.Fatalf("consents %s: %v", filter, err)
			}
			own = nil
			for _, c := range resp.GetConsents() {
				own = append(own, c.GetMemberId())
			}
		}
		return own
	}
	for filter, want := range map[string][]string{
		`member_id = ""`:    {""},
		`member_id = "mom"`: {"mom"},
		`member_id = "" AND update_time >= "2000-01-01T00:00:00Z"`: {""},
	} {
		if got := consentsOf(filter); !slices.Equal(got, want) {
			t.Fatalf("consents %s = %q; want %q", filter, got, want)
		}
	}
	cov := covered()
	if len(cov.GetMembers()) != 1 || cov.GetMembers()[0].GetFamily() != fam.GetName() || cov.GetMembers()[0].GetMemberId() != "mom" {
		t.Fatalf("covered members = %v; want mom of %s", cov.GetMembers(), fam.GetName())
	}

	// The member's consent covers her records only: with the loved one's
	// revoked, his referral is refused though hers still goes.
	for _, c := range f.consentsOf(t, fam.GetName()) {
		if c.GetMemberId() == "" {
			if _, err := f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: c.GetName(), Reason: "changed his mind"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	_, err = disclose("", "clinics/north/referrals/r-sam")
	wantConsentRequired(t, err)
	if _, err := disclose("mom", "clinics/north/referrals/r-mom"); err != nil {
		t.Fatalf("the member's referral after the loved one revoked his: %v", err)
	}
	if cov := covered(); len(cov.GetFamilies()) != 0 || len(cov.GetMembers()) != 1 {
		t.Fatalf("covered after the loved one's revocation = %v; want mom only", cov)
	}

	// A member's own records an integration reads are referrals: not the
	// family's identity.
	_, err = f.client.CreateDisclosure(ehr, &familiesv1.CreateDisclosureRequest{Parent: fam.GetName(), Disclosure: &familiesv1.Disclosure{
		Recipient: "ehr-1", Information: familiesv1.InformationKind_INFORMATION_KIND_IDENTITY, Purpose: familiesv1.Purpose_PURPOSE_TREATMENT,
		Resource: fam.GetName(), Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_API, MemberId: "mom"}})
	wantCode(t, err, codes.InvalidArgument)
	if got := apperr.ViolatedFields(err); !slices.Contains(got, "disclosure.member_id") {
		t.Fatalf("violations %v; want disclosure.member_id", got)
	}
	// Nor can staff record one: no member's consent could cover it, and
	// CONSENT_REQUIRED would send them looking for one.
	_, err = f.client.CreateDisclosure(f.ctx, &familiesv1.CreateDisclosureRequest{Parent: fam.GetName(), Disclosure: &familiesv1.Disclosure{
		Recipient: "Springfield Recovery", Information: familiesv1.InformationKind_INFORMATION_KIND_APPOINTMENTS, Purpose: familiesv1.Purpose_PURPOSE_TREATMENT,
		Resource: "clinics/north/interventions/i-1", Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_MANUAL, MemberId: "mom"}})
	wantCode(t, err, codes.InvalidArgument)
	if got := apperr.ViolatedFields(err); !slices.Equal(got, []string{"disclosure.member_id"}) {
		t.Fatalf("staff's disclosure of a meeting for a member: violations %v; want disclosure.member_id", got)
	}
}

func (f *consentFixture) consentsOf(t *testing.T, fam string) []*familiesv1.Consent {
	t.Helper()
	resp, err := f.client.ListConsents(f.ctx, &familiesv1.ListConsentsRequest{Parent: fam})
	if err != nil {
		t.Fatalf("ListConsents: %v", err)
	}
	return resp.GetConsents()
}

// A birth date is judged by the service's clock, as every other time of
// the family is: one after the service's today is refused, whatever the
// machine's own clock says.
func TestBirthDateIsJudgedByTheServicesClock(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	f.clock.Add(-365 * 24 * time.Hour) // the service's clock is a year behind
	fam := sampleFamily()
	fam.LovedOne.BirthDate = time.Now().AddDate(0, -1, 0).Format(time.DateOnly)
	_, err := f.client.CreateFamily(f.ctx, &familiesv1.CreateFamilyRequest{Parent: "clinics/north", Family: fam})
	wantCode(t, err, codes.InvalidArgument)
	if got := apperr.ViolatedFields(err); !slices.Equal(got, []string{"family.loved_one.birth_date"}) {
		t.Fatalf("violations %v; want family.loved_one.birth_date", got)
	}
}

// The consents of every family of the clinic (families/-), as an outside
// system polls them: only those that name it or the treating providers,
// each under its own family, filtered by when they last changed; staff
// see them all. Another clinic's are not listed.
func TestClinicsConsentsForAPollingSystem(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	a, b, c := f.create(t), f.create(t), f.create(t)
	ca := f.consent(t, a.GetName(), f.validConsent("ehr-1"))
	f.consent(t, b.GetName(), f.validConsent("ehr-2"))
	f.clock.Add(time.Hour)
	since := f.clock.Now()
	cc := f.consent(t, c.GetName(), f.validConsent("ehr-1"))
	list := func(ctx context.Context, filter string) ([]string, error) {
		var names []string
		resp, err := f.client.ListConsents(ctx, &familiesv1.ListConsentsRequest{Parent: "clinics/north/families/-", Filter: filter})
		for _, co := range resp.GetConsents() {
			names = append(names, co.GetName())
		}
		slices.Sort(names)
		return names, err
	}
	want := []string{ca.GetName(), cc.GetName()}
	slices.Sort(want)
	if got, err := list(f.ehr("ehr-1"), ""); err != nil || !slices.Equal(got, want) {
		t.Fatalf("ehr-1's consents across the clinic = %v, %v; want %v", got, err, want)
	}
	if got, err := list(f.ehr("ehr-1"), fmt.Sprintf("update_time >= %q", since.UTC().Format(time.RFC3339Nano))); err != nil ||
		!slices.Equal(got, []string{cc.GetName()}) {
		t.Fatalf("ehr-1's consents changed since %v = %v, %v; want %s alone", since, got, err, cc.GetName())
	}
	if got, err := list(f.ctx, ""); err != nil || len(got) != 3 {
		t.Fatalf("staff's list of the clinic's consents = %v, %v; want all three", got, err)
	}
	// A filter of spaces names nothing: the list as without one.
	for _, ctx := range []context.Context{f.ctx, f.ehr("ehr-1")} {
		if got, err := list(ctx, "  "); err != nil || len(got) == 0 {
			t.Fatalf("a filter of spaces = %v, %v; want the list as without one", got, err)
		}
	}
	// A revocation for another recipient moves nothing ehr-1 is shown, so
	// a poll by time does not tell it of one; staff see the change.
	shared := f.consent(t, a.GetName(), f.validConsent("ehr-1", "ehr-3"))
	f.clock.Add(time.Hour)
	later := fmt.Sprintf("update_time >= %q", f.clock.Now().UTC().Format(time.RFC3339Nano))
	f.clock.Add(time.Hour)
	if _, err := f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: shared.GetName(), Recipient: "ehr-3"}); err != nil {
		t.Fatal(err)
	}
	// Nor does ehr-3's list of the clinic's consents name it any more: a
	// patient who shuts a provider out is not shown to it as the program's.
	if got, err := list(f.ehr("ehr-3"), ""); err != nil || slices.Contains(got, shared.GetName()) {
		t.Fatalf("ehr-3's consents across the clinic after its revocation = %v, %v; want %s left out", got, err, shared.GetName())
	}
	if got, err := list(f.ehr("ehr-1"), later); err != nil || len(got) != 0 {
		t.Fatalf("ehr-1's consents changed since another's revocation = %v, %v; want none", got, err)
	}
	if got, err := list(f.ctx, later); err != nil || !slices.Equal(got, []string{shared.GetName()}) {
		t.Fatalf("staff's consents changed since = %v, %v; want %s", got, err, shared.GetName())
	}
	// Expired by the service's clock (the database's has not come so
	// far), a consent's shown time is its expiry, and a poll finds it.
	expiry := ca.GetExpireTime().AsTime()
	f.clock.Add(expiry.Sub(f.clock.Now()) + time.Minute)
	got, err := list(f.ehr("ehr-1"), fmt.Sprintf("update_time >= %q", expiry.Add(-time.Second).UTC().Format(time.RFC3339Nano)))
	if err != nil || !slices.Contains(got, ca.GetName()) {
		t.Fatalf("ehr-1's consents changed since just before %s's expiry = %v, %v; want it among them", ca.GetName(), got, err)
	}
	// As for any of its records: not found, whether the clinic exists.
	_, err = f.client.ListConsents(f.ctx, &familiesv1.ListConsentsRequest{Parent: "clinics/south/families/-"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("another clinic's consents: %v; want NOT_FOUND", err)
	}
	_, err = f.client.ListConsents(f.ctx, &familiesv1.ListConsentsRequest{Parent: "clinics/north/families/--"})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a malformed parent: %v; want INVALID_ARGUMENT", err)
	}
}

// A consent recorded before recipients with spaces around them were
// refused can still be revoked for that recipient, spelt as it holds it.
func TestARecipientWithSpacesOnFileIsRevocable(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	fam := f.create(t)
	co := f.consent(t, fam.GetName(), f.validConsent("ehr-1", "ehr-2"))
	if _, err := f.pool.Exec(context.Background(), `UPDATE consents SET recipients = ARRAY['ehr-1 ', 'ehr-2'] WHERE id = $1`, path.Base(co.GetName())); err != nil {
		t.Fatal(err)
	}
	got, err := f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: co.GetName(), Recipient: "ehr-1 "})
	if err != nil || got.GetState() != familiesv1.ConsentState_CONSENT_STATE_ACTIVE {
		t.Fatalf("revoking for the recipient on file: %v, %v; want it done, the consent still active for ehr-2", got, err)
	}
	// Not under the treating-providers designation: revoked as spelt on
	// file, ehr-1 would go on reading under it.
	tp := f.validConsent("ehr-1")
	tp.TreatingProviders = true
	tpc := f.consent(t, fam.GetName(), tp)
	if _, err := f.pool.Exec(context.Background(), `UPDATE consents SET recipients = ARRAY['ehr-1 '] WHERE id = $1`, path.Base(tpc.GetName())); err != nil {
		t.Fatal(err)
	}
	_, err = f.client.RevokeConsent(f.ctx, &familiesv1.RevokeConsentRequest{Name: tpc.GetName(), Recipient: "ehr-1 "})
	wantCode(t, err, codes.InvalidArgument)
}

// The EHR's list of families never names, in its page or in its token, a
// family whose consent was revoked between the list's read and its
// disclosure record: the token resumes after the last family shown, and a
// page left with nothing is ABORTED, to be read again.
func TestFamilyPageTokenNamesNoFamilyLeftOut(t *testing.T) {
	t.Parallel()
	f := setupConsent(t)
	var fams []*familiesv1.Family
	var consents []*familiesv1.Consent
	for range 4 {
		fam := f.create(t)
		fams = append(fams, fam)
		consents = append(consents, f.consent(t, fam.GetName(), f.validConsent("ehr-1")))
	}
	after := func(token string) string { return servicetest.PageTokenAfter(t, token) }
	// A revocation stopped between its change and its commit.
	revoking := func(co *familiesv1.Consent) pgx.Tx {
		return inFlight(t, f.pool, stmt{`SELECT 1 FROM consents WHERE id = $1 FOR UPDATE`, []any{aip.ID(co.GetName())}},
			stmt{`UPDATE consents SET revoke_time = now(), version = version + 1 WHERE id = $1`, []any{aip.ID(co.GetName())}})
	}
	list := func(size int32, token string, during pgx.Tx) (*familiesv1.ListFamiliesResponse, error) {
		t.Helper()
		var resp *familiesv1.ListFamiliesResponse
		call := func() (err error) {
			resp, err = f.client.ListFamilies(f.ehr("ehr-1"), &familiesv1.ListFamiliesRequest{Parent: "clinics/north", PageSize: size, PageToken: token})
			return err
		}
		if during == nil {
			return resp, call()
		}
		done := waitsOn(t, f.pool, during, call)
		if err := during.Commit(context.Background()); err != nil {
			t.Fatal(err)
		}
		return resp, <-done
	}
	// The second family's consent revoked as the first page is read.
	page, err := list(2, "", revoking(consents[1]))
	if err != nil || len(page.GetFamilies()) != 1 || page.GetFamilies()[0].GetName() != fams[0].GetName() {
		t.Fatalf("first page %v, %v; want %s alone", page, err, fams[0].GetName())
	}
	if got := after(page.GetNextPageToken()); got != aip.ID(fams[0].GetName()) {
		t.Fatalf("the token resumes after %q; want after %s, the last family shown, not %s", got, aip.ID(fams[0].GetName()), aip.ID(fams[1].GetName()))
	}
	// A page whose one family's consent is revoked as it is read.
	first, err := list(1, "", nil)
	if err != nil || len(first.GetFamilies()) != 1 || first.GetNextPageToken() == "" {
		t.Fatalf("a page of one: %v, %v", first, err)
	}
	next := first.GetNextPageToken() // after the first family: the second is gone, the third next, the fourth after it
	_, err = list(1, next, revoking(consents[2]))
	if status.Code(err) != codes.Aborted {
		t.Fatalf("a page whose one family was revoked as it was read: %v; want ABORTED", err)
	}
}
