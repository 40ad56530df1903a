package vrrp

import (
	"bytes"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

var testMAC = net.HardwareAddr{0x00, 0x00, 0x5e, 0x00, 0x01, 0x33}

func TestGratuitousARP(t *testing.T) {
	vip := netip.MustParseAddr("192.0.2.100")
	frame, err := GratuitousARP(testMAC, vip)
	if err != nil {
		t.Fatal(err)
	}
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	eth, _ := p.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	a, _ := p.Layer(layers.LayerTypeARP).(*layers.ARP)
	if eth == nil || a == nil {
		t.Fatalf("not an Ethernet ARP frame: %v", p)
	}
	if !bytes.Equal(eth.DstMAC, broadcastMAC) || !bytes.Equal(eth.SrcMAC, testMAC) {
		t.Errorf("ethernet %s -> %s", eth.SrcMAC, eth.DstMAC)
	}
	if a.Operation != layers.ARPRequest || !bytes.Equal(a.SourceHwAddress, testMAC) ||
		!bytes.Equal(a.SourceProtAddress, vip.AsSlice()) || !bytes.Equal(a.DstProtAddress, vip.AsSlice()) {
		t.Errorf("ARP = %+v, want a request from %s with sender and target %s", a, testMAC, vip)
	}
}

func TestUnsolicitedNA(t *testing.T) {
	src := netip.MustParseAddr("fe80::1")
	vip := netip.MustParseAddr("2001:db8::100")
	frame, err := UnsolicitedNA(testMAC, src, vip)
	if err != nil {
		t.Fatal(err)
	}
	p := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	ip6, _ := p.Layer(layers.LayerTypeIPv6).(*layers.IPv6)
	icmp, _ := p.Layer(layers.LayerTypeICMPv6).(*layers.ICMPv6)
	na, _ := p.Layer(layers.LayerTypeICMPv6NeighborAdvertisement).(*layers.ICMPv6NeighborAdvertisement)
	if ip6 == nil || icmp == nil || na == nil {
		t.Fatalf("not an IPv6 neighbor advertisement: %v", p)
	}
	if ip6.HopLimit != 255 || !ip6.DstIP.Equal(net.ParseIP("ff02::1")) || !ip6.SrcIP.Equal(net.ParseIP("fe80::1")) {
		t.Errorf("IPv6 header %+v", ip6)
	}
	if !na.Override() || na.Solicited() || !na.TargetAddress.Equal(net.IP(vip.AsSlice())) {
		t.Errorf("NA flags/target = %+v", na)
	}
	if len(na.Options) != 1 || na.Options[0].Type != layers.ICMPv6OptTargetAddress || !bytes.Equal(na.Options[0].Data, testMAC) {
		t.Errorf("NA options = %+v, want the target link-layer address", na.Options)
	}
	// Re-serialising with checksums computed must give the same bytes.
	if err := icmp.SetNetworkLayerForChecksum(ip6); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializePacket(buf, gopacket.SerializeOptions{ComputeChecksums: true}, p); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), frame) {
		t.Errorf("checksum mismatch:\n got %x\nwant %x", frame, buf.Bytes())
	}
}
