"""infer_blend.py on the tiny synthetic set with tiny timm models (test_vit, test_efficientnet)."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from sleepstaging import recipe
from sleepstaging.training import engine
from sleepstaging.scoring import models
from sleepstaging.data import batch_augment
from sleepstaging.data import loaders
from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.scoring.blend import macro_f1
from sleepstaging.output_names import dump_path, valid_csv_path
from sleepstaging.scoring.inference import tta_loader
from infer_blend import main as infer_main
from conftest import run_script, write_random_checkpoints

VIT, EFF, IMG = "test_vit", "test_efficientnet", 32
SPLIT = {"folds": 3, "seed": 72, "cv": "subject"}


def test_each_model_is_the_plain_mean_over_its_checkpoints_and_tta_rounds(monkeypatch):
    """Two checkpoints x three TTA rounds: each split's probabilities are the mean of the six predictions."""
    import argparse
    from sleepstaging.scoring import inference
    rng = np.random.default_rng(0)
    rows = {"valid": 4, "test": 3}
    predictions = {(epoch, tta_round, split): rng.dirichlet(np.ones(5), n)
                   for epoch in (3, 5) for tta_round in range(3) for split, n in rows.items()}

    class Checkpoint:
        epoch = None

        def to(self, device):
            return self

    def load_weights(model, path):
        model.epoch = int(str(path).rsplit("_", 1)[1])  # <arch>_fold_<k>_<epoch>
        return model

    def tta_loader(data_root, table, rows_, img_size, batch_size, workers, tta_round, **options):
        return tta_round, table

    monkeypatch.setattr(inference.models, "create_model", lambda *a, **k: Checkpoint())
    monkeypatch.setattr(inference.models, "load_weights", load_weights)
    monkeypatch.setattr(inference, "tta_loader", tta_loader)
    monkeypatch.setattr(inference.models, "predict",
                        lambda model, loader, *a: predictions[model.epoch, loader[0], loader[1]])
    args = argparse.Namespace(amp="off", quiet=True, weights_dir="w", fold=0, tta=3, data_root="d", batch_size=2,
                              workers=0, no_cache=True, cache_dir=None)
    inputs = {split: (split, np.arange(n)) for split, n in rows.items()}
    result = inference.model_probabilities("a", [3, 5], {"img_size": [8, 8], "resize": "area"}, args, inputs,
                                             torch.device("cpu"))
    for split in rows:
        by_hand = sum(predictions[epoch, r, split] for epoch in (3, 5) for r in range(3)) / 6
        np.testing.assert_allclose(result[split], by_hand, rtol=1e-6)
        assert result[split].dtype == np.float32


@pytest.fixture(scope="module")
def weights(tiny_data, tmp_path_factory):
    """Checkpoints of epochs 0 and 1 of both tiny models (fresh random weights) and their configs.

    The configurations say the ViT was trained with ``--stage-balance 1`` and the EfficientNet with 0.5
    (inference does not depend on it; it records it).
    """
    folder = write_random_checkpoints(tiny_data, tmp_path_factory.mktemp("weights"), (VIT, EFF), (0, 1), IMG, SPLIT)
    for arch, stage_balance in ((VIT, 1.0), (EFF, 0.5)):
        path = engine.run_config_path(folder, arch, 0)
        path.write_text(json.dumps(dict(json.loads(path.read_text()), stage_balance=stage_balance)))
    return folder


def by_hand(weights, arch, epoch, image_path) -> np.ndarray:
    """Softmax of one checkpoint on one image, read and normalised without the project's loader."""
    model = models.load_weights(models.create_model(arch, (IMG, IMG)), engine.checkpoint_path(weights, arch, 0, epoch))
    image = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (IMG, IMG), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    image = (image - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    batch = torch.from_numpy(image.transpose(2, 0, 1)[None].astype(np.float32))
    with torch.no_grad():
        return torch.softmax(model.eval()(batch), dim=1)[0].numpy()


def infer(tiny_data, weights, out, *args, check=True):
    # one torch thread: on a shared 2-core machine more threads only fight
    return run_script("infer_blend.py", "--data-root", tiny_data, "--weights-dir", weights, "--out", out,
                      "--vit-arch", VIT, "--eff-arch", EFF, "--workers", 0, "--batch-size", 16, *args, check=check,
                      env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def inferred(tiny_data, weights, tmp_path_factory):
    """One run: ViT epochs 0 and 1 averaged, EfficientNet epoch 1, one TTA round."""
    out = tmp_path_factory.mktemp("inferred") / "outputs"
    return out, infer(tiny_data, weights, out, "--vit-epochs", 0, 1, "--eff-epochs", 1)


@pytest.mark.slow
def test_dumps_rows_classes_and_names(tiny_data, weights, inferred):
    out, result = inferred
    test = psg_layout.read_epoch_csv(tiny_data / psg_layout.TEST_CSV, with_labels=False)
    train = psg_layout.read_epoch_csv(tiny_data / psg_layout.TRAIN_CSV, with_labels=True)

    vit_test = np.load(out / "test_vit_fold_0_[0, 1].npy")
    eff_test = np.load(out / "test_efficientnet_fold_0_[1].npy")
    for array in (vit_test, eff_test):
        assert array.shape == (len(test), 5) and array.dtype == np.float32
        np.testing.assert_allclose(array.sum(axis=1), 1, atol=1e-5)
    # rows in test CSV order; the ViT's is the mean of epochs 0 and 1
    for row in (0, len(test) // 2, len(test) - 1):
        image = psg_layout.image_path(tiny_data, test.recording_ids[row], test.idnums[row])
        expected = (by_hand(weights, VIT, 0, image) + by_hand(weights, VIT, 1, image)) / 2
        np.testing.assert_allclose(vit_test[row], expected, atol=2e-4)
        np.testing.assert_allclose(eff_test[row], by_hand(weights, EFF, 1, image), atol=2e-4)

    # validation rows: fold 0 of the training split, in training CSV order
    folds = loaders.make_folds(train, n_folds=3, seed=72, cv="subject")
    rows = np.flatnonzero(folds == 0)
    valid = psg_layout.read_epoch_csv(valid_csv_path(out, 0), with_labels=True)
    assert valid.idnums == [train.idnums[r] for r in rows]
    assert valid.labels.tolist() == train.labels[rows].tolist()
    vit_valid = np.load(dump_path(out, VIT, 0, [0, 1], "valid"))
    eff_valid = np.load(dump_path(out, EFF, 0, [1], "valid"))
    assert vit_valid.shape == eff_valid.shape == (len(rows), 5)
    image = psg_layout.image_path(tiny_data, train.recording_ids[rows[3]], train.idnums[rows[3]])
    np.testing.assert_allclose(eff_valid[3], by_hand(weights, EFF, 1, image), atol=2e-4)

    # the printed validation scores are those of the dumps
    labels = valid.labels
    average = (vit_valid + eff_valid) / 2
    for name, p in ((VIT, vit_valid), (EFF, eff_valid), ("50/50 average", average)):
        predicted = p.argmax(axis=1)
        assert (f"fold 0 {name}: validation accuracy {np.mean(predicted == labels):.5f}, "
                f"macro-F1 {macro_f1(labels, predicted):.5f}") in result.stdout
    record = json.loads((out / "infer_blend_fold_0.json").read_text())
    assert record["vit_epochs"] == [0, 1] and record["stage_balance"] == [1.0, 0.5]

    # the dumps feed blend.py as they are
    run_script("blend.py", "--out", out, "--tune", "--vit-arch", VIT, "--eff-arch", EFF,
               "--vit-epochs", 0, 1, "--eff-epochs", 1, "--quiet")
    tuned = json.loads((out / "blend_tune.json").read_text())
    run_script("blend.py", "--data-root", tiny_data, "--out", out, "--vit-arch", VIT, "--eff-arch", EFF,
               "--vit-epochs", 0, 1, "--eff-epochs", 1, "--method", tuned["method"], "--ens-weight", tuned["ens_weight"])
    blend_csv = out / f"filesblend_{tuned['method']}_[0, 1]_[1].csv"
    lines = blend_csv.read_text().splitlines()
    assert len(lines) == len(test) and set(lines) <= set(psg_layout.STAGES)
    # The hmm reads the models' --stage-balance from that record; these two differ, so it asks for one.
    post = run_script("postprocess.py", "--data-root", tiny_data, "--in", blend_csv, "--out", out / "post.csv",
                      "--method", "hmm", "--no-recordings", check=False)
    assert (post.returncode, post.stderr) == (2, (
        "error: the models were trained with different --stage-balance (1.0, 0.5), so their blend has no one set "
        f"of training stage shares for the hmm; choose one with --stage-balance ({out / 'infer_blend_fold_0.json'})\n"))
    assert not (out / "post.csv").exists()


def round_images(tiny_data, table, tta_round, cache_dir) -> torch.Tensor:
    """The test images of one TTA round as infer_blend.py reads them (float32, table order)."""
    loader = tta_loader(tiny_data, table, np.arange(len(table)), (IMG, IMG), 16, 0, tta_round, False, cache_dir)
    return torch.cat([batch_augment.finish_batch(batch, torch.device("cpu")) for batch in loader])


def whole_hole_cover(zero: torch.Tensor) -> torch.Tensor:
    """The pixels of ``zero`` (n, S, S) covered by holes lying wholly in it.

    Holes: CoarseDropout's 8 x 8 squares inside the image, and Cutout's,
    corners 0 .. S - 4, clipped to the image at the bottom and right.
    """
    covered = torch.zeros_like(zero)
    size, hole = zero.shape[-1], recipe.DROPOUT_HOLE_PIXELS
    for top in range(size - hole // 2 + 1):
        for left in range(size - hole // 2 + 1):
            window = (slice(None), slice(top, top + hole), slice(left, left + hole))
            covered[window] |= zero[window].all(dim=2).all(dim=1)[:, None, None]
    return covered


@pytest.mark.slow
def test_tta_rounds_average_plain_and_dropout_views(tiny_data, weights, inferred, tmp_path):
    tta = tmp_path / "tta"
    infer(tiny_data, weights, tta, "--vit-epochs", 0, "--eff-epochs", 1, "--tta", 2)
    one = np.load(inferred[0] / "test_efficientnet_fold_0_[1].npy").astype(np.float64)
    two = np.load(tta / "test_efficientnet_fold_0_[1].npy").astype(np.float64)
    dropout_round = 2 * two - one  # the second round alone
    assert not np.allclose(dropout_round, one, atol=1e-4)  # dropouts change what the model sees

    # Round 2's tensors: the plain view except inside whole dropout holes, which are 0 in every channel.
    table = loaders.read_test_table(tiny_data)
    plain = round_images(tiny_data, table, 0, tmp_path / "cache")
    dropped = round_images(tiny_data, table, 1, tmp_path / "cache")
    assert plain.shape == dropped.shape == (len(table), 3, IMG, IMG)
    zero = (dropped == 0).all(dim=1)
    assert not (plain == 0).all(dim=1).any()  # a normalised pixel is never 0: zeros are holes
    torch.testing.assert_close(torch.where(zero[:, None], plain, dropped), plain, rtol=0, atol=0)
    torch.testing.assert_close(whole_hole_cover(zero), zero, rtol=0, atol=0)
    holes_per_image = zero.sum(dim=(1, 2))
    assert holes_per_image.max() <= 2 * 8 * 64
    assert 0.6 <= (holes_per_image > 0).float().mean() <= 0.9  # at least one of two dropouts, p = 0.5 each: 3/4

    # ... and its probabilities are the model's softmax on those tensors.
    model = models.load_weights(models.create_model(EFF, (IMG, IMG)), engine.checkpoint_path(weights, EFF, 0, 1))
    with torch.no_grad():
        softmax = torch.softmax(model.eval()(dropped), dim=1).numpy()
    np.testing.assert_allclose(dropout_round, softmax, rtol=0, atol=2e-4)


@pytest.mark.slow
def test_bad_checkpoints_end_with_one_line_and_exit_2(tiny_data, weights, tmp_path):
    result = infer(tiny_data, weights, tmp_path / "out", "--vit-epochs", 5, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "no checkpoint of epoch 5" in result.stderr and "main_vit_rgb.py" in result.stderr
    assert not (tmp_path / "out").exists()

    mixed = tmp_path / "weights"
    shutil.copytree(weights, mixed)

    def infer_error(*args):  # in process: the same main, without loading torch again
        with pytest.raises(script_io.InputError) as error:
            infer_main([str(a) for a in ("--data-root", tiny_data, "--weights-dir", mixed, "--out", tmp_path / "o",
                                         "--vit-arch", VIT, "--eff-arch", EFF, "--workers", 0, "--quiet", *args)])
        return str(error.value)

    # an EfficientNet checkpoint under the ViT's name
    shutil.copy(engine.checkpoint_path(mixed, EFF, 0, 0), engine.checkpoint_path(mixed, VIT, 0, 7))
    assert "does not fit" in infer_error("--vit-epochs", 7, "--eff-epochs", 0)
    assert "--tta must be at least 1" in infer_error("--tta", 0)
    assert not (tmp_path / "o").exists()
    with pytest.raises(script_io.InputError, match="make_synthetic.py"):
        infer_main(["--data-root", str(tmp_path / "none"), "--quiet"])


# --------------------------------------------------------------------------
# Scoring needs only what scoring needs
# --------------------------------------------------------------------------
@pytest.mark.slow
def test_test_only_inference_without_a_training_csv(tiny_data, weights, inferred, tmp_path):
    """A data root with only the test CSV and its images: the test dumps alone, equal to the full run's rows."""
    test = psg_layout.read_epoch_csv(tiny_data / psg_layout.TEST_CSV, with_labels=False)
    first = test.recording_ids[0]
    rows = [r for r, recording in enumerate(test.recording_ids) if recording == first][:10]
    root = tmp_path / "DATA"
    script_io.write_csv_rows(root / psg_layout.TEST_CSV, [(first, test.idnums[r]) for r in rows])
    (root / first).mkdir()
    for r in rows:
        shutil.copy(tiny_data / first / test.idnums[r], root / first / test.idnums[r])
    out = tmp_path / "outputs"
    result = infer(root, weights, out, "--vit-epochs", 0, 1, "--eff-epochs", 1)
    skipped = [line for line in result.stdout.splitlines() if line.startswith("validation dumps skipped")]
    assert skipped == [f"validation dumps skipped: no training CSV ({root / psg_layout.TRAIN_CSV}); "
                       f"writing the test dumps only"]
    full = np.load(inferred[0] / "test_vit_fold_0_[0, 1].npy")
    np.testing.assert_allclose(np.load(out / "test_vit_fold_0_[0, 1].npy"), full[rows], atol=1e-5)
    assert sorted(p.name for p in out.iterdir()) == ["infer_blend_fold_0.json", "test_efficientnet_fold_0_[1].npy",
                                                     "test_vit_fold_0_[0, 1].npy"]
    # blend.py and postprocess.py work on it; --tune says in one line that it needs the validation dumps
    models = ("--vit-arch", VIT, "--eff-arch", EFF, "--vit-epochs", 0, 1, "--eff-epochs", 1)
    run_script("blend.py", "--data-root", root, "--out", out, *models, "--quiet")
    blend_csv = out / "filesblend_sqrt_[0, 1]_[1].csv"
    run_script("postprocess.py", "--data-root", root, "--in", blend_csv, "--out", out / "files_post.csv")
    assert len((out / "files_post.csv").read_text().splitlines()) == len(rows)
    tune = run_script("blend.py", "--data-root", root, "--out", out, *models, "--tune", check=False)
    assert tune.returncode == 2 and tune.stderr.count("\n") == 1 and "no validation rows" in tune.stderr
    hmm = run_script("postprocess.py", "--data-root", root, "--in", blend_csv, "--out", tmp_path / "hmm.csv",
                     "--method", "hmm", "--stage-balance", 1, check=False)  # the models' two values: one chosen
    assert hmm.returncode == 2 and hmm.stderr.count("\n") == 1 and "no training CSV" in hmm.stderr
    # a training CSV too small for the models' folds: the reason in one line, the test dumps all the same
    script_io.write_csv_rows(root / psg_layout.TRAIN_CSV, [(first, test.idnums[r], "N2") for r in rows[:2]])
    result = infer(root, weights, tmp_path / "small", "--vit-epochs", 0, "--eff-epochs", 1)
    assert "validation dumps skipped: --cv subject needs at least 3 recordings for 3 folds" in result.stdout
    assert dump_path(tmp_path / "small", EFF, 0, [1]).is_file()


@pytest.mark.slow
def test_validation_skipped_when_the_fold_is_not_the_models(tiny_data, weights, inferred, tmp_path, capsys):
    """Another split or another training CSV: one line says why, the test dumps are still written (and equal)."""
    changed = tmp_path / "weights"
    shutil.copytree(weights, changed)
    path = engine.run_config_path(changed, VIT, 0)
    path.write_text(json.dumps(dict(json.loads(path.read_text()), valid_recordings=["elsewhere"])))
    out = tmp_path / "o"
    shutil.copytree(inferred[0], out)  # an earlier run's outputs, its validation dumps among them
    stale = dump_path(out, EFF, 0, [1], "valid")
    assert stale.is_file()
    infer_main([str(a) for a in ("--data-root", tiny_data, "--weights-dir", changed, "--out", out,
                                 "--vit-arch", VIT, "--eff-arch", EFF, "--vit-epochs", 0, "--eff-epochs", 1,
                                 "--workers", 0, "--quiet")])
    printed = capsys.readouterr().out
    assert "validation dumps skipped: fold 0 of" in printed and "no longer holds the recordings" in printed
    assert f"removed the validation dumps of an earlier run, which do not belong to these test dumps: {stale}" \
        in printed and not stale.exists()  # blend.py --tune cannot tune on them
    np.testing.assert_allclose(np.load(dump_path(out, EFF, 0, [1])),
                               np.load(inferred[0] / "test_efficientnet_fold_0_[1].npy"), atol=1e-5)

    path = engine.run_config_path(changed, EFF, 0)
    path.write_text(json.dumps(dict(json.loads(path.read_text()), seed=1)))
    infer_main([str(a) for a in ("--data-root", tiny_data, "--weights-dir", changed, "--out", tmp_path / "p",
                                 "--vit-arch", VIT, "--eff-arch", EFF, "--vit-epochs", 0, "--eff-epochs", 1,
                                 "--workers", 0, "--quiet")])
    assert "validation dumps skipped: the two models were trained on different splits" in capsys.readouterr().out
    assert dump_path(tmp_path / "p", VIT, 0, [0]).is_file()
