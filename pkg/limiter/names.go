package limiter

// CheckName returns nil if s can be a provider name or a key prefix, else a
// *ArgumentError (matching ErrInvalidArgument) naming field: 1 to 64
// characters of [A-Za-z0-9_.-], so that a name never breaks the {hash tag}
// of its keys. It is the check every Limiter method applies to the
// names it is given, for callers that check input before they connect (the
// configuration, the CLI).
func CheckName(field, s string) error { return validName(field, s) }
