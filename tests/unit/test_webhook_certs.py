"""The webhook certificate behind a Service: the names it carries, when the leader renews it
(and when its CA goes too), the Secret it lives in, the caBundle patch for the chart's
webhook configurations, the operator's namespace, and the `tunnelop run` flags."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ssl

import pytest
from cryptography import x509

from tunnelop.cli import main
from tunnelop.platform import certs, webhook_tls
from tunnelop.platform.kube import KubeError

NOW = datetime.datetime(2026, 3, 1, tzinfo=datetime.UTC)
SERVICE = ("tunnelop", "tunnelop-webhook")
HOSTS = certs.service_host_names(*SERVICE)


@pytest.fixture(scope="module")
def pair() -> certs.WebhookPair:
    return certs.issue_pair(HOSTS, NOW)


def test_the_certificate_names_every_way_the_service_is_called() -> None:
    assert HOSTS == [
        "tunnelop-webhook.tunnelop.svc",
        "tunnelop-webhook.tunnelop.svc.cluster.local",
        "tunnelop-webhook.tunnelop",
        "tunnelop-webhook",
    ]


def test_a_fresh_pair_serves_the_names_and_needs_nothing(pair) -> None:
    cert = x509.load_pem_x509_certificate(pair.cert)
    assert certs.certificate_names(cert) == set(HOSTS)
    assert cert.not_valid_after_utc - NOW == datetime.timedelta(days=certs.SERVING_DAYS)
    assert certs.renewal_due(pair, HOSTS, NOW) is None
    assert certs.renewal_due(pair, HOSTS, NOW + datetime.timedelta(days=334)) is None


def test_no_pair_means_a_new_ca() -> None:
    assert certs.renewal_due(None, HOSTS, NOW) == certs.Renewal("no certificate yet", new_ca=True)


def test_under_thirty_days_left_renews_the_serving_certificate_and_keeps_the_ca(pair) -> None:
    later = NOW + datetime.timedelta(days=certs.SERVING_DAYS - 29)
    renewal = certs.renewal_due(pair, HOSTS, later)
    assert renewal is not None and not renewal.new_ca
    assert "tls.crt expires in 29 days" in renewal.reason
    renewed = certs.issue_pair(HOSTS, later, keep_ca=pair)
    assert (renewed.ca_cert, renewed.ca_key) == (pair.ca_cert, pair.ca_key)
    assert renewed.cert != pair.cert
    assert certs.renewal_due(renewed, HOSTS, later) is None


def test_other_names_renew_the_serving_certificate(pair) -> None:
    renewal = certs.renewal_due(pair, certs.service_host_names("other", "hook"), NOW)
    assert renewal is not None and not renewal.new_ca
    assert "hook.other.svc" in renewal.reason


def test_a_ca_that_would_not_outlive_a_new_certificate_is_replaced(pair) -> None:
    ca = x509.load_pem_x509_certificate(pair.ca_cert)
    late = ca.not_valid_after_utc - datetime.timedelta(days=certs.SERVING_DAYS)
    renewal = certs.renewal_due(pair, HOSTS, late)
    assert renewal is not None and renewal.new_ca
    assert "the CA expires in" in renewal.reason


@pytest.mark.parametrize(
    ("damage", "reason", "new_ca"),
    [
        (
            lambda p, o: certs.WebhookPair(p.ca_cert, o.ca_key, p.cert, p.key),
            "ca.key does not",
            True,
        ),
        (
            lambda p, o: certs.WebhookPair(p.ca_cert, p.ca_key, p.cert, o.key),
            "tls.key does not",
            False,
        ),
        (
            lambda p, o: certs.WebhookPair(p.ca_cert, p.ca_key, o.cert, o.key),
            "not signed by",
            False,
        ),
        (lambda p, o: certs.WebhookPair(b"junk", p.ca_key, p.cert, p.key), "cannot be read", True),
        (
            lambda p, o: certs.WebhookPair(p.ca_cert, p.ca_key, b"junk", p.key),
            "cannot be read",
            False,
        ),
    ],
)
def test_a_damaged_pair_is_reissued(pair, damage, reason, new_ca) -> None:
    other = certs.issue_pair(HOSTS, NOW)
    renewal = certs.renewal_due(damage(pair, other), HOSTS, NOW)
    assert renewal is not None and reason in renewal.reason and renewal.new_ca is new_ca


def test_the_api_server_can_verify_the_served_certificate(pair, tmp_path) -> None:
    """A TLS client trusting only the CA, checking the Service's name (as the API server does
    for a Service reference), completes a handshake with a server using the pair's files."""
    certs.write_pair(tmp_path, pair)

    async def handshake() -> str:
        server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_tls.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=server_tls)
        port = server.sockets[0].getsockname()[1]
        client_tls = ssl.create_default_context(cadata=pair.ca_cert.decode())
        try:
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_tls, server_hostname=HOSTS[0]
            )
            subject = writer.get_extra_info("peercert")["subject"]
            writer.close()
            return dict(item[0] for item in subject)["commonName"]
        finally:
            server.close()

    assert asyncio.run(handshake()) == HOSTS[0]


def test_write_pair_switches_both_files_together(tmp_path) -> None:
    first, second = certs.issue_pair(HOSTS, NOW), certs.issue_pair(HOSTS, NOW)
    certs.write_pair(tmp_path, first)
    certs.write_pair(tmp_path, second)
    assert (tmp_path / "tls.crt").read_bytes() == second.cert
    assert (tmp_path / "tls.key").read_bytes() == second.key
    assert len(list(tmp_path.glob("..version-*"))) == 1  # the old version is gone


# ---- the Secret -----------------------------------------------------------------------------


def test_the_secret_round_trips_the_pair(pair) -> None:
    body = webhook_tls.secret_body("tunnelop", "tunnelop-webhook-cert", pair, "42")
    assert body["type"] == "kubernetes.io/tls"
    assert body["metadata"]["resourceVersion"] == "42"
    assert set(body["data"]) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    assert webhook_tls.pair_of(body) == pair


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"tls.crt": "eA==", "tls.key": "eA=="},
        {"ca.crt": "!!", "ca.key": "", "tls.crt": "", "tls.key": ""},
    ],
)
def test_a_secret_without_a_usable_pair_has_none(data) -> None:
    assert webhook_tls.pair_of({"data": data}) is None


# ---- caBundle -------------------------------------------------------------------------------


def configuration(*webhooks: dict) -> dict:
    return {
        "metadata": {"name": "tunnelop.dev", "resourceVersion": "7"},
        "webhooks": list(webhooks),
    }


def webhook(name: str, service=SERVICE, ca_bundle: str | None = None) -> dict:
    client_config: dict = {
        "service": {"namespace": service[0], "name": service[1], "path": f"/{name}"}
    }
    if ca_bundle is not None:
        client_config["caBundle"] = ca_bundle
    return {"name": f"{name}.tunnelop.dev", "clientConfig": client_config, "failurePolicy": "Fail"}


def test_the_patch_sets_only_the_ca_bundle_of_the_webhooks_calling_the_service() -> None:
    ca = b"-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
    config = configuration(
        webhook("validate-tunnel"),
        webhook("add-finalizer", ca_bundle="b2xk"),
        webhook("elsewhere", service=("other", "hook")),
    )
    encoded = base64.b64encode(ca).decode()
    assert webhook_tls.ca_bundle_patch(config, ca, SERVICE) == {
        "metadata": {"resourceVersion": "7"},
        "webhooks": [
            {"name": "validate-tunnel.tunnelop.dev", "clientConfig": {"caBundle": encoded}},
            {"name": "add-finalizer.tunnelop.dev", "clientConfig": {"caBundle": encoded}},
        ],
    }
    assert webhook_tls.foreign_webhooks(config, SERVICE) == ["elsewhere.tunnelop.dev"]


def test_no_patch_when_every_ca_bundle_is_right() -> None:
    ca = b"ca"
    encoded = base64.b64encode(ca).decode()
    config = configuration(webhook("validate-tunnel", ca_bundle=encoded))
    assert webhook_tls.ca_bundle_patch(config, ca, SERVICE) is None
    assert webhook_tls.ca_bundle_patch(configuration(), ca, SERVICE) is None


# ---- where the operator runs, and its flags -------------------------------------------------


def test_the_operator_namespace_comes_from_the_pod_then_its_token_then_the_fallback(
    tmp_path,
) -> None:
    (tmp_path / "namespace").write_text("from-token\n")
    assert (
        webhook_tls.operator_namespace({"POD_NAMESPACE": "from-pod"}, str(tmp_path), "x")
        == "from-pod"
    )
    assert webhook_tls.operator_namespace({}, str(tmp_path), "x") == "from-token"
    assert webhook_tls.operator_namespace({}, str(tmp_path / "absent"), "relays") == "relays"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("tunnelop-webhook", "must be NAMESPACE/SERVICE"),
        ("a/b/c", "must be NAMESPACE/SERVICE"),
        ("/hook", "must be NAMESPACE/SERVICE"),
        ("Tunnelop/hook", "the namespace must be a DNS label .*, got 'Tunnelop'"),
        ("tunnelop/hook.x", "the Service must be a DNS label .*, got 'hook.x'"),
    ],
)
def test_a_bad_webhook_service_is_refused_by_name(value, message) -> None:
    with pytest.raises(ValueError, match=message):
        webhook_tls.parse_service(value)
    assert webhook_tls.parse_service("tunnelop/tunnelop-webhook") == (
        "tunnelop",
        "tunnelop-webhook",
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--webhook-service", "ns/svc"], "--webhook-service needs --webhook-cert-secret NAME or"),
        (["--webhook-cert-secret", "s"], "--webhook-cert-secret needs --webhook-service"),
        (["--webhook-cert-dir", "/certs"], "--webhook-cert-dir needs --webhook-service"),
        (
            ["--no-webhook", "--webhook-service", "ns/svc", "--webhook-cert-dir", "/c"],
            "--no-webhook:",
        ),
        (["--webhook-cert-secret", "s", "--webhook-cert-dir", "/c"], "not allowed with argument"),
        (["--webhook-cert-secret", "Bad_Name"], "--webhook-cert-secret: must be a Secret name"),
        (["--webhook-service", "svc"], "--webhook-service: must be NAMESPACE/SERVICE"),
    ],
)
def test_webhook_flags_that_do_not_go_together_are_refused(argv, message, capsys) -> None:
    try:
        code = main(["run", *argv])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_long_namespace_still_gets_a_certificate() -> None:
    hosts = certs.service_host_names("n" * 63, "tunnelop-webhook")
    pair = certs.issue_pair(hosts, NOW)
    cert = x509.load_pem_x509_certificate(pair.cert)
    assert certs.certificate_names(cert) == set(hosts)
    assert cert.subject.rfc4514_string() == "CN=tunnelop-webhook"


class FakeKube:
    """A Secret store that, like the API server, refuses a create of a name taken meanwhile
    (409) and a replace of a version read before another write (409)."""

    def __init__(self, race_with: dict | None = None) -> None:
        self.secret: dict | None = None
        self.race_with = race_with  # written by "another replica" between our read and write
        self.writes = 0

    async def get(self, api_version, kind, name, namespace=None):
        return self.secret

    async def create(self, body):
        if self.race_with is not None:
            self.secret, self.race_with = self.race_with, None
        if self.secret is not None:
            raise KubeError(409, "already exists")
        self.writes += 1
        self.secret = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}

    async def replace(self, body):
        if self.race_with is not None:
            self.secret, self.race_with = self.race_with, None
        if body["metadata"]["resourceVersion"] != self.secret["metadata"]["resourceVersion"]:
            raise KubeError(409, "the object has been modified")
        self.writes += 1
        version = str(int(body["metadata"]["resourceVersion"]) + 1)
        self.secret = {**body, "metadata": {**body["metadata"], "resourceVersion": version}}


def stored(pair: certs.WebhookPair, version: str = "5") -> dict:
    return webhook_tls.secret_body("ns", "cert", pair, version)


def test_a_replica_that_loses_the_race_to_create_the_secret_takes_the_winners(pair) -> None:
    kube = FakeKube(race_with=stored(pair))
    loaded = asyncio.run(webhook_tls.load_or_create(kube, "ns", "cert", HOSTS))
    assert loaded == pair and kube.writes == 0


def test_the_leader_renews_an_expiring_secret_keeping_its_ca() -> None:
    old = certs.issue_pair(HOSTS, datetime.datetime.now(datetime.UTC), days=20)
    kube = FakeKube()
    kube.secret = stored(old)
    renewed = asyncio.run(webhook_tls.ensure_current(kube, "ns", "cert", HOSTS))
    assert renewed.ca_cert == old.ca_cert and renewed.cert != old.cert
    assert webhook_tls.pair_of(kube.secret) == renewed and kube.writes == 1
    # Current now: nothing more to write.
    assert asyncio.run(webhook_tls.ensure_current(kube, "ns", "cert", HOSTS)) == renewed
    assert kube.writes == 1


def test_a_renewal_that_conflicts_rereads_and_keeps_the_other_write() -> None:
    """Another writer renewed in between: its (good) pair wins, nothing is written over it."""
    now = datetime.datetime.now(datetime.UTC)
    old, theirs = certs.issue_pair(HOSTS, now, days=20), certs.issue_pair(HOSTS, now)
    kube = FakeKube(race_with=stored(theirs, "6"))
    kube.secret = stored(old)
    assert asyncio.run(webhook_tls.ensure_current(kube, "ns", "cert", HOSTS)) == theirs
    assert kube.writes == 0


def test_a_ca_of_another_key_type_is_replaced(pair) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "someone's CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    foreign = certs.WebhookPair(
        ca.public_bytes(serialization.Encoding.PEM), key_pem, pair.cert, pair.key
    )
    renewal = certs.renewal_due(foreign, HOSTS, NOW)
    assert renewal is not None and renewal.new_ca and "not an EC key" in renewal.reason
