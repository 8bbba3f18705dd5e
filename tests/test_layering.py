"""What the import graph promises a user: predicting with a checkpoint stays light, and importing tlbench
changes nothing in the process. (The arrows between packages are checked by lint-imports in `make lint`.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

IMPORT_ALL = """
import importlib, pkgutil, tlbench
for m in pkgutil.walk_packages(tlbench.__path__, "tlbench."):
    if m.name != "tlbench.conf":
        importlib.import_module(m.name)
"""
# What the third-party packages set up when imported is theirs: load exactly those modules first (as a
# first process that imported all of tlbench found them), then compare the state around tlbench's own.
STATE_AROUND_TLBENCH = """
import importlib, json, os, sys, warnings
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception:
        pass
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
before = (dict(os.environ), [str(f) for f in warnings.filters], len(ConfigStore.instance().repo))
IMPORT_ALL
after = (dict(os.environ), [str(f) for f in warnings.filters], len(ConfigStore.instance().repo))
resolvers = [r for r in ("tlbench.dirname", "tlbench.gpu_count") if OmegaConf.has_resolver(r)]
print(json.dumps({"environ": before[0] == after[0], "warnings": before[1] == after[1],
                  "config_store": before[2] == after[2], "resolvers": resolvers}))
""".replace("IMPORT_ALL", IMPORT_ALL)


def run_python(code: str, *args: str) -> str:
    command = [sys.executable, "-c", code, *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]


def test_serving_a_checkpoint_imports_neither_the_data_pipelines_nor_hydra():
    heavy = ("hydra", "omegaconf", "tlbench.data.pipelines", "tlbench.data.datamodule", "tlbench.data.decode")
    code = (
        "import sys, tlbench.predict, tlbench.export\n"
        f"print(sorted(m for m in sys.modules if m.startswith({heavy!r})))"
    )
    assert run_python(code) == "[]"


@pytest.mark.slow  # kept out of make test's time budget (make test-slow, CI)
def test_importing_a_module_registers_nothing_and_sets_no_environment_or_warning_filter():
    third_party = run_python(
        IMPORT_ALL
        + "import json, sys\nprint(json.dumps([m for m in sys.modules if not m.startswith('tlbench')]))"
    )
    state = json.loads(run_python(STATE_AROUND_TLBENCH, third_party))
    assert state == {"environ": True, "warnings": True, "config_store": True, "resolvers": []}
