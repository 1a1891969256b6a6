"""The sandbox's Block Kit renderer: every block kind, mrkdwn as Slack shows it, and hostile text kept text.

The output is parsed with the stdlib's html.parser, not searched for substrings: every test walks the
real tags and attributes a browser would build, and checks that only the renderer's own markup is there.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.sandbox.blockkit import render_blocks, render_mrkdwn, render_view
from app.slack.cards import (
    build_card,
    build_home_view,
    build_pending_list,
    build_reject_modal,
    escape_mrkdwn,
    step_up_prompt,
)
from app.slack.ids import MAX_REASON, REASON_BLOCK, REASON_INPUT, ActionId

# -- a tiny DOM from html.parser ----------------------------------------------------------------------

VOID = {"br", "hr", "input", "img", "meta", "link"}
# Everything the renderer may emit; a tag or attribute outside these came from somewhere else.
ALLOWED_TAGS = {
    "div", "span", "b", "i", "s", "code", "pre", "blockquote", "br", "hr", "a", "time", "button",
    "h2", "h3", "p", "label", "input", "textarea", "form",
}  # fmt: skip
ALLOWED_ATTRS = {
    "class", "href", "target", "rel", "title", "datetime", "type", "disabled", "id", "name", "for",
    "minlength", "maxlength", "required", "placeholder", "value", "rows", "autofocus", "aria-live",
    "data-action-id", "data-block-id", "data-value", "data-id", "data-error-for",
}  # fmt: skip


@dataclass
class Node:
    tag: str
    attrs: dict[str, str | None]
    children: list[Node | str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return (self.attrs.get("class") or "").split()

    def text(self) -> str:
        """The text a reader sees (entities decoded by the parser), <br> as a newline."""
        out = []
        for child in self.children:
            if isinstance(child, str):
                out.append(child)
            elif child.tag == "br":
                out.append("\n")
            else:
                out.append(child.text())
        return "".join(out)

    def walk(self) -> Iterator[Node]:
        for child in self.children:
            if isinstance(child, Node):
                yield child
                yield from child.walk()

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        found = []
        for node in self.walk():
            if tag is not None and node.tag != tag:
                continue
            if cls is not None and cls not in node.classes:
                continue
            if any(node.attrs.get(key.replace("_", "-")) != value for key, value in attrs.items()):
                continue
            found.append(node)
        return found

    def find(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Node:
        found = self.find_all(tag, cls, **attrs)
        assert len(found) == 1, (tag, cls, attrs, len(found))
        return found[0]


class _TreeBuilder(HTMLParser):
    """Builds the tree and insists it is balanced: every end tag closes the element it should."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]
        self.declarations: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = [name for name, _ in attrs]
        assert len(names) == len(set(names)), f"duplicate attribute in <{tag}>: {names}"
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        assert tag not in VOID, f"end tag for void element {tag}"
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)

    def handle_decl(self, decl: str) -> None:
        self.declarations.append(decl)

    def handle_comment(self, data: str) -> None:
        raise AssertionError(f"comment in output: {data!r}")

    def handle_pi(self, data: str) -> None:
        raise AssertionError(f"processing instruction in output: {data!r}")


def parse(markup: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(markup)
    builder.close()
    assert builder.stack == [builder.root], "unclosed elements: " + ", ".join(
        n.tag for n in builder.stack[1:]
    )
    return builder.root


def assert_safe(markup: str) -> Node:
    """Only the renderer's tags and attributes; links only to http(s)/mailto; nothing scriptable."""
    root = parse(markup)
    for node in root.walk():
        assert node.tag in ALLOWED_TAGS, f"unexpected <{node.tag}> in {markup}"
        for name in node.attrs:
            assert name in ALLOWED_ATTRS, f"unexpected attribute {name}= on <{node.tag}> in {markup}"
            assert not name.startswith("on")
        href = node.attrs.get("href")
        if href is not None:
            assert node.tag == "a"
            assert re.match(r"(?i)(https?://|mailto:)", href), href
            assert node.attrs.get("rel") == "noopener noreferrer"
            assert node.attrs.get("target") == "_blank"
    assert "<script" not in markup.lower()
    # Browsers drop ASCII whitespace and control characters in a URL's scheme: none may hide one.
    for node in root.walk():
        href = re.sub(r"[\x00-\x20]", "", node.attrs.get("href") or "")
        assert not href.lower().startswith(("javascript:", "data:", "vbscript:")), href
    return root


def blocks_root(blocks: list[dict[str, Any]], **kwargs: Any) -> Node:
    return assert_safe(render_blocks(blocks, **kwargs))


def mrkdwn_root(text: str, **kwargs: Any) -> Node:
    return assert_safe(render_mrkdwn(text, **kwargs))


def plain(text: str) -> dict[str, Any]:
    return {"type": "plain_text", "text": text, "emoji": True}


def mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


# -- blocks ----------------------------------------------------------------------------------------


def test_every_block_kind_is_wrapped_and_rendered() -> None:
    blocks = [
        {"type": "header", "text": plain("Send offer letter")},
        {"type": "section", "text": mrkdwn("*Agent* hr-bot")},
        {"type": "section", "fields": [mrkdwn("*Action*\n`send`"), plain("Plain *field*")]},
        {
            "type": "section",
            "block_id": "sec",
            "text": plain("With a button"),
            "accessory": {"type": "button", "text": plain("Open"), "action_id": "open", "value": "v1"},
        },
        {
            "type": "context",
            "elements": [
                mrkdwn("_ctx_"),
                plain("plain ctx"),
                {"type": "image", "image_url": "https://x/y.png", "alt_text": "logo"},
            ],
        },
        {"type": "divider"},
        {
            "type": "actions",
            "block_id": "act",
            "elements": [{"type": "button", "text": plain("Go"), "action_id": "go"}],
        },
        {"type": "rich_text", "elements": []},
    ]
    root = blocks_root(blocks)
    wrapper = root.find("div", "bk-blocks")
    kinds = [child.classes for child in wrapper.children if isinstance(child, Node)]
    assert kinds == [
        ["bk-block", "bk-header"],
        ["bk-block", "bk-section"],
        ["bk-block", "bk-section"],
        ["bk-block", "bk-section"],
        ["bk-block", "bk-context"],
        ["bk-block", "bk-divider"],
        ["bk-block", "bk-actions"],
        ["bk-block", "bk-unsupported"],
    ]
    assert root.find("h3", "bk-header-text").text() == "Send offer letter"
    assert root.find_all("div", "bk-text")[0].find("b").text() == "Agent"
    fields = root.find_all("div", "bk-field")
    assert [f.text() for f in fields] == ["Action\nsend", "Plain *field*"]
    assert fields[0].find("code").text() == "send"
    accessory = root.find("div", "bk-accessory").find("button")
    assert accessory.attrs["data-block-id"] == "sec" and accessory.attrs["data-value"] == "v1"
    context = root.find("div", "bk-context")
    assert context.find("i").text() == "ctx"
    assert "plain ctx" in context.text() and "[logo]" in context.text()
    assert root.find_all("img") == []  # images are never fetched: alt text only
    assert root.find("hr", "bk-divider")
    assert root.find("span", "bk-unsupported").text() == "[unsupported block: rich_text]"


def test_malformed_blocks_do_not_break_the_page() -> None:
    blocks: list[Any] = [
        "not a block",
        {"type": "section"},
        {"type": "section", "text": "not an object", "fields": "nope"},
        {"type": "context", "elements": [42, {"type": "weird"}]},
        {"type": "actions", "elements": [{"type": "static_select"}, None]},
        {"type": "header", "text": {"type": "plain_text", "text": None}},
        {},
    ]
    root = blocks_root(blocks)
    notes = [n.text() for n in root.find_all("span", "bk-unsupported")]
    assert "[unsupported element: static_select]" in notes
    assert "[unsupported element: weird]" in notes
    assert "[unsupported block: ?]" in notes


@pytest.mark.parametrize("blocks", [5, "blocks", {"type": "section"}, b"x", 1.5])
def test_blocks_that_are_not_a_list_render_the_fallback_text(blocks: Any) -> None:
    # Whatever reached the fake Slack is rendered; a bad message must never break the page for everyone.
    html = render_blocks(blocks, fallback_text="*fallback*")
    assert html == '<div class="bk-blocks"><div class="bk-fallback"><b>fallback</b></div></div>'
    assert "bk-view-modal" in render_view({"type": "modal", "blocks": blocks, "title": {"text": "t"}})
    nested = render_blocks([{"type": "actions", "elements": blocks}, {"type": "section", "fields": blocks}])
    assert nested.count('class="bk-block ') == 2


def test_no_blocks_renders_the_fallback_text_as_mrkdwn() -> None:
    root = blocks_root([], fallback_text="*Hello* &lt;world&gt; <@U01COO>", names={"U01COO": "Cora Coo"})
    fallback = root.find("div", "bk-fallback")
    assert fallback.find("b").text() == "Hello"
    assert fallback.text() == "Hello <world> @Cora Coo"
    assert blocks_root([]).find("div", "bk-fallback").text() == ""


def test_action_buttons_follow_the_dom_contract() -> None:
    blocks = [
        {
            "type": "actions",
            "block_id": "b1",
            "elements": [
                {
                    "type": "button",
                    "text": plain("Approve"),
                    "style": "primary",
                    "action_id": "approve_request",
                    "value": "req_1",
                },
                {
                    "type": "button",
                    "text": plain("Reject"),
                    "style": "danger",
                    "action_id": "reject_request",
                    "value": "req_1",
                },
                {"type": "button", "text": plain("Plain"), "style": "fancy", "action_id": "p"},
            ],
        }
    ]
    buttons = blocks_root(blocks).find_all("button")
    assert [b.attrs for b in buttons] == [
        {
            "type": "button",
            "class": "bk-button bk-primary",
            "data-action-id": "approve_request",
            "data-block-id": "b1",
            "data-value": "req_1",
        },
        {
            "type": "button",
            "class": "bk-button bk-danger",
            "data-action-id": "reject_request",
            "data-block-id": "b1",
            "data-value": "req_1",
        },
        # an unknown style is dropped, and a button without a value has no data-value at all
        {"type": "button", "class": "bk-button", "data-action-id": "p", "data-block-id": "b1"},
    ]
    assert [b.text() for b in buttons] == ["Approve", "Reject", "Plain"]


def test_url_buttons_are_links_and_other_schemes_are_disabled() -> None:
    elements = [
        {
            "type": "button",
            "text": plain("Verify"),
            "style": "primary",
            "action_id": "verify",
            "url": "https://sso.example.com/a?b=1&c=2",
        },
        {"type": "button", "text": plain("Bad"), "action_id": "bad", "url": "javascript:alert(1)"},
        {
            "type": "button",
            "text": plain("Data"),
            "action_id": "data",
            "url": "data:text/html,<script>x</script>",
        },
        {"type": "button", "text": plain("Case"), "action_id": "case", "url": " JavaScript:alert(1)"},
    ]
    root = blocks_root([{"type": "actions", "elements": elements}])
    link = root.find("a")
    assert link.attrs == {
        "class": "bk-button bk-link bk-primary",
        "href": "https://sso.example.com/a?b=1&c=2",
        "target": "_blank",
        "rel": "noopener noreferrer",
        "data-action-id": "verify",
    }
    disabled = root.find_all("button")
    assert [b.text() for b in disabled] == ["Bad", "Data", "Case"]
    for button in disabled:
        assert "disabled" in button.attrs and "bk-disabled" in button.classes
        assert "href" not in button.attrs


def test_input_block_for_modals() -> None:
    blocks = [
        {
            "type": "input",
            "block_id": "reason",
            "label": plain("Why?"),
            "hint": plain("Shown to the agent."),
            "element": {
                "type": "plain_text_input",
                "action_id": "text",
                "multiline": True,
                "min_length": 1,
                "max_length": 2000,
                "placeholder": plain("Because…"),
                "initial_value": "draft & <b>",
            },
        },
        {
            "type": "input",
            "block_id": "note",
            "optional": True,
            "label": plain("Note"),
            "element": {"type": "plain_text_input", "action_id": "n", "max_length": 10},
        },
        {
            "type": "input",
            "block_id": "when",
            "label": plain("When"),
            "element": {"type": "datepicker", "action_id": "d"},
        },
    ]
    root = blocks_root(blocks)
    inputs = root.find_all("div", "bk-input")
    assert [i.attrs.get("data-block-id") for i in inputs] == ["reason", "note", "when"]
    assert all("bk-block" in i.classes for i in inputs)

    reason = inputs[0]
    textarea = reason.find("textarea")
    assert textarea.attrs["name"] == "reason/text"
    assert textarea.attrs["data-block-id"] == "reason" and textarea.attrs["data-action-id"] == "text"
    assert textarea.attrs["minlength"] == "1" and textarea.attrs["maxlength"] == "2000"
    assert "required" in textarea.attrs
    assert textarea.attrs["placeholder"] == "Because…"
    assert textarea.text() == "\ndraft & <b>"  # the parser keeps the newline the browser drops
    label = reason.find("label")
    assert label.text() == "Why?" and label.attrs["for"] == textarea.attrs["id"]
    assert reason.find("p", "bk-hint").text() == "Shown to the agent."
    error = reason.find("p", "bk-error")
    assert error.attrs["data-error-for"] == "reason" and error.text() == ""

    note = inputs[1].find("input")
    assert note.attrs["type"] == "text" and note.attrs["name"] == "note/n" and note.attrs["maxlength"] == "10"
    assert "required" not in note.attrs and "minlength" not in note.attrs
    assert "(optional)" in inputs[1].find("label").text()
    assert inputs[1].find_all("p", "bk-hint") == []
    assert inputs[2].find("span", "bk-unsupported").text() == "[unsupported element: datepicker]"


# -- mrkdwn ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("*bold*", "<b>bold</b>"),
        ("_italic_", "<i>italic</i>"),
        ("~strike~", "<s>strike</s>"),
        ("`code *not bold*`", '<code class="bk-code">code *not bold*</code>'),
        ("*bold _both_*", "<b>bold <i>both</i></b>"),
        ("a*b*c snake_case_name 2*3*4", "a*b*c snake_case_name 2*3*4"),
        ("* not bold *", "* not bold *"),
        ("line 1\nline 2", "line 1<br>line 2"),
        ("```\n*raw* _text_\n  indented\n```", '<pre class="bk-pre">*raw* _text_\n  indented</pre>'),
        ("before\n```x```\nafter", 'before<pre class="bk-pre">x</pre>after'),
        ("> quoted\n&gt; again\nnot", '<blockquote class="bk-quote">quoted<br>again</blockquote>not'),
        ("&amp;lt;b&amp;gt;", "&amp;lt;b&amp;gt;"),  # shown as "&lt;b&gt;": decoded once, escaped once
        ("&lt;b&gt; &amp; &quot;", "&lt;b&gt; &amp; &amp;quot;"),
        ("a < b > c", "a &lt; b &gt; c"),
    ],
)
def test_mrkdwn_formatting(text: str, expected: str) -> None:
    assert render_mrkdwn(text) == expected
    assert_safe(expected)


def test_slack_escapes_are_decoded_exactly_once() -> None:
    assert mrkdwn_root("&amp;lt;@U1&amp;gt;").text() == "&lt;@U1&gt;"
    assert mrkdwn_root("&lt;!channel&gt;").text() == "<!channel>"
    assert mrkdwn_root("&lt;!channel&gt;").find_all("span", "bk-mention") == []
    assert mrkdwn_root("Tom &amp; Jerry").text() == "Tom & Jerry"


def test_links() -> None:
    root = mrkdwn_root(
        "<https://x.example/a?b=1&amp;c=2|the label> <https://y.example> <mailto:a@b.example|mail>"
    )
    links = root.find_all("a", "bk-link")
    assert [(a.attrs["href"], a.text()) for a in links] == [
        ("https://x.example/a?b=1&c=2", "the label"),
        ("https://y.example", "https://y.example"),
        ("mailto:a@b.example", "mail"),
    ]
    for attrs in (a.attrs for a in links):
        assert attrs["target"] == "_blank" and attrs["rel"] == "noopener noreferrer"


@pytest.mark.parametrize(
    "token",
    [
        "<javascript:alert(1)|click>",
        "<JavaScript:alert(1)>",
        "<data:text/html;base64,PHNjcmlwdD4=|x>",
        "<vbscript:msgbox|x>",
        "< https://x.example|x>",
        "<//evil.example|x>",
        "<file:///etc/passwd>",
    ],
)
def test_links_to_other_schemes_are_shown_as_text(token: str) -> None:
    root = mrkdwn_root(token)
    assert root.find_all("a") == []
    assert root.text() == token


def test_mentions_channels_groups_and_broadcasts() -> None:
    names = {"U01COO": "Cora Coo", "C0HIRING": "#hiring", "S0EXEC": "exec"}
    root = mrkdwn_root(
        "<@U01COO> <@U02CFO> <@U03X|rex> <#C0HIRING> <#C9|other> <#C8> "
        "<!subteam^S0EXEC> <!subteam^S1|@ops> <!here> <!channel> <!everyone> <!here|here>",
        names=names,
    )
    mentions = [m.text() for m in root.find_all("span", "bk-mention")]
    assert mentions == [
        "@Cora Coo", "@U02CFO", "@rex", "#hiring", "#other", "#C8",
        "@exec", "@ops", "@here", "@channel", "@everyone", "@here",
    ]  # fmt: skip
    assert root.find_all("span", "bk-mention")[0].attrs["data-id"] == "U01COO"


def test_dates_are_shown_in_utc_with_the_fallback_as_title() -> None:
    root = mrkdwn_root("due <!date^1700000000^{date_short_pretty} at {time}|2023-11-14T22:13:20Z>.")
    time = root.find("time", "bk-date")
    assert time.text() == "2023-11-14 22:13 UTC"
    assert time.attrs["title"] == "2023-11-14T22:13:20Z"
    assert time.attrs["datetime"] == "2023-11-14T22:13:20Z"
    assert root.text() == "due 2023-11-14 22:13 UTC."
    # With a link part, and without a fallback.
    assert (
        mrkdwn_root("<!date^0^{date}^https://x.example>").find("time").attrs["title"]
        == "1970-01-01T00:00:00Z"
    )
    # A date that is no number, or out of range, falls back to its text.
    assert mrkdwn_root("<!date^soon^{date}|whenever>").text() == "whenever"
    assert mrkdwn_root("<!date^99999999999999999999^{date}|far>").text() == "far"
    assert mrkdwn_root("<!date^x^{date}>").text() == "<!date^x^{date}>"


def test_formatting_wraps_tokens() -> None:
    root = mrkdwn_root("*Approved by <@U01COO>* _at <!date^1700000000^{time}|t>_", names={"U01COO": "Cora"})
    assert root.find("b").find("span", "bk-mention").text() == "@Cora"
    assert root.find("i").find("time").text() == "2023-11-14 22:13 UTC"


@pytest.mark.parametrize(
    "text",
    [
        "*_~`x`~_*",
        "*a _b* c_",
        "_a *b_ c*",
        "```unclosed *bold*",
        "`",
        "``` ` ```",
        "**",
        "*`*`*",
        "~~~~",
        "> > nested\n>",
        "<<<>>>",
        "<a<b>c>",
        "<@U1|<b>>",
        "a\n```\n<https://x.example|y>\n```\n*z*",
    ],
)
def test_nested_and_unbalanced_markers_stay_balanced(text: str) -> None:
    mrkdwn_root(text)  # parses with every tag closed by its own end tag


# -- hostile input ---------------------------------------------------------------------------------

HOSTILE = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "'><svg onload=alert(1)>",
    "<javascript:alert(1)|click>",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "&amp;lt;img src=x onerror=alert(1)&amp;gt;",
    '" onmouseover="alert(1)" x="',
    "</div></button><script>x</script>",
    '<https://ok.example" onclick="alert(1)|label" onfocus="x>',
    '<!date^1^{date}|"><img src=x onerror=alert(1)>>',
    '<@U1|"><script>x</script>>',
    "`<script>`",
    "```</pre><script>x</script>```",
]


def hostile_blocks(evil: str) -> list[dict[str, Any]]:
    """evil in every place a block can carry text, an id, a value or a URL."""
    button = {"type": "button", "text": plain(evil), "action_id": evil, "value": evil}
    return [
        {"type": "header", "block_id": evil, "text": plain(evil)},
        {
            "type": "section",
            "block_id": evil,
            "text": mrkdwn(evil),
            "fields": [mrkdwn(evil), plain(evil)],
            "accessory": button,
        },
        {"type": "section", "text": plain(evil)},
        {"type": "context", "elements": [mrkdwn(evil), plain(evil), {"type": "image", "alt_text": evil}]},
        {
            "type": "actions",
            "block_id": evil,
            "elements": [
                button,
                {**button, "url": evil},
                {**button, "url": "https://x.example/" + evil},
                {**button, "style": evil},
            ],
        },
        {
            "type": "input",
            "block_id": evil,
            "label": plain(evil),
            "hint": plain(evil),
            "element": {
                "type": "plain_text_input",
                "action_id": evil,
                "multiline": True,
                "placeholder": plain(evil),
                "initial_value": evil,
            },
        },
        {
            "type": "input",
            "block_id": evil,
            "label": mrkdwn(evil),
            "element": {"type": "plain_text_input", "action_id": evil, "initial_value": evil},
        },
        {"type": evil},
    ]


@pytest.mark.parametrize("evil", HOSTILE)
def test_hostile_text_stays_text_everywhere(evil: str) -> None:
    root = blocks_root(hostile_blocks(evil), fallback_text=evil)
    # Where text is plain, the reader sees exactly what was sent.
    assert root.find("h3").text() == evil
    assert root.find_all("div", "bk-text")[1].text() == evil
    button = root.find_all("button")[0]
    assert button.text() == evil
    assert button.attrs["data-action-id"] == evil
    assert button.attrs["data-value"] == evil
    assert button.attrs["data-block-id"] == evil
    textarea = root.find("textarea")
    assert textarea.attrs["name"] == f"{evil}/{evil}"
    assert textarea.text() == "\n" + evil
    assert textarea.attrs["placeholder"] == evil
    assert root.find_all("input")[0].attrs["value"] == evil
    assert root.find_all("span", "bk-unsupported")[-1].text() == f"[unsupported block: {evil}]"
    # The only links are to https://x.example/… (the URL button), and every href is http(s).
    for link in root.find_all("a"):
        assert link.attrs["href"] is not None and link.attrs["href"].startswith("https://")


@pytest.mark.parametrize("evil", HOSTILE)
def test_hostile_views(evil: str) -> None:
    modal = {
        "type": "modal",
        "title": plain(evil),
        "submit": plain(evil),
        "close": plain(evil),
        "blocks": hostile_blocks(evil),
    }
    root = assert_safe(render_view(modal))
    assert root.find("h2", id="modal-title").text() == evil
    assert root.find("button", id="modal-submit").text() == evil
    assert root.find("button", id="modal-close").text() == evil
    assert_safe(render_view({"type": "home", "blocks": hostile_blocks(evil)}))
    assert_safe(render_view({"type": evil}))


MRKDWN_ALPHABET = st.sampled_from(
    ["<", ">", "&", "&amp;", "&lt;", "&gt;", "*", "_", "~", "`", "```", "\n", "> ", "|", "@", "#", "!",
     "^", "\"", "'", "=", " ", "a", "U1", "http://x", "https://y", "javascript:", "mailto:", "!date^",
     "!subteam^", "script", "onerror", "/", "\u202e", "\x00"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(MRKDWN_ALPHABET, max_size=40).map("".join))
def test_any_mrkdwn_renders_to_safe_balanced_html(text: str) -> None:
    root = mrkdwn_root(text, names={"U1": '"><b>'})
    # Whatever the input, nothing but the renderer's inline tags and its links, mentions and dates.
    for node in root.walk():
        assert node.tag in {"b", "i", "s", "code", "pre", "blockquote", "br", "a", "span", "time"}


# -- views -----------------------------------------------------------------------------------------


def test_modal_view() -> None:
    view = {
        "type": "modal",
        "title": plain("Reject request"),
        "submit": plain("Reject"),
        "close": plain("Cancel"),
        "blocks": [{"type": "section", "text": plain("Body")}],
    }
    root = assert_safe(render_view(view))
    form = root.find("form", id="modal-form")
    assert "bk-view-modal" in root.find("div", "bk-view").classes
    assert form.find("h2", id="modal-title").text() == "Reject request"
    assert form.find("button", id="modal-submit").attrs["type"] == "submit"
    assert form.find("button", id="modal-submit").text() == "Reject"
    assert form.find("button", id="modal-close").attrs["type"] == "button"
    assert form.find("button", id="modal-close").text() == "Cancel"
    assert form.find("div", "bk-section").text() == "Body"
    # No submit in the view: no submit button; no close: Slack's default "Cancel".
    bare = assert_safe(render_view({"type": "modal", "title": plain("Info"), "blocks": []}))
    assert bare.find_all("button", id="modal-submit") == []
    assert bare.find("button", id="modal-close").text() == "Cancel"


def test_home_view_and_unknown_views() -> None:
    root = assert_safe(render_view({"type": "home", "blocks": [{"type": "header", "text": plain("Hi")}]}))
    home = root.find("div", "bk-view-home")
    assert home.find("h3").text() == "Hi"
    assert root.find_all("form") == []
    assert assert_safe(render_view({"type": "workflow_step"})).text() == "[unsupported view: workflow_step]"


# -- what the service really sends ----------------------------------------------------------------

NOW = dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC)
EVIL = " ".join(
    [
        "<!channel>",
        "<@U999>",
        "<https://evil.example|Click>",
        "&lt;!here&gt;",
        "*✅ APPROVED*",
        "```",
        *HOSTILE,
    ]
)


def a_request(**overrides: Any) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": "req_01HXYZ",
        "status": "pending",
        "action": "send_offer_letter",
        "title": "Send offer letter to Bob",
        "summary": "Offer for the senior engineer role.",
        "params": {"candidate": "Bob", "salary": 185000},
        "on_behalf_of": "alice@example.com",
        "links": ["https://hr.example.com/candidates/42?tab=offer&v=2"],
        "policy": {"name": "offers", "version": 3},
        "required_approvals": 1,
        "expires_at": "2024-05-01T10:00:00Z",
        "decisions": [],
    }
    return view | overrides


def card_root(view: dict[str, Any], names: dict[str, str] | None = None) -> Node:
    text, blocks = build_card(view, agent_name="hr-bot", agent_owner="people-team", redact=[])
    return blocks_root(blocks, fallback_text=text, names=names or {})


def test_a_pending_card() -> None:
    root = card_root(a_request())
    assert root.find("h3", "bk-header-text").text() == "Send offer letter to Bob"
    fields = {f.find("b").text(): f for f in root.find_all("div", "bk-field")}
    assert list(fields) == ["Agent", "On behalf of", "Action", "Policy", "Expires", "Request"]
    assert fields["Agent"].text() == "Agent\nhr-bot (owner: people-team)"
    assert fields["Action"].find("code").text() == "send_offer_letter"
    assert fields["Expires"].find("time").text() == "2024-05-01 10:00 UTC"
    params = root.find("pre", "bk-pre").text()
    assert '"candidate": "Bob"' in params and '"salary": 185000' in params
    link = root.find("a", "bk-link")
    assert link.attrs["href"] == "https://hr.example.com/candidates/42?tab=offer&v=2"
    buttons = root.find_all("button", "bk-button")
    assert [(b.text(), b.attrs["data-action-id"], b.attrs["data-value"]) for b in buttons] == [
        ("Approve", ActionId.APPROVE.value, "req_01HXYZ"),
        ("Reject", ActionId.REJECT.value, "req_01HXYZ"),
    ]
    assert "bk-primary" in buttons[0].classes and "bk-danger" in buttons[1].classes


def test_decided_cards_mention_the_approvers() -> None:
    decision = {
        "approver": {"id": "U01COO", "name": "cora", "email": "coo@example.com"},
        "decision": "approve",
        "reason": None,
        "mfa": True,
        "decided_at": "2024-05-01T09:30:00Z",
    }
    approved = a_request(
        status="approved", decided_by="human", decided_at="2024-05-01T09:30:00Z", decisions=[decision]
    )
    root = card_root(approved, names={"U01COO": "Cora Coo"})
    context = root.find_all("div", "bk-context")[-1]
    assert context.text() == "✅ Approved by @Cora Coo (MFA) at 2024-05-01 09:30 UTC"
    assert root.find_all("button") == []
    rejected = a_request(status="rejected", decided_by="policy", reason="Over budget <@U999> <!channel>")
    context = card_root(rejected).find_all("div", "bk-context")[-1]
    assert context.text() == "❌ Rejected by policy:“Over budget <@U999> <!channel>”"
    assert context.find_all("span", "bk-mention") == []


def test_agent_text_in_a_real_card_never_becomes_markup() -> None:
    view = a_request(
        title=EVIL,
        summary=EVIL,
        action=EVIL,
        on_behalf_of=EVIL,
        params={EVIL: EVIL},
        links=[EVIL, "javascript:alert(1)", "https://ok.example/x"],
        policy={"name": EVIL, "version": EVIL},
        id=EVIL,
    )
    text, blocks = build_card(view, agent_name=EVIL, agent_owner=EVIL, redact=[])
    root = blocks_root(blocks, fallback_text=text)
    assert root.find("h3").text().startswith(EVIL[:100])  # clipped to Slack's 150, as text
    # The agent's tokens are shown as text: no mention, no date, and the only link is the plain https one.
    assert root.find_all("span", "bk-mention") == []
    assert [a.attrs["href"] for a in root.find_all("a")] == ["https://ok.example/x"]
    assert [b.attrs["data-value"] for b in root.find_all("button")] == [EVIL, EVIL]
    assert "<@U999>" in root.text() and "<!channel>" in root.text()
    # The fallback (shown when a message has no blocks) is escaped by the service the same way.
    assert_safe(render_blocks([], fallback_text=text))


def test_step_up_prompt_has_a_link_button() -> None:
    url = "https://approvals.example.com/step-up/abc?x=1&y=2"
    _text, blocks = step_up_prompt(url, "approve", dt.datetime(2024, 5, 1, 10, 5, tzinfo=dt.UTC))
    root = blocks_root(blocks)
    link = root.find("a", "bk-button")
    assert link.attrs["href"] == url and link.text() == "Verify with SSO"
    assert link.attrs["data-action-id"] == ActionId.VERIFY_SSO.value
    assert "bk-link" in link.classes and "bk-primary" in link.classes
    assert "until 2024-05-01 10:05 UTC" in root.find("div", "bk-text").text()


def test_pending_list_and_home_view() -> None:
    items = [
        {
            "title": "Offer <b>Bob</b>",
            "action": "send_offer_letter",
            "agent_name": "hr-bot",
            "expires_at": "2024-05-01T11:00:00Z",
            "permalink": "https://example.slack.com/archives/C0HIRING/p1700000000000100",
        }
    ]
    root = blocks_root(build_pending_list(items, now=NOW))
    section = root.find("div", "bk-text")
    assert section.find("b").text() == "Offer <b>Bob</b>"
    assert section.find("a").text() == "Open card"
    assert "(in 60 min)" in section.text()
    home = assert_safe(render_view(build_home_view(items, now=NOW)))
    assert home.find("h3").text() == "Waiting for your decision"
    assert home.find("div", "bk-view-home").find("a").attrs["href"].startswith("https://example.slack.com/")
    empty = blocks_root(build_pending_list([], now=NOW))
    assert empty.text() == "Nothing is waiting for your decision."


def test_the_reject_modal() -> None:
    root = assert_safe(render_view(build_reject_modal("req_1", "Offer for <@U999>")))
    assert root.find("h2", id="modal-title").text() == "Reject request"
    assert root.find("button", id="modal-submit").text() == "Reject"
    assert root.find("button", id="modal-close").text() == "Cancel"
    assert root.find("div", "bk-context").text() == "Offer for <@U999>"
    block = root.find("div", "bk-input")
    assert block.attrs["data-block-id"] == REASON_BLOCK
    textarea = block.find("textarea")
    assert textarea.attrs["name"] == f"{REASON_BLOCK}/{REASON_INPUT}"
    assert textarea.attrs["minlength"] == "1" and textarea.attrs["maxlength"] == str(MAX_REASON)
    assert block.find("label").text() == "Why are you rejecting it?"
    assert block.find("p", "bk-hint").text() == "The agent and its owner will see this reason."
    assert block.find("p", "bk-error").attrs["data-error-for"] == REASON_BLOCK


def test_a_reminder_text_without_blocks() -> None:
    # reminders.py posts text only: the title escaped, a date token and a permalink.
    text = (
        f"\u201c{escape_mrkdwn('Offer <b> & co')}\u201d awaits your decision; it expires "
        "<!date^1714561200^{date_short_pretty} at {time}|2024-05-01T11:00:00+00:00>. "
        "<https://example.slack.com/archives/C0HIRING/p1|Open the card>"
    )
    root = blocks_root([], fallback_text=text)
    assert (
        root.text() == "“Offer <b> & co” awaits your decision; it expires 2024-05-01 11:00 UTC. Open the card"
    )
    assert root.find("a").attrs["href"] == "https://example.slack.com/archives/C0HIRING/p1"
