package bgp

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/osrg/gobgp/v4/pkg/apiutil"
	gobgp "github.com/osrg/gobgp/v4/pkg/packet/bgp"

	"github.com/halb-lb/halb/config"
)

// Attrs are the path attributes a route is announced with.
type Attrs struct {
	Communities      []uint32    // RFC 1997, high 16 bits the ASN
	LargeCommunities [][3]uint32 // RFC 8092
	LocalPref        uint32      // sent to iBGP peers only; GoBGP strips it towards eBGP ones
	MED              uint32
}

// AttrsOf is the Attrs a service's announce key asks for; Validate has
// checked its communities.
func AttrsOf(a config.Announce) (Attrs, error) {
	out := Attrs{LocalPref: a.LocalPref, MED: a.MED}
	for _, c := range a.Communities {
		v, err := config.ParseCommunity(c)
		if err != nil {
			return Attrs{}, err
		}
		out.Communities = append(out.Communities, v)
	}
	for _, c := range a.LargeCommunities {
		v, err := config.ParseLargeCommunity(c)
		if err != nil {
			return Attrs{}, err
		}
		out.LargeCommunities = append(out.LargeCommunities, v)
	}
	return out, nil
}

func (a Attrs) clone() Attrs {
	a.Communities = slices.Clone(a.Communities)
	a.LargeCommunities = slices.Clone(a.LargeCommunities)
	return a
}

func (a Attrs) equal(b Attrs) bool {
	return a.LocalPref == b.LocalPref && a.MED == b.MED &&
		slices.Equal(a.Communities, b.Communities) && slices.Equal(a.LargeCommunities, b.LargeCommunities)
}

// path is GoBGP's form of r: origin IGP, next hop unspecified, which
// GoBGP replaces with this node's address on each session (next hop
// self).
func path(r Route) (*apiutil.Path, error) {
	nlri, err := gobgp.NewIPAddrPrefix(r.Prefix)
	if err != nil {
		return nil, fmt.Errorf("bgp prefix %s: %w", r.Prefix, err)
	}
	attrs := []gobgp.PathAttributeInterface{gobgp.NewPathAttributeOrigin(gobgp.BGP_ORIGIN_ATTR_TYPE_IGP)}
	family := gobgp.RF_IPv4_UC
	if r.Prefix.Addr().Is4() {
		nh, err := gobgp.NewPathAttributeNextHop(netip.IPv4Unspecified())
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, nh)
	} else {
		family = gobgp.RF_IPv6_UC
		mp, err := gobgp.NewPathAttributeMpReachNLRI(family, []gobgp.PathNLRI{{NLRI: nlri}}, netip.IPv6Unspecified())
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, mp)
	}
	attrs = append(attrs, gobgp.NewPathAttributeLocalPref(r.Attrs.LocalPref), gobgp.NewPathAttributeMultiExitDisc(r.Attrs.MED))
	if len(r.Attrs.Communities) > 0 {
		attrs = append(attrs, gobgp.NewPathAttributeCommunities(r.Attrs.Communities))
	}
	if len(r.Attrs.LargeCommunities) > 0 {
		large := make([]*gobgp.LargeCommunity, len(r.Attrs.LargeCommunities))
		for i, c := range r.Attrs.LargeCommunities {
			large[i] = gobgp.NewLargeCommunity(c[0], c[1], c[2])
		}
		attrs = append(attrs, gobgp.NewPathAttributeLargeCommunities(large))
	}
	return &apiutil.Path{Family: family, Nlri: nlri, Attrs: attrs, Age: time.Now().Unix()}, nil
}

// addPath announces r on the running server; the caller holds op.
func (s *Speaker) addPath(r Route) error {
	p, err := path(r)
	if err == nil {
		_, err = s.srv.AddPath(apiutil.AddPathRequest{Paths: []*apiutil.Path{p}})
	}
	if err != nil {
		return fmt.Errorf("announce %s: %w", r.Prefix, err)
	}
	s.log.Info("bgp route announced", "prefix", r.Prefix, "reason", r.Reason)
	return nil
}

// deletePath withdraws r from the running server; the caller holds op.
func (s *Speaker) deletePath(r Route) error {
	p, err := path(r)
	if err == nil {
		err = s.srv.DeletePath(apiutil.DeletePathRequest{Paths: []*apiutil.Path{p}})
	}
	if err != nil {
		return fmt.Errorf("withdraw %s: %w", r.Prefix, err)
	}
	s.log.Info("bgp route withdrawn", "prefix", r.Prefix)
	return nil
}
