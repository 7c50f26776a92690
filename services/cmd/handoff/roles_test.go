package main

import (
	"os"
	"strings"
	"testing"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	webhooksv1 "github.com/handoff-health/handoff/gen/go/handoff/webhooks/v1"
	"google.golang.org/grpc"
)

// The README's role table is the policy the services enforce, and every
// method of every service has a policy (a method without one is refused to
// everyone, which would be a silent outage).
func TestRoleTableMatchesPoliciesAndREADME(t *testing.T) {
	for _, sd := range []grpc.ServiceDesc{familiesv1.FamiliesService_ServiceDesc, interventionsv1.InterventionsService_ServiceDesc,
		referralsv1.ReferralsService_ServiceDesc, webhooksv1.WebhooksService_ServiceDesc} {
		for _, m := range sd.Methods {
			full := "/" + sd.ServiceName + "/" + m.MethodName
			found := false
			for _, d := range serviceDefs {
				_, ok := d.policy[full]
				found = found || ok
			}
			if !found {
				t.Errorf("%s has no policy", full)
			}
		}
	}
	readme, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), roleTable()) {
		t.Fatalf("README.md's role table is out of date; replace it with the output of `go run ./services/cmd/handoff roles`:\n%s", roleTable())
	}
}
