"""Train the ViT-B/16 sleep-stage classifier (the original's mainViTrgb.py).

The original's recipe: vit_base_patch16_224 at 224 x 224, started from
ImageNet weights (--pretrained imagenet: timm's vit_base_patch16_224.orig_in21k_ft_in1k,
the original's jx_vit_base_p16_224 file, its head replaced by a 5-class one;
--pretrained none or PATH offline), Adam (lr 1e-4, weight decay
1e-6), batch 32 accumulated over 2 batches, fp16 mixed precision on CUDA,
label smoothing 0.1, FMix, CoarseDropout and Cutout, CosineAnnealingWarmRestarts
(T_0=10, eta_min=1e-6) stepped twice per epoch, 10 epochs, fold 0 of 5,
seed 72. Writes weights/vit_base_patch16_224_fold_0_<epoch> after every
epoch (the original kept epoch 4), plus _last.pt, _config.json and _log.csv.

Data-parallel: torchrun --nproc_per_node=N main_vit_rgb.py ...
"""
from sleepstaging.training import engine
from sleepstaging import recipe
from sleepstaging.training import train_options
from sleepstaging.script_io import run_main

DEFAULTS = {**recipe.RECIPE, "model_arch": "vit_base_patch16_224", "optimizer": "adam",
            "original_classes": 5}  # the recipe: recipe.py


def main():
    args = train_options.build_parser(DEFAULTS, __doc__).parse_args()
    engine.train(args)


if __name__ == "__main__":
    run_main(main)
