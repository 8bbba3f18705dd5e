"""What a sweep needs beyond one run: stable run-folder names, one GPU per parallel job, failures kept in
their run folder, the report when the sweep ends or a signal stops it, and plain words for a missing plugin.
`register_with_hydra` (before `@hydra.main` composes) adds the missing-plugin hints and two resolvers:

    ${tlbench.dirname:${hydra.job.override_dirname}}   a run folder named from its overrides
    ${tlbench.gpu_count:}                              GPUs on this machine (at least 1): joblib's n_jobs
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from tlbench.results.files import ERROR_FILE, INTERRUPTED_FILE, RESULTS_FILE, write_atomic
from tlbench.run import jobdirs
from tlbench.run.folder import RUN_CONFIG_FILE, exit_status, try_lock
from tlbench.run.stopping import StopSweepOnSignal, is_sweep_process, stop_requested

__all__ = ["StopSweepOnSignal", "is_sweep_process", "stop_requested"]  # the sweep's API, defined in stopping

if TYPE_CHECKING:
    from tlbench.analysis import report

log = logging.getLogger("tlbench")

# Folder names longer than this are shortened with a hash (file systems stop at 255 bytes).
MAX_DIRNAME = 200
GPU_LOCK_DIR = Path(tempfile.gettempdir()) / f"tlbench-gpu-locks-{os.getuid()}"
# A missing optional plugin is stood in for by a config whose _target_ names what to install.
NOT_INSTALLED = "hydra_plugins.NOT_INSTALLED__"
# (config group, option, plugin module, pip extra of tlbench that installs it)
PLUGINS = (
    ("hydra/launcher", "joblib", "hydra_plugins.hydra_joblib_launcher", "sweep"),
    ("hydra/launcher", "submitit_local", "hydra_plugins.hydra_submitit_launcher", "sweep"),
    ("hydra/launcher", "submitit_slurm", "hydra_plugins.hydra_submitit_launcher", "sweep"),
    ("hydra/sweeper", "optuna", "hydra_plugins.hydra_optuna_sweeper", "optuna"),
)

# For the life of the process: CUDA cannot move GPUs once started, and joblib reuses its workers.
_pinned_gpu: str | None = None
_gpu_lock: IO | None = None


def job_dirname(override_dirname: str) -> str:
    """A run folder's name from its overrides, one path component; a long one is cut and hashed (distinct)."""
    name = override_dirname.replace(os.sep, "_") or "defaults"
    if len(name.encode()) <= MAX_DIRNAME:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:12]
    return name.encode()[: MAX_DIRNAME - 13].decode(errors="ignore") + "-" + digest


def gpu_count() -> int:
    """GPUs this process may use, counted without starting CUDA (NVML), so a job can still be pinned."""
    import torch

    return torch.cuda.device_count()


def record_failure(run_dir: str | Path, error: BaseException) -> Path | None:
    """Keep the traceback in the run folder as error.txt, where the report and the next person find it;
    None (and one warning) when the folder cannot take it — a full disk must not bury the error itself."""
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    try:
        return write_atomic(Path(run_dir) / ERROR_FILE, text)
    except OSError as failed:
        log.warning("could not write %s (%s)", Path(run_dir) / ERROR_FILE, failed.strerror or failed)
        return None


def clear_failure(run_dir: str | Path) -> None:
    """Forget how an earlier attempt ended, so a retry killed midway shows as missing, not the old outcome."""
    for name in (ERROR_FILE, INTERRUPTED_FILE):
        (Path(run_dir) / name).unlink(missing_ok=True)


def gpu_candidates(job_num: int, n_gpus: int) -> list[int]:
    """The order in which a job tries the GPUs: its own (job number modulo the count) first, then the next."""
    first = job_num % n_gpus
    return [(first + i) % n_gpus for i in range(n_gpus)]


def claim_gpu(job_num: int, devices: list[str], lock_dir: Path = GPU_LOCK_DIR) -> tuple[str, IO | None]:
    """The first GPU whose lock no live process holds; when all are taken, the job's own one (shared)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    order = [devices[i] for i in gpu_candidates(job_num, len(devices))]
    for device in order:
        handle = try_lock(lock_dir / f"gpu-{device}.lock")
        if handle is not None:
            return device, handle
    log.warning(
        "every GPU (%s) is taken by another job; job %d shares GPU %s", ",".join(devices), job_num, order[0]
    )
    return order[0], None


def should_pin(hydra_cfg: DictConfig) -> bool:
    """Only jobs side by side on one machine (the joblib launcher) need a GPU each; SLURM assigns its own."""
    target = str(OmegaConf.select(hydra_cfg, "launcher._target_", default=""))
    return hydra_cfg.mode == RunMode.MULTIRUN and target.endswith("JoblibLauncher")


def pin_job_to_gpu(hydra_cfg: DictConfig, lock_dir: Path = GPU_LOCK_DIR) -> str | None:
    """Give this job's process one GPU (CUDA_VISIBLE_DEVICES) for good, before anything touches CUDA."""
    global _pinned_gpu, _gpu_lock
    if _pinned_gpu is not None or not should_pin(hydra_cfg):
        return _pinned_gpu
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = (
        [str(i) for i in range(gpu_count())] if visible is None else [d for d in visible.split(",") if d]
    )
    if len(devices) < 2:
        return None
    torch = sys.modules.get("torch")  # not imported yet: CUDA cannot have started
    if torch is not None and torch.cuda.is_initialized():
        log.warning("CUDA started before pin_job_to_gpu(); this job stays on the GPUs it already sees")
        return None
    _pinned_gpu, _gpu_lock = claim_gpu(int(hydra_cfg.job.num), devices, lock_dir)
    os.environ["CUDA_VISIBLE_DEVICES"] = _pinned_gpu
    log.info("job %s runs on GPU %s", hydra_cfg.job.num, _pinned_gpu)
    return _pinned_gpu


def uses_several_devices(devices: Any) -> bool:
    """Lightning's `devices`: 1, 4, -1 or "auto" (all), "0,1" or [0, 1] (these ones)."""
    if isinstance(devices, list | tuple):
        return len(devices) > 1
    text = str(devices).strip()
    if text.lstrip("-").isdigit():
        return int(text) == -1 or int(text) > 1
    return text == "auto" or "," in text


def ddp_problem(
    strategy: Any, devices: Any, multirun: bool, environ: Mapping[str, str] | None = None
) -> str | None:
    """Why this trainer setting cannot work, or None: Lightning's `ddp` starts the other ranks by running the
    command line again, which in a multirun is the whole sweep (not so for ddp_spawn, torchrun, srun)."""
    environ = os.environ if environ is None else environ
    relaunches = str(strategy).startswith("ddp") and "spawn" not in str(strategy)
    external = "LOCAL_RANK" in environ or "SLURM_NTASKS" in environ
    if not (multirun and relaunches and uses_several_devices(devices) and not external):
        return None
    return (
        f"trainer.strategy={strategy} on several devices re-runs the command line for each extra rank, "
        "which inside a Hydra multirun would start the whole sweep again. In a sweep use "
        "trainer.strategy=ddp_spawn, or start each job with torchrun, or on SLURM with "
        "hydra/launcher=slurm and hydra.launcher.tasks_per_node equal to trainer.devices. "
        "A single run (no -m) can use ddp. See docs/SWEEPS.md."
    )


class ReportOnMultirunEnd(Callback):
    """Hydra callback: after a multirun, write the sweep's report and exit 1 if a job failed, was interrupted
    or left no results (Hydra turns a callback's exception into a warning; SystemExit gets through)."""

    def __init__(self, fail_on_errors: bool = True) -> None:
        self.fail_on_errors = fail_on_errors

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if os.environ.get("RANK", "0") != "0":  # under torchrun every rank runs the sweep; one reports
            return
        stopped = stop_requested()
        if stopped is not None:  # the jobs in other processes have stopped and returned
            report_stopped_sweep(config.hydra)
            raise SystemExit(exit_status(stopped))
        found = write_sweep_report(Path(config.hydra.sweep.dir))
        if found.running:
            log.warning(
                "%d jobs are being run by another process (listed as running in summary.md); that process "
                "finishes them, and running this command again afterwards skips them.",
                len(found.running),
            )
        problems = len(found.interrupted) + len(found.failed) + len(found.missing)
        if problems and self.fail_on_errors:
            log.error(
                "%d interrupted, %d failed and %d missing of %d jobs in %s (listed in summary.md there). Run "
                "the same command again to retry only those: finished jobs are skipped.",
                len(found.interrupted),
                len(found.failed),
                len(found.missing),
                len(found.runs) + len(found.unfinished),
                found.root,
            )
            raise SystemExit(1)


def write_sweep_report(sweep_dir: Path, not_started: Sequence[Path] = ()) -> report.Found:
    """Write and print a sweep folder's report; returns report.find_runs's, `not_started` folders missing."""
    from tlbench.analysis import report

    found = report.find_runs(sweep_dir)
    seen = {r.path for r in found.runs} | {p.path for p in found.unfinished}
    why = "not started: the sweep was stopped by a signal"
    found.missing += [report.Problem(path, "missing", why) for path in not_started if path not in seen]
    for problem in found.missing:  # a job taken up after the signal: Hydra made its folder, it ran nothing
        if problem.path in not_started and not (problem.path / RUN_CONFIG_FILE).exists():
            problem.detail = why
    if not found.has_outcomes:
        log.warning("no results.json, error.txt or interrupted.txt under %s: nothing to report", sweep_dir)
        return found
    analysis = report.analyse(found.runs)
    summary_md = report.write_report(found, sweep_dir, analysis)
    print(report.render_table(analysis.groups))
    print("\n" + report.verdict_text(analysis, found))
    print(f"\n{report.count_line(found)}\nreport: {summary_md}")
    return found


def round_interrupted(job_dirs: Sequence[Path]) -> bool:
    """Whether a signal stopped a job of this round (its interrupted.txt, newer than any results.json): the
    tlbench sweeper (rounds.py) starts no further round after one, nor after a signal to this process."""
    if stop_requested() is not None:
        return True
    for job_dir in map(Path, job_dirs):
        stopped, done = job_dir / INTERRUPTED_FILE, job_dir / RESULTS_FILE
        if stopped.exists() and (not done.exists() or stopped.stat().st_mtime >= done.stat().st_mtime):
            return True
    return False


def planned_job_dirs(hydra_cfg: DictConfig) -> list[Path]:
    """The job folders of the round being run: planned_jobs.json of the tlbench sweeper, else those of a
    basic sweep from multirun.yaml as BasicSweeper names them (else empty: Optuna)."""
    if not str(hydra_cfg.sweeper._target_).endswith("BasicSweeper"):
        return jobdirs.read_plan(Path(hydra_cfg.sweep.dir)) or []
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweep_dir = Path(hydra_cfg.sweep.dir)
    saved_path = sweep_dir / "multirun.yaml"
    if not saved_path.exists():
        return []
    saved = OmegaConf.to_container(OmegaConf.load(saved_path).hydra, resolve=False)
    if "tlbench.dirname" not in str(saved["sweep"]["subdir"]):
        return []
    params = saved["sweeper"].get("params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()] + list(saved["overrides"]["task"])
    parser = OverridesParser.create()
    naming = hydra_cfg.job.config.override_dirname
    folders = []
    for batch in BasicSweeper.split_arguments(parser.parse_overrides(arguments), None):
        for job in batch:
            name = get_overrides_dirname(
                parser.parse_overrides(job), list(naming.exclude_keys), naming.item_sep, naming.kv_sep
            )
            folders.append(sweep_dir / job_dirname(name))
    return folders


def report_stopped_sweep(hydra_cfg: DictConfig) -> None:
    """A signal stops the whole sweep: write its report now (on_multirun_end will not run)."""
    if os.environ.get("RANK", "0") != "0":
        return
    found = write_sweep_report(Path(hydra_cfg.sweep.dir), planned_job_dirs(hydra_cfg))
    log.error(
        "the sweep was stopped by a signal (%d jobs interrupted, %d not finished, %d complete); run the same "
        "command again to continue it: finished jobs are skipped and interrupted ones resume from their "
        "last.ckpt",
        len(found.interrupted),
        len(found.unfinished) - len(found.interrupted),
        len(found.runs),
    )


class ExplainMissingPlugin(Callback):
    """Hydra callback: before a multirun, name the package to install for a missing launcher or sweeper."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        for kind in ("launcher", "sweeper"):
            target = str(OmegaConf.select(config, f"hydra.{kind}._target_", default=""))
            if target.startswith(NOT_INSTALLED):
                module, extra = target.removeprefix(NOT_INSTALLED).split("__pip_install_tlbench")
                choice = f"hydra/{kind}={config.hydra.runtime.choices.get(f'hydra/{kind}')}"
                pip = f"pip install 'tlbench{extra}' (or pip install {module.replace('_', '-')})"
                log.error("%s needs the Hydra plugin %s, which is not installed: %s", choice, module, pip)
                raise SystemExit(1)


def is_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # not even the hydra_plugins namespace is there
        return False


def missing_plugins() -> Iterator[tuple[str, str, str, str]]:
    for group, option, module, extra in PLUGINS:
        if not is_installed(module):
            yield group, option, module, extra


def register_with_hydra() -> None:
    """Resolvers used in conf/, and a stand-in naming the package to install for each missing plugin."""
    if not OmegaConf.has_resolver("tlbench.dirname"):
        OmegaConf.register_new_resolver("tlbench.dirname", job_dirname)
    if not OmegaConf.has_resolver("tlbench.gpu_count"):
        OmegaConf.register_new_resolver("tlbench.gpu_count", lambda: max(1, gpu_count()))
    # Hydra finds plugins by listing the hydra_plugins folders, which an editable install (pip install -e)
    # hides behind its import hook: register tlbench's sweeper (and its config) by name as well.
    from hydra.core.plugins import Plugins

    plugin = importlib.import_module("hydra_plugins.tlbench_sweeper.tlbench_sweeper")
    Plugins.instance().register(plugin.TlbenchSweeper)
    for group, option, module, extra in missing_plugins():
        hint = f"{NOT_INSTALLED}{module.split('.')[-1]}__pip_install_tlbench[{extra}]"
        ConfigStore.instance().store(group=group, name=option, node={"_target_": hint}, provider="tlbench")
