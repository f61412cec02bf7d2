// Package keyspace owns the names sluice gives its Redis keys and pub/sub
// channels, the rule every name in them follows, and the default prefix.
// Every other package asks it, so that the key schema of docs/lua.md — the
// contract the Lua scripts and the Python client share — is written once.
//
// A key is <prefix>:... where the prefix (default "sluice") is a Prefix;
// every key of one provider carries the hash tag {<provider>}, a write
// stream's keys the tag {<stream>}, a coordinator's pressure hash the tag
// {<coordinator>}, so a script that names several keys of one of them
// touches one Redis Cluster slot:
//
//	<prefix>:{<provider>}:config, :bucket, :scale, :breaker, :cooldown
//	<prefix>:{<provider>}:notify          channel: scale, breaker, cooldown changed
//	<prefix>:{<provider>}:rule:<r>        a window rule's counted units
//	<prefix>:{<provider>}:rule:<r>:<key>  a keyed or spacing rule's state for one request key
//	<prefix>:{<provider>}:permits:<r>     a concurrency rule's open permits
//	<prefix>:{<provider>}:released        channel: a permit was released
//	<prefix>:replicas:{<provider>}        live replicas of the provider
//	<prefix>:providers                    registered provider names
//	<prefix>:pressure:{<coordinator>}     a write coordinator's last report
//	<prefix>:pressure:hard, :soft         coordinators now at that level
//	<prefix>:pressure:coordinators        every coordinator that reported
//	<prefix>:feedback                     channel: every pressure event
//	<prefix>:controller:lease             the controller that writes the scales
//	<prefix>:stream:{<stream>}            the durable write path to a store
//	<prefix>:stream:{<stream>}:refused    entries its consumers refused
//
// The builders do not check the names they are given: a name is checked
// once, where it enters (ValidName), so that it never breaks a hash tag.
// The package imports only the standard library, so that every other
// package of sluice may import it.
package keyspace

import (
	"regexp"
	"strconv"
	"strings"
)

// DefaultPrefix starts every key and channel name when no prefix is
// configured; a zero Prefix means it.
const DefaultPrefix = "sluice"

// NameChars are the characters of a name: a provider, a key prefix, a
// write coordinator's or a controller's id, a write stream, a consumer or
// its group.
const NameChars = "[A-Za-z0-9_.-]"

// MaxName is the length of the longest name.
const MaxName = 64

// NameRule is the rule ValidName checks, as error messages state it.
const NameRule = "1 to 64 characters of " + NameChars

var nameRE = regexp.MustCompile("^" + NameChars + "{1," + strconv.Itoa(MaxName) + "}$")

// ValidName reports whether s follows NameRule: 1 to MaxName characters of
// NameChars, none of which can end a hash tag or a key's part.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// Prefix starts every key and channel name; the zero Prefix means
// DefaultPrefix. A prefix other than the default is a name (ValidName).
type Prefix string

// String is the prefix as the keys start with it: DefaultPrefix for the
// zero Prefix.
func (p Prefix) String() string {
	if p == "" {
		return DefaultPrefix
	}
	return string(p)
}

// Provider holds the keys and the channel of one provider. Every one
// carries the hash tag {<provider>}.
type Provider struct {
	Config   string // hash: capacity, refill_rate, cooldown and breaker settings, max_scale
	Bucket   string // hash: tokens, ts
	Scale    string // hash: scale, its source and seq, level, shadow scale
	Breaker  string // hash: state, failures, opened_at, probe_until
	Cooldown string // string with a TTL: the active cooldown, JSON
	Replicas string // sorted set: live replica ids scored by expiry
	Notify   string // pub/sub channel: scale changed, breaker closed, cooldown cleared
	Released string // pub/sub channel: a concurrency rule's permit was released
	Rules    string // hash: the state of the window and concurrency rules, a field per rule (and per open permit)
}

// RuleKey is the state of the provider's keyed or spacing rule rule for
// one request key (a string with a TTL). key is any text without braces:
// it follows the hash tag, so it never changes the slot.
func (k Provider) RuleKey(rule, key string) string { return k.tag() + "rule:" + rule + ":" + key }

// tag is "<prefix>:{<provider>}:", with which every key of the provider
// but its replicas starts.
func (k Provider) tag() string { return strings.TrimSuffix(k.Config, "config") }

// Provider returns the keys and the channel of provider.
func (p Prefix) Provider(provider string) Provider {
	tag := p.String() + ":{" + provider + "}:"
	return Provider{
		Config:   tag + "config",
		Bucket:   tag + "bucket",
		Scale:    tag + "scale",
		Breaker:  tag + "breaker",
		Cooldown: tag + "cooldown",
		Replicas: p.String() + ":replicas:{" + provider + "}",
		Notify:   tag + "notify",
		Released: tag + "released",
		Rules:    tag + "rules",
	}
}

// Providers is the set of registered provider names. No script touches it,
// so it may live in another cluster slot than the providers' keys.
func (p Prefix) Providers() string { return p.String() + ":providers" }

// Pressure is the hash of write coordinator coordinator's last report.
func (p Prefix) Pressure(coordinator string) string { return p.pressure("{" + coordinator + "}") }

// PressureLevel is the set of the coordinators now at level ("soft" or
// "hard"), which KEDA's redis trigger counts.
func (p Prefix) PressureLevel(level string) string { return p.pressure(level) }

// PressureCoordinators is the set of every coordinator that reported: the
// index of the pressure hashes.
func (p Prefix) PressureCoordinators() string { return p.pressure("coordinators") }

func (p Prefix) pressure(name string) string { return p.String() + ":pressure:" + name }

// Feedback is the pub/sub channel of every pressure event.
func (p Prefix) Feedback() string { return p.String() + ":feedback" }

// ControllerLease is the string, with a TTL, that names the controller
// that writes the scales now.
func (p Prefix) ControllerLease() string { return p.String() + ":controller:lease" }

// Stream is the write stream to store stream: the durable write path.
func (p Prefix) Stream(stream string) string { return p.String() + ":stream:{" + stream + "}" }

// StreamRefused is the stream that the entries the consumers of stream
// refused are moved to, whole. It carries stream's hash tag.
func (p Prefix) StreamRefused(stream string) string { return p.Stream(stream) + ":refused" }
