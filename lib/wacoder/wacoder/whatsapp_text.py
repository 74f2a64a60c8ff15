"""Text for WhatsApp: Markdown (as an LLM writes it) to WhatsApp formatting, and splitting
long replies into numbered parts that each fit in one Twilio message.

Length is measured in UTF-16 code units (`utf16_len`), not in Python characters. Twilio's
1600 limit is documented as "characters", but Twilio encodes bodies as UTF-16 and counts a
character outside the Basic Multilingual Plane (most emoji, some CJK) as two. Counting code
units is never less than `len()`, so a part that fits by this measure fits by either one;
the cost is a few characters of headroom lost on emoji-heavy text, which is cheap compared
with Twilio rejecting a part (error 21617) and a reply silently losing its middle.

Pure functions, no I/O.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "MAX_MESSAGE_CHARS",
    "is_fence_line",
    "join_parts",
    "markdown_to_whatsapp",
    "split_message",
    "utf16_len",
]

# Twilio rejects WhatsApp bodies longer than this.
MAX_MESSAGE_CHARS = 1600

# A code-fence line: up to 3 spaces, three backticks, an optional language tag, optional
# trailing blanks. Deliberately bounded (tag <= 30, trailing blanks <= 10) so that a fence
# line is always short: the splitter must never cut one in two, and a bound keeps "is this
# cut position safe" a constant-time question even for a 100 kB line.
_FENCE_LINE_RE = re.compile(r" {0,3}```[^\s`]{0,30}[ \t]{0,10}")
_FENCE_MAX_LEN = 3 + 3 + 30 + 10
# Text at a cut point from which the next part's first line could read as a fence.
_FENCE_PRONE_RE = re.compile(r" {0,3}```(?!`)")
_CLOSE = "\n```"  # appended to a part that ends inside a code block
_REOPEN = "```\n"  # prepended to the part that continues it
_FENCE_WIDTH = 4  # len(_CLOSE) == len(_REOPEN), all BMP


def utf16_len(text: str) -> int:
    """Length as Twilio counts it: UTF-16 code units (an emoji is usually 2).

    "surrogatepass" so that a stray lone surrogate (possible in a Python str) counts as the
    one unit it would be, instead of raising.
    """
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _units(ch: str) -> int:
    return 2 if ord(ch) > 0xFFFF else 1


def is_fence_line(line: str) -> bool:
    """True for a line that opens or closes a ``` code block (with or without a language)."""
    return _FENCE_LINE_RE.fullmatch(line) is not None


def _fence_count(text: str) -> int:
    return sum(1 for line in text.split("\n") if is_fence_line(line))


# --------------------------------------------------------------------------------------
# Markdown -> WhatsApp
# --------------------------------------------------------------------------------------

_HEADING_RE = re.compile(r" {0,3}#{1,6}(?:[ \t]+(.*?))?[ \t]*#*[ \t]*")
_BULLET_RE = re.compile(r"(\s*)[*+](\s+)(.*)")
# "***", "* * *", "---", "___": a thematic break; must not become a bullet or emphasis.
_RULE_RE = re.compile(r" {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*")
# Inline code spans: a run of backticks closed by a run of the same length.
_CODE_SPAN_RE = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)")
# [label](url "title") and ![alt](url); one level of parentheses inside the URL
# (Wikipedia-style links) is allowed.
_LINK_RE = re.compile(
    r"!?\[([^\]\n]*)\]\(\s*<?((?:[^()\s<>]|\([^()\s]*\))+)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)"
)
_AUTOLINK_RE = re.compile(r"<((?:https?|mailto):[^\s<>]+)>")
_BARE_URL_RE = re.compile(r"(?:https?://|www\.)[^\s<>()]+")
_STRIKE_RE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
# Single-star emphasis not touching another star or a word character on the outside, so
# "2 * 3 * 4", "a*b*c" and the halves of "**bold**" are left alone.
_STAR_ITALIC_RE = re.compile(r"(?<![*\w])\*(?![*\s])(.+?)(?<![*\s])\*(?![*\w])")
_STAR_BOLD_RE = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
# Underscore bold only outside words: snake_case__names stay as they are.
_UNDERSCORE_BOLD_RE = re.compile(r"(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)")
# Placeholders shield code spans and URLs from the emphasis rewrites; NUL and SOH never
# occur in a chat message, and lines that do contain them are left verbatim.
_PH_OPEN, _PH_CLOSE = "\x00", "\x01"
_PH_RE = re.compile(r"\x00(\d+)\x01")


def markdown_to_whatsapp(text: str) -> str:
    """Rewrite LLM Markdown in WhatsApp's formatting dialect.

    ``**b**``/``__b__`` -> ``*b*``; ``*i*`` -> ``_i_`` (``_i_`` stays); ``~~s~~`` -> ``~s~``;
    ``# Heading`` -> ``*Heading*``; ``[label](url)`` -> ``label (url)``; ``* x``/``+ x``
    bullets -> ``- x``; numbered lists unchanged; fenced blocks keep their ``` lines minus
    the language tag, and nothing inside a fence or an inline code span is rewritten.

    Idempotent on WhatsApp-formatted text with one inherent exception: ``*x*`` is italic in
    Markdown and bold in WhatsApp, so a second pass turns WhatsApp bold (including converted
    headings) into italic. The input contract is "Markdown": convert once, at the edge.
    """
    out: list[str] = []
    in_fence = False
    for line in text.split("\n"):
        if is_fence_line(line):
            # Keep the indentation (lists), drop the language tag: WhatsApp would print it.
            out.append(line[: line.index("`")] + "```")
            in_fence = not in_fence
        elif in_fence:
            out.append(line)
        else:
            out.append(_convert_line(line))
    return "\n".join(out)


def _convert_line(line: str) -> str:
    if _PH_OPEN in line or _PH_CLOSE in line or _RULE_RE.fullmatch(line):
        return line
    heading = _HEADING_RE.fullmatch(line)
    if heading:
        content = _convert_inline((heading.group(1) or "").strip())
        if not content:
            return ""
        # "# **Title**" is already bold once converted; do not wrap it twice.
        if len(content) > 1 and content.startswith("*") and content.endswith("*"):
            return content
        return f"*{content}*"
    bullet = _BULLET_RE.fullmatch(line)
    if bullet:
        indent, gap, rest = bullet.groups()
        return f"{indent}-{gap}{_convert_inline(rest)}"
    return _convert_inline(line)


def _convert_inline(segment: str) -> str:
    shielded: list[str] = []

    def shield(value: str) -> str:
        shielded.append(value)
        return f"{_PH_OPEN}{len(shielded) - 1}{_PH_CLOSE}"

    text = _CODE_SPAN_RE.sub(lambda m: shield(m.group(0)), segment)

    def link(m: re.Match[str]) -> str:
        label, url = m.group(1).strip(), m.group(2)
        if not label or label == url:
            return shield(url)
        return f"{label} ({shield(url)})"

    text = _LINK_RE.sub(link, text)
    text = _AUTOLINK_RE.sub(lambda m: shield(m.group(1)), text)
    # Bare URLs: "example.com/_private_" must not grow italics.
    text = _BARE_URL_RE.sub(lambda m: shield(m.group(0)), text)
    text = _STRIKE_RE.sub(r"~\1~", text)
    # Italic before bold: bold's output is a single-star span the italic rule would eat.
    text = _STAR_ITALIC_RE.sub(r"_\1_", text)
    text = _STAR_BOLD_RE.sub(r"*\1*", text)
    text = _UNDERSCORE_BOLD_RE.sub(r"*\1*", text)
    # Shielded values may themselves contain placeholders (a link label's code span).
    while _PH_RE.search(text):
        text = _PH_RE.sub(lambda m: shielded[int(m.group(1))], text)
    return text


# --------------------------------------------------------------------------------------
# Splitting into Twilio-sized parts
# --------------------------------------------------------------------------------------


def split_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> list[str]:
    """Split `text` into parts of at most `limit` UTF-16 units, numbered "(i/n) ".

    A text that fits is returned as ``[text]``, untouched and unnumbered. Otherwise each
    part is ``"(i/n) "`` + body, the numbering counted in the limit. Cuts prefer, among
    positions in the second half of the available room, a blank line, then a line break,
    then a space (the separator stays at the end of the earlier part); failing those, the
    same anywhere in the room; failing that, a hard cut that avoids splitting a grapheme
    cluster or a run of backticks where it can.

    A cut inside a fenced code block closes it (``"\\n```"``) at the end of the part and
    reopens it (``"```\\n"``) at the start of the next, so each non-final part has an even
    number of fence lines (see `is_fence_line`) and the final part has the parity of the
    whole text: a text with balanced fences gives parts with balanced fences. `join_parts`
    undoes all of it exactly.

    Raises ValueError when `limit` is too small to make progress (about 20 for long texts).
    """
    if utf16_len(text) <= limit:
        return [text]
    # The numbering's width depends on the part count: assume d digits, split, and retry
    # with more digits until the count fits in d. Counts only grow as room shrinks, so
    # this terminates (or the room drops below the minimum and _chunk raises).
    digits = 1
    while True:
        chunks = _chunk(text, limit - (2 * digits + 4))  # "(" i "/" n ") "
        if len(str(len(chunks))) <= digits:
            break
        digits += 1
    n = len(chunks)
    return [
        f"({i}/{n}) " + (_REOPEN if reopen else "") + body + (_CLOSE if close else "")
        for i, (body, reopen, close) in enumerate(chunks, 1)
    ]


def join_parts(parts: list[str]) -> str:
    """Inverse of `split_message`: ``join_parts(split_message(t, limit)) == t``.

    Strips the "(i/n) " numbering and the fences the split added. A non-final part's body
    ending in "\\n```" always means an added fence: the splitter never cuts right after
    one. Raises ValueError for parts that split_message could not have produced.
    """
    if len(parts) <= 1:
        return "".join(parts)
    n = len(parts)
    out: list[str] = []
    reopened = False
    for i, part in enumerate(parts, 1):
        prefix = f"({i}/{n}) "
        if not part.startswith(prefix):
            raise ValueError(f"part {i} does not start with {prefix!r}")
        body = part[len(prefix) :]
        if reopened:
            if not body.startswith(_REOPEN):
                raise ValueError(f"part {i} should reopen the code block of part {i - 1}")
            body = body[len(_REOPEN) :]
        reopened = i < n and body.endswith(_CLOSE)
        out.append(body[: -len(_CLOSE)] if reopened else body)
    return "".join(out)


def _chunk(text: str, room: int) -> list[tuple[str, bool, bool]]:
    """Cut `text` into (body, reopen, close) triples whose rendered size is <= `room`."""
    # Worst case a part carries both fences and still needs room for one astral character.
    if room < 2 * _FENCE_WIDTH + 2:
        raise ValueError("limit too small to split this message")
    chunks: list[tuple[str, bool, bool]] = []
    start, end_of_text, reopen = 0, len(text), False
    while start < end_of_text:
        avail = room - (_FENCE_WIDTH if reopen else 0)
        end = _fit(text, start, avail)
        if end == end_of_text:
            # The last part never gets an added close: its parity is the text's own, and
            # adding one would make "...\n```" ambiguous for join_parts.
            chunks.append((text[start:], reopen, False))
            break
        cut = _choose_cut(text, start, end)
        close = _ends_inside_fence(text[start:cut], reopen)
        if close and utf16_len(text[start:cut]) + _FENCE_WIDTH > avail:
            cut = _choose_cut(text, start, _fit(text, start, avail - _FENCE_WIDTH))
            close = _ends_inside_fence(text[start:cut], reopen)
        chunks.append((text[start:cut], reopen, close))
        start, reopen = cut, close
    return chunks


def _fit(text: str, start: int, avail: int) -> int:
    """The largest end such that text[start:end] is at most `avail` UTF-16 units."""
    end = min(len(text), start + avail)
    cost = utf16_len(text[start:end])
    while cost > avail:
        end -= 1
        cost -= _units(text[end])
    return end


def _ends_inside_fence(body: str, reopened: bool) -> bool:
    return (int(reopened) + _fence_count(body)) % 2 == 1


def _choose_cut(text: str, start: int, end: int) -> int:
    """Pick the cut in (start, end]; text[start:end] is known not to be the last part."""
    # First pass: only cuts that keep at least half the room, so a blank line near the
    # top does not produce a one-line part; second pass: any boundary beats a hard cut.
    for lowest in (start + (end - start) // 2, start + 1):
        for sep in ("\n\n", "\n", " "):
            cut = _last_boundary(text, sep, start, end, lowest)
            if cut is not None:
                return cut
    for cut in range(end, start, -1):
        if _cut_ok(text, start, cut):
            return cut
    # Pathological (e.g. a run of backticks longer than the room): keep only the rule
    # join_parts depends on, a body never ending in "\n```".
    return end - 1 if text[start:end].endswith(_CLOSE) else end


def _last_boundary(text: str, sep: str, start: int, end: int, lowest: int) -> int | None:
    hi = end
    while True:
        j = text.rfind(sep, start, hi)
        if j < 0:
            return None
        cut = j + len(sep)
        if cut < lowest:
            return None
        if cut > start and _cut_ok(text, start, cut):
            return cut
        hi = j + len(sep) - 1


def _cut_ok(text: str, start: int, cut: int) -> bool:
    """Whether ending a body text[start:cut] here keeps both invariants and looks sane.

    1. join_parts: the body must not end in "\\n```" (it would read as an added fence).
    2. Fence parity: a line cut in pieces must count as a fence in exactly the piece where
       it starts, and only if the whole line is one; so the first piece reads as a fence
       iff the line does, and no later piece (a part's first line) reads as one.
    3. Cosmetics: do not split a grapheme cluster (emoji sequences, combining marks).
    """
    if cut - start >= len(_CLOSE) and text.startswith(_CLOSE, cut - len(_CLOSE)):
        return False
    if _splits_cluster(text, cut):
        return False
    # The body's first line, when the body starts mid-line, must not read as a fence.
    if start > 0 and text[start - 1] != "\n":
        nl = text.find("\n", start, min(cut, start + _FENCE_MAX_LEN + 1))
        first = text[start : nl if nl >= 0 else cut]
        if len(first) <= _FENCE_MAX_LEN and is_fence_line(first):
            return False
    lo = max(0, cut - _FENCE_MAX_LEN - 1)
    nl = text.rfind("\n", lo, cut)
    line_start = nl + 1 if nl >= 0 else (0 if lo == 0 else None)
    if line_start == cut:
        return True  # a cut at a line start leaves every line whole
    if line_start is None:
        return _FENCE_PRONE_RE.match(text, cut) is None  # a long line is never a fence
    bound = line_start + _FENCE_MAX_LEN + 1
    nl = text.find("\n", cut, bound)
    if nl >= 0:
        whole_is_fence = is_fence_line(text[line_start:nl])
    elif bound >= len(text):
        whole_is_fence = is_fence_line(text[line_start:])
    else:
        whole_is_fence = False
    if is_fence_line(text[line_start:cut]) != whole_is_fence:
        return False
    return _FENCE_PRONE_RE.match(text, cut) is None


_JOINERS = frozenset("\u200d\ufe0e\ufe0f\u20e3")


def _splits_cluster(text: str, cut: int) -> bool:
    """An approximation of a grapheme boundary test, enough for emoji and accents."""
    if cut <= 0 or cut >= len(text):
        return False
    before, after = text[cut - 1], text[cut]
    if before == "\r" and after == "\n":
        return True
    if before == "\u200d" or after in _JOINERS:
        return True
    code = ord(after)
    if 0x1F3FB <= code <= 0x1F3FF or 0xE0020 <= code <= 0xE007F:  # skin tones, tag chars
        return True
    if 0x1F1E6 <= code <= 0x1F1FF and 0x1F1E6 <= ord(before) <= 0x1F1FF:  # flag halves
        return True
    return unicodedata.category(after) in ("Mn", "Mc", "Me")
