"""A cohort scored over several runs: which nights are done, which failed, and the two cohort tables.

``stage_edf.py`` writes each scored night as a folder that appears whole
(``<out>/<ID>/``, its statistics last), lists the nights that failed in
``failures.csv`` with the size and modification time of their file, and
rebuilds ``sleep_statistics.csv`` from every scored night. A ``--resume``
reads both back here: a night with its statistics is done, a failure is
kept while its file is unchanged.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from sleepstaging.scoring import postprocess
from sleepstaging import script_io
from sleepstaging.script_io import InputError, where
import contextlib
import hashlib
import functools
import os
import shutil
import time
from tqdm import tqdm
from sleepstaging.scoring import blend
from sleepstaging.data import epoch_timing
from sleepstaging.scoring import model_set
from sleepstaging.data import psg_layout
from sleepstaging.output_names import dump_path, posterior_path, probabilities_path, submission_path
from sleepstaging.scoring.rendered_nights import (RENDERED_EPOCHS, RenderAhead, RenderedNight, RenderSettings,
                                                  input_spec, one_thread_each, peak_rss_mib,
                                                  rendered_images)

FAILURES = "failures.csv"
FAILURE_COLUMNS = ("recording_id", "edf", "step", "reason", "edf_bytes", "edf_modified_ns")


def scored_nights(out: Path) -> list[str]:
    """IDs of the nights whose results are in ``out`` (a night's folder appears whole, statistics included)."""
    from sleepstaging.scoring import night_outputs
    statistics = night_outputs.OUTPUT_FILES["statistics"]
    return sorted(folder.name for folder in out.iterdir() if not folder.name.startswith(".")
                  and (folder / statistics.format(name=folder.name)).is_file())


def file_stamp(path: Path) -> dict:
    """Size and modification time of a file: a failed night is tried again once its file changed."""
    status = path.stat()
    return {"edf_bytes": str(status.st_size), "edf_modified_ns": str(status.st_mtime_ns)}


def read_failures(out: Path) -> dict:
    """The failures table of an earlier run: ID -> row (dict of :data:`FAILURE_COLUMNS`); empty when absent."""
    path = out / FAILURES
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and set(rows[0]) != set(FAILURE_COLUMNS):
        raise InputError(f"not a failures table of stage_edf.py (columns {list(rows[0])}) {where(path)}")
    return {row["recording_id"]: row for row in rows}


def plan_nights(recordings: list, out: Path, resuming: bool, retry_failed: bool) -> tuple[list, list, dict]:
    """Split the recordings into (to score, already scored IDs, failures kept from before: ID -> row)."""
    done = set(scored_nights(out)) if resuming else set()
    earlier = read_failures(out) if resuming and not retry_failed else {}
    kept = {}
    for source in recordings:
        row = earlier.get(source.recording_id)
        unchanged = row is not None and row["edf"] == str(source.edf) and all(
            row[key] == value for key, value in file_stamp(source.edf).items())
        if unchanged:
            kept[source.recording_id] = row
    pending = [s for s in recordings if s.recording_id not in done and s.recording_id not in kept]
    return pending, sorted(done & {s.recording_id for s in recordings}), kept


def night_statistics(folder: Path, recording_id: str) -> dict:
    """The statistics of one scored night of ``folder`` (its ``<ID>/<ID>-statistics.json``)."""
    from sleepstaging.scoring import night_outputs
    return json.loads((folder / recording_id / night_outputs.OUTPUT_FILES["statistics"].format(
        name=recording_id)).read_text())


def write_cohort_tables(out: Path, statistics: dict, failures: dict) -> None:
    """``sleep_statistics.csv`` (ID -> a night's statistics) and ``failures.csv`` (ID -> row), sorted by ID."""
    from sleepstaging.scoring import night_outputs
    night_outputs.write_statistics_table(out / postprocess.STATISTICS_TABLE,
                                     {recording_id: statistics[recording_id] for recording_id in sorted(statistics)})
    with script_io.atomic_path(out / FAILURES) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, FAILURE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(failures[recording_id] for recording_id in sorted(failures))


def write_tables(out: Path, failures: dict) -> list[str]:
    """The cohort's statistics table (every scored night in ``out``) and failures table; return the scored IDs."""
    nights = scored_nights(out)
    write_cohort_tables(out, {recording_id: night_statistics(out, recording_id) for recording_id in nights}, failures)
    return nights


MARKER = "stage_edf.json"
LOG = "stage_edf.log"
PARTIAL = ".partial"  # the nights being scored, inside --out; what a killed run left there is removed
RENDERED, CHUNK = "DATA", "chunk"  # in PARTIAL: the drawn nights (a data root), the chunk's dumps and results
RENDER_RECORD = "{name}-render.json"
STEPS = ("render", "infer", "blend", "post-process", "review page")
# What a night's result depends on: --resume goes on only with the settings of the run that wrote --out
# (and with its shard: "K/N" or None); the shards of one cohort merge only when they agree on all but the shard.
RESULT_KEYS = ("weights_dir", *model_set.MODEL_KEYS, *model_set.BLEND_KEYS, "from_tune", "tta", "amp", "postprocess",
               "train_csv", "montage", "lights_off", "lights_on", "lights_table", "keep_images", "no_figures", "no_review_pages",
               "shard")


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


def render_settings(args, specs, data: Path) -> RenderSettings:
    """How the run's nights are drawn into ``data``: as ``render_edf.py --split test --unscored``, shrunk to the
    model inputs ``specs``; the PNG files with ``--keep-images``, the full-size images when the review pages or
    TTA rounds after the first need them."""
    config = {key: getattr(args, key) for key in ("montage", "lights_off", "lights_on")}
    config.update(split="test", unscored=True, edf_folder=str(args.edf),
                  lights_table=None if args.lights_table is None else str(args.lights_table))
    return RenderSettings(args.montage, data, config, tuple(specs), args.keep_images,
                          keep_full=not args.no_review_pages or args.tta > 1)


def night_lights(args, recording_id: str) -> dict:
    """One night's lights options for rendering: the lights table's row, else the two flags (absent: none)."""
    if recording_id in args.lights_by_night:
        lights_off, lights_on = args.lights_by_night[recording_id]
        return dict(lights_off=lights_off, lights_on=lights_on, lights_given_by=f"lights table {args.lights_table.name}")
    return {key: getattr(args, key) for key in ("lights_off", "lights_on") if getattr(args, key) is not None}


def write_test_csv(data: Path, recording_ids: list) -> None:
    """The chunk's data root CSV: every drawn epoch of each night, in epoch order."""
    rows = []
    for recording_id in recording_ids:
        timing = epoch_timing.read_epoch_timing(data, recording_id, ())
        rows += [[recording_id, psg_layout.image_name(recording_id, n)] for n in timing.epoch_numbers]
    script_io.write_csv_rows(data / psg_layout.TEST_CSV, rows)


def write_dumps(loaded: dict, probabilities: dict, infer_args, device) -> None:
    """Both models' test dumps of the chunk and their record (``infer_blend.py``'s files) into ``infer_args.out``."""
    from sleepstaging.scoring import inference

    arch_epochs = {key: (arch, epochs) for key, (arch, epochs, _, _) in loaded.items()}
    options = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(infer_args).items()}
    record = dict(options, device=str(device), stage_balance=[c["stage_balance"] for _, _, c, _ in
                                                                       loaded.values()])
    inference.write_outputs(Path(infer_args.out), infer_args, arch_epochs,
                            {key: {"test": p} for key, p in probabilities.items()}, None, None, record)


def infer_nights(chunk: list, run, data: Path, fail):
    """Take the chunk's nights as they are drawn and infer each at once; return (the drawn nights, probabilities).

    A night that could not be drawn is passed to ``fail`` (step render);
    when inference fails, every drawn night of the chunk fails with it
    (the chunk's remaining nights are still taken, so the next chunk starts
    with its own). Probabilities: ``cohort.load_models``' keys -> float32 (rows, 5).
    """
    from sleepstaging.scoring.inference import ChunkInference

    inference = ChunkInference(run.loaded, infer_options(run.args, data, None), run.device)
    drawn, error = [], None
    for source, night in run.renders.nights(chunk):
        if not isinstance(night, RenderedNight):
            fail(source, "render", night)
            continue
        drawn.append(source)
        if error is None:
            started = time.perf_counter()
            try:
                inference.add_night(night.inputs, rendered_images(data, source.recording_id))
            except Exception as err:  # the chunk's nights fail together; the next chunk goes on
                error = err
            run.seconds["infer"] += time.perf_counter() - started
    if error is not None or not drawn:
        return drawn, error
    started = time.perf_counter()
    probabilities = inference.finish()
    run.seconds["infer"] += time.perf_counter() - started
    return drawn, probabilities


def infer_options(args, data: Path, outputs: Path):
    """The inference options of a chunk: the run's, images decoded from the chunk's PNG files (no cache)."""
    from sleepstaging.scoring.inference import InferenceOptions

    batch_size = {"batch_size": args.batch_size} if hasattr(args, "batch_size") else {}
    return InferenceOptions(data_root=data, weights_dir=Path(args.weights_dir), out=outputs, fold=args.fold,
                            tta=args.tta, workers=args.workers, amp=args.amp, **batch_size)


def blend_chunk(args, data: Path, outputs: Path) -> Path:
    """Blend the chunk's dumps as the run's settings say (``blend.py``'s files); return the blend CSV."""
    tta = blend.read_tune_json(args.from_tune)["tta"] if args.from_tune is not None else args.tta
    settings = {key: getattr(args, key) for key in model_set.BLEND_KEYS}
    config = dict(settings, data_root=str(data), out=str(outputs), fold=args.fold, tta=tta,
                  from_tune=None if args.from_tune is None else str(args.from_tune))
    return blend.blend_test_dumps(outputs, data, args.fold, (args.vit_arch, args.vit_epochs),
                                  (args.eff_arch, args.eff_epochs), args.method, args.ens_weight, args.power,
                                  blend.row_scales(args.dump_scale, tta), config)


def postprocess_chunk(args, data: Path, blend_csv: Path, outputs: Path, results: Path) -> None:
    """Post-process the chunk's blend as the run says, each night's outputs into ``results``."""
    hmm, sources = postprocess.hmm_settings(args.postprocess, data, blend_csv, args.train_csv,
                                            model_set_dir=args.model_set)
    config = dict(data_root=str(data), in_csv=str(blend_csv), method=args.postprocess, hmm_sources=sources,
                  temperature=args.temperature)
    postprocess.postprocess_test(data, blend_csv, submission_path(outputs), args.postprocess, hmm,
                                 probabilities_path(blend_csv), results, config, figures=not args.no_figures,
                                 quiet=True, temperature=args.temperature)


def write_review_pages(args, data: Path, outputs: Path, results: Path) -> None:
    """Each night's ``review.html``, from its drawn images, both models' dumps and the hmm's posterior."""
    from sleepstaging.scoring import review_page

    dumps = {f"model {n} ({arch})": dump_path(outputs, arch, args.fold, epochs)
             for n, (arch, epochs) in enumerate(((args.vit_arch, args.vit_epochs), (args.eff_arch, args.eff_epochs)), 1)}
    review_page.write_layout_pages(data, results, dumps, args.temperature,
                                   posterior_file=posterior_path(submission_path(outputs)), workers=args.workers,
                                   rendered=functools.partial(rendered_images, data))


def run_step(run, step: str, function, *arguments):
    """One step, its seconds counted; its return value."""
    started = time.perf_counter()
    print(f"== {step}")
    result = function(*arguments)
    run.seconds[step] += time.perf_counter() - started
    return result


def score_chunk(chunk: list, out: Path, run) -> dict:
    """Score one chunk of nights into ``out``: ID -> failure row for each night that failed (empty: none).

    ``run`` holds the run's options, loaded models, renders (:class:`RenderAhead`), log and step seconds.
    """
    data, work = out / PARTIAL / RENDERED, out / PARTIAL / CHUNK
    shutil.rmtree(work, ignore_errors=True)
    outputs, results = work / "outputs", work / "results"
    for folder in (outputs, results):
        folder.mkdir(parents=True)
    failures = {}

    def fail(source, step, err):
        failures[source.recording_id] = {"recording_id": source.recording_id, "edf": str(source.edf), "step": step,
                                         "reason": describe_failure(err), **file_stamp(source.edf)}

    with contextlib.redirect_stdout(run.log):
        waited = run.renders.waited
        drawn, probabilities = infer_nights(chunk, run, data, fail)
        run.seconds["render"] += run.renders.waited - waited
        run.renders.draw_next(run.args.chunk_nights)  # while this chunk is blended, post-processed and paged
        step = "infer"
        try:
            if isinstance(probabilities, Exception):
                raise probabilities
            if drawn:
                write_test_csv(data, [s.recording_id for s in drawn])
                write_dumps(run.loaded, probabilities, infer_options(run.args, data, outputs), run.device)
                step = "blend"
                blend_csv = run_step(run, step, blend_chunk, run.args, data, outputs)
                step = "post-process"
                run_step(run, step, postprocess_chunk, run.args, data, blend_csv, outputs, results)
                if not run.args.no_review_pages:
                    step = "review page"
                    run_step(run, step, write_review_pages, run.args, data, outputs, results)
        except Exception as err:  # the chunk's nights fail together; the next chunk goes on
            for source in drawn:
                fail(source, step, err)
    for source in drawn:
        if source.recording_id not in failures:
            place_night(source.recording_id, data, results, out, run.args.keep_images)
        shutil.rmtree(data / source.recording_id, ignore_errors=True)
    shutil.rmtree(work)
    return failures


def place_night(recording_id: str, data: Path, results: Path, out: Path, keep_images: bool) -> None:
    """Move one night's finished folder into ``out`` (one rename: whole or absent), its render record inside."""
    night = results / recording_id
    shutil.copyfile(data / recording_id / "render_edf.json", night / RENDER_RECORD.format(name=recording_id))
    if keep_images:
        (data / recording_id / RENDERED_EPOCHS).unlink(missing_ok=True)  # the PNG files hold the same pixels
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
    from sleepstaging.scoring import inference
    from sleepstaging.scoring import models
    device = models.resolve_device(args.device)
    arch_epochs = {"vit": (args.vit_arch, args.vit_epochs), "eff": (args.eff_arch, args.eff_epochs)}
    loaded = {key: (arch, epochs, configs[key],
                    list(inference.load_checkpoints(arch, epochs, configs[key], args.weights_dir, args.fold, device)))
              for key, (arch, epochs) in arch_epochs.items()}
    return loaded, device


def resolve_render_ahead(args, device) -> int:
    """``--render-ahead``, its default resolved once the device is known: on CUDA twice ``--workers`` (the
    GPU infers while the cores draw), on the CPU 0 (inference takes every core; the next chunk is drawn
    while the main process blends, post-processes and writes the review pages)."""
    if args.render_ahead is None:
        args.render_ahead = 2 * args.workers if str(device).startswith("cuda") else 0
    return args.render_ahead


def inference_threads(args) -> int:
    """Set and return the threads inference runs on: while nights are drawn ahead, the cores the drawing
    processes leave (at least one), else torch's own choice.

    Two computations that each want every core fight over them: torch's
    threads wait for one another at each operation, and one that the
    drawing took off its core holds the others up (on 2 busy cores a
    forward pass took ten times as long, docs/scoring-new-recordings.md).
    The number of threads can change the last bits of a short batch's
    probabilities (EfficientNet's, below 1e-6), as the machine's number of
    cores did before; the same threads give the same bits.
    """
    import torch

    if args.render_ahead:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) - args.workers))
    return torch.get_num_threads()


def write_marker(out: Path, config: dict, **facts) -> None:
    with script_io.atomic_path(out / MARKER) as tmp:
        tmp.write_text(json.dumps(dict(config, **facts), indent=2) + "\n")


def score_pending(pending: list, out: Path, run, show_progress: bool) -> dict:
    """Score the nights chunk by chunk, with a progress bar over nights; return the new failures.

    The nights are drawn by ``run.pool`` (or here without one), ``--render-ahead``
    of them ahead of the night being inferred.
    """
    shutil.rmtree(out / PARTIAL, ignore_errors=True)  # what a killed run left
    specs = [input_spec(config) for _, _, config, _ in run.loaded.values()]
    run.renders = RenderAhead(pending, render_settings(run.args, specs, out / PARTIAL / RENDERED),
                              functools.partial(night_lights, run.args), run.pool,
                              run.args.render_ahead if run.pool is not None else 0)
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


def find_nights(edf: Path) -> list:
    """The EDF recordings under ``--edf`` (``render.find_recordings``): their IDs checked for the whole run."""
    from sleepstaging.edf import render

    return render.find_recordings(edf, None, unscored=True)


@contextlib.contextmanager
def render_pool(workers: int, ahead: int):
    """Processes that draw nights (None with one worker and nothing to draw ahead: nights drawn in this process).

    Started with ``spawn``: this process holds torch and its threads, which a
    forked child must not inherit. On the way out, nights not begun are
    dropped (a run stopped early does not draw them).
    """
    if workers == 1 and not ahead:
        yield None
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=one_thread_each)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def result_settings(args) -> dict:
    """The settings a night's result depends on (:data:`RESULT_KEYS`), as JSON values."""
    settings = {key: getattr(args, key) for key in RESULT_KEYS}
    settings["weights_dir"] = str(Path(args.weights_dir).resolve())
    if args.lights_table is not None:  # its content, not its name: a changed table changes the nights' results
        settings["lights_table"] = hashlib.sha256(args.lights_table.read_bytes()).hexdigest()
    return {key: (str(value) if isinstance(value, Path) else value) for key, value in settings.items()}
