package vrrp

import (
	"bytes"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// The nf_tables objects the Accept_Mode filter lives in. The table is
// halb's alone, so rebuilding it never touches anyone else's rules:
// `nft list table inet halb_accept` shows it, with a drop counter per VIP.
const (
	AcceptTableName = "halb_accept"
	acceptChainName = "input"
)

// AcceptTable keeps the Accept_Mode filter in the kernel's nf_tables.
type AcceptTable struct {
	conn  *nftables.Conn
	table *nftables.Table
}

// OpenAcceptTable prepares to manage the filter in the network namespace
// behind netnsFD, or in the caller's when netnsFD is 0. It opens nothing
// yet: each change dials netlink for its one batch.
func OpenAcceptTable(netnsFD int) (*AcceptTable, error) {
	var opts []nftables.ConnOption
	if netnsFD != 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFD))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return &AcceptTable{conn: conn, table: &nftables.Table{Family: nftables.TableFamilyINet, Name: AcceptTableName}}, nil
}

// Apply makes the table hold exactly rules, in one atomic batch: the old
// table is deleted and the new one made in the same transaction, so no
// packet ever sees half of it. No rules removes the table.
func (t *AcceptTable) Apply(rules []AcceptRule) error {
	if len(rules) == 0 {
		return t.Remove()
	}
	// Adding first makes the delete succeed whether or not the table was
	// there.
	t.conn.AddTable(t.table)
	t.conn.DelTable(t.table)
	t.conn.AddTable(t.table)
	policy := nftables.ChainPolicyAccept
	chain := t.conn.AddChain(&nftables.Chain{
		Name:     acceptChainName,
		Table:    t.table,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookInput,
		Priority: nftables.ChainPriorityFilter,
		Policy:   &policy,
	})
	for _, r := range rules {
		t.conn.AddRule(&nftables.Rule{
			Table:    t.table,
			Chain:    chain,
			Exprs:    ruleExprs(r),
			UserData: userdata.AppendString(nil, userdata.TypeComment, r.Comment),
		})
	}
	if err := t.conn.Flush(); err != nil {
		return fmt.Errorf("install nftables table inet %s: %w", AcceptTableName, err)
	}
	return nil
}

// Remove deletes the table; a table that is not there is no error, nor is
// a kernel without nf_tables, where there can be no table to delete.
func (t *AcceptTable) Remove() error {
	if _, err := t.conn.ListTableOfFamily(AcceptTableName, nftables.TableFamilyINet); err != nil {
		return nil
	}
	t.conn.DelTable(t.table)
	if err := t.conn.Flush(); err != nil {
		return fmt.Errorf("delete nftables table inet %s: %w", AcceptTableName, err)
	}
	return nil
}

// Installed reports whether the table is in the kernel.
func (t *AcceptTable) Installed() bool {
	_, err := t.conn.ListTableOfFamily(AcceptTableName, nftables.TableFamilyINet)
	return err == nil
}

// Holds reports whether the kernel holds exactly the table Apply(rules)
// made: the one chain, hooked as Apply hooks it, with rules's rules in
// order (counters aside). It returns why not: a table that `nft flush
// ruleset` removed, or one someone changed. Any error reading the table
// counts as not holding it.
func (t *AcceptTable) Holds(rules []AcceptRule) (bool, string) {
	if !t.Installed() {
		return false, "the table is gone"
	}
	chains, err := t.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, "listing its chains: " + err.Error()
	}
	var chain *nftables.Chain
	n := 0
	for _, c := range chains {
		if c.Table == nil || c.Table.Name != AcceptTableName {
			continue
		}
		n++
		if c.Name == acceptChainName {
			chain = c
		}
	}
	switch {
	case chain == nil:
		return false, "its chain " + acceptChainName + " is gone"
	case n != 1:
		return false, fmt.Sprintf("it has %d chains, not halb's one", n)
	case chain.Hooknum == nil || *chain.Hooknum != *nftables.ChainHookInput ||
		chain.Priority == nil || *chain.Priority != *nftables.ChainPriorityFilter ||
		chain.Policy == nil || *chain.Policy != nftables.ChainPolicyAccept || chain.Type != nftables.ChainTypeFilter:
		return false, "its chain " + acceptChainName + " is hooked otherwise"
	}
	got, err := t.conn.GetRules(t.table, chain)
	if err != nil {
		return false, "listing its rules: " + err.Error()
	}
	if len(got) != len(rules) {
		return false, fmt.Sprintf("it has %d rules, not halb's %d", len(got), len(rules))
	}
	for i, r := range rules {
		if !sameExprs(got[i].Exprs, ruleExprs(r)) {
			return false, fmt.Sprintf("rule %d is not halb's", i+1)
		}
	}
	return true, ""
}

// sameExprs compares a rule read from the kernel with one Apply made,
// counters' values aside, by their netlink encoding.
func sameExprs(got, want []expr.Any) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if _, ok := got[i].(*expr.Counter); ok {
			if _, ok := want[i].(*expr.Counter); !ok {
				return false
			}
			continue
		}
		a, err1 := expr.Marshal(byte(nftables.TableFamilyINet), got[i])
		b, err2 := expr.Marshal(byte(nftables.TableFamilyINet), want[i])
		if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
			return false
		}
	}
	return true
}

// Counters returns the drop counters' packet counts in rule order, one per
// filtered VIP.
func (t *AcceptTable) Counters() ([]uint64, error) {
	chain := &nftables.Chain{Name: acceptChainName, Table: t.table}
	rules, err := t.conn.GetRules(t.table, chain)
	if err != nil {
		return nil, fmt.Errorf("list nftables table inet %s: %w", AcceptTableName, err)
	}
	var out []uint64
	for _, r := range rules {
		for _, e := range r.Exprs {
			if c, ok := e.(*expr.Counter); ok {
				out = append(out, c.Packets)
			}
		}
	}
	return out, nil
}

// ruleExprs compiles one rule into nf_tables expressions: the family, the
// destination address, then the protocol matches, then the verdict.
func ruleExprs(r AcceptRule) []expr.Any {
	nfproto, dstOff := byte(unix.NFPROTO_IPV4), uint32(16) // iphdr.daddr
	if r.Dst.Is6() {
		nfproto, dstOff = unix.NFPROTO_IPV6, 24 // ipv6hdr.daddr
	}
	dst := r.Dst.AsSlice()
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: dstOff, Len: uint32(len(dst))},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: dst},
	}
	if r.Proto != 0 {
		e = append(e,
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{r.Proto}})
	}
	switch r.Proto {
	case protoTCP, protoUDP:
		if r.Port != 0 {
			e = append(e,
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}, // dest port
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(r.Port)})
		}
	case protoICMP, protoICMPv6:
		e = append(e, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1}) // type
		if r.TypeMin == r.TypeMax {
			e = append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{r.TypeMin}})
		} else {
			e = append(e, &expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: []byte{r.TypeMin}, ToData: []byte{r.TypeMax}})
		}
	}
	if r.Drop {
		return append(e, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})
	}
	return append(e, &expr.Verdict{Kind: expr.VerdictAccept})
}

// LeaveOutHostAddrs drops from rules those for a VIP that is on one of the
// host's interfaces without halb's mark (vip_linux.go): the host's own
// address given as a VIP, RFC 5798's address owner, which accepts its
// traffic whatever Accept_Mode says. Filtering it would drop the host's
// own traffic, ssh included, on every node and in every state. It returns
// the VIPs left out; when the addresses cannot be read, rules as they are.
func LeaveOutHostAddrs(rules []AcceptRule) ([]AcceptRule, []netip.Addr) {
	if len(rules) == 0 {
		return rules, nil
	}
	addrs, err := dumpAddrs()
	if err != nil {
		return rules, nil
	}
	host := map[netip.Addr]bool{}
	for _, e := range addrs {
		if e.proto != halbAddrProto {
			host[e.prefix.Addr()] = true
		}
	}
	var kept []AcceptRule
	var out []netip.Addr
	for _, r := range rules {
		if !host[r.Dst] {
			kept = append(kept, r)
			continue
		}
		if r.Drop {
			out = append(out, r.Dst)
		}
	}
	return kept, out
}
