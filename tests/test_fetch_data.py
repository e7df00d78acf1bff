"""scripts/fetch_data.py without a network: argument handling, the offline failure, and layouts the tasks read."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from .conftest import REPO, compose

SCRIPT = REPO / "scripts" / "fetch_data.py"


@pytest.fixture(scope="module")
def fetch():
    spec = importlib.util.spec_from_file_location("fetch_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fetch_data"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["fetch_data"]


def test_offline_fails_with_one_clear_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--only", "gsm8k", "--out", str(tmp_path)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "HF_HUB_OFFLINE" in errors[0], proc.stderr
    assert not any(tmp_path.iterdir())


def test_arguments(fetch, capsys):
    assert fetch.parse_args([]).only is None
    args = fetch.parse_args(["--only", "gsm8k", "cnndm", "--out", "/x", "--force"])
    assert args.only == ["gsm8k", "cnndm"] and str(args.out) == "/x" and args.force
    with pytest.raises(SystemExit) as err:
        fetch.parse_args(["--only", "nope"])
    assert err.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err


def test_default_destination_is_where_tasks_look(fetch, tmp_path, monkeypatch):
    from tasks.base import data_roots

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert fetch.user_data_dir() == tmp_path / "speclab" / "data" and fetch.user_data_dir() in data_roots()


def test_layouts_match_the_task_configs(fetch):
    from tasks.mtbench import FETCHED_PATH

    for name in ("spec_bench", "gsm8k", "cnndm"):
        assert fetch.SOURCES[name].path == compose(f"task={name}").task.path
    assert fetch.SOURCES["mtbench"].path == FETCHED_PATH


def test_existing_files_are_kept_without_network(fetch, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text("{}\n")
    called = []
    monkeypatch.setitem(fetch.SOURCES, "gsm8k", fetch.Source("gsm8k/test.jsonl", "test", lambda: called.append(1) or b""))
    assert fetch.main(["--only", "gsm8k", "--out", str(tmp_path)]) == 0
    assert not called and "exists" in capsys.readouterr().out
    monkeypatch.setitem(fetch.SOURCES, "gsm8k", fetch.Source("gsm8k/test.jsonl", "test", lambda: b'{"question": "q"}\n'))
    assert fetch.main(["--only", "gsm8k", "--out", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "gsm8k" / "test.jsonl").read_text() == '{"question": "q"}\n'


def test_unreachable_source_is_one_clear_error(fetch, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(fetch, "hub_reachable", lambda timeout=3.0: False)
    assert fetch.main(["--only", "cnndm", "--out", str(tmp_path)]) == 2
    assert "error: cannot reach the Hugging Face Hub for abisee/cnn_dailymail" in capsys.readouterr().err
    assert not (tmp_path / "cnndm").exists()
