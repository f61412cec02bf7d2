// Package opts applies the one rule every sluice Options struct follows: a
// zero field takes its documented default, and a negative one is an error
// naming the field (nothing is switched off by a negative number).
package opts

import "fmt"

// Error is a field out of range. Callers wrap it with their package's name
// (or turn it into their own argument error).
type Error struct {
	Field string // e.g. "linger"
	Value any    // the value refused
	Rule  string // e.g. "positive (0 takes the default, 50ms)"
}

func (e *Error) Error() string { return fmt.Sprintf("%s=%v: must be %s", e.Field, e.Value, e.Rule) }

// Positive sets *v to def when it is zero, and returns an *Error naming
// field when *v is negative.
func Positive[T ~int | ~int64 | ~float64](field string, v *T, def T) error {
	switch {
	case *v == 0:
		*v = def
	case *v < 0:
		return &Error{field, *v, fmt.Sprintf("positive (0 takes the default, %v)", def)}
	}
	return nil
}

// Check returns the first non-nil error, for a run of Positive calls.
func Check(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
