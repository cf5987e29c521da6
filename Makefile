# lazygrpc: every install step lives here, so `make demo` and `make test` work on a fresh clone.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PYTHON  := $(BIN)/python
STAMP   := $(VENV)/.installed
NODE_STAMP := clients/node/node_modules/.installed
PROTOS  := $(wildcard protos/lazygrpc/v1/*.proto)

.PHONY: all venv install protos check-protos lint demo test bench soak node clean system-deps image

all: test

$(PYTHON):
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned: the CPU wheel on disk (an unpinned torch pulls GBs of CUDA build).
$(STAMP): $(PYTHON) pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,otel,openai,transformers,edge,edge-test,redis,deploy,metrics]'
	touch $@

venv install: $(STAMP)

$(NODE_STAMP): clients/node/package.json
	cd clients/node && npm install --silent --no-audit --no-fund
	touch $@

node: $(NODE_STAMP)

# Regenerates lazygrpc/v1 from protos/ (pb2, grpc stubs and mypy-protobuf .pyi).
protos: $(STAMP)
	$(PYTHON) tools/protogen.py

check-protos: $(STAMP)
	$(PYTHON) tools/protogen.py --check
	cd protos && ../$(BIN)/buf lint

lint: $(STAMP)
	$(BIN)/ruff check lazygrpc servers tests benchmarks
	$(BIN)/mypy

demo: $(STAMP)
	$(PYTHON) -m lazygrpc up --demo "How does lazygrpc keep a slow client from filling memory?"

# Debian packages the tests run for real: redis-server (the Redis broker), iproute2 (the
# multi-host tests' network namespaces), chromium (the chat page, through Playwright), curl.
system-deps:
	@command -v redis-server >/dev/null && command -v ip >/dev/null \
		&& command -v chromium >/dev/null && command -v curl >/dev/null || \
		(apt-get update -q && apt-get install -y -q redis-server iproute2 chromium curl)

test: $(STAMP) $(NODE_STAMP) system-deps
	$(MAKE) --no-print-directory check-protos lint
	$(PYTHON) -m pytest -q

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[dev,otel,edge,edge-test,metrics,bench]'
	command -v callgrind_control >/dev/null || apt-get install -y -q valgrind \
		|| echo "valgrind (Debian) not installed: make bench skips the instruction counts"
	command -v cc >/dev/null || apt-get install -y -q gcc \
		|| echo "gcc (Debian) not installed: make bench skips the first token's path counts"
	bash benchmarks/lazyllm/setup.sh
	bash benchmarks/litellm/setup.sh \
		|| echo "litellm[proxy] not installed: make bench skips the LiteLLM rows"
	bash benchmarks/ray/setup.sh \
		|| echo "ray[serve] not installed: make bench skips the Ray Serve rows"
	$(PYTHON) -m benchmarks.run_all

# LAZYGRPC_SOAK_SECONDS (default 600) of mixed load; LAZYGRPC_FUZZ_EXAMPLES per codec property.
soak: $(STAMP)
	$(PYTHON) -m pytest -q -s -m soak tests/soak
	LAZYGRPC_FUZZ_EXAMPLES=$${LAZYGRPC_FUZZ_EXAMPLES:-3000} $(PYTHON) -m pytest -q tests/test_fuzz_codecs.py

# The image servers/k8s/mesh.yaml names (needs a container engine; none runs in CI here).
IMAGE ?= lazygrpc:latest
image:
	docker build -t $(IMAGE) .

clean:
	rm -rf $(VENV) clients/node/node_modules
