package fhir

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
)

// resourceTypes are the types this server reads and searches.
var resourceTypes = map[string]bool{
	"Patient": true, "RelatedPerson": true, "CareTeam": true, "ServiceRequest": true, "Task": true,
	"Appointment": true, "Consent": true, "HealthcareService": true,
}

func (s *server) read(ctx context.Context, w http.ResponseWriter, r *http.Request, c caller) {
	typ, id := r.PathValue("type"), r.PathValue("id")
	if !resourceTypes[typ] {
		s.fail(w, http.StatusNotFound, "not-supported", fmt.Sprintf("resource type %q is not supported", typ))
		return
	}
	// A read takes only _format and _pretty, which change the layout:
	// _summary or _elements ignored would send the whole resource to a
	// client that asked for less, as searches refuse what they do not
	// support for the same reason.
	for name := range r.URL.Query() {
		if name != "_format" && name != "_pretty" {
			s.fail(w, http.StatusBadRequest, "not-supported", fmt.Sprintf("parameter %q is not supported on a read; only _format and _pretty are", name))
			return
		}
	}
	res, err := s.get(ctx, c, typ, id)
	if err != nil {
		s.writeErr(w, readErr(err), typ+"/"+id)
		return
	}
	writeVersionHeaders(w, res)
	s.writeResource(w, http.StatusOK, res)
}

// writeVersionHeaders sets ETag (weak, as FHIR wants) and Last-Modified.
func writeVersionHeaders(w http.ResponseWriter, res obj) {
	meta, _ := res["meta"].(obj)
	if v, _ := meta["versionId"].(string); v != "" {
		w.Header().Set("ETag", `W/"`+v+`"`)
	}
	if v, _ := meta["lastUpdated"].(string); v != "" {
		if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
			w.Header().Set("Last-Modified", t.UTC().Format(http.TimeFormat))
		}
	}
}

func (s *server) family(ctx context.Context, c caller, id string) (*familiesv1.Family, error) {
	return s.cfg.Families.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: familyName(c, id)})
}

func familyName(c caller, id string) string { return "clinics/" + c.clinic + "/families/" + id }

func (s *server) referral(ctx context.Context, c caller, id string) (*referralsv1.Referral, error) {
	return s.cfg.Referrals.GetReferral(ctx, &referralsv1.GetReferralRequest{Name: "clinics/" + c.clinic + "/referrals/" + id})
}

// get reads one resource by its FHIR id.
func (s *server) get(ctx context.Context, c caller, typ, id string) (obj, error) {
	missing := notFound{msg: fmt.Sprintf("%s/%s not found", typ, id)}
	switch typ {
	case "RelatedPerson":
		fam, member, hash, ok := splitPairID(id)
		if !ok {
			return nil, missing
		}
		f, err := s.family(ctx, c, fam)
		if err != nil {
			return nil, err
		}
		for _, m := range f.GetMembers() {
			if matches(m.GetId(), member, hash) {
				return relatedPerson(f, m), nil
			}
		}
		// The family was disclosed to look for the member: that it has
		// none of that id is told under the notice.
		return nil, disclosed(missing)
	case "Consent":
		fam, cons, hash, ok := splitPairID(id)
		if !ok {
			return nil, missing
		}
		if cons != "" {
			cn, err := s.cfg.Families.GetConsent(ctx, &familiesv1.GetConsentRequest{Name: familyName(c, fam) + "/consents/" + cons})
			if err != nil {
				return nil, err
			}
			return consent(cn), nil
		}
		return s.consentByHash(ctx, c, fam, hash, missing)
	case "Appointment":
		if ref, ok := strings.CutPrefix(id, intakePrefix); ok && handoffID.MatchString(ref) {
			rf, err := s.referral(ctx, c, ref)
			if err != nil {
				return nil, err
			}
			// The referrals service checked and recorded the disclosure: the
			// intake appointment is the referral's (see INFORMATION_KIND_REFERRALS).
			if a := intakeAppointment(rf); a != nil {
				return a, nil
			}
			// The referral was disclosed: that it has no intake booked
			// is told under the notice.
			return nil, disclosed(missing)
		}
	}
	// The other types are named by a plain Handoff id.
	if !handoffID.MatchString(id) {
		return nil, missing
	}
	switch typ {
	case "Patient", "CareTeam":
		f, err := s.family(ctx, c, id)
		if err != nil {
			return nil, err
		}
		if typ == "Patient" {
			return patient(f), nil
		}
		return careTeam(f), nil
	case "ServiceRequest", "Task":
		rf, err := s.referral(ctx, c, id)
		if err != nil {
			return nil, err
		}
		if typ == "Task" {
			return task(rf), nil
		}
		return serviceRequest(rf), nil
	case "Appointment":
		iv, err := s.cfg.Interventions.GetIntervention(ctx, &interventionsv1.GetInterventionRequest{Name: "clinics/" + c.clinic + "/interventions/" + id})
		if err != nil {
			return nil, err
		}
		return appointment(iv), nil
	case "HealthcareService":
		p, err := s.cfg.Referrals.GetProgram(ctx, &referralsv1.GetProgramRequest{Name: "clinics/" + c.clinic + "/programs/" + id})
		if err != nil {
			return nil, err
		}
		return healthcareService(p), nil
	}
	return nil, missing
}

// consentByHash finds a consent named by the hash of its id.
func (s *server) consentByHash(ctx context.Context, c caller, fam, hash string, missing error) (obj, error) {
	token := ""
	for {
		resp, err := s.cfg.Families.ListConsents(ctx, &familiesv1.ListConsentsRequest{Parent: familyName(c, fam), PageSize: 1000, PageToken: token})
		if err != nil {
			return nil, err
		}
		for _, cn := range resp.GetConsents() {
			if matches(lastSegment(cn.GetName()), "", hash) {
				return consent(cn), nil
			}
		}
		if token = resp.GetNextPageToken(); token == "" {
			return nil, missing
		}
	}
}
