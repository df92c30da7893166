"""Context post-processing of the blended prediction: the submission file.

Reads the blend's stage per test epoch (``outputs/filesblend_*.csv``, one
stage name per line, test CSV order) and writes the submission
(``outputs/files_post.csv``, same format) after one of

* ``rules`` (default): the original team's context rules, written with a
  psychiatrist to score as human scorers do. Over each recording's sequence
  s of predicted stages:

  1. s[i:i+2] == [N1, N3]                 -> s[i+1] becomes N2
  2. s[i:i+5] == [N2, N2, REM, N2, N2]    -> s[i+2] becomes N2
  3. s[i:i+5] == [N3, N3, REM, N3, N3]    -> s[i+2] becomes N3
  4. s[i:i+3] == [N1, REM, REM]           -> s[i] becomes REM
  5. s[i:i+3] == [N2, REM, REM]           -> s[i] becomes REM
  6. s[i:i+3] == [REM, N1, REM]           -> s[i+1] becomes REM
  7. s[i:i+3] == [REM, N2, REM]           -> s[i+1] becomes REM

  Patterns are matched on the sequence as it was before post-processing
  and the changes written to a copy; in the order i ascending, then rule
  number, a later write to a position wins. A recording is the test CSV's
  ``ID``, its rows taken in CSV order; patterns never span two recordings
  (the original ran them over all recordings concatenated; ``--across-recordings``
  reproduces that).
* ``hmm``: per recording, Viterbi decoding of a hidden Markov model
  (``hmm.py``): transitions and first stages counted from labelled nights
  (add-one smoothed), emissions the blended probabilities (the ``.npy``
  blend.py writes beside its CSV) divided by the stage shares the models
  were trained on (``count ** (1 - P)`` normalised for ``--stage-balance
  P``: the labels' shares for the original's sampling, equal shares for
  P = 1), transitions raised to ``--transition-weight`` and renormalised.
  Each input comes from its flag, else from a recorded model set
  (``--model-set WEIGHTS_DIR``: ``model_set.json``, whose weight was
  chosen on validation nights), else: counts from the data root's training
  CSV (``--train-csv`` names another), the stage balance from the record
  beside the blend CSV (the fold in blend.py's ``<in>.json``, then
  ``stage_balance`` in infer_blend.py's ``infer_blend_fold_<k>.json``; 0,
  the original's sampling, without one, which the output says), weight 1.
  Its posterior per epoch (``hmm.hmm_posterior``: forward-backward over the
  same model) is saved beside the submission (``<out>.posterior.npy``,
  rows x 5, test CSV order), calibrated when the three inputs are all the
  model set's: each row by the model set's temperature of the stage the hmm
  assigned it (``hmm_stage_temperatures``; a model set written before them,
  its one ``hmm_temperature``, as then; ``hmm_sources`` in the JSON beside
  says which); evaluate.py reports its calibration, the review pages order
  by it.
* ``none``: a copy.

Then, for every test recording, the per-recording outputs of
``night_outputs.write_recording_outputs`` go into ``--recordings-out`` (default
``recordings/`` beside the submission): ``<ID>/<ID>-hypnogram.csv`` (epoch,
onset, clock time, stage before and after post-processing, the five blended
probabilities calibrated by ``--temperature`` (the model set's by default with
``--model-set``), the epoch's signal quality from ``<root>/<ID>/<ID>.quality.json``
when ``render_edf.py`` wrote one), ``<ID>/<ID>-Hypnogram.edf`` (EDF+ annotations),
``<ID>/<ID>-hypnogram.png`` (only with ``--figures``: drawing one takes about
0.3 s, a minute for a challenge test set, and the challenge flow needs the
submission first; ``stage_edf.py`` draws them by default) and
``<ID>/<ID>-statistics.json``, plus
``sleep_statistics.csv`` (one row per recording). Epochs are placed in time
by each recording's timing sidecar (``<root>/<ID>/<ID>.timing.json``,
written by ``render_edf.py``); without one, epoch n starts (n - 1) x 30 s
after the recording start, clock time unknown. ``--no-recordings`` writes
the submission only, as does a blend CSV without its blended probabilities
(``.npy`` beside it; one line says so). The submission itself is unchanged
by all this. ``--review-pages`` adds each recording's ``review.html``
(``review_page.py``: the images from ``--data-root``, the two models' dumps
named by blend.py's record beside ``--in``, the hmm's posterior).

Imports no torch, so it stays fast; evaluate.py imports the rules and the
decoder for its validation table.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from sleepstaging import script_io
from sleepstaging.output_names import (
    blend_csv_path,
    posterior_path,
    probabilities_path,
    recordings_dir,
    submission_path,
)
from sleepstaging.recipe import ORIGINAL_BLEND, ORIGINAL_MODELS, POSTPROCESS
from sleepstaging.scoring import calibration, review_page
from sleepstaging.scoring.model_set import read_model_set
from sleepstaging.scoring.postprocess import POSTPROCESS_METHODS, hmm_settings, postprocess_test
from sleepstaging.script_io import InputError

# fmt: off
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=script_io.HelpFormatter)
parser.add_argument("--data-root", default="DATA", help="folder with testset-for_user.csv (and the trainset for hmm)")
parser.add_argument("--in", dest="in_csv", type=Path, default=blend_csv_path("outputs", ORIGINAL_BLEND["method"], ORIGINAL_MODELS["vit_epochs"],
                                                         ORIGINAL_MODELS["eff_epochs"]),
                    help="blend CSV written by blend.py")
parser.add_argument("--out", type=Path, default=submission_path("outputs"), help="the submission file")
parser.add_argument("--method", default=POSTPROCESS, help="rules, hmm or none")
parser.add_argument("--across-recordings", action="store_true",
                    help="rules: match patterns across recording boundaries, as the original did")
parser.add_argument("--train-csv", type=Path, default=None,
                    help="hmm: the labelled epochs (ID,IDnum,label) whose stage transitions it counts "
                         "(default: the data root's trainset-for_user.csv)")
parser.add_argument("--stage-balance", type=float, default=None,
                    help="hmm: the --stage-balance the models were trained with (default: as infer_blend.py "
                         "recorded it beside the blend CSV; 0, every row once per epoch, the original's, without "
                         "a record): the hmm divides the blended probabilities by the stage shares the models "
                         "were trained on")
parser.add_argument("--transition-weight", type=float, default=None,
                    help="hmm: decode with P(next | stage) ** WEIGHT, renormalised (default: the model set's, "
                         "else 1, the counted transitions; hmm.py)")
parser.add_argument("--model-set", default=None, metavar="WEIGHTS_DIR",
                    help="hmm: a weights folder with model_set.json (model_set.py), whose recorded counts, "
                         "stage balance and transition weight the hmm uses; each flag above overrides")
parser.add_argument("--probabilities", type=Path, default=None,
                    help="blended probabilities .npy, for hmm and the per-recording outputs (default: --in with .npy)")
parser.add_argument("--recordings-out", type=Path, default=None,
                    help="per-recording hypnograms, annotations, figures and statistics (default: recordings/ "
                         "beside --out)")
parser.add_argument("--no-recordings", action="store_true", help="write the submission only")
parser.add_argument("--figures", action="store_true",
                    help="also draw each recording's hypnogram figure (about 0.3 s each: a minute for 200 recordings)")
parser.add_argument("--review-pages", action="store_true",
                    help="also write each recording's review.html (needs the images in --data-root)")
parser.add_argument("--temperature", type=float, default=None,
                    help="calibration temperature of the blended probabilities the per-recording tables, figures "
                         "and review pages show (softmax(log p / T); default: the model set's with --model-set, "
                         "else 1, as blended)")
parser.add_argument("--quiet", action="store_true", help="print only the configuration and what is saved")
# fmt: on


# --------------------------------------------------------------------------

def main(argv=None) -> None:
    args = parser.parse_args(argv)
    if args.method not in POSTPROCESS_METHODS:
        raise InputError(f"unknown post-processing method {args.method!r} (expected rules, hmm or none)")
    hmm, hmm_sources = hmm_settings(args.method, args.data_root, args.in_csv, args.train_csv, args.stage_balance,
                                    args.transition_weight, args.model_set)
    if hmm is not None:  # the configuration says what the hmm decodes with
        args.train_csv, args.stage_balance, args.transition_weight = hmm.train_csv, hmm.stage_balance, \
            hmm.transition_weight
    probabilities_given = args.probabilities is not None
    if args.probabilities is None:
        args.probabilities = probabilities_path(args.in_csv)
    if args.recordings_out is None:
        args.recordings_out = recordings_dir(args.out)
    if args.temperature is None:
        args.temperature = calibration.recorded_temperature(read_model_set(args.model_set) if args.model_set else None)
    elif not 0 < args.temperature < float("inf"):
        raise InputError(f"--temperature must be a positive number, got {args.temperature}")
    config = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    if hmm_sources is not None:
        config["hmm_sources"] = hmm_sources
    print("config: " + json.dumps(config))
    postprocess_test(args.data_root, args.in_csv, args.out, args.method, hmm, args.probabilities,
                     None if args.no_recordings else args.recordings_out, config,
                     across_recordings=args.across_recordings, figures=args.figures,
                     probabilities_given=probabilities_given, quiet=args.quiet, temperature=args.temperature)
    if args.review_pages and not args.no_recordings:
        pages = review_page.write_layout_pages(Path(args.data_root), args.recordings_out,
                                               review_page.blend_model_dumps(args.in_csv), args.temperature,
                                               posterior_file=posterior_path(args.out))
        print(f"{len(pages)} review page(s) are saved ({review_page.PAGE_NAME} in each recording's folder)")


if __name__ == "__main__":
    script_io.run_main(main)
