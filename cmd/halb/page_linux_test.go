package main

import (
	"bytes"
	"context"
	"image"
	"image/png"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/halb-lb/halb/internal/halbtest"
	"github.com/halb-lb/halb/internal/netnstest"
)

// The status page in Debian's chromium, headless, against a running
// pair: halb A (priority 150, a service on the eBPF data path whose one
// backend answers its check and whose other does not) and halb B
// (priority 100) over one link. A's page, as chromium renders it, shows
// A MASTER and the failed backend marked failed, and its screenshot is a
// PNG of the window's size with the failed backend's red in it; B's shows
// B BACKUP.
//
// chromium runs as root with --no-sandbox: the test is root (it makes
// the namespaces), chromium refuses root without it, and the page it
// loads is halb's own, served in the test's namespace, not the web's.
func TestStatusPageInChromium(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		netnstest.SkipOrFail(t, "chromium is not installed (Debian: apt-get install chromium)")
	}
	a, b := netnstest.New(t), netnstest.New(t)
	peerLink(t, a, b) // a: 198.51.100.1, b: 198.51.100.2, both on eth0
	// The answering backend is a listener in B's namespace.
	var backend net.Listener
	if err := b.Do(func() (err error) { backend, err = net.Listen("tcp", "198.51.100.2:80"); return err }); err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	go func() {
		for {
			c, err := backend.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	fs := bpffsOfTest(t)
	dir := t.TempDir()
	start := func(ns *netnstest.NS, name string, priority int, extra string) (*daemonProc, string) {
		addr := halbtest.FreeAddr(t)
		cfg := filepath.Join(dir, name+".yaml")
		if err := os.WriteFile(cfg, []byte(`control: {socket: `+filepath.Join(dir, name+".sock")+`, metrics: "`+addr+`"}
vrrp:
  instances:
    - {name: VI_`+name+`, interface: eth0, vrid: 51, priority: `+strconv.Itoa(priority)+`, advert_interval: 1s, virtual_ips: [192.0.2.100/24]}
`+extra), 0o600); err != nil {
			t.Fatal(err)
		}
		return startHalbIn(t, ns, "run", "-c", cfg), addr
	}
	pa, addrA := start(a, "A", 150, `datapath: {mode: xdp, interfaces: [eth0], bpffs: `+filepath.Join(fs, "halb")+`}
services:
  - name: web
    vip: 192.0.2.100
    port: 80
    backends: [{address: 198.51.100.2}, {address: 198.51.100.12}]
    health_check: {type: tcp, interval: 1s, timeout: 500ms}
`)
	pb, addrB := start(b, "B", 100, "")
	pa.waitForAll(t, "services programmed", "to=MASTER")
	pb.waitFor(t, "to=BACKUP")

	chrome := func(ns *netnstest.NS, args ...string) []byte {
		t.Helper()
		args = append([]string{"netns", "exec", ns.Name, chromium, "--headless", "--no-sandbox", "--disable-gpu",
			"--user-data-dir=" + t.TempDir(), "--hide-scrollbars"}, args...)
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second) // bounds a hang only
		defer cancel()
		cmd := exec.CommandContext(ctx, "ip", args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("chromium %v: %v\n%s", args, err, stderr.String())
		}
		return out
	}
	urlA, urlB := "http://"+addrA+"/", "http://"+addrB+"/"

	var dom string
	failedRow := regexp.MustCompile(`<tr class="backend failed"><td>198\.51\.100\.12:80</td><td>unhealthy</td>`)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		dom = string(chrome(a, "--dump-dom", urlA))
		if failedRow.MatchString(dom) || time.Now().After(deadline) {
			break
		}
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`<td>VI_A</td><td>eth0</td><td class="n">51</td><td class="state MASTER">MASTER</td><td class="n">150</td>`),
		failedRow,
		regexp.MustCompile(`<tr class="backend "><td>198\.51\.100\.2:80</td><td>healthy</td>`),
	} {
		if !want.MatchString(dom) {
			t.Errorf("A's page as chromium renders it lacks %s:\n%s", want, dom)
		}
	}
	if dom := string(chrome(b, "--dump-dom", urlB)); !regexp.MustCompile(`<td>VI_B</td><td>eth0</td><td class="n">51</td><td class="state BACKUP">BACKUP</td>`).MatchString(dom) {
		t.Errorf("B's page lacks VI_B BACKUP:\n%s", dom)
	}

	shot := filepath.Join(t.TempDir(), "a.png")
	chrome(a, "--screenshot="+shot, "--window-size=1200,800", urlA)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("the screenshot is no PNG: %v", err)
	}
	if got := img.Bounds().Size(); got != image.Pt(1200, 800) {
		t.Errorf("screenshot %v, want 1200x800", got)
	}
	// The failed backend's row is #dc2626 (page.go's failedColour).
	if n := countColour(img, 0xdc, 0x26, 0x26); n < 2000 {
		t.Errorf("%d pixels of the failed backend's red in the screenshot, want a row's worth (2000 or more)", n)
	} else {
		t.Logf("%d pixels of the failed backend's red", n)
	}
	// A's MASTER cell is #16a34a (masterColour).
	if n := countColour(img, 0x16, 0xa3, 0x4a); n < 300 {
		t.Errorf("%d pixels of MASTER's green in the screenshot, want a cell's worth (300 or more)", n)
	}
	if t.Failed() {
		_ = exec.Command("cp", shot, filepath.Join(os.TempDir(), "halb-status-page.png")).Run()
		t.Logf("screenshot kept at %s", filepath.Join(os.TempDir(), "halb-status-page.png"))
	}
}

// countColour counts img's pixels within a little of r, g, b (colour
// management may move a channel by a step or two).
func countColour(img image.Image, r, g, b uint8) int {
	near := func(c uint32, want uint8) bool { d := int(c>>8) - int(want); return d >= -3 && d <= 3 }
	n := 0
	for y := img.Bounds().Min.Y; y < img.Bounds().Max.Y; y++ {
		for x := img.Bounds().Min.X; x < img.Bounds().Max.X; x++ {
			cr, cg, cb, _ := img.At(x, y).RGBA()
			if near(cr, r) && near(cg, g) && near(cb, b) {
				n++
			}
		}
	}
	return n
}
