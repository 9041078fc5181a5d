"""Where a study's state lives: a folder every node reaches at one path (NFS, EFS, a mounted bucket), or an object
store (`s3://bucket/prefix`, `gs://bucket/prefix`, read and written through pyarrow's filesystems).

The state is Tune's experiments with their checkpoints, the ledger of final rows, the Optuna journal, study.json
and the node records (studies.runner). Tune and the trials read and write it through pyarrow (Tune's
`storage_filesystem`; the trials' rows through `StateFolder`), so the same code runs on a local folder and on a
bucket. Three files are the driver's alone and need a file system -- the Optuna journal (appended under a file
lock), study.json and the node records: for an object store the driver keeps them in a local mirror
(`$LAB_STATE_CACHE`, default `~/.cache/lab-state/<hash of the URI>`), fetched from the store when the study
starts and put back after every write (the journal after every append), so a driver killed at any point leaves
in the store what a new driver, on any machine, resumes from.

Two drivers on one store are kept apart by a lease (`.lab.lock` in the store, renewed every 30 s by its
holder): a lease renewed in the last two minutes refuses a second driver; an older one is a dead driver's,
taken over and said so. A lease whose process is gone from this very host is taken over at once. An object
store has no atomic create, so two drivers started within the same second can both win: the lease guards
against the common mistake (a study started twice while the first runs), it is not a lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lab.errors import ConfigError
from lab.lockfile import process_alive

OBJECT_STORES = ("s3", "gs", "gcs")
LEASE_FILE = ".lab.lock"
LEASE_RENEW_S = 30.0
LEASE_STALE_S = 120.0
PROBE_RETRY_S = 20  # how long the up-front probe of a GCS bucket retries


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class StateFolder:
    """A folder of a study's state in a pyarrow filesystem: `fs` and the folder's `path` in it, `uri` what the
    user gave (or the local path). Picklable (pyarrow filesystems are): the trials get it with their trainable."""

    def __init__(self, fs, path: str, uri: str) -> None:
        self.fs, self.path, self.uri = fs, path.rstrip("/"), uri.rstrip("/") if "?" not in uri else uri

    @classmethod
    def local(cls, folder: Path) -> "StateFolder":
        import pyarrow.fs as pafs

        return cls(pafs.LocalFileSystem(), str(folder), str(folder))

    @property
    def remote(self) -> bool:
        import pyarrow.fs as pafs

        return not isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, *parts: str) -> "StateFolder":
        sub = "/".join(parts)
        base, _, query = self.uri.partition("?")
        return StateFolder(self.fs, f"{self.path}/{sub}", f"{base.rstrip('/')}/{sub}" + (f"?{query}" if query else ""))

    def file(self, name: str) -> str:
        return f"{self.path}/{name}"

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"StateFolder({self.uri!r})"

    # --- files ------------------------------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.file(name)).type != pafs.FileType.NotFound

    def read_bytes(self, name: str) -> bytes:
        with self.fs.open_input_stream(self.file(name)) as fh:
            return fh.read()

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode()

    def write_bytes(self, name: str, data: bytes) -> None:
        """Whole or not at all: an object is put in one request; a local file is written beside and renamed."""
        if not self.remote:
            os.makedirs(self.path, exist_ok=True)
            tmp = self.file(f"{name}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.file(name))
            return
        with self.fs.open_output_stream(self.file(name)) as fh:
            fh.write(data)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode())

    def delete(self, name: str) -> None:
        try:
            self.fs.delete_file(self.file(name))
        except FileNotFoundError:
            pass

    def names(self, suffix: str = "") -> list[str]:
        """The files directly in this folder whose names end in `suffix`, sorted ([] if the folder is absent)."""
        import pyarrow.fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        except FileNotFoundError:
            return []
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix))

    # --- the driver's local mirror --------------------------------------------------------------------------
    def fetch(self, name: str, local: Path) -> None:
        """The store's `name` into `local`; `local` removed where the store has none (the store is the truth)."""
        if self.exists(name):
            StateFolder.local(local.parent).write_bytes(local.name, self.read_bytes(name))
        else:
            local.unlink(missing_ok=True)

    def put(self, local: Path, name: str | None = None) -> None:
        if local.exists():
            self.write_bytes(name or local.name, local.read_bytes())


def parse_storage(text: str) -> StateFolder:
    """An object-store URI as a StateFolder, checked up front: the scheme is one pyarrow reads, the bucket is
    there and this machine can write it (a probe object written and removed). Each failure is one line."""
    import pyarrow.fs as pafs

    scheme = text.split("://", 1)[0].lower()
    if scheme not in OBJECT_STORES:
        raise ConfigError(f"--storage {text}: {scheme}:// is not a store the lab reads; give s3://bucket/prefix, "
                          "gs://bucket/prefix, or an absolute path every node reaches")
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except Exception as exc:  # noqa: BLE001 - pyarrow's ArrowInvalid / OSError: a wrong URI, a missing option
        raise ConfigError(f"--storage {text}: not a URI pyarrow can open ({_first_line(exc)}); see pyarrow's "
                          "S3FileSystem / GcsFileSystem options (region, endpoint_override, scheme)") from None
    bucket = path.split("/", 1)[0]
    if not bucket or "/" not in path.strip("/"):
        raise ConfigError(f"--storage {text}: give a folder inside the bucket (s3://{bucket or 'bucket'}/studies/"
                          "NAME), not the bucket itself")
    folder = StateFolder(fs, path, text)
    probe = f".lab-probe-{socket.gethostname()}-{os.getpid()}"
    prober = folder
    if scheme in ("gs", "gcs") and "retry_limit_seconds" not in text:
        # pyarrow's GCS client retries for 15 minutes by default: without credentials or network the probe
        # would hang that long before its one line. The study itself keeps the default (or the URI's own).
        prober = StateFolder(pafs.FileSystem.from_uri(f"{text}{'&' if '?' in text else '?'}retry_limit_seconds="
                                                      f"{PROBE_RETRY_S}")[0], path, text)
    try:
        prober.write_text(probe, "probe")
        prober.read_text(probe)
        prober.delete(probe)
    except Exception as exc:  # noqa: BLE001 - credentials, a missing bucket, no network: all said in one line
        raise ConfigError(f"--storage {text}: cannot write there from {socket.gethostname()} ({_first_line(exc)}); "
                          "check that the bucket exists and this machine's credentials may write it (S3: "
                          "AWS_ACCESS_KEY_ID / AWS_PROFILE or the node's IAM role; GCS: GOOGLE_APPLICATION_CREDENTIALS "
                          "or the node's service account; every node needs them)") from None
    return folder


def mirror_folder(store: StateFolder) -> Path:
    """The driver's local copy of an object store's study.json, Optuna journal and node records: one folder per
    URI, so that a searcher restored from the store (which names the journal it wrote) finds it again."""
    root = Path(os.environ.get("LAB_STATE_CACHE") or Path.home() / ".cache" / "lab-state").expanduser()
    key = hashlib.sha1(store.uri.encode()).hexdigest()[:16]
    return (root / key).resolve()


class StoreLease:
    """`with StoreLease(store):` this driver holds the object-store folder (see the module's docstring)."""

    def __init__(self, store: StateFolder) -> None:
        self.store, self.stop = store, threading.Event()
        self.holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                       "command": " ".join(sys.argv)}
        self.thread = threading.Thread(target=self._renew, name="lab-store-lease", daemon=True)

    def _write(self) -> None:
        self.store.write_text(LEASE_FILE, json.dumps({**self.holder, "renewed": time.time()}))

    def __enter__(self) -> "StoreLease":
        if self.store.exists(LEASE_FILE):
            try:
                other = json.loads(self.store.read_text(LEASE_FILE))
            except (ValueError, OSError):
                other = {}
            age = time.time() - float(other.get("renewed", 0))
            dead_here = other.get("host") == socket.gethostname() and not process_alive(int(other.get("pid") or 0))
            if age < LEASE_STALE_S and not dead_here:
                raise ConfigError(f"--storage {self.store}: another study holds it (process {other.get('pid')} on "
                                  f"{other.get('host')}, renewed {age:.0f} s ago: {other.get('command', '?')}); wait "
                                  f"for it to end, or give another --storage (a dead holder's lease lapses "
                                  f"{LEASE_STALE_S:.0f} s after its last renewal)")
            print(f"[study] {self.store}: taking over the lease of process {other.get('pid')} on {other.get('host')} "
                  f"({'gone' if dead_here else f'not renewed for {age:.0f} s'})", file=sys.stderr, flush=True)
        self._write()
        self.thread.start()
        return self

    def _renew(self) -> None:
        while not self.stop.wait(LEASE_RENEW_S):
            try:
                self._write()
            except Exception:  # noqa: BLE001 - a missed renewal is retried; the study goes on
                pass

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        try:
            self.store.delete(LEASE_FILE)
        except Exception:  # noqa: BLE001
            pass
