"""What the import graph promises a user: predicting with a checkpoint stays light, and importing tlbench
changes nothing in the process. (The arrows between packages are checked by lint-imports in `make lint`.)"""

from __future__ import annotations

import json
import subprocess
import sys

# Imports every tlbench module, then (third-party packages now loaded, whatever they set up on import done)
# runs tlbench's own module code a second time and compares the process state around that second pass.
IMPORT_EVERYTHING_TWICE = """
import importlib, json, os, pkgutil, sys, warnings
import tlbench
names = [m.name for m in pkgutil.walk_packages(tlbench.__path__, "tlbench.") if m.name != "tlbench.conf"]
for name in names:
    importlib.import_module(name)
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
registered = [r for r in ("tlbench.dirname", "tlbench.gpu_count") if OmegaConf.has_resolver(r)]
repo = ConfigStore.instance().repo
stored = [group for group in repo if "tlbench" in str(repo[group])]
before = (dict(os.environ), list(warnings.filters))
for name in [m for m in sys.modules if m.startswith("tlbench.")]:
    del sys.modules[name]
for name in names:
    importlib.import_module(name)
after = (dict(os.environ), list(warnings.filters))
print(json.dumps({"modules": len(names), "registered": registered + stored, "changed": before != after}))
"""


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_serving_a_checkpoint_imports_neither_the_data_pipelines_nor_hydra():
    heavy = ("hydra", "omegaconf", "tlbench.data.pipelines", "tlbench.data.datamodule", "tlbench.data.decode")
    code = (
        "import sys, tlbench.predict, tlbench.export\n"
        f"print(sorted(m for m in sys.modules if m.startswith({heavy!r})))"
    )
    assert run_python(code).strip() == "[]"


def test_importing_a_module_registers_nothing_and_sets_no_environment_or_warning_filter():
    state = json.loads(run_python(IMPORT_EVERYTHING_TWICE).strip().splitlines()[-1])
    assert state["modules"] > 30
    assert state["registered"] == [], "Hydra resolvers and config nodes are registered by the entry point"
    assert not state["changed"], "a module changes os.environ or the warning filters when imported"
