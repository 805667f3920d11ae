# Two entry points for a fresh clone: `make demo` (the packing simulator on the built-in fleet) and
# `make test` (the whole test suite). Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo plugin-demo test test-fast typecheck clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gpupack simulate --out sim-out

plugin-demo: $(STAMP)
	$(VENV)/bin/gpupack demo

# The Go programs the tests run (control plane, node agent, helm) are built first, where their
# progress shows; they are cached in ~/.cache/gpupack/bin, so later runs skip this in a second.
test: $(STAMP)
	bash tests/e2e/build_control_plane.sh >/dev/null
	bash tools/helm/build.sh >/dev/null
	$(VENV)/bin/python -m pytest -q

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m 'not e2e'

typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .hypothesis
