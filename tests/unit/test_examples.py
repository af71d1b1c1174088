"""Every example in docs/examples is a valid object of the API, as documented."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunnelop.api.v1alpha1 import RelayNode, RelayPool, Tunnel, TunnelQuota, parse_object
from tunnelop.domain.relayview import RelayView

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
EXPECTED = {
    "tunnel-tcp-game-server.yaml": Tunnel,
    "tunnel-http-site.yaml": Tunnel,
    "tunnel-udp.yaml": Tunnel,
    "tunnel-pinned-port.yaml": Tunnel,
    "relaynode-tcp-udp-only.yaml": RelayNode,
    "relaynode-http.yaml": RelayNode,
    "relaypool.yaml": RelayPool,
    "tunnelquota-free.yaml": TunnelQuota,
    "tunnelquota-paid.yaml": TunnelQuota,
}


def test_every_example_is_listed() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_validates(name: str) -> None:
    documents = [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d is not None]
    assert documents, name
    for document in documents:
        parsed = parse_object(document)
        assert isinstance(parsed, EXPECTED[name])
        # Tenants apply tunnels and quotas with -n: the manifests carry no namespace.
        assert parsed.metadata.namespace is None
        assert parsed.metadata.name


def test_examples_show_the_documented_features() -> None:
    def load(name: str):
        return parse_object(yaml.safe_load((EXAMPLES / name).read_text()))

    assert load("tunnel-http-site.yaml").spec.subdomain == "blog"
    assert load("tunnel-pinned-port.yaml").spec.remote_port == 24565
    assert load("tunnel-udp.yaml").spec.protocol == "udp"
    assert load("relaynode-tcp-udp-only.yaml").spec.protocols == ["tcp", "udp"]
    relay = RelayView.from_model(load("relaynode-tcp-udp-only.yaml"))
    assert relay.port_allowed(20000) and not relay.port_allowed(25565)
    assert "http" in load("relaynode-http.yaml").spec.protocols


def test_api_reference_covers_every_field() -> None:
    from tunnelop.api.crdgen import generate_crds

    reference = (EXAMPLES.parent / "api.md").read_text()
    missing = []
    for crd in generate_crds():
        kind = crd["spec"]["names"]["kind"]
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

        def visit(node: dict, path: str, kind: str = kind) -> None:
            for name, child in node.get("properties", {}).items():
                field = f"{path}.{name}" if path else name
                if field in ("apiVersion", "kind", "metadata"):
                    continue
                # RelayPool's template spec is a RelayNode spec, documented once.
                if field.startswith("spec.template.spec.") and kind == "RelayPool":
                    continue
                if "properties" in child:
                    visit(child, field)
                elif f"`{field}`" not in reference:
                    missing.append(f"{kind} {field}")

        visit(schema, "")
    assert not missing, f"docs/api.md does not describe: {missing}"
