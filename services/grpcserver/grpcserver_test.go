package grpcserver_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/handoff-health/handoff/services/audit"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/grpcclient"
	"github.com/handoff-health/handoff/services/grpcserver"
	"github.com/handoff-health/handoff/services/servicetest"
)

// recorder is a unit-test Auditor: it keeps each event and whether the
// context it was given was still alive.
type recorder struct {
	mu     sync.Mutex
	events []audit.Event
	dead   []error
}

func (r *recorder) Record(ctx context.Context, e audit.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
	r.dead = append(r.dead, ctx.Err())
	return ctx.Err() // a database write on a dead context fails the same way
}

const slowMethod = "/handoff.test.Slow/Call"

// serveOne starts a server with one unary method, open to counselors, whose
// handler (behind the interceptors) is handle.
func serveOne(t *testing.T, method string, handle func(ctx context.Context) (any, error)) *servicetest.Env {
	t.Helper()
	return servicetest.Start(t, grpcserver.Policy{method: {auth.RoleCounselor}}, registerOne(method, handle))
}

// registerOne registers method, a unary method whose handler is handle.
func registerOne(method string, handle func(ctx context.Context) (any, error)) func(*grpc.Server) {
	service, name, _ := strings.Cut(strings.TrimPrefix(method, "/"), "/")
	return func(s *grpc.Server) {
		s.RegisterService(&grpc.ServiceDesc{ServiceName: service, HandlerType: (*any)(nil),
			Methods: []grpc.MethodDesc{{MethodName: name, Handler: func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
				in := new(emptypb.Empty)
				if err := dec(in); err != nil {
					return nil, err
				}
				return icpt(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: method}, func(ctx context.Context, _ any) (any, error) {
					return handle(ctx)
				})
			}}}}, struct{}{})
	}
}

// recorded waits up to five seconds for an audit event and returns them
// all; the caller holds rec.mu until it is done with them.
func (r *recorder) recorded() []audit.Event {
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.mu.Lock()
		if len(r.events) > 0 || time.Now().After(deadline) {
			return r.events
		}
		r.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
}

// A handler that finishes after its caller gave up (its change may be
// committed) is still audited: the record must not use the caller's context.
func TestAuditSurvivesACallerThatHungUp(t *testing.T) {
	rec := &recorder{}
	handled := make(chan struct{})
	env := serveOne(t, slowMethod, func(ctx context.Context) (any, error) {
		<-ctx.Done() // the "commit" lands after the caller is gone
		close(handled)
		return &emptypb.Empty{}, nil
	})
	env.Server.SetAuditor(rec)
	// Time for the first call's connection on a busy machine: a call that
	// never reached the handler would leave the test waiting on handled.
	ctx, cancel := context.WithTimeout(env.Counselor("north"), time.Second)
	defer cancel()
	if err := env.Conn.Invoke(ctx, slowMethod, &emptypb.Empty{}, &emptypb.Empty{}); err == nil {
		t.Fatal("the call should have run out of time")
	}
	<-handled
	events := rec.recorded()
	defer rec.mu.Unlock()
	if len(events) != 1 || events[0].Method != slowMethod || events[0].Subject != "counselor-1" {
		t.Fatalf("audit events = %+v", events)
	}
	if rec.dead[0] != nil {
		t.Fatalf("the audit record was written on a dead context (%v): the committed call would go unaudited", rec.dead[0])
	}
}

// A database call cut short by the caller's deadline is the caller's
// DEADLINE_EXCEEDED or CANCELLED, not a fault of the service (INTERNAL),
// whether pgx returns the context's error (wrapped) or PostgreSQL's own
// cancellation of the statement (57014, otherwise a database too slow).
func TestCallerDeadlineIsNotInternal(t *testing.T) {
	for i, c := range []struct {
		name string
		err  func(ctx context.Context) error
	}{
		{"the context's error", func(ctx context.Context) error { return fmt.Errorf("read family: %w", ctx.Err()) }},
		{"PostgreSQL's cancellation", func(context.Context) error {
			return fmt.Errorf("list families: %w", &pgconn.PgError{Code: "57014", Message: "canceling statement due to user request"})
		}},
	} {
		method := fmt.Sprintf("/handoff.test.Deadline/Call%d", i)
		rec := &recorder{}
		env := serveOne(t, method, func(ctx context.Context) (any, error) {
			<-ctx.Done()
			return nil, c.err(ctx)
		})
		env.Server.SetAuditor(rec)
		ctx, cancel := context.WithTimeout(env.Counselor("north"), time.Second)
		_ = env.Conn.Invoke(ctx, method, &emptypb.Empty{}, &emptypb.Empty{})
		cancel()
		events := rec.recorded()
		// Which the server sees first, its own deadline or the client's
		// cancellation when the client's deadline passed, is a race.
		if len(events) != 1 || (events[0].Outcome != "DEADLINE_EXCEEDED" && events[0].Outcome != "CANCELLED") {
			rec.mu.Unlock()
			t.Fatalf("%s: audit events = %+v, want one with outcome DEADLINE_EXCEEDED or CANCELLED", c.name, events)
		}
		rec.mu.Unlock()
	}
}

// An error another service gave, wrapped by the handler, keeps its code
// but not its message, which names that service's methods; a code that
// blames the request is this service's INTERNAL.
func TestDependencyErrorsSpeakForThisCall(t *testing.T) {
	const method = "/handoff.test.Dep/Call"
	var next error
	env := serveOne(t, method, func(context.Context) (any, error) { return nil, next })
	for _, c := range []struct {
		err  error
		want codes.Code
	}{
		{fmt.Errorf("read family: %w", status.Error(codes.PermissionDenied, "role [ehr] may not call /handoff.families.v1.FamiliesService/GetFamily")), codes.PermissionDenied},
		{fmt.Errorf("read family: %w", status.Error(codes.Unavailable, "connection refused to families:7101")), codes.Unavailable},
		{fmt.Errorf("read family: %w", status.Error(codes.InvalidArgument, "name: clinics/north/families/x is malformed")), codes.Internal},
		// Another service's overload is not the caller's quota.
		{fmt.Errorf("read family: %w", status.Error(codes.ResourceExhausted, "families:7101 over its limit")), codes.Unavailable},
		// The handler's own answer passes as it is.
		{status.Error(codes.FailedPrecondition, "the referral is closed"), codes.FailedPrecondition},
	} {
		next = c.err
		err := env.Conn.Invoke(env.Counselor("north"), method, &emptypb.Empty{}, &emptypb.Empty{})
		st := status.Convert(err)
		if st.Code() != c.want {
			t.Errorf("%v: code %v, want %v", c.err, st.Code(), c.want)
		}
		if _, direct := c.err.(interface{ GRPCStatus() *status.Status }); !direct &&
			(strings.Contains(st.Message(), "handoff.families") || strings.Contains(st.Message(), "clinics/") || strings.Contains(st.Message(), "7101")) {
			t.Errorf("%v: the message tells of the other service: %q", c.err, st.Message())
		}
		if direct := c.want == codes.FailedPrecondition; direct && st.Message() != "the referral is closed" {
			t.Errorf("the handler's own message changed: %q", st.Message())
		}
	}
}

// A token that holds the EHR role is the outside system even when it also
// holds a staff role: it reaches the EHR's methods, not the staff's, whose
// answers are not checked against consent.
func TestEHRRoleNarrowsAToken(t *testing.T) {
	const staffOnly, shared = "/handoff.test.Roles/Staff", "/handoff.test.Roles/Shared"
	ok := func(ctx context.Context) (any, error) { return &emptypb.Empty{}, nil }
	env := serveOne(t, staffOnly, ok)
	conn := env.Also(t, grpcserver.Policy{shared: {auth.RoleCounselor, auth.RoleEHR}}, registerOne(shared, ok))
	both := env.As("north", "ehr-integration", auth.RoleEHR, auth.RoleCounselor)
	if err := env.Conn.Invoke(both, staffOnly, &emptypb.Empty{}, &emptypb.Empty{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("EHR+counselor token on a counselor-only method: %v, want PermissionDenied", err)
	}
	if err := conn.Invoke(both, shared, &emptypb.Empty{}, &emptypb.Empty{}); err != nil {
		t.Fatalf("EHR+counselor token on a method open to the EHR: %v", err)
	}
	if err := env.Conn.Invoke(env.Counselor("north"), staffOnly, &emptypb.Empty{}, &emptypb.Empty{}); err != nil {
		t.Fatalf("counselor on a counselor-only method: %v", err)
	}
}

// A call that carries two bearer tokens is not authenticated by either:
// one may be a token smuggled beside the one a gateway checked.
func TestTwoTokensAreNone(t *testing.T) {
	const method = "/handoff.test.Tokens/Call"
	env := serveOne(t, method, func(ctx context.Context) (any, error) { return &emptypb.Empty{}, nil })
	north := auth.TokenFromContext(env.Counselor("north"))
	south := auth.TokenFromContext(env.Counselor("south"))
	for _, pair := range [][2]string{{north, south}, {south, north}} {
		ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+pair[0], "authorization", "Bearer "+pair[1])
		if err := env.Conn.Invoke(ctx, method, &emptypb.Empty{}, &emptypb.Empty{}); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("two tokens: %v, want Unauthenticated", err)
		}
	}
	if err := env.Conn.Invoke(env.Counselor("north"), method, &emptypb.Empty{}, &emptypb.Empty{}); err != nil {
		t.Fatalf("one token: %v", err)
	}
	// The scheme's name is case-insensitive (RFC 9110).
	lower := metadata.AppendToOutgoingContext(context.Background(), "authorization", "bearer "+north)
	if err := env.Conn.Invoke(lower, method, &emptypb.Empty{}, &emptypb.Empty{}); err != nil {
		t.Fatalf("a lower-case scheme: %v", err)
	}
}

// A call's metadata is bounded before anyone is authenticated: a token of
// the longest length auth reads gets through, megabytes do not reach the
// handler.
func TestMetadataIsBounded(t *testing.T) {
	const method = "/handoff.test.Headers/Call"
	var reached atomic.Int64
	env := serveOne(t, method, func(ctx context.Context) (any, error) {
		reached.Add(1)
		return &emptypb.Empty{}, nil
	})
	long := metadata.AppendToOutgoingContext(env.Counselor("north"), "x-padding", strings.Repeat("p", auth.MaxTokenLength))
	if err := env.Conn.Invoke(long, method, &emptypb.Empty{}, &emptypb.Empty{}); err != nil {
		t.Fatalf("a call with %d bytes of metadata beside its token: %v", auth.MaxTokenLength, err)
	}
	huge := metadata.AppendToOutgoingContext(env.Counselor("north"), "x-padding", strings.Repeat("p", 1<<20))
	if err := env.Conn.Invoke(huge, method, &emptypb.Empty{}, &emptypb.Empty{}); err == nil {
		t.Fatal("a call with a megabyte of metadata was taken")
	} else {
		t.Logf("a megabyte of metadata: %v", err)
	}
	if n := reached.Load(); n != 1 {
		t.Fatalf("the handler ran %d times, want once", n)
	}
	// The connection is still good for the next call.
	if err := env.Conn.Invoke(env.Counselor("north"), method, &emptypb.Empty{}, &emptypb.Empty{}); err != nil {
		t.Fatalf("the call after: %v", err)
	}
}

// A call nobody could be authenticated for has no clinic to be audited
// under: it is logged as a failed sign-in, with where it came from and
// without the token it brought.
func TestFailedAuthenticationIsLogged(t *testing.T) {
	const method = "/handoff.test.Signin/Call"
	iss, err := auth.NewIssuer("https://issuer.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	conn, logs := serveLogged(t, iss, method, func(ctx context.Context) (any, error) { return &emptypb.Empty{}, nil })

	const forged = "not-a-token-abc123"
	good := auth.WithToken(context.Background(), iss.MustMint(auth.TokenOptions{Subject: "c", Clinic: "north", Roles: []auth.Role{auth.RoleCounselor}}))
	calls := []struct {
		ctx  context.Context
		want codes.Code
	}{
		{context.Background(), codes.Unauthenticated},
		{metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+forged, "x-forwarded-for", "203.0.113.9"), codes.Unauthenticated},
		{good, codes.OK},
		// A valid token whose scope no staff member may have.
		{auth.WithToken(context.Background(), iss.MustMint(auth.TokenOptions{Subject: "c", Clinic: auth.AnyClinic, Roles: []auth.Role{auth.RoleCounselor}})),
			codes.PermissionDenied},
		// A service identity calling a method its role may not: refused
		// by role, whatever the request names (it names no clinic here).
		{auth.WithToken(context.Background(), iss.MustMint(auth.TokenOptions{Subject: "w", Clinic: auth.AnyClinic, Roles: []auth.Role{auth.RoleWorker}})),
			codes.PermissionDenied},
	}
	for _, c := range calls {
		if err := conn.Invoke(c.ctx, method, &emptypb.Empty{}, &emptypb.Empty{}); status.Code(err) != c.want {
			t.Fatalf("call: %v, want %v", err, c.want)
		}
	}
	var failed, ok, unscoped []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		switch rec["msg"] {
		case "authentication failed":
			failed = append(failed, rec)
		case "rpc":
			ok = append(ok, rec)
		case "refused before any clinic was known":
			unscoped = append(unscoped, rec)
		}
	}
	if len(unscoped) != 2 || unscoped[0]["level"] != "WARN" || unscoped[0]["code"] != "PermissionDenied" ||
		unscoped[0]["subject"] != "c" || !strings.HasPrefix(fmt.Sprint(unscoped[0]["peer"]), "127.0.0.1:") ||
		unscoped[1]["code"] != "PermissionDenied" || unscoped[1]["subject"] != "w" {
		t.Fatalf("a staff token for every clinic and a service identity refused its method logged as %v:\n%s", unscoped, logs)
	}
	if len(failed) != 2 || len(ok) != 1 {
		t.Fatalf("%d failed sign-ins and %d calls logged, want 2 and 1:\n%s", len(failed), len(ok), logs)
	}
	for _, rec := range failed {
		if rec["level"] != "WARN" || rec["code"] != "Unauthenticated" || !strings.HasPrefix(fmt.Sprint(rec["peer"]), "127.0.0.1:") {
			t.Fatalf("failed sign-in logged as %v", rec)
		}
	}
	if failed[1]["forwarded_for"] != "203.0.113.9" || failed[0]["forwarded_for"] != nil {
		t.Fatalf("forwarded_for: %v, %v", failed[0]["forwarded_for"], failed[1]["forwarded_for"])
	}
	if _, has := ok[0]["peer"]; has || ok[0]["subject"] != "c" {
		t.Fatalf("an authenticated call logged as %v", ok[0])
	}
	if strings.Contains(logs.String(), forged) {
		t.Fatal("the log holds the token a caller sent")
	}
}

// serveLogged serves method, open to counselors of iss, whose handler
// (behind the interceptors) is handle, and returns a connection to it and
// the server's log, as JSON lines.
func serveLogged(t *testing.T, iss *auth.Issuer, method string, handle func(ctx context.Context) (any, error)) (*grpc.ClientConn, *servicetest.LogBuffer) {
	t.Helper()
	logs := &servicetest.LogBuffer{}
	srv, err := grpcserver.New(grpcserver.Config{Logger: slog.New(slog.NewJSONHandler(logs, nil)), Verifier: iss.Verifier(),
		Policy: grpcserver.Policy{method: {auth.RoleCounselor}}})
	if err != nil {
		t.Fatal(err)
	}
	registerOne(method, handle)(srv.Server)
	return serve(t, srv), logs
}

// serve serves srv on a loopback port until the test ends, and returns a
// connection to it.
func serve(t *testing.T, srv *grpcserver.Server) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx, lis, time.Second); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	conn, err := grpcclient.Dial(lis.Addr().String(), grpcclient.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// A database error the handler passes on says whose fault it is: a
// conflict (a lock timeout, an unexpected uniqueness violation) is ABORTED
// for the caller to retry, a database out of reach or overloaded is
// UNAVAILABLE, and only the rest is INTERNAL. None of PostgreSQL's text
// reaches the caller.
func TestDatabaseErrorsSayWhoseFaultTheyAre(t *testing.T) {
	const method = "/handoff.test.Database/Call"
	iss, err := auth.NewIssuer("https://issuer.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	_, refused := pgconn.Connect(context.Background(), "postgres://nobody@127.0.0.1:1/none?connect_timeout=2")
	var connect *pgconn.ConnectError
	if !errors.As(refused, &connect) {
		t.Fatalf("connecting to a closed port: %v; want a ConnectError", refused)
	}
	pg := func(code string) error {
		return fmt.Errorf("save family: %w", &pgconn.PgError{Code: code, Message: "secret detail of row (Sam Rivera)"})
	}
	for _, c := range []struct {
		err  error
		want codes.Code
	}{
		{pg("55P03"), codes.Aborted},
		{pg("23505"), codes.Aborted},
		{pg("40P01"), codes.Aborted},
		{pg("57014"), codes.Unavailable},
		{pg("08006"), codes.Unavailable},
		{fmt.Errorf("read family: %w", refused), codes.Unavailable},
		{pg("25006"), codes.Unavailable},
		{fmt.Errorf("read family: %w", &net.OpError{Op: "read", Net: "tcp", Err: errors.New("connection reset by peer")}), codes.Unavailable},
		{pg("42501"), codes.Internal},
		{pg("22021"), codes.InvalidArgument},
	} {
		conn, _ := serveLogged(t, iss, method, func(context.Context) (any, error) { return nil, c.err })
		err := conn.Invoke(auth.WithToken(context.Background(), iss.MustMint(auth.TokenOptions{Subject: "c", Clinic: "north",
			Roles: []auth.Role{auth.RoleCounselor}})), method, &emptypb.Empty{}, &emptypb.Empty{})
		if status.Code(err) != c.want || strings.Contains(err.Error(), "Sam Rivera") || strings.Contains(err.Error(), "127.0.0.1:1") {
			t.Errorf("%v: %v; want %v, without the database's text", c.err, err, c.want)
		}
	}
}

// A recovered panic is logged with its stack but not its value, which may
// carry what the handler held (a name, a phone number); a runtime error's
// text, which holds no data, is kept.
func TestPanicValueStaysOutOfTheLog(t *testing.T) {
	const method = "/handoff.test.Panic/Call"
	iss, err := auth.NewIssuer("https://issuer.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	var which atomic.Int32
	conn, logs := serveLogged(t, iss, method, func(context.Context) (any, error) {
		n := which.Load()
		if n == 0 {
			panic("cannot reach Sam Rivera at +15555550111")
		}
		var none []int
		return none[n], nil
	})
	ctx := auth.WithToken(context.Background(), iss.MustMint(auth.TokenOptions{Subject: "c", Clinic: "north", Roles: []auth.Role{auth.RoleCounselor}}))
	for n := range int32(2) {
		which.Store(n)
		if err := conn.Invoke(ctx, method, &emptypb.Empty{}, &emptypb.Empty{}); status.Code(err) != codes.Internal {
			t.Fatalf("a panicking handler: %v; want INTERNAL", err)
		}
	}
	out := logs.String()
	if strings.Count(out, "panic in handler") != 2 || strings.Contains(out, "Sam Rivera") || strings.Contains(out, "15555550111") ||
		!strings.Contains(out, "a value of type string") || !strings.Contains(out, "index out of range") {
		t.Fatalf("the log of two panics:\n%s", out)
	}
}

// A handler error is logged with the code's own context, never with the
// value PostgreSQL's message quotes (a trigger's RAISE, say).
func TestHandlerErrorLogQuotesNoValue(t *testing.T) {
	const method = "/handoff.test.Logged/Call"
	iss, err := auth.NewIssuer("https://issuer.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	conn, logs := serveLogged(t, iss, method, func(context.Context) (any, error) {
		return nil, fmt.Errorf("read family f1: %w", &pgconn.PgError{Severity: "ERROR", Code: "P0001",
			Message: `member "Sam Rivera" is not in the family`})
	})
	ctx := auth.WithToken(context.Background(), iss.MustMint(auth.TokenOptions{Subject: "c", Clinic: "north", Roles: []auth.Role{auth.RoleCounselor}}))
	if err := conn.Invoke(ctx, method, &emptypb.Empty{}, &emptypb.Empty{}); status.Code(err) != codes.Internal {
		t.Fatalf("a failed handler: %v; want INTERNAL", err)
	}
	if out := logs.String(); strings.Contains(out, "Sam Rivera") || !strings.Contains(out, "read family f1: PostgreSQL error SQLSTATE P0001") {
		t.Fatalf("the log:\n%s", out)
	}
}

// Reflection lists every method to anyone who can connect, so it is served
// only when asked for.
func TestReflectionOnlyWhenAsked(t *testing.T) {
	env := serveOne(t, "/test.Svc/Get", nil)
	list := func(conn *grpc.ClientConn) ([]string, error) {
		stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(context.Background())
		if err != nil {
			return nil, err
		}
		// A stream the server has already refused answers Send with
		// io.EOF; Recv then gives its status.
		if err := stream.Send(&reflectionpb.ServerReflectionRequest{
			MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{},
		}); err != nil && !errors.Is(err, io.EOF) {
			return nil, err
		}
		resp, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		var names []string
		for _, s := range resp.GetListServicesResponse().GetService() {
			names = append(names, s.GetName())
		}
		return names, nil
	}
	if _, err := list(env.Conn); status.Code(err) != codes.Unimplemented {
		t.Fatalf("reflection by default: %v, want Unimplemented", err)
	}
	conn := env.AlsoWith(t, grpcserver.Config{Reflection: true}, func(*grpc.Server) {})
	names, err := list(conn)
	if err != nil {
		t.Fatalf("reflection when asked: %v", err)
	}
	if !slices.Contains(names, "grpc.health.v1.Health") {
		t.Errorf("reflection listed %v, want the health service among them", names)
	}
}

// A streaming method is refused before its handler runs: the token, the
// policy, the clinic scope and the audit are checked for unary calls
// only, and a stream added to an API must not be served without them.
// Health's Watch, a public stream, still is.
func TestStreamsAreRefusedButThePublicOnes(t *testing.T) {
	var ran atomic.Bool
	env := servicetest.Start(t, grpcserver.Policy{"/test.Streamer/Feed": {auth.RoleCounselor}}, func(s *grpc.Server) {
		s.RegisterService(&grpc.ServiceDesc{ServiceName: "test.Streamer", HandlerType: (*any)(nil),
			Streams: []grpc.StreamDesc{{StreamName: "Feed", ServerStreams: true, Handler: func(any, grpc.ServerStream) error {
				ran.Store(true)
				return nil
			}}}}, struct{}{})
	})
	for _, ctx := range []context.Context{context.Background(), env.Counselor("north")} {
		stream, err := env.Conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/test.Streamer/Feed")
		if err == nil {
			if err = stream.SendMsg(&emptypb.Empty{}); err == nil || errors.Is(err, io.EOF) {
				_ = stream.CloseSend()
				err = stream.RecvMsg(&emptypb.Empty{})
			}
		}
		if status.Code(err) != codes.PermissionDenied || ran.Load() {
			t.Fatalf("a streaming call: %v (handler ran: %v); want PermissionDenied before the handler", err, ran.Load())
		}
	}
	watch, err := healthpb.NewHealthClient(env.Conn).Watch(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatalf("health Watch, a public stream: %v", err)
	}
}

// rawCodec sends bytes as they are, as a client that does not speak
// protobuf might.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)      { return v.([]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error { return nil }
func (rawCodec) Name() string                       { return "proto" }

// Calls grpc-go refuses before the interceptor runs (a request over the
// size limit, bytes that do not decode) are logged as refusals with where
// they came from, as failed sign-ins are; the interceptor's own calls are
// not logged twice.
func TestCallsRefusedBeforeTheInterceptorAreLogged(t *testing.T) {
	const method = "/handoff.test.Early/Call"
	iss, err := auth.NewIssuer("https://issuer.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	conn, logs := serveLogged(t, iss, method, func(ctx context.Context) (any, error) { return &emptypb.Empty{}, nil })
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-forwarded-for", "203.0.113.7")
	calls := []struct {
		name   string
		method string
		req    any
		opts   []grpc.CallOption
		want   codes.Code
	}{
		{"over the size limit", method, &wrapperspb.BytesValue{Value: make([]byte, 5<<20)}, nil, codes.ResourceExhausted},
		{"bytes that do not decode", method, []byte{0xff, 0xff, 0xff}, []grpc.CallOption{grpc.ForceCodec(rawCodec{})}, codes.Internal},
		{"a well-formed call without a token", method, &emptypb.Empty{}, nil, codes.Unauthenticated},
	}
	for _, c := range calls {
		if err := conn.Invoke(ctx, c.method, c.req, &emptypb.Empty{}, c.opts...); status.Code(err) != c.want {
			t.Fatalf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	// An early refusal is logged as its call ends on the server, which may
	// be after the client has its answer and made the next call.
	var early []map[string]any
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		early = nil
		for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
			var rec map[string]any
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("log line %q: %v", line, err)
			}
			if rec["msg"] == "refused before authentication" {
				early = append(early, rec)
			}
		}
		if len(early) >= 2 || time.Now().After(deadline) {
			break
		}
	}
	if len(early) != 2 {
		t.Fatalf("%d early refusals logged, want the first two calls':\n%s", len(early), logs)
	}
	// In either order: each ends on a goroutine of its own.
	for _, c := range calls[:2] {
		i := slices.IndexFunc(early, func(rec map[string]any) bool { return rec["code"] == c.want.String() })
		if i < 0 {
			t.Fatalf("%s not logged: %v", c.name, early)
		}
		if rec := early[i]; rec["level"] != "WARN" || rec["method"] != c.method ||
			rec["forwarded_for"] != "203.0.113.7" || !strings.HasPrefix(fmt.Sprint(rec["peer"]), "127.0.0.1:") {
			t.Fatalf("%s logged as %v", c.name, rec)
		}
	}
}

// A stop past the drain returns only once the handlers have, so that
// what the caller closes next (the database pools) is not closed under a
// handler still finishing (writing its audit record).
func TestForcedStopWaitsForHandlers(t *testing.T) {
	const method = "/handoff.test.Slow/Call"
	iss, err := auth.NewIssuer("https://issuer.test", "handoff")
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	var finished atomic.Bool
	srv, err := grpcserver.New(grpcserver.Config{Logger: slog.New(slog.DiscardHandler), Verifier: iss.Verifier(),
		Policy: grpcserver.Policy{method: {auth.RoleCounselor}}})
	if err != nil {
		t.Fatal(err)
	}
	registerOne(method, func(ctx context.Context) (any, error) {
		close(started)
		<-ctx.Done() // cancelled by the forced stop
		time.Sleep(300 * time.Millisecond)
		finished.Store(true)
		return nil, ctx.Err()
	})(srv.Server)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { _ = srv.Serve(ctx, lis, 100*time.Millisecond); close(served) }()
	conn, err := grpcclient.Dial(lis.Addr().String(), grpcclient.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	call := auth.WithToken(context.Background(), iss.MustMint(auth.TokenOptions{Subject: "c", Clinic: "north", Roles: []auth.Role{auth.RoleCounselor}}))
	go func() { _ = conn.Invoke(call, method, &emptypb.Empty{}, &emptypb.Empty{}) }()
	<-started
	cancel()
	<-served
	if !finished.Load() {
		t.Fatal("Serve returned while a handler was still running")
	}
}
