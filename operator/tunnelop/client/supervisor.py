"""One frpc process at a time, run from a config file in a private directory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunnelop.contract.naming import LOCAL_IP_ENV, LOCAL_PORT_ENV
from tunnelop.platform import logs

CONFIG_FILE = "frpc.toml"
# frpc colours its log lines whatever they are written to, unless its config says otherwise
# (and the config is the operator's): the colours are taken out, and each line is logged again
# as one of the client's, so that a JSON log stays JSON.
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
_FRP_LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \[([TDIWE])\] \[[^\]]*\] (.*)$"
)
_LEVELS = {"T": "debug", "D": "debug", "I": "info", "W": "warning", "E": "error"}
OUTPUT_LINE_LIMIT = 1 << 20


def frpc_line(raw: str) -> tuple[str, str]:
    """(level, message) of a line of frpc's output. A line not in frp's log format is what
    frpc prints when it cannot start (a config error), hence a warning."""
    text = _COLOUR.sub("", raw).strip()
    match = _FRP_LOG_LINE.match(text)
    if match:
        return _LEVELS[match[1]], match[2]
    return "warning", text


def frpc_env(base: Mapping[str, str], local_port: int, local_ip: str) -> dict[str, str]:
    """`base` with the local service frpc.toml reads from the environment."""
    return {**base, LOCAL_PORT_ENV: str(local_port), LOCAL_IP_ENV: local_ip}


def _write_private(path: Path, text: str) -> None:
    # Created 0600 from the start: the file holds the tunnel's tokens.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT


def _die_with_parent() -> None:
    """In the child (Linux): SIGKILL when the client dies, so that no frpc outlives it."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


class FrpcProcess:
    """frpc (`binary -c workdir/frpc.toml`) with `env`; each line it prints is logged to
    `output_log` with frpc's level."""

    def __init__(
        self,
        binary: str,
        workdir: Path,
        env: Mapping[str, str],
        stop_grace: float,
        output_log: Any = None,
    ):
        self.binary = binary
        self.config_path = workdir / CONFIG_FILE
        self.env = dict(env)
        self.stop_grace = stop_grace
        self.output_log = output_log or logs.get("frpc")
        self.process: asyncio.subprocess.Process | None = None
        self._output: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self, frpc_toml: str) -> None:
        """Write the config and start frpc; OSError when it cannot be started."""
        if self.running:
            raise RuntimeError("frpc is running; stop it first")
        await self.stop()  # an frpc that exited: the rest of its output
        await asyncio.to_thread(_write_private, self.config_path, frpc_toml)
        self.process = await asyncio.create_subprocess_exec(
            self.binary,
            "-c",
            str(self.config_path),
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            limit=OUTPUT_LINE_LIMIT,
            # Signals reach frpc from the client only: a Ctrl-C in the terminal is the
            # client's to handle, and it stops frpc itself.
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        self._output = asyncio.create_task(self._log_output(self.process), name="frpc output")

    async def _log_output(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while True:
            try:
                line = await process.stdout.readline()
            except ValueError:  # a line over the limit: skipped
                continue
            if not line:
                return
            level, message = frpc_line(line.decode(errors="replace"))
            if message:
                getattr(self.output_log, level)(message, pid=process.pid)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def wait(self) -> int:
        """Until frpc exits; its exit code (negative: the signal that ended it)."""
        if self.process is None:
            raise RuntimeError("frpc was not started")
        return await self.process.wait()

    async def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after the grace period; the exit code (None: not started)."""
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), self.stop_grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._output is not None:
            # The last lines frpc printed, then the end of its output.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._output), 5)
            self._output.cancel()
            await asyncio.gather(self._output, return_exceptions=True)
            self._output = None
        return process.returncode
