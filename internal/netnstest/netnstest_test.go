package netnstest

import (
	"errors"
	"net"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// A link made inside a test namespace must not appear on the host, and the
// namespace must be reachable by name for external programs.
func TestNamespaceIsolation(t *testing.T) {
	ns := New(t)
	h := ns.Netlink(t)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "halbdummy0"}, PeerName: "halbdummy1"}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatalf("add veth pair: %v", err)
	}
	if _, err := netlink.LinkByName("halbdummy0"); err == nil {
		t.Fatal("link made in the test namespace is visible in the host namespace")
	}

	var seen []string
	err := ns.Do(func() error {
		ifs, err := net.Interfaces()
		for _, i := range ifs {
			seen = append(seen, i.Name)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(seen)
	if strings.Join(seen, ",") != "halbdummy0,halbdummy1,lo" {
		t.Fatalf("interfaces inside the namespace = %v, want [halbdummy0 halbdummy1 lo]", seen)
	}

	out, err := exec.Command("ip", "netns", "exec", ns.Name, "ip", "-o", "link", "show", "halbdummy0").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns exec %s: %v: %s", ns.Name, err, out)
	}

	cmd := exec.Command("cat", "/proc/self/net/dev")
	var buf strings.Builder
	cmd.Stdout = &buf
	if err := ns.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "halbdummy0") {
		t.Fatalf("a command started in the namespace does not see its links:\n%s", buf.String())
	}
}

func TestDoReturnsError(t *testing.T) {
	ns := New(t)
	want := errors.New("boom")
	if err := ns.Do(func() error { return want }); !errors.Is(err, want) {
		t.Fatalf("Do error = %v, want %v", err, want)
	}
}
