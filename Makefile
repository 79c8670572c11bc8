# Two entry points: `make demo` trains the demo model; `make test` runs the suite.
# Both build .venv from this project's own files on first use (the CPU install: `.[cpu,test]`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKDIR ?= runs/demo

.PHONY: demo test clean

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[cpu]'   # CPU JAX + tensorflow-cpu; see README for GPU/TPU
	touch $@

# The tests add pytest, the exporters' converters and runtimes (`export`) and the PyTorch peer
# of the benchmark (`bench`: torch 2.13, CPU build).
$(BIN)/.installed-test: $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[cpu,test,bench,export]'
	touch $@

demo: $(BIN)/.installed
	rm -rf $(WORKDIR)
	$(BIN)/python -m cpm_jax.train --config experiments/synthetic.py --workdir $(WORKDIR)

# Lint (pyproject.toml [tool.ruff]) and the layering contracts (setup.cfg [importlinter]) first:
# either fails in seconds.
test: $(BIN)/.installed-test
	$(BIN)/ruff check --no-cache .
	$(BIN)/lint-imports --config setup.cfg
	$(BIN)/python -m pytest -n 2 --dist loadfile tests

clean:
	rm -rf $(VENV) runs *.egg-info
