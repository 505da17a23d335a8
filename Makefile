# One place that owns the whole install: `make train` and `make test` work on a fresh machine.
# The first Python >= 3.11 on PATH (3.11 first: this machine keeps torch 2.14.1 wheels for it on disk).
PYTHON ?= $(firstword $(foreach p,python3.11 python3.12 python3.13 python3,$(shell command -v $(p) >/dev/null 2>&1 && $(p) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && echo $(p))))
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
PINS   := -c constraints.txt
RUN    := $(VENV)/.installed
DEV    := $(VENV)/.installed-dev

.PHONY: help install install-dev peer-rl train test test-fast lint bench docs wheel-check reproduce results gpu-check gpu-import clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

install: $(RUN)  ## .venv with metaexp and its launchers and loggers (what `metaexp train` needs)

$(RUN): pyproject.toml constraints.txt Makefile
	@test -n "$(PYTHON)" || { echo "make: no Python >= 3.11 on PATH; install one, or run make PYTHON=/path/to/python3.11"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip $(PINS) setuptools wheel
	$(PIP) install -q $(PINS) -e '.[sweeps,cluster,logging,wandb,mlflow,rl]'
	touch $(RUN)

install-dev: $(DEV)  ## install, plus pytest, ruff and the learn2learn peer the tests and benchmarks compare against

$(DEV): $(RUN)
	$(PIP) install -q $(PINS) cython numpy pytest ruff mkdocs mkdocs-material 'mkdocstrings[python]'
	# learn2learn 0.2.0's shipped C files do not build on Python >= 3.11: regenerate them with Cython.
	$(PIP) install -q $(PINS) --no-build-isolation --no-deps learn2learn==0.2.0 --config-settings=--build-option=build_ext
	$(PIP) install -q $(PINS) gym requests scipy tqdm scikit-learn  # scikit-learn: the reference solver of RFS's test
	# qpth 0.0.18 (learn2learn's MetaOptNet peer) declares numpy<2 but runs on numpy 2 for what the tests import.
	$(PIP) install -q $(PINS) --no-deps qpth
	touch $(DEV)

train: install  ## MAML on sinusoid regression, the embedded default (about a minute)
	$(VENV)/bin/metaexp train

test: install-dev lint  ## the test suite (about 9 minutes on 2 cores)
	$(VENV)/bin/pytest -q

test-fast: install-dev  ## the suite less its `slow` tests (signals, kills, subprocesses): the edit-test loop
	$(VENV)/bin/pytest -q -m "not slow"

docs: install-dev  ## the documentation site, built strictly into site/ (a broken link fails it)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: install-dev  ## ruff: lint and formatting of the package, tests, benchmarks and CI scripts
	$(VENV)/bin/ruff check metaexp tests benchmarks ci docs/tutorial.py
	$(VENV)/bin/ruff format --check metaexp tests benchmarks ci docs/tutorial.py

bench: install-dev  ## engine and sampling benchmarks against learn2learn, MetaNet against its loop reference, threads
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_engine.py --compile --configs a
	$(PY) benchmarks/bench_sampling.py --compile
	$(PY) benchmarks/bench_metanet.py
	$(PY) benchmarks/bench_threads.py
	$(PY) benchmarks/bench_control.py
	$(PY) benchmarks/bench_rl.py $(if $(wildcard $(L2L_RL)/maml_trpo.py),--l2l-examples $(L2L_RL) --peer-path build/peer-rl)

# learn2learn's RL example runs only with gym 0.23.1 and cherry-rl 0.2.0: they live in their own folder, used by
# bench_rl.py alone. Its two scripts (examples/rl/maml_trpo.py at commit 6d113f8, and policies.py) go in L2L_RL.
L2L_RL ?= build/l2l-examples-rl
L2L_RAW := https://raw.githubusercontent.com/learnables/learn2learn/6d113f84386f13afc548ba2cd99a2a0e02935a23/examples/rl
peer-rl: install-dev  ## gym 0.23.1 + cherry-rl 0.2.0 in build/peer-rl and learn2learn's RL example, for bench_rl.py
	$(PIP) install -q --target build/peer-rl --no-deps gym==0.23.1 cherry-rl==0.2.0 dotmap==1.3.30 gym-notices==0.1.0 cloudpickle==3.1.3
	mkdir -p $(L2L_RL)
	test -f $(L2L_RL)/maml_trpo.py || curl -fsSL -o $(L2L_RL)/maml_trpo.py $(L2L_RAW)/maml_trpo.py
	test -f $(L2L_RL)/policies.py || curl -fsSL -o $(L2L_RL)/policies.py $(L2L_RAW)/policies.py

wheel-check: install  ## build the wheel, install it into a clean venv, run every README command outside the checkout
	bash ci/wheel_check.sh $(PYTHON)

# Presets at their full schedules, one after another, within MINUTES on DEVICE; resumed where the last call stopped.
PRESETS ?=
MINUTES ?= 60
DEVICE  ?= auto
reproduce: install  ## train PRESETS (default: all with a figure) within MINUTES on DEVICE, evaluate, regenerate docs/results.md
	$(VENV)/bin/metaexp reproduce $(PRESETS) --device $(DEVICE) --minutes $(MINUTES)

results: install  ## regenerate the table of docs/results.md from the run records in results/records
	$(VENV)/bin/metaexp reproduce --table-only

gpu-check: install-dev  ## prepare .gpu/ (wheels, Omniglot, resume state) for one GPU call and print the command to run there
	bash ci/gpu_prepare.sh

gpu-import: install  ## unpack what a GPU call brought back: make gpu-import FILES="records.tar.gz state.tar.gz"
	$(PY) ci/gpu_import.py $(FILES)

clean:  ## remove .venv and caches
	rm -rf $(VENV) .pytest_cache dist build
