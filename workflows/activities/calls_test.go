package activities

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"

	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
)

type convertRecorder struct {
	referralsv1.ReferralsServiceClient
	got *referralsv1.ConvertHoldRequest
}

func (c *convertRecorder) ConvertHold(_ context.Context, in *referralsv1.ConvertHoldRequest, _ ...grpc.CallOption) (*referralsv1.Referral, error) {
	c.got = in
	return &referralsv1.Referral{Name: "clinics/north/referrals/r1", Program: "clinics/north/programs/p1"}, nil
}

// The family's first contact goes with the referral, unless it is unknown
// or in the future (stored before such times were refused), which the
// referrals service would refuse and so leave the person who said yes
// without a referral.
func TestImmediateReferralFirstContact(t *testing.T) {
	past := time.Now().Add(-10 * 24 * time.Hour).UTC().Truncate(time.Second)
	for _, c := range []struct {
		name  string
		first time.Time
		want  *time.Time
	}{
		{"past", past, &past},
		{"future", time.Now().Add(300 * 24 * time.Hour), nil},
		{"unknown", time.Time{}, nil},
		{"the epoch of an unset timestamp", time.Unix(0, 0), nil},
	} {
		refs := &convertRecorder{}
		a := &Activities{Referrals: refs}
		if _, err := a.StartImmediateReferral(context.Background(), ImmediateRequest{Hold: "clinics/north/holds/h1",
			FirstContact: c.first, RequestID: "r"}); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got := refs.got.GetFirstContactTime()
		switch {
		case c.want == nil && got != nil:
			t.Errorf("%s: first contact %v sent, want none", c.name, got.AsTime())
		case c.want != nil && (got == nil || !got.AsTime().Equal(*c.want)):
			t.Errorf("%s: first contact %v, want %v", c.name, got, *c.want)
		}
	}
}
