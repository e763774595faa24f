# Quick start (README.md): `make demo` serves the sandbox chat page on http://127.0.0.1:8080 (Ctrl-C stops it);
# `make demo-headless` plays the same story with a scripted user; `make test` runs the tests.
# Each sets up once: Debian packages (if missing), .venv with the package and its test extra.
# The stamp lives inside .venv, so deleting .venv or editing pyproject.toml redoes the setup.

PYTHON ?= $(shell command -v python3.11 || echo python3)
VENV := .venv
STAMP := $(VENV)/.setup-done
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# The sandbox page's port: `make demo DEMO_PORT=8081` when 8080 is taken.
DEMO_PORT ?= 8080
# Debian packages the demo and tests run for real: Prometheus, Alertmanager, PostgreSQL (the store's tests), and
# Chromium for the browser test.
APT_PACKAGES := prometheus prometheus-alertmanager chromium chromium-driver postgresql

.PHONY: demo demo-headless test bench setup clean helm-venv

demo: $(STAMP)
	$(VENV)/bin/rollback-bot demo --port $(DEMO_PORT)

demo-headless: $(STAMP)
	$(VENV)/bin/rollback-bot demo --headless

# Two workers (pytest-xdist), whole files each so module and session servers stay per worker: most tests wait on
# real servers rather than compute, so the suite takes about half as long on 2 cores (807 tests: 27 min -> 15 min).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) --dist loadfile

# The ten benchmarks of README's "Benchmarks" (about 23 minutes; 10, failover, runs 3 replicas on PostgreSQL and
# kills the working one 20 times with the default 15 s lease TTL); prints the table.
bench: $(STAMP)
	$(VENV)/bin/python benchmarks/run_all.py

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $$missing; fi
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	$(MAKE) --no-print-directory helm-venv
	touch $@

# tests/test_chart_helm.py drives the real Helm (v4) through helm-sdkpy, which needs Python >= 3.12: a test-only
# virtualenv inside .venv (so it is ignored by git and rebuilt with it) from python3.12 on PATH or pyenv's 3.12.x.
# Where the machine has neither, this says so and those tests skip with the same reason.
HELM_VENV := $(VENV)/helm-py312
helm-venv:
	@py=$$(for c in python3.12 $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12*/bin/python3.12; do \
		"$$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && { echo "$$c"; break; }; \
	done); \
	if [ -z "$$py" ]; then \
		echo "helm-venv: SKIPPED: no python3.12 (PATH or pyenv); tests/test_chart_helm.py will be skipped"; \
	else \
		{ test -x $(HELM_VENV)/bin/python || "$$py" -m venv $(HELM_VENV); } && \
		$(HELM_VENV)/bin/pip install --quiet 'helm-sdkpy==0.1.32' 'kubernetes-validate==1.37.0'; \
	fi

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
