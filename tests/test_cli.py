import subprocess
import sys

from flhelpers.cli import main


def test_list_names_everything(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("mnist-iid", "mnist-extreme", "cifar10-mild", "imdb", "lfighter", "multi-krum",
                 "foolsgold", "repeated-median", "label-flip"):
        assert name in out


def test_bad_benchmark_is_a_clear_error(capsys):
    assert main(["run", "--benchmark", "mnist-idd", "--no-progress"]) == 2
    assert "Did you mean 'mnist-iid'" in capsys.readouterr().err


def test_run_prints_summary_and_run_dir(data_root, tmp_path):
    cmd = [sys.executable, "-m", "flhelpers", "run", "--benchmark", "mnist-iid", "--defense", "lfighter",
           "--attacker-ratio", "0.3", "--rounds", "2", "--peers", "5", "--data-root", str(data_root),
           "--results-dir", str(tmp_path), "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "source_accuracy" in out.stdout and "attack_success_rate" in out.stdout
    assert str(tmp_path) in out.stdout


def test_a_python_without_torch_is_told_to_use_the_project_environment(tmp_path):
    """``python -m flhelpers`` with the system Python (no torch) names the environment to use,
    instead of a bare ``No module named 'torch'`` traceback."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = f"import sys; sys.modules['torch'] = None; sys.path.insert(0, {str(root)!r}); import flhelpers"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError: flhelpers needs torch") and "source .venv/bin/activate" in last
