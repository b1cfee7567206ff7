# platform-ops: every target creates and uses the virtualenv in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test smoke bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --disable-pip-version-check -e '.[sandbox,promotion,test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PYTHONWARNINGS=ignore $(BIN)/python -m platform_ops.sandbox demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

smoke: $(STAMP)
	@PYTHONWARNINGS=ignore $(BIN)/python -m platform_ops.sandbox smoke $(if $(FAULTS),--faults)

bench: $(STAMP)
	@PYTHONWARNINGS=ignore $(BIN)/python -m platform_ops_tests.bench

clean:
	rm -rf $(VENV) .pytest_cache .tmp_dagster_home_*
