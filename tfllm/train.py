"""Train a model from a config: ``python -m tfllm.train [--config FILE] [key=value ...]``.

With no arguments it fine-tunes the packaged MiniLM on the built-in sentiment data (a few
minutes on 2 CPU cores). ``train.task`` picks the task (classification, regression, multi_label,
token_classification, masked_lm); :func:`run_training` is the Python entry point. Any config value can be overridden, e.g. ``train.epochs=2
output_dir=runs/try``. ``--resume`` continues a stopped run from its last checkpoint;
``--overwrite`` replaces an existing run directory.
"""
from __future__ import annotations

import argparse
from typing import Optional

from tfllm import rundir
from tfllm.cli import main_guard, parse_command_line, setup_logging
from tfllm.config import load_config


def run_training(cfg, overwrite: bool = False, resume: bool = False):
    """Train ``cfg`` (see :func:`tfllm.lifecycle.run`); returns the run directory.

    TensorFlow is imported here, not when this module loads, so the command line checks its
    arguments and config first: a mistyped key fails in about a second instead of after
    TensorFlow's import (5-10 s on 2 cores)."""
    from tfllm.lifecycle import run

    return run(cfg, overwrite=overwrite, resume=resume)


def parse_args(argv: Optional[list[str]] = None):
    parser = argparse.ArgumentParser(prog="python -m tfllm.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="YAML config (default: the built-in sentiment demo)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    parser.add_argument("--resume", action="store_true", help="continue a run from its last checkpoint")
    parser.add_argument("--verbose", action="store_true", help="show library logs")
    parser.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    return parse_command_line(parser, argv)


@main_guard
def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(args.config, args.overrides)
    if args.resume and (cfg.run_dir / rundir.CONFIG).is_file():
        cfg = load_config(cfg.run_dir / rundir.CONFIG, args.overrides)  # the run's own settings
    run_training(cfg, overwrite=args.overwrite, resume=args.resume)


if __name__ == "__main__":
    main()

