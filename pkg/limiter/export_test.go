package limiter

// Scripts for tests that call them the way a client in another language would.
var (
	RegisterScriptForTest = registerScript
	SetScaleScriptForTest = setScaleScript
)
