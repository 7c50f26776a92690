package families

import (
	"context"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	"github.com/handoff-health/handoff/services/pgdb"
	"github.com/handoff-health/handoff/services/pgdb/pgtest"
)

// The upgrade that keeps removed members' ids finds those of members
// removed before it where their ids were kept: their own consents and the
// CRAFT sessions they took part in. A member the family still has is not
// retired.
func TestUpgradeRetiresRemovedMembersIDs(t *testing.T) {
	ctx := context.Background()
	pool, schema := pgtest.Schema(t, Migrations()[0], pgtest.Before(t, Migrations()[1], "0007_member_consents.sql"))
	for _, sql := range []string{
		`INSERT INTO families (clinic, id, doc, counselor, state, first_contact_time)
			VALUES ('north', 'f1', '{"members": [{"id": "mom", "given_name": "Ana"}]}', 'counselor-1', 1, now()),
				('north', 'f2', '{}', 'counselor-1', 1, now())`,
		`INSERT INTO consents (clinic, family_id, id, discloser, information, recipients, treating_providers, purposes,
				expire_time, signer, sign_time, recorder, member_id)
			VALUES ('north', 'f1', 'c1', 'North', '{2}', '{ehr}', false, '{1}', now() + interval '1 year', 'Al', now(), 'counselor-1', 'dad'),
				('north', 'f1', 'c2', 'North', '{2}', '{ehr}', false, '{1}', now() + interval '1 year', 'Ana', now(), 'counselor-1', 'mom'),
				('north', 'f1', 'c3', 'North', '{1}', '{ehr}', false, '{1}', now() + interval '1 year', 'Sam', now(), 'counselor-1', '')`,
		`INSERT INTO craft_sessions (clinic, family_id, id, member_ids, topics, counselor, session_time)
			VALUES ('north', 'f1', 's1', '{mom,sis}', '{1}', 'counselor-1', now()),
				('north', 'f2', 's2', '{bro}', '{1}', 'counselor-1', now())`,
	} {
		if _, err := pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	if err := pgdb.Migrate(ctx, pool, schema, Migrations()...); err != nil {
		t.Fatal(err)
	}
	retired := map[string][]string{}
	rows, err := pool.Query(ctx, `SELECT id, retired_member_ids FROM families`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		var ids []string
		if err := rows.Scan(&id, &ids); err != nil {
			t.Fatal(err)
		}
		retired[id] = ids
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(retired["f1"], []string{"dad", "sis"}) || !slices.Equal(retired["f2"], []string{"bro"}) {
		t.Fatalf("retired ids %v; want f1's dad and sis, f2's bro", retired)
	}
}

// The upgrade that has the database announce closings announces, once,
// each family closed before it, when closing stopped nothing: with a
// payload the relays decode, a name past 127 bytes included (its length
// takes two bytes). An open family is not announced.
func TestUpgradeAnnouncesFamiliesClosedBefore(t *testing.T) {
	ctx := context.Background()
	pool, schema := pgtest.Schema(t, Migrations()[0], pgtest.Before(t, Migrations()[1], "0008_retired_member_ids.sql"))
	long := strings.Repeat("f", 140)
	if _, err := pool.Exec(ctx, `INSERT INTO families (clinic, id, doc, counselor, state, first_contact_time)
		VALUES ('north', 'closed', '{}', 'counselor-1', 3, now()), ('north', $1, '{}', 'counselor-1', 3, now()),
			('north', 'open', '{}', 'counselor-1', 1, now())`, long); err != nil {
		t.Fatal(err)
	}
	if err := pgdb.Migrate(ctx, pool, schema, Migrations()...); err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(ctx, `SELECT resource, payload FROM outbox WHERE event_type = 'handoff.families.v1.family.closed' ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var announced []string
	for rows.Next() {
		var resource string
		var payload []byte
		if err := rows.Scan(&resource, &payload); err != nil {
			t.Fatal(err)
		}
		var a anypb.Any
		var fam familiesv1.Family
		if err := proto.Unmarshal(payload, &a); err != nil || a.UnmarshalTo(&fam) != nil || fam.GetName() != resource {
			t.Fatalf("payload of %s reads %v (%v); want its name", resource, &fam, err)
		}
		announced = append(announced, resource)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := []string{"clinics/north/families/closed", "clinics/north/families/" + long}
	if !slices.Equal(announced, want) {
		t.Fatalf("announced %v; want %v", announced, want)
	}
}
