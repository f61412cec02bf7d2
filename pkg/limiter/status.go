package limiter

import (
	"context"
	"encoding/json"
	"time"
)

// Status is one consistent snapshot of a provider's shared state.
type Status struct {
	Provider string
	Config   ProviderConfig
	// Now is the Redis time of the snapshot.
	Now time.Time
	// Tokens is the bucket settled at Now.
	Tokens float64
	// Scale, Level, Source, Seq and UpdatedAt are the scale hash.
	Scale     float64
	Level     string
	Source    string
	Seq       int64
	UpdatedAt time.Time
	// EffectiveRate is Config.RefillRate × Scale.
	EffectiveRate float64
	Breaker       BreakerStatus
	// Cooldown is nil when none is active.
	Cooldown *Cooldown
	// Replicas are the live replicas, by id.
	Replicas []Replica
	// Raw holds the scale hash as stored, for fields added by other components.
	Raw map[string]string
}

// Cooldown is an active shared cooldown.
type Cooldown struct {
	Scope   string    `json:"scope"`
	Reason  string    `json:"reason"`
	Until   time.Time `json:"-"`
	UntilMS int64     `json:"until_ms"`
}

// Replica is a live pipeline replica in the registry.
type Replica struct {
	ID        string
	ExpiresAt time.Time
}

// Status returns provider's shared state in one round trip.
func (c *Coordinator) Status(ctx context.Context, provider string) (Status, error) {
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
	s := Status{Provider: provider, Config: configFromHash(r.hash(1)), Now: now, Tokens: r.float(6), Raw: r.hash(2)}
	s.Scale, s.Level, s.Source = 1, LevelOK, s.Raw["source"]
	if v, ok := s.Raw["scale"]; ok {
		s.Scale = parseFloat(v)
	}
	if v, ok := s.Raw["level"]; ok {
		s.Level = v
	}
	s.Seq = int64(parseFloat(s.Raw["seq"]))
	if us := int64(parseFloat(s.Raw["updated_at"])); us > 0 {
		s.UpdatedAt = time.UnixMicro(us)
	}
	s.EffectiveRate = s.Config.RefillRate * s.Scale

	b := r.hash(3)
	s.Breaker = BreakerStatus{State: "closed", Failures: int(parseFloat(b["failures"]))}
	if state := b["state"]; state != "" {
		s.Breaker.State = state
	}
	if s.Breaker.State == "open" {
		reopen := time.UnixMicro(int64(parseFloat(b["opened_at"]))).Add(s.Config.BreakerTimeout)
		s.Breaker.RetryAfter = max(reopen.Sub(now), 0)
	}

	if raw := r.str(4); raw != "" {
		var cd Cooldown
		if json.Unmarshal([]byte(raw), &cd) == nil && cd.UntilMS*1000 > r.int(0) {
			cd.Until = time.UnixMilli(cd.UntilMS)
			s.Cooldown = &cd
		}
	}
	live, _ := r[5].([]any)
	for i := 0; i+1 < len(live); i += 2 {
		s.Replicas = append(s.Replicas, Replica{ID: reply(live).str(i), ExpiresAt: time.UnixMilli(int64(reply(live).float(i + 1)))})
	}
	return s, nil
}
