"""Scoring: models, inference, blend, model set, post-processing, hypnograms and statistics, evaluation, cohorts."""
