"""Reading one image the way a pretrained network expects it, whatever the file holds: datasets mix palette
GIFs, RGBA PNGs, CMYK JPEGs and 16-bit scans, on which `Normalize` fails (the seed README's RGBA bug), so
`read_image` hands on only 8-bit "RGB" or "L", turned as a viewer shows it (EXIF)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

# A truncated JPEG must be reported as bad, not silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

MODE_FOR_CHANNELS = {1: "L", 3: "RGB"}
# EXIF orientations (5-8) whose pixels are stored transposed: width and height swap when shown.
TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)
EXIF_ORIENTATION = 0x0112


class BadImageError(RuntimeError):
    """A file in the dataset that cannot be decoded as an image."""


def to_8bit(image: Image.Image) -> Image.Image:
    """16- and 32-bit grayscale (medical scans, TIFFs) → 8-bit "L", scaled by the bit depth, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or pixels.max() <= 65535 else pixels.max()
        return Image.fromarray(np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        low, high = pixels.min(), pixels.max()
        scaled = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
        return Image.fromarray((scaled * 255.0 + 0.5).astype(np.uint8), mode="L")
    return image


def drop_alpha(image: Image.Image) -> Image.Image:
    """Composite transparent pixels over white: a transparent background is not black."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image


def convert_mode(image: Image.Image, in_chans: int) -> Image.Image:
    """Any PIL mode → the 8-bit mode the network reads ("RGB" for 3 channels, "L" for 1)."""
    image = drop_alpha(to_8bit(image))
    target = MODE_FOR_CHANNELS[in_chans]
    return image if image.mode == target else image.convert(target)


def read_image(path: str | Path, in_chans: int = 3) -> Image.Image:
    """Decode `path` fully (truncation shows up here, not in a worker), turn it upright, convert its mode."""
    try:
        with Image.open(path) as image:
            image.load()
            return convert_mode(upright(image), in_chans)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise BadImageError(f"{path}: {error.__class__.__name__}: {error}") from error


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says; untouched (no copy) when it says nothing."""
    if image.getexif().get(EXIF_ORIENTATION, 1) == 1:
        return image
    return ImageOps.exif_transpose(image)


def shown_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as a viewer shows the image, from its header alone (no pixels decoded)."""
    width, height = image.size
    if image.getexif().get(EXIF_ORIENTATION) in TRANSPOSED_ORIENTATIONS:
        return height, width
    return width, height


def check_image(path: str | Path) -> str | None:
    """Return why `path` is unreadable, or None. JPEGs decode at reduced scale: it is the file we check."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (64, 64))
            image.load()
        return None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return f"{error.__class__.__name__}: {error}"
