"""Joining a Ray cluster that is not there: a one-line answer within seconds, not Ray's retries."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from flhelpers.config import ConfigError
from processes import free_port

pytest.importorskip("ray", reason='Ray is not installed: pip install -e ".[ray]"')
pytestmark = pytest.mark.ray


def test_grid_on_an_unreachable_ray_address_says_so_before_any_run(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    import ray

    from flhelpers.cli import main

    address = f"127.0.0.1:{free_port()}"
    rc = main(["grid", "--benchmarks", "mnist-iid", "--defenses", "fedavg", "--ratios", "0", "--rounds", "1",
               "--set", "num_peers=5", "--set", "train_subset=600", "--results-dir", str(tmp_path),
               "--executor", "ray", "--address", address, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"Cannot reach a Ray cluster at '{address}'" in lines[0]
    assert "ray start --head" in lines[0]
    assert not ray.is_initialized()
    assert not (tmp_path / "runs").exists()  # nothing was computed


def test_gcs_endpoint_reads_the_address_forms() -> None:
    from flhelpers.fl.ray_executor import gcs_endpoint

    assert gcs_endpoint("10.0.0.1:6379") == ("10.0.0.1", 6379)
    assert gcs_endpoint("ray://head:10001") == ("head", 10001)
    assert gcs_endpoint("[::1]:6379") == ("::1", 6379)
    assert gcs_endpoint("auto") is None and gcs_endpoint("local") is None
    with pytest.raises(ConfigError, match="no valid port"):
        gcs_endpoint("10.0.0.1:port")


def test_probe_passes_a_listening_port() -> None:
    from flhelpers.fl.ray_executor import probe_address

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        probe_address(f"127.0.0.1:{server.getsockname()[1]}")  # no error
    with pytest.raises(ConfigError, match="Cannot reach a Ray cluster"):
        probe_address(f"127.0.0.1:{free_port()}")
