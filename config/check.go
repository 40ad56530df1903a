package config

import (
	"encoding/hex"
	"fmt"
	"strings"
)

// URLCheck is one request of an http or https health check: GET Path must
// answer one of ExpectStatus and, when Digest is set, a body whose digest
// it is (keepalived's url { path, status_code, digest }).
type URLCheck struct {
	Path         string `mapstructure:"path"`
	ExpectStatus []int  `mapstructure:"expect_status"`
	// Digest is the body's MD5 (32 hex digits, keepalived's digest) or
	// SHA-256 (64), optionally written "md5:…" or "sha256:…"; "" does
	// not look at the body.
	Digest string `mapstructure:"digest"`
}

// Requests is what an http or https check asks, in order: urls, or
// path and expect_status as the one request of the short form.
func (h HealthCheck) Requests() []URLCheck {
	if len(h.URLs) > 0 {
		return h.URLs
	}
	return []URLCheck{{Path: h.Path, ExpectStatus: h.ExpectStatus}}
}

// Digest algorithms, as ParseDigest names them.
const (
	DigestMD5    = "md5"
	DigestSHA256 = "sha256"
)

// ParseDigest reads a urls[].digest: algo is DigestMD5 or DigestSHA256
// and sum the bytes the hex digits write. The bare form is told by its
// length, as keepalived's digest is always 32 hex digits.
func ParseDigest(s string) (algo string, sum []byte, err error) {
	text := s
	if a, rest, ok := strings.Cut(s, ":"); ok {
		algo, text = strings.ToLower(a), rest
		if algo != DigestMD5 && algo != DigestSHA256 {
			return "", nil, fmt.Errorf("%q names no digest halb knows: write md5:HEX, sha256:HEX, or the hex digits alone", s)
		}
	}
	sum, err = hex.DecodeString(text)
	if err != nil {
		return "", nil, fmt.Errorf("%q is not hex digits: write the MD5 (32 digits, as keepalived's genhash prints it) or the SHA-256 (64 digits) of the body", s)
	}
	switch {
	case len(sum) == 16 && algo != DigestSHA256:
		algo = DigestMD5
	case len(sum) == 32 && algo != DigestMD5:
		algo = DigestSHA256
	default:
		return "", nil, fmt.Errorf("%q is %d hex digits: an MD5 has 32 and a SHA-256 64", s, len(text))
	}
	return algo, sum, nil
}

// checkTarget checks health_check.port, .source and .urls of service s;
// the type of its check is known to be one halb has.
func (v *validator) checkTarget(path string, s *Service) {
	h := s.HealthCheck
	if h.Port != 0 {
		v.intRange(path+".port", h.Port, 1, 65535)
	}
	if h.Source.IsValid() {
		v.unicast(path+".source", h.Source)
		first := s.firstVIP()
		switch {
		case h.Type == "exec":
			v.errf(path+".source", "is not used with type: exec: the command chooses where it sends from; pass the address in its arguments")
		case first.IsValid() && h.Source.Is6() != first.Is6():
			v.errf(path+".source", "%s is %s but the service is %s: give an address of the backends' family", h.Source, family(h.Source.Is6()), family(first.Is6()))
		}
	}
	if h.Type != "http" && h.Type != "https" {
		if len(h.URLs) > 0 {
			v.errf(path+".urls", "is only used with type: http or https")
		}
		return
	}
	if len(h.URLs) == 0 {
		v.request(path, URLCheck{Path: h.Path, ExpectStatus: h.ExpectStatus})
		return
	}
	if h.Path != "" || len(h.ExpectStatus) > 0 {
		v.errf(path+".urls", "is given with path or expect_status, its one-request short form: "+
			"write each request as an item of urls, like {path: /healthz, expect_status: [200]}, and remove path and expect_status")
	}
	seen := map[string]bool{}
	for i, u := range h.URLs {
		upath := fmt.Sprintf("%s.urls[%d]", path, i)
		v.request(upath, u)
		if u.Digest != "" {
			if _, _, err := ParseDigest(u.Digest); err != nil {
				v.errf(upath+".digest", "%v", err)
			}
		}
		if seen[u.Path] {
			v.errf(upath+".path", "%q is listed twice: give each path once, with all it must answer", u.Path)
		}
		seen[u.Path] = true
	}
}

// request checks one request's path and expected status codes.
func (v *validator) request(path string, u URLCheck) {
	if !strings.HasPrefix(u.Path, "/") {
		v.errf(path+".path", "%q must start with /", u.Path)
	}
	if len(u.ExpectStatus) == 0 {
		v.errf(path+".expect_status", "at least one status code is required, like [200]")
	}
	for j, code := range u.ExpectStatus {
		v.intRange(fmt.Sprintf("%s.expect_status[%d]", path, j), code, 100, 599)
	}
}
