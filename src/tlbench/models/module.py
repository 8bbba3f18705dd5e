"""The LightningModule: a pretrained backbone adapted to the task, trained under one strategy. Built from
plain values, which it saves, so `TransferModule.load_from_checkpoint(path)` works with no Hydra and no
download (the saved hyper-parameters ask for random init: the checkpoint holds the weights)."""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAUROC,
    BinaryRecall,
    BinaryROC,
    BinarySpecificity,
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassF1Score,
)
from torchmetrics.functional.classification import binary_recall, binary_specificity, multiclass_accuracy

from tlbench.models.backbones import Preset, build_backbone
from tlbench.models.decision import BinaryDecision, check_threshold_rule, decide, youden_threshold
from tlbench.models.optimizers import build_optimizer, build_scheduler, parameter_groups
from tlbench.models.peft_lora import LoraAdapters
from tlbench.models.penalties import L2SPPenalty
from tlbench.models.recipes import batch_mixing
from tlbench.models.selection import selected_parameters
from tlbench.models.stages import (
    TrainableStageSchedule,
    check_stage_names,
    count_parameters,
    set_batchnorm_modes,
    set_trainable,
    stored_per_task,
)
from tlbench.models.steps import GraphedForwardBackward, resolve_cuda_graph
from tlbench.models.strategies import Strategy, backbone_stage_names, with_conf_defaults


def classification_metrics(num_classes: int) -> MetricCollection:
    metrics = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        # Mean per-class recall: what accuracy would be if every class were equally common.
        "balanced_acc": MulticlassAccuracy(num_classes, average="macro"),
        "f1_macro": MulticlassF1Score(num_classes, average="macro"),
        # Expected calibration error (15 equal-width bins, L1): how far confidence is from accuracy.
        "ece": MulticlassCalibrationError(num_classes, n_bins=15, norm="l1"),
    }
    if num_classes >= 10:
        metrics["top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics)


def binary_metrics() -> MetricCollection:
    """For two classes: the numbers a clinician asks for, with `positive_class` as "positive"."""
    return MetricCollection(
        {"auroc": BinaryAUROC(), "sensitivity": BinaryRecall(), "specificity": BinarySpecificity()}
    )


def preset_from_dict(values: dict) -> Preset:
    """Checkpoints store lists; Preset holds tuples (it is hashable and compared by value)."""
    return Preset(**{**values, "mean": tuple(values["mean"]), "std": tuple(values["std"])})


class TransferModule(L.LightningModule):
    def __init__(
        self,
        backbone: dict,
        num_classes: int,
        in_chans: int = 3,
        strategy: dict | None = None,
        optim: dict | None = None,
        class_names: list[str] | None = None,
        positive_class: int = 1,
        preset: dict | None = None,
        class_weights: list[float] | None = None,
        threshold_rule: str | float = "youden",
        threshold: float | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.strategy = Strategy.from_config(strategy)
        self.optim = with_conf_defaults("optim", {"name": "adamw", **(optim or {})})
        self.mixing = batch_mixing(self.optim["mixup"], self.optim["cutmix"], num_classes)
        # Mixup and CutMix blend images; a frozen trunk's cached features of unblended images cannot be.
        self.caches_features = self.strategy.caches_features(mixes_images=self.mixing is not None)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.class_names = list(class_names or [str(i) for i in range(num_classes)])

        built = build_backbone(num_classes=num_classes, in_chans=in_chans, **backbone)
        self.net, self.stages, self.input_conv = built.net, built.stages, built.input_conv
        check_stage_names(self.strategy.start, self.stages, self.input_conv)  # conv1, fc: say ours
        # strategy=lora: peft's adapters go in before anything reads the parameters (peft_lora.py).
        self.adapters = LoraAdapters(self.net.trunk, self.strategy.lora) if self.strategy.lora else None
        self.selected = selected_parameters(self.net, self.strategy.parameters)
        # strategy=l2sp: w0 is the network as built, before any step (penalties.py).
        l2sp = self.strategy.l2sp
        self.penalty = L2SPPenalty(self.net, self.stages, l2sp) if l2sp else None
        # The preprocessing the data used (image_size may differ): a reloaded checkpoint predicts alike.
        self.preset = preset_from_dict(preset) if preset else built.preset
        self.trainable_stages: list[str] = []
        self.set_trainable_stages(self.trainable_stages_at(epoch=0))

        self.num_classes, self.positive_class = num_classes, positive_class
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"{len(class_weights)} class weights for {num_classes} classes")
        # data.balance=loss; not persistent: the hyper-parameters already carry the weights.
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weights, persistent=False)
        self.threshold_rule = check_threshold_rule(threshold_rule)
        # Two classes: the positive class's decision threshold, chosen on validation, saved in checkpoints.
        self.threshold = threshold
        if self.threshold is None and not isinstance(self.threshold_rule, str) and num_classes == 2:
            self.threshold = self.threshold_rule
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_metrics = classification_metrics(num_classes).clone(prefix="val/")
        self.test_metrics = classification_metrics(num_classes).clone(prefix="test/")
        self.val_per_class = MulticlassAccuracy(num_classes, average=None)
        self.test_per_class = MulticlassAccuracy(num_classes, average=None)
        if num_classes == 2:
            self.val_binary = binary_metrics().clone(prefix="val/")
            self.test_binary = binary_metrics().clone(prefix="test/")
            self.val_roc = BinaryROC()
        self.test_per_class_result: dict[str, float] = {}
        self.graphed: GraphedForwardBackward | None = None
        # Softmax probabilities and targets of the last test pass, in loader order (predictions.csv).
        self.test_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.test_predictions: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def binary_decision(self) -> BinaryDecision | None:
        """Two classes with a threshold: how the answer is chosen; None: the more probable class."""
        if self.num_classes != 2 or self.threshold is None:
            return None
        positive, negative = self.class_names[self.positive_class], self.class_names[1 - self.positive_class]
        return BinaryDecision(
            float(self.threshold), positive, negative, self.positive_class, self.threshold_rule
        )

    @property
    def extra_trainable(self) -> list[str]:
        """An adapted input conv, where the strategy trains it (outside a linear probe)."""
        trains = self.input_conv and self.strategy.trains_input_conv(self.trainable_stages)
        return [self.input_conv] if trains else []

    def trainable_stages_at(self, epoch: int) -> list[str]:
        return self.strategy.stages_at(backbone_stage_names(self.stages), epoch)

    def set_trainable_stages(self, names: list[str]) -> None:
        self.trainable_stages = list(names)
        set_trainable(self.net, self.stages, self.trainable_stages, self.extra_trainable, self.selected)
        if getattr(self, "graphed", None) is not None:
            self.graphed.reset()  # a captured backward computes the gradients of the old trainable set
        if self.training:
            self.apply_bn_policy()

    def apply_bn_policy(self) -> None:
        """While training: trainable BatchNorm in train mode, frozen BatchNorm as strategy.bn says."""
        set_batchnorm_modes(self.net, self.strategy.bn)

    def train(self, mode: bool = True):
        # Lightning switches the whole module to train mode each epoch; frozen BatchNorm must stay in eval.
        super().train(mode)
        if mode:
            self.apply_bn_policy()
        return self

    def parameter_counts(self) -> dict[str, int]:
        trainable, total = count_parameters(self.net)
        stored = stored_per_task(self.net, self.strategy.bn)
        return {"trainable_params": trainable, "total_params": total, "stored_params_per_task": stored}

    def merge_adapters(self) -> None:
        """For serving: LoRA adapters folded into the weights they adapt, so predict, export and Grad-CAM see
        the plain network (peft_lora.py). Such a module no longer trains or resumes as its run did."""
        if self.adapters is not None:
            self.adapters.merge()
            self.adapters = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A 2-D batch is the frozen trunk's features (data side, strategy.cache_features): head only.
        return self.net.head(x) if x.ndim == 2 else self.net(x)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen trunk's float32 features of an image batch, in eval mode and the trainer's precision."""
        trunk, was_training = self.net.trunk, self.net.trunk.training
        trunk.eval()
        bf16 = (
            self.device.type == "cuda" and self._trainer is not None and "bf16" in str(self.trainer.precision)
        )
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            features = trunk(self.prepare_images(images.to(self.device, non_blocking=True))).float()
        trunk.train(was_training)
        return features

    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if images.ndim == 4 else images

    def setup(self, stage: str) -> None:
        # channels_last: tensor cores on a GPU want it, and so does oneDNN on a CPU (EfficientNet-Lite0 at
        # 224 px on 2 cores: 16 → 23 train img/s, 47 → 80 forward img/s; ResNet-18 about even).
        self.net.to(memory_format=torch.channels_last)
        if stage == "fit":
            use = resolve_cuda_graph(self.optim["cuda_graph"], self.trainer)
            self.graphed = GraphedForwardBackward(self.net) if use and not self.caches_features else None

    def training_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Class indices, or one probability row per image (mixup / cutmix): cross-entropy takes both."""
        smoothing = self.optim["label_smoothing"]
        return F.cross_entropy(logits, targets, weight=self.class_weights, label_smoothing=smoothing)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        if self.mixing is not None:
            images, targets = self.mixing(images, targets)
        x = self.prepare_images(images)
        logits = self.graphed(x) if self.graphed is not None else self(x)
        loss = self.training_loss(logits, targets)
        if self.penalty is not None:
            penalty = self.penalty(self.net)
            self.log("train/penalty", penalty, on_step=False, on_epoch=True, batch_size=len(targets))
            loss = loss + penalty
        # A blended image (mixup / cutmix) counts as the class with the larger share of it.
        self.train_acc(logits, targets.argmax(dim=1) if targets.ndim == 2 else targets)
        # On a GPU a per-step value in the progress bar is a host sync every step: epoch means only there.
        cpu = self.device.type == "cpu"
        self.log("train/loss", loss, on_step=cpu, on_epoch=True, prog_bar=True, batch_size=len(targets))
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def evaluate(self, batch, stage: str) -> torch.Tensor:
        """Update the stage's metrics with one batch; returns its softmax probabilities."""
        images, targets = batch
        logits = self(self.prepare_images(images))
        # Probabilities, not logits: the calibration error treats inputs within [0, 1] as probabilities.
        probs = logits.float().softmax(dim=1)
        self.log(
            f"{stage}/loss",
            F.cross_entropy(logits, targets),
            prog_bar=stage == "val",
            batch_size=len(targets),
        )
        getattr(self, f"{stage}_metrics").update(probs, targets)
        getattr(self, f"{stage}_per_class").update(logits, targets)
        if self.num_classes == 2:
            positive_prob = probs[:, self.positive_class]
            is_positive = (targets == self.positive_class).long()
            getattr(self, f"{stage}_binary").update(positive_prob, is_positive)
            if stage == "val":
                self.val_roc.update(positive_prob, is_positive)
        return probs

    def log_epoch_metrics(self, stage: str) -> dict[str, float]:
        collections = [getattr(self, f"{stage}_metrics")]
        if self.num_classes == 2:
            collections.append(getattr(self, f"{stage}_binary"))
        for collection in collections:
            values = collection.compute()
            self.log_dict(values, prog_bar=stage == "val")
            collection.reset()
        per_class_metric = getattr(self, f"{stage}_per_class")
        per_class = dict(zip(self.class_names, per_class_metric.compute().tolist()))
        per_class_metric.reset()
        self.log_dict({f"{stage}/acc_class/{name}": value for name, value in per_class.items()})
        return per_class

    def validation_step(self, batch, batch_idx: int) -> None:
        self.evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.log_epoch_metrics("val")
        if self.num_classes == 2:
            # Chosen here, before ModelCheckpoint saves this epoch: each checkpoint holds its own threshold.
            if self.threshold_rule == "youden":
                self.threshold = youden_threshold(self.val_roc)
            self.val_roc.reset()
            # Not a val/ metric: results.json keeps one threshold per run (the best checkpoint's), and the
            # last epoch's would sit beside it with another value.
            self.log("threshold/chosen_on_val", self.threshold)

    def on_test_epoch_start(self) -> None:
        self.test_outputs = []

    def test_step(self, batch, batch_idx: int) -> None:
        probs = self.evaluate(batch, "test")
        self.test_outputs.append((probs.detach(), batch[1].detach()))

    def on_test_epoch_end(self) -> None:
        self.test_per_class_result = self.log_epoch_metrics("test")
        if self.test_outputs:
            probs, targets = (torch.cat(parts) for parts in zip(*self.test_outputs, strict=True))
            if self.num_classes == 2 and self.threshold is not None:
                self.log_dict(self.metrics_at_threshold(probs, targets))
            self.test_predictions = (probs.cpu().numpy(), targets.cpu().numpy())
        self.test_outputs = []

    def metrics_at_threshold(self, probs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Test metrics of the decisions at the validation-chosen threshold, beside the 0.5 (argmax) ones."""
        predicted = decide(probs, self.threshold, self.positive_class)
        said_positive = (predicted == self.positive_class).long()
        is_positive = (targets == self.positive_class).long()
        return {
            "test/acc@thr": multiclass_accuracy(predicted, targets, 2, average="micro"),
            "test/balanced_acc@thr": multiclass_accuracy(predicted, targets, 2, average="macro"),
            "test/sensitivity@thr": binary_recall(said_positive, is_positive),
            "test/specificity@thr": binary_specificity(said_positive, is_positive),
        }

    def configure_optimizers(self) -> Any:
        o = self.optim
        rates = self.strategy.stage_rates(backbone_stage_names(self.stages))
        # A schedule of trainable stages needs every stage's group from the start (TrainableStageSchedule).
        include = [n for n, _ in self.stages] if self.strategy.scheduled else self.trainable_stages
        # L2-SP's penalty replaces weight decay, which would pull the backbone towards 0 instead of w0.
        decay = o["weight_decay"] if self.penalty is None else 0.0
        groups = parameter_groups(
            self.net, self.stages, rates, decay, include, self.extra_trainable, self.selected
        )
        optimizer = build_optimizer(groups, o, fused=self.device.type == "cuda")
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, total_steps // max(1, self.trainer.max_epochs or 1))
        scheduler = build_scheduler(optimizer, o, total_steps, steps_per_epoch)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def configure_callbacks(self) -> list[L.Callback]:
        return [TrainableStageSchedule()] if self.strategy.scheduled else []

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The checkpoint carries the trained weights, so reloading must not fetch pretrained ones again.
        hparams = copy.deepcopy(dict(checkpoint.get("hyper_parameters", {})))
        if "backbone" in hparams:
            hparams["backbone"] = {**hparams["backbone"], "weights": None, "checkpoint": None}
        if self.num_classes == 2:
            hparams["threshold"] = self.threshold
        checkpoint["hyper_parameters"] = hparams
        if self.penalty is not None:
            checkpoint["l2sp_w0"] = self.penalty.fingerprint()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # trainer.test(ckpt_path=best) loads weights into this module: the threshold must be best's too.
        if self.num_classes == 2:
            self.threshold = checkpoint.get("hyper_parameters", {}).get("threshold", self.threshold)
        # Resuming L2-SP: the rebuilt w0 must be the one the run started from (a reload to predict has none).
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        if self.penalty is not None and fitting and "l2sp_w0" in checkpoint:
            self.penalty.check_same_start(checkpoint["l2sp_w0"])
