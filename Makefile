# sidebox — `make demo` runs the whole path end to end, `make test` runs every test.
# Both bring up PostgreSQL and RabbitMQ first (deploy/servers.sh): the ones in
# SIDEBOX_TEST_*_URL, else the local ones on the standard ports, else private ones.

SHELL         := /bin/bash
GO            ?= go
VERSION       ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT        ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
BUILD_DATE    ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS       := -s -w -X github.com/sidebox/sidebox/internal/cli.version=$(VERSION) -X github.com/sidebox/sidebox/internal/cli.commit=$(COMMIT) \
                 -X github.com/sidebox/sidebox/internal/cli.buildDate=$(BUILD_DATE)
# make install: into $(PREFIX)/bin when PREFIX is given (make install PREFIX=/usr/local),
# else where `go install` puts binaries ($GOBIN, else $GOPATH/bin).
PREFIX        ?=
BINDIR        ?= $(if $(PREFIX),$(PREFIX)/bin,$(or $(shell $(GO) env GOBIN),$(shell $(GO) env GOPATH)/bin))
STATICCHECK   := honnef.co/go/tools/cmd/staticcheck@v0.8.2
SERVERS       := deploy/servers.sh
# Evaluated in the same shell as the command that needs the servers.
WITH_SERVERS  := servers="$$($(SERVERS) up)" && eval "$$servers" &&

.PHONY: all build install image test test-go test-charts test-embed lint demo bench chaos servers-up servers-down clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/sidebox ./cmd/sidebox

install: build
	install -d $(DESTDIR)$(BINDIR)
	install -m 0755 bin/sidebox $(DESTDIR)$(BINDIR)/sidebox
	@echo "installed $(DESTDIR)$(BINDIR)/sidebox"

# The image without a Docker daemon: podman (Debian's podman and runc packages, installed
# where missing) builds deploy/Containerfile from bin/sidebox. PODMAN holds the options
# that work in unprivileged build containers (vfs storage); IMAGE_RUN those for podman
# run (runc with cgroupfs, limits below the hard ones: crun cannot set RLIMIT_NOFILE
# there).
IMAGE         ?= sidebox:$(VERSION)
PODMAN        ?= podman --storage-driver vfs
IMAGE_RUN     ?= --runtime runc --cgroup-manager cgroupfs
CA_CERTS      ?= /etc/ssl/certs/ca-certificates.crt
image: build
	$(SERVERS) tools podman runc
	rm -rf bin/image && mkdir -p bin/image
	cp bin/sidebox bin/image/sidebox && cp $(CA_CERTS) bin/image/ca-certificates.crt
	$(PODMAN) build -f deploy/Containerfile -t $(IMAGE) bin/image
	$(PODMAN) $(IMAGE_RUN) run --rm --net host --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 $(IMAGE) version

test: lint test-go test-charts test-embed

# Includes the short form of the fault suite (test/chaos, about four minutes).
test-go:
	$(WITH_SERVERS) $(GO) test -count=1 -timeout 8m ./...

test-charts:
	cd test/charts && $(GO) test -count=1 -timeout 8m ./...

# The public Go API, used from a module outside this one (see test/embed/doc.go).
test-embed:
	$(WITH_SERVERS) cd test/embed && $(GO) test -count=1 -timeout 5m ./...

lint:
	@out="$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go'))"; \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	cd test/charts && $(GO) vet ./... && $(GO) run $(STATICCHECK) ./...
	cd test/embed && $(GO) vet ./... && $(GO) run $(STATICCHECK) ./...
	cd bench/peer && $(GO) vet ./... && $(GO) run $(STATICCHECK) ./...
	cd bench/report && $(GO) vet ./... && $(GO) run $(STATICCHECK) ./...

demo: build
	$(WITH_SERVERS) $(GO) run ./examples/demo

# The fault suite in its full form (test/chaos): private PostgreSQL and RabbitMQ servers
# of its own, so no servers.sh. Writes test/chaos/results/latest.md and prints it; the
# short form runs in test-go.
chaos:
	SIDEBOX_CHAOS=full $(GO) test -count=1 -timeout 90m -run TestChaos ./test/chaos/; \
	  status=$$?; cat test/chaos/results/latest.md 2>/dev/null; exit $$status

# The benchmarks (bench/README.md), then bench/report writes bench/results/<date>.md
# with its plots and copies it to bench/results/latest.md, which it prints. BENCH selects
# benchmarks by regular expression (make bench BENCH='Peer|RelayScale'); the sizes are
# environment variables (bench/README.md), SIDEBOX_BENCH_OUTAGE=0 leaves out the
# catch-up run.
BENCH     ?= .
BENCH_OUT := $(CURDIR)/bench/results/.run

bench:
	rm -rf $(BENCH_OUT)
	$(WITH_SERVERS) SIDEBOX_BENCH_OUT=$(BENCH_OUT) $(GO) test -run '^$$' -bench '$(BENCH)' -benchtime 1x -count 1 -timeout 120m ./bench/; \
	  status=$$?; \
	  (cd bench/report && $(GO) run . -in $(BENCH_OUT) -out $(CURDIR)/bench/results -commit $(COMMIT)) && \
	  cat bench/results/latest.md; exit $$status

servers-up:
	@$(SERVERS) up

servers-down:
	@$(SERVERS) down

clean:
	rm -rf bin
