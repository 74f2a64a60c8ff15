"""wacoder.whatsapp_text: Markdown conversion examples and split/join properties."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wacoder.whatsapp_text import (
    MAX_MESSAGE_CHARS,
    is_fence_line,
    join_parts,
    markdown_to_whatsapp,
    split_message,
    utf16_len,
)

_NUMBERING_RE = re.compile(r"\((\d+)/(\d+)\) ")

# --------------------------------------------------------------------------------------
# Strategies: plain arbitrary text misses the interesting structure (fences, blank-line
# runs, long unbreakable runs, emoji sequences), so most texts are assembled from pieces.
# --------------------------------------------------------------------------------------

_PIECES = st.one_of(
    st.sampled_from(
        [
            " ",
            "\n",
            "\n\n",
            "\n\n\n\n",
            "```",
            "```python",
            "\n```\n",
            "\n```python\n",
            "\n```",
            "```\n",
            "`",
            "``",
            "````",
            "`inline`",
            "  ```",
            "😀",
            "👨‍👩‍👧‍👦",
            "🇫🇷🇩🇪",
            "👍🏽",
            "e\u0301",
            "\r\n",
            "**bold**",
            "(1/2) ",
            "- item\n",
            "日本語のテキスト",
            "\U0001f600" * 7,
        ]
    ),
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.text(alphabet="abcdefghij", min_size=1, max_size=12),  # words
    st.text(alphabet="xyz", min_size=50, max_size=400),  # long lines, no spaces
    st.text(alphabet="`a \n", min_size=1, max_size=60),  # backtick soup
)

structured_texts = st.lists(_PIECES, max_size=60).map("".join)
any_text = st.one_of(st.text(max_size=3000), structured_texts)


@st.composite
def long_texts(draw: st.DrawFn) -> str:
    """Texts that usually exceed the default limit: a structured text repeated."""
    base = draw(structured_texts)
    return base * draw(st.integers(min_value=1, max_value=40))


def _body(part: str) -> str:
    m = _NUMBERING_RE.match(part)
    return part[m.end() :] if m else part


def _fences(text: str) -> int:
    return sum(1 for line in text.split("\n") if is_fence_line(line))


def _check_split(text: str, limit: int) -> list[str]:
    parts = split_message(text, limit)
    assert parts, "never an empty list"
    assert join_parts(parts) == text
    for part in parts:
        assert utf16_len(part) <= limit
        assert len(part) <= limit  # implied, but it is what the brief asks for
    if utf16_len(text) <= limit:
        assert parts == [text]
        return parts
    n = len(parts)
    assert n >= 2
    for i, part in enumerate(parts, 1):
        m = _NUMBERING_RE.match(part)
        assert m is not None and (int(m.group(1)), int(m.group(2))) == (i, n), part[:20]
        assert _body(part), "no empty parts"
    for part in parts[:-1]:
        assert _fences(_body(part)) % 2 == 0, _body(part)
    # The split adds no imbalance: the last part carries the text's own parity.
    assert _fences(_body(parts[-1])) % 2 == _fences(text) % 2
    return parts


_SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(text=any_text, limit=st.integers(min_value=60, max_value=200))
def test_split_small_limits(text: str, limit: int) -> None:
    _check_split(text, limit)


@_SETTINGS
@given(text=long_texts())
def test_split_default_limit(text: str) -> None:
    _check_split(text, MAX_MESSAGE_CHARS)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=500), limit=st.integers(min_value=20, max_value=59))
def test_split_tiny_limits(text: str, limit: int) -> None:
    try:
        _check_split(text, limit)
    except ValueError:
        # Only legitimate when the numbering plus fences leave no room at all.
        assert limit < 30


# --------------------------------------------------------------------------------------
# Split examples
# --------------------------------------------------------------------------------------


def test_short_text_is_untouched() -> None:
    assert split_message("hello") == ["hello"]
    assert split_message("") == [""]
    assert join_parts(["hello"]) == "hello"
    exact = "x" * MAX_MESSAGE_CHARS
    assert split_message(exact) == [exact]


def test_emoji_count_two_units() -> None:
    text = "😀" * 800  # 800 chars, 1600 UTF-16 units: fits exactly
    assert split_message(text) == [text]
    assert len(split_message("😀" * 801)) == 2


def test_prefers_paragraphs_then_lines_then_spaces() -> None:
    para = ("lorem ipsum " * 10).strip()
    text = f"{para}\n\n{para}\n\n{para}"
    parts = split_message(text, 150)
    assert [_body(p) for p in parts] == [f"{para}\n\n", f"{para}\n\n", para]
    lines = "\n".join(f"line {i} " + "x" * 20 for i in range(10))
    for part in split_message(lines, 100)[:-1]:
        assert part.endswith("\n")
    words = " ".join(["word"] * 100)
    for part in split_message(words, 80)[:-1]:
        assert part.endswith("word ")


def test_hard_cut_without_spaces() -> None:
    text = "a" * 500
    parts = split_message(text, 100)
    assert join_parts(parts) == text
    assert all(len(p) <= 100 for p in parts)


def test_code_block_is_closed_and_reopened() -> None:
    code = "\n".join(f"x = {i}" for i in range(40))
    text = f"Here you go:\n\n```python\n{code}\n```\nEnjoy."
    parts = split_message(text, 120)
    assert len(parts) > 2
    assert parts[0].endswith("\n```") or parts[0].endswith("\n\n")
    middle = parts[1]
    assert _body(middle).startswith("```") and middle.endswith("\n```")
    assert join_parts(parts) == text


def test_numbering_width_grows_with_count() -> None:
    text = " ".join(["abcdefgh"] * 400)  # ~3600 chars at limit 60: more than 9 parts
    parts = split_message(text, 60)
    assert len(parts) >= 10
    assert parts[9].startswith(f"(10/{len(parts)}) ")
    assert all(len(p) <= 60 for p in parts)


def test_join_rejects_foreign_parts() -> None:
    with pytest.raises(ValueError):
        join_parts(["hello", "world"])


def test_limit_too_small() -> None:
    with pytest.raises(ValueError):
        split_message("x" * 100, 10)


# --------------------------------------------------------------------------------------
# markdown_to_whatsapp
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("**bold**", "*bold*"),
        ("__bold__", "*bold*"),
        ("*italic*", "_italic_"),
        ("_italic_", "_italic_"),
        ("~~gone~~", "~gone~"),
        ("a **b** and *c* and ~~d~~", "a *b* and _c_ and ~d~"),
        ("**bold with *italic* inside**", "*bold with _italic_ inside*"),
        ("# Heading", "*Heading*"),
        ("### Sub heading ###", "*Sub heading*"),
        ("## **Already bold**", "*Already bold*"),
        ("#hashtag", "#hashtag"),
        ("[docs](https://example.com/a_b_c)", "docs (https://example.com/a_b_c)"),
        (
            "see [wiki](https://en.wikipedia.org/wiki/Foo_(bar))",
            "see wiki (https://en.wikipedia.org/wiki/Foo_(bar))",
        ),
        ("[https://x.io](https://x.io)", "https://x.io"),
        ("![logo](https://x.io/l.png)", "logo (https://x.io/l.png)"),
        ("<https://x.io/_a_>", "https://x.io/_a_"),
        ("visit https://x.io/_keep_ now", "visit https://x.io/_keep_ now"),
        ("* one\n* two", "- one\n- two"),
        ("+ one\n  + nested", "- one\n  - nested"),
        ("- one\n- two", "- one\n- two"),
        ("1. first\n2. **second**", "1. first\n2. *second*"),
        ("use `**raw**` here", "use `**raw**` here"),
        ("use ``a ` b`` here", "use ``a ` b`` here"),
        ("2 * 3 * 4", "2 * 3 * 4"),
        ("snake_case_name and a__b__c", "snake_case_name and a__b__c"),
        ("***", "***"),
        ("* * *", "* * *"),
        ("```python\n**x** = [a](b)\n# not a heading\n```", "```\n**x** = [a](b)\n# not a heading\n```"),
        ("  ```js\n  *x*\n  ```", "  ```\n  *x*\n  ```"),
        ("```\nunclosed **x**", "```\nunclosed **x**"),
        ("😀 **hi** 👋", "😀 *hi* 👋"),
        ("", ""),
    ],
)
def test_markdown_to_whatsapp(markdown: str, expected: str) -> None:
    assert markdown_to_whatsapp(markdown) == expected


@pytest.mark.parametrize(
    "whatsapp",
    [
        "_italic_ and ~strike~",
        "- item\n- item\n1. numbered",
        "label (https://example.com)",
        "```\n**code** stays\n```",
        "use `inline` code",
        "plain text with emoji 😀",
    ],
)
def test_markdown_to_whatsapp_idempotent_on_whatsapp_text(whatsapp: str) -> None:
    assert markdown_to_whatsapp(whatsapp) == whatsapp


@settings(max_examples=200, deadline=None)
@given(text=any_text)
def test_markdown_to_whatsapp_keeps_code_blocks(text: str) -> None:
    converted = markdown_to_whatsapp(text)
    # Line structure is preserved and fenced content comes through byte for byte.
    before, after = text.split("\n"), converted.split("\n")
    assert len(before) == len(after)
    inside = False
    for old, new in zip(before, after, strict=True):
        if is_fence_line(old):
            assert new.strip() == "```"
            inside = not inside
        elif inside:
            assert new == old
