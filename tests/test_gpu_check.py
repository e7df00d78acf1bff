"""The prepared GPU check, on the CPU: scripts/gpu_check.sh end to end in a dry run, a failing side that keeps the
others' figures, and what a device call would carry against its limit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import REPO


@pytest.mark.slow
def test_the_gpu_check_runs_end_to_end_as_a_cpu_dry_run(tmp_path):
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", str(tmp_path), "--compile-mode", "default"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "tests exit 0, bench exit 0" in proc.stdout
    for name in ("gpu.txt", "tests.log", "bench.log", "gpu_bench.json", "gpu_bench.md"):
        assert (tmp_path / name).is_file(), name
    (result,) = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert set(result["tokens_per_s"]) == {"ar", "ar_eager", "hf_generate", "hf_compiled", "pld", "eagle2"}
    assert set(result["synthetic"]) == {"pld", "eagle2"}


def test_a_side_that_fails_mid_run_keeps_the_others_figures(tmp_path, monkeypatch):
    from methods.hf_peers import HFGenerator
    from scripts import gpu_bench

    calls = {"n": 0}
    generate = HFGenerator.generate

    def flaky(self, *args, **kwargs):
        if self.name == "hf_generate":
            calls["n"] += 1
            if calls["n"] > 1:  # its warm-up passes; a timed generation breaks
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(HFGenerator, "generate", flaky)
    code = gpu_bench.main(["--shapes", "tiny", "--device", "cpu", "--tokens", "6", "--prompts", "2",
                           "--prompt-len", "32", "--repeats", "1", "--ks", "1,2", "--compile-mode", "default",
                           "--out", str(tmp_path)])
    assert code == 1  # reported as a failure...
    (result,) = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert "hf_generate" not in result["tokens_per_s"] and "illegal memory access" in result["errors"]["hf_generate"]
    assert {"ar", "ar_eager", "hf_compiled", "pld", "eagle2"} <= set(result["tokens_per_s"])  # ...the rest measured
    assert "| hf_generate | | failed: RuntimeError: CUDA error" in (tmp_path / "gpu_bench.md").read_text()


def test_what_travels_to_the_device_is_held_against_its_limit(tmp_path):
    from scripts.device_travel import report, travelling

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "drafts").mkdir()
    (tmp_path / "drafts" / "head.safetensors").write_bytes(b"x" * 3000)
    (tmp_path / "code.py").write_bytes(b"y" * 500)
    (tmp_path / ".gitignore").write_text("/.whl/\n/results/\n")
    (tmp_path / ".whl").mkdir()
    (tmp_path / ".whl" / "transformers.whl").write_bytes(b"z" * 1000)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "run.parquet").write_bytes(b"r" * 9999)  # ignored and not carried: stays behind
    sizes = travelling(tmp_path, [".whl"])
    assert set(sizes) == {"drafts/head.safetensors", "code.py", ".gitignore", ".whl/transformers.whl"}
    fits, text = report(sizes, limit=4000)
    assert not fits and "refused" in text and "drafts/head.safetensors" in text
    assert "which brings it under the limit" in text  # without drafts/ it fits
    assert report(travelling(tmp_path, []), limit=4000)[0]


def test_the_wheels_are_exactly_what_the_device_image_lacks():
    """Pinned to the project's own pins: transformers 5.24 (the image has 5.17, which would silently decode without
    a KV cache) and Hydra with its parser; nothing the image already holds in a version transformers accepts."""
    script = (REPO / "scripts" / "gpu_check.sh").read_text()
    wheels = script.split("WHEELS=(")[1].split(")")[0].split()
    assert [w.strip('"') for w in wheels] == ["transformers==5.24.0", "hydra-core==1.3.2", "omegaconf==2.3.0",
                                             "antlr4-python3-runtime==4.9.3"]
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"transformers>=5.24,<5.25"' in pyproject and '"hydra-core>=1.3.2,<1.4"' in pyproject
    assert sys.version_info >= (3, 10)
