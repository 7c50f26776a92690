// Package gateway is Handoff's REST front door: grpc-gateway in front of the
// three gRPC services, with token checks, request ids from Idempotency-Key,
// ETag and If-Match, a body limit, timeouts, CORS, health and readiness, and
// the OpenAPI document with a readable reference page.
package gateway

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/handoff-health/handoff/gen"
	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	webhooksv1 "github.com/handoff-health/handoff/gen/go/handoff/webhooks/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/consentgate"
	"github.com/handoff-health/handoff/services/fhir"
	"github.com/handoff-health/handoff/services/grpcclient"
)

// Config configures the gateway.
type Config struct {
	Log *slog.Logger
	// Addresses of the gRPC services.
	FamiliesAddr, InterventionsAddr, ReferralsAddr string
	// WebhooksAddr is the webhooks service; empty leaves its routes out.
	WebhooksAddr string
	// Client configures the connections to the services (TLS).
	Client grpcclient.Config
	// Verifier checks bearer tokens before a request reaches a service
	// (which checks them again).
	Verifier *auth.Verifier
	// BodyLimit caps request bodies (default 1 MiB).
	BodyLimit int64
	// Timeout bounds each API call (default 15 s).
	Timeout time.Duration
	// CORSOrigins are the browser origins allowed to call the API; "*"
	// allows any. Empty allows none.
	CORSOrigins []string
	// PublicURL is the gateway's public address (https://api.example.org),
	// for links in FHIR answers; empty takes them from each request's Host.
	PublicURL string
	// ReadyCheckTimeout bounds each service's check in /readyz (default
	// DefaultReadyCheckTimeout).
	ReadyCheckTimeout time.Duration
	// Codec, if set, is the remote payload codec for the Temporal Web UI,
	// served at /codec/ behind the same CORS, no-store and request log as
	// the API (a browser UI sends a preflight first, without a token).
	Codec http.Handler
}

// Gateway is the HTTP handler and its connections.
type Gateway struct {
	http.Handler
	conns        map[string]*grpc.ClientConn
	readyTimeout time.Duration

	// The last readiness answer, given again for readyFor: /readyz takes
	// no token, and each check asks every service, so that callers
	// without number would otherwise set off as many health calls.
	readyMu   sync.Mutex
	readyAt   time.Time
	readyCode int
	readyBody []byte
}

// readyFor is how long a readiness answer is given again.
const readyFor = time.Second

// Close closes the connections to the services.
func (g *Gateway) Close() {
	for _, c := range g.conns {
		c.Close()
	}
}

// New builds the gateway.
func New(ctx context.Context, cfg Config) (*Gateway, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.BodyLimit == 0 {
		cfg.BodyLimit = 1 << 20
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 15 * time.Second
	}
	g := &Gateway{conns: map[string]*grpc.ClientConn{}, readyTimeout: cmp.Or(cfg.ReadyCheckTimeout, DefaultReadyCheckTimeout)}
	mux := runtime.NewServeMux(
		// One JSON convention: proto3 JSON, lowerCamelCase names (snake_case
		// is accepted on input too), enums as names; unknown fields are an
		// error, not silently dropped.
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &runtime.JSONPb{
			MarshalOptions:   protojson.MarshalOptions{EmitUnpopulated: false},
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
		}),
		runtime.WithIncomingHeaderMatcher(headers),
		runtime.WithForwardResponseOption(setETag),
		runtime.SetQueryParameterParser(&strictQuery{}),
		// A form's X-HTTP-Method-Override would turn a POST into another
		// call; no client of this API needs it.
		runtime.WithDisableHTTPMethodOverride(),
		// Nor may a form POST with no body (which jsonOnly lets by) be
		// served as the path's GET (or answered 405 or not, as the walk of
		// a map goes): a verb the path does not take is a 405.
		runtime.WithDisablePathLengthFallback(),
		runtime.WithMiddlewares(refuseQueryOnBodyRoutes(bodyOnlyRoutes(apiFiles...)), refuseBodyOnNoBodyRoutes(noBodyRoutes(apiFiles...))),
		runtime.WithErrorHandler(httpError),
		runtime.WithRoutingErrorHandler(routingError(routes(apiFiles...))),
	)
	dialCfg := cfg.Client
	addrs := map[string]string{"families": cfg.FamiliesAddr, "interventions": cfg.InterventionsAddr, "referrals": cfg.ReferralsAddr}
	if cfg.WebhooksAddr != "" {
		addrs["webhooks"] = cfg.WebhooksAddr
	}
	for name, addr := range addrs {
		conn, err := grpcclient.Dial(addr, dialCfg, grpc.WithChainUnaryInterceptor(fillFromHeaders, staffRecordDisclosures(cfg.Log), unreached(cfg.Log, name)))
		if err != nil {
			g.Close()
			return nil, err
		}
		g.conns[name] = conn
	}
	doc, page, err := g.handlers(ctx, mux)
	if err != nil {
		// The connections dialled above would outlive a gateway never built.
		g.Close()
		return nil, err
	}
	root := http.NewServeMux()
	root.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"ok"}`))
	})
	root.HandleFunc("GET /readyz", g.ready)
	root.HandleFunc("GET /openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(doc)
	})
	root.HandleFunc("GET /docs", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(page)
	})
	// Authenticated first: every refusal after it, the content checks' as
	// the API's, is logged with who was refused (see authenticate).
	api := private(authenticate(cfg.Verifier, cfg.Log, jsonOnly(limitBody(cfg.BodyLimit, timeout(cfg.Timeout, mux)))))
	root.Handle("/v1/", api)
	root.Handle(calendarRoute, calendarFeed(interventionsv1.NewInterventionsServiceClient(g.conns["interventions"]), cfg.Timeout, cfg.Log))
	// FHIR R4 for EHRs. It checks the token and the body size itself (its
	// errors are OperationOutcomes, and /metadata is public) and calls the
	// services with the caller's token.
	fhirAPI, err := fhir.New(fhir.Config{
		Families:      familiesv1.NewFamiliesServiceClient(g.conns["families"]),
		Interventions: interventionsv1.NewInterventionsServiceClient(g.conns["interventions"]),
		Referrals:     referralsv1.NewReferralsServiceClient(g.conns["referrals"]),
		Verifier:      cfg.Verifier, Log: cfg.Log, BodyLimit: cfg.BodyLimit, BaseURL: cfg.PublicURL,
	})
	if err != nil {
		g.Close()
		return nil, err
	}
	root.Handle(fhir.Prefix+"/", private(timeout(cfg.Timeout, fhirAPI)))
	if cfg.Codec != nil {
		root.Handle("/codec/", private(http.StripPrefix("/codec", cfg.Codec)))
	}
	g.Handler = otelhttp.NewHandler(cors(cfg.CORSOrigins, logRequests(cfg.Log, root)), "gateway",
		// Span names by method only: paths hold resource names.
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return "HTTP " + r.Method }),
		// The door to the internet: a caller's traceparent is linked, not
		// followed, so that no caller turns tracing off for its calls or
		// files them under a trace of its choosing.
		otelhttp.WithPublicEndpointFn(func(*http.Request) bool { return true }))
	return g, nil
}

// headers passes the headers the services need as gRPC metadata, and no
// other: not the browser's cookies, referrer or user agent, nor a second
// copy of the token (grpc-gateway passes Authorization, and the client's
// address, itself). Clients send no gRPC metadata of their own
// (Grpc-Metadata-*): an Authorization sent that way would reach the
// services beside the token checked here.
func headers(key string) (string, bool) {
	switch k := strings.ToLower(key); k {
	case "idempotency-key", "if-match":
		return k, true
	}
	return "", false
}

// handlers registers the services' REST handlers on mux and builds the
// API's documents: the OpenAPI document and its reference page.
func (g *Gateway) handlers(ctx context.Context, mux *runtime.ServeMux) (doc, page []byte, err error) {
	if err := familiesv1.RegisterFamiliesServiceHandler(ctx, mux, g.conns["families"]); err != nil {
		return nil, nil, fmt.Errorf("gateway: families: %w", err)
	}
	if err := interventionsv1.RegisterInterventionsServiceHandler(ctx, mux, g.conns["interventions"]); err != nil {
		return nil, nil, fmt.Errorf("gateway: interventions: %w", err)
	}
	if err := referralsv1.RegisterReferralsServiceHandler(ctx, mux, g.conns["referrals"]); err != nil {
		return nil, nil, fmt.Errorf("gateway: referrals: %w", err)
	}
	if conn, ok := g.conns["webhooks"]; ok {
		if err := webhooksv1.RegisterWebhooksServiceHandler(ctx, mux, conn); err != nil {
			return nil, nil, fmt.Errorf("gateway: webhooks: %w", err)
		}
	}
	if doc, err = openAPI(); err != nil {
		return nil, nil, err
	}
	if page, err = referencePage(doc); err != nil {
		return nil, nil, err
	}
	return doc, page, nil
}

// unreached answers an UNAVAILABLE call with a plain message. grpc-go
// raises that code for a call that never reached its service (nothing
// listening, a name that does not resolve, a failed TLS handshake) or
// lost it on the way (a connection reset), with a message that tells the
// way there: addresses, DNS names, certificate details. The operator
// reads it in the log; the caller has no use for it, and the services' own
// UNAVAILABLE answers say no more than this one. Other codes pass as they
// are.
func unreached(log *slog.Logger, service string) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		// Sent on, the call is the service's to record, or this step's to
		// log when it never arrived: either way authenticate need not.
		accounted(ctx)
		err := invoker(ctx, method, req, reply, cc, opts...)
		if status.Code(err) != codes.Unavailable {
			return err
		}
		if ctx.Err() != nil {
			// The caller went or its time ran out as the way failed: that
			// is the answer (499 or 504), not the way's message.
			return status.FromContextError(ctx.Err()).Err()
		}
		// With who asked: a call that never arrived is in no audit trail.
		p, _ := auth.FromContext(ctx)
		log.WarnContext(ctx, "gateway: service unavailable", "service", service, "method", method, "subject", p.Subject, "clinic", p.Clinic, "error", err.Error())
		return status.Errorf(codes.Unavailable, "the %s service could not be reached or is unavailable: retry later", service)
	}
}

// accountedKey holds, in an authenticated request's context, whether the
// call is accounted for elsewhere than by authenticate's log: sent on to a
// service (whose audit trail records it, refusals included), or refused
// by a step that logged it itself.
type accountedKey struct{}

// accounted marks the call in ctx as accounted for (see accountedKey).
func accounted(ctx context.Context) {
	if a, ok := ctx.Value(accountedKey{}).(*atomic.Bool); ok {
		a.Store(true)
	}
}

// fillFromHeaders copies Idempotency-Key into the request's request_id and
// If-Match into its etag (on the request, or on the resource it carries),
// when the body did not set them; where the body did, the two must agree.
func fillFromHeaders(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	md, _ := metadata.FromOutgoingContext(ctx)
	if m, ok := req.(proto.Message); ok {
		if v := md.Get("idempotency-key"); len(v) > 0 {
			// A body's own request id that differs would otherwise win
			// silently: a client whose library makes a new one per try
			// would lose the key it meant to retry under.
			cur, ok := setIfEmpty(m.ProtoReflect(), "request_id", v[0])
			if cur != "" && cur != v[0] {
				return status.Error(codes.InvalidArgument, fmt.Sprintf("Idempotency-Key (%q) and the body's requestId (%q) differ: give one, or the same in both", v[0], cur))
			}
			// Dropped, the key would promise a retry that changes nothing
			// twice, and the retry would record the batch again.
			if !ok && !reads[method] && !repeatable[method] {
				return status.Error(codes.InvalidArgument, fmt.Sprintf(
					"Idempotency-Key: %s takes no request id, so a retry would be done again; send it without the header", method[strings.LastIndex(method, "/")+1:]))
			}
		}
		// "If-Match: *" asks only that the resource exist (RFC 9110), which
		// every update needs anyway: no version to check. Every header is
		// joined first, so that "*" in the first cannot hide an etag in a
		// second. A read (a GET) has no version to check: If-Match is left
		// aside there, as before.
		if v := md.Get("if-match"); len(v) > 0 && !reads[method] {
			if h := strings.Join(v, ","); strings.TrimSpace(h) != "*" {
				if err := ifMatch(method, m.ProtoReflect(), h); err != nil {
					return err
				}
			}
		}
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// ifMatch puts the etag an If-Match header gives into the request's etag,
// or into the etag of the resource it carries (an update's). It refuses
// what it would otherwise ignore or misread: a list of etags (one version
// is checked), a call with no etag to check, and a body whose own etag
// says another version.
func ifMatch(method string, r protoreflect.Message, header string) error {
	etag := aip.BareEtag(header)
	if strings.Contains(header, ",") || etag == "" {
		// An empty etag would reach the service as no etag at all: the
		// guarded write would go through unguarded.
		return status.Error(codes.InvalidArgument, "If-Match: give one etag, the one you read")
	}
	if strings.HasPrefix(method[strings.LastIndex(method, "/")+1:], "Create") {
		// A create carries the resource it makes, whose etag field the
		// service ignores: nothing exists yet to be at a version.
		return status.Error(codes.InvalidArgument, "If-Match: a create has no version to check")
	}
	target := r
	if etagField(r) == nil {
		target = nil
		fields := r.Descriptor().Fields()
		for i := 0; i < fields.Len() && target == nil; i++ {
			// Checked on the descriptor: Mutable sets the field.
			if fd := fields.Get(i); fd.Message() != nil && !fd.IsList() && !fd.IsMap() && isEtag(fd.Message().Fields().ByName("etag")) {
				target = r.Mutable(fd).Message()
			}
		}
	}
	if target == nil {
		return status.Error(codes.InvalidArgument, "If-Match: this call has no version to check")
	}
	fd := etagField(target)
	switch cur := target.Get(fd).String(); {
	case cur == "":
		target.Set(fd, protoreflect.ValueOfString(etag))
	case aip.BareEtag(cur) != etag:
		return status.Error(codes.InvalidArgument, fmt.Sprintf("If-Match (%q) and the body's etag (%q) name different versions", etag, cur))
	}
	return nil
}

// apiFiles are the services' API definitions, whose HTTP bindings the
// gateway serves.
var apiFiles = []protoreflect.FileDescriptor{familiesv1.File_handoff_families_v1_families_proto,
	interventionsv1.File_handoff_interventions_v1_interventions_proto,
	referralsv1.File_handoff_referrals_v1_referrals_proto, webhooksv1.File_handoff_webhooks_v1_webhooks_proto}

// reads are the services' GET methods (see readMethods).
var reads = readMethods(apiFiles...)

// repeatable are the writes with no request id that a retry cannot do
// twice: a revocation changes nothing the second time, and a match is a
// read sent by POST. Any other write without one refuses Idempotency-Key.
var repeatable = map[string]bool{
	"/handoff.families.v1.FamiliesService/RevokeConsent":   true,
	"/handoff.referrals.v1.ReferralsService/MatchPrograms": true,
}

// etagField is m's string field etag, or nil.
func etagField(m protoreflect.Message) protoreflect.FieldDescriptor {
	if fd := m.Descriptor().Fields().ByName("etag"); isEtag(fd) {
		return fd
	}
	return nil
}

// isEtag reports whether fd is an etag field: a single string.
func isEtag(fd protoreflect.FieldDescriptor) bool {
	return fd != nil && fd.Kind() == protoreflect.StringKind && !fd.IsList()
}

// setIfEmpty sets m's string field to value unless it is set already, and
// returns what it held before (ok false when m has no such field).
func setIfEmpty(m protoreflect.Message, field, value string) (before string, ok bool) {
	fd := m.Descriptor().Fields().ByName(protoreflect.Name(field))
	if fd == nil || fd.Kind() != protoreflect.StringKind {
		return "", false
	}
	if before = m.Get(fd).String(); before == "" {
		m.Set(fd, protoreflect.ValueOfString(value))
	}
	return before, true
}

// setETag puts a returned resource's etag in the ETag header.
func setETag(_ context.Context, w http.ResponseWriter, m proto.Message) error {
	r := m.ProtoReflect()
	if fd := r.Descriptor().Fields().ByName("etag"); fd != nil && fd.Kind() == protoreflect.StringKind {
		if e := r.Get(fd).String(); e != "" {
			w.Header().Set("ETag", strconv.Quote(e))
		}
	}
	return nil
}

// writeStatus writes an error as google.rpc.Status JSON, like the API does.
func writeStatus(w http.ResponseWriter, httpCode int, code codes.Code, msg string) {
	b, _ := protojson.Marshal(status.New(code, msg).Proto())
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpCode)
	_, _ = w.Write(b)
}

// jsonOnly refuses, with 415, a request whose body is declared as
// something other than JSON: grpc-gateway decodes every body as JSON
// whatever it is declared as, and would also take a form's method
// override. A body without a Content-Type is read as JSON.
func jsonOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hasBody := r.ContentLength != 0 // -1: unknown, as over HTTP/2 without a length
		if ct := r.Header.Get("Content-Type"); ct != "" && hasBody {
			mt, _, err := mime.ParseMediaType(ct)
			if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
				writeStatus(w, http.StatusUnsupportedMediaType, codes.InvalidArgument,
					fmt.Sprintf("Content-Type %q is not JSON: send application/json", ct))
				return
			}
		}
		if msg := aip.HeaderProblem(r.Header, r.Method != http.MethodGet && r.Method != http.MethodHead); msg != "" {
			writeStatus(w, http.StatusBadRequest, codes.InvalidArgument, msg)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// limitBody refuses bodies over limit with 413 before anything decodes them.
func limitBody(limit int64, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > limit {
			writeStatus(w, http.StatusRequestEntityTooLarge, codes.InvalidArgument,
				fmt.Sprintf("request body of %d bytes is over the limit of %d", r.ContentLength, limit))
			return
		}
		// A body without a length (chunked) is cut at the limit as it is
		// read; the flag lets the error handler answer 413 rather than the
		// decoder's 400.
		over := new(bool)
		r = r.WithContext(context.WithValue(r.Context(), overLimitKey{}, over))
		r.Body = &limitedBody{ReadCloser: http.MaxBytesReader(w, r.Body, limit), over: over}
		next.ServeHTTP(w, r)
	})
}

type overLimitKey struct{}

// limitedBody notes that a read went past the body limit.
type limitedBody struct {
	io.ReadCloser
	over *bool
}

func (b *limitedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		*b.over = true
	}
	return n, err
}

// routingError answers a verb the path does not take 405 with the verbs it
// does in Allow (RFC 9110), where grpc-gateway's default says 501 Not
// Implemented, which tells a client the server lacks the feature; a HEAD,
// which no route takes, is such a verb. Other routing errors (no route at
// all) answer as by default.
func routingError(rs []route) runtime.RoutingErrorHandlerFunc {
	return func(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, code int) {
		if code != http.StatusMethodNotAllowed {
			runtime.DefaultRoutingErrorHandler(ctx, mux, m, w, r, code)
			return
		}
		if allow := allowed(rs, r.URL.Path); allow != "" {
			w.Header().Set("Allow", allow)
		}
		// The body's gRPC code is UNIMPLEMENTED, the code grpc-gateway pairs
		// with a 405 (no gRPC method serves this verb here); the HTTP
		// status says 405, and Allow what is served.
		httpError(ctx, mux, m, w, r, &runtime.HTTPStatusError{HTTPStatus: http.StatusMethodNotAllowed,
			Err: status.Errorf(codes.Unimplemented, "%s is not taken at this path", r.Method)})
	}
}

// httpError answers as grpc-gateway does, except for a body cut at the
// limit, which is 413; a stale If-Match header, which is 412 (RFC 9110: the
// client's own precondition failed; a stale etag in the body stays 409);
// and a disclosure no consent covers, which is 403 (as the FHIR API
// answers), not the 400 of other failed preconditions.
func httpError(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	if over, _ := r.Context().Value(overLimitKey{}).(*bool); over != nil && *over {
		writeStatus(w, http.StatusRequestEntityTooLarge, codes.InvalidArgument, "the request body is over the size limit")
		return
	}
	switch apperr.Reason(err) {
	case apperr.ReasonEtagMismatch:
		// "*" checks no version: the stale etag was the body's, 409.
		if h := strings.TrimSpace(r.Header.Get("If-Match")); h != "" && h != "*" {
			err = &runtime.HTTPStatusError{HTTPStatus: http.StatusPreconditionFailed, Err: err}
		}
	case consentgate.ReasonConsentRequired:
		err = &runtime.HTTPStatusError{HTTPStatus: http.StatusForbidden, Err: err}
	case apperr.ReasonQuotaExceeded:
	default:
		// Only a quota of ours is the caller's to free or wait out (429).
		// grpc's own RESOURCE_EXHAUSTED is a message over a size limit
		// between this door and a service: a fault here that a retry
		// meets again, so not 429, which clients wait out and repeat.
		if status.Code(err) == codes.ResourceExhausted {
			err = &runtime.HTTPStatusError{HTTPStatus: http.StatusInternalServerError,
				Err: status.Error(codes.ResourceExhausted, "the answer is over the size limit between the gateway and the service: ask for less (a smaller page_size)")}
		}
	}
	switch status.Code(err) {
	case codes.Unavailable:
		// Retried with the same request id, the call is safe to send
		// again (see the README): say when. Not RESOURCE_EXHAUSTED: here
		// it is a message over a size limit, which waiting does not fix.
		w.Header().Set("Retry-After", "5")
	case codes.Unauthenticated:
		// grpc-gateway puts the status message in WWW-Authenticate, which
		// is no challenge (RFC 6750): a token that lapsed between this
		// door's check and the service's gets the one the door gives.
		w = bearerChallenge{w}
	}
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, err)
}

// bearerChallenge sets the WWW-Authenticate of a refused token as the
// status is written.
type bearerChallenge struct{ http.ResponseWriter }

func (b bearerChallenge) WriteHeader(code int) {
	b.Header().Set("WWW-Authenticate", `Bearer realm="handoff", error="invalid_token"`)
	b.ResponseWriter.WriteHeader(code)
}

// private marks every answer as one no cache may keep: they carry records
// under 42 CFR Part 2, and a browser's disk cache would keep them past the
// session. nosniff keeps a browser from reading a JSON answer as a page.
func private(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		next.ServeHTTP(w, r)
	})
}

// authenticate checks the bearer token at the door; the services check it
// again, since the gateway only forwards it.
func authenticate(v *auth.Verifier, log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token, ok := auth.Bearer(r.Header.Get("Authorization"))
		if !ok {
			// Logged as the services log a failed sign-in, so that one
			// message is watched at every door.
			log.WarnContext(r.Context(), "authentication failed", append([]any{"method", r.Method, "path", r.URL.Path, "error", "no bearer token"}, auth.Origin(r)...)...)
			w.Header().Set("WWW-Authenticate", `Bearer realm="handoff"`)
			writeStatus(w, http.StatusUnauthorized, codes.Unauthenticated, "missing bearer token: send Authorization: Bearer <token>")
			return
		}
		p, err := v.Verify(r.Context(), token)
		if cause := auth.KeysUnavailableCause(err); cause != nil {
			// The identity provider is out of reach, not the token at
			// fault: the client may retry, and the operator must hear of it.
			log.ErrorContext(r.Context(), "signing keys unavailable", "method", r.Method, "path", r.URL.Path, "error", cause.Error())
			w.Header().Set("Retry-After", "5")
			writeStatus(w, http.StatusServiceUnavailable, codes.Unavailable, "the token cannot be checked now: the signing keys could not be fetched; retry")
			return
		}
		if err != nil {
			// The caller hears what is wrong with its token; why exactly
			// (the audience or issuer it named) is for the operator.
			log.WarnContext(r.Context(), "authentication failed", append([]any{"method", r.Method, "path", r.URL.Path, "error", err.Error()}, auth.Origin(r)...)...)
			w.Header().Set("WWW-Authenticate", `Bearer realm="handoff", error="invalid_token"`)
			writeStatus(w, http.StatusUnauthorized, codes.Unauthenticated, auth.PublicReason(err))
			return
		}
		if p.Clinic == auth.AnyClinic || p.Internal() {
			// Tokens for every clinic, and the roles, belong to Handoff's
			// own parts (the worker, the webhook sender, the calendar
			// reader; and calendar_feed, which the interventions service
			// grants a feed's token), which call the services directly:
			// from the public side such a token is a leaked or a mistaken
			// one, and would read every clinic or act as the worker in one.
			log.WarnContext(r.Context(), "service token refused at the public edge",
				append([]any{"subject", p.Subject, "method", r.Method, "path", r.URL.Path}, auth.Origin(r)...)...)
			writeStatus(w, http.StatusForbidden, codes.PermissionDenied,
				"a token of Handoff's own services (for every clinic, or in a service role) is not accepted here: use a token of a person or an outside system for one clinic")
			return
		}
		// A call refused here before it reached a service (a query
		// parameter, a header, the body's type or size, a route) is in no
		// service's audit trail: the log says who made it, as the service
		// would have. A caller gone or out of time was refused nothing.
		done := new(atomic.Bool)
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(sw, r.WithContext(context.WithValue(auth.WithPrincipal(r.Context(), p), accountedKey{}, done)))
		if sw.code >= 400 && !done.Load() && sw.code != statusClientClosed && sw.code != http.StatusGatewayTimeout {
			log.WarnContext(r.Context(), "refused at the gateway", append([]any{"subject", p.Subject, "clinic", p.Clinic,
				"method", r.Method, "path", r.URL.Path, "status", sw.code}, auth.Origin(r)...)...)
		}
	})
}

// staffRecordDisclosures lets only staff record disclosures through this
// door. The EHR may call CreateDisclosure and BatchCreateDisclosures on
// the families service because the services that disclose to it record
// them with its own token; they name records the families service cannot
// check against the family (a referral, a meeting). From the outside the
// EHR could so write, for good, entries of its own making into a
// patient's accounting of disclosures (42 CFR 2.24). Staff record the
// disclosures they make by hand (a referral sent by fax). Nor does this
// door serve ListCoveredFamilies, the services' own call to narrow the
// EHR's lists: from the outside, the families it names for referrals but
// not for identity would list the deleted ones at a glance. A refusal is
// logged with who tried: the call never reaches a service, whose audit
// trail would otherwise record it.
func staffRecordDisclosures(log *slog.Logger) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		switch method {
		case familiesv1.FamiliesService_ListCoveredFamilies_FullMethodName:
			p, _ := auth.FromContext(ctx)
			log.WarnContext(ctx, "the services' own call refused at the gateway", "method", method, "subject", p.Subject, "clinic", p.Clinic)
			accounted(ctx)
			return status.Error(codes.PermissionDenied,
				"the families a consent covers are the services' to ask: read the records, which are narrowed to them")
		case familiesv1.FamiliesService_CreateDisclosure_FullMethodName, familiesv1.FamiliesService_BatchCreateDisclosures_FullMethodName:
			// A token that holds the ehr role is the EHR's, whatever else it
			// holds (the services gate it so too).
			if p, ok := auth.FromContext(ctx); !ok || !p.Has(auth.RoleCounselor, auth.RoleClinicAdmin) || p.Has(auth.RoleEHR) {
				log.WarnContext(ctx, "a disclosure recorded by a caller not staff refused", "method", method, "subject", p.Subject, "clinic", p.Clinic)
				accounted(ctx)
				return status.Error(codes.PermissionDenied,
					"disclosures are recorded here by staff only: the services record what they disclose to an EHR themselves")
			}
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

func timeout(d time.Duration, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), d)
		defer cancel()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// cors answers preflights and marks responses for the allowed origins.
func cors(origins []string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		// On every answer, allowed or not: a cache that kept one without
		// it would serve it to another origin.
		w.Header().Add("Vary", "Origin")
		if origin != "" && (slices.Contains(origins, "*") || slices.Contains(origins, origin)) {
			w.Header().Set("Access-Control-Allow-Origin", origin)
			// A browser client must be able to read the Part 2 notice that
			// every disclosure carries, and when and how to try again.
			w.Header().Set("Access-Control-Expose-Headers", "ETag, Grpc-Metadata-Part2-Notice, Part2-Notice, Preference-Applied, Retry-After, WWW-Authenticate")
			if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
				w.Header().Set("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE")
				w.Header().Set("Access-Control-Allow-Headers", "Authorization, Content-Type, Idempotency-Key, If-Match, Prefer, X-Namespace")
				w.Header().Set("Access-Control-Max-Age", "600")
				w.WriteHeader(http.StatusNoContent)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (s *statusWriter) WriteHeader(code int) { s.code = code; s.ResponseWriter.WriteHeader(code) }

// Unwrap lets http.ResponseController reach the writer underneath.
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// logRequests logs method, path pattern-free path and status: resource names
// are identifiers, and no body or query reaches the log.
func logRequests(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(sw, r)
		log.Info("http", "method", r.Method, "path", r.URL.Path, "status", sw.code, "duration_ms", time.Since(start).Milliseconds())
	})
}

// optional are the services without which the gateway still serves the
// API: webhook subscriptions are administration, and a gateway taken out
// of the load balancer for their sake would take the whole API with it.
var optional = map[string]bool{"webhooks": true}

// DefaultReadyCheckTimeout is how long a readiness check waits for one
// service: under a kubelet's default probe timeout of a second.
const DefaultReadyCheckTimeout = 800 * time.Millisecond

// ready answers 200 when every service the API needs reports SERVING; the
// body shows each, optional ones included.
func (g *Gateway) ready(w http.ResponseWriter, r *http.Request) {
	// Callers at once wait for one check, and share its answer.
	g.readyMu.Lock()
	defer g.readyMu.Unlock()
	if g.readyBody == nil || time.Since(g.readyAt) >= readyFor {
		// Not cut short by this caller going away: the answer is others'
		// too. Each service's check has its own deadline.
		g.readyCode, g.readyBody = g.check(context.WithoutCancel(r.Context()))
		g.readyAt = time.Now()
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(g.readyCode)
	_, _ = w.Write(g.readyBody)
}

// check asks each service for its health, and gives the status and body
// of the readiness answer.
func (g *Gateway) check(ctx context.Context) (int, []byte) {
	// Each service is asked at once, with a deadline of its own: one that
	// hangs must not run out the time of the others, nor the probe's (a
	// kubelet gives up after a second by default, and a probe that timed
	// out counts as not ready, optional services or not).
	var mu sync.Mutex
	var wg sync.WaitGroup
	out := map[string]string{}
	for name, conn := range g.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(ctx, g.readyTimeout)
			defer cancel()
			state := "SERVING"
			resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
			switch {
			case err != nil:
				state = "unreachable: " + status.Code(err).String()
			case resp.GetStatus() != healthpb.HealthCheckResponse_SERVING:
				state = resp.GetStatus().String()
			}
			mu.Lock()
			out[name] = state
			mu.Unlock()
		}()
	}
	wg.Wait()
	code := http.StatusOK
	for name, state := range out {
		if state != "SERVING" && !optional[name] {
			code = http.StatusServiceUnavailable
		}
	}
	body, err := json.Marshal(out)
	if err != nil {
		return http.StatusInternalServerError, []byte(`{}`)
	}
	return code, append(body, '\n')
}

// openAPI returns the merged document with Handoff's own title.
func openAPI() ([]byte, error) {
	var doc map[string]any
	if err := json.Unmarshal(gen.OpenAPI, &doc); err != nil {
		return nil, fmt.Errorf("gateway: openapi: %w", err)
	}
	doc["info"] = map[string]any{
		"title":   "Handoff API",
		"version": "v1",
		"description": "Families, interventions and referrals for clinics that help families of a loved one who refuses " +
			"addiction treatment. Every call needs a bearer token; JSON names are lowerCamelCase; errors are google.rpc.Status.",
	}
	doc["securityDefinitions"] = map[string]any{"bearer": map[string]any{"type": "apiKey", "name": "Authorization", "in": "header"}}
	doc["security"] = []any{map[string]any{"bearer": []any{}}}
	return json.MarshalIndent(doc, "", "  ")
}
