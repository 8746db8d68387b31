"""The README's commands that continue, resume or evaluate a run, as written: `python train.py` first (its run
fills `<run>` and `<file.ckpt>`), then each of them, one at a time (a run in use is locked, and resume=latest takes
the newest run). In a file of its own, so that its runs and test_readme.py's run in parallel."""

import pytest
from test_readme import cheap_commands, repo_copy, run, run_all  # noqa: F401  (repo_copy: a fixture)


@pytest.mark.slow
def test_every_cheap_command_that_needs_a_run_works_as_written(repo_copy):  # noqa: F811
    items = cheap_commands(needing_a_run=True)
    assert ("README.md", "python train.py") in items and len(items) >= 5, items
    first = run("python train.py", repo_copy)
    assert first.returncode == 0, first.stderr[-2000:]
    (run_dir,) = (repo_copy / "outputs" / "runs").iterdir()
    fill = {"<run>": run_dir.name, "<file.ckpt>": str(run_dir / "checkpoints" / "last.ckpt")}
    rest = [item for item in items if item[1] != "python train.py"]
    failures = run_all(rest, repo_copy, fill, parallel=1)
    assert not failures, "\n".join(failures)
