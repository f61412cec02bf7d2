package limiter

import (
	"strconv"

	"github.com/sluice-dev/sluice/pkg/keyspace"
)

// CheckName returns nil if s can be a provider name or a key prefix, else a
// *ArgumentError (matching ErrInvalidArgument) naming field: 1 to 64
// characters of [A-Za-z0-9_.-] (keyspace.NameRule), so that a name never
// breaks the {hash tag} of its keys. It is the check every Limiter method
// applies to the names it is given, for callers that check input before
// they connect (the configuration, the CLI).
func CheckName(field, s string) error { return validName(field, s) }

// validName checks a provider name or key prefix by keyspace.ValidName.
func validName(field, s string) error {
	if !keyspace.ValidName(s) {
		return &ArgumentError{field, strconv.Quote(s), keyspace.NameRule}
	}
	return nil
}
