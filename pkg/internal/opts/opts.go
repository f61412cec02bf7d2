// Package opts applies the one rule every sluice Options struct follows: a
// zero field takes its documented default, and a negative one is an error
// naming the field (nothing is switched off by a negative number).
package opts

import "fmt"

// Positive sets *v to def when it is zero. It returns an error naming field
// (written with its package, e.g. "store: linger") when *v is negative.
func Positive[T ~int | ~int64 | ~float64](field string, v *T, def T) error {
	switch {
	case *v == 0:
		*v = def
	case *v < 0:
		return fmt.Errorf("%s=%v: must be positive (0 takes the default, %v)", field, *v, def)
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
