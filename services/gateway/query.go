package gateway

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/grpc-ecosystem/grpc-gateway/v2/utilities"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// strictQuery parses query parameters as grpc-gateway does, but refuses a
// name that is no field of the request: the default parser drops it, so
// `?filtr=...` or `?page_szie=5` answered with an unfiltered list as if
// nothing were wrong.
type strictQuery struct{ runtime.DefaultQueryParser }

func (q *strictQuery) Parse(msg proto.Message, values url.Values, filter *utilities.DoubleArray) error {
	for key := range values {
		// A map entry is written name[key]=value.
		name, _, _ := strings.Cut(key, "[")
		if !isField(msg.ProtoReflect().Descriptor(), strings.Split(name, ".")) {
			return fmt.Errorf("unknown query parameter %q", key)
		}
	}
	return q.DefaultQueryParser.Parse(msg, values, filter)
}

// isField reports whether path names a field of md, by proto or JSON name,
// through singular messages.
func isField(md protoreflect.MessageDescriptor, path []string) bool {
	for i, part := range path {
		fd := md.Fields().ByTextName(part)
		if fd == nil {
			fd = md.Fields().ByJSONName(part)
		}
		if fd == nil {
			return false
		}
		if i == len(path)-1 {
			return true
		}
		if fd.Message() == nil || fd.IsList() || fd.IsMap() {
			return false
		}
		md = fd.Message()
	}
	return false
}
