"""strategy=freeze on cached features must train the same head as running the frozen network every step."""

from __future__ import annotations

import copy

import torch
from torch import nn

from tlbench.backbones import TransferNet
from tlbench.fastdata import InMemoryLoader
from tlbench.features import extract_features, head_accuracy, linear_probe, train_head_on_features


def tiny_trunk() -> nn.Module:
    # BatchNorm on purpose: a frozen trunk must use its running statistics, not the batch's.
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def data(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.randn((n, 3, 12, 12), generator=g) + labels.view(-1, 1, 1, 1).float()
    return images, labels


def frozen_net(seed: int = 0) -> TransferNet:
    torch.manual_seed(seed)
    trunk = tiny_trunk()
    with torch.no_grad():  # running statistics that differ from any batch's
        trunk[1].running_mean.uniform_(-1, 1)
        trunk[1].running_var.uniform_(0.5, 2)
    net = TransferNet(trunk, nn.Linear(8, 3))
    for p in net.trunk.parameters():
        p.requires_grad = False
    return net


def test_extract_features_is_the_trunk_in_eval_mode_and_restores_its_mode():
    net = frozen_net()
    images, _ = data()
    net.trunk.train()
    features = extract_features(net.trunk, images, batch_size=16, device="cpu")
    assert net.trunk.training
    net.trunk.eval()
    with torch.no_grad():
        assert torch.allclose(features, net.trunk(images), atol=1e-6)
    assert features.shape == (40, 8) and features.dtype == torch.float32
    loader = InMemoryLoader(images, torch.zeros(40), 7, shuffle=False)
    assert torch.allclose(extract_features(net.trunk, loader, device="cpu"), features, atol=1e-6)


def test_head_on_cached_features_equals_end_to_end_frozen_training():
    images, labels = data()
    net = frozen_net()
    cached_head = copy.deepcopy(net.head)
    epochs, batch_size, seed = 3, 8, 5

    # End to end: the whole TransferNet runs every step, trunk frozen in eval mode.
    net.trunk.eval()
    optimizer = torch.optim.AdamW(net.head.parameters(), lr=1e-2, weight_decay=1e-4)
    loader = InMemoryLoader(images, labels, batch_size, shuffle=True, seed=seed)
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()

    features = extract_features(net.trunk, images, batch_size=16, device="cpu")
    train_head_on_features(
        features,
        labels,
        epochs=epochs,
        lr=1e-2,
        weight_decay=1e-4,
        batch_size=batch_size,
        seed=seed,
        head=cached_head,
    )
    assert not torch.allclose(cached_head.weight, frozen_net().head.weight), "the head did train"
    assert torch.allclose(cached_head.weight, net.head.weight, atol=1e-5)
    assert torch.allclose(cached_head.bias, net.head.bias, atol=1e-5)


def test_one_feature_view_per_epoch():
    images, labels = data()
    trunk = frozen_net().trunk
    view = extract_features(trunk, images, device="cpu")
    other_view = extract_features(trunk, images.flip(-1), device="cpu")
    init = nn.Linear(8, 3)
    same_twice = train_head_on_features([view, view], labels, epochs=2, seed=1, head=copy.deepcopy(init))
    single = train_head_on_features(view, labels, epochs=2, seed=1, head=copy.deepcopy(init))
    two_views = train_head_on_features([view, other_view], labels, epochs=2, seed=1, head=copy.deepcopy(init))
    assert torch.equal(same_twice.weight, single.weight)
    assert not torch.allclose(two_views.weight, single.weight)


def test_linear_probe_fits_separable_features_and_plugs_in_as_a_head():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    features = torch.randn((60, 5), generator=g) * 0.1 + 10 * nn.functional.one_hot(labels, 5).float() + 50
    head = linear_probe(features, labels)
    assert isinstance(head, nn.Linear) and head.weight.shape == (3, 5)
    assert head_accuracy(head, features, labels) == 1.0


def test_linear_probe_two_classes():
    labels = torch.arange(20) % 2
    features = torch.stack([labels.float() * 4, torch.ones(20)], dim=1)
    head = linear_probe(features, labels)
    assert head.out_features == 2 and head_accuracy(head, features, labels) == 1.0
