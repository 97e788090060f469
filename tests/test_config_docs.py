"""Every setting is documented where users look: the README table and configs/rift.toml."""

from __future__ import annotations

import re
from pathlib import Path

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
