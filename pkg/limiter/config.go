package limiter

import (
	"math"
	"strconv"
	"time"

	"github.com/sluice-dev/sluice/pkg/internal/opts"
)

// ProviderConfig is one provider's shared bucket and breaker, as stored in
// Redis (<prefix>:{<provider>}:config). The zero value is not valid; start
// from DefaultProviderConfig.
type ProviderConfig struct {
	// Capacity is the most tokens the bucket holds (the burst), in [1, 1e9].
	// It is not scaled.
	Capacity int64
	// RefillRate is the base rate in tokens per second, in (0, 1e9]. The rate
	// in force is RefillRate × scale.
	RefillRate float64
	// Cooldown is how long TriggerCooldown stops every replica, in [0, 24h].
	// 0 makes TriggerCooldown without an explicit duration a no-op.
	Cooldown time.Duration
	// BreakerThreshold is the number of consecutive failures that opens the
	// shared breaker, in [0, 1e6]; 0 disables the breaker.
	BreakerThreshold int
	// BreakerTimeout is how long an open breaker refuses before it lets one
	// probe through, in (0, 24h].
	BreakerTimeout time.Duration
	// MaxScale is the highest scale SetBudgetScale accepts, in [1, 100];
	// 0 means 1 (scales above 1 are refused).
	MaxScale float64
}

// DefaultProviderConfig returns the seed's defaults: capacity 60, 60 tokens/s,
// cooldown 600 s, breaker after 5 failures for 60 s, scale at most 1.
func DefaultProviderConfig() ProviderConfig {
	return ProviderConfig{
		Capacity:         60,
		RefillRate:       60,
		Cooldown:         600 * time.Second,
		BreakerThreshold: 5,
		BreakerTimeout:   60 * time.Second,
		MaxScale:         1,
	}
}

const maxDuration = 24 * time.Hour

// Validate returns a *ArgumentError for the first field out of range.
func (c ProviderConfig) Validate() error {
	return opts.Check(
		check(within(c.Capacity, 1, 1e9), "capacity", c.Capacity, "an integer in [1, 1000000000]"),
		check(withinAbove(c.RefillRate, 0, 1e9), "refill_rate", c.RefillRate, "a number in (0, 1000000000]"),
		check(within(c.Cooldown, 0, maxDuration), "cooldown", c.Cooldown, "a duration in [0, 24h]"),
		check(within(c.BreakerThreshold, 0, 1e6), "breaker_threshold", c.BreakerThreshold, "an integer in [0, 1000000]"),
		check(withinAbove(c.BreakerTimeout, 0, maxDuration), "breaker_timeout", c.BreakerTimeout, "a duration in (0, 24h]"),
		check(c.MaxScale == 0 || within(c.MaxScale, 1, 100), "max_scale", c.MaxScale, "0 (meaning 1) or a number in [1, 100]"),
	)
}

func (c ProviderConfig) maxScale() float64 {
	if c.MaxScale == 0 {
		return 1
	}
	return c.MaxScale
}

// args returns the config as register.lua's ARGV.
func (c ProviderConfig) args() []any {
	return []any{
		c.Capacity, formatFloat(c.RefillRate), formatFloat(c.Cooldown.Seconds()),
		c.BreakerThreshold, formatFloat(c.BreakerTimeout.Seconds()), formatFloat(c.maxScale()),
	}
}

// configFromHash parses the config hash as stored by register.lua.
func configFromHash(h map[string]string) ProviderConfig {
	return ProviderConfig{
		Capacity:         int64(parseFloat(h["capacity"])),
		RefillRate:       parseFloat(h["refill_rate"]),
		Cooldown:         seconds(parseFloat(h["cooldown_sec"])),
		BreakerThreshold: int(parseFloat(h["breaker_threshold"])),
		BreakerTimeout:   seconds(parseFloat(h["breaker_timeout_sec"])),
		MaxScale:         parseFloat(h["max_scale"]),
	}
}

func validScale(s float64) error {
	if !finite(s) || s < 0 {
		return &ArgumentError{"scale", s, "a finite number in [0, max_scale]"}
	}
	return nil
}

func finite(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }

func formatFloat(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// parseFloat reads a number Redis returned (in a script's reply, or a
// stored field) as the scripts write numbers: decimal (an optional sign,
// digits, an optional fraction and exponent) and finite. Anything else
// reads as 0: acquire guards the stored numbers it decides on with Lua's
// tonumber (lua/lib.lua), so a hand-written "0x32" or " 50" in the config
// is decided on as the number it spells and echoed as written. The Python
// client reads numbers alike (_float).
func parseFloat(s string) float64 {
	if f, ok := smallInteger(s); ok { // most of a reply: capacity, rate, scale
		return f
	}
	if !decimal(s) {
		return 0
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || !finite(f) {
		return 0
	}
	return f
}

// smallInteger reads s when it is 1 to 15 digits and nothing else: an
// integer below 2^53, which a float64 holds exactly, so the value is the
// one strconv.ParseFloat reads, at a fraction of its cost.
func smallInteger(s string) (float64, bool) {
	if len(s) == 0 || len(s) > 15 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		d := s[i] - '0'
		if d > 9 {
			return 0, false
		}
		n = n*10 + int64(d)
	}
	return float64(n), true
}

// decimal reports whether s is [+-]digits[.digits][(e|E)[+-]digits], with
// digits on at least one side of the point.
func decimal(s string) bool {
	i := 0
	digits := func() int {
		j := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		return i - j
	}
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		i++
	}
	n := digits()
	if i < len(s) && s[i] == '.' {
		i++
		n += digits()
	}
	if n == 0 {
		return false
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	return i == len(s)
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
