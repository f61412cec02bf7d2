//go:build unix

package sink

import (
	"os"
	"syscall"
)

// fileID tells one file from another across restarts: its device and inode
// (their types differ between systems, hence the conversions).
type fileID struct{ dev, ino uint64 }

func identify(fi os.FileInfo) fileID {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return fileID{uint64(st.Dev), uint64(st.Ino)}
	}
	return fileID{}
}
