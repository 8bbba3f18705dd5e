"""L2-SP (Li, Grandvalet & Davoine, "Explicit inductive bias for transfer learning with convolutional
networks", ICML 2018): fine-tune everything, pulled towards the starting point rather than towards 0,

    Ω(w) = α/2 · ||w_S − w0_S||²  +  β/2 · ||w_S̄||²

with S the backbone (w0: its weights before the first step, the pretrained ones) and S̄ the new head. It is
added to the loss, so Adam(W) scales its gradient like the task loss's; the optimizer's own weight decay is
off for such a run (module.configure_optimizers), as the paper's penalty replaces it.

w0 is not saved in checkpoints (it would double them): a resumed run rebuilds it from the same pretrained
weights, and `fingerprint` (saved instead) proves it is the same before training goes on."""

from __future__ import annotations

import math

import torch
from torch import nn

from tlbench.models.stages import stage_of
from tlbench.models.strategies import HEAD, L2SP, Stages


class L2SPPenalty(nn.Module):
    """Ω(w) of the network it was built from; w0 in non-persistent buffers (they follow the module to its
    device, and stay out of state_dict)."""

    def __init__(self, net: nn.Module, stages: Stages, settings: L2SP) -> None:
        super().__init__()
        self.alpha, self.beta = settings.alpha, settings.beta
        self.backbone: list[str] = []
        self.head: list[str] = []
        for name, param in net.named_parameters():
            if stage_of(name, stages) == HEAD:
                self.head.append(name)
            else:
                self.backbone.append(name)
                # Buffer names cannot hold dots; w0 is a copy, so the net's later steps leave it alone.
                self.register_buffer(self.key(name), param.detach().clone(), persistent=False)

    @staticmethod
    def key(name: str) -> str:
        return "w0:" + name.replace(".", ":")

    def forward(self, net: nn.Module) -> torch.Tensor:
        """Ω(w) now, differentiable in w; a frozen parameter adds a constant and is skipped."""
        params = dict(net.named_parameters())
        drift = [params[n] - self.get_buffer(self.key(n)) for n in self.backbone if params[n].requires_grad]
        head = [params[n] for n in self.head if params[n].requires_grad]
        total = params[self.head[0]].new_zeros(())
        if drift:
            total = total + self.alpha / 2 * sum(d.pow(2).sum() for d in drift)
        if head:
            total = total + self.beta / 2 * sum(w.pow(2).sum() for w in head)
        return total

    @torch.no_grad()
    def fingerprint(self) -> list[float]:
        """Sum and sum of squares of w0 (float64): equal for the same starting weights, cheap to save."""
        buffers = [buffer.double() for buffer in self.buffers()]
        return [float(sum(b.sum() for b in buffers)), float(sum(b.pow(2).sum() for b in buffers))]

    def check_same_start(self, saved: list[float]) -> None:
        """A resumed run must pull towards the w0 it started from: refuse other starting weights."""
        if not all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for a, b in zip(self.fingerprint(), saved)):
            raise ValueError(
                "strategy=l2sp: the backbone's starting weights (w0, rebuilt from backbone.weights / "
                "backbone.checkpoint) differ from those this run started from, so resuming would pull "
                "towards other weights; restore the original weights file, or start over with force=true"
            )
