"""``kubevisor-gateway``: the display gateway process (docs/gateway.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import ssl
from pathlib import Path

from aiohttp import web

from kubevisor.gateway import admission, dialing, metrics, publishing, serving, sshtunnel
from kubevisor.gateway.kube import reading, reporting

log = logging.getLogger("kubevisor.gateway")

#: Where hack/setup puts the pinned @novnc/novnc package (the chart's image does the same).
DEFAULT_NOVNC_DIR = Path(
    os.environ.get("KUBEVISOR_NOVNC_DIR")
    or Path(os.environ.get("KUBEVISOR_CACHE", "/var/cache/kubevisor")) / "novnc"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kubevisor-gateway", description=__doc__)
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube)")
    p.add_argument(
        "--key-namespace",
        default=os.environ.get("POD_NAMESPACE", "kubevisor-system"),
        help="namespace of the Secret kubevisor-display-key (default: $POD_NAMESPACE "
        "or kubevisor-system)",
    )
    p.add_argument("--host", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=6080, help="listen port (default 6080)")
    p.add_argument("--tls-cert", type=Path, help="serve HTTPS/WSS with this certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    p.add_argument(
        "--novnc-dir", type=Path, default=DEFAULT_NOVNC_DIR,
        help=f"unpacked @novnc/novnc package (default {DEFAULT_NOVNC_DIR})",
    )  # fmt: skip
    p.add_argument(
        "--display-netns",
        help="dial displays inside this network namespace, formatted with {node} "
        "(the dev cluster: kv-<cluster>-{node}); default: plain TCP",
    )
    p.add_argument(
        "--recheck-seconds", type=float, default=5.0,
        help="how often a running session re-reads its claim (ended claims close)",
    )  # fmt: skip
    p.add_argument(
        "--metrics-address", default="127.0.0.1",
        help="address the Prometheus metrics listen on (default 127.0.0.1)",
    )  # fmt: skip
    p.add_argument(
        "--metrics-port", type=int, default=0, help="Prometheus metrics port (default 0: off)"
    )
    p.add_argument(
        "--xvnc", default="Xvnc",
        help="TigerVNC's Xvnc, the per-session display of published applications",
    )  # fmt: skip
    p.add_argument(
        "--app-geometry", default="1024x768",
        help="size of a published application's display (default 1024x768)",
    )  # fmt: skip
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        p.error("--tls-cert and --tls-key go together")
    if not (args.novnc_dir / "core" / "rfb.js").is_file():
        p.error(f"{args.novnc_dir} holds no noVNC (core/rfb.js); run hack/setup")
    return args


def tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """The server TLS context, or None for plain HTTP."""
    if cert is None or key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def run(args: argparse.Namespace) -> None:
    if args.metrics_port:
        metrics.serve(args.metrics_address, args.metrics_port)
    await reading.load_config(args.kubeconfig)
    async with reading.api_client() as api:
        reader = reading.Reader(api, key_namespace=args.key_namespace)
        reporter = reporting.Reporter(api)
        dialer = dialing.Dialer(netns_template=args.display_netns)
        admitter = admission.Admitter(reader)
        publisher = publishing.Publisher(
            dialer, reader.app_key, xvnc=args.xvnc, geometry=args.app_geometry
        )
        gateway = serving.Gateway(
            admitter,
            dialer=dialer,
            novnc_dir=args.novnc_dir,
            recheck_seconds=args.recheck_seconds,
            reports=reporter,
            publisher=publisher,
        )
        reaper = asyncio.create_task(
            publisher.reap(admitter.still_standing, every=args.recheck_seconds)
        )
        app = gateway.app()
        sshtunnel.SSHTunnel(reader, dialer=dialer).install(app)
        runner = web.AppRunner(app, handle_signals=False, access_log_class=serving.AccessLogger)
        await runner.setup()
        site = web.TCPSite(
            runner, args.host, args.port, ssl_context=tls_context(args.tls_cert, args.tls_key)
        )
        await site.start()
        log.info("serving on %s:%s (tls %s)", args.host, args.port, args.tls_cert is not None)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            reaper.cancel()
            await publisher.aclose()
            await runner.cleanup()  # sessions end: their disconnects are queued
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await reporter.drain()
            await reporter.aclose()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
