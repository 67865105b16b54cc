# Every target that needs the venv depends on `install`, which is cheap when nothing changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run demo test lint typecheck bench locales locales-update clean

install: $(STAMP) locales

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Catalogues are compiled here, never committed as binaries. A fuzzy entry (a guess left
# by locales-update) is not compiled: it shows in English until a translator confirms it,
# and tests/test_i18n.py fails on it. A catalogue that fails to compile stops the install.
locales: $(STAMP)
	@for po in locales/*/LC_MESSAGES/*.po; do \
		[ -e "$$po" ] || continue; \
		mo="$${po%.po}.mo"; \
		if [ ! -e "$$mo" ] || [ "$$po" -nt "$$mo" ]; then \
			rm -f "$$mo.tmp"; \
			$(BIN)/pybabel -q compile -i "$$po" -o "$$mo.tmp" || { rm -f "$$mo.tmp"; exit 1; }; \
			[ -e "$$mo.tmp" ] || { echo "$$po was not compiled (fuzzy header?)" >&2; exit 1; }; \
			mv "$$mo.tmp" "$$mo"; \
		fi; \
	done

# After adding or changing a _()/gettext/ngettext/__ call anywhere in bot/ or handlers/:
# extract every message into the template, merge it into each catalogue, then translate
# what is new or fuzzy in locales/*/LC_MESSAGES/messages.po.
BABEL_KEYWORDS := -k __ -k lazy_gettext -k lazy_ngettext:1,2
POT := locales/messages.pot

locales-update: $(STAMP)
	$(BIN)/pybabel extract -F babel.cfg $(BABEL_KEYWORDS) --add-location=file --sort-by-file \
		--add-comments=Translators: --project=smsman-bot -o $(POT) .
	$(BIN)/pybabel update -i $(POT) -d locales -D messages --previous --ignore-obsolete \
		--ignore-pot-creation-date
	@$(MAKE) --no-print-directory locales

run: install
	$(BIN)/python -m bot

# The bot with no tokens: a sandbox SMS-Man, a local Bot API server and a chat page, all on
# 127.0.0.1; prints the address to open; Ctrl-C stops everything.
demo: install
	@$(BIN)/python -m sandbox

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy bot handlers storage

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# Each script prints its figures and exits non-zero when its aim is missed.
bench: install
	$(BIN)/python bench/storage.py
	$(BIN)/python bench/menu.py --users 50
	$(BIN)/python bench/poller.py --n 100 500 1000 --capped 50

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
