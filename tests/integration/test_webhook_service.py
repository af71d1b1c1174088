"""The webhook as installed in a cluster: the chart owns the two `tunnelop.dev` webhook
configurations (a Service reference, an empty caBundle) and the Service; the operator
(`--webhook-service`, `--webhook-cert-secret`) creates the certificate Secret once however
many replicas start together, injects its CA into the caBundle, and the API server calls the
leader through the Service. A new leader after a takeover serves the same certificate.

How the API server reaches a local process through a Service here: the local cluster runs
it with --enable-aggregator-routing, so it resolves a webhook's Service reference through
the Service's EndpointSlices (without it, to the cluster IP, which nothing routes here: no
kube-proxy). Loopback addresses are refused in Endpoints and in IPv4 EndpointSlices ("may
not be in the loopback range"), so the test writes an FQDN-type slice whose one "name" is
127.0.0.1; its port is the process's webhook port, behind the Service's 443 as in the
chart. The certificate is still checked against the Service's name, <name>.<namespace>.svc,
as for any Service reference.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import uuid
from pathlib import Path

import pytest
from kubernetes.aio import client

from support import objects, tools
from support.objects import relay_node, wait_for
from support.operator import (
    OperatorProcess,
    ca_bundles,
    chart_webhook_configurations,
    delete_webhook_configurations,
    wait_webhook_denial,
)

SERVICE = "tunnelop-webhook"
SECRET = "tunnelop-webhook-cert"
RUN = uuid.uuid4().hex[:6]
RELAY_LABEL = {"tunnelop.test/webhook-service": RUN}


async def served_certificate(port: int, ca_pem: bytes, server_name: str) -> bytes:
    """The DER certificate served on 127.0.0.1:port, verified against `ca_pem` for
    `server_name` (as the API server checks it)."""
    tls = ssl.create_default_context(cadata=ca_pem.decode())
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls, server_hostname=server_name
    )
    try:
        return writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()


def denied_port_tunnel(name: str) -> dict:
    """A Tunnel only the webhook refuses: port 30000 lies outside its relay's range."""
    return objects.tunnel(name, remotePort=30000, relay={"nodeSelector": RELAY_LABEL})


def create(manifest: dict, namespace: str):
    return tools.kubectl(
        "create", "-n", namespace, "-o", "json", "-f", "-", input=json.dumps(manifest), check=False
    )


def local_endpoints(namespace: str, port: int) -> dict:
    """The Service's endpoints: this machine's webhook port, as an FQDN slice (an IPv4 one
    may not hold a loopback address)."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{SERVICE}-local",
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": SERVICE,
                "endpointslice.kubernetes.io/managed-by": "tunnelop.test",
            },
        },
        "addressType": "FQDN",
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
    }


@pytest.fixture
async def installed(operator, cluster, namespace, relay_namespace, tmp_path: Path):
    """The chart's part (configurations, Service) in `namespace`, and two replicas started
    together; the session's operator, which registers its own configurations, steps aside."""
    await operator.stop()
    delete_webhook_configurations()
    objects.apply(relay_node(f"whsvc-{RUN}", labels=RELAY_LABEL, ports="40000-40999"))
    replicas = [
        OperatorProcess(
            cluster.kubeconfig,
            tmp_path / f"operator-{i}.log",
            "--leader-elect",
            "--relay-namespace",
            relay_namespace,
            "--webhook-service",
            f"{namespace}/{SERVICE}",
            "--webhook-cert-secret",
            SECRET,
            env={"POD_NAMESPACE": namespace},
        )
        for i in range(2)
    ]
    # One port for both, as two pods behind one Service: whoever leads serves it.
    replicas[1].webhook_port = replicas[0].webhook_port
    objects.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": SERVICE, "namespace": namespace},
                "spec": {"ports": [{"name": "https", "port": 443, "targetPort": "webhook"}]},
            },
            local_endpoints(namespace, replicas[0].webhook_port),
            *chart_webhook_configurations(namespace, SERVICE, 443),
        ]
    )
    try:
        await asyncio.gather(*(r.start(wait_for="health") for r in replicas))
        yield replicas
    finally:
        for replica in replicas:
            await replica.stop()
        delete_webhook_configurations()
        tools.kubectl("delete", "relaynode", f"whsvc-{RUN}", "--ignore-not-found", "--wait=false")
        await operator.start()


async def leader_of(replicas: list[OperatorProcess], timeout: float = 60) -> OperatorProcess:
    found: list[OperatorProcess] = []

    async def one_ready() -> bool:
        found[:] = [r for r in replicas if await r.leads()]
        return len(found) == 1

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await one_ready():
        if loop.time() > deadline:
            raise TimeoutError("no single leader:\n" + "\n".join(r.logs() for r in replicas))
        await asyncio.sleep(0.2)
    return found[0]


async def test_the_operator_serves_the_charts_webhooks_through_the_service(
    installed: list[OperatorProcess], kube: client.ApiClient, namespace: str
) -> None:
    leader = await leader_of(installed)

    # One Secret, though both replicas started together; one of them created it.
    secrets = await client.CoreV1Api(kube).list_namespaced_secret(
        namespace, label_selector="app.kubernetes.io/component=webhook"
    )
    assert [s.metadata.name for s in secrets.items] == [SECRET]
    creators = [r for r in installed if "webhook certificate created" in r.logs()]
    assert len(creators) == 1, "not exactly one replica created the Secret"
    data = secrets.items[0].data
    ca_pem, cert_pem = base64.b64decode(data["ca.crt"]), base64.b64decode(data["tls.crt"])

    # The CA is injected into every webhook's caBundle, and only the caBundle changed.
    await wait_for(
        lambda: ca_bundles() == [base64.b64encode(ca_pem).decode()] * 2,
        timeout=30,
        what="the caBundle injected",
    )
    validating = objects.get("validatingwebhookconfiguration", "tunnelop.dev")
    assert validating["webhooks"][0]["failurePolicy"] == "Fail"
    assert validating["webhooks"][0]["clientConfig"]["service"]["name"] == SERVICE

    # The API server calls the leader through the Service and trusts its certificate: a
    # tunnel the rules refuse is denied by the webhook, a good one gets its finalizer from
    # the mutating webhook at creation.
    denial = await wait_webhook_denial(namespace, denied_port_tunnel, "spec.remotePort")
    assert 'admission webhook "validate-tunnel.tunnelop.dev" denied' in denial, denial
    created = create(objects.tunnel("fine", relay={"nodeSelector": RELAY_LABEL}), namespace)
    assert created.returncode == 0, created.stderr
    assert "tunnelop.dev/finalizer" in created.stdout

    server_name = f"{SERVICE}.{namespace}.svc"
    served = await served_certificate(leader.webhook_port, ca_pem, server_name)
    assert served == ssl.PEM_cert_to_DER_cert(cert_pem.decode())

    # The other replica takes over and serves the very same certificate: no caBundle change.
    await leader.stop()
    follower = next(r for r in installed if r is not leader)
    await follower.wait_ready()
    await wait_webhook_denial(namespace, denied_port_tunnel, "spec.remotePort")
    served = await served_certificate(follower.webhook_port, ca_pem, server_name)
    assert served == ssl.PEM_cert_to_DER_cert(cert_pem.decode())
    assert ca_bundles() == [base64.b64encode(ca_pem).decode()] * 2
    tools.kubectl("delete", "tunnel", "fine", "-n", namespace, "--wait=false")
