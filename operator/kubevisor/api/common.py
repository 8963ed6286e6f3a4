"""Building blocks shared by every kind: the model base, string types with their
OpenAPI patterns, CEL rule helpers, object references and the resource envelope.

The CRD generator reads these models, so a constraint written here is enforced twice:
by the API server (OpenAPI + CEL) and by pydantic when the controller or agent parses
an object. Field docstrings become the descriptions ``kubectl explain`` shows.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kubevisor.api import groups, quantities

#: The schema key the API server reads CEL rules from.
VALIDATIONS: Final = "x-kubernetes-validations"


class Model(BaseModel):
    """Base of every API model: camelCase on the wire, snake_case in Python.

    Unknown fields are ignored rather than rejected: the API server already prunes them,
    and an agent one version behind must still parse what a newer controller wrote.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        use_attribute_docstrings=True,
        extra="ignore",
    )

    def to_json(self) -> dict[str, Any]:
        """The wire form (camelCase, only the fields that were set), for API payloads."""
        return self.model_dump(mode="json", exclude_unset=True)


def rule(
    expression: str,
    message: str,
    *,
    field_path: str | None = None,
    reason: str | None = None,
) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry.

    ``field_path`` points the API server's error at the field the user has to change,
    which is what the 422 response names.
    """
    out = {"rule": expression, "message": message}
    if field_path is not None:
        out["fieldPath"] = field_path
    if reason is not None:
        out["reason"] = reason
    return out


def cel(*rules: dict[str, str]) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules, for ``Field(...)`` or a model config."""
    return {VALIDATIONS: list(rules)}


# --- string types ----------------------------------------------------------------------

DNS_LABEL_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A unicast MAC address (the I/G bit of the first octet is clear).
MAC_PATTERN: Final = r"^[0-9a-fA-F][02468aceACE](:[0-9a-fA-F]{2}){5}$"
#: The all-zero MAC, which the pattern matches but no NIC may have.
ZERO_MAC: Final = "00:00:00:00:00:00"
#: The name part of a label key (and a label value when not empty): at most 63
#: characters, alphanumeric at both ends, '-', '_' and '.' inside.
LABEL_NAME_PATTERN: Final = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
#: A label key (Kubernetes qualified name): an optional DNS-subdomain prefix and '/',
#: then a name. Lengths (prefix <= 253, name <= 63) are checked beside the pattern.
LABEL_KEY_PATTERN: Final = r"^(" + DNS_SUBDOMAIN_PATTERN[1:-1] + r"/)?" + LABEL_NAME_PATTERN + r"$"
MAX_LABEL_PREFIX: Final = 253
MAX_LABEL_NAME: Final = 63
#: A Linux network device name: at most 15 characters, no '/', ':' or whitespace.
IFNAME_PATTERN: Final = r"^[a-zA-Z0-9_][a-zA-Z0-9_.-]*$"

#: A DNS-1123 label (disk and NIC names become parts of file and device names).
DNSLabel = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, min_length=1, max_length=63)]
#: A Kubernetes object name (DNS-1123 subdomain).
ObjectName = Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, min_length=1, max_length=253)]
#: A Linux network device name.
InterfaceName = Annotated[str, Field(pattern=IFNAME_PATTERN, min_length=1, max_length=15)]
#: A label value (what nodeSelector matches against).
LabelValue = Annotated[
    str, Field(pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$", max_length=63)
]


def _check_mac(value: str) -> str:
    if value.lower() == ZERO_MAC:
        raise ValueError(f"{value!r} is the all-zero MAC, which no NIC may have")
    return value


MAC_RULE: Final = rule(
    f"self.lowerAscii() != '{ZERO_MAC}'",
    "must not be the all-zero MAC 00:00:00:00:00:00",
)
#: A unicast MAC address other than 00:00:00:00:00:00 (aa:bb:cc:dd:ee:ff, either case).
MACAddress = Annotated[
    str,
    Field(pattern=MAC_PATTERN, max_length=17, json_schema_extra=cel(MAC_RULE)),
    AfterValidator(_check_mac),
]


def is_label_key(key: str) -> bool:
    """Whether ``key`` is a Kubernetes label key (a qualified name): ``[prefix/]name``
    with a DNS-subdomain prefix of at most 253 characters and a name of at most 63."""
    if not re.fullmatch(LABEL_KEY_PATTERN[1:-1], key):
        return False
    prefix, _, name = key.rpartition("/")
    return len(prefix) <= MAX_LABEL_PREFIX and len(name) <= MAX_LABEL_NAME


def _check_label_keys(value: dict[str, str]) -> dict[str, str]:
    bad = sorted(k for k in value if not is_label_key(k))
    if bad:
        raise ValueError(
            f"not label keys: {', '.join(repr(k[:80]) for k in bad)} (a key is [prefix/]name:"
            " a DNS subdomain of at most 253 characters, then a name of at most 63"
            " alphanumerics, '-', '_' or '.', alphanumeric at both ends)"
        )
    return value


#: CEL over a label map: every key is a qualified name, the same test as `is_label_key`.
LABEL_KEYS_RULE: Final = rule(
    f"self.all(k, k.matches(r'{LABEL_KEY_PATTERN}')"
    f" && (k.indexOf('/') < 0 || (k.indexOf('/') <= {MAX_LABEL_PREFIX}"
    f" && size(k) - k.indexOf('/') - 1 <= {MAX_LABEL_NAME}))"
    f" && (k.indexOf('/') >= 0 || size(k) <= {MAX_LABEL_NAME}))",
    "keys must be label keys: [prefix/]name, a DNS subdomain of at most 253 characters"
    " then a name of at most 63 alphanumerics, '-', '_' or '.', alphanumeric at both ends",
)
#: A nodeSelector: label keys (qualified names) to label values.
NodeSelector = Annotated[
    dict[str, LabelValue],
    Field(max_length=32, json_schema_extra=cel(LABEL_KEYS_RULE)),
    AfterValidator(_check_label_keys),
]
#: A host path or a name; long enough for real paths, bounded for CEL cost estimates.
PathString = Annotated[str, Field(min_length=1, max_length=4096)]
ShortString = Annotated[str, Field(max_length=253)]
Timestamp = datetime


def _check_quantity(value: str) -> str:
    quantities.parse(value)
    return value


def _check_positive_quantity(value: str) -> str:
    if quantities.parse(value) <= 0:
        raise ValueError(f"must be a quantity greater than zero, got {value!r}")
    return value


#: CEL rules of the types below, exported so a narrower type that adds its own rules
#: (an outer ``Field(json_schema_extra=...)`` replaces the inner one) can repeat them.
POSITIVE_QUANTITY_RULE: Final = rule(
    "isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))",
    "must be a quantity greater than zero, e.g. 256Mi",
)
CIDR_RULE: Final = rule("isCIDR(self)", "must be an address with a prefix length, e.g. 10.0.0.1/24")
PREFIX_RULE: Final = rule(
    "isCIDR(self) && cidr(self) == cidr(self).masked()",
    "must be a network prefix with no host bits set, e.g. 10.1.0.0/16",
)

#: A Kubernetes quantity string ("256Mi", "1Gi", "500m"); negative values never match.
Quantity = Annotated[
    str,
    Field(pattern=quantities.PATTERN, max_length=64),
    AfterValidator(_check_quantity),
]
#: A quantity that must be greater than zero. The pattern rejects signs; the CEL
#: ``quantity()`` library rejects zero (``"0Mi"`` matches the pattern).
PositiveQuantity = Annotated[
    str,
    Field(
        pattern=quantities.PATTERN,
        max_length=64,
        json_schema_extra=cel(POSITIVE_QUANTITY_RULE),
    ),
    AfterValidator(_check_positive_quantity),
]


def _check_cidr(value: str) -> str:
    # As strict as the API server's isCIDR(): a decimal prefix length (Python would also
    # take a netmask such as /255.255.255.0) and no IPv6 zone (%eth0).
    address, _, length = value.partition("/")
    if not length.isdigit() or "%" in address:
        raise ValueError(f"{value!r} is not a CIDR (address/prefix-length)")
    ipaddress.ip_interface(value)
    return value


def _check_network(value: str) -> str:
    ipaddress.ip_network(value, strict=True)
    return _check_cidr(value)


def _check_ip(value: str) -> str:
    ipaddress.ip_address(value)
    return value


#: An address with its prefix length, e.g. ``10.0.0.1/24`` (an interface address).
CIDR = Annotated[
    str,
    Field(
        max_length=49,
        json_schema_extra=cel(CIDR_RULE),
    ),
    AfterValidator(_check_cidr),
]
#: A network prefix with no host bits set, e.g. ``10.1.0.0/16`` (a route destination).
Prefix = Annotated[
    str,
    Field(
        max_length=49,
        json_schema_extra=cel(PREFIX_RULE),
    ),
    AfterValidator(_check_network),
]


def _canonical_prefix(value: str) -> str:
    if str(ipaddress.ip_network(value)) != value:
        raise ValueError(f"write prefix {value!r} as {ipaddress.ip_network(value)}")
    return value


#: A route destination in canonical form (lower case, shortest IPv6 form), so that two
#: spellings of one prefix cannot pass the routes list's uniqueness check.
CanonicalPrefix = Annotated[
    Prefix,
    Field(
        json_schema_extra=cel(
            PREFIX_RULE,
            rule(
                "!isCIDR(self) || string(cidr(self)) == self",
                "write the prefix in canonical form (lower case, shortest IPv6 form),"
                " e.g. fd00::/8",
            ),
        )
    ),
    AfterValidator(_canonical_prefix),
]
#: An IPv4 or IPv6 address without a prefix length.
IPAddress = Annotated[
    str,
    Field(
        max_length=45,
        json_schema_extra=cel(rule("isIP(self)", "must be an IP address, e.g. 10.0.0.1")),
    ),
    AfterValidator(_check_ip),
]


# --- references and envelope -----------------------------------------------------------


class LocalObjectReference(Model):
    """A reference to another object in the same namespace."""

    name: ObjectName
    """Name of the referenced object."""


class SecretKeySelector(Model):
    """A key of a Secret in the same namespace."""

    name: ObjectName
    """Name of the Secret."""
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]
    """Key within the Secret's data."""


class ObjectMeta(Model):
    """The parts of Kubernetes object metadata kubevisor reads; the rest is kept as is."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    """Object name."""
    namespace: str | None = None
    """Namespace of the object."""
    uid: str | None = None
    """Server-assigned unique id."""
    generation: int | None = None
    """Incremented by the API server on every spec change."""
    resource_version: str | None = None
    """Opaque version for optimistic concurrency."""
    labels: dict[str, str] | None = None
    """Labels."""
    annotations: dict[str, str] | None = None
    """Annotations."""
    finalizers: list[str] | None = None
    """Finalizers."""
    creation_timestamp: Timestamp | None = None
    """When the object was created."""
    deletion_timestamp: Timestamp | None = None
    """When deletion was requested, if it was."""


class Resource(Model):
    """The envelope every kind shares; subclasses add ``kind`` and narrow ``spec`` and
    ``status`` to their own models (so generic code can still reach both)."""

    api_version: str = groups.API_VERSION
    """Always kubevisor.io/v1alpha1."""
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    """Standard object metadata."""
    spec: Model
    """Desired state."""
    status: Model | None = None
    """Observed state."""
