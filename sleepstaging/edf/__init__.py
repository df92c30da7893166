"""EDF recordings into the challenge layout: montages, signals, lights, signal quality, scored hypnograms."""
