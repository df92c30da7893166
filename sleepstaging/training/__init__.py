"""Training: the one training loop both trainers share, their loss, validation and its metrics, command-line options and optimisers."""
