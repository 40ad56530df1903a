package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// splitCases are files for the split read (split.go): each with whether
// the split must read it (true) or leave it to the whole parse (false).
// Each must decode exactly as the whole parse does, problems and their
// lines included.
var splitCases = []struct {
	name  string
	split bool
	yaml  string
}{
	{"two services", true, `datapath: {interfaces: [eth0]}
services:
  - name: a
    vip: 192.0.2.100
    port: 80
    backends: [{address: 198.51.100.11}]
  - name: b
    vip: 192.0.2.101
    port: 443
    backends:
      - address: 198.51.100.12
        port: 8443
`},
	{"items at column 0, services first", true, `services:
- name: a
  backends: [{address: 198.51.100.11}]
- {name: b, vip: 192.0.2.101, port: 80, backends: [{address: 198.51.100.12}]}
datapath:
  interfaces: [eth0]
`},
	{"comments between and inside items, at every indentation", true, `datapath: {interfaces: [eth0]}
services: # the services
# at column 0
  - name: a # a comment
    vip: 192.0.2.100
 # at column 1
    port: 80
    backends: [{address: 198.51.100.11}]

      # deeper
  # at the items' indentation
  - name: b
    vip: 192.0.2.101
    port: 80
    backends: [{address: 198.51.100.12}]
# after the list
log: {level: info}
`},
	{"strings holding dashes and colons", true, `datapath: {interfaces: [eth0]}
services:
  - name: "a - b"
    vip: 192.0.2.100
    port: 80
    backends: [{address: 198.51.100.11}]
  - name: c - d
    vip: 192.0.2.101
    port: 80
    backends: [{address: 198.51.100.12}]
  - name: '- e: f'
    vip: 192.0.2.102
    port: 80
    backends: [{address: 198.51.100.13}]
`},
	{"a block scalar holding item-like lines", true, `datapath: {interfaces: [eth0]}
services:
  - name: |
      - name: x
      - port: 1

    vip: 192.0.2.100
    port: 80
    backends: [{address: 198.51.100.11}]
  - name: >-
      folded
      - text
    vip: 192.0.2.101
    port: 80
    backends: [{address: 198.51.100.12}]
`},
	{"an item that is a block scalar, and an empty one", true, `datapath: {interfaces: [eth0]}
services:
  - |
    text
  -
  - name: a
`},
	{"problems in several items", true, `datapath: {interfaces: [eth0]}
services:
  - name: a
    vip: 192.0.2.100
    port: 80.9
    backends: [{address: 198.51.100.11, weight: true}]
  - name: a
    vip: 192.0.2.100
    colour: blue
    port: 80
    port: 81
    backends:
      - address: nowhere
  - 5
`},
	{"anchors and aliases outside the list", true, `datapath: {interfaces: &ifs [eth0]}
vrrp:
  instances:
    - &vi {name: VI_1, interface: eth0, vrid: 51, priority: 150, virtual_ips: [192.0.2.100/24]}
services:
  - name: a
    vip: 192.0.2.100
    port: 80
    backends: [{address: 198.51.100.11}]
log: {level: info}
`},
	{"a multi-line quoted string with an item-like line", false, `datapath: {interfaces: [eth0]}
services:
  - name: "a
  - b"
    vip: 192.0.2.100
    port: 80
    backends: [{address: 198.51.100.11}]
`},
	{"a flow list across an item-like line", false, `datapath: {interfaces: [eth0]}
services:
  - name: a
    vip: 192.0.2.100
    port: 80
    backends: [{address: 198.51.100.11},
  - {address: 198.51.100.12}]
`},
	{"an anchor in an item, an alias in another", false, `datapath: {interfaces: [eth0]}
services:
  - &web
    name: a
    vip: 192.0.2.100
    port: 80
    backends: [{address: 198.51.100.11}]
  - <<: *web
    name: b
`},
	{"an alias after the list to an anchor in it", false, `datapath: {interfaces: &x [eth0]}
services:
  - name: a
    vip: 192.0.2.100
    port: 80
    backends: [{address: 198.51.100.11}]
    health_check: {type: tcp, interval: &x 3s}
log: {level: *x}
`},
	{"an alias in an item to an anchor before the list", false, `datapath: {interfaces: [eth0]}
vrrp: {garp_master_delay: &d 5s}
services:
  - name: a
    vip: 192.0.2.100
    port: 80
    persistence: *d
    backends: [{address: 198.51.100.11}]
`},
	{"a flow list", false, `datapath: {interfaces: [eth0]}
services: [{name: a, vip: 192.0.2.100, port: 80, backends: [{address: 198.51.100.11}]}]
`},
	{"services written twice", false, `datapath: {interfaces: [eth0]}
services:
  - name: a
services:
  - name: b
`},
	{"services written twice, once quoted", true, `datapath: {interfaces: [eth0]}
services:
  - name: a
"services":
  - name: b
`},
	{"two documents", false, `datapath: {interfaces: [eth0]}
services:
  - name: a
---
services:
  - name: b
`},
	{"a tab in the indentation", false, "datapath: {interfaces: [eth0]}\nservices:\n  - name: a\n\t  vip: 192.0.2.100\n"},
	{"carriage returns", false, "datapath: {interfaces: [eth0]}\r\nservices:\r\n  - name: a\r\n"},
	{"a list that ends indented less than its items", false, `datapath: {interfaces: [eth0]}
services:
    - name: a
  - name: b
`},
	{"a syntax error in an item", false, `datapath: {interfaces: [eth0]}
services:
  - name: a
    vip: 192.0.2.100
  - name: b
    vip: [192.0.2.101
log: {level: info}
`},
	{"a syntax error after the list", false, `datapath: {interfaces: [eth0]}
services:
  - name: a
log: {level: [info}
`},
	{"services with no list", false, `datapath: {interfaces: [eth0]}
services:
log: {level: info}
`},
	{"services as a mapping", false, `datapath: {interfaces: [eth0]}
services:
  name: a
`},
	{"an item-like line in a multi-line quoted string before the list", false, `datapath: {interfaces: [eth0]}
log: {level: "x
services:
  - a"}
`},
	{"a list item at column 0 after an indented list", false, `services:
  - name: a
- name: b
`},
	{"a comma list past the walk's bound", false, "datapath: {interfaces: \"" + strings.Repeat("e,", minWalkBudget) + "e\"}\nservices:\n  - name: a\n"},
}

// TestSplitSameAsWhole: reading a file in parts decodes it exactly as the
// whole parse does, Config, problems, lines and failed paths alike; and
// the files the scan cannot be sure of are left to the whole parse.
func TestSplitSameAsWhole(t *testing.T) {
	for _, c := range splitCases {
		t.Run(c.name, func(t *testing.T) {
			if split := sameAsWhole(t, []byte(c.yaml)); split != c.split {
				t.Errorf("read in parts: %v, want %v", split, c.split)
			}
		})
	}
	for file, data := range exampleFiles(t) {
		t.Run(file, func(t *testing.T) { sameAsWhole(t, data) })
	}
	for i, seed := range fuzzSeeds() {
		if !sameAsWhole(t, seed) && strings.Contains(string(seed), "\nservices:\n") {
			t.Errorf("fuzz seed %d: not read in parts", i)
		}
	}
}

// TestSplitLargestSite: the largest site's file is read in parts, to the
// same Config as the whole parse.
func TestSplitLargestSite(t *testing.T) {
	if !sameAsWhole(t, largestSite()) {
		t.Fatal("the largest site's file was not read in parts")
	}
}

// sameAsWhole fails t unless the split read of data, when it reads it,
// gives what the whole parse gives; it reports whether it read it.
func sameAsWhole(t *testing.T, data []byte) bool {
	t.Helper()
	cfg, problems, failed, nodes, ok := decodeSplit(data)
	if !ok {
		return false
	}
	wcfg, wproblems, wfailed, wnodes := decodeWhole(data)
	if !reflect.DeepEqual(cfg, wcfg) {
		t.Errorf("in parts: %+v\nwhole: %+v", cfg, wcfg)
	}
	if !reflect.DeepEqual(problems, wproblems) {
		t.Errorf("problems in parts: %v\nwhole: %v", problems, wproblems)
	}
	if !reflect.DeepEqual(failed, wfailed) {
		t.Errorf("failed in parts: %v\nwhole: %v", failed, wfailed)
	}
	if nodes != wnodes {
		t.Errorf("%d nodes in parts, %d whole", nodes, wnodes)
	}
	return true
}

// FuzzSplitSameAsWhole: whatever the text, the split read either leaves
// it to the whole parse or decodes it exactly as the whole parse does.
//
//	go test -run '^$' -fuzz FuzzSplitSameAsWhole -fuzztime 5m ./config/
func FuzzSplitSameAsWhole(f *testing.F) {
	for _, c := range splitCases {
		f.Add([]byte(c.yaml))
	}
	for _, seed := range fuzzSeeds() {
		f.Add(seed)
	}
	for _, data := range exampleFiles(f) {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) { sameAsWhole(t, data) })
}

// exampleFiles are the example configurations and the broken files, by
// path.
func exampleFiles(tb testing.TB) map[string][]byte {
	tb.Helper()
	files := map[string][]byte{}
	for _, glob := range []string{"../configs/*.yaml", "testdata/broken/*.yaml"} {
		paths, err := filepath.Glob(glob)
		if err != nil {
			tb.Fatal(err)
		}
		for _, path := range paths {
			data, err := os.ReadFile(path)
			if err != nil {
				tb.Fatal(err)
			}
			files[path] = data
		}
	}
	return files
}
