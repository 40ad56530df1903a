package loader

import (
	"net/netip"
	"testing"
)

// TestVIPBook covers the bookkeeping that lets a service write skip the
// walk of halb_services: services counted per VIP and family, the VIPs
// halb_vips holds, and the last-byte filter derived from them.
func TestVIPBook(t *testing.T) {
	key := func(s string) halbVipKey {
		t.Helper()
		a, f, err := addrOf(netip.MustParseAddr(s))
		if err != nil {
			t.Fatal(err)
		}
		return halbVipKey{Addr: a, Family: f}
	}
	a, b := key("198.51.100.10"), key("2001:db8::a") // the same last byte, 10
	c := key("198.51.100.11")

	book := newVIPBook()
	book.services[a] += 2
	book.services[c]++
	book.forget(a)
	if n := book.services[a]; n != 1 {
		t.Errorf("services on %v after two and one forgotten: %d, want 1", a, n)
	}
	book.forget(c)
	if _, ok := book.services[c]; ok {
		t.Errorf("a VIP with no service left is still counted: %v", book.services)
	}
	book.forget(c) // forgetting what is not there leaves it so
	if _, ok := book.services[c]; ok {
		t.Errorf("forgetting a VIP not counted made it counted: %v", book.services)
	}

	if last := book.lastFilter(&c); last[11] != 1 || last[10] != 0 {
		t.Errorf("filter with nothing held and %v also: bytes 10 %d and 11 %d, want 0 and 1", c, last[10], last[11])
	}
	book.hold(a, 1)
	book.hold(b, 3)
	book.hold(b, 4) // a new count for a VIP held already
	if book.lastBytes[10] != 2 {
		t.Errorf("two VIPs held with last byte 10 count %d", book.lastBytes[10])
	}
	book.drop(a)
	if last := book.lastFilter(nil); last[10] != 1 {
		t.Errorf("one of two VIPs with last byte 10 dropped took the byte out of the filter")
	}
	book.drop(b)
	book.drop(b) // dropping what is not held leaves it so
	if last := book.lastFilter(nil); last != ([256]uint8{}) || len(book.held) != 0 {
		t.Errorf("nothing held, yet the filter is %v and held %v", last, book.held)
	}
}
