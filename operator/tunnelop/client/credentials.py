"""A tunnel's credentials Secret as the client reads it, and what a change of it means for the
running frpc. Pure: no I/O."""

from __future__ import annotations

import base64
import binascii
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from tunnelop.contract.naming import FRPC_CONFIG_KEY, TOKEN_KEY

# The lines of frpc.toml that say where frpc logs in and where visitors reach the tunnel. The
# file as a whole is not TOML (localIP and localPort are Go templates), its lines are.
_SETTING = re.compile(r"^\s*(serverAddr|serverPort|remotePort|subdomain)\s*=\s*(.+?)\s*$")


@dataclass(frozen=True)
class Credentials:
    """What frpc runs with. Two are equal when frpc would run the same."""

    frpc_toml: str
    token: str
    resource_version: str = field(default="", compare=False)

    @property
    def settings(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for line in self.frpc_toml.splitlines():
            match = _SETTING.match(line)
            if match:
                try:
                    found[match[1]] = tomllib.loads(f"value = {match[2]}")["value"]
                except tomllib.TOMLDecodeError:
                    continue
        return found

    @property
    def relay(self) -> str | None:
        """host:port frpc logs in at."""
        settings = self.settings
        if "serverAddr" not in settings:
            return None
        host = str(settings["serverAddr"])
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{settings.get('serverPort', 7000)}"

    @property
    def remote_port(self) -> int | None:
        port = self.settings.get("remotePort")
        return port if isinstance(port, int) else None


def read_secret(secret: dict[str, Any]) -> Credentials:
    """The credentials in a Secret as the API returns it (base64 data), or ValueError naming
    the key that is missing or unreadable."""
    meta = secret.get("metadata") or {}
    where = f"Secret {meta.get('namespace', '')}/{meta.get('name', '')}"
    data = secret.get("data") or {}
    texts = {}
    for key in (FRPC_CONFIG_KEY, TOKEN_KEY):
        if key not in data:
            if key == TOKEN_KEY:  # frpc.toml carries the token itself; this key is a copy
                texts[key] = ""
                continue
            raise ValueError(f"{where} has no key {key!r}")
        try:
            texts[key] = base64.b64decode(data[key], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError, TypeError):
            raise ValueError(f"{where}: key {key!r} is not base64-encoded UTF-8 text") from None
    if not texts[FRPC_CONFIG_KEY].strip():
        raise ValueError(f"{where}: key {FRPC_CONFIG_KEY!r} is empty")
    return Credentials(
        texts[FRPC_CONFIG_KEY], texts[TOKEN_KEY], str(meta.get("resourceVersion", ""))
    )


def must_restart(running: Credentials | None, wanted: Credentials | None) -> bool:
    """Whether frpc must be stopped, started or restarted to run `wanted` (None: no frpc)."""
    return running != wanted


def describe_change(last: Credentials | None, wanted: Credentials) -> tuple[str, dict[str, Any]]:
    """The log line (event and fields) for starting frpc with `wanted`, where `last` is what
    frpc ran with before (None: nothing yet)."""
    if last is None or last == wanted:
        return "starting frpc", {"relay": wanted.relay, "remote_port": wanted.remote_port}
    if (last.relay, last.remote_port) != (wanted.relay, wanted.remote_port):
        return "tunnel moved; restarting frpc", {
            "from_relay": last.relay,
            "to_relay": wanted.relay,
            "from_remote_port": last.remote_port,
            "to_remote_port": wanted.remote_port,
        }
    return "credentials changed; restarting frpc", {
        "relay": wanted.relay,
        "remote_port": wanted.remote_port,
    }
