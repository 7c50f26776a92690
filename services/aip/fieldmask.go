package aip

import (
	"fmt"
	"slices"
	"strings"

	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// ApplyMask copies the fields named by paths from src to dst. Each path must
// be one of allowed or lie under one of them (`loved_one.time_zone` under
// `loved_one`). The path "*" means every allowed field. It returns the first
// path that is not allowed or does not exist as an error naming it.
//
// "name" and "etag" are passed over: they say which resource and which
// version of it the update is for (AIP-154), never what changes, and a REST
// PATCH without updateMask has a mask made of every field in its body. So
// are, as AIP-203 asks, a path the server sets (OUTPUT_ONLY, or under
// such a field) and an IMMUTABLE one whose value in src is dst's: a
// resource read and written back as it was changes nothing, and is not
// refused. An IMMUTABLE field given another value is an error naming it.
func ApplyMask(dst, src proto.Message, paths, allowed []string) error {
	paths = slices.DeleteFunc(slices.Clone(paths), func(p string) bool { return p == "name" || p == "etag" })
	var err error
	if paths, err = settled(dst.ProtoReflect(), src.ProtoReflect(), paths, allowed); err != nil {
		return err
	}
	if len(paths) == 0 {
		return fmt.Errorf("update_mask must name at least one field")
	}
	if slices.Contains(paths, "*") {
		// "*" names every updatable field; anything beside it must still
		// be one (AIP-134), not be swallowed by it.
		for _, p := range paths {
			if p == "*" {
				continue
			}
			if !underAny(p, allowed) {
				return fmt.Errorf("field %q cannot be updated; updatable: %s", p, strings.Join(allowed, ", "))
			}
			if err := checkPath(dst.ProtoReflect().Descriptor(), strings.Split(p, ".")); err != nil {
				return fmt.Errorf("field %q: %w", p, err)
			}
		}
		paths = allowed
	}
	for _, p := range paths {
		if !underAny(p, allowed) {
			return fmt.Errorf("field %q cannot be updated; updatable: %s", p, strings.Join(allowed, ", "))
		}
		if err := copyPath(dst.ProtoReflect(), src.ProtoReflect(), strings.Split(p, ".")); err != nil {
			return fmt.Errorf("field %q: %w", p, err)
		}
	}
	return nil
}

// settled drops from paths those no update changes (see ApplyMask): of
// the fields not allowed, the output-only ones and the immutable ones
// that src leaves as dst has them.
func settled(dst, src protoreflect.Message, paths, allowed []string) ([]string, error) {
	out := paths[:0:0]
	for _, p := range paths {
		if p == "*" || underAny(p, allowed) {
			out = append(out, p)
			continue
		}
		switch behaviour(dst.Descriptor(), strings.Split(p, ".")) {
		case annotations.FieldBehavior_OUTPUT_ONLY:
			continue
		case annotations.FieldBehavior_IMMUTABLE:
			if !sameAt(dst, src, strings.Split(p, ".")) {
				return nil, fmt.Errorf("field %q is immutable: it keeps the value it was created with", p)
			}
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

// behaviour is OUTPUT_ONLY when path lies at or under an output-only
// field of md, else IMMUTABLE when it lies at or under an immutable one,
// else unspecified (as for a path naming no field).
func behaviour(md protoreflect.MessageDescriptor, path []string) annotations.FieldBehavior {
	found := annotations.FieldBehavior_FIELD_BEHAVIOR_UNSPECIFIED
	for i, name := range path {
		fd := md.Fields().ByName(protoreflect.Name(name))
		if fd == nil {
			return annotations.FieldBehavior_FIELD_BEHAVIOR_UNSPECIFIED
		}
		bs, _ := proto.GetExtension(fd.Options(), annotations.E_FieldBehavior).([]annotations.FieldBehavior)
		if slices.Contains(bs, annotations.FieldBehavior_OUTPUT_ONLY) {
			return annotations.FieldBehavior_OUTPUT_ONLY
		}
		if slices.Contains(bs, annotations.FieldBehavior_IMMUTABLE) {
			found = annotations.FieldBehavior_IMMUTABLE
		}
		if i < len(path)-1 {
			if !hasSubfields(fd) {
				return annotations.FieldBehavior_FIELD_BEHAVIOR_UNSPECIFIED
			}
			md = fd.Message()
		}
	}
	return found
}

// sameAt reports whether a and b hold the same value at path (both unset
// counting as the same).
func sameAt(a, b protoreflect.Message, path []string) bool {
	fd := a.Descriptor().Fields().ByName(protoreflect.Name(path[0]))
	if len(path) == 1 {
		if a.Has(fd) != b.Has(fd) {
			return false
		}
		return !a.Has(fd) || a.Get(fd).Equal(b.Get(fd))
	}
	return sameAt(a.Get(fd).Message(), b.Get(fd).Message(), path[1:])
}

func underAny(p string, allowed []string) bool {
	for _, a := range allowed {
		if p == a || strings.HasPrefix(p, a+".") {
			return true
		}
	}
	return false
}

func copyPath(dst, src protoreflect.Message, path []string) error {
	fd := dst.Descriptor().Fields().ByName(protoreflect.Name(path[0]))
	if fd == nil {
		return fmt.Errorf("no such field")
	}
	if len(path) == 1 {
		if src.Has(fd) {
			dst.Set(fd, src.Get(fd))
		} else {
			dst.Clear(fd)
		}
		return nil
	}
	if !hasSubfields(fd) {
		return fmt.Errorf("%s has no sub-fields", fd.Name())
	}
	if !src.Has(fd) {
		// Copying from an absent message clears the sub-field.
		if dst.Has(fd) {
			return copyPath(dst.Mutable(fd).Message(), src.Get(fd).Message().Type().New(), path[1:])
		}
		// Nothing to change, but the rest of the path must still name a
		// field: a typo is refused whether or not the message is set.
		return checkPath(fd.Message(), path[1:])
	}
	return copyPath(dst.Mutable(fd).Message(), src.Get(fd).Message(), path[1:])
}

// checkPath reports whether path names a field under md, as copyPath would.
func checkPath(md protoreflect.MessageDescriptor, path []string) error {
	fd := md.Fields().ByName(protoreflect.Name(path[0]))
	if fd == nil {
		return fmt.Errorf("no such field")
	}
	if len(path) == 1 {
		return nil
	}
	if !hasSubfields(fd) {
		return fmt.Errorf("%s has no sub-fields", fd.Name())
	}
	return checkPath(fd.Message(), path[1:])
}

// hasSubfields reports whether a mask may name fields under fd. A
// timestamp or duration is one value: `start_time.nanos` would move a
// meeting by less than a second and leave the rest of it as it was.
func hasSubfields(fd protoreflect.FieldDescriptor) bool {
	return fd.Message() != nil && !fd.IsList() && !fd.IsMap() &&
		!strings.HasPrefix(string(fd.Message().FullName()), "google.protobuf.")
}

// StringField is m's singular string field name, or "" when m is nil or
// has no such field: the request ids, resource names and parents that the
// interceptor, the audit trail and the idempotency keys read off any
// request or answer.
func StringField(m proto.Message, name protoreflect.Name) string {
	if m == nil {
		return ""
	}
	r := m.ProtoReflect()
	if !r.IsValid() {
		return ""
	}
	fd := r.Descriptor().Fields().ByName(name)
	if fd == nil || fd.Kind() != protoreflect.StringKind || fd.IsList() {
		return ""
	}
	return r.Get(fd).String()
}
