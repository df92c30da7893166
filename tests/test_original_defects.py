"""--original-defects: the original's three training defects, each against a re-statement of its code.

The re-statements follow ``loaderViTrgb.py`` (``target = rate*target +
(1.-rate)*self.labels[fmix_ix]``, then ``.long()`` in the training loop),
``inferblend.py`` (``for art in range(200): new += preds[:, art*5:(art+1)*5]``)
and ``mainEff.py`` / ``mainViTrgb.py`` (``scaler.scale(loss).backward()`` on
every batch of an accumulated step; ``SmoothCrossEntropyLoss`` over all the
model's outputs).
"""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from sleepstaging.data import batch_augment
from sleepstaging.training import engine
from sleepstaging.scoring import models
import infer_blend
from sleepstaging.scoring import inference
from sleepstaging.data import loaders
import main_eff
import main_vit_rgb
from sleepstaging.scoring import model_set
from sleepstaging import recipe
from sleepstaging.training import train_options
from sleepstaging.data import worker_transport
def original_smooth_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """The original's SmoothCrossEntropyLoss: 1 - eps on the label, eps / (n - 1) on each of the n - 1 others."""
    n_classes = logits.shape[1]
    targets = torch.full(logits.shape, smoothing / (n_classes - 1), dtype=torch.float64)
    targets.scatter_(1, labels[:, None], 1.0 - smoothing)
    return -(targets * torch.log_softmax(logits.double(), dim=1)).sum(dim=1).mean()


def epoch_samples(tiny_data, cache_dir, integer_targets: bool):
    """(rows, images, targets) of epoch 1 of a training loader of the first 40 rows, FMix and CutMix on."""
    table = loaders.read_train_table(tiny_data)
    rows = np.arange(40)
    loader = loaders.make_train_loader(tiny_data, table, rows, (32, 32), batch_size=8, workers=0, seed=72,
                                              cutmix_enabled=True, cache_dir=cache_dir,
                                              integer_targets=integer_targets)
    loaders.set_loader_epoch(loader, 1)
    keys = list(loader.sampler)
    order = [int(i) for key in keys for i in (key[2] if isinstance(key, tuple) else [key])]
    images, targets = zip(*(batch_augment.finish_batch(batch, torch.device("cpu"))
                            for batch in worker_transport.iterate_batches(loader)))
    return table.labels[rows[order]], torch.cat(images), torch.cat(targets)


@pytest.mark.parametrize("path", ["per-sample", "cached"])
def test_mixed_targets_are_the_originals_integer_cast(tiny_data, tmp_path, path):
    cache_dir = None if path == "per-sample" else tmp_path / "cache"
    labels, soft_images, soft = epoch_samples(tiny_data, cache_dir, integer_targets=False)
    _, images, hard = epoch_samples(tiny_data, cache_dir, integer_targets=True)
    torch.testing.assert_close(images, soft_images, rtol=0, atol=0)  # the same draws, only the targets differ
    expected = []
    for own, row in zip(labels, soft.double()):
        # Re-stated from the soft target: the own image's share, then each partner's; the original mixed
        # the class indices by the same shares (FMix first, then CutMix) and truncated.
        others = [(stage, share) for stage, share in enumerate(row.tolist()) if share > 0 and stage != own]
        index = float(own) * float(row[own]) + sum(stage * share for stage, share in others)
        expected.append(int(index))
    assert hard.argmax(dim=1).tolist() == expected
    torch.testing.assert_close(hard.sum(dim=1), torch.ones(len(hard)))
    assert (hard.max(dim=1).values == 1).all()  # one-hot: the original trained towards one class
    moved = [k for k, (own, stage) in enumerate(zip(labels, expected)) if own != stage]
    assert moved, "no mixed sample trained towards another class: the case does not test the defect"
    assert all(soft[k].argmax() != hard[k].argmax() or soft[k].max() < 1 for k in moved)


def test_the_original_mixes_by_index_and_truncates_by_hand():
    """Wake 60 % + REM 40 %: 0.6 * 0 + 0.4 * 4 = 1.6, trained as N1; N2 65 % + Wake 35 %: 1.3, N1."""
    labels = torch.tensor([0, 2, 4, 0])  # two samples, then their partners
    shares = torch.tensor([[0.6], [0.65]], dtype=torch.float64)
    mixes = [(torch.tensor([0, 1]), torch.tensor([2, 3]), None, shares)]
    hard = batch_augment._mixed_targets(labels, 2, mixes, integer=True)
    assert hard.argmax(dim=1).tolist() == [1, 1]
    soft = batch_augment._mixed_targets(labels, 2, mixes)
    torch.testing.assert_close(soft[0], torch.tensor([0.6, 0, 0, 0, 0.4]))


def test_folding_is_the_originals_sum_of_200_slices_of_5():
    probabilities = np.random.default_rng(0).dirichlet(np.ones(1000), 7)
    folded = np.zeros((7, 5))
    for art in range(200):
        folded += probabilities[:, art * 5:(art + 1) * 5]
    np.testing.assert_allclose(models.fold_to_stages(probabilities), folded, rtol=1e-12)
    np.testing.assert_allclose(models.fold_to_stages(probabilities).sum(axis=1), 1.0)
    five = probabilities[:, :5]
    assert np.array_equal(models.fold_to_stages(five), five)
    with pytest.raises(ValueError, match="cannot fold 7 classes"):
        models.fold_to_stages(np.ones((2, 7)))


def test_the_1000_class_classifier_learns_the_stages_smoothed_over_1000_outputs():
    args = argparse.Namespace(original_defects=True, original_classes=main_eff.DEFAULTS["original_classes"])
    assert engine.model_classes(args) == 1000
    assert engine.model_classes(argparse.Namespace(original_defects=True, original_classes=5)) == 5  # the ViT
    assert engine.model_classes(argparse.Namespace(original_defects=False, original_classes=1000)) == 5
    logits = torch.randn(6, 1000, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 3, 4, 2])
    stage_targets = torch.nn.functional.one_hot(labels, 5).float()
    ours = engine.soft_target_cross_entropy(logits, engine.widened(stage_targets, 1000), recipe.LABEL_SMOOTHING)
    torch.testing.assert_close(ours.double(), original_smooth_cross_entropy(logits, labels, 0.1), rtol=1e-6, atol=0)


@pytest.mark.parametrize("summed", [True, False])
def test_an_accumulated_step_sums_the_losses_only_with_the_defects(summed):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    start = [p.detach().clone() for p in model.parameters()]
    batches = [(torch.randn(4, 3, 2, 2), torch.nn.functional.one_hot(torch.tensor(l), 5).float())
               for l in ([0, 1, 2, 3], [4, 4, 1, 0])]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # a step of -1 x the gradient
    engine.train_one_epoch(model, batches, 2, optimizer, torch.amp.GradScaler("cpu", enabled=False),
                           torch.device("cpu"), "off", accum_iter=2, sum_accumulated=summed)
    # By hand: the original called backward on each batch's loss and stepped once: the gradients added.
    reference = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    with torch.no_grad():
        for target, source in zip(reference.parameters(), start):
            target.copy_(source)
    losses = [original_smooth_cross_entropy(reference(images), targets.argmax(1), 0.1) for images, targets in batches]
    total = sum(losses) if summed else sum(losses) / 2
    gradients = torch.autograd.grad(total, list(reference.parameters()))
    for after, before, gradient in zip(model.parameters(), start, gradients):
        torch.testing.assert_close(after.detach().double(), (before - gradient).double(), rtol=1e-5, atol=1e-6)


def test_the_switch_is_recorded_and_inference_folds_the_1000_class_model(monkeypatch, tmp_path):
    args = train_options.build_parser(main_eff.DEFAULTS, "").parse_args(["--original-defects"])
    assert args.original_defects and args.original_classes == 1000
    assert not train_options.build_parser(main_vit_rgb.DEFAULTS, "").parse_args([]).original_defects
    assert "original_defects" in train_options.RESUME_KEYS
    # A 1000-class configuration is taken only when it says --original-defects.
    weights = tmp_path / "weights"
    weights.mkdir()
    config = dict(model_arch="a", img_size=[8, 8], num_classes=1000, fold=0, original_defects=True)
    engine.run_config_path(weights, "a", 0).write_text(__import__("json").dumps(config))
    engine.checkpoint_path(weights, "a", 0, 1).write_bytes(b"")
    assert model_set.read_model_config(weights, "a", 0, [1], "main_eff.py")["num_classes"] == 1000
    engine.run_config_path(weights, "a", 0).write_text(__import__("json").dumps(dict(config, original_defects=False)))
    with pytest.raises(model_set.InputError, match="with 1000 classes, expected a with 5"):
        model_set.read_model_config(weights, "a", 0, [1], "main_eff.py")
    # infer_blend asks for the recorded classes and folds each prediction.
    outputs = np.random.default_rng(2).dirichlet(np.ones(1000), 3)
    asked = []

    class Checkpoint:
        def to(self, device):
            return self

    monkeypatch.setattr(inference.models, "create_model", lambda arch, size, classes: asked.append(classes)
                        or Checkpoint())
    monkeypatch.setattr(inference.models, "load_weights", lambda model, path: model)
    monkeypatch.setattr(inference, "tta_loader", lambda *a, **k: None)
    monkeypatch.setattr(inference.models, "predict", lambda *a: outputs)
    options = argparse.Namespace(amp="off", quiet=True, weights_dir="w", fold=0, tta=1, data_root="d", batch_size=2,
                                 workers=0, no_cache=True, cache_dir=None)
    result = inference.model_probabilities("a", [1], dict(config, resize="area"), options,
                                             {"test": (None, np.arange(3))}, torch.device("cpu"))
    assert asked == [1000]
    np.testing.assert_allclose(result["test"], outputs.reshape(3, 200, 5).sum(axis=1), rtol=1e-6)
