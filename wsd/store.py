"""Run folders and append-only record files, so a stage resumes where it stopped.

A folder is keyed by a short hash of what determines its results; records are appended one
JSON line per finished item and flushed, so a killed run loses at most the item in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path


def slug(text: str) -> str:
    """A name safe for a folder: model names may be hub ids or paths with slashes."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.")


def config_key(payload) -> str:
    """Short stable hash of a JSON-able description of a result."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary name and rename, so readers never see a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class RecordFile:
    """A JSONL file of records with a unique `id`, appended to as items finish."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> list[dict]:
        """All complete records; a torn last line (a kill mid-write) is dropped from the file."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            with self.path.open("r+b") as f:
                f.truncate(len(complete))
        records = []
        for number, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{self.path}:{number}: malformed record ({err.msg})") from None
        return records

    def append(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
