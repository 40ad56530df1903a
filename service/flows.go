package service

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// FlowLister is the part of a Datapath that lists the flows it holds
// open, for `halb flows`: the eBPF data path from its conntrack map
// (halb_ct), IPVS from its connection table. Both data paths and Split
// have it; the daemon asks for it by type, so that a test's fake data
// path need not.
type FlowLister interface {
	// Flows lists at most q.Limit of the flows of q.Service (all when
	// ""), and counts those it read. It reads in bounded memory and
	// time: a table larger than its scan bound is read in part, and the
	// list says so (FlowList.Partial).
	Flows(ctx context.Context, q FlowQuery) (FlowList, error)
}

// FlowQuery is what `halb flows` asks for.
type FlowQuery struct {
	Service string `json:"service,omitempty"` // a configured service's name; "" for all
	Limit   int    `json:"limit"`             // the most flows to return; counted beyond it
}

// DefaultFlowLimit is how many flows `halb flows` shows unless told.
const DefaultFlowLimit = 1000

// MaxFlowLimit is the most flows one listing may ask for: the daemon
// holds, sorts and encodes the list within its timeout, and a listing of
// 100 000 flows took it 5 s or more and grew it by 45 MB. More is refused
// (400; the CLI exits 2); --service narrows a larger table.
const MaxFlowLimit = 10000

// Flow is one open flow, client to VIP. Its JSON is part of the control
// socket's contract (`halb flows --json`).
type Flow struct {
	Client netip.AddrPort `json:"client"`
	Key    Key            `json:"vip"`
	// Service is the name of the configured service at Key; "" when the
	// data path no longer serves Key.
	Service string `json:"service"`
	// Backend is where the flow goes; invalid when the backend the flow
	// was given is no longer in use (removed since: its next packet is
	// scheduled again), and then BackendID says which it was.
	Backend   netip.AddrPort `json:"backend,omitzero"`
	BackendID uint32         `json:"backend_id,omitempty"` // eBPF: the id in halb_ct
	// SourcePort is the port a full NAT flow was given toward its
	// backend; 0 for other flows.
	SourcePort uint16 `json:"source_port,omitempty"`
	// AgeSeconds and Packets are what the eBPF data path counts; nil for
	// IPVS, whose connection table keeps neither.
	AgeSeconds *int64  `json:"age_seconds"`
	Packets    *uint64 `json:"packets"`
	// State and ExpiresSeconds are IPVS's: the connection's state
	// ("ESTABLISHED") and the seconds until IPVS forgets it.
	State          string `json:"state,omitempty"`
	ExpiresSeconds *int64 `json:"expires_seconds,omitempty"`
}

// FlowList is a FlowLister's answer.
type FlowList struct {
	Flows []Flow `json:"flows"`
	// Total counts the flows that matched the query, listed or not.
	Total int `json:"total"`
	// Partial: the table held more than the scan bound, so Total counts
	// only what was read.
	Partial bool `json:"partial,omitempty"`
}

// ErrFlowsUnsupported is a data path that cannot list its flows.
var ErrFlowsUnsupported = errors.New("this data path cannot list its flows")

// Keep adds f to l when it matches q: it counts every match and keeps
// the first q.Limit. It reports whether f matched.
func (l *FlowList) Keep(q FlowQuery, f Flow) bool {
	if q.Service != "" && f.Service != q.Service {
		return false
	}
	l.Total++
	if len(l.Flows) < q.Limit {
		l.Flows = append(l.Flows, f)
	}
	return true
}

// Sort puts the listed flows in a stable order: by service, then VIP
// (Key.Compare), then client. Which flows a limit keeps is the table's
// order; this is only what `halb flows` prints. It allocates nothing.
func (l *FlowList) Sort() {
	slices.SortFunc(l.Flows, func(a, b Flow) int {
		if c := strings.Compare(a.Service, b.Service); c != 0 {
			return c
		}
		if c := a.Key.Compare(b.Key); c != 0 {
			return c
		}
		return a.Client.Compare(b.Client)
	})
}

// Flows lists both halves' flows, the first's first, within one limit.
func (s *Split) Flows(ctx context.Context, q FlowQuery) (FlowList, error) {
	var out FlowList
	var errs []error
	for _, dp := range s.open() {
		fl, ok := dp.(FlowLister)
		if !ok {
			continue
		}
		part, err := fl.Flows(ctx, FlowQuery{Service: q.Service, Limit: max(q.Limit-len(out.Flows), 0)})
		errs = append(errs, err)
		out.Flows = append(out.Flows, part.Flows...)
		out.Total += part.Total
		out.Partial = out.Partial || part.Partial
	}
	if err := ctx.Err(); err != nil {
		return FlowList{}, fmt.Errorf("flows: %w", err)
	}
	out.Sort()
	return out, errors.Join(errs...)
}

var _ FlowLister = (*Split)(nil)
