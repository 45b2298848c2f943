# Two commands for a new user: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 3000

.PHONY: run test lint bench clean

$(BIN)/twistd: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# compat mode puts this checkout on sys.path, where twistd finds twisted/plugins/.
	$(BIN)/pip install -q -e '.[test,dev]' --config-settings editable_mode=compat
	touch $@

run: $(BIN)/twistd
	$(BIN)/twistd -n passenger --app-root examples/hello --app-start-command 'python3 app.py' \
		--port $(PORT) --min-instances 2 --max-pool-size 4

test: $(BIN)/twistd
	$(BIN)/python -m pytest -q

lint: $(BIN)/twistd
	$(BIN)/ruff check passenger tests twisted bench
	$(BIN)/mypy

bench: $(BIN)/twistd
	$(BIN)/python bench/proxy_bench.py

clean:
	rm -rf $(VENV) build dist *.egg-info twisted/plugins/dropin.cache
