# Every target that needs the venv depends on `install`, which is cheap when nothing changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck bench locales clean

install: $(STAMP) locales

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Catalogues are compiled here, never committed as binaries.
locales: $(STAMP)
	@for po in locales/*/LC_MESSAGES/*.po; do \
		[ -e "$$po" ] || continue; \
		mo="$${po%.po}.mo"; \
		if [ ! -e "$$mo" ] || [ "$$po" -nt "$$mo" ]; then \
			$(BIN)/pybabel compile --use-fuzzy -i "$$po" -o "$$mo" >/dev/null || exit 1; \
		fi; \
	done

run: install
	$(BIN)/python -m bot

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy bot handlers storage

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python bench/storage.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
