package interventions

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/auth"
	"github.com/handoff-health/handoff/services/consentgate"
	"github.com/handoff-health/handoff/services/idempotency"
	"github.com/handoff-health/handoff/services/pgdb"
)

type rstate = interventionsv1.ReminderState

const (
	rScheduled = interventionsv1.ReminderState_REMINDER_STATE_SCHEDULED
	rDue       = interventionsv1.ReminderState_REMINDER_STATE_DUE
	rClaimed   = interventionsv1.ReminderState_REMINDER_STATE_CLAIMED
	rDelivered = interventionsv1.ReminderState_REMINDER_STATE_DELIVERED
	rFailed    = interventionsv1.ReminderState_REMINDER_STATE_FAILED
	rCancelled = interventionsv1.ReminderState_REMINDER_STATE_CANCELLED
)

// stateExpr is the state a reader sees at now: a scheduled reminder past
// its due time, or a claimed one whose lease ran out, is DUE. now is the
// service clock, the one scanReminder and ClaimReminder go by, written as a
// literal the code formats: by the database's clock a filter on DUE could
// list reminders that a claim then finds not yet due.
func stateExpr(now time.Time) string {
	// Truncated, as the stored times and the claim's parameter are: a
	// literal with nanoseconds would be rounded up to the next microsecond.
	at := "'" + now.UTC().Truncate(time.Microsecond).Format(time.RFC3339Nano) + "'::timestamptz"
	return fmt.Sprintf(`(CASE WHEN state = %d AND due_time <= %s THEN %d
	WHEN state = %d AND lease_expire_time <= %s THEN %d ELSE state END)`, rScheduled, at, rDue, rClaimed, at, rDue)
}

// reminderColumns are what scanReminder reads, for a SELECT or a RETURNING.
const reminderColumns = `id, recipient_kind, recipient_id, recipient_family, channel, due_time, kind,
	related_resource, message, state, claimed_by, lease_expire_time, attempt_count, failure_reason, cancel_reason,
	deliver_time, create_time, update_time, version, origin_workflow, send_by_time, event_start_time`

const reminderSelect = `SELECT ` + reminderColumns + ` FROM reminders`

func (s *Server) scanReminder(clinic string) pgx.RowToFunc[*interventionsv1.Reminder] {
	now := s.cfg.Now()
	return func(r pgx.CollectableRow) (*interventionsv1.Reminder, error) {
		var (
			id, rid, rfam, related, msg, claimedBy, failure, cancel, origin string
			rkind, channel, kind, state                                     int16
			due, created, updated                                           time.Time
			lease, delivered, sendBy, event                                 *time.Time
			attempts                                                        int32
			version                                                         int64
		)
		if err := r.Scan(&id, &rkind, &rid, &rfam, &channel, &due, &kind, &related, &msg, &state, &claimedBy, &lease,
			&attempts, &failure, &cancel, &delivered, &created, &updated, &version, &origin, &sendBy, &event); err != nil {
			return nil, err
		}
		rem := &interventionsv1.Reminder{
			Name: aip.Name("clinics", clinic, "reminders", id),
			Recipient: &interventionsv1.Recipient{Kind: interventionsv1.RecipientKind(rkind), Id: rid, Family: rfam,
				Channel: interventionsv1.ChannelKind(channel)},
			DueTime: timestamppb.New(due), Kind: interventionsv1.ReminderKind(kind), RelatedResource: related, Message: msg,
			State: rstate(state), ClaimedBy: claimedBy, AttemptCount: attempts, FailureReason: failure, CancelReason: cancel,
			CreateTime: timestamppb.New(created), UpdateTime: timestamppb.New(updated), Etag: aip.Etag(version),
			OriginWorkflow: origin,
		}
		if lease != nil {
			rem.LeaseExpireTime = timestamppb.New(*lease)
		}
		if delivered != nil {
			rem.DeliverTime = timestamppb.New(*delivered)
		}
		if sendBy != nil {
			rem.SendByTime = timestamppb.New(*sendBy)
		}
		if event != nil {
			rem.EventStartTime = timestamppb.New(*event)
		}
		switch {
		case rem.State == rScheduled && !now.Before(due):
			rem.State = rDue
		case rem.State == rClaimed && lease != nil && !now.Before(*lease):
			rem.State = rDue
		}
		return rem, nil
	}
}

func (s *Server) readReminder(ctx context.Context, q pgdb.Querier, r ref, lock bool) (*interventionsv1.Reminder, error) {
	sql := reminderSelect + ` WHERE clinic = $1 AND id = $2`
	if lock {
		sql += ` FOR UPDATE`
	}
	rows, err := q.Query(ctx, sql, r.clinic, r.id)
	return pgdb.One(rows, err, aip.Name("clinics", r.clinic, "reminders", r.id), s.scanReminder(r.clinic))
}

func newReminder() *interventionsv1.Reminder { return &interventionsv1.Reminder{} }

// sensitive matches words that would reveal a diagnosis, substance or
// treatment. Reminder messages may land on a shared phone or lock screen,
// so they say only when and where, never why.
// Stems take any ending (plurals, tenses), and the names of mutual-help
// groups count: "your Al-Anon meeting" (or "your NA meeting") says as much
// as "treatment", and so does "dosing at 7".
var sensitive = regexp.MustCompile(`(?i)\b(opioid\w*|opiate\w*|heroin|fentanyl|methadone|buprenorphine|suboxone|naltrexone|vivitrol|naloxone|narcan|` +
	`overdos\w*|addict\w*|substance\w*|rehab\w*|detox\w*|withdrawal\w*|treatment\w*|MAT|OUD|SUD|AUD|drug\w*|relaps\w*|` +
	`alcohol\w*|drunk\w*|sober\w*|sobriety|intoxicat\w*|narcotic\w*|recovery|al-anon|nar-anon|alateen|anonymous|` +
	`NA|AA|IOP|sponsor\w*|12-step|twelve-step|inpatient|outpatient|dose|doses|dosed|dosing|dosage\w*|sublocade|brixadi|zubsolv|` +
	// What the loved one must not learn of ahead (the meeting is a
	// "family meeting"), other substances, and other care.
	`intervention\w*|drinking|drinker\w*|meth|methamphetamine\w*|cocaine|crack|benzo\w*|xanax|valium|oxy|oxycodone|oxycontin|` +
	`percocet|vicodin|hydrocodone|morphine|tramadol|marijuana|cannabis|weed|kratom|pill|pills|medicat\w*|prescription\w*|` +
	`therap\w*|psychiatr\w*|psycholog\w*|mental|` +
	// Drinks by name, and other drugs and diagnoses a family's messages
	// could name as plainly.
	`beers?|wines?|vodka|whiskey|whisky|liquors?|booz\w*|ketamine|adderall|OD|ODs|OD'd|` +
	`suicid\w*|self-harm\w*|depress\w*|bipolar|PTSD|schizo\w*|psychos\w*|psychotic|hospital\w*|` +
	// Harm reduction names the use as plainly. (Counseling alone does
	// not: the workflows tell counselors of a family's counseling.)
	`harm[- ]reduction|syring\w*|needle\w*|` +
	// Medication for OUD by its other names, and the substances, medicines
	// and conditions that go with it.
	`MOUD|MOUDs|OTP|OTPs|bupe|codeine|carfentanil|xylazine|lucemyra|HIV|hepatitis|hep C|anxiety|psych\w*|` +
	// Brand names of the same medicines, as a pharmacy or an OTP writes
	// them (Methadose is the methadone most programs dispense), and
	// opioids named by brand.
	`methadose|dolophine|diskets|subutex|bunavail|probuphine|kloxxado|zimhi|dilaudid|hydromorphone)\b`)

// addressLike matches what a delivery failure's reason must not keep: a
// phone number as providers write it (+15551234567, +1 (555) 123-4567,
// (555) 123-4567, 555-123-4567, 555.1234567, a bare run of ten digits or
// more, percent-encoded too; national forms with a trunk 0 such as
// 07911 123456, 020 7946 0958, (020) 7946 0958 or 06 12 34 56 78, and a
// country code after 00 or without its plus, 0044 7911 123456 or
// 44 7911 123456) or an e-mail
// address. A provider's error often quotes the destination, which the API
// promises is never stored with the reminder. An error code or a time
// (fewer digits in a row, or broken by a colon) is left.
var addressLike = regexp.MustCompile(`(?i)(\+|%2B)\s?[0-9][0-9 ().-]{5,20}[0-9]|\b[0-9]{10,15}\b|` +
	`\(?\b[0-9]{3}\)?[ .-]?[0-9]{3}[ .-][0-9]{4}\b|\b[0-9]{3}[ .-][0-9]{7}\b|` +
	`\b0[0-9]{2,4}[ .-]?[0-9]{3,4}[ .-]?[0-9]{3,4}\b|\b[1-9][0-9]{0,2}[ -][0-9]{3,4}[ -][0-9]{3,4}[ -]?[0-9]{3,4}\b|` +
	`\b00[1-9][0-9 ().-]{6,18}[0-9]|\(0[0-9]{1,4}\)\s?[0-9]{3,4}[ .-]?[0-9]{3,4}\b|\b0[1-9](?:[ .-][0-9]{2}){4}\b|` +
	`[^\s@<>"'%]+(@|%40)[^\s@<>"'%]+\.[a-z]{2,}`)

// cleanFailureReason is the reason kept for a failed delivery: the
// automation's text with every address in it, and the reminder's own
// message (the body a provider may quote), replaced. Cleaned, not
// refused: a refused report would leave the reminder claimed, to be sent
// again to the same address when its lease lapses, with no failure for
// its workflow to act on.
// minQuotedMessage is the shortest message a failure's reason is cleaned
// of: a few letters say nothing of the message, and occur inside words.
const minQuotedMessage = 8

func cleanFailureReason(reason, message string) string {
	// A message too short to say anything ("Hi") is left: replaced, it
	// would break up the words of the reason it occurs in ("High latency").
	if m := strings.TrimSpace(message); utf8.RuneCountInString(m) >= minQuotedMessage {
		reason = strings.ReplaceAll(reason, m, "[message]")
	}
	return addressLike.ReplaceAllString(reason, "[address]")
}

// RevealingWord is the first word of message that would reveal a health
// detail, or "" if there is none: CreateReminder refuses such a message.
// The workflows' tests check their own messages with it.
func RevealingWord(message string) string { return sensitive.FindString(message) }

// CreateReminder implements the API. Workflows create reminders; a loved one
// is reminded only if the family allows direct contact, and a member only
// with consent.
func (s *Server) CreateReminder(ctx context.Context, req *interventionsv1.CreateReminderRequest) (*interventionsv1.Reminder, error) {
	clinic, err := parentClinic(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	rem := req.GetReminder()
	rc := rem.GetRecipient()
	var vs apperr.Violations
	if rc.GetKind() == interventionsv1.RecipientKind_RECIPIENT_KIND_UNSPECIFIED {
		vs.Add("reminder.recipient.kind", "is required")
	}
	if rc.GetChannel() == interventionsv1.ChannelKind_CHANNEL_KIND_UNSPECIFIED {
		vs.Add("reminder.recipient.channel", "is required")
	}
	family := isFamily(rc.GetKind())
	if namesFamily(rc) {
		// A staff reminder may name the family it concerns: it must be this
		// clinic's, or deleting that family would cancel another clinic's
		// reminder and deleting this clinic's would miss it.
		if ids, err := aip.Parse(rc.GetFamily(), "clinics", "families"); err != nil || ids[0] != clinic {
			vs.Add("reminder.recipient.family", "must be a family of the same clinic")
		}
	}
	if family && rc.GetChannel() == interventionsv1.ChannelKind_CHANNEL_KIND_IN_APP {
		// The app is staff's: a family reminder sent there reaches no one.
		vs.Add("reminder.recipient.channel", "IN_APP is for counselors and supervisors; give SMS, PHONE or EMAIL")
	}
	if rc.GetKind() != interventionsv1.RecipientKind_RECIPIENT_KIND_LOVED_ONE && rc.GetId() == "" {
		vs.Add("reminder.recipient.id", "is required")
	}
	if rr := rem.GetRelatedResource(); rr != "" && aip.Clinic(rr) != clinic {
		// Another clinic's name would tie this clinic's reminder, and the
		// filters and cancellations that follow it, to a record not its own.
		vs.Add("reminder.related_resource", "must be a resource of the same clinic")
	}
	if rem.GetKind() == interventionsv1.ReminderKind_REMINDER_KIND_UNSPECIFIED {
		vs.Add("reminder.kind", "is required")
	}
	if by, due := rem.GetSendByTime(), rem.GetDueTime(); by != nil && due != nil && !by.AsTime().After(due.AsTime()) {
		vs.Add("reminder.send_by_time", "must be after due_time")
	}
	if req.GetAppointmentStartTime() != nil && rem.GetKind() != interventionsv1.ReminderKind_REMINDER_KIND_INTAKE_UPCOMING {
		vs.Add("appointment_start_time", "is for INTAKE_UPCOMING reminders only")
	}
	// Within reach: a reminder due in 9999 would never be claimed, and its
	// webhook delivery would wait, undeletable, as long; one from year 1
	// is an unset time sent as one. Two horizons ahead leave room for a
	// meeting's follow-up after the furthest meeting.
	latest := s.cfg.Now().Add(2 * s.cfg.Horizon)
	for _, f := range []struct {
		field string
		t     *timestamppb.Timestamp
	}{{"reminder.due_time", rem.GetDueTime()}, {"reminder.send_by_time", rem.GetSendByTime()},
		{"appointment_start_time", req.GetAppointmentStartTime()}} {
		switch {
		case f.t == nil:
		case f.t.AsTime().Before(aip.EarliestReported):
			vs.Add(f.field, "must not be before 1990 (an unset time? leave it out)")
		case f.t.AsTime().After(latest):
			vs.Add(f.field, "must be within %s from now", 2*s.cfg.Horizon)
		}
	}
	if strings.TrimSpace(rem.GetMessage()) == "" {
		vs.Add("reminder.message", "is required")
	} else if w := RevealingWord(rem.GetMessage()); w != "" {
		vs.Add("reminder.message", "must not reveal health details (found %q): it may reach a shared phone", w)
	}
	if err := vs.Err(); err != nil {
		return nil, err
	}
	if out, ok, err := idempotency.Stored(ctx, s.pool, clinic, svc+"CreateReminder", req.GetRequestId(), req, newReminder); ok || err != nil {
		if err != nil || !family {
			return out, err
		}
		// A retry of a call that was refused after the insert gets the
		// refusal again, not the reminder as it was first stored, even if
		// contact has been allowed since: that reminder stays cancelled.
		// One that died before asking again asks now.
		cur, err := s.readReminder(ctx, s.pool, ref{clinic, aip.ID(out.GetName())}, false)
		if err != nil {
			return nil, err
		}
		switch {
		case cur.GetState() == rCancelled && cur.GetCancelReason() == reasonMadeAsWithdrawn:
			return nil, madeAsWithdrawn(rc)
		case cur.GetState() == rScheduled || cur.GetState() == rDue || cur.GetState() == rClaimed:
			return s.confirmContact(ctx, out, rc)
		}
		return out, nil
	}
	if namesFamily(rc) {
		if err := s.referralOfFamily(ctx, clinic, rem); err != nil {
			return nil, err
		}
	}
	if family {
		if err := s.checkContact(ctx, rc); err != nil {
			return nil, err
		}
	}
	out, err := s.insertReminder(ctx, clinic, req)
	if err != nil || !family {
		return out, err
	}
	return s.confirmContact(ctx, out, rc)
}

// reasonMadeAsWithdrawn is the cancel reason of a reminder cancelled
// because contact was withdrawn while it was being made.
const reasonMadeAsWithdrawn = "contact withdrawn while the reminder was made"

// madeAsWithdrawn is the answer to a request whose reminder was made and
// then cancelled because its recipient could no longer be contacted: the
// same for the first call and for every retry, which finds the reminder
// cancelled, whatever the families service said (consent withdrawn, the
// member removed, the family deleted).
func madeAsWithdrawn(rc *interventionsv1.Recipient) error {
	return apperr.FailedPrecondition("CONTACT_NOT_ALLOWED",
		"contact was withdrawn while the reminder was made: it was cancelled", map[string]string{"family": rc.GetFamily()})
}

// confirmContact asks again, after the reminder out is stored, whether its
// recipient may be contacted, and cancels it if not. Contact may have been
// withdrawn between the first check and the insert, and the workflow that
// cancels the person's pending reminders may have listed them before this
// one was there: asked now, either the answer sees the withdrawal or that
// workflow sees this reminder. A families service that does not answer is
// asked a few times more; if it still does not, the reminder stands, as the
// withdrawal (a write to that service, just made) can hardly have gone
// through meanwhile. The caller leaving does not stop this: a reminder left
// standing would reach someone who said no.
func (s *Server) confirmContact(ctx context.Context, out *interventionsv1.Reminder, rc *interventionsv1.Recipient) (*interventionsv1.Reminder, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	refused := contactRefused
	cerr := s.checkContact(ctx, rc)
	for _, wait := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond} {
		if cerr == nil || refused(cerr) {
			break
		}
		time.Sleep(wait)
		cerr = s.checkContact(ctx, rc)
	}
	if !refused(cerr) {
		return out, nil
	}
	r, err := reminderRef(out.GetName())
	if err != nil {
		return nil, err
	}
	cancelled, err := s.cancelUnheld(ctx, r, s.cfg.Now(), reasonMadeAsWithdrawn, 0)
	switch {
	case err != nil:
		return nil, fmt.Errorf("cancel a reminder made as contact was withdrawn: %w", err)
	case !cancelled:
		// Already ended by other hands (cancelled by the withdrawal's
		// workflow, or sent before the withdrawal), or claimed meanwhile
		// by a claimant whose own checks of contact decide, and who may
		// be sending it. The reminder was made, and the answer says so,
		// as a retry's does.
		return out, nil
	}
	return nil, madeAsWithdrawn(rc)
}

// optTime is t as a nullable column: NULL when unset.
func optTime(t *timestamppb.Timestamp) *time.Time {
	if t == nil {
		return nil
	}
	at := t.AsTime()
	return &at
}

// insertReminder stores the reminder req asks for, once per request id.
func (s *Server) insertReminder(ctx context.Context, clinic string, req *interventionsv1.CreateReminderRequest) (*interventionsv1.Reminder, error) {
	rem, rc := req.GetReminder(), req.GetReminder().GetRecipient()
	var made *interventionsv1.Reminder
	out, err := idempotency.InTx(ctx, s.pool, clinic, svc+"CreateReminder", req.GetRequestId(), req, newReminder,
		func(tx pgx.Tx) (*interventionsv1.Reminder, error) {
			// Checked by the clock here, where the stored answer of the
			// request id is read first and a call still in flight is
			// waited for: a retry that comes after its send-by time gets
			// the reminder its first call made.
			if by := rem.GetSendByTime(); by != nil && rem.GetDueTime() == nil && !by.AsTime().After(s.cfg.Now()) {
				// Left unset, the due time is now by the service's clock.
				return nil, apperr.Field("reminder.send_by_time", "must be in the future for a reminder due now")
			}
			checked := false
			var err error
			switch rem.GetKind() {
			case interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_CANCELLED:
				checked, err = true, calledOffTo(ctx, tx, clinic, req)
			case interventionsv1.ReminderKind_REMINDER_KIND_ESCALATION_PROPOSED:
				checked, err = true, draftStands(ctx, tx, clinic, rem)
			default:
				if meetingKinds[rem.GetKind()] {
					// One naming no meeting of the clinic is checked for
					// its family below, as any other.
					checked, err = meetingStands(ctx, tx, clinic, req)
				}
			}
			if err != nil {
				return nil, err
			}
			if !checked && namesFamily(rc) {
				// Only a reminder that names a family can name the wrong
				// one: a staff reminder naming none costs no read of its
				// intervention.
				if err := aboutFamily(ctx, tx, clinic, rem); err != nil {
					return nil, err
				}
			}
			r := ref{clinic, aip.NewID()}
			now := s.cfg.Now()
			due := now
			if rem.GetDueTime() != nil {
				due = rem.GetDueTime().AsTime()
			}
			if _, err := tx.Exec(ctx, `INSERT INTO reminders (clinic, id, recipient_kind, recipient_id, recipient_family, channel,
				due_time, kind, related_resource, message, state, create_time, update_time, origin_workflow, send_by_time, event_start_time)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13, $14, $15)`, r.clinic, r.id, int16(rc.GetKind()), rc.GetId(),
				rc.GetFamily(), int16(rc.GetChannel()), due, int16(rem.GetKind()), rem.GetRelatedResource(),
				rem.GetMessage(), int16(rScheduled), now, rem.GetOriginWorkflow(), optTime(rem.GetSendByTime()),
				optTime(req.GetAppointmentStartTime())); err != nil {
				return nil, fmt.Errorf("insert reminder: %w", err)
			}
			out, err := s.readReminder(ctx, tx, r, false)
			if err != nil {
				return nil, err
			}
			made = out
			return out, emit(ctx, tx, clinic, "reminder.created", out.GetName(), out)
		})
	if err == nil && made != nil {
		// Counted once committed: a transaction rolled back made nothing,
		// and a replayed request id made nothing new.
		remindersCreated.Add(ctx, 1, kindAttr(made.GetKind().String()))
	}
	return out, err
}

// ReasonMeetingNotScheduled refuses a reminder of a meeting that is no
// longer scheduled, or no longer at the time the caller knows.
const ReasonMeetingNotScheduled = "MEETING_NOT_SCHEDULED"

// ReasonMeetingNotCancelled refuses a notice that a meeting is called off
// (INTERVENTION_CANCELLED) while the meeting is not cancelled.
const ReasonMeetingNotCancelled = "MEETING_NOT_CANCELLED"

// ReasonNotAParticipant refuses a reminder of a meeting to a family member
// who no longer takes part in it, or one of it coming up to a counselor
// who does not lead it.
const ReasonNotAParticipant = "NOT_A_PARTICIPANT"

// takesPart3 is whether the member $3 takes part in the meeting read.
const takesPart3 = `EXISTS (SELECT 1 FROM jsonb_array_elements(COALESCE(doc->'participants', '[]')) p WHERE p->>'member_id' = $3)`

// meetingStands refuses the meeting reminder req asks for (one of
// meetingKinds) if its meeting is no longer scheduled (cancelled, or held
// and its outcome recorded), no longer at
// the start time req gives (rescheduled), or, to a family member or a
// counselor, no longer with them. A cancel, a reschedule and an update
// that takes someone off the meeting cancel its reminders in their own transaction,
// but the workflow, which hears of the change through the outbox, may
// still be making one with what it knew: the shared lock makes the two
// take turns, so such a reminder is either refused here or seen, and
// cancelled, by the change. A name that is not of an intervention of the
// clinic is left to the caller (checked false); one of no meeting passes.
func meetingStands(ctx context.Context, tx pgx.Tx, clinic string, req *interventionsv1.CreateReminderRequest) (checked bool, err error) {
	related := req.GetReminder().GetRelatedResource()
	id, ok := strings.CutPrefix(related, "clinics/"+clinic+"/interventions/")
	if !ok || id == "" || strings.Contains(id, "/") {
		return false, nil
	}
	to := req.GetReminder().GetRecipient()
	var (
		state     int16
		start     *time.Time
		takesPart bool
		counselor string
		family    string
	)
	err = tx.QueryRow(ctx, `SELECT state, start_time, `+takesPart3+`,
			counselor, family
		FROM interventions WHERE clinic = $1 AND id = $2 FOR SHARE`, clinic, id, to.GetId()).Scan(&state, &start, &takesPart, &counselor, &family)
	if errors.Is(err, pgx.ErrNoRows) {
		// Read, and no meeting: aboutFamily would read the same row.
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("read the reminder's meeting: %w", err)
	}
	meta := map[string]string{"intervention": related}
	if err := ofFamily(to, family, related); err != nil {
		return true, err
	}
	if st := interventionsv1.InterventionState(state); st != scheduled {
		return true, apperr.FailedPrecondition(ReasonMeetingNotScheduled,
			fmt.Sprintf("%s is %s: no reminder of its meeting is made any more", related, stateName(st)), meta)
	}
	if want := req.GetMeetingStartTime(); want != nil && start != nil &&
		!want.AsTime().Truncate(time.Microsecond).Equal(*start) {
		return true, apperr.FailedPrecondition(ReasonMeetingNotScheduled,
			fmt.Sprintf("%s was moved to %s: no reminder of it at %s is made", related,
				start.UTC().Format(time.RFC3339), want.AsTime().UTC().Format(time.RFC3339)), meta)
	}
	if to.GetKind() == interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER && !takesPart {
		return true, apperr.FailedPrecondition(ReasonNotAParticipant,
			fmt.Sprintf("family member %q does not take part in %s: no reminder of it is made for them", to.GetId(), related), meta)
	}
	if to.GetKind() == interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR && to.GetId() != counselor &&
		req.GetReminder().GetKind() == interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_UPCOMING {
		return true, apperr.FailedPrecondition(ReasonNotAParticipant,
			fmt.Sprintf("counselor %q does not lead %s: no reminder of it is made for them", to.GetId(), related), meta)
	}
	return true, nil
}

// draftStands refuses a notice that a meeting is drafted for the
// counselor's review (ESCALATION_PROPOSED naming an intervention) once
// the draft is gone: deleted, withdrawn (cancelled) or already scheduled.
// The workflow drafts it in a call before the notice's, and the counselor
// may act on it in between: read FOR SHARE, as meetingStands reads, so
// that a delete or a cancel either comes after the notice, and cancels
// it, or before, and the notice is refused (MEETING_NOT_SCHEDULED, which
// the workflows skip). A notice about the family names no draft.
func draftStands(ctx context.Context, tx pgx.Tx, clinic string, rem *interventionsv1.Reminder) error {
	related := rem.GetRelatedResource()
	id, ok := strings.CutPrefix(related, "clinics/"+clinic+"/interventions/")
	if !ok || id == "" || strings.Contains(id, "/") {
		return aboutFamily(ctx, tx, clinic, rem)
	}
	var (
		state  int16
		family string
	)
	err := tx.QueryRow(ctx, `SELECT state, family FROM interventions WHERE clinic = $1 AND id = $2 FOR SHARE`, clinic, id).Scan(&state, &family)
	meta := map[string]string{"intervention": related}
	if errors.Is(err, pgx.ErrNoRows) {
		return apperr.FailedPrecondition(ReasonMeetingNotScheduled, related+" is gone: no notice of it as a draft is made", meta)
	}
	if err != nil {
		return fmt.Errorf("read the drafted meeting: %w", err)
	}
	if err := ofFamily(rem.GetRecipient(), family, related); err != nil {
		return err
	}
	if st := interventionsv1.InterventionState(state); st != draft {
		return apperr.FailedPrecondition(ReasonMeetingNotScheduled,
			fmt.Sprintf("%s is %s: no notice of it as a draft for review is made", related, stateName(st)), meta)
	}
	return nil
}

// calledOffTo refuses the notice req asks for, that a meeting is called
// off (INTERVENTION_CANCELLED), unless the meeting it names is cancelled
// and a family member it goes to takes part in it: one taken off the
// meeting just before it was called off (perhaps for their safety) hears
// nothing more of it, whatever the workflow last read.
func calledOffTo(ctx context.Context, tx pgx.Tx, clinic string, req *interventionsv1.CreateReminderRequest) error {
	related := req.GetReminder().GetRelatedResource()
	id, ok := strings.CutPrefix(related, "clinics/"+clinic+"/interventions/")
	noMeeting := apperr.Field("reminder.related_resource", "must name the meeting called off, an intervention of clinic %s", clinic)
	if !ok || id == "" || strings.Contains(id, "/") {
		return noMeeting
	}
	to := req.GetReminder().GetRecipient()
	var (
		state     int16
		takesPart bool
		family    string
	)
	err := tx.QueryRow(ctx, `SELECT state, `+takesPart3+`, family
		FROM interventions WHERE clinic = $1 AND id = $2 FOR SHARE`, clinic, id, to.GetId()).Scan(&state, &takesPart, &family)
	if errors.Is(err, pgx.ErrNoRows) {
		return noMeeting
	}
	if err != nil {
		return fmt.Errorf("read the meeting called off: %w", err)
	}
	if err := ofFamily(to, family, related); err != nil {
		return err
	}
	meta := map[string]string{"intervention": related}
	if st := interventionsv1.InterventionState(state); st != cancelled {
		return apperr.FailedPrecondition(ReasonMeetingNotCancelled,
			fmt.Sprintf("%s is %s, not called off: no notice that it is called off is made", related, stateName(st)), meta)
	}
	if to.GetKind() == interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER && !takesPart {
		return apperr.FailedPrecondition(ReasonNotAParticipant,
			fmt.Sprintf("family member %q does not take part in %s: no notice of it is made for them", to.GetId(), related), meta)
	}
	return nil
}

// ofFamily refuses a reminder about an intervention of family to someone
// of another family: member ids are unique within a family only, and
// another family's "mom" would hear of this family's meeting.
func ofFamily(to *interventionsv1.Recipient, family, related string) error {
	// A staff reminder that names a family names the one it is about too:
	// deleting that family cancels it, and deleting another must not.
	if namesFamily(to) && to.GetFamily() != family {
		return apperr.Field("reminder.recipient.family", "must be %s, the family of %s", family, related)
	}
	return nil
}

// referralOfFamily is ofFamily for a reminder about a referral (an intake
// appointment): the referral's family, read from the referrals service,
// must be the recipient's, or another family's "mom" would hear of this
// family's loved one's intake. A referral not found is refused by name;
// without a referrals client (a service run alone) nothing is checked.
func (s *Server) referralOfFamily(ctx context.Context, clinic string, rem *interventionsv1.Reminder) error {
	id, ok := strings.CutPrefix(rem.GetRelatedResource(), "clinics/"+clinic+"/referrals/")
	if !ok || id == "" || strings.Contains(id, "/") || s.cfg.Holds == nil {
		return nil
	}
	ref, err := s.cfg.Holds.GetReferral(ctx, &referralsv1.GetReferralRequest{Name: rem.GetRelatedResource()})
	if apperr.IsCode(err, codes.NotFound) {
		return apperr.Field("reminder.related_resource", "no such referral")
	}
	if err != nil {
		return fmt.Errorf("read the reminder's referral: %w", err)
	}
	return ofFamily(rem.GetRecipient(), ref.GetFamily(), rem.GetRelatedResource())
}

// isFamily reports whether a recipient of kind k is someone of a family,
// whose contact details the families service holds.
func isFamily(k interventionsv1.RecipientKind) bool {
	return k == interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER || k == interventionsv1.RecipientKind_RECIPIENT_KIND_LOVED_ONE
}

// namesFamily reports whether a reminder to rc is tied to a family: sent
// to one of its people, or a staff reminder that names the family it
// concerns.
func namesFamily(rc *interventionsv1.Recipient) bool {
	return isFamily(rc.GetKind()) || rc.GetFamily() != ""
}

// aboutFamily is ofFamily for a reminder of another kind than a meeting's
// whose related resource is a family's record, or an intervention of the
// clinic.
func aboutFamily(ctx context.Context, tx pgx.Tx, clinic string, rem *interventionsv1.Reminder) error {
	if fam := aip.Family(rem.GetRelatedResource()); fam != "" {
		// A family's record (a warning sign, the family itself): the
		// automation is shown its name, which must be the recipient's.
		return ofFamily(rem.GetRecipient(), fam, rem.GetRelatedResource())
	}
	id, ok := strings.CutPrefix(rem.GetRelatedResource(), "clinics/"+clinic+"/interventions/")
	if !ok || id == "" || strings.Contains(id, "/") {
		return nil
	}
	var family string
	err := tx.QueryRow(ctx, `SELECT family FROM interventions WHERE clinic = $1 AND id = $2`, clinic, id).Scan(&family)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the reminder's intervention: %w", err)
	}
	return ofFamily(rem.GetRecipient(), family, rem.GetRelatedResource())
}

// checkContact refuses reminders to people who may not be contacted.
func (s *Server) checkContact(ctx context.Context, rc *interventionsv1.Recipient) error {
	_, err := s.contact(ctx, rc)
	return err
}

// contact refuses people who may not be contacted, and returns the
// channels of those who may.
func (s *Server) contact(ctx context.Context, rc *interventionsv1.Recipient) ([]*familiesv1.ContactChannel, error) {
	fam, err := s.cfg.Families.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: rc.GetFamily()})
	if apperr.IsCode(err, codes.NotFound) {
		return nil, apperr.Field("reminder.recipient.family", "no such family")
	}
	if err != nil {
		return nil, fmt.Errorf("read family: %w", err)
	}
	refuse := func(msg string) error {
		return apperr.FailedPrecondition("CONTACT_NOT_ALLOWED", msg, map[string]string{"family": rc.GetFamily()})
	}
	// Staff read the state; the reminder automation's view of a closed
	// family shows no one who may be contacted, which the checks below
	// refuse in turn.
	if fam.GetState() == familiesv1.FamilyState_FAMILY_STATE_CLOSED {
		return nil, refuse("the family's case is closed: the clinic no longer contacts its people")
	}
	if rc.GetKind() == interventionsv1.RecipientKind_RECIPIENT_KIND_LOVED_ONE {
		if !fam.GetLovedOne().GetMayContactDirectly() {
			return nil, refuse("the family has not allowed the clinic to contact the loved one directly")
		}
		return fam.GetLovedOne().GetContactChannels(), nil
	}
	for _, m := range fam.GetMembers() {
		if m.GetId() == rc.GetId() {
			if !m.GetConsentToContact() {
				return nil, refuse(fmt.Sprintf("member %q has not agreed to be contacted", rc.GetId()))
			}
			return m.GetContactChannels(), nil
		}
	}
	return nil, apperr.Field("reminder.recipient.id", "%q is not a member of %s", rc.GetId(), rc.GetFamily())
}

// addressOn is the value of the first of channels of the kind ch names (the
// families service's kinds number the first three alike), or "".
func addressOn(channels []*familiesv1.ContactChannel, ch interventionsv1.ChannelKind) string {
	for _, c := range channels {
		if int32(c.GetKind()) == int32(ch) {
			return c.GetValue()
		}
	}
	return ""
}

// GetReminder implements the API.
func (s *Server) GetReminder(ctx context.Context, req *interventionsv1.GetReminderRequest) (*interventionsv1.Reminder, error) {
	r, err := authorized(ctx, "name", req.GetName(), "reminders")
	if err != nil {
		return nil, err
	}
	rem, err := s.readReminder(ctx, s.pool, r, false)
	if err == nil && deliveryOnly(ctx) {
		rem = consentgate.Reminder(rem)
	}
	return rem, err
}

// reminderFilter is what ListReminders filters on, as of now, for the
// caller.
func reminderFilter(ctx context.Context, now time.Time) map[string]aip.FilterField {
	fields := reminderFields
	if deliveryOnly(ctx) {
		fields = deliveryFields
	}
	f := maps.Clone(fields)
	f["state"] = aip.FilterField{Column: stateExpr(now), Kind: aip.Enum, Enum: aip.EnumLookup(interventionsv1.ReminderState_value, "REMINDER_STATE_"),
		Implies: storedStates}
	return f
}

// storedStates is what a reminder read as state v is stored as: DUE is
// never stored, but derived from SCHEDULED or CLAIMED (stateExpr). The
// automation's poll for DUE then reads the partial index reminders_pending
// (its predicate, as written here), not every reminder the clinic ever
// sent, earliest first.
func storedStates(v int32) string {
	switch s := interventionsv1.ReminderState(v); s {
	case rDue, rScheduled, rClaimed:
		return fmt.Sprintf("state IN (%d, %d)", rScheduled, rClaimed)
	default:
		return fmt.Sprintf("state = %d", s)
	}
}

var reminderFields = map[string]aip.FilterField{
	"channel":        {Column: "channel", Kind: aip.Enum, Enum: aip.EnumLookup(interventionsv1.ChannelKind_value, "CHANNEL_KIND_")},
	"recipient_kind": {Column: "recipient_kind", Kind: aip.Enum, Enum: aip.EnumLookup(interventionsv1.RecipientKind_value, "RECIPIENT_KIND_")},
	"kind":           {Column: "kind", Kind: aip.Enum, Enum: aip.EnumLookup(interventionsv1.ReminderKind_value, "REMINDER_KIND_")},
	"recipient_id":   {Column: "recipient_id", Kind: aip.String},
	// The worker cancels what is pending for a family whose record was
	// deleted.
	"recipient_family": {Column: "recipient_family", Kind: aip.String},
	"related_resource": {Column: "related_resource", Kind: aip.String},
	// The workflow told of a failed delivery: a workflow asking whether
	// someone else answered an overdose leaves out its own alerts.
	"origin_workflow": {Column: "origin_workflow", Kind: aip.String},
	"due_time":        {Column: "due_time", Kind: aip.Time},
	// When it was made: the boundary workflow tells an earlier execution's
	// overdose alerts from its own by it.
	"create_time": {Column: "create_time", Kind: aip.Time},
}

// listReminders is ListReminders' statement: the clinic's reminders after
// a due time and id ($1 to $3) that meet the filter's condition where
// (parameters from $5), a page ($4) earliest due first.
func listReminders(where string) string {
	return reminderSelect + ` WHERE clinic = $1 AND (due_time, id) > ($2, $3) AND ` + where + ` ORDER BY due_time, id LIMIT $4`
}

// ListReminders implements the API, earliest due first.
func (s *Server) ListReminders(ctx context.Context, req *interventionsv1.ListRemindersRequest) (*interventionsv1.ListRemindersResponse, error) {
	clinic, err := parentClinic(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	fields := reminderFilter(ctx, s.cfg.Now())
	if err := auth.RequirePinned(ctx, aip.PinnedBy(req.GetFilter(), fields), "reminders", "recipient_family", "related_resource", "origin_workflow"); err != nil {
		return nil, err
	}
	f, after, q, err := aip.ListArgs("reminders", req.GetParent(), req.GetFilter(), req.GetPageToken(), fields)
	if err != nil {
		return nil, err
	}
	// The cursor is the last row's due time and id: due times repeat.
	afterDue, afterID := time.Time{}, ""
	if after != "" {
		ts, id, ok := strings.Cut(after, "|")
		t, perr := time.Parse(time.RFC3339Nano, ts)
		if !ok || perr != nil {
			return nil, apperr.Field("page_token", "malformed")
		}
		afterDue, afterID = t, id
	}
	size := aip.PageSize(req.GetPageSize())
	where, args := f.SQL(5)
	rows, err := s.pool.Query(ctx, listReminders(where), append([]any{clinic, afterDue, afterID, size + 1}, args...)...)
	if err != nil {
		return nil, fmt.Errorf("list reminders: %w", err)
	}
	items, err := pgx.CollectRows(rows, s.scanReminder(clinic))
	if err != nil {
		return nil, fmt.Errorf("list reminders: %w", err)
	}
	items, next := aip.Page(items, size, q, func(r *interventionsv1.Reminder) string {
		return r.GetDueTime().AsTime().Format(time.RFC3339Nano) + "|" + aip.ID(r.GetName())
	})
	if deliveryOnly(ctx) {
		for i, r := range items {
			items[i] = consentgate.Reminder(r)
		}
	}
	return &interventionsv1.ListRemindersResponse{Reminders: items, NextPageToken: next}, nil
}

// ClaimReminder implements the API. One conditional UPDATE takes the claim,
// so of several automation workers racing for a reminder exactly one wins.
// A claimant extends its lease with the etag its claim returned: without
// one, two workers wrongly sharing a claimant id would both win, and both
// send.
func (s *Server) ClaimReminder(ctx context.Context, req *interventionsv1.ClaimReminderRequest) (*interventionsv1.Reminder, error) {
	r, err := authorized(ctx, "name", req.GetName(), "reminders")
	if err != nil {
		return nil, err
	}
	if req.GetClaimant() == "" {
		return nil, apperr.Field("claimant", "is required: a stable id of the delivering worker")
	}
	if req.GetEtag() != "" && aip.BareEtag(req.GetEtag()) == "" {
		// `""` names no version; passed on bare it would read as no etag,
		// and the claim would go through unguarded.
		return nil, apperr.EtagMismatch(req.GetName())
	}
	lease := 5 * time.Minute
	if req.GetLeaseDuration() != nil {
		lease = req.GetLeaseDuration().AsDuration()
	}
	// What the claim is of: its recipient and kind decide the checks below.
	pre, err := s.readReminder(ctx, s.pool, r, false)
	if err != nil {
		return nil, err
	}
	address, err := s.stillContactable(ctx, pre)
	if err != nil {
		return nil, err
	}
	// Only a reminder of a meeting coming up can announce one begun; or of
	// an intake appointment, whose start the reminder holds.
	meeting := pre.GetKind() == interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_UPCOMING
	intakeStart := pre.GetEventStartTime()
	if pre.GetKind() != interventionsv1.ReminderKind_REMINDER_KIND_INTAKE_UPCOMING {
		intakeStart = nil
	}
	// One clock reading for the claim and, if it comes too late, the
	// failure: the send-by time cannot pass between them.
	now := s.cfg.Now()
	late := false  // due, and past its send-by time
	begun := false // of a meeting coming up, which has begun
	// The meeting's times, read in the claim's transaction: a reschedule
	// or a cancellation that moves it cancels the reminder, and either
	// commits before (the claim finds it cancelled) or waits for the
	// claim's lock. A change of length alone keeps the reminder and waits
	// for nothing: the end read may be a moment old, and the meeting's
	// next reminder carries the new one (the event's UID replaces it).
	var eventStart, eventEnd *timestamppb.Timestamp
	out, err := idempotency.InTxRechecked(ctx, s.pool, r.clinic, svc+"ClaimReminder", req.GetRequestId(), req, newReminder,
		func(tx pgx.Tx) (*interventionsv1.Reminder, error) {
			if meeting {
				m, err := meetingOf(ctx, tx, r, now)
				if err != nil {
					return nil, err
				}
				eventStart, eventEnd = m.start, m.end
				if m.begun {
					// Cancelled below, once this transaction is gone.
					begun = true
					return nil, apperr.FailedPrecondition(ReasonMeetingBegun,
						fmt.Sprintf("%s announces a meeting that has begun: it is cancelled, not sent late", req.GetName()),
						map[string]string{"resource": req.GetName()})
				}
			}
			if intakeStart != nil && !now.Before(intakeStart.AsTime()) {
				// "Appointment at 9:00" sent at 10:00, the worker or the
				// automation having been down: cancelled, as a meeting's,
				// and, as a meeting's, only if nobody holds it (unclaimed,
				// or its claim lapsed): its claimant extending a live claim
				// may be sending, and the cancel would leave it be
				// (cancelUnheld) while the answer said it was cancelled.
				// One already ended is refused below as ever.
				var claimable bool
				if err := tx.QueryRow(ctx, `SELECT `+unheld("m", "$3", "$4", "$5")+` FROM reminders m WHERE m.clinic = $1 AND m.id = $2`,
					r.clinic, r.id, int16(rScheduled), int16(rClaimed), now).Scan(&claimable); errors.Is(err, pgx.ErrNoRows) {
					return nil, apperr.NotFound(req.GetName())
				} else if err != nil {
					return nil, fmt.Errorf("read the reminder's claim: %w", err)
				}
				if claimable {
					begun = true
					return nil, apperr.FailedPrecondition(ReasonMeetingBegun,
						fmt.Sprintf("%s announces an intake appointment that has begun: it is cancelled, not sent late", req.GetName()),
						map[string]string{"resource": req.GetName()})
				}
			}
			// No claim, and no lease extended, from the send-by time on; a
			// lease ends there at the latest, so that the claimant knows
			// to send before the quiet hours. One taken before runs its
			// course: the claimant may be sending, and may report after.
			tag, err := tx.Exec(ctx, `UPDATE reminders SET state = 3, claimed_by = $3,
				lease_expire_time = CASE WHEN send_by_time < $4 THEN send_by_time ELSE $4 END,
				attempt_count = attempt_count + CASE WHEN state = 3 AND claimed_by = $3 AND lease_expire_time > $5 THEN 0 ELSE 1 END,
				update_time = $5, version = version + 1
				WHERE clinic = $1 AND id = $2 AND ($6 = '' OR 'v' || version::text = $6)
				AND (send_by_time IS NULL OR send_by_time > $5) AND (
					(state = 1 AND due_time <= $5) OR
					(state = 3 AND (lease_expire_time <= $5 OR (claimed_by = $3 AND $6 <> ''))))`,
				r.clinic, r.id, req.GetClaimant(), now.Add(lease), now, aip.BareEtag(req.GetEtag()))
			if err != nil {
				return nil, fmt.Errorf("claim reminder: %w", err)
			}
			if tag.RowsAffected() == 0 {
				cur, err := s.readReminder(ctx, tx, r, false)
				if err != nil {
					return nil, err
				}
				by := cur.GetSendByTime()
				past := by != nil && !now.Before(by.AsTime())
				if past && cur.GetState() == rFailed && cur.GetFailureReason() == quietHoursFailure {
					// Failed by an earlier claim, this one's first try
					// perhaps: a retry gets that claim's answer, with the
					// etag its lease had too (the failure moved the
					// version on, which the claimant cannot know).
					return nil, quietHoursBegan(cur.GetName())
				}
				if final(cur.GetState()) {
					// Whatever etag came with it: ABORTED would have the
					// claimant read it again and retry.
					return nil, apperr.InvalidTransition(cur.GetName(), strings.TrimPrefix(cur.GetState().String(), "REMINDER_STATE_"), "CLAIMED")
				}
				if err := aip.CheckEtag(cur.GetName(), req.GetEtag(), cur.GetEtag()); err != nil {
					return nil, err
				}
				if past {
					switch {
					case cur.GetState() == rDue && cur.GetClaimedBy() == req.GetClaimant():
						// Its own lease, which ended at the send-by time:
						// failed below unless it ran out just now (the
						// claimant may have sent it, and may report).
						lease := cur.GetLeaseExpireTime()
						if late = lease == nil || !lease.AsTime().After(now.Add(-lapsedGrace)); late {
							return nil, quietHoursBegan(cur.GetName())
						}
						return nil, notExtended(cur.GetName())
					case cur.GetState() == rDue:
						// Failed below, once this transaction is gone; but
						// for another claimant's lease run out a moment ago
						// (failPastSendBy leaves it to that claimant), which
						// the answer must not call failed.
						late = true
						if lease := cur.GetLeaseExpireTime(); lease != nil && lease.AsTime().After(now.Add(-lapsedGrace)) {
							return nil, quietHoursBeganAwaitingReport(cur.GetName())
						}
						return nil, quietHoursBegan(cur.GetName())
					case cur.GetState() == rClaimed && cur.GetClaimedBy() == req.GetClaimant():
						return nil, notExtended(cur.GetName())
					}
				}
				if cur.GetState() == rClaimed && cur.GetClaimedBy() == req.GetClaimant() {
					return nil, apperr.FailedPrecondition(apperr.ReasonLeaseHeld,
						fmt.Sprintf("%s is already claimed by %q until %s: to extend the lease, claim it with the etag the claim returned",
							cur.GetName(), req.GetClaimant(), cur.GetLeaseExpireTime().AsTime().Format(time.RFC3339)),
						map[string]string{"resource": cur.GetName()})
				}
				if cur.GetState() == rClaimed {
					return nil, apperr.FailedPrecondition(apperr.ReasonLeaseHeld,
						fmt.Sprintf("%s is claimed by another worker until %s", cur.GetName(), cur.GetLeaseExpireTime().AsTime().Format(time.RFC3339)),
						map[string]string{"resource": cur.GetName()})
				}
				// Not due yet, or final: not a lease to wait out.
				return nil, apperr.InvalidTransition(cur.GetName(), strings.TrimPrefix(cur.GetState().String(), "REMINDER_STATE_"), "CLAIMED")
			}
			out, err := s.readReminder(ctx, tx, r, false)
			if err != nil {
				return nil, err
			}
			return out, emit(ctx, tx, r.clinic, "reminder.claimed", out.GetName(), out)
		},
		// A retry answered from the first claim's record (its answer was
		// lost) must not hand out a lease that has since run out, been
		// taken by another worker or been reported: the worker would send
		// on the strength of it.
		func(tx pgx.Tx, _ *interventionsv1.Reminder) error {
			var held bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM reminders WHERE clinic = $1 AND id = $2
				AND state = 3 AND claimed_by = $3 AND lease_expire_time > $4)`, r.clinic, r.id, req.GetClaimant(), now).Scan(&held); err != nil {
				return fmt.Errorf("recheck claim: %w", err)
			}
			if !held {
				return apperr.FailedPrecondition(reasonClaimLapsed,
					fmt.Sprintf("%s: the claim this request id made has run out, passed to another worker or been reported: claim it again under a new request id", req.GetName()),
					map[string]string{"resource": req.GetName()})
			}
			if meeting {
				m, err := meetingOf(ctx, tx, r, now)
				eventStart, eventEnd = m.start, m.end
				return err
			}
			return nil
		})
	if begun && apperr.Reason(err) == ReasonMeetingBegun {
		what := "the meeting began before it was sent"
		if intakeStart != nil {
			what = "the appointment began before it was sent"
		}
		cancelled, cerr := s.cancelUnheld(ctx, r, now, what, 0)
		if cerr != nil {
			return nil, fmt.Errorf("cancel a reminder of a meeting begun: %w", cerr)
		}
		if !cancelled {
			// A claim lapsed a moment ago, whose claimant may still
			// report it, or an end reached meanwhile: not cancelled now,
			// and the answer must not say so.
			err = apperr.FailedPrecondition(ReasonMeetingBegun,
				fmt.Sprintf("%s announces a meeting or appointment that has begun: it is not sent late (a claim on it that ran out a moment ago may still be reported)", req.GetName()),
				map[string]string{"resource": req.GetName()})
		}
	}
	if late && apperr.Reason(err) == reasonQuietHours {
		if ferr := s.failPastSendBy(ctx, r, now); ferr != nil {
			return nil, ferr
		}
	}
	if err == nil && isFamily(out.GetRecipient().GetKind()) {
		// An extension of the claimant's own live lease: it has the
		// address already, and may be sending.
		extension := pre.GetState() == rClaimed && pre.GetClaimedBy() == req.GetClaimant() &&
			pre.GetLeaseExpireTime() != nil && pre.GetLeaseExpireTime().AsTime().After(now)
		// Refused, the claim this call just made is cancelled however
		// live its lease: no address went with it.
		own := ""
		if !extension {
			own = out.GetEtag()
		}
		if address, err = s.contactAtClaim(ctx, out, extension, own); err != nil {
			return nil, err
		}
	}
	// Only the automation claims (see Policy): it gets its view, and,
	// with the lease, where to send. Set here, after the transaction, the
	// address is in neither the stored answer a retry reads nor the event:
	// a retry reads it from the family again.
	out = consentgate.Reminder(out)
	if out != nil {
		out.Address = address
		if meeting {
			// Not in the stored answer, as the address is not: a retry's
			// recheck read them again. An intake's start is the
			// reminder's own, read with it.
			out.EventStartTime, out.EventEndTime = eventStart, eventEnd
		}
		if out.GetEventStartTime() != nil && out.GetRelatedResource() != "" {
			// Opaque: the event goes to the family's mailbox and
			// calendar, where the related name would say what it is.
			out.EventUid = aip.ID(out.GetRelatedResource()) + "@handoff"
		}
	}
	return out, err
}

// stillContactable asks the families service, as a reminder to someone
// of a family is claimed, whether they may still be contacted. A consent
// withdrawn (a member removed, the loved one no longer to be contacted
// directly, the family deleted) reaches the pending reminders through the
// ContactWithdrawn workflow, which may lag (Temporal down, the outbox
// waiting): asked here, a reminder claimed meanwhile is cancelled instead
// of sent, and the claim is refused CONTACT_NOT_ALLOWED. A families service
// that does not answer fails the claim, to be tried again: a message to
// someone who said no cannot be taken back. The call carries the
// automation's own token, which reads only who may be contacted, and where:
// the address on the reminder's channel is returned, for the claim's answer.
func (s *Server) stillContactable(ctx context.Context, rem *interventionsv1.Reminder) (string, error) {
	if !isFamily(rem.GetRecipient().GetKind()) || (rem.GetState() != rDue && rem.GetState() != rScheduled && rem.GetState() != rClaimed) {
		return "", nil // staff, or past claiming: the claim says why
	}
	lease := rem.GetLeaseExpireTime()
	return s.contactAtClaim(ctx, rem, rem.GetState() == rClaimed && lease != nil && lease.AsTime().After(s.cfg.Now()), "")
}

// contactAtClaim asks the families service whether rem's recipient may
// still be contacted, and answers where to send. Refused, the reminder is
// cancelled and the claim refused CONTACT_NOT_ALLOWED; but under a live
// lease (live) it may be on its way, or gone: the lease is neither
// extended nor taken over, and the reminder is left for its claimant to
// report (cancelled, it would say never sent). A families service that
// does not answer fails the claim, to be tried again: a message to
// someone who said no cannot be taken back.
//
// ClaimReminder asks it twice, before the claim (so that a refused or
// unanswered check stores no claim, and leaves no reminder under a lease)
// and after it (so that a withdrawal committed in between hands out no
// address): one families read more per claim of a reminder to a family.
//
// own is the etag of the claim the calling claim just made, if any: that
// claim is cancelled however live its lease while the reminder is as it
// left it, as its claimant never got the address.
func (s *Server) contactAtClaim(ctx context.Context, rem *interventionsv1.Reminder, live bool, own string) (string, error) {
	rc := rem.GetRecipient()
	channels, err := s.contact(ctx, rc)
	switch {
	case err == nil:
		return addressOn(channels, rc.GetChannel()), nil
	case !contactRefused(err):
		err = fmt.Errorf("check that the recipient may still be contacted: %w", err)
		if own != "" {
			// The claim this call made gave no one the address: left
			// standing, its lease would hold off every claim, this
			// worker's retry under a new request id among them (it has no
			// etag to extend it with), for as long as it runs.
			if rerr := s.releaseOwnClaim(ctx, rem.GetName(), own); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
		return "", err
	}
	refused := func(what string) error {
		return apperr.FailedPrecondition("CONTACT_NOT_ALLOWED", fmt.Sprintf("%s: its recipient may no longer be contacted; %s", rem.GetName(), what),
			map[string]string{"resource": rem.GetName()})
	}
	if live {
		return "", refused("it is not claimed again: its claimant reports what became of it")
	}
	// The caller leaving does not stop this: a claim left standing would
	// be sent by a retry's worker under a new request id. Bounded, as the
	// database may have stopped answering. Not a reminder another claimant
	// may be sending (claimed since this read, or its lease lapsed a moment
	// ago): cancelled, its report would be refused and a message that
	// went out recorded as never sent.
	cctx, cancel := pgdb.Settle(ctx)
	defer cancel()
	r, err := reminderRef(rem.GetName())
	if err != nil {
		return "", err
	}
	ownVersion, _ := aip.ParseEtag(own)
	cancelled, cerr := s.cancelUnheld(cctx, r, s.cfg.Now(), reasonWithdrawnAtClaim, ownVersion)
	if cerr != nil {
		return "", fmt.Errorf("cancel a reminder whose recipient may no longer be contacted: %w", cerr)
	}
	if !cancelled {
		return "", refused("it is not claimed again: a claimant may be sending it, and reports what became of it")
	}
	return "", refused("it was cancelled")
}

// releaseOwnClaim ends, at once, the lease of the claim of reminder name
// whose etag is own, if the reminder is still as that claim left it.
func (s *Server) releaseOwnClaim(ctx context.Context, name, own string) error {
	r, err := reminderRef(name)
	if err != nil {
		return err
	}
	version, _ := aip.ParseEtag(own)
	cctx, cancel := pgdb.Settle(ctx)
	defer cancel()
	now := s.cfg.Now()
	if _, err := s.pool.Exec(cctx, `UPDATE reminders SET lease_expire_time = $3, update_time = $3, version = version + 1
		WHERE clinic = $1 AND id = $2 AND state = $4 AND version = $5`, r.clinic, r.id, now, int16(rClaimed), version); err != nil {
		return fmt.Errorf("release the claim: %w", err)
	}
	return nil
}

// contactRefused reports whether err is the families service's answer
// that a recipient may not be contacted (CONTACT_NOT_ALLOWED, or a member
// or family no longer there), rather than its failure to answer.
func contactRefused(err error) bool {
	return apperr.Reason(err) == "CONTACT_NOT_ALLOWED" || apperr.IsCode(err, codes.InvalidArgument)
}

// reasonWithdrawnAtClaim is the cancel reason of a reminder cancelled at
// its claim because its recipient may no longer be contacted.
const reasonWithdrawnAtClaim = "contact withdrawn before it was sent"

// ReasonMeetingBegun refuses the claim of a reminder of a meeting (or an
// intake appointment) coming up once it has begun (the automation was
// down, say): sent then, "family meeting at 10:00" would reach the family
// at 11:00.
const ReasonMeetingBegun = "MEETING_BEGUN"

// meetingRead is what a claim needs of the meeting a reminder announces.
type meetingRead struct {
	// begun: the reminder, not yet claimed or its claim lapsed, announces
	// a meeting that has begun by now.
	begun bool
	// start and end: the meeting's times, while it is scheduled.
	start, end *timestamppb.Timestamp
}

// unheld is the condition that reminder m (its alias) would go out if
// claimed now: scheduled, or its claim lapsed (the claimant gone).
// scheduled, claimed and now name the arguments holding those states and
// the claim's time.
func unheld(m, scheduled, claimed, now string) string {
	return fmt.Sprintf("(%[1]s.state = %[2]s OR (%[1]s.state = %[3]s AND %[1]s.lease_expire_time <= %[4]s))", m, scheduled, claimed, now)
}

// meetingOf reads, in one round trip on the claim's path, the meeting
// coming up that reminder r announces: the reminder joined by its related
// name to the intervention's key. Nothing is found for a reminder of
// another kind or naming no intervention of its clinic.
func meetingOf(ctx context.Context, tx pgx.Tx, r ref, now time.Time) (meetingRead, error) {
	var (
		out                  meetingRead
		from, to             *time.Time
		claimable, scheduled bool
	)
	err := tx.QueryRow(ctx, `SELECT i.start_time, i.end_time, i.state = $7, `+unheld("m", "$4", "$5", "$6")+`
		FROM reminders m
		JOIN interventions i ON i.clinic = m.clinic AND i.id = split_part(m.related_resource, '/', 4)
		WHERE m.clinic = $1 AND m.id = $2 AND m.kind = $3
			AND m.related_resource = 'clinics/' || m.clinic || '/interventions/' || i.id`,
		r.clinic, r.id, int16(interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_UPCOMING), int16(rScheduled), int16(rClaimed), now,
		int16(interventionsv1.InterventionState_INTERVENTION_STATE_SCHEDULED)).Scan(&from, &to, &scheduled, &claimable)
	if errors.Is(err, pgx.ErrNoRows) {
		return out, nil
	}
	if err != nil {
		return out, fmt.Errorf("read the reminder's meeting: %w", err)
	}
	// Not yet claimed, or its claim lapsed (the claimant gone): either
	// would go out now.
	out.begun = claimable && from != nil && !from.After(now)
	if scheduled && from != nil && to != nil {
		out.start, out.end = timestamppb.New(*from), timestamppb.New(*to)
	}
	return out, nil
}

// reminderRef is the key of a reminder named as the service names them.
func reminderRef(name string) (ref, error) {
	ids, err := aip.Parse(name, "clinics", "reminders")
	if err != nil {
		return ref{}, fmt.Errorf("reminder name %q: %w", name, err)
	}
	return ref{ids[0], ids[1]}, nil
}

// cancelUnheld cancels reminder r for reason, in a transaction of its
// own, unless a claimant may be sending it: under a live lease, or one
// lapsed less than lapsedGrace ago, whose claimant may have sent it and be
// about to report (cancelled, its report would be refused and a message
// that went out recorded as never sent). A claim at version own (the
// caller's own, whose claimant got no address) is cancelled however live
// its lease; 0 names none. cancelled is false when it was left so, or had
// ended already.
func (s *Server) cancelUnheld(ctx context.Context, r ref, now time.Time, reason string, own int64) (cancelled bool, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `UPDATE reminders SET state = $3, cancel_reason = $4, update_time = $5, version = version + 1
			WHERE clinic = $1 AND id = $2 AND (state = $6 OR (state = $7 AND (lease_expire_time <= $8 OR version = $9))) RETURNING `+reminderColumns,
			r.clinic, r.id, int16(rCancelled), reason, now, int16(rScheduled), int16(rClaimed), now.Add(-lapsedGrace), own)
		if err != nil {
			return fmt.Errorf("cancel reminder: %w", err)
		}
		rems, err := pgx.CollectRows(rows, s.scanReminder(r.clinic))
		if err != nil {
			return fmt.Errorf("cancel reminder: %w", err)
		}
		for _, rem := range rems {
			if err := emit(ctx, tx, r.clinic, "reminder.cancelled", rem.GetName(), rem); err != nil {
				return err
			}
		}
		cancelled = len(rems) > 0
		return nil
	})
	return cancelled, err
}

// final reports whether a reminder in state st has ended: delivered,
// failed or cancelled.
func final(st interventionsv1.ReminderState) bool {
	return st == rDelivered || st == rFailed || st == rCancelled
}

// reasonClaimLapsed is the reason of a retried claim whose lease is gone.
const reasonClaimLapsed = "CLAIM_LAPSED"

// reasonQuietHours is the reason of a claim refused because the
// recipient's quiet hours began before the reminder went out.
const reasonQuietHours = "QUIET_HOURS"

// quietHoursFailure is the failure reason of a reminder failed by a claim
// that came after its send-by time.
const quietHoursFailure = "the recipient's quiet hours began before it was sent"

// notExtended refuses a claimant its lease past the send-by time.
func notExtended(name string) error {
	return apperr.FailedPrecondition(reasonQuietHours,
		fmt.Sprintf("%s: the recipient's quiet hours have begun, so the claim is not extended; report what was sent", name),
		map[string]string{"resource": name})
}

func quietHoursBegan(name string) error {
	return apperr.FailedPrecondition(reasonQuietHours,
		fmt.Sprintf("%s was not sent before its recipient's quiet hours began: it fails, and the workflow that made it sends it again after them", name),
		map[string]string{"resource": name})
}

// quietHoursBeganAwaitingReport is quietHoursBegan for a reminder whose
// last claim ran out a moment ago: it does not fail yet, as its claimant
// may have sent it and may still report.
func quietHoursBeganAwaitingReport(name string) error {
	return apperr.FailedPrecondition(reasonQuietHours,
		fmt.Sprintf("%s was not sent before its recipient's quiet hours began, and its last claim ran out a moment ago: its claimant may still report it; if none does, it fails, and the workflow that made it sends it again after them", name),
		map[string]string{"resource": name})
}

// lapsedGrace is how long past its lease a claimant's report is still
// awaited before a later claim, refused for quiet hours, fails the
// reminder.
const lapsedGrace = 5 * time.Minute

// failPastSendBy fails reminder r, in a transaction of its own, if it is
// still to be sent (due, or its claim lapsed more than lapsedGrace ago)
// and its send-by time has come: a message held back for the recipient's
// quiet hours must not go out in them because the automation came late.
// A claim lapsed only just is left to its claimant, who may have sent the
// message and be about to report it: failed now, its report would be
// refused and the message sent again after the quiet hours. The failure reaches the
// workflow that made it, which sends it again after them. It commits the
// call's audit record with the change (as OK, a change made); the call
// then records its refusal too, as any call that changed something and
// failed.
func (s *Server) failPastSendBy(ctx context.Context, r ref, now time.Time) error {
	var failed *interventionsv1.Reminder
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE reminders SET state = $3, failure_reason = $4, update_time = $5, version = version + 1
			WHERE clinic = $1 AND id = $2 AND send_by_time <= $5 AND (state = $6 OR (state = $7 AND lease_expire_time <= $8))`,
			r.clinic, r.id, int16(rFailed), quietHoursFailure, now, int16(rScheduled), int16(rClaimed), now.Add(-lapsedGrace))
		if err != nil {
			return fmt.Errorf("fail a reminder past its send-by time: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return nil // failed by a claim racing this one
		}
		failed, err = s.ended(ctx, tx, r)
		return err
	})
	if err == nil && failed != nil {
		countEnded(ctx, failed)
	}
	return err
}

// ended reads reminder r, just given its final delivery state in tx, and
// tells of it: every path to DELIVERED or FAILED ends here, so the
// workflow that made the reminder hears of each the same way. The caller
// counts it (countEnded) once tx commits.
func (s *Server) ended(ctx context.Context, tx pgx.Tx, r ref) (*interventionsv1.Reminder, error) {
	out, err := s.readReminder(ctx, tx, r, false)
	if err != nil {
		return nil, err
	}
	event := "reminder.delivered"
	if out.GetState() == rFailed {
		event = "reminder.failed"
	}
	return out, emit(ctx, tx, r.clinic, event, out.GetName(), out)
}

// countEnded counts a reminder whose delivery ended, in a transaction that
// committed.
func countEnded(ctx context.Context, out *interventionsv1.Reminder) {
	if out.GetState() == rFailed {
		remindersFailed.Add(ctx, 1, kindAttr(out.GetKind().String()))
		return
	}
	remindersDelivered.Add(ctx, 1, kindAttr(out.GetKind().String()))
}

// CompleteReminder implements the API: only the current claimant may, also
// after its lease ran out if nobody claimed the reminder since.
func (s *Server) CompleteReminder(ctx context.Context, req *interventionsv1.CompleteReminderRequest) (*interventionsv1.Reminder, error) {
	r, err := authorized(ctx, "name", req.GetName(), "reminders")
	if err != nil {
		return nil, err
	}
	if req.GetResult() == interventionsv1.DeliveryResult_DELIVERY_RESULT_UNSPECIFIED {
		return nil, apperr.Field("result", "is required: DELIVERED or FAILED")
	}
	failed := req.GetResult() == interventionsv1.DeliveryResult_DELIVERY_RESULT_FAILED
	if failed && strings.TrimSpace(req.GetReason()) == "" {
		return nil, apperr.Field("reason", "is required for FAILED: why delivery failed, for example \"number not in service\"")
	}
	// Only the automation completes (see Policy): it gets its view.
	var ended *interventionsv1.Reminder
	out, err := idempotency.InTx(ctx, s.pool, r.clinic, svc+"CompleteReminder", req.GetRequestId(), req, newReminder,
		func(tx pgx.Tx) (*interventionsv1.Reminder, error) {
			cur, err := s.readReminder(ctx, tx, r, true)
			if err != nil {
				return nil, err
			}
			// The state and the claimant first, the etag after: a report
			// on a reminder cancelled meanwhile, or retried after it
			// committed, is FAILED_PRECONDITION whatever etag it carries,
			// not ABORTED, which would have it read and tried again.
			// A claimant whose lease ran out, and whom nobody replaced (a
			// new claim takes claimed_by), still reports: the message went
			// out, and refusing the report would have it sent again. Only
			// a claim sets a lease, so DUE with one is a lapsed claim.
			lapsed := cur.GetState() == rDue && cur.GetLeaseExpireTime() != nil
			if cur.GetState() != rClaimed && !lapsed {
				return nil, apperr.InvalidTransition(cur.GetName(), strings.TrimPrefix(cur.GetState().String(), "REMINDER_STATE_"), "COMPLETED")
			}
			if cur.GetClaimedBy() != req.GetClaimant() {
				return nil, apperr.FailedPrecondition(apperr.ReasonLeaseHeld,
					fmt.Sprintf("%s is not claimed by %q (state %s)", cur.GetName(), req.GetClaimant(), cur.GetState()),
					map[string]string{"resource": cur.GetName()})
			}
			if err := aip.CheckEtag(cur.GetName(), req.GetEtag(), cur.GetEtag()); err != nil {
				return nil, err
			}
			now := s.cfg.Now()
			st := rDelivered
			var delivered *time.Time
			failureReason := ""
			if failed {
				st, failureReason = rFailed, cleanFailureReason(req.GetReason(), cur.GetMessage())
			} else {
				delivered = &now
			}
			if _, err := tx.Exec(ctx, `UPDATE reminders SET state = $3, failure_reason = $4, deliver_time = $5,
				update_time = $6, version = version + 1 WHERE clinic = $1 AND id = $2`,
				r.clinic, r.id, int16(st), failureReason, delivered, now); err != nil {
				return nil, fmt.Errorf("complete reminder: %w", err)
			}
			ended, err = s.ended(ctx, tx, r)
			return ended, err
		})
	if err == nil && ended != nil {
		countEnded(ctx, ended)
	}
	return consentgate.Reminder(out), err
}

// meetingKinds are the reminders about a meeting that are made only while
// it stands: of it coming up, of a place not held ahead of it, of its
// outcome not recorded. A meeting's other reminders (of the intake, the
// boundaries, the check-ins that follow it) are made after its outcome.
var meetingKinds = map[interventionsv1.ReminderKind]bool{
	interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_UPCOMING:      true,
	interventionsv1.ReminderKind_REMINDER_KIND_TREATMENT_HOLD_UNAVAILABLE: true,
	interventionsv1.ReminderKind_REMINDER_KIND_OUTCOME_OVERDUE:            true,
	interventionsv1.ReminderKind_REMINDER_KIND_OUTCOME_ESCALATION:         true,
}

// cancelMeetingReminders cancels, in tx, the reminders about the meeting
// related that are made only while it stands (meetingKinds): its outcome
// is recorded, and they must not go out in the time the workflow takes to
// hear of it.
func (s *Server) cancelMeetingReminders(ctx context.Context, tx pgx.Tx, clinic, related, reason string) error {
	kinds := make([]int16, 0, len(meetingKinds))
	for k := range meetingKinds {
		kinds = append(kinds, int16(k))
	}
	return s.cancel(ctx, tx, clinic, related, reason, interventionsv1.RecipientKind_RECIPIENT_KIND_UNSPECIFIED, nil, kinds)
}

// cancelCounselorReminders cancels, in tx, the reminders of the meeting
// related coming up to a counselor who no longer leads it, as the
// workflow does when it hears of the handover. Those of an outcome
// overdue stay: the meeting was theirs, and so is recording its outcome.
func (s *Server) cancelCounselorReminders(ctx context.Context, tx pgx.Tx, clinic, related, counselor string) error {
	return s.cancel(ctx, tx, clinic, related, "no longer leading the meeting", interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR,
		[]string{counselor}, []int16{int16(interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_UPCOMING)})
}

// cancelRemindersOf cancels, in tx, every reminder about related that is
// still to be sent (scheduled, due or claimed), with an event for each, as
// CancelReminder would. A cancelled or moved meeting's reminders must not
// go out in the time the workflow takes to hear of it (the outbox, the
// relay, a hold release retried while the referrals service is away); the
// workflow's own cancellation then finds them done.
func (s *Server) cancelRemindersOf(ctx context.Context, tx pgx.Tx, clinic, related, reason string) error {
	return s.cancelRemindersTo(ctx, tx, clinic, related, reason, nil)
}

// cancelRemindersTo is cancelRemindersOf for the reminders to the family
// members given only, or to everyone if members is nil.
func (s *Server) cancelRemindersTo(ctx context.Context, tx pgx.Tx, clinic, related, reason string, members []string) error {
	return s.cancel(ctx, tx, clinic, related, reason, interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER, members, nil)
}

// cancel cancels, in tx, the reminders about related that are still to be
// sent: to the recipients of kind who named in who, or to everyone if who
// is nil; of the kinds given, or of every kind if kinds is nil.
func (s *Server) cancel(ctx context.Context, tx pgx.Tx, clinic, related, reason string, who interventionsv1.RecipientKind, members []string, kinds []int16) error {
	rows, err := tx.Query(ctx, `UPDATE reminders SET state = $3, cancel_reason = $4, update_time = $5, version = version + 1
		WHERE clinic = $1 AND related_resource = $2 AND state IN ($6, $7)
			AND ($8::text[] IS NULL OR (recipient_kind = $9 AND recipient_id = ANY($8)))
			AND ($10::smallint[] IS NULL OR kind = ANY($10)) RETURNING `+reminderColumns,
		clinic, related, int16(rCancelled), reason, s.cfg.Now(), int16(rScheduled), int16(rClaimed),
		members, int16(who), kinds)
	if err != nil {
		return fmt.Errorf("cancel reminders of %s: %w", related, err)
	}
	rems, err := pgx.CollectRows(rows, s.scanReminder(clinic))
	if err != nil {
		return fmt.Errorf("cancel reminders of %s: %w", related, err)
	}
	for _, rem := range rems {
		if err := emit(ctx, tx, clinic, "reminder.cancelled", rem.GetName(), rem); err != nil {
			return err
		}
	}
	return nil
}

// deliveryOnly reports whether the caller is the reminder automation and
// nothing more (no staff or worker role).
func deliveryOnly(ctx context.Context) bool {
	p, ok := auth.FromContext(ctx)
	return ok && p.Has(auth.RoleReminders) && !p.Has(auth.RoleCounselor, auth.RoleClinicAdmin, auth.RoleWorker)
}

// deliveryFields are the list filters the automation may use: none on what
// its view (consentgate.Reminder) leaves out, or a filter could ask what
// the view hides; related_resource matches the top-level record it sees.
var deliveryFields = func() map[string]aip.FilterField {
	f := aip.Without(reminderFields, "origin_workflow", "kind")
	f["related_resource"] = aip.FilterField{Column: consentgate.TopResourceSQL("related_resource"), Kind: aip.String}
	return f
}()

// CancelReminder implements the API.
func (s *Server) CancelReminder(ctx context.Context, req *interventionsv1.CancelReminderRequest) (*interventionsv1.Reminder, error) {
	r, err := authorized(ctx, "name", req.GetName(), "reminders")
	if err != nil {
		return nil, err
	}
	return idempotency.InTx(ctx, s.pool, r.clinic, svc+"CancelReminder", req.GetRequestId(), req, newReminder,
		func(tx pgx.Tx) (*interventionsv1.Reminder, error) {
			cur, err := s.readReminder(ctx, tx, r, true)
			if err != nil {
				return nil, err
			}
			if err := aip.CheckEtag(cur.GetName(), req.GetEtag(), cur.GetEtag()); err != nil {
				return nil, err
			}
			switch cur.GetState() {
			case rScheduled, rDue, rClaimed:
			default:
				return nil, apperr.InvalidTransition(cur.GetName(), strings.TrimPrefix(cur.GetState().String(), "REMINDER_STATE_"), "CANCELLED")
			}
			if _, err := tx.Exec(ctx, `UPDATE reminders SET state = $3, cancel_reason = $4, update_time = $5, version = version + 1
				WHERE clinic = $1 AND id = $2`, r.clinic, r.id, int16(rCancelled), req.GetReason(), s.cfg.Now()); err != nil {
				return nil, fmt.Errorf("cancel reminder: %w", err)
			}
			out, err := s.readReminder(ctx, tx, r, false)
			if err != nil {
				return nil, err
			}
			return out, emit(ctx, tx, r.clinic, "reminder.cancelled", out.GetName(), out)
		})
}
