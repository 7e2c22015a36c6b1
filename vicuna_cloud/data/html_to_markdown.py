"""ShareGPT HTML (2023 scrapes) to markdown, with ChatGPT UI noise removed.

Why our own converter: FastChat ran markdownify (BeautifulSoup) on every message, which
is slow and backslash-escapes ``_`` and ``*`` in prose (the model then learns to emit
``\\_``). We parse once with lxml (C) and walk the tree, emitting markdown directly:
paragraphs, headings, ordered lists (honouring ``start``), nested lists, tables, links,
emphasis, inline code, block quotes, and code blocks back as fenced blocks with their
language. The ChatGPT code-block header (language label + "Copy code" button) and the
leading "N / N" regenerate counter are dropped.

Only values that look like HTML are parsed (``looks_like_html``): human turns in the
scrapes are plain text, and a user pasting ``<div>`` inside a question must keep it.
"""

from __future__ import annotations

import html
import re

from lxml import etree

# "2 / 2" regenerate counter glued to the start of a message ("2 / 2write a poem",
# "1 / 1<div ...>"). A counter followed by a space ("3 / 4 of the cake") is prose: kept.
_COUNTER = re.compile(r"^\s*\d+\s*/\s*\d+(?=[^\s\d/])")
_HTML_START = re.compile(
    r"^\s*<(div|p|ol|ul|pre|table|h[1-6]|blockquote|span|hr|br|strong|em|code|a|img|b|i)[\s>/]",
    re.I,
)
_WS = re.compile(r"[ \t\r\n\f\v]+")
_COPY_NOISE = re.compile(r"Copy\d+ chars / \d+ words")
_LANG_CLASS = re.compile(r"(?:^|\s)language-([A-Za-z0-9_+#.-]+)")
_BLANK_LINES = re.compile(r"\n{3,}")

_BLOCK = frozenset({"p", "div", "ol", "ul", "pre", "table", "h1", "h2", "h3", "h4", "h5",
                    "h6", "blockquote", "hr", "section", "article", "header", "footer"})
_SKIP = frozenset({"button", "svg", "script", "style", "head", "title", "noscript"})


class HTMLConversionError(ValueError):
    """The parser rejected the markup."""


def strip_regenerate_counter(text: str) -> str:
    m = _COUNTER.match(text)
    return text[m.end():] if m else text


def looks_like_html(text: str) -> bool:
    return bool(_HTML_START.match(text)) or '<div class="markdown' in text


def convert_value(value: str) -> str:
    """Clean one message value: counter removed, HTML converted, whitespace tidied."""
    text = strip_regenerate_counter(value)
    if looks_like_html(text):
        text = html_to_markdown(text)
    else:
        text = _COPY_NOISE.sub("", text)
    return text.strip()


def html_to_markdown(text: str) -> str:
    # The plain etree HTML parser: lxml.html's element-class lookup costs a third of the
    # time and we need none of its API.
    try:
        doc = etree.fromstring(f"<div>{text}</div>", _PARSER)
    except (etree.ParserError, etree.XMLSyntaxError, ValueError) as e:
        raise HTMLConversionError(str(e)) from None
    if doc is None or len(doc) == 0:
        return ""
    body = doc.find("body")
    root = body[0] if body is not None and len(body) else doc
    out: list[str] = []
    try:
        _Walker(out).block_children(root, "")
    except RecursionError:
        raise HTMLConversionError("HTML nested too deeply to convert") from None
    md = "".join(out)
    if "Copy" in md:
        md = _COPY_NOISE.sub("", md)
    if "\n\n\n" in md:
        md = _BLANK_LINES.sub("\n\n", md)
    return md.strip()


# huge_tree: without it libxml2 silently drops content nested deeper than 256 levels.
_PARSER = etree.HTMLParser(remove_comments=True, remove_pis=True, no_network=True,
                           huge_tree=True)


def _inline_text(s: str | None) -> str:
    if not s:
        return ""
    if "\n" in s or "  " in s or "\t" in s or "\r" in s or "\f" in s or "\v" in s:
        return _WS.sub(" ", s)
    return s


def _text_content(el) -> str:
    return "".join(el.itertext())


class _Walker:
    """Emit markdown for a tree. Block elements end with a blank line; inline ones don't."""

    def __init__(self, out: list[str]):
        self.out = out

    # -- inline ------------------------------------------------------------------------
    def inline(self, el) -> str:
        if not len(el):  # the common case: text only
            return _inline_text(el.text)
        parts: list[str] = []
        if el.text:
            parts.append(_inline_text(el.text))
        for child in el:
            tag = child.tag
            if isinstance(tag, str) and tag and tag not in _SKIP:
                parts.append(self.inline_el(child, tag))
            tail = child.tail
            if tail:
                parts.append(_inline_text(tail))
        return "".join(parts)

    def inline_el(self, el, tag: str) -> str:
        if tag in ("strong", "b"):
            inner = self.inline(el).strip()
            return f"**{inner}**" if inner else ""
        if tag in ("em", "i"):
            inner = self.inline(el).strip()
            return f"*{inner}*" if inner else ""
        if tag == "code":
            code = _text_content(el)
            if not code:
                return ""
            fence = "``" if "`" in code else "`"
            return f"{fence}{code}{fence}"
        if tag == "a":
            inner = self.inline(el).strip()
            href = el.get("href")
            return f"[{inner}]({href})" if href and inner else inner
        if tag == "img":
            src = el.get("src")
            return f"![{el.get('alt', '')}]({src})" if src else ""
        if tag == "br":
            return "\n"
        if tag in _BLOCK or tag == "li":
            # Block inside inline context (e.g. <p> inside <li>): flatten with newlines.
            sub: list[str] = []
            _Walker(sub).block_children(el, "") if tag != "pre" else _Walker(sub).pre(el, "")
            return "\n" + "".join(sub).strip() + "\n"
        return self.inline(el)

    # -- blocks ------------------------------------------------------------------------
    def block_children(self, el, indent: str) -> None:
        """Children of a container: runs of inline content become paragraphs."""
        run: list[str] = []
        if el.text:
            run.append(_inline_text(el.text))
        for child in el:
            tag = child.tag
            if tag in _BLOCK:
                if run:
                    self.flush(run, indent)
                self.block(child, tag, indent)
            elif tag in _SKIP or not isinstance(tag, str):
                pass
            else:
                run.append(self.inline_el(child, tag))
            tail = child.tail
            if tail:  # keeps the space in "<b>a</b> <i>b</i>"; flush() strips
                run.append(_inline_text(tail))
        if run:
            self.flush(run, indent)

    def flush(self, run: list[str], indent: str) -> None:
        text = "".join(run).strip()
        run.clear()
        if text:
            self.para(text, indent)

    def para(self, text: str, indent: str) -> None:
        if indent:
            text = text.replace("\n", "\n" + indent)
        self.out.append(f"{indent}{text}\n\n")

    def block(self, el, tag: str, indent: str) -> None:
        if tag == "p":
            text = self.inline(el).strip()
            if text:
                self.para(text, indent)
        elif tag[0] == "h" and len(tag) == 2 and tag[1].isdigit():
            text = self.inline(el).strip()
            if text:
                self.para("#" * int(tag[1]) + " " + text, indent)
        elif tag in ("ul", "ol"):
            self.lst(el, tag == "ol", indent)
        elif tag == "pre":
            self.pre(el, indent)
        elif tag == "table":
            self.table(el, indent)
        elif tag == "hr":
            self.para("---", indent)
        elif tag == "blockquote":
            sub: list[str] = []
            _Walker(sub).block_children(el, "")
            body = "".join(sub).strip()
            if body:
                self.para("\n".join("> " + ln if ln else ">" for ln in body.split("\n")), indent)
        else:
            self.block_children(el, indent)

    def lst(self, el, ordered: bool, indent: str) -> None:
        try:
            n = int(el.get("start", "1"))
        except ValueError:
            n = 1
        lines: list[str] = []
        for li in el:
            if not isinstance(li.tag, str) or li.tag != "li":
                continue
            marker = f"{n}. " if ordered else "- "
            n += 1
            sub: list[str] = []
            _Walker(sub).block_children(li, "")
            body = "".join(sub).strip()
            if "\n" in body:
                body = _BLANK_LINES.sub("\n\n", body)
                # Tight list: single blank lines between an item's paragraphs become newlines.
                body = body.replace("\n\n", "\n")
                body = body.replace("\n", "\n" + " " * len(marker))
            lines.append(marker + body)
        if lines:
            text = "\n".join(lines)
            self.para(text, indent)

    def pre(self, el, indent: str) -> None:
        code_el = el.find(".//code")
        lang = ""
        if code_el is not None:
            m = _LANG_CLASS.search(code_el.get("class", ""))
            lang = m.group(1) if m else ""
            code = _text_content(code_el)
        else:
            # <pre> without <code>: keep the text minus the UI header's button label.
            code = "".join(t for t in el.itertext()
                           if t not in ("Copy code", "Copy"))
        code = code.strip("\n")
        fence = "```"
        while fence in code:
            fence += "`"
        self.para(f"{fence}{lang}\n{code}\n{fence}", indent)

    def table(self, el, indent: str) -> None:
        rows: list[list[str]] = []
        header_rows = 0
        for tr in el.iter("tr"):
            cells = [self.inline(c).strip().replace("|", "\\|").replace("\n", " ")
                     for c in tr if isinstance(c.tag, str) and c.tag in ("td", "th")]
            if not cells:
                continue
            if all(isinstance(c.tag, str) and c.tag == "th" for c in tr
                   if isinstance(c.tag, str)) and not rows:
                header_rows = 1
            rows.append(cells)
        if not rows:
            return
        width = max(len(r) for r in rows)
        rows = [r + [""] * (width - len(r)) for r in rows]
        if not header_rows:
            rows.insert(0, [""] * width)
        lines = ["| " + " | ".join(rows[0]) + " |", "| " + " | ".join(["---"] * width) + " |"]
        lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        self.para("\n".join(lines), indent)


def unescape_entities(text: str) -> str:
    """For plain-text values that carry HTML entities (rare in the scrapes)."""
    return html.unescape(text)
