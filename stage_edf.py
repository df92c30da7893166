"""Score new recordings: unscored EDF in; hypnogram, sleep statistics and annotations out.

    python stage_edf.py --edf NIGHT.edf|FOLDER --weights-dir weights --out scored/

The whole flow on recordings no one has scored yet, one step after the
other, each step being the script's own ``main()`` with the options below
(so the figures are those the layout route gives on the same images). The
models, their kept epochs, the blend and the post-processing come from the
weights folder's model set (``model_set.json``, written by
``model_set.py``), each flag overriding it; without one, the original's
models, blend and rules. The model set and the checkpoints are checked
before anything is rendered.

1. ``render_edf.py --split test --unscored``: every whole 30-s epoch of each
   EDF (a folder is searched recursively) drawn into a data root, with the
   recording's timing sidecar (start date and clock time from the header),
   through the montage that fits its channels (``--montage auto``);
2. ``infer_blend.py``: the two models' test probabilities (there is no
   training CSV, so no validation dumps);
3. ``blend.py``: the blend (the model set's, or ``--method``/``--ens-weight``/
   ``--power``/``--dump-scale``, or a ``blend_tune.json`` with ``--from-tune``);
4. ``postprocess.py``: context post-processing (``--postprocess``: the
   model set's hmm, with the stage transitions counted from the models'
   training nights and the transition weight chosen on their validation
   nights; the original's rules; the hmm with transitions counted from
   ``--train-csv``; or none) and, per recording, the hypnogram table, EDF+
   annotations, figure and sleep statistics.

Writes into ``--out``: ``<ID>/<ID>-hypnogram.csv``, ``<ID>/<ID>-Hypnogram.edf``,
``<ID>/<ID>-hypnogram.png`` (not with ``--no-figures``), ``<ID>/<ID>-statistics.json`` for each recording,
``sleep_statistics.csv`` (one row per recording), ``stage_edf.json`` (this
run's resolved configuration), ``stage_edf.log`` (what the steps printed) and
``work/`` (the rendered data root ``work/DATA`` and the flow's files in
``work/outputs``: dumps, blend, ``files_post.csv``). Everything is built in a
hidden folder beside ``--out`` and renamed into place at the end, so a failed
run leaves nothing behind. An ``--out`` that already holds files is refused;
``--overwrite`` replaces it when it is an earlier ``stage_edf.py`` result.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import time
from pathlib import Path

from tqdm import tqdm

import blend
import model_set
import postprocess
import psg_layout
from output_names import blend_csv_path, submission_path
from psg_layout import InputError, where

# fmt: off
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--edf", type=Path, required=True, help="one EDF recording, or a folder searched recursively")
parser.add_argument("--weights-dir", default=model_set.parser.get_default("weights_dir"),
                    help="checkpoints and their training configurations")
parser.add_argument("--out", type=Path, required=True, help="folder for the results (must not exist or be empty)")
parser.add_argument("--overwrite", action="store_true", help="replace an earlier stage_edf.py result in --out")
parser.add_argument("--montage", default="auto",
                    help="auto (per recording, the first built-in montage whose channels it has), sleep-edf, shhs, "
                         "synthetic, or a JSON montage file")
model_set.add_model_options(parser)  # --fold, --vit-arch, --eff-arch, --vit-epochs, --eff-epochs
parser.add_argument("--tta", type=int, default=argparse.SUPPRESS,
                    help="TTA rounds per checkpoint (default: infer_blend.py's, 1)")
parser.add_argument("--batch-size", type=int, default=argparse.SUPPRESS,
                    help="images per inference batch (default: infer_blend.py's)")
parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA when available")
parser.add_argument("--amp", default="off", choices=("fp16", "bf16", "off"), help="mixed precision on CUDA")
parser.add_argument("--method", default=argparse.SUPPRESS,
                    help=f"blend method: {', '.join(blend.METHODS)} (default: the model set's, else "
                         f"{blend.parser.get_default('method')}, the original's)")
parser.add_argument("--ens-weight", type=float, default=argparse.SUPPRESS,
                    help=f"blend weight w of model 1 (ViT), in [0, 1] (default: the model set's, else "
                         f"{blend.parser.get_default('ens_weight')})")
parser.add_argument("--power", type=float, default=argparse.SUPPRESS,
                    help=f"exponent of 'square' (default: the model set's, else {blend.parser.get_default('power')})")
parser.add_argument("--dump-scale", choices=blend.DUMP_SCALES, default=argparse.SUPPRESS,
                    help="original: the original's row scales before the blend formula (as blend.py); unit: plain "
                         f"weights (default: the model set's, else {blend.parser.get_default('dump_scale')})")
parser.add_argument("--from-tune", type=Path, default=None, metavar="JSON",
                    help="blend as a blend_tune.json says (method, ens-weight, power, dump scale; blend.py --from-tune)")
parser.add_argument("--postprocess", default=argparse.SUPPRESS,
                    help="rules, hmm or none (default: the model set's, hmm with its recorded transitions and "
                         "weight; else rules, the original's)")
parser.add_argument("--train-csv", type=Path, default=None,
                    help="hmm: labelled epochs (ID,IDnum,label) whose stage transitions it counts instead of "
                         "the model set's (new recordings have no labels)")
parser.add_argument("--no-figures", action="store_true", help="no hypnogram figures (saves seconds per recording)")
parser.add_argument("--workers", type=int, default=2,
                    help="recordings rendered in parallel, and the inference's DataLoader workers")
parser.add_argument("--quiet", action="store_true", help="no progress bar")
# fmt: on

MARKER = "stage_edf.json"
LOG = "stage_edf.log"
STEPS = ("render", "infer", "blend", "post-process")


def resolve_settings(args) -> dict:
    """Fill the models, blend and post-processing a command line left out; return where each came from.

    Flags win; then the weights folder's model set (``model_set.json``); then
    the original's (blend.py's and postprocess.py's defaults). Reads no image.
    """
    record = model_set.read_model_set(args.weights_dir)
    sources = {"models": model_set.resolve_models(args, record)}
    if args.from_tune is not None:  # the blend step reads the file itself; its tta is the blend's, not inference's
        tuned = blend.read_tune_json(args.from_tune)
        args.method, args.ens_weight, args.power, args.dump_scale = (
            tuned["method"], tuned["ens_weight"], tuned["power"], tuned["dump_scale"])
    blend_given = [key for key in model_set.BLEND_KEYS if hasattr(args, key)]
    for key in model_set.BLEND_KEYS:
        if not hasattr(args, key):
            setattr(args, key, blend.parser.get_default(key) if record is None else record["blend"][key])
    sources["blend"] = (str(args.from_tune) if args.from_tune is not None else
                        "the command line" if len(blend_given) == len(model_set.BLEND_KEYS) else
                        "the original's" if record is None else record["path"])
    if not hasattr(args, "postprocess"):
        args.postprocess = postprocess.parser.get_default("method") if record is None else record["postprocess"]
        sources["postprocess"] = "the original's rules (no model set)" if record is None else record["path"]
    else:
        sources["postprocess"] = "--postprocess"
    args.model_set = args.weights_dir if record is not None and args.postprocess == "hmm" else None
    return sources


def check_args(args) -> None:
    """Refuse settings no run can use, before anything is rendered."""
    blend.check_blend_settings(args.method, args.ens_weight, args.power)
    if args.postprocess not in postprocess.POSTPROCESS_METHODS:
        raise InputError(f"unknown post-processing method {args.postprocess!r} (expected rules, hmm or none)")
    if args.postprocess == "hmm" and args.train_csv is None and args.model_set is None:
        raise InputError(f"--postprocess hmm counts its stage transitions from labelled epochs: the weights folder "
                         f"has no model set record (model_set.py writes it) and new recordings have no labels; "
                         f"name labelled epochs with --train-csv (such as the trainset-for_user.csv the models "
                         f"were trained on), or use rules or none {where(args.weights_dir)}")
    if args.train_csv is not None and args.postprocess != "hmm":
        raise InputError(f"--train-csv is read by --postprocess hmm only, not by --postprocess {args.postprocess}")
    if args.train_csv is not None and not args.train_csv.is_file():
        raise InputError(f"--train-csv not found {where(args.train_csv)}")
    if args.workers < 1:
        raise InputError(f"--workers must be 1 or more, got {args.workers}")
    if not args.edf.exists():
        raise InputError(f"--edf not found {where(args.edf)}")


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` that holds anything, unless ``overwrite`` and it is an earlier result of this script."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out is a file, not a folder {where(out)}")
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise InputError(f"--out already holds results; choose another folder or add --overwrite {where(out)}")
    if not (out / MARKER).is_file():
        raise InputError(f"--out holds files that stage_edf.py did not write ({MARKER} is missing); "
                         f"--overwrite replaces only its own results {where(out)}")


def step_arguments(args, data: Path, outputs: Path, results: Path) -> dict:
    """The command line of each step, as one would type it for the layout route."""
    # The heavy steps (torch, MNE) are imported only once the settings and the weights have been checked.
    import infer_blend
    import render_edf

    models = ["--vit-arch", args.vit_arch, "--eff-arch", args.eff_arch, "--fold", args.fold,
              "--vit-epochs", *args.vit_epochs, "--eff-epochs", *args.eff_epochs]
    blend_csv = blend_csv_path(outputs, args.method, args.vit_epochs, args.eff_epochs)
    blend_settings = (["--from-tune", args.from_tune] if args.from_tune is not None else
                      ["--method", args.method, "--ens-weight", args.ens_weight, "--power", args.power,
                       "--dump-scale", args.dump_scale])
    steps = {
        "render": (render_edf.main, ["--edf", args.edf, "--out", data, "--split", "test", "--unscored",
                                     "--montage", args.montage, "--workers", args.workers, "--quiet"]),
        "infer": (infer_blend.main, ["--data-root", data, "--weights-dir", args.weights_dir, "--out", outputs,
                                     *models, *(["--tta", args.tta] if hasattr(args, "tta") else []),
                                     *(["--batch-size", args.batch_size] if hasattr(args, "batch_size") else []),
                                     "--workers", args.workers, "--device", args.device, "--amp", args.amp,
                                     "--no-cache", "--quiet"]),
        "blend": (blend.main, ["--data-root", data, "--out", outputs, *models, *blend_settings, "--quiet"]),
        "post-process": (postprocess.main, ["--data-root", data, "--in", blend_csv,
                                            "--out", submission_path(outputs), "--method", args.postprocess,
                                            *(["--train-csv", args.train_csv] if args.train_csv else []),
                                            *(["--model-set", args.model_set] if args.model_set else []),
                                            "--recordings-out", results, "--quiet",
                                            *([] if args.no_figures else ["--figures"])]),
    }
    return {name: (main, [str(a) for a in argv]) for name, (main, argv) in steps.items()}


def run_steps(steps: dict, log: Path, show_progress: bool) -> dict:
    """Run the steps in order, saving what they print as ``log``; return each step's seconds."""
    seconds, printed = {}, io.StringIO()
    with tqdm(total=len(steps), unit="step", disable=not show_progress) as bar:
        for name, (main, argv) in steps.items():
            bar.set_description(name)
            print(f"== {name}: {' '.join(argv)}", file=printed)
            started = time.perf_counter()
            with contextlib.redirect_stdout(printed):
                main(argv)
            seconds[name] = round(time.perf_counter() - started, 2)
            bar.update(1)
    with psg_layout.atomic_path(log) as tmp:
        tmp.write_text(printed.getvalue())
    return seconds


def summary_line(data: Path, results: Path, recording_id: str) -> str:
    """One line per scored recording: epochs, clock time of its start, main statistics."""
    import hypnogram

    timing = psg_layout.read_epoch_timing(data, recording_id, ())
    statistics_file = hypnogram.OUTPUT_FILES["statistics"].format(name=recording_id)
    statistics = json.loads((results / recording_id / statistics_file).read_text())

    def minutes(key):
        value = statistics.get(key)
        return "n/a" if value is None else f"{value:.1f}"

    start = "clock time unknown" if timing.start is None else f"start {timing.start:%Y-%m-%d %H:%M:%S}"
    return (f"{recording_id}: {len(timing.epoch_numbers)} epochs, {start}; TST {minutes('TST')} min, "
            f"SE {minutes('SE')} %, SOL {minutes('SOL')} min, WASO {minutes('WASO')} min")


def main(argv=None) -> None:
    args = parser.parse_args(argv)
    sources = resolve_settings(args)
    check_args(args)
    config = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    config["sources"] = sources
    print("config: " + json.dumps(config))
    out = args.out
    check_out(out, args.overwrite)
    # the weights are checked before anything is drawn (checkpoint fit is checked when they load)
    model_set.read_model_configs(args.weights_dir, args.fold, {"vit": (args.vit_arch, args.vit_epochs),
                                                               "eff": (args.eff_arch, args.eff_epochs)})

    staging = out.parent / f".{out.name}.stage-partial"
    shutil.rmtree(staging, ignore_errors=True)  # debris of a killed run
    staging.mkdir(parents=True)
    started = time.perf_counter()
    try:
        steps = step_arguments(args, staging / "work" / "DATA", staging / "work" / "outputs", staging)
        seconds = run_steps(steps, staging / LOG, show_progress=not args.quiet and sys.stderr.isatty())
        recording_ids = sorted({*psg_layout.read_epoch_csv(staging / "work" / "DATA" / psg_layout.TEST_CSV,
                                                           with_labels=False).recording_ids})
        total = round(time.perf_counter() - started, 2)
        with psg_layout.atomic_path(staging / MARKER) as tmp:
            tmp.write_text(json.dumps(dict(config, recordings=recording_ids, step_seconds=seconds,
                                           total_seconds=total), indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for recording_id in recording_ids:
        print(summary_line(out / "work" / "DATA", out, recording_id) + f" -> {out / recording_id}")
    print(f"scored {len(recording_ids)} recording(s) in {total:.1f} s "
          f"({', '.join(f'{name} {s:.1f} s' for name, s in seconds.items())}); "
          f"statistics table {out / postprocess.STATISTICS_TABLE}")


if __name__ == "__main__":
    psg_layout.run_main(main)
