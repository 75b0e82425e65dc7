"""The README stays true to the code: every setting documented, the quick start is what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_setting_has_a_row_in_the_configuration_table() -> None:
    missing = [
        f"TENSORGRADE_{name.upper()}"
        for name in Settings.model_fields
        if f"| `TENSORGRADE_{name.upper()}` |" not in README
    ]
    assert not missing, f"README's configuration table lacks {missing}"


def test_documented_settings_exist() -> None:
    documented = set(re.findall(r"^\| `TENSORGRADE_([A-Z_]+)` \|", README, re.MULTILINE))
    client_side = {"URL", "API_KEY"}  # read by the client commands, not by the server
    unknown = documented - client_side - {n.upper() for n in Settings.model_fields}
    assert not unknown, f"README documents settings that do not exist: {unknown}"


def test_quick_start_is_two_commands_and_ci_runs_the_second() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    quick_start = quick_start.split("### ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)\n```", quick_start, re.DOTALL)
    assert len(commands) == 2 and all("\n" not in c for c in commands), commands
    assert "tensorgrade serve" in commands[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines()
