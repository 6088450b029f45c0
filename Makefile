# make demo: create .venv if missing, install, run the demo curation (out/demo + data_cards/demo).
# make test: create/update the venv, install Chromium if missing (for the browser test; needs apt and root or
#            password-less sudo), and run the whole test suite (unit, property, doctests, integration);
#            PYTEST_ARGS="tests/ergo_data/core -x" narrows it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HASH := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(HASH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export RAY_AUTH_MODE := disabled
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install browser lock lint clean bench

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=24"
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,ocr,ray,detector,labelstudio]"
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(BIN)/ergo run pipelines/demo.yaml --out out/demo
	@if [ -f out/demo/README.md ]; then rm -rf data_cards/demo && mkdir -p data_cards/demo && \
	  cp -r out/demo/README.md out/demo/stats.json data_cards/demo/ && \
	  { [ ! -d out/demo/plots ] || cp -r out/demo/plots data_cards/demo/; }; fi

browser:
	@scripts/install_chromium.sh

test: $(STAMP) browser
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check ergo_data ergo_train tests benchmarks conftest.py .ci

lock: $(STAMP)
	{ head -2 constraints.txt; $(BIN)/pip freeze | grep -v -i -E '^(-e |ergo)| @ file:' | sed 's/^torch==2.13.0+cpu/torch==2.13.0/'; } > constraints.new && mv constraints.new constraints.txt

clean:
	rm -rf out .pytest_cache
