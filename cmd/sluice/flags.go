package main

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluice-dev/sluice/internal/sink"
	"github.com/sluice-dev/sluice/pkg/config"
	"github.com/sluice-dev/sluice/pkg/limiter"
)

// Every numeric and duration flag of sluice is one of these: its value is
// read and checked against its range while the flags are parsed, before a
// command does anything, so a bad value exits 2 naming the flag, the value
// and the range. Numbers follow config.ReadNumber, the rule of the
// settings (decimal, finite, not subnormal; counts whole), and durations
// config.ReadDuration.

// span is the range a flag's value must be in: config.Range, the type of
// every setting's range.
type span[T config.Bound] = config.Range[T]

// closed is the span [lo, hi].
func closed[T config.Bound](lo, hi T) span[T] { return config.Closed(lo, hi) }

// above is the span (lo, hi].
func above[T config.Bound](lo, hi T) span[T] { return config.Above(lo, hi) }

// numberValue is a numeric flag's value (a cli.Generic): *dst, in its
// span, read by config.ReadNumber.
type numberValue[T int | int64 | float64] struct {
	dst *T
	in  span[T]
}

func (v *numberValue[T]) Set(s string) error {
	n, err := config.ReadNumber(s, v.in)
	if err != nil {
		return err
	}
	*v.dst = n
	return nil
}

func (v *numberValue[T]) String() string {
	if v.dst == nil { // urfave's help makes a zero value to compare
		return ""
	}
	return config.FormatNumber(float64(*v.dst))
}

// numberFlag declares --name, setting *dst (def when not given) to a value
// in span in; the range is added to the usage.
func numberFlag[T int | int64 | float64](name, usage string, dst *T, def T, in span[T]) *cli.GenericFlag {
	*dst = def
	return &cli.GenericFlag{Name: name, Usage: usage + ", in " + in.String(), Value: &numberValue[T]{dst, in}}
}

// durationValue is a duration flag's value: *dst, in its span, read by
// config.ReadDuration.
type durationValue struct {
	dst *time.Duration
	in  span[time.Duration]
}

func (v *durationValue) Set(s string) error {
	d, err := config.ReadDuration(s, v.in)
	if err != nil {
		return err
	}
	*v.dst = d
	return nil
}

func (v *durationValue) String() string {
	if v.dst == nil {
		return ""
	}
	return v.dst.String()
}

// durationFlag declares --name, setting *dst (def when not given) to a
// duration in span in.
func durationFlag(name, usage string, dst *time.Duration, def time.Duration, in span[time.Duration]) *cli.GenericFlag {
	*dst = def
	return &cli.GenericFlag{Name: name, Usage: usage + ", in " + in.String(), Value: &durationValue{dst, in}}
}

// flagValueError is the message of the flag package for a value its
// Generic refused.
var flagValueError = regexp.MustCompile(`^invalid value "(.*)" for flag -([A-Za-z0-9-]+): (.*)$`)

// onUsageError turns a bad command line into a usage error (exit 2); a
// refused flag value reads --name=value: rule.
func onUsageError(_ *cli.Context, err error, _ bool) error {
	if m := flagValueError.FindStringSubmatch(err.Error()); m != nil {
		value := m[1]
		if value == "" || strings.ContainsAny(value, " \t") {
			value = strconv.Quote(value)
		}
		return usagef("--%s=%s: %s", m[2], value, m[3])
	}
	return usagef("%v (see --help)", err)
}

// checkProviders refuses, before anything connects, a provider name the
// limiter would refuse (exit 2).
func checkProviders(names []string) error {
	for _, n := range names {
		if err := limiter.CheckName("provider", n); err != nil {
			return err
		}
	}
	return nil
}

// checkParentDir is for a path a command writes or watches: the directory
// it would be in must exist.
func checkParentDir(flag, path string) error {
	dir := filepath.Dir(path)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return usagef("--%s=%s: the directory %s does not exist", flag, path, dir)
	}
	return nil
}

// pathError makes an error opening a file a command line named a usage
// error (exit 2): it happens before the command starts its work; so is a
// sink spec that cannot work.
func pathError(err error) error {
	var pe *fs.PathError
	var se *sink.UsageError
	if errors.As(err, &pe) || errors.As(err, &se) {
		return usagef("%v", err)
	}
	return err
}

// checkWritable is for a file a command writes at its end: its directory
// exists and takes a new file, and it is not a directory itself.
func checkWritable(flag, path string) error {
	if err := checkParentDir(flag, path); err != nil {
		return err
	}
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return usagef("--%s=%s: is a directory, not a file", flag, path)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".sluice-check-*")
	if err != nil {
		return usagef("--%s=%s: cannot write there: %v", flag, path, errors.Unwrap(err))
	}
	f.Close()
	return os.Remove(f.Name())
}
