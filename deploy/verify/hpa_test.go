package verify

import (
	"math"
	"testing"
	"time"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
)

// hpa follows the HorizontalPodAutoscaler's decisions for one scale target
// (kubernetes pkg/controller/podautoscaler/horizontal.go,
// normalizeDesiredReplicasWithBehaviors): the metrics' proposal (the
// largest of the triggers', each by hpaDesired with the 0.1 tolerance) is
// stabilized (scale-up to the lowest proposal of its window, scale-down to
// the highest of its window), then limited by the scale policies over the
// scale events of their periods, then by [min, max]. Times are divided by
// compress (1: as written).
type hpa struct {
	min, max int
	up, down *autoscalingv2.HPAScalingRules
	compress float64
	recs     []hpaRecord // proposals, for the stabilization windows
	events   []hpaRecord // replica changes (n: the change), for the policies
}

type hpaRecord struct {
	at time.Time
	n  int
}

func (h *hpa) scaled(seconds int32) time.Duration {
	return time.Duration(float64(seconds) * float64(time.Second) / h.compress)
}

// decide returns the replica count for a proposal, at now, with current
// replicas, and records the change.
func (h *hpa) decide(now time.Time, current, proposal int) int {
	// stabilizeRecommendationWithBehaviors
	upRec, downRec := proposal, proposal
	upCut, downCut := now.Add(-h.scaled(*h.up.StabilizationWindowSeconds)), now.Add(-h.scaled(*h.down.StabilizationWindowSeconds))
	keep := h.recs[:0]
	for _, r := range h.recs {
		if r.at.After(upCut) {
			upRec = min(upRec, r.n)
		}
		if r.at.After(downCut) {
			downRec = max(downRec, r.n)
		}
		if r.at.After(upCut) || r.at.After(downCut) {
			keep = append(keep, r)
		}
	}
	h.recs = append(keep, hpaRecord{now, proposal})
	rec := current
	if rec < upRec {
		rec = upRec
	}
	if rec > downRec {
		rec = downRec
	}
	// convertDesiredReplicasWithBehaviorRate
	out := rec
	switch {
	case rec > current:
		limit := max(h.limit(now, current, h.up, true), current)
		out = min(rec, min(limit, h.max))
	case rec < current:
		limit := min(h.limit(now, current, h.down, false), current)
		out = max(rec, max(limit, h.min))
	}
	out = min(max(out, h.min), h.max)
	if out != current {
		h.events = append(h.events, hpaRecord{now, out - current})
	}
	return out
}

// limit is calculateScaleUpLimitWithScalingRules (up) or
// calculateScaleDownLimitWithBehaviors.
func (h *hpa) limit(now time.Time, current int, rules *autoscalingv2.HPAScalingRules, up bool) int {
	pickMin := rules.SelectPolicy != nil && *rules.SelectPolicy == autoscalingv2.MinChangePolicySelect
	if rules.SelectPolicy != nil && *rules.SelectPolicy == autoscalingv2.DisabledPolicySelect {
		return current
	}
	result := math.MinInt
	if pickMin == up { // up with Min, or down with Max (the default): the lowest limit
		result = math.MaxInt
	}
	for _, p := range rules.Policies {
		added, deleted := 0, 0
		cut := now.Add(-h.scaled(p.PeriodSeconds))
		for _, e := range h.events {
			if e.at.After(cut) {
				if e.n > 0 {
					added += e.n
				} else {
					deleted -= e.n
				}
			}
		}
		var proposed int
		if up {
			start := current - added + deleted
			if p.Type == autoscalingv2.PodsScalingPolicy {
				proposed = start + int(p.Value)
			} else {
				proposed = int(math.Ceil(float64(start) * (1 + float64(p.Value)/100)))
			}
		} else {
			start := current + deleted - added
			if p.Type == autoscalingv2.PodsScalingPolicy {
				proposed = start - int(p.Value)
			} else {
				proposed = int(float64(start) * (1 - float64(p.Value)/100))
			}
		}
		if pickMin == up {
			result = min(result, proposed)
		} else {
			result = max(result, proposed)
		}
	}
	return result
}

func TestHPABehavior(t *testing.T) {
	i32 := func(v int32) *int32 { return &v }
	maxSel, minSel := autoscalingv2.MaxChangePolicySelect, autoscalingv2.MinChangePolicySelect
	h := &hpa{min: 1, max: 10, compress: 1,
		up: &autoscalingv2.HPAScalingRules{StabilizationWindowSeconds: i32(30), SelectPolicy: &maxSel, Policies: []autoscalingv2.HPAScalingPolicy{
			{Type: autoscalingv2.PercentScalingPolicy, Value: 100, PeriodSeconds: 30}, {Type: autoscalingv2.PodsScalingPolicy, Value: 2, PeriodSeconds: 30}}},
		down: &autoscalingv2.HPAScalingRules{StabilizationWindowSeconds: i32(300), SelectPolicy: &minSel, Policies: []autoscalingv2.HPAScalingPolicy{
			{Type: autoscalingv2.PodsScalingPolicy, Value: 1, PeriodSeconds: 60}}},
	}
	t0 := time.Unix(1_800_000_000, 0)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	steps := []struct{ s, current, proposal, want int }{
		{0, 1, 1, 1},
		{15, 1, 5, 1},   // the up window holds the 1 of t=0
		{30, 1, 5, 3},   // it does not (the cut is exclusive): up by max(100% of 1, 2 pods) = 3
		{45, 3, 5, 3},   // 2 added in the last 30 s: the period started at 1, limit 3
		{61, 3, 5, 5},   // the period passed: max(6, 5) = 6, capped by the proposal
		{90, 5, 1, 5},   // the down window holds 5s
		{395, 5, 1, 4},  // 300 s of 1s: down by one pod a minute
		{400, 4, 1, 4},  // within the minute
		{456, 4, 1, 3},  // the next minute
		{460, 3, 12, 3}, // up: the up window holds the 1 of t=456
		{487, 3, 12, 6}, // up: 100% of 3 or 2 pods
	}
	for _, st := range steps {
		if got := h.decide(at(st.s), st.current, st.proposal); got != st.want {
			t.Errorf("t=%d current %d proposal %d: %d, want %d", st.s, st.current, st.proposal, got, st.want)
		}
	}
}
