"""Figures that show the names users give (class names, data folders) in any script: matplotlib's default
font, DejaVu Sans, has no Hangul, kana or Han glyphs, and draws a box for each with a "Glyph … missing"
warning per character per figure (18 for two Korean class names). Inside `any_script()` matplotlib falls
back, glyph by glyph, to an installed CJK font; where none is installed, one warning says which package
adds one. On Debian/Ubuntu: `sudo apt-get install fonts-noto-cjk` (or `fonts-nanum` for Korean alone),
then `rm -rf ~/.cache/matplotlib` so matplotlib lists the new font."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

log = logging.getLogger(__name__)

FONT_PACKAGE = "fonts-noto-cjk"
# Families that cover CJK, Korean first (tlbench's first users are Korean students), then the rest.
CJK_FAMILIES = (
    "Noto Sans CJK KR", "Noto Sans KR", "NanumGothic", "NanumBarunGothic", "Malgun Gothic",
    "Apple SD Gothic Neo", "AppleGothic", "UnDotum", "Baekmuk Gulim", "Noto Sans CJK JP", "Noto Sans CJK SC",
    "Noto Sans CJK TC",
    "Source Han Sans", "WenQuanYi Zen Hei", "Droid Sans Fallback", "Arial Unicode MS",
)  # fmt: skip
_MISSING_GLYPH = re.compile(r"Glyph (\d+) .*missing from font")
_warned = False


@cache
def installed_fallbacks() -> tuple[str, ...]:
    """The CJK_FAMILIES matplotlib's font list holds, in preference order (read once per process)."""
    from matplotlib import font_manager

    names = {entry.name for entry in font_manager.fontManager.ttflist}
    return tuple(family for family in CJK_FAMILIES if family in names)


@contextmanager
def any_script() -> Iterator[None]:
    """Create, lay out and save figures inside this: glyphs the default font lacks come from an installed
    CJK font; glyphs no font has draw as boxes with one warning per process, not one per character."""
    import matplotlib

    families = [*matplotlib.rcParams["font.family"], *installed_fallbacks()]
    with matplotlib.rc_context({"font.family": families}), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    missing = []
    for warning in caught:
        found = _MISSING_GLYPH.search(str(warning.message))
        if found:
            missing.append(chr(int(found.group(1))))
        else:  # every other warning goes on as it came
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if missing:
        warn_missing_glyphs(missing)


def warn_missing_glyphs(characters: list[str]) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    shown = "".join(dict.fromkeys(characters))[:20]
    log.warning(
        "no installed font has the characters %s: figures show boxes for them; install one "
        "(Debian/Ubuntu: sudo apt-get install %s, or fonts-nanum for Korean) and rm -rf ~/.cache/matplotlib",
        shown, FONT_PACKAGE,
    )  # fmt: skip
