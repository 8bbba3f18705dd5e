"""Export a trained checkpoint for serving: the adapted network as ONNX or TorchScript, and beside it
`<file>.json` with what a server needs to feed it (class names, channels, input size, mean/std,
interpolation, and the decision threshold of a binary model when the checkpoint has one).

python -m tlbench.export outputs/runs/<run>/checkpoints/best.ckpt --format onnx
python -m tlbench.export outputs/runs/<run>/checkpoints/best.ckpt --format torchscript --out model.pt
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from tlbench.models.module import TransferModule
from tlbench.results.files import versions, write_atomic

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
INPUT_NAME, OUTPUT_NAME = "images", "logits"
ONNX_OPSET = 17
_ONNX_INSTALL_HINT = "pip install onnx (or pip install 'tlbench[export]')"


def load_checkpoint(path: str | Path) -> TransferModule:
    """The checkpoint's module on the CPU, in eval mode; one line naming the file when it is not one."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"{path} is a folder; give the checkpoint file, e.g. {path / 'checkpoints' / 'best.ckpt'}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; runs keep theirs in <run>/checkpoints/")
    try:
        module = TransferModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - truncated zip, pickle, missing keys: all mean "not a checkpoint"
        detail = (str(error).strip().splitlines() or [""])[0][:200]
        if isinstance(error, KeyError):  # a file torch reads, without what Lightning saves beside the weights
            detail = f"no {detail}: a plain state dict, or another program's checkpoint"
        raise ValueError(
            f"{path} is not a readable tlbench checkpoint ({type(error).__name__}: {detail}); "
            "give the complete .ckpt a tlbench run writes in <run>/checkpoints/ (best.ckpt or last.ckpt)"
        ) from error
    # LoRA adapters folded into their layers: what is predicted, exported or explained is the plain network.
    module.merge_adapters()
    return module.eval()


def serving_metadata(module: TransferModule, format: str, model_file: str) -> dict[str, Any]:
    """Everything outside the network its outputs depend on: how to make its input, what its outputs mean."""
    preset = module.preset
    in_chans = len(preset.mean)
    metadata = {
        "format": format,
        "model_file": model_file,
        "input": {"name": INPUT_NAME, "shape": ["batch", in_chans, preset.crop_size, preset.crop_size]},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", module.num_classes], "kind": "logits (softmax)"},
        "class_names": list(module.class_names),
        "in_chans": in_chans,
        "color_mode": "L" if in_chans == 1 else "RGB",
        "input_size": [preset.crop_size, preset.crop_size],
        "resize_size": preset.resize_size,
        "crop_size": preset.crop_size,
        "interpolation": preset.interpolation,
        "mean": list(preset.mean),
        "std": list(preset.std),
        "preprocessing": "resize shorter side to resize_size, centre-crop crop_size, scale to [0, 1], "
        "subtract mean, divide by std",
        "backbone": module.hparams.backbone.get("name"),
        "versions": versions(),
    }
    if module.num_classes == 2:
        metadata["positive_class"] = module.positive_class
    threshold = module.hparams.get("threshold")
    if threshold is not None:
        metadata["threshold"] = threshold
    if module.binary_decision is not None:  # which class the threshold picks, and where it was chosen
        metadata["decision"] = module.binary_decision.text
    return metadata


def export(checkpoint: str | Path, format: str = "onnx", out: str | Path | None = None) -> tuple[Path, Path]:
    """Write the checkpoint's network as `format` to `out` and its serving metadata to `<out>.json`."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    default_name = Path(checkpoint).with_suffix(FORMATS[format]).name
    out = Path(out).expanduser() if out else Path(checkpoint).with_suffix(FORMATS[format])
    if out.is_dir():  # as cp does: into that folder, under the checkpoint's name
        out = out / default_name
    check_writable_folder(out.parent, "--out")
    module = load_checkpoint(checkpoint)
    preset = module.preset
    example = torch.zeros(2, len(preset.mean), preset.crop_size, preset.crop_size)
    with torch.no_grad():
        if format == "onnx":
            model_bytes = _export_onnx(module.net, example)
        else:
            with warnings.catch_warnings():
                # torch marks torch.jit deprecated; TorchScript is still what C++/LibTorch servers load.
                warnings.simplefilter("ignore", FutureWarning)
                buffer = io.BytesIO()
                torch.jit.save(torch.jit.trace(module.net, example), buffer)
            model_bytes = buffer.getvalue()
    # Serialised in memory, then written by Python: torch's own file writer aborts the process (C++
    # terminate, exit 134) on a full disk, leaving a truncated file; write_atomic leaves the old file or none.
    try:
        write_atomic(out, model_bytes)
    except OSError as error:
        free = shutil.disk_usage(out.parent).free / 2**20
        raise OutputPathError(
            f"could not write {out} ({error.strerror or error}; {free:.0f} MB free there); "
            "free some space or choose another --out"
        ) from None
    metadata_file = out.with_name(out.name + ".json")
    write_atomic(metadata_file, json.dumps(serving_metadata(module, format, out.name), indent=2) + "\n")
    return out, metadata_file


class OutputPathError(ValueError):
    """An output path the CLI cannot write; the message names the option and what to do."""


def check_writable_folder(folder: Path, option: str) -> None:
    """OutputPathError (one line) unless `folder` exists or can be made and a file can be written in it:
    checked before minutes of work, and a file where a folder is meant is named as such."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{option}: {existing} is a file, not a folder; choose another {option}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):  # permissions alone do not tell (root, read-only mounts)
            pass
    except OSError as error:
        raise OutputPathError(
            f"{option}: cannot write into {folder} ({error.strerror or error}); choose another {option}"
        ) from None


def _export_onnx(net: torch.nn.Module, example: torch.Tensor) -> bytes:
    """The network as a checked ONNX model, in memory (models this size are far below protobuf's 2 GB)."""
    try:
        import onnx
    except ImportError as err:
        raise ImportError(f"ONNX export needs the onnx package: {_ONNX_INSTALL_HINT}") from err
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter needs only onnx; torch nudges to dynamo's, which needs onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(
            net,
            (example,),
            buffer,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=ONNX_OPSET,
        )
    model_bytes = buffer.getvalue()
    onnx.checker.check_model(model_bytes)
    return model_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint")
    parser.add_argument("--format", choices=list(FORMATS), default="onnx")
    parser.add_argument(
        "--out", help="the model file to write, or a folder to write it in (default: beside the checkpoint)"
    )
    args = parser.parse_args(argv)
    try:
        model_file, metadata_file = export(args.checkpoint, args.format, args.out)
    except (FileNotFoundError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the disk filled up or went read-only while writing
        where = error.filename or args.out or "the output folder"
        print(
            f"error: could not write {where} ({error.strerror or error}); choose another --out",
            file=sys.stderr,
        )
        return 1
    print(f"{args.format}: {model_file}\nserving metadata: {metadata_file}")
    return 0
