"""CPU models from libvirt's domain capabilities: what the agent reports in its capacity."""

from __future__ import annotations

import pytest

from kubevisor.agent.libvirt.domaincaps import CPUModels, parse_cpu_models

TCG = """<domainCapabilities>
  <domain>qemu</domain>
  <cpu>
    <mode name='host-passthrough' supported='no'/>
    <mode name='maximum' supported='yes'/>
    <mode name='host-model' supported='yes'>
      <model fallback='forbid'>EPYC-Rome</model>
      <vendor>AMD</vendor>
    </mode>
    <mode name='custom' supported='yes'>
      <model usable='yes' vendor='unknown'>qemu64</model>
      <model usable='no' vendor='Intel'>Skylake-Server</model>
      <model usable='yes' vendor='unknown'>kvm64</model>
      <model usable='unknown'>Nehalem</model>
    </mode>
  </cpu>
</domainCapabilities>"""


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        (TCG, CPUModels(usable=("kvm64", "qemu64"), host_model="EPYC-Rome")),
        ("<domainCapabilities/>", CPUModels()),
        ("not xml <", CPUModels()),
        (
            "<domainCapabilities><cpu><mode name='host-model' supported='no'>"
            "<model>X</model></mode><mode name='custom' supported='no'>"
            "<model usable='yes'>qemu64</model></mode></cpu></domainCapabilities>",
            CPUModels(),
        ),
    ],
    ids=["tcg-host", "no-cpu-section", "unreadable", "modes-unsupported"],
)
def test_parse_cpu_models(xml: str, expected: CPUModels) -> None:
    assert parse_cpu_models(xml) == expected
