"""Checkpoints: locating weights (a folder, the HF cache, seeded random) and loading them into a model's modules."""
