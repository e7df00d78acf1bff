"""README's two commands stay the ones CI and newcomers run."""

import re

from .conftest import REPO


def readme_commands():
    return re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), re.S)[:2]


def test_ci_runs_readme_test_command():
    setup_run, setup_test = readme_commands()
    ci = (REPO / ".ci" / "run").read_text()
    assert setup_test.strip() in ci
    assert "pip install torch==2.13.0" in setup_run and setup_run.strip().endswith("python run.py")
    assert setup_test.index("torch==2.13.0") < setup_test.index("pip install -e")
