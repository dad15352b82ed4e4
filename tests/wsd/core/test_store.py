import json

import pytest

from wsd.core.store import RecordFile, RunRecords, config_key, slug, write_atomic


def test_config_key_is_stable_and_order_free():
    assert config_key({"a": 1, "b": [1, 2]}) == config_key({"b": [1, 2], "a": 1})
    assert config_key({"a": 1}) != config_key({"a": 2})


def test_slug_makes_folder_names():
    assert slug("meta-llama/Llama-3.1-70B") == "meta-llama-Llama-3.1-70B"
    assert slug("/tmp/x y/pilot") == "tmp-x-y-pilot"


def test_torn_last_line_is_dropped_and_appending_continues(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps({"id": "a"}) + "\n" + '{"id": "b", "resp')
    records = RecordFile(path)
    assert records.read() == [{"id": "a"}]
    assert path.read_text().endswith('"resp')  # a reader leaves a live writer's line alone
    records.append({"id": "b"})
    assert records.read() == [{"id": "a"}, {"id": "b"}]


def test_corrupt_middle_line_is_reported(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text('{"id": "a"}\nnot json\n{"id": "c"}\n')
    with pytest.raises(ValueError, match="records.jsonl:2: malformed record"):
        RecordFile(path).read()


def test_write_atomic_replaces_whole_file(tmp_path):
    target = tmp_path / "out.json"
    write_atomic(target, "one")
    write_atomic(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_shards_of_killed_ranks_resume_and_merge_in_order(tmp_path):
    """Rank 1 of 2 was killed after one record; a later run (any process count) sees every
    finished record and the merge writes each id once, in benchmark order."""
    RunRecords(tmp_path).append({"id": "q0"})  # an earlier single-process run
    RunRecords(tmp_path, rank=0, world=2).append({"id": "q2"})
    RunRecords(tmp_path, rank=1, world=2).append({"id": "q1"})
    (tmp_path / "shards" / "rank-1.jsonl").open("a").write('{"id": "q3", "tor')  # killed mid-write
    assert set(RunRecords(tmp_path).done()) == {"q0", "q1", "q2"}
    rerun = RunRecords(tmp_path, rank=1, world=3)
    rerun.append({"id": "q3"})
    merged = RunRecords(tmp_path).merge(["q0", "q1", "q2", "q3"])
    assert [r["id"] for r in merged] == ["q0", "q1", "q2", "q3"]
    assert [json.loads(x)["id"] for x in open(tmp_path / "records.jsonl")] == ["q0", "q1", "q2", "q3"]
    assert not (tmp_path / "shards").exists()


def test_merge_keeps_records_beyond_this_runs_limit(tmp_path):
    records = RunRecords(tmp_path)
    for i in ("a", "b", "c"):
        records.append({"id": i})
    assert [r["id"] for r in records.merge(["b"])] == ["b"]
    assert [json.loads(x)["id"] for x in open(tmp_path / "records.jsonl")] == ["b", "a", "c"]


def test_two_writers_of_one_file_at_once_both_succeed(tmp_path, monkeypatch):
    """Ranks of a sharded run write the same file (the draft cache's identity): a second
    writer that finishes while the first is between writing and renaming must not take the
    first one's temporary file from under it."""
    import os

    path = tmp_path / "identity.json"
    real_replace, interleaved = os.replace, []

    def replace(src, dst):
        if not interleaved:  # the first writer pauses here while another one writes
            interleaved.append(src)
            write_atomic(path, "second")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    write_atomic(path, "first")
    assert path.read_text() == "first" and interleaved
    assert [p.name for p in tmp_path.iterdir()] == ["identity.json"]  # no temporary file left
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert path.stat().st_mode == plain.stat().st_mode  # readable as any file the stage writes
