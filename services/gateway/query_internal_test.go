package gateway

import (
	"context"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/grpc-ecosystem/grpc-gateway/v2/utilities"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
)

// The routes taking everything in their body are read from the
// annotations, written as grpc-gateway writes a route's pattern.
func TestBodyOnlyRoutes(t *testing.T) {
	routes := bodyOnlyRoutes(apiFiles...)
	for _, want := range []string{
		"POST /v1/{name=clinics/*/referrals/*}:accept",
		"POST /v1/{name=clinics/*/interventions/*}:schedule",
	} {
		if !routes[want] {
			t.Errorf("%q is not among the body-only routes %v", want, routes)
		}
	}
	if routes["POST /v1/{parent=clinics/*}/families"] {
		t.Error("CreateFamily (body: family) counted as body-only")
	}
	for in, want := range map[string]string{
		"/v1/{name}:accept":               "/v1/{name=*}:accept",
		"/v1/{parent=clinics/*}/families": "/v1/{parent=clinics/*}/families",
		"/v1/{a}/x/{b=c/*}":               "/v1/{a=*}/x/{b=c/*}",
	} {
		if got := canonicalPath(in); got != want {
			t.Errorf("canonicalPath(%q) = %q; want %q", in, got, want)
		}
	}
}

// If-Match fills the etag of a write (its own, or its resource's), and
// refuses what it would misread or drop: a list, a write with no version
// to check, a body naming another version. A read ignores it.
func TestIfMatch(t *testing.T) {
	call := func(method string, req proto.Message, ifMatch ...string) (proto.Message, error) {
		ctx := metadata.NewOutgoingContext(context.Background(), metadata.Pairs())
		for _, v := range ifMatch {
			ctx = metadata.AppendToOutgoingContext(ctx, "if-match", v)
		}
		var sent proto.Message
		err := fillFromHeaders(ctx, method, req, nil, nil, func(_ context.Context, _ string, req, _ any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
			sent = req.(proto.Message)
			return nil
		})
		return sent, err
	}
	const svc = "/handoff.families.v1.FamiliesService/"
	sent, err := call(svc+"DeleteFamily", &familiesv1.DeleteFamilyRequest{Name: "clinics/north/families/f1"}, `"v3"`)
	if err != nil || sent.(*familiesv1.DeleteFamilyRequest).GetEtag() != "v3" {
		t.Fatalf("delete with If-Match: %v, %v", sent, err)
	}
	sent, err = call(svc+"UpdateFamily", &familiesv1.UpdateFamilyRequest{}, `W/"v4"`)
	if err != nil || sent.(*familiesv1.UpdateFamilyRequest).GetFamily().GetEtag() != "v4" {
		t.Fatalf("update with If-Match: %v, %v", sent, err)
	}
	for _, body := range []string{"v4", `"v4"`, `W/"v4"`} {
		if _, err := call(svc+"UpdateFamily", &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Etag: body}}, `"v4"`); err != nil {
			t.Fatalf("the same version in both (the body's %s): %v", body, err)
		}
	}
	for name, c := range map[string]struct {
		method string
		req    proto.Message
		header []string
	}{
		"a list":           {svc + "DeleteFamily", &familiesv1.DeleteFamilyRequest{}, []string{`"v2", "v3"`}},
		"two headers":      {svc + "DeleteFamily", &familiesv1.DeleteFamilyRequest{}, []string{`"v2"`, `"v3"`}},
		"another version":  {svc + "UpdateFamily", &familiesv1.UpdateFamilyRequest{Family: &familiesv1.Family{Etag: "v2"}}, []string{`"v3"`}},
		"nothing to check": {svc + "ResolveBarrier", &familiesv1.ResolveBarrierRequest{}, []string{`"v3"`}},
		// An empty etag would reach the service as none: the write unguarded.
		"an empty header":   {svc + "DeleteFamily", &familiesv1.DeleteFamilyRequest{}, []string{``}},
		"an empty etag":     {svc + "UpdateFamily", &familiesv1.UpdateFamilyRequest{}, []string{`""`}},
		"* hiding an etag":  {svc + "DeleteFamily", &familiesv1.DeleteFamilyRequest{}, []string{`*`, `"v3"`}},
		"a create":          {svc + "CreateFamily", &familiesv1.CreateFamilyRequest{}, []string{`"v3"`}},
		"a create's member": {svc + "CreateConsent", &familiesv1.CreateConsentRequest{}, []string{`W/"v1"`}},
	} {
		if _, err := call(c.method, c.req, c.header...); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v; want INVALID_ARGUMENT", name, err)
		}
	}
	if sent, err := call(svc+"GetFamily", &familiesv1.GetFamilyRequest{Name: "x"}, `"v3"`); err != nil || sent == nil {
		t.Fatalf("a read with If-Match: %v, %v; want it passed on", sent, err)
	}
	// A read is a GET binding, whatever its name.
	if sent, err := call("/handoff.referrals.v1.ReferralsService/SummarizeReferrals", &referralsv1.SummarizeReferralsRequest{}, `"v3"`); err != nil || sent == nil {
		t.Fatalf("SummarizeReferrals with If-Match: %v, %v; want it passed on", sent, err)
	}
}

// The verbs a path takes, for a 405's Allow header, are read from the
// annotations' templates: variables spanning segments, custom verbs and
// paths of another length each decide a match.
func TestAllowed(t *testing.T) {
	rs := routes(apiFiles...)
	for path, want := range map[string]string{
		"/v1/clinics/north/families":                               "GET, POST",
		"/v1/clinics/north/families/f1":                            "DELETE, GET, PATCH",
		"/v1/clinics/north/families/-/disclosures:batchCreate":     "POST",
		"/v1/clinics/north/families/f1/disclosures":                "GET, POST",
		"/v1/clinics/north/families/f1:nothing":                    "DELETE, GET, PATCH", // the family "f1:nothing", as the mux reads it
		"/v1/clinics/north/families/-/disclosures:nothing":         "",
		"/v1/clinics/north/reminders/:claim":                       "GET",       // a colon opening the segment is no verb
		"/v1/clinics/north/reminders/r1:claim":                     "GET, POST", // the claim, or the reminder "r1:claim"
		"/v1/clinics/north/families/f1/warningSigns/w1/extra/more": "",
		"/v1/elsewhere": "",
	} {
		if got := allowed(rs, path); got != want {
			t.Errorf("%s: Allow %q, want %q", path, got, want)
		}
	}
}

// The routes that take no body are the reads and the deletes, read from
// the annotations; a step or an update takes one.
func TestNoBodyRoutes(t *testing.T) {
	routes := noBodyRoutes(apiFiles...)
	for _, want := range []string{"DELETE /v1/{name=clinics/*/families/*}", "GET /v1/{parent=clinics/*}/families"} {
		if !routes[want] {
			t.Errorf("%q is not among the routes taking no body", want)
		}
	}
	for _, not := range []string{"POST /v1/{name=clinics/*/referrals/*}:accept", "PATCH /v1/{family.name=clinics/*/families/*}"} {
		if routes[not] {
			t.Errorf("%q counted as taking no body", not)
		}
	}
}

// A field mask in the query is read in the REST API's lowerCamelCase as in
// proto names, and one field sent in both spellings is refused rather than
// taken at random.
func TestStrictQuery(t *testing.T) {
	q := &strictQuery{}
	parse := func(raw string) (*familiesv1.UpdateFamilyRequest, error) {
		values, err := url.ParseQuery(raw)
		if err != nil {
			t.Fatal(err)
		}
		req := &familiesv1.UpdateFamilyRequest{}
		return req, q.Parse(req, values, utilities.NewDoubleArray(nil))
	}
	for raw, want := range map[string][]string{
		"updateMask=lovedOne.timeZone,counselor":   {"loved_one.time_zone", "counselor"},
		"update_mask=loved_one.time_zone":          {"loved_one.time_zone"},
		"updateMask=lovedOne,members":              {"loved_one", "members"},
		"updateMask=lovedOne.noSuchField,colourOf": {"loved_one.noSuchField", "colourOf"},
		"updateMask.paths=lovedOne.timeZone":       {"loved_one.time_zone"},
	} {
		req, err := parse(raw)
		if err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		if got := req.GetUpdateMask().GetPaths(); !slices.Equal(got, want) {
			t.Errorf("%s: paths %q, want %q", raw, got, want)
		}
	}
	for _, raw := range []string{"updateMask=counselor&update_mask=state", "family.lovedOne.givenName=a&family.loved_one.given_name=b",
		"updateMask=counselor&updateMask.paths=state"} {
		if _, err := parse(raw); err == nil || !strings.Contains(err.Error(), "name the same field") {
			t.Errorf("%s: %v, want a refusal naming both", raw, err)
		}
	}
}
