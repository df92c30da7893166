"""Nights per hour: stage_edf.py on a folder of synthetic nights, then the same command with --resume.

1. ``make_synthetic.py --edf`` makes ``--nights`` test nights of ``--hours``
   (seed 1 by default: the demo's models, trained on seed 0's nights, have
   never seen them); their EDF files are copied alone into
   ``<work>/nights/`` (hypnograms withheld), each with EDF+ annotations
   "Lights off" 10 min after its start and "Lights on" 10 min before its
   end, the first night's chin EMG flat for its second hour (a planted
   fault), and one truncated copy (``broken.edf``) beside them.
2. ``stage_edf.py --edf <work>/nights`` is timed as a whole command (Python
   start-up, imports, model loading, every night's figure included); it
   must score every good night and list ``broken`` in ``failures.csv``
   (exit status 1).
3. The same command with ``--resume``: it must find nothing to do.
4. YASA's ``SleepStaging`` on the same good nights' EDF files
   (``bench/realism_yasa.py`` in its own venv, ``--yasa-venv``, made from
   ``bench/requirements-realism.txt`` when missing), timed as a whole
   command too; ``--no-yasa`` leaves it out.

Writes ``bench/results/cohort_bench.json`` (``--result``) and prints it:
nights per hour, epochs per second, seconds per night (the whole command's
and where the main process spent them: waiting for drawn nights,
inference, the blend, post-processing and review pages, the rest; and the
drawing processes' own seconds, which overlap those), each step's seconds
and the peak memory of the main process and of the drawing processes
(from ``stage_edf.json``), the load average before and after, the
resume's wall time, YASA's seconds per night, and the first night's lights
period and flagged epochs; copies the first night's figure to
``--figure`` (none with ``--no-figures``).

    python bench/cohort_bench.py --weights-dir demo/weights
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path


from sleepstaging.data import psg_layout
from cpu_info import cpu_description

REPO = Path(__file__).resolve().parents[1]

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
parser.add_argument("--weights-dir", type=Path, required=True, help="the models' checkpoints and model set")
parser.add_argument("--nights", type=int, default=8, help="synthetic nights to score")
parser.add_argument("--hours", type=float, default=6.0, help="mean scored length of a night")
parser.add_argument("--seed", type=int, default=1, help="make_synthetic.py seed (the demo trains on seed 0)")
parser.add_argument("--workers", type=int, default=2, help="render processes and DataLoader workers")
parser.add_argument("--chunk-nights", type=int, default=8, help="stage_edf.py --chunk-nights")
parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="stage_edf.py --device")
parser.add_argument("--render-ahead", type=int, default=None, help="stage_edf.py --render-ahead (default: its own)")
parser.add_argument("--no-review-pages", action="store_true", help="stage_edf.py --no-review-pages")
parser.add_argument("--no-figures", action="store_true", help="stage_edf.py --no-figures")
parser.add_argument("--yasa-venv", type=Path, default=REPO / ".venv-realism",
                    help="venv with bench/requirements-realism.txt (created when missing)")
parser.add_argument("--no-yasa", action="store_true", help="do not time YASA on the same nights")
parser.add_argument("--work", type=Path, default=REPO / "bench" / "data" / "cohort", help="scratch folder")
parser.add_argument("--result", type=Path, default=REPO / "bench" / "results" / "cohort_bench.json")
parser.add_argument("--figure", type=Path, default=REPO / "docs" / "cohort_night_lights.png",
                    help="where the first night's hypnogram figure is copied")

LIGHTS_MARGIN_SECONDS = 600.0  # lights off this long after the start, lights on this long before the end
FLAT_HOUR = (3600.0, 7200.0)  # the first night's chin EMG is zero over this span, s from its start


def run(*args, expect: int = 0) -> float:
    """Run ``python args...`` from the repository; return its wall time, s (stop unless it exits ``expect``)."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONHASHSEED="0"))
    if result.returncode != expect:
        raise SystemExit(f"{' '.join(map(str, args))} exited {result.returncode}, expected {expect}:\n"
                         f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def with_lights(source: Path, target: Path, flat: tuple | None) -> None:
    """``source`` with lights annotations (and its chin EMG zero over ``flat``, s), written to ``target``."""
    import edfio

    edf = edfio.read_edf(source)
    if flat is not None:
        signal = edf.get_signal("Chin EMG")
        data, rate = signal.data.copy(), signal.sampling_frequency
        data[int(flat[0] * rate):int(flat[1] * rate)] = 0.0
        signal.update_data(data, keep_physical_range=True)
    edf.add_annotations([edfio.EdfAnnotation(LIGHTS_MARGIN_SECONDS, None, "Lights off"),
                         edfio.EdfAnnotation(edf.duration - LIGHTS_MARGIN_SECONDS, None, "Lights on")])
    edf.write(target)


def gpu_name(device: str) -> str | None:
    """The GPU stage_edf.py scores on (``--device`` cuda, or auto on a machine with CUDA); None on the CPU."""
    if device == "cpu":
        return None
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def make_nights(args) -> tuple[Path, list[str]]:
    """The synthetic test nights' EDFs alone in one folder, with a truncated copy of the first."""
    data, nights = args.work / "DATA", args.work / "nights"
    shutil.rmtree(args.work, ignore_errors=True)
    run("make_synthetic.py", "--out", data, "--train-subjects", 1, "--test-subjects", args.nights, "--hours",
        args.hours, "--seed", args.seed, "--workers", args.workers, "--edf", "--quiet")
    nights.mkdir(parents=True)
    recording_ids = sorted(set(psg_layout.read_epoch_csv(data / psg_layout.TEST_CSV, False).recording_ids))
    for recording_id in recording_ids:
        with_lights(data / "edf" / f"{recording_id}.edf", nights / f"{recording_id}.edf",
                    flat=FLAT_HOUR if recording_id == recording_ids[0] else None)
    whole = (nights / f"{recording_ids[0]}.edf").read_bytes()
    (nights / "broken.edf").write_bytes(whole[:len(whole) // 2])
    return nights, recording_ids


def stage_command(args, nights: Path, out: Path) -> tuple:
    """The timed ``stage_edf.py`` command line."""
    command = ("stage_edf.py", "--edf", nights, "--weights-dir", args.weights_dir, "--out", out, "--workers",
               args.workers, "--chunk-nights", args.chunk_nights, "--device", args.device, "--quiet")
    if args.render_ahead is not None:
        command += ("--render-ahead", args.render_ahead)
    return command + tuple(f"--{flag.replace('_', '-')}" for flag in ("no_review_pages", "no_figures")
                           if getattr(args, flag))


def per_night(marker: dict, seconds: float, nights: int) -> dict:
    """Seconds per night: the whole command's, where the main process spent them, and the drawing's own.

    The drawing processes work while the main process infers (``--render-ahead``), so their seconds are
    beside the main process's, not a part of them; the main process waits for drawn nights only when
    the drawing is behind (its first nights always).
    """
    steps = marker["step_seconds"]
    main = {"waiting for drawn nights": steps["render"], "inference": steps["infer"],
            "blend, post-process, review pages": sum(steps[key] for key in ("blend", "post-process", "review page")),
            "other (start-up, imports, model loading, tables)": seconds - sum(steps.values())}
    return {"wall": round(seconds / nights, 2),
            "main process": {key: round(value / nights, 2) for key, value in main.items()},
            "drawing processes (busy, beside the main process)": round(marker["drawing"]["seconds"] / nights, 2)}


def time_yasa(args, nights: Path, recording_ids: list) -> dict:
    """YASA's SleepStaging over the same EDF files, in its own venv, timed as a whole command."""
    from realism import ensure_yasa_venv

    python = ensure_yasa_venv(args.yasa_venv)
    edfs = [nights / f"{recording_id}.edf" for recording_id in recording_ids]
    out = args.work / "yasa_stages.json"
    started = time.perf_counter()
    subprocess.run([str(python), str(REPO / "bench" / "realism_yasa.py"), "--out", str(out), *map(str, edfs)],
                   check=True, capture_output=True)
    seconds = time.perf_counter() - started
    staged = json.loads(out.read_text())
    version = subprocess.run([str(python), "-c", "import yasa; print(yasa.__version__)"], capture_output=True,
                             text=True, check=True).stdout.strip()
    return {"command": f"{args.yasa_venv.name}/bin/python bench/realism_yasa.py --out STAGES.json NIGHT.edf ...",
            "yasa": version, "nights": len(staged), "epochs": sum(map(len, staged.values())),
            "wall_seconds": round(seconds, 1), "seconds_per_night": round(seconds / len(staged), 2),
            "nights_per_hour": round(len(staged) / seconds * 3600, 1)}


def main() -> None:
    args = parser.parse_args()
    nights, recording_ids = make_nights(args)
    out = args.work / "scored"
    command = stage_command(args, nights, out)
    load_before = os.getloadavg()
    seconds = run(*command, expect=1)  # broken.edf fails; the others are scored
    resume_seconds = run(*command, "--resume", expect=1)
    marker = json.loads((out / "stage_edf.json").read_text())
    with open(out / "failures.csv", newline="") as handle:
        failed = [row["recording_id"] for row in csv.DictReader(handle)]
    if marker["recordings"] != recording_ids or failed != ["broken"]:
        raise SystemExit(f"scored {marker['recordings']}, failed {failed}; expected {recording_ids} and broken")
    epochs = sum(json.loads((out / i / f"{i}-render.json").read_text())["epochs_rendered"] for i in recording_ids)
    first = json.loads((out / recording_ids[0] / f"{recording_ids[0]}-statistics.json").read_text())
    if not args.no_figures:  # stage_edf.py drew none to copy
        args.figure.write_bytes((out / recording_ids[0] / f"{recording_ids[0]}-hypnogram.png").read_bytes())
    yasa = None if args.no_yasa else time_yasa(args, nights, recording_ids)
    report = {
        "command": "python bench/cohort_bench.py " + " ".join(sys.argv[1:]),
        "stage_edf": " ".join(os.path.relpath(part, REPO) if isinstance(part, Path) else str(part)
                              for part in command),
        "machine": cpu_description(), "gpu": gpu_name(args.device), "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()], "weights_dir": str(args.weights_dir),
        "nights": len(recording_ids), "hours_per_night": args.hours, "epochs": epochs,
        "wall_seconds": round(seconds, 1),
        "nights_per_hour": round(len(recording_ids) / seconds * 3600, 1),
        "epochs_per_second": round(epochs / seconds, 1),
        "seconds_per_night": per_night(marker, seconds, len(recording_ids)),
        "step_seconds": marker["step_seconds"],
        "peak_rss_mib": {"main process": marker["peak_rss_mib"], "drawing process": marker["drawing"]["peak_rss_mib"]},
        "render_ahead": marker["render_ahead"], "inference_threads": marker["inference_threads"],
        "resume_wall_seconds": round(resume_seconds, 1),
        "yasa": yasa,
        "first_night": {key: first[key] for key in ("period", "lights_off_clock", "lights_on_clock", "lights_source",
                                                    "epochs_outside_lights", "TIB", "TST", "SE", "epochs_flagged",
                                                    "quality_warnings")},
        "settings": {key: marker["settings"][key] for key in ("vit_arch", "eff_arch", "vit_epochs", "eff_epochs",
                                                               "postprocess", "tta", "no_figures", "no_review_pages")},
        "device": args.device, "workers": args.workers, "chunk_nights": args.chunk_nights,
    }
    args.result.parent.mkdir(parents=True, exist_ok=True)
    args.result.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
