"""The synthetic PSG generator: nights, physiology, signals and the files in the challenge layout."""
