"""Claim -> desktop usable in the browser, for bench/desktop.py: from the DesktopClaim's
create until the websocket through ``kubevisor-gateway`` is open and the first
FramebufferUpdate from the desktop's VNC has arrived (what noVNC needs to paint).

Per sample the stages are recorded: ``bound_s`` (create -> claim Bound with its URL, read
by polling every 20 ms), ``ws_open_s`` (-> the websocket handshake through the gateway
done, admission included), ``first_frame_s`` (-> RFB handshake and the first full
FramebufferUpdate). The baseline, same desktops, same run: the same RFB client dialling
the VNC display directly inside the node's network namespace (the gateway's own dialer),
no claim and no gateway: ``direct_first_frame_s`` from a connect on a running desktop
(with a spare) and, without a spare, a plain VirtualMachine's create -> Running with a
display -> first frame directly (``plain_vm_first_frame_s``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import aiohttp

import _harness as h
from kubevisor.api import displaytokens, groups, kinds
from kubevisor.devenv.rfbclient import RFBClient, StreamTransport
from kubevisor.gateway import dialing

G, V = groups.GROUP, groups.VERSION
POLL_S = 0.02


def token_of(url: str) -> str:
    """The token in a claim's ``status.url`` (inside noVNC's ``path`` parameter)."""
    path = unquote(parse_qs(urlparse(url).query)["path"][0])
    return parse_qs(urlparse(path).query)[displaytokens.TOKEN_QUERY][0]


async def _first_frame(rfb: RFBClient) -> None:
    await rfb.handshake()
    await rfb.request_update()
    await rfb.framebuffer_update()


async def through_gateway(gateway: str, token: str, *, within: float) -> tuple[float, float]:
    """Monotonic times: websocket open, first FramebufferUpdate. A refusal before the
    display is published (``NoDisplay``: the 403 comes before the nonce is used) is
    retried with the same token for ``within`` seconds."""
    url = gateway.replace("http", "ws", 1) + "/" + displaytokens.websocket_path(token)
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                ws = await http.ws_connect(url)
            except aiohttp.WSServerHandshakeError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(POLL_S)
                continue
            async with ws:
                opened = time.monotonic()
                await _first_frame(RFBClient(ws))
                return opened, time.monotonic()


async def direct(dialer: dialing.Dialer, host: str, port: int, node: str) -> float:
    """Seconds from connect to the first FramebufferUpdate, straight to the VNC server."""
    t0 = time.monotonic()
    reader, writer = await dialer.open(host, port, node_name=node)
    try:
        await _first_frame(RFBClient(StreamTransport(reader, writer)))
        return time.monotonic() - t0
    finally:
        dialing.close_quietly(writer)


class Sampler:
    """Claims against one pool, one at a time, each measured and then deleted."""

    def __init__(
        self, api: Any, namespace: str, *, gateway: str, netns_template: str, timeout: float
    ) -> None:
        import kubernetes

        self.custom: Any = kubernetes.client.CustomObjectsApi(api)
        self.ns = namespace
        self.gateway = gateway
        self.dialer = dialing.Dialer(netns_template=netns_template)
        self.timeout = timeout

    def _get(self, plural: str, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(G, V, self.ns, plural, name))

    def _wait(self, what: str, check: Callable[[], Any]) -> Any:
        return h.wait_for(what, check, timeout=self.timeout, every=POLL_S)

    def pool(self, name: str, spec: dict[str, Any]) -> None:
        body = {"apiVersion": groups.API_VERSION, "kind": "DesktopPool",
                "metadata": {"name": name}, "spec": spec}  # fmt: skip
        self.custom.create_namespaced_custom_object(G, V, self.ns, kinds.DESKTOPPOOL.plural, body)

    def pool_status(self, name: str) -> dict[str, Any]:
        return dict(self._get(kinds.DESKTOPPOOL.plural, name).get("status") or {})

    def claim_sample(self, pool: str) -> dict[str, float]:
        """One claim: create -> Bound -> websocket open -> first frame; then deleted and
        waited for (its finalizer releases the desktop by the pool's policy)."""
        name = f"bench-{uuid.uuid4().hex[:6]}"
        body = {"apiVersion": groups.API_VERSION, "kind": "DesktopClaim",
                "metadata": {"name": name},
                "spec": {"poolRef": {"name": pool}, "user": f"u-{name}"}}  # fmt: skip
        plural = kinds.DESKTOPCLAIM.plural
        t0 = time.monotonic()
        self.custom.create_namespaced_custom_object(G, V, self.ns, plural, body)

        def bound() -> str | None:
            st = self._get(plural, name).get("status") or {}
            return str(st["url"]) if st.get("phase") == "Bound" and st.get("url") else None

        url = self._wait(f"claim {name} Bound", bound)
        t_bound = time.monotonic()
        opened, frame = asyncio.run(
            through_gateway(self.gateway, token_of(url), within=self.timeout)
        )
        self.custom.delete_namespaced_custom_object(G, V, self.ns, plural, name)
        self._wait(f"claim {name} gone", lambda: not self._exists(plural, name))
        return {"bound_s": t_bound - t0, "ws_open_s": opened - t0, "first_frame_s": frame - t0}

    def _exists(self, plural: str, name: str) -> bool:
        import kubernetes

        try:
            self._get(plural, name)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def display(self, vm: str) -> tuple[str, int, str] | None:
        st = self._get(kinds.VIRTUALMACHINE.plural, vm).get("status") or {}
        d = st.get("display") or {}
        if st.get("phase") != "Running" or not d.get("port") or not st.get("nodeName"):
            return None
        return str(d["host"]), int(d["port"]), str(st["nodeName"])

    def direct_sample(self, vm: str) -> float:
        """Connect -> first frame on a running desktop, without gateway or claim."""
        where = self._wait(f"{vm} display", lambda: self.display(vm))
        return asyncio.run(direct(self.dialer, *where))

    def plain_vm_sample(self, template: str) -> float:
        """A plain VirtualMachine (no pool, no claim): create -> Running with a display
        -> first frame directly; then deleted and waited for."""
        name = f"plain-{uuid.uuid4().hex[:6]}"
        body = {"apiVersion": groups.API_VERSION, "kind": "VirtualMachine",
                "metadata": {"name": name},
                "spec": {"runStrategy": "Always", "templateRef": {"name": template}}}  # fmt: skip
        plural = kinds.VIRTUALMACHINE.plural
        t0 = time.monotonic()
        self.custom.create_namespaced_custom_object(G, V, self.ns, plural, body)
        where = self._wait(f"{name} Running with a display", lambda: self.display(name))
        asyncio.run(direct(self.dialer, *where))
        took = time.monotonic() - t0
        self.custom.delete_namespaced_custom_object(G, V, self.ns, plural, name)
        self._wait(f"{name} gone", lambda: not self._exists(plural, name))
        return took


def measure(sampler: Sampler, *, template: str, samples: int) -> dict[str, Any]:
    """Both cases, each against its baseline; stats per stage."""
    out: dict[str, Any] = {"samples": samples}
    # With a spare: a running unclaimed desktop waits; keep returns it to the pool.
    sampler.pool("spare", {"templateRef": {"name": template}, "min": 1, "max": 2, "spare": 1,
                           "logoffPolicy": "keep"})  # fmt: skip

    def spare_ready() -> str | None:
        st = sampler.pool_status("spare")
        if st.get("phase") != "Ready" or (st.get("spare") or 0) < 1 or st.get("claimed"):
            return None
        free = [d for d in st.get("desktops") or [] if not d.get("claim")]
        return str(free[0]["name"]) if free else None

    with_spare, direct_s = [], []
    for _ in range(samples):
        vm = sampler._wait("a spare desktop", spare_ready)
        direct_s.append(sampler.direct_sample(vm))
        with_spare.append(sampler.claim_sample("spare"))
    _delete_pool(sampler, "spare")
    out["with_spare"] = _stages(with_spare)
    out["direct_to_running_desktop_first_frame_s"] = h.Stats.of(direct_s).json()

    # Without: every claim waits for its desktop to be created and started (delete
    # logoff, so none is left running for the next one).
    sampler.pool("cold", {"templateRef": {"name": template}, "min": 0, "max": 1, "spare": 0,
                          "logoffPolicy": "delete"})  # fmt: skip
    without, plain = [], []
    for _ in range(samples):
        plain.append(sampler.plain_vm_sample(template))
        without.append(sampler.claim_sample("cold"))
        sampler._wait("the cold pool's desktop gone", lambda: not _pool_vms(sampler, "cold"))
    _delete_pool(sampler, "cold")
    out["without_spare"] = _stages(without)
    out["plain_vm_first_frame_s"] = h.Stats.of(plain).json()
    return out


def _delete_pool(sampler: Sampler, pool: str) -> None:
    """The pool, then its desktops, waited for: the dev cluster runs no garbage collector,
    so the owner references alone would leave the VMs running."""
    sampler.custom.delete_namespaced_custom_object(G, V, sampler.ns, kinds.DESKTOPPOOL.plural, pool)
    sampler.custom.delete_collection_namespaced_custom_object(
        G, V, sampler.ns, kinds.VIRTUALMACHINE.plural, label_selector=f"{groups.LABEL_POOL}={pool}"
    )
    sampler._wait(f"the {pool} pool's desktops gone", lambda: not _pool_vms(sampler, pool))


def _pool_vms(sampler: Sampler, pool: str) -> list[str]:
    items = sampler.custom.list_namespaced_custom_object(
        G, V, sampler.ns, kinds.VIRTUALMACHINE.plural, label_selector=f"{groups.LABEL_POOL}={pool}"
    )["items"]
    return [i["metadata"]["name"] for i in items]


def _stages(samples: list[dict[str, float]]) -> dict[str, Any]:
    keys = ("bound_s", "ws_open_s", "first_frame_s")
    return {k: h.Stats.of(s[k] for s in samples).json() for k in keys}
