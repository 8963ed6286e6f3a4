"""``kubevisor-controller``: the one Deployment that decides.

kopf runs the watch loops (``kube.operating``); ``registry`` lists the handlers, all
sharing one ``runtime.running.Runtime``.
"""

from __future__ import annotations

import argparse
import os
import sys

from kubevisor.controller import metrics, registry
from kubevisor.controller.desktopclaims import handlers as desktopclaims
from kubevisor.controller.kube import operating
from kubevisor.controller.runtime import running


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubevisor-controller", description=__doc__)
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, in-cluster)")
    parser.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="namespace to serve (repeatable); default: all namespaces",
    )
    parser.add_argument(
        "--gateway-url",
        help="display gateway base URL for DesktopClaim URLs (default: $KUBEVISOR_GATEWAY_URL)",
    )
    parser.add_argument(
        "--metrics-address",
        default="127.0.0.1",
        help="address the Prometheus metrics listen on (default 127.0.0.1; the chart: 0.0.0.0)",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=0, help="Prometheus metrics port (default 0: off)"
    )
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    if args.metrics_port:
        metrics.serve(args.metrics_address, args.metrics_port)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    if args.gateway_url:
        os.environ[desktopclaims.ENV_GATEWAY_URL] = args.gateway_url
    rt = running.Runtime()
    operating.run(registry.handlers(rt), namespaces=args.namespace, verbose=args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
