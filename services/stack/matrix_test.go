package stack_test

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	webhooksv1 "github.com/handoff-health/handoff/gen/go/handoff/webhooks/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/families"
	"github.com/handoff-health/handoff/services/grpcclient"
	"github.com/handoff-health/handoff/services/grpcserver"
	"github.com/handoff-health/handoff/services/interventions"
	"github.com/handoff-health/handoff/services/referrals"
	"github.com/handoff-health/handoff/services/stack/stacktest"
	"github.com/handoff-health/handoff/services/webhooks"
)

var idPart = regexp.MustCompile(`\[a-z0-9\]\[a-z0-9-\]\{0,62\}`)

// nameFor builds a resource name in clinic that matches a field's
// validation pattern, e.g. clinics/north/families/x.
func nameFor(fd protoreflect.FieldDescriptor, clinic string) string {
	rules, _ := proto.GetExtension(fd.Options(), validate.E_Field).(*validate.FieldRules)
	pattern := rules.GetString().GetPattern()
	if !strings.HasPrefix(pattern, "^clinics/") {
		return ""
	}
	s := strings.TrimSuffix(strings.TrimPrefix(pattern, "^"), "$")
	s = idPart.ReplaceAllString(s, "x")
	return "clinics/" + clinic + strings.TrimPrefix(s, "clinics/x")
}

// request builds a request for method whose resource names all point into
// clinic: enough to pass authorization, whatever happens after.
func request(md protoreflect.MethodDescriptor, clinic string) proto.Message {
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
	if err != nil {
		panic(err)
	}
	m := mt.New()
	var fill func(m protoreflect.Message, depth int)
	fill = func(m protoreflect.Message, depth int) {
		fields := m.Descriptor().Fields()
		for i := 0; i < fields.Len(); i++ {
			fd := fields.Get(i)
			switch {
			case fd.Kind() == protoreflect.StringKind && !fd.IsList():
				if n := nameFor(fd, clinic); n != "" {
					m.Set(fd, protoreflect.ValueOfString(n))
				}
			case fd.Kind() == protoreflect.MessageKind && !fd.IsList() && !fd.IsMap() && depth == 0 &&
				fd.Message().Fields().ByName("name") != nil:
				fill(m.Mutable(fd).Message(), depth+1)
				nf := fd.Message().Fields().ByName("name")
				sub := m.Mutable(fd).Message()
				if sub.Get(nf).String() == "" {
					// Resources carry their name without a pattern; derive it from
					// the method's HTTP-style collection.
					sub.Set(nf, protoreflect.ValueOfString("clinics/"+clinic+"/"+collectionOf(fd.Message())+"/x"))
				}
			}
		}
	}
	fill(m, 0)
	return m.Interface()
}

func collectionOf(md protoreflect.MessageDescriptor) string {
	switch md.Name() {
	case "Family":
		return "families"
	case "Barrier":
		return "families/x/barriers"
	case "Boundary":
		return "families/x/boundaries"
	case "Intervention":
		return "interventions"
	case "Program":
		return "programs"
	case "Subscription":
		return "subscriptions"
	case "Referral":
		return "referrals"
	}
	return strings.ToLower(string(md.Name())) + "s"
}

// Every method x {own clinic, other clinic, no token, expired token, wrong
// audience, wrong role}: only an allowed role in its own clinic gets past
// authentication, authorization and clinic isolation.
func TestAuthorizationMatrix(t *testing.T) {
	current = t
	sys := stacktest.Start(t)
	conns := map[string]*grpc.ClientConn{}
	for name, addr := range map[string]string{"families": sys.Stack.FamiliesAddr, "interventions": sys.Stack.InterventionsAddr,
		"referrals": sys.Stack.ReferralsAddr, "webhooks": sys.Stack.WebhooksAddr} {
		c, err := grpcclient.Dial(addr, grpcclient.Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[name] = c
	}
	services := []struct {
		conn   *grpc.ClientConn
		desc   protoreflect.ServiceDescriptor
		policy grpcserver.Policy
	}{
		{conns["families"], familiesv1.File_handoff_families_v1_families_proto.Services().Get(0), families.Policy()},
		{conns["interventions"], interventionsv1.File_handoff_interventions_v1_interventions_proto.Services().Get(0), interventions.Policy()},
		{conns["referrals"], referralsv1.File_handoff_referrals_v1_referrals_proto.Services().Get(0), referrals.Policy()},
		{conns["webhooks"], webhooksv1.File_handoff_webhooks_v1_webhooks_proto.Services().Get(0), webhooks.Policy()},
	}
	allRoles := []auth.Role{auth.RoleCounselor, auth.RoleClinicAdmin, auth.RoleEHR, auth.RoleReminders, auth.RoleWorker,
		auth.RoleCalendarFeed, auth.RoleCalendarReader, auth.RoleWebhookSender}
	// Methods authenticated by a secret in the request (a calendar feed's
	// token) ignore bearer tokens: every cell without the secret is
	// NOT_FOUND.
	requestCredential := map[string]bool{"/handoff.interventions.v1.InterventionsService/ExportCalendarFeed": true}
	token := func(o auth.TokenOptions) context.Context {
		ctx, cancel := context.WithTimeout(auth.WithToken(context.Background(), sys.Issuer.MustMint(o)), 10*time.Second)
		t.Cleanup(cancel)
		return ctx
	}
	cells := 0
	for _, svc := range services {
		for i := 0; i < svc.desc.Methods().Len(); i++ {
			md := svc.desc.Methods().Get(i)
			full := fmt.Sprintf("/%s/%s", svc.desc.FullName(), md.Name())
			allowed := svc.policy[full]
			if len(allowed) == 0 {
				t.Fatalf("%s has no policy", full)
			}
			role := allowed[0]
			if role == auth.RoleWorker && len(allowed) > 1 {
				role = allowed[1]
			}
			own := "north"
			if role == auth.RoleWorker {
				own = auth.AnyClinic // the worker's service identity
			}
			call := func(ctx context.Context, clinic string) codes.Code {
				out := md.Output()
				mt, _ := protoregistry.GlobalTypes.FindMessageByName(out.FullName())
				err := svc.conn.Invoke(ctx, full, request(md, clinic), mt.New().Interface())
				return status.Code(err)
			}
			good := auth.TokenOptions{Subject: "someone", Clinic: own, Roles: []auth.Role{role}}
			check := func(cell string, got codes.Code, want ...codes.Code) {
				t.Helper()
				cells++
				if !slices.Contains(want, got) {
					t.Errorf("%s [%s]: got %v, want one of %v", full, cell, got, want)
				}
			}
			denied := []codes.Code{codes.Unauthenticated, codes.PermissionDenied}
			unauthenticated, wrongRole := []codes.Code{codes.Unauthenticated}, []codes.Code{codes.PermissionDenied}
			if requestCredential[full] {
				// The feed's own secret is the only credential: bearer
				// tokens, good or bad, find nothing.
				unauthenticated, wrongRole = []codes.Code{codes.NotFound}, []codes.Code{codes.NotFound}
			}
			// Own clinic, allowed role: past the door (the call may still fail
			// for its own reasons: a made-up resource, missing fields).
			if got := call(token(good), "north"); slices.Contains(denied, got) {
				t.Errorf("%s [own clinic, %s]: refused with %v", full, role, got)
			}
			cells++
			if role != auth.RoleWorker {
				// Another clinic's names: never found (or refused as malformed
				// before any lookup).
				check("other clinic", call(token(good), "south"), codes.NotFound, codes.InvalidArgument)
			}
			check("no token", call(context.Background(), "north"), unauthenticated...)
			expired := good
			expired.IssuedAt, expired.TTL = time.Now().Add(-2*time.Hour), time.Hour
			check("expired token", call(token(expired), "north"), unauthenticated...)
			wrongAud := good
			wrongAud.Audience = "some-other-api"
			check("wrong audience", call(token(wrongAud), "north"), unauthenticated...)
			for _, r := range allRoles {
				if !slices.Contains(allowed, r) {
					wrong := auth.TokenOptions{Subject: "someone", Clinic: "north", Roles: []auth.Role{r}}
					check("wrong role "+string(r), call(token(wrong), "north"), wrongRole...)
					break
				}
			}
			// A calendar feed's role reads that feed and calls nothing else;
			// the calendar reader, which serves every clinic, only lists.
			if !slices.Contains(allowed, auth.RoleCalendarFeed) {
				feedOnly := auth.TokenOptions{Subject: "someone", Clinic: "north", Roles: []auth.Role{auth.RoleCalendarFeed}}
				check("calendar feed role", call(token(feedOnly), "north"), codes.PermissionDenied)
			}
			if !slices.Contains(allowed, auth.RoleCalendarReader) {
				calReader := auth.TokenOptions{Subject: "calendar-reader", Clinic: auth.AnyClinic, Roles: []auth.Role{auth.RoleCalendarReader}}
				check("calendar reader", call(token(calReader), "north"), wrongRole...)
			}
			// The webhook sender, which also serves every clinic, only
			// checks and records disclosures.
			if !slices.Contains(allowed, auth.RoleWebhookSender) {
				sender := auth.TokenOptions{Subject: "webhook-sender", Clinic: auth.AnyClinic, Roles: []auth.Role{auth.RoleWebhookSender}}
				check("webhook sender", call(token(sender), "north"), wrongRole...)
			}
		}
	}
	if cells < 300 {
		t.Fatalf("only %d cells checked", cells)
	}
	t.Logf("%d cells checked", cells)
}
