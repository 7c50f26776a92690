package aip

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
)

func TestApplyMask(t *testing.T) {
	allowed := []string{"kind", "notes"}
	src := &familiesv1.Barrier{Name: "clinics/north/families/f1/barriers/b9", Notes: "new", Etag: "v3"}
	for _, c := range []struct {
		name      string
		paths     []string
		wantNotes string
		wantErr   string
	}{
		{"a field", []string{"notes"}, "new", ""},
		// A REST PATCH without updateMask: the mask is the body's fields.
		{"with the etag and name of the body", []string{"name", "notes", "etag"}, "new", ""},
		{"only the etag", []string{"etag"}, "old", "at least one field"},
		// Set by the server: passed over (AIP-203), as in a resource read
		// and sent back whole.
		{"an output-only field", []string{"notes", "create_time"}, "new", ""},
		{"an unknown field", []string{"colour"}, "", `"colour" cannot be updated`},
		{"every field", []string{"*"}, "new", ""},
		// "*" does not swallow what stands beside it (AIP-134).
		{"every field and an unknown one", []string{"*", "colour"}, "", `"colour" cannot be updated`},
		{"every field and an output-only one", []string{"create_time", "*"}, "new", ""},
		{"every field and a typo under one", []string{"*", "notes.x"}, "", "has no sub-fields"},
	} {
		dst := &familiesv1.Barrier{Name: "clinics/north/families/f1/barriers/b1", Notes: "old", Etag: "v2"}
		err := ApplyMask(dst, src, c.paths, allowed)
		switch {
		case c.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%s: error %v, want one saying %q", c.name, err, c.wantErr)
			}
		case err != nil:
			t.Errorf("%s: %v", c.name, err)
		case dst.GetNotes() != c.wantNotes || dst.GetName() != "clinics/north/families/f1/barriers/b1" || dst.GetEtag() != "v2":
			t.Errorf("%s: got %v", c.name, dst)
		}
	}
}

// A resource read and sent back whole (a REST PATCH without updateMask,
// whose mask is every field of its body) changes what it changed and is
// not refused for what it could not: output-only fields, and those under
// one, are passed over, and an immutable field is passed over while it
// keeps its value and refused, naming it, when it is given another.
func TestApplyMaskTakesBackWhatWasRead(t *testing.T) {
	first := timestamppb.New(time.Date(2026, 11, 2, 9, 0, 0, 0, time.UTC))
	read := &familiesv1.Family{Name: "clinics/north/families/f1", Counselor: "counselor-1", FirstContactTime: first,
		CreateTime: timestamppb.Now(), LatestSafetyScreen: &familiesv1.SafetyScreen{Notes: "screened"}, Etag: "v2"}
	sent := proto.CloneOf(read)
	sent.Counselor = "counselor-2"
	paths := []string{"name", "counselor", "first_contact_time", "create_time", "latest_safety_screen.notes", "etag"}
	dst := proto.CloneOf(read)
	if err := ApplyMask(dst, sent, paths, []string{"counselor"}); err != nil || dst.GetCounselor() != "counselor-2" {
		t.Fatalf("a family read and sent back with another counselor: %v, counselor %q", err, dst.GetCounselor())
	}
	sent.FirstContactTime = timestamppb.New(first.AsTime().Add(time.Hour))
	if err := ApplyMask(proto.CloneOf(read), sent, paths, []string{"counselor"}); err == nil || !strings.Contains(err.Error(), `"first_contact_time" is immutable`) {
		t.Fatalf("an immutable field changed: %v; want it refused by name", err)
	}
	sent.FirstContactTime = nil
	if err := ApplyMask(proto.CloneOf(read), sent, paths, []string{"counselor"}); err == nil || !strings.Contains(err.Error(), `"first_contact_time" is immutable`) {
		t.Fatalf("an immutable field cleared: %v; want it refused by name", err)
	}
}

// A path under a message is checked whether or not the message is set on
// either side: a typo is refused, not passed over as a change of nothing.
func TestApplyMaskChecksPathsUnderAbsentMessages(t *testing.T) {
	allowed := []string{"coverage", "loved_one"}
	for _, c := range []struct {
		path    string
		dst     *familiesv1.Family
		wantErr string
	}{
		{"coverage.kindd", &familiesv1.Family{}, "no such field"},
		{"coverage.kindd", &familiesv1.Family{Coverage: &familiesv1.Coverage{Payer: "Acme"}}, "no such field"},
		{"coverage.payer.x", &familiesv1.Family{}, "has no sub-fields"},
		{"coverage.payer", &familiesv1.Family{}, ""},
		{"loved_one.time_zone", &familiesv1.Family{}, ""},
	} {
		err := ApplyMask(c.dst, &familiesv1.Family{}, []string{c.path}, allowed)
		if c.wantErr == "" && err != nil || c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
			t.Errorf("%s on %v: error %v; want %q", c.path, c.dst, err, c.wantErr)
		}
	}
}

// A timestamp is one value: a mask may name it, not the seconds or nanos
// inside it.
func TestApplyMaskTakesTimestampsWhole(t *testing.T) {
	allowed := []string{"create_time"}
	for path, wantErr := range map[string]string{"create_time": "", "create_time.seconds": "has no sub-fields", "create_time.nanos": "has no sub-fields"} {
		err := ApplyMask(&familiesv1.Barrier{}, &familiesv1.Barrier{}, []string{path}, allowed)
		if wantErr == "" && err != nil || wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)) {
			t.Errorf("%s: error %v; want %q", path, err, wantErr)
		}
	}
}

// StringField reads a singular string field by name, and nothing else: a
// nil or typed-nil message, a missing field, a repeated one and a message
// field all read as "".
func TestStringField(t *testing.T) {
	var none *familiesv1.Family
	for _, c := range []struct {
		m     proto.Message
		field protoreflect.Name
		want  string
	}{
		{&familiesv1.Family{Name: "clinics/north/families/f1"}, "name", "clinics/north/families/f1"},
		{&familiesv1.CreateFamilyRequest{Parent: "clinics/north", RequestId: "r1"}, "request_id", "r1"},
		{&familiesv1.Family{}, "no_such_field", ""},
		{&familiesv1.Family{Members: []*familiesv1.Member{{Id: "mom"}}}, "members", ""},
		{&familiesv1.Consent{Recipients: []string{"ehr-1"}}, "recipients", ""},
		{none, "name", ""},
		{nil, "name", ""},
	} {
		if got := StringField(c.m, c.field); got != c.want {
			t.Errorf("%T.%s: %q, want %q", c.m, c.field, got, c.want)
		}
	}
}
