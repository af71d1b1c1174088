"""A test-side stand-in for the kubelet, for relay pods only.

Pods on kwok's fake nodes are reported Running but run nothing. The runner brings the pods
that carry the `tunnelop.dev/relay` label to life: it runs each container's own command and
args as a local process, with the pod's environment (downward API included) and its Secret,
ConfigMap and projected volumes written to a temporary directory. So the pod spec the
operator wrote is the thing that runs.

What differs from a kubelet, and why:
- A container image is mapped to a local binary (`frps`/`frpc` from the tool cache, the
  project's own entry point for tunnelop images), since nothing is pulled here.
- Each relay (the label's value) gets its own loopback address, 127.0.0.2, 127.0.0.3, ...,
  stable across pod re-creation; `status.podIP` and `status.hostIP` in the downward API
  resolve to it, so a process that binds to its pod IP binds to that address, and the runner
  reports it as the pod's `status.podIP`, so that others reach the pod by its IP.
- Volume mount paths are rewritten: every mountPath that appears in a container's command,
  args, env values or in a materialized text file is replaced by the local directory.
- A pod has a network namespace of its own, and so a localhost of its own: 127.0.0.1 in
  args, env values and materialized files becomes the relay's address, so two relays'
  localhost-only ports (frps's plugin and dashboard ports) do not collide.
- $(VAR) references in args are expanded from the container's env, as the kubelet does.
- A container that exits is restarted with a capped back-off, as with restartPolicy Always.

Run it inside a test (see the `relay_runner` fixture) or on its own:
    python -m support.relay_runner --kubeconfig .cluster/kubeconfig
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ipaddress
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes.aio import client, config, watch
from kubernetes.aio.client.exceptions import ApiException

from support import tools

RELAY_LABEL = "tunnelop.dev/relay"
LOCALHOST = "127.0.0.1"
log = logging.getLogger("relay-runner")


def default_image_map(image: str) -> Path | None:
    """Map a container image to the local binary that plays it.

    `ghcr.io/fatedier/frps:v0.71.0` -> cached frps; `.../tunnelop:dev` -> the project's
    entry point in the active virtualenv.
    """
    repository = image.rsplit("@", 1)[0]
    name = repository.rsplit("/", 1)[-1].split(":", 1)[0]
    if name in ("frps", "frpc"):
        return tools.tool(name)
    if name.startswith("tunnelop"):
        entry = Path(sys.executable).parent / "tunnelop"
        return entry if entry.exists() else None
    return None


@dataclass
class Container:
    """One container of a pod, running as a local process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    supervisor: asyncio.Task[None] | None = None


@dataclass
class RunningPod:
    uid: str
    namespace: str
    name: str
    relay: str
    address: str
    root: Path
    containers: list[Container] = field(default_factory=list)
    stopping: bool = False
    token_refresher: asyncio.Task[None] | None = None


class RelayPodRunner:
    """Watches relay pods and runs their containers locally, each relay on its own address."""

    def __init__(
        self,
        kubeconfig: Path,
        workdir: Path | None = None,
        image_map: Callable[[str], Path | None] = default_image_map,
        label: str = RELAY_LABEL,
        first_address: str = "127.0.0.2",
    ) -> None:
        self.kubeconfig = kubeconfig
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="relay-runner-"))
        self.image_map = image_map
        self.label = label
        self._next_address = ipaddress.IPv4Address(first_address)
        self._addresses: dict[str, str] = {}
        self.pods: dict[str, RunningPod] = {}
        self._terminating: set[asyncio.Future[None]] = set()
        self._api: client.ApiClient | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        self._server: tuple[str, int] | None = None

    # ---- public API -------------------------------------------------------------------

    async def start(self) -> None:
        cfg = client.Configuration()
        await config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=cfg)
        self._api = client.ApiClient(cfg)
        host = cfg.host.split("://", 1)[-1].rstrip("/")
        server_host, _, server_port = host.rpartition(":")
        self._server = (server_host, int(server_port or 443))
        self._ca_file = cfg.ssl_ca_cert
        self._watcher = asyncio.create_task(self._watch_forever(), name="relay-runner-watch")
        await asyncio.wait_for(self._synced.wait(), timeout=30)

    async def stop(self) -> None:
        if self._watcher:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        await asyncio.gather(*self._terminating, *(self._stop_pod(uid) for uid in list(self.pods)))
        if self._api:
            await self._api.close()

    def address_of(self, relay: str) -> str:
        """The loopback address of a relay (the value of its pod's relay label)."""
        if relay not in self._addresses:
            self._addresses[relay] = str(self._next_address)
            self._next_address += 1
        return self._addresses[relay]

    def pod_for(self, relay: str) -> RunningPod | None:
        for pod in self.pods.values():
            if pod.relay == relay and not pod.stopping:
                return pod
        return None

    def logs(self, relay: str) -> str:
        """All container logs of a relay's current pod, for test failure messages."""
        pod = self.pod_for(relay)
        if pod is None:
            return f"(no running pod for relay {relay})"
        parts = []
        for c in pod.containers:
            text = c.log_path.read_text(errors="replace") if c.log_path.exists() else ""
            parts.append(f"--- {pod.name}/{c.name} (restarts: {c.restarts})\n{text}")
        return "\n".join(parts)

    # ---- watching ---------------------------------------------------------------------

    async def _watch_forever(self) -> None:
        core = client.CoreV1Api(self._api)
        while True:
            try:
                listing = await core.list_pod_for_all_namespaces(label_selector=self.label)
                seen = set()
                for pod in listing.items:
                    seen.add(pod.metadata.uid)
                    await self._on_pod(pod)
                for uid in set(self.pods) - seen:
                    await self._stop_pod(uid)
                self._synced.set()
                async with watch.Watch() as w:
                    events = w.stream(
                        core.list_pod_for_all_namespaces,
                        label_selector=self.label,
                        resource_version=listing.metadata.resource_version,
                        timeout_seconds=300,
                    )
                    async for event in events:
                        pod = event["object"]
                        if event["type"] == "DELETED":
                            await self._stop_pod(pod.metadata.uid)
                        else:
                            await self._on_pod(pod)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the API server restarts, a watch expires: relist
                log.warning("watch interrupted (%s); relisting", exc)
                await asyncio.sleep(1)

    async def _on_pod(self, pod: Any) -> None:
        uid = pod.metadata.uid
        if pod.metadata.deletion_timestamp is not None:
            await self._stop_pod(uid)
            return
        if uid in self.pods or not pod.spec.node_name:
            return  # already running, or not scheduled yet
        try:
            await self._start_pod(pod)
        except Exception:
            log.exception("cannot run pod %s/%s", pod.metadata.namespace, pod.metadata.name)

    # ---- running a pod ----------------------------------------------------------------

    async def _start_pod(self, pod: Any) -> None:
        meta = pod.metadata
        relay = (meta.labels or {}).get(self.label) or meta.name
        address = self.address_of(relay)
        root = self.workdir / f"{meta.namespace}.{meta.name}.{meta.uid[:8]}"
        root.mkdir(parents=True, exist_ok=True)
        running = RunningPod(meta.uid, meta.namespace, meta.name, relay, address, root)
        self.pods[meta.uid] = running

        mounts_by_volume = await self._materialize_volumes(pod, root)
        running.token_refresher = asyncio.create_task(
            self._refresh_tokens(pod, mounts_by_volume), name=f"{meta.name}/tokens"
        )
        for spec in pod.spec.containers:
            binary = self.image_map(spec.image)
            if binary is None:
                log.warning(
                    "no local binary for image %s; container %s skipped", spec.image, spec.name
                )
                continue
            path_map = {
                m.mount_path: str(mounts_by_volume[m.name])
                for m in spec.volume_mounts or []
                if m.name in mounts_by_volume
            }
            # A pod's localhost is its own; here its own is the relay's loopback address.
            path_map[LOCALHOST] = address
            env = await self._container_env(pod, spec, address, path_map)
            argv = _argv(binary, spec.command, spec.args)
            argv = [argv[0], *(_rewrite(_expand(a, env), path_map) for a in argv[1:])]
            container = Container(spec.name, argv, env, root / f"{spec.name}.log")
            running.containers.append(container)
            container.supervisor = asyncio.create_task(
                self._supervise(running, container), name=f"{meta.name}/{spec.name}"
            )
        await self._report_pod_ip(pod, address)
        log.info("running pod %s/%s for relay %s on %s", meta.namespace, meta.name, relay, address)

    async def _report_pod_ip(self, pod: Any, address: str) -> None:
        """Report the relay's address as the pod's IP, as a kubelet reports the IP it gave the
        pod: whoever reaches the pod by its IP (the operator scraping the agent) reaches the
        processes run here. kwok's fake IP is replaced; kwok does not set it again."""
        core = client.CoreV1Api(self._api)
        status: dict[str, Any] = {"podIP": address, "podIPs": [{"ip": address}]}
        if pod.spec.host_network:  # the API server wants the pod IP to be the host's then
            status.update(hostIP=address, hostIPs=[{"ip": address}])
        body = {"status": status}
        try:
            # A merge patch replaces the IP lists (a strategic one would merge them by ip).
            await core.patch_namespaced_pod_status(
                pod.metadata.name,
                pod.metadata.namespace,
                body,
                _content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            log.warning("cannot report the IP of pod %s: %s", pod.metadata.name, exc.reason)

    async def _supervise(self, pod: RunningPod, container: Container) -> None:
        """Run a container and restart it when it exits, with a capped back-off."""
        backoff = 0.5
        while not pod.stopping:
            with container.log_path.open("ab") as out:
                container.process = await asyncio.create_subprocess_exec(
                    *container.argv,
                    env=container.env,
                    cwd=pod.root,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,  # its own process group, killed as a whole
                    preexec_fn=tools.die_with_parent,  # no container outlives the runner
                )
            code = await container.process.wait()
            if pod.stopping:
                return
            container.restarts += 1
            log.warning("%s/%s exited with %s; restarting", pod.name, container.name, code)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10)

    async def _stop_pod(self, uid: str) -> None:
        pod = self.pods.pop(uid, None)
        if pod is None:
            return
        # Shielded and remembered: a stop() that cancels the watcher in the middle of this
        # still waits for the pod's processes to be gone (they hold the relay's address).
        task = asyncio.ensure_future(self._terminate_pod(pod))
        self._terminating.add(task)
        task.add_done_callback(self._terminating.discard)
        await asyncio.shield(task)

    async def _terminate_pod(self, pod: RunningPod) -> None:
        pod.stopping = True
        if pod.token_refresher:
            pod.token_refresher.cancel()
        await asyncio.gather(*(_terminate(c) for c in pod.containers))
        for c in pod.containers:
            if c.supervisor:
                c.supervisor.cancel()
        shutil.rmtree(pod.root / "volumes", ignore_errors=True)
        log.info("stopped pod %s/%s", pod.namespace, pod.name)

    # ---- volumes and environment ------------------------------------------------------

    async def _materialize_volumes(self, pod: Any, root: Path) -> dict[str, Path]:
        core = client.CoreV1Api(self._api)
        ns = pod.metadata.namespace
        out: dict[str, Path] = {}
        for volume in pod.spec.volumes or []:
            target = root / "volumes" / volume.name
            target.mkdir(parents=True, exist_ok=True)
            files: dict[str, bytes] = {}
            if volume.secret:
                secret = await core.read_namespaced_secret(volume.secret.secret_name, ns)
                data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
                files = _select_items(data, volume.secret.items)
            elif volume.config_map:
                cm = await core.read_namespaced_config_map(volume.config_map.name, ns)
                files = _select_items(_config_map_bytes(cm), volume.config_map.items)
            elif volume.projected:
                files = await self._projected(pod, volume.projected)
            elif volume.empty_dir is not None:
                pass
            else:
                log.warning(
                    "volume %s of %s: only secret, configMap, projected and emptyDir are supported",
                    volume.name,
                    pod.metadata.name,
                )
            for rel, content in files.items():
                path = target / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content)
                path.chmod(0o600)
            out[volume.name] = target
        # Rewrite mount paths inside materialized text files (configs that name other files).
        path_map = {
            m.mount_path: str(out[m.name])
            for spec in pod.spec.containers
            for m in spec.volume_mounts or []
            if m.name in out
        }
        path_map[LOCALHOST] = self.address_of(
            (pod.metadata.labels or {}).get(self.label) or pod.metadata.name
        )
        for directory in out.values():
            for path in directory.rglob("*"):
                if path.is_file():
                    try:
                        text = path.read_text()
                    except UnicodeDecodeError:
                        continue
                    rewritten = _rewrite(text, path_map)
                    if rewritten != text:
                        path.write_text(rewritten)
        return out

    async def _service_account_token(self, pod: Any, sat: Any) -> bytes:
        """A token bound to the pod, from the TokenRequest API, as the kubelet gets it."""
        core = client.CoreV1Api(self._api)
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(
                audiences=[sat.audience] if sat.audience else [],
                expiration_seconds=sat.expiration_seconds or 3600,
                bound_object_ref=client.V1BoundObjectReference(
                    api_version="v1", kind="Pod", name=pod.metadata.name, uid=pod.metadata.uid
                ),
            )
        )
        token = await core.create_namespaced_service_account_token(
            pod.spec.service_account_name or "default", pod.metadata.namespace, request
        )
        return token.status.token.encode()

    async def _refresh_tokens(self, pod: Any, volumes: dict[str, Path]) -> None:
        """Rewrite projected ServiceAccount tokens before they expire, as the kubelet does
        (at 80% of their lifetime), so a relay that runs for hours keeps its API access."""
        sources = [
            (volumes[v.name], source.service_account_token)
            for v in pod.spec.volumes or []
            if v.projected and v.name in volumes
            for source in v.projected.sources or []
            if source.service_account_token
        ]
        if not sources:
            return
        lifetime = min(sat.expiration_seconds or 3600 for _, sat in sources)
        while True:
            await asyncio.sleep(lifetime * 0.8)
            for directory, sat in sources:
                try:
                    token = await self._service_account_token(pod, sat)
                except ApiException as exc:
                    log.warning("cannot refresh the token of %s: %s", pod.metadata.name, exc)
                    continue
                path = directory / sat.path
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(token)
                tmp.replace(path)

    async def _projected(self, pod: Any, projected: Any) -> dict[str, bytes]:
        core = client.CoreV1Api(self._api)
        ns = pod.metadata.namespace
        files: dict[str, bytes] = {}
        for source in projected.sources or []:
            if source.service_account_token:
                sat = source.service_account_token
                files[sat.path] = await self._service_account_token(pod, sat)
            elif source.config_map:
                try:
                    cm = await core.read_namespaced_config_map(source.config_map.name, ns)
                except ApiException as exc:
                    if exc.status == 404 and source.config_map.optional:
                        continue
                    raise
                files.update(_select_items(_config_map_bytes(cm), source.config_map.items))
            elif source.secret:
                secret = await core.read_namespaced_secret(source.secret.name, ns)
                data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
                files.update(_select_items(data, source.secret.items))
            elif source.downward_api:
                for item in source.downward_api.items or []:
                    if item.field_ref:
                        value = _field_value(pod, item.field_ref.field_path, "")
                        files[item.path] = value.encode()
        return files

    async def _container_env(
        self, pod: Any, spec: Any, address: str, path_map: dict[str, str]
    ) -> dict[str, str]:
        core = client.CoreV1Api(self._api)
        ns = pod.metadata.namespace
        # What the kubelet injects; the API server is outside the pod, so not rewritten.
        injected = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "HOSTNAME": pod.metadata.name,
        }
        if self._server:
            injected["KUBERNETES_SERVICE_HOST"] = self._server[0]
            injected["KUBERNETES_SERVICE_PORT"] = str(self._server[1])
        env: dict[str, str] = {}
        for source in spec.env_from or []:
            prefix = source.prefix or ""
            if source.secret_ref:
                secret = await core.read_namespaced_secret(source.secret_ref.name, ns)
                for k, v in (secret.data or {}).items():
                    env[prefix + k] = base64.b64decode(v).decode()
            if source.config_map_ref:
                cm = await core.read_namespaced_config_map(source.config_map_ref.name, ns)
                env.update({prefix + k: v for k, v in (cm.data or {}).items()})
        for var in spec.env or []:
            if var.value_from is None:
                env[var.name] = _expand(var.value or "", {**injected, **env})
                continue
            ref = var.value_from
            if ref.field_ref:
                env[var.name] = _field_value(pod, ref.field_ref.field_path, address)
            elif ref.secret_key_ref:
                secret = await core.read_namespaced_secret(ref.secret_key_ref.name, ns)
                raw = (secret.data or {}).get(ref.secret_key_ref.key)
                if raw is not None:
                    env[var.name] = base64.b64decode(raw).decode()
            elif ref.config_map_key_ref:
                cm = await core.read_namespaced_config_map(ref.config_map_key_ref.name, ns)
                value = (cm.data or {}).get(ref.config_map_key_ref.key)
                if value is not None:
                    env[var.name] = value
        return {**injected, **{k: _rewrite(v, path_map) for k, v in env.items()}}


# ---- helpers (pure) ------------------------------------------------------------------


def _argv(binary: Path, command: list[str] | None, args: list[str] | None) -> list[str]:
    """The image's entry point is the local binary; an explicit command names it again."""
    if command:
        return [str(binary), *command[1:], *(args or [])]
    return [str(binary), *(args or [])]


def _rewrite(text: str, path_map: dict[str, str]) -> str:
    # Longest mount path first, so /etc/frp/tls wins over /etc/frp.
    for mount in sorted(path_map, key=len, reverse=True):
        if mount == LOCALHOST:
            # Only the whole address: 127.0.0.1 is also the start of 127.0.0.120.
            text = _LOCALHOST_ALONE.sub(path_map[mount], text)
        else:
            text = text.replace(mount, path_map[mount])
    return text


_LOCALHOST_ALONE = re.compile(rf"(?<![\d.]){re.escape(LOCALHOST)}(?!\d)")


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion of env values."""
    for name, replacement in env.items():
        value = value.replace(f"$({name})", replacement)
    return value


def _select_items(data: dict[str, bytes], items: list[Any] | None) -> dict[str, bytes]:
    if not items:
        return dict(data)
    return {item.path: data[item.key] for item in items if item.key in data}


def _config_map_bytes(cm: Any) -> dict[str, bytes]:
    data = {k: v.encode() for k, v in (cm.data or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()})
    return data


def _field_value(pod: Any, field_path: str, address: str) -> str:
    meta = pod.metadata
    simple = {
        "metadata.name": meta.name,
        "metadata.namespace": meta.namespace,
        "metadata.uid": meta.uid,
        "spec.nodeName": pod.spec.node_name or "",
        "spec.serviceAccountName": pod.spec.service_account_name or "",
        "status.podIP": address,
        "status.podIPs": address,
        "status.hostIP": address,
    }
    if field_path in simple:
        return simple[field_path]
    for prefix, mapping in (
        ("metadata.labels", meta.labels),
        ("metadata.annotations", meta.annotations),
    ):
        if field_path.startswith(prefix + "['"):
            key = field_path[len(prefix) + 2 : -2]
            return (mapping or {}).get(key, "")
    return ""


async def _terminate(container: Container, grace: float = 5.0) -> None:
    if container.process is not None:
        await tools.terminate_group(container.process, grace)


async def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", type=Path, default=tools.KUBECONFIG)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s relay-runner %(message)s")
    runner = RelayPodRunner(args.kubeconfig, args.workdir)
    await runner.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.stop()


if __name__ == "__main__":
    asyncio.run(_main())
