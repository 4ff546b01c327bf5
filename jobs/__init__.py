"""Thin job entrypoints (`python -m mpcformer.jobs.<name>`) over library calls."""
