"""Train the EfficientNet-B4 (Noisy Student) sleep-stage classifier (the original's mainEff.py).

The original's recipe: tf_efficientnet_b4_ns at 224 x 224, started from
ImageNet (Noisy Student) weights (--pretrained imagenet: timm's
tf_efficientnet_b4.ns_jft_in1k, the original's file; --pretrained none or PATH
offline) with a fresh 5-class head (the original kept the ImageNet file's
1000-class classifier, trained it against the stages and folded its outputs
into 5: --original-defects), AdamP (lr 1e-4, weight decay
1e-6), batch 32 accumulated over 2 batches, fp16 mixed precision on CUDA,
label smoothing 0.1, FMix, CoarseDropout and Cutout, CosineAnnealingWarmRestarts
(T_0=10, eta_min=1e-6) stepped twice per epoch, 10 epochs, fold 0 of 5,
seed 72. Writes weights/tf_efficientnet_b4_ns_fold_0_<epoch> after every
epoch (the original kept epoch 1), plus _last.pt, _config.json and _log.csv.

Data-parallel: torchrun --nproc_per_node=N main_eff.py ...
"""
from sleepstaging.training import engine
from sleepstaging import recipe
from sleepstaging.training import train_options
from sleepstaging.script_io import run_main

DEFAULTS = {**recipe.RECIPE, "model_arch": "tf_efficientnet_b4_ns", "optimizer": "adamp",
            "original_classes": 1000}  # the recipe: recipe.py


def main():
    args = train_options.build_parser(DEFAULTS, __doc__).parse_args()
    engine.train(args)


if __name__ == "__main__":
    run_main(main)
