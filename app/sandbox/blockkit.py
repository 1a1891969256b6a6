"""Slack Block Kit and mrkdwn as HTML, for the sandbox's web page: what Slack would show, made safe.

Pure functions (no web framework): `render_blocks` for a message's blocks (or its fallback text),
`render_view` for a modal or the App Home tab. The page assigns their output to innerHTML, so this is
the one place where text becomes markup, and agent-controlled text reaches it: every piece of text is
HTML-escaped exactly once, every attribute value is escaped with quotes, and the only tags in the
output are the ones written here. Links become `<a href>` only for http(s) (and mailto in mrkdwn).

mrkdwn is rendered in the order that makes that guarantee easy to check:
1. Slack's control sequences `<…>` (links, mentions, dates) are rendered first and replaced by
   placeholders `<N>`; every other `<` or `>` becomes Slack's escape, so in what is left a `<` can only
   start a placeholder.
2. Formatting (``` blocks, quote lines, `code`, *bold*, _italic_, ~strike~) is parsed on that text;
   each match emits a balanced pair of tags around its recursively rendered inside.
3. Plain runs of text have Slack's three escapes (&amp; &lt; &gt;) decoded in one pass and are then
   HTML-escaped, so `&amp;lt;` shows as "&lt;", as in Slack.

The DOM contract the page's script relies on (class names, data attributes, ids) is described on
`render_blocks` and `render_view`.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

_NO_NAMES: Mapping[str, str] = MappingProxyType({})

# A Slack control sequence: no nesting and no newline inside, as Slack writes them.
_TOKEN = re.compile(r"<([^<>\n]*)>")
_PLACEHOLDER = re.compile(r"<(\d+)>")
_SLACK_ENTITY = re.compile(r"&(amp|lt|gt);")
_SLACK_ENTITIES = {"amp": "&", "lt": "<", "gt": ">"}
_PRE = re.compile(r"```(.*?)```", re.DOTALL)
# Inline formatting on one line. A marker opens after a non-word character (or the line's start) and
# closes before one, and the inside neither starts nor ends with a space: Slack's rules, which keep
# snake_case_names and 2*3*4 as they are. Leftmost match wins; code first at the same position.
_INLINE = re.compile(
    r"`(?P<code>[^`]+)`"
    r"|(?<![\w*])\*(?P<bold>[^*\s](?:[^*]*[^*\s])?)\*(?![\w*])"
    r"|(?<![\w_])_(?P<italic>[^_\s](?:[^_]*[^_\s])?)_(?![\w_])"
    r"|(?<![\w~])~(?P<strike>[^~\s](?:[^~]*[^~\s])?)~(?![\w~])"
)
_INLINE_TAGS = {"bold": "b", "italic": "i", "strike": "s"}
# Quote lines, after step 1 turned a raw ">" into its escape (Slack itself stores quotes as "&gt; ").
_QUOTE_PREFIX = "&gt;"
_LINK_SCHEMES = ("http://", "https://", "mailto:")
_BUTTON_SCHEMES = ("http://", "https://")
_BUTTON_STYLES = frozenset({"primary", "danger"})
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_DATE_HTML = "%Y-%m-%d %H:%M UTC"


def _esc(text: str) -> str:
    """HTML text or attribute value (quotes included): the one escape everything passes through."""
    return html.escape(text, quote=True)


def _attr(name: str, value: Any) -> str:
    return f' {name}="{_esc(str(value))}"'


def _decode_slack(text: str) -> str:
    """Slack's escapes decoded in a single pass, so "&amp;lt;" becomes "&lt;" and not "<"."""
    return _SLACK_ENTITY.sub(lambda m: _SLACK_ENTITIES[m.group(1)], text)


# -- mrkdwn -----------------------------------------------------------------------------------------


def render_mrkdwn(text: str, *, names: Mapping[str, str] = _NO_NAMES) -> str:
    """Slack mrkdwn as an HTML fragment (inline markup, <br>, <blockquote> and <pre>)."""
    tokens: list[str] = []

    def stash(match: re.Match[str]) -> str:
        tokens.append(_render_token(match.group(1), names))
        return f"<{len(tokens) - 1}>"

    parts: list[str] = []
    last = 0
    for match in _TOKEN.finditer(text):
        parts.append(_escape_stray(text[last : match.start()]))
        parts.append(stash(match))
        last = match.end()
    parts.append(_escape_stray(text[last:]))
    return _Mrkdwn(tokens).render("".join(parts))


def _escape_stray(text: str) -> str:
    # A < or > outside a control sequence is text: give it Slack's escape, as if the sender had.
    return text.replace("<", "&lt;").replace(">", "&gt;")


class _Mrkdwn:
    """Steps 2 and 3 on text whose control sequences are already placeholders into `tokens`."""

    def __init__(self, tokens: list[str]) -> None:
        self._tokens = tokens

    def render(self, text: str) -> str:
        out: list[str] = []
        last = 0
        for match in _PRE.finditer(text):
            before = text[last : match.start()]
            out.append(self._lines(before.removesuffix("\n")))
            # A fence usually sits on its own line: those newlines belong to the fence, not the code.
            inner = match.group(1).removeprefix("\n").removesuffix("\n")
            out.append(f'<pre class="bk-pre">{self._text(inner)}</pre>')
            last = match.end()
            text_after = text[last:]
            if text_after.startswith("\n"):
                last += 1
        out.append(self._lines(text[last:]))
        return "".join(out)

    def _lines(self, text: str) -> str:
        if not text:
            return ""
        out: list[str] = []
        quote: list[str] = []
        pending_break = False
        for line in text.split("\n"):
            if line == _QUOTE_PREFIX or line.startswith(_QUOTE_PREFIX + " "):
                quote.append(self._inline(line.removeprefix(_QUOTE_PREFIX).removeprefix(" ")))
                continue
            if quote:
                out.append(f'<blockquote class="bk-quote">{"<br>".join(quote)}</blockquote>')
                quote, pending_break = [], False
            if pending_break:
                out.append("<br>")
            out.append(self._inline(line))
            pending_break = True
        if quote:
            out.append(f'<blockquote class="bk-quote">{"<br>".join(quote)}</blockquote>')
        return "".join(out)

    def _inline(self, line: str) -> str:
        out: list[str] = []
        last = 0
        for match in _INLINE.finditer(line):
            out.append(self._text(line[last : match.start()]))
            kind = match.lastgroup or ""
            inner = match.group(kind)
            if kind == "code":
                out.append(f'<code class="bk-code">{self._text(inner)}</code>')
            else:
                tag = _INLINE_TAGS[kind]
                out.append(f"<{tag}>{self._inline(inner)}</{tag}>")
            last = match.end()
        out.append(self._text(line[last:]))
        return "".join(out)

    def _text(self, text: str) -> str:
        """Plain text with placeholders: text escaped once, placeholders swapped for their HTML."""
        pieces = _PLACEHOLDER.split(text)
        out: list[str] = []
        for index, piece in enumerate(pieces):
            if index % 2:
                out.append(self._tokens[int(piece)])
            else:
                out.append(_esc(_decode_slack(piece)))
        return "".join(out)


def _render_token(content: str, names: Mapping[str, str]) -> str:
    """One control sequence `<content>` as HTML; anything unrecognised is shown as the text it is."""
    target, _, label = content.partition("|")
    if target.startswith("@"):
        user_id = target[1:]
        shown = names.get(user_id) or _decode_slack(label) or user_id
        return _mention("@" + shown.removeprefix("@"), user_id)
    if target.startswith("#"):
        channel_id = target[1:]
        shown = names.get(channel_id) or _decode_slack(label) or channel_id
        return _mention("#" + shown.removeprefix("#"), channel_id)
    if target.startswith("!subteam^"):
        group_id = target.removeprefix("!subteam^")
        shown = names.get(group_id) or _decode_slack(label) or group_id
        return _mention("@" + shown.removeprefix("@"), group_id)
    if target in ("!here", "!channel", "!everyone"):
        return _mention("@" + target[1:], "")
    if target.startswith("!date^"):
        return _render_date(target, label, content)
    url = _decode_slack(target)
    if url.lower().startswith(_LINK_SCHEMES):
        shown = _decode_slack(label) or url
        return (
            f'<a class="bk-link"{_attr("href", url)} target="_blank" rel="noopener noreferrer">'
            f"{_esc(shown)}</a>"
        )
    # javascript:, data:, a bare word, an unknown "!" command: what was sent, as text.
    return _esc("<" + _decode_slack(content) + ">")


def _mention(shown: str, target_id: str) -> str:
    data = _attr("data-id", target_id) if target_id else ""
    return f'<span class="bk-mention"{data}>{_esc(shown)}</span>'


def _render_date(target: str, label: str, content: str) -> str:
    """`<!date^unix^format[^link]|fallback>` as a fixed, unambiguous UTC time; the fallback as title.

    Slack formats the date in the reader's own time zone and words; the sandbox has no reader profile,
    so it shows UTC, which is also what the fallback (our ISO timestamp) says.
    """
    fallback = _decode_slack(label)
    stamp = target.removeprefix("!date^").split("^", 1)[0]
    try:
        moment = dt.datetime.fromtimestamp(int(stamp), tz=dt.UTC)
    except (ValueError, OverflowError, OSError):
        return _esc(fallback) if fallback else _esc("<" + _decode_slack(content) + ">")
    iso = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f'<time class="bk-date"{_attr("datetime", iso)}{_attr("title", fallback or iso)}>'
        f"{_esc(moment.strftime(_DATE_HTML))}</time>"
    )


# -- text objects ----------------------------------------------------------------------------------


def render_plain(text: str) -> str:
    """plain_text: escaped, newlines kept, nothing else."""
    return _esc(text).replace("\n", "<br>")


def _text_object(obj: Any, names: Mapping[str, str]) -> str:
    """A text object's HTML by its type; anything else (missing, malformed) is empty."""
    if not isinstance(obj, Mapping):
        return ""
    text = obj.get("text")
    text = "" if text is None else str(text)
    if obj.get("type") == "mrkdwn":
        return render_mrkdwn(text, names=names)
    return render_plain(text)


def _plain_label(obj: Any) -> str:
    """The text of a label-like object (button text, title, input label), always as plain text.

    Slack only allows plain_text there; one that says mrkdwn still shows as text, not formatting.
    """
    if isinstance(obj, Mapping):
        text = obj.get("text")
        return render_plain("" if text is None else str(text))
    return ""


# -- blocks ----------------------------------------------------------------------------------------


def render_blocks(
    blocks: Sequence[Mapping[str, Any]] | None,
    *,
    fallback_text: str = "",
    names: Mapping[str, str] = _NO_NAMES,
) -> str:
    """A message's blocks as an HTML fragment; without blocks, its fallback text as mrkdwn.

    `names` maps Slack IDs (U…, C…, S…) to display names for mentions. The fragment is one
    `<div class="bk-blocks">` with a `<div class="bk-block bk-{type}">` per block (an unknown type shows
    "[unsupported block: type]"), or `<div class="bk-fallback">` for the fallback text. Interactive
    elements, which the page's script relies on:
    - action button: `<button type="button" class="bk-button [bk-primary|bk-danger]" data-action-id
      data-block-id data-value>` (data-block-id is "" when the block has none; data-value is left out
      when the button has no value);
    - link button: `<a class="bk-button bk-link [bk-primary|bk-danger]" href target="_blank"
      rel="noopener noreferrer" data-action-id>`; one whose URL is not http(s) is
      `<button type="button" class="bk-button bk-disabled" disabled>` and never a link;
    - input block: `<div class="bk-block bk-input" data-block-id>` holding a `<label>`, an
      `<input>` or `<textarea>` named "{block_id}/{action_id}" (also data-block-id, data-action-id),
      the hint `<p class="bk-hint">` and an empty `<p class="bk-error" data-error-for="{block_id}">`.
    """
    # Whatever reached the fake Slack is rendered, never trusted to be well-formed: blocks that are not
    # a list count as none.
    if not blocks or isinstance(blocks, (str, bytes)) or not isinstance(blocks, Sequence):
        return f'<div class="bk-blocks"><div class="bk-fallback">{render_mrkdwn(str(fallback_text), names=names)}</div></div>'
    rendered = "".join(_block(block, names) for block in blocks)
    return f'<div class="bk-blocks">{rendered}</div>'


def _block(block: Any, names: Mapping[str, str]) -> str:
    if not isinstance(block, Mapping):
        return _wrap("unknown", "", _note("unsupported block", type(block).__name__))
    kind = str(block.get("type") or "")
    block_id = str(block.get("block_id") or "")
    renderer = _BLOCKS.get(kind)
    if renderer is None:
        return _wrap("unsupported", block_id, _note("unsupported block", kind or "?"))
    return _wrap(kind, block_id, renderer(block, block_id, names), extra=_input_attrs(kind, block_id))


def _wrap(kind: str, block_id: str, inner: str, *, extra: str = "") -> str:
    # The class names are the contract; an input block's id rides along in `extra` (the script's).
    return f'<div class="bk-block bk-{_esc(kind)}"{extra}>{inner}</div>'


def _input_attrs(kind: str, block_id: str) -> str:
    # The input block's wrapper is also the `.bk-input[data-block-id]` the modal script looks for.
    return _attr("data-block-id", block_id) if kind == "input" else ""


def _note(what: str, kind: str) -> str:
    return f'<span class="bk-unsupported">[{_esc(what)}: {_esc(kind)}]</span>'


def _header(block: Mapping[str, Any], _block_id: str, _names: Mapping[str, str]) -> str:
    return f'<h3 class="bk-header-text">{_plain_label(block.get("text"))}</h3>'


def _section(block: Mapping[str, Any], block_id: str, names: Mapping[str, str]) -> str:
    body: list[str] = []
    if block.get("text") is not None:
        body.append(f'<div class="bk-text">{_text_object(block.get("text"), names)}</div>')
    fields = block.get("fields")
    if isinstance(fields, Sequence) and not isinstance(fields, str) and fields:
        cells = "".join(f'<div class="bk-field">{_text_object(field, names)}</div>' for field in fields)
        body.append(f'<div class="bk-fields">{cells}</div>')
    out = f'<div class="bk-section-body">{"".join(body)}</div>'
    accessory = block.get("accessory")
    if accessory is not None:
        out += f'<div class="bk-accessory">{_element(accessory, block_id, names)}</div>'
    return out


def _context(block: Mapping[str, Any], _block_id: str, names: Mapping[str, str]) -> str:
    items: list[str] = []
    for element in _elements(block):
        if isinstance(element, Mapping) and element.get("type") == "image":
            # Images are not fetched (the page loads nothing from elsewhere): their alt text stands in.
            alt = str(element.get("alt_text") or "image")
            items.append(f'<span class="bk-context-item bk-image-alt">[{_esc(alt)}]</span>')
        elif isinstance(element, Mapping) and element.get("type") in ("mrkdwn", "plain_text"):
            items.append(f'<div class="bk-context-item">{_text_object(element, names)}</div>')
        else:
            kind = str(element.get("type") or "?") if isinstance(element, Mapping) else "?"
            items.append(f'<span class="bk-context-item">{_note("unsupported element", kind)}</span>')
    return "".join(items)


def _divider(_block: Mapping[str, Any], _block_id: str, _names: Mapping[str, str]) -> str:
    return '<hr class="bk-divider">'


def _actions(block: Mapping[str, Any], block_id: str, names: Mapping[str, str]) -> str:
    return "".join(_element(element, block_id, names) for element in _elements(block))


def _input(block: Mapping[str, Any], block_id: str, _names: Mapping[str, str]) -> str:
    element = block.get("element")
    element = element if isinstance(element, Mapping) else {}
    action_id = str(element.get("action_id") or "")
    control_id = "bk-in-" + _ID_UNSAFE.sub("_", f"{block_id}-{action_id}")
    label = f'<label class="bk-label"{_attr("for", control_id)}>{_plain_label(block.get("label"))}'
    if block.get("optional"):
        label += ' <span class="bk-optional">(optional)</span>'
    label += "</label>"
    if element.get("type") == "plain_text_input":
        control = _text_input(element, block, block_id, action_id, control_id)
    else:
        control = _note("unsupported element", str(element.get("type") or "?"))
    hint = block.get("hint")
    hint_html = f'<p class="bk-hint">{_plain_label(hint)}</p>' if hint is not None else ""
    error = f'<p class="bk-error"{_attr("data-error-for", block_id)} aria-live="polite"></p>'
    return label + control + hint_html + error


def _text_input(
    element: Mapping[str, Any], block: Mapping[str, Any], block_id: str, action_id: str, control_id: str
) -> str:
    attrs = _attr("id", control_id) + _attr("name", f"{block_id}/{action_id}")
    attrs += _attr("data-block-id", block_id) + _attr("data-action-id", action_id)
    attrs += ' class="bk-control"'
    # Slack checks lengths in its client before sending a submission; the browser does the same here.
    for key, html_name in (("min_length", "minlength"), ("max_length", "maxlength")):
        value = element.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            attrs += _attr(html_name, value)
    if not block.get("optional"):
        attrs += " required"
    placeholder = element.get("placeholder")
    if isinstance(placeholder, Mapping) and placeholder.get("text"):
        attrs += _attr("placeholder", str(placeholder["text"]))
    if element.get("focus_on_load"):
        attrs += " autofocus"
    initial = str(element.get("initial_value") or "")
    if element.get("multiline"):
        # The HTML parser drops one newline right after <textarea>: give it one to drop.
        return f'<textarea{attrs} rows="4">\n{_esc(initial)}</textarea>'
    return f'<input type="text"{attrs}{_attr("value", initial)}>'


def _elements(block: Mapping[str, Any]) -> list[Any]:
    elements = block.get("elements")
    if isinstance(elements, Sequence) and not isinstance(elements, str):
        return list(elements)
    return []


def _element(element: Any, block_id: str, names: Mapping[str, str]) -> str:
    """A block element in an actions block or a section's accessory."""
    if not isinstance(element, Mapping):
        return _note("unsupported element", "?")
    kind = element.get("type")
    if kind == "button":
        return _button(element, block_id)
    if kind == "image":
        alt = str(element.get("alt_text") or "image")
        return f'<span class="bk-image-alt">[{_esc(alt)}]</span>'
    return _note("unsupported element", str(kind or "?"))


def _button(element: Mapping[str, Any], block_id: str) -> str:
    label = _plain_label(element.get("text"))
    style = element.get("style")
    style_class = f" bk-{style}" if style in _BUTTON_STYLES else ""
    action = _attr("data-action-id", str(element.get("action_id") or ""))
    if "url" in element:
        url = str(element.get("url") or "")
        if url.lower().startswith(_BUTTON_SCHEMES):
            return (
                f'<a class="bk-button bk-link{style_class}"{_attr("href", url)} target="_blank" '
                f'rel="noopener noreferrer"{action}>{label}</a>'
            )
        # Not a web address (javascript:, data:, …): shown, never followed, and not a click either.
        return (
            f'<button type="button" class="bk-button bk-disabled" disabled{action}'
            f"{_attr('title', 'Not a web link: ' + url)}>{label}</button>"
        )
    value = element.get("value")
    value_attr = _attr("data-value", value) if value is not None else ""
    return (
        f'<button type="button" class="bk-button{style_class}"{action}'
        f"{_attr('data-block-id', block_id)}{value_attr}>{label}</button>"
    )


_BLOCKS = {
    "header": _header,
    "section": _section,
    "context": _context,
    "divider": _divider,
    "actions": _actions,
    "input": _input,
}


# -- views -----------------------------------------------------------------------------------------


def render_view(view: Mapping[str, Any], *, names: Mapping[str, str] = _NO_NAMES) -> str:
    """A modal or an App Home view as an HTML fragment.

    Home: `<div class="bk-view bk-view-home">` around the blocks. Modal: `<div class="bk-view
    bk-view-modal">` holding `<form id="modal-form">` with the title `<h2 id="modal-title">`, the
    blocks, and the footer's `<button type="button" id="modal-close">` (the view's close label,
    "Cancel" by default, as in Slack) and, when the view has one, `<button type="submit"
    id="modal-submit">`. Only one modal is shown at a time, so the ids are unique on the page.
    """
    blocks = view.get("blocks")
    block_list = list(blocks) if isinstance(blocks, Sequence) and not isinstance(blocks, str) else []
    body = render_blocks(block_list, names=names)
    kind = view.get("type")
    if kind == "home":
        return f'<div class="bk-view bk-view-home">{body}</div>'
    if kind != "modal":
        return f'<div class="bk-view">{_note("unsupported view", str(kind or "?"))}</div>'
    title = _plain_label(view.get("title"))
    close = _plain_label(view.get("close")) or "Cancel"
    submit = _plain_label(view.get("submit"))
    footer = f'<button type="button" id="modal-close" class="bk-view-close">{close}</button>'
    if submit:
        footer += f'<button type="submit" id="modal-submit" class="bk-view-submit">{submit}</button>'
    return (
        '<div class="bk-view bk-view-modal">'
        '<form id="modal-form" class="bk-view-form">'
        f'<h2 id="modal-title" class="bk-view-title">{title}</h2>'
        f'<div class="bk-view-body">{body}</div>'
        f'<div class="bk-view-footer">{footer}</div>'
        "</form></div>"
    )
