package limiter

import "github.com/sluice-dev/sluice/pkg/keyspace"

// defaultPrefix starts every key and channel name unless Options.Prefix says otherwise.
const defaultPrefix = keyspace.DefaultPrefix

// keys are the Redis names of one provider, as keyspace builds them. Every
// key carries the hash tag {provider}, so one script touches one cluster
// slot.
type keys struct {
	config, bucket, scale, breaker, cooldown, replicas string
	notify                                             string // pub/sub channel: scale rose, breaker closed, cooldown cleared
	released                                           string // pub/sub channel: a permit was released
	rules                                              keyspace.Provider
	// acquire is acquire.lua's KEYS (config, bucket, scale, breaker,
	// cooldown), made once: full (len = cap), so an append copies it.
	acquire []string
	// acquireCmd is the head of acquire.lua's EVALSHA command (EVALSHA,
	// its hash, the count of keys, acquire), boxed once (acquireArgv).
	acquireCmd []any
}

func providerKeys(prefix, provider string) keys {
	k := keyspace.Prefix(prefix).Provider(provider)
	acquire := []string{k.Config, k.Bucket, k.Scale, k.Breaker, k.Cooldown}[:5:5]
	head := []any{"evalsha", acquireScript.Hash(), len(acquire)}
	for _, key := range acquire {
		head = append(head, key)
	}
	return keys{
		acquire:    acquire,
		acquireCmd: head[:len(head):len(head)],
		config:     k.Config,
		bucket:     k.Bucket,
		scale:      k.Scale,
		breaker:    k.Breaker,
		cooldown:   k.Cooldown,
		replicas:   k.Replicas,
		notify:     k.Notify,
		released:   k.Released,
		rules:      k,
	}
}

// providersKey is the set of registered provider names (for listing; not
// touched by scripts, so it may live in another cluster slot).
func providersKey(prefix string) string { return keyspace.Prefix(prefix).Providers() }
