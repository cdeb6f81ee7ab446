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

DEMO_DATA := runs/demo/data
CORPUS := data_prep/demo_corpus

# The bundled bilingual corpus -> tokenizer -> indexed datasets (glm-prep), then glm-tiny at
# TP2 x PP2 on 4 CPU processes (gloo) on the blended [MASK]/[gMASK]/MIP stream (run preset tiny-cpu).
$(DEMO_DATA)/mip.idx: setup $(wildcard $(CORPUS)/*)
	$(VENV)/bin/glm-prep train-tokenizer --quiet --input $(CORPUS)/pile-demo.jsonl.zst \
		$(CORPUS)/wudao-demo.json --model-prefix $(DEMO_DATA)/tokenizer --vocab-size 4000 --sample-mb 4
	$(VENV)/bin/glm-prep tokenize --quiet --input $(CORPUS)/pile-demo.jsonl.zst \
		--output-prefix $(DEMO_DATA)/pile --tokenizer-model $(DEMO_DATA)/tokenizer.model
	$(VENV)/bin/glm-prep tokenize --quiet --input $(CORPUS)/wudao-demo.json \
		--output-prefix $(DEMO_DATA)/wudao --tokenizer-model $(DEMO_DATA)/tokenizer.model
	$(VENV)/bin/glm-prep tokenize --quiet --input $(CORPUS)/mip-demo.jsonl \
		--output-prefix $(DEMO_DATA)/mip --tokenizer-model $(DEMO_DATA)/tokenizer.model

# Train 40 steps, then resume from the step-40 checkpoint and finish the 60 of tiny-cpu, through
# the local launcher (4 ranks on this machine, torchrun-style environment).
DEMO_RUN := runs/demo/run
TRAIN := $(VENV)/bin/glm-launch run tiny-cpu --nproc 4

demo: setup $(DEMO_DATA)/mip.idx
	rm -rf $(DEMO_RUN)
	$(TRAIN) --run-dir $(DEMO_RUN) train.steps=40
	$(TRAIN) --run-dir $(DEMO_RUN)
	$(PY) -m megatron_glm.training.summary $(DEMO_RUN)

# pytest exits 5 when it collects no test: that is not a failure of the suite.
test: setup
	$(PY) -m pytest tests; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

clean:
	rm -rf $(VENV) runs/demo
