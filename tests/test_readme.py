"""The README's quick start runs verbatim."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs(capsys):
    text = README.read_text()
    section = text.split("## Quick start", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README quick start", "exec"), {})
    assert "replaced" in capsys.readouterr().out


def test_top_commands_pin_the_cpu_torch():
    head = README.read_text().split("## Quick start", 1)[0]
    commands = re.findall(r"^pip install .*$", head, re.M)
    assert len(commands) == 2 and all("torch==2.13.0" in c for c in commands)
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1].split("#")[0].strip() in ci
