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
