package config

import (
	"bytes"
	"slices"
	"testing"
)

// The health check's port, source and urls (issue 19: keepalived's
// connect_port, bindto and several url blocks with a digest).
func TestHealthCheckTarget(t *testing.T) {
	const hc = "health_check: {type: http, interval: 2s, timeout: 1s, rise: 2, fall: 3, expect_status: [200]}"
	check := func(s string) []string { return []string{hc, "health_check: " + s} }
	md5 := "9e107d9d372bb6826bd81d3542a419d6"
	sha := "d7a8fbb307d7809469ca9abcb0082e4f8d5651e46d3cdb762d02d0bf37c9e592"
	runProblemCases(t, []problemCase{
		{"port", check("{type: tcp, port: 8080}"), "", ""},
		{"port on http", check("{type: http, port: 8080, path: /healthz}"), "", ""},
		{"port too big", check("{type: tcp, port: 70000}"), "services[0].health_check.port", "70000 is out of range: use 1..65535"},
		{"port negative", check("{type: tcp, port: -1}"), "services[0].health_check.port", "-1 is out of range"},
		{"port text", check("{type: tcp, port: http}"), "services[0].health_check.port", `"http" is not a whole number`},
		{"source", check("{type: tcp, source: 192.0.2.1}"), "", ""},
		{"source other family", check(`{type: tcp, source: "2001:db8::1"}`), "services[0].health_check.source", "2001:db8::1 is IPv6 but the service is IPv4"},
		{"source not an address", check("{type: tcp, source: eth0}"), "services[0].health_check.source", `"eth0" is not an IP address`},
		{"source multicast", check("{type: tcp, source: 224.0.0.1}"), "services[0].health_check.source", "multicast"},
		{"source on exec", check("{type: exec, command: [/bin/true], source: 192.0.2.1}"), "services[0].health_check.source", "is not used with type: exec"},
		{"port on exec", check("{type: exec, command: [/bin/true], port: 8080}"), "", ""},
		{"urls", check("{type: http, urls: [{path: /healthz, expect_status: [200], digest: " + md5 + "}, {path: /ready, expect_status: [200, 204]}]}"), "", ""},
		{"urls sha256", check("{type: https, urls: [{path: /, digest: " + sha + "}]}"), "", ""},
		{"urls prefixed", check("{type: http, urls: [{path: /a, digest: \"md5:" + md5 + "\"}, {path: /b, digest: \"SHA256:" + sha + "\"}]}"), "", ""},
		{"urls and expect_status", check("{type: http, expect_status: [200], urls: [{path: /healthz}]}"), "services[0].health_check.urls", "remove path and expect_status"},
		{"urls and path", check("{type: http, path: /x, urls: [{path: /healthz}]}"), "services[0].health_check.urls", "is given with path or expect_status"},
		{"urls on tcp", check("{type: tcp, urls: [{path: /healthz}]}"), "services[0].health_check.urls", "is only used with type: http or https"},
		{"url path relative", check("{type: http, urls: [{path: healthz}]}"), "services[0].health_check.urls[0].path", `"healthz" must start with /`},
		{"url path missing", check("{type: http, urls: [{expect_status: [200]}]}"), "services[0].health_check.urls[0].path", `"" must start with /`},
		{"url path twice", check("{type: http, urls: [{path: /a}, {path: /a, expect_status: [204]}]}"), "services[0].health_check.urls[1].path", `"/a" is listed twice`},
		{"url status", check("{type: http, urls: [{path: /a, expect_status: [200, 99]}]}"), "services[0].health_check.urls[0].expect_status[1]", "99 is out of range: use 100..599"},
		{"url no status", check("{type: http, urls: [{path: /a, expect_status: []}]}"), "services[0].health_check.urls[0].expect_status", "at least one status code"},
		{"url unknown key", check("{type: http, urls: [{path: /a, status_code: 200}]}"), "services[0].health_check.urls[0].status_code", "status_code"},
		{"digest short", check("{type: http, urls: [{path: /a, digest: 9e107d9d}]}"), "services[0].health_check.urls[0].digest", "is 8 hex digits: an MD5 has 32 and a SHA-256 64"},
		{"digest not hex", check("{type: http, urls: [{path: /a, digest: " + "zz" + md5[2:] + "}]}"), "services[0].health_check.urls[0].digest", "is not hex digits"},
		{"digest wrong algorithm", check("{type: http, urls: [{path: /a, digest: \"sha1:" + md5 + "\"}]}"), "services[0].health_check.urls[0].digest", "names no digest halb knows"},
		{"digest md5 of sha length", check("{type: http, urls: [{path: /a, digest: \"md5:" + sha + "\"}]}"), "services[0].health_check.urls[0].digest", "is 64 hex digits"},
	})
}

// urls replaces the short form: the defaults of path and expect_status
// do not stay beside it, and an item's expect_status defaults to [200].
func TestURLsReplaceShortForm(t *testing.T) {
	cfg, err := Parse(with(t, "health_check: {type: http, interval: 2s, timeout: 1s, rise: 2, fall: 3, expect_status: [200]}",
		"health_check: {type: http, port: 8080, source: 192.0.2.1, urls: [{path: /healthz, digest: \"md5:9E107D9D372BB6826BD81D3542A419D6\"}, {path: /ready, expect_status: [204]}]}"), "t.yaml")
	if err != nil {
		t.Fatal(err)
	}
	hc := cfg.Services[0].HealthCheck
	if hc.Path != "" || hc.ExpectStatus != nil {
		t.Errorf("path %q, expect_status %v beside urls; want them empty", hc.Path, hc.ExpectStatus)
	}
	if hc.Port != 8080 || hc.Source.String() != "192.0.2.1" {
		t.Errorf("port %d, source %s", hc.Port, hc.Source)
	}
	reqs := hc.Requests()
	if len(reqs) != 2 || reqs[0].Path != "/healthz" || !slices.Equal(reqs[0].ExpectStatus, []int{200}) || !slices.Equal(reqs[1].ExpectStatus, []int{204}) {
		t.Errorf("requests = %+v", reqs)
	}
	short := HealthCheck{Path: "/x", ExpectStatus: []int{200, 301}}.Requests()
	if len(short) != 1 || short[0].Path != "/x" || !slices.Equal(short[0].ExpectStatus, []int{200, 301}) || short[0].Digest != "" {
		t.Errorf("short form requests = %+v", short)
	}
}

func TestParseDigest(t *testing.T) {
	md5 := []byte{0x9e, 0x10, 0x7d, 0x9d, 0x37, 0x2b, 0xb6, 0x82, 0x6b, 0xd8, 0x1d, 0x35, 0x42, 0xa4, 0x19, 0xd6}
	for _, c := range []struct {
		in, algo string
		sum      []byte
	}{
		{"9e107d9d372bb6826bd81d3542a419d6", DigestMD5, md5},
		{"9E107D9D372BB6826BD81D3542A419D6", DigestMD5, md5},
		{"md5:9e107d9d372bb6826bd81d3542a419d6", DigestMD5, md5},
		{"sha256:" + string(bytes.Repeat([]byte("ab"), 32)), DigestSHA256, bytes.Repeat([]byte{0xab}, 32)},
		{string(bytes.Repeat([]byte("01"), 32)), DigestSHA256, bytes.Repeat([]byte{1}, 32)},
		{"", "", nil},
		{"md5:", "", nil},
		{"sha256:9e107d9d372bb6826bd81d3542a419d6", "", nil},
		{"9e107d9d372bb6826bd81d3542a419d", "", nil}, // odd length
	} {
		algo, sum, err := ParseDigest(c.in)
		if algo != c.algo || !bytes.Equal(sum, c.sum) || (err == nil) != (c.algo != "") {
			t.Errorf("ParseDigest(%q) = %q, %x, %v; want %q, %x", c.in, algo, sum, err, c.algo, c.sum)
		}
	}
}
