"""Every message in the source has a complete Russian translation, and it is compiled.

The messages are extracted from bot/ and handlers/ with Babel's own extractor, the same
mapping (babel.cfg) and keywords (the Makefile's BABEL_KEYWORDS) that `make locales-update`
uses. So a new `_()`/`gettext`/`ngettext`/`__` call without a Russian msgstr fails here,
before anyone sees an English word in a Russian chat.
"""

from __future__ import annotations

import ast
import gettext
import re
import shlex
import string
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_keywords, parse_mapping_cfg
from babel.messages.pofile import read_po

from bot.ui.i18n import LOCALES_DIR

ROOT = Path(__file__).resolve().parents[1]
RU_PO = LOCALES_DIR / "ru" / "LC_MESSAGES" / "messages.po"
RU_MO = RU_PO.with_suffix(".mo")
RUSSIAN_PLURALS = 3
# aiogram.utils.i18n's callables; any import of them must keep a name the extractor knows.
AIOGRAM_I18N = frozenset({"gettext", "ngettext", "lazy_gettext", "lazy_ngettext"})

_TAG = re.compile(r"</?[A-Za-z][^>]*>")


# ------------------------------------------------------------------ extraction


def makefile_keywords() -> dict[str, Any]:
    """Babel's default keywords plus the Makefile's BABEL_KEYWORDS (-k ...)."""
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    found = re.search(r"^BABEL_KEYWORDS\s*:?=(.*)$", text, re.MULTILINE)
    assert found, "the Makefile defines BABEL_KEYWORDS for pybabel extract"
    args = shlex.split(found.group(1))
    specs = [args[i + 1] for i, arg in enumerate(args) if arg == "-k"]
    assert specs, "BABEL_KEYWORDS holds -k options"
    keywords = dict(DEFAULT_KEYWORDS)
    keywords.update(parse_keywords(specs))
    return keywords


def mapping() -> tuple[list[tuple[str, str]], dict[str, dict[str, Any]]]:
    with (ROOT / "babel.cfg").open(encoding="utf-8") as f:
        method_map, options_map = parse_mapping_cfg(f)  # type: ignore[no-untyped-call]
    return list(method_map), dict(options_map)


def extract(root: Path = ROOT) -> Catalog:
    """What `pybabel extract -F babel.cfg $(BABEL_KEYWORDS) .` would put in the template."""
    method_map, options_map = mapping()
    catalog = Catalog(locale=None)
    for filename, lineno, message, comments, context in extract_from_dir(
        root, method_map, options_map, keywords=makefile_keywords()
    ):
        catalog.add(message, None, [(filename, lineno)], auto_comments=comments, context=context)
    return catalog


def scanned_files(root: Path = ROOT) -> list[Path]:
    """The Python files babel.cfg maps (so the AST check covers what extraction covers)."""
    method_map, _options = mapping()
    files: set[Path] = set()
    for pattern, method in method_map:
        if method == "python":
            files.update(p for p in root.glob(pattern.replace("**.py", "**/*.py")))
    return sorted(f for f in files if not any(part.startswith(".") for part in f.parts))


# ------------------------------------------------------------------ checks


def _fields(text: str) -> set[str]:
    return {name for _lit, name, _spec, _conv in string.Formatter().parse(text) if name is not None}


def _tags(text: str) -> Counter[str]:
    return Counter(_TAG.findall(text))


def _ids(message: Any) -> tuple[str, ...]:
    return message.id if isinstance(message.id, tuple) else (message.id,)


def _strings(message: Any) -> tuple[str, ...]:
    value = message.string
    if isinstance(value, tuple):
        return value
    return (value,) if value is not None else ()


def _format_problem(source: str, translation: str) -> str | None:
    """Placeholders and HTML tags must be the same; the translation must still .format()."""
    if _fields(translation) != _fields(source):
        return f"placeholders {sorted(_fields(translation))} != {sorted(_fields(source))}"
    if _tags(translation) != _tags(source):
        return f"HTML tags {dict(_tags(translation))} != {dict(_tags(source))}"
    try:
        translation.format(**dict.fromkeys(_fields(source), "x"))
    except (KeyError, IndexError, ValueError) as exc:
        return f"does not .format(): {exc!r}"
    return None


def translation_problems(extracted: Catalog, translated: Catalog) -> list[str]:
    """One line per extracted message that the catalogue leaves untranslated or broken."""
    problems: list[str] = []
    nplurals = translated.num_plurals
    for message in extracted:
        if not message.id:
            continue
        ids = _ids(message)
        where = ", ".join(sorted({f for f, _line in message.locations}))
        label = f"{ids[0]!r} ({where})"
        entry = translated.get(message.id, message.context)
        if entry is None:
            problems.append(f"{label}: not in {RU_PO.name}; run `make locales-update`")
            continue
        if entry.fuzzy:
            problems.append(f"{label}: fuzzy (a guess by locales-update); check and unmark it")
        forms = _strings(entry)
        plural = len(ids) > 1
        if plural and len(forms) != nplurals:
            problems.append(f"{label}: {len(forms)} plural forms, the language has {nplurals}")
        if not plural and (len(forms) != 1 or isinstance(entry.string, tuple)):
            problems.append(f"{label}: the catalogue has it as a plural")
            continue
        for index, form in enumerate(forms):
            if not form.strip():
                problems.append(f"{label}: msgstr[{index}] is empty")
                continue
            problem = _format_problem(ids[-1], form)
            if problem is not None:
                problems.append(f"{label}: msgstr[{index}] {problem}")
    return problems


def _literal_positions(spec: Any) -> list[int]:
    """0-based argument positions that must be string literals for a keyword spec."""
    if spec is None:
        return [0]
    positions = []
    for item in spec if isinstance(spec, tuple) else (spec,):
        index = item[0] if isinstance(item, tuple) else item
        positions.append(int(index) - 1)
    return positions


def unextractable_calls(files: Iterable[Path], keywords: Mapping[str, Any]) -> list[str]:
    """Calls the extractor silently skips: _(variable), _(f"..."), gettext imported under
    another name. Their text would never reach the catalogue."""
    problems: list[str] = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "aiogram.utils.i18n"
            ):
                for alias in node.names:
                    name = alias.asname or alias.name
                    if alias.name in AIOGRAM_I18N and name not in keywords:
                        problems.append(
                            f"{path}:{node.lineno}: {alias.name} imported as {name!r}, "
                            "which pybabel does not extract"
                        )
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else None
            )
            if called is None or called not in keywords:
                continue
            for position in _literal_positions(keywords[called]):
                arg = node.args[position] if position < len(node.args) else None
                if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                    problems.append(
                        f"{path}:{node.lineno}: {called}() argument {position + 1} is not a "
                        "string literal, so it can't be translated"
                    )
    return problems


def read_ru() -> Catalog:
    with RU_PO.open("rb") as f:
        return read_po(f)


@dataclass(frozen=True)
class Source:
    root: Path

    def write(self, relative: str, text: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


# ------------------------------------------------------------------ the tests


def test_every_message_has_a_complete_russian_translation() -> None:
    extracted = extract()
    ids = {message.id for message in extracted if message.id}
    assert len(ids) > 50, f"extraction found only {len(ids)} messages: is babel.cfg right?"
    assert any(isinstance(i, tuple) and i[0] == "{n} minute" for i in ids), "plurals extracted"
    problems = translation_problems(extracted, read_ru())
    assert problems == [], "Russian catalogue incomplete:\n" + "\n".join(problems)


def test_every_translatable_call_can_be_extracted() -> None:
    files = scanned_files()
    assert any(f.name == "texts.py" for f in files) and any(
        f.parent.name == "handlers" for f in files
    )
    problems = unextractable_calls(files, makefile_keywords())
    assert problems == [], "\n".join(problems)


def test_russian_catalogue_uses_russian_plural_rules() -> None:
    catalog = read_ru()
    assert catalog.num_plurals == RUSSIAN_PLURALS
    assert str(catalog.locale) == "ru"


def test_compiled_catalogue_matches_the_po() -> None:
    """The .mo the bot loads is built from the current .po (`make install` compiles it)."""
    assert RU_MO.exists(), f"{RU_MO} is missing: run `make install` (it compiles the catalogues)"
    with RU_MO.open("rb") as f:
        compiled = gettext.GNUTranslations(f)
    stale = []
    for message in read_ru():
        if not message.id or message.fuzzy:
            continue
        ids, forms = _ids(message), _strings(message)
        if len(ids) == 1:
            got: tuple[str, ...] = (compiled.gettext(ids[0]),)
        else:  # 1, 2, 5 pick the three Russian forms
            got = tuple(compiled.ngettext(ids[0], ids[1], n) for n in (1, 2, 5))
        if got != forms:
            stale.append(ids[0])
    assert stale == [], f"{RU_MO.name} is older than the .po; run `make install`: {stale}"


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, "1 минута"), (2, "2 минуты"), (4, "4 минуты"), (5, "5 минут"), (11, "11 минут"),
     (12, "12 минут"), (21, "21 минута"), (22, "22 минуты"), (25, "25 минут"),
     (111, "111 минут"), (0, "0 минут")],
)  # fmt: skip
def test_minutes_in_russian(n: int, expected: str) -> None:
    from bot.ui import texts
    from bot.ui.i18n import make_i18n

    i18n = make_i18n()
    with i18n.use_locale("ru"):
        assert texts.minutes_left(n * 60) == expected
    with i18n.use_locale("en"):
        assert texts.minutes_left(n * 60) == f"{n} minute{'' if n == 1 else 's'}"


# ------------------------------------------------------------------ the checks can fail


def test_a_new_untranslated_message_is_caught(tmp_path: Path) -> None:
    """The same extraction over a tree with new strings in a service and a handler."""
    known = next(m.id for m in read_ru() if isinstance(m.id, str) and m.id and m.string)
    source = Source(tmp_path)
    source.write(
        "bot/services/poller_texts.py",
        "from aiogram.utils.i18n import gettext as _\n"
        "from aiogram.utils.i18n import lazy_gettext as __\n"
        "from aiogram.utils.i18n import ngettext\n\n"
        "A = _('Your order is on its way.')\n"
        "B = __('A lazy label')\n"
        "C = ngettext('{n} parcel', '{n} parcels', 3)\n",
    )
    # Already translated: not reported.
    source.write(
        "handlers/known.py", f"from aiogram.utils.i18n import gettext\nD = gettext({known!r})\n"
    )
    source.write("tests/ignored.py", "from x import _\nE = _('Not the bot')\n")
    problems = translation_problems(extract(tmp_path), read_ru())
    reported = " ".join(problems)
    assert len(problems) == 3, problems
    for text in ("Your order is on its way.", "A lazy label", "{n} parcel"):
        assert repr(text) in reported
    assert "poller_texts.py" in reported


def test_broken_translations_are_caught() -> None:
    extracted = Catalog(locale=None)
    extracted.add("Price: <b>{price}</b>", locations=[("bot/x.py", 1)])
    extracted.add(("{n} minute", "{n} minutes"), locations=[("bot/x.py", 2)])
    extracted.add("Hi, {name}!", locations=[("bot/x.py", 3)])
    extracted.add("Done.", locations=[("bot/x.py", 4)])
    extracted.add("Gone.", locations=[("bot/x.py", 5)])
    translated = Catalog(locale="ru")
    translated.add("Price: <b>{price}</b>", "Цена: <b>{цена}</b>")  # placeholder translated
    translated.add(("{n} minute", "{n} minutes"), ("{n} минута", "{n} минуты", ""))
    translated.add("Hi, {name}!", "Привет, <b>{name}</b>!")  # a tag that was not there
    translated.add("Done.", "Готово.", flags=["fuzzy"])
    problems = translation_problems(extracted, translated)
    assert len(problems) == 5, problems
    assert "placeholders" in problems[0]
    assert "msgstr[2] is empty" in problems[1]
    assert "HTML tags" in problems[2]
    assert "fuzzy" in problems[3]
    assert "not in" in problems[4]


def test_unextractable_calls_are_caught(tmp_path: Path) -> None:
    path = tmp_path / "bad.py"
    path.write_text(
        "from aiogram.utils.i18n import gettext as t\n"
        "from aiogram.utils.i18n import gettext as _, ngettext\n"
        "kind = 'x'\n"
        "a = _(kind)\n"
        "b = _(f'Hello {kind}')\n"
        "c = ngettext('one', kind, 2)\n"
        "d = _('fine')\n",
        encoding="utf-8",
    )
    problems = unextractable_calls([path], makefile_keywords())
    assert len(problems) == 4, problems
    assert "imported as 't'" in problems[0]


def test_an_uncompiled_catalogue_is_named_at_startup(tmp_path: Path) -> None:
    from bot.ui.i18n import CataloguesNotCompiled, check_compiled

    po = tmp_path / "ru" / "LC_MESSAGES" / "messages.po"
    po.parent.mkdir(parents=True)
    po.write_text('msgid ""\nmsgstr ""\n', encoding="utf-8")
    with pytest.raises(CataloguesNotCompiled, match="make install"):
        check_compiled(tmp_path)
    po.with_suffix(".mo").write_bytes(b"")
    check_compiled(tmp_path)
