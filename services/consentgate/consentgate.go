// Package consentgate lets the services that do not hold consent records
// (referrals, interventions) ask the families service before an outside
// system reads one of their records. Reads by staff and the workflows happen
// inside the program and pass untouched; a read by the EHR integration is a
// disclosure under 42 CFR Part 2: it is checked against the patient's consent
// and recorded in the accounting, in one call, with the caller's own token
// so that the EHR can only disclose to itself.
package consentgate

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
)

// ReasonConsentRequired is the ErrorInfo reason of a refused disclosure
// (the families service's).
const ReasonConsentRequired = "CONSENT_REQUIRED"

// Notice is the statement every disclosure carries (42 CFR 2.32).
const Notice = "42 CFR part 2 prohibits unauthorized use or disclosure of these records."

// NoticeHeader is the response header (gRPC metadata; REST clients see it
// as Grpc-Metadata-Part2-Notice) that carries Notice on every answer that
// discloses records to an outside system.
const NoticeHeader = "part2-notice"

// Notify marks the answer of the call in ctx as a disclosure by adding
// NoticeHeader. Outside a gRPC server call (a client of the services, such
// as the FHIR handler, which labels its resources itself) it does nothing.
func Notify(ctx context.Context) {
	_ = grpc.SetHeader(ctx, metadata.Pairs(NoticeHeader, Notice))
}

// Discloser is the part of the families API the gate uses.
type Discloser interface {
	CreateDisclosure(ctx context.Context, in *familiesv1.CreateDisclosureRequest, opts ...grpc.CallOption) (*familiesv1.Disclosure, error)
	ListCoveredFamilies(ctx context.Context, in *familiesv1.ListCoveredFamiliesRequest, opts ...grpc.CallOption) (*familiesv1.ListCoveredFamiliesResponse, error)
	BatchCreateDisclosures(ctx context.Context, in *familiesv1.BatchCreateDisclosuresRequest, opts ...grpc.CallOption) (*familiesv1.BatchCreateDisclosuresResponse, error)
}

// Gate checks and records disclosures to outside callers.
type Gate struct {
	Families Discloser
}

// Outsider reports whether the caller in ctx is a system outside the
// program whose reads are disclosures, and returns it. Any token that holds
// the EHR role is one, whatever else it holds: a mapping in the identity
// provider that also grants a staff role must not switch the gate off.
func Outsider(ctx context.Context) (auth.Principal, bool) {
	p, ok := auth.FromContext(ctx)
	if !ok {
		return p, false
	}
	return p, p.Has(auth.RoleEHR)
}

// Appointment is what an outside system's consent to appointments covers of
// an intervention: when, with whom, in what state, and whether the loved
// one came. Plans, notes, the level, the checklist and the place stay in
// the program. Every way an intervention leaves the program (the API, FHIR,
// webhooks) cuts it to this.
func Appointment(iv *interventionsv1.Intervention) *interventionsv1.Intervention {
	a := &interventionsv1.Intervention{
		Name: iv.GetName(), Family: iv.GetFamily(), Counselor: iv.GetCounselor(), StartTime: iv.GetStartTime(),
		ExpectedDuration: iv.GetExpectedDuration(), TimeZone: iv.GetTimeZone(), State: iv.GetState(),
		Participants: iv.GetParticipants(), CreateTime: iv.GetCreateTime(), UpdateTime: iv.GetUpdateTime(), Etag: iv.GetEtag(),
		Published: iv.GetPublished(),
	}
	// Whether the loved one came, and nothing of what they said: an
	// accepted or declined treatment is the patient's decision about
	// treatment, more than an appointments consent covers. A meeting held
	// shows as COMPLETED without an outcome.
	if o := iv.GetOutcome(); o.GetKind() == interventionsv1.OutcomeKind_OUTCOME_KIND_DID_NOT_ATTEND {
		a.Outcome = &interventionsv1.Outcome{Kind: o.GetKind(), RecordTime: o.GetRecordTime()}
	}
	return a
}

// Reminder is a reminder as the reminder automation sees it, through the
// API and in its webhooks: whom, how, when, what to say and what it is
// about (the top-level record, by which it may group messages). Why it was
// cancelled ("the loved one accepted treatment"), the workflow that made
// it (mat-intake/..., overdose/...), its kind (OVERDOSE_ALERT,
// INTAKE_OVERDUE) and the record under a family it concerns (a warning
// sign) are the patient's record, which sending does not need: the
// message itself may name none of them.
func Reminder(rem *interventionsv1.Reminder) *interventionsv1.Reminder {
	if rem == nil {
		return nil
	}
	c := proto.Clone(rem).(*interventionsv1.Reminder)
	c.CancelReason, c.OriginWorkflow = "", ""
	c.Kind = interventionsv1.ReminderKind_REMINDER_KIND_UNSPECIFIED
	c.RelatedResource = TopResource(c.GetRelatedResource())
	return c
}

// TopResource is the top-level record a resource name belongs to:
// clinics/c/families/f of clinics/c/families/f/warningSigns/w; a name
// with no more than four segments is returned as it is.
func TopResource(name string) string {
	if parts := strings.SplitN(name, "/", 5); len(parts) == 5 {
		return strings.Join(parts[:4], "/")
	}
	return name
}

// TopResourceSQL is TopResource in SQL over column, for filters on what
// the automation sees.
func TopResourceSQL(column string) string {
	return `array_to_string((string_to_array(` + column + `, '/'))[1:4], '/')`
}

// Patient is whose record a disclosure is: a family's loved one (Member
// empty) or one of its members, for the member's own records. Each is
// covered by their own consent only.
type Patient struct {
	Family string // clinics/{clinic}/families/{family}
	Member string // the member's id within the family; empty for the loved one
}

// LovedOne is the patient of family's own records.
func LovedOne(family string) Patient { return Patient{Family: family} }

// ReferralPatient is whose record a referral is: the member's, for a
// referral made for a family member (family counseling, a support group),
// else the loved one's.
func ReferralPatient(r *referralsv1.Referral) Patient {
	if r.GetSubject().GetKind() == referralsv1.SubjectKind_SUBJECT_KIND_FAMILY_MEMBER {
		return Patient{Family: r.GetFamily(), Member: r.GetSubject().GetMemberId()}
	}
	return LovedOne(r.GetFamily())
}

// Check returns nil if the caller may receive resource, a record of the
// patient of the given kind, and records that it did. Without a covering
// consent it returns the families service's FAILED_PRECONDITION
// (CONSENT_REQUIRED). A requestID records one disclosure however often the
// call is retried; without one every call is a disclosure of its own.
func (g *Gate) Check(ctx context.Context, of Patient, resource string, info familiesv1.InformationKind, requestID string) error {
	return g.disclose(ctx, of, resource, info, requestID, false)
}

// Allowed is Check without the record: for a call that may still fail
// before its answer goes out, which checks first and calls Check once the
// answer is sure, so that the accounting lists only what left.
func (g *Gate) Allowed(ctx context.Context, of Patient, resource string, info familiesv1.InformationKind) error {
	return g.disclose(ctx, of, resource, info, "", true)
}

func (g *Gate) disclose(ctx context.Context, of Patient, resource string, info familiesv1.InformationKind, requestID string, validateOnly bool) error {
	p, out := Outsider(ctx)
	if !out {
		return nil
	}
	if g == nil || g.Families == nil {
		// Without the families service nothing can be disclosed.
		return status.Error(codes.Unavailable, "consent cannot be checked: the families service is not configured")
	}
	_, err := g.Families.CreateDisclosure(ctx, &familiesv1.CreateDisclosureRequest{
		Parent: of.Family,
		Disclosure: &familiesv1.Disclosure{
			Recipient: p.Subject, Information: info, Purpose: familiesv1.Purpose_PURPOSE_TREATMENT,
			Resource: resource, Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_API, MemberId: of.Member,
		},
		RequestId: requestID, ValidateOnly: validateOnly,
	})
	if err == nil {
		if !validateOnly {
			Notify(ctx)
		}
		return nil
	}
	if Refused(err) {
		// Pass the refusal on as it is: the caller needs its reason and
		// metadata.
		return err
	}
	// Anything else (the families service unreachable, a transport error
	// naming its address) is wrapped, so that the server answers with the
	// code and a message of its own (see grpcserver's fromDependency), not
	// the families service's or the network's words.
	return fmt.Errorf("check consent for %s: %w", resource, err)
}

// Refusal is the answer to an outside system whose patient's consent does
// not cover resource: it names the record and nothing else, not even the
// family it belongs to.
func Refusal(resource string) error {
	return apperr.FailedPrecondition(ReasonConsentRequired,
		"the patient's consent does not cover disclosing this record to you", map[string]string{"resource": resource})
}

// Unseen answers an outside system's read of a record that does not exist
// as one its consent does not cover: from the answer it must not learn
// whether a patient's record exists (a family deleted, a referral made
// after its consent was revoked). Anyone else, and any other error, gets
// err as it is.
func Unseen(ctx context.Context, resource string, err error) error {
	if _, out := Outsider(ctx); !out || status.Code(err) != codes.NotFound {
		return err
	}
	return Refusal(resource)
}

// Refused reports whether err is a refusal for want of consent.
func Refused(err error) bool {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.FailedPrecondition {
		return false
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() == ReasonConsentRequired {
			return true
		}
	}
	return false
}

// Scope is what an outside system may be shown of a clinic's records of
// one kind: the records of the loved ones of Families, and the members'
// own records of Members.
type Scope struct {
	// Families are the families, clinics/{clinic}/families/{family},
	// whose loved one's consent covers the kind.
	Families []string
	// MemberFamilies and MemberIDs are the members whose own consent
	// covers it, pair by pair: the family's name and the member's id, for
	// a list to match as (family, member_id) against their unnest.
	MemberFamilies, MemberIDs []string
}

// Covered returns what of the clinic parent's (`clinics/{clinic}`) records
// of info the caller may see, and true, when the caller is an outside
// system; for anyone else it returns false and the list need not be
// narrowed. A list narrows its query to the scope in SQL, so that its pages
// and page tokens reflect only what the caller may see.
func (g *Gate) Covered(ctx context.Context, parent string, info familiesv1.InformationKind) (Scope, bool, error) {
	if _, out := Outsider(ctx); !out {
		return Scope{}, false, nil
	}
	if g == nil || g.Families == nil {
		return Scope{}, true, status.Error(codes.Unavailable, "consent cannot be checked: the families service is not configured")
	}
	resp, err := g.Families.ListCoveredFamilies(ctx, &familiesv1.ListCoveredFamiliesRequest{Parent: parent, Information: info})
	if err != nil {
		return Scope{}, true, fmt.Errorf("list covered families: %w", err)
	}
	sc := Scope{Families: resp.GetFamilies()}
	for _, m := range resp.GetMembers() {
		sc.MemberFamilies = append(sc.MemberFamilies, m.GetFamily())
		sc.MemberIDs = append(sc.MemberIDs, m.GetMemberId())
	}
	return sc, true, nil
}

// Record records, in one call, that the caller received each item of a page
// (narrowed by Covered first) and returns the items whose disclosure was
// recorded, and the next page's token: one whose consent was revoked in
// the meantime is left out. patient and name give an item's patient and
// resource name; next is the page's token (pgdb.ListPage), keyed by the
// page's last item. An item left out must not be named by the token: it
// is keyed by the last item kept instead, and the next page reads the
// rest again, narrowed by then. A page left with nothing is ABORTED, for
// the caller to read again.
func Record[T any](ctx context.Context, g *Gate, parent string, items []T, next string, info familiesv1.InformationKind,
	patient func(T) Patient, name func(T) string) ([]T, string, error) {
	p, out := Outsider(ctx)
	if !out || len(items) == 0 {
		return items, next, nil
	}
	if g == nil || g.Families == nil {
		return nil, "", status.Error(codes.Unavailable, "consent cannot be checked: the families service is not configured")
	}
	req := &familiesv1.BatchCreateDisclosuresRequest{Parent: parent}
	for _, it := range items {
		of := patient(it)
		req.Requests = append(req.Requests, &familiesv1.CreateDisclosureRequest{Parent: of.Family, Disclosure: &familiesv1.Disclosure{
			Recipient: p.Subject, Information: info, Purpose: familiesv1.Purpose_PURPOSE_TREATMENT,
			Resource: name(it), Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_API, MemberId: of.Member,
		}})
	}
	resp, err := g.Families.BatchCreateDisclosures(ctx, req)
	if err != nil {
		return nil, "", fmt.Errorf("record disclosures: %w", err)
	}
	recorded := make(map[string]bool, len(resp.GetDisclosures()))
	for _, d := range resp.GetDisclosures() {
		recorded[d.GetResource()] = true
	}
	kept := items[:0:0]
	for _, it := range items {
		if recorded[name(it)] {
			kept = append(kept, it)
		}
	}
	if len(kept) > 0 {
		Notify(ctx)
	}
	lastKept := ""
	if len(kept) > 0 {
		lastKept = name(kept[len(kept)-1])
	}
	next, err = RekeyPage(next, len(items), len(kept), name(items[len(items)-1]), lastKept)
	if err != nil {
		return nil, "", err
	}
	return kept, next, nil
}

// RekeyPage is next, the token of a page whose read items ended with
// lastRead, for the page as shown once some were left out (their consent
// revoked before their disclosure record): kept of the read, ending with
// lastKept (names or ids). The token, base64 and not sealed, must not
// name an item left out: it is keyed by the last item kept, and the next
// page reads the rest again. A page left with nothing is ABORTED, for the
// caller to read again.
func RekeyPage(next string, read, kept int, lastRead, lastKept string) (string, error) {
	switch {
	case next == "" || kept == read:
		return next, nil
	case kept == 0:
		return "", status.Error(codes.Aborted, "a consent changed while the page was read: read it again")
	case aip.ID(lastKept) != aip.ID(lastRead):
		return aip.RekeyPageToken(next, aip.ID(lastKept)), nil
	}
	return next, nil
}
