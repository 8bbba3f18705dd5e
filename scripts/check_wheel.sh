#!/usr/bin/env bash
# The wheel as a user gets it: built from this checkout, installed with its core dependencies only (no
# extras, no editable path, nothing from the repository on sys.path) into a fresh virtualenv, then run from
# a folder outside the repository: `python -m tlbench.train --help` and a one-batch fast_dev_run on
# generated images with a backbone that needs no download.
#
#   make deps-check                  (PYTHON and TORCH from the Makefile)
#   TORCH="torch==2.14.1 torchvision==0.29.1" scripts/check_wheel.sh
#
# torch/torchvision are installed first, pinned as the Makefile pins them; then the wheel, which brings the
# rest of its core dependencies and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-torch==2.14.1 torchvision==0.29.1}
work=$(mktemp -d "${TMPDIR:-/tmp}/tlbench-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT
started=$SECONDS

"$PYTHON" -m pip wheel -q --no-deps --wheel-dir "$work/dist" .
"$PYTHON" -m venv "$work/venv"
py="$work/venv/bin/python"
# shellcheck disable=SC2086  # TORCH is a list of requirements
"$py" -m pip install -q $TORCH
"$py" -m pip install -q "$work"/dist/tlbench-*.whl
echo "installed in $((SECONDS - started)) s: $("$py" -m pip list --format=freeze | grep -ciE '^[a-z]') packages"

cd "$work"
"$py" -m tlbench.train --help > help.txt
grep -q "backbone: " help.txt || { cat help.txt; echo "--help lists no backbone group"; exit 1; }
echo "--help: $(wc -l < help.txt) lines, config groups listed"
"$py" - <<'PY'
from pathlib import Path

from PIL import Image

for split, count in {"train": 8, "val": 4, "test": 4}.items():
    for c, (name, colour) in enumerate({"cat": (200, 40, 40), "dog": (40, 40, 200)}.items()):
        folder = Path("images") / split / name
        folder.mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (40, 32), tuple(v + 5 * i for v in colour)).save(folder / f"img_{i:03d}.jpg")
PY
"$py" -m tlbench.train data=imagefolder data.root=images data.image_size=32 data.num_workers=0 \
    data.batch_size=8 backbone=resnet18 backbone.weights=null trainer=cpu trainer.fast_dev_run=true \
    logger=csv hydra.run.dir=run
"$py" - <<'PY'
import json

results = json.loads(open("run/results.json").read())
assert results["status"] == "complete", results["status"]
print(f"fast_dev_run: {results['status']}, test/acc {results['metrics']['test/acc']:.3f}")
PY
echo "wheel check passed in $((SECONDS - started)) s"
