// Package grpcserver builds the gRPC servers of Handoff's services with the
// same chain of interceptors: panic recovery, authentication, per-method
// authorization, request validation, and logging that carries identifiers
// only. It also registers health (and reflection when asked), and stops
// gracefully.
package grpcserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"buf.build/go/protovalidate"
	"github.com/jackc/pgx/v5/pgconn"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/audit"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/telemetry"
)

// Policy lists, per full method name (/pkg.Service/Method), the roles that may
// call it. A method missing from the policy is refused for everyone.
type Policy map[string][]auth.Role

// Config configures a server.
type Config struct {
	Logger   *slog.Logger
	Verifier *auth.Verifier
	Policy   Policy
	// TLS, when set, serves over TLS (mutual TLS if it requires client certs).
	TLS credentials.TransportCredentials
	// Audit records every authenticated call with its outcome. A call whose
	// record cannot be written fails: no unaudited access to health data.
	Audit Auditor
	// Credentials authenticate the methods they name (full method names)
	// from the request itself instead of a bearer token, for clients that
	// cannot send one. Bearer tokens are ignored for those methods.
	Credentials map[string]Credential
	// Reflection serves the gRPC reflection service, without a token, for
	// tools such as grpcurl. Off unless asked: it lists every method and
	// message of the service to anyone who can connect.
	Reflection bool
}

// Credential authenticates a call from its request, such as a calendar
// feed's name and secret token. It returns the caller, who then passes the
// same clinic scope, policy and audit as a bearer token's; or a status
// error to answer with. It must not log or return the secret.
type Credential func(ctx context.Context, req any) (auth.Principal, error)

// Auditor records calls.
type Auditor interface {
	Record(ctx context.Context, e audit.Event) error
}

// Stamper is an Auditor that can also hand a call's record to the call's
// own transaction (see pgdb.Stamp).
type Stamper interface {
	Stamp(ctx context.Context, e audit.Event) *pgdb.Stamp
}

// Server is a gRPC server with its health service.
type Server struct {
	*grpc.Server
	Health *health.Server
	log    *slog.Logger
	icpt   *interceptor
}

// SetAuditor sets the auditor, for services built after their server.
// Call it before Serve.
func (s *Server) SetAuditor(a Auditor) { s.icpt.audit = a }

// SetCredentials sets the request credentials (see Config.Credentials), for
// services built after their server. Call it before Serve.
func (s *Server) SetCredentials(c map[string]Credential) { s.icpt.credentials = c }

// publicMethods need no token: load balancers and operators probe them.
var publicMethods = []string{
	"/grpc.health.v1.Health/",
	"/grpc.reflection.v1.ServerReflection/",
	"/grpc.reflection.v1alpha.ServerReflection/",
}

// maxHeaderList bounds a call's metadata (HTTP/2 header list) in bytes.
const maxHeaderList = 64 << 10

// New returns a server with Handoff's interceptor chain.
func New(cfg Config) (*Server, error) {
	if cfg.Verifier == nil {
		return nil, errors.New("grpcserver: a token verifier is required")
	}
	validator, err := protovalidate.New()
	if err != nil {
		return nil, fmt.Errorf("grpcserver: validator: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	i := &interceptor{log: log, verifier: cfg.Verifier, policy: cfg.Policy, validator: validator, audit: cfg.Audit,
		credentials: cfg.Credentials}
	opts := []grpc.ServerOption{
		// Traces and RPC metrics (latency and codes) through OpenTelemetry.
		grpc.StatsHandler(otelgrpc.NewServerHandler()),
		grpc.StatsHandler(earlyRefusals{log: log}),
		grpc.ChainUnaryInterceptor(i.unary),
		grpc.ChainStreamInterceptor(streams),
		grpc.MaxRecvMsgSize(4 << 20),
		// A call's metadata is read before anyone is authenticated; the
		// default allows 16 MiB of it. 64 KiB holds a token of the
		// longest length auth reads with room to spare.
		grpc.MaxHeaderListSize(maxHeaderList),
		// Clients are asked to reconnect now and then, and resolve the
		// name again, so that replicas added since share the load. Calls
		// in flight get longer than any call may take to finish.
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionAge: 5 * time.Minute, MaxConnectionAgeGrace: 30 * time.Second}),
		// The clients ping every 30 s while a call is open (grpcclient),
		// to find a server gone silent; the default floor of 5 minutes
		// would answer those pings with GOAWAY.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 20 * time.Second}),
		// A stop past the drain returns once the handlers have: the
		// caller then closes the pools, which a handler still unwinding
		// (its audit record) would otherwise meet closed.
		grpc.WaitForHandlers(true),
	}
	if cfg.TLS != nil {
		opts = append(opts, grpc.Creds(cfg.TLS))
	}
	s := &Server{Server: grpc.NewServer(opts...), Health: health.NewServer(), log: log, icpt: i}
	healthpb.RegisterHealthServer(s.Server, s.Health)
	if cfg.Reflection {
		reflection.Register(s.Server)
	}
	return s, nil
}

// Serve serves on lis until ctx ends, then stops gracefully (in-flight calls
// finish, for at most grace) and marks the server not serving first so that
// load balancers drain it.
func (s *Server) Serve(ctx context.Context, lis net.Listener, grace time.Duration) error {
	errc := make(chan error, 1)
	go func() { errc <- s.Server.Serve(lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	s.Health.Shutdown()
	done := make(chan struct{})
	go func() { s.Server.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		s.Server.Stop()
	}
	return nil
}

type interceptor struct {
	log         *slog.Logger
	verifier    *auth.Verifier
	policy      Policy
	validator   protovalidate.Validator
	audit       Auditor
	credentials map[string]Credential
}

func (i *interceptor) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	reached(ctx)
	start := time.Now()
	var subject string
	var audited func(error) error // set once the caller is known
	unknown := false              // the caller could not be authenticated
	unscoped := false             // authenticated, refused before any clinic was known
	defer func() {
		if r := recover(); r != nil {
			i.log.ErrorContext(ctx, "panic in handler", "method", info.FullMethod, "panic", panicText(r), "stack", string(debug.Stack()))
			resp, err = nil, status.Error(codes.Internal, "internal error")
		}
		// Audited after recovery, so a panic is recorded as the failure it is.
		if audited != nil {
			if aerr := audited(err); aerr != nil {
				resp, err = nil, aerr
			}
		}
		code := status.Code(err)
		level := slog.LevelInfo
		if code == codes.Internal || code == codes.Unknown {
			level = slog.LevelError
		}
		// Identifiers only: no request or response bodies reach the log.
		attrs := []any{"method", info.FullMethod, "code", code.String(), "subject", subject, "duration_ms", time.Since(start).Milliseconds()}
		if unknown || unscoped {
			// No clinic is known to file an audit record under (a clinic
			// the request names is the caller's claim): the log is where
			// failed sign-ins, and valid tokens used outside their scope,
			// are watched, with where they came from.
			level = slog.LevelWarn
			attrs = append(attrs, origin(ctx)...)
			msg := "authentication failed"
			if unscoped {
				msg = "refused before any clinic was known"
			}
			i.log.Log(ctx, level, msg, attrs...)
			return
		}
		i.log.Log(ctx, level, "rpc", attrs...)
	}()
	if isPublic(info.FullMethod) {
		return handler(ctx, req)
	}
	p, token, err := i.authenticate(ctx, info.FullMethod, req)
	if err != nil {
		// A caller refused is a failed sign-in: a bad token
		// (Unauthenticated), or a request credential that names nothing
		// (NotFound) or may not be used (PermissionDenied). Any other code
		// is a check that could not be made (the database or the
		// identity provider out of reach, the caller gone or out of
		// time), not the caller's to answer for.
		switch status.Code(err) {
		case codes.Unauthenticated, codes.NotFound, codes.PermissionDenied, codes.InvalidArgument:
			unknown = true
		}
		return nil, err
	}
	subject = p.Subject
	m, _ := req.(proto.Message)
	// The database scope is the caller's own clinic, whatever the request
	// names: row-level security then hides other clinics even if a handler
	// forgot its check. Only the worker, the webhook sender and the
	// calendar reader serve every clinic; their scope is the clinic the
	// request names.
	scope := p.Clinic
	if scope == auth.AnyClinic {
		if !p.ServesEveryClinic() {
			// A staff token for every clinic: the identity provider's
			// mistake, or a token used where it should not be.
			unscoped = true
			return nil, status.Error(codes.PermissionDenied, "only the service identities that serve every clinic may act for every clinic")
		}
		// Refused first by role, as any caller is: a service identity
		// probing a method it may not call learns nothing of what the
		// request should name.
		if !i.allowed(info.FullMethod, p) {
			unscoped = true
			return nil, status.Errorf(codes.PermissionDenied, "role %v may not call %s", p.Roles, info.FullMethod)
		}
		if scope = requestClinic(m); scope == "" {
			unscoped = true
			return nil, status.Error(codes.InvalidArgument, "the request names no clinic resource")
		}
	}
	ctx = pgdb.WithClinic(ctx, scope)
	if i.audit != nil {
		e := audit.Event{Subject: p.Subject, Roles: audit.Roles(p.Roles), Method: info.FullMethod,
			Resource: requestResource(m), RequestID: requestID(m), Creates: creates(info.FullMethod, m)}
		if c, ok := info.Server.(Creator); ok && c.CreatesElsewhere(info.FullMethod) {
			e.Creates, e.Elsewhere = true, true
		}
		// A call that commits a change writes its record in the same
		// transaction: the record cannot be lost while the change stays,
		// and the call waits for one commit, not two. Calls without one
		// (reads, refusals, failures) are recorded below, on their own.
		var disclosed func() ([]string, []string)
		ctx, disclosed = audit.Gathering(ctx)
		var stamp *pgdb.Stamp
		if s, ok := i.audit.(Stamper); ok {
			if stamp = s.Stamp(ctx, e); stamp != nil {
				ctx = pgdb.WithStamp(ctx, stamp)
			}
		}
		audited = func(err error) error {
			names, late := disclosed()
			if err == nil && stamp.Written() {
				if len(late) == 0 {
					return nil
				}
				// Names noted after the stamp went out: a record of their
				// own, the stamp having named the others.
				names = late
			}
			// A call that committed a change and then failed gets a
			// second record, with the failure.
			e.Outcome = audit.Outcome(status.Code(err))
			if err == nil && !p.ServesEveryClinic() {
				// A list shows the caller every record on its page: the
				// trail names each, so that it answers who saw one. Not
				// for the service identities, whose lists serve workflows,
				// notifications and calendar feeds (a feed's read lists
				// the clinic's referrals every few minutes): what they
				// pass on is recorded where it goes out (a disclosure, the
				// feed's export).
				e.Records = listedNames(resp)
			}
			if err == nil && len(names) > 0 {
				// An answer that passes records on (a calendar feed's
				// export) names them, whoever called.
				e.Records = names
			}
			if name := createdName(e, resp); name != "" {
				// A create answered without committing (a retry given
				// its first answer) is recorded by what it made.
				e.Resource = name
			}
			// The call may have committed already: a caller that hung up or
			// ran out of time must not leave the change unaudited.
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if aerr := i.audit.Record(actx, e); aerr != nil {
				i.log.ErrorContext(ctx, "audit record failed", "method", info.FullMethod, "error", telemetry.LogSafe(aerr))
				return status.Error(codes.Internal, "internal error")
			}
			return nil
		}
	}
	if !i.allowed(info.FullMethod, p) {
		return nil, status.Errorf(codes.PermissionDenied, "role %v may not call %s", p.Roles, info.FullMethod)
	}
	if m != nil {
		if err := i.validate(m); err != nil {
			return nil, err
		}
	}
	// The caller's token goes along on calls this service makes to others,
	// which check it again: identity is forwarded, never asserted.
	ctx = auth.WithToken(auth.WithPrincipal(ctx, p), token)
	resp, err = handler(ctx, req)
	if err != nil {
		if _, direct := err.(interface{ GRPCStatus() *status.Status }); !direct {
			if st, ok := status.FromError(err); ok {
				err = i.fromDependency(ctx, info.FullMethod, err, st)
			} else {
				err = i.fromDatabase(ctx, info.FullMethod, err)
			}
		}
	}
	return resp, err
}

// fromDependency answers for a status another service gave a call this one
// made, which the handler wrapped rather than answered itself: its message
// and details speak of that service (its methods, other records), so the
// caller gets the code with a message of this call's own, and the log the
// rest. A code that says nothing about the caller's request becomes
// INTERNAL: this service asked wrongly.
func (i *interceptor) fromDependency(ctx context.Context, method string, err error, st *status.Status) error {
	i.log.WarnContext(ctx, "a call to another service failed", "method", method, "code", st.Code().String(), "error", telemetry.LogSafe(err))
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Aborted:
		return status.Errorf(st.Code(), "a service this call depends on did not answer (%s): retry", st.Code())
	case codes.ResourceExhausted:
		// Not the caller's quota, which that code would say: the other
		// service is overloaded, for a while (the gateway adds a
		// Retry-After to UNAVAILABLE).
		return status.Error(codes.Unavailable, "a service this call depends on is overloaded: retry after a pause")
	case codes.PermissionDenied, codes.Unauthenticated:
		return status.Error(st.Code(), "the caller may not read what this call depends on")
	case codes.NotFound:
		return status.Error(codes.NotFound, "a record this call depends on was not found")
	case codes.FailedPrecondition:
		return status.Error(codes.FailedPrecondition, "a record this call depends on does not allow it now")
	}
	i.log.ErrorContext(ctx, "handler error", "method", method, "error", telemetry.LogSafe(err))
	return apperr.Internal(err)
}

// creates reports whether a call of method makes a record under the
// parent its request m names (AIP-133): a Create method, whose request
// has a parent and no name of its own.
func creates(method string, m proto.Message) bool {
	if m == nil || !strings.HasPrefix(method[strings.LastIndexByte(method, '/')+1:], "Create") {
		return false
	}
	d := m.ProtoReflect().Descriptor().Fields()
	return d.ByName("parent") != nil && d.ByName("name") == nil
}

// Creator is a service some of whose methods, not named Create, make a
// record elsewhere in the clinic than under what their request names
// (HoldSlot names a program and makes a hold): the call is recorded by
// the record it made, as a create is, so that the trail answers who made
// it.
type Creator interface {
	CreatesElsewhere(fullMethod string) bool
}

// createdName is the name of the record a create answered with, if it lies
// under the parent e names (or in its clinic, for a Creator's).
func createdName(e audit.Event, resp any) string {
	r, ok := resp.(proto.Message)
	if !e.Creates || !ok {
		return ""
	}
	within := e.Within(aip.Clinic(e.Resource))
	if name := aip.StringField(r, "name"); strings.HasPrefix(name, within) && within != "clinics//" {
		return name
	}
	return ""
}

// listedNames returns the names of the records a list or search answered
// with (a ListFamiliesResponse's families, a MatchProgramsResponse's
// matches' programs, a ListCoveredFamiliesResponse's family names), in
// the order given, at most audit.MaxRecords; nil for any other answer.
func listedNames(resp any) []string {
	m, ok := resp.(proto.Message)
	if !ok || m == nil || !strings.HasSuffix(string(m.ProtoReflect().Descriptor().Name()), "Response") {
		return nil
	}
	var names []string
	add := func(n string) bool {
		if strings.HasPrefix(n, "clinics/") {
			names = append(names, n)
		}
		return len(names) < audit.MaxRecords
	}
	populated(m.ProtoReflect(), func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if !fd.IsList() {
			return true
		}
		l := v.List()
		for i := 0; i < l.Len(); i++ {
			var n string
			switch fd.Kind() {
			case protoreflect.StringKind:
				n = l.Get(i).String()
			case protoreflect.MessageKind:
				n = itemName(l.Get(i).Message())
			}
			if !add(n) {
				return false
			}
		}
		return true
	})
	return names
}

// itemName is the name of a listed item: its own, or that of the first
// record it holds (a match's program).
func itemName(r protoreflect.Message) string {
	if nf := r.Descriptor().Fields().ByName("name"); nf != nil && nf.Kind() == protoreflect.StringKind {
		if n := r.Get(nf).String(); n != "" {
			return n
		}
	}
	var name string
	populated(r, func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind || fd.IsList() || fd.IsMap() {
			return true
		}
		if nf := fd.Message().Fields().ByName("name"); nf != nil && nf.Kind() == protoreflect.StringKind {
			name = v.Message().Get(nf).String()
		}
		return name == ""
	})
	return name
}

// requestResource is the resource a request names, for the audit trail.
func requestResource(m proto.Message) string {
	if m == nil {
		return ""
	}
	for _, f := range []protoreflect.Name{"name", "parent", "program"} {
		if v := aip.StringField(m, f); v != "" {
			return v
		}
	}
	r := m.ProtoReflect()
	// Updates carry the resource, whose name is the one changed.
	var name string
	populated(r, func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() == protoreflect.MessageKind && !fd.IsList() && !fd.IsMap() {
			if nf := fd.Message().Fields().ByName("name"); nf != nil && nf.Kind() == protoreflect.StringKind {
				name = v.Message().Get(nf).String()
				return name == ""
			}
		}
		return true
	})
	return name
}

// populated calls fn on each populated field of r in declaration order,
// until fn returns false. Range's order is undefined: the resource a
// record names, and the clinic a request is scoped to, must not depend on
// it when a request names more than one.
func populated(r protoreflect.Message, fn func(protoreflect.FieldDescriptor, protoreflect.Value) bool) {
	fields := r.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		if fd := fields.Get(i); r.Has(fd) && !fn(fd, r.Get(fd)) {
			return
		}
	}
}

func requestID(m proto.Message) string { return aip.StringField(m, "request_id") }

// requestClinic finds the clinic a request is about: the first clinic-scoped
// resource name among its fields, or in the resource it carries.
func requestClinic(m proto.Message) string {
	if m == nil {
		return ""
	}
	var clinic string
	var visit func(r protoreflect.Message, depth int)
	visit = func(r protoreflect.Message, depth int) {
		populated(r, func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.Kind() == protoreflect.StringKind && !fd.IsList() && !fd.IsMap():
				if c := aip.Clinic(v.String()); c != "" {
					clinic = c
					return false
				}
			case fd.Kind() == protoreflect.MessageKind && !fd.IsList() && !fd.IsMap() && depth == 0:
				visit(v.Message(), depth+1)
				return clinic == ""
			}
			return true
		})
	}
	visit(m.ProtoReflect(), 0)
	return clinic
}

// panicText is what the log keeps of a recovered panic: a runtime error's
// text (an index out of range, a nil dereference), which holds no data,
// and only the type of any other value, which may carry what a handler
// was working on (a name, a phone number).
func panicText(r any) string {
	if re, ok := r.(runtime.Error); ok {
		return re.Error()
	}
	return fmt.Sprintf("a value of type %T", r)
}

// fromDatabase turns an error that is not a gRPC status into one: bad data
// PostgreSQL refused (a NUL byte, say) is the caller's INVALID_ARGUMENT,
// a deadlock, serialization failure, lock timeout or uniqueness conflict
// the handler did not expect is ABORTED (retry), a database that cannot
// be reached or took too long is UNAVAILABLE (retry later), the caller's
// own cancellation or deadline is CANCELLED or DEADLINE_EXCEEDED; anything
// else is INTERNAL. The last two kinds are logged, without their details
// reaching the caller.
func (i *interceptor) fromDatabase(ctx context.Context, method string, err error) error {
	var pg *pgconn.PgError
	isPg := errors.As(err, &pg)
	// The caller gave up or ran out of time: not a fault of the service.
	// (A statement the caller's context cut short may come back as
	// PostgreSQL's own cancellation, 57014.)
	gaveUp := ctx.Err() != nil && (errors.Is(err, ctx.Err()) || isPg && pg.Code == "57014")
	switch {
	case gaveUp && errors.Is(ctx.Err(), context.Canceled):
		return status.Error(codes.Canceled, "the call was cancelled")
	case gaveUp:
		return status.Error(codes.DeadlineExceeded, "the call ran out of time")
	}
	if isPg {
		switch {
		case strings.HasPrefix(pg.Code, "22"):
			return status.Error(codes.InvalidArgument, "invalid request: a value cannot be stored (for example a NUL character in text)")
		case pg.Code == "40001" || pg.Code == "40P01" || pg.Code == "55P03" || pg.Code == "23505" || pg.Code == "23P01":
			return status.Error(codes.Aborted, "the request conflicted with another one: retry it")
		case pg.Code == "23503":
			return status.Error(codes.FailedPrecondition, "a resource the request refers to was removed meanwhile")
		case pg.Code == "57014" || strings.HasPrefix(pg.Code, "57P") || strings.HasPrefix(pg.Code, "08") ||
			strings.HasPrefix(pg.Code, "53") || pg.Code == "25006":
			// A statement timeout, a shutdown or restart, a connection
			// exception, the server out of resources, a primary demoted
			// to read-only in a failover: the database, not the request.
			i.log.WarnContext(ctx, "database unavailable", "method", method, "sqlstate", pg.Code)
			return status.Error(codes.Unavailable, "the database is unavailable or overloaded: retry later")
		}
	}
	// Out of reach: a connection that could not be made, or was lost
	// under a statement (a failover), which pgx reports as the network's
	// error rather than PostgreSQL's.
	var connect *pgconn.ConnectError
	var network net.Error
	if errors.As(err, &connect) || errors.As(err, &network) || errors.Is(err, io.ErrUnexpectedEOF) {
		i.log.WarnContext(ctx, "database unavailable", "method", method, "error", telemetry.LogSafe(err))
		return status.Error(codes.Unavailable, "the database is unavailable: retry later")
	}
	i.log.ErrorContext(ctx, "handler error", "method", method, "error", telemetry.LogSafe(err))
	return apperr.Internal(err)
}

// streams lets through the streams of the public methods (health's
// Watch, reflection) and refuses every other, as the unary chain refuses
// a method the policy does not name: Handoff's APIs are unary, and the
// token, the policy, the clinic scope and the audit are checked there
// only. A streaming method added to an API is refused until streams get
// the same checks, never served without them.
func streams(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !isPublic(info.FullMethod) {
		// Refused unread, with no token looked at: earlyRefusals logs it.
		return status.Errorf(codes.PermissionDenied, "%s: no role may open a stream", info.FullMethod)
	}
	reached(ss.Context())
	return handler(srv, ss)
}

func isPublic(method string) bool {
	for _, p := range publicMethods {
		if strings.HasPrefix(method, p) {
			return true
		}
	}
	return false
}

// origin is where a call came from, for the log: the connection's peer
// and, behind the gateway, the address the gateway says it served (a
// direct caller can write that header too, so both are kept).
func origin(ctx context.Context) []any {
	var out []any
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		out = append(out, "peer", p.Addr.String())
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if f := auth.ForwardedFor(md.Get("x-forwarded-for")); f != "" {
		out = append(out, "forwarded_for", f)
	}
	return out
}

func bearerToken(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) != 1 {
		// Two tokens are none: which one the caller meant is not for this
		// server to guess.
		return ""
	}
	token, _ := auth.Bearer(vals[0])
	return token
}

// authenticate returns the caller and the bearer token to forward, which is
// empty for a method with a request credential: such a caller has no token
// that other services would accept.
func (i *interceptor) authenticate(ctx context.Context, method string, req any) (auth.Principal, string, error) {
	if cred, ok := i.credentials[method]; ok {
		p, err := cred(ctx, req)
		if err != nil {
			if _, ok := status.FromError(err); !ok {
				// The check reads the database as a handler does: an
				// outage is the caller's to retry, and its text is logged
				// only as safe.
				err = i.fromDatabase(ctx, method, fmt.Errorf("request credential: %w", err))
			}
			return auth.Principal{}, "", err
		}
		return p, "", nil
	}
	token := bearerToken(ctx)
	if token == "" {
		return auth.Principal{}, "", status.Error(codes.Unauthenticated, "missing bearer token: send an Authorization: Bearer header")
	}
	p, err := i.verifier.Verify(ctx, token)
	if cause := auth.KeysUnavailableCause(err); cause != nil {
		// Not the caller's fault: the identity provider's key set is out
		// of reach. The cause is for the operator only.
		i.log.ErrorContext(ctx, "signing keys unavailable", "method", method, "error", cause.Error())
		return auth.Principal{}, "", status.Error(codes.Unavailable, "the token cannot be checked now: the signing keys could not be fetched; retry")
	}
	if err != nil {
		i.log.InfoContext(ctx, "token refused", "method", method, "error", err.Error())
		return auth.Principal{}, "", status.Error(codes.Unauthenticated, auth.PublicReason(err))
	}
	return p, token, nil
}

func (i *interceptor) allowed(method string, p auth.Principal) bool {
	roles, ok := i.policy[method]
	if !ok {
		return false
	}
	if p.Has(auth.RoleEHR) {
		// A token with the EHR role is the outside system, whatever else
		// the identity provider put in it (consentgate.Outsider): it reaches
		// only the EHR's methods, whose reads are checked against consent
		// and recorded. A staff role beside it must not open the others.
		return slices.Contains(roles, auth.RoleEHR)
	}
	return p.Has(roles...)
}

func (i *interceptor) validate(m proto.Message) error {
	if vs := wellFormed(m.ProtoReflect()); len(vs) > 0 {
		return vs.Err()
	}
	err := i.validator.Validate(m)
	if err == nil {
		return nil
	}
	var verr *protovalidate.ValidationError
	if !errors.As(err, &verr) {
		// A rule that does not compile, or fails as it runs: the
		// service's own fault, not the request's. A rule failing as it
		// runs may say so with the request's values: only its kind is
		// logged.
		why := fmt.Sprintf("%T", err)
		var compile *protovalidate.CompilationError
		if errors.As(err, &compile) {
			why = err.Error()
		}
		i.log.Error("request validation failed to run", "message", string(m.ProtoReflect().Descriptor().FullName()), "error", why)
		return apperr.Internal(err)
	}
	var vs apperr.Violations
	for _, v := range verr.Violations {
		vs = append(vs, apperr.Violation{
			Field:       protovalidate.FieldPathString(v.Proto.GetField()),
			Description: v.Proto.GetMessage(),
		})
	}
	return vs.Err()
}
