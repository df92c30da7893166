"""engine.py, loss.py and validation.py without data: loss, metrics, accumulation, models, weights files, names."""
from __future__ import annotations

import json
import math
import pickle
import time

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from sklearn.metrics import f1_score
from torch.utils.data import DataLoader, TensorDataset

from sleepstaging import recipe
from sleepstaging.training import engine
from sleepstaging.training.loss import smooth_targets, soft_target_cross_entropy
from sleepstaging.training import validation
from sleepstaging.scoring import models
from sleepstaging.scoring import model_set
from sleepstaging.training import optimizers
from conftest import run_script
from sleepstaging.script_io import InputError


# --------------------------------------------------------------------------
# Label smoothing and the loss
# --------------------------------------------------------------------------
def test_smoothing_gives_the_originals_values():
    one_hot = torch.eye(5)[[2]]
    np.testing.assert_allclose(smooth_targets(one_hot, 0.1).numpy(), [[0.025, 0.025, 0.9, 0.025, 0.025]],
                               atol=1e-7)


def test_smoothing_after_mixing_gives_the_mixture_of_the_smoothed_targets_by_hand():
    # 63 % Wake, 37 % REM (an FMix share), eps 0.1: each smoothed one-hot is 0.9 on its class and
    # 0.1 / 4 = 0.025 elsewhere, so Wake gets 0.63 x 0.9 + 0.37 x 0.025 = 0.57625, REM gets
    # 0.37 x 0.9 + 0.63 x 0.025 = 0.34875 and the three other stages 0.025.
    mixed = torch.tensor([[0.63, 0.0, 0.0, 0.0, 0.37]], dtype=torch.float64)
    np.testing.assert_allclose(smooth_targets(mixed, 0.1).numpy(),
                               [[0.57625, 0.025, 0.025, 0.025, 0.34875]], rtol=0, atol=1e-12)
    # Three stages mixed (FMix then CutMix): 0.5 N1, 0.3 N2, 0.2 N3 with eps 0.2 (off value 0.05):
    # N1 0.5 x 0.8 + 0.5 x 0.05 = 0.425, N2 0.3 x 0.8 + 0.7 x 0.05 = 0.275, N3 0.2 x 0.8 + 0.8 x 0.05 = 0.2.
    three = torch.tensor([[0.0, 0.5, 0.3, 0.2, 0.0]], dtype=torch.float64)
    np.testing.assert_allclose(smooth_targets(three, 0.2).numpy(), [[0.05, 0.425, 0.275, 0.2, 0.05]],
                               rtol=0, atol=1e-12)


def test_loss_on_a_hand_computed_example():
    # Probabilities (1, 2, 3, 4, 10) / 20 from logits ln(1), ln(2), ...
    logits = torch.log(torch.tensor([[1.0, 2.0, 3.0, 4.0, 10.0]] * 2))
    targets = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0],      # REM
                            [0.6, 0.0, 0.0, 0.0, 0.4]])     # FMix of Wake (60 %) and REM
    log_p = [math.log(k / 20) for k in (1, 2, 3, 4, 10)]
    # Row 1: 0.025 on classes 0-3, 0.9 on class 4.
    row1 = -(0.025 * sum(log_p[:4]) + 0.9 * log_p[4])
    # Row 2: 0.6 * (0.9, .025, .025, .025, .025) + 0.4 * (.025, .025, .025, .025, 0.9)
    weights = [0.6 * 0.9 + 0.4 * 0.025, 0.025, 0.025, 0.025, 0.6 * 0.025 + 0.4 * 0.9]
    row2 = -sum(w * lp for w, lp in zip(weights, log_p))
    loss = soft_target_cross_entropy(logits, targets, smoothing=0.1)
    assert float(loss) == pytest.approx((row1 + row2) / 2, rel=1e-6)
    # Without smoothing, a one-hot target gives the usual cross entropy.
    plain = soft_target_cross_entropy(logits[:1], targets[:1], smoothing=0.0)
    assert float(plain) == pytest.approx(-math.log(0.5), rel=1e-6)


# --------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------
def test_metrics_by_hand_and_against_sklearn():
    # Truth 0,0,1,1,2 ; predicted 0,1,1,1,0. Class 0: TP 1, FP 1, FN 1 -> F1 0.5;
    # class 1: TP 2, FP 1, FN 0 -> 0.8; class 2: TP 0, FN 1 -> 0; 3, 4 absent.
    confusion = np.zeros((5, 5), int)
    for t, p in zip([0, 0, 1, 1, 2], [0, 1, 1, 1, 0]):
        confusion[t, p] += 1
    metrics = validation.classification_metrics(confusion)
    assert metrics["accuracy"] == pytest.approx(0.6)
    np.testing.assert_allclose(metrics["f1"][:3], [0.5, 0.8, 0.0])
    assert np.isnan(metrics["f1"][3:]).all()
    assert metrics["macro_f1"] == pytest.approx(1.3 / 3)

    rng = np.random.default_rng(0)
    truth, predicted = rng.integers(0, 5, 300), rng.integers(0, 4, 300)
    confusion = np.zeros((5, 5), int)
    np.add.at(confusion, (truth, predicted), 1)
    assert validation.classification_metrics(confusion)["macro_f1"] == pytest.approx(
        f1_score(truth, predicted, average="macro"))


# --------------------------------------------------------------------------
# The training step: accumulation averages the loss of a group of batches
# --------------------------------------------------------------------------
def test_accumulation_equals_one_step_on_the_group():
    torch.manual_seed(0)
    images = torch.randn(10, 3, 2, 2)
    targets = torch.eye(5)[torch.randint(0, 5, (10,))]

    def fresh():
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
        return model, torch.optim.SGD(model.parameters(), lr=0.5)

    scaler = torch.amp.GradScaler("cpu", enabled=False)
    device = torch.device("cpu")
    # Batches of 2; accumulation 2 -> groups {0,1}, {2,3} and the partial group {4}.
    model, optimizer = fresh()
    batches = [(images[i:i + 2], targets[i:i + 2]) for i in range(0, 10, 2)]
    loss_sum, seen = engine.train_one_epoch(model, batches, 5, optimizer, scaler, device, "off", accum_iter=2)
    assert seen == 10

    reference, reference_optimizer = fresh()
    expected_loss = 0.0
    for group in ([0, 1, 2, 3], [4, 5, 6, 7], [8, 9]):
        reference_optimizer.zero_grad()
        loss = soft_target_cross_entropy(reference(images[group]), targets[group])
        expected_loss += loss.item() * len(group)
        loss.backward()
        reference_optimizer.step()
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want)
    assert loss_sum == pytest.approx(expected_loss, rel=1e-5)


def _rates_of_warmup(warmup, optimizer, scheduler, epochs, steps_per_epoch):
    """The learning rate of every optimizer step, epoch by epoch as the trainer hands them over."""
    rates = []
    for _ in range(epochs):
        warmup.start_epoch(scheduler.get_last_lr())
        for _ in range(steps_per_epoch):
            warmup.before_step()
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
        scheduler.step()
    return rates


def test_warmup_scales_the_scheduled_rate_over_the_first_steps_and_leaves_the_schedule():
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=4, eta_min=0.0)
    rates = _rates_of_warmup(optimizers.LinearWarmup(optimizer, total_steps=3), optimizer, scheduler,
                             epochs=3, steps_per_epoch=2)
    # Steps 0-2 take 1/3, 2/3, 3/3 of the scheduled rate; the cosine goes on from its own step count.
    second = 0.1 * (1 + math.cos(math.pi / 4)) / 2
    third = 0.1 * (1 + math.cos(math.pi / 2)) / 2
    assert rates == pytest.approx([0.1 / 3, 0.2 / 3, second, second, third, third])
    # A resumed run (2 steps already taken) starts at the third step's share.
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=4, eta_min=0.0)
    resumed = _rates_of_warmup(optimizers.LinearWarmup(optimizer, total_steps=4, steps_done=2), optimizer, scheduler,
                               epochs=1, steps_per_epoch=3)
    assert resumed == pytest.approx([0.075, 0.1, 0.1])


def test_warmup_counts_optimizer_steps_not_batches():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.4)
    warmup = optimizers.LinearWarmup(optimizer, total_steps=4)
    batches = [(torch.randn(2, 3, 2, 2), torch.eye(5)[[0, 1]]) for _ in range(5)]
    engine.train_one_epoch(model, batches, 5, optimizer, torch.amp.GradScaler("cpu", enabled=False),
                           torch.device("cpu"), "off", accum_iter=2, warmup=warmup)
    # Groups {0,1}, {2,3}, {4}: three optimizer steps, the last at 3/4 of the rate.
    assert warmup.steps_done == 3 == optimizers.optimizer_steps_per_epoch(5, 2)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.3)


def test_the_schedule_restarts_every_t0_steps_and_each_cycle_is_the_first():
    weight = torch.nn.Parameter(torch.zeros(1))
    lr, min_lr, t0 = recipe.RECIPE["lr"], recipe.RECIPE["min_lr"], recipe.RECIPE["t0"]
    optimizer = torch.optim.Adam([weight], lr=lr)
    scheduler = optimizers.make_scheduler(optimizer, t0, min_lr)
    rates = []
    for _ in range(3 * t0 + 1):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    # By hand: step k of a cycle of t0 steps is min + (lr - min) (1 + cos(pi k / t0)) / 2, k = step mod t0.
    by_hand = [min_lr + (lr - min_lr) * (1 + math.cos(math.pi * (step % t0) / t0)) / 2 for step in range(3 * t0 + 1)]
    assert rates == pytest.approx(by_hand, rel=1e-9)
    # The recipe's cycle: 10 scheduler steps, two a epoch, so epochs 5 and 10 start at the top again.
    assert t0 == 10 and recipe.RECIPE["sched_steps_per_epoch"] == 2
    assert rates[10] == rates[20] == rates[30] == pytest.approx(lr) and rates[9] < lr / 20


class _EpochRecordingSampler:
    def __init__(self):
        self.epochs = []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)


class _FakeLoader:
    """A loader of ready (images, one-hot targets) batches whose sampler records each set_epoch."""

    def __init__(self, batches):
        self.batches, self.sampler, self.dataset = batches, _EpochRecordingSampler(), None

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def test_each_epoch_advances_the_training_loader_and_steps_the_schedule_twice(tmp_path):
    import argparse
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    batches = [(torch.randn(4, 3, 2, 2), torch.eye(5)[[0, 1, 2, 3]]) for _ in range(2)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    t0 = 6
    run = engine._TrainingRun(config={"amp": "off"}, model=model, optimizer=optimizer,
                              scheduler=optimizers.make_scheduler(optimizer, t0, 0.0),
                              scaler=torch.amp.GradScaler("cpu", enabled=False), train_loader=_FakeLoader(batches),
                              valid_loader=_FakeLoader(batches), start_epoch=0, warmup=None)
    args = argparse.Namespace(epochs=4, seed=72, quiet=True, model_arch="fake", fold=0, weights_dir=str(tmp_path),
                              accum_iter=1, sched_steps_per_epoch=2, original_defects=False)
    engine._run_epochs(run, args, torch.device("cpu"), rank=0, world_size=1)
    assert run.train_loader.sampler.epochs == [0, 1, 2, 3]
    logged = [float(row["lr"]) for row in read_log_rows(tmp_path / "fake_fold_0_log.csv")]
    # Epoch e starts at scheduler step 2 e of a 6-step cycle: 0, 2, 4, then step 6 restarts at the top.
    assert logged == pytest.approx([1e-3 * (1 + math.cos(math.pi * (2 * e % t0) / t0)) / 2 for e in range(4)],
                                   rel=1e-5)
    assert logged[3] == pytest.approx(1e-3, rel=1e-5)


def read_log_rows(path):
    import csv
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_predict_returns_probabilities_in_loader_order():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    images = torch.randn(7, 3, 2, 2)
    loader = DataLoader(TensorDataset(images), batch_size=3)
    probabilities = models.predict(model, loader, torch.device("cpu"), "fp16")
    assert probabilities.dtype == np.float32 and probabilities.shape == (7, 5)
    np.testing.assert_allclose(probabilities, torch.softmax(model(images), 1).detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-6)


# --------------------------------------------------------------------------
# Models, weights files, names
# --------------------------------------------------------------------------
def test_validation_runs_in_float32_outside_autocast(monkeypatch):
    """As the original's valid_one_epoch: no autocast context at all, float32 logits; loss and confusion by hand."""
    entered = []

    class Spy(torch.autocast):
        def __enter__(self):
            entered.append((self.device, self.fast_dtype))
            return super().__enter__()

    monkeypatch.setattr(torch, "autocast", Spy)
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, images):
            seen.append((images.dtype, torch.is_autocast_enabled("cpu")))
            return torch.log(torch.tensor([[0.7, 0.1, 0.1, 0.05, 0.05]] * images.shape[0]))

    targets = torch.eye(5)[[0, 1]]
    loss_sum, images, confusion, raw = validation.validate(Recorder(), [(torch.zeros(2, 3, 8, 8), targets)], 1,
                                                       torch.device("cpu"))
    assert entered == [] and seen == [(torch.float32, False)]
    # smoothed targets 0.9 / 0.025: row 1 -(0.9 ln 0.7 + 0.025 (2 ln 0.1 + 2 ln 0.05)), row 2 with 0.9 on ln 0.1
    row1 = -(0.9 * math.log(0.7) + 0.025 * (2 * math.log(0.1) + 2 * math.log(0.05)))
    row2 = -(0.9 * math.log(0.1) + 0.025 * (math.log(0.7) + math.log(0.1) + 2 * math.log(0.05)))
    assert images == 2 and loss_sum == pytest.approx(row1 + row2, rel=1e-6)
    assert confusion[0, 0] == 1 and confusion[1, 0] == 1 and confusion.sum() == 2
    assert np.array_equal(raw, confusion)  # five outputs: the argmax over all of them is the stage


def test_create_model_passes_img_size_where_the_architecture_takes_it():
    vit = models.create_model("test_vit", (64, 64))
    assert vit.num_classes == 5 and vit.patch_embed.img_size == (64, 64)
    assert vit(torch.zeros(2, 3, 64, 64)).shape == (2, 5)
    effnet = models.create_model("test_efficientnet", (48, 48))  # convolutional: any size
    assert effnet(torch.zeros(2, 3, 48, 48)).shape == (2, 5)
    with pytest.raises(InputError, match="unknown model architecture 'no_such_net'"):
        models.create_model("no_such_net", 64)


def test_create_model_retries_without_img_size_only_when_the_architecture_refuses_that_keyword(monkeypatch):
    import timm
    calls = []
    real_create = timm.create_model

    def create(name, **options):
        calls.append(sorted(options))
        if "img_size" in options:
            raise TypeError("VisionTransformer.__init__() got an unexpected keyword argument 'mlp_layer'")
        return real_create(name, **options)

    monkeypatch.setattr(timm, "create_model", create)
    with pytest.raises(TypeError, match="'mlp_layer'"):
        models.create_model("test_vit", (64, 64))
    assert calls == [["img_size", "num_classes"]]  # not rebuilt at the architecture's default size


def test_pretrained_weights_load_from_a_local_file_and_mismatches_are_refused(tmp_path):
    source = models.create_model("test_vit", (64, 64), num_classes=1000)
    path = tmp_path / "test_vit.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = models.create_model("test_vit", (64, 64), pretrained=path)
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert model.head.out_features == 5
    with pytest.raises(InputError, match=r"pretrained weights do not fit .*test_vit.safetensors"):
        models.create_model("test_efficientnet", (64, 64), pretrained=path)


@pytest.mark.parametrize("arch, head", [("test_vit", "head"), ("test_efficientnet", "classifier")])
@pytest.mark.parametrize("form", ["safetensors", "state dict"])
def test_a_local_file_gives_every_backbone_tensor_and_a_fresh_5_class_head(tmp_path, arch, head, form):
    torch.manual_seed(1)
    source = {k: v.contiguous() for k, v in models.create_model(arch, (64, 64), num_classes=1000).state_dict().items()}
    path = tmp_path / f"{arch}.{'safetensors' if form == 'safetensors' else 'pth'}"
    if form == "safetensors":
        safetensors.torch.save_file(source, str(path))
    else:
        torch.save(source, path)  # a plain state dict: tensors only, read with weights_only=True
    torch.manual_seed(2)
    loaded = models.create_model(arch, (64, 64), pretrained=path).state_dict()
    backbone = [name for name in source if not name.startswith(head + ".")]
    assert len(backbone) > 10 and set(loaded) == set(source)
    for name in backbone:
        torch.testing.assert_close(loaded[name], source[name], rtol=0, atol=0, msg=name)
    # the head: 5 outputs, not the file's 1000 (nor its first 5 rows)
    assert loaded[f"{head}.weight"].shape == (5, source[f"{head}.weight"].shape[1])
    assert loaded[f"{head}.bias"].shape == (5,)
    assert not torch.equal(loaded[f"{head}.weight"], source[f"{head}.weight"][:5])
    # a plain nn.Linear as the original's ViT head: weights and bias uniform in +-1/sqrt(fan_in), the bias not 0
    bound = 1 / math.sqrt(source[f"{head}.weight"].shape[1])
    assert loaded[f"{head}.weight"].abs().max() <= bound and loaded[f"{head}.bias"].abs().max() <= bound
    assert loaded[f"{head}.bias"].abs().min() > 0


@pytest.mark.slow
def test_offline_imagenet_start_fails_at_once_in_one_line(tiny_data, tmp_path):
    """An empty hub cache and a dead proxy: with hub access disabled by its environment variable, and
    without it (the network probe fails at once instead of timm retrying for about a minute)."""
    weights, cache, hub = tmp_path / "weights", tmp_path / "cache", tmp_path / "hub"
    dead = {"HF_HOME": str(hub), "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
            "NO_PROXY": "", "OMP_NUM_THREADS": "1",
            "NO_ALBUMENTATIONS_UPDATE": "1"}  # albumentations asks PyPI for its latest version unless told not to
    cases = (("main_vit_rgb.py", "test_vit", {**dead, "HF_HUB_OFFLINE": "1"}, "hub access is disabled"),
             ("main_eff.py", "test_efficientnet", {**dead, "HF_HUB_OFFLINE": "0"}, "cannot be reached"))
    for script, arch, env, reason in cases:
        started = time.perf_counter()
        result = run_script(script, "--data-root", tiny_data, "--weights-dir", weights, "--cache-dir", cache,
                            "--model-arch", arch, "--img-size", 32, "--workers", 0, "--quiet", env=env,
                            check=False, timeout=120)
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
        assert f"ImageNet weights for {arch} are not cached and" in result.stderr and reason in result.stderr
        assert "--pretrained none" in result.stderr and "--pretrained PATH" in result.stderr
        assert time.perf_counter() - started < 30  # imports and a refused probe; timm's retries took about 50 s
        assert not weights.exists() and not cache.exists()
        assert not [p for p in hub.rglob("*") if p.is_file()]  # nothing downloaded or half-cached


def test_imagenet_check_refuses_only_uncached_weights_it_cannot_fetch(monkeypatch, tmp_path):
    def created(name, **options):
        raise AssertionError("timm was asked")  # the check must refuse before timm retries

    monkeypatch.setattr(models.timm, "create_model", created)
    monkeypatch.setattr(models.huggingface_hub, "try_to_load_from_cache", lambda repo, name: None)
    monkeypatch.setattr(models.huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputError, match="not cached and hub access is disabled"):
        models.create_model("vit_base_patch16_224", (224, 224), pretrained="imagenet")
    monkeypatch.setattr(models.huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def unreachable(request, timeout):
        assert request.get_method() == "HEAD" and timeout == models.HUB_PROBE_SECONDS
        raise models.urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(models.urllib.request, "urlopen", unreachable)
    with pytest.raises(InputError, match=r"cannot be reached \(Name or service not known\)"):
        models.create_model("tf_efficientnet_b4_ns", (224, 224), pretrained="imagenet")  # a deprecated name, resolved
    # Cached weights, or a hub that answers at all: timm is asked.
    cached = tmp_path / "model.safetensors"
    cached.write_bytes(b"")
    monkeypatch.setattr(models.huggingface_hub, "try_to_load_from_cache", lambda repo, name: str(cached))
    with pytest.raises(AssertionError, match="timm was asked"):
        models.create_model("vit_base_patch16_224", (224, 224), pretrained="imagenet")
    monkeypatch.setattr(models.huggingface_hub, "try_to_load_from_cache", lambda repo, name: None)

    def answers(request, timeout):
        raise models.urllib.error.HTTPError(request.full_url, 404, "Not Found", {}, None)

    monkeypatch.setattr(models.urllib.request, "urlopen", answers)
    with pytest.raises(AssertionError, match="timm was asked"):
        models.create_model("vit_base_patch16_224", (224, 224), pretrained="imagenet")


@pytest.mark.slow
@pytest.mark.parametrize("arch, original_file", [("vit_base_patch16_224", "jx_vit_base_p16_224-80ecf9dd.pth"),
                                                 ("tf_efficientnet_b4_ns", "tf_efficientnet_b4_ns-d6313a46.pth")])
def test_imagenet_asks_timm_for_the_original_weights(monkeypatch, arch, original_file):
    """The weights timm is asked to load (loading itself stubbed: no network) are the files the original loaded."""
    import timm.models._builder

    asked = []
    monkeypatch.setattr(timm.models._builder, "load_pretrained",
                        lambda model, pretrained_cfg=None, **options: asked.append((pretrained_cfg, options)))
    # the offline check (test_imagenet_check_refuses_only_uncached_weights_it_cannot_fetch) would refuse here
    monkeypatch.setattr(models, "check_imagenet_weights_reachable", lambda arch: None)
    model = models.create_model(arch, (224, 224), pretrained="imagenet")
    (cfg, options), = asked
    assert cfg["url"].endswith("/" + original_file) and cfg["hf_hub_id"].startswith("timm/")
    assert options["num_classes"] == 5 and model.num_classes == 5


def test_weights_round_trip_and_mismatches_name_the_file(tmp_path):
    model = models.create_model("test_efficientnet", (32, 32))
    path = engine.checkpoint_path(tmp_path, "test_efficientnet", 0, 3)
    models.save_weights(model, path)
    assert path.read_bytes()[8:9] == b"{"  # safetensors: 8-byte header length, then JSON
    torch.manual_seed(123)
    other = models.create_model("test_efficientnet", (32, 32))
    models.load_weights(other, path)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(other.state_dict()[name], value)
    with pytest.raises(InputError, match=r"does not fit the model: it holds test_efficientnet .*test_efficientnet_fold_0_3\)"):
        models.load_weights(models.create_model("test_vit", (32, 32)), path)
    with pytest.raises(InputError, match=r"with 5 classes; the model is test_efficientnet with 3 classes"):
        models.load_weights(models.create_model("test_efficientnet", (32, 32), num_classes=3), path)
    with pytest.raises(InputError, match="checkpoint not found"):
        models.load_weights(model, tmp_path / "absent")


class _Trap:
    """Unpickling this would create a file: proof that a pickle was executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_checkpoints_are_refused_unopened(tmp_path):
    marker = tmp_path / "unpickled"
    for name, writer in [("zip", lambda p: torch.save({"x": _Trap(marker)}, p)),
                         ("raw", lambda p: p.write_bytes(pickle.dumps(_Trap(marker))))]:
        path = tmp_path / f"model_fold_0_{name}"
        writer(path)
        with pytest.raises(InputError, match=r"not a safetensors checkpoint .*refused"):
            models.load_weights(models.create_model("test_efficientnet", (32, 32)), path)
    assert not marker.exists()


def test_read_run_config(tmp_path):
    with pytest.raises(InputError, match=r"train it first .*test_vit_fold_0_config.json"):
        model_set.read_run_config(tmp_path, "test_vit", 0)
    path = engine.run_config_path(tmp_path, "test_vit", 0)
    path.write_text(json.dumps({"model_arch": "test_vit", "img_size": 64}))
    with pytest.raises(InputError, match="lacks num_classes"):
        model_set.read_run_config(tmp_path, "test_vit", 0)
    path.write_text("{not json")
    with pytest.raises(InputError, match="not a valid JSON configuration"):
        model_set.read_run_config(tmp_path, "test_vit", 0)
    path.write_text("[1, 2]")
    with pytest.raises(InputError, match=r"configuration is not a JSON object \(.*test_vit_fold_0_config.json\)"):
        model_set.read_run_config(tmp_path, "test_vit", 0)
    # A configuration of before --resize, --warmup-epochs and --stage-balance reads as trained then;
    # the values a configuration holds are kept.
    path.write_text(json.dumps({"model_arch": "test_vit", "img_size": 64, "num_classes": 5}))
    old = model_set.read_run_config(tmp_path, "test_vit", 0)
    assert (old["resize"], old["warmup_epochs"], old["stage_balance"]) == ("linear", 0.0, 0.0)
    path.write_text(json.dumps({"model_arch": "test_vit", "img_size": 64, "num_classes": 5, "resize": "area",
                                "stage_balance": 1.0}))
    new = model_set.read_run_config(tmp_path, "test_vit", 0)
    assert (new["resize"], new["warmup_epochs"], new["stage_balance"]) == ("area", 0.0, 1.0)


def test_devices_and_precision():
    assert models.resolve_device("cpu") == torch.device("cpu")
    assert models.resolve_amp("fp16", torch.device("cpu")) == "off"
    assert models.resolve_amp("bf16", torch.device("cuda", 0)) == "bf16"
    if not torch.cuda.is_available():
        assert models.resolve_device("auto") == torch.device("cpu")
        with pytest.raises(InputError, match="no CUDA device"):
            models.resolve_device("cuda")
    else:
        assert models.resolve_device("auto", 0) == torch.device("cuda", 0)


def _adamp_steps(optimizer_class, memory_format):
    """Three AdamP steps of a small conv net laid out in ``memory_format``; its weights after them."""
    torch.manual_seed(0)
    # No bias before the BatchNorm (as in EfficientNet): its gradient is 0 up to rounding, which
    # Adam's normalisation would blow up into layout-dependent steps.
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    model = model.to(memory_format=memory_format)
    optimizer = optimizer_class(model.parameters(), lr=1e-2, weight_decay=1e-2)
    images = torch.randn(6, 3, 12, 12).contiguous(memory_format=memory_format)
    for _ in range(3):
        optimizer.zero_grad()
        model(images).square().mean().backward()
        optimizer.step()
    return [p.detach().contiguous() for p in model.parameters()]


def test_adamp_steps_channels_last_weights_like_contiguous_ones():
    # The layout the trainer gives models on CUDA; adamp's own class fails on it.
    import adamp

    with pytest.raises(RuntimeError, match="view size is not compatible"):
        _adamp_steps(adamp.AdamP, torch.channels_last)
    reference = _adamp_steps(adamp.AdamP, torch.contiguous_format)
    for layout in (torch.contiguous_format, torch.channels_last):
        for ours, theirs in zip(_adamp_steps(optimizers.AdamP, layout), reference):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert optimizers.OPTIMIZERS["adamp"] is optimizers.AdamP


def test_a_fresh_head_from_random_initialisation_is_the_same_plain_linear_as_on_pretrained_weights():
    """timm draws an EfficientNet's classifier uniform within 1/sqrt(outputs): +-0.447 for 5 stages. From random
    initialisation the project's EfficientNet gets torch's default nn.Linear instead, uniform within
    1/sqrt(inputs) (test_efficientnet: 256 features, +-0.0625), weights and bias; the ViT keeps timm's head
    (spread 0.02, bias 0), which does not depend on the number of outputs."""
    torch.manual_seed(3)
    timms_own = timm.create_model("test_efficientnet", num_classes=5).classifier
    assert timms_own.weight.abs().max() > 0.3 and torch.all(timms_own.bias == 0)  # what is replaced
    effnet = models.create_model("test_efficientnet", (64, 64)).classifier
    bound = 1 / math.sqrt(256)
    assert effnet.in_features == 256 and effnet.out_features == 5
    assert effnet.weight.abs().max() <= bound and effnet.weight.abs().max() > 0.8 * bound
    assert effnet.bias.abs().max() <= bound and effnet.bias.abs().min() > 0
    vit = models.create_model("test_vit", (64, 64)).head
    assert torch.all(vit.bias == 0) and 0.015 < float(vit.weight.std()) < 0.025
