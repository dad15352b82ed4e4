import json

import pytest

from wsd.store import RecordFile, config_key, slug, write_atomic


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
