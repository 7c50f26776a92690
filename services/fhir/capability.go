package fhir

import (
	"net/http"
	"slices"
)

// published is the date of this CapabilityStatement; change it with the
// interface.
const published = "2026-12-06"

var paramTypes = map[string]string{
	"_count": "number", "_lastUpdated": "date", "patient": "reference", "subject": "reference", "status": "token",
}

var paramDocs = map[string]string{
	"_count":       "Page size (at most 1000; the links give the size applied).",
	"_lastUpdated": "When the record last changed: eq, ge, gt, le or lt with a date or time; one without a zone is in UTC.",
	"patient":      "The loved one: a Patient id, Patient/<id> or this server's <base>/Patient/<id>.",
	"subject":      "The loved one: a Patient id, Patient/<id> or this server's <base>/Patient/<id>.",
	"status":       "One Task status.",
}

// paramNotes add to paramDocs what a parameter does on one resource type.
var paramNotes = map[string]map[string]string{
	"Task": {"status": " in-progress includes a booked intake the person missed (business status 5.1.2), which the program may book again."},
	"Consent": {"patient": " Without it, the consents of every patient of the clinic that name the caller or the patient's treating providers: " +
		"poll them with _lastUpdated, and search a patient whose consent is new for records that changed before it."},
	"Appointment": {"patient": " Matches the appointments the Patient takes part in, not a family member's own."},
}

// metadata answers the CapabilityStatement; it needs no token.
func (s *server) metadata(w http.ResponseWriter, r *http.Request) {
	base := s.baseURL(r)
	types := make([]string, 0, len(resourceTypes))
	for t := range resourceTypes {
		types = append(types, t)
	}
	slices.Sort(types)
	var resources []any
	for _, t := range types {
		interactions := []any{obj{"code": "read"}, obj{"code": "search-type"}}
		res := obj{"type": t, "interaction": interactions, "versioning": "versioned", "readHistory": false}
		if t == "Task" {
			res["interaction"] = append(interactions, obj{"code": "update",
				"documentation": "Sets the referral's status (accepted, rejected, in-progress, on-hold, completed, failed, cancelled). rejected needs " +
					"statusReason, a code of " + sysRejection + " (one of " + rejectionCodes + ") or text; in-progress needs " +
					"executionPeriod.start; on-hold and cancelled need statusReason. Honours If-Match."})
			res["updateCreate"] = false
			res["conditionalUpdate"] = false
			// Still "versioned", not "versioned-update": If-Match is
			// honoured, not required (a PUT without it steps from the
			// version the server reads).
		}
		var params []any
		for _, name := range slices.Concat([]string{"_count", "_lastUpdated"}, searchParams[t]) {
			params = append(params, obj{"name": name, "type": paramTypes[name], "documentation": paramDocs[name] + paramNotes[t][name]})
		}
		res["searchParam"] = params
		if t != "HealthcareService" {
			res["documentation"] = "Disclosed under 42 CFR Part 2: " + part2Notice
		}
		resources = append(resources, res)
	}
	cs := obj{
		"resourceType": "CapabilityStatement",
		"status":       "active",
		"date":         published,
		"publisher":    "Handoff",
		"kind":         "instance",
		"implementation": obj{
			"description": "Handoff FHIR R4 interface: families, interventions and referrals of addiction-treatment clinics",
			"url":         base,
		},
		"fhirVersion": "4.0.1",
		"format":      []any{"application/fhir+json", "json"},
		"rest": []any{obj{
			"mode": "server",
			"security": obj{
				"service": []any{concept("", coding("http://terminology.hl7.org/CodeSystem/restful-security-service", "OAuth", "OAuth"))},
				"description": "Send a bearer token issued for one clinic (Authorization: Bearer <token>). Records are disclosed " +
					"only as the patient's 42 CFR Part 2 consent allows: without it a read is 403, and a search leaves out what the " +
					"consent does not cover (an empty searchset, not a refusal). A search parameter not " +
					"listed for a resource is refused (400), not ignored, whatever Prefer says: a search that dropped a " +
					"narrowing parameter would disclose more than was asked. A searchset's timestamp is when the search began: " +
					"to poll for changes, search again with _lastUpdated=ge that timestamp less a few seconds (a change committed " +
					"while a search ran can bear an earlier time) and skip what was seen by meta.versionId.",
			},
			"resource": resources,
		}},
	}
	s.writeResource(w, http.StatusOK, cs)
}
