# sluice: make demo runs the whole loop on an embedded Redis; make test runs
# every test (installing redis-server and the Python test packages when
# missing); make lint the static checks; make bench the benchmarks.
GO          ?= go
STATICCHECK ?= $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Debian's python3 (python3-redis, python3-pytest), named explicitly: a
# python3 first on PATH may be a pyenv shim without redis-py.
PYTHON      ?= /usr/bin/python3

.PHONY: all build demo test test-short bench lint redis-server fuzz deploy-verify test-python python python-scripts image podman deploy-run

all: lint test

build:
	$(GO) build -o bin/sluice ./cmd/sluice

# The whole loop for 20 s on an embedded Redis: needs nothing but Go.
demo:
	$(GO) run ./cmd/sluice demo $(DEMO_ARGS)

# The full suite: unit tests on miniredis, every Lua script on a real
# redis-server started by the tests, multi-process tests. -race on.
test: redis-server test-python
	$(GO) test -race -count=1 ./...

# The Python client (clients/python): pytest on a real redis-server, then Go
# and Python replicas sharing one bucket as processes (the figures print
# as "INTEROP ..."). About 70 s (a Redis Cluster included).
test-python: redis-server python build
	PYTEST_SLUICE_BIN=$(CURDIR)/bin/sluice GO=$(GO) $(PYTHON) -m pytest -q clients/python/tests

python:
	@PYTHON=$(PYTHON) ./scripts/ensure-python.sh

# Copies the Lua scripts into the Python package (lua.Source of each: the
# text the Go code loads). Run it after changing lua/; a test fails until then.
python-scripts:
	$(GO) run ./cmd/sluice scripts dump clients/python/src/sluice/lua >/dev/null

# The quick loop: miniredis only (redistest.Start skips under -short): no
# redis-server, no replica processes, no long runs.
test-short:
	$(GO) test -short -count=1 ./...

# A short fuzz run of each target (the seeds also run in make test). The
# budget is a count of inputs, not a duration: with -fuzztime as a duration,
# Go's fuzzing coordinator can fail a target with "context deadline exceeded"
# when a starved worker misses the deadline (seen in CI on a loaded machine).
FUZZ_INPUTS ?= 30000x
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeEvent$$' -fuzztime $(FUZZ_INPUTS) ./pkg/feedback
	$(GO) test -run '^$$' -fuzz '^FuzzParseNumber$$' -fuzztime $(FUZZ_INPUTS) ./pkg/config
	$(GO) test -run '^$$' -fuzz '^FuzzLoadFile$$' -fuzztime $(FUZZ_INPUTS) ./pkg/config
	$(GO) test -run '^$$' -fuzz '^FuzzReceiver$$' -fuzztime $(FUZZ_INPUTS) ./pkg/feedback/httpbus

bench: redis-server
	$(GO) test -run '^$$' -bench . -benchmem ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change: $$out"; exit 1; fi
	$(GO) mod tidy -diff
	$(GO) vet ./...
	$(STATICCHECK) ./...

redis-server:
	@./scripts/ensure-redis-server.sh

# deploy/ checked: every manifest decoded strictly, compose and the
# Dockerfile, every PromQL metric name against the running services, promtool,
# and KEDA v2.16.1's own scalers against a redis-server and a Prometheus
# scraping real sluice services. Its own module (deploy/verify): KEDA's
# dependencies stay out of sluice's. Installs redis-server and prometheus
# when missing; the first build of KEDA's code takes 10 to 20 minutes.
deploy-verify: redis-server
	@./deploy/verify/ensure-prometheus.sh
	@cd deploy/verify && out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt would change: $$out"; exit 1; fi
	cd deploy/verify && $(GO) mod tidy -diff && $(GO) vet ./... && $(GO) test -count=1 -v ./...

# The images deploy/ runs, built offline with podman (no registry): sluice's
# static binary in the Dockerfile's layout (localhost/sluice:dev), Debian's
# redis-server and prometheus with their libraries. Podman's settings come
# from deploy/podman/containers.conf (CONTAINERS_CONF), never from /etc.
podman:
	@./deploy/podman/ensure-podman.sh

image: podman
	GO=$(GO) ./deploy/podman/build-images.sh

# deploy/ run for real with podman (docs/deploy.md, "Run"): the images, then
# docker-compose.yml under podman-compose (the loop, a coordinator killed,
# Redis restarted, Prometheus's targets, rules and SluiceTargetDown) and the
# Kubernetes manifests played with podman kube play (every pod Ready). Needs
# root (rootful podman); 4 to 5 minutes measured, so not part of .ci/run.
deploy-run: image
	cd deploy/verify && SLUICE_DEPLOY_RUN=1 CONTAINERS_CONF=$(CURDIR)/deploy/podman/containers.conf \
		$(GO) test -count=1 -v -timeout 20m -run '^(TestComposeUnderPodman|TestKubePlay)$$' .

# The autoscaling drill (issue 23; deploy/verify/drill_test.go): KEDA's
# scalers on live services and Prometheus, the HPA's algorithm, real
# coordinators started and stopped to follow it; 1x, 5x, 1x of one writer of
# 300/s, for the manifests as they are (new) and today's (before issue 23),
# times ÷ SLUICE_DRILL_COMPRESS (10). About 6 minutes (335 s measured); prints the table of
# docs/deploy.md. SLUICE_DRILL=new|today|both; SLUICE_DRILL_COMPRESS=1 is
# the full-scale run (44 minutes for both, measured).
SLUICE_DRILL          ?= both
SLUICE_DRILL_COMPRESS ?= 10
.PHONY: deploy-drill
deploy-drill: redis-server
	@./deploy/verify/ensure-prometheus.sh
	cd deploy/verify && SLUICE_DRILL=$(SLUICE_DRILL) SLUICE_DRILL_COMPRESS=$(SLUICE_DRILL_COMPRESS) $(GO) test -count=1 -v -timeout 120m -run '^TestAutoscaleDrill$$' .
