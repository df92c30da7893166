"""How a night is scored: the features a scorer reads drift over minutes, and rules turn them into stages.

The sleep process (``synthetic_hypnogram.make_hypnogram``) sets where each
feature a scorer reads is centred; the feature itself drifts around that
centre over minutes (a first-order autoregressive walk), so it lies near a
scoring threshold for runs of epochs, as real signals do where the sleeper
is between stages. Each epoch's label is what the AASM rules give the
drawn features (alpha over half the epoch: Wake; slow waves over 20 %: N3;
a spindle or K-complex: N2; atonia with rapid eye movements, or after REM:
REM; otherwise N1). A panel of simulated scorers applies the same rules
with slightly different thresholds and reads each epoch with a small error
of its own; the share of the panel per stage is the epoch's hypnodensity.

Feature units: ``alpha`` and ``slow_waves`` are shares of the epoch (0-1),
``spindles`` spindles and K-complexes per minute, ``chin`` the chin tone
relative to quiet wake, ``rapid_eye`` bursts of rapid eye movements per
minute.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_STAGES = 5
W, N1, N2, N3, REM = range(N_STAGES)

# Centre of each feature per stage (Wake, N1, N2, N3, REM), in the space the
# drift is drawn in: logit for shares, log for rates and tone.
def logit(share: np.ndarray) -> np.ndarray:
    return np.log(share / (1 - share))


FEATURE_CENTRES = {
    "alpha": logit(np.array([0.85, 0.15, 0.03, 0.02, 0.06])),
    "slow_waves": logit(np.array([0.005, 0.01, 0.06, 0.5, 0.005])),
    "spindles": np.log(np.array([0.05, 0.35, 4.5, 2.7, 0.1])),
    "chin": np.log(np.array([1.0, 0.5, 0.4, 0.3, 0.1])),
    "rapid_eye": np.log(np.array([0.3, 0.2, 0.05, 0.02, 3.0])),
}
FEATURE_DRIFT_SD = {"alpha": 0.8, "slow_waves": 0.6, "spindles": 0.7, "chin": 0.4, "rapid_eye": 0.8}
DRIFT_EPOCHS = 12.0  # time constant of the drift (6 min)
SMOOTH_EPOCHS = 2.0  # width of the smoothing of the drift (1 min), so borderline stretches last minutes
SHARES = ("alpha", "slow_waves")  # drawn in logit space; the rest in log space

# The AASM thresholds, as the reference scorer applies them.
RULE_THRESHOLDS = {"alpha": 0.5, "slow_waves": 0.2, "spindles": 1.0, "chin": 0.2, "rapid_eye": 0.5}

PANEL_SIZE = 8  # simulated scorers per night (Bakker et al. 2022: 6-12 experts)
PANEL_THRESHOLD_SD = 0.15  # log-normal spread of a scorer's thresholds around the rule's
PANEL_READING_SD = 0.8  # a scorer's error reading a feature by eye, per epoch, in the drift's space


@dataclass
class ScoredNight:
    """One night's scoring.

    Attributes
    ----------
    features : dict of str -> np.ndarray of float64, shape (epochs,)
        The drawn features (units in the module docstring).
    labels : np.ndarray of int8, shape (epochs,)
        The reference scorer's stage per epoch (the data set's label).
    hypnodensity : np.ndarray of float64, shape (epochs, 5)
        Share of the panel's scorers giving each stage; rows sum to 1.
    """

    features: dict
    labels: np.ndarray
    hypnodensity: np.ndarray


def drift(rng: np.random.Generator, n_epochs: int, sd: float) -> np.ndarray:
    """A smooth stationary walk of standard deviation ``sd``, shape (n_epochs,).

    A first-order autoregressive walk of time constant ``DRIFT_EPOCHS``,
    smoothed with a Gaussian of ``SMOOTH_EPOCHS``: without the smoothing the
    walk jitters across a threshold epoch by epoch; with it, a feature that
    reaches a threshold stays near it for minutes, as real borderline
    stretches do.
    """
    rho = np.exp(-1.0 / DRIFT_EPOCHS)
    half = int(np.ceil(3 * SMOOTH_EPOCHS))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / SMOOTH_EPOCHS) ** 2)
    kernel /= kernel.sum()
    lags = np.abs(np.subtract.outer(np.arange(len(kernel)), np.arange(len(kernel))))
    smoothed_sd = np.sqrt(kernel @ rho ** lags @ kernel)  # of the smoothed walk when the walk's is 1
    steps = rng.normal(0.0, np.sqrt(1 - rho ** 2), n_epochs + 2 * half)
    walk = np.empty(n_epochs + 2 * half)
    level = rng.normal(0.0, 1.0)
    for epoch, step in enumerate(steps):
        level = rho * level + step
        walk[epoch] = level
    return np.convolve(walk, kernel, mode="valid") * (sd / smoothed_sd)


def draw_latent(rng: np.random.Generator, process: np.ndarray) -> dict:
    """Each feature in its drift space (logit or log): the process stage's centre plus a drift, shape (epochs,)."""
    return {name: centres[process] + drift(rng, len(process), FEATURE_DRIFT_SD[name])
            for name, centres in FEATURE_CENTRES.items()}


def to_feature(name: str, latent: np.ndarray) -> np.ndarray:
    """From the drift space to the feature's unit (share 0-1, or a positive rate or tone)."""
    return 1 / (1 + np.exp(-latent)) if name in SHARES else np.exp(latent)


def apply_rules(features: dict, thresholds: dict) -> np.ndarray:
    """The AASM stage of every epoch from its features, shape (epochs,) of int8.

    In order: alpha over its threshold share, Wake; slow waves over theirs,
    N3; spindles and K-complexes at their rate, N2; chin atonia with rapid
    eye movements, or atonia in the epoch after REM, REM; otherwise N1.
    """
    n_epochs = len(features["alpha"])
    labels = np.empty(n_epochs, dtype=np.int8)
    atonia = features["chin"] < thresholds["chin"]
    eyes = features["rapid_eye"] >= thresholds["rapid_eye"]
    for epoch in range(n_epochs):
        if features["alpha"][epoch] > thresholds["alpha"]:
            labels[epoch] = W
        elif features["slow_waves"][epoch] > thresholds["slow_waves"]:
            labels[epoch] = N3
        elif features["spindles"][epoch] >= thresholds["spindles"]:
            labels[epoch] = N2
        elif atonia[epoch] and (eyes[epoch] or (epoch > 0 and labels[epoch - 1] == REM)):
            labels[epoch] = REM
        else:
            labels[epoch] = N1
    return labels


def panel_hypnodensity(rng: np.random.Generator, latent: dict) -> np.ndarray:
    """Share of ``PANEL_SIZE`` scorers per stage for every epoch, shape (epochs, 5).

    Each scorer's thresholds lie around the rule's (log-normal, sd
    ``PANEL_THRESHOLD_SD``) and each reads every feature with an error of
    its own (``PANEL_READING_SD`` in the drift space).
    """
    n_epochs = len(latent["alpha"])
    votes = np.zeros((n_epochs, N_STAGES))
    for _ in range(PANEL_SIZE):
        thresholds = {name: value * rng.lognormal(0.0, PANEL_THRESHOLD_SD) for name, value in RULE_THRESHOLDS.items()}
        read = {name: to_feature(name, values + rng.normal(0.0, PANEL_READING_SD, n_epochs))
                for name, values in latent.items()}
        votes[np.arange(n_epochs), apply_rules(read, thresholds)] += 1
    return votes / PANEL_SIZE


def score_night(rng: np.random.Generator, process: np.ndarray) -> ScoredNight:
    """Draw the features along the sleep process, label them by the rules, and let the panel score them.

    Parameters
    ----------
    rng : np.random.Generator
        The recording's hypnogram stream (after the process was drawn).
    process : np.ndarray of int, shape (epochs,)
        Stage of the sleep process per scored epoch (0-4).
    """
    latent = draw_latent(rng, process)
    features = {name: to_feature(name, values) for name, values in latent.items()}
    return ScoredNight(features, apply_rules(features, RULE_THRESHOLDS), panel_hypnodensity(rng, latent))
