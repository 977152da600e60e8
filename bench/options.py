"""Command-line options shared by the end-to-end benchmarks, so that they time the same clip on the same portrait."""

from __future__ import annotations

import argparse


def add_clip_options(parser: argparse.ArgumentParser) -> None:
    """``--runs`` (the median is reported), ``--seconds`` (the clip's length), ``--side`` (the portrait's size)."""
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--side", type=int, default=512)
