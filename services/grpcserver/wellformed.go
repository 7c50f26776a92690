package grpcserver

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/handoff-health/handoff/services/apperr"
)

// wellFormed finds what protovalidate leaves to rules nobody writes on every
// field, but PostgreSQL or JSON cannot hold: a Timestamp or Duration out of
// its defined range (stored, it would break every JSON answer that carries
// it) and text with a NUL character (PostgreSQL refuses it, and the answer
// would not say which field). Paths are written as protovalidate writes
// them.
func wellFormed(m protoreflect.Message) apperr.Violations {
	var vs apperr.Violations
	walk(m, "", &vs)
	return vs
}

func walk(m protoreflect.Message, path string, vs *apperr.Violations) {
	switch m.Descriptor().FullName() {
	case "google.protobuf.Timestamp":
		fs := m.Descriptor().Fields()
		ts := &timestamppb.Timestamp{Seconds: m.Get(fs.ByNumber(1)).Int(), Nanos: int32(m.Get(fs.ByNumber(2)).Int())}
		if ts.CheckValid() != nil {
			vs.Add(path, "must be a valid time between the years 1 and 9999")
		}
		return
	case "google.protobuf.Duration":
		fs := m.Descriptor().Fields()
		d := &durationpb.Duration{Seconds: m.Get(fs.ByNumber(1)).Int(), Nanos: int32(m.Get(fs.ByNumber(2)).Int())}
		if d.CheckValid() != nil {
			vs.Add(path, "must be a valid duration of at most 10,000 years")
		}
		return
	}
	// Fields in declaration order and map entries by key, not Range's
	// order, which protobuf leaves undefined: the same bad request gets
	// its violations in the same order every time.
	populated(m, func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := string(fd.Name())
		if path != "" {
			name = path + "." + name
		}
		switch {
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				value(fd, l.Get(i), fmt.Sprintf("%s[%d]", name, i), vs)
			}
		case fd.IsMap():
			var keys []protoreflect.MapKey
			v.Map().Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
				keys = append(keys, k)
				return true
			})
			slices.SortFunc(keys, func(a, b protoreflect.MapKey) int { return cmp.Compare(a.String(), b.String()) })
			for _, k := range keys {
				key := fmt.Sprintf("%s[%q]", name, k.String())
				if fd.MapKey().Kind() == protoreflect.StringKind && strings.ContainsRune(k.String(), 0) {
					vs.Add(name, "must not contain NUL characters")
				}
				value(fd.MapValue(), v.Map().Get(k), key, vs)
			}
		default:
			value(fd, v, name, vs)
		}
		return true
	})
}

func value(fd protoreflect.FieldDescriptor, v protoreflect.Value, path string, vs *apperr.Violations) {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		walk(v.Message(), path, vs)
	case protoreflect.StringKind:
		if strings.ContainsRune(v.String(), 0) {
			vs.Add(path, "must not contain NUL characters")
		}
	}
}
