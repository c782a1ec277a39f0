"""Shared command-line plumbing: logging set-up and one-line errors with a non-zero exit."""
from __future__ import annotations

import functools
import logging
import sys

from tfllm.errors import TfllmError


def setup_logging(verbose: bool = False, stream=None) -> None:
    """tfllm's progress at INFO on stderr (or ``stream``); third-party chatter only with verbose."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=stream or sys.stderr, force=True)
    for noisy in ("transformers", "absl", "tensorflow", "datasets", "h5py"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:
        pass


def main_guard(function):
    """Run a CLI entry point; a :class:`TfllmError` becomes ``error: ...`` on stderr and exit 2."""

    @functools.wraps(function)
    def wrapper(argv=None):
        try:
            return function(argv)
        except TfllmError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
