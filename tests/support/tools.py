"""Paths of the cached test-ground tools and small helpers to run them.

The tools are built by `make tools` (hack/tools.sh) and cached by version outside the
checkout; `hack/tools.sh path` is the single place that knows where.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import shutil
import signal
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOLS_SCRIPT = REPO / "hack" / "tools.sh"
KUBECONFIG = REPO / ".cluster" / "kubeconfig"


class ToolMissing(RuntimeError):
    """A cached tool is not built yet: run `make tools`."""


@functools.cache
def versions() -> dict[str, str]:
    """The pinned tool versions (hack/versions.env), e.g. versions()["FRP_VERSION"]."""
    pairs = {}
    for line in (REPO / "hack" / "versions.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


@functools.cache
def tools_path() -> list[Path]:
    out = subprocess.run(
        [str(TOOLS_SCRIPT), "path"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return [Path(p) for p in out.split(":") if p]


def tool(name: str) -> Path:
    """The cached binary called `name` (kubectl, helm, frps, frpc, etcd, kwokctl, ...)."""
    for directory in tools_path():
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ToolMissing(f"{name} is not in the tool cache; run `make tools` first")


def env_with_tools(**extra: str) -> dict[str, str]:
    """The current environment with the cached tools first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([*(str(p) for p in tools_path()), env.get("PATH", "")])
    env.update(extra)
    return env


def run(
    name: str,
    *args: str,
    kubeconfig: Path | None = KUBECONFIG,
    input: str | None = None,
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a cached tool to completion and return its result (text mode)."""
    env = env_with_tools()
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    result = subprocess.run(
        [str(tool(name)), *args],
        input=input,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise subprocess.CalledProcessError(
            result.returncode, result.args, result.stdout, result.stderr
        )
    return result


def kubectl(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return run("kubectl", *args, **kwargs)


def helm(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return run("helm", *args, **kwargs)


def which(name: str) -> str | None:
    try:
        return str(tool(name))
    except ToolMissing:
        return shutil.which(name)


def die_with_parent() -> None:
    """In a child process (as preexec_fn): get SIGKILL when the parent dies, so that no
    process started by a test or the demo outlives it."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


async def spawn_logged(
    argv: list[str], log_path: Path, env: dict[str, str], *, own_group: bool = False
) -> asyncio.subprocess.Process:
    """Start a process of a test with its output appended to `log_path`, no stdin, dying
    with this one (`own_group`: in a process group of its own, for `terminate_group`)."""
    with log_path.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=own_group,
            preexec_fn=die_with_parent,
        )


async def terminate_group(process: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    """SIGTERM to a process started in its own group (start_new_session), SIGKILL after
    `grace` seconds: a container's or a tool's children go with it."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
