package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/ipv4"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
	"github.com/halb-lb/halb/vrrp"
)

// halb status asks the running daemon: a table by default, JSON with
// --json; with no daemon it exits 1 and says so.
func TestStatus(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "halb.sock")
	cfg := filepath.Join(dir, "halb.yaml")
	if err := os.WriteFile(cfg, []byte(`control: {socket: `+sock+`}
vrrp:
  instances:
    - {name: VI_S, interface: lan9, vrid: 9, virtual_ips: [192.0.2.9/24]}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	p := startHalb(t, "run", "-c", cfg)

	// The instance reaches FAULT on its own goroutine: ask until it has.
	var st struct {
		Instances []struct {
			Name   string   `json:"name"`
			State  string   `json:"state"`
			Faults []string `json:"faults"`
		} `json:"instances"`
	}
	var code int
	var out, errs string
	for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(50 * time.Millisecond) {
		code, out, errs = run(t, "status", "--json", "-s", sock)
		if code == exitOK && json.Unmarshal([]byte(out), &st) == nil && len(st.Instances) == 1 && st.Instances[0].State != "INIT" {
			break
		}
	}
	if code != exitOK {
		t.Fatalf("halb status --json: exit %d: %s", code, errs)
	}
	if len(st.Instances) != 1 || st.Instances[0].State != "FAULT" || strings.Join(st.Instances[0].Faults, ",") != "interface lan9 missing" {
		t.Errorf("status = %+v, want VI_S in FAULT for want of lan9\n%s", st, out)
	}

	// The table, reading the socket path from the config.
	code, out, errs = run(t, "status", "-c", cfg)
	if code != exitOK || !strings.Contains(out, "VI_S") || !strings.Contains(out, "FAULT") || !strings.Contains(out, "interface lan9 missing") {
		t.Errorf("halb status: exit %d\n%s%s", code, out, errs)
	}
	if info, err := os.Stat(sock); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("control socket mode: %v %v, want 0600", info.Mode(), err)
	}

	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	p.waitFor(t, "halb stopping")
	p.exitCode(t)
	code, _, errs = run(t, "status", "-s", sock)
	if code != exitFailure || !strings.Contains(errs, "no halb daemon answers") {
		t.Errorf("with no daemon: exit %d, %q", code, errs)
	}
}

// control.metrics serves Prometheus metrics: VRRP state, adverts, backend
// health, data-path counters. VI_D's link leads to a peer that sends it
// one advert it takes and one it drops, so that the adverts received and
// dropped count.
func TestMetrics(t *testing.T) {
	addr := halbtest.FreeAddr(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "halb.yaml")
	if err := os.WriteFile(cfg, []byte(`control: {socket: `+filepath.Join(dir, "halb.sock")+`, metrics: "`+addr+`"}
vrrp:
  instances:
    - {name: VI_M, interface: lan9, vrid: 9, virtual_ips: [192.0.2.9/24]}
    - {name: VI_D, interface: eth0, vrid: 10, version: 3, virtual_ips: [192.0.2.10/24]}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	// halb runs in a namespace of its own, with its own loopback: scrape
	// from inside it.
	ns := netnstest.New(t)
	peer := netnstest.New(t)
	peerLink(t, ns, peer)
	p := startHalbIn(t, ns, "run", "-c", cfg)
	p.waitForAll(t, "to=FAULT", "to=BACKUP")
	// The transition is logged just before it is recorded, and VI_D's
	// socket may open after it: send and scrape until it all shows.
	advert, err := (&vrrp.Advert{Version: 3, VRID: 10, Priority: 200, Interval: time.Second,
		Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.10")}}).Marshal(nil, peerAddr, vrrpGroup)
	if err != nil {
		t.Fatal(err)
	}
	// The drop counters are there from the start, at zero.
	const ttlDropsNone = `halb_vrrp_adverts_dropped_total{instance="VI_D",interface="eth0",reason="ttl",vrid="10"} 0` + "\n"
	var body string
	for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(100 * time.Millisecond) {
		// TTL 255 is taken; TTL 1 is what a router would have left of
		// it (RFC 5798 §5.1.1.3), dropped.
		sendAdvert(t, peer, advert, 255)
		sendAdvert(t, peer, advert, 1)
		body = scrape(t, ns, addr)
		if strings.Contains(body, `halb_vrrp_state{instance="VI_M",interface="lan9",state="FAULT",vrid="9"} 1`) &&
			!strings.Contains(body, `halb_vrrp_adverts_received_total{instance="VI_D",interface="eth0",vrid="10"} 0`) &&
			!strings.Contains(body, ttlDropsNone) {
			break
		}
	}
	for _, want := range []string{
		`halb_vrrp_state{instance="VI_M",interface="lan9",state="FAULT",vrid="9"} 1`,
		`halb_vrrp_state{instance="VI_M",interface="lan9",state="MASTER",vrid="9"} 0`,
		`halb_vrrp_transitions_total{instance="VI_M",interface="lan9",vrid="9"} 1`,
		`halb_vrrp_priority{instance="VI_M",interface="lan9",vrid="9"} 100`,
		`halb_vrrp_adverts_sent_total{instance="VI_M",interface="lan9",vrid="9"} 0`,
		`halb_vrrp_adverts_received_total{instance="VI_M",interface="lan9",vrid="9"} 0`,
		`halb_vrrp_state{instance="VI_D",interface="eth0",state="BACKUP",vrid="10"} 1`,
		`halb_vrrp_adverts_received_total{instance="VI_D",interface="eth0",vrid="10"} `,
		`halb_vrrp_adverts_dropped_total{instance="VI_D",interface="eth0",reason="ttl",vrid="10"} `,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(body, `halb_vrrp_adverts_received_total{instance="VI_D",interface="eth0",vrid="10"} 0`) {
		t.Errorf("VI_D received none of the peer's adverts")
	}
	if strings.Contains(body, ttlDropsNone) {
		t.Errorf("VI_D dropped none of the peer's TTL 1 adverts")
	}
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "halb_vrrp_adverts_") && strings.Contains(line, "VI_D") {
			t.Log(line)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", body)
	}
}

// The peer of TestMetrics, on the other end of halb's eth0.
var (
	peerAddr  = netip.MustParseAddr("198.51.100.2")
	vrrpGroup = netip.MustParseAddr("224.0.0.18")
)

// peerLink joins ns's eth0 (198.51.100.1/24) to peer's eth0 (peerAddr) by
// a veth pair.
func peerLink(t *testing.T, ns, peer *netnstest.NS) {
	t.Helper()
	h := ns.Netlink(t)
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0",
		PeerNamespace: netlink.NsFd(int(peer.Handle()))}); err != nil {
		t.Fatal(err)
	}
	for _, side := range []struct {
		h    *netlink.Handle
		addr string
	}{{h, "198.51.100.1/24"}, {peer.Netlink(t), peerAddr.String() + "/24"}} {
		link, err := side.h.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		a, _ := netlink.ParseAddr(side.addr)
		if err := side.h.AddrAdd(link, a); err != nil {
			t.Fatal(err)
		}
		if err := side.h.LinkSetUp(link); err != nil {
			t.Fatal(err)
		}
	}
}

// sendAdvert sends payload from peer's eth0 to the VRRP group with ttl.
func sendAdvert(t *testing.T, peer *netnstest.NS, payload []byte, ttl int) {
	t.Helper()
	err := peer.Do(func() error {
		c, err := net.ListenPacket("ip4:112", peerAddr.String())
		if err != nil {
			return err
		}
		defer c.Close()
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		pc := ipv4.NewPacketConn(c)
		if err := pc.SetMulticastInterface(ifi); err != nil {
			return err
		}
		if err := pc.SetMulticastTTL(ttl); err != nil {
			return err
		}
		_, err = pc.WriteTo(payload, nil, &net.IPAddr{IP: vrrpGroup.AsSlice()})
		return err
	})
	if err != nil {
		t.Fatalf("send an advert with TTL %d: %v", ttl, err)
	}
}

// scrape reads /metrics from addr inside ns. The socket must be made on
// the namespace's thread, so the request is written by hand rather than
// through http.Client, whose dials run on other goroutines.
func scrape(t *testing.T, ns *netnstest.NS, addr string) string {
	t.Helper()
	var body string
	err := ns.Do(func() error {
		var last error
		for start := time.Now(); time.Since(start) < 10*time.Second; time.Sleep(50 * time.Millisecond) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				last = err
				continue
			}
			fmt.Fprintf(c, "GET /metrics HTTP/1.0\r\nHost: halb\r\n\r\n")
			b, err := io.ReadAll(c)
			c.Close()
			body = string(b)
			return err
		}
		return last
	})
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// serveFakeStatus is what a local user could serve at a control socket
// path they made: a state of their choosing. It says "ready" on stdout
// once it listens, and serves until killed.
func serveFakeStatus(sock string) {
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println("ready")
	_ = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `{"datapath":"xdp","instances":[{"name":"VI_FAKE","state":"MASTER"}]}`)
	}))
}

// halb status believes only a daemon that runs as root or as the caller
// (SO_PEERCRED): root asking a socket a local user serves is refused and
// shown nothing; that user asking their own is answered.
func TestStatusRefusesUntrustedPeer(t *testing.T) {
	netnstest.Require(t)
	uid := unusedUID(t)
	// A directory the user can reach, with a copy of this binary (the
	// build directory is root's alone) and a directory of the user's.
	dir, err := os.MkdirTemp("", "halb-peercred-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "halb.test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	theirs := filepath.Join(dir, "user")
	if err := os.Mkdir(theirs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(theirs, uid, uid); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(theirs, "halb.sock")
	asUser := func(env string, args ...string) *exec.Cmd {
		cmd := exec.Command("setpriv", append([]string{"--reuid", strconv.Itoa(uid), "--regid", strconv.Itoa(uid), "--clear-groups", bin}, args...)...)
		cmd.Env = append(os.Environ(), env)
		return cmd
	}
	fake := asUser("HALB_TEST_FAKE_STATUS=" + sock)
	out, err := fake.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := fake.Start(); err != nil {
		t.Fatalf("setpriv: %v", err)
	}
	t.Cleanup(func() { _ = fake.Process.Kill(); _ = fake.Wait() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "ready\n" {
		t.Fatalf("the fake daemon did not start: %q %v", line, err)
	}

	code, stdout, stderr := run(t, "status", "-s", sock)
	if code != exitFailure || strings.Contains(stdout, "VI_FAKE") {
		t.Errorf("root asking a socket uid %d serves: exit %d, shown:\n%s", uid, code, stdout)
	}
	if want := fmt.Sprintf("comes from uid %d (pid %d), not root", uid, fake.Process.Pid); !strings.Contains(stderr, want) {
		t.Errorf("the refusal does not say %q:\n%s", want, stderr)
	}

	// The user's own daemon, to the user, is theirs to believe.
	mine, err := asUser("HALB_TEST_MAIN=1", "status", "--json", "-s", sock).CombinedOutput()
	if err != nil || !strings.Contains(string(mine), "VI_FAKE") {
		t.Errorf("uid %d asking its own socket: %v\n%s", uid, err, mine)
	}
}

// unusedUID is a uid no account has.
func unusedUID(t *testing.T) int {
	t.Helper()
	for uid := 64000; uid < 65000; uid++ {
		if _, err := user.LookupId(strconv.Itoa(uid)); err != nil {
			return uid
		}
	}
	t.Fatal("no unused uid in 64000..64999")
	return 0
}
