"""The original's training recipe, on one screen.

Every training and augmentation setting of SleepingDragon's two trainers
(``mainViTrgb.py``, ``mainEff.py`` and their ``loaderViTrgb.py``), with the
original's value beside each where the project's default differs. The
trainers take :data:`RECIPE` as their defaults (each adds its architecture
and optimizer), the loaders and the batch augmentation the constants below
it; nothing else restates them. Torch-free: benches and tests read it
without loading a model.

The trainers' command line (``train_options.build_parser``) can change the
settings in :data:`RECIPE`; the constants after it are fixed.
"""
from __future__ import annotations

# --------------------------------------------------------------------------
# The trainers' defaults (each an option of main_vit_rgb.py and main_eff.py)
# --------------------------------------------------------------------------
RECIPE = dict(
    # input: 224 x 224, albumentations' Resize (cv2.INTER_LINEAR), from timm's ImageNet weights
    img_size=224, resize="linear", pretrained="imagenet",
    input_norm="imagenet",  # the model sees the ImageNet-normalised pixels (see --input-norm)
    # optimiser (Adam for the ViT, AdamP for the EfficientNet: each trainer adds its own)
    lr=1e-4, min_lr=1e-6, weight_decay=1e-6,
    batch_size=32, valid_batch_size=32, accum_iter=2,  # an optimizer step every 2 batches of 32
    # schedule: CosineAnnealingWarmRestarts(T_0=10, T_mult=1), stepped after training and after validation
    epochs=10,  # the original: 100 in the trainers' CFG, 10 in the loader's; it kept epochs 4 and 1
    t0=10, sched_steps_per_epoch=2,
    warmup_epochs=0.0,  # no warm-up
    stage_balance=0.0,  # every training row once per epoch, shuffled
    # folds: the original split single epochs with StratifiedKFold (--cv stratified); here by recording
    folds=5, fold=0, cv="subject", seed=72,
    # batch augmentation: FMix on (its masks as the original drew them), CutMix off, the two hole dropouts on
    no_fmix=False, fmix_spectrum="original", cutmix=False, no_holes=False,
    # the original's three training defects, restored on request (--original-defects): integer mixed
    # targets, the EfficientNet's 1000-class classifier, summed accumulated losses
    original_defects=False,
    # how the run goes (not what it learns)
    amp="fp16", device="auto", workers=4,
    data_root="DATA", weights_dir="weights", cache_dir="cache", no_cache=False,  # the original: /DATA, ./
)
# What each trainer adds to RECIPE: its architecture, its optimizer, and the outputs of the classifier
# the original trained (the ViT's head replaced by 5 outputs; the EfficientNet's 1000 ImageNet
# classes kept, a defect --original-defects restores).
TRAINER_KEYS = ("model_arch", "optimizer", "original_classes")

# --------------------------------------------------------------------------
# Fixed settings (no option)
# --------------------------------------------------------------------------
T_MULT = 1  # every cosine cycle as long as the first
LABEL_SMOOTHING = 0.1  # SmoothCrossEntropyLoss(smoothing=0.1): 0.9 on the stage, 0.025 on each other
# ImageNet statistics, as the original normalised with (albumentations Normalize, max_pixel_value 255).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# --input-norm data: the training images' own pixel statistics, from this many training rows spread
# evenly over them (enough for three decimals of the mean and spread of these mostly black images)
INPUT_STATISTICS_ROWS = 2000
# CoarseDropout(p=0.5) and Cutout(p=0.5) with the albumentations 1.0 defaults the original ran:
# 8 holes of 8 x 8 pixels each, filled with 0 after normalisation. CoarseDropout's holes lie inside
# the image; Cutout's are placed by a centre anywhere in it and clipped at the bottom and right.
DROPOUT_HOLES = 8
DROPOUT_HOLE_PIXELS = 8
DROPOUT_PROBABILITY = 0.5
# FMix on half of the samples: lambda ~ Beta(1, 1) clipped to [0.6, 0.7], decay power 3,
# max_soft=True (read as 1.0), the partner a uniformly drawn training row.
FMIX_PROBABILITY = 0.5
FMIX_ALPHA = 1.0
FMIX_LAMBDA_RANGE = (0.6, 0.7)
FMIX_DECAY_POWER = 3.0
FMIX_MAX_SOFT = 1.0
# CutMix (off by default, as in the original): lambda ~ Beta(1, 1) clipped to [0.3, 0.4].
CUTMIX_PROBABILITY = 0.5
CUTMIX_ALPHA = 1.0
CUTMIX_LAMBDA_RANGE = (0.3, 0.4)

# --------------------------------------------------------------------------
# Scoring: the original's models, inference, blend and post-processing. infer_blend.py, blend.py,
# postprocess.py and model_set.py take these as their defaults; stage_edf.py where neither its command
# line nor a model set says otherwise.
# --------------------------------------------------------------------------
ORIGINAL_MODELS = dict(fold=0, vit_arch="vit_base_patch16_224", eff_arch="tf_efficientnet_b4_ns",
                       vit_epochs=[4], eff_epochs=[1])  # the checkpoints the original kept
ORIGINAL_BLEND = dict(method="sqrt", ens_weight=0.06, power=0.25, dump_scale="original")  # blend.py's
INFERENCE = dict(tta=1, batch_size=32)  # inferblend.py's CFG: one round, batches of 32
POSTPROCESS = "rules"  # the original's context rules
