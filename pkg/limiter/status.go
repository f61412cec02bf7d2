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
	sh := r.hash(2)
	s := Status{
		Provider: provider, Config: configFromHash(r.hash(1)), Now: now, Tokens: r.float(6),
		Scale: 1, Source: sh["source"], Seq: int64(parseFloat(sh["seq"])), Level: state.OK,
		ShadowScale: parseFloat(sh["shadow_scale"]), ShadowSource: sh["shadow_source"],
	}
	if v, ok := sh["scale"]; ok {
		s.Scale = parseFloat(v)
	}
	if v, ok := sh["level"]; ok {
		s.Level = state.Level(v)
	}
	if us := int64(parseFloat(sh["updated_at"])); us > 0 {
		s.UpdatedAt = time.UnixMicro(us)
	}
	s.EffectiveRate = s.Config.RefillRate * s.Scale

	b := r.hash(3)
	s.Breaker = BreakerStatus{State: state.BreakerClosed, Failures: int(parseFloat(b["failures"]))}
	if v := b["state"]; v != "" {
		s.Breaker.State = state.Breaker(v)
	}
	if s.Breaker.State == state.BreakerOpen {
		reopen := time.UnixMicro(int64(parseFloat(b["opened_at"]))).Add(s.Config.BreakerTimeout)
		s.Breaker.RetryAfter = max(reopen.Sub(now), 0)
	}

	if raw := r.str(4); raw != "" {
		var cd struct {
			Scope   string `json:"scope"`
			Reason  string `json:"reason"`
			UntilMS int64  `json:"until_ms"`
		}
		if json.Unmarshal([]byte(raw), &cd) == nil && cd.UntilMS*1000 > r.int(0) {
			s.Cooldown = &Cooldown{Scope: cd.Scope, Reason: cd.Reason, Until: time.UnixMilli(cd.UntilMS)}
		}
	}
	live, _ := r[5].([]any)
	for i := 0; i+1 < len(live); i += 2 {
		s.Replicas = append(s.Replicas, reply(live).str(i))
	}
	slices.Sort(s.Replicas)
	return s, nil
}
