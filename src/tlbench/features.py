"""strategy=freeze without running the frozen network every epoch.

A frozen trunk in eval mode is a fixed function, so training the head end to end recomputes the same
features each epoch. Embedding the training images once (or once per augmented view) and training the
head on the cached features gives the same head — `tests/test_features.py` checks that it does, weight for
weight — at the cost of a few small matrix products per epoch instead of a forward pass of the network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from tlbench.fastdata import InMemoryLoader


def autocast_for(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when asked; a no-op elsewhere (CPU bf16 is slower than fp32 there)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.inference_mode()
def extract_features(
    trunk: nn.Module,
    data: torch.Tensor | Iterable,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    amp: bool = True,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """trunk(x) for every image, in order, as a (N, feature_dim) float32 tensor on `device`.

    `data` is an image tensor (sliced into batches of `batch_size`) or an iterable of batches (x or (x, y)).
    `transform` maps each batch to the network's input (e.g. `EvalPreprocess`, or `GpuAugment` for one
    augmented view). The trunk runs in eval mode — frozen BatchNorm uses its running statistics — and is
    put back in the mode it was in.
    """
    device = torch.device(device) if device is not None else next(trunk.parameters()).device
    if isinstance(data, torch.Tensor):
        data = data.split(batch_size)
    was_training = trunk.training
    trunk.eval()
    chunks = []
    with autocast_for(device, amp):
        for batch in data:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = x.to(device, non_blocking=True)
            if transform is not None:
                x = transform(x)
            chunks.append(trunk(x).float())
    trunk.train(was_training)
    return torch.cat(chunks)


class GraphedStep:
    """Forward + backward + optimizer step of one batch shape, captured once as a CUDA graph and replayed.

    The optimizer must be made with capturable=True. At batch 64 an eager step (of a network, let alone of
    a linear head) spends longer launching kernels from Python than the GPU spends running them;
    a replay launches the whole step at once. The first `warmup` batches of that shape are ordinary eager
    steps (real training steps, which also let cuDNN and the optimizer state initialise); the capture then
    records the next one, and every later batch of that shape is copied into the static input and replayed.
    Other shapes (the epoch's last, smaller batch) stay eager.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: nn.Module,
        bf16: bool = False,
        warmup: int = 3,
    ):
        self.net, self.optimizer, self.loss_fn, self.warmup = net, optimizer, loss_fn, warmup
        self.bf16 = bf16
        self.seen: dict[tuple, int] = {}
        self.graphs: dict[tuple, tuple] = {}

    def eager(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # After a capture .grad holds the graph's gradient buffers: start from None, never add to them.
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.net(x)
            loss = self.loss_fn(logits, y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return logits, loss

    def capture(self, x: torch.Tensor, y: torch.Tensor) -> tuple:
        static_x, static_y = x.clone(), y.clone()
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
                logits = self.net(static_x)
                loss = self.loss_fn(logits, static_y)
            loss.backward()
            self.optimizer.step()
        return graph, static_x, static_y, logits, loss

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (tuple(x.shape), x.dtype, x.stride())
        if key not in self.graphs:
            count = self.seen.get(key, 0)
            self.seen[key] = count + 1
            if len(self.graphs) >= 1:
                return self.eager(x, y)
            if count < self.warmup:
                # On a side stream, as torch.cuda.graphs asks, so lazy per-stream state is set up off the
                # capture's path.
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    out = self.eager(x, y)
                torch.cuda.current_stream().wait_stream(side)
                return out
            torch.cuda.synchronize()
            self.graphs[key] = self.capture(x, y)
        graph, static_x, static_y, logits, loss = self.graphs[key]
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        return logits, loss


def train_head_on_features(
    features: torch.Tensor | Sequence[torch.Tensor],
    labels: torch.Tensor,
    num_classes: int | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
    head: nn.Linear | None = None,
    cuda_graph: bool = True,
    on_epoch_end: Callable[[int, nn.Linear], None] | None = None,
) -> nn.Linear:
    """Train a linear head with AdamW + cross-entropy on cached features; returns the head (trained in place).

    `features` is one (N, D) tensor, or one per epoch (the features of that epoch's augmented view). The
    batch order is `InMemoryLoader`'s with `seed`, the same order an end-to-end run with that loader sees.
    No host synchronisation happens inside the loop; on CUDA each step is a CUDA-graph replay.
    `on_epoch_end(epoch, head)` is called after each epoch (e.g. to score the head on validation features).
    """
    views = [features] if isinstance(features, torch.Tensor) else list(features)
    labels = labels.to(views[0].device)
    if head is None:
        if num_classes is None:
            raise ValueError("pass num_classes (or a head to train)")
        head = nn.Linear(views[0].shape[1], num_classes)
    head = head.to(views[0].device).train()
    cuda = views[0].device.type == "cuda"
    graphed = cuda and cuda_graph
    optimizer = torch.optim.AdamW(
        head.parameters(), lr=lr, weight_decay=weight_decay, fused=cuda or None, capturable=graphed
    )
    loss_fn = nn.CrossEntropyLoss()
    step = GraphedStep(head, optimizer, loss_fn) if graphed else None
    loader = InMemoryLoader(views[0], labels, batch_size, shuffle=True, seed=seed)
    for epoch in range(epochs):
        loader.images = views[epoch % len(views)]
        for x, y in loader:
            if step is not None:
                step(x, y)
                continue
            optimizer.zero_grad(set_to_none=True)
            loss_fn(head(x), y).backward()
            optimizer.step()
        if on_epoch_end is not None:
            on_epoch_end(epoch, head)
    return head


@torch.no_grad()
def head_accuracy(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    return (head(features).argmax(1) == labels.to(features.device)).float().mean().item()


def linear_probe(
    features: torch.Tensor, labels: torch.Tensor, c: float = 1.0, max_iter: int = 1000
) -> nn.Linear:
    """The classic linear probe: sklearn's L2-regularised logistic regression (lbfgs), returned as nn.Linear.

    Features are standardised for the fit (lbfgs converges in far fewer steps) and the scaling is folded
    back into the weights, so the layer takes raw features and plugs in as `TransferNet.head`.
    """
    from sklearn.linear_model import LogisticRegression

    x = features.detach().double().cpu().numpy()
    y = labels.detach().cpu().numpy()
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    classifier = LogisticRegression(C=c, max_iter=max_iter).fit((x - mean) / std, y)
    coef = classifier.coef_ / std
    intercept = classifier.intercept_ - coef @ mean
    if coef.shape[0] == 1:
        # Binary: sklearn keeps one logit (class 1 vs 0); two logits [0, z] give the same softmax.
        coef = np.concatenate([np.zeros_like(coef), coef])
        intercept = np.concatenate([np.zeros_like(intercept), intercept])
    num_classes = int(classifier.classes_.max()) + 1
    head = nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-1e4)  # a class absent from the training labels is never predicted
        index = torch.as_tensor(classifier.classes_, dtype=torch.long)
        head.weight[index] = torch.as_tensor(coef, dtype=torch.float32)
        head.bias[index] = torch.as_tensor(intercept, dtype=torch.float32)
    return head
