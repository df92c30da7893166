"""Shared fixtures: a tiny synthetic data set and a way to run the scripts."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# Scripts run from a scratch folder (set per session below), so that what they write by default
# relative to the working folder (cache/, weights/, outputs/) stays out of the repository.
SCRATCH = REPO


@pytest.fixture(scope="session", autouse=True)
def scratch_working_folder(tmp_path_factory):
    global SCRATCH
    SCRATCH = tmp_path_factory.mktemp("cwd")


def run_script(script: str, *args, check: bool = True, timeout: float = 600, env=None) -> subprocess.CompletedProcess:
    """Run ``python <script> args...`` (a path in the repository) from the scratch folder, capturing output.

    The hash seed is pinned (``PYTHONHASHSEED=0``) unless ``env`` sets another.
    """
    full_env = {**os.environ, "PYTHONHASHSEED": "0", **(env or {})}
    result = subprocess.run(
        [sys.executable, str(REPO / script), *map(str, args)],
        cwd=SCRATCH, capture_output=True, text=True, timeout=timeout, env=full_env,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{script} exited {result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small synthetic data set in the challenge layout (shared, read-only).

    6 train and 2 test recordings of about 0.5 h each (about 60 epochs each),
    with EDF exports. Tests must not modify it: copy it first.
    """
    root = tmp_path_factory.mktemp("tiny") / "DATA"
    run_script(
        "make_synthetic.py", "--out", root, "--train-subjects", 6, "--test-subjects", 2,
        "--hours", 0.5, "--seed", 0, "--workers", 2, "--edf", "--quiet",
    )
    return root


def copy_subset(source: Path, target: Path, train_recordings: int, train_rows: int,
                test_recordings: int = 1, test_rows: int = 12) -> Path:
    """A smaller data root: the first rows of the first recordings of each CSV of ``source``, with their images."""
    import shutil

    import psg_layout

    for name, with_labels, recordings, per_recording in (
            (psg_layout.TRAIN_CSV, True, train_recordings, train_rows),
            (psg_layout.TEST_CSV, False, test_recordings, test_rows)):
        table = psg_layout.read_epoch_csv(source / name, with_labels=with_labels)
        keep = sorted(set(table.recording_ids))[:recordings]
        rows, counts = [], {}
        for row, (recording, idnum) in enumerate(zip(table.recording_ids, table.idnums)):
            if recording in keep and counts.get(recording, 0) < per_recording:
                counts[recording] = counts.get(recording, 0) + 1
                rows.append([recording, idnum] + ([psg_layout.STAGES[table.labels[row]]] if with_labels else []))
                (target / recording).mkdir(parents=True, exist_ok=True)
                shutil.copy2(source / recording / idnum, target / recording / idnum)
        psg_layout.write_csv_rows(target / name, rows)
    return target


@contextlib.contextmanager
def one_thread():
    """One BLAS thread for torch in this process while inside (training is fastest so on a busy 2-core machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def trainer_args(module, data_root: Path, weights_dir: Path, *options):
    """A trainer's parsed options (``module``: main_vit_rgb or main_eff) for a tiny run in this process.

    The options every in-process training run of the tests shares (data,
    weights and cache folders, no workers, quiet, random initialisation so nothing downloads) come first; ``options``
    (architecture, size, epochs...) follow and may override them. Run it
    with ``engine.train(trainer_args(...))``.
    """
    import engine

    shared = ["--data-root", data_root, "--weights-dir", weights_dir, "--cache-dir", Path(weights_dir).parent / "cache",
              "--workers", 0, "--quiet", "--pretrained", "none"]
    return engine.build_parser(module.DEFAULTS, module.__doc__).parse_args([str(o) for o in [*shared, *options]])


_WARM_LAUNCHER = r'''
import json, os, runpy, sys, traceback
repo, parallel = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, repo)
os.chdir(repo)
for name in sys.argv[3:]:
    __import__(name)  # imported once here; no torch op runs here, so forking stays safe
requests = [json.loads(line) for line in sys.stdin]
sys.stdout.flush()
sys.stderr.flush()


def run(request):
    """In the forked child: the script as `python script args...` would run it, then exit with its status."""
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.argv = request["argv"]
    status = 0
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as stop:
        if isinstance(stop.code, int) or stop.code is None:
            status = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            status = 1
    except BaseException:
        traceback.print_exc()
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


running, statuses, queue = {}, {}, list(enumerate(requests))
while queue or running:
    while queue and len(running) < parallel:
        index, request = queue.pop(0)
        pid = os.fork()
        if pid == 0:
            run(request)
        running[pid] = index
    pid, status = os.wait()
    statuses[running.pop(pid)] = os.waitstatus_to_exitcode(status)
print(json.dumps([statuses[index] for index in range(len(requests))]))
'''


def run_scripts_warm(requests, folder: Path, parallel: int = 3, timeout: float = 900,
                     preload=("engine", "loader_vit_rgb", "infer_blend")) -> list[subprocess.CompletedProcess]:
    """Run many scripts, each in its own process, without paying the torch/timm import each time.

    A launcher process imports ``preload`` once, then forks one child per
    request (``parallel`` at a time); each child runs the real script file as
    ``__main__`` with its own argv, environment additions, stdout and stderr
    (files under ``folder``) and exit status, as ``python script args...``
    would (an uncaught exception prints its traceback and gives status 1).

    Parameters
    ----------
    requests : sequence of (script, args, env) or (script, args, env, cwd)
        Script path relative to the repository, its arguments, extra
        environment, working folder (default: the scratch folder, as run_script).
    folder : Path
        Where the captured stdout/stderr files go.

    Returns
    -------
    list of subprocess.CompletedProcess, in request order.
    """
    import json

    folder.mkdir(parents=True, exist_ok=True)
    lines, outputs = [], []
    for number, (script, args, extra_env, *cwd) in enumerate(requests):
        argv = [str(REPO / script), *map(str, args)]
        out, err = folder / f"{number}.stdout", folder / f"{number}.stderr"
        lines.append(json.dumps({"argv": argv, "env": dict(extra_env or {}), "cwd": str(cwd[0] if cwd else SCRATCH),
                                 "stdout": str(out), "stderr": str(err)}))
        outputs.append((argv, out, err))
    launcher = subprocess.run(
        [sys.executable, "-c", _WARM_LAUNCHER, str(REPO), str(parallel), *preload],
        input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=timeout, cwd=REPO,
        env=dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1"),
    )
    if launcher.returncode != 0:
        raise AssertionError(f"launcher failed ({launcher.returncode}):\n{launcher.stderr[-4000:]}")
    statuses = json.loads(launcher.stdout.strip().splitlines()[-1])
    return [subprocess.CompletedProcess([sys.executable, *argv], status, out.read_text(), err.read_text())
            for (argv, out, err), status in zip(outputs, statuses)]


def write_random_checkpoints(data_root: Path, folder: Path, archs, epochs, img_size: int, split: dict) -> Path:
    """Checkpoints of freshly initialised models with the training config inference reads.

    For each architecture and epoch: ``<arch>_fold_0_<epoch>`` (seeded per
    model and epoch), and ``<arch>_fold_0_config.json`` naming fold 0's
    validation recordings of ``split`` (``folds``, ``seed``, ``cv``).
    """
    import json

    import numpy as np
    import torch

    import engine
    import loader_vit_rgb
    import psg_layout

    table = psg_layout.read_epoch_csv(Path(data_root) / psg_layout.TRAIN_CSV, with_labels=True)
    folds = loader_vit_rgb.make_folds(table, n_folds=split["folds"], seed=split["seed"], cv=split["cv"])
    valid_recordings = sorted({table.recording_ids[r] for r in np.flatnonzero(folds == 0)})
    for number, arch in enumerate(archs):
        for epoch in epochs:
            torch.manual_seed(10 * number + epoch)
            model = engine.create_model(arch, img_size)
            engine.save_weights(model, engine.checkpoint_path(folder, arch, 0, epoch))
        config = dict(model_arch=arch, img_size=img_size, num_classes=5, fold=0,
                      valid_recordings=valid_recordings, **split)
        engine.run_config_path(folder, arch, 0).write_text(json.dumps(config))
    return folder


# The fast loop: `bash run.sh test -m "not slow"` skips the tests below, which launch trainers, the
# generator or whole flows (as subprocesses or in process) and take seconds each; `bash run.sh test`
# (CI) runs everything. A file name marks its every test; a file name with test names marks those
# (parametrised cases included). tests/test_markers.py checks that every name here exists.
SLOW_TESTS = {
    "test_pipeline.py": None,                # the whole flow, every script as a subprocess
    "test_infer.py": {"test_dumps_rows_classes_and_names", "test_tta_rounds_average_plain_and_dropout_views",
                      "test_bad_checkpoints_end_with_one_line_and_exit_2",
                      "test_test_only_inference_without_a_training_csv",
                      "test_validation_skipped_when_the_fold_is_not_the_models"},   # infer_blend.py as a subprocess
    "test_train_ddp.py": None,               # torchrun with two processes
    "test_train_resume.py": None,            # two training runs, one stopped and resumed
    "test_geometry.py": {"test_each_trainer_records_its_geometry_and_caches_at_it",   # trainers, inference
                         "test_infer_blend_rebuilds_each_model_at_its_geometry",
                         "test_resume_refuses_another_geometry",
                         "test_resume_reads_an_older_configs_int_size_as_square"},
    "test_train_run.py": {"test_a_tiny_model_learns", "test_the_schedule_is_the_originals_two_steps_per_epoch",
                          "test_checkpoints_config_and_state_files",
                          "test_no_data_is_one_line_exit_2_and_writes_nothing"},
    "test_hardening_crashes.py": {"test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_bytes",
                                  "test_the_same_seed_and_data_give_the_same_checkpoint_bytes",
                                  "test_a_pickled_training_state_is_refused_and_never_executed",
                                  "test_a_cache_half_built_by_a_killed_run_is_detected_and_rebuilt"},
    "test_hardening_inputs.py": {"test_bad_csv_npy_and_settings_are_refused",
                                 "test_missing_data_root_names_it",
                                 "test_every_missing_or_outside_image_is_listed_before_training",
                                 "test_a_truncated_training_png_is_named_and_nothing_is_written",
                                 "test_a_pickled_pretrained_file_is_refused_unexecuted",
                                 "test_missing_test_images_are_listed_before_inference",
                                 "test_a_damaged_test_png_is_named", "test_wrong_checkpoints_are_refused",
                                 "test_grey_and_resized_images_are_converted_and_inference_is_repeatable",
                                 "test_an_output_folder_that_cannot_be_made_is_one_line"},
    "test_feature_baseline.py": {"test_a_run_scores_the_test_and_validation_rows",
                                 "test_a_size_that_is_not_a_multiple_of_the_block_is_refused"},
    "test_render_edf.py": {"test_synthetic_round_trip_matches_generator",
                           "test_sleep_edf_style_labels_trimming_and_units",
                           "test_sleep_edf_style_keeps_everything_without_trimming",
                           "test_shhs_style_recording_with_nsrr_xml_in_another_folder",
                           "test_recording_already_in_the_data_set_is_refused"},
    "test_synthetic.py": {"test_same_arguments_give_identical_bytes_whatever_the_workers",
                          "test_out_that_is_a_file_is_refused_by_the_script",
                          "test_the_hash_seed_changes_no_byte_and_the_seed_changes_every_image"},
    "test_evaluate.py": {"test_report_on_tiny_data"},
    "test_stage_edf.py": {"test_scores_an_unscored_night", "test_same_stages_as_the_layout_route",
                          "test_bad_input_ends_with_one_line_and_leaves_nothing",
                          "test_overwrite_replaces_an_earlier_result"},   # render, infer, blend as in use
    "test_train_engine.py": {"test_offline_imagenet_start_fails_at_once_in_one_line"},   # two trainers started
    "test_blend.py": {"test_blend_of_tiny_data"},                          # writes random checkpoints, infers
    "test_postprocess.py": {"test_per_recording_outputs_map_epochs_to_time"},   # draws hypnogram figures
    "test_hardening_fuzz.py": {"test_swapping_the_models_and_the_weight_changes_no_label",
                               "test_scaling_the_rows_changes_no_rank_label"},
    "test_synthetic_realism.py": None,                                    # two 2-h nights of raw signals
    "test_markers.py": {"test_not_slow_deselects_exactly_the_slow_tests"},   # three pytest runs
    "test_model_set.py": {"test_model_set_records_models_blend_and_the_hmm_counted_without_the_validation_nights",
                          "test_model_set_refuses_models_of_different_stage_balance_and_a_broken_record",
                          "test_postprocess_takes_the_hmm_from_the_model_set_and_flags_override",
                          "test_stage_edf_refuses_a_wrong_weights_folder_before_rendering",
                          "test_render_edf_finds_the_montage_that_fits_the_channels"},   # scripts, the generator
}

# Tests of a second or more each on an idle 2-core machine (script runs, image rendering, cache
# building), measured with `pytest -m 'not slow' --durations=0`: also left out of the fast loop.
_ONE_SECOND_OR_MORE = {
    'test_blend.py': {
        'test_bad_dumps_end_with_one_line_and_exit_2',
        'test_missing_inputs_say_how_to_make_them',
        'test_tta_comes_from_infer_blend_configuration',
        'test_tune_then_from_tune',
    },
    'test_cache.py': {
        'test_batches_depend_on_seed_and_epoch_only',
        'test_cache_inside_the_data_root_is_refused_before_anything_is_written',
        'test_eval_batches_equal_the_per_sample_path',
        'test_mixed_targets_and_shares_match_the_per_sample_path',
    },
    'test_evaluate.py': {
        'test_bad_input_ends_with_one_line_and_exit_2',
        'test_context_rows_need_consecutive_validation_epochs',
    },
    'test_fmix_spectrum.py': {
        'test_the_original_spectrum_has_no_structure_beyond_one_cycle_along_the_width',
    },
    'test_hardening_crashes.py': {
        'test_a_writer_killed_midway_leaves_the_old_file_whole',
        'test_every_write_of_the_pipeline_goes_through_atomic_path',
    },
    'test_hardening_fuzz.py': {
        'test_blend_gives_one_valid_stage_per_row',
        'test_hmm_keeps_length_and_stages_and_treats_each_recording_alone',
        'test_random_rows_are_read_exactly_or_refused',
        'test_the_blend_command_writes_what_the_library_computes',
    },
    'test_hardening_inputs.py': {
        'test_a_header_row_is_accepted_and_skipped',
    },
    'test_hypnogram.py': {
        'test_recording_outputs_without_a_start_time',
    },
    'test_postprocess.py': {
        'test_bad_blend_csv_ends_with_one_line_and_exit_2',
        'test_command_hmm',
        'test_command_rules_and_across',
        'test_missing_inputs_say_how_to_make_them',
        'test_rules_on_tiny_data_stop_at_the_recording_boundary',
    },
    'test_render_edf.py': {
        'test_each_image_shows_its_own_epochs_samples_on_a_grid_starting_at_15_s',
        'test_hypnogram_longer_than_the_recording_is_refused',
        'test_scorer_grid_that_starts_after_the_first_sample',
        'test_unknown_montage_channel_is_refused',
        'test_unknown_stage_name_is_refused',
        'test_unreadable_edf_is_refused',
        'test_unscored_recording_renders_every_whole_epoch_with_its_timing',
    },
    'test_synthetic.py': {
        'test_same_arguments_skip_and_other_data_is_never_overwritten',
    },
    'test_train_engine.py': {
        'test_imagenet_asks_timm_for_the_original_weights',
    },
}
for _file, _names in _ONE_SECOND_OR_MORE.items():
    if _file not in SLOW_TESTS or SLOW_TESTS[_file] is not None:
        SLOW_TESTS[_file] = set(SLOW_TESTS.get(_file) or ()) | _names


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: launches trainers, the generator or a whole flow; "
                                       "skipped by the fast loop (-m 'not slow')")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark the tests of ``SLOW_TESTS`` ``slow``, before ``-m`` selects."""
    for item in items:
        names = SLOW_TESTS.get(item.path.name, ())
        if names is None or item.originalname in names:
            item.add_marker(pytest.mark.slow)
