"""Running ``loadconfig`` on a YAML text, as an operator would, with what it printed."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

from django.core.management import call_command


def load(tmp_path: Path, text: str) -> tuple[str, str]:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    out, err = StringIO(), StringIO()
    call_command("loadconfig", str(path), stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()
