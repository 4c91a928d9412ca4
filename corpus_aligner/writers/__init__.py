"""Writers of the outputs. Every file is written to a temporary name and moved into place with
os.replace, so a reader (or a resumed run) never sees a half-written file. A process killed while
writing leaves its temporary behind: `stale_temporaries` finds those of dead processes."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"
# .<name>.<host>-<pid>.tmp: the host and pid tell whether the writer can still be alive.
_TEMPORARY = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)\.tmp$")


@contextmanager
def atomic_path(path: Path, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success move it onto `path`, else remove it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{_HOST}-{os.getpid()}.tmp")
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def stale_temporaries(root: Path) -> list[Path]:
    """Temporaries under `root` left by dead writers on this host (others' hosts cannot be judged)."""
    stale = []
    for folder, _, files in os.walk(root):
        for name in files:
            m = _TEMPORARY.match(name)
            if m and m["host"] == _HOST and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])):
                stale.append(Path(folder) / name)
    return stale
