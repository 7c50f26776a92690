package gateway

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/grpc-ecosystem/grpc-gateway/v2/utilities"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// strictQuery parses query parameters as grpc-gateway does, but refuses a
// name that is no field of the request: the default parser drops it, so
// `?filtr=...` or `?page_szie=5` answered with an unfiltered list as if
// nothing were wrong.
type strictQuery struct{ runtime.DefaultQueryParser }

func (q *strictQuery) Parse(msg proto.Message, values url.Values, filter *utilities.DoubleArray) error {
	md := msg.ProtoReflect().Descriptor()
	named := map[string]string{} // a field's proto path: the key that gave it
	values = maps.Clone(values)
	for _, key := range slices.Sorted(maps.Keys(values)) {
		// A map entry is written name[key]=value.
		name, entry, _ := strings.Cut(key, "[")
		path, ok := fieldPath(md, strings.Split(name, "."))
		if !ok {
			return fmt.Errorf("unknown query parameter %q", key)
		}
		// A field the path or the body sets: the default parser skips it
		// (the filter holds proto names; the key may use JSON ones).
		if filter != nil && filter.HasCommonPrefix(path) {
			return fmt.Errorf("unknown query parameter %q: the path or the body gives it", key)
		}
		// One field in both spellings (`request_id` and `requestId`): the
		// default parser would take whichever it met last, in the map's
		// random order, a request id or update mask among them.
		field := strings.Join(path, ".") + "[" + entry
		if other, ok := named[field]; ok {
			return fmt.Errorf("query parameters %q and %q name the same field: send one", other, key)
		}
		// Nor one field and a part of it (`updateMask` and
		// `updateMask.paths`): the parser would set the one and add to,
		// or replace, the other, in the map's order.
		for f, other := range named {
			a, b := strings.TrimSuffix(f, "["), strings.TrimSuffix(field, "[")
			if strings.HasPrefix(a, b+".") || strings.HasPrefix(b, a+".") {
				return fmt.Errorf("query parameters %q and %q name the same field: send one", other, key)
			}
		}
		named[field] = key
		if len(path) == 1 || len(path) == 2 && path[1] == "paths" {
			if fd := md.Fields().ByName(protoreflect.Name(path[0])); fd.Message() != nil && fd.Message().FullName() == "google.protobuf.FieldMask" {
				values[key] = maskPaths(md, fd, values[key])
			}
		}
	}
	return q.DefaultQueryParser.Parse(msg, values, filter)
}

// maskPaths gives the paths of a field mask sent as a query parameter in
// proto names. The REST API names fields in lowerCamelCase, as a field
// mask's JSON form does (`updateMask=lovedOne.timeZone`); the default
// parser takes the text as it comes, and the services compare proto names,
// so any field of two words was refused as unknown. The paths are of the
// request's resource, its one other message field (AIP-134); a part that
// names no field stays as it is, for the service to refuse.
func maskPaths(req protoreflect.MessageDescriptor, mask protoreflect.FieldDescriptor, values []string) []string {
	var resource protoreflect.MessageDescriptor
	fields := req.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if fd == mask || fd.Message() == nil || fd.IsList() || fd.IsMap() {
			continue
		}
		if resource != nil {
			return values // more than one: which the mask is of is unclear
		}
		resource = fd.Message()
	}
	if resource == nil {
		return values
	}
	out := make([]string, len(values))
	for i, v := range values {
		paths := strings.Split(v, ",")
		for j, p := range paths {
			parts := strings.Split(p, ".")
			md := resource
			for k, part := range parts {
				if md == nil {
					break
				}
				fd := md.Fields().ByTextName(part)
				if fd == nil {
					fd = md.Fields().ByJSONName(part)
				}
				if fd == nil {
					break
				}
				parts[k], md = string(fd.Name()), nil
				if fd.Message() != nil && !fd.IsList() && !fd.IsMap() {
					md = fd.Message()
				}
			}
			paths[j] = strings.Join(parts, ".")
		}
		out[i] = strings.Join(paths, ",")
	}
	return out
}

// fieldPath returns, in proto names, the field of md that path names by
// proto or JSON names, through singular messages; ok is false if it names
// none.
func fieldPath(md protoreflect.MessageDescriptor, path []string) (names []string, ok bool) {
	for i, part := range path {
		fd := md.Fields().ByTextName(part)
		if fd == nil {
			fd = md.Fields().ByJSONName(part)
		}
		if fd == nil {
			return nil, false
		}
		names = append(names, string(fd.Name()))
		if i == len(path)-1 {
			return names, true
		}
		if fd.Message() == nil || fd.IsList() || fd.IsMap() {
			return nil, false
		}
		md = fd.Message()
	}
	return nil, false
}

// bodyOnlyRoutes are the routes whose request is all path and body
// (`body: "*"`), as "VERB /path/template": grpc-gateway reads no query
// parameter for them, so any one sent would be silently dropped (an etag
// or request id meant as a guard, ignored). They are read from the
// services' HTTP annotations.
func bodyOnlyRoutes(files ...protoreflect.FileDescriptor) map[string]bool {
	return routesWithBody("*", files)
}

// noBodyRoutes are the routes that take no body (no `body` in their
// binding: the reads, the deletes), as "VERB /path/template": grpc-gateway
// never reads a body sent to them, so an etag or request id put there
// would guard nothing, and a filter would go unapplied.
func noBodyRoutes(files ...protoreflect.FileDescriptor) map[string]bool {
	return routesWithBody("", files)
}

// routesWithBody are the routes whose binding names body as its body
// ("*", all of the request; "", none), as "VERB /path/template".
func routesWithBody(body string, files []protoreflect.FileDescriptor) map[string]bool {
	out := map[string]bool{}
	eachBinding(files, func(_ string, r *annotations.HttpRule) {
		if r.GetBody() == body {
			verb, path := httpRule(r)
			out[verb+" "+canonicalPath(path)] = true
		}
	})
	return out
}

// readMethods are the gRPC methods (full names) bound to GET: reads, which
// have no version to check against an If-Match.
func readMethods(files ...protoreflect.FileDescriptor) map[string]bool {
	out := map[string]bool{}
	eachBinding(files, func(method string, r *annotations.HttpRule) {
		if r.GetGet() != "" {
			out[method] = true
		}
	})
	return out
}

// eachBinding calls fn with every HTTP binding of the files' methods (the
// rule and its additional bindings) and the method's full gRPC name,
// "/package.Service/Method".
func eachBinding(files []protoreflect.FileDescriptor, fn func(method string, r *annotations.HttpRule)) {
	for _, f := range files {
		svcs := f.Services()
		for i := 0; i < svcs.Len(); i++ {
			methods := svcs.Get(i).Methods()
			for j := 0; j < methods.Len(); j++ {
				m := methods.Get(j)
				rule, ok := proto.GetExtension(m.Options(), annotations.E_Http).(*annotations.HttpRule)
				if !ok || rule == nil {
					continue
				}
				name := fmt.Sprintf("/%s/%s", svcs.Get(i).FullName(), m.Name())
				for _, r := range append([]*annotations.HttpRule{rule}, rule.GetAdditionalBindings()...) {
					fn(name, r)
				}
			}
		}
	}
}

// httpRule is a rule's HTTP method and path template.
func httpRule(r *annotations.HttpRule) (string, string) {
	switch p := r.GetPattern().(type) {
	case *annotations.HttpRule_Get:
		return "GET", p.Get
	case *annotations.HttpRule_Post:
		return "POST", p.Post
	case *annotations.HttpRule_Put:
		return "PUT", p.Put
	case *annotations.HttpRule_Patch:
		return "PATCH", p.Patch
	case *annotations.HttpRule_Delete:
		return "DELETE", p.Delete
	case *annotations.HttpRule_Custom:
		return p.Custom.GetKind(), p.Custom.GetPath()
	}
	return "", ""
}

// canonicalPath writes a template as grpc-gateway's Pattern.String does:
// a bare variable `{name}` is `{name=*}`.
func canonicalPath(path string) string {
	var b strings.Builder
	for {
		i := strings.Index(path, "{")
		if i < 0 {
			b.WriteString(path)
			return b.String()
		}
		j := strings.Index(path[i:], "}")
		if j < 0 {
			b.WriteString(path)
			return b.String()
		}
		v := path[i+1 : i+j]
		if !strings.Contains(v, "=") {
			v += "=*"
		}
		b.WriteString(path[:i] + "{" + v + "}")
		path = path[i+j+1:]
	}
}

// refuseQueryOnBodyRoutes is a middleware that answers INVALID_ARGUMENT to
// a query parameter sent to a route in routes (see bodyOnlyRoutes).
func refuseQueryOnBodyRoutes(routes map[string]bool) runtime.Middleware {
	return func(next runtime.HandlerFunc) runtime.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request, params map[string]string) {
			if r.URL.RawQuery != "" {
				if pat, ok := runtime.HTTPPattern(r.Context()); ok && routes[r.Method+" "+pat.String()] {
					name := ""
					for k := range r.URL.Query() {
						if name == "" || k < name {
							name = k
						}
					}
					writeStatus(w, http.StatusBadRequest, codes.InvalidArgument,
						fmt.Sprintf("unknown query parameter %q: this call takes everything in its body", name))
					return
				}
			}
			next(w, r, params)
		}
	}
}

// refuseBodyOnNoBodyRoutes is a middleware that answers INVALID_ARGUMENT
// to a body sent to a route in routes (see noBodyRoutes). A body that
// says nothing (empty, blank, `{}` or `null`, as some clients send with
// every call) passes. The body is read whole: limitBody has bounded it.
func refuseBodyOnNoBodyRoutes(routes map[string]bool) runtime.Middleware {
	return func(next runtime.HandlerFunc) runtime.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request, params map[string]string) {
			if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
				next(w, r, params)
				return
			}
			if pat, ok := runtime.HTTPPattern(r.Context()); !ok || !routes[r.Method+" "+pat.String()] {
				next(w, r, params)
				return
			}
			b, err := io.ReadAll(r.Body)
			if err != nil {
				var tooLarge *http.MaxBytesError
				if errors.As(err, &tooLarge) {
					writeStatus(w, http.StatusRequestEntityTooLarge, codes.InvalidArgument, "the request body is too large")
					return
				}
				writeStatus(w, http.StatusBadRequest, codes.InvalidArgument, "the request body could not be read")
				return
			}
			switch strings.TrimSpace(string(b)) {
			case "", "{}", "null":
			default:
				writeStatus(w, http.StatusBadRequest, codes.InvalidArgument, fmt.Sprintf("%s %s takes no body: it would be dropped; "+
					"send an etag as If-Match or ?etag=, a request id as Idempotency-Key or ?requestId=, and the rest as query parameters",
					r.Method, r.URL.Path))
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(b))
			next(w, r, params)
		}
	}
}

// route is one HTTP binding: its verb and its path template.
type route struct{ verb, template string }

// routes are every binding of the files' methods.
func routes(files ...protoreflect.FileDescriptor) []route {
	var out []route
	eachBinding(files, func(_ string, r *annotations.HttpRule) {
		if verb, path := httpRule(r); verb != "" {
			out = append(out, route{verb, path})
		}
	})
	return out
}

// allowed lists, as an Allow header does, the verbs whose templates match
// path: what a client that sent another verb may send instead.
func allowed(rs []route, path string) string {
	var verbs []string
	for _, r := range rs {
		if matchTemplate(r.template, path) && !slices.Contains(verbs, r.verb) {
			verbs = append(verbs, r.verb)
		}
	}
	slices.Sort(verbs)
	return strings.Join(verbs, ", ")
}

// matchTemplate reports whether path matches an HTTP rule's template
// (google.api.http syntax: literal segments, `*` one segment, `**` the
// rest, `{name}` or `{name=pattern}` variables, an optional `:verb`).
func matchTemplate(template, path string) bool {
	tmpl, tverb := splitVerb(template)
	p, pverb := path, ""
	if tverb != "" {
		// Only a template with a verb splits one off: grpc-gateway reads
		// "f1:nothing" on a template without one as the segment it is.
		p, pverb = splitVerb(path)
	}
	if tverb != pverb {
		return false
	}
	var want []string
	for _, seg := range strings.Split(strings.Trim(canonicalPath(tmpl), "/"), "/") {
		// A variable's pattern may span segments: "{name=clinics/*}".
		seg = strings.TrimPrefix(seg, "{")
		if i := strings.Index(seg, "="); i >= 0 {
			seg = seg[i+1:]
		}
		want = append(want, strings.TrimSuffix(seg, "}"))
	}
	got := strings.Split(strings.Trim(p, "/"), "/")
	for i, w := range want {
		switch {
		case w == "**":
			return true
		case i >= len(got):
			return false
		case w != "*" && w != got[i]:
			return false
		}
	}
	return len(got) == len(want)
}

// splitVerb splits a custom verb (":batchCreate") off the last segment.
func splitVerb(path string) (string, string) {
	last := path[strings.LastIndex(path, "/")+1:]
	if i := strings.LastIndex(last, ":"); i >= 0 && !strings.Contains(last[i:], "}") {
		return path[:len(path)-len(last)+i], last[i+1:]
	}
	return path, ""
}
