"""Telegram's `parse_mode=HTML` parser, transcribed from tdlib's `parse_html`.

It walks the UTF-8 bytes exactly like td does, so the byte offsets in its error
messages (`Unsupported start tag "vip" at byte offset 12`) are the ones the real
Bot API reports. The result is the plain text plus MessageEntity dicts whose
offsets and lengths are in UTF-16 code units, as Telegram sends them.

One deliberate difference: with `strict_ampersand=True` (the fake's default) a
`&` in text content that does not start `&lt;`, `&gt;`, `&amp;`, `&quot;`,
`&#NN;` or `&#xHH;` is rejected. Real Telegram keeps such a `&` literally, but an
unescaped `&` almost always means unescaped user data, which breaks on the next
`<`; the fake makes that bug visible early.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SUPPORTED_TAGS = frozenset(
    {
        "a",
        "b",
        "strong",
        "i",
        "em",
        "s",
        "strike",
        "del",
        "u",
        "ins",
        "tg-spoiler",
        "tg-emoji",
        "span",
        "pre",
        "code",
        "blockquote",
    }
)

_SIMPLE_ENTITY_TYPES = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "u": "underline",
    "ins": "underline",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
}

_NAMED_ENTITIES = {b"lt": 0x3C, b"gt": 0x3E, b"amp": 0x26, b"quot": 0x22}

# td's is_space(); the terminating NUL counts as a space there too.
_SPACES = frozenset(b" \t\r\n\v\f\0")
_LT, _GT, _AMP, _SLASH, _EQ, _NUL, _HASH, _SEMI = b"<>&/=\0#;"
_QUOTES = frozenset(b"\"'")

# Characters td trims from both ends of a message text.
TRIM_CHARS = " \t\n\r\v\f"


class EntityParseError(ValueError):
    """The text can't be parsed; str(error) is the part after "can't parse entities: "."""


@dataclass
class _Open:
    tag: str
    argument: str
    utf16_offset: int
    byte_offset: int
    expandable: bool


def utf16_len(text: str) -> int:
    """Length of `text` in UTF-16 code units (Telegram's unit for entity offsets)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def _is_alnum(c: int) -> bool:
    return 0x30 <= c <= 0x39 or 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A


def _is_alpha(c: int) -> bool:
    return 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A


def _decode_entity(data: bytes, pos: int, *, strict: bool) -> tuple[int, int]:
    """td's decode_html_entity: (code point or 0, position after the entity)."""
    end = pos + 1
    res = 0
    if data[end] == _HASH:
        end += 1
        if data[end] in (0x78, 0x58):  # x / X
            end += 1
            start = end
            while chr(data[end]) in "0123456789abcdefABCDEF":
                res = res * 16 + int(chr(data[end]), 16)
                end += 1
                if res >= 0x10FFFF:
                    return 0, pos
        else:
            start = end
            while 0x30 <= data[end] <= 0x39:
                res = res * 10 + data[end] - 0x30
                end += 1
                if res >= 0x10FFFF:
                    return 0, pos
        if end == start or res == 0 or 0xD800 <= res <= 0xDFFF:
            return 0, pos
    else:
        while _is_alpha(data[end]):
            end += 1
        name = data[pos + 1 : end]
        if name not in _NAMED_ENTITIES:
            return 0, pos
        res = _NAMED_ENTITIES[name]
    if data[end] == _SEMI:
        return res, end + 1
    if strict:
        return 0, pos
    return res, end


def parse_html(html: str, *, strict_ampersand: bool = True) -> tuple[str, list[dict[str, Any]]]:
    """Parse Telegram HTML into (plain text, entities) or raise EntityParseError."""
    data = html.encode("utf-8") + b"\0"
    size = len(data) - 1
    out = bytearray()
    utf16 = 0
    stack: list[_Open] = []
    entities: list[dict[str, Any]] = []
    i = 0
    while i < size:
        c = data[i]
        if c == _AMP:
            ch, new_i = _decode_entity(data, i, strict=strict_ampersand)
            if ch:
                out += chr(ch).encode("utf-8")
                utf16 += 2 if ch > 0xFFFF else 1
                i = new_i
                continue
            if strict_ampersand:
                raise EntityParseError(
                    f'Unescaped "&" at byte offset {i}; escape it as "&amp;" '
                    "(FakeTelegram is stricter than Telegram here)"
                )
        if c != _LT:
            out.append(c)
            if c & 0xC0 != 0x80:
                utf16 += 2 if c >= 0xF0 else 1
            i += 1
            continue

        begin = i
        i += 1
        if data[i] != _SLASH:
            while data[i] not in _SPACES and data[i] != _GT:
                i += 1
            if data[i] == _NUL:
                raise EntityParseError(f"Unclosed start tag at byte offset {begin}")
            tag = data[begin + 1 : i].decode("utf-8", "replace").lower()
            if tag not in SUPPORTED_TAGS:
                raise EntityParseError(f'Unsupported start tag "{tag}" at byte offset {begin}')
            argument = ""
            expandable = False
            while data[i] != _GT:
                while data[i] != _NUL and data[i] in _SPACES:
                    i += 1
                if data[i] == _GT:
                    break
                if data[i] == _NUL:
                    raise EntityParseError(f'Unclosed start tag "{tag}" at byte offset {begin}')
                attr_begin = i
                while data[i] not in _SPACES and data[i] not in (_EQ, _GT):
                    i += 1
                attr_name = data[attr_begin:i].decode("utf-8", "replace")
                if not attr_name:
                    raise EntityParseError(
                        f'Empty attribute name in the tag "{tag}" at byte offset {begin}'
                    )
                while data[i] != _NUL and data[i] in _SPACES:
                    i += 1
                if data[i] != _EQ:
                    if tag == "blockquote" and attr_name == "expandable":
                        expandable = True
                        continue
                    raise EntityParseError(
                        "Expected equal sign in declaration of an attribute of the tag "
                        f'"{tag}" at byte offset {begin}'
                    )
                i += 1
                while data[i] != _NUL and data[i] in _SPACES:
                    i += 1
                if data[i] == _NUL:
                    raise EntityParseError(f'Unclosed start tag "{tag}" at byte offset {begin}')
                value = bytearray()
                if data[i] not in _QUOTES:
                    token_begin = i
                    while _is_alnum(data[i]) or data[i] in b".-":
                        i += 1
                    value += data[token_begin:i].lower()
                    if data[i] not in _SPACES and data[i] != _GT:
                        raise EntityParseError(
                            f"Unexpected end of name token at byte offset {token_begin}"
                        )
                else:
                    quote = data[i]
                    i += 1
                    while data[i] != quote and data[i] != _NUL:
                        if data[i] == _AMP:
                            ch, new_i = _decode_entity(data, i, strict=False)
                            if ch:
                                value += chr(ch).encode("utf-8")
                                i = new_i
                                continue
                        value.append(data[i])
                        i += 1
                    if data[i] == quote:
                        i += 1
                if data[i] == _NUL:
                    raise EntityParseError(f"Unclosed start tag at byte offset {begin}")
                attr_value = value.decode("utf-8", "replace")
                if (tag == "a" and attr_name == "href") or (
                    tag == "tg-emoji" and attr_name == "emoji-id"
                ):
                    argument = attr_value
                elif tag == "blockquote" and attr_name == "expandable":
                    expandable = True
                elif tag == "code" and attr_name == "class" and attr_value.startswith("language-"):
                    argument = attr_value[len("language-") :]
                elif tag == "span" and attr_name == "class" and attr_value.startswith("tg-"):
                    argument = attr_value[len("tg-") :]
            if tag == "span" and argument != "spoiler":
                raise EntityParseError(
                    f'Tag "span" must have class "tg-spoiler" at byte offset {begin}'
                )
            stack.append(_Open(tag, argument, utf16, len(out), expandable))
            i += 1  # skip '>'
            continue

        # an end tag
        if not stack:
            raise EntityParseError(f"Unexpected end tag at byte offset {begin}")
        i += 1  # skip '/'
        name_begin = i
        while data[i] not in _SPACES and data[i] != _GT:
            i += 1
        end_name = data[name_begin:i].decode("utf-8", "replace").lower()
        while data[i] != _NUL and data[i] in _SPACES:
            i += 1
        if data[i] != _GT:
            raise EntityParseError(f"Unclosed end tag at byte offset {begin}")
        i += 1
        top = stack[-1]
        if end_name and end_name != top.tag:
            raise EntityParseError(
                f'Unmatched end tag at byte offset {begin}, expected "</{top.tag}>", '
                f'found "</{end_name}>"'
            )
        stack.pop()
        if utf16 > top.utf16_offset:
            entity = _make_entity(top, utf16, bytes(out[top.byte_offset :]), stack, entities)
            if entity is not None:
                entities.append(entity)
    if stack:
        raise EntityParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1].tag}"')
    entities.sort(key=lambda e: (e["offset"], -e["length"]))
    return out.decode("utf-8"), entities


def _make_entity(
    top: _Open,
    utf16_end: int,
    content: bytes,
    stack: list[_Open],
    entities: list[dict[str, Any]],
) -> dict[str, Any] | None:
    offset = top.utf16_offset
    length = utf16_end - offset
    base: dict[str, Any] = {"offset": offset, "length": length}
    if top.tag in _SIMPLE_ENTITY_TYPES:
        return {"type": _SIMPLE_ENTITY_TYPES[top.tag], **base}
    if top.tag == "a":
        url = top.argument or content.decode("utf-8", "replace")
        return {"type": "text_link", **base, "url": url}
    if top.tag == "tg-emoji":
        if not top.argument.isdigit() or int(top.argument) == 0:
            raise EntityParseError("Invalid custom emoji identifier specified")
        return {"type": "custom_emoji", **base, "custom_emoji_id": top.argument}
    if top.tag == "blockquote":
        kind = "expandable_blockquote" if top.expandable else "blockquote"
        return {"type": kind, **base}
    if top.tag == "code":
        if stack and stack[-1].tag == "pre" and top.argument:
            # <pre><code class="language-x">: the language goes to the enclosing <pre>
            stack[-1].argument = top.argument
            return None
        return {"type": "code", **base}
    # pre
    if top.argument:
        return {"type": "pre", **base, "language": top.argument}
    return {"type": "pre", **base}


def trim_text(text: str, entities: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Strip leading/trailing whitespace like Telegram does and fix the entities up."""
    stripped_left = text.lstrip(TRIM_CHARS)
    shift = utf16_len(text[: len(text) - len(stripped_left)])
    result = stripped_left.rstrip(TRIM_CHARS)
    total = utf16_len(result)
    fixed: list[dict[str, Any]] = []
    for entity in entities:
        start = max(0, int(entity["offset"]) - shift)
        end = min(total, int(entity["offset"]) + int(entity["length"]) - shift)
        if end > start:
            fixed.append({**entity, "offset": start, "length": end - start})
    return result, fixed
