# The two commands a new user needs:
#   make pipeline   install everything, then run the training DAG once end to end (embedded default)
#   make test       install everything, then run the test suite
# Everything lands in .venv and .local (git-ignored) and data/ (DVC-tracked data, git-ignored).
# The install compiles every package to bytecode once: where PYTHONDONTWRITEBYTECODE is set (as on
# our CI machines) Python would otherwise compile each imported module again in every process, and
# a task process imports Airflow, MLflow, TensorFlow or Great Expectations (17 s of imports instead of 8.7 s).
# Every target runs the tools of .venv by their path: no activated environment needed.
# Local ports (environment; the servers listen on MLOPS_BIND_HOST, default 127.0.0.1, this machine only):
#   MLOPS_AIRFLOW_PORT=8080  Airflow's API server and UI (make pipeline, make airflow-ui; log servers: +1, +2)
#   MLOPS_MLFLOW_PORT=5000   make mlflow-ui
#   MLOPS_SERVE_PORT=8000    make serve
# Airflow's size follows the CPU count (executor parallelism 2 per core, at least 4); set
# AIRFLOW__CORE__PARALLELISM and the like to choose. Ctrl-C stops everything a target started.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
UV_VERSION := 0.13.9
PYTEST_ARGS ?=

.PHONY: install pipeline serve test test-fast lint airflow-ui mlflow-ui clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip sync -q --compile-bytecode --python $(PY) requirements.lock
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps -e .
	touch $@

pipeline: install
	$(PY) -m pipelines.ops.local run $(if $(DATE),--date $(DATE)) $(if $(CONF),--conf '$(CONF)')

# The prediction service on what `make pipeline` left (the local registry's champion, followed as it
# moves): http://127.0.0.1:8000/predict (port: MLOPS_SERVE_PORT); /ready, /model, /metrics, /docs.
serve: install
	$(PY) -m pipelines.serving

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# The inner loop: the unit, data and model layers (no Airflow run, no server started by the DAGs).
test-fast: install
	$(PY) -m pytest tests/unit tests/data tests/model $(PYTEST_ARGS)

# The benchmark suite (not tests: nothing is asserted, CI times nothing); tables in benchmarks/results/.
.PHONY: bench
bench: install
	$(PY) -m benchmarks $(if $(ONLY),--only $(ONLY))

LINT_PATHS := pipelines dags plugins tests benchmarks

lint: install
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

# The API server, scheduler, DAG processor, triggerer and step worker on the state make pipeline left, with
# flights_monitoring unpaused (it runs on each collect), until Ctrl-C: http://127.0.0.1:8080, admin / admin.
airflow-ui: install
	$(PY) -m pipelines.ops.local airflow-ui

mlflow-ui: install
	$(PY) -m pipelines.ops.local mlflow-ui

# Chromium for the browser test (tests/e2e/test_browser.py): Debian's package, installed when missing.
# Needs root (or SUDO=sudo); .ci/run does this before `make test`.
.PHONY: browser-deps
browser-deps:
	@test -x /usr/bin/chromium || ($(SUDO) apt-get update && $(SUDO) apt-get install -y chromium)

clean:
	rm -rf .local data/raw data/processed data/predictions data/quarantine data/served
