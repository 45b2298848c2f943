# Two commands for a new user: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 3000

.PHONY: run test lint bench clean build pure

# The request path is compiled by mypyc (setup.py); `make build` recompiles it after an edit.
COMPILED := $(shell sed -n 's|^    "\(passenger/.*\.py\)",$$|\1|p' setup.py)
COMPILED_STAMP := build/.compiled

$(BIN)/twistd: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# compat mode puts this checkout on sys.path, where twistd finds twisted/plugins/.
	# Nothing is compiled here: $(COMPILED_STAMP) does it with the venv's mypyc.
	PASSENGER_PURE_PYTHON=1 $(BIN)/pip install -q -e '.[test,dev]' --config-settings editable_mode=compat
	touch $@

$(COMPILED_STAMP): $(BIN)/twistd $(COMPILED) setup.py
	# With PASSENGER_PURE_PYTHON=1 in the environment this compiles nothing (`make pure` removes what was).
	$(BIN)/python setup.py -q build_ext --inplace
	# The copy keeps the build's time, to the second: mark the library as newer than the sources.
	touch -c passenger__mypyc.cpython-*.so
	mkdir -p build && touch $@

build: $(COMPILED_STAMP)

pure:
	rm -f passenger/*/*.cpython-*.so passenger__mypyc.cpython-*.so $(COMPILED_STAMP)

run: $(COMPILED_STAMP)
	$(BIN)/twistd -n passenger --app-root examples/hello --app-start-command 'python3 app.py' \
		--port $(PORT) --min-instances 2 --max-pool-size 4

test: $(COMPILED_STAMP)
	$(BIN)/python -m pytest -q

lint: $(BIN)/twistd
	$(BIN)/ruff check passenger tests twisted bench
	$(BIN)/mypy

bench: $(COMPILED_STAMP)
	$(BIN)/python bench/proxy_bench.py

clean:
	rm -rf $(VENV) build dist *.egg-info twisted/plugins/dropin.cache
	rm -f passenger/*/*.cpython-*.so passenger__mypyc.cpython-*.so
