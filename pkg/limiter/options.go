package limiter

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluice-dev/sluice/pkg/internal/opts"
)

// Options configure a Limiter. The zero value is ready to use: a zero
// field takes the default its comment gives (nil Registerer: no metrics).
type Options struct {
	// Prefix starts every key and channel; default "sluice".
	Prefix string
	// ReplicaID names this replica in the replica registry; default
	// <hostname>-<pid>-<random>.
	ReplicaID string
	// Source is recorded in the scale hash as who changed the scale, the
	// shadow scale or the pressure level through this Limiter (e.g.
	// "operator", "feedback:pod-3"); default "api".
	Source string
	// Outage is what to do for a provider Redis cannot serve; default FailClosed.
	Outage OutageMode
	// Registerer receives the metrics; nil registers none.
	Registerer prometheus.Registerer
	// Logger receives warnings (outages, re-registration); default slog.Default().
	Logger *slog.Logger
	// PausedRecheck is how often a waiter paused at scale 0 re-checks Redis
	// in case a wake-up notification was lost; default 5s.
	PausedRecheck time.Duration
	// WakeJitter is the upper bound of the random delay added to every wait,
	// so waiters do not all retry at the same instant; default 5ms.
	WakeJitter time.Duration
	// Heartbeat is how often this replica renews its entry in the replica
	// registry (the entry lives 3 heartbeats); longer for a provider whose
	// replicas would exceed a tenth of CallBudget; default 2s.
	Heartbeat time.Duration
	// RedisRetry is how often Redis is probed, in the background, for a
	// provider whose call found Redis unable to serve it (EXISTS on the
	// provider's keys, so that a cluster routes the probe to the node of
	// the provider's slot); until a probe succeeds, that provider's calls
	// go straight to the outage mode without touching Redis. Other
	// providers are not affected; default 1s.
	RedisRetry time.Duration
	// CallTimeout bounds each call to Redis (every script, the provider
	// list, the probes): a Redis that gives no answer within it, while the
	// caller's context is still live, counts as unreachable for that
	// provider (the outage mode decides, and RedisRetry probes), so a
	// stalled Redis cannot hold a caller; default 500ms. A caller's
	// shorter deadline ends its call first, with the deadline's error; a
	// probe in the background then gives Redis the whole CallTimeout, so
	// callers whose deadlines are all shorter still see the outage mode
	// take over. On a cluster, a call that meets its slot in motion
	// (TRYAGAIN, ASK, MOVED or CLUSTERDOWN answers: a migration or a
	// failover) is tried again after 5–50 ms (jittered) within the same
	// budget; a slot that does not settle within it counts as unreachable
	// too. Keep it above three round trips to Redis: a call on a new
	// connection waits for the connection's handshake (HELLO, CLIENT
	// SETINFO) before the script. It holds with any client: one with
	// ContextTimeoutEnabled (Client, ClusterClient, Ring) is called
	// straight through, its socket deadlines bound the round trip; with
	// any other the call is made in a goroutine of its own and left to
	// finish in the background when its time is up.
	CallTimeout time.Duration
	// MaxBatch is the most requests of one provider that one script call
	// carries: concurrent TryAcquire and Acquire calls in this process are
	// coalesced (one call in flight per provider; those that arrive
	// meanwhile go together in the next), which takes the same tokens in
	// far fewer round trips. 1 sends every request on its own; default
	// 128; at most 1000.
	MaxBatch int
	// TokenLease lets this process take tokens for a provider ahead of its
	// callers, as one more request at the end of the coalesced calls it
	// makes anyway, and hand them out without a round trip
	// (Decision.Leased) until TokenLease after the latest call that added
	// to the lease; what is left then goes back to the shared bucket
	// (refund.lua). It never over-admits: the tokens leave the shared bucket
	// first. A lease is taken only from plenty: at most half of what the
	// bucket held after the process's own requests at its last call, so
	// while tokens are scarce every process asks only for its callers; and
	// at most what refills during one TokenLease at the scale in force (so
	// a provider slower than 1 / TokenLease tokens a second, 200/s at the
	// default, leases nothing), so a window of any length T admits at most
	// capacity + rate × scale × (T + TokenLease × leasing processes). The
	// price is the design's promise that a change reaches every replica at
	// its next acquisition: a scale change, a pause, a cooldown or an open
	// breaker set by another process reaches this one within TokenLease
	// (a scale change usually sooner: its notification ends the lease); one
	// made through this Limiter (SetBudgetScale, RecordFailure,
	// TriggerCooldown) ends the lease before it returns. A provider with
	// pacing rules never leases. With many replicas of a provider
	// CallBudget stretches the lease (and so this bound) to 2 × replicas ÷
	// CallBudget when that is longer. Default DefaultTokenLease; at most
	// 1s; NoTokenLease, or MaxBatch 1, turns it off.
	TokenLease time.Duration
	// NoTokenLease turns the token lease off: every grant is a decision of
	// Redis at its time, and a change made elsewhere applies at this
	// process's next acquisition.
	NoTokenLease bool
	// RefusalHold bounds how long this process answers its other
	// TryAcquire callers of a provider locally after Redis refused one of
	// them (rate limited, paused, cooling down, breaker open), instead of a
	// round trip each: a local refusal (Decision.Held) until the refusal's
	// RetryAfter (for a rate limit: until the tokens that caller asks for
	// can have refilled, by the refusal's count and rate) plus a random
	// delay of up to min(WakeJitter, RetryAfter), so processes do not all
	// come back at once; never longer than RefusalHold. A scale change's
	// notification ends the hold at once. A held refusal admits nothing, so
	// it never over-admits; what it may cost is a grant refused up to
	// RefusalHold after a change elsewhere made room (a refund, a new
	// config). Acquire never holds (its waiters take turns instead), nor
	// does a provider with pacing rules. With many replicas of a provider
	// CallBudget stretches the limit to replicas ÷ CallBudget when that is
	// longer, and holds a rate limit at least that long. Default 20ms; at
	// most 1s; NoRefusalHold turns it off.
	RefusalHold time.Duration
	// NoRefusalHold turns the held refusals off: every TryAcquire asks
	// Redis.
	NoRefusalHold bool
	// CallBudget is the Redis calls a second that the token leases and the
	// held refusals of all the replicas of one provider should stay within,
	// whatever their number: with N live replicas (the count each reads at
	// its heartbeat), a lease lasts max(TokenLease, 2 × N ÷ CallBudget)
	// (a busy replica renews it and gives back what is left about once a
	// period), a refusal is held up to max(RefusalHold, N ÷ CallBudget)
	// and a rate limit at least N ÷ CallBudget (one call per replica per
	// hold; the Acquire waiter whose turn it is polls a rate limit no
	// sooner either); neither longer than 1s, so past CallBudget ÷ 2 replicas the
	// budget is exceeded. The stretched lease is then the bound on how late
	// a change made elsewhere applies (a scale change's notification still
	// ends leases and holds at once). Heartbeats take a tenth of it: the
	// heartbeat period stretches to max(Heartbeat, 10 × N ÷ CallBudget),
	// at most 1 min (the registry entry lives three periods, so the count
	// sees replicas come and go that much later). Grants under scarcity
	// (one call per process's batch), pacing rules, lanes and the calls a
	// scale change's notification causes (about two per leasing replica)
	// are outside it. Default
	// DefaultCallBudget; in (0, 1e7]; NoCallBudget turns it off (TokenLease
	// and RefusalHold then hold whatever the replicas).
	CallBudget float64
	// NoCallBudget turns the call budget off.
	NoCallBudget bool
	// Now is the clock of the local fallback bucket; default time.Now.
	// Everything shared uses Redis time instead.
	Now func() time.Time
}

// withDefaults returns o with every zero field set to its default, or a
// *ArgumentError for the first field out of range.
func (o Options) withDefaults() (Options, error) {
	setDefault(&o.Prefix, defaultPrefix)
	setDefault(&o.Source, "api")
	setDefault(&o.Logger, slog.Default())
	if o.TokenLease > 0 && o.MaxBatch == 1 && !o.NoTokenLease {
		return o, &ArgumentError{"token_lease", o.TokenLease, "unset, or no_token_lease, when max_batch is 1 (a lease rides on coalesced calls)"}
	}
	setDefault(&o.MaxBatch, 128)
	if o.ReplicaID == "" {
		o.ReplicaID = defaultReplicaID()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	var oe *opts.Error
	if errors.As(opts.Check(
		opts.Positive("paused_recheck", &o.PausedRecheck, 5*time.Second),
		opts.Positive("wake_jitter", &o.WakeJitter, 5*time.Millisecond),
		opts.Positive("heartbeat", &o.Heartbeat, 2*time.Second),
		opts.Positive("redis_retry", &o.RedisRetry, time.Second),
		opts.Positive("call_timeout", &o.CallTimeout, 500*time.Millisecond),
		opts.Positive("token_lease", &o.TokenLease, DefaultTokenLease),
		opts.Positive("refusal_hold", &o.RefusalHold, DefaultRefusalHold),
		opts.Positive("call_budget", &o.CallBudget, DefaultCallBudget),
	), &oe) {
		return o, &ArgumentError{oe.Field, oe.Value, oe.Rule}
	}
	return o, o.validate()
}

// validate returns a *ArgumentError for the first field of o out of its
// range, once the defaults are set.
func (o Options) validate() error {
	return opts.Check(
		check(within(o.MaxBatch, 1, maxRequests), "max_batch", o.MaxBatch, "an integer in [1, 1000]"),
		check(withinAbove(o.TokenLease, 0, time.Second), "token_lease", o.TokenLease, "a duration in (0, 1s]"),
		check(withinAbove(o.RefusalHold, 0, time.Second), "refusal_hold", o.RefusalHold, "a duration in (0, 1s]"),
		check(withinAbove(o.CallBudget, 0, MaxCallBudget), "call_budget", o.CallBudget, "calls a second in (0, 1e7]"),
		validName("prefix", o.Prefix),
		check(len(o.ReplicaID) <= 128 && !strings.ContainsAny(o.ReplicaID, " \t\r\n"),
			"replica_id", strconv.Quote(o.ReplicaID), "at most 128 characters without spaces"),
		check(len(o.Source) <= 128 && !strings.ContainsFunc(o.Source, unicode.IsControl),
			"source", strconv.Quote(o.Source), "at most 128 characters without control characters"),
		check(within(o.Outage, FailClosed, LocalFallback), "outage_mode", o.Outage, "one of "+strings.Join(outageNames, ", ")),
	)
}

// Defaults of the options that answer callers without a round trip.
const (
	// DefaultTokenLease is Options.TokenLease's default: a change made
	// elsewhere reaches a leasing process at most 5 ms late, 2% of the
	// feedback loop's 250 ms period.
	DefaultTokenLease = 5 * time.Millisecond
	// DefaultRefusalHold is Options.RefusalHold's default.
	DefaultRefusalHold = 20 * time.Millisecond
	// DefaultCallBudget is Options.CallBudget's default, in calls a
	// second per provider: the budget at which 1,000 live replicas lease
	// for 250 ms (2 × 1,000 ÷ 8,000 s), the feedback loop's own period, so
	// that up to 1,000 replicas a change made elsewhere applies within one
	// period of the loop; about 0.3 of a Redis core at ~37 µs a call
	// (docs/capacity.md). It stretches nothing below 20 live replicas (the
	// lease) and 160 (the refusal hold's limit).
	DefaultCallBudget = 8000
	// MaxCallBudget is the largest Options.CallBudget.
	MaxCallBudget = 1e7
)

// leasing reports whether o lets a process lease tokens.
func (o Options) leasing() bool { return !o.NoTokenLease && o.MaxBatch > 1 }

// setDefault sets *v to def when it is the zero value.
func setDefault[T comparable](v *T, def T) {
	var zero T
	if *v == zero {
		*v = def
	}
}

// maxRequests is the most requests acquire.lua takes in one call.
const maxRequests = 1000

func defaultReplicaID() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "replica"
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b))
}
