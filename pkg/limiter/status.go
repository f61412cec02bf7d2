package limiter

import (
	"context"
	"encoding/json"
	"slices"
	"time"

	"github.com/sluice-dev/sluice/pkg/state"
)

// Status is one consistent snapshot of a provider's shared state, read at
// Redis time in one script.
type Status struct {
	Provider string
	Config   ProviderConfig
	// Now is the Redis time of the snapshot.
	Now time.Time
	// Tokens is the bucket settled at Now.
	Tokens float64
	// Scale is the scale factor in force (1 until one is set); Source says
	// who set it, Seq counts its changes, UpdatedAt is the Redis time of the
	// last change (zero: never changed).
	Scale     float64
	Source    string
	Seq       int64
	UpdatedAt time.Time
	// EffectiveRate is Config.RefillRate × Scale.
	EffectiveRate float64
	// Level is the pressure level recorded by SetPressure (ok until one is).
	Level state.Level
	// ShadowScale is the scale a shadow-mode feedback handler would set, and
	// ShadowSource who reported it ("" and 0 when none has).
	ShadowScale  float64
	ShadowSource string
	Breaker      BreakerStatus
	// Cooldown is nil when none is active.
	Cooldown *Cooldown
	// Replicas are the ids of the live replicas, sorted.
	Replicas []string
	// Lanes are the provider's lanes (SetLanes), highest priority first,
	// each with the tokens its bucket held at the bucket's last write (the
	// refill since is handed out at the next decision); nil without lanes.
	Lanes []LaneStatus
}

// LaneStatus is one lane as stored and its bucket's tokens; Stored is
// false until a decision has split the bucket into lanes.
type LaneStatus struct {
	Lane
	Tokens float64
	Stored bool
}

// Cooldown is an active shared cooldown.
type Cooldown struct {
	Scope, Reason string
	Until         time.Time
}

// Status returns provider's shared state in one round trip. It writes
// nothing and does not make this process a replica of provider.
func (c *Limiter) Status(ctx context.Context, provider string) (Status, error) {
	st, err := c.state(provider)
	if err != nil {
		return Status{}, err
	}
	k := st.keys
	res, err := c.run(ctx, st, statusScript, []string{k.config, k.bucket, k.scale, k.breaker, k.cooldown, k.replicas})
	if err != nil {
		return Status{}, err
	}
	r, err := replyArray(res, 8)
	if err != nil {
		return Status{}, err
	}
	now := time.UnixMicro(r.int(0))
	cfg := r.hash(1)
	s := Status{Provider: provider, Config: configFromHash(cfg), Now: now, Tokens: r.float(6)}
	s.readScale(r.hash(2))
	s.Breaker = breakerStatus(r.hash(3), s.Config.BreakerTimeout, now)
	s.Cooldown = activeCooldown(r.str(4), now)
	s.Replicas = replicaIDs(r[5])
	if text, ok := cfg["lanes"]; ok {
		lanes, err := parseLanes(k.config, text)
		if err != nil {
			return Status{}, err
		}
		bucket := r.hash(7)
		for _, l := range lanes {
			v, ok := bucket["lane:"+l.Name]
			s.Lanes = append(s.Lanes, LaneStatus{l, parseFloat(v), ok})
		}
	}
	return s, nil
}

// readScale fills the fields of s that the scale hash h holds, and the
// rate they make with s.Config: scale 1 and level ok until set.
func (s *Status) readScale(h map[string]string) {
	s.Scale, s.Level = 1, state.OK
	if v, ok := h["scale"]; ok {
		s.Scale = parseFloat(v)
	}
	if v, ok := h["level"]; ok {
		s.Level = state.Level(v)
	}
	s.Source, s.Seq = h["source"], int64(parseFloat(h["seq"]))
	s.ShadowScale, s.ShadowSource = parseFloat(h["shadow_scale"]), h["shadow_source"]
	if us := int64(parseFloat(h["updated_at"])); us > 0 {
		s.UpdatedAt = time.UnixMicro(us)
	}
	s.EffectiveRate = s.Config.RefillRate * s.Scale
}

// breakerStatus reads the breaker hash h at Redis time now: closed until
// set; an open breaker lets a probe through timeout after it opened.
func breakerStatus(h map[string]string, timeout time.Duration, now time.Time) BreakerStatus {
	b := BreakerStatus{State: state.BreakerClosed, Failures: int(parseFloat(h["failures"]))}
	if v := h["state"]; v != "" {
		b.State = state.Breaker(v)
	}
	if b.State == state.BreakerOpen {
		reopen := time.UnixMicro(int64(parseFloat(h["opened_at"]))).Add(timeout)
		b.RetryAfter = max(reopen.Sub(now), 0)
	}
	return b
}

// activeCooldown reads the cooldown key's JSON value raw at Redis time now;
// nil when there is none, it cannot be read, or it has ended.
func activeCooldown(raw string, now time.Time) *Cooldown {
	var cd struct {
		Scope   string `json:"scope"`
		Reason  string `json:"reason"`
		UntilMS int64  `json:"until_ms"`
	}
	if raw == "" || json.Unmarshal([]byte(raw), &cd) != nil || cd.UntilMS*1000 <= now.UnixMicro() {
		return nil
	}
	return &Cooldown{Scope: cd.Scope, Reason: cd.Reason, Until: time.UnixMilli(cd.UntilMS)}
}

// replicaIDs reads the live replicas from a flat id/score array, sorted.
func replicaIDs(v any) []string {
	live, _ := v.([]any)
	var ids []string
	for i := 0; i+1 < len(live); i += 2 {
		ids = append(ids, reply(live).str(i))
	}
	slices.Sort(ids)
	return ids
}
