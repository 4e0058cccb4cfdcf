# churnops: `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install up test test-fast check docs screenshots bench bench-peers lock clean image standins

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@echo "installing the pinned dependencies into $(VENV) (a few minutes on a fresh machine)"
	$(BIN)/python -m pip install --disable-pip-version-check --progress-bar on -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install the pinned dependencies and churnops
	@echo "installed: $(BIN)/churnops"

up: $(STAMP) ## Run the main job: tracking server, data, first model, API (MLFLOW_PORT=, API_PORT= to move them)
	$(if $(MLFLOW_PORT),MLFLOW_TRACKING_URI=http://127.0.0.1:$(MLFLOW_PORT)) $(BIN)/churnops up $(if $(API_PORT),--port $(API_PORT))

test: $(STAMP) ## Run the whole test suite: the fast tier (under a minute), then the slow one (real servers)
	$(BIN)/python -m pytest -m "not slow"
	$(BIN)/python -m pytest -m slow

test-fast: $(STAMP) ## Run only the fast tier: pure functions and in-process apps
	$(BIN)/python -m pytest -m "not slow"

check: $(STAMP) ## Lint, type-check and build the docs strictly (ruff, mypy, mkdocs)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/mkdocs build --strict --quiet

docs: $(STAMP) ## Build the reference site under docs/ into .site/ (MkDocs)
	$(BIN)/mkdocs build --strict

screenshots: $(STAMP) ## Photograph the MLflow UI and API pages the README shows into docs/img/
	$(BIN)/python -m tests.screenshots --out docs/img

bench: $(STAMP) ## Run the benchmarks in bench/
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/score.py
	$(BIN)/python bench/models.py
	$(BIN)/python bench/server.py
	$(BIN)/python bench/monitor.py

bench-peers: ## Bench-only venv (.venv-peers) with Evidently and NannyML for bench/monitor.py
	$(PYTHON) -m venv .venv-peers
	.venv-peers/bin/python -m pip install --quiet --disable-pip-version-check -r bench/requirements-peers.txt

lock: $(STAMP) ## Re-pin requirements.lock from the current .venv
	( echo '# Pinned versions of every dependency (runtime and dev). Regenerate with `make lock`.'; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v '^churnops' ) > requirements.lock

IMAGE      ?= localhost/churnops:latest
BASE_IMAGE ?= localhost/debian-python:3.11
WHEELHOUSE := build/wheelhouse

image: $(STAMP) ## Build the container image IMAGE from a host-side wheelhouse (BASE_IMAGE= to change the base)
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)/deps $(WHEELHOUSE)/app
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir $(WHEELHOUSE)/app .
	@# NB: the runtime closure of churnops[image] at the lock's pins: no test tools, no compilers.
	$(BIN)/python -m pip download --quiet --only-binary=:all: --constraint requirements.lock \
	  --dest $(WHEELHOUSE)/deps "$$(ls $(WHEELHOUSE)/app/churnops-*.whl)[image]"
	rm -f $(WHEELHOUSE)/deps/churnops-*.whl
	podman build --quiet --build-arg BASE_IMAGE=$(BASE_IMAGE) --file deploy/Containerfile \
	  --tag $(IMAGE) $(WHEELHOUSE)

standins: $(STAMP) ## Build local stand-ins for deploy/compose.yaml's PostgreSQL and S3 images (no registry here)
	BASE_IMAGE=$(BASE_IMAGE) PYTHON=$(BIN)/python deploy/standins/build.sh

clean: ## Remove the venv and caches (keeps mlflow.db and artifacts)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
