"""Every setting read from the environment has its row in docs/configuration.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_environment_setting_is_documented() -> None:
    source = (ROOT / "llm_platform" / "settings.py").read_text()
    names = set(re.findall(r"env_[a-z]+\(\s*\"([A-Z][A-Z0-9_]+)\"", source))
    assert len(names) > 50  # the pattern still finds the settings
    table = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    assert sorted(names - documented) == []
