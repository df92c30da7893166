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
import safetensors.torch
import torch

from sleepstaging.data import batch_augment
from sleepstaging.training import engine
from sleepstaging.training.loss import soft_target_cross_entropy, widened
from sleepstaging.training import validation
from sleepstaging.scoring import models
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
    ours = soft_target_cross_entropy(logits, widened(stage_targets, 1000), recipe.LABEL_SMOOTHING)
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


def saved_1000_class_weights(arch: str, path) -> dict:
    """A random-initialised ``arch`` with 1000 classes (ImageNet's), saved to ``path`` as safetensors; its tensors."""
    torch.manual_seed(3)
    state = {name: value.contiguous() for name, value in
             models.create_model(arch, (32, 32), num_classes=1000).state_dict().items()}
    safetensors.torch.save_file(state, str(path))
    return state


def run_config(args) -> dict:
    """What the model depends on in a run's configuration (engine._run_config): the options and the classes."""
    return dict(vars(args), num_classes=engine.model_classes(args))


@pytest.mark.parametrize("arch", ["test_efficientnet", "tf_efficientnet_b0"])
@pytest.mark.parametrize("defects", [True, False])
def test_the_original_defects_keep_the_loaded_1000_class_classifier(tmp_path, arch, defects):
    """mainEff.py loaded the whole ImageNet file, classifier included, and trained that classifier."""
    path = tmp_path / "imagenet.safetensors"
    saved = saved_1000_class_weights(arch, path)
    options = ["--model-arch", arch, "--img-size", "32", "--pretrained", str(path)]
    args = train_options.build_parser(main_eff.DEFAULTS, "").parse_args(options + ["--original-defects"] * defects)
    args.img_size = (32, 32)
    torch.manual_seed(4)  # another draw than the file's: a fresh classifier would differ from it
    model = engine.initial_model(args, run_config(args))
    weight, bias = model.classifier.weight.detach(), model.classifier.bias.detach()
    backbone = [name for name in saved if not name.startswith("classifier.")]
    loaded = model.state_dict()
    for name in backbone:
        torch.testing.assert_close(loaded[name], saved[name], rtol=0, atol=0, msg=name)
    if defects:
        assert weight.shape == (1000, saved["classifier.weight"].shape[1])
        assert torch.equal(weight, saved["classifier.weight"]) and torch.equal(bias, saved["classifier.bias"])
    else:  # the project's recipe: a fresh 5-class classifier, as before
        assert weight.shape == (5, saved["classifier.weight"].shape[1])
        assert not torch.equal(weight, saved["classifier.weight"][:5])
    # without pretrained weights there is nothing to keep: a random 1000-class classifier under the switch too
    args.pretrained = "none"
    assert engine.initial_model(args, run_config(args)).classifier.out_features == (1000 if defects else 5)


def original_valid_one_epoch_metrics(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """The original's valid_one_epoch figures: argmax over every output, then sklearn's f1_score(preds, targets)."""
    from sklearn.metrics import f1_score
    predicted = torch.argmax(logits, 1).numpy()
    return float((predicted == labels.numpy()).mean()), float(f1_score(predicted, labels.numpy(), average="macro"))


def thousand_class_logits() -> tuple[torch.Tensor, torch.Tensor]:
    """Six images of stages 0 0 1 2 4 4 whose largest outputs are 0, 7, 1, 1, 4, 999 (the log of chosen probabilities).

    Folded (class c for stage c mod 5), the second image (0.30 on 7, 0.25 on 0 and 0.20 on 5) is stage 0, the
    last (0.30 on 999, 0.25 on 4, 0.20 on 9) stage 4: the folded figures count both right, the original's wrong.
    """
    labels = torch.tensor([0, 0, 1, 2, 4, 4])
    chosen = {0: {0: 0.7}, 1: {7: 0.30, 0: 0.25, 5: 0.20}, 2: {1: 0.7}, 3: {1: 0.7}, 4: {4: 0.7},
              5: {999: 0.30, 4: 0.25, 9: 0.20}}
    probabilities = torch.zeros(6, 1000, dtype=torch.float64)
    for row, columns in chosen.items():
        rest = 1 - sum(columns.values())
        probabilities[row] = rest / (1000 - len(columns))  # the rest spread evenly: at most 0.0003 per output
        for column, share in columns.items():
            probabilities[row, column] = share
    return torch.log(probabilities).float(), labels


def test_the_validation_of_a_1000_class_model_is_also_the_originals_argmax_over_all_outputs():
    logits, labels = thousand_class_logits()

    class Fixed(torch.nn.Module):
        def forward(self, images):
            return logits

    targets = torch.nn.functional.one_hot(labels, 5).float()
    _, images, confusion, raw = validation.validate(Fixed(), [(torch.zeros(6, 3, 8, 8), targets)], 1, torch.device("cpu"))
    assert images == 6 and raw.shape == (5, 1000)
    # folded: only the fourth image (stage 2, predicted N1) is wrong
    assert np.trace(confusion) == 5 and confusion[2, 1] == 1
    assert raw[0, 0] == raw[0, 7] == raw[1, 1] == raw[2, 1] == raw[4, 4] == raw[4, 999] == 1 and raw.sum() == 6
    original = validation.original_validation_metrics(raw)
    # By hand: 3 of 6 right. F1 over the classes in truth or prediction, {0, 1, 2, 4, 7, 999}: stage 0 (1 of 2
    # found, none wrongly) 2/3, 1 (1 right, 1 wrongly) 2/3, 2: 0, 4: 2/3, 7 and 999: 0; mean (3 x 2/3) / 6 = 1/3.
    assert original == {"accuracy": 0.5, "macro_f1": pytest.approx(1 / 3, abs=1e-12), "past_stages": 2}
    accuracy, macro_f1 = original_valid_one_epoch_metrics(logits, labels)
    assert (original["accuracy"], original["macro_f1"]) == (accuracy, pytest.approx(macro_f1, abs=1e-12))
    folded = validation.classification_metrics(confusion)
    assert folded["accuracy"] == pytest.approx(5 / 6)


def test_the_log_and_the_printout_carry_the_originals_figures_beside_the_folded_ones(tmp_path, capsys):
    logits, labels = thousand_class_logits()
    confusion = np.zeros((5, 5), dtype=np.int64)
    raw = np.zeros((5, 1000), dtype=np.int64)
    for truth, folded, argmax in zip(labels.tolist(), [0, 0, 1, 1, 4, 4], logits.argmax(1).tolist()):
        confusion[truth, folded] += 1
        raw[truth, argmax] += 1
    model = torch.nn.Linear(2, 5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=10)
    run = engine._TrainingRun({}, model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False),
                              None, None, 0, None)
    args = argparse.Namespace(weights_dir=str(tmp_path), model_arch="a", fold=0)
    for epoch, counts in enumerate([raw, confusion]):  # a 1000-class model, then a 5-class one
        engine._save_epoch(run, args, epoch, 0.1, [6.0, 6, 6.0, 6], confusion, counts, images_per_s=1.0)
    with open(engine.log_path(tmp_path, "a", 0), newline="") as handle:
        rows = list(__import__("csv").DictReader(handle))
    assert [row["valid_accuracy"] for row in rows] == ["0.833333", "0.833333"]  # folded: 5 of 6
    assert [row["original_valid_accuracy"] for row in rows] == ["0.500000", ""]
    assert [row["original_valid_macro_f1"] for row in rows] == ["0.333333", ""]
    printed = capsys.readouterr().out
    assert printed.count("the original's validation (argmax over all outputs): accuracy 0.5000 macro-F1 0.3333 "
                         "(2 images predicted past the stages)") == 1
