package outbox

import (
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	"github.com/handoff-health/handoff/services/aip"
)

// Family returns the family whose records an event is about: the resource
// itself or the family it sits under; for a reminder, the family of its
// recipient when it has one; else the payload's `family`, else the family
// its `related_resource` names; "" if none. msg is the decoded payload and
// may be nil.
func Family(resource string, msg proto.Message) string {
	if f := aip.Family(resource); f != "" {
		return f
	}
	if msg == nil {
		return ""
	}
	if rem, ok := msg.(*interventionsv1.Reminder); ok {
		if f := aip.Family(rem.GetRecipient().GetFamily()); f != "" {
			return f
		}
	}
	for _, field := range []protoreflect.Name{"family", "related_resource"} {
		if f := aip.Family(aip.StringField(msg, field)); f != "" {
			return f
		}
	}
	return ""
}

// ByFamily is the lane of an event for Relay.Lane: the family it is about,
// or, for an event about no family (a program's capacity, a counselor's
// reminder), its own resource. A family's workflows (its interventions',
// their intakes' and its boundary workflow) are started, updated and
// signalled from events about the family, so they keep their order, and a
// webhook resource's deliveries keep theirs. The one exception: a
// counselor's reminder that failed signals the workflow that created it
// from a lane of its own, so the signal may pass that workflow's updates;
// the workflow checks whether a resend is stale when it comes to send it.
func ByFamily(e Stored) string {
	var msg proto.Message
	if e.DecodeErr == nil {
		msg, _ = e.Message() // an unknown type still has its resource
	}
	if f := Family(e.Resource, msg); f != "" {
		return f
	}
	return e.Resource
}
