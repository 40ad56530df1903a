// Command debpkg builds halb's Debian package for one architecture (`make
// deb` runs it for amd64, arm64 and armhf), with nfpm as a library: the
// binary `make cross` built, the man pages and completions `halb docs`
// wrote, and the files under configs/.
//
// What the package may do to a host is the contract here: it installs
// files and nothing else. No maintainer script enables or starts halb or
// touches a link, an address or a pin on install; the scripts are the
// postinst that records for deb-systemd-helper the links enabling halb
// makes (making none), the prerm that stops halb and takes its data path
// away on removal, and the postrm that removes /run/halb and those links on
// purge (configs/deb). It must never
// package a binary built for another architecture (checkBinary).
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/deb"
	"github.com/goreleaser/nfpm/v2/files"
)

// options are the command line's: one package per run.
type options struct {
	root       string    // the repository's root, for configs/ and README.md
	bin        string    // halb, built for arch
	docs       string    // `halb docs` output: man/ and completions/
	arch       string    // Debian's name: amd64, arm64, armhf
	describe   string    // git describe, for the version
	commit     string    // short commit hash
	date       time.Time // the commit's time: every mtime, the changelog
	maintainer string
	out        string // directory the .deb goes to
}

func main() {
	var o options
	var epoch int64
	flag.StringVar(&o.root, "root", ".", "repository root")
	flag.StringVar(&o.bin, "bin", "", "halb binary built for -arch")
	flag.StringVar(&o.docs, "docs", "", "directory `halb docs` wrote")
	flag.StringVar(&o.arch, "arch", "", "Debian architecture: amd64, arm64 or armhf")
	flag.StringVar(&o.describe, "describe", "", "git describe --tags --always --dirty")
	flag.StringVar(&o.commit, "commit", "unknown", "short commit hash")
	flag.Int64Var(&epoch, "date", 0, "commit time, seconds since the epoch (SOURCE_DATE_EPOCH)")
	flag.StringVar(&o.maintainer, "maintainer", "halb maintainers <halb@example.org>", "the package's Maintainer field")
	flag.StringVar(&o.out, "out", "bin", "output directory")
	flag.Parse()
	if epoch == 0 {
		epoch = time.Now().Unix()
	}
	o.date = time.Unix(epoch, 0).UTC()
	path, err := build(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "debpkg:", err)
		os.Exit(1)
	}
	fmt.Println(path)
}

// build writes the package and returns its path.
func build(o options) (string, error) {
	if err := checkBinary(o.bin, o.arch); err != nil {
		return "", err
	}
	stage, err := os.MkdirTemp("", "halb-deb-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(stage)
	version := debVersion(o.describe, o.commit, o.date)
	contents, err := packageContents(o, version, stage)
	if err != nil {
		return "", err
	}
	info := nfpm.WithDefaults(&nfpm.Info{
		Name:          "halb",
		Arch:          o.arch,
		Platform:      "linux",
		Version:       version,
		VersionSchema: "none",
		Section:       "net",
		Priority:      "optional",
		Maintainer:    o.maintainer,
		Description:   description,
		MTime:         o.date,
		Overridables: nfpm.Overridables{
			// procps: the unit's ExecReload is /bin/kill, which a minimal
			// Debian root (mmdebstrap's minbase) does not have.
			Depends:  []string{"procps"},
			Contents: contents,
			Scripts: nfpm.Scripts{
				PostInstall: filepath.Join(o.root, "configs/deb/postinst"),
				PreRemove:   filepath.Join(o.root, "configs/deb/prerm"),
				PostRemove:  filepath.Join(o.root, "configs/deb/postrm"),
			},
			Deb: nfpm.Deb{Compression: "xz"},
		},
	})
	if err := info.Validate(); err != nil {
		return "", fmt.Errorf("package info: %w", err)
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(o.out, fmt.Sprintf("halb_%s_%s.deb", version, o.arch))
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	if err := deb.Default.Package(info, f); err != nil {
		f.Close()
		os.Remove(path)
		return "", fmt.Errorf("package %s: %w", path, err)
	}
	return path, f.Close()
}

const description = `high-availability load balancer: VRRP failover, eBPF or IPVS
 halb moves virtual IPs between a pair of nodes with VRRP (v2 and v3, IPv4
 and IPv6, interoperating with keepalived) and spreads the traffic for them
 over backends with health checks: with eBPF (XDP, or tc) on kernels with
 BTF, and with Linux IPVS elsewhere, such as on Raspberry Pi kernels.
 .
 The package installs halb, its systemd unit (neither enabled nor started),
 a configuration that configures nothing, and the full example in
 /usr/share/doc/halb/examples.`

// packageContents lists the package's files. The ones made here (the unit
// with the package's path, the changelog, the copyright file, gzipped man
// pages) are written into stage first.
func packageContents(o options, version, stage string) (files.Contents, error) {
	src := func(p string) string { return filepath.Join(o.root, p) }
	c := files.Contents{
		{Destination: "/etc/halb", Type: files.TypeDir, FileInfo: mode(0o755, o.date)},
		{Source: o.bin, Destination: "/usr/sbin/halb", FileInfo: mode(0o755, o.date)},
		{Source: src("configs/deb/halb.yaml"), Destination: "/etc/halb/halb.yaml", Type: files.TypeConfig, FileInfo: mode(0o600, o.date)},
		{Source: src("configs/deb/default"), Destination: "/etc/default/halb", Type: files.TypeConfig, FileInfo: mode(0o644, o.date)},
		{Source: src("configs/halb.yaml"), Destination: "/usr/share/doc/halb/examples/halb.yaml", FileInfo: mode(0o644, o.date)},
		{Source: src("configs/pi-ipvs.yaml"), Destination: "/usr/share/doc/halb/examples/pi-ipvs.yaml", FileInfo: mode(0o644, o.date)},
		{Source: src("configs/modules-load.d/halb.conf"), Destination: "/usr/share/doc/halb/examples/modules-load.d/halb.conf", FileInfo: mode(0o644, o.date)},
		{Source: src("configs/deb/lintian-overrides"), Destination: "/usr/share/lintian/overrides/halb", FileInfo: mode(0o644, o.date)},
		{Source: filepath.Join(o.docs, "completions/halb.bash"), Destination: "/usr/share/bash-completion/completions/halb", FileInfo: mode(0o644, o.date)},
		{Source: filepath.Join(o.docs, "completions/_halb"), Destination: "/usr/share/zsh/vendor-completions/_halb", FileInfo: mode(0o644, o.date)},
		{Source: filepath.Join(o.docs, "completions/halb.fish"), Destination: "/usr/share/fish/vendor_completions.d/halb.fish", FileInfo: mode(0o644, o.date)},
	}
	made, err := madeFiles(o, version, stage)
	if err != nil {
		return nil, err
	}
	return append(c, made...), nil
}

// mode is a file's metadata in the package: root's, with the commit's
// time, so that one commit always makes the same package.
func mode(m os.FileMode, t time.Time) *files.ContentFileInfo {
	return &files.ContentFileInfo{Owner: "root", Group: "root", Mode: m, MTime: t}
}
