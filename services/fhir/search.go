package fhir

import (
	"context"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/consentgate"
	"github.com/handoff-health/handoff/services/referrals/taskstatus"
)

// pageTokenParam carries the services' opaque page token in Bundle links.
const pageTokenParam = "page_token"

// defaultPageSize is the services' page size when _count is not given.
const defaultPageSize = 50

// familiesPerPage bounds the families a RelatedPerson page reads, one
// call each: at _count=1000, a clinic of one-member families would
// otherwise take a thousand calls in a row, past the request's timeout,
// for one page. The next link reads on.
const familiesPerPage = 50

// Search parameters each type takes besides the common ones.
var searchParams = map[string][]string{
	"Patient":           nil,
	"HealthcareService": nil,
	"RelatedPerson":     {"patient"},
	"CareTeam":          {"patient", "subject"},
	"ServiceRequest":    {"patient", "subject"},
	"Task":              {"patient", "subject", "status"},
	"Appointment":       {"patient"},
	"Consent":           {"patient"},
}

// _format and _pretty shape the answer's layout only.
var commonParams = []string{"_count", "_lastUpdated", pageTokenParam, "_format", "_pretty"}

// query is a parsed search.
type query struct {
	typ     string
	params  url.Values
	size    int32
	token   string
	patient string // a family id
	status  string
	// updated holds the _lastUpdated conditions as AIP-160 filter terms,
	// which the services apply.
	updated []string
}

// page is one page of search results.
type page struct {
	entries  []obj
	next     string
	outcomes []obj
}

func (s *server) search(ctx context.Context, w http.ResponseWriter, r *http.Request, c caller) {
	typ := r.PathValue("type")
	if !resourceTypes[typ] {
		s.fail(w, http.StatusNotFound, "not-supported", fmt.Sprintf("resource type %q is not supported", typ))
		return
	}
	if r.Method == http.MethodPost && r.ContentLength != 0 {
		// Go reads a POST body as parameters only when it is form-encoded
		// and silently skips any other: a search would then match
		// everything the caller may see. (Parameters in the URL alone, with
		// no body, are a valid POST search.)
		if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/x-www-form-urlencoded" {
			s.fail(w, http.StatusUnsupportedMediaType, "not-supported",
				"a POST search takes its parameters as application/x-www-form-urlencoded")
			return
		}
	}
	if err := r.ParseForm(); err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			// A body over the limit sent without its length (chunked).
			s.fail(w, http.StatusRequestEntityTooLarge, "too-costly", "the search parameters are too long")
			return
		}
		s.fail(w, http.StatusBadRequest, "invalid", "cannot read the search parameters")
		return
	}
	// The format asked for, in the URL or the body (jsonOnly leaves a
	// POST with a body to this point).
	if s.refuseFormat(w, r, r.Form.Get("_format")) {
		return
	}
	q, err := parseQuery(typ, r.Form, c.base)
	if err != nil {
		s.writeErr(w, readErr(err), typ+" records")
		return
	}
	// The searchset's timestamp is taken before the search runs: a client
	// polling by _lastUpdated from it must not skip what changed while it
	// ran.
	at := time.Now()
	p, err := s.find(ctx, c, q)
	if consentgate.Refused(err) {
		// A search finds only what the patient's consent discloses, as the
		// services' lists do: what it does not cover is not a match.
		p, err = page{}, nil
	}
	if err != nil {
		s.writeErr(w, readErr(err), typ+" records")
		return
	}
	s.writeResource(w, http.StatusOK, searchBundle(c.base, q, p, at))
}

// onServer reports whether prefix, what comes before /Patient/ in an
// absolute reference, is this server's base: the same host and path. The
// scheme is not compared: behind a proxy that does not say it terminated
// TLS, the base read from the request says http where clients say https.
func onServer(prefix, base string) bool {
	p, err := url.Parse(prefix)
	if err != nil {
		return false
	}
	b, err := url.Parse(base)
	if err != nil {
		return false
	}
	return p.Host != "" && strings.EqualFold(p.Host, b.Host) && strings.TrimSuffix(p.Path, "/") == strings.TrimSuffix(b.Path, "/")
}

// base is this server's FHIR base URL, which an absolute Patient reference
// must name.
func parseQuery(typ string, v url.Values, base string) (query, error) {
	q := query{typ: typ, params: url.Values{}}
	for name, vals := range v {
		if !slices.Contains(commonParams, name) && !slices.Contains(searchParams[typ], name) {
			allowed := slices.Concat(commonParams[:2], searchParams[typ])
			return q, invalid(fmt.Sprintf("search parameter %q is not supported on %s; supported: %s", name, typ, strings.Join(allowed, ", ")))
		}
		if name != "_lastUpdated" && len(vals) > 1 {
			return q, invalid(fmt.Sprintf("search parameter %s may appear once", name))
		}
		if name != pageTokenParam && slices.Contains(vals, "") {
			// Dropped, an empty patient= would widen the search to every
			// record the consents cover, and record each as disclosed.
			return q, invalid(fmt.Sprintf("search parameter %s is empty: give a value or leave it out", name))
		}
		if name != pageTokenParam {
			q.params[name] = vals
		}
	}
	if f := v.Get("_format"); f != "" && !strings.Contains(strings.ToLower(f), "json") {
		return q, invalid("only JSON is supported (_format=json)")
	}
	if n := v.Get("_count"); n != "" {
		size, err := strconv.Atoi(n)
		if err != nil || size < 1 {
			return q, invalid("_count must be a whole number of at least 1")
		}
		q.size = int32(min(size, 1000))
		// The links give the count applied (R4: the parameters used).
		q.params.Set("_count", strconv.Itoa(int(q.size)))
	}
	q.token = v.Get(pageTokenParam)
	if len(q.token) > 600 {
		return q, invalid("page_token is not one this server gave")
	}
	for _, name := range []string{"patient", "subject"} {
		if p := v.Get(name); p != "" {
			// An id, Patient/<id>, or the absolute reference a client takes
			// from a fullUrl (<base>/Patient/<id>).
			id := p
			if i := strings.LastIndex(p, "Patient/"); i >= 0 && (i == 0 || p[i-1] == '/') {
				id = p[i+len("Patient/"):]
				if i > 0 && !onServer(p[:i-1], base) {
					// Another server's Patient (the EHR's own): searching
					// ours under its id would answer for someone else.
					return q, invalid(fmt.Sprintf("%s names a Patient of another server; this server's base is %s", name, base))
				}
			}
			if !handoffID.MatchString(id) {
				return q, invalid(fmt.Sprintf("%s must be a Patient id, Patient/<id> or <base>/Patient/<id>", name))
			}
			if q.patient != "" && q.patient != id {
				return q, invalid("patient and subject name different patients")
			}
			q.patient = id
		}
	}
	if st := v.Get("status"); st != "" {
		if !taskstatus.Known(st) {
			return q, invalid(fmt.Sprintf("status %q is not a Task status (one value only)", st))
		}
		q.status = st
	}
	for _, lu := range v["_lastUpdated"] {
		if err := q.addUpdated(lu); err != nil {
			return q, err
		}
	}
	return q, nil
}

// addUpdated parses one _lastUpdated value: a prefix (eq, ge, gt, le, lt)
// and a date or time, whose precision makes it a range.
func (q *query) addUpdated(v string) error {
	prefix := "eq"
	if len(v) > 2 && v[0] >= 'a' && v[0] <= 'z' {
		prefix, v = v[:2], v[2:]
	}
	lo, hi, ok := timeRange(plusOffset(v))
	if !ok {
		return invalid("_lastUpdated needs a prefix (eq, ge, gt, le, lt) and a date or time, such as ge2026-01-01 or lt2026-01-02T10:00:00Z (a + in an offset is sent as %2B)")
	}
	var ge, lt []time.Time
	switch prefix {
	case "eq":
		ge, lt = []time.Time{lo}, []time.Time{hi}
	case "ge":
		ge = []time.Time{lo}
	case "gt":
		ge = []time.Time{hi}
	case "lt":
		lt = []time.Time{lo}
	case "le":
		lt = []time.Time{hi}
	default:
		return invalid(fmt.Sprintf("_lastUpdated prefix %q is not supported; use eq, ge, gt, le or lt", prefix))
	}
	// A bound past the last instant RFC 3339 can write (the end of 9999,
	// as le9999-12-31 gives) is that instant: a lower one then matches
	// nothing, an upper one everything, as it would on a longer calendar.
	for _, t := range ge {
		if t = t.UTC(); t.After(lastInstant) {
			t = lastInstant
		}
		q.updated = append(q.updated, fmt.Sprintf(`update_time >= %q`, t.Format(time.RFC3339Nano)))
	}
	for _, t := range lt {
		if t.UTC().After(lastInstant) {
			continue
		}
		q.updated = append(q.updated, fmt.Sprintf(`update_time < %q`, t.UTC().Format(time.RFC3339Nano)))
	}
	return nil
}

// lastInstant is the last microsecond (the finest stored) of year 9999.
var lastInstant = time.Date(9999, 12, 31, 23, 59, 59, 999999000, time.UTC)

// plusOffset restores the + of a time's offset that a client sent
// unencoded, which the query's decoding turned into a space
// ("2026-03-01T00:00:00 01:00"): FHIR asks clients to encode it, and many
// do not. Nothing else in a date or time may hold a space.
func plusOffset(v string) string {
	if n := len(v); n > 6 && strings.Contains(v, "T") && v[n-6] == ' ' && v[n-3] == ':' &&
		strings.Trim(v[n-5:n-3]+v[n-2:], "0123456789") == "" {
		return v[:n-6] + "+" + v[n-5:]
	}
	return v
}

// timeRange returns the instants a FHIR date or dateTime covers, [lo, hi).
// Dates, and times without a zone, are taken in UTC: the server's zone,
// which FHIR's search says to assume for them (the CapabilityStatement and
// the README say it).
func timeRange(v string) (lo, hi time.Time, ok bool) {
	if strings.Contains(v, ",") {
		// Go's parser takes a comma for the decimal point, which FHIR's
		// dateTime does not; the precision below reads only a point.
		return time.Time{}, time.Time{}, false
	}
	for _, f := range []struct {
		layout string
		step   func(time.Time) time.Time
	}{
		{"2006", func(t time.Time) time.Time { return t.AddDate(1, 0, 0) }},
		{"2006-01", func(t time.Time) time.Time { return t.AddDate(0, 1, 0) }},
		{"2006-01-02", func(t time.Time) time.Time { return t.AddDate(0, 0, 1) }},
		{"2006-01-02T15:04Z07:00", func(t time.Time) time.Time { return t.Add(time.Minute) }},
		{time.RFC3339, func(t time.Time) time.Time { return t.Add(time.Second) }},
		{"2006-01-02T15:04", func(t time.Time) time.Time { return t.Add(time.Minute) }},
		{"2006-01-02T15:04:05", func(t time.Time) time.Time { return t.Add(time.Second) }},
	} {
		if t, err := time.Parse(f.layout, v); err == nil {
			if _, frac, ok := strings.Cut(v, "."); ok {
				// Fractional seconds: as precise as the digits given
				// (.123 is a millisecond), not more.
				digits := len(frac) - len(strings.TrimLeft(frac, "0123456789"))
				step := time.Second
				for range min(digits, 6) {
					step /= 10 // no finer than the microsecond stored
				}
				return t, t.Add(step), true
			}
			return t, f.step(t), true
		}
	}
	return time.Time{}, time.Time{}, false
}

// filter joins AIP-160 terms.
func (q query) filter(terms ...string) string {
	return strings.Join(slices.Concat(slices.DeleteFunc(terms, func(t string) bool { return t == "" }), q.updated), " AND ")
}

func (q query) familyTerm(c caller) string {
	if q.patient == "" {
		return ""
	}
	return fmt.Sprintf("family = %q", familyName(c, q.patient))
}

// withMembers is the families filter term for "has members to show".
const withMembers = "has_members = true"

// lovedOnesOwn is the referrals filter term for "the loved one's referral",
// not a family member's.
const lovedOnesOwn = "subject_kind = LOVED_ONE"

// hasIntake is the referrals filter term for "has an intake appointment".
const hasIntake = `intake_time >= "1970-01-01T00:00:00Z"`

func entry(res obj) obj { return obj{"resource": res} }

// patientFamily reads the family a patient search names, or nil when it
// does not exist or does not match _lastUpdated. With _lastUpdated the
// families service filters, so that a family that does not match is not
// read: for the EHR every read is a disclosure in the accounting, and a
// family left out of the answer was not disclosed.
//
// terms are more filter terms for the families service; with them too the
// family is read only if it matches.
func (s *server) patientFamily(ctx context.Context, c caller, q query, terms ...string) (*familiesv1.Family, error) {
	if len(q.updated) == 0 && len(terms) == 0 {
		f, err := s.family(ctx, c, q.patient)
		if status.Code(err) == codes.NotFound {
			return nil, nil
		}
		return f, err
	}
	resp, err := s.cfg.Families.ListFamilies(ctx, &familiesv1.ListFamiliesRequest{Parent: "clinics/" + c.clinic, PageSize: 1,
		Filter: q.filter(append([]string{fmt.Sprintf("id = %q", q.patient)}, terms...)...)})
	if err != nil || len(resp.GetFamilies()) == 0 {
		return nil, err
	}
	return resp.GetFamilies()[0], nil
}

// relatedPeople is a RelatedPerson search: the members of the families,
// at most _count a page. The families are read one at a time, and only
// those with members, so that only those whose members go out are read
// (for the EHR each read is a disclosure in the family's accounting), and
// a family whose members span pages is read again for the next. The page token says where to go on:
// "m<n>.<family id>.<member id>." and the families service's token that
// reads that family, n of whose members were given already, the last of
// them the member named. Should that token read another family by then
// (one was added or removed before it), n is not that one's count: it
// starts from its first member. Members added or removed before the last
// one given since (the list is the client's, in its order) move it: the
// page goes on after it wherever it now is, and only when it is gone by
// the count. Tokens of the earlier forms, without the member
// ("m<n>.<family id>.<token>") or the family ("m<n>.<token>"; the
// families service's token holds no dot), are still followed as they
// were.
func (s *server) relatedPeople(ctx context.Context, c caller, q query) (page, error) {
	const anyFamily = "*"
	skip, started, lastGiven, token := 0, "", "", ""
	if q.token != "" {
		body, ok := strings.CutPrefix(q.token, "m")
		parts := strings.Split(body, ".")
		var n string
		switch len(parts) {
		case 2: // the earliest form
			n, started, token = parts[0], anyFamily, parts[1]
		case 3:
			n, started, token = parts[0], parts[1], parts[2]
		case 4:
			n, started, lastGiven, token = parts[0], parts[1], parts[2], parts[3]
		default:
			ok = false
		}
		v, err := strconv.Atoi(n)
		if !ok || err != nil || v < 0 || (lastGiven != "" && !handoffID.MatchString(lastGiven)) {
			return page{}, invalid("page_token is not one this server gave")
		}
		skip = v
	}
	limit := int(q.size)
	if limit == 0 {
		limit = defaultPageSize
	}
	var p page
	for read := 0; ; read++ {
		var f *familiesv1.Family
		next := ""
		if q.patient != "" {
			var err error
			if f, err = s.patientFamily(ctx, c, q, withMembers); err != nil {
				return page{}, err
			}
		} else {
			resp, err := s.cfg.Families.ListFamilies(ctx, &familiesv1.ListFamiliesRequest{
				Parent: "clinics/" + c.clinic, PageSize: 1, PageToken: token, Filter: q.filter(withMembers)})
			if err != nil && read > 0 {
				// The families read so far were recorded as disclosed:
				// they go out, as a shorter page whose next link reads
				// again from the family that failed, rather than be
				// recorded and not sent.
				p.next = "m0.." + token
				return p, nil
			}
			if err != nil {
				return page{}, err
			}
			if fams := resp.GetFamilies(); len(fams) > 0 {
				f = fams[0]
			}
			next = resp.GetNextPageToken()
		}
		if read == 0 && started != anyFamily && aip.ID(f.GetName()) != started {
			skip, lastGiven = 0, ""
		}
		if read == 0 && lastGiven != "" {
			// Go on after the last member given, wherever it now is.
			if i := slices.IndexFunc(f.GetMembers(), func(m *familiesv1.Member) bool { return m.GetId() == lastGiven }); i >= 0 {
				skip = i + 1
			}
		}
		// Members removed since the last page: what is left of them.
		members := f.GetMembers()[min(skip, len(f.GetMembers())):]
		if room := limit - len(p.entries); len(members) > room {
			for _, m := range members[:room] {
				p.entries = append(p.entries, entry(relatedPerson(f, m)))
			}
			p.next = fmt.Sprintf("m%d.%s.%s.%s", skip+room, aip.ID(f.GetName()), members[room-1].GetId(), token)
			return p, nil
		}
		for _, m := range members {
			p.entries = append(p.entries, entry(relatedPerson(f, m)))
		}
		if next == "" {
			return p, nil
		}
		// A page's worth of families read (some may have lost their
		// members since), or familiesPerPage, is enough for one answer:
		// each is a call, and a disclosure recorded, one after another.
		if len(p.entries) == limit || read+1 >= min(limit, familiesPerPage) {
			p.next = "m0.." + next
			return p, nil
		}
		skip, token = 0, next
	}
}

// find runs a search against the services.
func (s *server) find(ctx context.Context, c caller, q query) (page, error) {
	parent := "clinics/" + c.clinic
	switch q.typ {
	case "RelatedPerson":
		return s.relatedPeople(ctx, c, q)
	case "Patient", "CareTeam":
		var fams []*familiesv1.Family
		var next string
		if q.patient != "" {
			// One family: a single page.
			f, err := s.patientFamily(ctx, c, q)
			if err != nil {
				return page{}, err
			}
			if f != nil {
				fams = append(fams, f)
			}
		} else {
			resp, err := s.cfg.Families.ListFamilies(ctx, &familiesv1.ListFamiliesRequest{
				Parent: parent, PageSize: q.size, PageToken: q.token, Filter: q.filter()})
			if err != nil {
				return page{}, err
			}
			fams, next = resp.GetFamilies(), resp.GetNextPageToken()
		}
		p := page{next: next}
		for _, f := range fams {
			if q.typ == "Patient" {
				p.entries = append(p.entries, entry(patient(f)))
			} else {
				p.entries = append(p.entries, entry(careTeam(f)))
			}
		}
		return p, nil
	case "ServiceRequest", "Task":
		state := ""
		if q.status != "" {
			// The referrals service's own Task.status, of which one
			// (in-progress: booked, or booked and missed) stands for more
			// than one state.
			state = fmt.Sprintf("fhir_task_status = %q", q.status)
		}
		terms := []string{q.familyTerm(c), state}
		if q.patient != "" {
			// patient and subject match Task.for and ServiceRequest.subject,
			// which for a member's own referral are the member, not the
			// Patient.
			terms = append(terms, lovedOnesOwn)
		}
		resp, err := s.cfg.Referrals.ListReferrals(ctx, &referralsv1.ListReferralsRequest{
			Parent: parent, PageSize: q.size, PageToken: q.token, Filter: q.filter(terms...)})
		if err != nil {
			return page{}, err
		}
		p := page{next: resp.GetNextPageToken()}
		for _, rf := range resp.GetReferrals() {
			if q.typ == "Task" {
				p.entries = append(p.entries, entry(task(rf)))
			} else {
				p.entries = append(p.entries, entry(serviceRequest(rf)))
			}
		}
		return p, nil
	case "Appointment":
		return s.findAppointments(ctx, c, q)
	case "Consent":
		// Without a patient, the clinic's: how a polling EHR learns of a
		// consent that newly names it, and so of records that changed
		// before it. The families service filters by the update time as
		// this caller is shown it.
		parent := familyName(c, q.patient)
		if q.patient == "" {
			parent = familyName(c, "-")
		}
		// A member's own consent is the member's (its patient is the
		// member, contained), not the Patient searched for: left out by
		// the families service, so that pages stay full.
		own := ""
		if q.patient != "" {
			own = `member_id = ""`
		}
		resp, err := s.cfg.Families.ListConsents(ctx, &familiesv1.ListConsentsRequest{
			Parent: parent, PageSize: q.size, PageToken: q.token, Filter: q.filter(own)})
		if status.Code(err) == codes.NotFound {
			return page{}, nil
		}
		if err != nil {
			return page{}, err
		}
		p := page{next: resp.GetNextPageToken()}
		for _, cn := range resp.GetConsents() {
			p.entries = append(p.entries, entry(consent(cn)))
		}
		return p, nil
	case "HealthcareService":
		// Deleted programs that referrals still name are listed, inactive:
		// a directory kept in sync by _lastUpdated would otherwise never
		// learn that one closed (the deletion moves its update time).
		resp, err := s.cfg.Referrals.ListPrograms(ctx, &referralsv1.ListProgramsRequest{
			Parent: parent, PageSize: q.size, PageToken: q.token, Filter: q.filter(), ShowDeleted: true})
		if err != nil {
			return page{}, err
		}
		p := page{next: resp.GetNextPageToken()}
		for _, pr := range resp.GetPrograms() {
			p.entries = append(p.entries, entry(healthcareService(pr)))
		}
		return p, nil
	}
	return page{}, invalid("unsupported search")
}

// Appointments come from two services: interventions first, then the
// referrals' intake appointments. The page token says which, "i." or "r."
// before the service's own token.
func (s *server) findAppointments(ctx context.Context, c caller, q query) (page, error) {
	parent := "clinics/" + c.clinic
	phase, token := "i", ""
	if q.token != "" {
		var ok bool
		phase, token, ok = strings.Cut(q.token, ".")
		if !ok || (phase != "i" && phase != "r") {
			return page{}, invalid("page_token is not one this server gave")
		}
	}
	var p page
	if phase == "i" {
		resp, err := s.cfg.Interventions.ListInterventions(ctx, &interventionsv1.ListInterventionsRequest{
			Parent: parent, PageSize: q.size, PageToken: token, Filter: q.filter(q.familyTerm(c))})
		switch {
		case status.Code(err) == codes.PermissionDenied:
			// The caller may read intake appointments but not list
			// interventions: say so rather than leave them out silently.
			p.outcomes = append(p.outcomes, outcome("warning", "forbidden",
				"intervention meetings are not listed for this caller; only intake appointments are"))
		case err != nil:
			return page{}, err
		default:
			for _, iv := range resp.GetInterventions() {
				p.entries = append(p.entries, entry(appointment(iv)))
			}
			if next := resp.GetNextPageToken(); next != "" {
				p.next = "i." + next
				return p, nil
			}
		}
		// Interventions are done: the next page starts the intake
		// appointments, unless this page has room for them now.
		if len(p.entries) > 0 {
			p.next = "r."
			return p, nil
		}
		token = ""
	}
	// Only referrals with an intake appointment (a NULL start matches no
	// comparison), so that the pages are of appointments. R4's patient
	// parameter matches the appointments the Patient takes part in: a
	// family member's own intake names the member, not the loved one.
	terms := []string{q.familyTerm(c), hasIntake}
	if q.patient != "" {
		terms = append(terms, lovedOnesOwn)
	}
	resp, err := s.cfg.Referrals.ListReferrals(ctx, &referralsv1.ListReferralsRequest{
		Parent: parent, PageSize: q.size, PageToken: token, Filter: q.filter(terms...)})
	if err != nil {
		return page{}, err
	}
	// The referrals service narrowed the page to the families whose consent
	// covers referrals, intake appointments included, and recorded it.
	for _, rf := range resp.GetReferrals() {
		if a := intakeAppointment(rf); a != nil {
			p.entries = append(p.entries, entry(a))
		}
	}
	if next := resp.GetNextPageToken(); next != "" {
		p.next = "r." + next
	}
	return p, nil
}

// searchBundle is a searchset Bundle with self and next links.
func searchBundle(base string, q query, p page, at time.Time) obj {
	entries := make([]any, 0, len(p.entries)+len(p.outcomes))
	for _, e := range p.entries {
		res := e["resource"].(obj)
		entries = append(entries, obj{
			"fullUrl":  base + "/" + res["resourceType"].(string) + "/" + res["id"].(string),
			"resource": res,
			"search":   obj{"mode": "match"},
		})
	}
	for _, o := range p.outcomes {
		entries = append(entries, obj{"resource": o, "search": obj{"mode": "outcome"}})
	}
	link := func(rel, token string) obj {
		v := url.Values{}
		for k, vals := range q.params {
			v[k] = vals
		}
		if token != "" {
			v.Set(pageTokenParam, token)
		}
		u := base + "/" + q.typ
		if enc := v.Encode(); enc != "" {
			u += "?" + enc
		}
		return obj{"relation": rel, "url": u}
	}
	links := []any{link("self", q.token)}
	if p.next != "" {
		links = append(links, link("next", p.next))
	}
	b := obj{
		"resourceType": "Bundle",
		"type":         "searchset",
		"timestamp":    at.UTC().Format(instantLayout),
		"link":         links,
	}
	if len(entries) > 0 {
		b["entry"] = entries
	}
	// The total is known only when everything fits on one page.
	if p.next == "" && q.token == "" {
		b["total"] = len(p.entries)
	}
	return b
}
