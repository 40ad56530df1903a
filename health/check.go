package health

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"hash"
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
	t := target{port: uint16(hc.Port), source: hc.Source}
	switch hc.Type {
	case TypeTCP:
		return tcpChecker{t}, nil
	case TypeHTTP, TypeHTTPS:
		return newHTTPChecker(hc, t)
	case TypeUDP:
		return udpChecker{payload: udpProbe, target: t}, nil
	case TypeExec:
		if len(hc.Command) == 0 || hc.Command[0] == "" {
			return nil, errors.New("exec check needs a command: an argv list like [/usr/local/bin/check, --quiet]")
		}
		return execChecker{argv: slices.Clone(hc.Command), port: t.port}, nil
	case TypeNone:
		return CheckerFunc(func(context.Context, Key) error { return nil }), nil
	}
	return nil, fmt.Errorf("%q is not a health check type: use tcp, http, https, udp, exec or none", hc.Type)
}

// target is where a check goes and where from: health_check.port and
// .source (keepalived's connect_port and bindto). The check's result
// is the backend's, under the backend's own address and port (Key),
// whatever port it probed.
type target struct {
	port   uint16     // 0: the backend's
	source netip.Addr // invalid: the kernel's choice
}

// addr is where the check of backend ap connects.
func (t target) addr(ap netip.AddrPort) netip.AddrPort {
	if t.port != 0 {
		return netip.AddrPortFrom(ap.Addr(), t.port)
	}
	return ap
}

// dialer sends from the source address, on a port the kernel picks.
func (t target) dialer(network string) *net.Dialer {
	d := &net.Dialer{}
	if t.source.IsValid() {
		switch network {
		case "udp":
			d.LocalAddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(t.source, 0))
		default:
			d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(t.source, 0))
		}
	}
	return d
}

// where names the port and source of a failed check when they are not
// the obvious ones, as the backend named beside the error is not where
// the check went.
func (t target) where(err error) error {
	switch {
	case t.port != 0 && t.source.IsValid():
		return fmt.Errorf("port %d from %s: %w", t.port, t.source, err)
	case t.port != 0:
		return fmt.Errorf("port %d: %w", t.port, err)
	case t.source.IsValid():
		return fmt.Errorf("from %s: %w", t.source, err)
	}
	return err
}

// tcpChecker is healthy when a TCP connection to the backend completes.
type tcpChecker struct{ target }

func (t tcpChecker) Check(ctx context.Context, k Key) error {
	c, err := t.dialer("tcp").DialContext(ctx, "tcp", t.addr(k.Backend).String())
	if err != nil {
		return t.where(dialError(err))
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

// httpChecker is healthy when every request answers: GET each path with
// one of its expected status codes and, where a digest is given, a body
// of that digest (keepalived's HTTP_GET/SSL_GET with several url
// blocks). Redirects are not followed: their status is the answer.
type httpChecker struct {
	target
	scheme      string
	defaultPort uint16
	requests    []request
	client      *http.Client
}

// request is one of an http check's requests, its digest decoded.
type request struct {
	path   string
	expect []int
	algo   string // "" when the body is not looked at
	sum    []byte
}

// Bounds of what a check reads of a body. Without a digest a little is
// read, so the backend sees a complete exchange; with one, the whole body
// is hashed as it arrives (no copy is kept), up to maxDigestBody, so that
// a backend sending without end costs neither memory nor more than the
// check's timeout.
const (
	maxDiscardBody = 64 << 10
	maxDigestBody  = 8 << 20
)

func newHTTPChecker(hc config.HealthCheck, t target) (*httpChecker, error) {
	h := &httpChecker{target: t, scheme: hc.Type, defaultPort: 80}
	for _, u := range hc.Requests() {
		r := request{path: u.Path, expect: slices.Clone(u.ExpectStatus)}
		if r.path == "" {
			r.path = "/"
		}
		if len(r.expect) == 0 {
			r.expect = []int{http.StatusOK}
		}
		if u.Digest != "" {
			var err error
			if r.algo, r.sum, err = config.ParseDigest(u.Digest); err != nil {
				return nil, fmt.Errorf("digest of %s: %w", u.Path, err)
			}
		}
		h.requests = append(h.requests, r)
	}
	tr := &http.Transport{
		// A fresh connection every time, as a new client would open, so
		// that accepting connections is part of what is checked; and no
		// idle connections left on the backends. Proxy stays nil: the
		// probe goes to the backend whatever HTTP_PROXY says.
		DisableKeepAlives:      true,
		DialContext:            t.dialer("tcp").DialContext,
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
	return h, nil
}

// Check asks each request in turn, all within the one timeout of ctx;
// the first that fails is the check's error.
func (h *httpChecker) Check(ctx context.Context, k Key) error {
	for _, r := range h.requests {
		if err := h.get(ctx, k, r); err != nil {
			return h.where(err)
		}
	}
	return nil
}

func (h *httpChecker) get(ctx context.Context, k Key, r request) error {
	// The connection goes to the backend's address; the Host header is
	// that address too, without the port when it is the scheme's default,
	// as a browser pointed at the backend would send it.
	ap := h.addr(k.Backend)
	target := h.scheme + "://" + ap.String() + r.path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return fmt.Errorf("request %s: %w", target, err)
	}
	req.Host = hostHeader(ap, h.defaultPort)
	req.Header.Set("User-Agent", "halb-health-check")
	resp, err := h.client.Do(req)
	if err != nil {
		return httpError(err)
	}
	defer resp.Body.Close()
	sum, berr := readBody(resp.Body, r.algo)
	if err := ctx.Err(); err != nil {
		// The answer must come within the timeout. With TLS, the close
		// at the deadline (close_notify) can make a backend that was
		// holding the request answer, and that answer can still win the
		// race inside the transport.
		return fmt.Errorf("GET %s: no answer within the timeout: %w", r.path, err)
	}
	if !slices.Contains(r.expect, resp.StatusCode) {
		if len(r.expect) == 1 {
			return fmt.Errorf("GET %s: status %d, want %d", r.path, resp.StatusCode, r.expect[0])
		}
		return fmt.Errorf("GET %s: status %d, want one of %v", r.path, resp.StatusCode, r.expect)
	}
	if r.algo == "" {
		return nil
	}
	if berr != nil {
		return fmt.Errorf("GET %s: body: %w", r.path, berr)
	}
	if !bytes.Equal(sum, r.sum) {
		return fmt.Errorf("GET %s: body %s %x, want %x", r.path, r.algo, sum, r.sum)
	}
	return nil
}

// errBodyTooLong is a body longer than a digest check reads.
var errBodyTooLong = fmt.Errorf("longer than %d MiB, the most a digest check reads", maxDigestBody>>20)

// readBody reads body within its bounds, hashing it by algo ("" only
// reads a little of it and hashes nothing).
func readBody(body io.Reader, algo string) ([]byte, error) {
	var h hash.Hash
	switch algo {
	case "":
		_, _ = io.Copy(io.Discard, io.LimitReader(body, maxDiscardBody))
		return nil, nil
	case config.DigestMD5:
		h = md5.New() // keepalived's digest: it tells a changed page, it guards no secret
	default:
		h = sha256.New()
	}
	n, err := io.Copy(h, io.LimitReader(body, maxDigestBody+1))
	switch {
	case err != nil:
		return nil, err
	case n > maxDigestBody:
		return nil, errBodyTooLong
	}
	return h.Sum(nil), nil
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
	target
}

func (u udpChecker) Check(ctx context.Context, k Key) error {
	if err := u.check(ctx, k); err != nil {
		return u.where(err)
	}
	return nil
}

func (u udpChecker) check(ctx context.Context, k Key) error {
	d := u.dialer("udp")
	d.Control = udpControl
	c, err := d.DialContext(ctx, "udp", u.addr(k.Backend).String())
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
	port uint16 // health_check.port, told to the command; 0: the backend's
}
