"""Property (issue 9): for generated values of bounded fields, the real API server and the
API models the controller and agents parse with accept exactly the same objects.

Hypothesis draws integers and strings around each field's limits; a disagreement is the
class of bug where an accepted object fails at runtime. KUBEVISOR_PROPERTY_EXAMPLES
raises the number of examples on demand (default 40 keeps the suite fast).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import pydantic
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubevisor.api import groups, kinds

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed (test extra)")
st = hypothesis.strategies

pytestmark = pytest.mark.integration

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "examples")
N = int(os.environ.get("KUBEVISOR_PROPERTY_EXAMPLES", "40"))


def _example(name: str) -> dict[str, Any]:
    with open(os.path.join(EXAMPLES, name)) as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict)
    return data


def _around(*limits: int) -> Any:
    """Integers at, next to and between the limits (and far beyond them)."""
    near = [v + d for v in limits for d in (-1, 0, 1)]
    return st.one_of(st.sampled_from(near), st.integers(min_value=-5, max_value=2**33))


def _set(field: str, value: Any) -> Any:
    def mutate(obj: dict[str, Any]) -> None:
        if field == "table":
            obj["spec"]["table"] = value
        elif field == "vlan":
            obj["spec"]["nics"][1]["vlan"] = value
        elif field == "cores":
            obj["spec"]["cpu"] = {"cores": value}
        elif field == "gpus":
            obj["spec"]["gpus"] = value
        elif field == "ifname":
            obj["spec"]["interfaces"][0]["name"] = value

    return mutate


CASES = st.one_of(
    st.tuples(st.just("vrf.yaml"), st.just("table"), _around(1, 252, 255, 2**32 - 1)),
    st.tuples(st.just("vm.yaml"), st.just("vlan"), _around(1, 4094)),
    st.tuples(st.just("vm.yaml"), st.just("cores"), _around(1, 512)),
    st.tuples(st.just("vm.yaml"), st.just("gpus"), _around(0, 16)),
    st.tuples(
        st.just("vrf.yaml"),
        st.just("ifname"),
        st.text(alphabet="abz09-._", min_size=0, max_size=18),
    ),
)


@hypothesis.settings(
    max_examples=N,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
@hypothesis.given(case=CASES)
def test_api_server_and_models_accept_the_same_objects(
    cluster: Any, case: tuple[str, str, Any]
) -> None:
    source, field, value = case
    obj = copy.deepcopy(_example(source))
    obj["metadata"]["name"] = "prop-edge"
    _set(field, value)(obj)
    kind = kinds.by_kind(obj["kind"])
    try:
        kind.model.model_validate(obj)
        runtime = True
    except pydantic.ValidationError:
        runtime = False
    api = client.CustomObjectsApi(cluster.api)
    try:
        api.create_namespaced_custom_object(
            groups.GROUP, groups.VERSION, "default", kind.plural, obj
        )
        server = True
    except ApiException as exc:
        assert exc.status == 422, exc.body
        server = False
    else:
        api.delete_namespaced_custom_object(
            groups.GROUP, groups.VERSION, "default", kind.plural, "prop-edge"
        )
    assert server == runtime, f"{field}={value!r}: API server {server}, models {runtime}"
