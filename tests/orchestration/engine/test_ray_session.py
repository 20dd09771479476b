"""What a resume does with the last driver's record (``driver.json``, read from the sweep's storage)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from orchestration.engine.ray_session import reap_stale_ray
from orchestration.store.storage import Storage


@pytest.mark.parametrize("session", ["/", "/tmp", "/tmp/ray/session_latest", "relative/session_x", "/nonexistent/session_1"])
def test_a_forged_driver_record_cannot_name_what_to_kill(tmp_path: Path, session: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a real Ray session directory of this machine is reaped: a record that names "/" (which every
    process's command line contains) must not make a resume kill this machine's processes."""
    import orchestration.engine.ray_session as rs

    sweep = Storage.from_uri(str(tmp_path / "sweep"))
    sweep.write_bytes(json.dumps({"pid": 0, "host": socket.gethostname(), "session_dir": session}).encode(),
                      "driver.json")
    killed: list[int] = []
    monkeypatch.setattr(rs.os, "kill", lambda pid, sig: killed.append(pid))
    assert reap_stale_ray(sweep) == 0 and killed == []
