"""Record a trained model set: one folder a user points ``stage_edf.py`` and ``infer_blend.py`` at.

    python model_set.py --data-root DATA --weights-dir weights --outputs outputs

Run after ``infer_blend.py`` (with its validation dumps) and ``blend.py
--tune``. Writes ``<weights-dir>/model_set.json``, which holds what using
the models needs beyond their checkpoints and training configurations
(architecture, input size, resize and stage balance are in each
``<arch>_fold_<k>_config.json``):

* ``fold``, and per model (``vit``, ``eff``) its ``arch`` and kept ``epochs``
  (as infer_blend.py's record in ``--outputs`` names them);
* ``blend``: the tuned blend (``blend_tune.json``: method, weight, power,
  dump scale, tta);
* ``postprocess``: ``hmm``, the scoring default of ``stage_edf.py``, with
  ``hmm``: the stage, first-stage and transition counts of the models'
  training rows (the data root's training CSV without the fold's
  validation rows; :func:`hmm.count_stage_sequences`), the models'
  ``stage_balance``, and the ``transition_weight`` chosen on the validation
  nights (:func:`hmm.tune_transition_weight`: the best macro-F1, within
  0.005; of those, the stage shifts per night nearest the true ones);
* ``validation``: the validation macro-F1 of the blend, the rules and the
  hmm at each weight tried (with its stage shifts per night), and each
  sleep statistic's mean over the validation nights, true and decoded;
* ``calibration``: the temperatures fitted on the validation rows for the
  blended probabilities (``temperature``) and for the hmm's posterior at
  the chosen weight: one per stage the hmm assigns
  (``hmm_stage_temperatures``, Wake..REM, each fitted on the rows the hmm
  assigned that stage; what postprocess.py applies) and one over all rows
  (``hmm_temperature``), with the ECEs before and after
  (``calibration.calibration_record``).

Nothing of the challenge flow changes: ``postprocess.py`` still applies the
original's rules by default. A scoring run reads the record and every flag
overrides it; without a record, the scripts use the original's models and
settings (:data:`ORIGINAL_MODELS`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from sleepstaging import script_io
from sleepstaging.data import psg_layout
from sleepstaging.output_names import model_set_path
from sleepstaging.scoring import hmm
from sleepstaging.scoring.model_set import (
    BLEND_KEYS,
    MACRO_F1_TOLERANCE,
    choose_postprocess,
    hmm_counts_outside,
    validation_blend,
    validation_scores,
)

# fmt: off
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=script_io.HelpFormatter)
parser.add_argument("--data-root", default="DATA", help="the data the models were trained on (its training CSV)")
parser.add_argument("--weights-dir", default="weights", help="the models' folder, where model_set.json is written")
parser.add_argument("--outputs", default="outputs",
                    help="infer_blend.py's dumps and record (with validation dumps) and blend.py --tune's file")
parser.add_argument("--fold", type=int, default=0, help="the fold the models were trained against")
# fmt: on








def main(argv=None) -> None:
    from sleepstaging.scoring.calibration import calibration_record

    args = parser.parse_args(argv)
    config = dict(vars(args))
    print("config: " + json.dumps(config))
    valid, probabilities, stages, infer, tuned = validation_blend(Path(args.outputs), args.fold)
    stage_balance = float(infer["stage_balance"][0])
    counts = hmm_counts_outside(args.data_root, valid)
    model = hmm.hmm_from_counts(counts, stage_balance)
    weight, tuning = hmm.tune_transition_weight(probabilities, valid.labels, valid.recording_ids, model)
    scores = validation_scores(probabilities, stages, valid, model, weight)
    postprocess = choose_postprocess(scores)
    posterior = hmm.hmm_posterior(probabilities, valid.recording_ids, *model, transition_weight=weight)
    decoded = hmm.hmm_decode(probabilities, valid.recording_ids, *model, transition_weight=weight)
    record = {
        "what": "a trained model set: the models and kept epochs, the blend and the post-processing that "
                "stage_edf.py and infer_blend.py use by default (model_set.py)",
        "fold": args.fold,
        **{key: {"arch": infer[f"{key}_arch"], "epochs": infer[f"{key}_epochs"]} for key in ("vit", "eff")},
        "blend": {key: tuned[key] for key in (*BLEND_KEYS, "tta")},
        "postprocess": postprocess,  # near the best on the validation nights, fewest false stage shifts (choose_postprocess)
        "hmm": {"counts": counts, "stage_balance": stage_balance, "transition_weight": weight,
                "counted_from": f"{Path(args.data_root) / psg_layout.TRAIN_CSV} without fold {args.fold}'s "
                                f"validation rows"},
        "validation": dict(scores, hmm_transition_weights=tuning),
        "calibration": calibration_record(probabilities, valid.labels, posterior, decoded),  # the confidence shown
        "config": config,
    }
    path = model_set_path(args.weights_dir)
    with script_io.atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    print("hmm on the validation nights, by transition weight: " + ", ".join(
        f"{w:g}: macro-F1 {entry['macro_f1']:.4f}, {entry['stage_shifts_per_night']:.1f} stage shifts a night"
        for w, entry in tuning["by_weight"].items()) + f" (true {tuning['true_stage_shifts_per_night']:.1f})")
    shifts = {name: scores["statistics_mean"][name]["stage_shifts"] for name in ("blend", "rules", "hmm", "true")}
    print(f"validation on {scores['nights']} nights, macro-F1 and stage shifts a night: blend "
          f"{scores['blend_macro_f1']:.4f}, {shifts['blend']:.1f}; rules {scores['rules_macro_f1']:.4f}, "
          f"{shifts['rules']:.1f}; hmm {scores['hmm_macro_f1']:.4f} at transition weight {weight:g}, "
          f"{shifts['hmm']:.1f}; true {shifts['true']:.1f}: new nights get {postprocess} (of those within "
          f"{MACRO_F1_TOLERANCE:g} of the best macro-F1, the closest in stage shifts; standard error of the "
          f"difference from the blend: rules {scores['difference_se_vs_blend']['rules']:.4f}, hmm "
          f"{scores['difference_se_vs_blend']['hmm']:.4f})")
    fitted = record["calibration"]
    print(f"calibration on the validation rows (ECE, {fitted['ece_bins']} bins): blend T {fitted['temperature']:.3f}, "
          f"{fitted['validation_ece_before']:.4f} -> {fitted['validation_ece_after']:.4f}; hmm posterior of the stage "
          f"assigned {fitted['validation_hmm_ece_before']:.4f} -> {fitted['validation_hmm_ece_after']:.4f} with T per "
          f"stage assigned " + ", ".join(f"{stage} {t:.3f}" for stage, t in zip(psg_layout.STAGES,
                                                                                fitted["hmm_stage_temperatures"]))
          + f" (one T {fitted['hmm_temperature']:.3f}: {fitted['validation_hmm_ece_after_one_temperature']:.4f})")
    true, decoded = scores["statistics_mean"]["true"], scores["statistics_mean"]["hmm"]
    print("per night, true -> hmm: " + ", ".join(f"{key} {true[key]:.1f} -> {decoded[key]:.1f}"
                                                 for key in ("TST", "WASO", "awakenings", "stage_shifts")))
    print(f"{path} is saved")


if __name__ == "__main__":
    script_io.run_main(main)
