// Package sinktest holds what the tests of the sinks and of the sluice
// coordinator command share: reading a sink's output back, and a real full
// filesystem.
package sinktest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// Output is what a sink's output files hold.
type Output struct {
	Lines    int                 // complete lines that parse as JSON objects with an id
	Bad      []string            // lines that do not (a torn last line included)
	IDs      map[string]int      // how often each id was written
	Distinct int                 // len(ids)
	Dups     int                 // lines - distinct
	Files    map[string][]string // the ids of each file, in order
}

// CheckOutput reads the files a line sink wrote: every line must be a JSON
// object with an "id", ended by a newline.
func CheckOutput(t *testing.T, files ...string) Output {
	t.Helper()
	c := Output{IDs: map[string]int{}, Files: map[string][]string{}}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for len(b) > 0 {
			line, rest, complete := bytes.Cut(b, []byte{'\n'})
			b = rest
			var item struct {
				ID string `json:"id"`
			}
			if !complete || json.Unmarshal(line, &item) != nil || item.ID == "" {
				c.Bad = append(c.Bad, fmt.Sprintf("%s: %q (newline: %v)", filepath.Base(name), line, complete))
				continue
			}
			c.Lines++
			c.IDs[item.ID]++
			c.Files[name] = append(c.Files[name], item.ID)
		}
	}
	c.Distinct = len(c.IDs)
	c.Dups = c.Lines - c.Distinct
	return c
}

// WriteFile writes data to name or fails the test.
func WriteFile(t *testing.T, name, data string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// MountTmpfs mounts a tmpfs of size at a new directory for the test, or
// skips the test where mounting is not permitted.
func MountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v: %s): the real full-filesystem case needs root and mount permission; "+
			"TestFileSinkFaults covers the same path with injected faults", err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// FillUp writes a file into dir until the filesystem is full, and returns
// its name (remove it to free the space).
func FillUp(t *testing.T, dir string) string {
	t.Helper()
	name := filepath.Join(dir, "filler")
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return name
		}
	}
}
