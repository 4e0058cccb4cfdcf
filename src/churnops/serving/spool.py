"""A worker's local spool: the rows it answered but has not yet written to the prediction store,
kept on local disk so that a worker killed outright (SIGKILL, the OOM killer) or stopped while
the store is unwritable loses nothing it had already spooled.

Each writer owns a token (host, pid, random part) and holds an exclusive ``flock`` on
``<token>.lock`` for as long as it lives; the kernel releases that lock when the process dies,
however it dies. Every conversion tick (``writer.CONVERT_SECONDS``) the writer puts what it
converted into ``<token>-<day>-<n>.arrow``, one file per day (Arrow IPC, written under a
temporary name and renamed, no fsync: a killed process's page cache survives it, a machine crash
is not covered), and deletes those files once their rows are in the store, whose file for them
is named after the token and the range of ``n`` it holds. A writer starting up takes every lock
it can get that is not its own: each such lock belonged to a dead writer, whose files it renames
into its own name (so two starting workers never both replay one file) and writes to the store,
skipping those a store file's name already covers (so a writer killed between writing a file
and deleting its spool entries never has their rows stored twice).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

from churnops.monitoring.store import Store, stored_names

log = logging.getLogger(__name__)

LOCK = ".lock"
SPOOLED = ".arrow"
PARTIAL = ".partial"


@dataclass(frozen=True)
class Entry:
    """What a spool file's name says: its writer's token, its rows' day (days since 1970) and
    its number among that writer's files of that day."""

    token: str
    day: int
    number: int


def entry_of(path: Path) -> Entry:
    """The entry a spool file's name encodes (``<token>-<day>-<number>.arrow``)."""
    token, day, number = path.name[: -len(SPOOLED)].rsplit("-", 2)
    return Entry(token, int(day), int(number))


class Spool:
    """One writer's spool folder entries; see the module docstring."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        host = socket.gethostname().replace("/", "_").replace("-", "_")[:40]
        self.token = f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # NB: locked under a temporary name, then renamed: no other writer ever sees this lock
        # file unlocked and takes it for a dead writer's.
        partial = folder / f"{self.token}{LOCK}{PARTIAL}"
        self._lock = os.open(partial, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(partial, folder / f"{self.token}{LOCK}")
        # NB: numbered per day, so one day's files of one writer form an unbroken run that a
        # store file's name can cover (see runs).
        self._numbers: dict[int, int] = {}
        self._numbering = threading.Lock()
        self.claim_pending = False

    def _next(self, day: int) -> Path:
        with self._numbering:
            self._numbers[day] = number = self._numbers.get(day, 0) + 1
        return self.folder / f"{self.token}-{day}-{number:012d}{SPOOLED}"

    def put(self, table: pa.Table, day: int) -> Path:
        """Keep ``table`` (rows of one day, in days since 1970) in a new spool file; its path."""
        path = self._next(day)
        partial = path.with_name(path.name + PARTIAL)
        with pa.OSFile(str(partial), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(partial, path)
        return path

    @staticmethod
    def read(path: Path) -> pa.Table:
        """The rows of one spool file."""
        with pa.OSFile(str(path), "rb") as source:
            return ipc.open_file(source).read_all()

    @staticmethod
    def discard(paths: list[Path]) -> None:
        """Delete spool files whose rows are in the store now."""
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def claim_orphans(self, stored: Callable[[Entry], bool]) -> list[Path]:
        """Take over the files of every writer that died: renamed into this writer's name, in
        their original order, except those ``stored`` says are in the store already (the
        writer died between writing them and deleting them: replaying them would store their
        rows twice); partial files (it died while writing one) are logged and deleted. When
        ``stored`` cannot tell (the store is unreachable), the rest stays for a later call
        (``claim_pending``)."""
        claimed: list[Path] = []
        self.claim_pending = False
        tokens = {lock.name[: -len(LOCK)] for lock in self.folder.glob(f"*{LOCK}")}
        # NB: files whose lock file is gone (a writer stopped while a flush still ran) too.
        tokens |= {entry_of(path).token for path in self.folder.glob(f"*{SPOOLED}")}
        for token in sorted(tokens - {self.token}):
            lock = self.folder / f"{token}{LOCK}"
            try:
                handle = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # NB: its writer is alive
                files = sorted(
                    self.folder.glob(f"{token}-*{SPOOLED}"),
                    key=lambda p: (entry_of(p).day, entry_of(p).number),
                )
                for path in files:
                    entry = entry_of(path)
                    try:
                        done = stored(entry)
                    except OSError as exc:
                        log.warning("prediction store unreachable; spooled rows wait: %s", exc)
                        self.claim_pending = True
                        return claimed
                    if done:
                        path.unlink()
                        continue
                    mine = self._next(entry.day)
                    os.rename(path, mine)
                    claimed.append(mine)
                for partial in self.folder.glob(f"{token}-*{SPOOLED}{PARTIAL}"):
                    log.warning("prediction store spool: %s was cut off by a crash", partial.name)
                    partial.unlink(missing_ok=True)
                lock.unlink(missing_ok=True)
            finally:
                os.close(handle)
        return claimed

    def close(self) -> None:
        """Release the lock; the lock file goes too unless rows are still spooled, so that the
        next writer to start finds and writes them."""
        if not any(self.folder.glob(f"{self.token}-*{SPOOLED}")):
            with contextlib.suppress(FileNotFoundError):
                (self.folder / f"{self.token}{LOCK}").unlink()
        os.close(self._lock)


@dataclass
class Converted:
    """A converted table and the spool file that holds it (None when not spooled)."""

    table: pa.Table
    spooled: Path | None


SPOOLED_SUFFIX = ".spooled.parquet"


def runs(converted: list[Converted]) -> list[list[Converted]]:
    """One day's tables as the files to write: each unbroken run of this writer's spool
    numbers is one file, named after the run (so a takeover can tell exactly which entries a
    file holds); tables that are not in the spool go together in one more."""
    numbered = sorted(
        ((entry_of(c.spooled).number, c) for c in converted if c.spooled is not None),
        key=lambda pair: pair[0],
    )
    runs: list[list[Converted]] = []
    previous = None
    for number, item in numbered:
        if previous is not None and number == previous + 1:
            runs[-1].append(item)
        else:
            runs.append([item])
        previous = number
    loose = [c for c in converted if c.spooled is None]
    return runs + ([loose] if loose else [])


def run_name(group: list[Converted]) -> str | None:
    """``<token>-<first>-<last>.spooled.parquet`` for a run of spool entries (the same name
    when a failed write is tried again, so a write that landed after all is overwritten);
    None for rows not in the spool."""
    if not group or group[0].spooled is None:
        return None
    first, last = entry_of(group[0].spooled), entry_of(group[-1].spooled or group[0].spooled)
    return f"{first.token}-{first.number}-{last.number}{SPOOLED_SUFFIX}"


def stored_entries(target: Store) -> Callable[[Entry], bool]:
    """Whether a spool entry's rows are in a store file already, by the file names of its day
    and those compaction merged (each day's folder listed once); OSError when the store cannot
    be listed."""
    ranges: dict[int, dict[str, list[tuple[int, int]]]] = {}

    def stored(entry: Entry) -> bool:
        if entry.day not in ranges:
            found: dict[str, list[tuple[int, int]]] = {}
            # NB: with the names compaction merged away, or their rows would be stored twice.
            for name in stored_names(target, entry.day):
                if name.endswith(SPOOLED_SUFFIX):
                    token, first, last = name[: -len(SPOOLED_SUFFIX)].rsplit("-", 2)
                    found.setdefault(token, []).append((int(first), int(last)))
            ranges[entry.day] = found
        spans = ranges[entry.day].get(entry.token, [])
        return any(first <= entry.number <= last for first, last in spans)

    return stored
