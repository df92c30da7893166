"""Score new recordings: unscored EDF in; hypnogram, sleep statistics and annotations out.

    python stage_edf.py --edf NIGHT.edf|FOLDER --weights-dir weights --out scored/

The whole flow on recordings no one has scored yet. The models, their kept
epochs, the blend and the post-processing come from the weights folder's
model set (``model_set.json``, written by ``model_set.py``), each flag
overriding it; without one, the original's models, blend and rules. The
model set and the checkpoints are checked, and the checkpoints loaded once
for the whole run, before anything is rendered.

A folder is searched recursively for EDF files, and its nights are scored
in chunks of ``--chunk-nights``; for each chunk:

1. render: each night alone, as ``render_edf.py --split test --unscored``
   does (every whole 30-s epoch drawn, the timing sidecar with the lights
   period: ``--lights-off``/``--lights-on``, a row of ``--lights-table``,
   else the night's EDF+ annotations; the signal-quality sidecar; the montage that fits its channels
   with ``--montage auto``), ``--workers`` nights at a time. A night that
   cannot be rendered (unreadable, truncated, too short, channels no
   montage fits) is listed in the failures table and the others go on;
2. infer: the two models' test probabilities of all the chunk's images in
   one batched pass (as ``infer_blend.py``, with the loaded checkpoints);
3. blend: ``blend.py`` (the model set's, or ``--method``/``--ens-weight``/
   ``--power``/``--dump-scale``, or a ``blend_tune.json`` with ``--from-tune``);
4. post-process: ``postprocess.py`` (``--postprocess``: the model set's hmm,
   the original's rules, the hmm with transitions counted from
   ``--train-csv``, or none) and, per night, the hypnogram table, EDF+
   annotations, figure and sleep statistics over the lights period.

Each step computes what the layout route computes on the same images, so
the stages are those of ``render_edf.py``, ``infer_blend.py``, ``blend.py``
and ``postprocess.py`` run one after the other.

Writes into ``--out``: ``<ID>/`` per scored night (``<ID>-hypnogram.csv``,
``<ID>-Hypnogram.edf``, ``<ID>-hypnogram.png`` unless ``--no-figures``,
``<ID>-statistics.json``, ``<ID>-render.json``: what was drawn from which
channels; ``images/`` with ``--keep-images``), ``sleep_statistics.csv`` (one
row per scored night), ``failures.csv`` (one row per night that failed:
its step and one-line reason), ``stage_edf.json`` (the run's settings and
what it did) and ``stage_edf.log`` (what the steps printed). A night's
folder appears whole (built in ``--out/.partial`` and renamed into place), so
a killed run leaves only complete nights: ``--resume`` skips them, and the
nights that failed before on files unchanged since (``--retry-failed``
tries them again), and scores the rest with the settings of the first run.
An ``--out`` that holds anything else is refused; ``--overwrite`` replaces
an earlier ``stage_edf.py`` result.

Exit status: 0 when every night is scored; 1 when some are listed in the
failures table (the others scored); 2, with one ``error:`` line and nothing
written, when the command cannot run at all or no night could be scored.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import hashlib
import io
import json
import shutil
import sys
import time
from pathlib import Path

from tqdm import tqdm

import blend
import epoch_timing
import lights
import model_set
import postprocess
import psg_layout
import script_io
from cohort import FAILURES, file_stamp, plan_nights, write_tables
from output_names import submission_path
from script_io import InputError, where

# fmt: off
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=script_io.HelpFormatter)
parser.add_argument("--edf", type=Path, required=True, help="one EDF recording, or a folder searched recursively")
parser.add_argument("--weights-dir", default=model_set.parser.get_default("weights_dir"),
                    help="checkpoints and their training configurations")
parser.add_argument("--out", type=Path, required=True, help="folder for the results: new or empty, or an earlier result with --resume or --overwrite")
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
parser.add_argument("--lights-off", default=argparse.SUPPRESS, metavar="TIME",
                    help="lights off of every night: a clock time HH:MM[:SS] (the first after the recording's start) "
                         "or seconds from its start (default: the night's EDF+ annotation, else its first epoch)")
parser.add_argument("--lights-on", default=argparse.SUPPRESS, metavar="TIME",
                    help="lights on of every night, as --lights-off (default: the night's EDF+ annotation, else "
                         "its last epoch)")
parser.add_argument("--lights-table", type=Path, default=None, metavar="CSV",
                    help="lights off and on per night: a CSV with the header recording_id,lights_off,lights_on, "
                         "values as --lights-off (an empty cell: that night's EDF+ annotation); nights it does not "
                         "list take theirs from their annotations")
parser.add_argument("--no-figures", action="store_true", help="no hypnogram figures (saves seconds per recording)")
parser.add_argument("--resume", action="store_true",
                    help="go on with the run that wrote --out: skip its complete nights and those that failed on "
                         "files unchanged since; score the rest with its settings")
parser.add_argument("--retry-failed", action="store_true", help="with --resume: try the nights that failed again")
parser.add_argument("--chunk-nights", type=int, default=8,
                    help="nights rendered, inferred in one batched pass and post-processed together")
parser.add_argument("--keep-images", action="store_true", help="keep each night's rendered images in <ID>/images/")
parser.add_argument("--workers", type=int, default=2,
                    help="nights rendered in parallel, and the inference's DataLoader workers")
parser.add_argument("--quiet", action="store_true", help="no progress bar")
# fmt: on

MARKER = "stage_edf.json"
LOG = "stage_edf.log"
PARTIAL = ".partial"  # the chunk being scored, inside --out; what a killed run left there is removed
RENDER_RECORD = "{name}-render.json"
STEPS = ("render", "infer", "blend", "post-process")
# What a night's result depends on: --resume goes on only with the settings of the run that wrote --out.
RESULT_KEYS = ("weights_dir", *model_set.MODEL_KEYS, *model_set.BLEND_KEYS, "from_tune", "tta", "amp", "postprocess",
               "train_csv", "montage", "lights_off", "lights_on", "lights_table", "keep_images", "no_figures")


def resolve_settings(args) -> dict:
    """Fill the models, blend and post-processing a command line left out; return where each came from.

    Flags win; then the weights folder's model set (``model_set.json``); then
    the original's (blend.py's and postprocess.py's defaults). Reads no image.
    """
    record = model_set.read_model_set(args.weights_dir)
    sources = {"models": model_set.resolve_models(args, record)}
    for bound in ("lights_off", "lights_on"):  # absent: each night's EDF+ annotation, else its start or end
        setattr(args, bound, getattr(args, bound, None))
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
    for option in ("workers", "chunk_nights"):
        if getattr(args, option) < 1:
            raise InputError(f"--{option.replace('_', '-')} must be 1 or more, got {getattr(args, option)}")
    if args.resume and args.overwrite:
        raise InputError("--resume goes on with the results in --out, --overwrite replaces them: choose one")
    if args.retry_failed and not args.resume:
        raise InputError("--retry-failed goes with --resume")
    if not args.edf.exists():
        raise InputError(f"--edf not found {where(args.edf)}")
    if args.lights_table is not None and (args.lights_off is not None or args.lights_on is not None):
        raise InputError("--lights-table gives each night its lights; leave out --lights-off and --lights-on")
    args.lights_by_night = {} if args.lights_table is None else lights.read_lights_table(args.lights_table)


def result_settings(args) -> dict:
    """The settings a night's result depends on (:data:`RESULT_KEYS`), as JSON values."""
    settings = {key: getattr(args, key) for key in RESULT_KEYS}
    settings["weights_dir"] = str(Path(args.weights_dir).resolve())
    if args.lights_table is not None:  # its content, not its name: a changed table changes the nights' results
        settings["lights_table"] = hashlib.sha256(args.lights_table.read_bytes()).hexdigest()
    return {key: (str(value) if isinstance(value, Path) else value) for key, value in settings.items()}


def check_out(out: Path, args) -> bool:
    """Refuse an ``--out`` this run may not write to; return True when it holds an earlier run to go on with.

    An absent or empty folder is always fine. One that holds files must be an
    earlier result of this script (its ``stage_edf.json``) and needs
    ``--overwrite`` (replaced) or ``--resume`` (gone on with, with the same
    settings: :data:`RESULT_KEYS`).
    """
    if out.exists() and not out.is_dir():
        raise InputError(f"--out is a file, not a folder {where(out)}")
    if not out.exists() or not any(out.iterdir()):
        return False
    if not (args.overwrite or args.resume):
        raise InputError(f"--out already holds results; --resume goes on with them, --overwrite replaces them, "
                         f"or choose another folder {where(out)}")
    if not (out / MARKER).is_file():
        raise InputError(f"--out holds files that stage_edf.py did not write ({MARKER} is missing); "
                         f"--overwrite and --resume take only its own results {where(out)}")
    if not args.resume:
        return False
    try:
        earlier = json.loads((out / MARKER).read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(f"cannot read the earlier run's settings ({type(err).__name__}: {err}) "
                         f"{where(out / MARKER)}") from None
    for key, value in result_settings(args).items():
        if earlier.get(key) != value:
            raise InputError(f"--resume with other settings than the run that wrote --out: {key} is {value!r} "
                             f"here, {earlier.get(key)!r} there; score into another folder, or --overwrite "
                             f"{where(out / MARKER)}")
    return True


# --------------------------------------------------------------------------
# Which nights to score
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# Scoring one chunk of nights
# --------------------------------------------------------------------------
def describe_failure(err: Exception) -> str:
    """One line saying why a night failed."""
    if isinstance(err, InputError):
        return str(err)
    if isinstance(err, OSError):
        return script_io.describe_os_error(err)
    return f"{type(err).__name__}: {script_io.first_line(err)}"


def render_chunk(chunk: list, data: Path, args, pool) -> dict:
    """Render each night of the chunk on its own into ``data``: ID -> None (drawn) or the exception."""
    import render_edf

    config = {key: getattr(args, key) for key in ("montage", "lights_off", "lights_on")}
    config.update(split="test", unscored=True, edf_folder=str(args.edf),
                  lights_table=None if args.lights_table is None else str(args.lights_table))
    render = functools.partial(render_edf.render_unscored_night, montage_spec=args.montage, out=data, config=config)
    jobs = [functools.partial(render, source, **night_lights(args, source.recording_id)) for source in chunk]
    if pool is None:
        return {source.recording_id: error_of(job) for source, job in zip(chunk, jobs)}
    futures = {source.recording_id: pool.submit(job) for source, job in zip(chunk, jobs)}
    return {recording_id: future.exception() for recording_id, future in futures.items()}


def night_lights(args, recording_id: str) -> dict:
    """One night's lights options for rendering: the lights table's row, else the two flags (absent: none)."""
    if recording_id in args.lights_by_night:
        lights_off, lights_on = args.lights_by_night[recording_id]
        return dict(lights_off=lights_off, lights_on=lights_on, lights_given_by=f"lights table {args.lights_table.name}")
    return {key: getattr(args, key) for key in ("lights_off", "lights_on") if getattr(args, key) is not None}


def error_of(function, *args) -> Exception | None:
    """What ``function(*args)`` raised, or None."""
    try:
        function(*args)
    except Exception as err:  # one bad night stops only itself
        return err
    return None


def write_test_csv(data: Path, recording_ids: list) -> None:
    """The chunk's data root CSV: every drawn epoch of each night, in epoch order."""
    rows = []
    for recording_id in recording_ids:
        timing = epoch_timing.read_epoch_timing(data, recording_id, ())
        rows += [[recording_id, psg_layout.image_name(recording_id, n)] for n in timing.epoch_numbers]
    script_io.write_csv_rows(data / psg_layout.TEST_CSV, rows)


def infer_chunk(loaded: dict, infer_args, device) -> None:
    """Both models' test dumps of the chunk's data root, from the loaded checkpoints (``infer_blend.py``'s files)."""
    import infer_blend
    import loader_vit_rgb
    import numpy as np

    test = loader_vit_rgb.read_test_table(infer_args.data_root)
    inputs = {"test": (test, np.arange(len(test)))}
    arch_epochs = {key: (arch, epochs) for key, (arch, epochs, _, _) in loaded.items()}
    probabilities = {key: infer_blend.checkpoint_probabilities(checkpoints, config, infer_args, inputs, device,
                                                               label=arch)
                     for key, (arch, _, config, checkpoints) in loaded.items()}
    record = dict(vars(infer_args), device=str(device), stage_balance=[c["stage_balance"] for _, _, c, _ in
                                                                       loaded.values()])
    infer_blend.write_outputs(Path(infer_args.out), infer_args, arch_epochs, probabilities, None, None, record)


def model_argv(args) -> list:
    """The models' options, as every step takes them."""
    return ["--vit-arch", args.vit_arch, "--eff-arch", args.eff_arch, "--fold", args.fold,
            "--vit-epochs", *args.vit_epochs, "--eff-epochs", *args.eff_epochs]


def blend_argv(args, data: Path, outputs: Path) -> list[str]:
    """``blend.py``'s command line for a chunk, as one would type it for the layout route."""
    settings = (["--from-tune", args.from_tune] if args.from_tune is not None else
                ["--method", args.method, "--ens-weight", args.ens_weight, "--power", args.power,
                 "--dump-scale", args.dump_scale])
    return [str(a) for a in ["--data-root", data, "--out", outputs, *model_argv(args), *settings, "--quiet"]]


def postprocess_argv(args, data: Path, blend_csv: Path, outputs: Path, results: Path) -> list[str]:
    """``postprocess.py``'s command line for a chunk: the blend CSV that ``blend.py`` wrote in, the nights out."""
    argv = ["--data-root", data, "--in", blend_csv, "--out", submission_path(outputs), "--method", args.postprocess,
            *(["--train-csv", args.train_csv] if args.train_csv else []),
            *(["--model-set", args.model_set] if args.model_set else []),
            "--recordings-out", results, "--quiet", *([] if args.no_figures else ["--figures"])]
    return [str(a) for a in argv]


def infer_options(args, data: Path, outputs: Path):
    """``infer_blend.py``'s options for a chunk (its defaults where the command line left them out)."""
    import infer_blend

    models = model_argv(args)
    argv = ["--data-root", data, "--weights-dir", args.weights_dir, "--out", outputs, *models, "--tta", args.tta,
            *(["--batch-size", args.batch_size] if hasattr(args, "batch_size") else []),
            "--workers", args.workers, "--device", args.device, "--amp", args.amp, "--no-cache", "--quiet"]
    return infer_blend.parser.parse_args([str(a) for a in argv])


def run_step(run, step: str, main, argv: list[str]):
    """One step's ``main(argv)``, its command line printed before it and its seconds counted; its return value."""
    started = time.perf_counter()
    print(f"== {step}: {' '.join(argv)}")
    result = main(argv)
    run.seconds[step] += time.perf_counter() - started
    return result


def score_chunk(chunk: list, out: Path, run) -> dict:
    """Score one chunk of nights into ``out``: ID -> failure row for each night that failed (empty: none).

    ``run`` holds the run's options, loaded models, pool, log and step seconds.
    """
    work = out / PARTIAL
    shutil.rmtree(work, ignore_errors=True)
    data, outputs, results = work / "DATA", work / "outputs", work / "results"
    for folder in (data, outputs, results):
        folder.mkdir(parents=True)
    failures = {}

    def fail(source, step, err):
        failures[source.recording_id] = {"recording_id": source.recording_id, "edf": str(source.edf), "step": step,
                                         "reason": describe_failure(err), **file_stamp(source.edf)}

    started = time.perf_counter()
    outcomes = render_chunk(chunk, data, run.args, run.pool)
    run.seconds["render"] += time.perf_counter() - started
    for source in chunk:
        if outcomes[source.recording_id] is not None:
            fail(source, "render", outcomes[source.recording_id])
    drawn = [s for s in chunk if outcomes[s.recording_id] is None]
    if not drawn:
        shutil.rmtree(work)
        return failures
    step = "infer"
    try:
        with contextlib.redirect_stdout(run.log):
            write_test_csv(data, [s.recording_id for s in drawn])
            started = time.perf_counter()
            infer_chunk(run.loaded, infer_options(run.args, data, outputs), run.device)
            run.seconds[step] += time.perf_counter() - started
            step = "blend"
            blend_csv = run_step(run, step, blend.main, blend_argv(run.args, data, outputs))
            step = "post-process"
            run_step(run, step, postprocess.main, postprocess_argv(run.args, data, blend_csv, outputs, results))
            step = "review page"
            write_review_pages(run.args, data, outputs, results)
    except Exception as err:  # the chunk's nights fail together; the next chunk goes on
        for source in drawn:
            fail(source, step, err)
        shutil.rmtree(work)
        return failures
    for source in drawn:
        place_night(source.recording_id, data, results, out, run.args.keep_images)
    shutil.rmtree(work)
    return failures


def write_review_pages(args, data: Path, outputs: Path, results: Path) -> None:
    """Each night's ``review.html`` (review_page.py), from the chunk's images and both models' dumps."""
    import calibration
    import review_page
    from output_names import dump_path

    dumps = {f"model {n} ({arch})": dump_path(outputs, arch, args.fold, epochs)
             for n, (arch, epochs) in enumerate(((args.vit_arch, args.vit_epochs), (args.eff_arch, args.eff_epochs)), 1)}
    temperature = calibration.recorded_temperature(model_set.read_model_set(args.weights_dir))
    review_page.write_layout_pages(data, results, dumps, temperature)


def place_night(recording_id: str, data: Path, results: Path, out: Path, keep_images: bool) -> None:
    """Move one night's finished folder into ``out`` (one rename: whole or absent), its render record inside."""
    night = results / recording_id
    shutil.copyfile(data / recording_id / "render_edf.json", night / RENDER_RECORD.format(name=recording_id))
    if keep_images:
        (data / recording_id).rename(night / "images")
    if (out / recording_id).exists():  # a night scored, then failed on a changed file: the new result replaces it
        shutil.rmtree(out / recording_id)
    (night).rename(out / recording_id)


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------
def load_models(args, configs: dict):
    """Every kept checkpoint of both models, built and loaded once for the whole run.

    Returns
    -------
    loaded : dict
        ``"vit"``/``"eff"`` -> ``(arch, epochs, training configuration, [models])``.
    device : torch.device
    """
    import infer_blend
    import models

    device = models.resolve_device(args.device)
    arch_epochs = {"vit": (args.vit_arch, args.vit_epochs), "eff": (args.eff_arch, args.eff_epochs)}
    loaded = {key: (arch, epochs, configs[key],
                    list(infer_blend.load_checkpoints(arch, epochs, configs[key], args.weights_dir, args.fold, device)))
              for key, (arch, epochs) in arch_epochs.items()}
    return loaded, device


def summary_line(out: Path, recording_id: str) -> str:
    """One line per scored night: epochs, clock time of its start, main statistics, quality warnings."""
    import hypnogram

    names = {key: out / recording_id / pattern.format(name=recording_id)
             for key, pattern in hypnogram.OUTPUT_FILES.items()}
    statistics = json.loads(names["statistics"].read_text())
    with open(names["table"], newline="") as handle:
        table = list(csv.DictReader(handle))

    def minutes(key):
        value = statistics.get(key)
        return "n/a" if value is None else f"{value:.1f}"

    start = f"start {table[0]['clock_time']}" if table[0]["clock_time"] else "clock time unknown"
    warnings = statistics.get("quality_warnings")
    return (f"{recording_id}: {len(table)} epochs, {start}; TST {minutes('TST')} min, SE {minutes('SE')} %, "
            f"SOL {minutes('SOL')} min, WASO {minutes('WASO')} min" + (f"; warning: {warnings}" if warnings else ""))


def write_marker(out: Path, config: dict, **facts) -> None:
    with script_io.atomic_path(out / MARKER) as tmp:
        tmp.write_text(json.dumps(dict(config, **facts), indent=2) + "\n")


def score_pending(pending: list, out: Path, run, show_progress: bool) -> dict:
    """Score the nights chunk by chunk, with a progress bar over nights; return the new failures."""
    failures = {}
    size = run.args.chunk_nights
    with tqdm(total=len(pending), unit="night", disable=not show_progress) as bar:
        for first in range(0, len(pending), size):
            chunk = pending[first:first + size]
            print(f"== nights {', '.join(s.recording_id for s in chunk)}", file=run.log)
            failures.update(score_chunk(chunk, out, run))
            bar.update(len(chunk))
            bar.set_postfix(failed=len(failures))
            with script_io.atomic_path(out / LOG) as tmp:  # rewritten after each chunk: a killed run keeps its part
                tmp.write_text(run.earlier_log + run.log.getvalue())
    return failures


def main(argv=None) -> None:
    args = parser.parse_args(argv)
    sources = resolve_settings(args)
    check_args(args)
    arch_epochs = {"vit": (args.vit_arch, args.vit_epochs), "eff": (args.eff_arch, args.eff_epochs)}
    configs = model_set.read_model_configs(args.weights_dir, args.fold, arch_epochs)  # before torch is imported
    import infer_blend

    args.tta = getattr(args, "tta", infer_blend.parser.get_default("tta"))
    config = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()
              if key != "lights_by_night"}
    config.update(sources=sources, settings=result_settings(args))
    print("config: " + json.dumps(config))
    out = args.out
    resuming = check_out(out, args)
    recordings = find_nights(args.edf)
    unknown = sorted(set(args.lights_by_night) - {source.recording_id for source in recordings})
    if unknown:
        print(f"the lights table lists {len(unknown)} recording(s) not found under --edf: {', '.join(unknown[:5])}"
              f"{' ...' if len(unknown) > 5 else ''}")
    pending, done, kept = plan_nights(recordings, out, resuming, args.retry_failed)
    print(f"{len(recordings)} night(s): {len(done)} scored before, {len(kept)} failed before on unchanged files"
          f"{' (--retry-failed tries them again)' if kept else ''}, {len(pending)} to score")
    if not pending:
        print(f"nothing to do in {out}")
        if kept:
            raise SystemExit(1)
        return
    earlier_log = (out / LOG).read_text() if resuming and (out / LOG).is_file() else ""
    run = argparse.Namespace(args=args, log=io.StringIO(), earlier_log=earlier_log, seconds=dict.fromkeys(STEPS, 0.0),
                             pool=None)
    run.loaded, run.device = load_models(args, configs)  # a checkpoint that does not fit stops the run here
    created = not resuming  # a new or replaced result: nothing of it stays when no night can be scored
    if out.exists() and not resuming:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, config)
    started = time.perf_counter()
    try:
        with render_pool(min(args.workers, len(pending))) as run.pool:
            failures = score_pending(pending, out, run, show_progress=not args.quiet and sys.stderr.isatty())
    finally:
        shutil.rmtree(out / PARTIAL, ignore_errors=True)
    failures.update(kept)
    scored = write_tables(out, failures)
    if scored:
        import cohort_page

        cohort_page.write_index(out, list(failures.values()))  # index.html: every night, linking its review page
    if not scored:
        if created:
            shutil.rmtree(out)
        first = failures[min(failures)]
        raise InputError(first["reason"] if len(failures) == 1 else
                         f"none of the {len(failures)} nights could be scored; the first, "
                         f"{first['recording_id']}: {first['reason']}")
    seconds = {step: round(value, 2) for step, value in run.seconds.items()}
    total = round(time.perf_counter() - started, 2)
    write_marker(out, config, recordings=scored, failed=sorted(failures), step_seconds=seconds,
                 total_seconds=total)
    report_run(out, [s.recording_id for s in pending if s.recording_id not in failures], failures, seconds, total)
    if failures:
        raise SystemExit(1)


def report_run(out: Path, scored_now: list[str], failures: dict, seconds: dict, total: float) -> None:
    """Print one line per night scored by this run, the time of each step, and every failed night's reason."""
    for recording_id in scored_now:
        print(summary_line(out, recording_id) + f" -> {out / recording_id}")
    print(f"scored {len(scored_now)} night(s) in {total:.1f} s "
          f"({', '.join(f'{name} {s:.1f} s' for name, s in seconds.items())}); statistics table "
          f"{out / postprocess.STATISTICS_TABLE}")
    if failures:
        print(f"{len(failures)} night(s) failed, listed with their reasons in {out / FAILURES}:")
        for row in sorted(failures.values(), key=lambda r: r["recording_id"]):
            print(f"  {row['recording_id']} ({row['step']}): {row['reason']}")


def find_nights(edf: Path) -> list:
    """The EDF recordings under ``--edf`` (``render_edf.find_recordings``): their IDs checked for the whole run."""
    import render_edf

    return render_edf.find_recordings(edf, None, unscored=True)


@contextlib.contextmanager
def render_pool(workers: int):
    """Processes that render nights side by side (None with one worker: nights rendered in this process).

    Started with ``spawn``: this process holds torch and its threads, which a
    forked child must not inherit.
    """
    if workers == 1:
        yield None
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


if __name__ == "__main__":
    script_io.run_main(main)
