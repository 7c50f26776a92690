package gateway

import (
	"testing"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	webhooksv1 "github.com/handoff-health/handoff/gen/go/handoff/webhooks/v1"
)

// The routes taking everything in their body are read from the
// annotations, written as grpc-gateway writes a route's pattern.
func TestBodyOnlyRoutes(t *testing.T) {
	routes := bodyOnlyRoutes(familiesv1.File_handoff_families_v1_families_proto, interventionsv1.File_handoff_interventions_v1_interventions_proto,
		referralsv1.File_handoff_referrals_v1_referrals_proto, webhooksv1.File_handoff_webhooks_v1_webhooks_proto)
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
