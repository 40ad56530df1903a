package health

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"syscall"
	"time"

	"github.com/halb-lb/halb/config"
)

// Checker probes one backend once. A nil error means healthy. Check must
// return when ctx ends, which is at the check's timeout at the latest.
type Checker interface {
	Check(ctx context.Context, k Key) error
}

// CheckerFunc makes a function a Checker.
type CheckerFunc func(ctx context.Context, k Key) error

// Check calls f.
func (f CheckerFunc) Check(ctx context.Context, k Key) error { return f(ctx, k) }

// Check types, as health_check.type names them.
const (
	TypeTCP   = "tcp"
	TypeHTTP  = "http"
	TypeHTTPS = "https"
	TypeUDP   = "udp"
	TypeExec  = "exec"
	TypeNone  = "none"
)

// NewChecker builds the checker hc describes. The timeout, interval and
// thresholds are Monitor's business, not the checker's.
func NewChecker(hc config.HealthCheck) (Checker, error) {
	switch hc.Type {
	case TypeTCP:
		return tcpChecker{}, nil
	case TypeHTTP, TypeHTTPS:
		return newHTTPChecker(hc), nil
	case TypeUDP:
		return udpChecker{payload: udpProbe}, nil
	case TypeExec:
		if len(hc.Command) == 0 || hc.Command[0] == "" {
			return nil, errors.New("exec check needs a command: an argv list like [/usr/local/bin/check, --quiet]")
		}
		return execChecker{argv: slices.Clone(hc.Command)}, nil
	case TypeNone:
		return CheckerFunc(func(context.Context, Key) error { return nil }), nil
	}
	return nil, fmt.Errorf("%q is not a health check type: use tcp, http, https, udp, exec or none", hc.Type)
}

// tcpChecker is healthy when a TCP connection to the backend completes.
type tcpChecker struct{}

func (tcpChecker) Check(ctx context.Context, k Key) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", k.Backend.String())
	if err != nil {
		return dialError(err)
	}
	c.Close()
	return nil
}

// dialError shortens a dial error to what the reader needs: the backend is
// named beside it already, so "dial tcp 198.51.100.11:80: connect:
// connection refused" becomes "connect: connection refused". errors.Is sees
// the same errno and timeouts as before.
func dialError(err error) error {
	var op *net.OpError
	if errors.As(err, &op) {
		err = op.Err
	}
	var sc *os.SyscallError
	if errors.As(err, &sc) {
		return err
	}
	return fmt.Errorf("connect: %w", err)
}

// httpChecker is healthy when GET path answers with one of the expected
// status codes. Redirects are not followed: their status is the answer.
type httpChecker struct {
	scheme      string
	defaultPort uint16
	path        string
	expect      []int
	client      *http.Client
}

func newHTTPChecker(hc config.HealthCheck) *httpChecker {
	h := &httpChecker{scheme: hc.Type, defaultPort: 80, path: hc.Path, expect: slices.Clone(hc.ExpectStatus)}
	if h.path == "" {
		h.path = "/"
	}
	if len(h.expect) == 0 {
		h.expect = []int{http.StatusOK}
	}
	tr := &http.Transport{
		// A fresh connection every time, as a new client would open, so
		// that accepting connections is part of what is checked; and no
		// idle connections left on the backends. Proxy stays nil: the
		// probe goes to the backend whatever HTTP_PROXY says.
		DisableKeepAlives:      true,
		DialContext:            (&net.Dialer{}).DialContext,
		MaxResponseHeaderBytes: 64 << 10,
	}
	if hc.Type == TypeHTTPS {
		h.defaultPort = 443
		tr.TLSClientConfig = &tls.Config{
			// Not verified, on purpose: backends usually serve self-signed
			// certificates, or certificates for the service's name rather
			// than for the backend address dialled here. Verifying would
			// fail for reasons that say nothing about the backend's health;
			// the check is that TLS completes and the application answers.
			InsecureSkipVerify: true,
		}
	}
	h.client = &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return h
}

func (h *httpChecker) Check(ctx context.Context, k Key) error {
	// The connection goes to the backend's address; the Host header is
	// that address too, without the port when it is the scheme's default,
	// as a browser pointed at the backend would send it.
	target := h.scheme + "://" + k.Backend.String() + h.path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return fmt.Errorf("request %s: %w", target, err)
	}
	req.Host = hostHeader(k.Backend, h.defaultPort)
	req.Header.Set("User-Agent", "halb-health-check")
	resp, err := h.client.Do(req)
	if err != nil {
		return httpError(err)
	}
	defer resp.Body.Close()
	// Read a little of the body so the backend sees a complete exchange,
	// but never a large one.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if err := ctx.Err(); err != nil {
		// The answer must come within the timeout. With TLS, the close
		// at the deadline (close_notify) can make a backend that was
		// holding the request answer, and that answer can still win the
		// race inside the transport.
		return fmt.Errorf("GET %s: no answer within the timeout: %w", h.path, err)
	}
	if !slices.Contains(h.expect, resp.StatusCode) {
		if len(h.expect) == 1 {
			return fmt.Errorf("GET %s: status %d, want %d", h.path, resp.StatusCode, h.expect[0])
		}
		return fmt.Errorf("GET %s: status %d, want one of %v", h.path, resp.StatusCode, h.expect)
	}
	return nil
}

func hostHeader(ap netip.AddrPort, defaultPort uint16) string {
	if ap.Port() == defaultPort {
		if ap.Addr().Is6() {
			return "[" + ap.Addr().String() + "]"
		}
		return ap.Addr().String()
	}
	return ap.String()
}

// httpError drops the `Get "http://...":` prefix the URL already says.
func httpError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return dialError(op)
	}
	return err
}

// udpProbe is the datagram the udp check sends. Readable text, so that
// whoever finds it in a capture on a backend knows where it came from.
var udpProbe = []byte("halb health check\n")

// udpChecker sends one datagram from a connected socket and waits for the
// timeout. An answer means healthy. An ICMP destination unreachable means
// unhealthy: Linux reports it on the next read of the connected socket as
// ECONNREFUSED (port unreachable) or, with IP_RECVERR set as keepalived's
// UDP_CHECK sets it, EHOSTUNREACH / ENETUNREACH too. Silence for the whole
// timeout means healthy, as in keepalived's UDP_CHECK: most UDP services do
// not answer a datagram they do not understand, and a closed port would
// have said so. So a udp check always takes its full timeout unless the
// backend answers or refuses, and a host that is down without anyone
// sending ICMP about it looks healthy: use exec for a real protocol
// exchange where that matters.
type udpChecker struct {
	payload []byte
}

func (u udpChecker) Check(ctx context.Context, k Key) error {
	d := net.Dialer{Control: udpControl}
	c, err := d.DialContext(ctx, "udp", k.Backend.String())
	if err != nil {
		return dialError(err)
	}
	defer c.Close()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(time.Second)
	}
	if err := c.SetReadDeadline(deadline); err != nil {
		return err
	}
	// A shutdown cancels ctx before its deadline: stop waiting then too.
	stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := c.Write(u.payload); err != nil {
		return udpError("send", err)
	}
	buf := make([]byte, 512)
	_, err = c.Read(buf)
	switch {
	case err == nil:
		return nil // an answer
	case errors.Is(err, os.ErrDeadlineExceeded):
		if errors.Is(ctx.Err(), context.Canceled) {
			return ctx.Err()
		}
		return nil // silence, and no ICMP unreachable within the timeout
	}
	return udpError("receive", err)
}

func udpError(op string, err error) error {
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("icmp port unreachable: %w", unwrapOp(err))
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return fmt.Errorf("icmp destination unreachable: %w", unwrapOp(err))
	}
	return fmt.Errorf("%s: %w", op, unwrapOp(err))
}

func unwrapOp(err error) error {
	var op *net.OpError
	if errors.As(err, &op) {
		return op.Err
	}
	return err
}

// execChecker runs a command: exit status 0 means healthy. No shell: argv
// is executed as given. See exec_linux.go.
type execChecker struct {
	argv []string
}
