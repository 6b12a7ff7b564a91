# Two commands do all set-up: `make demo` and `make test`. Each creates .venv when missing,
# installs the project into it (a no-op when pyproject.toml has not changed) and verifies the install.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DATA := data/demo
DEMO_RUN := runs/demo/latest

.PHONY: install verify chromium demo test bench lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,crf]"
	touch $(STAMP)

verify: install
	$(BIN)/python -m app.doctor

demo: verify
	$(BIN)/trash demo-data $(DEMO_DATA) --seed 0
	$(BIN)/trash fit recipes/demo.py --out runs
	$(BIN)/trash predict $(DEMO_RUN) --images $(DEMO_DATA) --data $(DEMO_DATA)/test.json --tta --out $(DEMO_RUN)/predictions
	@echo
	@echo "demo done (every path below is inside $$(readlink -f $(DEMO_RUN))):"
	@echo "  model        $(DEMO_RUN)/export.pkl"
	@echo "  metrics      $(DEMO_RUN)/metrics.json"
	@echo "  history      $(DEMO_RUN)/history.csv"
	@echo "  masks        $(DEMO_RUN)/predictions/masks/"
	@echo "  submission   $(DEMO_RUN)/predictions/submission.csv"

# Headless Chromium for the report's browser tests (tests/report/test_browser.py); they skip, saying why,
# where it cannot be installed (no apt-get, no root).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  ( command -v apt-get >/dev/null 2>&1 && \
	    ( $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1 || \
	      ( $(SUDO) apt-get update -q >/dev/null 2>&1 && $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1 ) ) ) || \
	  echo "chromium could not be installed (apt-get install -y chromium): the report's browser tests will skip"

test: verify chromium
	$(BIN)/python -m pytest -q

bench: verify
	$(BIN)/python -m bench.run

lint: install
	$(BIN)/ruff check app tests recipes
	$(BIN)/ruff format --check app tests recipes

clean:
	rm -rf $(VENV) runs $(DEMO_DATA)
