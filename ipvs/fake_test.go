package ipvs

import (
	"context"
	"fmt"
	"math"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"

	cfipvs "github.com/cloudflare/ipvs"
	"github.com/cloudflare/ipvs/netmask"

	"github.com/halb-lb/halb/service"
)

// fakeIPVS is IPVS's table in memory, answering as the kernel does through
// cloudflare/ipvs (net/netfilter/ipvs/ip_vs_ctl.c is the reference for each
// errno). It records every call that changes the table, in ipvsadm's
// syntax ("-A -t 192.0.2.10:80 -s rr"), so that tests read like what an
// operator would have typed.
type fakeIPVS struct {
	services []*fakeService
	// missing are schedulers whose module is not loaded: creating or
	// changing a service to use one fails with ENOENT.
	missing map[string]bool
	// fail makes the call with this ipvsadm prefix ("-a", "-D") fail.
	fail map[string]error
	// beforeChange runs before every call that changes the table.
	beforeChange func(call string)
	// listErr is returned by Services instead of the table.
	listErr error

	calls []string // calls that change the table, failed ones too
	// reads counts the netlink listings (Services, Destinations),
	// tableReads the reads of the whole table (Table).
	reads, tableReads int
}

type fakeService struct {
	svc   cfipvs.Service
	dests []cfipvs.Destination
	// What the kernel counted, as Services and Destinations report it.
	stats     cfipvs.Stats
	destStats map[netip.AddrPort]cfipvs.DestinationExtended
}

// kernelErr is an errno as cloudflare/ipvs returns it: wrapped in
// mdlayher/netlink's OpError.
func kernelErr(e syscall.Errno) error { return fmt.Errorf("netlink receive: %w", e) }

func sameID(a, b cfipvs.Service) bool {
	return a.Family == b.Family && a.Protocol == b.Protocol && a.Address == b.Address && a.Port == b.Port && a.FWMark == b.FWMark
}

func (k *fakeIPVS) find(s cfipvs.Service) *fakeService {
	for _, f := range k.services {
		if sameID(f.svc, s) {
			return f
		}
	}
	return nil
}

// change records a call and says whether it should fail.
func (k *fakeIPVS) change(call string) error {
	if k.beforeChange != nil {
		k.beforeChange(call)
	}
	k.calls = append(k.calls, call)
	op, _, _ := strings.Cut(call, " ")
	return k.fail[op]
}

func (k *fakeIPVS) Services() ([]cfipvs.ServiceExtended, error) {
	k.reads++
	if k.listErr != nil {
		return nil, k.listErr
	}
	if len(k.services) == 0 {
		return nil, os.ErrNotExist
	}
	var out []cfipvs.ServiceExtended
	for _, f := range k.services {
		out = append(out, cfipvs.ServiceExtended{Service: f.svc, Stats64: f.stats})
	}
	return out, nil
}

func (k *fakeIPVS) Destinations(s cfipvs.Service) ([]cfipvs.DestinationExtended, error) {
	k.reads++
	f := k.find(s)
	if f == nil || len(f.dests) == 0 {
		// ip_vs_genl_dump_dests dumps nothing for a service it cannot find.
		return nil, os.ErrNotExist
	}
	var out []cfipvs.DestinationExtended
	for _, d := range f.dests {
		x := f.destStats[destKey(d)]
		x.Destination = d
		out = append(out, x)
	}
	return out, nil
}

// checkFull checks what ip_vs_add_service and ip_vs_edit_service check.
func (k *fakeIPVS) checkFull(s cfipvs.Service) error {
	switch {
	case !s.Netmask.IsValid():
		return kernelErr(syscall.EINVAL) // ip_vs_genl_parse_service: no IPVS_SVC_ATTR_NETMASK
	case s.Family == cfipvs.INET6 && (s.Netmask.Bits() < 1 || s.Netmask.Bits() > 128):
		return kernelErr(syscall.EINVAL)
	case k.missing[s.Scheduler]:
		return kernelErr(syscall.ENOENT)
	}
	return nil
}

func (k *fakeIPVS) CreateService(s cfipvs.Service) error {
	if err := k.change("-A " + svcArgs(s)); err != nil {
		return err
	}
	if err := k.checkFull(s); err != nil {
		return err
	}
	if s.Flags&cfipvs.ServiceHashed != 0 {
		// ip_vs_svc_hash refuses a service that says it is hashed already,
		// and the service is then in no hash table: unreachable.
		return fmt.Errorf("fake: CreateService with ServiceHashed set would leave %s unreachable", svcArgs(s))
	}
	if k.find(s) != nil {
		return kernelErr(syscall.EEXIST)
	}
	s.Flags |= cfipvs.ServiceHashed
	k.services = append(k.services, &fakeService{svc: s})
	return nil
}

func (k *fakeIPVS) UpdateService(s cfipvs.Service) error {
	if err := k.change("-E " + svcArgs(s)); err != nil {
		return err
	}
	f := k.find(s)
	if f == nil {
		return kernelErr(syscall.ESRCH)
	}
	if err := k.checkFull(s); err != nil {
		return err
	}
	f.svc.Scheduler, f.svc.Timeout, f.svc.Netmask = s.Scheduler, s.Timeout, s.Netmask
	f.svc.Flags = s.Flags | cfipvs.ServiceHashed
	return nil
}

func (k *fakeIPVS) RemoveService(s cfipvs.Service) error {
	if err := k.change("-D " + svcID(s)); err != nil {
		return err
	}
	f := k.find(s)
	if f == nil {
		return kernelErr(syscall.ESRCH)
	}
	k.services = slices.DeleteFunc(k.services, func(x *fakeService) bool { return x == f })
	return nil
}

func (k *fakeIPVS) destIndex(f *fakeService, d cfipvs.Destination) int {
	return slices.IndexFunc(f.dests, func(x cfipvs.Destination) bool { return x.Address == d.Address && x.Port == d.Port })
}

// checkDest checks what ip_vs_genl_set_cmd and ip_vs_add_dest check.
func checkDest(s cfipvs.Service, d cfipvs.Destination) error {
	switch {
	case d.Family != s.Family && d.FwdMethod != cfipvs.Tunnel:
		return kernelErr(syscall.EINVAL)
	case d.Weight > math.MaxInt32:
		return kernelErr(syscall.EINVAL)
	}
	return nil
}

func (k *fakeIPVS) CreateDestination(s cfipvs.Service, d cfipvs.Destination) error {
	if err := k.change("-a " + destArgs(s, d)); err != nil {
		return err
	}
	f := k.find(s)
	if f == nil {
		return kernelErr(syscall.ESRCH)
	}
	if err := checkDest(f.svc, d); err != nil {
		return err
	}
	if k.destIndex(f, d) >= 0 {
		return kernelErr(syscall.EEXIST)
	}
	f.dests = append(f.dests, d)
	return nil
}

func (k *fakeIPVS) UpdateDestination(s cfipvs.Service, d cfipvs.Destination) error {
	if err := k.change("-e " + destArgs(s, d)); err != nil {
		return err
	}
	f := k.find(s)
	if f == nil {
		return kernelErr(syscall.ESRCH)
	}
	if err := checkDest(f.svc, d); err != nil {
		return err
	}
	i := k.destIndex(f, d)
	if i < 0 {
		return kernelErr(syscall.ENOENT)
	}
	f.dests[i] = d
	return nil
}

func (k *fakeIPVS) RemoveDestination(s cfipvs.Service, d cfipvs.Destination) error {
	if err := k.change(fmt.Sprintf("-d %s -r %s", svcID(s), destKey(d))); err != nil {
		return err
	}
	f := k.find(s)
	if f == nil {
		return kernelErr(syscall.ESRCH)
	}
	i := k.destIndex(f, d)
	if i < 0 {
		return kernelErr(syscall.ENOENT)
	}
	f.dests = slices.Delete(f.dests, i, i+1)
	return nil
}

// Table is the whole table as /proc/net/ip_vs shows it: of a service its
// address, port, protocol, scheduler and persistence, of a destination its
// address, port, method and weight.
func (k *fakeIPVS) Table() (map[service.Key]*current, error) {
	k.tableReads++
	if k.listErr != nil {
		return nil, k.listErr
	}
	have := map[service.Key]*current{}
	for _, f := range k.services {
		key, ok := keyOf(f.svc)
		if !ok {
			continue
		}
		c := &current{svc: cfipvs.Service{Address: f.svc.Address, Port: f.svc.Port, Protocol: f.svc.Protocol,
			Family: f.svc.Family, Scheduler: f.svc.Scheduler, Flags: f.svc.Flags & cfipvs.ServicePersistent}}
		if f.svc.Flags&cfipvs.ServicePersistent != 0 {
			c.persist = fmt.Sprintf("%d FFFFFFFF", f.svc.Timeout*250) // in jiffies, HZ=250 as Debian's
		}
		for _, d := range f.dests {
			c.dests = append(c.dests, cfipvs.Destination{Address: d.Address, Port: d.Port, Family: d.Family, FwdMethod: d.FwdMethod, Weight: d.Weight})
		}
		have[key] = c
	}
	return have, nil
}

// flush is ipvsadm -C.
func (k *fakeIPVS) flush() { k.services = nil }

// add puts a service in the table as someone with ipvsadm would.
func (k *fakeIPVS) add(s cfipvs.Service, dests ...cfipvs.Destination) {
	if !s.Netmask.IsValid() {
		s.Netmask = netmask.MaskFrom(32, 32)
		if s.Family == cfipvs.INET6 {
			s.Netmask = netmask.MaskFrom(128, 128)
		}
	}
	s.Flags |= cfipvs.ServiceHashed
	k.services = append(k.services, &fakeService{svc: s, dests: dests})
}

// table is the whole table, as ipvsadm -S -n writes it, sorted.
func (k *fakeIPVS) table() string {
	var lines []string
	for _, f := range k.services {
		s := f.svc
		s.Flags &^= cfipvs.ServiceHashed
		var block []string
		for _, d := range f.dests {
			block = append(block, "-a "+destArgs(s, d))
		}
		slices.Sort(block)
		lines = append(lines, strings.Join(append([]string{"-A " + svcArgs(s)}, block...), "\n"))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

func svcID(s cfipvs.Service) string {
	if s.FWMark != 0 {
		return fmt.Sprintf("-f %d", s.FWMark)
	}
	flag := map[cfipvs.Protocol]string{cfipvs.TCP: "-t", cfipvs.UDP: "-u", cfipvs.SCTP: "--sctp-service"}[s.Protocol]
	return flag + " " + netip.AddrPortFrom(s.Address, s.Port).String()
}

func svcArgs(s cfipvs.Service) string {
	out := svcID(s) + " -s " + s.Scheduler
	if s.Flags&cfipvs.ServicePersistent != 0 {
		out += fmt.Sprintf(" -p %d", s.Timeout)
	}
	if extra := s.Flags &^ (cfipvs.ServicePersistent | cfipvs.ServiceHashed); extra != 0 {
		out += " flags " + extra.String()
	}
	if s.Family == cfipvs.INET6 && s.Netmask.Bits() != 128 || s.Family == cfipvs.INET && s.Netmask.Bits() != 32 {
		out += " -M " + s.Netmask.String()
	}
	return out
}

func destArgs(s cfipvs.Service, d cfipvs.Destination) string {
	method := map[cfipvs.ForwardType]string{
		cfipvs.DirectRoute: "-g", cfipvs.Tunnel: "-i", cfipvs.Masquerade: "-m", cfipvs.Local: "local",
	}[d.FwdMethod]
	out := fmt.Sprintf("%s -r %s %s -w %d", svcID(s), destKey(d), method, d.Weight)
	if d.FwdMethod == cfipvs.Tunnel && d.TunnelType != cfipvs.IPIP {
		out += " --tun-type " + d.TunnelType.String()
	}
	if d.UpperThreshold != 0 || d.LowerThreshold != 0 {
		out += fmt.Sprintf(" -x %d -y %d", d.UpperThreshold, d.LowerThreshold)
	}
	return out
}

// fakeModules is the module loader: every module is there unless listed in
// missing.
type fakeModules struct {
	missing map[string]error
	ensured []string
}

func (m *fakeModules) Ensure(_ context.Context, names ...string) error {
	for _, n := range names {
		m.ensured = append(m.ensured, n)
		if err := m.missing[n]; err != nil {
			return err
		}
	}
	return nil
}
