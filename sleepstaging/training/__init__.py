"""Training: the one training loop both trainers share, their command-line options and optimisers."""
