"""The package's layers import downward only, and the relay agent stays small: it depends on
the wire contract and the platform pieces, never on the API models or the controllers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "operator" / "tunnelop"

# What each part of the package may import from tunnelop (besides itself and the version).
ALLOWED = {
    "api": {"api"},
    "contract": {"contract"},
    "platform": {"platform", "contract"},
    "domain": {"domain", "api", "contract"},
    "builders": {"builders", "domain", "api", "contract"},
    "controllers": {"controllers", "builders", "domain", "api", "contract", "platform"},
    "agent": {"agent", "contract", "platform"},
    "manager": {"controllers", "builders", "platform", "api", "contract"},
    # `tunnelop release-finalizers` (the chart's uninstall hook) talks only to the API server.
    "uninstall": {"platform", "contract"},
    # `tunnelop client`: frpc that follows its tunnel, with no API models.
    "client": {"client", "contract", "platform"},
    # `tunnelop top` ranks with the pure leaderboard.
    "cli": {"platform", "api", "agent", "manager", "contract", "domain", "client", "uninstall"},
}


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def tunnelop_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "tunnelop":
                found |= {f"tunnelop.{alias.name}" for alias in node.names}
            elif node.module.startswith("tunnelop."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tunnelop.")}
    return found


def modules() -> list[Path]:
    return sorted(
        p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE
    )


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_downward(path: Path) -> None:
    relative = path.relative_to(PACKAGE)
    part = relative.parts[0].removesuffix(".py")
    allowed = ALLOWED[part]
    wrong = sorted(
        imported
        for imported in tunnelop_imports(path)
        if imported != "tunnelop.__version__" and part_of(imported) not in allowed
    )
    assert not wrong, f"{relative} ({part}) imports {wrong}; {part} may import {sorted(allowed)}"


def test_every_part_is_known() -> None:
    parts = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in modules()}
    assert parts == set(ALLOWED)


def test_no_two_modules_share_a_name_with_different_jobs() -> None:
    names = [p.name for p in modules() if p.name != "__init__.py"]
    shared = {n for n in names if names.count(n) > 1}
    assert not shared, shared


def loaded_by(statement: str, *prefixes: str) -> list[str]:
    """The modules of `prefixes` that a fresh interpreter has loaded after `statement`."""
    code = (
        f"import sys; {statement}; "
        f"print(','.join(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return [m for m in result.stdout.strip().split(",") if m]


def test_the_contract_needs_no_pydantic() -> None:
    assert loaded_by("import tunnelop.contract.table, tunnelop.contract.naming", "pydantic") == []


def test_the_agent_runs_without_the_api_models_or_the_controllers() -> None:
    """The relay pod is internet-facing: its process loads the contract, not the operator."""
    assert (
        loaded_by("import tunnelop.agent.server", "tunnelop.api", "tunnelop.controllers", "kopf")
        == []
    )
