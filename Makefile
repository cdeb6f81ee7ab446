# Two entry points for a fresh machine (README "Quick start"):
#   make demo  - create .venv, install (CPU torch), run the main job on the embedded default
#   make test  - create .venv, install with test tools, run the test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: setup demo test clean

$(VENV)/.installed: setup.py requirements/cpu.txt requirements/test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/cpu.txt -r requirements/test.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

setup: $(VENV)/.installed

# glm-tiny at TP2 x PP2 on 4 CPU processes (gloo), GLM objective on synthetic data.
demo: setup
	OMP_NUM_THREADS=1 $(VENV)/bin/torchrun --standalone --nproc-per-node 4 -m megatron_glm.cli.train \
		smoke glm-tiny parallel.tensor=2 parallel.pipeline=2 --steps 40

# pytest exits 5 when it collects no test: that is not a failure of the suite.
test: setup
	$(PY) -m pytest tests; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

clean:
	rm -rf $(VENV)
