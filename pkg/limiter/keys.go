package limiter

// defaultPrefix starts every key and channel name unless Options.Prefix says otherwise.
const defaultPrefix = "sluice"

// keys are the Redis names of one provider. Every key carries the hash tag
// {provider}, so one script touches one cluster slot.
type keys struct {
	config, bucket, scale, breaker, cooldown, replicas string
	notify                                             string // pub/sub channel: scale rose, breaker closed, cooldown cleared
}

func providerKeys(prefix, provider string) keys {
	tag := prefix + ":{" + provider + "}:"
	return keys{
		config:   tag + "config",
		bucket:   tag + "bucket",
		scale:    tag + "scale",
		breaker:  tag + "breaker",
		cooldown: tag + "cooldown",
		replicas: prefix + ":replicas:{" + provider + "}",
		notify:   tag + "notify",
	}
}

// providersKey is the set of registered provider names (for listing; not
// touched by scripts, so it may live in another cluster slot).
func providersKey(prefix string) string { return prefix + ":providers" }
