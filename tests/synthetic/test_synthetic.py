"""make_synthetic.py (with its synthetic_* modules) and psg_layout's renderer.

Layout, labels, EDF, determinism, physiology, errors.
"""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import edfio
import numpy as np
import pytest
from scipy.signal import butter, find_peaks, hilbert, sosfiltfilt, welch

import make_synthetic

from sleepstaging.synthetic import dataset
from sleepstaging.data import psg_layout
from sleepstaging import script_io
from sleepstaging.synthetic import hypnogram as synthetic_hypnogram
from sleepstaging.synthetic import recording as synthetic_recording
from conftest import run_script
from sleepstaging.data.psg_layout import STAGE_TO_INT

W, N1, N2, N3, REM = range(5)
ADULT_NORMS = {"Wake": (5, 20), "N1": (3, 16), "N2": (40, 60), "N3": (8, 25), "REM": (14, 27)}  # % of one night's scored epochs


def run_in_process(*args, monkeypatch, capsys):
    """``python make_synthetic.py args`` inside this process (no interpreter start-up): (exit status, out, err)."""
    monkeypatch.setattr("sys.argv", ["make_synthetic.py", *map(str, args)])
    capsys.readouterr()
    try:
        script_io.run_main(make_synthetic.main)
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def make_small(out, *extra, monkeypatch, capsys, workers=1, hours=0.05):
    """One train and one test night of about 3 minutes scored (plus unscored leading epochs)."""
    return run_in_process("--out", out, "--train-subjects", 1, "--test-subjects", 1, "--hours", hours,
                          "--seed", 3, "--workers", workers, "--quiet", *extra, monkeypatch=monkeypatch, capsys=capsys)


def image_numbers(folder):
    return sorted(int(p.stem.rsplit("_", 1)[1]) for p in folder.glob("*.png"))


# --------------------------------------------------------------------------
# Layout of the data set
# --------------------------------------------------------------------------
def test_layout_and_csv_format(tiny_data):
    train = psg_layout.read_epoch_csv(tiny_data / psg_layout.TRAIN_CSV, with_labels=True)
    test = psg_layout.read_epoch_csv(tiny_data / psg_layout.TEST_CSV, with_labels=False)
    answers = psg_layout.read_epoch_csv(tiny_data / psg_layout.TEST_LABELS_CSV, with_labels=True)
    train_ids, test_ids = list(dict.fromkeys(train.recording_ids)), list(dict.fromkeys(test.recording_ids))
    assert len(train_ids) == 6 and len(test_ids) == 2 and not set(train_ids) & set(test_ids)
    assert all(re.fullmatch(r"A2026-SY-01-\d{4}", rec_id) for rec_id in train_ids + test_ids)
    assert (answers.recording_ids, answers.idnums) == (test.recording_ids, test.idnums)
    # no header, exactly two or three columns
    first_train = (tiny_data / psg_layout.TRAIN_CSV).read_text().splitlines()[0].split(",")
    first_test = (tiny_data / psg_layout.TEST_CSV).read_text().splitlines()[0].split(",")
    assert len(first_train) == 3 and first_train[2] in psg_layout.STAGES and len(first_test) == 2
    for table in (train, test):
        for rec_id in dict.fromkeys(table.recording_ids):
            numbers = [int(idnum[len(rec_id) + 1:-4]) for r, idnum in zip(table.recording_ids, table.idnums)
                       if r == rec_id]
            assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # time order, no gaps
            assert numbers[-1] == image_numbers(tiny_data / rec_id)[-1]  # scored to the last image
    # every stage occurs even in half-hour nights
    assert set(train.labels.tolist()) == set(range(5))
    image = cv2.imread(str(psg_layout.image_path(tiny_data, train.recording_ids[0], train.idnums[0])),
                       cv2.IMREAD_UNCHANGED)
    assert image.shape == (270, 480, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()  # grey
    assert image.max() > 200 and (image == 0).mean() > 0.5  # bright traces on black


def test_unlabelled_leading_epochs(tiny_data):
    train = psg_layout.read_epoch_csv(tiny_data / psg_layout.TRAIN_CSV, with_labels=True)
    test = psg_layout.read_epoch_csv(tiny_data / psg_layout.TEST_CSV, with_labels=False)
    listed = set(train.idnums) | set(test.idnums)
    for rec_id in dict.fromkeys(train.recording_ids + test.recording_ids):
        numbers = image_numbers(tiny_data / rec_id)
        assert numbers == list(range(1, len(numbers) + 1))
        unlisted = [n for n in numbers if psg_layout.image_name(rec_id, n) not in listed]
        assert 2 <= len(unlisted) <= 15 and unlisted == list(range(1, len(unlisted) + 1))


def test_edf_export_matches_images_and_labels(tiny_data):
    answers = psg_layout.read_epoch_csv(tiny_data / psg_layout.TEST_LABELS_CSV, with_labels=True)
    rec_id = answers.recording_ids[0]
    edf = edfio.read_edf(tiny_data / "edf" / f"{rec_id}.edf")
    spo2_rows = ("SpO2 (85-100 %)", "SpO2 (40-100 %)")
    expected = [name for name in psg_layout.SIGNAL_NAMES if name not in spo2_rows]
    expected.insert(psg_layout.SIGNAL_NAMES.index(spo2_rows[0]), "SpO2")
    assert list(edf.labels) == expected and edf.reserved == "EDF+C"
    n_images = len(image_numbers(tiny_data / rec_id))
    assert edf.duration == 30 * n_images
    by_label = {signal.label: signal for signal in edf.signals}
    assert by_label["C3-M2"].physical_dimension == "uV" and by_label["SpO2"].physical_dimension == "%"
    for name in expected:
        table_name = spo2_rows[0] if name == "SpO2" else name
        assert by_label[name].sampling_frequency == psg_layout.SIGNAL_BY_NAME[table_name].fs

    stages = (tiny_data / "edf" / f"{rec_id}.hypnogram.csv").read_text().splitlines()
    assert len(stages) == n_images
    n_unscored = stages.count("?")
    assert stages[:n_unscored] == ["?"] * n_unscored and n_unscored >= 2
    mine = [label for r, label in zip(answers.recording_ids, answers.labels) if r == rec_id]
    assert [STAGE_TO_INT[s] for s in stages[n_unscored:]] == mine

    # an image rendered from the EDF alone matches the data set's PNG within one grey level
    for epoch in (0, n_unscored, n_images - 1):
        rows = {}
        for signal in edf.signals:
            per_epoch = round(signal.sampling_frequency * 30)
            piece = signal.data[epoch * per_epoch:(epoch + 1) * per_epoch]
            for row in (spo2_rows if signal.label == "SpO2" else (signal.label,)):
                rows[row] = piece
        png = cv2.imread(str(tiny_data / rec_id / psg_layout.image_name(rec_id, epoch + 1)))
        assert np.abs(psg_layout.render_epoch(rows).astype(int) - png).max() <= 1


@pytest.mark.slow
def test_same_arguments_give_identical_bytes_whatever_the_workers(tmp_path, monkeypatch, capsys):
    assert make_small(tmp_path / "a", "--edf", workers=1, monkeypatch=monkeypatch, capsys=capsys)[0] == 0
    assert make_small(tmp_path / "b", "--edf", workers=2, monkeypatch=monkeypatch, capsys=capsys)[0] == 0
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 20
    for relative in files_a:
        if relative.name != dataset.MARKER_NAME:  # holds --workers
            assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes(), relative


def files_of(folder):
    """Every file under ``folder`` but the run's marker (it holds the options): relative path -> bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != dataset.MARKER_NAME}


@pytest.mark.slow
def test_the_hash_seed_changes_no_byte_and_the_seed_changes_every_image(tmp_path, monkeypatch, capsys):
    small = ["--train-subjects", 1, "--test-subjects", 1, "--hours", 0.05, "--workers", 1, "--quiet"]
    for hash_seed in ("1", "2"):  # each interpreter its own string hashing: an order taken from a set would show
        run_script("make_synthetic.py", "--out", tmp_path / hash_seed, "--seed", 3, *small,
                   env={"PYTHONHASHSEED": hash_seed})
    one, two = files_of(tmp_path / "1"), files_of(tmp_path / "2")
    assert len(one) > 10 and one == two
    assert make_small(tmp_path / "other", "--seed", 4, monkeypatch=monkeypatch, capsys=capsys)[0] == 0
    other = files_of(tmp_path / "other")
    images = [name for name in one if name.suffix == ".png" and name in other]
    assert len(images) > 10 and all(one[name] != other[name] for name in images)
    assert one[Path(psg_layout.TRAIN_CSV)] != other[Path(psg_layout.TRAIN_CSV)]


# --------------------------------------------------------------------------
# Hypnograms
# --------------------------------------------------------------------------
def rem_periods(scored):
    """(first, last) epochs of REM periods; REM less than 15 min apart is one period."""
    rem = np.flatnonzero(scored == REM)
    breaks = np.flatnonzero(np.diff(rem) > 30)
    return list(zip(rem[np.r_[0, breaks + 1]], rem[np.r_[breaks, len(rem) - 1]]))


def rem_periods_of_substance(scored, min_rem=5):
    """REM periods (REM epochs less than 15 min apart) holding at least ``min_rem`` REM epochs: an isolated
    REM epoch read at a border (as scorers do) is no REM period."""
    return [(first, last) for first, last in rem_periods(scored) if np.sum(scored[first:last + 1] == REM) >= min_rem]


def persistent_sleep_latency(scored, run=20):
    """Epochs before the first 10 min (20 epochs) of uninterrupted sleep: the clinical latency to persistent sleep."""
    sleeping = np.convolve((scored != W).astype(int), np.ones(run, dtype=int), "valid")
    return int(np.flatnonzero(sleeping == run)[0])


# Per-night bounds are wider than ADULT_NORMS: those are ranges of adults' typical nights, and single nights of
# healthy adults spread further (one night of 6 h with 7 % REM or 24 % N3 is within normal night-to-night
# variation); the population's ranges are asserted on the nights pooled.
SINGLE_NIGHT_BOUNDS = {"Wake": (2, 25), "N1": (3, 20), "N2": (35, 65), "N3": (5, 30), "REM": (5, 30)}


def test_full_nights_follow_adult_architecture():
    pooled, n3_early, first_shorter, cycle_epochs, onset_n1, after_wake, woken = np.zeros(5), [], [], [], [], [], []
    for seed in (0, 1, 2):
        for index in range(10):
            night = synthetic_hypnogram.recording_hypnogram(seed, index, 6.1)
            n_unscored = int(np.sum(night == synthetic_hypnogram.UNSCORED))
            assert 2 <= n_unscored <= 15 and (night[:n_unscored] == synthetic_hypnogram.UNSCORED).all()
            scored = night[n_unscored:]
            assert abs(len(scored) / 120 - 6.1) < 0.5
            counts = np.bincount(scored, minlength=5)
            pooled += counts
            for stage, (low, high) in SINGLE_NIGHT_BOUNDS.items():
                assert low <= counts[STAGE_TO_INT[stage]] / len(scored) * 100 <= high, (seed, index, stage)
            # awake first, falling asleep (through N1 in most nights: 4 % of real wake's changes go to N2),
            # settled asleep within 5-50 min
            assert scored[0] == W
            onset_n1.append(scored[np.flatnonzero(scored != W)[0]] == N1)
            assert 10 <= persistent_sleep_latency(scored) <= 100, (seed, index)
            n3_early.append(np.mean(np.flatnonzero(scored == N3) < len(scored) / 3))
            periods = rem_periods_of_substance(scored)
            lengths = [last - first + 1 for first, last in periods]
            assert 2 <= len(periods) <= 6, (seed, index, lengths)
            first_shorter.append(lengths[0] < lengths[-1])
            cycle_epochs.append(np.mean(np.diff([first for first, _ in periods])))
            # awakenings during the night, most followed by N1 (real nights: 87 % of Wake's exits; a single
            # night with few awakenings may have none)
            awakenings = np.flatnonzero((scored[1:] == W) & (scored[:-1] != W)) + 1
            assert len(awakenings) >= 2  # the final one and at least one in the night
            woken.append(len(awakenings))
            after_wake += [scored[np.flatnonzero(scored[a:] != W)[0] + a] for a in awakenings if (scored[a:] != W).any()]
    share = pooled / pooled.sum() * 100
    for stage, (low, high) in ADULT_NORMS.items():
        assert low <= share[STAGE_TO_INT[stage]] <= high, (stage, share.round(1))
    assert np.mean(onset_n1) >= 0.8 and np.mean(np.array(after_wake) == N1) >= 0.7 and np.mean(woken) >= 5
    assert np.mean(n3_early) > 0.55 and min(n3_early) > 0.4  # N3 mostly in the first third of the night
    assert np.mean(first_shorter) >= 2 / 3  # REM lengthening towards morning, in most nights
    assert 140 <= np.mean(cycle_epochs) <= 220 and 80 <= min(cycle_epochs) and max(cycle_epochs) <= 240  # ~90-min cycles


# Metzner et al. 2021's 30-s transition counts (yasa 0.8.1's simulate_hypnogram default), Wake N1 N2 N3 REM
METZNER_COUNTS = np.array([[11737, 571, 84, 2, 2], [281, 6697, 1661, 11, 59], [253, 1070, 26259, 505, 272],
                           [49, 176, 279, 9630, 12], [57, 189, 84, 2, 10071]], dtype=float)


def exit_shares(counts):
    changes = counts - np.diag(np.diag(counts))
    return changes / changes.sum(axis=1, keepdims=True)


def test_stage_changes_and_bouts_are_those_of_real_nights():
    counts, night_wake_bouts, n3_bouts, rem_bouts = np.zeros((5, 5)), [], [], []
    for index in range(30):
        labels = synthetic_hypnogram.recording_hypnogram(1, index, 7.0)
        labels = labels[labels >= 0].astype(int)
        np.add.at(counts, (labels[:-1], labels[1:]), 1)
        starts = np.r_[0, np.flatnonzero(np.diff(labels)) + 1]
        lengths, stage = np.diff(np.r_[starts, len(labels)]), labels[starts]
        asleep = np.flatnonzero(labels != W)
        inside = (starts > asleep[0]) & (starts < asleep[-1])
        night_wake_bouts += lengths[(stage == W) & inside].tolist()
        n3_bouts += lengths[stage == N3].tolist()
        rem_bouts.append(np.sum(stage == REM))
    real = exit_shares(METZNER_COUNTS)
    assert (counts[real >= 0.02] > 0).all()  # every change real nights make in 2 % of a stage's exits occurs
    assert np.abs(exit_shares(counts) - real).max() <= 0.10
    assert np.mean(np.array(night_wake_bouts) == 1) >= 0.5
    # and a power law's long tail: a few awakenings of 5 min or more, wake after sleep onset past 10 min a night
    assert np.sum(np.array(night_wake_bouts) >= 10) >= 10 and sum(night_wake_bouts) / 30 / 2 >= 10
    assert np.mean(n3_bouts) >= 15 and 8 <= np.mean(rem_bouts) <= 14


def test_night_time_wake_is_left_as_a_power_law_says():
    # EXIT_AWAY[W] = 0.67 and exponent 1.4 give scale 1 / (0.33 ** (-1 / 1.4) - 1) = 0.82809; survival after
    # d epochs (1 + d / 0.82809) ** -1.4: 0.33 after one epoch, 0.17915 after two, 0.027349 after ten
    leaving = np.array([synthetic_hypnogram.night_wake_leaving(d) for d in range(1, 11)])
    survival = np.cumprod(1 - leaving)
    np.testing.assert_allclose(survival[[0, 1, 9]], [0.33, 0.17915, 0.027349], rtol=1e-4)
    assert np.all(np.diff(leaving) < 0)  # the longer awake, the less likely to fall asleep again
    assert synthetic_hypnogram.leaving_rate(W, N2, 3) == leaving[2]
    assert synthetic_hypnogram.leaving_rate(W, W, 3) == synthetic_hypnogram.EXIT_AT_HOME[W]
    assert synthetic_hypnogram.leaving_rate(N1, N2, 3) == synthetic_hypnogram.EXIT_AWAY[N1]


def test_features_decide_the_labels_and_the_panel_disagrees_as_experts_do():
    from sleepstaging.synthetic import scoring as scoring
    process, night = synthetic_hypnogram.recording_night(2, 0, 7.0)
    kept = process >= 0
    features = {name: values[kept] for name, values in night.features.items()}
    labels = night.labels[kept]
    assert (labels[features["alpha"] > 0.5] == W).all()  # alpha over half the epoch: Wake
    assert (labels[(features["alpha"] <= 0.5) & (features["slow_waves"] > 0.2)] == N3).all()
    assert np.allclose(night.hypnodensity.sum(axis=1), 1)
    unanimous = np.mean(night.hypnodensity[kept].max(axis=1) == 1)
    assert 0.32 <= unanimous <= 0.55  # Bakker et al. 2022: 32-46 % over 6-12 experts
    # borderline epochs come in runs: disagreement persists from one epoch to the next
    split = night.hypnodensity[kept].max(axis=1) < 1
    assert np.mean(split[1:][split[:-1]]) > np.mean(split) + 0.1
    assert scoring.apply_rules({"alpha": np.array([0.6, 0.1, 0.1, 0.1, 0.1]), "slow_waves": np.array([0, 0.3, 0, 0, 0]),
                                "spindles": np.array([0, 0, 2.0, 0, 0]), "chin": np.array([1, 1, 1, 0.1, 0.1]),
                                "rapid_eye": np.array([0, 0, 0, 2.0, 0])}, scoring.RULE_THRESHOLDS).tolist() \
        == [W, N3, N2, REM, REM]  # the last: atonia after REM stays REM


def test_short_nights_still_pass_through_the_stages():
    covered = []
    for index in range(8):
        scored = synthetic_hypnogram.recording_hypnogram(0, index, 0.5)
        scored = scored[scored != synthetic_hypnogram.UNSCORED]
        assert 50 <= len(scored) <= 70
        assert {W, N1, N2, N3} <= set(scored.tolist())
        covered.append(REM in scored)
    assert np.mean(covered) >= 0.5  # a half-hour night in miniature: REM's few planned epochs in most
    awake = []
    for hours in (0.001, 0.01, 0.02):  # a minute or less: one epoch or a few of the awake sleeper
        for index in range(20):
            scored = synthetic_hypnogram.recording_hypnogram(0, index, hours)
            scored = scored[scored != synthetic_hypnogram.UNSCORED]
            assert 1 <= len(scored) <= 3 and set(scored.tolist()) <= {W, N1}
            awake.append((scored == W).all())
    # scored Wake unless the drifting alpha falls under half the epoch (about 2 % of awake epochs: drowsy, N1)
    assert np.mean(awake) >= 0.9


# --------------------------------------------------------------------------
# Physiology of the raw signals
# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nights():
    return [synthetic_recording.synthesize_recording(0, index, 2.0) for index in (0, 1)]


def per_epoch(recording, channel):
    samples = recording.signals[channel]
    return samples.reshape(recording.n_epochs, -1)


def band_power(epochs, fs, low, high):
    freqs, psd = welch(epochs, fs, nperseg=int(4 * fs), axis=-1)
    return psd[:, (freqs >= low) & (freqs <= high)].sum(axis=1) * (freqs[1] - freqs[0])


def mean_by_stage(values, stages):
    return np.array([values[stages == stage].mean() for stage in range(5)])


def test_alpha_is_strongest_in_wake_and_at_the_back(nights):
    for night in nights:
        occipital = [mean_by_stage(band_power(per_epoch(night, ch), 100, 8, 12), night.stages)
                     for ch in ("O1-M2", "O2-M1")]
        central = mean_by_stage(band_power(per_epoch(night, "C3-M2"), 100, 8, 12), night.stages)
        for alpha in occipital:
            assert alpha.argmax() == W and alpha[W] > 1.4 * np.sort(alpha)[-2]
            assert alpha[W] > 1.5 * central[W]


def test_spindle_bursts_in_n2(nights):
    for night in nights:
        fs = 100
        sos = butter(4, [11, 16], "bandpass", fs=fs, output="sos")
        envelope = np.abs(hilbert(sosfiltfilt(sos, night.signals["C3-M2"])))
        above = np.diff(np.r_[0, (envelope > 3 * np.median(envelope)).astype(int), 0])
        starts, ends = np.flatnonzero(above == 1), np.flatnonzero(above == -1)
        bursts = starts[ends - starts >= 0.5 * fs]  # 0.5 s or longer
        stage_of_burst = night.stages[bursts // (30 * fs)]
        per_minute = [np.sum(stage_of_burst == s) / (np.sum(night.stages == s) / 2) for s in range(5)]
        assert per_minute[N2] > 2 and per_minute[N2] > 3 * per_minute[REM]


def test_delta_and_slow_waves_are_highest_in_n3(nights):
    for night in nights:
        c3 = per_epoch(night, "C3-M2")
        delta = mean_by_stage(band_power(c3, 100, 0.5, 2), night.stages)
        assert delta.argmax() == N3
        # AASM N3: 0.5-2 Hz waves over 75 uV peak to peak in 20 % or more of the epoch
        slow = sosfiltfilt(butter(2, [0.5, 2], "bandpass", fs=100, output="sos"), night.signals["C3-M2"])
        seconds = slow.reshape(-1, 100)
        big = (seconds.max(axis=1) - seconds.min(axis=1) > 75).reshape(night.n_epochs, 30).mean(axis=1)
        assert np.mean(big[night.stages == N3] >= 0.2) > 0.7
        assert np.mean(big[night.stages == REM] >= 0.2) == 0 and np.mean(big[night.stages == W] >= 0.2) < 0.1


def test_chin_tone_is_lowest_in_rem_and_eyes_move_out_of_phase(nights):
    correlations, stages = [], []
    for night in nights:
        # tone: the typical epoch's rms (twitches and movement bursts are phasic, not tone)
        rms = per_epoch(night, "Chin EMG").std(axis=1)
        tone = np.array([np.median(rms[night.stages == stage]) for stage in range(5)])
        assert tone.argmin() == REM and tone.argmax() == W
        e1, e2 = per_epoch(night, "E1-M2"), per_epoch(night, "E2-M1")
        correlations.append([np.corrcoef(a, b)[0, 1] for a, b in zip(e1, e2)])
        stages.append(night.stages)
    # pooled over the nights: a 2-h night may hold only 8 epochs of wake
    correlation = mean_by_stage(np.concatenate(correlations), np.concatenate(stages))
    # eye movements: out of phase; epochs scored Wake include drowsy eyes-closed ones (alpha over half the
    # epoch, few saccades), so wake's mean correlation is weaker than REM's
    assert correlation[REM] < -0.5 and correlation[W] < -0.4
    assert correlation[N3] > 0.5  # frontal slow waves reach both leads: in phase


def test_heart_rate_and_breathing_follow_the_stage(nights):
    for night in nights:
        beats, _ = find_peaks(night.signals["ECG"], height=0.6 * night.subject.ecg_mv, distance=0.3 * 200)
        bpm = mean_by_stage(2.0 * np.bincount(beats // (30 * 200), minlength=night.n_epochs), night.stages)
        assert bpm[W] > bpm[N2] > bpm[N3]
        # breath-to-breath intervals vary more in REM than in N3
        variation = []
        for thorax in per_epoch(night, "Thorax"):
            breaths, _ = find_peaks(thorax, distance=1.5 * 25, prominence=0.1)
            intervals = np.diff(breaths)
            variation.append(intervals.std() / intervals.mean() if len(intervals) > 2 else np.nan)
        variation = np.array(variation)
        assert np.nanmean(variation[night.stages == REM]) > 1.5 * np.nanmean(variation[night.stages == N3])


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------
def ink_rows(image):
    return np.flatnonzero(image[..., 0].max(axis=1) > 0)


@pytest.mark.parametrize("signal", psg_layout.SIGNALS, ids=lambda s: s.name)
def test_each_trace_is_drawn_in_its_own_band(signal):
    samples_per_epoch = round(signal.fs * 30)
    for fraction in (0.25, 0.5, 0.75):  # of the band, from its bottom
        value = signal.low + fraction * (signal.high - signal.low)
        image = psg_layout.render_epoch({signal.name: np.full(samples_per_epoch, value)})
        profile = image[..., 0].astype(float).sum(axis=1)
        centroid = (profile * np.arange(270)).sum() / profile.sum()
        row_1080 = (signal.top_1080 - 0.5 + psg_layout.TRACE_OFFSET_1080
                    + (1 - fraction) * signal.height_1080)  # pixel-centre coordinates
        assert abs(centroid - (row_1080 - 1.5) / 4) < 0.3
        assert (image[..., 0].max(axis=0) > 0).all()  # the trace spans the whole width
    group_top, group_height = psg_layout.group_band_270(signal.group)
    wave = signal.low + (signal.high - signal.low) * (0.5 + 20 * np.sin(np.linspace(0, 60, samples_per_epoch)))
    rows = ink_rows(psg_layout.render_epoch({signal.name: wave}))  # far beyond the band: clipped to the group
    assert rows.min() == int(group_top) and rows.max() == int(np.ceil(group_top + group_height)) - 1


def test_render_rejects_bad_rows_and_draws_nothing_for_missing_ones():
    assert psg_layout.render_epoch({}).max() == 0
    assert psg_layout.render_epoch({name: None for name in psg_layout.SIGNAL_NAMES}).max() == 0
    with pytest.raises(ValueError, match="expected 3000 samples"):
        psg_layout.render_epoch({"C3-M2": np.zeros(2999)})
    with pytest.raises(ValueError, match="unknown signal"):
        psg_layout.render_epoch({"Fpz-Cz": np.zeros(3000)})
    with pytest.raises(ValueError, match="non-finite"):
        psg_layout.render_epoch({"C3-M2": np.full(3000, np.nan)})
    # a different rate is honoured when given
    image = psg_layout.render_epoch({"C3-M2": np.zeros(256 * 30)}, fs={"C3-M2": 256})
    assert (image[..., 0].max(axis=0) > 0).all()


def test_write_png_gives_the_same_bytes_and_pixels(tmp_path):
    night = synthetic_recording.synthesize_recording(5, 0, 0.05)
    image = psg_layout.render_epoch(night.epoch_signals(3))
    psg_layout.write_png(tmp_path / "a.png", image)
    psg_layout.write_png(tmp_path / "b.png", image.copy())
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (cv2.imread(str(tmp_path / "a.png")) == image).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no temporary files left


# --------------------------------------------------------------------------
# Bad input, the up-to-date skip, never overwriting
# --------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--train-subjects", 0], "--train-subjects and --test-subjects must be at least 1"),
    (["--test-subjects", 0], "--train-subjects and --test-subjects must be at least 1"),
    (["--hours", -1], "--hours must be above 0"),
    (["--hours", 0], "--hours must be above 0"),
    (["--workers", 0], "--workers must be at least 1"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, message, monkeypatch, capsys):
    status, _, err = run_in_process("--out", tmp_path / "DATA", *args, "--quiet", monkeypatch=monkeypatch, capsys=capsys)
    assert status == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "DATA").exists()


@pytest.mark.slow
def test_out_that_is_a_file_is_refused_by_the_script(tmp_path):
    target = tmp_path / "DATA"
    target.write_text("not a folder")
    result = run_script("make_synthetic.py", "--out", target, "--quiet", check=False)
    assert result.returncode == 2 and result.stderr == f"error: --out is a file, expected a folder ({target})\n"
    assert target.read_text() == "not a folder"


@pytest.mark.slow
def test_same_arguments_skip_and_other_data_is_never_overwritten(tmp_path, monkeypatch, capsys):
    def make(folder, **kwargs):
        return make_small(folder, monkeypatch=monkeypatch, capsys=capsys, **kwargs)

    def snapshot(folder):
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}

    out = tmp_path / "DATA"
    assert make(out)[0] == 0
    before = snapshot(out)
    status, stdout, _ = make(out, workers=2)  # --workers does not change the data
    assert status == 0 and "up to date" in stdout and snapshot(out) == before

    status, _, err = make(out, hours=0.06)  # different arguments
    assert status == 2 and "already holds other data" in err and err.endswith(f"({out})\n")
    assert snapshot(out) == before

    (out / dataset.MARKER_NAME).unlink()  # as if the first run had been interrupted
    status, _, err = make(out)
    assert status == 2 and "already holds other data" in err

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.png").write_bytes(b"meow")
    status, _, _ = make(foreign)
    assert status == 2 and snapshot(foreign) and sorted(p.name for p in foreign.iterdir()) == ["cat.png"]

    empty = tmp_path / "empty"
    empty.mkdir()
    assert make(empty)[0] == 0 and (empty / dataset.MARKER_NAME).is_file()
