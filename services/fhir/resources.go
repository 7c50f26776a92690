package fhir

import (
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/referrals/intake"
	"github.com/handoff-health/handoff/services/referrals/taskstatus"
)

// obj is a FHIR JSON object under construction; the validating parser
// checks it before it leaves (see server.render).
type obj = map[string]any

// The 42 CFR Part 2 notice (2.32) every disclosed record carries.
const part2Notice = "42 CFR part 2 prohibits unauthorized use or disclosure of these records."

// Code systems and identifier systems.
const (
	sysActCode         = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
	sysConfidentiality = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
	sysActReason       = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
	sysRoleCode        = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
	sysParticipation   = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
	sysContactRole     = "http://terminology.hl7.org/CodeSystem/v2-0131"
	sysConsentScope    = "http://terminology.hl7.org/CodeSystem/consentscope"
	sysLOINC           = "http://loinc.org"
	sysResourceTypes   = "http://hl7.org/fhir/resource-types"
	sysBCP47           = "urn:ietf:bcp:47"
	sysBSeRStatus      = "http://hl7.org/fhir/us/bser/CodeSystem/TaskBusinessStatusCS"
	// Handoff's own code and identifier systems.
	sysHandoff       = "https://handoff.health/fhir/"
	sysServiceKind   = sysHandoff + "CodeSystem/service-kind"
	sysRejection     = sysHandoff + "CodeSystem/rejection-reason"
	sysResourceName  = sysHandoff + "sid/resource-name"
	sysUser          = sysHandoff + "sid/user"
	sysConsentActor  = sysHandoff + "sid/consent-recipient"
	sysInterventionT = sysHandoff + "CodeSystem/appointment-kind"
)

// part2 labels a disclosed record: restricted (R), governed by 42 CFR
// Part 2, and not to be redisclosed without consent (NORDSCLCD), with the
// notice as its narrative.
func part2(res obj, updated *timestamppb.Timestamp, etag string) obj {
	meta := obj{"security": []any{
		coding(sysConfidentiality, "R", "restricted"),
		coding(sysActCode, "42CFRPart2", "42 CFR Part2"),
		coding(sysActCode, "NORDSCLCD", "no redisclosure without consent directive"),
	}}
	if updated != nil {
		meta["lastUpdated"] = instant(updated)
	}
	if etag != "" {
		meta["versionId"] = etag
	}
	res["meta"] = meta
	res["text"] = obj{
		// "additional": the narrative holds the notice, not the data.
		"status": "additional",
		"div":    `<div xmlns="http://www.w3.org/1999/xhtml"><p>` + part2Notice + `</p></div>`,
	}
	return res
}

func coding(system, code, display string) obj {
	c := obj{"system": system, "code": code}
	if display != "" {
		c["display"] = display
	}
	return c
}

func concept(text string, codings ...obj) obj {
	c := obj{}
	if len(codings) > 0 {
		list := make([]any, len(codings))
		for i, cd := range codings {
			list[i] = cd
		}
		c["coding"] = list
	}
	if text != "" {
		c["text"] = text
	}
	return c
}

func ref(typ, id string) obj { return obj{"reference": typ + "/" + id} }

// userRef refers to a Handoff user (a counselor) that this server does not
// serve as a resource.
func userRef(typ, user string) obj {
	return obj{"type": typ, "identifier": obj{"system": sysUser, "value": user}}
}

func identifier(name string) []any {
	return []any{obj{"system": sysResourceName, "value": name}}
}

const instantLayout = "2006-01-02T15:04:05.000000Z07:00"

func instant(ts *timestamppb.Timestamp) string { return ts.AsTime().UTC().Format(instantLayout) }

func humanName(given, family string) obj {
	n := obj{"use": "official"}
	if given != "" {
		n["given"] = []any{given}
	}
	if family != "" {
		n["family"] = family
	}
	return n
}

func telecom(channels []*familiesv1.ContactChannel) []any {
	var out []any
	for i, c := range channels {
		t := obj{"value": c.GetValue(), "rank": i + 1}
		switch c.GetKind() {
		case familiesv1.ChannelKind_CHANNEL_KIND_SMS:
			t["system"], t["use"] = "sms", "mobile"
		case familiesv1.ChannelKind_CHANNEL_KIND_PHONE:
			t["system"] = "phone"
		case familiesv1.ChannelKind_CHANNEL_KIND_EMAIL:
			t["system"] = "email"
		default:
			t["system"] = "other"
		}
		out = append(out, t)
	}
	return out
}

// patient is the loved one.
func patient(f *familiesv1.Family) obj {
	lo := f.GetLovedOne()
	p := obj{
		"resourceType": "Patient",
		"id":           lastSegment(f.GetName()),
		"identifier":   identifier(f.GetName()),
		"active":       f.GetState() != familiesv1.FamilyState_FAMILY_STATE_CLOSED,
	}
	names := []any{humanName(lo.GetGivenName(), lo.GetFamilyName())}
	if lo.GetPreferredName() != "" {
		names = append(names, obj{"use": "usual", "given": []any{lo.GetPreferredName()}})
	}
	p["name"] = names
	// A date the pattern let through before it was checked as a date
	// (1994-02-30) is left out: sent, it fails the validation of the
	// whole answer, a search page with it, and every poll that meets it.
	// So is year 0000, which Go parses and FHIR's date (its regex) does
	// not have, though the validator here lets it by: stored before the
	// service refused years before 1900.
	if bd := lo.GetBirthDate(); bd != "" {
		if d, err := time.Parse(time.DateOnly, bd); err == nil && d.Year() >= 1 {
			p["birthDate"] = bd
		}
	}
	// Only channels the clinic may use: the loved one may not want to be
	// reached at all.
	if lo.GetMayContactDirectly() {
		if t := telecom(lo.GetContactChannels()); len(t) > 0 {
			p["telecom"] = t
		}
	}
	return part2(p, f.GetUpdateTime(), f.GetEtag())
}

var relationshipCodes = map[familiesv1.Relationship][2]string{
	familiesv1.Relationship_RELATIONSHIP_PARENT:            {"PRN", "parent"},
	familiesv1.Relationship_RELATIONSHIP_SPOUSE_OR_PARTNER: {"SIGOTHR", "significant other"},
	familiesv1.Relationship_RELATIONSHIP_SIBLING:           {"SIB", "sibling"},
	familiesv1.Relationship_RELATIONSHIP_CHILD:             {"CHILD", "child"},
	familiesv1.Relationship_RELATIONSHIP_GRANDPARENT:       {"GRPRN", "grandparent"},
	familiesv1.Relationship_RELATIONSHIP_OTHER_RELATIVE:    {"FAMMEMB", "family member"},
	familiesv1.Relationship_RELATIONSHIP_FRIEND:            {"FRND", "unrelated friend"},
}

func relationship(m *familiesv1.Member) []any {
	var out []any
	if c, ok := relationshipCodes[m.GetRelationship()]; ok {
		out = append(out, concept("", coding(sysRoleCode, c[0], c[1])))
	} else {
		out = append(out, concept("other"))
	}
	if m.GetRole() == familiesv1.MemberRole_MEMBER_ROLE_CONTACT_PERSON {
		out = append(out, concept("", coding(sysContactRole, "CP", "Contact person")))
	}
	return out
}

// relatedPerson is one member of the family's circle.
func relatedPerson(f *familiesv1.Family, m *familiesv1.Member) obj {
	fam := lastSegment(f.GetName())
	rp := obj{
		"resourceType": "RelatedPerson",
		"id":           pairID(fam, m.GetId()),
		"active":       f.GetState() != familiesv1.FamilyState_FAMILY_STATE_CLOSED,
		"patient":      ref("Patient", fam),
		"relationship": relationship(m),
		"name":         []any{humanName(m.GetGivenName(), m.GetFamilyName())},
	}
	if m.GetConsentToContact() {
		if t := telecom(m.GetContactChannels()); len(t) > 0 {
			rp["telecom"] = t
		}
	}
	// A member has no clock of its own; it changes with the family.
	return part2(rp, f.GetUpdateTime(), f.GetEtag())
}

// careTeam is the intervention network: the counselor and the circle.
func careTeam(f *familiesv1.Family) obj {
	fam := lastSegment(f.GetName())
	status := "active"
	if f.GetState() == familiesv1.FamilyState_FAMILY_STATE_CLOSED {
		status = "inactive"
	}
	var parts []any
	if f.GetCounselor() != "" {
		parts = append(parts, obj{"role": []any{concept("counselor")}, "member": userRef("Practitioner", f.GetCounselor())})
	}
	for _, m := range f.GetMembers() {
		parts = append(parts, obj{"role": relationship(m), "member": ref("RelatedPerson", pairID(fam, m.GetId()))})
	}
	ct := obj{
		"resourceType": "CareTeam",
		"id":           fam,
		"identifier":   identifier(f.GetName()),
		"status":       status,
		"name":         "Intervention network",
		"subject":      ref("Patient", fam),
	}
	if len(parts) > 0 {
		ct["participant"] = parts
	}
	if f.GetCreateTime() != nil {
		ct["period"] = obj{"start": instant(f.GetCreateTime())}
	}
	return part2(ct, f.GetUpdateTime(), f.GetEtag())
}

func serviceKind(k referralsv1.ServiceKind) obj {
	name := strings.TrimPrefix(k.String(), "SERVICE_KIND_")
	return concept(strings.ToLower(strings.ReplaceAll(name, "_", " ")), coding(sysServiceKind, name, ""))
}

// memberPatientID is the id of the Patient a member's ServiceRequest
// contains: the member, as the patient of that request.
const memberPatientID = "member"

// referralSubject is who a referral is for: the family's Patient, and for
// a member's own referral the member's RelatedPerson too.
func referralSubject(r *referralsv1.Referral) (patientRef obj, member obj) {
	fam := lastSegment(r.GetFamily())
	if r.GetSubject().GetKind() == referralsv1.SubjectKind_SUBJECT_KIND_FAMILY_MEMBER {
		return ref("Patient", fam), ref("RelatedPerson", pairID(fam, r.GetSubject().GetMemberId()))
	}
	return ref("Patient", fam), nil
}

// requester is who asks for a referral: the clinic, an Organization this
// server does not serve, named by its resource name. The closed-loop
// guides (Gravity's Task for referral management) require it on the Task,
// and the program's EHR files the request under it.
func requester(r *referralsv1.Referral) obj {
	return obj{"type": "Organization", "identifier": obj{"system": sysResourceName, "value": "clinics/" + aip.Clinic(r.GetName())}}
}

// serviceRequest is a referral as the request.
func serviceRequest(r *referralsv1.Referral) obj {
	status := "active"
	switch r.GetState() {
	case referralsv1.ReferralState_REFERRAL_STATE_COMPLETED:
		status = "completed"
	case referralsv1.ReferralState_REFERRAL_STATE_REJECTED, referralsv1.ReferralState_REFERRAL_STATE_CANCELLED:
		status = "revoked"
	case referralsv1.ReferralState_REFERRAL_STATE_ENTERED_IN_ERROR:
		status = "entered-in-error"
	}
	// ON_HOLD stays active: the program (the performer) paused its Task;
	// the request's own on-hold would mean the requester withdrew it.
	priority := "routine"
	switch r.GetUrgency() {
	case referralsv1.Urgency_URGENCY_IMMEDIATE:
		priority = "stat"
	case referralsv1.Urgency_URGENCY_URGENT:
		priority = "urgent"
	}
	subject, member := referralSubject(r)
	var contained []any
	if member != nil {
		// A member's own referral is the member's, not the loved one's:
		// with the family's Patient as its subject, an EHR filed the
		// member's MAT referral in the loved one's chart. FHIR wants a
		// Patient here, and the member has none of their own on this
		// server: the member is the patient of this request, contained,
		// linked to their RelatedPerson.
		subject = obj{"reference": "#" + memberPatientID}
		contained = []any{obj{"resourceType": "Patient", "id": memberPatientID,
			"link": []any{obj{"other": member, "type": "seealso"}}}}
	}
	sr := obj{
		"resourceType": "ServiceRequest",
		"id":           lastSegment(r.GetName()),
		"identifier":   identifier(r.GetName()),
		"status":       status,
		"intent":       "order",
		"priority":     priority,
		"code":         serviceKind(r.GetServiceKind()),
		"subject":      subject,
		"requester":    requester(r),
		"performer":    []any{ref("HealthcareService", lastSegment(r.GetProgram()))},
	}
	if contained != nil {
		sr["contained"] = contained
	}
	if r.GetReason() != "" {
		sr["reasonCode"] = []any{concept(r.GetReason())}
	}
	if r.GetCreateTime() != nil {
		sr["authoredOn"] = instant(r.GetCreateTime())
	}
	return part2(sr, r.GetUpdateTime(), r.GetEtag())
}

// BSeR business statuses by referral state.
var businessStatus = map[referralsv1.ReferralState][2]string{
	referralsv1.ReferralState_REFERRAL_STATE_REQUESTED: {"2.0", "Service Request Created"},
	referralsv1.ReferralState_REFERRAL_STATE_ACCEPTED:  {"3.0", "Service Request Accepted"},
	referralsv1.ReferralState_REFERRAL_STATE_REJECTED:  {"4.0", "Service Request Declined"},
	referralsv1.ReferralState_REFERRAL_STATE_SCHEDULED: {"5.1.1", "Service Request Event Scheduled"},
	referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW:   {"5.1.2", "Scheduled Service Request Event Unattended"},
	referralsv1.ReferralState_REFERRAL_STATE_COMPLETED: {"5.1.4", "Service Request Event Completed"},
	referralsv1.ReferralState_REFERRAL_STATE_CANCELLED: {"6.0", "Service Request Fulfillment Cancelled"},
}

// fulfilmentCompleted is the BSeR status of a referral completed without
// its intake appointment.
var fulfilmentCompleted = [2]string{"7.0", "Service Request Fulfillment Completed"}

// task is a referral as the receiving program's work item.
func task(r *referralsv1.Referral) obj {
	id := lastSegment(r.GetName())
	status := taskstatus.Of(r.GetState())
	// Task.for is whoever the service is for, any resource: a member's
	// own referral is the member's (RelatedPerson), not the loved one's,
	// so that the EHR does not file it in the loved one's chart.
	subject, member := referralSubject(r)
	if member != nil {
		subject = member
	}
	t := obj{
		"resourceType": "Task",
		"id":           id,
		"identifier":   identifier(r.GetName()),
		"basedOn":      []any{ref("ServiceRequest", id)},
		"status":       status,
		"intent":       "order",
		"code":         concept("Fulfill the service request", coding("http://hl7.org/fhir/CodeSystem/task-code", "fulfill", "Fulfill the focal request")),
		"focus":        ref("ServiceRequest", id),
		"for":          subject,
		"owner":        ref("HealthcareService", lastSegment(r.GetProgram())),
		"requester":    requester(r),
	}
	if bs, ok := businessStatus[r.GetState()]; ok {
		if intake.CompletedWithout(r) {
			// The event completed is the intake appointment: a person
			// admitted on the spot, or some other way than at the booked
			// intake, had none, and an EHR counting attended intakes
			// must not count one. The fulfilment as a whole did complete.
			bs = fulfilmentCompleted
		}
		t["businessStatus"] = concept(bs[1], coding(sysBSeRStatus, bs[0], bs[1]))
	} else if r.GetState() == referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD {
		t["businessStatus"] = concept("on hold") // BSeR has no code for it
	} else if r.GetState() == referralsv1.ReferralState_REFERRAL_STATE_ENTERED_IN_ERROR {
		t["businessStatus"] = concept("entered in error") // nor for this
	}
	if text := shownReason(r); text != "" {
		if r.GetState() == referralsv1.ReferralState_REFERRAL_STATE_REJECTED {
			t["statusReason"] = concept(text, coding(sysRejection, strings.TrimPrefix(r.GetRejection().GetReason().String(), "REJECTION_REASON_"), ""))
		} else {
			t["statusReason"] = concept(text)
		}
	}
	if r.GetCreateTime() != nil {
		t["authoredOn"] = instant(r.GetCreateTime())
	}
	if r.GetUpdateTime() != nil {
		t["lastModified"] = instant(r.GetUpdateTime())
	}
	if ia := r.GetIntakeAppointment(); ia.GetStartTime() != nil {
		period := obj{"start": instant(ia.GetStartTime())}
		if e := r.GetTreatmentEntryTime(); e != nil {
			period["end"] = instant(e)
			// Admitted before the booked time: the work ran up to the
			// admission, and a period may not end before it starts (per-1).
			if e.AsTime().Before(ia.GetStartTime().AsTime()) {
				period["start"] = instant(e)
			}
		}
		t["executionPeriod"] = period
		t["output"] = []any{obj{"type": concept("intake appointment"), "valueReference": ref("Appointment", intakePrefix+id)}}
	} else if e := r.GetTreatmentEntryTime(); e != nil {
		// Admitted on the spot, with no booking: the work was the
		// admission itself, as the EHR wrote it back (executionPeriod.end).
		t["executionPeriod"] = obj{"start": instant(e), "end": instant(e)}
	}
	return part2(t, r.GetUpdateTime(), r.GetEtag())
}

// intakeLength is the end given to an intake appointment: Handoff records
// only its start, and FHIR wants an end on a booked appointment (app-3).
const intakeLength = intake.Length

// intakeAppointment is a referral's intake appointment; nil when none was
// booked.
func intakeAppointment(r *referralsv1.Referral) obj {
	ia := r.GetIntakeAppointment()
	if ia.GetStartTime() == nil {
		return nil
	}
	id := lastSegment(r.GetName())
	status := "booked"
	switch r.GetState() {
	case referralsv1.ReferralState_REFERRAL_STATE_COMPLETED:
		status = "fulfilled"
		switch {
		case intake.CompletedFrom(r) == referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW:
			// Missed, then admitted some other way: it stays missed.
			status = "noshow"
		case intake.Superseded(r):
			status = "cancelled"
		}
	case referralsv1.ReferralState_REFERRAL_STATE_NO_SHOW:
		status = "noshow"
	case referralsv1.ReferralState_REFERRAL_STATE_CANCELLED, referralsv1.ReferralState_REFERRAL_STATE_REJECTED:
		status = "cancelled"
	case referralsv1.ReferralState_REFERRAL_STATE_ENTERED_IN_ERROR:
		status = "entered-in-error"
	case referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD:
		// The booked time will not happen, but the appointment is not
		// over: a rebooking books it again at its new time. R4's
		// cancelled is final; waitlist is one to be scheduled when a slot
		// is available, which is what the program's pause means.
		status = "waitlist"
	}
	subject, member := referralSubject(r)
	who := subject
	if member != nil {
		who = member
	}
	start := ia.GetStartTime().AsTime()
	a := obj{
		"resourceType":    "Appointment",
		"id":              intakePrefix + id,
		"status":          status,
		"appointmentType": concept("intake", coding(sysInterventionT, "intake", "Intake appointment")),
		"serviceType":     []any{serviceKind(r.GetServiceKind())},
		"description":     "Intake appointment",
		"start":           start.UTC().Format(instantLayout),
		"end":             start.Add(intakeLength).UTC().Format(instantLayout),
		"basedOn":         []any{ref("ServiceRequest", id)},
		"participant": []any{
			obj{"actor": who, "required": "required", "status": "accepted"},
			obj{"actor": ref("HealthcareService", lastSegment(r.GetProgram())), "required": "required", "status": "accepted"},
		},
	}
	if ia.GetNotes() != "" {
		a["patientInstruction"] = ia.GetNotes()
	}
	if ia.GetTelehealth() {
		a["comment"] = "By video or phone"
	}
	return part2(a, r.GetUpdateTime(), r.GetEtag())
}

// appointment is an intervention meeting.
func appointment(iv *interventionsv1.Intervention) obj {
	fam := lastSegment(iv.GetFamily())
	status := "proposed"
	switch iv.GetState() {
	case interventionsv1.InterventionState_INTERVENTION_STATE_SCHEDULED:
		status = "booked"
	case interventionsv1.InterventionState_INTERVENTION_STATE_COMPLETED:
		status = "fulfilled"
		if iv.GetOutcome().GetKind() == interventionsv1.OutcomeKind_OUTCOME_KIND_DID_NOT_ATTEND {
			status = "noshow"
		}
	case interventionsv1.InterventionState_INTERVENTION_STATE_CANCELLED:
		status = "cancelled"
	}
	// The EHR's view of an intervention has no level (consentgate.Appointment):
	// say nothing of it rather than guess.
	description := "Family intervention meeting"
	if iv.GetLevel() != interventionsv1.EscalationLevel_ESCALATION_LEVEL_UNSPECIFIED {
		description += " (level " + strings.TrimPrefix(iv.GetLevel().String(), "ESCALATION_LEVEL_LEVEL_") + ")"
	}
	parts := []any{
		// The meeting is for the loved one, who is invited, not booked.
		obj{"actor": ref("Patient", fam), "required": "required", "status": "needs-action"},
	}
	if iv.GetCounselor() != "" {
		parts = append(parts, obj{"actor": userRef("Practitioner", iv.GetCounselor()), "required": "required", "status": "accepted"})
	}
	for _, p := range iv.GetParticipants() {
		parts = append(parts, obj{"actor": ref("RelatedPerson", pairID(fam, p.GetMemberId())), "required": "required", "status": "accepted"})
	}
	a := obj{
		"resourceType":    "Appointment",
		"id":              lastSegment(iv.GetName()),
		"identifier":      identifier(iv.GetName()),
		"status":          status,
		"appointmentType": concept("family intervention", coding(sysInterventionT, "intervention", "Family intervention meeting")),
		"description":     description,
		"participant":     parts,
	}
	// A proposed or cancelled appointment may lack times (app-3); a
	// booked one has both.
	if iv.GetStartTime() != nil {
		start := iv.GetStartTime().AsTime()
		a["start"] = start.UTC().Format(instantLayout)
		d := iv.GetExpectedDuration().AsDuration()
		if d <= 0 {
			d = time.Hour
		}
		a["end"] = start.Add(d).UTC().Format(instantLayout)
		a["minutesDuration"] = int(d / time.Minute)
	}
	if iv.GetCreateTime() != nil {
		a["created"] = instant(iv.GetCreateTime())
	}
	if iv.GetState() == interventionsv1.InterventionState_INTERVENTION_STATE_CANCELLED && iv.GetCancelReason() != "" {
		a["cancelationReason"] = concept(iv.GetCancelReason())
	}
	return part2(a, iv.GetUpdateTime(), iv.GetEtag())
}

// ageEligibility says which ages a program takes, or "" for any.
func ageEligibility(minAge, maxAge int32) string {
	switch {
	case minAge > 0 && maxAge > 0:
		return fmt.Sprintf("Ages %d to %d", minAge, maxAge)
	case minAge > 0:
		return fmt.Sprintf("Ages %d and over", minAge)
	case maxAge > 0:
		return fmt.Sprintf("Ages up to %d", maxAge)
	}
	return ""
}

// healthcareService is a program of the clinic's directory. It is directory
// data, not a patient's record, so it carries no Part 2 label.
func healthcareService(p *referralsv1.Program) obj {
	hs := obj{
		"resourceType": "HealthcareService",
		"id":           lastSegment(p.GetName()),
		"identifier":   identifier(p.GetName()),
		// A deleted program that referrals still name is kept, inactive.
		"active": p.GetDeleteTime() == nil,
		"name":   p.GetDisplayName(),
	}
	if p.GetOrganization() != "" {
		hs["providedBy"] = obj{"display": p.GetOrganization()}
	}
	if p.GetDescription() != "" {
		hs["comment"] = p.GetDescription()
	}
	var types []any
	for _, k := range p.GetServices() {
		types = append(types, serviceKind(k))
	}
	if len(types) > 0 {
		hs["type"] = types
	}
	if p.GetPhone() != "" {
		hs["telecom"] = []any{obj{"system": "phone", "value": p.GetPhone(), "use": "work"}}
	}
	var langs []any
	for _, l := range p.GetLanguages() {
		langs = append(langs, concept("", coding(sysBCP47, l, "")))
	}
	if len(langs) > 0 {
		hs["communication"] = langs
	}
	var chars []any
	if p.GetSameDayIntake() {
		chars = append(chars, concept("same-day intake"))
	}
	if p.GetSameDayInduction() {
		chars = append(chars, concept("same-day medication start"))
	}
	if p.GetTelehealth() {
		chars = append(chars, concept("telehealth"))
	}
	if len(chars) > 0 {
		hs["characteristic"] = chars
	}
	if e := ageEligibility(p.GetMinAge(), p.GetMaxAge()); e != "" {
		hs["eligibility"] = []any{obj{"code": concept("age"), "comment": e}}
	}
	if p.GetHours() != "" {
		hs["availabilityExceptions"] = p.GetHours()
	}
	meta := obj{}
	if p.GetUpdateTime() != nil {
		meta["lastUpdated"] = instant(p.GetUpdateTime())
	}
	if p.GetEtag() != "" {
		meta["versionId"] = p.GetEtag()
	}
	if len(meta) > 0 {
		hs["meta"] = meta
	}
	return hs
}

var purposeCodes = map[familiesv1.Purpose][2]string{
	familiesv1.Purpose_PURPOSE_TREATMENT:              {"TREAT", "treatment"},
	familiesv1.Purpose_PURPOSE_PAYMENT:                {"HPAYMT", "healthcare payment"},
	familiesv1.Purpose_PURPOSE_HEALTH_CARE_OPERATIONS: {"HOPERAT", "healthcare operations"},
}

// informationTypes are the FHIR resource types each kind of information
// covers. Referrals include their intake appointments (Appointment
// intake-{referral}); appointments are the intervention meetings. A class
// names a type only, so a consent with either kind lists Appointment.
var informationTypes = map[familiesv1.InformationKind][]string{
	familiesv1.InformationKind_INFORMATION_KIND_IDENTITY:     {"Patient", "RelatedPerson", "CareTeam"},
	familiesv1.InformationKind_INFORMATION_KIND_REFERRALS:    {"ServiceRequest", "Task", "Appointment"},
	familiesv1.InformationKind_INFORMATION_KIND_APPOINTMENTS: {"Appointment"},
}

func recipientActor(recipient string) obj {
	return obj{
		"role":      concept("", coding(sysParticipation, "IRCP", "information recipient")),
		"reference": obj{"identifier": obj{"system": sysConsentActor, "value": recipient}, "display": recipient},
	}
}

// consent is a patient's Part 2 consent to disclose.
func consent(c *familiesv1.Consent) obj {
	fam := segment(c.GetName(), "families")
	status := "active"
	if c.GetState() != familiesv1.ConsentState_CONSENT_STATE_ACTIVE {
		status = "inactive"
	}
	var actors []any
	for _, r := range c.GetRecipients() {
		actors = append(actors, recipientActor(r))
	}
	if c.GetTreatingProviders() {
		actors = append(actors, obj{
			"role":      concept("", coding(sysParticipation, "IRCP", "information recipient")),
			"reference": obj{"display": "the patient's treating providers"},
		})
	}
	// A member's own consent covers the records whose subject is the
	// member (their referrals), not the Patient's. Its patient is the
	// member, contained and linked to their RelatedPerson, as a member's
	// ServiceRequest's is: with the family's Patient there, an EHR filed
	// the member's Part 2 consent in the loved one's chart, and could take
	// it for the loved one's permit. The member is named as the grantor
	// and as the subject the permit is limited to too.
	var member obj
	patient, contained := ref("Patient", fam), []any(nil)
	if m := c.GetMemberId(); m != "" {
		member = ref("RelatedPerson", pairID(fam, m))
		actors = append(actors, obj{"role": concept("", coding(sysParticipation, "SBJ", "subject")), "reference": member})
		patient = obj{"reference": "#" + memberPatientID}
		contained = []any{obj{"resourceType": "Patient", "id": memberPatientID,
			"link": []any{obj{"other": member, "type": "seealso"}}}}
	}
	var purposes []any
	for _, p := range c.GetPurposes() {
		if pc, ok := purposeCodes[p]; ok {
			purposes = append(purposes, coding(sysActReason, pc[0], pc[1]))
		}
	}
	var classes []any
	listed := map[string]bool{}
	for _, k := range c.GetInformation() {
		for _, t := range informationTypes[k] {
			if !listed[t] {
				listed[t] = true
				classes = append(classes, coding(sysResourceTypes, t, ""))
			}
		}
	}
	period := obj{}
	if c.GetSignTime() != nil {
		period["start"] = instant(c.GetSignTime())
	}
	if c.GetExpireTime() != nil {
		period["end"] = instant(c.GetExpireTime())
	}
	provision := obj{"type": "permit", "period": period}
	if len(actors) > 0 {
		provision["actor"] = actors
	}
	if len(purposes) > 0 {
		provision["purpose"] = purposes
	}
	if len(classes) > 0 {
		provision["class"] = classes
	}
	// Revocations for one recipient are exceptions to the permit.
	var denies []any
	for _, rv := range c.GetRevocations() {
		if rv.GetRecipient() == "" {
			continue
		}
		d := obj{"type": "deny", "actor": []any{recipientActor(rv.GetRecipient())}}
		if rv.GetRevokeTime() != nil {
			d["period"] = obj{"start": instant(rv.GetRevokeTime())}
		}
		denies = append(denies, d)
	}
	if len(denies) > 0 {
		provision["provision"] = denies
	}
	res := obj{
		"resourceType": "Consent",
		"id":           pairID(fam, lastSegment(c.GetName())),
		"identifier":   identifier(c.GetName()),
		"status":       status,
		"scope":        concept("", coding(sysConsentScope, "patient-privacy", "Privacy Consent")),
		"category": []any{
			concept("", coding(sysLOINC, "59284-0", "Patient Consent")),
			concept("", coding(sysActCode, "42CFRPart2", "42 CFR Part2")),
		},
		"patient":    patient,
		"policyRule": concept("", coding(sysActCode, "42CFRPart2", "42 CFR Part2")),
		"provision":  provision,
	}
	if contained != nil {
		res["contained"] = contained
	}
	if c.GetSignTime() != nil {
		res["dateTime"] = instant(c.GetSignTime())
	}
	var performers []any
	if member != nil {
		performers = append(performers, member)
	}
	if c.GetSigner() != "" {
		performers = append(performers, obj{"display": c.GetSigner()})
	}
	if len(performers) > 0 {
		res["performer"] = performers
	}
	if c.GetDiscloser() != "" {
		res["organization"] = []any{obj{"display": c.GetDiscloser()}}
	}
	return part2(res, c.GetUpdateTime(), c.GetEtag())
}

// shownReason is the text of the Task's statusReason: a rejection's
// details, or its reason's name; or the reason given for the pause, the
// cancellation or the void, so that an EHR that reads the Task and writes
// it back unchanged sends the statusReason the write requires.
func shownReason(r *referralsv1.Referral) string {
	switch st := r.GetState(); st {
	case referralsv1.ReferralState_REFERRAL_STATE_REJECTED:
		rej := r.GetRejection()
		if rej == nil {
			return ""
		}
		if d := rej.GetDetails(); d != "" {
			return d
		}
		return strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(rej.GetReason().String(), "REJECTION_REASON_"), "_", " "))
	case referralsv1.ReferralState_REFERRAL_STATE_ON_HOLD, referralsv1.ReferralState_REFERRAL_STATE_CANCELLED,
		referralsv1.ReferralState_REFERRAL_STATE_ENTERED_IN_ERROR:
		if h := r.GetHistory(); len(h) > 0 && h[len(h)-1].GetToState() == st {
			return h[len(h)-1].GetReason()
		}
	}
	return ""
}
