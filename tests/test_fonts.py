"""Figures render the class names users give, Korean included: an installed CJK font is used where the
default has no glyph; with none installed, one warning names the package, instead of a "Glyph … missing"
warning per character per figure. The font list is faked, so these run on machines without CJK fonts."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import matplotlib
import pytest
import torch
from matplotlib import font_manager
from matplotlib.figure import Figure

from tlbench.run.figures import write_run_figures

KOREAN = ["개미", "벌", "나비"]  # ant, bee, butterfly
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def draw_run_figures(folder: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(12, 3, generator=generator).softmax(dim=1)
    labels = torch.arange(12) % 3
    images = torch.randn(12, 3, 16, 16, generator=generator)
    write_run_figures(
        folder, None, test_probs=probs, test_labels=labels, test_images=images, train_images=images[:4],
        train_labels=labels[:4], class_names=KOREAN, mean=MEAN, std=STD,
    )  # fmt: skip


@pytest.fixture
def no_cjk_font(monkeypatch):
    """This machine as CI sees it: no font with Hangul, and a process that has not warned yet."""
    monkeypatch.setattr("tlbench.analysis.fonts.installed_fallbacks", lambda: (), raising=False)
    monkeypatch.setattr("tlbench.analysis.fonts._warned", False, raising=False)


def test_without_a_cjk_font_two_runs_of_figures_warn_once(no_cjk_font, tmp_path, caplog):
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING, logger="tlbench"):
        warnings.simplefilter("always")
        draw_run_figures(tmp_path / "a")
        draw_run_figures(tmp_path / "b")
    glyph_warnings = [w for w in caught if "Glyph" in str(w.message)]
    assert glyph_warnings == [], f"{len(glyph_warnings)} glyph warnings escaped"
    ours = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(ours) == 1, ours
    assert "fonts-noto-cjk" in ours[0] and "개" in ours[0] and "\n" not in ours[0]
    assert (tmp_path / "b" / "figures" / "confusion_matrix.png").is_file(), "the figures are still drawn"


def test_an_installed_cjk_font_is_the_fallback_after_the_default(monkeypatch):
    from tlbench.analysis import fonts

    dejavu = font_manager.findfont("DejaVu Sans")  # any real file: the entry only has to look installed
    fake = font_manager.FontEntry(fname=dejavu, name="NanumGothic", style="normal", weight=400)
    monkeypatch.setattr(font_manager.fontManager, "ttflist", [*font_manager.fontManager.ttflist, fake])
    fonts.installed_fallbacks.cache_clear()
    try:
        assert fonts.installed_fallbacks()[0] == "NanumGothic"
        default = list(matplotlib.rcParams["font.family"])
        with fonts.any_script():
            text = Figure().text(0, 0, "개미")
            assert text.get_fontfamily() == [*default, "NanumGothic"]  # Latin keeps the default font
        assert list(matplotlib.rcParams["font.family"]) == default, "restored after the figures"
    finally:
        fonts.installed_fallbacks.cache_clear()


def test_korean_is_preferred_over_other_cjk_fonts():
    from tlbench.analysis.fonts import CJK_FAMILIES

    assert CJK_FAMILIES.index("NanumGothic") < CJK_FAMILIES.index("Noto Sans CJK JP")
    assert CJK_FAMILIES.index("Noto Sans CJK KR") < CJK_FAMILIES.index("Droid Sans Fallback")


def test_other_warnings_raised_while_drawing_still_reach_the_user(no_cjk_font):
    from tlbench.analysis.fonts import any_script

    with pytest.warns(UserWarning, match="something else"), any_script():
        warnings.warn("something else", UserWarning, stacklevel=1)
