package main

import (
	"encoding/json"
	"github.com/halb-lb/halb/internal/halbtest"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/daemon"
	"github.com/halb-lb/halb/internal/netnstest"
)

// checkIn runs `halb check -c file` inside ns, as on a host that is ns.
func checkIn(t *testing.T, ns *netnstest.NS, file string) (code int, stdout, stderr string) {
	t.Helper()
	if err := ns.Do(func() error {
		code, stdout, stderr = run(t, "check", "-c", file)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return code, stdout, stderr
}

// The example configuration on a host without its routes (a fresh network
// namespace: loopback only) is valid, and `halb check` warns about each
// backend it cannot reach, naming it, with exit status 0: halb run serves
// the others and waits for a route.
func TestCheckWarnsUnroutedBackends(t *testing.T) {
	ns := netnstest.New(t)
	const file = "../../configs/halb.yaml"
	code, out, errs := checkIn(t, ns, file)
	if code != exitOK {
		t.Fatalf("exit %d, want 0\n%s%s", code, out, errs)
	}
	for _, w := range []struct{ path, addr string }{
		{"services[0].backends[0].address", "198.51.100.11"},
		{"services[0].backends[2].address", "198.51.100.13"},
		{"services[0].sorry_backend", "198.51.100.99"},
		{"services[1].backends[0].address", "2001:db8:1::11"},
		{"services[1].backends[1].address", "2001:db8:1::12"},
		{"services[2].backends[1].address", "198.51.100.22"},
	} {
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(file) + `:\d+: ` + regexp.QuoteMeta(w.path) +
			`: warning: ` + regexp.QuoteMeta(w.addr) + ` has no route from this host \(network is unreachable\)`)
		if !re.MatchString(out) {
			t.Errorf("no warning FILE:LINE: %s: warning: %s has no route ...:\n%s", w.path, w.addr, out)
		}
	}
	if !strings.HasPrefix(out, file+": valid\n") {
		t.Errorf("output does not start with %q:\n%s", file+": valid", out)
	}
}

// A virtual IP that is already an address of a local interface draws a
// warning naming it and the interface (the host's own address, which halb
// would leave there while the peer is MASTER); one carrying halb's mark
// does not, nor does a backend with a route. A virtual IP that a running
// halb on the configuration's socket holds as MASTER (the way to tell on
// a kernel that keeps no mark) draws none either.
func TestCheckWarnsVIPOnLocalInterface(t *testing.T) {
	ns := netnstest.New(t)
	h := ns.Netlink(t)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth1"}); err != nil {
		t.Fatal(err)
	}
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(eth0); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"192.0.2.50/24", "198.51.100.1/24"} {
		addr, _ := netlink.ParseAddr(a)
		if err := h.AddrAdd(eth0, addr); err != nil {
			t.Fatal(err)
		}
	}
	// 192.0.2.70 as halb adds a VIP: marked with IFA_PROTO 0x68.
	if err := ns.Do(func() error {
		req := nl.NewNetlinkRequest(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
		msg := nl.NewIfAddrmsg(unix.AF_INET)
		msg.Index = uint32(eth0.Attrs().Index)
		msg.Prefixlen = 24
		req.AddData(msg)
		req.AddData(nl.NewRtAttr(unix.IFA_LOCAL, []byte{192, 0, 2, 70}))
		req.AddData(nl.NewRtAttr(unix.IFA_ADDRESS, []byte{192, 0, 2, 70}))
		req.AddData(nl.NewRtAttr(11 /* IFA_PROTO */, []byte{0x68}))
		_, err := req.Execute(unix.NETLINK_ROUTE, 0)
		return err
	}); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	socket := filepath.Join(dir, "halb.sock")
	file := filepath.Join(dir, "halb.yaml")
	if err := os.WriteFile(file, []byte(`control:
  socket: `+socket+`
datapath:
  interfaces: [eth0]
vrrp:
  instances:
    - name: VI_1
      interface: eth0
      vrid: 51
      unicast_src: 192.0.2.1
      unicast_peers: [192.0.2.2]
      virtual_ips:
        - 192.0.2.60/24
        - 192.0.2.50/24
        - 192.0.2.70/24
services:
  - name: web
    vip: 192.0.2.60
    port: 80
    backends:
      - address: 198.51.100.11
`), 0o600); err != nil {
		t.Fatal(err)
	}

	code, out, errs := checkIn(t, ns, file)
	if code != exitOK {
		t.Fatalf("exit %d, want 0\n%s%s", code, out, errs)
	}
	want := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(file) + `:14: vrrp\.instances\[0\]\.virtual_ips\[1\]: warning: 192\.0\.2\.50 is already an address of eth0 on this host, and not one halb added`)
	if !want.MatchString(out) {
		t.Errorf("no warning about 192.0.2.50 on eth0 at line 14:\n%s", out)
	}
	if n := strings.Count(out, "warning:"); n != 1 {
		t.Errorf("%d warnings, want 1 (192.0.2.60 is not on an interface, 192.0.2.70 carries halb's mark, 198.51.100.11 is routed):\n%s", n, out)
	}

	// A halb on the control socket that holds the VIP as MASTER.
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(daemon.Status{Instances: []daemon.InstanceStatus{{
			Name: "VI_1", Interface: "eth0", VRID: 51, State: "MASTER",
			VirtualIPs: []string{"192.0.2.60/24", "192.0.2.50/24", "192.0.2.70/24"},
		}}})
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })

	code, out, errs = checkIn(t, ns, file)
	if code != exitOK || strings.Contains(out, "warning:") {
		t.Errorf("with the VIP held by a running halb: exit %d, want 0 and no warning\n%s%s", code, out, errs)
	}
}

// A datapath.bpffs on no bpf filesystem and outside /sys/fs/bpf, where
// halb run refuses it, draws a warning naming the mount to make; one
// under a bpf filesystem draws none. Nothing is mounted or made.
func TestCheckWarnsBPFFSOffBPF(t *testing.T) {
	netnstest.Require(t)
	dir := t.TempDir()
	empty := filepath.Join(dir, "emptyb")
	if err := os.Mkdir(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	mounted := halbtest.BPFFS(t)
	for _, c := range []struct {
		bpffs string
		warn  bool
	}{{filepath.Join(empty, "halb"), true}, {filepath.Join(mounted, "halb"), false}} {
		file := filepath.Join(dir, "halb.yaml")
		if err := os.WriteFile(file, []byte("control: {socket: "+filepath.Join(dir, "halb.sock")+"}\n"+
			"datapath: {mode: xdp, interfaces: [lo], bpffs: "+c.bpffs+"}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		code, out, errs := run(t, "check", "-c", file)
		if code != exitOK {
			t.Fatalf("bpffs %s: exit %d, want 0\n%s%s", c.bpffs, code, out, errs)
		}
		want := "datapath.bpffs: warning: halb run refuses this path on this host"
		if got := strings.Contains(out, want) && strings.Contains(out, "mount -t bpf bpf "+empty); got != c.warn {
			t.Errorf("bpffs %s: warning naming mount -t bpf bpf %s: %v, want %v\n%s", c.bpffs, empty, got, c.warn, out)
		}
		if _, err := os.Stat(c.bpffs); err == nil {
			t.Errorf("halb check made %s", c.bpffs)
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(empty, &st); err != nil || uint32(st.Type) == unix.BPF_FS_MAGIC {
		t.Errorf("halb check mounted a bpf filesystem on %s (%v)", empty, err)
	}
}
