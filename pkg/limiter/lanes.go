package limiter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Lane is one of a provider's lanes: a part of its budget with a priority
// (docs/lanes.md). Every decision hands the bucket's refill to the lanes:
// guarantees first, then by Priority, highest first, by Weight among
// lanes of equal priority, each lane up to its Burst; a lane's request
// takes from its own bucket, then from lower priorities', never a higher
// one's. The lanes' buckets add up to at most the provider's capacity, so
// the provider's bound is the bucket's, plus the floors' rate.
type Lane struct {
	// Name is 1 to 64 characters of [A-Za-z0-9_.-], unique among the lanes.
	Name string
	// Priority is an integer in [0, 1000]; higher is served first.
	Priority int
	// Weight, in (0, 1e6], shares the refill among lanes of equal
	// priority; 0 means 1.
	Weight float64
	// Burst is the lane's bucket, an integer in [0, capacity]: 0 takes a
	// weight's share of what the lanes with a burst leave. The bursts
	// together are at most the capacity, below it if a lane has none.
	Burst int64
	// Guarantee is tokens per second, in [0, refill rate] together, that
	// the lane gets before any priority, out of the scaled rate.
	Guarantee float64
	// Floor is the fraction of the base rate, in [0, 1], that the lane
	// gets whatever the scale, 0 (pause) included: for requests that must
	// go on while the store is behind. It adds Floor × rate to the
	// provider's bound.
	Floor float64
}

type laneJSON struct {
	Name      string  `json:"name"`
	Priority  int     `json:"priority"`
	Weight    float64 `json:"weight"`
	Burst     int64   `json:"burst"`
	Guarantee float64 `json:"guarantee"`
	Floor     float64 `json:"floor"`
}

const maxLanes = 16

// ValidateLanes checks a lane set as SetLanes would, without Redis (which
// also checks the bursts against the capacity and the guarantees against
// the refill rate): an *ArgumentError naming the field
// (lanes.<name>.weight) and its range.
func ValidateLanes(lanes []Lane) error {
	if len(lanes) > maxLanes {
		return &ArgumentError{"lanes", fmt.Sprintf("%d lanes", len(lanes)), "at most 16 lanes"}
	}
	seen := map[string]bool{}
	for i, l := range lanes {
		if validName("", l.Name) != nil {
			return &ArgumentError{fmt.Sprintf("lanes[%d].name", i+1), l.Name, "1 to 64 characters of [A-Za-z0-9_.-]"}
		}
		if seen[l.Name] {
			return &ArgumentError{"lanes." + l.Name + ".name", l.Name, "unique among the lanes"}
		}
		seen[l.Name] = true
		f := "lanes." + l.Name + "."
		switch {
		case !within(l.Priority, 0, 1000):
			return &ArgumentError{f + "priority", l.Priority, "an integer in [0, 1000]"}
		case l.Weight != 0 && !withinAbove(l.Weight, 0, 1e6):
			return &ArgumentError{f + "weight", l.Weight, "a number in (0, 1000000]"}
		case !within(l.Burst, 0, 1e9):
			return &ArgumentError{f + "burst", l.Burst, "an integer in [0, capacity]"}
		case !within(l.Guarantee, 0, 1e9):
			return &ArgumentError{f + "guarantee", l.Guarantee, "a number in [0, refill rate]"}
		case !within(l.Floor, 0, 1):
			return &ArgumentError{f + "floor", l.Floor, "a number in [0, 1]"}
		}
	}
	return nil
}

// SetLanes replaces provider's lanes with lanes, checked whole: a set with
// one bad lane changes nothing. An empty set removes them. Every replica
// decides by the new set at its next acquisition; the lanes' tokens stay,
// and a removed lane's go back to the others. changed is false when the
// set in force was the same.
func (c *Limiter) SetLanes(ctx context.Context, provider string, lanes []Lane) (changed bool, err error) {
	st, err := c.state(provider)
	if err != nil {
		return false, err
	}
	if err := ValidateLanes(lanes); err != nil {
		return false, err
	}
	text, err := lanesText(lanes)
	if err != nil {
		return false, err
	}
	res, err := c.run(ctx, st, setLanesScript, []string{st.keys.config, st.keys.bucket}, text)
	if err != nil {
		return false, err
	}
	st.reg.setLanes(lanes)
	return res == "updated", nil
}

// lanesText is lanes as set_lanes.lua reads them.
func lanesText(lanes []Lane) (string, error) {
	js := make([]laneJSON, len(lanes))
	for i, l := range lanes {
		w := l.Weight
		if w == 0 {
			w = 1
		}
		js[i] = laneJSON{l.Name, l.Priority, w, l.Burst, l.Guarantee, l.Floor}
	}
	text, err := json.Marshal(js)
	return string(text), err
}

// Lanes returns provider's lanes as stored: sorted by priority, highest
// first (a request with no lane is in the last); nil when it has none.
func (c *Limiter) Lanes(ctx context.Context, provider string) ([]Lane, error) {
	st, err := c.state(provider)
	if err != nil {
		return nil, err
	}
	res, err := c.command(ctx, st, func(ctx context.Context) (any, error) {
		return c.rdb.HGet(ctx, st.keys.config, "lanes").Result()
	})
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return parseLanes(st.keys.config, res.(string))
}

func parseLanes(key, text string) ([]Lane, error) {
	var js []laneJSON
	if err := json.Unmarshal([]byte(text), &js); err != nil {
		return nil, fmt.Errorf("%w: %s lanes=%s: %v", ErrCorruptState, key, text, err)
	}
	lanes := make([]Lane, len(js))
	for i, j := range js {
		lanes[i] = Lane(j)
	}
	return lanes, nil
}

// laneTurns holds a turn per named lane of a provider, made on first use:
// the waiters of one lane take turns among themselves (acquire.go), so a
// live waiter never waits behind a backfill waiter's turn.
type laneTurns struct {
	mu sync.Mutex
	m  map[string]chan struct{}
}

// turnOf is the turn of lane's waiters: the provider's own for "".
func (st *providerState) turnOf(lane string) chan struct{} {
	if lane == "" {
		return st.turn
	}
	t := &st.lanes
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[string]chan struct{}{}
	}
	ch := t.m[lane]
	if ch == nil {
		ch = make(chan struct{}, 1)
		t.m[lane] = ch
	}
	return ch
}

const laneForm = "<name>[:priority=<int>][:weight=<number>][:burst=<int>][:guarantee=<tokens/s>][:floor=<fraction>]"

// ParseLanes reads a lane set as the configuration writes it: lanes
// separated by commas, each its name and its fields, e.g.
// "live:priority=1:burst=16,backfill". "" or "none" is no lanes. The set
// is checked as ValidateLanes does.
func ParseLanes(s string) ([]Lane, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "none" {
		return nil, nil
	}
	var lanes []Lane
	for i, part := range strings.Split(s, ",") {
		l, err := parseLane(strings.TrimSpace(part))
		if err != nil {
			return nil, fmt.Errorf("lane %d (%q): %w", i+1, part, err)
		}
		lanes = append(lanes, l)
	}
	return lanes, ValidateLanes(lanes)
}

func parseLane(s string) (Lane, error) {
	fields := strings.Split(s, ":")
	l := Lane{Name: fields[0]}
	for _, f := range fields[1:] {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return Lane{}, &ArgumentError{"lanes", s, laneForm}
		}
		field := "lanes." + l.Name + "." + k
		var err error
		switch k {
		case "priority":
			l.Priority, err = strconv.Atoi(v)
		case "weight":
			l.Weight, err = strconv.ParseFloat(v, 64)
		case "burst":
			l.Burst, err = strconv.ParseInt(v, 10, 64)
		case "guarantee":
			l.Guarantee, err = strconv.ParseFloat(v, 64)
		case "floor":
			l.Floor, err = strconv.ParseFloat(v, 64)
		default:
			return Lane{}, &ArgumentError{field, v, "absent: a lane has priority, weight, burst, guarantee, floor"}
		}
		if err != nil {
			return Lane{}, &ArgumentError{field, v, "a number"}
		}
	}
	return l, nil
}

// FormatLanes writes lanes as ParseLanes reads them ("none" for none),
// with the fields that differ from their defaults.
func FormatLanes(lanes []Lane) string {
	if len(lanes) == 0 {
		return "none"
	}
	parts := make([]string, len(lanes))
	for i, l := range lanes {
		parts[i] = l.String()
	}
	return strings.Join(parts, ",")
}

// String writes l as ParseLanes reads it, e.g. "live:priority=1:burst=16".
func (l Lane) String() string {
	s := l.Name
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	if l.Priority != 0 {
		s += ":priority=" + strconv.Itoa(l.Priority)
	}
	if l.Weight != 0 && l.Weight != 1 {
		s += ":weight=" + f(l.Weight)
	}
	if l.Burst != 0 {
		s += ":burst=" + strconv.FormatInt(l.Burst, 10)
	}
	if l.Guarantee != 0 {
		s += ":guarantee=" + f(l.Guarantee)
	}
	if l.Floor != 0 {
		s += ":floor=" + f(l.Floor)
	}
	return s
}
