"""Repository hygiene: no profiler recordings tracked; the benchmarks describe threading
as the package has it (QuantizedModule.forward(n_threads=...))."""
import inspect
import pathlib
import shutil
import subprocess

import pytest

from qatfhe.compile import QuantizedModule

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_perf_recordings_are_ignored_and_untracked():
    ignore = (ROOT / ".gitignore").read_text().split()
    assert "perf*.data" in ignore
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "perf*.data"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    assert tracked == []


def test_benchmarks_agree_with_the_thread_option():
    assert "n_threads" in inspect.signature(QuantizedModule.forward).parameters
    for path in sorted((ROOT / "bench").glob("*")):
        if path.suffix in (".py", ".md"):
            text = " ".join(path.read_text().split())
            assert "no threading" not in text, path.name
            assert "has none" not in text, path.name
    assert "n_threads=2" in (ROOT / "bench" / "bench_inference.py").read_text()
