"""The Hydra entry point: compose the config → data → backbone + strategy (module) → trainer → fit →
test on the best checkpoint → results.json.

    python -m tlbench.train strategy=partial backbone=resnet152
    python -m tlbench.train -m strategy=freeze,partial,full backbone=resnet18,resnet50 seed=0,1,2
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from tlbench.config.schema import RunConfig
from tlbench.data.datamodule import ImageDataModule
from tlbench.data.sources import class_counts
from tlbench.models.backbones import get_preset
from tlbench.models.module import TransferModule
from tlbench.models.stages import describe_trainable
from tlbench.models.steps import resolve_cuda_graph
from tlbench.results.files import (
    RESULTS_FILE,
    read_results,
    versions,
    write_json_atomic,
)
from tlbench.results.predictions import write_predictions
from tlbench.run import checkpoints, folder, sweep, tune
from tlbench.run.budget import apply_budget
from tlbench.run.checks import check_against_data, check_config, expand_tilde_overrides, warn_frozen_random
from tlbench.run.cost import RunCost, device_name, peak_memory
from tlbench.run.figures import RunFigureRecorder, write_run_figures
from tlbench.run.logs import api_logging, quiet_expected_noise
from tlbench.run.runtime import keep_freed_memory
from tlbench.run.trainer import LOG_FOLDERS, build_trainer, log_hparams, trainer_options

log = logging.getLogger("tlbench")


def build_datamodule(run: RunConfig, run_dir: Path) -> ImageDataModule:
    preset = get_preset(run.backbone.name, run.backbone.weights, run.data.in_chans)
    return ImageDataModule(run.data, preset, seed=run.seed, run_dir=str(run_dir))


def saved_values(group: Any) -> dict[str, Any]:
    """A typed config group as plain values, lists not tuples: what a checkpoint saves reloads anywhere."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(group).items()}


def build_module(run: RunConfig, datamodule: ImageDataModule) -> TransferModule:
    return TransferModule(
        backbone=saved_values(run.backbone),
        num_classes=datamodule.num_classes,
        in_chans=run.data.in_chans,
        strategy=saved_values(run.strategy),
        optim=saved_values(run.optim),
        class_names=datamodule.classes,
        positive_class=run.data.positive_class,
        preset=dataclasses.asdict(datamodule.preset),
        class_weights=datamodule.class_weights(),
        threshold_rule=run.data.threshold,
    )


def describe(cfg: DictConfig) -> dict[str, Any]:
    """The handful of values a comparison groups by (report tables, TensorBoard HParams)."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    return {
        "data": cfg.data.source if cfg.data.source != "imagefolder" else Path(str(cfg.data.root)).name,
        "backbone": cfg.backbone.name,
        "backbone_config": choices.get("backbone"),
        "strategy": cfg.strategy.name,
        "seed": cfg.seed,
        # Under k-fold, runs that differ only in seed and fold are replicates of one setting (report.py).
        "fold": cfg.data.fold if cfg.data.folds is not None else None,
        "folds": cfg.data.folds,
        "per_class": cfg.data.per_class,
        "in_chans": cfg.data.in_chans,
        "image_size": cfg.data.image_size,
        "epochs": cfg.trainer.max_epochs,
        "head_lr": cfg.strategy.head_lr,
        "backbone_lr": cfg.strategy.backbone_lr,
    }


@quiet_expected_noise()
def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """One run from config to results.json; returns the results (empty on DDP ranks other than 0)."""
    started = time.perf_counter()
    run = check_config(cfg)
    keep_freed_memory()
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(run, run_dir)
    datamodule.setup()
    check_against_data(run, datamodule.num_classes)  # positive_class, monitor: once the classes are known
    sizes, pipeline = datamodule.split_sizes(), datamodule.pipeline.name
    log.info("data: %d classes %s; images %s", datamodule.num_classes, datamodule.classes[:10], sizes)

    cfg = apply_budget(cfg, run.trainer, sizes["train"], run.data.batch_size)  # trainer.budget_steps
    module = build_module(run, datamodule)
    counts = module.parameter_counts()
    names = f"{cfg.backbone.name} / {cfg.strategy.name}"
    trainable, total = f"{counts['trainable_params']:,}", f"{counts['total_params']:,}"
    stages = describe_trainable(module.trainable_stages, module.extra_trainable)
    log.info("%s: %s of %s parameters train (stages: %s)", names, trainable, total, stages)
    random_frozen = warn_frozen_random(run, module.strategy, module.stages)

    if module.caches_features:
        datamodule.use_features(module.embed)
    cost = RunCost()
    # last.ckpt, else best.ckpt; an unreadable one is set aside (named in the log), never resumed in a loop.
    resume_from = None if cfg.trainer.fast_dev_run else checkpoints.resume_checkpoint(run_dir)
    trainer, checkpoint = build_trainer(cfg, run_dir, cost, resume_from)
    figures = RunFigureRecorder()
    trainer.callbacks.append(figures)
    resume = str(resume_from) if resume_from else None
    resolved = {
        "pipeline": pipeline,
        "precision": str(trainer.precision),
        "cuda_graph": resolve_cuda_graph(cfg.optim.cuda_graph, trainer) and not module.caches_features,
    }
    if trainer.is_global_zero:
        folder.keep_resolved(run_dir, resolved, resuming=resume is not None)
    if resume:
        log.info("resuming from %s", resume)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    last_val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    # Read before testing: trainer.test(ckpt_path=best) reloads callback states as of the best epoch.
    stopping = trainer.early_stopping_callback
    trained = {
        "epochs_trained": trainer.current_epoch,
        "optimizer_steps": trainer.global_step,
        "stopped_early": bool(stopping and stopping.stopped_epoch),
    }

    # In this run folder wherever it was before (RunCheckpoint); set aside and replaced when unreadable.
    best = checkpoints.checkpoint_to_test(checkpoint.best_model_path or None, run_dir)
    tested = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)
    if trainer.is_global_zero and module.test_predictions is not None:
        # Per-image probabilities beside results.json, for the report's paired bootstrap and calibration.
        write_predictions(
            run_dir, datamodule.data.splits["test"].items, *module.test_predictions, datamodule.classes
        )
    metrics = {k: float(v) for k, v in (tested[0] if tested else {}).items()}
    metrics.update(last_val)
    params = describe(cfg)
    results = {
        "status": "complete",
        "run_dir": str(run_dir),
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [],
        "params": params,
        "metrics": metrics,
        "per_class_acc": module.test_per_class_result,
        "classes": datamodule.classes,
        "split_sizes": sizes,
        # What was trained on per class: data.per_class is what was asked (params), a class may have fewer.
        "train_per_class": class_counts(datamodule.data.splits["train"], datamodule.classes),
        "test_split": datamodule.data.test_split,
        "eval_subsets": datamodule.eval_subsets,  # data.val_per_class / test_per_class as used
        # Two classes: the best checkpoint's threshold (the run's one value), used by test/*@thr, the
        # figures and predict; `decision` says which class it picks and where the threshold was chosen.
        "threshold": module.threshold,
        "decision": module.binary_decision.text if module.binary_decision else None,
        "wall_time_s": time.perf_counter() - started,
        "train_images_per_s": cost.images_per_second,
        "pipeline": datamodule.pipeline.name,
        "feature_cache": module.caches_features,
        "cuda_graph": bool(module.graphed and module.graphed.captures),
        "cuda_graph_error": module.graphed.error if module.graphed else None,
        **peak_memory(trainer.strategy.root_device),
        **module.parameter_counts(),
        "trainable_stages": module.trainable_stages,
        "frozen_random_stages": random_frozen,  # frozen at the start with no pretrained weights: see the log
        "trained_input_conv": [prefix.removeprefix("trunk.") for prefix in module.extra_trainable],
        "bad_images": sorted(datamodule.bad_images),
        **trained,
        # Relative to the run folder, whichever way either path is spelled (ModelCheckpoint's is resolved).
        "best_checkpoint": checkpoints.inside(best, run_dir) if best else None,
        "best_val": float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None,
        "precision": str(trainer.precision),
        "device": device_name(trainer.strategy.root_device),
        "versions": versions(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    if not trainer.is_global_zero:  # under DDP, one rank writes the results
        return {}
    log_hparams(
        trainer, params, {k: v for k, v in metrics.items() if k.startswith("test/") and "class" not in k}
    )
    drawn = figures.figure_inputs()
    if drawn["train_images"] is None:  # trained on cached features: no image batch went through the network
        drawn["train_images"], drawn["train_labels"] = datamodule.preview_batch()
    write_run_figures(
        run_dir, trainer.logger, **drawn, class_names=module.class_names,
        mean=module.preset.mean, std=module.preset.std, step=trainer.global_step,
        decision=module.binary_decision,
    )  # fmt: skip
    write_json_atomic(run_dir / RESULTS_FILE, results)
    return results


@quiet_expected_noise()
def find_lr(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """tune.lr_find=true: the LR range test on this run's data, module and trainer settings (tune.py)."""
    run = check_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(run, run_dir)
    datamodule.setup()
    module = build_module(run, datamodule)
    if module.caches_features:
        datamodule.use_features(module.embed)
    options = trainer_options(cfg)
    return tune.find_learning_rate(
        module, datamodule, options, saved_values(run.strategy), saved_values(run.tune), run_dir
    )


def summary_line(results: dict) -> str:
    m = results["metrics"]
    parts = [
        f"test acc {m.get('test/acc', float('nan')):.4f}",
        f"macro-F1 {m.get('test/f1_macro', float('nan')):.4f}",
    ]
    if "test/auroc" in m:
        parts.append(f"AUROC {m['test/auroc']:.4f}")
    speed = results.get("train_images_per_s")
    parts.append(f"{results['wall_time_s']:.0f} s" + (f", {speed:.0f} train img/s" if speed else ""))
    return " | ".join(parts) + f"\nrun folder: {results['run_dir']}"


# Errors whose message already tells the user what to do: printed without a traceback.
def is_user_error(error: BaseException) -> bool:
    known = (ValueError, FileNotFoundError, ImportError, checkpoints.CheckpointWriteError)
    return isinstance(error, known) or type(error).__name__.endswith("UnavailableError")


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The config `python -m tlbench.train <overrides>` would run, for notebooks and tests."""
    GlobalHydra.instance().clear()
    sweep.register_with_hydra()
    with initialize_config_module(config_module="tlbench.conf", version_base="1.3"):
        cfg = compose("train", overrides=list(overrides or []), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as @hydra.main hands it to the task
    return cfg


def run(overrides: list[str] | None = None, run_dir: str | Path | None = None) -> dict[str, Any]:
    """One run from Python (a notebook): `run(["experiment=hymenoptera", "strategy=partial"])`."""
    cfg = compose_config(overrides)
    if run_dir is None:
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        run_dir = Path("outputs/runs") / f"{stamp}_{cfg.backbone.name.replace('/', '_')}_{cfg.strategy.name}"
    with api_logging(Path(run_dir)):  # the CLI's lines (Hydra configures its logging, Python does not)
        return train(cfg, Path(run_dir))


def preflight(cfg: DictConfig, run_dir: Path) -> None:
    """Cheap checks of what would fail late (after training, or force=true's move): config, folders."""
    check_config(cfg)
    for path in (run_dir, run_dir / folder.CHECKPOINT_DIR, run_dir / LOG_FOLDERS.get(cfg.logger.name, "")):
        folder.check_writable(path)


def excluded_keys() -> list[str]:
    """Settings that do not change a result (train.yaml's override_dirname.exclude_keys)."""
    if HydraConfig.initialized():
        return list(HydraConfig.get().job.config.override_dirname.exclude_keys)
    return list(folder.EXECUTION_ONLY_KEYS)


def prepare_folder(cfg: DictConfig, run_dir: Path) -> dict | None:
    """Make the run folder ready (after every check), or return the finished results to skip it with."""
    config = OmegaConf.to_container(cfg, resolve=True)
    old = folder.saved_config(run_dir)
    if not cfg.force and old is not None and folder.has_run_outputs(run_dir):
        folder.refuse_changed_settings(run_dir, old, config, excluded_keys())
    done = None if cfg.force else read_results(run_dir)
    if done is not None:
        return done
    preflight(cfg, run_dir)
    if cfg.force:
        moved = folder.move_aside(run_dir)
        if moved:
            log.info("force=true: the previous outputs of %s are now in %s", run_dir, moved)
    folder.save_config(run_dir, config)
    return None


def record_signal(run_dir: Path, signum: int) -> folder.RunInterrupted:
    """Leave interrupted.txt saying where the run stopped; returns the exception that ends the process."""
    record = folder.record_interrupted(run_dir, signum)
    log.warning("%s: %s", run_dir, record.read_text().strip())
    return folder.RunInterrupted(signum)


def main() -> float | None:
    """`python -m tlbench.train` (and the `tlbench-train` script): Hydra parses the command line."""
    sweep.register_with_hydra()
    sys.argv[1:] = expand_tilde_overrides(sys.argv[1:])  # data.root=~/data: Hydra's grammar rejects ~
    return hydra_main()


@hydra.main(version_base="1.3", config_path="pkg://tlbench.conf", config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    """Returns the best validation score: what a sweeper (Optuna) may optimise — never a test metric."""
    hydra_cfg = HydraConfig.get()
    sweep.pin_job_to_gpu(hydra_cfg)  # before anything starts CUDA
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    worker = multirun and not sweep.is_sweep_process()
    if worker:
        # A launcher's worker (joblib, submitit) between jobs leaves signals to the process that launched the
        # sweep, which stops the running jobs and ends its workers (stopping.py); dying here would break it.
        for signum in folder.SignalGuard.HANDLED:
            signal.signal(signum, signal.SIG_IGN)
    claim = folder.claimed(run_dir) if folder.is_first_process() else contextlib.nullcontext()
    try:
        # The guard before the claim: the sweep signals the jobs that hold a claim, from the first moment.
        with folder.SignalGuard() as guard, claim:
            if multirun and sweep.stop_requested(hydra_cfg.sweep.dir) is not None:
                log.warning("not started: the sweep was stopped by a signal (%s)", run_dir)
                return None
            return run_job(cfg, hydra_cfg, run_dir, guard)
    except folder.RunClaimed as taken:
        if multirun:
            log.warning("skipping: %s", taken)
            return None
        print(f"\nerror: {taken}", file=sys.stderr)
        sys.exit(1)
    except folder.RunInterrupted as stopped:
        if worker:  # the launching process waits for every job, then reports the sweep
            return None
        # A sweep stops too, reporting now (no on_multirun_end), after the claim is released (not "running").
        if multirun:
            sweep.report_stopped_sweep(hydra_cfg)
        sys.exit(folder.exit_status(stopped.signum))


def run_job(cfg: DictConfig, hydra_cfg: DictConfig, run_dir: Path, guard: folder.SignalGuard) -> float | None:
    """One run in a folder this process holds: skip it when done, else check, prepare, train, record."""
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        if cfg.tune.lr_find:  # preflight (check_config) refuses anything but true or false
            # The LR range test trains nothing and writes no results.json: it never skips a folder.
            preflight(cfg, run_dir)
            print("\n" + tune.summary_line(find_lr(cfg, run_dir), run_dir))
            return None
        done = prepare_folder(cfg, run_dir) if folder.is_first_process() else None
        if done is not None:
            log.info(
                "skipping: %s already holds a complete %s (force=true re-runs it)", run_dir, RESULTS_FILE
            )
            return done.get("best_val")
        sweep.clear_failure(run_dir)
        problem = sweep.ddp_problem(cfg.trainer.strategy, cfg.trainer.devices, multirun)
        if problem:
            raise ValueError(problem)
        results = train(cfg, run_dir)
    except BaseException as error:  # noqa: BLE001 - every failure is recorded; a sweep goes on
        if guard.received is not None:  # RunInterrupted, or Lightning's SIGTERMException
            raise record_signal(run_dir, guard.received) from None
        if not isinstance(error, Exception):
            raise
        recorded = sweep.record_failure(run_dir, error)  # None when it cannot be written (disk full)
        where = f"traceback in {recorded}" if recorded else "no traceback file"
        if multirun:
            log.error("run failed (%s: %s); %s", type(error).__name__, error, where)
            return None
        if is_user_error(error):
            removed = folder.discard_unprepared(
                run_dir, hydra_cfg.job.name
            )  # a refused command leaves no folder behind
            print(f"\nerror: {error}" + ("" if removed else f"\n({where})"), file=sys.stderr)
            sys.exit(1)
        raise
    if results:
        print("\n" + summary_line(results))
    if guard.received is not None:  # the signal came as the run was finishing: it finished; still stop
        raise folder.RunInterrupted(guard.received)
    return results.get("best_val") if results else None
