package grpcserver_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/grpcserver"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/servicetest"
)

const (
	feedMethod  = "/handoff.test.Feed/Export"
	feedName    = "clinics/north/calendarFeeds/f1"
	feedSecret  = "s3cret-feed-token"
	otherMethod = "/handoff.test.Feed/Other"
)

// A method with a request credential is authenticated by its request, not by
// a bearer token, and its caller then meets the same policy, clinic scope and
// audit as anyone; the secret reaches neither the audit trail nor the
// services this one calls.
func TestRequestCredentials(t *testing.T) {
	rec := &recorder{}
	type seen struct {
		p            auth.Principal
		scope, token string
	}
	calls := make(chan seen, 10)
	handler := func(ctx context.Context, _ any) (any, error) {
		p, _ := auth.FromContext(ctx)
		calls <- seen{p, pgdb.ClinicOf(ctx), auth.TokenFromContext(ctx)}
		return &emptypb.Empty{}, nil
	}
	method := func(name, full string) grpc.MethodDesc {
		return grpc.MethodDesc{MethodName: name, Handler: func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
			in := new(interventionsv1.ExportCalendarFeedRequest)
			if err := dec(in); err != nil {
				return nil, err
			}
			return icpt(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: full}, handler)
		}}
	}
	roles := []auth.Role{auth.RoleCalendarFeed}
	env := servicetest.Start(t, grpcserver.Policy{feedMethod: {auth.RoleCalendarFeed}, otherMethod: {auth.RoleCalendarFeed}},
		func(s *grpc.Server) {
			s.RegisterService(&grpc.ServiceDesc{ServiceName: "handoff.test.Feed", HandlerType: (*any)(nil),
				Methods: []grpc.MethodDesc{method("Export", feedMethod), method("Other", otherMethod)}}, struct{}{})
		})
	env.Server.SetAuditor(rec)
	env.Server.SetCredentials(map[string]grpcserver.Credential{
		feedMethod: func(_ context.Context, req any) (auth.Principal, error) {
			r, ok := req.(*interventionsv1.ExportCalendarFeedRequest)
			switch r.GetToken() {
			case "outage": // the check's database out of reach
				return auth.Principal{}, fmt.Errorf("read calendar feed: %w", &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")})
			case "broken":
				return auth.Principal{}, errors.New("read calendar feed: a fault")
			}
			if !ok || r.GetName() != feedName || r.GetToken() != feedSecret {
				return auth.Principal{}, status.Error(codes.NotFound, "no such feed")
			}
			return auth.Principal{Subject: "counselor-1", Clinic: "north", Roles: roles}, nil
		},
	})
	call := func(ctx context.Context, method, token string) error {
		return env.Conn.Invoke(ctx, method, &interventionsv1.ExportCalendarFeedRequest{Name: feedName, Token: token}, &emptypb.Empty{})
	}

	// Without any bearer token, the request's secret lets the call in.
	if err := call(context.Background(), feedMethod, feedSecret); err != nil {
		t.Fatalf("with the feed's secret: %v", err)
	}
	got := <-calls
	if got.p.Subject != "counselor-1" || !got.p.Has(auth.RoleCalendarFeed) || got.scope != "north" || got.token != "" {
		t.Fatalf("handler saw %+v", got)
	}
	// A bearer token changes nothing: a wrong secret is refused even with a
	// good token, and the caller is the credential's, not the token's.
	admin := env.As("north", "admin-1", auth.RoleClinicAdmin, auth.RoleCalendarFeed)
	if err := call(admin, feedMethod, "wrong"); status.Code(err) != codes.NotFound {
		t.Fatalf("wrong secret with a bearer token: %v, want NotFound", err)
	}
	if err := call(admin, feedMethod, feedSecret); err != nil {
		t.Fatal(err)
	}
	if got = <-calls; got.p.Subject != "counselor-1" || got.token != "" {
		t.Fatalf("with a bearer token the handler saw %+v; the bearer token must be ignored", got)
	}
	if err := call(context.Background(), feedMethod, ""); status.Code(err) != codes.NotFound {
		t.Fatalf("no secret: %v, want NotFound", err)
	}
	// A check that could not reach its database is for the caller to
	// retry, as a handler's would be; any other failure is internal.
	if err := call(context.Background(), feedMethod, "outage"); status.Code(err) != codes.Unavailable {
		t.Fatalf("credential check with its database out of reach: %v, want Unavailable", err)
	}
	if err := call(context.Background(), feedMethod, "broken"); status.Code(err) != codes.Internal {
		t.Fatalf("credential check that failed: %v, want Internal", err)
	}
	// Methods without a credential still need a bearer token.
	if err := call(context.Background(), otherMethod, feedSecret); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("other method without a token: %v, want Unauthenticated", err)
	}
	// The policy still applies to the credential's principal.
	roles = []auth.Role{auth.RoleCounselor}
	if err := call(context.Background(), feedMethod, feedSecret); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("credential with a role the policy refuses: %v, want PermissionDenied", err)
	}

	rec.mu.Lock()
	defer rec.mu.Unlock()
	var feedEvents int
	for _, e := range rec.events {
		if strings.Contains(e.Resource+e.RequestID+e.Subject+e.Method, feedSecret) {
			t.Fatalf("the secret reached the audit trail: %+v", e)
		}
		if e.Method == feedMethod {
			feedEvents++
			if e.Subject != "counselor-1" || e.Resource != feedName {
				t.Fatalf("audit event %+v", e)
			}
		}
	}
	if feedEvents != 3 { // two allowed calls and the refused one
		t.Fatalf("%d audited feed calls, want 3: %+v", feedEvents, rec.events)
	}
}

// A request credential that names nothing is a failed sign-in in the log,
// with where it came from; one that could not be checked (its database
// out of reach) is not: guessing at feed addresses is watched there, and
// an outage must not look like it.
func TestCredentialOutageIsNotAFailedSignIn(t *testing.T) {
	iss, err := auth.NewIssuer("https://issuer.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	logs := &servicetest.LogBuffer{}
	type failure struct{ err error }
	var fail atomic.Pointer[failure]
	srv, err := grpcserver.New(grpcserver.Config{Logger: slog.New(slog.NewJSONHandler(logs, nil)), Verifier: iss.Verifier(),
		Policy: grpcserver.Policy{feedMethod: {auth.RoleCalendarFeed}},
		Credentials: map[string]grpcserver.Credential{feedMethod: func(context.Context, any) (auth.Principal, error) {
			return auth.Principal{}, fail.Load().err
		}}})
	if err != nil {
		t.Fatal(err)
	}
	srv.Server.RegisterService(&grpc.ServiceDesc{ServiceName: "handoff.test.Feed", HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{MethodName: "Export", Handler: func(s any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
			in := new(emptypb.Empty)
			if err := dec(in); err != nil {
				return nil, err
			}
			return icpt(ctx, in, &grpc.UnaryServerInfo{Server: s, FullMethod: feedMethod}, func(context.Context, any) (any, error) { return in, nil })
		}}}}, struct{}{})
	conn := serve(t, srv)
	for _, c := range []struct {
		err    error
		signIn bool
	}{
		{fmt.Errorf("read calendar feed: %w", &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}), false},
		// A conflict in the check's read: the caller is to retry.
		{fmt.Errorf("read calendar feed: %w", &pgconn.PgError{Code: "40P01"}), false},
		{status.Error(codes.NotFound, "no such feed"), true},
	} {
		fail.Store(&failure{c.err})
		before := strings.Count(logs.String(), `"msg":"authentication failed"`)
		_ = conn.Invoke(context.Background(), feedMethod, &emptypb.Empty{}, &emptypb.Empty{})
		if got := strings.Count(logs.String(), `"msg":"authentication failed"`) > before; got != c.signIn {
			t.Errorf("credential failing with %v: logged as a failed sign-in %v; want %v\n%s", c.err, got, c.signIn, logs.String())
		}
	}
}
