package limiter

import (
	"github.com/redis/go-redis/v9"

	"github.com/sluice-dev/sluice/lua"
)

// The scripts are built once; Run sends EVALSHA and falls back to EVAL on
// NOSCRIPT, so a SCRIPT FLUSH or a Redis restart costs one round trip more.
var (
	registerScript  = redis.NewScript(lua.Source("register"))
	acquireScript   = redis.NewScript(lua.Source("acquire"))
	setScaleScript  = redis.NewScript(lua.Source("set_scale"))
	annotateScript  = redis.NewScript(lua.Source("annotate"))
	breakerScript   = redis.NewScript(lua.Source("breaker"))
	cooldownScript  = redis.NewScript(lua.Source("cooldown"))
	heartbeatScript = redis.NewScript(lua.Source("heartbeat"))
	statusScript    = redis.NewScript(lua.Source("status"))
	refundScript    = redis.NewScript(lua.Source("refund"))
	setRulesScript  = redis.NewScript(lua.Source("set_rules"))
	permitScript    = redis.NewScript(lua.Source("permit"))
	setLanesScript  = redis.NewScript(lua.Source("set_lanes"))
)
