"""Run the Argo CD health checks in a real Lua runtime, and capture live objects as their
test data.

``evaluate`` runs a kind's generated ``health.lua`` the way Argo CD does (the object as a
global ``obj``, the script returns ``{status, message}``) in Lua 5.1 through ``lupa``
(Argo CD's gopher-lua is 5.1 too). ``capture`` records an object as it stands on a running
cluster into the kind's ``testdata/`` with a header saying which run produced it, so the
samples the tests judge are what the controller and agents really wrote. It writes only
when ``KUBEVISOR_CAPTURE_HEALTH`` is set (to anything): a normal test run never touches the
tree.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from kubevisor.api import groups

REPO = Path(__file__).resolve().parents[3]
CUSTOMIZATIONS = REPO / "charts" / "kubevisor" / "argocd" / "resource_customizations"
CAPTURE_ENV = "KUBEVISOR_CAPTURE_HEALTH"


def kind_dir(kind: str) -> Path:
    """``resource_customizations/kubevisor.io/<Kind>``."""
    return CUSTOMIZATIONS / groups.GROUP / kind


def evaluate(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    """``{"status": ..., "message": ...}`` as the kind's health.lua returns it for ``obj``."""
    from lupa import lua51  # imported here: only the tests that run Lua need lupa

    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = runtime.table_from(obj, recursive=True)
    script = (kind_dir(kind) / "health.lua").read_text()
    result = runtime.execute(script)
    if result is None:
        raise AssertionError(f"{kind}/health.lua returned nothing")
    return {str(k): str(v) for k, v in dict(result).items()}


def trimmed(obj: dict[str, Any]) -> dict[str, Any]:
    """What a health check may read, without what changes on every run (uid,
    resourceVersion, managedFields): apiVersion, kind, a short metadata, spec, status."""
    meta = obj.get("metadata") or {}
    keep = {
        k: meta[k]
        for k in ("name", "namespace", "generation", "deletionTimestamp", "finalizers")
        if k in meta
    }
    out: dict[str, Any] = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind")}
    out["metadata"] = keep
    for key in ("spec", "status"):
        if key in obj:
            out[key] = obj[key]
    return out


def capture(obj: dict[str, Any], name: str, *, run: str, expected: dict[str, str]) -> Path | None:
    """Write ``obj`` (trimmed) to ``<Kind>/testdata/<name>.yaml`` and its case
    (``expected``: the status the capturing test asserted live, with the message) into
    ``health_test.yaml``, if capturing is on.

    ``run`` says what produced it (the test and the cluster), and goes into the file's
    header with the date. Returns the path written, or None when not capturing.
    """
    if not os.environ.get(CAPTURE_ENV):
        return None
    path = kind_dir(str(obj["kind"])) / "testdata" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Captured from a live cluster by {run}\n"
        f"# on {datetime.now(UTC).strftime('%Y-%m-%d')} ({CAPTURE_ENV}=1); do not edit by hand.\n"
    )
    path.write_text(header + yaml.safe_dump(trimmed(obj), sort_keys=False))
    _record_case(str(obj["kind"]), f"testdata/{path.name}", expected)
    return path


def _record_case(kind: str, input_path: str, expected: dict[str, str]) -> None:
    """Add or replace the case of ``input_path`` in the kind's health_test.yaml."""
    tests_file = kind_dir(kind) / "health_test.yaml"
    data = yaml.safe_load(tests_file.read_text()) if tests_file.exists() else None
    cases = [c for c in (data or {}).get("tests") or [] if c.get("inputPath") != input_path]
    cases.append({"healthStatus": dict(expected), "inputPath": input_path})
    cases.sort(key=lambda c: str(c["inputPath"]))
    tests_file.write_text(yaml.safe_dump({"tests": cases}, sort_keys=False, width=1000))


def main(argv: list[str] | None = None) -> int:
    """Capture one object from a running dev cluster (``devenv/cluster``, e.g. one an e2e
    test brought up) as a health sample, after checking its health is the one asked for:

        KUBEVISOR_CAPTURE_HEALTH=1 python -m kubevisor.devenv.argocdhealth \\
            --cluster kve2e --kind VirtualMachine --name default/tiny-1 \\
            --expect Healthy --as healthy_running --run "tests/e2e/test_vm_lifecycle.py"
    """
    import argparse
    import subprocess

    from kubevisor.api import kinds

    parser = argparse.ArgumentParser(prog="python -m kubevisor.devenv.argocdhealth")
    parser.add_argument("--cluster", required=True, help="dev cluster name")
    parser.add_argument("--file", type=Path, help="the object as JSON/YAML saved from it")
    parser.add_argument("--base-dir", type=Path, default=Path("/var/lib/kubevisor-dev"))
    parser.add_argument("--kind", required=True)
    parser.add_argument("--name", required=True, help="[namespace/]name")
    parser.add_argument("--expect", required=True, help="the health it must have now")
    parser.add_argument("--as", dest="sample", required=True, help="testdata file name")
    parser.add_argument("--run", required=True, help="what brought the cluster up")
    args = parser.parse_args(argv)
    kind = kinds.by_kind(args.kind)
    namespace, _, name = args.name.rpartition("/")
    kubeconfig = args.base_dir / args.cluster / "controlplane" / "kubeconfig"
    argv_ = ["kubectl", f"--kubeconfig={kubeconfig}", "get", f"{kind.plural}.{groups.GROUP}"]
    argv_ += [name, "-o", "yaml", *(["-n", namespace] if namespace else [])]
    if args.file is not None:
        obj = yaml.safe_load(args.file.read_text())
    else:
        proc = subprocess.run(argv_, capture_output=True, text=True, check=True)
        obj = yaml.safe_load(proc.stdout)
    verdict = evaluate(args.kind, obj)
    print(f"{args.kind}/{args.name}: {verdict}")
    if verdict["status"] != args.expect:
        print(f"expected {args.expect}: not captured")
        return 1
    run = f"{args.run} (dev cluster {args.cluster}, real QEMU guests and agents)"
    path = capture(obj, args.sample, run=run, expected=verdict)
    print(f"wrote {path}" if path else f"not captured: set {CAPTURE_ENV}=1")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
