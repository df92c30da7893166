"""recipe.py: the trainers' defaults and the fixed settings are the original's; --resume checks the recipe's keys."""
from __future__ import annotations

import subprocess
import sys

import main_eff
import main_vit_rgb
from sleepstaging import recipe
from sleepstaging.training import train_options
from conftest import REPO

# The original's training settings (mainViTrgb.py / mainEff.py), written out by hand.
SHARED = dict(img_size=224, pretrained="imagenet", input_norm="imagenet", lr=1e-4, min_lr=1e-6, weight_decay=1e-6,
              batch_size=32, valid_batch_size=32, accum_iter=2, epochs=10, t0=10, sched_steps_per_epoch=2, folds=5,
              fold=0, cv="subject", seed=72, workers=4, amp="fp16", device="auto", data_root="DATA", weights_dir="weights",
              cache_dir="cache", fmix_spectrum="original", no_fmix=False, cutmix=False, no_holes=False, no_cache=False,
              resize="linear", warmup_epochs=0.0, stage_balance=0.0,  # cv2.INTER_LINEAR, no warm-up, each row once
              original_defects=False)  # the corrected recipe; --original-defects restores the original's three


def test_each_trainer_is_the_recipe_with_its_model_and_optimizer():
    # the original replaced the ViT's head (5 outputs) and kept the EfficientNet's 1000 ImageNet classes
    assert main_vit_rgb.DEFAULTS == {**SHARED, "model_arch": "vit_base_patch16_224", "optimizer": "adam",
                                     "original_classes": 5}
    assert main_eff.DEFAULTS == {**SHARED, "model_arch": "tf_efficientnet_b4_ns", "optimizer": "adamp",
                                 "original_classes": 1000}


def test_the_parsed_defaults_are_the_recipe():
    args = vars(train_options.build_parser(main_eff.DEFAULTS, "").parse_args([]))
    assert {key: args[key] for key in main_eff.DEFAULTS} == main_eff.DEFAULTS


def test_resume_checks_every_recipe_key_but_length_speed_and_places():
    assert set(train_options.RESUME_KEYS) == {
        "model_arch", "img_size", "optimizer", "fold", "folds", "cv", "seed", "batch_size", "accum_iter", "lr",
        "min_lr", "weight_decay", "t0", "sched_steps_per_epoch", "no_fmix", "fmix_spectrum", "cutmix", "no_holes",
        "pretrained", "input_norm", "no_cache", "resize", "warmup_epochs", "stage_balance", "original_defects"}
    assert len(train_options.RESUME_KEYS) == len(set(train_options.RESUME_KEYS))


def test_the_fixed_settings_are_the_originals():
    assert recipe.T_MULT == 1 and recipe.LABEL_SMOOTHING == 0.1
    assert (recipe.IMAGENET_MEAN, recipe.IMAGENET_STD) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert (recipe.DROPOUT_HOLES, recipe.DROPOUT_HOLE_PIXELS, recipe.DROPOUT_PROBABILITY) == (8, 8, 0.5)
    assert (recipe.FMIX_PROBABILITY, recipe.FMIX_ALPHA, recipe.FMIX_LAMBDA_RANGE, recipe.FMIX_DECAY_POWER,
            recipe.FMIX_MAX_SOFT) == (0.5, 1.0, (0.6, 0.7), 3.0, 1.0)
    assert (recipe.CUTMIX_PROBABILITY, recipe.CUTMIX_ALPHA, recipe.CUTMIX_LAMBDA_RANGE) == (0.5, 1.0, (0.3, 0.4))
    assert recipe.RECIPE == SHARED


def test_the_recipe_is_one_screen_without_torch():
    assert len((REPO / "sleepstaging" / "recipe.py").read_text().splitlines()) <= 150
    loaded = subprocess.run([sys.executable, "-c", "import sys; from sleepstaging import recipe; print('torch' in sys.modules)"], cwd=REPO,
                            capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "False"
