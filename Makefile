# halb — build, test and release targets. `make test` is what CI runs.

GO       ?= go
BINDIR   ?= bin
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
# Static, reproducible binaries: halb needs no libc, so one file runs on any
# distribution (and on a Raspberry Pi's).
BUILD    := CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)'

.PHONY: all build demo test lint generate generate-check cross fuzz install clean bench

all: build

build:
	$(BUILD) -o $(BINDIR)/halb ./cmd/halb

# halb at work in under a minute, as root: two nodes in a VRRP pair in
# front of three web servers, in network namespaces that it makes and
# removes (demo/main.go). DEMOFLAGS=-phase=3s shortens it; -clean only
# removes what a killed demo left.
DEMOFLAGS ?=
# It says what it does while it builds: the first build compiles halb's
# dependencies and takes minutes on a small machine.
demo:
	@echo "demo: building bin/halb (the first build compiles the dependencies: a few minutes; later ones seconds)"
	@$(MAKE) --no-print-directory build
	@echo "demo: building bin/halb-demo"
	$(GO) build -o $(BINDIR)/halb-demo ./demo
	@echo "demo: starting: two halb nodes in a VRRP pair in front of three web servers, in network namespaces"
	$(BINDIR)/halb-demo -halb $(BINDIR)/halb $(DEMOFLAGS)

# Privileged tests need root: they skip without it, and fail when CI=true.
# -timeout 30m: go test's default 10 minutes a package is less than
# test/vm's first run (its kernels' and the systemd guest's downloads).
test: lint generate-check
	$(GO) tool gotestsum --format testname -- -count=1 -timeout 30m ./...

lint:
	$(GO) vet ./...
	$(GO) vet -tags soak ./test/e2e/
	$(GO) tool staticcheck ./...

generate:
	$(GO) generate ./...

# The bpf2go outputs are committed so that a plain `go build` needs no
# clang; this proves they are what the C sources compile to.
generate-check: generate
	@git diff --exit-code -- loader bpf test/e2e || { echo "generated eBPF files are stale: run make generate and commit them" >&2; exit 1; }

# The parsers of bytes from the network and from users, and the eBPF
# programs (FuzzXDP, as root: BPF_PROG_TEST_RUN), fuzzed for FUZZTIME
# each. Not part of `make test`: it runs until the time is up.
# Minimizing a new input is capped: at go's default (60s) the first large
# config the fuzzer finds interesting can eat the whole FUZZTIME.
FUZZTIME ?= 60s
FUZZMINIMIZETIME ?= 5s
FUZZ := $(GO) test -run '^$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME)
fuzz:
	$(FUZZ) -fuzz '^FuzzParse$$' ./vrrp
	$(FUZZ) -fuzz '^FuzzClaims$$' ./vrrp
	$(FUZZ) -fuzz '^FuzzLoad$$' ./config
	$(FUZZ) -fuzz '^FuzzXDP$$' ./loader

# The figures of BENCHMARKS.md, as root, in about 10 minutes: the data
# path per packet (BPF_PROG_TEST_RUN: what each line costs above the
# kernel's LRU hash lookup and insert, measured in the same run), the
# Maglev build, the control plane (the first Apply of 1000 services x 100
# backends against the Go builds of its tables, a no-change Apply against
# the first, one backend changed against its table's build, the batch
# writes to halb_maglev and the tables' bytes a slot), the daemon's idle
# memory, requests per second through the VIP against plain kernel
# forwarding, failover against keepalived, and what a BGP router (FRR)
# sees of a lost or drained node. Each line goes to
# the terminal and to $(BENCHOUT). Not part of `make test`: it asserts
# nothing, it measures.
BENCHOUT ?= $(BINDIR)/bench.txt
BENCH := $(GO) test -count=1 -run '^$$' -timeout 40m
bench: SHELL := /bin/bash
bench:
	@mkdir -p $(BINDIR)
	@{ uname -r; nproc; grep -m1 'model name' /proc/cpuinfo; git describe --always --dirty; } | tee $(BENCHOUT)
	set -o pipefail; $(BENCH) -bench '^BenchmarkXDP$$' -benchtime 2000000x ./loader | tee -a $(BENCHOUT)
	set -o pipefail; $(BENCH) -bench '^BenchmarkBuild$$' ./maglev | tee -a $(BENCHOUT)
	set -o pipefail; $(BENCH) -bench '^BenchmarkApply$$' -benchtime 1x ./loader | tee -a $(BENCHOUT)
	set -o pipefail; $(BENCH) -bench '^BenchmarkApplyPeak$$' -benchtime 1x ./loader | tee -a $(BENCHOUT)
	set -o pipefail; $(BENCH) -bench '^BenchmarkLoad$$' -benchtime 3x ./config | tee -a $(BENCHOUT)
	set -o pipefail; $(BENCH) -bench '^(BenchmarkIdleRSS|BenchmarkThroughput)$$' -benchtime 1x ./test/e2e | tee -a $(BENCHOUT)
	set -o pipefail; $(BENCH) -bench '^BenchmarkFailover$$' -benchtime 1x ./vrrp | tee -a $(BENCHOUT)
	set -o pipefail; $(BENCH) -bench '^BenchmarkBGPFailover$$' -benchtime 1x ./test/e2e | tee -a $(BENCHOUT)

# The soak test: halb under a steady load for SOAK (at most 10m) while
# links and backends flap and the config reloads. Not part of `make test`.
SOAK ?= 10m
.PHONY: soak
soak:
	HALB_SOAK_DURATION=$(SOAK) $(GO) test -tags soak -count=1 -v -timeout 20m -run '^TestSoak$$' ./test/e2e/

# One static binary per target: $(BINDIR)/halb-linux-arm64 is what a
# Raspberry Pi 3/4/5 on a 64-bit OS runs, halb-linux-arm (GOARM=6, ARMv6)
# what every Pi from the Zero and Pi 1 up runs on a 32-bit OS: Raspberry
# Pi OS's armhf. GOARM is read for arm alone. test/vm boots the amd64 and
# arm64 ones.
CROSS := $(BINDIR)/halb-linux-amd64 $(BINDIR)/halb-linux-arm64 $(BINDIR)/halb-linux-arm
cross: $(CROSS)

.PHONY: $(CROSS)
$(CROSS):
	GOOS=linux GOARCH=$(subst $(BINDIR)/halb-linux-,,$@) GOARM=6 $(BUILD) -o $@ ./cmd/halb

# Debian packages in $(BINDIR), one per DEB_ARCHES (armhf: Raspberry Pi OS
# on any Pi), from `make cross`'s binaries, configs/ and the man pages and
# completions that halb's own command tree writes (`halb docs`, a command
# only a -tags halbdocs build has). internal/debpkg says what is in them
# and what they may do to a host (nothing, until you enable halb).
# DEB_MAINTAINER sets the Maintainer field.
DEB_ARCHES ?= amd64 arm64 armhf
DEB_DATE   := $(shell git log -1 --format=%ct 2>/dev/null || date +%s)
DEB_MAINTAINER ?= halb maintainers <halb@example.org>
.PHONY: deb $(BINDIR)/docs
deb: $(BINDIR)/docs $(patsubst %,$(BINDIR)/halb-linux-%,$(subst armhf,arm,$(DEB_ARCHES)))
	$(GO) build -o $(BINDIR)/debpkg ./internal/debpkg
	@set -e; for a in $(DEB_ARCHES); do \
		case $$a in armhf) g=arm;; *) g=$$a;; esac; \
		$(BINDIR)/debpkg -root . -arch $$a -bin $(BINDIR)/halb-linux-$$g -docs $(BINDIR)/docs \
			-describe '$(VERSION)' -commit '$(COMMIT)' -date '$(DEB_DATE)' \
			-maintainer '$(DEB_MAINTAINER)' -out $(BINDIR); \
	done

$(BINDIR)/docs:
	rm -rf $@
	SOURCE_DATE_EPOCH=$(DEB_DATE) $(GO) run -tags halbdocs -ldflags '$(LDFLAGS)' ./cmd/halb docs $@

# Installs the binary, the systemd unit, the example config (only when
# there is none yet: a user's config is never overwritten) and the
# modules-load.d file. DESTDIR stages it elsewhere.
PREFIX ?= /usr/local
install: build
	install -D -m 0755 $(BINDIR)/halb $(DESTDIR)$(PREFIX)/bin/halb
	install -D -m 0644 configs/systemd/halb.service $(DESTDIR)/etc/systemd/system/halb.service
	install -D -m 0644 configs/modules-load.d/halb.conf $(DESTDIR)/etc/modules-load.d/halb.conf
	test -e $(DESTDIR)/etc/halb/halb.yaml || install -D -m 0600 configs/halb.yaml $(DESTDIR)/etc/halb/halb.yaml

clean:
	rm -rf $(BINDIR)

# halb on Debian's kernel, whose IPVS is loadable modules, booted in QEMU
# (TCG: no KVM needed). Needs root; the first run installs QEMU and
# downloads the kernel package (~70 MB) into test/vm/.cache. `make test`
# runs the same test through ./...; this target runs it alone.
.PHONY: vm-test
vm-test:
	$(GO) test -count=1 -v ./test/vm/
