package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"syscall"

	"github.com/halb-lb/halb/internal/trust"
)

// MaxFileSize bounds a configuration file. A real one is kilobytes; the
// largest halb is tested with (100 000 backends) is 6.9 MB. Past the
// limit a file is refused before it is decoded, so a runaway file cannot
// take the daemon's memory.
const MaxFileSize = 16 << 20

// ReadFile reads a configuration file the way a daemon running as root
// must: the file and every directory and symlink on its path are owned by
// root (or the user halb runs as) and writable by no one else, since
// whoever can write the file can add a track script that halb runs as
// root (internal/trust); it is a regular file (a FIFO would block the
// read, /dev/zero never ends); and it is at most MaxFileSize bytes. Every
// reader of a config file goes through it.
//
// A file that breaks one of those rules is an *Error naming the fix; one
// that cannot be opened at all is the *fs.PathError.
func ReadFile(path string) ([]byte, error) {
	data, _, err := readFile(path)
	return data, err
}

func readFile(path string) ([]byte, fs.FileInfo, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read config: %w", err)
	}
	f, err := trust.Open(abs, trust.ForRead)
	if err != nil {
		var nr *trust.NotRegularError
		if errors.As(err, &nr) {
			return nil, nil, fileError(path, "is %s, not a regular file: point -c (or HALB_CONFIG) at the YAML file itself", nr.Kind)
		}
		var te *trust.Error
		if errors.As(err, &te) {
			return nil, nil, fileError(path, "cannot be trusted: %v", te)
		}
		return nil, nil, fmt.Errorf("read config: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("read config: %w", err)
	}
	if fi.Size() > MaxFileSize {
		return nil, nil, tooBig(path, fi.Size())
	}
	// The size from fstat can lie (a file in /proc says 0) or change
	// while the file is read: the limit holds for what is read. The
	// buffer starts at the size fstat gives, room to see the end
	// included, where io.ReadAll's doubling would leave as much again
	// behind it.
	buf := bytes.NewBuffer(make([]byte, 0, fi.Size()+bytes.MinRead))
	if _, err := buf.ReadFrom(io.LimitReader(f, MaxFileSize+1)); err != nil {
		return nil, nil, fmt.Errorf("read config: %w", err)
	}
	data := buf.Bytes()
	if len(data) > MaxFileSize {
		return nil, nil, tooBig(path, -1)
	}
	return data, fi, nil
}

func tooBig(path string, size int64) *Error {
	if size < 0 {
		return fileError(path, "is larger than the %d MiB (%d bytes) a config file may be", MaxFileSize>>20, MaxFileSize)
	}
	return fileError(path, "is %d bytes, over the %d MiB (%d bytes) a config file may be", size, MaxFileSize>>20, MaxFileSize)
}

func fileError(path, format string, args ...any) *Error {
	return &Error{File: path, Problems: []Problem{{Msg: "the file " + fmt.Sprintf(format, args...)}}}
}

// secretKey matches the keys whose values are secrets: auth_pass today,
// and any key named like a password, secret or token that comes later.
var secretKey = regexp.MustCompile(`(^|_)(pass|password|passwd|secret|token)($|_)`)

// fileWarnings: what a person must be told about the file that does not
// stop halb using it. A file that others can read and that holds a
// password gives the password away (a VRRPv2 auth_pass also travels in
// clear on the wire, but only on the VRRP link).
func fileWarnings(path string, fi fs.FileInfo, c *Config) []Problem {
	secrets := secretPaths(reflect.ValueOf(c).Elem(), "")
	if len(secrets) == 0 || !readableByOthers(fi) {
		return nil
	}
	what := "a password"
	if len(secrets) > 1 {
		what = fmt.Sprintf("%d passwords (also %s", len(secrets), strings.Join(secrets[1:min(len(secrets), 4)], ", "))
		if len(secrets) > 4 {
			what += ", ..."
		}
		what += ")"
	}
	return []Problem{{Path: secrets[0], Msg: fmt.Sprintf(
		"warning: the file is readable by users other than root (mode %04o) and holds %s: chmod go-r %s",
		fi.Mode().Perm(), what, path)}}
}

// readableByOthers: readable by everyone, or by a group other than root's.
func readableByOthers(fi fs.FileInfo) bool {
	perm := fi.Mode().Perm()
	if perm&0o004 != 0 {
		return true
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return perm&0o040 != 0 && (!ok || st.Gid != 0)
}

// secretPaths lists the field paths of the non-empty secrets in v.
func secretPaths(v reflect.Value, path string) []string {
	var out []string
	switch v.Kind() {
	case reflect.Struct:
		t := v.Type()
		for i := range t.NumField() {
			key := t.Field(i).Tag.Get("mapstructure")
			if key == "" || key == "-" {
				continue
			}
			child := key
			if path != "" {
				child = path + "." + key
			}
			f := v.Field(i)
			if f.Kind() == reflect.String {
				if f.String() != "" && secretKey.MatchString(key) {
					out = append(out, child)
				}
				continue
			}
			out = append(out, secretPaths(f, child)...)
		}
	case reflect.Slice:
		if !mayHoldSecret(v.Type().Elem()) {
			break // the 100 000 backends of a large site hold none
		}
		for i := range v.Len() {
			out = append(out, secretPaths(v.Index(i), fmt.Sprintf("%s[%d]", path, i))...)
		}
	case reflect.Pointer:
		if !v.IsNil() {
			out = append(out, secretPaths(v.Elem(), path)...)
		}
	}
	return out
}

// mayHoldSecret reports whether a value of type t can hold a secret: a
// string field named like one, in it or in what it holds.
func mayHoldSecret(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Struct:
		for i := range t.NumField() {
			f := t.Field(i)
			key := f.Tag.Get("mapstructure")
			if key == "" || key == "-" {
				continue
			}
			if f.Type.Kind() == reflect.String && secretKey.MatchString(key) || mayHoldSecret(f.Type) {
				return true
			}
		}
	case reflect.Slice, reflect.Pointer:
		return mayHoldSecret(t.Elem())
	}
	return false
}
