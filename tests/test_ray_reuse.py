"""sweep.run without --address: reuse a live `ray start` cluster, never a dead one's file."""

from __future__ import annotations

import socket

from sweep.ray_session import running_local_cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_live_cluster_address_is_reused(tmp_path):
    with socket.socket() as srv:  # stands in for the GCS of a `ray start` head
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        (tmp_path / "ray_current_cluster").write_text(f"127.0.0.1:{port}\n")
        assert running_local_cluster(str(tmp_path)) == f"127.0.0.1:{port}"


def test_stale_cluster_file_is_ignored(tmp_path):
    # A cluster that died without `ray stop` leaves its address behind; nothing listens there.
    (tmp_path / "ray_current_cluster").write_text(f"127.0.0.1:{_free_port()}\n")
    assert running_local_cluster(str(tmp_path), timeout_s=0.5) is None


def test_no_cluster_file(tmp_path):
    assert running_local_cluster(str(tmp_path)) is None
    (tmp_path / "ray_current_cluster").write_text("garbage")
    assert running_local_cluster(str(tmp_path)) is None
