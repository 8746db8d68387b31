"""The README is the contract: CI must run exactly its set-up and test commands."""

import re

from conftest import REPO


def readme_commands(section: str) -> list[str]:
    text = (REPO / "README.md").read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return [line for block in re.findall(r"```bash\n(.*?)```", body, re.S) for line in block.splitlines()]


def test_ci_runs_the_readme_setup_and_test_commands():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    commands = readme_commands("Quickstart")
    setup = next(c for c in commands if "pip install" in c)
    assert setup in ci
    assert any(line.startswith("pytest") for line in ci) and "pytest" in commands
