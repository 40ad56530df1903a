package ipvs

import (
	"errors"
	"fmt"
	"io"
	"os"

	cfipvs "github.com/cloudflare/ipvs"
	"golang.org/x/sys/unix"

	"github.com/halb-lb/halb/service"
)

// netlinkKernel is Kernel over cloudflare/ipvs's generic netlink client.
type netlinkKernel struct {
	cfipvs.Client
}

// dialNetlink opens a generic netlink socket and resolves the "IPVS" family.
func dialNetlink() (Kernel, error) {
	c, err := cfipvs.New()
	if err != nil {
		// genetlink's GetFamily: the controller answers ENOENT for a family
		// nobody registered.
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("%w: %w", ErrFamilyMissing, err)
		}
		return nil, fmt.Errorf("resolve generic netlink family \"IPVS\": %w", err)
	}
	return &netlinkKernel{Client: c}, nil
}

// Services lists IPVS's services. A family id that the kernel no longer
// knows (ENOENT from genetlink's dispatch) means ip_vs was unloaded and
// loaded again since the family was resolved; Apply loads ip_vs before it
// reads, so resolve the family once more and retry.
func (k *netlinkKernel) Services() ([]cfipvs.ServiceExtended, error) {
	s, err := k.Client.Services()
	if !isENOENT(err) {
		return s, err
	}
	c, derr := cfipvs.New()
	if derr != nil {
		if errors.Is(derr, unix.ENOENT) {
			return nil, fmt.Errorf("%w (was ip_vs unloaded?): %w", ErrFamilyMissing, derr)
		}
		return nil, fmt.Errorf("list IPVS services: %w; resolve the family again: %w", err, derr)
	}
	_ = k.Close()
	k.Client = c
	return k.Client.Services()
}

func (k *netlinkKernel) Close() error {
	if c, ok := k.Client.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// procTable is where the kernel shows IPVS's whole table, in the network
// namespace of the process, which is the netlink socket's.
const procTable = "/proc/net/ip_vs"

// Conns opens the connection table (connReader).
func (k *netlinkKernel) Conns() (io.ReadCloser, error) { return os.Open(procConns) }

// Table reads the whole table in one read of procTable (tableReader).
func (k *netlinkKernel) Table() (map[service.Key]*current, error) {
	f, err := os.Open(procTable)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	have, err := parseProcTable(f)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", procTable, err)
	}
	return have, nil
}
