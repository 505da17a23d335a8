# One place that owns the whole install: `make train` and `make test` work on a fresh machine.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install train test bench results clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip cython setuptools wheel numpy
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	# learn2learn 0.2.0's shipped C files do not build on Python >= 3.11: regenerate them with Cython.
	$(PIP) install -q --no-build-isolation --no-deps learn2learn==0.2.0 --config-settings=--build-option=build_ext
	$(PIP) install -q gym qpth requests scipy tqdm
	$(PIP) install -q -e '.[dev,sweeps,cluster,logging,wandb,mlflow]'
	touch $(STAMP)

train: install
	$(VENV)/bin/metaexp train

test: install
	$(VENV)/bin/pytest -q

bench: install
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_engine.py --compile --configs a
	$(PY) benchmarks/bench_sampling.py --compile

# The results table of docs/results.md, from the run directories under outputs/results/.
results: install
	$(VENV)/bin/metaexp summarize outputs/results --presets --markdown
	$(VENV)/bin/metaexp summarize outputs/results --plot docs/results_curves.png

clean:
	rm -rf $(VENV) .pytest_cache
