"""`python -m qatfhe tutorial`: a reduced run end to end (2 runs, 1 epoch, 2 processes)
and its usage errors (exit status 2, nothing written)."""
import json
import os
import subprocess
import sys

import pytest

from qatfhe import __main__ as cli
from qatfhe import experiments, plots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, cwd=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "qatfhe", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "nested" / "out"    # created by the command
    done = run_cli("tutorial", "--runs", "2", "--epochs", "1", "--jobs", "2", "--out",
                   str(out), "--no-progress")
    return done, out


def test_reduced_tutorial_writes_tables_json_and_plots(reduced):
    done, out = reduced
    assert done.returncode == 0, done.stderr
    for reference in ("68.70%", "56.50%", "7.4", "82.50%", "57.74%", "95.40%"):
        assert reference in done.stdout
    assert "| hidden neurons | 10 | 30 | 100 |" in done.stdout
    data = json.loads((out / "results.json").read_text())
    assert set(data["experiments"]) == {"ptq_by_width", "ptq_pruned", "qat_pruned"}
    assert data["command"] == ("python -m qatfhe tutorial --runs 2 --epochs 1 --jobs 2 "
                               f"--out {out} --no-progress")
    for name, n_configs in (("ptq_by_width", 3), ("ptq_pruned", 2), ("qat_pruned", 1)):
        assert len(data["experiments"][name]["runs"]) == 2 * n_configs
        assert data["experiments"][name]["settings"]["epochs"] == 1
    for r in data["experiments"]["qat_pruned"]["runs"]:
        assert r["agree"] and r["integer_accuracy"] == r["fake_quant_accuracy"]
        assert r["accumulator_bits"] > 0
    for r in data["experiments"]["ptq_by_width"]["runs"]:
        assert 0 < r["ptq_accuracy"] <= 1 and r["accumulator_bits"] > 0
    pngs = {"dataset.png", "decision_boundaries.png", "accumulator_bits.png"}
    written = {p.name for p in out.iterdir()}
    if plots.available():
        assert written == pngs | {"results.json"}
        for name in pngs:
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert written == {"results.json"}
        assert "matplotlib is not installed" in done.stdout


def test_runs_over_two_processes_equal_runs_in_one(reduced):
    done, out = reduced
    data = json.loads((out / "results.json").read_text())
    alone = experiments.qat_pruned(runs=2, epochs=1, jobs=1)
    assert data["experiments"]["qat_pruned"]["runs"] == alone.runs


@pytest.mark.parametrize("args", [
    ["--bogus"], ["--runs", "0"], ["--runs", "-3"], ["--runs", "two"], ["--jobs", "0"],
    ["--epochs", "0"], ["--lr", "0"], ["--lr", "nan"], ["--lr-schedule", "step"], ["extra"]])
def test_usage_errors_exit_2_and_write_nothing(tmp_path, capsys, args):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        cli.main(["tutorial", "--out", str(out), *args])
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_unwritable_out_is_a_usage_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for out in (blocker, blocker / "sub" / "dir"):
        with pytest.raises(SystemExit) as exc:
            cli.main(["tutorial", "--runs", "1", "--out", str(out)])
        assert exc.value.code == 2
        assert "--out" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
    assert blocker.read_text() == "not a directory"


def test_unwritable_out_from_the_shell(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = run_cli("tutorial", "--out", str(blocker / "out"))
    assert done.returncode == 2 and "--out" in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_a_failed_run_leaves_nothing(tmp_path, monkeypatch):
    def fail(**kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(experiments, "run_all", fail)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["tutorial", "--out", str(tmp_path / "out"), "--no-progress"])
    assert list(tmp_path.iterdir()) == []


def test_without_matplotlib_a_one_line_note(reduced, tmp_path, monkeypatch, capsys):
    _, out = reduced      # replay the reduced run's results instead of training again
    data = json.loads((out / "results.json").read_text())["experiments"]
    replay = {name: experiments.ExperimentResult(name, d["configs"], d["settings"], d["runs"])
              for name, d in data.items()}
    monkeypatch.setattr(experiments, "run_all", lambda **kwargs: replay)
    monkeypatch.setattr(plots, "available", lambda: False)
    assert cli.main(["tutorial", "--runs", "2", "--out", str(tmp_path), "--no-progress"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if "not installed" in line]
    assert len(notes) == 1 and "matplotlib" in notes[0]
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_demo_still_works():
    done = run_cli("demo", "--epochs", "1")
    assert done.returncode == 0, done.stderr
    assert "test accuracy" in done.stdout
