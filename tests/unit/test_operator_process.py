"""The test harness's operator process: one that lost its Lease (exit code 1) is started
again, as a pod's restartPolicy would; one stopped or killed by a test is not."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from support.objects import wait_for
from support.operator import OperatorProcess

# Exits 1 (the Lease lost) on its first run, then stays up.
FIRST_RUN_LOSES = """
import pathlib, sys, time
marker = pathlib.Path(sys.argv[1])
if not marker.exists():
    marker.write_text("ran")
    sys.exit(1)
time.sleep(60)
"""


class Scripted(OperatorProcess):
    def __init__(self, tmp_path: Path, script: str, **kwargs) -> None:
        super().__init__(tmp_path / "kubeconfig", tmp_path / "log", **kwargs)
        self.script, self.marker = script, tmp_path / "marker"

    @property
    def argv(self) -> list[str]:
        return [sys.executable, "-c", self.script, str(self.marker)]


async def test_a_process_that_lost_its_lease_is_started_again(tmp_path: Path) -> None:
    process = Scripted(tmp_path, FIRST_RUN_LOSES, restart_on_lost_lease=True)
    await process.start(wait_for="none")
    await wait_for(lambda: process.restarts == 1, timeout=10, what="a restart")
    assert process.process is not None and process.process.returncode is None
    await process.stop()
    assert process.restarts == 1
    assert "lost its Lease; started again" in process.log_path.read_text()


async def test_a_stopped_or_unasked_process_is_not_started_again(tmp_path: Path) -> None:
    process = Scripted(tmp_path, "import sys; sys.exit(1)")
    await process.start(wait_for="none")
    await wait_for(lambda: process.process.returncode is not None, timeout=10, what="an exit")
    await asyncio.sleep(0.3)
    assert process.restarts == 0

    kept = Scripted(tmp_path, "import time; time.sleep(60)", restart_on_lost_lease=True)
    await kept.start(wait_for="none")
    await kept.kill()
    await asyncio.sleep(0.3)
    assert kept.restarts == 0 and kept.process.returncode is not None
