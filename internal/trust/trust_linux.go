package trust

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"

	"golang.org/x/sys/unix"
)

// maxLinks is the kernel's own bound on symlinks in one lookup (ELOOP).
const maxLinks = 40

// ForExec is the flag to Open for a program that will be run by its file
// descriptor: O_PATH needs no read permission and opens nothing.
const ForExec = unix.O_PATH

// ForRead is the flag to Open for a file to read.
const ForRead = unix.O_RDONLY

// Open walks path component by component under the policy and returns its
// final file, which must be a regular file, opened with flags (ForExec or
// ForRead; O_NOFOLLOW, O_CLOEXEC, O_NONBLOCK and O_NOCTTY are added). The
// owner and mode of the returned file were checked on that descriptor.
//
// path must be absolute: a relative one would be judged against a working
// directory or a PATH that differs between `halb check` and the daemon.
//
// A component that fails the policy is an *Error (errors.Is ErrUntrusted);
// a final file that is not regular is a *NotRegularError; anything the
// system refused (a missing file) is an *fs.PathError.
func Open(name string, flags int) (*os.File, error) {
	if !path.IsAbs(name) {
		return nil, &Error{Path: name, Msg: "is not an absolute path: write it from / so that what is checked is what runs"}
	}
	w := &walk{}
	defer w.close()
	e, err := w.resolve(name)
	switch {
	case err != nil:
		return nil, err
	case e.missing:
		return nil, &fs.PathError{Op: "open", Path: e.path, Err: unix.ENOENT}
	case e.dir:
		return nil, &NotRegularError{Path: w.top().path, Kind: "a directory"}
	}
	defer unix.Close(e.fd)
	if e.under {
		return nil, &fs.PathError{Op: "open", Path: e.path, Err: unix.ENOTDIR}
	}
	return openFinal(e.parent, e.elem, e.path, e.fd, &e.st, flags)
}

// openFinal checks the last component, which fd holds (O_PATH), and
// returns it opened with flags. Reopening by name is safe here: the
// directory is trusted, so no one else can have swapped the entry, and the
// identity is compared anyway.
func openFinal(parent dirFD, elem, p string, fd int, st *unix.Stat_t, flags int) (*os.File, error) {
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, &NotRegularError{Path: p, Kind: KindOf(fileMode(st))}
	}
	if err := checkFile(p, st); err != nil {
		return nil, err
	}
	nfd, err := unix.Openat(parent.fd, elem, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	var nst unix.Stat_t
	if err := unix.Fstat(nfd, &nst); err != nil {
		unix.Close(nfd)
		return nil, &fs.PathError{Op: "fstat", Path: p, Err: err}
	}
	if nst.Dev != st.Dev || nst.Ino != st.Ino {
		unix.Close(nfd)
		return nil, &Error{Path: p, Msg: "changed while it was being checked: try again, and find out who replaces it"}
	}
	// Owner and mode as the descriptor now sees them: a chmod between the
	// two opens is caught too.
	if err := checkOwner(p, &nst); err != nil {
		unix.Close(nfd)
		return nil, err
	}
	if err := checkFile(p, &nst); err != nil {
		unix.Close(nfd)
		return nil, err
	}
	if flags&unix.O_PATH == 0 {
		// O_NONBLOCK kept the open from waiting on anything; a regular
		// file reads the same without it.
		if err := setBlocking(nfd); err != nil {
			unix.Close(nfd)
			return nil, &fs.PathError{Op: "fcntl", Path: p, Err: err}
		}
	}
	return os.NewFile(uintptr(nfd), p), nil
}

func setBlocking(fd int) error {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return err
	}
	_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_NONBLOCK)
	return err
}

// readlink reads the target of the symlink that fd (O_PATH|O_NOFOLLOW)
// holds: the link that was checked, not whatever the name holds now.
func readlink(fd int, st *unix.Stat_t) (string, error) {
	buf := make([]byte, max(st.Size+1, 256))
	for {
		n, err := unix.Readlinkat(fd, "", buf)
		if err != nil {
			return "", err
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		if len(buf) >= unix.PathMax {
			return "", unix.ENAMETOOLONG
		}
		buf = make([]byte, 2*len(buf))
	}
}

// walkEnd is where resolve stopped: at a directory (dir: the walk's top
// is it), at a name that does not exist (missing: the walk's top is the
// nearest directory above it), or at a file of another type, held in fd
// (O_PATH; the caller closes it), with st its status; under says that
// components were left after that file, which can have none.
type walkEnd struct {
	parent       dirFD
	elem, path   string
	fd           int
	st           unix.Stat_t
	dir, missing bool
	under        bool
}

// resolve walks name from / one component at a time, never following a
// symlink by name: each component must pass checkOwner, each directory
// checkDir, and a symlink is judged as itself and then by what it names.
// Open and CheckArg differ only in what they make of where it ends.
func (w *walk) resolve(name string) (walkEnd, error) {
	if err := w.enter("/", unix.AT_FDCWD, "/"); err != nil {
		return walkEnd{}, err
	}
	todo := components(name)
	links := 0
	for len(todo) > 0 {
		elem := todo[0]
		todo = todo[1:]
		if elem == ".." {
			w.up()
			continue
		}
		parent := w.top()
		p := path.Join(parent.path, elem)
		fd, err := unix.Openat(parent.fd, elem, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == unix.ENOENT {
			return walkEnd{path: p, missing: true}, nil
		}
		if err != nil {
			return walkEnd{}, &fs.PathError{Op: "open", Path: p, Err: err}
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return walkEnd{}, &fs.PathError{Op: "fstat", Path: p, Err: err}
		}
		if err := checkOwner(p, &st); err != nil {
			unix.Close(fd)
			return walkEnd{}, err
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			target, err := readlink(fd, &st)
			unix.Close(fd)
			if err != nil {
				return walkEnd{}, &fs.PathError{Op: "readlink", Path: p, Err: err}
			}
			if links++; links > maxLinks {
				return walkEnd{}, &fs.PathError{Op: "open", Path: name, Err: unix.ELOOP}
			}
			if path.IsAbs(target) {
				w.toRoot()
			}
			todo = append(components(target), todo...)
		case unix.S_IFDIR:
			if err := checkDir(p, &st); err != nil {
				unix.Close(fd)
				return walkEnd{}, err
			}
			w.push(fd, p)
		default:
			return walkEnd{parent: parent, elem: elem, path: p, fd: fd, st: st, under: len(todo) > 0}, nil
		}
	}
	return walkEnd{dir: true}, nil
}

// components splits a path into its names, "." and empty ones dropped.
func components(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

type dirFD struct {
	fd   int
	path string // as resolved so far, for messages
}

// walk holds the directories from / down to where the walk is, open, so
// that ".." goes back up the directories actually walked.
type walk struct{ dirs []dirFD }

func (w *walk) enter(p string, at int, name string) error {
	fd, err := unix.Openat(at, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &fs.PathError{Op: "open", Path: p, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return &fs.PathError{Op: "fstat", Path: p, Err: err}
	}
	if err := checkOwner(p, &st); err != nil {
		unix.Close(fd)
		return err
	}
	if err := checkDir(p, &st); err != nil {
		unix.Close(fd)
		return err
	}
	w.push(fd, p)
	return nil
}

func (w *walk) push(fd int, p string) { w.dirs = append(w.dirs, dirFD{fd, p}) }
func (w *walk) top() dirFD            { return w.dirs[len(w.dirs)-1] }

// up goes to the parent; the parent of / is /.
func (w *walk) up() {
	if len(w.dirs) > 1 {
		unix.Close(w.top().fd)
		w.dirs = w.dirs[:len(w.dirs)-1]
	}
}

func (w *walk) toRoot() {
	for len(w.dirs) > 1 {
		w.up()
	}
}

func (w *walk) close() {
	for _, d := range w.dirs {
		unix.Close(d.fd)
	}
	w.dirs = nil
}

// trustedUID: root, or the user halb runs as (a file halb's own user
// owns can be changed only by someone who can act as halb already).
func trustedUID(uid uint32) bool {
	return uid == 0 || int(uid) == os.Geteuid()
}

// checkOwner: whoever owns a file can chmod it, and whoever owns a
// symlink can repoint it, whatever its mode says.
func checkOwner(p string, st *unix.Stat_t) error {
	if trustedUID(st.Uid) {
		return nil
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return &Error{Path: p, Msg: fmt.Sprintf("is a symlink owned by uid %d, a user other than root, who can repoint it "+
			"and so choose what halb runs or reads as root: replace it with a link root owns (chown -h root %s)", st.Uid, p)}
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return &Error{Path: p, Msg: fmt.Sprintf("is owned by uid %d, so it is writable by a user other than root, "+
			"who could put their own file in halb's path and so choose what halb runs or reads as root: "+
			"keep the file in a directory that root owns, or chown root %s", st.Uid, p)}
	}
	return &Error{Path: p, Msg: fmt.Sprintf("is owned by uid %d, so it is writable by a user other than root, "+
		"who could choose what halb runs or reads as root: chown root %s and chmod go-w %s", st.Uid, p, p)}
}

// checkDir: a directory others can write lets them rename its entries and
// put their own in place, unless it is sticky (then they can touch only
// their own entries, which checkOwner refuses).
func checkDir(p string, st *unix.Stat_t) error {
	if st.Mode&0o022 == 0 || st.Mode&unix.S_ISVTX != 0 {
		return nil
	}
	return &Error{Path: p, Msg: fmt.Sprintf("is writable by a user other than root (mode %04o), who could put their own "+
		"file in halb's path and so choose what halb runs or reads as root: chmod go-w %s, "+
		"or keep the file in a directory only root can write", st.Mode&0o7777, p)}
}

func checkFile(p string, st *unix.Stat_t) error {
	if st.Mode&0o022 == 0 {
		return nil
	}
	return &Error{Path: p, Msg: fmt.Sprintf("is writable by a user other than root (mode %04o), who could choose "+
		"what halb runs or reads as root: chmod go-w %s", st.Mode&0o7777, p)}
}

// fileMode turns the kernel's mode into fs.FileMode's type bits.
func fileMode(st *unix.Stat_t) fs.FileMode {
	m := fs.FileMode(st.Mode & 0o777)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		m |= fs.ModeDir
	case unix.S_IFIFO:
		m |= fs.ModeNamedPipe
	case unix.S_IFCHR:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		m |= fs.ModeDevice
	case unix.S_IFSOCK:
		m |= fs.ModeSocket
	case unix.S_IFLNK:
		m |= fs.ModeSymlink
	}
	return m
}

// CheckArg holds a path that a program halb runs is given as an argument
// (a script for /bin/sh, a module for python3, a file to read) to the
// policy: the program will open it as root, so whoever could change it
// chooses what root runs or reads. It walks the path like Open, judging
// every component as written and as symlinks resolve it, and then:
//
//   - a final file that is regular, a FIFO or a socket must not be
//     writable by others; a device is allowed whatever its mode (what
//     /dev/null or /dev/zero give is the kernel's, not a user's);
//   - a final directory must not be writable by others, sticky or not:
//     the program may run or read what is in it (python3 runs a
//     directory's __main__.py, run-parts its files), and in a sticky
//     directory like /tmp others can add entries;
//   - a path that does not exist is allowed only if the nearest directory
//     on it that does exist is writable by root alone (sticky or not), so
//     that no one else can create it between this check and the run; a
//     path under a non-directory can never exist, and is allowed.
//
// Nothing is opened for reading. The error is an *Error (ErrUntrusted)
// or, for what the system refused, an *fs.PathError.
func CheckArg(name string) error {
	if !path.IsAbs(name) {
		return &Error{Path: name, Msg: "is not an absolute path: write it from /"}
	}
	w := &walk{}
	defer w.close()
	e, err := w.resolve(name)
	switch {
	case err != nil:
		return err
	case e.missing:
		return checkHolder(w.top(), name, true)
	case e.dir:
		return checkHolder(w.top(), name, false)
	}
	unix.Close(e.fd)
	switch t := e.st.Mode & unix.S_IFMT; {
	case e.under:
		return nil // nothing can be created under a file
	case t == unix.S_IFCHR || t == unix.S_IFBLK:
		return nil
	}
	return checkFile(e.path, &e.st)
}

// checkHolder: a directory given to a program, or the nearest existing
// directory above a path that does not exist yet, must be writable by
// root alone; the sticky bit does not help here (see CheckArg).
func checkHolder(d dirFD, name string, missing bool) error {
	var st unix.Stat_t
	if err := unix.Fstat(d.fd, &st); err != nil {
		return &fs.PathError{Op: "fstat", Path: d.path, Err: err}
	}
	if st.Mode&0o022 == 0 {
		return nil
	}
	if !missing {
		return &Error{Path: d.path, Msg: fmt.Sprintf("is a directory writable by users other than root (mode %04o), "+
			"and the program is given it as root: what others put there, it may run or read. "+
			"Use a directory only root can write (chmod go-w,-t %s)", st.Mode&0o7777, d.path)}
	}
	return &Error{Path: d.path, Msg: fmt.Sprintf("is writable by users other than root (mode %04o), and %s, "+
		"given to the program as root, does not exist there yet: another user could create it, with contents "+
		"of their choosing, before the program opens it. Create it as root, or use a path in a directory only root can write",
		st.Mode&0o7777, name)}
}
