"""What a run's model sees and gets wrong, as PNGs in `<run>/figures/` and TensorBoard images: the test
confusion matrix, the most confidently wrong test images, and a training batch as the network receives it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from tlbench.analysis.fonts import any_script
from tlbench.data.preset import denormalize
from tlbench.models.decision import BinaryDecision

FIGURES_DIR = "figures"
# Counts stay readable inside the cells up to about this many classes.
_ANNOTATE_MAX_CLASSES = 30


def predicted_classes(probs: torch.Tensor, decision: BinaryDecision | None) -> torch.Tensor:
    """The answers `predict` gives: at the saved threshold for two classes, else the more probable class."""
    return decision.predict(probs) if decision is not None else probs.argmax(dim=1)


def most_confidently_wrong(
    probs: torch.Tensor, labels: torch.Tensor, k: int, decision: BinaryDecision | None = None
) -> torch.Tensor:
    """Row indices of up to `k` wrong predictions, the most confident (in the predicted class) first."""
    predicted = predicted_classes(probs, decision)
    confidence = probs.gather(1, predicted[:, None]).squeeze(1)
    wrong = (predicted != labels).nonzero().squeeze(1)
    return wrong[confidence[wrong].argsort(descending=True)[:k]]


def confusion_matrix_figure(
    labels: torch.Tensor, predictions: torch.Tensor, class_names: Sequence[str], decided_by: str | None = None
) -> Figure:
    """Counts of (true, predicted) class pairs; the colour is the share of the true class (recall);
    `decided_by` (a two-class threshold rule) is said under the title."""
    n = len(class_names)
    counts = torch.bincount(labels.long() * n + predictions.long(), minlength=n * n).view(n, n).numpy()
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(max(4.0, 0.45 * n + 2.5), 24.0)
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot()
    shown = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_xticks(range(n), class_names, rotation=45 if n <= 10 else 90, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    how = f"predicted: {decided_by}" if decided_by else "predicted: the more probable class"
    ax.set_title(f"test confusion matrix ({int(counts.sum())} images)\n{how}", fontsize="medium", wrap=True)
    if n <= _ANNOTATE_MAX_CLASSES:
        for true in range(n):
            for pred in range(n):
                colour = "white" if share[true, pred] > 0.5 else "black"
                ax.text(pred, true, str(counts[true, pred]), ha="center", va="center", color=colour)
    fig.tight_layout()
    return fig


def image_grid_figure(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    titles: Sequence[str] | None = None,
    title: str | None = None,
    columns: int = 8,
) -> Figure:
    """Normalised (B, C, H, W) images, de-normalised, in a grid with an optional caption under each."""
    pictures = denormalize(images, mean, std).permute(0, 2, 3, 1).numpy()
    count = len(pictures)
    columns = max(1, min(columns, count))
    rows = max(1, -(-count // columns))
    fig = Figure(figsize=(1.9 * columns, 2.2 * rows + (0.4 if title else 0)))
    for index in range(rows * columns):
        ax = fig.add_subplot(rows, columns, index + 1)
        ax.axis("off")
        if index >= count:
            continue
        picture = pictures[index]
        if picture.shape[-1] == 1:
            ax.imshow(picture[..., 0], cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(picture)
        if titles is not None:
            ax.set_title(titles[index], fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def render(fig: Figure) -> np.ndarray:
    """The figure as uint8 RGB pixels (H, W, 3): one rendering for the PNG and for TensorBoard."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def log_images(logger, images: dict[str, np.ndarray], step: int = 0) -> None:
    """Add (H, W, 3) uint8 images to a TensorBoard logger or SummaryWriter; any other logger is left alone."""
    writer = getattr(logger, "experiment", logger)
    if not hasattr(writer, "add_image"):
        return
    for tag, pixels in images.items():
        writer.add_image(tag, pixels, global_step=step, dataformats="HWC")
    writer.flush()


@any_script()  # class names in any script (fonts.py)
def write_run_figures(
    run_dir: str | Path,
    logger,
    *,
    test_probs: torch.Tensor,
    test_labels: torch.Tensor,
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    test_images: torch.Tensor | None = None,
    test_image_rows: torch.Tensor | None = None,
    train_images: torch.Tensor | None = None,
    train_labels: torch.Tensor | None = None,
    decision: BinaryDecision | None = None,
    max_images: int = 16,
    step: int = 0,
) -> dict[str, Path]:
    """Draw a run's figures into `<run_dir>/figures/*.png` (and TensorBoard); returns {name: PNG path}.

    `test_probs` (N, classes) and `test_labels` (N,) of every test image give the confusion matrix;
    `test_images` (M, C, H, W) are the rows `test_image_rows` of them (default 0..M-1): only the
    `max_images` most confidently wrong are drawn, so passing those is enough. `train_images` (B, C, H, W)
    and optional `train_labels` give the training batch, de-normalised with `mean`/`std`. `decision` (two
    classes) makes the answers those of `predict`, at the saved threshold, and the figures say so."""
    folder = Path(run_dir) / FIGURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    test_probs, test_labels = test_probs.detach().float().cpu(), test_labels.detach().long().cpu()
    predicted = predicted_classes(test_probs, decision)
    decided_by = decision.text if decision is not None else None
    figures = {"confusion_matrix": confusion_matrix_figure(test_labels, predicted, class_names, decided_by)}

    if test_images is not None:
        rows = torch.arange(len(test_images)) if test_image_rows is None else test_image_rows.cpu()
        position = {int(row): index for index, row in enumerate(rows)}
        ranked = most_confidently_wrong(test_probs, test_labels, max_images, decision).tolist()
        wrong = [row for row in ranked if row in position]
        if wrong:
            titles = [
                f"true {class_names[test_labels[row]]}\n"
                f"pred {class_names[predicted[row]]} {test_probs[row, predicted[row]]:.0%}"
                for row in wrong
            ]
            picked = test_images[[position[row] for row in wrong]]
            title = "most confidently wrong test images" + (
                f"\npredicted: {decided_by}" if decided_by else ""
            )
            figures["confidently_wrong"] = image_grid_figure(picked, mean, std, titles, title=title)

    if train_images is not None and len(train_images):
        batch = train_images[:max_images]
        titles = None if train_labels is None else [class_names[int(c)] for c in train_labels[:max_images]]
        figures["train_batch"] = image_grid_figure(
            batch, mean, std, titles, title="training images as the network receives them (de-normalised)"
        )

    pixels = {name: render(fig) for name, fig in figures.items()}
    paths = {name: folder / f"{name}.png" for name in pixels}
    for name, image in pixels.items():
        Image.fromarray(image).save(paths[name])
    log_images(logger, {f"{FIGURES_DIR}/{name}": image for name, image in pixels.items()}, step)
    return paths


class RunFigureRecorder(L.Callback):
    """Collects what `write_run_figures` draws: the first training batch, every test prediction, and only
    the images of the `max_images` most confidently wrong (so a large test set costs no memory). A forward
    hook on `net` sees exactly what the network saw. Under DDP each rank records its own share."""

    def __init__(self, max_images: int = 16) -> None:
        self.max_images = max_images
        self.train_images: torch.Tensor | None = None
        self.train_labels: torch.Tensor | None = None
        self._reset_test()

    def _reset_test(self) -> None:
        self._probs: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._wrong_images: torch.Tensor | None = None
        self._wrong_rows = torch.empty(0, dtype=torch.long)
        self._wrong_confidence = torch.empty(0)
        self._seen: tuple[torch.Tensor, torch.Tensor] | None = None
        self._hook = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        images, labels = batch[0], batch[1]
        if self.train_images is None and images.dim() == 4:
            self.train_images = images[: self.max_images].detach().float().cpu()
            self.train_labels = labels[: self.max_images].detach().cpu()

    def on_test_start(self, trainer, pl_module) -> None:
        self._reset_test()
        self._hook = pl_module.net.register_forward_hook(self._see)

    def _see(self, module, inputs, output) -> None:
        self._seen = (inputs[0].detach(), output.detach())

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx=0) -> None:
        if self._seen is None:
            return
        images, logits = self._seen
        self._seen = None
        probs = logits.float().softmax(dim=1).cpu()
        labels = batch[1].detach().long().cpu()
        offset = sum(len(p) for p in self._probs)
        self._probs.append(probs)
        self._labels.append(labels)
        decision = getattr(pl_module, "binary_decision", None)  # the tested checkpoint's threshold
        self._keep_most_confidently_wrong(images, probs, labels, offset, decision)

    def _keep_most_confidently_wrong(self, images, probs, labels, offset: int, decision=None) -> None:
        wrong = most_confidently_wrong(probs, labels, self.max_images, decision)
        if not len(wrong):
            return
        new_images = images[wrong.to(images.device)].float().cpu()
        candidates = new_images if self._wrong_images is None else torch.cat([self._wrong_images, new_images])
        rows = torch.cat([self._wrong_rows, wrong + offset])
        predicted = predicted_classes(probs[wrong], decision)
        confidence = torch.cat(
            [self._wrong_confidence, probs[wrong].gather(1, predicted[:, None]).squeeze(1)]
        )
        keep = confidence.argsort(descending=True)[: self.max_images]
        self._wrong_images = candidates[keep]
        self._wrong_rows, self._wrong_confidence = rows[keep], confidence[keep]

    def on_test_end(self, trainer, pl_module) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def figure_inputs(self) -> dict[str, torch.Tensor | None]:
        """The tensor arguments of `write_run_figures`, from what was recorded."""
        if not self._probs:
            raise RuntimeError("no test batch was recorded: call trainer.test with this callback first")
        return {
            "test_probs": torch.cat(self._probs),
            "test_labels": torch.cat(self._labels),
            "test_images": self._wrong_images,
            "test_image_rows": self._wrong_rows,
            "train_images": self.train_images,
            "train_labels": self.train_labels,
        }
