"""The library behind the SleepingDragon scripts at the top of the repository.

Subpackages, one concern each:

- :mod:`sleepstaging.data`: the challenge's image and CSV contract, the image cache, the loaders and the batch
  augmentation (FMix masks included);
- :mod:`sleepstaging.training`: the training loop, the trainers' options, the optimisers;
- :mod:`sleepstaging.scoring`: models, inference, the blend, the model set, post-processing (the original's rules,
  the hmm), hypnograms and sleep statistics, evaluation, cohorts of nights;
- :mod:`sleepstaging.edf`: EDF recordings rendered into the challenge layout (montages, signals, lights, signal
  quality, scored hypnograms);
- :mod:`sleepstaging.synthetic`: the synthetic PSG generator.

Shared by all: :mod:`sleepstaging.recipe` (the original's training and scoring settings, torch-free),
:mod:`sleepstaging.output_names` (every artefact's file name) and :mod:`sleepstaging.script_io` (one-line errors,
atomic writes).
"""
