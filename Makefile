# platform-ops: every target creates and uses the virtualenv in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-packages demo demo-clean test lint smoke bench clean

# bubblewrap isolates the promotion lint (staging code); without it the lint fails closed. chromium
# renders the demo for the browser check (test_browser.py); without it that check is skipped.
system-packages:
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null 2>&1 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; }; }; } || \
	  echo "note: bubblewrap (bwrap) is not installed and could not be: promotion lints will fail closed (README: Promotion)"
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; }; } || \
	  echo "note: chromium is not installed and could not be: the browser check (test_browser.py) is skipped"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --disable-pip-version-check -e '.[sandbox,promotion,test]'
	touch $(STAMP)

install: $(STAMP) system-packages

demo: $(STAMP) system-packages
	PYTHONWARNINGS=ignore $(BIN)/python -m platform_ops.sandbox demo

# the demo keeps its Dagster instance (runs, cursors, plots) and the sink's messages in .sandbox/dagster_home
demo-clean:
	rm -rf .sandbox/dagster_home .sandbox/metrics .sandbox/charts

# Not yet part of test (other modules still have findings); then test's first recipe line: $(BIN)/ruff check .
# lint first: a finding fails in seconds, before the 12-minute suite
test: $(STAMP) system-packages
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# ruff (pinned in the test extra): pyflakes, pycodestyle, isort order, bugbear, pyupgrade; settings in pyproject.toml
lint: $(STAMP)
	$(BIN)/ruff check .

smoke: $(STAMP) system-packages
	@PYTHONWARNINGS=ignore $(BIN)/python -m platform_ops.sandbox smoke $(if $(FAULTS),--faults)

bench: $(STAMP) system-packages
	@PYTHONWARNINGS=ignore $(BIN)/python -m platform_ops_tests.bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .tmp_dagster_home_*
