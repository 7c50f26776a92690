package outbox_test

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/outbox"
)

// Every event about a family shares its lane, whichever resource it names;
// an event about no family has a lane of its own resource.
func TestByFamily(t *testing.T) {
	const fam = "clinics/north/families/f1"
	stored := func(resource string, payload proto.Message) outbox.Stored {
		a, err := anypb.New(payload)
		if err != nil {
			t.Fatal(err)
		}
		return outbox.Stored{Resource: resource, Payload: a}
	}
	cases := []struct {
		name string
		e    outbox.Stored
		want string
	}{
		{"the family", stored(fam, wrapperspb.String("x")), fam},
		{"a sub-resource", stored(fam+"/consents/c1", wrapperspb.String("x")), fam},
		{"an intervention names its family", stored("clinics/north/interventions/i1",
			&interventionsv1.Intervention{Name: "clinics/north/interventions/i1", Family: fam}), fam},
		{"a referral names its family", stored("clinics/north/referrals/r1",
			&referralsv1.Referral{Name: "clinics/north/referrals/r1", Family: fam}), fam},
		{"a member's reminder", stored("clinics/north/reminders/m1",
			&interventionsv1.Reminder{Name: "clinics/north/reminders/m1", Recipient: &interventionsv1.Recipient{Family: fam}}), fam},
		{"a reminder about the family", stored("clinics/north/reminders/m2",
			&interventionsv1.Reminder{Name: "clinics/north/reminders/m2", RelatedResource: fam + "/warningSigns/w1"}), fam},
		{"a counselor's reminder about an intervention", stored("clinics/north/reminders/m3",
			&interventionsv1.Reminder{Name: "clinics/north/reminders/m3", RelatedResource: "clinics/north/interventions/i1"}),
			"clinics/north/reminders/m3"},
		{"a program", stored("clinics/north/programs/p1", &referralsv1.Program{Name: "clinics/north/programs/p1"}), "clinics/north/programs/p1"},
		{"a look-alike that is no family", stored("clinics/north/familiesx/f1/a", wrapperspb.String("x")), "clinics/north/familiesx/f1/a"},
		{"an undecodable payload", outbox.Stored{Resource: "clinics/north/referrals/r9", Payload: &anypb.Any{TypeUrl: "type.googleapis.com/nope.Nope"}},
			"clinics/north/referrals/r9"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := outbox.ByFamily(c.e); got != c.want {
				t.Fatalf("lane %q, want %q", got, c.want)
			}
		})
	}
}
