"""Validation of `reply_markup` the way the Bot API checks it.

`validate_reply_markup` returns the markup as Telegram would echo it back (empty
rows dropped, an empty inline keyboard meaning "no keyboard") or raises
MarkupError with the Bot API's description.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

MAX_BUTTONS = 100
MAX_CALLBACK_DATA_BYTES = 64

INLINE_ACTIONS = (
    "url",
    "callback_data",
    "web_app",
    "login_url",
    "switch_inline_query",
    "switch_inline_query_current_chat",
    "switch_inline_query_chosen_chat",
    "copy_text",
    "callback_game",
    "pay",
)

_BUTTON = "Bad Request: can't parse inline keyboard button: "
_MARKUP_JSON = "Bad Request: can't parse reply keyboard markup JSON object"


class MarkupError(ValueError):
    """str(error) is the full Bot API description ("Bad Request: ...")."""


def _check_url(url: Any) -> None:
    if not isinstance(url, str) or not url.strip() or any(ch.isspace() for ch in url):
        raise MarkupError("Bad Request: BUTTON_URL_INVALID")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host_port = "." in scheme and parts.path[:1].isdigit()  # "example.com:8080/x"
    if not scheme or host_port:
        parts = urlsplit(f"http://{url}")  # "t.me/x": Telegram assumes http
        scheme = "http"
    elif "://" not in url and scheme not in ("tg", "ton"):
        raise MarkupError("Bad Request: BUTTON_URL_INVALID")  # javascript:, mailto:
    if scheme in ("http", "https"):
        host = parts.hostname or ""
        if "." not in host and host != "localhost":
            raise MarkupError("Bad Request: BUTTON_URL_INVALID")
    elif scheme not in ("tg", "ton"):
        raise MarkupError("Bad Request: BUTTON_URL_INVALID")


def _inline_button(button: Any) -> dict[str, Any]:
    if not isinstance(button, dict):
        raise MarkupError(_BUTTON + "InlineKeyboardButton must be an Object")
    if "text" not in button:
        raise MarkupError(_BUTTON + 'Can\'t find field "text"')
    text = button["text"]
    if not isinstance(text, str):
        raise MarkupError(_BUTTON + 'Field "text" must be of type String')
    if not text.strip():
        raise MarkupError(_BUTTON + "Text must be non-empty")
    actions = [key for key in INLINE_ACTIONS if button.get(key) is not None]
    if not actions:
        raise MarkupError(_BUTTON + "Text buttons are unallowed in the inline keyboard")
    if len(actions) > 1:
        raise MarkupError(
            _BUTTON + f"exactly one of the optional fields must be used, got {', '.join(actions)}"
        )
    action = actions[0]
    value = button[action]
    if action == "callback_data":
        if not isinstance(value, str):
            raise MarkupError(_BUTTON + 'Field "callback_data" must be of type String')
        if not 1 <= len(value.encode("utf-8")) <= MAX_CALLBACK_DATA_BYTES:
            raise MarkupError("Bad Request: BUTTON_DATA_INVALID")
    elif action == "url":
        _check_url(value)
    elif action == "web_app":
        if not isinstance(value, dict) or "url" not in value:
            raise MarkupError(_BUTTON + 'Field "web_app" must have field "url"')
        if not str(value["url"]).startswith("https://"):
            raise MarkupError("Bad Request: BUTTON_URL_INVALID")
    elif action == "login_url":
        if not isinstance(value, dict) or "url" not in value:
            raise MarkupError(_BUTTON + 'Field "login_url" must have field "url"')
        _check_url(value["url"])
    return {key: val for key, val in button.items() if val is not None}


def _keyboard_button(button: Any) -> Any:
    if isinstance(button, str):
        if not button:
            raise MarkupError("Bad Request: can't parse keyboard button: Text must be non-empty")
        return button
    if not isinstance(button, dict) or not isinstance(button.get("text"), str):
        raise MarkupError("Bad Request: can't parse keyboard button: Can't find field \"text\"")
    if not button["text"]:
        raise MarkupError("Bad Request: can't parse keyboard button: Text must be non-empty")
    return {key: val for key, val in button.items() if val is not None}


def _rows(markup: dict[str, Any], field: str, kind: str) -> list[list[Any]]:
    rows = markup[field]
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise MarkupError(
            f'Bad Request: field "{field}" of the {kind} should be an Array of Arrays'
        )
    return rows


def validate_reply_markup(markup: Any, *, inline_only: bool = False) -> dict[str, Any] | None:
    """Validate a decoded reply_markup; None (or an empty inline keyboard) means none."""
    if markup is None:
        return None
    if not isinstance(markup, dict):
        raise MarkupError(_MARKUP_JSON)
    if "inline_keyboard" in markup:
        rows = _rows(markup, "inline_keyboard", "InlineKeyboardMarkup")
        fixed = [[_inline_button(button) for button in row] for row in rows if row]
        if sum(len(row) for row in fixed) > MAX_BUTTONS:
            raise MarkupError("Bad Request: REPLY_MARKUP_TOO_LONG")
        return {"inline_keyboard": fixed} if fixed else None
    if inline_only:
        raise MarkupError("Bad Request: inline keyboard expected")
    if "keyboard" in markup:
        rows = _rows(markup, "keyboard", "ReplyKeyboardMarkup")
        fixed_rows = [[_keyboard_button(button) for button in row] for row in rows if row]
        if sum(len(row) for row in fixed_rows) > 300:
            raise MarkupError("Bad Request: REPLY_MARKUP_TOO_LONG")
        return {**markup, "keyboard": fixed_rows}
    if markup.get("remove_keyboard") is True or markup.get("force_reply") is True:
        return dict(markup)
    raise MarkupError(_MARKUP_JSON)


def inline_buttons(markup: dict[str, Any] | None) -> list[list[tuple[str, str | None]]]:
    """[(label, callback_data or url or None)] per row of an inline keyboard."""
    if not markup or "inline_keyboard" not in markup:
        return []
    result: list[list[tuple[str, str | None]]] = []
    for row in markup["inline_keyboard"]:
        labels: list[tuple[str, str | None]] = []
        for button in row:
            data = button.get("callback_data")
            if data is None and isinstance(button.get("url"), str):
                data = button["url"]
            labels.append((str(button.get("text", "")), data))
        result.append(labels)
    return result
