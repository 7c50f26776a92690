package families

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/consentgate"
	"github.com/handoff-health/handoff/services/idempotency"
	"github.com/handoff-health/handoff/services/pgdb"
)

// Notice is the statement every disclosure carries (42 CFR 2.32).
const Notice = consentgate.Notice

// ReasonConsentRequired is the ErrorInfo reason of a refused disclosure;
// the services that ask families recognise it by the gate's constant.
const ReasonConsentRequired = consentgate.ReasonConsentRequired

// consentCovers is the condition under which consent c covers a
// disclosure now: the consent of the patient whose record it is (the loved
// one's, or the member's own), signed, not expired, not revoked whole or
// for the recipient, naming the recipient (or, for treatment only and where
// {general} holds, the general designation "my treating providers"), and
// listing the information and the purpose. Its placeholders are SQL
// expressions filled in by covers, so that single checks, batches and
// lists embed the same text and cannot disagree.
const consentCovers = `c.clinic = {clinic} AND c.family_id = {family} AND c.member_id = {member}
	  AND c.revoke_time IS NULL AND c.sign_time <= {now} AND c.expire_time > {now}
	  AND {info}::smallint = ANY (c.information) AND {purpose}::smallint = ANY (c.purposes)
	  AND ({recipient}::text = ANY (c.recipients) OR (c.treating_providers AND {general} AND {purpose}::smallint = {treatment}))
	  AND NOT EXISTS (SELECT 1 FROM consent_revocations r
		WHERE r.clinic = c.clinic AND r.family_id = c.family_id AND r.consent_id = c.id AND r.recipient IN ('', {recipient}::text))`

// coverArgs are the SQL expressions for consentCovers' placeholders;
// general says whether the recipient may be one of the patient's treating
// providers, "true" when it is the caller itself (the EHR).
type coverArgs struct{ clinic, family, member, recipient, info, purpose, now, general string }

// covers returns consentCovers over a's expressions.
func covers(a coverArgs) string {
	return strings.NewReplacer("{clinic}", a.clinic, "{family}", a.family, "{member}", a.member, "{recipient}", a.recipient,
		"{info}", a.info, "{purpose}", a.purpose, "{now}", a.now, "{general}", a.general,
		// The general designation covers treatment only.
		"{treatment}", strconv.Itoa(int(familiesv1.Purpose_PURPOSE_TREATMENT))).Replace(consentCovers)
}

// generalSQL decides, for a disclosure being recorded, whether the general
// designation can cover it: not for a webhook, which pushes records to a
// subscriber Handoff cannot tell to be a treating provider (the reminder
// automation is a vendor, not one); a webhook needs a consent naming its
// subscriber. The EHR reading through the API, and staff sending a
// referral to a program, disclose to providers that treat the patient.
var generalSQL = fmt.Sprintf("t.channel <> %d", int16(familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_WEBHOOK))

// coveringConsent selects the oldest consent that covers a disclosure.
func coveringConsent(a coverArgs) string {
	return `SELECT c.id FROM consents c WHERE ` + covers(a) + ` ORDER BY c.create_time, c.id LIMIT 1`
}

// consentRefused is the answer when no consent covers a disclosure.
func consentRefused(family, member, recipient string, info familiesv1.InformationKind, purpose familiesv1.Purpose) error {
	whose, meta := family, map[string]string{"family": family, "recipient": recipient, "information": info.String(), "purpose": purpose.String()}
	if member != "" {
		// A member's own record needs the member's own consent: say so,
		// or staff would look for the loved one's and find it in force.
		whose = fmt.Sprintf("member %q of %s", member, family)
		meta["member_id"] = member
	}
	return apperr.FailedPrecondition(ReasonConsentRequired,
		fmt.Sprintf("no active consent of %s covers disclosing %s to %q for %s", whose, info, recipient, purpose), meta)
}

// outsider reports whether the caller is a system outside the clinic whose
// reads are disclosures: the EHR integration. Staff and the workflows act
// inside the program.
func outsider(ctx context.Context) (auth.Principal, bool) { return consentgate.Outsider(ctx) }

// pending is one disclosure to check and record.
type pending struct {
	family, member, id, recipient, resource string
	info, purpose, channel                  int16
}

func pendingOf(family string, d *familiesv1.Disclosure) pending {
	return pending{family: family, member: d.GetMemberId(), id: aip.NewID(), recipient: d.GetRecipient(), resource: d.GetResource(),
		info: int16(d.GetInformation()), purpose: int16(d.GetPurpose()), channel: int16(d.GetChannel())}
}

// record checks each disclosure against its family's consents and records,
// in one statement, those a consent covers. It returns the covering consent
// of each recorded disclosure, by disclosure id; the others are not
// recorded. Every disclosure Handoff records goes through here. A dry run
// records nothing and answers which would be.
func (s *Server) record(ctx context.Context, q pgdb.Querier, clinic string, ps []pending, now time.Time, dryRun bool) (map[string]string, error) {
	n := len(ps)
	fams, members, ids, recipients, resources := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	infos, purposes, channels := make([]int16, n), make([]int16, n), make([]int16, n)
	for i, p := range ps {
		fams[i], members[i], ids[i], recipients[i], resources[i] = p.family, p.member, p.id, p.recipient, p.resource
		infos[i], purposes[i], channels[i] = p.info, p.purpose, p.channel
	}
	// The insert's arguments after the lookup's, so that a dry run sends
	// the lookup alone with the same numbering.
	args := []any{clinic, now, fams, ids, recipients, infos, purposes, resources, channels, members, auth.Actor(ctx)}
	from := `FROM unnest($3::text[], $4::text[], $5::text[], $6::smallint[], $7::smallint[], $8::text[], $9::smallint[], $10::text[])
			AS t (fam, id, recipient, info, purpose, res, channel, member)
		CROSS JOIN LATERAL (` + coveringConsent(coverArgs{"$1", "t.fam", "t.member", "t.recipient", "t.info", "t.purpose", "$2", generalSQL}) + `) c`
	sql := `INSERT INTO disclosures (clinic, family_id, id, recipient, information, purpose, resource,
			channel, consent_id, discloser, disclose_time, member_id)
		SELECT $1, t.fam, t.id, t.recipient, t.info, t.purpose, t.res, t.channel, c.id, $11, $2, t.member ` + from + `
		RETURNING id, consent_id`
	if dryRun {
		sql, args = `SELECT t.id, c.id `+from, args[:10]
	}
	if _, tx := q.(pgx.Tx); tx {
		// A revocation locks its consent until it commits. The families'
		// consents are share-locked first, in a statement of their own: a
		// revocation in progress is waited for, and the statement below,
		// which takes its snapshot after, sees it; one begun after waits
		// for this disclosure to commit. Otherwise a disclosure could go
		// out after a revocation had answered that it took effect. A dry
		// run in a transaction (a retry's recheck) locks too: its answer
		// lets a stored disclosure go out again.
		locked, err := q.Query(ctx, `SELECT 1 FROM consents WHERE clinic = $1 AND family_id = ANY($2::text[]) FOR SHARE`, clinic, fams)
		if err == nil {
			locked.Close()
			err = locked.Err()
		}
		if err != nil {
			return nil, fmt.Errorf("record disclosures: lock consents: %w", err)
		}
	}
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("record disclosures: %w", err)
	}
	consentOf := map[string]string{}
	var id, consent string
	if _, err := pgx.ForEachRow(rows, []any{&id, &consent}, func() error { consentOf[id] = consent; return nil }); err != nil {
		return nil, fmt.Errorf("record disclosures: %w", err)
	}
	return consentOf, nil
}

// recordTx records disclosures in a transaction of their own, so that the
// call's audit record commits with them (pgdb.Stamp).
func (s *Server) recordTx(ctx context.Context, clinic string, ps []pending, now time.Time) (map[string]string, error) {
	var consentOf map[string]string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		consentOf, err = s.record(ctx, tx, clinic, ps, now, false)
		return err
	})
	return consentOf, err
}

// disclosed is the answer for a recorded disclosure.
func disclosed(ctx context.Context, family, id, consent string, d *familiesv1.Disclosure, now time.Time) *familiesv1.Disclosure {
	return &familiesv1.Disclosure{
		Name: aip.Name(family, "disclosures", id), Recipient: d.GetRecipient(), Information: d.GetInformation(),
		Purpose: d.GetPurpose(), Resource: d.GetResource(), Channel: d.GetChannel(), MemberId: d.GetMemberId(),
		Consent: aip.Name(family, "consents", consent), Discloser: auth.Actor(ctx), DiscloseTime: timestamppb.New(now), Notice: Notice,
	}
}

// discloseTx checks that a consent covers one disclosure and records it,
// or answers CONSENT_REQUIRED.
func (s *Server) discloseTx(ctx context.Context, q pgdb.Querier, c child, d *familiesv1.Disclosure, dryRun bool) (*familiesv1.Disclosure, error) {
	now := s.cfg.Now()
	p := pendingOf(c.family, d)
	if tx, ok := q.(pgx.Tx); ok && !dryRun {
		// The audit record names the disclosure, and goes with the next
		// statement; a refusal rolls both back.
		pgdb.StampNames(tx, aip.Name(c.familyName(), "disclosures", p.id))
	}
	consentOf, err := s.record(ctx, q, c.clinic, []pending{p}, now, dryRun)
	if err != nil {
		return nil, err
	}
	consent, ok := consentOf[p.id]
	if !ok {
		if _, out := outsider(ctx); out {
			// An outside system learns nothing from a refusal, not even
			// which family the record belongs to.
			return nil, consentgate.Refusal(d.GetResource())
		}
		if pr, _ := auth.FromContext(ctx); pr.Has(auth.RoleCounselor, auth.RoleClinicAdmin) {
			// Staff learn that a family does not exist, as the lists tell
			// them: a mistyped name is not a missing consent. A family
			// deleted since keeps its consents (42 CFR 2.31), and its
			// refusals stay refusals.
			if unknown, err := familyUnknown(ctx, q, c); err != nil || unknown {
				return nil, cmp.Or(err, apperr.NotFound(c.familyName()))
			}
		}
		return nil, consentRefused(c.familyName(), d.GetMemberId(), d.GetRecipient(), d.GetInformation(), d.GetPurpose())
	}
	out := disclosed(ctx, c.familyName(), p.id, consent, d, now)
	if dryRun {
		out.Name = "" // nothing was recorded under a name
	}
	return out, nil
}

// checkDisclosure adds d's violations under field: a disclosure names its
// recipient (an outside system only itself), a record of clinic, and what
// it is, what for and how it leaves.
func checkDisclosure(ctx context.Context, vs *apperr.Violations, field, clinic, family string, d *familiesv1.Disclosure) {
	p, out := outsider(ctx)
	switch {
	case strings.TrimSpace(d.GetRecipient()) == "":
		// Spaces name no one, and the record would stand in the
		// accounting of disclosures for good.
		vs.Add(field+".recipient", "is required")
	case out && d.GetRecipient() != p.Subject:
		// It cannot borrow a consent given to someone else.
		vs.Add(field+".recipient", "must be the caller (%q): an integration discloses only to itself", p.Subject)
	}
	if !aip.ValidName(d.GetResource()) {
		// Read as "another service's record" below, a malformed name
		// would pass the family check it cannot be held to.
		vs.Add(field+".resource", "must be a resource name, clinics/%s/{collection}/{id}...", clinic)
	} else if aip.Clinic(d.GetResource()) != clinic {
		vs.Add(field+".resource", "must be a record of clinic %q", clinic)
	} else if fam := aip.Family(d.GetResource()); fam != "" && fam != familyName(clinic, family) {
		// The family's consent answers for the family's records only;
		// records of other services (referrals, interventions) are named
		// by their own id, which their service checked.
		vs.Add(field+".resource", "must be a record of the family the disclosure is recorded for")
	}
	if d.GetInformation() == familiesv1.InformationKind_INFORMATION_KIND_UNSPECIFIED {
		vs.Add(field+".information", "is required")
	}
	if d.GetPurpose() == familiesv1.Purpose_PURPOSE_UNSPECIFIED {
		vs.Add(field+".purpose", "is required")
	}
	if d.GetChannel() == familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_UNSPECIFIED {
		vs.Add(field+".channel", "is required")
	}
	if pr, _ := auth.FromContext(ctx); pr.Has(auth.RoleWebhookSender) && !pr.Has(auth.RoleCounselor, auth.RoleClinicAdmin) {
		// The sender serves every clinic: it records what it sends, a
		// notification for treatment, and nothing else (not a fax, not a
		// payment), however its token is used.
		if d.GetChannel() != familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_WEBHOOK {
			vs.Add(field+".channel", "must be WEBHOOK: the webhook sender records only the notifications it sends")
		}
		if d.GetPurpose() != familiesv1.Purpose_PURPOSE_TREATMENT {
			vs.Add(field+".purpose", "must be TREATMENT: the webhook sender sends for treatment")
		}
	}
	if out {
		// An integration records only its own reads through the API, for
		// treatment (what the services' consent gate sends): the
		// accounting is append-only, and an entry it made up (a fax, a
		// payment) could never be taken back.
		if c := d.GetChannel(); c != familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_API && c != familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_UNSPECIFIED {
			vs.Add(field+".channel", "must be API: an integration records only its own reads")
		}
		if p := d.GetPurpose(); p != familiesv1.Purpose_PURPOSE_TREATMENT && p != familiesv1.Purpose_PURPOSE_UNSPECIFIED {
			vs.Add(field+".purpose", "must be TREATMENT: an integration reads for treatment")
		}
		// Nor a read of something the API does not give under that kind
		// (a safety screen as an identity read, say).
		if !readable(d, familyName(clinic, family)) {
			vs.Add(field+".resource", "must be what an integration reads under %s: the family itself for IDENTITY, "+
				"a referral for REFERRALS, an intervention for APPOINTMENTS", d.GetInformation())
		}
	}
	// A member's own records that leave Handoff are referrals made for the
	// member; the family and its meetings are the loved one's, and a
	// member's consent covers referrals only: any other kind could never
	// be covered, and staff would look for a consent that cannot exist.
	if d.GetMemberId() != "" && d.GetInformation() != familiesv1.InformationKind_INFORMATION_KIND_REFERRALS &&
		d.GetInformation() != familiesv1.InformationKind_INFORMATION_KIND_UNSPECIFIED {
		vs.Add(field+".member_id", "may be set only for REFERRALS: a member's own records that leave Handoff are referrals made for the member")
	}
}

// readable reports whether an integration reads d's resource under d's
// kind of information through the API, as the services' consent gates
// record it: the family itself, a referral, an intervention.
func readable(d *familiesv1.Disclosure, family string) bool {
	switch d.GetInformation() {
	case familiesv1.InformationKind_INFORMATION_KIND_IDENTITY:
		return d.GetResource() == family
	case familiesv1.InformationKind_INFORMATION_KIND_REFERRALS:
		_, err := aip.Parse(d.GetResource(), "clinics", "referrals")
		return err == nil
	case familiesv1.InformationKind_INFORMATION_KIND_APPOINTMENTS:
		_, err := aip.Parse(d.GetResource(), "clinics", "interventions")
		return err == nil
	}
	return true // no kind: refused as required
}

// discloseToCaller gates a read by an outside system (the EHR) on consent
// and records it; reads by staff and the workflows pass untouched.
func (s *Server) discloseToCaller(ctx context.Context, c child, info familiesv1.InformationKind, resource string) error {
	p, out := outsider(ctx)
	if !out {
		return nil
	}
	// In a transaction, so that the call's audit record commits with the
	// disclosure (pgdb.Stamp): the accounting never holds a disclosure the
	// audit trail lacks.
	if err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		_, err := s.discloseTx(ctx, tx, c, &familiesv1.Disclosure{
			Recipient: p.Subject, Information: info, Purpose: familiesv1.Purpose_PURPOSE_TREATMENT,
			Resource: resource, Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_API,
		}, false)
		return err
	}); err != nil {
		return err
	}
	consentgate.Notify(ctx)
	return nil
}

// CreateDisclosure implements the API.
func (s *Server) CreateDisclosure(ctx context.Context, req *familiesv1.CreateDisclosureRequest) (*familiesv1.Disclosure, error) {
	c, err := parentFamily(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	d := req.GetDisclosure()
	var vs apperr.Violations
	checkDisclosure(ctx, &vs, "disclosure", c.clinic, c.family, d)
	if err := vs.Err(); err != nil {
		return nil, err
	}
	if req.GetValidateOnly() {
		return s.discloseTx(ctx, s.pool, c, d, true)
	}
	// A retry is answered from the record of the first call without
	// running it again, so it is checked again: it would say "covered"
	// after a revocation that came in between, and the retry may be what
	// sends the record (a fax that failed); a revocation counts at once.
	// The consent the record names must still cover it: if another does
	// now (a renewal), the disclosure is recorded again under that one,
	// so that the accounting does not name a consent revoked or expired
	// before the record went out.
	return idempotency.InTxRechecked(ctx, s.pool, c.clinic, svc+"CreateDisclosure", req.GetRequestId(), req,
		func() *familiesv1.Disclosure { return &familiesv1.Disclosure{} },
		func(tx pgx.Tx) (*familiesv1.Disclosure, error) { return s.discloseTx(ctx, tx, c, d, false) },
		func(tx pgx.Tx, stored *familiesv1.Disclosure) error {
			dry, err := s.discloseTx(ctx, tx, c, d, true)
			if err != nil {
				return err
			}
			if dry.GetConsent() == stored.GetConsent() {
				return nil // the consent that covers it now is the one it names
			}
			still, err := s.stillCovers(ctx, tx, c, d, aip.ID(stored.GetConsent()))
			if err != nil {
				return err
			}
			if !still {
				return idempotency.ErrRerun
			}
			return nil
		})
}

// stillCovers reports whether consent id, which a stored disclosure names,
// covers d now. The caller has share-locked the family's consents (a dry
// run of record does), so a revocation in progress was waited for.
func (s *Server) stillCovers(ctx context.Context, tx pgx.Tx, c child, d *familiesv1.Disclosure, id string) (bool, error) {
	general := "true"
	if d.GetChannel() == familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_WEBHOOK {
		general = "false" // as generalSQL decides
	}
	var ok bool
	err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM consents c WHERE c.id = $7 AND `+
		covers(coverArgs{"$1", "$2", "$8", "$3", "$4", "$5", "$6", general})+`)`,
		c.clinic, c.family, d.GetRecipient(), int16(d.GetInformation()), int16(d.GetPurpose()), s.cfg.Now(), id, d.GetMemberId()).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("recheck the stored disclosure's consent: %w", err)
	}
	return ok, nil
}

const disclosureSelect = `SELECT id, recipient, information, purpose, resource, channel, consent_id, discloser, disclose_time, member_id FROM disclosures`

func scanDisclosure(fam string) pgx.RowToFunc[*familiesv1.Disclosure] {
	return func(r pgx.CollectableRow) (*familiesv1.Disclosure, error) {
		var (
			id, recipient, resource, consent, discloser, member string
			info, purpose, channel                              int16
			at                                                  time.Time
		)
		if err := r.Scan(&id, &recipient, &info, &purpose, &resource, &channel, &consent, &discloser, &at, &member); err != nil {
			return nil, err
		}
		return &familiesv1.Disclosure{
			Name: aip.Name(fam, "disclosures", id), Recipient: recipient, Information: familiesv1.InformationKind(info),
			Purpose: familiesv1.Purpose(purpose), Resource: resource, Channel: familiesv1.DisclosureChannel(channel),
			Consent: aip.Name(fam, "consents", consent), Discloser: discloser, DiscloseTime: timestamppb.New(at), Notice: Notice,
			MemberId: member,
		}, nil
	}
}

// disclosureFilter are the fields a list of disclosures filters on: one
// patient's accounting (member_id; "" is the loved one's), one recipient's,
// a period's.
var disclosureFilter = map[string]aip.FilterField{
	"member_id":     {Column: "member_id", Kind: aip.String},
	"recipient":     {Column: "recipient", Kind: aip.String},
	"disclose_time": {Column: "disclose_time", Kind: aip.Time},
}

// ListDisclosures implements the API. The accounting is kept after the
// family is deleted, so a missing family is not an error.
func (s *Server) ListDisclosures(ctx context.Context, req *familiesv1.ListDisclosuresRequest) (*familiesv1.ListDisclosuresResponse, error) {
	c, err := parentFamily(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	items, next, err := pgdb.ListPage(ctx, s.pool, "disclosures", disclosureSelect, "clinic = $1 AND family_id = $2",
		[]any{c.clinic, c.family}, req, disclosureFilter,
		scanDisclosure(c.familyName()), (*familiesv1.Disclosure).GetName)
	if err != nil {
		return nil, err
	}
	if err := s.emptyForStaff(ctx, len(items), c); err != nil {
		return nil, err
	}
	return &familiesv1.ListDisclosuresResponse{Disclosures: items, NextPageToken: next}, nil
}

// --- Consents ---

const consentSelect = `SELECT c.id, c.discloser, c.information, c.recipients, c.treating_providers, c.purposes,
	c.expire_time, c.signer, c.sign_time, c.recorder, c.revoke_time, c.create_time, c.update_time, c.version, c.member_id,
	COALESCE((SELECT jsonb_agg(jsonb_build_object('recipient', r.recipient, 'reason', r.reason, 'recorder', r.recorder,
		'revoke_time', r.revoke_time) ORDER BY r.seq)
		FROM consent_revocations r WHERE r.clinic = c.clinic AND r.family_id = c.family_id AND r.consent_id = c.id), '[]'),
	c.family_id
	FROM consents c`

type revocationRow struct {
	Recipient  string    `json:"recipient"`
	Reason     string    `json:"reason"`
	Recorder   string    `json:"recorder"`
	RevokeTime time.Time `json:"revoke_time"`
}

// scanConsent scans a consent of the family fam, or, for fam
// clinics/{clinic}/families/-, of the family its row names.
func (s *Server) scanConsent(fam string) pgx.RowToFunc[*familiesv1.Consent] {
	now := s.cfg.Now()
	return func(r pgx.CollectableRow) (*familiesv1.Consent, error) {
		var (
			id, discloser, signer, recorder  string
			familyID                         string
			member                           string
			info, purposes                   []int16
			recipients                       []string
			treating                         bool
			expire, signed, created, updated time.Time
			revoked                          *time.Time
			version                          int64
			revocations                      []revocationRow
		)
		if err := r.Scan(&id, &discloser, &info, &recipients, &treating, &purposes, &expire, &signer, &signed,
			&recorder, &revoked, &created, &updated, &version, &member, &revocations, &familyID); err != nil {
			return nil, err
		}
		parent := fam
		if every, ok := strings.CutSuffix(fam, "/-"); ok {
			parent = every + "/" + familyID
		}
		c := &familiesv1.Consent{
			Name: aip.Name(parent, "consents", id), Discloser: discloser, Recipients: recipients, TreatingProviders: treating,
			ExpireTime: timestamppb.New(expire), Signer: signer, SignTime: timestamppb.New(signed),
			RevocationRightStated: true, Recorder: recorder, CreateTime: timestamppb.New(created),
			UpdateTime: timestamppb.New(updated), Etag: aip.Etag(version), MemberId: member,
		}
		for _, k := range info {
			c.Information = append(c.Information, familiesv1.InformationKind(k))
		}
		for _, p := range purposes {
			c.Purposes = append(c.Purposes, familiesv1.Purpose(p))
		}
		for _, rv := range revocations {
			c.Revocations = append(c.Revocations, &familiesv1.Revocation{
				Recipient: rv.Recipient, Reason: rv.Reason, Recorder: rv.Recorder, RevokeTime: timestamppb.New(rv.RevokeTime),
			})
		}
		switch {
		case revoked != nil:
			c.State = familiesv1.ConsentState_CONSENT_STATE_REVOKED
		case !expire.After(now):
			c.State = familiesv1.ConsentState_CONSENT_STATE_EXPIRED
			markExpired(c)
		default:
			c.State = familiesv1.ConsentState_CONSENT_STATE_ACTIVE
		}
		return c, nil
	}
}

func (s *Server) readConsent(ctx context.Context, q pgdb.Querier, c child, lock bool) (*familiesv1.Consent, error) {
	if lock {
		// The lock is taken on its own, before the read: a statement that
		// waited for the lock reads the row as it now is but the
		// revocations as they were when it began, so it would miss those
		// the transaction it waited for added.
		var one int
		err := q.QueryRow(ctx, `SELECT 1 FROM consents WHERE clinic = $1 AND family_id = $2 AND id = $3 FOR UPDATE`,
			c.clinic, c.family, c.id).Scan(&one)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, apperr.NotFound(aip.Name(c.familyName(), "consents", c.id))
		}
		if err != nil {
			return nil, fmt.Errorf("lock consent: %w", err)
		}
	}
	rows, err := q.Query(ctx, consentSelect+` WHERE c.clinic = $1 AND c.family_id = $2 AND c.id = $3`, c.clinic, c.family, c.id)
	return pgdb.One(rows, err, aip.Name(c.familyName(), "consents", c.id), s.scanConsent(c.familyName()))
}

func checkConsent(vs *apperr.Violations, c *familiesv1.Consent, now time.Time) {
	// A name of spaces is no name: a consent must say who discloses, to
	// whom, and who signed (42 CFR 2.31).
	if strings.TrimSpace(c.GetDiscloser()) == "" {
		vs.Add("consent.discloser", "is required: who may disclose")
	}
	for i, r := range c.GetRecipients() {
		switch {
		case strings.TrimSpace(r) == "":
			vs.Add(fmt.Sprintf("consent.recipients[%d]", i), "is blank: name the recipient")
		case strings.TrimSpace(r) != r:
			// Recipients are matched as spelt: "ehr-1 " would read as
			// naming the EHR and cover none of its reads.
			vs.Add(fmt.Sprintf("consent.recipients[%d]", i), "has spaces around it: name the recipient as it identifies itself")
		}
	}
	if len(c.GetInformation()) == 0 {
		vs.Add("consent.information", "is required: what may be disclosed")
	}
	if len(c.GetPurposes()) == 0 {
		vs.Add("consent.purposes", "is required: what the disclosures are for")
	}
	if len(c.GetRecipients()) == 0 && !c.GetTreatingProviders() {
		vs.Add("consent.recipients", "name at least one recipient, or set treating_providers")
	}
	if c.GetTreatingProviders() && len(c.GetPurposes()) > 0 && !slices.Contains(c.GetPurposes(), familiesv1.Purpose_PURPOSE_TREATMENT) {
		// The general designation covers treatment only: without a
		// treatment purpose it would cover nothing, yet show the consent
		// to every treating provider's system and keep it active after
		// every named recipient was revoked.
		vs.Add("consent.purposes", "must include PURPOSE_TREATMENT when treating_providers is set: the patient's treating providers are designated for treatment only")
	}
	if strings.TrimSpace(c.GetSigner()) == "" {
		vs.Add("consent.signer", "is required")
	}
	if c.GetSignTime() == nil {
		vs.Add("consent.sign_time", "is required")
	} else if c.GetSignTime().AsTime().After(now.Add(time.Minute)) {
		vs.Add("consent.sign_time", "must not be in the future")
	} else {
		tooEarly(vs, "consent.sign_time", c.GetSignTime().AsTime())
	}
	if c.GetExpireTime() == nil {
		vs.Add("consent.expire_time", "is required: a Part 2 consent states when it ends")
	} else if !c.GetExpireTime().AsTime().After(now) {
		vs.Add("consent.expire_time", "must be in the future")
	} else if c.GetSignTime() != nil && !c.GetExpireTime().AsTime().Truncate(time.Microsecond).After(c.GetSignTime().AsTime().Truncate(time.Microsecond)) {
		// Compared as stored, to the microsecond: two times apart by less
		// would be equal in the table and break its CHECK.
		vs.Add("consent.expire_time", "must be after sign_time")
	} else if c.GetSignTime() != nil && c.GetExpireTime().AsTime().After(c.GetSignTime().AsTime().AddDate(MaxConsentYears, 0, 0)) {
		// A slip of a digit (2206 for 2026) would make an authorization
		// for ever, which this one row decides every disclosure by.
		vs.Add("consent.expire_time", "must be at most %d years after sign_time: record a new consent when this one ends", MaxConsentYears)
	}
	if !c.GetRevocationRightStated() {
		vs.Add("consent.revocation_right_stated", "must be true: the patient must be told of the right to revoke")
	}
	if c.GetMemberId() != "" && slices.ContainsFunc(c.GetInformation(), func(k familiesv1.InformationKind) bool {
		return k != familiesv1.InformationKind_INFORMATION_KIND_REFERRALS
	}) {
		// The family and its meetings are the loved one's records: a
		// member's consent to them would read ACTIVE and cover nothing.
		vs.Add("consent.information", "must be REFERRALS only for a member's consent: a member's own records are the referrals made for them")
	}
}

// CreateConsent implements the API.
func (s *Server) CreateConsent(ctx context.Context, req *familiesv1.CreateConsentRequest) (*familiesv1.Consent, error) {
	c, err := parentFamily(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	// A retry answers as its first call did, even once the consent that
	// call made has expired, which the clock checks below would refuse.
	if out, ok, err := idempotency.Stored(ctx, s.pool, c.clinic, svc+"CreateConsent", req.GetRequestId(), req,
		func() *familiesv1.Consent { return &familiesv1.Consent{} }); ok || err != nil {
		return out, err
	}
	in := req.GetConsent()
	now := s.cfg.Now()
	var vs apperr.Violations
	checkConsent(&vs, in, now)
	if err := vs.Err(); err != nil {
		return nil, err
	}
	info := make([]int16, 0, len(in.GetInformation()))
	for _, k := range in.GetInformation() {
		info = append(info, int16(k))
	}
	purposes := make([]int16, 0, len(in.GetPurposes()))
	for _, p := range in.GetPurposes() {
		purposes = append(purposes, int16(p))
	}
	slices.Sort(info)
	slices.Sort(purposes)
	recipients := in.GetRecipients()
	if recipients == nil {
		recipients = []string{}
	}
	// A signature up to a minute ahead (another clock) counts from now:
	// stored ahead, the consent would read ACTIVE while covering nothing.
	signed := in.GetSignTime().AsTime()
	if signed.After(now) {
		signed = now
	}
	return idempotency.InTx(ctx, s.pool, c.clinic, svc+"CreateConsent", req.GetRequestId(), req,
		func() *familiesv1.Consent { return &familiesv1.Consent{} },
		func(tx pgx.Tx) (*familiesv1.Consent, error) {
			if m := in.GetMemberId(); m == "" {
				if err := requireFamily(ctx, tx, c); err != nil {
					return nil, err
				}
			} else {
				// The family's share lock and its member ids in one read: a
				// member removed meanwhile waits, or is gone.
				var member bool
				err := tx.QueryRow(ctx, `SELECT COALESCE(doc -> 'members', '[]'::jsonb) @> jsonb_build_array(jsonb_build_object('id', $3::text))
					FROM families WHERE clinic = $1 AND id = $2 FOR SHARE`, c.clinic, c.family, m).Scan(&member)
				switch {
				case errors.Is(err, pgx.ErrNoRows):
					return nil, apperr.NotFound(c.familyName())
				case err != nil:
					return nil, fmt.Errorf("read the family's members: %w", err)
				case !member:
					return nil, apperr.Field("consent.member_id", "names no member of %s", c.familyName())
				}
			}
			c.id = aip.NewID()
			if _, err := tx.Exec(ctx, `INSERT INTO consents (clinic, family_id, id, discloser, information, recipients,
				treating_providers, purposes, expire_time, signer, sign_time, recorder, create_time, update_time, member_id)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14)`,
				c.clinic, c.family, c.id, in.GetDiscloser(), info, recipients, in.GetTreatingProviders(), purposes,
				in.GetExpireTime().AsTime(), in.GetSigner(), signed, auth.Actor(ctx), now, in.GetMemberId()); err != nil {
				return nil, fmt.Errorf("insert consent: %w", err)
			}
			out, err := s.readConsent(ctx, tx, c, false)
			if err != nil {
				return nil, err
			}
			return out, emit(ctx, tx, c.clinic, "consent.created", out.GetName(), out)
		})
}

// MaxConsentYears is the longest a consent may run from its signing.
// Part 2 sets no term; ten years is past any treatment episode and short
// of an expiry mistyped by a century.
const MaxConsentYears = 10

// visibleToCaller reports whether the caller may see consent co: staff see
// every consent; an outside system sees only those that name it or the
// treating-providers designation, so it learns nothing of consents given to
// others. Under the designation alone, not one revoked for it: a patient
// may shut a provider out before it reads their records, and the consent
// would tell it that they are a client of the program.
func visibleToCaller(ctx context.Context, co *familiesv1.Consent) bool {
	p, out := outsider(ctx)
	if !out || slices.Contains(co.GetRecipients(), p.Subject) {
		return true
	}
	return co.GetTreatingProviders() &&
		!slices.ContainsFunc(co.GetRevocations(), func(r *familiesv1.Revocation) bool { return r.GetRecipient() == p.Subject })
}

// GetConsent implements the API.
func (s *Server) GetConsent(ctx context.Context, req *familiesv1.GetConsentRequest) (*familiesv1.Consent, error) {
	c, err := authorizedChild(ctx, "name", req.GetName(), "consents")
	if err != nil {
		return nil, err
	}
	co, err := s.readConsent(ctx, s.pool, c, false)
	if err != nil {
		return nil, err
	}
	if !visibleToCaller(ctx, co) {
		return nil, apperr.NotFound(req.GetName())
	}
	return forCaller(ctx, co), nil
}

// forCaller is what an outside system may see of a consent that concerns
// it: what it covers and for how long, and its own part of it. The signer,
// the other recipients, who recorded it and the patient's reasons for
// revoking stay in the program.
func forCaller(ctx context.Context, co *familiesv1.Consent) *familiesv1.Consent {
	p, out := outsider(ctx)
	if !out {
		return co
	}
	// The version and update time are the caller's part's own: a consent
	// changes only by revocations, and one for another recipient must not
	// show as a newer version, or a later update time, of this view (it
	// would tell that other recipients exist, and when one was revoked).
	// The view is at version 1 when signed, plus one for each revocation
	// it shows.
	mine := &familiesv1.Consent{
		Name: co.GetName(), Discloser: co.GetDiscloser(), Information: co.GetInformation(), Purposes: co.GetPurposes(),
		TreatingProviders: co.GetTreatingProviders(), ExpireTime: co.GetExpireTime(), SignTime: co.GetSignTime(),
		RevocationRightStated: co.GetRevocationRightStated(), State: co.GetState(),
		CreateTime: co.GetCreateTime(), UpdateTime: co.GetCreateTime(), MemberId: co.GetMemberId(),
	}
	version := int64(1)
	if slices.Contains(co.GetRecipients(), p.Subject) {
		mine.Recipients = []string{p.Subject}
	}
	for _, r := range co.GetRevocations() {
		if r.GetRecipient() == "" || r.GetRecipient() == p.Subject {
			version++
			if r.GetRevokeTime().AsTime().After(mine.GetUpdateTime().AsTime()) {
				mine.UpdateTime = r.GetRevokeTime()
			}
			mine.Revocations = append(mine.Revocations, &familiesv1.Revocation{Recipient: r.GetRecipient(), RevokeTime: r.GetRevokeTime()})
			if r.GetRecipient() == p.Subject && mine.State == familiesv1.ConsentState_CONSENT_STATE_ACTIVE {
				// Revoked for this caller: for it, the consent is over.
				mine.State = familiesv1.ConsentState_CONSENT_STATE_REVOKED
			}
		}
	}
	mine.Etag = aip.Etag(version)
	markExpired(mine)
	return mine
}

// markExpired gives an EXPIRED consent's version and update time the
// change of state at its expiry, which no write made: a reader holding the
// active copy by its etag, or polling by update time (FHIR's
// _lastUpdated), sees the change.
func markExpired(c *familiesv1.Consent) {
	if c.GetState() != familiesv1.ConsentState_CONSENT_STATE_EXPIRED {
		return
	}
	c.Etag += "-expired"
	if c.GetExpireTime().AsTime().After(c.GetUpdateTime().AsTime()) {
		c.UpdateTime = c.GetExpireTime()
	}
}

// consentFilter are the fields a list of consents filters on: when each
// last changed as the caller is shown it, for a caller that polls (the
// EHR, for consents that newly name it). An outside system's view moves
// only with the revocations it sees (forCaller), which $subject, the
// number of its subject among the list's arguments, names ("" for staff);
// either view moves to the expiry once expired (markExpired), by the
// service's clock, the one scanConsent goes by, which the argument at
// names.
func consentFilter(subject, at string) map[string]aip.FilterField {
	shown := "c.update_time"
	if subject != "" {
		shown = `GREATEST(c.create_time, COALESCE((SELECT max(r.revoke_time) FROM consent_revocations r
			WHERE r.clinic = c.clinic AND r.family_id = c.family_id AND r.consent_id = c.id AND r.recipient IN ('', ` + subject + `::text)), c.create_time))`
	}
	return map[string]aip.FilterField{"update_time": {Kind: aip.Time,
		Column: `(CASE WHEN c.revoke_time IS NULL AND c.expire_time <= ` + at + ` THEN GREATEST(` + shown + `, c.expire_time) ELSE ` + shown + ` END)`},
		// "" for the loved one's own consents, a member's id for theirs.
		"member_id": {Column: "c.member_id", Kind: aip.String}}
}

// ListConsents implements the API. The parent clinics/{clinic}/families/-
// lists the consents of every family of the clinic (AIP-159), so that an
// outside system polling with an update_time filter learns of a consent
// that now names it: the records it then covers changed before it, and a
// poll of them by their own update time would pass them over.
func (s *Server) ListConsents(ctx context.Context, req *familiesv1.ListConsentsRequest) (*familiesv1.ListConsentsResponse, error) {
	every := strings.HasSuffix(req.GetParent(), "/families/-")
	var c child
	var err error
	if every {
		ids, perr := aip.Parse(strings.TrimSuffix(req.GetParent(), "/families/-"), "clinics")
		if perr != nil {
			return nil, apperr.Field("parent", "%v", perr)
		}
		c = child{clinic: ids[0], family: "-"}
		err = auth.CheckClinic(ctx, c.clinic, req.GetParent())
	} else {
		c, err = parentFamily(ctx, req.GetParent())
	}
	if err != nil {
		return nil, err
	}
	scope, args := "c.clinic = $1 AND c.family_id = $2", []any{c.clinic, c.family}
	if every {
		scope, args = "c.clinic = $1", []any{c.clinic}
	}
	subject := ""
	if p, out := outsider(ctx); out {
		// Filtered in SQL so that pages stay full and tokens never point
		// past consents the caller may not see.
		subject = fmt.Sprintf("$%d", len(args)+1)
		revoked := `EXISTS (SELECT 1 FROM consent_revocations r WHERE r.clinic = c.clinic AND r.family_id = c.family_id
			AND r.consent_id = c.id AND r.recipient = ` + subject + `::text)`
		if every {
			// Across the clinic, not one revoked for the caller: a
			// patient who shut a provider out (in advance, too) is not
			// named to it as one of the program's by this list.
			scope += " AND (c.treating_providers OR " + subject + "::text = ANY (c.recipients)) AND NOT " + revoked
		} else {
			// Under the designation alone, not one revoked for the
			// caller (visibleToCaller).
			scope += " AND (" + subject + "::text = ANY (c.recipients) OR c.treating_providers AND NOT " + revoked + ")"
		}
		args = append(args, p.Subject)
	}
	// The clock as an argument, not in the text: the poll's statement
	// stays the same from call to call, and prepared once. Only with a
	// filter on update_time, which alone reads it: an argument the
	// statement never reads has no type PostgreSQL can give it. (A filter
	// that does not parse is refused by ListPage before any statement.)
	now := ""
	if f, err := aip.ParseFilter(req.GetFilter(), consentFilter(subject, "")); err == nil && f.Names("update_time") {
		now = fmt.Sprintf("$%d::timestamptz", len(args)+1)
		args = append(args, s.cfg.Now().UTC().Truncate(time.Microsecond))
	}
	items, next, err := pgdb.ListPage(ctx, s.pool, "consents", consentSelect, scope, args, req, consentFilter(subject, now),
		s.scanConsent(c.familyName()), (*familiesv1.Consent).GetName)
	if err != nil {
		return nil, err
	}
	if !every {
		if err := s.emptyForStaff(ctx, len(items), c); err != nil {
			return nil, err
		}
	}
	for i, co := range items {
		items[i] = forCaller(ctx, co)
	}
	return &familiesv1.ListConsentsResponse{Consents: items, NextPageToken: next}, nil
}

// RevokeConsent implements the API.
func (s *Server) RevokeConsent(ctx context.Context, req *familiesv1.RevokeConsentRequest) (*familiesv1.Consent, error) {
	c, err := authorizedChild(ctx, "name", req.GetName(), "consents")
	if err != nil {
		return nil, err
	}
	// Revocation is idempotent by nature, so it takes no request id.
	return idempotency.InTx(ctx, s.pool, c.clinic, svc+"RevokeConsent", "", req,
		func() *familiesv1.Consent { return &familiesv1.Consent{} }, func(tx pgx.Tx) (*familiesv1.Consent, error) {
			co, err := s.readConsent(ctx, tx, c, true)
			if err != nil {
				return nil, err
			}
			recipient := req.GetRecipient()
			// Spelt as a consent recorded before such names were refused
			// holds it, it names that recipient; but not under the
			// treating-providers designation, which would go on covering
			// the provider spelt without the spaces.
			if strings.TrimSpace(recipient) != recipient && (co.GetTreatingProviders() || !slices.Contains(co.GetRecipients(), recipient)) {
				// Under the treating-providers designation a name nobody
				// was disclosed to may be shut out: " ehr-1" would be
				// taken, and ehr-1 go on reading.
				return nil, apperr.Field("recipient", "has spaces around it: name the recipient as it identifies itself")
			}
			if recipient != "" && !co.GetTreatingProviders() && !slices.Contains(co.GetRecipients(), recipient) {
				return nil, apperr.Field("recipient", "%q is not a recipient of %s", recipient, req.GetName())
			}
			if recipient != "" && co.GetTreatingProviders() && !slices.Contains(co.GetRecipients(), recipient) {
				// The general designation names no one, so any text would
				// pass: a misspelt identity would be stored as revoked while
				// the provider meant goes on reading. A provider is named as
				// the clinic's accounting knows it, from any family's
				// disclosures: a patient may shut out one that has read
				// others' records before it reads theirs.
				var known bool
				if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM disclosures WHERE clinic = $1 AND recipient = $2)`,
					c.clinic, recipient).Scan(&known); err != nil {
					return nil, fmt.Errorf("revoke consent: %w", err)
				}
				// Unless the caller says the name is meant: a patient may shut
				// out a provider the clinic has not disclosed to yet.
				if !known && !req.GetRecipientUnlisted() {
					return nil, apperr.Field("recipient", "%q has received nothing from this clinic: name a provider as the accounting of disclosures lists it, set recipient_unlisted to revoke for a provider not yet disclosed to, or revoke the whole consent", recipient)
				}
			}
			// Revoking what is already revoked changes nothing: a retry whose
			// first answer was lost gets the consent, not a stale-etag error.
			if co.GetState() == familiesv1.ConsentState_CONSENT_STATE_REVOKED {
				return co, nil
			}
			for _, r := range co.GetRevocations() {
				if recipient != "" && r.GetRecipient() == recipient {
					return co, nil
				}
			}
			if err := aip.CheckEtag(req.GetName(), req.GetEtag(), co.GetEtag()); err != nil {
				return nil, err
			}
			now := s.cfg.Now()
			if _, err := tx.Exec(ctx, `INSERT INTO consent_revocations (clinic, family_id, consent_id, recipient, reason, recorder, revoke_time)
			VALUES ($1, $2, $3, $4, $5, $6, $7)`, c.clinic, c.family, c.id, recipient, req.GetReason(), auth.Actor(ctx), now); err != nil {
				return nil, fmt.Errorf("revoke consent: %w", err)
			}
			whole := "NULL"
			if recipient == "" || (!co.GetTreatingProviders() && allRevoked(co, recipient)) {
				// Revoked for everyone it names: the consent covers no one.
				whole = "$4"
			}
			if _, err := tx.Exec(ctx, `UPDATE consents SET revoke_time = COALESCE(revoke_time, `+whole+`::timestamptz),
			update_time = $4, version = version + 1 WHERE clinic = $1 AND family_id = $2 AND id = $3`,
				c.clinic, c.family, c.id, now); err != nil {
				return nil, fmt.Errorf("revoke consent: %w", err)
			}
			out, err := s.readConsent(ctx, tx, c, false)
			if err != nil {
				return nil, err
			}
			return out, emit(ctx, tx, c.clinic, "consent.revoked", out.GetName(), out)
		})
}

// allRevoked reports whether every named recipient of co is revoked once
// recipient is.
func allRevoked(co *familiesv1.Consent, recipient string) bool {
	gone := map[string]bool{recipient: true}
	for _, r := range co.GetRevocations() {
		gone[r.GetRecipient()] = true
	}
	for _, r := range co.GetRecipients() {
		if !gone[r] {
			return false
		}
	}
	return true
}

// discloseFamilies records that the caller received the identity of each
// of fams (ids) and returns the ones a consent covered; a family whose
// consent was revoked since it was listed is left out.
func (s *Server) discloseFamilies(ctx context.Context, clinic string, fams []string, recipient string) (map[string]bool, error) {
	ps := make([]pending, len(fams))
	for i, f := range fams {
		ps[i] = pendingOf(f, &familiesv1.Disclosure{Recipient: recipient, Information: familiesv1.InformationKind_INFORMATION_KIND_IDENTITY,
			Purpose: familiesv1.Purpose_PURPOSE_TREATMENT, Resource: familyName(clinic, f), Channel: familiesv1.DisclosureChannel_DISCLOSURE_CHANNEL_API})
	}
	consentOf, err := s.recordTx(ctx, clinic, ps, s.cfg.Now())
	if err != nil {
		return nil, err
	}
	ok := make(map[string]bool, len(consentOf))
	for _, p := range ps {
		if _, recorded := consentOf[p.id]; recorded {
			ok[p.family] = true
		}
	}
	return ok, nil
}

// TreatmentConsent is a consent to disclose everything Handoff holds about
// a patient to recipient, for treatment, for a year from now: what a clinic
// records so that its own EHR integration may read. The demonstration
// clinic, the stack tests and the benchmarks record it.
func TreatmentConsent(discloser, recipient, signer string, now time.Time) *familiesv1.Consent {
	return &familiesv1.Consent{
		Discloser: discloser,
		Information: []familiesv1.InformationKind{familiesv1.InformationKind_INFORMATION_KIND_IDENTITY,
			familiesv1.InformationKind_INFORMATION_KIND_REFERRALS, familiesv1.InformationKind_INFORMATION_KIND_APPOINTMENTS},
		Recipients:            []string{recipient},
		Purposes:              []familiesv1.Purpose{familiesv1.Purpose_PURPOSE_TREATMENT},
		ExpireTime:            timestamppb.New(now.AddDate(1, 0, 0)),
		Signer:                signer,
		SignTime:              timestamppb.New(now.Add(-time.Minute)),
		RevocationRightStated: true,
	}
}

// ListCoveredFamilies implements the API. It answers for the caller: an
// outside system learns which families it may receive records of, nothing
// about consents given to others.
func (s *Server) ListCoveredFamilies(ctx context.Context, req *familiesv1.ListCoveredFamiliesRequest) (*familiesv1.ListCoveredFamiliesResponse, error) {
	clinic, err := parseClinic(req.GetParent())
	if err != nil {
		return nil, err
	}
	if err := auth.CheckClinic(ctx, clinic, req.GetParent()); err != nil {
		return nil, err
	}
	if req.GetInformation() == familiesv1.InformationKind_INFORMATION_KIND_UNSPECIFIED {
		return nil, apperr.Field("information", "is required")
	}
	// Every family of the clinic: the family is the consent's own. A
	// deleted family's consents outlive it (the accounting needs them), and
	// still cover the records it leaves: its referrals, which go on, and
	// its meetings, cancelled with it. The lists of those keep showing
	// them to the EHR, which learns of the cancellation and the referral's
	// next steps only there; the family's identity is gone, and listed no
	// more.
	// The loved ones' consents and the members' own, each covering its
	// patient's records: c.member_id is matched against itself.
	rows, err := s.pool.Query(ctx, `SELECT DISTINCT c.family_id, c.member_id FROM consents c WHERE `+
		covers(coverArgs{"$1", "c.family_id", "c.member_id", "$2", "$3", "$4", "$5", "true"})+
		` AND ($3 <> $6 OR EXISTS (SELECT 1 FROM families f WHERE f.clinic = c.clinic AND f.id = c.family_id))`,
		clinic, auth.Actor(ctx), int16(req.GetInformation()), int16(familiesv1.Purpose_PURPOSE_TREATMENT), s.cfg.Now(),
		int16(familiesv1.InformationKind_INFORMATION_KIND_IDENTITY))
	if err != nil {
		return nil, fmt.Errorf("list covered families: %w", err)
	}
	out := &familiesv1.ListCoveredFamiliesResponse{Families: []string{}}
	var id, member string
	if _, err := pgx.ForEachRow(rows, []any{&id, &member}, func() error {
		if member == "" {
			out.Families = append(out.Families, familyName(clinic, id))
		} else {
			out.Members = append(out.Members, &familiesv1.CoveredMember{Family: familyName(clinic, id), MemberId: member})
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list covered families: %w", err)
	}
	return out, nil
}

// BatchCreateDisclosures implements the API: one statement checks and
// records every disclosure a consent covers; the rest are left out.
func (s *Server) BatchCreateDisclosures(ctx context.Context, req *familiesv1.BatchCreateDisclosuresRequest) (*familiesv1.BatchCreateDisclosuresResponse, error) {
	clinic, err := parseClinic(req.GetParent())
	if err != nil {
		return nil, err
	}
	if err := auth.CheckClinic(ctx, clinic, req.GetParent()); err != nil {
		return nil, err
	}
	ps := make([]pending, len(req.GetRequests()))
	var vs apperr.Violations
	for i, r := range req.GetRequests() {
		field := fmt.Sprintf("requests[%d]", i)
		ids, err := aip.Parse(r.GetParent(), "clinics", "families")
		if err != nil || ids[0] != clinic {
			vs.Add(field+".parent", "must be a family of %s", req.GetParent())
			continue
		}
		checkDisclosure(ctx, &vs, field+".disclosure", clinic, ids[1], r.GetDisclosure())
		// A batch is recorded as one and has no dry run: fields that would
		// mean otherwise for one request are refused, not ignored.
		if r.GetRequestId() != "" {
			vs.Add(field+".request_id", "is not taken in a batch")
		}
		if r.GetValidateOnly() {
			vs.Add(field+".validate_only", "is not taken in a batch: a batch records what is covered")
		}
		ps[i] = pendingOf(ids[1], r.GetDisclosure())
	}
	if err := vs.Err(); err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	consentOf, err := s.recordTx(ctx, clinic, ps, now)
	if err != nil {
		return nil, err
	}
	resp := &familiesv1.BatchCreateDisclosuresResponse{}
	for i, r := range req.GetRequests() {
		if consent, ok := consentOf[ps[i].id]; ok {
			resp.Disclosures = append(resp.Disclosures, disclosed(ctx, r.GetParent(), ps[i].id, consent, r.GetDisclosure(), now))
		}
	}
	return resp, nil
}

// Views of a family, by who asks.
const (
	viewWhole = iota
	viewEHR
	viewCalendar
	viewWorker
	viewDelivery
)

// familyView is which view of a family the caller gets: the EHR's identity
// view, the calendar reader's names and times, the worker's record without
// the safety screen, the reminder automation's who-may-be-contacted, or
// the whole record.
func familyView(ctx context.Context) int {
	p, ok := auth.FromContext(ctx)
	switch {
	case !ok:
		return viewWhole
	case p.Has(auth.RoleEHR):
		return viewEHR
	case p.Has(auth.RoleCalendarReader) && !p.Has(auth.RoleCounselor, auth.RoleClinicAdmin, auth.RoleWorker):
		return viewCalendar
	case p.WorkerOnly():
		return viewWorker
	case p.Has(auth.RoleReminders) && !p.Has(auth.RoleCounselor, auth.RoleClinicAdmin, auth.RoleWorker):
		return viewDelivery
	}
	return viewWhole
}

// outsideState is a family's state as an outside system sees it: open or
// closed, as FHIR's Patient.active says. That the loved one entered
// treatment is more than an identity consent covers.
func outsideState(st familiesv1.FamilyState) familiesv1.FamilyState {
	if st == familiesv1.FamilyState_FAMILY_STATE_ENGAGED_IN_TREATMENT {
		return familiesv1.FamilyState_FAMILY_STATE_ACTIVE
	}
	return st
}

// sharedChanged reports whether a change of a family changes what an
// outside system sees of it (the EHR's view, its version and update time
// aside). When it does not, the view keeps its version: an etag or update
// time that moved with a change it cannot see would tell it that one
// happened (an overdose, a coverage change, entering treatment).
func sharedChanged(before, after *familiesv1.Family) bool {
	view := func(f *familiesv1.Family) *familiesv1.Family {
		v := outsideView(f)
		v.UpdateTime, v.Etag = nil, ""
		return v
	}
	return !proto.Equal(view(before), view(after))
}

// familyForCaller is the minimum necessary of a family for the caller. An
// outside system's consent covers identity: who the patient and the family
// are and how to reach them, not the substance, coverage, urgency or safety
// screens. The calendar reader needs only which families a counselor has.
func familyForCaller(ctx context.Context, f *familiesv1.Family) *familiesv1.Family {
	switch familyView(ctx) {
	case viewEHR:
		return outsideView(f)
	case viewCalendar:
		// Which families a counselor's feed covers, and nothing more: the
		// reader serves every clinic, and a state (in treatment) or an
		// update time (moved by an overdose or a screen) would tell of
		// the loved one.
		return &familiesv1.Family{Name: f.GetName(), Counselor: f.GetCounselor()}
	case viewDelivery:
		// The reminder automation (and the interventions service, on its
		// claims) asks who may still be contacted, and where: the channels
		// of those who may, and nothing of those who may not. Not names,
		// state, urgency, or a version whose moves would tell of changes.
		lo := f.GetLovedOne()
		out := &familiesv1.Family{Name: f.GetName(), LovedOne: &familiesv1.LovedOne{MayContactDirectly: lo.GetMayContactDirectly()}}
		if f.GetState() == familiesv1.FamilyState_FAMILY_STATE_CLOSED {
			// The clinic no longer contacts a closed family's people: no
			// one may be, which says no more than a withdrawn consent.
			out.LovedOne.MayContactDirectly = false
			for _, m := range f.GetMembers() {
				out.Members = append(out.Members, &familiesv1.Member{Id: m.GetId()})
			}
			return out
		}
		if lo.GetMayContactDirectly() {
			out.LovedOne.ContactChannels = lo.GetContactChannels()
		}
		for _, m := range f.GetMembers() {
			v := &familiesv1.Member{Id: m.GetId(), ConsentToContact: m.GetConsentToContact()}
			if m.GetConsentToContact() {
				v.ContactChannels, v.PreferredChannel = m.GetContactChannels(), m.GetPreferredChannel()
			}
			out.Members = append(out.Members, v)
		}
		return out
	case viewWorker:
		// The workflows act on what the screen allows (safety_screen_status:
		// current, a high risk, missing or expired), never on what it
		// recorded: its notes ("her partner threatened her"), answers and
		// who screened stay with the staff, as the screens' history does
		// (the policy). So do the notes of the barriers and warning signs
		// it lists: the workflows read their kinds and times alone.
		if f.GetLatestSafetyScreen() != nil {
			f = proto.Clone(f).(*familiesv1.Family)
			f.LatestSafetyScreen = nil
		}
	}
	return f
}

// outsideView is what an outside system's identity consent covers of a
// family: who the patient and the family are and how to reach them.
func outsideView(f *familiesv1.Family) *familiesv1.Family {
	lo := f.GetLovedOne()
	out := &familiesv1.Family{
		Name: f.GetName(),
		LovedOne: &familiesv1.LovedOne{GivenName: lo.GetGivenName(), FamilyName: lo.GetFamilyName(), PreferredName: lo.GetPreferredName(),
			BirthDate: lo.GetBirthDate(), Pronouns: lo.GetPronouns(),
			MayContactDirectly: lo.GetMayContactDirectly(), TimeZone: lo.GetTimeZone()},
		Counselor: f.GetCounselor(), State: outsideState(f.GetState()), FirstContactTime: f.GetFirstContactTime(),
		CreateTime: f.GetCreateTime(), UpdateTime: f.GetUpdateTime(), Etag: f.GetEtag(),
	}
	// How to reach someone only where the clinic may use it, as FHIR
	// shows it: the loved one may have asked not to be contacted, a
	// member may not have agreed to be.
	if lo.GetMayContactDirectly() {
		out.LovedOne.ContactChannels = lo.GetContactChannels()
	}
	for _, m := range f.GetMembers() {
		if !m.GetConsentToContact() {
			m = proto.Clone(m).(*familiesv1.Member)
			m.ContactChannels, m.PreferredChannel = nil, familiesv1.ChannelKind_CHANNEL_KIND_UNSPECIFIED
		}
		out.Members = append(out.Members, m)
	}
	return out
}

// emptyForStaff tells staff, on an empty page, that a family of which
// nothing is kept (no row, no consent, no disclosure) does not exist,
// where an outside system learns nothing from an empty list, whose family
// may exist.
func (s *Server) emptyForStaff(ctx context.Context, n int, c child) error {
	if _, out := outsider(ctx); out || n > 0 {
		return nil
	}
	// A family deleted keeps its consents and its accounting (42 CFR 2.31,
	// 2.24): a filter none of them matches is an empty page, as it is for
	// a family still there, not a family not found.
	if unknown, err := familyUnknown(ctx, s.pool, c); err != nil || unknown {
		return cmp.Or(err, apperr.NotFound(c.familyName()))
	}
	return nil
}

// familyUnknown reports whether nothing is kept of c's family: no row, no
// consent, no disclosure. A family deleted keeps its consents and its
// accounting (42 CFR 2.31, 2.24), and is still known by them.
func familyUnknown(ctx context.Context, q pgdb.Querier, c child) (bool, error) {
	var unknown bool
	if err := q.QueryRow(ctx, `SELECT NOT EXISTS (SELECT 1 FROM families WHERE clinic = $1 AND id = $2)
		AND NOT EXISTS (SELECT 1 FROM consents WHERE clinic = $1 AND family_id = $2)
		AND NOT EXISTS (SELECT 1 FROM disclosures WHERE clinic = $1 AND family_id = $2)`, c.clinic, c.family).Scan(&unknown); err != nil {
		return false, fmt.Errorf("read family: %w", err)
	}
	return unknown, nil
}
