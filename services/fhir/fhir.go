// Package fhir is Handoff's HL7 FHIR R4 interface for EHRs, served by the
// gateway under /fhir/R4/. It reads and searches Patient (the loved one),
// RelatedPerson (members), CareTeam (the intervention network), ServiceRequest
// and Task (referrals, with the BSeR business statuses), Appointment
// (interventions and intake appointments), Consent and HealthcareService
// (programs), and lets the EHR write back a referral's Task status.
//
// It holds no data and makes no access decision: every call goes to the gRPC
// services with the caller's own bearer token, so clinic scoping, roles,
// 42 CFR Part 2 consent checks and auditing all happen there. The clinic is
// the one in the caller's token, so FHIR ids are Handoff ids within it.
//
// Every answer is built as JSON and then parsed by the validating R4 parser of
// github.com/google/fhir/go and written by its marshaller: an answer that does
// not conform to FHIR R4 fails here as a 500 instead of reaching the EHR.
package fhir

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/google/fhir/go/fhirversion"
	"github.com/google/fhir/go/jsonformat"
	"google.golang.org/protobuf/proto"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/auth"
)

// Prefix is where the handler expects to be mounted.
const Prefix = "/fhir/R4"

// contentType is the FHIR JSON media type.
const contentType = "application/fhir+json; charset=utf-8"

// Config configures the FHIR handler.
type Config struct {
	Families      familiesv1.FamiliesServiceClient
	Interventions interventionsv1.InterventionsServiceClient
	Referrals     referralsv1.ReferralsServiceClient
	// Verifier checks bearer tokens; the services check them again.
	Verifier *auth.Verifier
	Log      *slog.Logger
	// BaseURL is the public address of the FHIR base, for example
	// "https://api.example.org/fhir/R4", used in Bundle links and fullUrls;
	// the server's public address ("https://api.example.org") is taken to
	// mean the FHIR base under it. Empty derives it from each request's
	// Host and X-Forwarded-Proto, which the client controls: set it in
	// production.
	BaseURL string
	// BodyLimit caps request bodies (default 1 MiB).
	BodyLimit int64
}

type server struct {
	cfg Config
	in  *jsonformat.Unmarshaller
	out *jsonformat.Marshaller
}

// New returns the handler for everything under Prefix.
func New(cfg Config) (http.Handler, error) {
	if cfg.Families == nil || cfg.Interventions == nil || cfg.Referrals == nil || cfg.Verifier == nil {
		return nil, errors.New("fhir: the three service clients and a verifier are required")
	}
	if cfg.BaseURL != "" {
		u, err := url.Parse(cfg.BaseURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("fhir: the base URL %q is not an absolute http(s) URL without query or fragment", cfg.BaseURL)
		}
	}
	s, err := newServer(cfg)
	if err != nil {
		return nil, err
	}
	return s.routes(), nil
}

func newServer(cfg Config) (*server, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.BodyLimit <= 0 {
		cfg.BodyLimit = 1 << 20
	}
	in, err := jsonformat.NewUnmarshaller("UTC", fhirversion.R4)
	if err != nil {
		return nil, fmt.Errorf("fhir: unmarshaller: %w", err)
	}
	out, err := jsonformat.NewMarshaller(false, "", "", fhirversion.R4)
	if err != nil {
		return nil, fmt.Errorf("fhir: marshaller: %w", err)
	}
	return &server{cfg: cfg, in: in, out: out}, nil
}

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+Prefix+"/metadata", s.metadata)
	mux.HandleFunc("GET "+Prefix+"/{type}", s.authed(s.search))
	mux.HandleFunc("POST "+Prefix+"/{type}/_search", s.authed(s.search))
	mux.HandleFunc("GET "+Prefix+"/{type}/{id}", s.authed(s.read))
	mux.HandleFunc("PUT "+Prefix+"/Task/{id}", s.authed(s.putTask))
	mux.HandleFunc(Prefix+"/", s.unsupported)
	return s.limitBody(s.jsonOnly(noHead(mux, s.unsupported)))
}

// noHead refuses HEAD but for the CapabilityStatement: a GET pattern
// serves HEAD too, so a read or a search would run and record as
// disclosed what the answer, cut to its headers, never sends.
func noHead(next http.Handler, refuse http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead && r.URL.Path != Prefix+"/metadata" {
			refuse(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// jsonOnly answers 406 to a client that takes only a format this server
// does not write (FHIR XML, Turtle), by _format or by Accept: JSON sent
// anyway would be a body it cannot read.
func (s *server) jsonOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if (r.Method == http.MethodGet || r.Method == http.MethodHead) && r.ContentLength != 0 {
			// Go reads no parameters from a GET body: a search sent that
			// way would drop every one and match all the caller may see.
			// (-1 is a body of unknown length, as when chunked.)
			s.fail(w, http.StatusBadRequest, "invalid",
				"a GET takes no body: put the search parameters in the URL, or POST them to [type]/_search")
			return
		}
		if r.Method == http.MethodPost && r.ContentLength != 0 {
			// A POST search may carry _format in its body: the search
			// checks the format once it has read (and refused, if it
			// cannot) the body.
			next.ServeHTTP(w, r)
			return
		}
		if s.refuseFormat(w, r, r.URL.Query().Get("_format")) {
			return
		}
		next.ServeHTTP(w, r)
	})
}

// refuseFormat answers 406 and reports true if the request, with _format
// f, takes only a format this server does not write.
func (s *server) refuseFormat(w http.ResponseWriter, r *http.Request, f string) bool {
	if f != "" && !strings.Contains(strings.ToLower(f), "json") {
		s.fail(w, http.StatusNotAcceptable, "not-supported", "only JSON is written here: use _format=json or application/fhir+json")
		return true
	}
	// A media type given as _format may ask for a version as Accept may.
	if _, params, err := mime.ParseMediaType(f); f != "" && err == nil && !r4Version(params) {
		s.fail(w, http.StatusNotAcceptable, "not-supported", "only FHIR R4 (fhirVersion=4.0) is written here")
		return true
	}
	// _format overrides Accept (FHIR http, 3.1.0.1.9): a browser's
	// Accept asks for HTML, and _format=json is how it asks for JSON.
	if a := r.Header.Get("Accept"); f == "" && a != "" && !acceptsJSON(a) {
		s.fail(w, http.StatusNotAcceptable, "not-supported", "only JSON is written here: accept application/fhir+json")
		return true
	}
	return false
}

// jsonType reports whether a body of media type mt is FHIR JSON: R4's
// type, plain JSON, or application/json+fhir, the type DSTU2 named, which
// older clients still send.
func jsonType(mt string) bool {
	return mt == "application/fhir+json" || mt == "application/json" || mt == "application/json+fhir"
}

// acceptsJSON reports whether an Accept header allows some JSON: a range
// naming json (or jsonType's), or a wildcard that covers it, not weighted
// q=0.
func acceptsJSON(accept string) bool {
	for _, rng := range strings.Split(accept, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(rng))
		if err != nil {
			continue
		}
		if q, err := strconv.ParseFloat(params["q"], 64); err == nil && q == 0 {
			continue
		}
		if !r4Version(params) {
			continue
		}
		if mt == "*/*" || mt == "application/*" || strings.HasSuffix(mt, "json") || jsonType(mt) {
			return true
		}
	}
	return false
}

// r4Version reports whether a media type's parameters ask for R4 or name
// no FHIR version (FHIR http 3.1.0.1.9: the fhirVersion parameter, 4.0
// for R4): a client asking for another version would otherwise read, or
// have its body read as, R4 without a word.
func r4Version(params map[string]string) bool {
	v, ok := params["fhirversion"] // mime lowers parameter names
	return !ok || v == "4.0" || strings.HasPrefix(v, "4.0.")
}

// limitBody refuses bodies over the limit before anything reads them, with
// an OperationOutcome like every other FHIR error.
func (s *server) limitBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > s.cfg.BodyLimit {
			s.fail(w, http.StatusRequestEntityTooLarge, "too-costly",
				fmt.Sprintf("request body of %d bytes is over the limit of %d", r.ContentLength, s.cfg.BodyLimit))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, s.cfg.BodyLimit)
		next.ServeHTTP(w, r)
	})
}

// caller is who is asking, resolved once per request.
type caller struct {
	clinic string
	base   string
}

type handler func(ctx context.Context, w http.ResponseWriter, r *http.Request, c caller)

// authed checks the bearer token and puts it in the context, so the gRPC
// clients forward the caller's own token to the services.
func (s *server) authed(next handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		token, ok := auth.Bearer(r.Header.Get("Authorization"))
		if !ok {
			// As at every door: one message for a failed sign-in.
			s.cfg.Log.WarnContext(r.Context(), "authentication failed", append([]any{"method", r.Method, "path", r.URL.Path, "error", "no bearer token"}, auth.Origin(r)...)...)
			w.Header().Set("WWW-Authenticate", `Bearer realm="handoff"`)
			s.fail(w, http.StatusUnauthorized, "login", "missing bearer token: send Authorization: Bearer <token>")
			return
		}
		p, err := s.cfg.Verifier.Verify(r.Context(), token)
		if cause := auth.KeysUnavailableCause(err); cause != nil {
			// The identity provider is out of reach, not the token at
			// fault: the client may retry, and the operator must hear of it.
			s.cfg.Log.ErrorContext(r.Context(), "signing keys unavailable", "method", r.Method, "path", r.URL.Path, "error", cause.Error())
			w.Header().Set("Retry-After", retryAfter)
			s.fail(w, http.StatusServiceUnavailable, "transient", "the token cannot be checked now: retry")
			return
		}
		if err != nil {
			// Why exactly is for the operator, with where it came from: a
			// run of these is someone trying tokens.
			s.cfg.Log.WarnContext(r.Context(), "authentication failed", append([]any{"method", r.Method, "path", r.URL.Path, "error", err.Error()}, auth.Origin(r)...)...)
			w.Header().Set("WWW-Authenticate", `Bearer realm="handoff", error="invalid_token"`)
			s.fail(w, http.StatusUnauthorized, "login", "invalid bearer token")
			return
		}
		// FHIR ids are ids within one clinic: a token for every clinic
		// (a service identity), or in a service role, has no place here.
		if p.Clinic == "" || p.Clinic == auth.AnyClinic || p.Internal() {
			s.cfg.Log.WarnContext(r.Context(), "service token or one without a clinic refused at the FHIR interface",
				append([]any{"subject", p.Subject, "method", r.Method, "path", r.URL.Path}, auth.Origin(r)...)...)
			s.fail(w, http.StatusForbidden, "forbidden", "the FHIR interface needs a token for one clinic")
			return
		}
		// The principal too: the services check and record what the caller
		// receives as disclosed to it.
		ctx := auth.WithToken(auth.WithPrincipal(r.Context(), p), token)
		next(ctx, w, r, caller{clinic: p.Clinic, base: s.baseURL(r)})
	}
}

func (s *server) baseURL(r *http.Request) string {
	if s.cfg.BaseURL != "" {
		base := strings.TrimSuffix(s.cfg.BaseURL, "/")
		if !strings.HasSuffix(base, Prefix) {
			base += Prefix
		}
		return base
	}
	scheme := "http"
	if r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https") {
		scheme = "https"
	}
	return scheme + "://" + r.Host + Prefix
}

// unsupported answers paths and methods this server does not serve.
func (s *server) unsupported(w http.ResponseWriter, r *http.Request) {
	rest := strings.Trim(strings.TrimPrefix(r.URL.Path, Prefix), "/")
	parts := strings.Split(rest, "/")
	if rest != "" && strings.HasSuffix(r.URL.Path, "/") {
		// Patient/ is no interaction, whatever the method: trimmed, it would
		// be answered as Patient, with GET refused as if it were not served.
		s.fail(w, http.StatusNotFound, "not-supported", fmt.Sprintf("no FHIR interaction at %s: leave out the trailing slash", r.URL.Path))
		return
	}
	if rest == "metadata" {
		w.Header().Set("Allow", "GET, HEAD")
		s.fail(w, http.StatusMethodNotAllowed, "not-supported", fmt.Sprintf("%s is not supported on %s", r.Method, r.URL.Path))
		return
	}
	if rest != "" && len(parts) <= 2 && resourceTypes[parts[0]] {
		w.Header().Set("Allow", allowed(parts))
		s.fail(w, http.StatusMethodNotAllowed, "not-supported",
			fmt.Sprintf("%s is not supported on %s", r.Method, r.URL.Path))
		return
	}
	s.fail(w, http.StatusNotFound, "not-supported", fmt.Sprintf("no FHIR interaction at %s", r.URL.Path))
}

func allowed(parts []string) string {
	if len(parts) == 2 && parts[1] == "_search" {
		return "POST"
	}
	if len(parts) == 2 && parts[0] == "Task" {
		return "GET, PUT"
	}
	return "GET"
}

// writeResource validates res as FHIR R4 and writes it.
func (s *server) writeResource(w http.ResponseWriter, code int, res obj) {
	b, err := s.render(res)
	if err != nil {
		// The message names paths and rules, never values.
		s.cfg.Log.Error("fhir: an answer failed R4 validation", "resource_type", res["resourceType"], "error", err)
		// The headers set for the record would tell the client of a
		// version its failed request did not show it.
		for _, h := range []string{"ETag", "Last-Modified", "Location", "Content-Location", "Preference-Applied"} {
			w.Header().Del(h)
		}
		s.writeRaw(w, http.StatusInternalServerError, internalOutcome)
		return
	}
	s.writeRaw(w, code, b)
}

// render turns res into validated FHIR JSON.
func (s *server) render(res obj) ([]byte, error) {
	raw, err := json.Marshal(res)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	if raw, err = scrubControls(raw); err != nil {
		return nil, err
	}
	pb, err := s.parse(raw)
	if err != nil {
		return nil, err
	}
	b, err := s.out.Marshal(pb)
	if err != nil {
		return nil, fmt.Errorf("marshal: %w", err)
	}
	return b, nil
}

// refusedControl matches, in encoding/json's output, the escape of a
// control character FHIR's string type refuses (all but tab, line feed and
// carriage return). A backslash escaped before it only costs the slow path.
var refusedControl = regexp.MustCompile(`\\(u00[01][0-9a-f]|[bf])`)

// scrubControls turns into spaces the control characters FHIR's string type
// refuses. The services store them (NUL aside), and kept, they would fail
// the answer's validation, and with it every read and every search page
// that carries the record; a reason in a referral's history cannot be
// edited.
func scrubControls(raw []byte) ([]byte, error) {
	if !refusedControl.Match(raw) {
		return raw, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("scrub: %w", err)
	}
	b, err := json.Marshal(scrubbed(v))
	if err != nil {
		return nil, fmt.Errorf("scrub: %w", err)
	}
	return b, nil
}

// scrubText is text with each control character FHIR's string type
// refuses as a space.
func scrubText(text string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 && r != '\t' && r != '\n' && r != '\r' {
			return ' '
		}
		return r
	}, text)
}

func scrubbed(v any) any {
	switch v := v.(type) {
	case string:
		return scrubText(v)
	case []any:
		for i := range v {
			v[i] = scrubbed(v[i])
		}
	case map[string]any:
		for k, e := range v {
			v[k] = scrubbed(e)
		}
	}
	return v
}

// parse is the validating R4 parser; it returns a ContainedResource.
func (s *server) parse(raw []byte) (proto.Message, error) {
	pb, err := s.in.Unmarshal(raw)
	if err != nil {
		return nil, fmt.Errorf("invalid FHIR R4: %w", err)
	}
	return pb, nil
}

func (s *server) writeRaw(w http.ResponseWriter, code int, b []byte) {
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

// fail writes an OperationOutcome with one error issue.
func (s *server) fail(w http.ResponseWriter, code int, issueCode, msg string) {
	s.writeResource(w, code, outcome("error", issueCode, msg))
}

func outcome(severity, code, msg string) obj {
	return obj{
		"resourceType": "OperationOutcome",
		"issue":        []any{obj{"severity": severity, "code": code, "diagnostics": msg}},
	}
}

// internalOutcome is written when an answer cannot be rendered; it is fixed
// so that writing it cannot fail in turn.
var internalOutcome = []byte(`{"resourceType":"OperationOutcome","issue":[{"severity":"fatal","code":"exception","diagnostics":"internal error"}]}`)
