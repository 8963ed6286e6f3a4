"""``kubevisor-controller``: the one Deployment that decides.

kopf runs the watch loops (``kube.operating``); ``registry`` lists the handlers, all
sharing one ``runtime.running.Runtime``.
"""

from __future__ import annotations

import argparse
import os
import sys

from kubevisor.controller import registry
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
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    if args.gateway_url:
        os.environ[desktopclaims.ENV_GATEWAY_URL] = args.gateway_url
    rt = running.Runtime()
    operating.run(registry.handlers(rt), namespaces=args.namespace, verbose=args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
