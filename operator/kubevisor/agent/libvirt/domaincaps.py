"""CPU models from libvirt's domain capabilities (pure: XML in, models out).

``virConnectGetDomainCapabilities`` lists, under ``<cpu>``, the models the ``custom``
mode can run here (``<model usable='yes'>``) and the model ``host-model`` expands to.
The agent reports both in its capacity (``cpuModels``, ``hostCPUModel``) for
migration's CPU precondition (``controller/migrations/preconditions.cpu_refusal``).
"""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET


@dataclasses.dataclass(frozen=True)
class CPUModels:
    """What a host's domain capabilities say about CPU models."""

    usable: tuple[str, ...] = ()
    """Models the ``custom`` mode can run, sorted; empty when none is listed."""
    host_model: str | None = None
    """The model ``host-model`` expands to; None when the mode is unsupported."""


def parse_cpu_models(xml: str) -> CPUModels:
    """The CPU models in a domain-capabilities document. Unreadable XML, or a document
    without a ``<cpu>`` section, gives no models (the precondition then does not check)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return CPUModels()
    usable: set[str] = set()
    host_model: str | None = None
    for mode in root.findall("./cpu/mode"):
        if mode.get("supported") != "yes":
            continue
        name = mode.get("name")
        if name == "custom":
            for model in mode.findall("model"):
                text = (model.text or "").strip()
                if text and model.get("usable") == "yes":
                    usable.add(text)
        elif name == "host-model":
            expanded = mode.find("model")
            text = (expanded.text or "").strip() if expanded is not None else ""
            host_model = text or None
    return CPUModels(usable=tuple(sorted(usable)), host_model=host_model)
