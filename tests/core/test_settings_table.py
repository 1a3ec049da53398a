"""The README's settings table is generated from Settings, so the two cannot drift apart."""

from __future__ import annotations

from devtools.settings_table import README, readme_block, settings_table
from olss_core.settings import ENV_PREFIX, Settings


def test_readme_settings_table_is_the_generated_one() -> None:
    block = readme_block(README.read_text(encoding="utf-8"))
    assert block == settings_table(), "run: python -m devtools.settings_table --write"


def test_every_setting_is_documented() -> None:
    table = settings_table()
    for name, field in Settings.model_fields.items():
        assert f"`{ENV_PREFIX}{name.upper()}`" in table
        assert field.description, f"{ENV_PREFIX}{name.upper()} has no description"
