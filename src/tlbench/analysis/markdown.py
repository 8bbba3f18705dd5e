"""The report's Markdown: tables, and user strings (names, paths, error lines) escaped to show as written."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# A `_` inside a word is left alone: CommonMark never reads it as emphasis, and names such as
# efficientnet_lite0 stay readable in the Markdown source and in the terminal.
SPECIAL = re.compile(r"[\\`*|<>\[\]]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")


def md(text: object) -> str:
    """`text` as literal Markdown: what would start emphasis, code, a link, HTML or a table cell escaped."""
    return SPECIAL.sub(lambda m: "\\" + m.group(0), str(text))


def code(text: object) -> str:
    """`text` as inline code, fenced with more backticks than it holds in a row (no backslash escapes)."""
    text = str(text)
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], indent: str = "") -> list[str]:
    """A Markdown table's lines; cells are Markdown already (escape user strings with `md`)."""
    lines = [f"{indent}| {' | '.join(header)} |", f"{indent}|{'---|' * len(header)}"]
    return lines + [f"{indent}| {' | '.join(row)} |" for row in rows]
