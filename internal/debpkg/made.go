package main

import (
	"bytes"
	"compress/gzip"
	"debug/buildinfo"
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2/files"
)

// madeFiles writes the files the package needs that no source file is as
// it stands, and lists them.
func madeFiles(o options, version, stage string) (files.Contents, error) {
	var c files.Contents
	add := func(dst string, data []byte) error {
		p := filepath.Join(stage, strings.ReplaceAll(strings.TrimPrefix(dst, "/"), "/", "_"))
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return err
		}
		c = append(c, &files.Content{Source: p, Destination: dst, FileInfo: mode(0o644, o.date)})
		return nil
	}
	unit, err := packageUnit(filepath.Join(o.root, "configs/systemd/halb.service"))
	if err != nil {
		return nil, err
	}
	if err := add("/usr/lib/systemd/system/halb.service", unit); err != nil {
		return nil, err
	}
	copyright, err := copyrightFile(o.bin, o.date)
	if err != nil {
		return nil, err
	}
	if err := add("/usr/share/doc/halb/copyright", copyright); err != nil {
		return nil, err
	}
	if err := addGzipped(add, "/usr/share/doc/halb/changelog.gz", changelog(version, o.commit, o.maintainer, o.date)); err != nil {
		return nil, err
	}
	readme, err := os.ReadFile(filepath.Join(o.root, "README.md"))
	if err != nil {
		return nil, err
	}
	if err := addGzipped(add, "/usr/share/doc/halb/README.md.gz", readme); err != nil {
		return nil, err
	}
	pages, err := filepath.Glob(filepath.Join(o.docs, "man", "*.8"))
	if err != nil || len(pages) == 0 {
		return nil, fmt.Errorf("no man pages in %s/man (halb docs writes them): %v", o.docs, err)
	}
	for _, p := range pages {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		if err := addGzipped(add, "/usr/share/man/man8/"+filepath.Base(p)+".gz", data); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func addGzipped(add func(string, []byte) error, dst string, data []byte) error {
	gz, err := gzipped(data)
	if err != nil {
		return err
	}
	return add(dst, gz)
}

// gzipped compresses as Debian wants: best compression, and neither a
// name nor a time in the header, so that the bytes depend on data alone.
func gzipped(data []byte) ([]byte, error) {
	var buf bytes.Buffer
	w, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(data); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// packageUnit is the unit `make install` installs with the package's path
// to halb, /usr/sbin. A unit that no longer names /usr/local/bin/halb is
// an error rather than a package whose unit runs a missing binary.
func packageUnit(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	const from, to = "/usr/local/bin/halb ", "/usr/sbin/halb "
	if !bytes.Contains(data, []byte("ExecStart="+from)) {
		return nil, fmt.Errorf("%s: no ExecStart=%s...: update packageUnit with the unit", path, from)
	}
	return bytes.ReplaceAll(data, []byte(from), []byte(to)), nil
}

// debVersion is the package's version: a release tag's (v1.2.0 -> 1.2.0,
// commits after it -> 1.2.0+3.gabc1234), else 0.0~git<commit time>.<commit>,
// which sorts before any release and by time between commits. halb is a
// native package: no Debian revision.
func debVersion(describe, commit string, date time.Time) string {
	dirty := strings.HasSuffix(describe, "-dirty")
	describe = strings.TrimSuffix(describe, "-dirty")
	var v string
	if m := releaseTag.FindStringSubmatch(describe); m != nil {
		v = m[1]
		if m[2] != "" {
			v += "+" + m[2] + "." + m[3]
		}
	} else {
		v = "0.0~git" + date.UTC().Format("20060102150405") + "." + commit
	}
	if dirty {
		v += "+dirty"
	}
	return v
}

var releaseTag = regexp.MustCompile(`^v?([0-9]+(?:\.[0-9]+)+)(?:-([0-9]+)-(g[0-9a-f]+))?$`)

// changelog is the package's Debian changelog: one entry, this build.
func changelog(version, commit, maintainer string, date time.Time) []byte {
	return fmt.Appendf(nil, "halb (%s) unstable; urgency=medium\n\n  * Built from commit %s.\n\n -- %s  %s\n",
		version, commit, maintainer, date.UTC().Format(time.RFC1123Z))
}

// copyrightFile says what the binary is made of: halb's own code and the
// Go modules linked into it, read from the binary's build information so
// that the list is the binary's own.
func copyrightFile(bin string, date time.Time) ([]byte, error) {
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		return nil, fmt.Errorf("read %s's build information: %w", bin, err)
	}
	var b strings.Builder
	years := "2026" // the repository's first commit
	if y := date.Year(); y > 2026 {
		years = fmt.Sprintf("2026-%d", y)
	}
	fmt.Fprintf(&b, copyrightHead, years)
	fmt.Fprintf(&b, "\n/usr/sbin/halb is one static binary, built with %s. Besides halb's own\n", info.GoVersion)
	b.WriteString("code it holds the Go standard library and these Go modules, under their\nown licenses (see each module's LICENSE file):\n\n")
	for _, m := range info.Deps {
		if m.Replace != nil {
			m = m.Replace
		}
		fmt.Fprintf(&b, "  %s %s\n", m.Path, m.Version)
	}
	return []byte(b.String()), nil
}

const copyrightHead = `halb, a high-availability load balancer (VRRP failover, eBPF or IPVS)

Copyright: %s the halb authors.

License: the halb repository carries no license statement of its own yet.
The eBPF programs halb loads into the kernel declare "Dual MIT/GPL"
(SEC("license") in bpf/halb_lb.c). On Debian systems the full text of
the GNU General Public License version 2 is in
/usr/share/common-licenses/GPL-2.
`

// checkBinary refuses a halb built for another architecture than the
// package's, and an armhf one that a Raspberry Pi Zero or Pi 1 (ARMv6)
// cannot run: Raspberry Pi OS is armhf on every Pi, so its one package
// must be built with GOARM=6.
func checkBinary(bin, arch string) error {
	want, ok := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64, "armhf": elf.EM_ARM}[arch]
	if !ok {
		return fmt.Errorf("-arch %q: want amd64, arm64 or armhf", arch)
	}
	f, err := elf.Open(bin)
	if err != nil {
		return fmt.Errorf("-bin: %w", err)
	}
	machine := f.Machine
	f.Close()
	if machine != want {
		return fmt.Errorf("-bin %s is built for %s, not %s", bin, machine, arch)
	}
	if arch != "armhf" {
		return nil
	}
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		return fmt.Errorf("read %s's build information: %w", bin, err)
	}
	goarm := "unknown"
	for _, s := range info.Settings {
		if s.Key == "GOARM" {
			goarm = s.Value
		}
	}
	if goarm != "6" {
		return fmt.Errorf("-bin %s is built with GOARM=%s: armhf needs GOARM=6, which every Raspberry Pi runs", bin, goarm)
	}
	return nil
}
