"""Run folders and append-only record files, so a stage resumes where it stopped.

A folder is keyed by a short hash of what determines its results; records are appended one
JSON line per finished item and flushed, so a killed run loses at most the item in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path


def slug(text: str) -> str:
    """A name safe for a folder: model names may be hub ids or paths with slashes."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.")


def config_key(payload) -> str:
    """Short stable hash of a JSON-able description of a result."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary name and rename, so readers never see a half-written file. The
    temporary name is this writer's own: ranks of a sharded run may write one file at once."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("x", encoding="utf-8") as f:  # the umask's permissions, as a plain write has
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def umask_modes(folder: Path) -> None:
    """Give a folder written by libraries its umask's permissions, as a plain write has:
    `save_pretrained` writes `model.safetensors` with mode 0600, which makes a cache or a
    checkpoint shared between users of a machine (`WSD_CACHE_DIR` on a cluster) unreadable
    to all but its writer."""
    umask = os.umask(0)
    os.umask(umask)
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)


class RecordFile:
    """A JSONL file of records with a unique `id`, appended to as items finish."""

    def __init__(self, path: Path):
        self.path = path
        self._tail_checked = False

    def read(self) -> list[dict]:
        """All complete records. A torn last line (a writer killed mid-write) is ignored, not
        removed: the reader may be another stage while the writer is still running."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        records = []
        for number, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{self.path}:{number}: malformed record ({err.msg})") from None
        return records

    def append(self, record: dict) -> None:
        """Append one record and flush; a writer's first append first drops a torn last line
        that a killed earlier writer left."""
        if not self._tail_checked and self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                with self.path.open("r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
        self._tail_checked = True
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()


class RunRecords:
    """The records of one run folder, written by one process or by the ranks of a sharded run.

    One process appends to `records.jsonl`; rank r of n appends to `shards/rank-r.jsonl`.
    `done()` reads all of these, so a rerun with any number of processes resumes where any of
    them stopped; `merge(order)`, run by one process once every rank has finished, rewrites
    `records.jsonl` in benchmark order with each id once and removes the shards.
    """

    def __init__(self, folder: Path, rank: int = 0, world: int = 1):
        self.main = RecordFile(folder / "records.jsonl")
        self.shard_dir = folder / "shards"
        self.sharded = world > 1
        if self.sharded:
            self.shard_dir.mkdir(parents=True, exist_ok=True)
        self.own = RecordFile(self.shard_dir / f"rank-{rank}.jsonl") if self.sharded else self.main

    def _files(self) -> list[RecordFile]:
        shards = sorted(self.shard_dir.glob("rank-*.jsonl")) if self.shard_dir.is_dir() else []
        return [self.main] + [RecordFile(p) for p in shards]

    def done(self) -> dict[str, dict]:
        records = {}
        for file in self._files():
            for record in file.read():
                records.setdefault(record["id"], record)
        return records

    def append(self, record: dict) -> None:
        self.own.append(record)

    def merge(self, order: list[str]) -> list[dict]:
        """All records, those of `order` first and in that order, written as one file."""
        done = self.done()
        wanted = set(order)
        first = [done[i] for i in order if i in done]
        rest = [r for i, r in done.items() if i not in wanted]
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in first + rest)
        write_atomic(self.main.path, text)
        if self.shard_dir.is_dir():
            for path in self.shard_dir.glob("rank-*.jsonl"):
                path.unlink()
            if not any(self.shard_dir.iterdir()):
                self.shard_dir.rmdir()
        return first
