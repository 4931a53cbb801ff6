# The README's two set-up commands: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv demo test test-all data bench chaos paper lint clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) jobs/demo.py

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

data: $(STAMP)
	$(PY) jobs/prepare_data.py --config jobs/configs/mnist_digits.yaml
	$(PY) jobs/prepare_data.py --config jobs/configs/mnist.yaml
	$(PY) jobs/prepare_data.py --config jobs/configs/sklearn_digits.yaml
	@if [ -d /usr/share/datasets/fashion-mnist ]; then \
		$(PY) jobs/prepare_data.py --config jobs/configs/fashion_mnist.yaml; \
	else echo "Fashion-MNIST not installed (apt-get install dataset-fashion-mnist): skipped"; fi

bench: $(STAMP)
	$(PY) jobs/bench_data.py
	$(PY) jobs/bench_codes.py
	$(PY) jobs/bench_local.py
	$(PY) jobs/bench_train.py

chaos: $(STAMP)
	$(PY) jobs/chaos.py

paper: $(STAMP)
	$(PY) jobs/paper_table.py

lint: $(STAMP)
	$(PY) -m ruff check acn_dist jobs tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
