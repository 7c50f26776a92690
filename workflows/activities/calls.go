package activities

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	familiesv1 "github.com/handoff-health/handoff/gen/go/handoff/families/v1"
	interventionsv1 "github.com/handoff-health/handoff/gen/go/handoff/interventions/v1"
	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
	"github.com/handoff-health/handoff/services/boundaries"
	"github.com/handoff-health/handoff/workflows/schedule"
)

// Counselor in-app reminders need no contact details; supervisors are the
// clinic's supervisor queue.
const supervisors = "supervisors"

// Supervisors is the recipient for escalations to a clinic's supervisors.
func Supervisors() Person { return Person{Kind: "supervisor", ID: supervisors, Channel: "IN_APP"} }

func counselor(id string) Person { return Person{Kind: "counselor", ID: id, Channel: "IN_APP"} }

// memberChannel is the channel a member is reminded on: their preferred
// one, else their first.
func memberChannel(m *familiesv1.Member) familiesv1.ChannelKind {
	ch := m.GetPreferredChannel()
	if ch == familiesv1.ChannelKind_CHANNEL_KIND_UNSPECIFIED && len(m.GetContactChannels()) > 0 {
		ch = m.GetContactChannels()[0].GetKind()
	}
	return ch
}

func memberPerson(family string, m *familiesv1.Member) Person {
	ch := memberChannel(m)
	p := Person{Kind: "member", ID: m.GetId(), Family: family, TimeZone: m.GetTimeZone(),
		Channel: strings.TrimPrefix(ch.String(), "CHANNEL_KIND_")}
	if q := m.GetQuietHours(); q != nil {
		p.QuietStart, p.QuietEnd = q.GetStart(), q.GetEnd()
	}
	return p
}

// reachable reports whether a member may get reminders: consent and a channel.
func reachable(m *familiesv1.Member) bool {
	return m.GetConsentToContact() && len(m.GetContactChannels()) > 0
}

// LoadPlan reads the intervention and its family.
func (a *Activities) LoadPlan(ctx context.Context, intervention string) (Plan, error) {
	iv, err := a.Interventions.GetIntervention(ctx, &interventionsv1.GetInterventionRequest{Name: intervention})
	if err != nil {
		return Plan{}, wrap("get intervention", err)
	}
	fam, err := a.Families.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: iv.GetFamily()})
	if err != nil {
		return Plan{}, wrap("get family", err)
	}
	members := map[string]*familiesv1.Member{}
	for _, m := range fam.GetMembers() {
		members[m.GetId()] = m
	}
	p := Plan{Clinic: aip.Clinic(intervention), Intervention: intervention, Family: iv.GetFamily(),
		Counselor: counselor(iv.GetCounselor()), Start: iv.GetStartTime().AsTime(), Duration: iv.GetExpectedDuration().AsDuration(),
		Level: int32(iv.GetLevel()), State: strings.TrimPrefix(iv.GetState().String(), "INTERVENTION_STATE_"),
	}
	// An unset first contact stays the zero time, not the epoch AsTime
	// would make of it.
	if fc := fam.GetFirstContactTime(); fc != nil {
		p.FirstContact = fc.AsTime()
	}
	p.Counselor.TimeZone = iv.GetTimeZone()
	for _, part := range iv.GetParticipants() {
		if m := members[part.GetMemberId()]; m != nil && reachable(m) {
			person := memberPerson(iv.GetFamily(), m)
			if person.TimeZone == "" {
				// A member who gave no zone is told the meeting's time in
				// the meeting's zone, as the intervention's time_zone says,
				// not in UTC ("3:00 PM UTC" for a 10:00 meeting in New
				// York), and reminded days ahead by its calendar.
				person.TimeZone, person.EventZone = iv.GetTimeZone(), true
			}
			p.Participants = append(p.Participants, person)
		}
	}
	return p, nil
}

var matKinds = []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE,
	referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE, referralsv1.ServiceKind_SERVICE_KIND_MAT_NALTREXONE}

// matchRequest builds a match for the loved one, from the family's
// unresolved barriers and coverage, with the tiers its services are
// matched in (matchInTiers). No kinds asks for the treatments that suit
// the loved one (suitedTiers); kinds named, the ones the loved one agreed
// to, are one tier.
func (a *Activities) matchRequest(ctx context.Context, family string, kinds []referralsv1.ServiceKind,
	urgency referralsv1.Urgency, exclude []string) (*referralsv1.MatchProgramsRequest, [][]referralsv1.ServiceKind, error) {
	fam, err := a.Families.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: family})
	if err != nil {
		return nil, nil, wrap("get family", err)
	}
	req, err := a.matchFor(ctx, family, fam, "", kinds, urgency, exclude)
	if err != nil {
		return nil, nil, err
	}
	if len(kinds) > 0 {
		return req, [][]referralsv1.ServiceKind{kinds}, nil
	}
	return req, suitedTiers(fam.GetLovedOne().GetPrimarySubstance(), req.GetBarriers()), nil
}

// matchInTiers matches req for one tier of services at a time, in order,
// and hands try each program matched, with the tier's services, until try
// is done or fails: the next tier is matched only when no program of the
// ones before took the person. A program already handed over is not
// handed over again for a later tier (it had no place, or was refused).
func (a *Activities) matchInTiers(ctx context.Context, req *referralsv1.MatchProgramsRequest, tiers [][]referralsv1.ServiceKind,
	try func(m *referralsv1.ProgramMatch, kinds []referralsv1.ServiceKind) (bool, error)) (bool, error) {
	tried := map[string]bool{}
	for _, kinds := range tiers {
		r := proto.CloneOf(req)
		r.ServiceKinds = kinds
		matches, err := a.Referrals.MatchPrograms(ctx, r)
		if err != nil {
			return false, wrap("match programs", err)
		}
		for _, m := range matches.GetMatches() {
			if tried[m.GetProgram().GetName()] {
				continue
			}
			tried[m.GetProgram().GetName()] = true
			if done, err := try(m, kinds); done || err != nil {
				return done, err
			}
		}
	}
	return false, nil
}

// matchFor builds a match for fam (read already, named family) from its
// unresolved barriers and coverage, for the loved one or, when member is
// given, for that member. The loved one's match also carries where they
// would travel from and the language they speak, which favor programs they
// can reach and talk to; a member's own are not on the record.
func (a *Activities) matchFor(ctx context.Context, family string, fam *familiesv1.Family, member string, kinds []referralsv1.ServiceKind,
	urgency referralsv1.Urgency, exclude []string) (*referralsv1.MatchProgramsRequest, error) {
	// A family may record two barriers of one kind (two money troubles,
	// say); the match takes each kind once, as it refuses a kind twice.
	var openKinds []referralsv1.BarrierKind
	for token := ""; ; {
		page, err := a.Families.ListBarriers(ctx, &familiesv1.ListBarriersRequest{Parent: family, Filter: "resolved = false", PageSize: 1000, PageToken: token})
		if err != nil {
			return nil, wrap("list barriers", err)
		}
		for _, b := range page.GetBarriers() {
			// The enums share their numbers across the two services.
			if k := referralsv1.BarrierKind(b.GetKind()); !slices.Contains(openKinds, k) {
				openKinds = append(openKinds, k)
			}
		}
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	req := &referralsv1.MatchProgramsRequest{Barriers: openKinds, Parent: "clinics/" + aip.Clinic(family), ServiceKinds: kinds, Urgency: urgency,
		Coverage: referralsv1.CoverageKind(fam.GetCoverage().GetKind()), ExcludePrograms: exclude, MaxResults: 5}
	if lo := fam.GetLovedOne(); member == "" {
		req.Locality, req.PostalCode, req.Language, req.PrefersTelehealth = lo.GetLocality(), lo.GetPostalCode(), lo.GetLanguage(), lo.GetPrefersTelehealth()
		req.Age = age(lo.GetBirthDate(), lo.GetTimeZone(), time.Now())
	}
	if len(kinds) == 0 && member == "" {
		req.ServiceKinds = suited(fam.GetLovedOne().GetPrimarySubstance(), req.Barriers)
	}
	return req, nil
}

// suited are the treatments that fit the loved one, most fitting first
// (suitedTiers, flattened): what is held ahead of the meeting, and what a
// yes naming no treatment refers them to.
func suited(substance familiesv1.Substance, barriers []referralsv1.BarrierKind) []referralsv1.ServiceKind {
	return slices.Concat(suitedTiers(substance, barriers)...)
}

// suitedTiers are the treatments that fit the loved one, from the
// substance they use and their open barriers, in tiers: a program that
// offers a treatment of an earlier tier is taken before any that offers
// only later ones, however well the match scores it, as the score weighs
// coverage, place and barriers and counts every treatment asked for alike.
// Methadone and buprenorphine treat opioid use alone; of the medications
// here only naltrexone treats alcohol use, and none treats stimulants, for
// which care without medication is the treatment. Naltrexone is a tier of
// its own, last, for opioids, as it starts only after withdrawal, which
// the person who just said yes has not been through; buprenorphine is a
// tier before methadone when work or caregiving stands in the way, as
// methadone means a visit to an opioid treatment program most days. Care
// goes from the least intensive up, in one tier with naltrexone for
// alcohol. A substance not recorded keeps any medication, in one tier.
func suitedTiers(substance familiesv1.Substance, barriers []referralsv1.BarrierKind) [][]referralsv1.ServiceKind {
	const (
		meth = referralsv1.ServiceKind_SERVICE_KIND_MAT_METHADONE
		bup  = referralsv1.ServiceKind_SERVICE_KIND_MAT_BUPRENORPHINE
		nalt = referralsv1.ServiceKind_SERVICE_KIND_MAT_NALTREXONE
	)
	care := []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT,
		referralsv1.ServiceKind_SERVICE_KIND_INTENSIVE_OUTPATIENT, referralsv1.ServiceKind_SERVICE_KIND_INPATIENT}
	switch substance {
	case familiesv1.Substance_SUBSTANCE_HEROIN, familiesv1.Substance_SUBSTANCE_FENTANYL, familiesv1.Substance_SUBSTANCE_PRESCRIPTION_OPIOIDS:
		if slices.ContainsFunc(barriers, func(b referralsv1.BarrierKind) bool {
			return b == referralsv1.BarrierKind_BARRIER_KIND_LOGISTICAL_WORK || b == referralsv1.BarrierKind_BARRIER_KIND_LOGISTICAL_CAREGIVING
		}) {
			return [][]referralsv1.ServiceKind{{bup}, {meth}, {nalt}}
		}
		return [][]referralsv1.ServiceKind{{meth, bup}, {nalt}}
	case familiesv1.Substance_SUBSTANCE_ALCOHOL:
		return [][]referralsv1.ServiceKind{append([]referralsv1.ServiceKind{nalt}, care...)}
	case familiesv1.Substance_SUBSTANCE_STIMULANTS, familiesv1.Substance_SUBSTANCE_OTHER:
		return [][]referralsv1.ServiceKind{care}
	}
	return [][]referralsv1.ServiceKind{slices.Clone(matKinds)}
}

// age is the age in whole years, on the day now falls on in zone (UTC if
// it does not load), of someone born on birth (YYYY-MM-DD); 0 when birth
// is unset, does not parse, or lies ahead: the match then leaves age out.
func age(birth, zone string, now time.Time) int32 {
	born, err := time.Parse(time.DateOnly, birth)
	if err != nil {
		return 0
	}
	now = now.UTC()
	if loc, err := time.LoadLocation(zone); err == nil {
		now = now.In(loc)
	}
	years := now.Year() - born.Year()
	if now.Month() < born.Month() || now.Month() == born.Month() && now.Day() < born.Day() {
		years--
	}
	if years <= 0 || years > 130 {
		return 0
	}
	return int32(years)
}

// HoldTreatment holds an intake slot, for a treatment that suits the loved
// one, at the best-fitting program with a free slot and ticks it on the
// intervention's checklist. No program with a free slot is a non-retryable
// NO_CAPACITY error. A retry whose first attempt took the hold but failed
// later reuses that hold: the match may no longer offer its program, whose
// last slot may be the one held.
func (a *Activities) HoldTreatment(ctx context.Context, in HoldRequest) (HoldResult, error) {
	fam, err := a.Families.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: in.Family})
	if err != nil {
		return HoldResult{}, wrap("get family", err)
	}
	// Which treatments suit depends on the substance alone (the barriers
	// only order them): the barriers are read for a new hold only.
	lo := fam.GetLovedOne()
	years := age(lo.GetBirthDate(), lo.GetTimeZone(), time.Now())
	hold, err := a.lastingHold(ctx, in, suited(lo.GetPrimarySubstance(), nil), years)
	if err != nil {
		return HoldResult{}, err
	}
	if hold == nil {
		req, err := a.matchFor(ctx, in.Family, fam, "", nil, referralsv1.Urgency_URGENCY_IMMEDIATE, nil)
		if err != nil {
			return HoldResult{}, err
		}
		tiers := suitedTiers(fam.GetLovedOne().GetPrimarySubstance(), req.GetBarriers())
		if hold, err = a.holdBest(ctx, in, req, tiers); err != nil {
			return HoldResult{}, err
		}
	} else if hold.GetWorkflowHeld() && mayBeLaterTier(lo.GetPrimarySubstance(), hold.GetServiceKind()) {
		// A place the workflow held for a later tier, when no program of
		// an earlier one had room: one that has room now takes its place.
		// A counselor's is theirs to keep.
		req, err := a.matchFor(ctx, in.Family, fam, "", nil, referralsv1.Urgency_URGENCY_IMMEDIATE, nil)
		if err != nil {
			return HoldResult{}, err
		}
		tiers := suitedTiers(fam.GetLovedOne().GetPrimarySubstance(), req.GetBarriers())
		if i := tierOf(hold.GetServiceKind(), tiers); i > 0 {
			// One a first attempt held there, its answer lost, is taken
			// first: the match would not offer its program again, whose
			// last place it may have taken.
			better, err := a.lastingHold(ctx, in, slices.Concat(tiers[:i]...), years)
			if err != nil {
				return HoldResult{}, err
			}
			if better == nil {
				better, err = a.holdBest(ctx, in, req, tiers[:i])
			}
			if err != nil && ErrorType(err) != "NO_CAPACITY" {
				return HoldResult{}, err
			}
			if better != nil {
				if err := a.ReleaseHold(ctx, ReleaseRequest{Hold: hold.GetName(), Reason: "a treatment that fits better had a place",
					RequestID: subID(in.RequestID, "release-later-tier", hold.GetName())}); err != nil {
					return HoldResult{}, err
				}
				hold = better
			}
		}
	}
	if _, err := a.Interventions.UpdateChecklistItem(ctx, &interventionsv1.UpdateChecklistItemRequest{Name: in.Intervention,
		Kind: interventionsv1.ChecklistItemKind_CHECKLIST_ITEM_KIND_TREATMENT_OPTION_HELD, Done: true, Hold: hold.GetName(),
		Note: "held by the workflow", RequestId: in.RequestID + "-checklist"}); err != nil {
		// The outcome or a cancellation can close the intervention while
		// the slot is being held. The hold is the intervention's all the
		// same: returned, the workflow converts it on acceptance and
		// releases it otherwise, where an error would leave it held until
		// it lapses and tell the counselor no program had room.
		if ErrorType(wrap("", err)) != "INVALID_STATE_TRANSITION" {
			return HoldResult{}, wrap("tick checklist", err)
		}
	}
	res := HoldResult{Hold: hold.GetName(), Program: hold.GetProgram()}
	if hold.GetExpireTime() != nil {
		res.Expires = hold.GetExpireTime().AsTime()
	}
	return res, nil
}

// lastingHold is the first live hold of the intervention for the family,
// for one of kinds (what suits the loved one), that lasts until in.Until
// (as far as a hold can last). A place for another treatment is neither
// adopted nor given back: a yes naming no treatment converts the meeting's
// place as it is, which must suit, and a counselor may have held that
// place by hand. One an earlier try made before the family's record said
// what the loved one uses lapses at its expiry. One that lapses sooner,
// left by a reschedule whose release failed, is no use to the meeting: it
// is given back, not adopted, or the meeting would keep a place that is
// gone by the time the loved one says yes.
func (a *Activities) lastingHold(ctx context.Context, in HoldRequest, kinds []referralsv1.ServiceKind, years int32) (*referralsv1.Hold, error) {
	holds, err := a.liveHoldsOf(ctx, in.Intervention, in.Family, nil, kinds)
	if err != nil {
		return nil, err
	}
	for _, h := range holds {
		until := in.Until
		if longest := h.GetCreateTime().AsTime().Add(maxHoldTTL - time.Hour); until.After(longest) {
			until = longest // no hold lasts longer: one this request made, as long as it could be, counts
		}
		if !in.Until.IsZero() && h.GetExpireTime().AsTime().Before(until) {
			// A counselor's place stays theirs until they release it or
			// it lapses: not adopted, not given back.
			if !h.GetWorkflowHeld() {
				continue
			}
			if err := a.ReleaseHold(ctx, ReleaseRequest{Hold: h.GetName(), Reason: "it lapses before the rescheduled meeting ends",
				RequestID: subID(in.RequestID, "release-short", h.GetName())}); err != nil {
				return nil, err
			}
			continue
		}
		// Lasting. A place at a program whose age limits leave the loved
		// one out (their birth date recorded since, or the limits
		// changed) is not adopted; the workflow's own is given back. The
		// program is read only for a place that would be adopted.
		if years > 0 {
			p, err := a.Referrals.GetProgram(ctx, &referralsv1.GetProgramRequest{Name: h.GetProgram()})
			if ErrorType(wrap("", err)) == "RESOURCE_NOT_FOUND" {
				continue
			}
			if err != nil {
				return nil, wrap("get program", err)
			}
			if !ageFits(p, years) {
				if h.GetWorkflowHeld() {
					if err := a.ReleaseHold(ctx, ReleaseRequest{Hold: h.GetName(), Reason: "the loved one is outside its program's age limits",
						RequestID: subID(in.RequestID, "release-age", h.GetName())}); err != nil {
						return nil, err
					}
				}
				continue
			}
		}
		return h, nil
	}
	return nil, nil
}

// maxHoldTTL is the longest hold the referrals API takes.
const maxHoldTTL = 14 * 24 * time.Hour

// holdBest holds a slot at the best program req matches that still has
// one, for the first service it offers of the first tier it offers any of
// (matchInTiers).
func (a *Activities) holdBest(ctx context.Context, in HoldRequest, req *referralsv1.MatchProgramsRequest, tiers [][]referralsv1.ServiceKind) (*referralsv1.Hold, error) {
	// The API takes holds of one minute to 14 days.
	ttl := min(max(in.TTL, time.Minute), maxHoldTTL)
	var hold *referralsv1.Hold
	done, err := a.matchInTiers(ctx, req, tiers, func(m *referralsv1.ProgramMatch, kinds []referralsv1.ServiceKind) (bool, error) {
		h, err := a.Referrals.HoldSlot(ctx, &referralsv1.HoldSlotRequest{Program: m.GetProgram().GetName(), ServiceKind: firstOffered(m.GetProgram(), kinds),
			Family: in.Family, Intervention: in.Intervention, Ttl: durationpb.New(ttl), RequestId: subID(in.RequestID, "hold", m.GetProgram().GetName())})
		if passOver(err, m.GetProgram().GetName()) {
			return false, nil // taken, deleted or changed since the match: try the next program
		}
		if err != nil {
			return false, wrap("hold slot", err)
		}
		hold = h
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	if !done {
		return nil, temporal.NewNonRetryableApplicationError("no program offering a treatment that suits the loved one has a free intake slot", "NO_CAPACITY", nil)
	}
	return hold, nil
}

// passOver reports whether program's refusal of a hold leaves the others
// to try: its last slot was taken, or it was deleted (marked, or outright
// if nothing named it yet) or stopped offering the service, since the
// match. A family or intervention not found still stops the search.
func passOver(err error, program string) bool {
	switch ErrorType(wrap("", err)) {
	case "NO_CAPACITY", "PROGRAM_DELETED", "SERVICE_NOT_OFFERED":
		return true
	case "RESOURCE_NOT_FOUND":
		for _, d := range status.Convert(err).Details() {
			if info, ok := d.(*errdetails.ErrorInfo); ok {
				return info.GetMetadata()["resource"] == program
			}
		}
	}
	return false
}

// releaseRefused gives back hold, whose referral was refused for good: no
// try will come back for it, and it would stay held for a day, kept from
// others. One already ended needs nothing; a failure to release is
// retried, and the try finds the hold again (liveHolds).
func (a *Activities) releaseRefused(ctx context.Context, hold, requestID string) error {
	_, err := a.Referrals.ReleaseHold(ctx, &referralsv1.ReleaseHoldRequest{Name: hold,
		Reason: "its referral was refused", RequestId: requestID})
	if t := ErrorType(wrap("", err)); err != nil && t != "INVALID_STATE_TRANSITION" && t != "RESOURCE_NOT_FOUND" {
		return wrap("release a hold not converted", err)
	}
	return nil
}

// firstOffered is the first of kinds that p offers.
func firstOffered(p *referralsv1.Program, kinds []referralsv1.ServiceKind) referralsv1.ServiceKind {
	for _, k := range kinds {
		for _, s := range p.GetServices() {
			if s == k {
				return k
			}
		}
	}
	return kinds[0]
}

// liveHoldsOf lists the live holds of the intervention for family at
// programs not in exclude, for the services in kinds or (nil) any. A hold
// naming the intervention for another family (a counselor's slip) is not
// the loved one's to convert.
func (a *Activities) liveHoldsOf(ctx context.Context, intervention, family string, exclude []string, kinds []referralsv1.ServiceKind) ([]*referralsv1.Hold, error) {
	if intervention == "" {
		return nil, nil
	}
	return a.heldWhere(ctx, aip.Clinic(intervention), fmt.Sprintf("intervention = %q AND state = HELD", intervention),
		func(h *referralsv1.Hold) bool {
			return h.GetFamily() == family && (kinds == nil || slices.Contains(kinds, h.GetServiceKind())) && !slices.Contains(exclude, h.GetProgram())
		})
}

// heldWhere lists, every page, the clinic's holds that filter finds and
// keep takes.
func (a *Activities) heldWhere(ctx context.Context, clinic, filter string, keep func(*referralsv1.Hold) bool) ([]*referralsv1.Hold, error) {
	var out []*referralsv1.Hold
	for token := ""; ; {
		resp, err := a.Referrals.ListHolds(ctx, &referralsv1.ListHoldsRequest{Parent: "clinics/" + clinic, Filter: filter, PageToken: token})
		if err != nil {
			return nil, wrap("list holds", err)
		}
		for _, h := range resp.GetHolds() {
			if keep(h) {
				out = append(out, h)
			}
		}
		if token = resp.GetNextPageToken(); token == "" {
			return out, nil
		}
	}
}

// referredFor returns an immediate referral of the family's loved one, for
// one of kinds, the intervention already has at a program not in exclude
// and not turned down, or nil. A family member's referral, or another
// family's, naming the intervention is not the loved one's.
func (a *Activities) referredFor(ctx context.Context, intervention, family string, exclude []string, kinds []referralsv1.ServiceKind) (*referralsv1.Referral, error) {
	if intervention == "" {
		return nil, nil
	}
	// The loved one's of this family, as the service filters them (the
	// checks below stand for a fake or an older service), on every page:
	// one left unread could hold the referral an earlier try made, and
	// the person would be referred a second time.
	for token := ""; ; {
		resp, err := a.Referrals.ListReferrals(ctx, &referralsv1.ListReferralsRequest{Parent: "clinics/" + aip.Clinic(intervention),
			Filter:    fmt.Sprintf("intervention = %q AND family = %q AND subject_kind = LOVED_ONE AND urgency = IMMEDIATE", intervention, family),
			PageToken: token})
		if err != nil {
			return nil, wrap("list referrals", err)
		}
		for _, r := range resp.GetReferrals() {
			switch r.GetState() {
			case referralsv1.ReferralState_REFERRAL_STATE_REJECTED, referralsv1.ReferralState_REFERRAL_STATE_CANCELLED,
				referralsv1.ReferralState_REFERRAL_STATE_ENTERED_IN_ERROR:
				continue
			}
			if r.GetFamily() != family || r.GetSubject().GetKind() != referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE {
				continue
			}
			if slices.Contains(kinds, r.GetServiceKind()) && !slices.Contains(exclude, r.GetProgram()) {
				return r, nil
			}
		}
		if token = resp.GetNextPageToken(); token == "" {
			return nil, nil
		}
	}
}

// ReleaseHold gives a held slot back. A hold that is no longer held
// (converted, expired, released) needs nothing.
func (a *Activities) ReleaseHold(ctx context.Context, in ReleaseRequest) error {
	_, err := a.Referrals.ReleaseHold(ctx, &referralsv1.ReleaseHoldRequest{Name: in.Hold, Reason: in.Reason, RequestId: in.RequestID})
	if t := ErrorType(wrap("", err)); t == "INVALID_STATE_TRANSITION" || t == "RESOURCE_NOT_FOUND" {
		return nil
	}
	return wrap("release hold", err)
}

// ReleaseHeldFor releases the live treatment holds (MAT or care) of the
// intervention for the family that a workflow made, and returns how many it
// released: the workflow calls it when a hold try ended without an answer,
// so that a hold made by that try is not left held until it lapses. A place
// held ahead of the meeting is for what suits the loved one, which may be
// care: every treatment's goes back. A place a counselor held by hand for
// the meeting stays, theirs to release, unless it is in.Hold, the one the
// workflow took over as its own. With AnyService (the intervention
// no longer takes place) every live hold made for it goes back, a
// counselor's too: there is no meeting left to hold it for. Each release's
// request id is the request's and the hold's, so a retry releases nothing
// twice.
func (a *Activities) ReleaseHeldFor(ctx context.Context, in ReleaseHeldRequest) (int, error) {
	kinds := treatment
	if in.AnyService {
		kinds = nil
	}
	holds, err := a.liveHoldsOf(ctx, in.Intervention, in.Family, nil, kinds)
	if err != nil {
		return 0, err
	}
	if !in.AnyService {
		holds = slices.DeleteFunc(holds, func(h *referralsv1.Hold) bool { return !h.GetWorkflowHeld() && h.GetName() != in.Hold })
	}
	return a.releaseAll(ctx, holds, in.Reason, in.RequestID)
}

// releaseAll releases holds, each under a request id derived from
// requestID and its name, and returns how many it released.
func (a *Activities) releaseAll(ctx context.Context, holds []*referralsv1.Hold, reason, requestID string) (int, error) {
	for i, h := range holds {
		if err := a.ReleaseHold(ctx, ReleaseRequest{Hold: h.GetName(), Reason: reason,
			RequestID: subID(requestID, "release", h.GetName())}); err != nil {
			return i, err
		}
	}
	return len(holds), nil
}

var recipientKinds = map[string]interventionsv1.RecipientKind{
	"counselor": interventionsv1.RecipientKind_RECIPIENT_KIND_COUNSELOR, "member": interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER,
	"loved_one": interventionsv1.RecipientKind_RECIPIENT_KIND_LOVED_ONE, "supervisor": interventionsv1.RecipientKind_RECIPIENT_KIND_SUPERVISOR,
}

// SendReminder creates a reminder for the automation to deliver.
func (a *Activities) SendReminder(ctx context.Context, in ReminderRequest) (string, error) {
	rk, ok := recipientKinds[in.To.Kind]
	if !ok {
		// The type the callers skip on (flow.RemindAt): a recipient Handoff
		// cannot remind is no reason to fail the workflow.
		return "", temporal.NewNonRetryableApplicationError("unknown recipient kind "+in.To.Kind, codes.InvalidArgument.String(), nil)
	}
	var due *timestamppb.Timestamp
	now := time.Now() // one reading: the due and send-by times agree
	if !in.Due.IsZero() {
		due = timestamppb.New(in.Due)
	} else if in.Awake {
		// A try made after the recipient's quiet hours began: the
		// reminder waits for their end. The request differs from the
		// first try's then, and a reminder that try made stands
		// (madeBefore below).
		if at, err := schedule.Awake(now, in.To.Recipient(), in.AwakeBy); err == nil && at.After(now) {
			due = timestamppb.New(at)
		}
	}
	at := now
	if due != nil {
		at = due.AsTime()
	}
	kind := interventionsv1.ReminderKind(interventionsv1.ReminderKind_value["REMINDER_KIND_"+in.Kind])
	var meeting, appointment *timestamppb.Timestamp
	switch {
	case in.AwakeBy.IsZero():
	case kind == interventionsv1.ReminderKind_REMINDER_KIND_INTERVENTION_UPCOMING:
		// The time its message names: the service refuses it if the
		// meeting has moved since the workflow read it.
		meeting = timestamppb.New(in.AwakeBy)
	case kind == interventionsv1.ReminderKind_REMINDER_KIND_INTAKE_UPCOMING:
		// Kept with it, for the recipient's calendar.
		appointment = timestamppb.New(in.AwakeBy)
	}
	if meeting == nil && !in.Meeting.IsZero() {
		meeting = timestamppb.New(in.Meeting)
	}
	rem, err := a.Interventions.CreateReminder(ctx, &interventionsv1.CreateReminderRequest{Parent: "clinics/" + in.Clinic,
		RequestId: in.RequestID, MeetingStartTime: meeting, AppointmentStartTime: appointment, Reminder: &interventionsv1.Reminder{
			Recipient: &interventionsv1.Recipient{Kind: rk, Id: in.To.ID, Family: in.To.Family,
				Channel: interventionsv1.ChannelKind(interventionsv1.ChannelKind_value["CHANNEL_KIND_"+in.To.Channel])},
			DueTime: due, Kind: kind,
			RelatedResource: in.Related, Message: in.Message, OriginWorkflow: in.Origin, SendByTime: sendBy(at, in.To.Recipient(), in.AwakeBy)}})
	if made := madeBefore(err); made != "" {
		// An earlier try, which read other data (a counselor since
		// changed, a quiet hour since begun), made it: that one stands,
		// and its delivery is followed under its name.
		return made, nil
	}
	if err != nil {
		return "", wrap("create reminder", err)
	}
	return rem.GetName(), nil
}

// appointmentOf is the intake appointment a reminder announces, for its
// resend: nil for any other kind, whose event time, if any, is read at
// the claim.
func appointmentOf(rem *interventionsv1.Reminder) *timestamppb.Timestamp {
	if rem.GetKind() != interventionsv1.ReminderKind_REMINDER_KIND_INTAKE_UPCOMING {
		return nil
	}
	return rem.GetEventStartTime()
}

// ResendReminder is Resend, for workflow runs begun before Resend was: it
// returns the name only.
func (a *Activities) ResendReminder(ctx context.Context, in ResendRequest) (string, error) {
	out, err := a.Resend(ctx, in)
	return out.Reminder, err
}

// Resend creates a new reminder with the same recipient, kind and message
// as a failed one.
func (a *Activities) Resend(ctx context.Context, in ResendRequest) (Resent, error) {
	old, err := a.Interventions.GetReminder(ctx, &interventionsv1.GetReminderRequest{Name: in.Failed})
	if err != nil {
		return Resent{}, wrap("get reminder", err)
	}
	fam, err := a.familyOf(ctx, old.GetRecipient())
	if err != nil {
		return Resent{}, err
	}
	due, r, by, err := a.awake(ctx, old, fam, in.Due)
	if err != nil {
		return Resent{}, err
	}
	if sb := sendBy(due, r, by); sb != nil && !sb.AsTime().After(time.Now()) {
		// Made only after its window closed (the worker or a service was
		// down past it): its first claim would fail it at once for the
		// quiet hours, and take one of its line's tries. Placed from now
		// instead: after the quiet hours, if the event is still ahead.
		due = time.Now()
		if at, err := schedule.Awake(due, r, by); err == nil {
			due = at
		}
	}
	want := &interventionsv1.Reminder{Recipient: channelNow(old.GetRecipient(), fam), DueTime: timestamppb.New(due),
		Kind: old.GetKind(), RelatedResource: old.GetRelatedResource(), Message: old.GetMessage(), OriginWorkflow: old.GetOriginWorkflow(),
		SendByTime: sendBy(due, r, by)}
	rem, err := a.Interventions.CreateReminder(ctx, &interventionsv1.CreateReminderRequest{Parent: "clinics/" + aip.Clinic(in.Failed),
		RequestId: in.RequestID, Reminder: want, AppointmentStartTime: appointmentOf(old)})
	if made := madeBefore(err); made != "" {
		// An earlier try's resend, due at another time: its own times,
		// or this try's if it is gone.
		rem, err = a.Interventions.GetReminder(ctx, &interventionsv1.GetReminderRequest{Name: made})
		if status.Code(err) == codes.NotFound {
			rem, err = want, nil
		}
		if err != nil {
			return Resent{}, wrap("get the resend an earlier try made", err)
		}
		rem.Name = made
	} else if err != nil {
		return Resent{}, wrap("create reminder", err)
	}
	out := Resent{Reminder: rem.GetName(), FailsBy: rem.GetDueTime().AsTime()}
	if t := rem.GetSendByTime(); t != nil {
		out.FailsBy = t.AsTime()
	}
	return out, nil
}

// sendBy is when a reminder due at at to r, about what happens at by
// (zero for nothing), must have gone out: when r's quiet hours next begin,
// or nil (none kept, at falls in them on purpose, or they last past by: see
// schedule.SendBy).
func sendBy(at time.Time, r schedule.Recipient, by time.Time) *timestamppb.Timestamp {
	from, ok, err := schedule.SendBy(at, r, by)
	if err != nil || !ok {
		return nil
	}
	return timestamppb.New(from)
}

// awake is when a resend of old to a family member should be due: due, or
// the end of the member's quiet hours if due falls in them and that end is
// still before the meeting or intake the reminder is about; the member as
// placed (no quiet hours for anyone else); and when that meeting or intake
// starts, if the member keeps quiet hours (its send-by time depends on it)
// and the record says. A record gone (the member, the meeting) leaves it
// at due. Any other failure to read is the activity's error, to be
// retried: an attempt that fell back to due would send, under the same
// request id, another request than the attempt that may already have
// created the reminder, and be refused.
func (a *Activities) awake(ctx context.Context, old *interventionsv1.Reminder, fam *familiesv1.Family, due time.Time) (time.Time, schedule.Recipient, time.Time, error) {
	var r schedule.Recipient
	var by time.Time
	to := old.GetRecipient()
	if to.GetKind() != interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER || fam == nil {
		return due, r, by, nil
	}
	for _, m := range fam.GetMembers() {
		if m.GetId() == to.GetId() {
			r = memberPerson(to.GetFamily(), m).Recipient()
			break
		}
	}
	// Most members keep no quiet hours: then what the reminder is about
	// need not be read.
	if r.Quiet == (schedule.QuietHours{}) {
		return due, r, by, nil
	}
	switch related := old.GetRelatedResource(); {
	case strings.Contains(related, "/interventions/"):
		iv, err := a.Interventions.GetIntervention(ctx, &interventionsv1.GetInterventionRequest{Name: related})
		if err != nil {
			return due, r, by, gone("get intervention", err)
		}
		if st := iv.GetStartTime(); st != nil {
			by = st.AsTime()
		}
	case strings.Contains(related, "/referrals/"):
		ref, err := a.Referrals.GetReferral(ctx, &referralsv1.GetReferralRequest{Name: related})
		if err != nil {
			return due, r, by, gone("get referral", err)
		}
		if st := ref.GetIntakeAppointment().GetStartTime(); st != nil {
			by = st.AsTime()
		}
	}
	at, err := schedule.Awake(due, r, by)
	if err != nil {
		return due, r, by, nil
	}
	return at, r, by, nil
}

// familyOf reads the family of a reminder's recipient, a member or the
// loved one: nil for anyone else, or a family that no longer exists.
func (a *Activities) familyOf(ctx context.Context, to *interventionsv1.Recipient) (*familiesv1.Family, error) {
	if !isFamilyRecipient(to.GetKind()) || to.GetFamily() == "" || a.Families == nil {
		return nil, nil
	}
	fam, err := a.Families.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: to.GetFamily()})
	if err != nil {
		return nil, gone("get family", err)
	}
	return fam, nil
}

func isFamilyRecipient(k interventionsv1.RecipientKind) bool {
	return k == interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER || k == interventionsv1.RecipientKind_RECIPIENT_KIND_LOVED_ONE
}

// channelNow is to, on the channel the family's record would place a
// reminder to them on now (a member's preferred one, else their first;
// the loved one's first): a reminder that failed because its channel was
// taken off their record goes again on the one they keep, and one to a
// member who changed their preference since goes the new way. To as it
// was when the family is gone or keeps no channel for them (the
// reminder's claim refuses whoever may no longer be contacted).
func channelNow(to *interventionsv1.Recipient, fam *familiesv1.Family) *interventionsv1.Recipient {
	if fam == nil {
		return to
	}
	ch := familiesv1.ChannelKind_CHANNEL_KIND_UNSPECIFIED
	switch to.GetKind() {
	case interventionsv1.RecipientKind_RECIPIENT_KIND_LOVED_ONE:
		if chs := fam.GetLovedOne().GetContactChannels(); len(chs) > 0 {
			ch = chs[0].GetKind()
		}
	case interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER:
		for _, m := range fam.GetMembers() {
			if m.GetId() == to.GetId() {
				ch = memberChannel(m)
			}
		}
	}
	if ch == familiesv1.ChannelKind_CHANNEL_KIND_UNSPECIFIED || int32(ch) == int32(to.GetChannel()) {
		return to
	}
	out := proto.Clone(to).(*interventionsv1.Recipient)
	// The families service's kinds number the first three as the
	// interventions service's do.
	out.Channel = interventionsv1.ChannelKind(ch)
	return out
}

// familyGone reports whether err, from matchRequest, says the family's
// record no longer exists.
func familyGone(err error) bool {
	t := ErrorType(err)
	return t == "RESOURCE_NOT_FOUND" || t == codes.NotFound.String()
}

// gone is nil for a record that no longer exists, and otherwise err as an
// activity error.
func gone(op string, err error) error {
	if status.Code(err) == codes.NotFound {
		return nil
	}
	return wrap(op, err)
}

// CancelReminders cancels every reminder of a resource not delivered yet.
func (a *Activities) CancelReminders(ctx context.Context, in CancelRemindersRequest) (int, error) {
	whom := []string{""}
	if len(in.Only) > 0 {
		whom = whom[:0]
		for _, p := range in.Only {
			rk, ok := recipientKinds[p.Kind]
			if !ok {
				continue // nobody of an unknown kind has reminders; never widen to everyone
			}
			whom = append(whom, fmt.Sprintf(" AND recipient_kind = %s AND recipient_id = %q",
				strings.TrimPrefix(rk.String(), "RECIPIENT_KIND_"), p.ID))
		}
	}
	// One listing per kind asked for: filters join comparisons by AND.
	kinds := []string{""}
	if in.Kind != "" || len(in.Kinds) > 0 {
		kinds = kinds[:0]
		for _, k := range append([]string{in.Kind}, in.Kinds...) {
			if k == "" {
				continue
			}
			if _, ok := interventionsv1.ReminderKind_value["REMINDER_KIND_"+k]; !ok {
				return 0, temporal.NewNonRetryableApplicationError("unknown reminder kind "+k, "InvalidArgument", nil)
			}
			kinds = append(kinds, " AND kind = "+k)
		}
	}
	origin := ""
	if in.Origin != "" {
		origin = fmt.Sprintf(" AND origin_workflow = %q", in.Origin)
	}
	// Every reminder not ended, in one listing: a reminder's state moves
	// with the clock (due, a lease run out), and lists by state taken one
	// after another could each miss one that moved between them, which
	// would then go out with the old time.
	scope := fmt.Sprintf("related_resource = %q AND ", in.Related)
	if in.Related == "" {
		if in.Origin == "" {
			// Never every reminder of the clinic.
			return 0, temporal.NewNonRetryableApplicationError("cancel reminders: give a related resource or an origin", "InvalidArgument", nil)
		}
		scope = "" // the origin's own, whatever they are about
	}
	n := 0
	for _, who := range whom {
		for _, kind := range kinds {
			m, err := a.cancelReminders(ctx, in, scope+openReminders+who+kind+origin, nil)
			n += m
			if err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// CancelReminder cancels one reminder. One that ended meanwhile (delivered,
// failed, cancelled) or is gone needs nothing; it reports whether this
// call cancelled it.
func (a *Activities) CancelReminder(ctx context.Context, in CancelReminderRequest) (bool, error) {
	_, err := a.Interventions.CancelReminder(ctx, &interventionsv1.CancelReminderRequest{Name: in.Name, Reason: in.Reason, RequestId: in.RequestID})
	if t := ErrorType(wrap("", err)); t == "INVALID_STATE_TRANSITION" || t == "RESOURCE_NOT_FOUND" {
		return false, nil
	}
	if err != nil {
		return false, wrap("cancel reminder", err)
	}
	return true, nil
}

// openReminders filters the reminders not ended: scheduled, due or
// claimed, whichever they are when listed.
const openReminders = "state != DELIVERED AND state != FAILED AND state != CANCELLED"

// cancelReminders cancels the reminders filter finds, those of them which
// pick, when given, picks.
func (a *Activities) cancelReminders(ctx context.Context, in CancelRemindersRequest, filter string, pick func(*interventionsv1.Reminder) bool) (int, error) {
	n := 0
	token := ""
	for {
		page, err := a.Interventions.ListReminders(ctx, &interventionsv1.ListRemindersRequest{Parent: "clinics/" + in.Clinic,
			Filter: filter, PageSize: 200, PageToken: token})
		if err != nil {
			return n, wrap("list reminders", err)
		}
		for _, r := range page.GetReminders() {
			if pick != nil && !pick(r) {
				continue
			}
			_, err := a.Interventions.CancelReminder(ctx, &interventionsv1.CancelReminderRequest{Name: r.GetName(), Reason: in.Reason,
				RequestId: in.RequestID[:min(len(in.RequestID), 24)] + "-" + aip.ID(r.GetName())})
			// Ended or gone meanwhile: nothing to cancel.
			if t := ErrorType(wrap("", err)); err != nil && t != "INVALID_STATE_TRANSITION" && t != "RESOURCE_NOT_FOUND" {
				return n, wrap("cancel reminder", err)
			}
			if err == nil { // one that ended meanwhile was not cancelled
				n++
			}
		}
		if token = page.GetNextPageToken(); token == "" {
			return n, nil
		}
	}
}

// firstContact is the family's first contact as a referral records it, or
// none when it is unknown or lies in the future (a mistyped year stored
// before such times were refused): the referral then counts from its own
// creation, and the person who said yes is still referred. The epoch is
// unknown too: plans loaded before LoadPlan kept an unset time zero carry
// it, in workflows still running.
func firstContact(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() || t.Unix() <= 0 || t.After(time.Now()) {
		return nil
	}
	return timestamppb.New(t)
}

// StartImmediateReferral makes the immediate referral to the treatment
// agreed to (none named: one that suits the loved one): it converts the
// held slot when the hold still stands, and otherwise holds and converts a
// slot at the best program not tried yet. No program left is a
// non-retryable NO_PROGRAM error.
func (a *Activities) StartImmediateReferral(ctx context.Context, in ImmediateRequest) (Referral, error) {
	kinds := treatments(in.Medications)
	reason := intakeReason(kinds)
	// The match is built once, when first needed: a plain yes judges the
	// held place by it, and the search for another place uses it again.
	var (
		req      *referralsv1.MatchProgramsRequest
		tiers    [][]referralsv1.ServiceKind
		matchErr error
	)
	match := func() (*referralsv1.MatchProgramsRequest, error) {
		if req == nil && matchErr == nil {
			req, tiers, matchErr = a.matchRequest(ctx, in.Family, kinds, referralsv1.Urgency_URGENCY_IMMEDIATE, in.Exclude)
		}
		return req, matchErr
	}
	// A retry whose first attempt got further but lost the reply must find
	// what it made, not take a slot elsewhere: the program it used may have
	// no slot left, so the match would pass it over.
	made := kinds
	if len(made) == 0 {
		// No treatment named: an earlier try referred to, or held, what
		// suited the loved one then, whichever treatment that was.
		made = treatment
	}
	// existing finds a referral of the loved one's already made for the
	// meeting: a retry's first attempt's, or one made of a place that went
	// its own way.
	existing := func() (Referral, bool, error) {
		ref, err := a.referredFor(ctx, in.Intervention, in.Family, in.Exclude, made)
		if err != nil || ref == nil {
			return Referral{}, false, err
		}
		return Referral{Name: ref.GetName(), Program: ref.GetProgram(), Adopted: true}, true, nil
	}
	// search holds and converts a place at the best program of the first
	// of ts (tiers of services) that has one; false when none did.
	search := func(ts [][]referralsv1.ServiceKind) (Referral, bool, error) {
		req, err := match()
		if err != nil {
			return Referral{}, false, err
		}
		var out Referral
		done, err := a.matchInTiers(ctx, req, ts, func(m *referralsv1.ProgramMatch, kinds []referralsv1.ServiceKind) (bool, error) {
			hold, err := a.Referrals.HoldSlot(ctx, &referralsv1.HoldSlotRequest{Program: m.GetProgram().GetName(),
				ServiceKind: firstOffered(m.GetProgram(), kinds), Family: in.Family, Intervention: in.Intervention,
				Ttl: durationpb.New(24 * time.Hour), RequestId: subID(in.RequestID, "hold", m.GetProgram().GetName())})
			if passOver(err, m.GetProgram().GetName()) {
				return false, nil
			}
			if err != nil {
				return false, wrap("hold slot", err)
			}
			ref, err := a.Referrals.ConvertHold(ctx, &referralsv1.ConvertHoldRequest{Name: hold.GetName(), Reason: reason,
				FirstContactTime: firstContact(in.FirstContact), RequestId: subID(in.RequestID, "convert", m.GetProgram().GetName())})
			if err != nil {
				werr := wrap("convert hold", err)
				switch t := ErrorType(werr); t {
				case "":
					return false, werr // retried: the next try adopts the hold (agreedHold)
				case "INVALID_STATE_TRANSITION", "RESOURCE_NOT_FOUND":
					// The hold is not HELD: an earlier try's, answered again
					// under its request id, that lapsed or went back since, or
					// one converted. A referral made of it is taken; without
					// one, the next program is tried.
					ref, ok, err := existing()
					out = ref
					return ok, err
				}
				if rerr := a.releaseRefused(ctx, hold.GetName(), subID(in.RequestID, "release", m.GetProgram().GetName())); rerr != nil {
					return false, rerr
				}
				return false, werr
			}
			out = Referral{Name: ref.GetName(), Program: ref.GetProgram()}
			return true, nil
		})
		return out, done, err
	}
	if in.Hold != "" {
		agreed, err := agreedForPlainYes(in, kinds, match)
		if err != nil {
			return Referral{}, err
		}
		if ref, ok, err := a.earlierTierThanHeld(ctx, in, kinds, tiers, existing, search); ok || err != nil {
			return ref, err
		}
		// The loved one's age, against the held place's program's limits,
		// for a place agreedForHold judges (the meeting's, for something
		// agreed to).
		var years int32
		if len(agreed) > 0 && in.Intervention != "" {
			if r, err := match(); err == nil {
				years = r.GetAge()
			} else if !familyGone(err) {
				return Referral{}, err
			}
		}
		kind, ok, err := a.agreedForHold(ctx, in.Hold, in.Intervention, agreed, years, in.RequestID)
		if err != nil {
			return Referral{}, err
		}
		if ok {
			ref, err := a.Referrals.ConvertHold(ctx, &referralsv1.ConvertHoldRequest{Name: in.Hold, Reason: reason,
				FirstContactTime: firstContact(in.FirstContact), RequestId: in.RequestID + "-convert", ServiceKind: kind})
			if err == nil {
				return Referral{Name: ref.GetName(), Program: ref.GetProgram()}, nil
			}
			switch t := ErrorType(wrap("", err)); {
			case kind != referralsv1.ServiceKind_SERVICE_KIND_UNSPECIFIED && (t == "SERVICE_NOT_OFFERED" || t == "PROGRAM_DELETED"):
				// The program changed since it was read: as if it offered
				// nothing agreed to.
				if err := a.releaseUnagreed(ctx, &referralsv1.Hold{Name: in.Hold}, in.RequestID); err != nil {
					return Referral{}, err
				}
			case t != "INVALID_STATE_TRANSITION" && t != "RESOURCE_NOT_FOUND":
				return Referral{}, wrap("convert hold", err)
			}
		}
		// The hold lapsed, or its program offers nothing agreed to: find
		// another slot.
	}
	if ref, ok, err := existing(); ok || err != nil {
		return ref, err
	}
	req, err := match()
	if familyGone(err) {
		// Referrals made stay when a family's record is deleted, but no new
		// one can be matched to it: the counselor takes over, as when no
		// program is left.
		return Referral{}, temporal.NewNonRetryableApplicationError("the family's record was deleted: no other program can be matched", "NO_PROGRAM", nil)
	}
	if err != nil {
		return Referral{}, err
	}
	// What the loved one agreed to: the treatments named or, for a plain
	// yes, what suits them now. A place held for anything else (one taken
	// before the family's record said what they use) converts to one of
	// those, or is given back.
	hold, kind, err := a.agreedHold(ctx, in, req.GetServiceKinds(), req.GetAge())
	if err != nil {
		return Referral{}, err
	}
	if hold != nil {
		ref, err := a.Referrals.ConvertHold(ctx, &referralsv1.ConvertHoldRequest{Name: hold.GetName(), Reason: reason,
			FirstContactTime: firstContact(in.FirstContact), RequestId: subID(in.RequestID, "convert", hold.GetProgram()), ServiceKind: kind})
		werr := wrap("convert hold", err)
		switch t := ErrorType(werr); {
		case err == nil:
			return Referral{Name: ref.GetName(), Program: ref.GetProgram()}, nil
		case t == "INVALID_STATE_TRANSITION" || t == "RESOURCE_NOT_FOUND":
			// The place lapsed or went back between the listing and the
			// conversion, or someone converted it: a referral made of it
			// is taken, and without one another place is found, as when
			// no place was held. Before, the intake ended here.
			if ref, ok, err := existing(); ok || err != nil {
				return ref, err
			}
		case t != "":
			// Refused for good: given back, as when the try that took it
			// was refused (the same request id).
			if rerr := a.releaseRefused(ctx, hold.GetName(), subID(in.RequestID, "release", hold.GetProgram())); rerr != nil {
				return Referral{}, rerr
			}
			return Referral{}, werr
		default:
			return Referral{}, werr
		}
	}
	if ref, done, err := search(tiers); done || err != nil {
		return ref, err
	}
	return Referral{}, temporal.NewNonRetryableApplicationError("no program with a free slot is left to try", "NO_PROGRAM", nil)
}

// earlierTierThanHeld refers a plain yes to a treatment of an earlier tier
// than the place the workflow held (suitedTiers), when a program of one
// has room now, and gives the held place back: the place may have been
// held when no program of those had room (naltrexone for someone using
// opioids, which starts only after withdrawal). A referral already made
// for the meeting (a retry's first attempt's) is taken the same way. A
// place a counselor held by hand is theirs to keep, and a yes naming
// treatments is not judged by tiers. false: the held place stands.
func (a *Activities) earlierTierThanHeld(ctx context.Context, in ImmediateRequest, kinds []referralsv1.ServiceKind, tiers [][]referralsv1.ServiceKind,
	existing func() (Referral, bool, error), search func([][]referralsv1.ServiceKind) (Referral, bool, error)) (Referral, bool, error) {
	if len(kinds) > 0 || in.Intervention == "" || len(tiers) < 2 {
		return Referral{}, false, nil
	}
	held, err := a.heldWhere(ctx, aip.Clinic(in.Hold), fmt.Sprintf("intervention = %q", in.Intervention), func(h *referralsv1.Hold) bool {
		return h.GetName() == in.Hold && h.GetState() == referralsv1.HoldState_HOLD_STATE_HELD && h.GetWorkflowHeld() && h.GetFamily() == in.Family
	})
	if err != nil || len(held) == 0 {
		return Referral{}, false, err
	}
	i := tierOf(held[0].GetServiceKind(), tiers)
	if i <= 0 {
		return Referral{}, false, nil
	}
	ref, ok, err := existing()
	if err == nil && !ok {
		// A place of an earlier tier a first attempt held, its conversion
		// cut off: converted, not passed over (the search would not find
		// its program again, whose last place it may have taken).
		ref, ok, err = a.convertHeld(ctx, in, slices.Concat(tiers[:i]...), intakeReason(nil))
	}
	if err == nil && !ok {
		ref, ok, err = search(tiers[:i])
	}
	if err != nil || !ok {
		return Referral{}, false, err
	}
	if err := a.ReleaseHold(ctx, ReleaseRequest{Hold: in.Hold, Reason: "a treatment that fits better had a place",
		RequestID: subID(in.RequestID, "release-later-tier", in.Hold)}); err != nil {
		return Referral{}, false, err
	}
	return ref, true, nil
}

// convertHeld converts a live place of the meeting's, other than in.Hold,
// held for one of kinds, under the request id the search would have used
// for its program; false when there is none to convert.
func (a *Activities) convertHeld(ctx context.Context, in ImmediateRequest, kinds []referralsv1.ServiceKind, reason string) (Referral, bool, error) {
	holds, err := a.liveHoldsOf(ctx, in.Intervention, in.Family, in.Exclude, kinds)
	if err != nil {
		return Referral{}, false, err
	}
	for _, h := range holds {
		if h.GetName() == in.Hold {
			continue
		}
		ref, err := a.Referrals.ConvertHold(ctx, &referralsv1.ConvertHoldRequest{Name: h.GetName(), Reason: reason,
			FirstContactTime: firstContact(in.FirstContact), RequestId: subID(in.RequestID, "convert", h.GetProgram())})
		if err == nil {
			return Referral{Name: ref.GetName(), Program: ref.GetProgram()}, true, nil
		}
		if t := ErrorType(wrap("", err)); t != "INVALID_STATE_TRANSITION" && t != "RESOURCE_NOT_FOUND" {
			return Referral{}, false, wrap("convert hold", err)
		}
	}
	return Referral{}, false, nil
}

// mayBeLaterTier reports whether kind is past the first tier of what
// suits someone using substance, with or without a barrier that reorders
// the tiers: only then are the family's barriers worth reading to know.
func mayBeLaterTier(substance familiesv1.Substance, kind referralsv1.ServiceKind) bool {
	work := []referralsv1.BarrierKind{referralsv1.BarrierKind_BARRIER_KIND_LOGISTICAL_WORK}
	return tierOf(kind, suitedTiers(substance, nil)) > 0 || tierOf(kind, suitedTiers(substance, work)) > 0
}

// tierOf is the index of the tier kind is in, or -1.
func tierOf(kind referralsv1.ServiceKind, tiers [][]referralsv1.ServiceKind) int {
	return slices.IndexFunc(tiers, func(t []referralsv1.ServiceKind) bool { return slices.Contains(t, kind) })
}

// IsMAT reports whether service (a ServiceKind name without its prefix)
// is a medication for addiction treatment.
func IsMAT(service string) bool { return slices.ContainsFunc(matKinds, named(service)) }

// IsCare reports whether service (a ServiceKind name without its prefix)
// is treatment other than medication: inpatient, outpatient or intensive
// outpatient care. MAT and care are what count as entering treatment.
func IsCare(service string) bool { return slices.ContainsFunc(careKinds, named(service)) }

func named(service string) func(referralsv1.ServiceKind) bool {
	return func(k referralsv1.ServiceKind) bool {
		return strings.TrimPrefix(k.String(), "SERVICE_KIND_") == service
	}
}

// careKinds are the treatments other than medication that a partial yes
// may hand to the intake.
var careKinds = []referralsv1.ServiceKind{referralsv1.ServiceKind_SERVICE_KIND_INPATIENT,
	referralsv1.ServiceKind_SERVICE_KIND_OUTPATIENT, referralsv1.ServiceKind_SERVICE_KIND_INTENSIVE_OUTPATIENT}

// treatment is every service that counts as treatment: MAT, then care.
var treatment = slices.Concat(matKinds, careKinds)

// treatments are the MAT services and other care named, in matKinds' then
// careKinds' order; none named is none (what suits the loved one, to the
// callers).
func treatments(names []string) []referralsv1.ServiceKind {
	var out []referralsv1.ServiceKind
	for _, k := range treatment {
		if slices.Contains(names, strings.TrimPrefix(k.String(), "SERVICE_KIND_")) {
			out = append(out, k)
		}
	}
	return out
}

// intakeReason is the reason an immediate referral to kinds gives; none
// is what suits the loved one, which may be care.
func intakeReason(kinds []referralsv1.ServiceKind) string {
	if len(kinds) == 0 || slices.ContainsFunc(kinds, func(k referralsv1.ServiceKind) bool { return !slices.Contains(matKinds, k) }) {
		return "Accepted treatment at a family intervention; immediate intake."
	}
	return "Accepted medication-assisted treatment at a family intervention; immediate intake."
}

// agreedService is the service a hold converts to: unspecified (the
// hold's own) when the loved one agreed to it, otherwise the first agreed
// one its program offers; false when the program offers none of them, or
// is gone.
func (a *Activities) agreedService(ctx context.Context, h *referralsv1.Hold, kinds []referralsv1.ServiceKind, years int32) (referralsv1.ServiceKind, bool, error) {
	agreed := slices.Contains(kinds, h.GetServiceKind())
	if agreed && years == 0 {
		return referralsv1.ServiceKind_SERVICE_KIND_UNSPECIFIED, true, nil
	}
	p, err := a.Referrals.GetProgram(ctx, &referralsv1.GetProgramRequest{Name: h.GetProgram()})
	if ErrorType(wrap("", err)) == "RESOURCE_NOT_FOUND" {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, wrap("get program", err)
	}
	// A place held before the loved one's birth date was recorded, or
	// before the program changed its age limits, that the program would
	// turn them away from: as if it offered nothing agreed to.
	if !ageFits(p, years) {
		return 0, false, nil
	}
	if agreed {
		return referralsv1.ServiceKind_SERVICE_KIND_UNSPECIFIED, true, nil
	}
	for _, k := range kinds {
		if slices.Contains(p.GetServices(), k) && p.GetDeleteTime() == nil {
			return k, true, nil
		}
	}
	return 0, false, nil
}

// ageFits reports whether someone years old (0: not known) is within p's
// age limits, as the match counts them.
func ageFits(p *referralsv1.Program, years int32) bool {
	return years == 0 || years >= p.GetMinAge() && (p.GetMaxAge() == 0 || years <= p.GetMaxAge())
}

// agreedForPlainYes is what the workflow's hold must convert to: the
// treatments named, or, for a yes naming none, what suits the loved one
// now. The hold was made for what suited them then, perhaps before the
// family's record said what they use (methadone held, alcohol recorded
// since). A family no longer there, or a hold not the meeting's, leaves
// the hold to convert as it is: no match can be made for the one, and
// agreedForHold does not look at the other.
func agreedForPlainYes(in ImmediateRequest, kinds []referralsv1.ServiceKind,
	match func() (*referralsv1.MatchProgramsRequest, error)) ([]referralsv1.ServiceKind, error) {
	if len(kinds) > 0 || in.Intervention == "" {
		return kinds, nil
	}
	// In the order a yes naming none is matched in: a hold converts to
	// the first of them its program offers.
	req, err := match()
	if familyGone(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return req.GetServiceKinds(), nil
}

// agreedForHold is agreedService for the hold the workflow names, made for
// intervention. A hold its program cannot convert to anything agreed to is
// given back; a hold no longer there is left to the conversion, which says
// so.
func (a *Activities) agreedForHold(ctx context.Context, name, intervention string, kinds []referralsv1.ServiceKind, years int32, requestID string) (referralsv1.ServiceKind, bool, error) {
	if len(kinds) == 0 {
		// No treatment named: the hold, made for what suits the loved
		// one, converts as it is.
		return referralsv1.ServiceKind_SERVICE_KIND_UNSPECIFIED, true, nil
	}
	if intervention == "" {
		return 0, false, nil // not the meeting's: left to the conversion
	}
	// Listed, not read (GetHold): the worker may list the holds its
	// workflows made, and reads no single hold.
	holds, err := a.heldWhere(ctx, aip.Clinic(name), fmt.Sprintf("intervention = %q", intervention),
		func(h *referralsv1.Hold) bool { return h.GetName() == name })
	if err != nil {
		return 0, false, err
	}
	if len(holds) == 0 {
		return 0, false, nil
	}
	h := holds[0]
	kind, ok, err := a.agreedService(ctx, h, kinds, years)
	if err != nil || ok {
		return kind, ok, err
	}
	return 0, false, a.releaseUnagreed(ctx, h, requestID)
}

// agreedHold is the first live treatment hold of the intervention (at a
// program not excluded) that converts to one of kinds, with that service;
// those that cannot are given back on the way. A place an earlier try held
// for care agreed to (outpatient, say) is found too: a retry adopts it
// rather than pass its program over.
func (a *Activities) agreedHold(ctx context.Context, in ImmediateRequest, kinds []referralsv1.ServiceKind, years int32) (*referralsv1.Hold, referralsv1.ServiceKind, error) {
	holds, err := a.liveHoldsOf(ctx, in.Intervention, in.Family, in.Exclude, treatment)
	if err != nil {
		return nil, 0, err
	}
	for _, h := range holds {
		kind, ok, err := a.agreedService(ctx, h, kinds, years)
		if err != nil {
			return nil, 0, err
		}
		if ok {
			return h, kind, nil
		}
		if !h.GetWorkflowHeld() && h.GetName() != in.Hold {
			// A counselor's place stays theirs (ReleaseHeldFor leaves it
			// too); the meeting's own hold is the workflow's, flagged or
			// not.
			continue
		}
		if err := a.releaseUnagreed(ctx, h, in.RequestID); err != nil {
			return nil, 0, err
		}
	}
	return nil, 0, nil
}

// releaseUnagreed gives back a place held for a medication the loved one
// did not agree to, at a program offering none they did.
func (a *Activities) releaseUnagreed(ctx context.Context, h *referralsv1.Hold, requestID string) error {
	err := a.ReleaseHold(ctx, ReleaseRequest{Hold: h.GetName(), Reason: "the loved one agreed to a treatment its program does not offer, or is outside its age limits",
		RequestID: subID(requestID, "release-unagreed", h.GetName())})
	// ReleaseHold's error as it is: wrapped, a refusal it made final would
	// reach Temporal as a retryable error of another type (the SDK reads
	// the outermost error only), and be tried again for a day.
	return err
}

// RecordTreatmentEntry records on the family that the loved one entered
// treatment (ACTIVE becomes ENGAGED_IN_TREATMENT). A family closed or
// deleted since has nothing to record: the follow-up ends all the same.
func (a *Activities) RecordTreatmentEntry(ctx context.Context, in TreatmentEntryRequest) error {
	_, err := a.Families.RecordTreatmentEntry(ctx, &familiesv1.RecordTreatmentEntryRequest{Name: in.Family, RequestId: in.RequestID})
	if c := status.Code(err); c == codes.NotFound || c == codes.FailedPrecondition {
		return nil
	}
	return wrap("record treatment entry", err)
}

// StateOf is a referral state as the workflows know it: its name without
// the prefix, except that a referral voided as entered in error is, to a
// workflow following it, CANCELLED: closed, by the referring side, with
// the next program to offer.
func StateOf(s referralsv1.ReferralState) string {
	if s == referralsv1.ReferralState_REFERRAL_STATE_ENTERED_IN_ERROR {
		s = referralsv1.ReferralState_REFERRAL_STATE_CANCELLED
	}
	return strings.TrimPrefix(s.String(), "REFERRAL_STATE_")
}

// ReferralStatus reads a referral's state.
func (a *Activities) ReferralStatus(ctx context.Context, referral string) (ReferralInfo, error) {
	r, err := a.Referrals.GetReferral(ctx, &referralsv1.GetReferralRequest{Name: referral})
	if err != nil {
		return ReferralInfo{}, wrap("get referral", err)
	}
	info := ReferralInfo{State: StateOf(r.GetState()), Program: r.GetProgram(),
		NoShows: r.GetNoShowCount(), DaysToTreatment: r.GetDaysToTreatmentEntry()}
	if r.GetIntakeAppointment().GetStartTime() != nil {
		info.Appointment = r.GetIntakeAppointment().GetStartTime().AsTime()
	}
	return info, nil
}

// CreateSupportReferrals refers the loved one or a member to the best
// program for each kind. Kinds no program offers are skipped; the counselor
// sees the referrals that were made.
func (a *Activities) CreateSupportReferrals(ctx context.Context, in SupportRequest) ([]string, error) {
	urgency := referralsv1.Urgency(referralsv1.Urgency_value["URGENCY_"+in.Urgency])
	subject := &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_LOVED_ONE}
	fam, err := a.Families.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: in.Family})
	if status.Code(err) == codes.NotFound {
		return nil, nil // the family's record was deleted: nobody to refer
	}
	if err != nil {
		return nil, wrap("get family", err)
	}
	if in.Member != "" {
		// The workflow may have read the family weeks ago: a member who has
		// left it since is not referred (the service would refuse them, and
		// the refusal would end the workflow), nor one who has withdrawn
		// consent to contact since (the programs reach out to them).
		if !slices.ContainsFunc(fam.GetMembers(), func(m *familiesv1.Member) bool {
			return m.GetId() == in.Member && m.GetConsentToContact()
		}) {
			return nil, nil
		}
		subject = &referralsv1.ReferralSubject{Kind: referralsv1.SubjectKind_SUBJECT_KIND_FAMILY_MEMBER, MemberId: in.Member}
	}
	// The family's coverage and barriers are read once; each kind changes
	// only what is asked for. An immediate need is matched as urgent: the
	// match passes over every program with no intake slot free for an
	// immediate one, but a referral made here takes no slot, and a
	// naloxone program that reports none (or never reported) would leave
	// the loved one after an overdose with no referral at all. Programs
	// with room still rank first; the referral keeps its urgency.
	matchUrgency := urgency
	if urgency == referralsv1.Urgency_URGENCY_IMMEDIATE {
		matchUrgency = referralsv1.Urgency_URGENCY_URGENT
	}
	req, err := a.matchFor(ctx, in.Family, fam, in.Member, nil, matchUrgency, nil)
	if familyGone(err) {
		return nil, nil // the family's record was deleted: nobody to refer
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, k := range in.Kinds {
		kind := referralsv1.ServiceKind(referralsv1.ServiceKind_value["SERVICE_KIND_"+k])
		req.ServiceKinds = []referralsv1.ServiceKind{kind}
		matches, err := a.Referrals.MatchPrograms(ctx, req)
		if err != nil {
			return nil, wrap("match programs", err)
		}
		if len(matches.GetMatches()) == 0 {
			continue
		}
		// The best match can change between attempts (a program fills up
		// or frees slots), and the request id stays. When it was already
		// used, an earlier attempt made this referral with a program that
		// ranked first then, and the service names it. A key stored
		// before the service named what it made is found by trying the
		// others with the same id: the one it used answers with the
		// stored referral.
		// A program that changed since it was matched (it no longer
		// offers the service, or was deleted) refuses: the next one is
		// tried, as a hold passes such a program over.
		var ref *referralsv1.Referral
		refused := false
		for _, m := range matches.GetMatches() {
			ref, err = a.Referrals.CreateReferral(ctx, &referralsv1.CreateReferralRequest{Parent: "clinics/" + aip.Clinic(in.Family),
				RequestId: subID(in.RequestID, "refer", k), Referral: &referralsv1.Referral{
					Family: in.Family, Subject: subject, ServiceKind: kind, Program: m.GetProgram().GetName(),
					Urgency: urgency, Intervention: in.Intervention, Reason: cmp.Or(in.Reason, supportReason(kind))}})
			if made := madeBefore(err); made != "" {
				ref, err = &referralsv1.Referral{Name: made}, nil
			}
			refused = passOver(err, m.GetProgram().GetName())
			if ErrorType(wrap("", err)) != "REQUEST_ID_REUSED" && !refused {
				break
			}
		}
		switch {
		case refused:
			// Every match refused: as if none had matched. The workflow
			// goes on with the other kinds, not ended by a directory
			// that changed under it.
		case ErrorType(wrap("", err)) == "REQUEST_ID_REUSED":
			// The referral exists (a request id is kept only when its call
			// succeeded), with a program no longer among the matches: it
			// stands, though its name is not known here.
		case err != nil:
			return nil, wrap("create referral", err)
		default:
			names = append(names, ref.GetName())
		}
	}
	return names, nil
}

// supportReason is the minimum necessary: what is offered, not why.
func supportReason(k referralsv1.ServiceKind) string {
	switch {
	case k == referralsv1.ServiceKind_SERVICE_KIND_HARM_REDUCTION_NALOXONE, k == referralsv1.ServiceKind_SERVICE_KIND_HARM_REDUCTION_SYRINGE_SERVICES:
		return "Harm reduction offered while treatment is declined."
	case slices.Contains(careKinds, k):
		// Care accepted beside medication: the person said yes to it, and
		// is not someone declining treatment.
		return "Treatment the person accepted at a family intervention."
	default:
		return "Support for the family while their loved one is not in treatment."
	}
}

// FamilySafety reads what the boundary path depends on.
func (a *Activities) FamilySafety(ctx context.Context, family string) (Safety, error) {
	fam, err := a.Families.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: family})
	if err != nil {
		return Safety{}, wrap("get family", err)
	}
	s := Safety{Status: strings.TrimPrefix(fam.GetSafetyScreenStatus().String(), "SAFETY_SCREEN_STATUS_"), Counselor: counselor(fam.GetCounselor()),
		Closed:      fam.GetState() == familiesv1.FamilyState_FAMILY_STATE_CLOSED,
		InTreatment: fam.GetState() == familiesv1.FamilyState_FAMILY_STATE_ENGAGED_IN_TREATMENT}
	for _, m := range fam.GetMembers() {
		// A contact person who has not agreed to be contacted is referred
		// to no program (which would reach out to them) and not checked in
		// with.
		if m.GetRole() == familiesv1.MemberRole_MEMBER_ROLE_CONTACT_PERSON && m.GetConsentToContact() && s.ContactPerson == "" {
			s.ContactPerson = m.GetId()
		}
		if reachable(m) {
			s.Members = append(s.Members, memberPerson(family, m))
		}
	}
	token := ""
	for {
		page, err := a.Families.ListBoundaries(ctx, &familiesv1.ListBoundariesRequest{Parent: family, PageSize: 200, PageToken: token})
		if err != nil {
			return Safety{}, wrap("list boundaries", err)
		}
		for _, b := range page.GetBoundaries() {
			if boundaries.Held(b) {
				s.Boundaries = append(s.Boundaries, b.GetName())
			}
			if boundaries.StatesConsequence(b) {
				s.WithConsequence = append(s.WithConsequence, b.GetName())
			}
		}
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	return s, nil
}

// OverdosesSince lists the family's overdose warning signs recorded at or
// after since, not retracted and not answered yet, oldest first. One is answered when an
// overdose alert names it: an earlier run of the family's boundary
// workflow, ended since, may have answered it.
func (a *Activities) OverdosesSince(ctx context.Context, in OverdosesRequest) ([]string, error) {
	var out []string
	token := ""
	for {
		page, err := a.Families.ListWarningSigns(ctx, &familiesv1.ListWarningSignsRequest{Parent: in.Family, PageSize: 200, PageToken: token,
			Filter: fmt.Sprintf("kind = OVERDOSE AND create_time >= %q", in.Since.UTC().Format(time.RFC3339Nano))})
		if err != nil {
			return nil, wrap("list warning signs", err)
		}
		for _, w := range page.GetWarningSigns() {
			// A sign retracted as recorded in error needs no answer. Read
			// from the sign, not asked in the filter: a families service
			// of a release before retractions (in a rolling update) would
			// refuse the filter, and fail the workflow asking for good.
			if w.GetRetractTime() != nil || in.Sign != "" && w.GetName() != in.Sign {
				continue
			}
			// One alert answers it; the asker's own (IgnoreFrom, and its
			// resends) do not, and are left out in SQL.
			filter := fmt.Sprintf("kind = OVERDOSE_ALERT AND related_resource = %q", w.GetName())
			if in.IgnoreFrom != "" {
				filter += fmt.Sprintf(" AND origin_workflow != %q", in.IgnoreFrom)
			}
			alerts, err := a.Interventions.ListReminders(ctx, &interventionsv1.ListRemindersRequest{Parent: "clinics/" + aip.Clinic(in.Family),
				Filter: filter, PageSize: 1})
			if err != nil {
				return nil, wrap("list reminders", err)
			}
			if len(alerts.GetReminders()) == 0 && in.IgnoreFrom != "" && !in.IgnoreSince.IsZero() {
				// An earlier execution under the same id answered it: its
				// alert was made before this one began (made, not due: a
				// reminder put off past quiet hours is due later).
				alerts, err = a.Interventions.ListReminders(ctx, &interventionsv1.ListRemindersRequest{Parent: "clinics/" + aip.Clinic(in.Family),
					Filter: fmt.Sprintf("kind = OVERDOSE_ALERT AND related_resource = %q AND origin_workflow = %q AND create_time < %q",
						w.GetName(), in.IgnoreFrom, in.IgnoreSince.UTC().Format(time.RFC3339Nano)), PageSize: 1})
				if err != nil {
					return nil, wrap("list reminders", err)
				}
			}
			if len(alerts.GetReminders()) == 0 {
				out = append(out, w.GetName())
			}
			if in.Sign != "" {
				return out, nil // the one sign asked about: no need to read on
			}
		}
		if token = page.GetNextPageToken(); token == "" {
			return out, nil
		}
	}
}

// ReinforceBoundary records a reinforcement. A boundary retired meanwhile
// needs nothing.
func (a *Activities) ReinforceBoundary(ctx context.Context, in ReinforceRequest) error {
	_, err := a.Families.ReinforceBoundary(ctx, &familiesv1.TransitionBoundaryRequest{Name: in.Boundary, Reason: in.Reason, RequestId: in.RequestID})
	if ErrorType(wrap("", err)) == "INVALID_STATE_TRANSITION" {
		return nil
	}
	return wrap("reinforce boundary", err)
}

// ProposeIntervention drafts the next intervention for the counselor,
// carrying over the family, counselor and participants (those still
// members of the family).
func (a *Activities) ProposeIntervention(ctx context.Context, in ProposeRequest) (string, error) {
	prev, err := a.Interventions.GetIntervention(ctx, &interventionsv1.GetInterventionRequest{Name: in.Previous})
	if err != nil {
		return "", wrap("get intervention", err)
	}
	fam, err := a.Families.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: prev.GetFamily()})
	if err != nil {
		return "", wrap("get family", err)
	}
	// The service refuses a participant who is not a member: one who left
	// the family since the last meeting must not fail the workflow, weeks
	// into its boundaries, over a draft the counselor edits anyway.
	members := map[string]bool{}
	for _, m := range fam.GetMembers() {
		members[m.GetId()] = true
	}
	var participants []*interventionsv1.Participant
	for _, p := range prev.GetParticipants() {
		if members[p.GetMemberId()] {
			participants = append(participants, p)
		}
	}
	// The family's counselor now, whom the workflow asks to review the
	// draft: the family may have been handed to another since the last
	// meeting.
	counselor := fam.GetCounselor()
	if counselor == "" {
		counselor = prev.GetCounselor()
	}
	iv, err := a.Interventions.CreateIntervention(ctx, &interventionsv1.CreateInterventionRequest{Parent: "clinics/" + aip.Clinic(in.Previous),
		RequestId: in.RequestID, Intervention: &interventionsv1.Intervention{
			Family: prev.GetFamily(), Counselor: counselor, Level: interventionsv1.EscalationLevel(in.Level),
			TimeZone: prev.GetTimeZone(), ExpectedDuration: prev.GetExpectedDuration(), Place: prev.GetPlace(),
			Participants: participants, PreviousIntervention: in.Previous, CarriedOverNotes: in.Notes}})
	if ErrorType(wrap("", err)) == "REQUEST_ID_REUSED" {
		// An earlier try of this step drafted it from what it read then
		// (the previous meeting, the boundaries named in the notes), and
		// something changed since: that draft stands. The service names
		// it, except under a key stored before it named what it made.
		if made := madeBefore(err); made != "" {
			return made, nil
		}
		return a.draftAfter(ctx, prev)
	}
	if err != nil {
		return "", wrap("create intervention", err)
	}
	return iv.GetName(), nil
}

// CheckInsRecorded returns the check-ins recorded on the intervention,
// oldest first: the boundary workflow takes, as it starts, those recorded
// before it ran, whose signals found no workflow to deliver to.
func (a *Activities) CheckInsRecorded(ctx context.Context, intervention string) ([]CheckInRecord, error) {
	iv, err := a.Interventions.GetIntervention(ctx, &interventionsv1.GetInterventionRequest{Name: intervention})
	if err != nil {
		return nil, wrap("get intervention", err)
	}
	out := []CheckInRecord{}
	for _, ci := range iv.GetCheckIns() {
		out = append(out, CheckInRecord{Number: ci.GetNumber(), WindowOfOpportunity: ci.GetWindowOfOpportunity(),
			NewWarningSigns: ci.GetNewWarningSigns()})
	}
	return out, nil
}

// MeetingsHeld counts the family's meetings at in.Level that were held
// since the loved one last said yes: completed, with an outcome recorded,
// whatever it was. Drafts, meetings still to come and cancelled ones do not
// count, nor those before a meeting that ended in a yes to treatment: a
// family meeting again after a relapse begins a new series. A partial yes
// is one when it took MAT or other care (what hands over to an intake); one
// to support alone (a group, naloxone) is followed up as a refusal, and the
// series goes on.
func (a *Activities) MeetingsHeld(ctx context.Context, in MeetingsRequest) (int, error) {
	var held []time.Time // the starts of the meetings held at the level
	var lastYes time.Time
	token := ""
	for {
		page, err := a.Interventions.ListInterventions(ctx, &interventionsv1.ListInterventionsRequest{
			Parent: "clinics/" + aip.Clinic(in.Family), PageSize: 100, PageToken: token,
			Filter: fmt.Sprintf("family = %q AND state = COMPLETED", in.Family)})
		if err != nil {
			return 0, wrap("list interventions", err)
		}
		for _, iv := range page.GetInterventions() {
			at := iv.GetStartTime().AsTime()
			if saidYes(iv.GetOutcome()) && at.After(lastYes) {
				lastYes = at
			}
			if int32(iv.GetLevel()) == in.Level {
				held = append(held, at)
			}
		}
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	n := 0
	for _, at := range held {
		if at.After(lastYes) {
			n++
		}
	}
	return n, nil
}

// saidYes reports whether o is a yes to treatment: accepted, or accepted in
// part with MAT or other care among what was taken.
func saidYes(o *interventionsv1.Outcome) bool {
	switch o.GetKind() {
	case interventionsv1.OutcomeKind_OUTCOME_KIND_ACCEPTED:
		return true
	case interventionsv1.OutcomeKind_OUTCOME_KIND_PARTIALLY_ACCEPTED:
		return slices.ContainsFunc(o.GetAcceptedServices(), func(k interventionsv1.ServiceKind) bool {
			name := strings.TrimPrefix(k.String(), "SERVICE_KIND_")
			return IsMAT(name) || IsCare(name)
		})
	}
	return false
}

// draftAfter finds the newest intervention of prev's family drafted to
// follow prev.
func (a *Activities) draftAfter(ctx context.Context, prev *interventionsv1.Intervention) (string, error) {
	var newest *interventionsv1.Intervention
	token := ""
	for {
		page, err := a.Interventions.ListInterventions(ctx, &interventionsv1.ListInterventionsRequest{
			Parent: "clinics/" + aip.Clinic(prev.GetName()), Filter: fmt.Sprintf("family = %q", prev.GetFamily()),
			PageSize: 100, PageToken: token})
		if err != nil {
			return "", wrap("list interventions", err)
		}
		for _, iv := range page.GetInterventions() {
			if iv.GetPreviousIntervention() == prev.GetName() &&
				(newest == nil || iv.GetCreateTime().AsTime().After(newest.GetCreateTime().AsTime())) {
				newest = iv
			}
		}
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	if newest == nil {
		return "", temporal.NewNonRetryableApplicationError("the request id of the proposal was used, and no draft follows "+prev.GetName(),
			"REQUEST_ID_REUSED", nil)
	}
	return newest.GetName(), nil
}

// FamilyCounselor returns the family's counselor now, or fallback when the
// family has none: a workflow that runs for weeks must reach whoever holds
// the family today, not whoever held it when the workflow began.
func (a *Activities) FamilyCounselor(ctx context.Context, family string, fallback Person) (Person, error) {
	fam, err := a.Families.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: family})
	if err != nil {
		// A family whose record was deleted keeps its referrals (see
		// familydeleted): their notices go to the counselor known before.
		return fallback, gone("get family", err)
	}
	if fam.GetCounselor() == "" {
		return fallback, nil
	}
	return counselor(fam.GetCounselor()), nil
}

// FamilyContacts returns who may be reminded of an intake: the loved one,
// only if the family allows direct contact, and the family's contact person.
func (a *Activities) FamilyContacts(ctx context.Context, family string) ([]Person, error) {
	fam, err := a.Families.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: family})
	if status.Code(err) == codes.NotFound {
		// The family's record was deleted while its intake goes on (its
		// referrals stay): nobody in it is reminded.
		return nil, nil
	}
	if err != nil {
		return nil, wrap("get family", err)
	}
	var out []Person
	if lo := fam.GetLovedOne(); lo.GetMayContactDirectly() && len(lo.GetContactChannels()) > 0 {
		out = append(out, Person{Kind: "loved_one", Family: family, TimeZone: lo.GetTimeZone(),
			Channel: strings.TrimPrefix(lo.GetContactChannels()[0].GetKind().String(), "CHANNEL_KIND_")})
	}
	for _, m := range fam.GetMembers() {
		if m.GetRole() == familiesv1.MemberRole_MEMBER_ROLE_CONTACT_PERSON && reachable(m) {
			out = append(out, memberPerson(family, m))
			break
		}
	}
	// One who gave no zone is told the appointment's time in the loved
	// one's (whose program is near them, and a family near them too), or
	// in the one the other reminded gave: not in UTC.
	zone := fam.GetLovedOne().GetTimeZone()
	if zone == "" && len(out) > 0 {
		zone = out[len(out)-1].TimeZone // the contact person's, if any
	}
	for i := range out {
		if out[i].TimeZone == "" {
			out[i].TimeZone = zone
		}
	}
	return out, nil
}

// subID derives the request id of one call within an activity from the
// activity's request id and what the call is about (a program, a kind),
// never from a position in a list that can change between attempts.
func subID(base string, parts ...string) string {
	h := sha256.New()
	h.Write([]byte(base))
	for _, p := range parts {
		h.Write([]byte{0})
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil)[:20])
}

// familyDeleted is the reason given for what CloseFamily cancels;
// FamilyClosedReason for what CloseClosedFamily does.
const familyDeleted = "the family's record was deleted"

// FamilyClosed is the error type of a step the services refuse because
// the family's case is closed.
const FamilyClosed = apperr.ReasonFamilyClosed

// FamilyInTreatment is the error type of a boundary step the families
// service refuses because the loved one is in treatment.
const FamilyInTreatment = apperr.ReasonFamilyInTreatment

// FamilyClosedReason is the reason given for what CloseClosedFamily
// cancels.
const FamilyClosedReason = "the family's case was closed"

// StillClosed reports whether the family's case is closed now: one
// reopened before the worker got to its closing keeps what it has. A
// family deleted since is not: its own workflow stops the rest.
func (a *Activities) StillClosed(ctx context.Context, family string) (bool, error) {
	return a.familyIn(ctx, family, familiesv1.FamilyState_FAMILY_STATE_CLOSED)
}

// StillEngaged reports whether the family is recorded in treatment now.
// An entry staff undid (the person left treatment, the family set ACTIVE
// again) before the worker got to it ends nothing: a follow-up begun
// since is the family's again. A family deleted since is not engaged.
func (a *Activities) StillEngaged(ctx context.Context, family string) (bool, error) {
	return a.familyIn(ctx, family, familiesv1.FamilyState_FAMILY_STATE_ENGAGED_IN_TREATMENT)
}

// familyIn reports whether the family is in state now; a family deleted
// is in none.
func (a *Activities) familyIn(ctx context.Context, family string, state familiesv1.FamilyState) (bool, error) {
	fam, err := a.Families.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: family})
	if apperr.IsCode(err, codes.NotFound) {
		return false, nil
	}
	if err != nil {
		return false, wrap("get family", err)
	}
	return fam.GetState() == state, nil
}

// CloseFamily cancels a deleted family's drafts and scheduled meetings
// (their workflows end, giving back held places and cancelling their
// reminders), gives back the places held for it outside any meeting, and
// then cancels the reminders still pending for its people. Each
// cancellation's request id derives from in.RequestID and the resource,
// so a retry changes nothing twice.
func (a *Activities) CloseFamily(ctx context.Context, in CloseFamilyRequest) (Closed, error) {
	return a.closeFamily(ctx, in, familyDeleted, "")
}

// CloseClosedFamily does what CloseFamily does for a family whose case
// was closed, with two differences. It reads, on every attempt, that the
// family is still closed: one reopened while a service was down keeps
// what it has by then. And it leaves a meeting that has begun, whose
// outcome the counselor is still to record: cancelled, the outcome could
// never be, and the EHR would hear of a meeting that took place as called
// off. An activity of its own, not CloseFamily with a reason: a worker of
// a release before closings leaves it to one that knows it, rather than
// cancel everything as for a deleted record.
func (a *Activities) CloseClosedFamily(ctx context.Context, in CloseFamilyRequest) (Closed, error) {
	closed, err := a.StillClosed(ctx, in.Family)
	if err != nil || !closed {
		return Closed{Reopened: err == nil}, err
	}
	return a.closeFamily(ctx, in, FamilyClosedReason, fmt.Sprintf(" AND start_time > %q", time.Now().UTC().Format(time.RFC3339Nano)))
}

// closeFamily is CloseFamily under reason, its scheduled meetings narrowed
// by the filter clause scheduled.
func (a *Activities) closeFamily(ctx context.Context, in CloseFamilyRequest, reason, scheduled string) (Closed, error) {
	var out Closed
	clinic := aip.Clinic(in.Family)
	// Drafts first: one scheduled between the two listings (its schedule
	// read the family before the deletion) is then found as one or the
	// other; scheduled first, it was missed by both.
	for _, st := range []string{"state = DRAFT", "state = SCHEDULED" + scheduled} {
		n, err := a.cancelInterventions(ctx, in.Family, st, reason, in.RequestID, false)
		out.Interventions += n
		if err != nil {
			return out, err
		}
	}
	held, err := a.releaseLooseHolds(ctx, in.Family, reason, in.RequestID)
	out.Holds += held
	if err != nil {
		return out, err
	}
	// One listing of every reminder not yet final: a reminder's state moves
	// with the clock (due, a lease run out), and lists by state taken one
	// after another could each miss one that moved between them.
	n, err := a.cancelReminders(ctx, CancelRemindersRequest{Clinic: clinic, Reason: reason, RequestID: in.RequestID},
		fmt.Sprintf("recipient_family = %q AND %s", in.Family, openReminders), nil)
	out.Reminders += n
	return out, err
}

// releaseLooseHolds gives back the places held for a deleted or closed
// family outside any meeting (a counselor's, by hand): nothing else
// follows them, and they would keep a scarce place until they lapse. Those
// naming a meeting go back with it (its workflow, CancelledHolds).
func (a *Activities) releaseLooseHolds(ctx context.Context, family, reason, requestID string) (int, error) {
	loose, err := a.heldWhere(ctx, aip.Clinic(family), fmt.Sprintf("family = %q AND state = HELD", family),
		func(h *referralsv1.Hold) bool { return h.GetFamily() == family && h.GetIntervention() == "" })
	if err != nil {
		return 0, err
	}
	return a.releaseAll(ctx, loose, reason, requestID)
}

// WithdrawDrafts cancels the family's meetings still in draft, the next,
// firmer one a boundary workflow proposed after a refusal among them: once
// the loved one has said yes, a meeting to bring them to it is moot, and a
// draft left standing asks the counselor to plan it. Scheduled meetings
// stay: their participants were invited, and calling them off is the
// counselor's to decide. A draft scheduled or deleted meanwhile is left
// be. It returns how many it cancelled.
func (a *Activities) WithdrawDrafts(ctx context.Context, in WithdrawDraftsRequest) (int, error) {
	return a.cancelInterventions(ctx, in.Family, "state = DRAFT", in.Reason, in.RequestID, true)
}

// cancelInterventions cancels the family's interventions that match which
// (a filter clause: "state = DRAFT", say), each under a request id of its
// own derived from requestID. One that ended meanwhile (an outcome
// recorded) or a draft deleted is left be; with unchanged, so is one
// changed since it was listed (a draft scheduled, which the service would
// otherwise cancel too).
func (a *Activities) cancelInterventions(ctx context.Context, family, which, reason, requestID string, unchanged bool) (int, error) {
	n := 0
	prefix := requestID[:min(len(requestID), 24)]
	for token := ""; ; {
		page, err := a.Interventions.ListInterventions(ctx, &interventionsv1.ListInterventionsRequest{Parent: "clinics/" + aip.Clinic(family),
			Filter: fmt.Sprintf("family = %q AND %s", family, which), PageSize: 100, PageToken: token})
		if err != nil {
			return n, wrap("list interventions", err)
		}
		for _, iv := range page.GetInterventions() {
			req := &interventionsv1.CancelInterventionRequest{Name: iv.GetName(), Reason: reason, RequestId: prefix + "-" + aip.ID(iv.GetName())}
			if unchanged {
				req.Etag = iv.GetEtag()
			}
			_, err := a.Interventions.CancelIntervention(ctx, req)
			if unchanged && apperr.Reason(err) == apperr.ReasonEtagMismatch {
				// The counselor took it over. Another ABORTED (a deadlock,
				// a lock timeout) is retried with the activity.
				continue
			}
			if t := ErrorType(wrap("", err)); err != nil && t != "INVALID_STATE_TRANSITION" && t != "RESOURCE_NOT_FOUND" {
				return n, wrap("cancel intervention", err)
			}
			if err == nil {
				n++
			}
		}
		if token = page.GetNextPageToken(); token == "" {
			return n, nil
		}
	}
}

// contactWithdrawn is the reason a reminder is cancelled when its recipient
// may no longer be contacted.
const contactWithdrawn = "The recipient may no longer be contacted."

// WithdrawUncontactable cancels the family's reminders not yet final whose
// recipient may no longer be contacted: a member removed or no longer
// consenting, or the loved one no longer to be contacted directly. It
// reads the family as it is now, so a change undone meanwhile cancels
// nothing; a deleted family is FamilyDeleted's.
func (a *Activities) WithdrawUncontactable(ctx context.Context, in WithdrawRequest) (int, error) {
	fam, err := a.Families.GetFamily(ctx, &familiesv1.GetFamilyRequest{Name: in.Family})
	if err != nil {
		return 0, gone("get family", err)
	}
	consenting := map[string]bool{}
	for _, m := range fam.GetMembers() {
		consenting[m.GetId()] = m.GetConsentToContact()
	}
	uncontactable := func(r *interventionsv1.Reminder) bool {
		switch rc := r.GetRecipient(); rc.GetKind() {
		case interventionsv1.RecipientKind_RECIPIENT_KIND_LOVED_ONE:
			return !fam.GetLovedOne().GetMayContactDirectly()
		case interventionsv1.RecipientKind_RECIPIENT_KIND_FAMILY_MEMBER:
			return !consenting[rc.GetId()]
		}
		return false // staff
	}
	return a.cancelReminders(ctx, CancelRemindersRequest{Clinic: aip.Clinic(in.Family), Reason: contactWithdrawn, RequestID: in.RequestID},
		fmt.Sprintf("recipient_family = %q AND %s", in.Family, openReminders), uncontactable)
}
