package main

import (
	"bytes"
	"encoding/json"
	"regexp"
	"testing"
	"time"

	"github.com/halb-lb/halb/daemon"
)

// A backend the data path cannot serve shows as not served in the
// table, with the reason; --json carries the reason as "problem".
func TestStatusBackendProblem(t *testing.T) {
	raw := []byte(`{"datapath":"xdp","services":[{"name":"web6","key":"[2001:db8::100]:443/tcp","datapath":"xdp","backends":[
		{"backend":"[2001:db8:1::11]:443","weight":1,"live":false,"problem":"no route (network is unreachable)"},
		{"backend":"[2001:db8:1::12]:443","weight":1,"live":true}]}]}`)
	var st daemon.Status
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatal(err)
	}
	if p := st.Services[0].Backends[0].Problem; p != "no route (network is unreachable)" {
		t.Fatalf("problem from JSON: %q", p)
	}
	var out bytes.Buffer
	if err := writeStatus(&out, st, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, re := range []string{
		`(?m)^SERVICE +BACKEND +WEIGHT +NEW FLOWS +CONNS +PACKETS +BYTES +REPLIES +PROBLEM$`,
		`(?m)^ +\[2001:db8:1::11\]:443 +1 \(not served\) +0 +- +0 +0 +- +no route \(network is unreachable\)$`,
		`(?m)^ +\[2001:db8:1::12\]:443 +1 +0 +- +0 +0 +- *$`,
	} {
		if !regexp.MustCompile(re).MatchString(out.String()) {
			t.Errorf("halb status does not match %s:\n%s", re, out.String())
		}
	}
}
