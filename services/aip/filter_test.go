package aip

import (
	"reflect"
	"testing"
	"time"
)

var testFields = map[string]FilterField{
	"state":   {Column: "state", Kind: Enum, Enum: EnumLookup(map[string]int32{"S_UNSPECIFIED": 0, "S_ACTIVE": 1, "S_CLOSED": 2}, "S_")},
	"owner":   {Column: "owner", Kind: String},
	"urgent":  {Column: "urgent", Kind: Bool},
	"start":   {Column: "start_time", Kind: Time},
	"service": {Column: "services", Kind: EnumIn, Enum: EnumLookup(map[string]int32{"K_A": 1}, "K_")},
	"phase": {Column: "state", Kind: EnumSet, Values: func(v string) ([]int32, bool) {
		vals, ok := map[string][]int32{"open": {1, 3}, "shut": {2}, "gone": {}}[v]
		return vals, ok
	}},
	// A value derived from the stored state: ACTIVE only from stored 1.
	"seen": {Column: "(CASE WHEN state = 1 THEN 1 ELSE 2 END)", Kind: Enum,
		Enum: EnumLookup(map[string]int32{"S_UNSPECIFIED": 0, "S_ACTIVE": 1, "S_CLOSED": 2}, "S_"),
		Implies: func(v int32) string {
			if v == 1 {
				return "state = 1"
			}
			return ""
		}},
}

func TestParseFilter(t *testing.T) {
	cases := []struct {
		in   string
		sql  string
		args []any
	}{
		{"", "TRUE", nil},
		{`state = ACTIVE`, "state = $3", []any{int32(1)}},
		{`state = S_CLOSED AND owner = "u \"1\""`, "state = $3 AND owner = $4", []any{int32(2), `u "1"`}},
		{`urgent != true`, "urgent <> $3", []any{true}},
		{`start >= "2026-01-02T03:04:05Z"`, "start_time >= $3", []any{time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}},
		{`service = A`, "$3 = ANY(services)", []any{int32(1)}},
		{`service != A`, "NOT ($3 = ANY(services))", []any{int32(1)}},
		// A value standing for several of the column's, compared on the
		// column itself, so that its index serves; one standing for none
		// matches nothing.
		{`phase = "open"`, "state = ANY($3::int4[])", []any{[]int32{1, 3}}},
		{`phase != shut`, "NOT (state = ANY($3::int4[]))", []any{[]int32{2}}},
		{`phase = gone`, "state = ANY($3::int4[])", []any{[]int32{}}}, // a value standing for none
		// A derived value: = on it carries what the stored columns must
		// hold, for a partial index; != and a value implying nothing do not.
		{`seen = ACTIVE`, "(state = 1 AND (CASE WHEN state = 1 THEN 1 ELSE 2 END) = $3)", []any{int32(1)}},
		{`seen != ACTIVE`, "(CASE WHEN state = 1 THEN 1 ELSE 2 END) <> $3", []any{int32(1)}},
		{`seen = CLOSED`, "(CASE WHEN state = 1 THEN 1 ELSE 2 END) = $3", []any{int32(2)}},
		// Quoted, a keyword or an operator is a string like any other.
		{`owner = "AND" AND owner != "="`, "owner = $3 AND owner <> $4", []any{"AND", "="}},
	}
	for _, c := range cases {
		f, err := ParseFilter(c.in, testFields)
		if err != nil {
			t.Fatalf("%q: %v", c.in, err)
		}
		sql, args := f.SQL(3)
		if sql != c.sql || !reflect.DeepEqual(args, c.args) {
			t.Fatalf("%q: got %q %v, want %q %v", c.in, sql, args, c.sql, c.args)
		}
	}
	for _, bad := range []string{`name = x`, `state = NOPE`, `state = UNSPECIFIED`, `state > ACTIVE`, `urgent = maybe`,
		`state = ACTIVE OR owner = x`, `state =`, `owner = "open`, `start > yesterday`, `"state" = ACTIVE`, `owner ~ x`,
		// Operators in the wrong place, a keyword as a value, a quoted
		// operator, lower-case and, loose booleans.
		`owner = =`, `owner = <`, `= = x`, `owner = AND AND state = ACTIVE`, `owner "=" x`,
		`state = ACTIVE and owner = x`, `urgent = 1`, `urgent = T`, `urgent = TRUE`, `phase > open`,
		// A value the field does not have: refused, where it would match
		// nothing, or with != everything.
		`phase = other`, `phase != opne`} {
		if _, err := ParseFilter(bad, testFields); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
}

func TestParseName(t *testing.T) {
	ids, err := Parse("clinics/a-1/families/b2", "clinics", "families")
	if err != nil || !reflect.DeepEqual(ids, []string{"a-1", "b2"}) {
		t.Fatalf("Parse = %v, %v", ids, err)
	}
	for _, bad := range []string{"", "clinics/a", "clinics/A/families/b", "clinics/a/family/b", "clinics/a/families/b/x/y", "clinics//families/b"} {
		if _, err := Parse(bad, "clinics", "families"); err == nil {
			t.Errorf("%q: want an error", bad)
		}
	}
	if Clinic("clinics/x/referrals/y") != "x" || Clinic("families/x") != "" {
		t.Fatal("Clinic")
	}
	for name, want := range map[string]bool{
		"clinics/a/referrals/r1": true, "clinics/a/families/f/warningSigns/w1": true, "clinics/a": false,
		"clinics/a/families//f": false, "clinics/a/families/F": false, "clinics/a/x/../families/f": false,
		"clinics/a/referrals/r1/": false, "programs/p": false, "clinics/a/Families/f": false,
		"clinics/a/b/c/d/e/f/g/h/i/j/k": false,
	} {
		if ValidName(name) != want {
			t.Errorf("ValidName(%q) = %v, want %v", name, !want, want)
		}
	}
}

func TestPageToken(t *testing.T) {
	q := QueryHash("clinics/a", "state = ACTIVE")
	tok := EncodePageToken("k-1", q)
	if after, ok := DecodePageToken(tok, q); !ok || after != "k-1" {
		t.Fatalf("round trip: %q %v", after, ok)
	}
	if _, ok := DecodePageToken(tok, QueryHash("clinics/b", "state = ACTIVE")); ok {
		t.Fatal("a token must not work for another query")
	}
	if _, ok := DecodePageToken("not-base64!", q); ok {
		t.Fatal("garbage must be refused")
	}
	// Made by hand (tokens are not signed) with a key no row has.
	for _, key := range []string{"k\x00", "\x00"} {
		if _, ok := DecodePageToken(EncodePageToken(key, q), q); ok {
			t.Errorf("a token resuming after %q was taken", key)
		}
	}
}

func TestEtag(t *testing.T) {
	if v, ok := ParseEtag(Etag(42)); !ok || v != 42 {
		t.Fatalf("ParseEtag = %d %v", v, ok)
	}
	if v, ok := ParseEtag(`W/"v7"`); !ok || v != 7 {
		t.Fatalf("weak etag = %d %v", v, ok)
	}
	// One version, one spelling: an etag is compared as a string
	// elsewhere, so "v03" must not pass here either.
	for _, foreign := range []string{"7", "v+7", "v07", "v-7", "v-7x", `""`} {
		if _, ok := ParseEtag(foreign); ok {
			t.Errorf("foreign etag %q accepted", foreign)
		}
	}
	// A REST client copies the ETag header, quotes and all, into the body.
	for _, sent := range []string{"", "v3", `"v3"`, `W/"v3"`} {
		if err := CheckEtag("clinics/c/things/t", sent, "v3"); err != nil {
			t.Errorf("CheckEtag(%q) against v3: %v", sent, err)
		}
	}
	for _, sent := range []string{"v2", `"v2"`, "3", `"v3`} {
		if err := CheckEtag("clinics/c/things/t", sent, "v3"); err == nil {
			t.Errorf("CheckEtag(%q) against v3 passed", sent)
		}
	}
}

func TestFamily(t *testing.T) {
	for name, want := range map[string]string{
		"clinics/north/families/f1":                  "clinics/north/families/f1",
		"clinics/north/families/f1/warningSigns/w1":  "clinics/north/families/f1",
		"clinics/north/families/f1/members/a/b":      "clinics/north/families/f1",
		"clinics/north/referrals/r1":                 "",
		"clinics/north/families":                     "",
		"clinics/North!/families/f1/warningSigns/w1": "",
		"": "",
	} {
		if got := Family(name); got != want {
			t.Errorf("Family(%q) = %q, want %q", name, got, want)
		}
	}
}

// A Custom field renders its own condition around the value's parameter,
// and takes = alone.
func TestCustomFieldRendersItsCondition(t *testing.T) {
	fields := map[string]FilterField{
		"owner": {Column: "owner", Kind: String},
		"record": {Kind: Custom, Render: func(p string) string {
			return "id IN (SELECT id FROM seen WHERE name = " + p + " OR alias = " + p + ")"
		}},
	}
	f, err := ParseFilter(`owner = "u" AND record = "clinics/north/families/f1"`, fields)
	if err != nil {
		t.Fatal(err)
	}
	sql, args := f.SQL(4)
	if want := "owner = $4 AND (id IN (SELECT id FROM seen WHERE name = $5 OR alias = $5))"; sql != want ||
		!reflect.DeepEqual(args, []any{"u", "clinics/north/families/f1"}) {
		t.Fatalf("SQL = %q %v; want %q", sql, args, want)
	}
	for _, bad := range []string{`record != "x"`, `record >= "x"`} {
		if _, err := ParseFilter(bad, fields); err == nil {
			t.Errorf("%s parsed; want refused", bad)
		}
	}
}

// A filter pins a list when it compares one of the named fields with = to
// a resource name; one that does not parse is left to the list to refuse.
func TestPinned(t *testing.T) {
	for filter, want := range map[string]bool{
		`owner = "clinics/north/families/f1"`:                   true,
		`urgent = true AND owner = "clinics/north/families/f1"`: true,
		// The column's default, shared by every row without one, and
		// names of no one record.
		`owner = ""`:                                   false,
		`owner = "clinics/north"`:                      false,
		`owner = "clinics/north/families/"`:            false,
		`owner = "xclinics/north/families/f1"`:         false,
		`owner = "boundary/clinics/north/families/f1"`: true,
		`owner = "u"`:                                  false,
		`owner != "u"`:                                 false,
		`urgent = true`:                                false,
		``:                                             false,
		`owner = `:                                     true,
		`start >= "2026-01-01T00:00:00Z"`:              false,
	} {
		if got := PinnedBy(filter, testFields)("owner", "state"); got != want {
			t.Errorf("PinnedBy(%q) = %v; want %v", filter, got, want)
		}
	}
}
