"""``kubevisor-controller``: the one Deployment that decides.

kopf runs the watch loops; our handlers are registered by importing the per-kind
modules. kopf installs its own SIGTERM/SIGINT handlers and stops its watchers and
handlers in order, so a SIGTERM ends the process cleanly with status 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import kopf

from kubevisor.controller import registry


def configure(settings: kopf.OperatorSettings) -> None:
    """Settings that keep API writes few and status clean.

    kopf's bookkeeping (progress, last-handled diff base) goes into annotations under our
    own prefix instead of ``status``, so ``status`` holds only what users should read.
    Only warnings become Events automatically; our handlers post the Events users need.
    """
    prefix = "kopf.kubevisor.io"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=prefix, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    settings.batching.error_delays = [1, 2, 5, 10, 30, 60]


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
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    # kopf.configure() sets up logging (format, level); a basicConfig() as well would
    # print every line twice.
    registry.register_all()
    kopf.configure(verbose=args.verbose)
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
