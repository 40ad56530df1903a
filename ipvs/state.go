package ipvs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/halb-lb/halb/service"
)

// DefaultStateFile is where a Datapath records the services it owns (see
// the package documentation). It is on /run, which is empty after a boot,
// as IPVS's table is.
const DefaultStateFile = "/run/halb/ipvs-services"

const stateHeader = `# IPVS services halb programmed: (VIP, port, protocol), one a line.
# halb removes those that leave its configuration and leaves every other
# IPVS service alone. Written by halb; do not edit.
`

// keySet is a set of service keys.
type keySet map[service.Key]bool

func (s keySet) equal(o keySet) bool {
	if len(s) != len(o) {
		return false
	}
	for k := range s {
		if !o[k] {
			return false
		}
	}
	return true
}

// readState reads the keys a state file lists. A missing file is an empty
// set: halb has not programmed anything since the last boot. Lines that are
// not keys are returned as problems, and the rest of the file still counts.
func readState(path string) (keys keySet, problems []error, err error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return keySet{}, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	keys, problems, err = parseState(f)
	for i, p := range problems {
		problems[i] = fmt.Errorf("%s: %w", path, p)
	}
	return keys, problems, err
}

func parseState(r io.Reader) (keySet, []error, error) {
	keys := keySet{}
	var problems []error
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := parseKey(line)
		if err != nil {
			problems = append(problems, fmt.Errorf("line %d: %w", n, err))
			continue
		}
		keys[k] = true
	}
	return keys, problems, sc.Err()
}

// parseKey reads a key as service.Key.String writes it: "192.0.2.10:80/tcp",
// "[2001:db8::10]:443/udp".
func parseKey(s string) (service.Key, error) {
	ap, proto, ok := strings.Cut(s, "/")
	if !ok {
		return service.Key{}, fmt.Errorf("%q is not ADDRESS:PORT/PROTOCOL", s)
	}
	addrPort, err := netip.ParseAddrPort(ap)
	if err != nil {
		return service.Key{}, fmt.Errorf("%q is not ADDRESS:PORT/PROTOCOL: %w", s, err)
	}
	k := service.Key{VIP: addrPort.Addr(), Port: addrPort.Port()}
	switch proto {
	case "tcp":
		k.Proto = service.TCP
	case "udp":
		k.Proto = service.UDP
	default:
		return service.Key{}, fmt.Errorf("%q: protocol %q is neither tcp nor udp", s, proto)
	}
	return k, nil
}

// writeState replaces the state file with keys, atomically: a reader, or a
// halb starting after a crash, sees the old list or the new one.
func writeState(path string, keys keySet) error {
	lines := make([]string, 0, len(keys))
	for k := range keys {
		lines = append(lines, k.String())
	}
	slices.Sort(lines)
	var b bytes.Buffer
	b.WriteString(stateHeader)
	for _, l := range lines {
		b.WriteString(l)
		b.WriteByte('\n')
	}

	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if _, err := tmp.Write(b.Bytes()); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
