"""optim.cuda_graph: when training steps replay as CUDA graphs, and that a replayed step is the eager one."""

from __future__ import annotations

import weakref
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import make_image_folder, small
from tlbench.analysis import report
from tlbench.models import module as module_py
from tlbench.models.module import TransferModule
from tlbench.models.steps import GraphedForwardBackward, resolve_cuda_graph
from tlbench.models.strategies import with_conf_defaults
from tlbench.run.train import compose_config, train


def fake_trainer(device="cpu", world_size=1, precision="32-true", accumulate=1):
    return SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device(device)),
        world_size=world_size,
        precision=precision,
        accumulate_grad_batches=accumulate,
    )


def test_auto_is_off_on_the_cpu_and_on_for_one_cuda_device():
    assert resolve_cuda_graph("auto", fake_trainer()) is False
    assert resolve_cuda_graph("auto", fake_trainer("cuda", precision="bf16-mixed")) is True
    assert resolve_cuda_graph(False, fake_trainer("cuda")) is False
    assert resolve_cuda_graph("auto", fake_trainer("cuda", world_size=2)) is False
    assert resolve_cuda_graph("auto", fake_trainer("cuda", precision="16-mixed")) is False


@pytest.mark.parametrize(
    "trainer, reason",
    [
        (fake_trainer(), "needs a CUDA device"),
        (fake_trainer("cuda", world_size=2), "trainer.devices=1"),
        (fake_trainer("cuda", precision="16-mixed"), "bf16-mixed"),
        (fake_trainer("cuda", accumulate=4), "accumulate_grad_batches=1"),
    ],
)
def test_true_where_it_cannot_work_says_why(trainer, reason):
    with pytest.raises(ValueError, match=reason):
        resolve_cuda_graph(True, trainer)


def test_training_steps_are_eager_unless_asked_for():
    """Eager until a GPU run (make gpu-check) shows a replayed step equal to the eager one, and faster."""
    assert compose_config([]).optim.cuda_graph is False
    assert compose_config(["optim=sgd"]).optim.cuda_graph is False
    assert with_conf_defaults("optim", {"name": "adamw"})["cuda_graph"] is False  # a module built from Python


def test_cuda_graph_true_on_a_cpu_run_stops_with_the_reason(tmp_path):
    root = make_image_folder(tmp_path / "images", per_split={"train": 4, "val": 2})
    cfg = compose_config([*small(root), "trainer=cpu", "logger=none", "optim.cuda_graph=true"])
    with pytest.raises(ValueError, match="optim.cuda_graph=true cannot apply: it needs a CUDA device"):
        train(cfg, tmp_path / "run")


def test_a_failed_capture_trains_eagerly_and_is_in_results_json_and_the_report(tmp_path, monkeypatch):
    """A capture failure is a result, not one log line a sweep buries: results.json and the report say it."""

    def cannot_capture(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(module_py, "resolve_cuda_graph", lambda choice, trainer: True)  # as on one GPU
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", cannot_capture)
    root = make_image_folder(tmp_path / "images", per_split={"train": 8, "val": 2})
    cfg = compose_config([*small(root), "trainer=cpu", "logger=none", "trainer.max_epochs=1"])
    results = train(cfg, tmp_path / "sweep" / "run")

    assert results["status"] == "complete" and results["cuda_graph"] is False
    assert results["cuda_graph_error"] == "RuntimeError: operation not permitted when stream is capturing"
    summary = report.write_report(report.find_runs(tmp_path / "sweep"), tmp_path / "report")
    assert "## CUDA graph capture failed, trained eagerly (1)" in summary.read_text()
    assert "- `run`: RuntimeError: operation not permitted" in summary.read_text()
    assert "operation not permitted" in (tmp_path / "report" / "results.csv").read_text()


def small_bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def warming_up(graphed: list):
    """A stand-in for make_graphed_callables on a CPU: its three warm-up passes in train mode (which move
    BatchNorm statistics), then the module, kept in a reference cycle as torch's graphed forward is."""

    def make(module, sample_args, **kwargs):
        with torch.no_grad():
            for _ in range(3):
                module(*sample_args)
        module.cycle = module  # make_graphed_callables' forward closes over its module
        graphed.append(weakref.ref(module))
        return module

    return make


def test_a_capture_leaves_batchnorm_statistics_as_one_step_moves_them(monkeypatch):
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", warming_up([]))
    net, eager = small_bn_net().train(), small_bn_net().train()
    x = torch.randn(8, 3, 8, 8)
    GraphedForwardBackward(net)(x)  # capture (three warm-up passes), then the step itself
    eager(x)  # the step alone
    bn, expected = net[1], eager[1]
    assert int(bn.num_batches_tracked) == int(expected.num_batches_tracked) == 1
    torch.testing.assert_close(bn.running_mean, expected.running_mean)
    torch.testing.assert_close(bn.running_var, expected.running_var)


def test_a_reset_frees_the_captured_graphs(monkeypatch):
    """Gradual and lpft reset the graphs when the trainable stages change: the old ones must go now, not
    whenever the garbage collector next runs, or each stage's graphs pile up on the GPU."""
    graphed: list = []
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", warming_up(graphed))
    steps = GraphedForwardBackward(small_bn_net())
    steps(torch.randn(4, 3, 8, 8))
    assert steps.captures == 1 and graphed[0]() is not None
    steps.reset()
    assert graphed[0]() is None, "the reset graphs are still alive"
    steps(torch.randn(4, 3, 8, 8))
    assert steps.captures == 2 and steps.error is None


def tiny_module(strategy: str = "full") -> TransferModule:
    torch.manual_seed(0)
    return TransferModule(
        backbone={"name": "resnet18", "weights": None}, num_classes=3, strategy={"name": strategy}
    )


def step(module: TransferModule, forward, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients and BatchNorm statistics after one training step's forward and backward from `state`."""
    module.zero_grad(set_to_none=True)
    F.cross_entropy(forward(x), y).backward()
    grads = {f"grad {n}": p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return grads | {f"buffer {n}": b.clone() for n, b in module.net.named_buffers()}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("strategy", ["full", "freeze"])
def test_a_replayed_step_gives_the_eager_step_gradients_and_statistics(strategy):
    """In train mode (trainable BatchNorm updates its statistics): the step that captures and each replay
    after it give the eager step's gradients and running statistics, from the same starting state."""
    module = tiny_module(strategy).cuda().train()
    graphed = GraphedForwardBackward(module.net)
    start = {k: v.clone() for k, v in module.state_dict().items()}
    for _ in range(3):  # the capture, then replays on new data in the same shape
        x, y = torch.randn(8, 3, 32, 32, device="cuda"), torch.randint(0, 3, (8,), device="cuda")
        module.load_state_dict(start)
        replayed = step(module, graphed, x, y)
        module.load_state_dict(start)
        expected = step(module, module.net, x, y)
        assert replayed.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(replayed[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
    assert graphed.captures == 1 and graphed.error is None
    odd = torch.randn(5, 3, 32, 32, device="cuda")
    assert graphed(odd).shape == (5, 3), "another batch shape runs eagerly"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_graphed_run_trains_like_an_eager_run(tmp_path):
    root = make_image_folder(tmp_path / "images", per_split={"train": 16, "val": 4})
    base = [*small(root), "logger=none", "trainer.precision=32-true", "trainer.max_epochs=2", "strategy=full"]
    graphed = train(compose_config([*base, "optim.cuda_graph=true"]), tmp_path / "graphed")
    eager = train(compose_config([*base, "optim.cuda_graph=false"]), tmp_path / "eager")
    assert graphed["cuda_graph"] is True and eager["cuda_graph"] is False
    assert graphed["metrics"]["val/loss"] == pytest.approx(eager["metrics"]["val/loss"], rel=0.05)
