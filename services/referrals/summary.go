package referrals

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"

	"google.golang.org/protobuf/types/known/durationpb"

	referralsv1 "github.com/handoff-health/handoff/gen/go/handoff/referrals/v1"
	"github.com/handoff-health/handoff/services/aip"
	"github.com/handoff-health/handoff/services/apperr"
)

// summaryFilter is ListReferrals' filter with the fields an outcome report
// selects on: when the referral was made, and whom it is for.
var summaryFilter = func() map[string]aip.FilterField {
	f := maps.Clone(referralFilter)
	f["create_time"] = aip.FilterField{Column: "create_time", Kind: aip.Time}
	f["subject_kind"] = aip.FilterField{Column: "subject_kind", Kind: aip.Enum, Enum: aip.EnumLookup(referralsv1.SubjectKind_value, "SUBJECT_KIND_")}
	return f
}()

// summarySQL counts in one statement. The wait runs from first contact, or
// from the referral without one, to treatment entry, as
// days_to_treatment_entry does; percentile_cont leaves out those that did
// not enter. Engagement (HEDIS IET) counts only after an initiation
// within 14 days, as the measure does. A referral entered in error was
// never made: it counts nowhere.
const summarySQL = `WITH r AS (
	SELECT state, treatment_entry_time - COALESCE(first_contact_time, create_time) AS wait, engagement_time
	FROM referrals WHERE clinic = $1 AND state <> %d AND %s)
SELECT (SELECT COALESCE(json_object_agg(state, n), '{}') FROM (SELECT state, count(*) AS n FROM r GROUP BY state) s),
	count(*), count(wait),
	count(*) FILTER (WHERE wait <= interval '72 hours'), count(*) FILTER (WHERE wait <= interval '14 days'),
	percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM wait)),
	percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM wait)),
	count(*) FILTER (WHERE wait <= interval '14 days' AND engagement_time IS NOT NULL)
FROM r`

// SummarizeReferrals implements the API.
func (s *Server) SummarizeReferrals(ctx context.Context, req *referralsv1.SummarizeReferralsRequest) (*referralsv1.ReferralSummary, error) {
	clinic, err := parentClinic(ctx, req.GetParent())
	if err != nil {
		return nil, err
	}
	f, err := aip.ParseFilter(req.GetFilter(), summaryFilter)
	if err != nil {
		return nil, apperr.Field("filter", "%v", err)
	}
	where, args := f.SQL(2)
	var (
		byState                           []byte
		total, entered, within3, within14 int64
		engaged                           int64
		median, p90                       *float64
	)
	if err := s.pool.QueryRow(ctx, fmt.Sprintf(summarySQL, int16(voided), where), append([]any{clinic}, args...)...).Scan(
		&byState, &total, &entered, &within3, &within14, &median, &p90, &engaged); err != nil {
		return nil, fmt.Errorf("summarize referrals: %w", err)
	}
	counts := map[string]int64{}
	if err := json.Unmarshal(byState, &counts); err != nil {
		return nil, fmt.Errorf("summarize referrals: states: %w", err)
	}
	out := &referralsv1.ReferralSummary{Referrals: count(total), EnteredTreatment: count(entered),
		EnteredWithinThreeDays: count(within3), EnteredWithinTwoWeeks: count(within14),
		MedianTimeToTreatmentEntry: seconds(median), P90TimeToTreatmentEntry: seconds(p90), EngagedInTreatment: count(engaged)}
	for k, n := range counts {
		st, err := strconv.Atoi(k)
		if err != nil {
			return nil, fmt.Errorf("summarize referrals: state %q: %w", k, err)
		}
		out.States = append(out.States, &referralsv1.ReferralStateCount{State: referralsv1.ReferralState(st), Count: count(n)})
	}
	slices.SortFunc(out.States, func(a, b *referralsv1.ReferralStateCount) int { return int(a.GetState()) - int(b.GetState()) })
	return out, nil
}

// seconds is a number of seconds as a duration to the millisecond, or nil
// for none. Built from seconds, not time.Duration, which ends at 292 years:
// a first contact mistyped centuries back must not wrap around.
func seconds(v *float64) *durationpb.Duration {
	if v == nil {
		return nil
	}
	ms := math.Round(*v * 1000)
	return &durationpb.Duration{Seconds: int64(ms / 1000), Nanos: int32(math.Mod(ms, 1000) * 1e6)}
}

// count is a count as the API's int32, held at its largest.
func count(n int64) int32 { return int32(min(n, math.MaxInt32)) }
