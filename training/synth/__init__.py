"""Deterministic synthetic RGB-T road scenes (``rgbt-synth``)."""
