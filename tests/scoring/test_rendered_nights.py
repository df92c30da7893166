"""Rendered nights straight to the models (stage_edf.py): the same pictures, pixels and probabilities as the PNG path.

Two short EDF nights of three noisy channels are drawn once with the
arrays kept (rendered_nights.render_night) and once as render_edf.py draws
them (PNG files alone); two tiny random-initialised models, one shrinking
with linear and one with area interpolation, score them both ways:
through their PNG files with the per-sample loaders (what stage_edf.py did
before, ``inference.checkpoint_probabilities``) and through the arrays
(``inference.ChunkInference``), with two TTA rounds and batches that cross
the nights' boundary.
"""
from __future__ import annotations

import datetime
import json

import edfio
import numpy as np
import pytest
import torch

from sleepstaging.data import image_cache, loaders, psg_layout
from sleepstaging.edf import render
from sleepstaging.output_names import checkpoint_path
from sleepstaging.scoring import cohort, inference, models, review_page
from sleepstaging.scoring.rendered_nights import (RENDERED_EPOCHS, RenderAhead, RenderSettings, input_spec,
                                                  render_night, rendered_images)

EPOCHS = 13  # per night: with batches of 8, the second night's first batch holds the first night's last 5 epochs
MONTAGE = {"rows": {"C3-M2": {"channel": "EEG"}, "E1-M2": {"channel": "EOG"}, "Chin EMG": {"channel": "EMG"}}}
CONFIGS = {"vit": ("test_vit", [0, 1], {"img_size": (32, 32), "resize": "linear"}),
           "eff": ("test_efficientnet", [0], {"img_size": (24, 40), "resize": "area"})}


def write_night(path, seed: int):
    """An EDF of EPOCHS 30-s epochs: EEG and EOG at 100 Hz, EMG at 200 Hz, all noise (seeded)."""
    rng = np.random.default_rng(seed)
    signals = [edfio.EdfSignal(rng.normal(0, amplitude, EPOCHS * 30 * rate), rate, label=label,
                               physical_dimension="uV", physical_range=(-500, 500))
               for label, rate, amplitude in (("EEG", 100, 40), ("EOG", 100, 60), ("EMG", 200, 10))]
    start = datetime.datetime(2026, 1, 5, 22, 30)
    edfio.Edf(signals, starttime=start.time(), recording=edfio.Recording(startdate=start.date())).write(path)
    return render.RecordingSource(path.stem, path, None)


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nights")
    (folder / "montage.json").write_text(json.dumps(MONTAGE))
    return folder, [write_night(folder / f"N{seed}.edf", seed) for seed in (1, 2)]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """cohort.load_models' dict of two tiny models, their checkpoints written and read back."""
    weights = tmp_path_factory.mktemp("weights")
    found = {}
    for number, (key, (arch, epochs, config)) in enumerate(CONFIGS.items()):
        config = dict(config, model_arch=arch, num_classes=5, stage_balance=0.0)
        for epoch in epochs:
            torch.manual_seed(10 * number + epoch)
            models.save_weights(models.create_model(arch, config["img_size"]), checkpoint_path(weights, arch, 0, epoch))
        found[key] = (arch, epochs, config,
                      list(inference.load_checkpoints(arch, epochs, config, weights, 0, torch.device("cpu"))))
    return found


@pytest.fixture(scope="module")
def drawn(nights, loaded, tmp_path_factory):
    """Both nights drawn with their arrays and PNG files kept: (data root, RenderedNight per night)."""
    folder, sources = nights
    data = tmp_path_factory.mktemp("arrays") / "DATA"
    specs = [input_spec(config) for _, _, config, _ in loaded.values()]
    settings = RenderSettings(str(folder / "montage.json"), data, {}, tuple(specs), keep_images=True, keep_full=True)
    rendered = [render_night(source, settings, {}) for source in sources]
    cohort.write_test_csv(data, [source.recording_id for source in sources])
    return data, rendered


def test_the_grey_resize_is_each_channel_of_the_caches_resize():
    """image_cache.resize_grey against the albumentations Resize the cache and the loaders use, to the bit."""
    rng = np.random.default_rng(0)
    signals = {name: rng.normal(0, 50, round(signal.fs * 30)) for name, signal in psg_layout.SIGNAL_BY_NAME.items()}
    image = psg_layout.render_epoch(signals)
    grey = image[:, :, 0]
    assert np.array_equal(image, np.stack([grey] * 3, axis=2))  # render_epoch draws grey
    for resize in image_cache.RESIZE_INTERPOLATIONS:
        for size in ((64, 64), (32, 32), (24, 40), (psg_layout.IMAGE_HEIGHT, psg_layout.IMAGE_WIDTH)):
            expected = image_cache.make_resize(size, resize)(image=image)["image"]
            shrunk = image_cache.resize_grey(np.ascontiguousarray(grey), size, resize)
            assert shrunk.shape == size and all(np.array_equal(shrunk, expected[:, :, c]) for c in range(3))


def test_the_kept_pictures_are_those_of_the_png_path_to_the_byte(nights, drawn, tmp_path):
    folder, sources = nights
    data, rendered = drawn
    for source, night in zip(sources, rendered):
        plain = render.render_unscored_night(source, str(folder / "montage.json"), tmp_path, {})  # PNG files only
        assert plain["epochs_rendered"] == EPOCHS == night.epochs
        names = sorted(p.name for p in (tmp_path / source.recording_id).glob("*.png"))
        assert len(names) == EPOCHS and not (tmp_path / source.recording_id / RENDERED_EPOCHS).exists()
        full = rendered_images(data, source.recording_id)
        for index, name in enumerate(names):
            assert (data / source.recording_id / name).read_bytes() == (tmp_path / source.recording_id / name).read_bytes()
            pixels = image_cache.read_image_rgb(data / source.recording_id / name)
            assert np.array_equal(pixels, np.stack([full[index]] * 3, axis=2))
        for (height, width, resize), inputs in night.inputs.items():  # the model inputs: the cache's pixels
            assert inputs.shape == (EPOCHS, 1, height, width)
            assert np.array_equal(inputs[:, 0], [image_cache.make_resize((height, width), resize)(
                image=image_cache.read_image_rgb(data / source.recording_id / name))["image"][:, :, 0] for name in names])


def probabilities_from_files(loaded, data, tta: int, batch_size: int) -> dict:
    """What stage_edf.py computed before: each model over the data root's PNG files, per-sample loaders."""
    options = inference.InferenceOptions(data_root=data, weights_dir=data, out=data, fold=0, tta=tta,
                                         batch_size=batch_size, workers=0)
    test = loaders.read_test_table(data)
    return {key: inference.checkpoint_probabilities(checkpoints, config, options, {"test": (test, np.arange(len(test)))},
                                                    torch.device("cpu"))["test"]
            for key, (_, _, config, checkpoints) in loaded.items()}


def probabilities_from_arrays(loaded, data, rendered, tta: int, batch_size: int) -> dict:
    options = inference.InferenceOptions(data_root=data, weights_dir=data, out=data, fold=0, tta=tta,
                                         batch_size=batch_size)
    chunk = inference.ChunkInference(loaded, options, torch.device("cpu"))
    for night in rendered:
        chunk.add_night(night.inputs, rendered_images(data, night.recording_id))
    return chunk.finish()


@pytest.mark.parametrize("tta", [1, 2])
def test_the_arrays_give_the_probabilities_of_the_png_files_to_the_bit(loaded, drawn, tta):
    data, rendered = drawn
    from_files = probabilities_from_files(loaded, data, tta, batch_size=8)
    from_arrays = probabilities_from_arrays(loaded, data, rendered, tta, batch_size=8)
    for key in loaded:
        assert from_arrays[key].dtype == np.float32 and from_arrays[key].shape == (2 * EPOCHS, 5)
        assert np.array_equal(from_arrays[key], from_files[key])
    if tta == 2:  # the second round's holes do change the probabilities: it is not round 0 twice
        once = probabilities_from_arrays(loaded, data, rendered, 1, batch_size=8)
        assert not np.array_equal(once["vit"], from_arrays["vit"])


@pytest.mark.slow
def test_the_number_of_threads_changes_at_most_the_last_bits(loaded, drawn):
    """stage_edf.py infers on the cores its drawing processes leave (cohort.inference_threads): the same threads
    give the same bits; other threads may change the last bits of EfficientNet's short batches, no more."""
    data, rendered = drawn
    threads = torch.get_num_threads()
    try:
        runs = []
        for count in (1, 1, 2):
            torch.set_num_threads(count)
            runs.append(probabilities_from_arrays(loaded, data, rendered, 1, batch_size=8))
    finally:
        torch.set_num_threads(threads)
    assert all(np.array_equal(runs[0][key], runs[1][key]) for key in loaded)
    assert all(np.allclose(runs[0][key], runs[2][key], rtol=0, atol=1e-6) for key in loaded)


def test_the_review_page_encodes_the_same_images_from_memory_and_from_the_files(drawn):
    data, rendered = drawn
    recording_id = rendered[0].recording_id
    paths = sorted((data / recording_id).glob("*.png"))
    order = np.random.default_rng(3).permutation(EPOCHS)
    from_files = review_page.encode_images(paths, order, budget=60_000, workers=2)
    from_memory = review_page.encode_images(rendered_images(data, recording_id), order, budget=60_000, workers=2)
    assert from_memory == from_files and 0 < sum(from_files[1]) < EPOCHS  # some full size, some not


def test_render_ahead_hands_the_nights_over_in_order_a_bad_one_as_its_error(nights, loaded, tmp_path):
    folder, sources = nights
    broken = tmp_path / "broken.edf"
    broken.write_bytes(sources[0].edf.read_bytes()[:3000])
    queue = [sources[0], render.RecordingSource("broken", broken, None), sources[1]]
    settings = RenderSettings(str(folder / "montage.json"), tmp_path / "DATA", {}, ((32, 32, "area"),), False, False)
    lights = []
    renders = RenderAhead(queue, settings, lambda recording_id: lights.append(recording_id) or {}, None, 0)
    first = renders.nights(queue[:2])
    assert [source.recording_id for source, _ in first] == [sources[0].recording_id, "broken"]
    assert first[0][1].epochs == EPOCHS and isinstance(first[1][1], Exception) and "truncated" in str(first[1][1])
    assert [night.recording_id for _, night in renders.nights(queue[2:])] == [sources[1].recording_id]
    assert lights == [s.recording_id for s in queue] and len(renders.renders) == 2
    assert not list((tmp_path / "DATA").glob("*/*.png"))  # no PNG file without --keep-images
    assert not (tmp_path / "DATA" / sources[0].recording_id / RENDERED_EPOCHS).exists()
    with pytest.raises(ValueError, match="needs a pool"):
        RenderAhead(queue, settings, dict, None, 2)


def test_with_a_pool_the_next_chunk_is_drawn_while_this_one_is_finished(nights, tmp_path):
    """--render-ahead 0 with a pool: draw_next submits the next chunk's nights (its lights are asked for then)."""
    from concurrent.futures import ThreadPoolExecutor

    folder, sources = nights
    queue = [sources[0], sources[1], sources[0]]
    settings = RenderSettings(str(folder / "montage.json"), tmp_path / "DATA", {}, ((32, 32, "area"),), False, False)
    asked = []
    with ThreadPoolExecutor(2) as pool:
        renders = RenderAhead(queue, settings, lambda recording_id: asked.append(recording_id) or {}, pool, 0)
        first = renders.nights(queue[:1])
        assert asked == [sources[0].recording_id] and first[0][1].epochs == EPOCHS
        renders.draw_next(1)
        assert asked == [sources[0].recording_id, sources[1].recording_id]
        assert [night.recording_id for _, night in renders.nights(queue[1:2])] == [sources[1].recording_id]
        ahead = RenderAhead(queue, settings, dict, pool, 1)  # drawing ahead: draw_next has nothing to add
        ahead.draw_next(3)
        assert not ahead.submitted


def test_stage_edf_draws_ahead_by_default_on_cuda_only(tmp_path):
    import stage_edf
    from sleepstaging.script_io import InputError

    def resolved(device, *extra):
        args = stage_edf.parser.parse_args(["--edf", str(tmp_path), "--weights-dir", str(tmp_path), "--out",
                                            str(tmp_path / "out"), *map(str, extra)])
        stage_edf.resolve_settings(args)
        stage_edf.check_args(args)
        return cohort.resolve_render_ahead(args, torch.device(device))

    assert [resolved("cpu", "--workers", workers) for workers in (1, 2, 3)] == [0, 0, 0]
    assert [resolved("cuda", "--workers", workers) for workers in (1, 2, 3)] == [2, 4, 6]
    assert (resolved("cpu", "--workers", 1, "--render-ahead", 2), resolved("cuda", "--render-ahead", 0)) == (2, 0)
    with pytest.raises(InputError, match="--render-ahead must be 0 or more, got -1"):
        resolved("cpu", "--render-ahead", -1)


def test_the_full_size_epochs_file_holds_the_drawn_images_and_appears_only_when_finished(tmp_path):
    from sleepstaging.scoring.rendered_nights import EpochArrays

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, psg_layout.IMAGE_HEIGHT, psg_layout.IMAGE_WIDTH), dtype=np.uint8)
    arrays = EpochArrays([(32, 32, "area")], keep_full=True)
    arrays.begin(3, tmp_path)
    for index, image in enumerate(images):
        arrays.add(index, image)
    assert not (tmp_path / RENDERED_EPOCHS).exists()  # a night cut short leaves no file under the name
    arrays.finish()
    np.testing.assert_array_equal(np.load(tmp_path / RENDERED_EPOCHS), images)
    assert sorted(p.name for p in tmp_path.iterdir()) == [RENDERED_EPOCHS]  # no temporary file left
    assert arrays.inputs[(32, 32, "area")].shape == (3, 1, 32, 32)
