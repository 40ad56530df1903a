package ipvs

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/halb-lb/halb/service"
)

// connTable is /proc/net/ip_vs_conn as ip_vs_conn_seq_show writes it:
// IPv4 in hex, IPv6 in full (%pI6), a persistence engine's data after the
// expiry, then lines the parser must skip: SCTP, garbage, a line the
// kernel cut short.
const connTable = `Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
TCP CB007107 9C40 C000020A 0050 C633640B 0050 ESTABLISHED     899
TCP CB007108 9C41 C000020A 0050 C633640C 0050 FIN_WAIT          7
UDP CB007107 D431 C0000235 0035 C633640D 0035 UDP             281 sip 3c26700b
TCP 2001:0db8:00ff:0000:0000:0000:0000:0007 C350 2001:0db8:0000:0000:0000:0000:0000:0010 01BB 2001:0db8:0001:0000:0000:0000:0000:0011 01BB ESTABLISHED     898
SCTP CB007107 9C42 C000020A 0050 C633640B 0050 ESTABLISHED     899
TCP zz
TCP CB007109 9C43 C000020A 00
`

// TestParseConns reads the table above: each TCP and UDP connection with
// its three ends, state and expiry, and the lines it skips counted.
func TestParseConns(t *testing.T) {
	var got []conn
	complete, bad, err := parseConns(context.Background(), strings.NewReader(connTable), connScanMax, func(c conn) { got = append(got, c) })
	if err != nil || !complete || bad != 3 {
		t.Fatalf("complete %v, %d bad lines, err %v; want complete, 3 bad (SCTP, garbage, cut short), no error", complete, bad, err)
	}
	ap := netip.MustParseAddrPort
	want := []conn{
		{service.TCP, ap("203.0.113.7:40000"), ap("192.0.2.10:80"), ap("198.51.100.11:80"), "ESTABLISHED", 899},
		{service.TCP, ap("203.0.113.8:40001"), ap("192.0.2.10:80"), ap("198.51.100.12:80"), "FIN_WAIT", 7},
		{service.UDP, ap("203.0.113.7:54321"), ap("192.0.2.53:53"), ap("198.51.100.13:53"), "UDP", 281},
		{service.TCP, ap("[2001:db8:ff::7]:50000"), ap("[2001:db8::10]:443"), ap("[2001:db8:1::11]:443"), "ESTABLISHED", 898},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("parsed\n%v\nwant\n%v", got, want)
	}
}

// A table larger than the scan bound is read in part, and says so; a line
// longer than any the kernel writes stops the read with an error.
func TestParseConnsBounded(t *testing.T) {
	var b strings.Builder
	b.WriteString("Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData\n")
	for i := range 3000 {
		fmt.Fprintf(&b, "TCP CB0071%02X %04X C000020A 0050 C633640B 0050 ESTABLISHED     899\n", i%256, i)
	}
	n := 0
	complete, bad, err := parseConns(context.Background(), strings.NewReader(b.String()), 1000, func(conn) { n++ })
	if err != nil || complete || bad != 0 || n != 999 {
		t.Errorf("with a bound of 1000 lines: %d connections, complete %v, %d bad, err %v; want 999 (after the header), partial", n, complete, bad, err)
	}
	long := "TCP " + strings.Repeat("C", 2*connLineMax) + "\n"
	if _, _, err := parseConns(context.Background(), strings.NewReader(connTable+long), connScanMax, func(conn) {}); err == nil {
		t.Error("a line longer than connLineMax was read without an error")
	}
}

// connKernel is the fake IPVS with a connection table to show.
type connKernel struct {
	*fakeIPVS
	table string
}

func (k connKernel) Conns() (io.ReadCloser, error) {
	return io.NopCloser(strings.NewReader(k.table)), nil
}

// TestFlows lists the connections of halb's services, named, filtered and
// limited; those of services halb does not serve are left out, and age and
// packets, which IPVS does not keep, stay unknown.
func TestFlows(t *testing.T) {
	k := connKernel{fakeIPVS: &fakeIPVS{}, table: connTable}
	d, err := New(k, Options{Modules: &fakeModules{}, StateFile: filepath.Join(t.TempDir(), "state")})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx := context.Background()
	web := svc("web", "192.0.2.10:80", service.TCP, "rr", service.DR, be("198.51.100.11:80", 1), be("198.51.100.12:80", 1))
	web6 := svc("web6", "[2001:db8::10]:443", service.TCP, "rr", service.DR, be("[2001:db8:1::11]:443", 1))
	if err := d.Apply(ctx, []service.Service{web, web6}); err != nil { // not the UDP service
		t.Fatal(err)
	}
	list, err := d.Flows(ctx, service.FlowQuery{Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	if list.Total != 3 || len(list.Flows) != 3 || list.Partial {
		t.Fatalf("listed %d of %d (partial %v), want the 3 connections of web and web6: %+v", len(list.Flows), list.Total, list.Partial, list.Flows)
	}
	f := list.Flows[0]
	if f.Service != "web" || f.Client != netip.MustParseAddrPort("203.0.113.7:40000") || f.Backend != netip.MustParseAddrPort("198.51.100.11:80") ||
		f.State != "ESTABLISHED" || f.ExpiresSeconds == nil || *f.ExpiresSeconds != 899 || f.AgeSeconds != nil || f.Packets != nil {
		t.Errorf("first flow %+v, want web's from 203.0.113.7:40000 to 198.51.100.11:80, ESTABLISHED, expiring in 899 s, no age or packets", f)
	}
	list, err = d.Flows(ctx, service.FlowQuery{Service: "web6", Limit: 100})
	if err != nil || list.Total != 1 || list.Flows[0].Backend != netip.MustParseAddrPort("[2001:db8:1::11]:443") {
		t.Errorf("flows of web6: %+v (%v), want the one to [2001:db8:1::11]:443", list, err)
	}
	list, err = d.Flows(ctx, service.FlowQuery{Service: "web", Limit: 1})
	if err != nil || list.Total != 2 || len(list.Flows) != 1 {
		t.Errorf("flows of web, limit 1: %d of %d (%v), want 1 of 2", len(list.Flows), list.Total, err)
	}
}

// FuzzParseConns: any text reads without a panic, and every connection
// read has three valid ends.
func FuzzParseConns(f *testing.F) {
	f.Add(connTable)
	f.Fuzz(func(t *testing.T, text string) {
		_, _, _ = parseConns(context.Background(), strings.NewReader(text), 100, func(c conn) {
			if !c.client.IsValid() || !c.vip.IsValid() || !c.backend.IsValid() || c.expires < 0 {
				t.Errorf("read %+v from %q", c, text)
			}
		})
	})
}
