# postcopy — build, test, benchmark, lint.
#
# Tests that need userfaultfd or root fail instead of skipping when
# POSTCOPY_REQUIRE_UFFD=1, which `make test` sets: CI runs as root on a kernel
# with userfaultfd, so a skip there would hide a broken test.

GO              ?= go
BIN             := bin
STATICCHECK_VER := v0.8.2
PROTOC_GEN_GO_VER      := v1.36.12
PROTOC_GEN_GO_GRPC_VER := v1.6.0
GOTESTFLAGS     ?=
FUZZTIME        ?= 20000x

.PHONY: all build test bench bench-go lint fmt vet staticcheck proto proto-check demo fuzz install-check clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

# The README's test command. examples/embed is a module of its own (it
# builds the fetcher from outside, through its public API only), so ./...
# leaves it out: it has its own line.
test: build
	$(GO) vet ./...
	POSTCOPY_REQUIRE_UFFD=1 $(GO) test -race -count=1 -timeout 20m $(GOTESTFLAGS) ./...
	cd examples/embed && $(GO) vet ./... && POSTCOPY_REQUIRE_UFFD=1 $(GO) test -race -count=1 $(GOTESTFLAGS) ./...

# `go install github.com/postcopy/postcopy/cmd/...@latest` from a clean module
# cache, with this checkout's HEAD served as a module version by a local
# file:// proxy in front of the usual one (scripts/install-check).
install-check:
	./scripts/install-check

# The documented benchmark set (BENCHMARKS.md): end-to-end migrations with
# migbench (1 and 4 GiB, random and zipfian, loopback and a 1gbit shaped
# link; the hybrid with shared memory; about 45 minutes, needs root), which rewrites BENCHMARKS.md's results
# from its own JSON. bench-go runs the Go micro and end-to-end benchmarks.
bench: build
	$(BIN)/migbench --suite default --hybrid-memory shared --out bench --update-doc BENCHMARKS.md

bench-go: build
	$(GO) test -run '^$$' -bench . -benchtime 2s -count 5 ./pkg/... | tee bench.txt
	$(GO) test -run '^$$' -bench . -benchtime 5x ./test/fetchbench | tee -a bench.txt

lint: fmt vet staticcheck

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

staticcheck:
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VER) ./...

# Regenerate the protobuf and gRPC code with pinned generators (protoc from
# Debian's protobuf-compiler; the Go plugins at the versions above).
proto:
	$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VER)
	$(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VER)
	PATH="$$($(GO) env GOPATH)/bin:$$PATH" protoc --proto_path=proto \
		--go_out=proto --go_opt=paths=source_relative \
		--go-grpc_out=proto --go-grpc_opt=paths=source_relative \
		proto/postcopy/v1/*.proto

# Fails when the committed generated code differs from what `make proto` makes.
proto-check: proto
	@git diff --exit-code -- proto || { echo "generated code in proto/ is stale: run make proto and commit"; exit 1; }

# A short run of every fuzz target (go test -fuzz takes one target at a time).
# FUZZTIME is a count of executions (Nx), not a duration: with a duration, Go
# before 1.27 may fail a target with a bare "context deadline exceeded" as
# the time runs out on a loaded machine (go.dev/issue/75804), no input at fault.
fuzz:
	@grep -rEo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]+' . | while IFS=: read -r file fn; do \
		name=$${fn#func }; dir=$$(dirname "$$file"); \
		echo "fuzz $$dir $$name"; \
		$(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) "$$dir" || exit 1; \
	done

# A real migration on loopback: a generated 1 GiB image served by pageserver,
# fetched by pagefetcher into a test VMM that checks every byte. Needs root.
demo: build
	$(GO) run ./test/demo

clean:
	rm -rf $(BIN) bench.txt
