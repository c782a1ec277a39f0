"""Durable, atomic file and directory writes: a crash never leaves a half-written output behind.

Each write goes to a temporary name beside its target, is flushed to disk (``fsync``), renamed
into place, and the folder is synced too, so after a crash or power loss the target holds either
the old or the new content, never a mix.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from tfllm.faults import kill_point


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_files(paths) -> None:
    """Flush the given files, then their folders, to disk."""
    folders = set()
    for path in paths:
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        folders.add(Path(path).parent)
    for folder in folders:
        fsync_dir(folder)


def fsync_tree(path: Path) -> None:
    """Flush every file under ``path`` and every folder of it to disk."""
    for folder, _, files in os.walk(path):
        fsync_files(os.path.join(folder, name) for name in files)
        fsync_dir(Path(folder))


def remove_leftovers(path: Path) -> None:
    """Delete what an interrupted write of ``path`` left: its ``.<name>.*.tmp`` siblings."""
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, sync it, then rename it into place.

    A failed write (disk full) names ``path`` and leaves the previous file as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        kill_point(f"file_written/{path.name}")
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno:
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    fsync_dir(path.parent)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def replace_files(folder: Path, save) -> None:
    """``save(tmp_dir)`` writes files (e.g. ``tokenizer.save_pretrained``); each then replaces its
    namesake in ``folder`` by an atomic rename, so no file there is ever half-written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".files.", suffix=".tmp") as tmp:
        save(Path(tmp))
        fsync_tree(Path(tmp))
        for file in sorted(Path(tmp).iterdir()):
            os.replace(file, folder / file.name)
    fsync_dir(folder)


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2, default=float) + "\n")


@contextlib.contextmanager
def atomic_directory(path: Path):
    """Yield a temporary directory; on success it replaces ``path`` (the old one is kept on failure).

    The swap is two renames (old aside, new in). A crash between them leaves ``path`` missing
    and the previous version at ``.<name>.old``, which the next swap cleans up.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    kill_point("directory_written")
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        kill_point("directory_moved_aside")
    os.replace(tmp, path)
    fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)
