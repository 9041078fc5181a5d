"""One writer per output folder: a study (or a single run) holds `<folder>/.lab.lock` while it runs.

The lock file is created atomically (O_CREAT | O_EXCL) and names its holder: process id, host, start
time and command line. A second study on the same folder stops at once with a message naming the
holder. A lock whose process is gone (a study killed with SIGKILL, a machine that rebooted) is stale:
on the same host it is taken over, and the takeover is said; a lock held on another host cannot be
checked from here, so it is refused with the command that removes it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from lab.errors import ConfigError

LOCK_FILE = ".lab.lock"
_held: dict[Path, int] = {}  # folders this process holds (nested parts of a study reuse their parent's lock)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _holder_text(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return (f"process {holder.get('pid')} on {holder.get('host')}, started {started}: "
            f"{holder.get('command', '?')}")


def check_out_folder(folder: str | os.PathLike, flag: str = "--out") -> Path:
    """An output folder that is one, or can be made: refused up front when it (or a parent) is a file."""
    path = Path(folder).resolve()
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise ConfigError(f"{flag} {folder}: {part} is a file, not a folder; give a folder (it is made if missing)")
    return path


class FolderLock:
    """`with FolderLock(folder):` the folder is this process's until the block ends."""

    def __init__(self, folder: str | os.PathLike, what: str = "study"):
        self.folder, self.what = Path(folder).resolve(), what
        self.path = self.folder / LOCK_FILE
        self.owned = False

    def __enter__(self) -> "FolderLock":
        if any(self.folder == held or held in self.folder.parents for held in _held):
            return self  # this process holds the folder (or one above it) already
        check_out_folder(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "command": " ".join(sys.argv)}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(holder, fh)
            self.owned = True
            _held[self.folder] = os.getpid()
            return self
        raise ConfigError(f"{self.path}: could not take the lock of {self.folder}; try again")

    def _take_over_if_stale(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            holder = {}
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) and \
                not process_alive(holder["pid"]):
            stale = self.path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
            try:
                os.replace(self.path, stale)  # atomic: of two takers, one moves it
            except FileNotFoundError:
                return
            stale.unlink(missing_ok=True)
            print(f"[lab] {self.folder}: took over the lock of {_holder_text(holder)} (that process is gone)",
                  file=sys.stderr, flush=True)
            return
        if not holder:
            raise ConfigError(f"{self.path}: an unreadable lock on {self.folder}; if no {self.what} runs there, "
                              f"delete it (rm {self.path})")
        elsewhere = holder.get("host") != socket.gethostname()
        raise ConfigError(f"{self.folder} is in use by another {self.what} ({_holder_text(holder)}): wait for it, "
                          f"stop it, or use another --out" + (f"; if it is gone from {holder.get('host')}, delete "
                                                               f"{self.path}" if elsewhere else ""))

    def __exit__(self, *exc) -> None:
        if self.owned:
            _held.pop(self.folder, None)
            self.path.unlink(missing_ok=True)
            self.owned = False
