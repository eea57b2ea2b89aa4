# Set-up and the two jobs of the README: `make quickstart` (the main job) and `make test`.
# The virtual environment is bootstrapped on first use. TORCH_SPEC pins the torch build this
# project is tested with; override it to use another compatible one (pyproject allows torch>=2.4,<3).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast docs quickstart lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# lint and the docs site first (seconds), then every test tier; .ci/run runs exactly this
test: $(STAMP)
	$(BIN)/ruff check .
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	$(BIN)/python -m pytest -q -x -n 2 --dist loadgroup --durations=15

# the unit tier for iteration: no test that starts Ray, runs a benchmark or is marked slow
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -x -n 2 --dist loadgroup -m "not slow and not ray and not cluster and not benchmark"

# the documentation site (docs/, mkdocs.yml) into site/; a broken link or a page left out fails
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: $(STAMP)
	$(BIN)/ruff check .

# The main job: the quickstart sweep on embedded Ray, then its report (plot + Markdown + HTML).
quickstart: $(STAMP)
	$(BIN)/mgas run experiments/quickstart.yaml
	$(BIN)/mgas report results/quickstart

# the benchmarks a user runs (python -m benchmarks lists them with their commands), then the default
# method's search step at the paper's search shape, one thread (about a minute on 2 cores)
bench: $(STAMP)
	$(BIN)/python -m benchmarks
	$(BIN)/python -m benchmarks.supernet --threads 1 --steps 2 --json

clean:
	rm -rf runs results .pytest_cache
