"""Every setting is documented where users look: the README table and configs/rift.toml."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path

import pytest

from server.cli import settings_table
from server.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_readme_settings_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- settings:start -->(.*?)<!-- settings:end -->", readme, re.S)
    assert block is not None
    assert settings_table() in block.group(1), "regenerate with `rift config --markdown`"


def test_every_setting_is_in_the_documented_toml() -> None:
    toml = (ROOT / "configs" / "rift.toml").read_text()
    for name in Settings.model_fields:
        assert re.search(rf"^#?\s*{name}\s*=", toml, re.M), f"{name} missing from configs/rift.toml"


def test_documented_toml_loads_as_the_defaults(monkeypatch) -> None:
    for key in Settings.model_fields:
        monkeypatch.delenv(f"RIFT_{key.upper()}", raising=False)
    monkeypatch.setenv("RIFT_CONFIG", str(ROOT / "configs" / "rift.toml"))
    loaded = Settings().model_dump(exclude={"data_dir"})
    defaults = Settings.model_construct().model_dump(exclude={"data_dir"})
    assert loaded == defaults


def test_settings_refuse_what_would_only_fail_later(monkeypatch, tmp_path: Path) -> None:
    import pytest
    from pydantic import ValidationError

    monkeypatch.setenv("RIFT_DATA_DIR", "")  # empty means unset, not the working directory
    assert Settings().data_dir == Settings.model_construct().data_dir.expanduser().resolve()
    for bad in ({"stopwords": "xx"}, {"stemmer_language": "klingon"}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            Settings(**bad)
    assert Settings(stopwords="de", stemmer_language=None).stopwords == "de"
    assert Settings(stopwords="en_questions").stopwords == "en_questions"  # rift's own list
    with pytest.raises(ValidationError, match="rift has en_questions"):
        Settings(stopwords="english_questions")
    # TOML has no null, and an empty variable means unset: "" and "none" turn these off.
    assert Settings(stopwords="", stemmer_language="none").model_dump(
        include={"stopwords", "stemmer_language"}
    ) == {
        "stopwords": None,
        "stemmer_language": None,
    }
    for bad, message in (
        ({"vector_weight": 0, "keyword_weight": 0}, "cannot both be 0"),
        ({"vector_weight": math.inf}, "finite"),
        ({"rrf_k": math.nan}, "finite"),
        ({"max_k": 5}, "max_k\n.*greater than or equal to 10"),
        ({"device": "bogus"}, "device\n.*must be 'auto', 'cpu', 'mps', or a GPU such as 'cuda'"),
    ):
        with pytest.raises(ValidationError, match=message):
            Settings(**bad)
    assert Settings(gate_eval_data="~/beir/x").gate_eval_data == Path.home() / "beir" / "x"
    for given in (f"{tmp_path}{os.pathsep}/srv", f'["{tmp_path}", "/srv"]'):  # PATH-like or JSON
        monkeypatch.setenv("RIFT_ALLOWED_ROOTS", given)
        assert Settings().allowed_roots == [tmp_path.resolve(), Path("/srv").resolve()]
    monkeypatch.delenv("RIFT_ALLOWED_ROOTS")
    # Relative paths in a config file are relative to it, wherever a client starts rift.
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "rift.toml").write_text('data_dir = "data"\nallowed_roots = ["notes", "/srv"]\n')
    monkeypatch.setenv("RIFT_CONFIG", str(tmp_path / "conf" / "rift.toml"))
    monkeypatch.delenv("RIFT_DATA_DIR")
    monkeypatch.chdir("/")
    beside = Settings()
    assert beside.data_dir == (tmp_path / "conf" / "data").resolve()
    assert beside.allowed_roots == [(tmp_path / "conf" / "notes").resolve(), Path("/srv").resolve()]
    # A model folder beside the file is found from anywhere; a hub name stays as written. One string of
    # roots reads as the environment variable does, spaces around the separators ignored.
    (tmp_path / "conf" / "models" / "mine").mkdir(parents=True)
    (tmp_path / "conf" / "rift.toml").write_text(
        f'model = "models/mine"\nallowed_roots = "notes{os.pathsep} /srv"\n'
    )
    beside = Settings()
    assert beside.model == str(tmp_path / "conf" / "models" / "mine")
    assert beside.allowed_roots == [(tmp_path / "conf" / "notes").resolve(), Path("/srv").resolve()]
    (tmp_path / "conf" / "rift.toml").write_text('model = "BAAI/bge-small-en-v1.5"\n')
    assert Settings().model == "BAAI/bge-small-en-v1.5"
    # The environment can switch off an optional setting the file turns on ("none"/"null": no null in
    # either); a boolean is no number; a blank path names nothing; a relative evaluation folder is absolute.
    (tmp_path / "conf" / "rift.toml").write_text("learn_auto_after_queries = 500\nembed_batch_size = 8\n")
    assert Settings().learn_auto_after_queries == 500
    monkeypatch.setenv("RIFT_LEARN_AUTO_AFTER_QUERIES", "none")
    assert Settings().learn_auto_after_queries is None
    monkeypatch.delenv("RIFT_LEARN_AUTO_AFTER_QUERIES")
    # ... and so can the file: "none" was made a folder beside it (found by helper BG).
    for word in ("none", "NULL"):
        (tmp_path / "conf" / "rift.toml").write_text(f'gate_eval_data = "{word}"\n')
        assert Settings().gate_eval_data is None
    (tmp_path / "conf" / "rift.toml").write_text("learn_auto_after_queries = 500\nembed_batch_size = 8\n")
    for bad, message in (
        ({"embed_batch_size": True}, "embed_batch_size\n.*must be a number, not true"),
        ({"max_k": False}, "max_k\n.*must be a number, not false"),
        ({"data_dir": "  "}, "data_dir\n.*must not be blank"),
        ({"model": " "}, "model\n.*must not be blank"),
    ):
        with pytest.raises(ValidationError, match=message):
            Settings(**bad)
    assert Settings(gate_eval_data="rel/beir").gate_eval_data == Path("/rel/beir")  # (the cwd is / here)
    assert Settings(gate_eval_data="null").gate_eval_data is None
    monkeypatch.setenv("RIFT_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ValueError, match="RIFT_CONFIG names .*missing.toml"):
        Settings()


def test_cli_start_failures_are_one_clear_line(monkeypatch, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from server.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    res = CliRunner().invoke(main, ["stats", "--data-dir", str(a_file)])
    assert res.exit_code == 1 and f"data_dir {a_file} is a file, not a folder" in res.output
    res = CliRunner().invoke(main, ["search", "x", "--data-dir", str(tmp_path / "typo")])
    assert res.exit_code == 1 and "no rift data folder at" in res.output and not (tmp_path / "typo").exists()
    (tmp_path / "data").mkdir()
    # (an empty folder is no store for a command that only reads: stats refuses it before starting)
    res = CliRunner().invoke(main, ["stats", "--data-dir", str(tmp_path / "data")])
    assert res.exit_code == 1 and "no rift data folder at" in res.output
    monkeypatch.setenv("RIFT_MODEL", str(tmp_path / "no-model"))
    (tmp_path / "note.md").write_text("# A note\n")
    res = CliRunner().invoke(main, ["add", str(tmp_path / "note.md"), "--data-dir", str(tmp_path / "data")])
    assert res.exit_code == 1 and "rift failed to start" in res.output and "Traceback" not in res.output
    assert "setting `model`, RIFT_MODEL" in res.output and f"no folder at {tmp_path / 'no-model'}" in res.output
    # A config file's misspelt key or [table] is named with the file and the nearest setting.
    monkeypatch.delenv("RIFT_MODEL")
    config = tmp_path / "rift.toml"
    config.write_text('chunk_tokns = 100\nmodel = ""\n[rift]\nx = 1\n')
    monkeypatch.setenv("RIFT_CONFIG", str(config))
    res = CliRunner().invoke(main, ["config"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"config file {config}: unknown setting 'chunk_tokns' (did you mean 'chunk_tokens'?)" in res.output
    assert "unknown setting 'rift' (settings are top-level keys, no [tables])" in res.output
    config.write_text('model = ""\n')  # empty means unset, as an empty RIFT_MODEL does
    assert Settings().model == Settings.model_construct().model


def test_a_model_that_cannot_load_is_explained(monkeypatch, tmp_path: Path) -> None:
    """The hub's own errors name neither the setting nor the folder, and offline they blame the connection."""
    from server.engine.models import describe_load_failure, looks_like_path

    assert looks_like_path("./m") and looks_like_path("~/m") and looks_like_path("/a/b") and looks_like_path("a/b/c")
    assert looks_like_path("C:\\models\\m") and not looks_like_path("BAAI/bge-small-en-v1.5")
    assert not looks_like_path("all-MiniLM-L6-v2")
    error = OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE=1 forbids downloading it" in describe_load_failure("BAAI/bge-small-en-v1.5", error)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    online = describe_load_failure("BAAI/bge-small-en-v1.5", error)
    assert "could not be fetched from the Hugging Face hub (We couldn't connect" in online
    a_file = tmp_path / "weights.bin"
    a_file.write_text("x")
    assert describe_load_failure(str(a_file), error) == f"{a_file} is a file; give the folder that holds the model"
    assert "does not hold a loadable sentence-transformers model" in describe_load_failure(str(tmp_path), error)
    monkeypatch.chdir(tmp_path)
    assert describe_load_failure("./missing", error) == f"no folder at {tmp_path / 'missing'}"


def test_a_device_torch_cannot_use_is_named(tmp_path: Path) -> None:
    import torch

    from server.engine.embedder import check_device
    from server.errors import RiftError

    assert Settings(device="cuda:1").device == "cuda:1"
    check_device("auto")
    check_device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RiftError, match=r"device 'cuda' \(setting `device`, RIFT_DEVICE\): torch .* no CUDA GPU"):
            check_device("cuda")
    # The other kinds the setting takes: their error blamed the model folder (helper DC).
    if not torch.xpu.is_available():
        with pytest.raises(RiftError, match=r"device 'xpu:1' \(setting `device`, RIFT_DEVICE\): no xpu device here"):
            check_device("xpu:1")
    if getattr(torch, "hpu", None) is None:
        with pytest.raises(RiftError, match=r"no hpu device here \(its torch plugin, habana_frameworks.torch, is not installed\)"):
            check_device("hpu")


def test_cli_names_the_bad_option_and_hides_secrets(monkeypatch, tmp_path: Path, caplog) -> None:
    from click.testing import CliRunner

    from server.cli import main

    monkeypatch.setenv("RIFT_CONFIG", os.devnull)
    res = CliRunner().invoke(main, ["search", "x", "--filters", "{bad"])
    assert res.exit_code == 2 and "--filters" in res.output and "not JSON" in res.output
    res = CliRunner().invoke(main, ["serve", "--port", "9000"])
    assert res.exit_code == 2 and "streamable-http only" in res.output
    monkeypatch.setenv("RIFT_HTTP_TOKEN", "s3cret")
    res = CliRunner().invoke(main, ["config"])
    assert res.exit_code == 0 and "s3cret" not in res.output and '"http_token": "***"' in res.output
    monkeypatch.setenv("RIFT_HTTP_TOKEN", "s3cret x")  # refused, and still not shown
    res = CliRunner().invoke(main, ["config"])
    assert res.exit_code == 1 and "s3cret" not in res.output and "http_token: the bearer token" in res.output
    assert "pydantic.dev" not in res.output and len(res.output.strip().splitlines()) == 1
    monkeypatch.delenv("RIFT_HTTP_TOKEN")
    monkeypatch.setenv("RIFT_RFF_K", "5")  # a misspelt setting is named, not ignored in silence
    with caplog.at_level(logging.WARNING):
        assert CliRunner().invoke(main, ["config"]).exit_code == 0
    assert (
        "ignoring environment variable RIFT_RFF_K: no such setting (did you mean RIFT_RRF_K?)" in caplog.text
    )
    monkeypatch.delenv("RIFT_RFF_K")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    res = CliRunner().invoke(main, ["serve", "--data-dir", str(a_file)])
    assert (
        res.exit_code == 1
        and "cannot be used as rift's data folder" in res.output
        and "Traceback" not in res.output
    )
    res = CliRunner().invoke(
        main, ["watch", str(tmp_path), "--collection", "Bad/Name", "--data-dir", str(tmp_path)]
    )
    assert res.exit_code == 2 and "collection must be" in res.output  # (a bad option value, before any work)
    bad = tmp_path / "bad.toml"
    bad.write_text("k = [\n")
    monkeypatch.setenv("RIFT_CONFIG", str(bad))
    res = CliRunner().invoke(main, ["config"])
    assert res.exit_code == 1 and f"config file {bad} is not valid TOML" in res.output
    bad.write_bytes(b"\xff\xfe = 1\n")
    res = CliRunner().invoke(main, ["config"])
    assert res.exit_code == 1 and f"config file {bad} is not UTF-8 text" in res.output
    bad.write_bytes("\ufeffmax_k = 42\n".encode())  # "UTF-8" as Windows PowerShell writes it: with a BOM
    res = CliRunner().invoke(main, ["config"])
    assert res.exit_code == 0 and '"max_k": 42' in res.output, res.output


def test_read_commands_refuse_another_model_instead_of_re_embedding(
    monkeypatch, tmp_path: Path, tiny_model_path: Path
) -> None:
    """A wrong RIFT_MODEL in one shell must not make `rift stats` or `rift models` re-embed the whole store
    with it and retire the version that served; nor `rift collections create`, which did (it adds nothing), though
    it may still make a new data dir."""
    from click.testing import CliRunner

    from server.cli import main
    from tests.support.helpers import docs, make_settings, open_rift
    from tests.support.tiny_model import build_tiny_model

    settings = make_settings(tmp_path / "data", tiny_model_path)
    rift = open_rift(settings)
    rift.add_documents("notes", docs(("a", "the cat sat on the mat")))
    rift.close()
    registry_before = (settings.models_dir / "registry.json").read_text()

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RIFT_MODEL", str(build_tiny_model(tmp_path / "other", hidden=16)))
    for command in (["stats"], ["search", "cat"], ["models"], ["collections", "create", "more"]):
        res = CliRunner().invoke(main, [*command, "--data-dir", str(settings.data_dir)])
        assert res.exit_code == 1, (command, res.output)
        assert f"collection 'notes' is embedded with {str(tiny_model_path)!r}" in res.output
        assert "it does not re-embed the store" in res.output
    assert (settings.models_dir / "registry.json").read_text() == registry_before
    fresh = CliRunner().invoke(main, ["collections", "create", "more", "--data-dir", str(tmp_path / "fresh")])
    assert fresh.exit_code == 0 and "created collection 'more'" in fresh.output, fresh.output
    monkeypatch.setenv("RIFT_MODEL", str(tiny_model_path))
    res = CliRunner().invoke(main, ["stats", "--json", "--data-dir", str(settings.data_dir)])
    assert res.exit_code == 0 and '"notes"' in res.output


def test_a_read_only_command_on_a_store_that_lost_its_state_says_how_to_rebuild_it(
    monkeypatch, tmp_path: Path, tiny_model_path: Path
) -> None:
    """It said 'no rift data folder' for a store whose state.sqlite alone was lost; a start rebuilds it."""
    from click.testing import CliRunner

    from server.cli import main
    from tests.support.helpers import docs, make_settings, open_rift

    settings = make_settings(tmp_path / "data", tiny_model_path)
    rift = open_rift(settings)
    rift.add_documents("default", docs(("cat", "the cat sat on the mat")))
    rift.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{settings.state_db}{suffix}").unlink(missing_ok=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RIFT_MODEL", str(tiny_model_path))
    res = CliRunner().invoke(main, ["stats", "--data-dir", str(settings.data_dir)])
    assert res.exit_code == 1 and "has lost state.sqlite" in res.output and "rift serve" in res.output
    open_rift(settings).close()  # what `rift serve` does first: rebuild the state from Chroma
    res = CliRunner().invoke(main, ["search", "cat", "--json", "--data-dir", str(settings.data_dir)])
    assert res.exit_code == 0 and '"cat"' in res.output, res.output


def test_rift_rechunk_splits_stored_documents_again_for_new_chunk_settings(
    monkeypatch, tmp_path: Path, tiny_model_path: Path
) -> None:
    """With a shared Chroma server start-up only warns about a chunking change; `rift rechunk` does the work
    (here on a local store opened as a read-only command opens it, which does not re-chunk)."""
    from click.testing import CliRunner

    from server.cli import main
    from tests.support.helpers import docs, make_settings, open_rift

    settings = make_settings(tmp_path / "data", tiny_model_path, chunk_tokens=48, chunk_overlap=8)
    rift = open_rift(settings)
    rift.add_documents("default", docs(("long", " ".join(f"word{i} river city" for i in range(60)))))
    rift.add_documents("other", docs(("short", "the cat sat on the mat")))
    before = rift.engine().state.counts("default")[1]
    rift.close()
    for name, value in (("HF_HUB_OFFLINE", "1"), ("RIFT_MODEL", str(tiny_model_path))):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RIFT_CHUNK_TOKENS", "16")
    monkeypatch.setenv("RIFT_CHUNK_OVERLAP", "4")
    res = CliRunner().invoke(main, ["rechunk", "--data-dir", str(settings.data_dir)])
    assert res.exit_code == 0, res.output
    # (each a new version; the unchanged chunk keeps its vector)
    assert res.stdout.splitlines() == ["default: 1 document split again", "other: 1 document split again"]
    res = CliRunner().invoke(main, ["rechunk", "--json", "--data-dir", str(settings.data_dir)])  # nothing left to do
    assert res.exit_code == 0 and json.loads(res.stdout) == {"rechunked": {"default": 0, "other": 0}}
    res = CliRunner().invoke(main, ["rechunk", "--collection", "nope", "--data-dir", str(settings.data_dir)])
    assert res.exit_code == 1 and "unknown collection 'nope'" in res.output
    changed = make_settings(settings.data_dir, tiny_model_path, chunk_tokens=16, chunk_overlap=4)
    again = open_rift(changed)
    try:
        assert again.engine().state.counts("default")[1] > before
    finally:
        again.close()


def test_a_bad_settings_error_says_where_its_value_came_from(monkeypatch, tmp_path: Path) -> None:
    """A bad value names its source: the environment variable when set, else the config file that has it."""
    from click.testing import CliRunner

    from server.cli import main

    config = tmp_path / "rift.toml"
    config.write_text("chunk_tokens = -3\n")
    monkeypatch.setenv("RIFT_CONFIG", str(config))
    monkeypatch.delenv("RIFT_CHUNK_TOKENS", raising=False)
    res = CliRunner().invoke(main, ["config"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "chunk_tokens: " in res.output and f"(config file {config})" in res.output
    monkeypatch.setenv("RIFT_CHUNK_TOKENS", "-5")
    res = CliRunner().invoke(main, ["config"])
    assert res.exit_code == 1 and "(from RIFT_CHUNK_TOKENS)" in res.output and str(config) not in res.output
