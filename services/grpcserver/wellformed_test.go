package grpcserver

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	"github.com/handoff-health/handoff/services/apperr"
)

func TestWellFormed(t *testing.T) {
	fields := func(vs []string) string { return strings.Join(vs, ",") }
	for _, c := range []struct {
		name string
		got  func() []string
		want string
	}{
		{"sound", func() []string {
			return paths(wellFormed((&familiesv1.CreateWarningSignRequest{Parent: "clinics/north/families/f1",
				WarningSign: &familiesv1.WarningSign{OccurTime: timestamppb.Now(), Notes: "ok"}}).ProtoReflect()))
		}, ""},
		{"a time before the year 1", func() []string {
			return paths(wellFormed((&familiesv1.CreateWarningSignRequest{
				WarningSign: &familiesv1.WarningSign{OccurTime: &timestamppb.Timestamp{Seconds: -1e11}}}).ProtoReflect()))
		}, "warning_sign.occur_time"},
		{"nanos out of range", func() []string {
			return paths(wellFormed((&familiesv1.CreateWarningSignRequest{
				WarningSign: &familiesv1.WarningSign{OccurTime: &timestamppb.Timestamp{Nanos: 2e9}}}).ProtoReflect()))
		}, "warning_sign.occur_time"},
		{"a duration too long", func() []string {
			return paths(wellFormed((&interventionsv1.Intervention{ExpectedDuration: &durationpb.Duration{Seconds: 1e12}}).ProtoReflect()))
		}, "expected_duration"},
		{"NUL in nested and repeated text", func() []string {
			return paths(wellFormed((&familiesv1.Family{LovedOne: &familiesv1.LovedOne{GivenName: "Sa\x00m"},
				Members: []*familiesv1.Member{{GivenName: "Ana"}, {GivenName: "Jo\x00"}}}).ProtoReflect()))
		}, "loved_one.given_name,members[1].given_name"},
	} {
		if got := fields(c.got()); got != c.want {
			t.Errorf("%s: violations on %q, want %q", c.name, got, c.want)
		}
	}
}

func paths(vs apperr.Violations) []string {
	var out []string
	for _, v := range vs {
		out = append(out, v.Field)
	}
	return out
}

// A request that names two clinics is scoped to the one in its first field,
// every time, and its record names the resource in its first field.
func TestRequestScopeFollowsFieldOrder(t *testing.T) {
	req := &familiesv1.CreateSafetyScreenRequest{Parent: "clinics/north/families/f1",
		SafetyScreen: &familiesv1.SafetyScreen{Name: "clinics/south/families/f2/safetyScreens/s1"}}
	for range 50 {
		if c := requestClinic(req); c != "north" {
			t.Fatalf("clinic = %q; want north, from parent (field 1)", c)
		}
		if r := requestResource(req); r != "clinics/north/families/f1" {
			t.Fatalf("resource = %q; want the parent", r)
		}
	}
	// Violations come in field order too: nested first where it is declared first.
	got := paths(wellFormed((&familiesv1.Family{Members: []*familiesv1.Member{{GivenName: "\x00"}},
		LovedOne: &familiesv1.LovedOne{GivenName: "\x00"}, Counselor: "\x00"}).ProtoReflect()))
	for range 50 {
		again := paths(wellFormed((&familiesv1.Family{Members: []*familiesv1.Member{{GivenName: "\x00"}},
			LovedOne: &familiesv1.LovedOne{GivenName: "\x00"}, Counselor: "\x00"}).ProtoReflect()))
		if strings.Join(again, ",") != strings.Join(got, ",") {
			t.Fatalf("violations %v, then %v", got, again)
		}
	}
}
