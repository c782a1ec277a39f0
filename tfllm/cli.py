"""Shared command-line plumbing: argument parsing, logging set-up and one-line errors with a
non-zero exit (bad input: exit 2; the machine ran out of memory, disk or permissions: exit 1)."""
from __future__ import annotations

import errno
import functools
import logging
import sys
from typing import Optional

from tfllm.errors import Interrupted, TfllmError

# What to lower when TensorFlow runs out of memory; a CLI passes its own to main_guard.
TRAIN_MEMORY_HINT = ("lower train.batch_size / train.eval_batch_size, data.max_length or the "
                     "model's size (model.preset, model.hidden_size), or raise train.grad_accum_steps")
MACHINE_MEMORY_HINT = "close other programs or use a machine with more memory"
OS_ERRORS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
             errno.EACCES: "permission denied", errno.EPERM: "permission denied",
             errno.EROFS: "read-only file system"}


def parse_command_line(parser, argv=None):
    """``parser.parse_intermixed_args``: flags may sit between positionals (``a=1 --flag b=2``).

    An argument that is not valid UTF-8 (Python passes its bytes surrogate-escaped) is a
    :class:`TfllmError` naming it.
    """
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    for number, arg in enumerate(argv, start=1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise TfllmError(f"argument {number} '{shown}' is not valid UTF-8") from None
    return parser.parse_intermixed_args(argv)


def check_choice(flag: str, value: str, choices) -> str:
    """``value`` if it is one of ``choices``, else one error line naming ``flag`` (argparse's own
    ``choices`` prints its usage text too)."""
    if value not in choices:
        raise TfllmError(f"{flag} {value!r}: choose from {', '.join(choices)}")
    return value


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


def ensure_logging() -> None:
    """Show tfllm's progress lines when the caller (e.g. a notebook) configured no logging."""
    if not logging.getLogger().hasHandlers():
        setup_logging(stream=sys.stdout)


def main_guard(function=None, *, memory_hint: str = TRAIN_MEMORY_HINT):
    """Run a CLI entry point; a :class:`TfllmError` becomes ``error: ...`` on stderr and its
    ``exit_code`` (2), running out of memory / disk / permissions (:func:`machine_error`) one line
    and exit 1.

    Use as ``@main_guard`` or ``@main_guard(memory_hint="lower --batch-size")``.
    """
    if function is None:
        return functools.partial(main_guard, memory_hint=memory_hint)

    @functools.wraps(function)
    def wrapper(argv=None):
        try:
            return function(argv)
        except TfllmError as e:  # Interrupted: training stopped on a signal, checkpoint saved
            fail(str(e), e.exit_code, "interrupted" if isinstance(e, Interrupted) else "error")
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except Exception as e:
            message = machine_error(e, memory_hint)
            if message is None:
                raise  # a bug: keep its traceback
            fail(message, 1)

    return wrapper


def fail(message: str, code: int, kind: str = "error") -> None:
    print(f"{kind}: {message}", file=sys.stderr)
    sys.exit(code)


def machine_error(error: Exception, memory_hint: str) -> Optional[str]:
    """One line for an error of the machine rather than of tfllm, else None."""
    if isinstance(error, OSError) and error.errno:
        what = OS_ERRORS.get(error.errno, error.strerror)
        where = f": {error.filename}" if error.filename is not None else f" ({error.strerror})"
        return what + where + (f" -> {error.filename2}" if error.filename2 else "")
    if isinstance(error, MemoryError):
        return f"out of memory; {memory_hint}"
    if isinstance(error, UnicodeError):
        return f"text is not valid UTF-8: {error}"
    tf = sys.modules.get("tensorflow")  # a TensorFlow error needs TensorFlow imported already
    if tf is not None and isinstance(error, tf.errors.OpError):
        detail = _first_line(error.message)
        if isinstance(error, tf.errors.ResourceExhaustedError):
            if "No space left on device" in error.message:
                return f"disk full: {detail}"
            return f"out of memory ({detail}); {memory_hint}"
        if isinstance(error, tf.errors.PermissionDeniedError):
            return f"permission denied: {detail}"
    return None


def _first_line(text: str) -> str:
    """The message's first line, without TensorFlow's ``{{function_node ...}}`` prefix."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line.split("}} ", 1)[-1][:300]
