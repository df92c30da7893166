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
   with ``--montage auto``), ``--workers`` nights at a time, each epoch
   shrunk once to the models' inputs and handed over as arrays (PNG files
   only with ``--keep-images``: ``sleepstaging/scoring/rendered_nights.py``);
   the next chunk is drawn while this one is post-processed, or
   ``--render-ahead`` nights ahead of inference. A night that
   cannot be rendered (unreadable, truncated, too short, channels no
   montage fits) is listed in the failures table and the others go on;
2. infer: the two models' test probabilities of the chunk's epochs, each
   night as it comes, in the batches ``infer_blend.py`` forms over the
   chunk's images and with the loaded checkpoints: its probabilities to the
   bit, without the image files;
3. blend: ``blend.py`` (the model set's, or ``--method``/``--ens-weight``/
   ``--power``/``--dump-scale``, or a ``blend_tune.json`` with ``--from-tune``);
4. post-process: ``postprocess.py`` (``--postprocess``: the model set's hmm,
   the original's rules, the hmm with transitions counted from
   ``--train-csv``, or none) and, per night, the hypnogram table, EDF+
   annotations, figure and sleep statistics over the lights period (the
   table and figure show the blend calibrated by the model set's
   temperature, ``calibration`` in ``model_set.json``);
5. review page: per night, ``review.html`` (``review_page.py``; not with
   ``--no-review-pages``), then the cohort's ``index.html``.

Each step computes what the layout route computes on the same images, so
the stages are those of ``render_edf.py``, ``infer_blend.py``, ``blend.py``
and ``postprocess.py`` run one after the other.

Writes into ``--out``: ``<ID>/`` per scored night (``<ID>-hypnogram.csv``,
``<ID>-Hypnogram.edf``, ``<ID>-hypnogram.png`` unless ``--no-figures``,
``<ID>-statistics.json``, ``<ID>-render.json``: what was drawn from which
channels; ``review.html``; ``images/`` with ``--keep-images``: the PNG files), ``index.html``,
``sleep_statistics.csv`` (one
row per scored night), ``failures.csv`` (one row per night that failed:
its step and one-line reason), ``stage_edf.json`` (the run's settings and
what it did) and ``stage_edf.log`` (what the steps printed). A night's
folder appears whole (built in ``--out/.partial`` and renamed into place), so
a killed run leaves only complete nights: ``--resume`` skips them, and the
nights that failed before on files unchanged since (``--retry-failed``
tries them again), and scores the rest with the settings of the first run.
An ``--out`` that holds anything else is refused; ``--overwrite`` replaces
an earlier ``stage_edf.py`` result.

A cohort too large for one machine is split into N shards, each scored by
its own run into its own folder (``--shard K/N``, K from 0 to N-1; inside a
Slurm job array ``--array=0-(N-1)``, SLURM_ARRAY_TASK_ID and
SLURM_ARRAY_TASK_COUNT give it): shard K takes the nights at positions K,
K+N, K+2N, ... of the sorted recording IDs, so every machine computes the same
split. ``--merge-shards DIR ... --out MERGED`` then writes the cohort's
``sleep_statistics.csv``, ``failures.csv`` and ``index.html`` (linking each
night's review page in its shard's folder) and ``merged_shards.json``;
it refuses, with one ``error:`` line and nothing written, a shard missing or
given twice, an unfinished one, a night in two shards, and shards of other
nights, model files or settings (``sleepstaging/scoring/shards.py``).

Exit status: 0 when every night is scored; 1 when some are listed in the
failures table (the others scored); 2, with one ``error:`` line and nothing
written, when the command cannot run at all or no night could be scored
(a shard keeps its failures table for the merge: status 1).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

from sleepstaging import script_io
from sleepstaging.edf import lights
from sleepstaging.recipe import INFERENCE, ORIGINAL_BLEND, POSTPROCESS, RECIPE
from sleepstaging.scoring import blend, calibration, cohort_page, model_set, postprocess, shards
from sleepstaging.scoring.cohort import (
    FAILURES,
    LOG,
    MARKER,
    PARTIAL,
    STEPS,
    check_out,
    find_nights,
    inference_threads,
    load_models,
    plan_nights,
    render_pool,
    resolve_render_ahead,
    peak_rss_mib,
    result_settings,
    score_pending,
    write_marker,
    write_tables,
)
from sleepstaging.script_io import InputError, where

# fmt: off
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=script_io.HelpFormatter)
parser.add_argument("--edf", type=Path, default=None,
                    help="one EDF recording, or a folder searched recursively (required, except with --merge-shards)")
parser.add_argument("--weights-dir", default=RECIPE["weights_dir"],
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
                         f"{ORIGINAL_BLEND['method']}, the original's)")
parser.add_argument("--ens-weight", type=float, default=argparse.SUPPRESS,
                    help=f"blend weight w of model 1 (ViT), in [0, 1] (default: the model set's, else "
                         f"{ORIGINAL_BLEND['ens_weight']})")
parser.add_argument("--power", type=float, default=argparse.SUPPRESS,
                    help=f"exponent of 'square' (default: the model set's, else {ORIGINAL_BLEND['power']})")
parser.add_argument("--dump-scale", choices=blend.DUMP_SCALES, default=argparse.SUPPRESS,
                    help="original: the original's row scales before the blend formula (as blend.py); unit: plain "
                         f"weights (default: the model set's, else {ORIGINAL_BLEND['dump_scale']})")
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
parser.add_argument("--no-review-pages", action="store_true",
                    help="no review.html per night (encoding its images takes seconds a night)")
parser.add_argument("--resume", action="store_true",
                    help="go on with the run that wrote --out: skip its complete nights and those that failed on "
                         "files unchanged since; score the rest with its settings")
parser.add_argument("--retry-failed", action="store_true", help="with --resume: try the nights that failed again")
parser.add_argument("--chunk-nights", type=int, default=8,
                    help="nights rendered, inferred in one batched pass and post-processed together")
parser.add_argument("--keep-images", action="store_true",
                    help="keep each night's rendered images in <ID>/images/ (PNG files, written only with it)")
parser.add_argument("--workers", type=int, default=2,
                    help="processes drawing nights side by side (1: in this process, unless --render-ahead), and "
                         "the threads encoding the review pages' images")
parser.add_argument("--render-ahead", type=int, default=None, metavar="N",
                    help="nights drawn ahead of the night being inferred, so that drawing overlaps inference, "
                         "which then runs on the cores the drawing leaves; 0: each chunk's nights are drawn "
                         "before they are inferred, on every core, the next chunk's (with --workers 2 or more) "
                         "while this one is post-processed (default: twice --workers on CUDA, else 0)")
parser.add_argument("--quiet", action="store_true", help="no progress bar")
parser.add_argument("--shard", default=None, metavar="K/N",
                    help="score shard K of N, K from 0 to N-1 (as sbatch --array=0-(N-1) numbers its tasks): the "
                         "nights at positions K, K+N, K+2N, ... (from 0) of the cohort's sorted recording IDs "
                         "(default: Slurm's SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT when set, else every night; "
                         "0/1: every night, also inside a job array)")
parser.add_argument("--merge-shards", type=Path, nargs="+", default=None, metavar="DIR",
                    help="score nothing: merge the --out folders of all N shards into --out (sleep_statistics.csv, "
                         "failures.csv, index.html linking each night's review page in its shard's folder)")
# fmt: on


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
            setattr(args, key, ORIGINAL_BLEND[key] if record is None else record["blend"][key])
    sources["blend"] = (str(args.from_tune) if args.from_tune is not None else
                        "the command line" if len(blend_given) == len(model_set.BLEND_KEYS) else
                        "the original's" if record is None else record["path"])
    if not hasattr(args, "postprocess"):
        args.postprocess = POSTPROCESS if record is None else record["postprocess"]
        sources["postprocess"] = "the original's rules (no model set)" if record is None else record["path"]
    else:
        sources["postprocess"] = "--postprocess"
    args.model_set = args.weights_dir if record is not None and args.postprocess == "hmm" else None
    args.temperature = calibration.recorded_temperature(record)  # the blend's calibration, shown in every output
    return sources


def check_args(args) -> None:
    """Refuse settings no run can use, before anything is rendered."""
    if args.edf is None:
        raise InputError("--edf names the nights to score (or --merge-shards the shards to merge)")
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
    if args.render_ahead is not None and args.render_ahead < 0:
        raise InputError(f"--render-ahead must be 0 or more, got {args.render_ahead}")
    args.shard_spec = shards.resolve_shard(args.shard, os.environ)  # --shard, else Slurm's job-array variables
    args.shard, args.shard_given_by = (None, None) if args.shard_spec is None else (
        str(args.shard_spec), args.shard_spec.given_by)
    if args.resume and args.overwrite:
        raise InputError("--resume goes on with the results in --out, --overwrite replaces them: choose one")
    if args.retry_failed and not args.resume:
        raise InputError("--retry-failed goes with --resume")
    if not args.edf.exists():
        raise InputError(f"--edf not found {where(args.edf)}")
    if args.lights_table is not None and (args.lights_off is not None or args.lights_on is not None):
        raise InputError("--lights-table gives each night its lights; leave out --lights-off and --lights-on")
    args.lights_by_night = {} if args.lights_table is None else lights.read_lights_table(args.lights_table)


def summary_line(out: Path, recording_id: str) -> str:
    """One line per scored night: epochs, clock time of its start, main statistics, quality warnings."""
    from sleepstaging.scoring import night_outputs
    names = {key: out / recording_id / pattern.format(name=recording_id)
             for key, pattern in night_outputs.OUTPUT_FILES.items()}
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


def main(argv=None) -> None:
    args = parser.parse_args(argv)
    if args.merge_shards is not None:
        merge(args)
        return
    sources = resolve_settings(args)
    check_args(args)
    arch_epochs = {"vit": (args.vit_arch, args.vit_epochs), "eff": (args.eff_arch, args.eff_epochs)}
    configs = model_set.read_model_configs(args.weights_dir, args.fold, arch_epochs)  # before torch is imported
    args.tta = getattr(args, "tta", INFERENCE["tta"])
    config = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()
              if key not in ("lights_by_night", "shard_spec", "merge_shards")}
    config.update(sources=sources, settings=result_settings(args))
    print("config: " + json.dumps(config))
    out = args.out
    resuming = check_out(out, args)
    recordings = find_nights(args.edf)
    unknown = sorted(set(args.lights_by_night) - {source.recording_id for source in recordings})
    if unknown:
        print(f"the lights table lists {len(unknown)} recording(s) not found under --edf: {', '.join(unknown[:5])}"
              f"{' ...' if len(unknown) > 5 else ''}")
    recordings, facts = take_shard(args, recordings, arch_epochs, resuming)
    pending, done, kept = plan_nights(recordings, out, resuming, args.retry_failed)
    print(f"{len(recordings)} night(s): {len(done)} scored before, {len(kept)} failed before on unchanged files"
          f"{' (--retry-failed tries them again)' if kept else ''}, {len(pending)} to score")
    if not pending:
        finish_without_scoring(out, config, kept, facts, resuming)
    else:
        score_run(args, config, configs, pending, kept, resuming, facts)


def take_shard(args, recordings: list, arch_epochs: dict, resuming: bool) -> tuple[list, dict]:
    """The nights of this run's shard (every night without one), and what its ``stage_edf.json`` records of it."""
    shard = args.shard_spec
    if shard is None:
        return recordings, {}
    assigned = shards.shard_nights(recordings, shard)
    record = shards.shard_record(shard, recordings, assigned,
                                 model_set.model_files_sha256(args.weights_dir, args.fold, arch_epochs))
    if resuming:
        shards.check_resumed_shard(args.out, record)
    print(f"shard {shard} (given by {shard.given_by}; shards are numbered from 0): {len(assigned)} of the "
          f"cohort's {len(recordings)} night(s), those at positions {shard.index}, {shard.index} + {shard.count}, "
          f"... of the sorted recording IDs")
    return assigned, {"shard": record}


def finish_without_scoring(out: Path, config: dict, kept: dict, facts: dict, resuming: bool) -> None:
    """No night left to score: say so; exit status 1 when nights failed before.

    A shard given no night is written as a finished, empty shard (the merge
    needs every shard), and a run killed after its last night (its
    ``stage_edf.json`` without the nights) gets its tables, index and record.
    """
    print(f"nothing to do in {out}")
    unfinished = resuming and "recordings" not in json.loads((out / MARKER).read_text())
    if unfinished or (facts and not resuming):
        if out.exists() and not resuming:  # --overwrite of an earlier result
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        scored = write_tables(out, kept)
        if scored:
            cohort_page.write_index(out, list(kept.values()))
        write_marker(out, config, recordings=scored, failed=sorted(kept), **facts)
    if kept:
        raise SystemExit(1)


def score_run(args, config: dict, configs: dict, pending: list, kept: dict, resuming: bool, facts: dict) -> None:
    """Score the pending nights into ``--out``, write its tables, index and record, and report.

    Exit status 1 when nights failed. A run that could score no night
    leaves nothing of a new ``--out`` and ends with one ``error:`` line,
    except a shard: it keeps its failures table for the merge.
    """
    out = args.out
    earlier_log = (out / LOG).read_text() if resuming and (out / LOG).is_file() else ""
    run = argparse.Namespace(args=args, log=io.StringIO(), earlier_log=earlier_log, seconds=dict.fromkeys(STEPS, 0.0),
                             pool=None, renders=None)
    run.loaded, run.device = load_models(args, configs)  # a checkpoint that does not fit stops the run here
    config["render_ahead"] = resolve_render_ahead(args, run.device)
    config["inference_threads"] = inference_threads(args)
    created = not resuming  # a new or replaced result: nothing of it stays when no night can be scored
    if out.exists() and not resuming:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, config, **facts)
    started = time.perf_counter()
    try:
        with render_pool(min(args.workers, len(pending)), args.render_ahead) as run.pool:
            failures = score_pending(pending, out, run, show_progress=not args.quiet and sys.stderr.isatty())
    finally:
        shutil.rmtree(out / PARTIAL, ignore_errors=True)
    failures.update(kept)
    scored = write_tables(out, failures)
    if scored:
        cohort_page.write_index(out, list(failures.values()))  # index.html: every night, linking its review page
    elif not facts:
        if created:
            shutil.rmtree(out)
        first = failures[min(failures)]
        raise InputError(first["reason"] if len(failures) == 1 else
                         f"none of the {len(failures)} nights could be scored; the first, "
                         f"{first['recording_id']}: {first['reason']}")
    seconds = {step: round(value, 2) for step, value in run.seconds.items()}
    total = round(time.perf_counter() - started, 2)
    write_marker(out, config, recordings=scored, failed=sorted(failures), step_seconds=seconds,
                 total_seconds=total, drawing=drawing_facts(run.renders.renders), peak_rss_mib=peak_rss_mib(),
                 **facts)
    report_run(out, [s.recording_id for s in pending if s.recording_id not in failures], failures, seconds, total)
    if failures:
        raise SystemExit(1)


def drawing_facts(renders: list) -> dict:
    """What ``stage_edf.json`` records of the drawing: nights, epochs, the drawing processes' seconds (summed;
    they overlap inference and each other) and their peak memory (the largest, MiB)."""
    return {"nights": len(renders), "epochs": sum(r["epochs"] for r in renders),
            "seconds": round(sum(r["seconds"] for r in renders), 2),
            "peak_rss_mib": max((r["peak_rss_mib"] for r in renders), default=None)}


def merge(args) -> None:
    """``--merge-shards``: the cohort's tables and index from its shards' folders; exit status 1 when nights failed."""
    if args.edf is not None or args.shard is not None or args.resume:
        raise InputError("--merge-shards merges shards scored before: leave out --edf, --shard and --resume")
    config = {"merge_shards": [str(folder) for folder in args.merge_shards], "out": str(args.out),
              "overwrite": args.overwrite}
    print("config: " + json.dumps(config))
    record = shards.merge_shards(args.merge_shards, args.out, args.overwrite, config)
    print(f"merged {len(record['shards'])} shard(s) of a cohort of {record['cohort_nights']} night(s): "
          f"{len(record['recordings'])} scored, {len(record['failed'])} failed -> "
          f"{args.out / postprocess.STATISTICS_TABLE}, {args.out / FAILURES}, {args.out / cohort_page.INDEX_NAME}")
    if record["failed"]:
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


if __name__ == "__main__":
    script_io.run_main(main)
