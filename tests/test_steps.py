"""optim.cuda_graph: when training steps replay as CUDA graphs, and that a replayed step is the eager one."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import make_image_folder, small
from tlbench.models.module import TransferModule
from tlbench.models.steps import GraphedForwardBackward, resolve_cuda_graph
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


def test_a_bad_value_is_named():
    with pytest.raises(ValueError, match="optim.cuda_graph must be auto, true or false"):
        resolve_cuda_graph("yes", fake_trainer())


def test_cuda_graph_true_on_a_cpu_run_stops_with_the_reason(tmp_path):
    root = make_image_folder(tmp_path / "images", per_split={"train": 4, "val": 2})
    cfg = compose_config([*small(root), "trainer=cpu", "logger=none", "optim.cuda_graph=true"])
    with pytest.raises(ValueError, match="optim.cuda_graph=true cannot apply: it needs a CUDA device"):
        train(cfg, tmp_path / "run")


def tiny_module(strategy: str = "full") -> TransferModule:
    torch.manual_seed(0)
    return TransferModule(
        backbone={"name": "resnet18", "weights": None}, num_classes=3, strategy={"name": strategy}
    )


def gradients(module: TransferModule, forward, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    module.zero_grad(set_to_none=True)
    F.cross_entropy(forward(x), y).backward()
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("strategy", ["full", "freeze"])
def test_a_replayed_step_gives_the_eager_step_gradients(strategy):
    """BatchNorm in eval mode for the comparison: the capture's warm-up passes would otherwise move the
    running statistics between the two forwards."""
    module = tiny_module(strategy).cuda()
    module.eval()
    graphed = GraphedForwardBackward(module)
    x, y = torch.randn(8, 3, 32, 32, device="cuda"), torch.randint(0, 3, (8,), device="cuda")
    eager = gradients(module, module, x, y)
    graphed(x)  # capture
    for _ in range(2):  # replays, on new data in the same buffers' shape
        x2 = torch.randn_like(x)
        replayed, expected = gradients(module, graphed, x2, y), gradients(module, module, x2, y)
        assert replayed.keys() == expected.keys() == eager.keys()
        for name in expected:
            torch.testing.assert_close(replayed[name], expected[name], rtol=1e-4, atol=1e-5)
    assert graphed.graphed is not None and not graphed.failed
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
