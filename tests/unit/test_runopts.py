"""run's flags beyond networking, and the long and short --network forms, checked in the
pure core (core/runopts.py) with Docker's rules and wording; the /etc files they make;
port ranges and `port NAME PORT`; the log index behind `logs -t`."""

from __future__ import annotations

import ipaddress

import pytest

from portway.core import validate
from portway.errors import InvalidInput


def test_aux_addresses_and_bridge_names() -> None:
    plan = validate.plan_subnets(["10.5.0.0/24", "fd00:5::/64"], [], [], True, True,
                                 ["router=10.5.0.5", "router6=fd00:5::5"])
    assert [p.aux_addresses for p in plan] == \
        [(("router", ipaddress.ip_address("10.5.0.5")),),
         (("router6", ipaddress.ip_address("fd00:5::5")),)]
    cases = [(["r=10.6.0.5"], "in no --subnet"), (["r=10.5.0.1"], "gateway"),
             (["r=10.5.0.255"], "broadcast"), (["r"], "invalid --aux-address"),
             (["r=10.5.0.5", "r=10.5.0.6"], "given twice"),
             (["r=10.5.0.5", "s=10.5.0.5"], "given twice")]
    for aux, message in cases:
        with pytest.raises(InvalidInput, match=message):
            validate.plan_subnets(["10.5.0.0/24"], [], [], True, False, aux)
    with pytest.raises(InvalidInput, match="in no --subnet"):
        validate.plan_subnets([], [], [], True, False, ["r=10.5.0.5"])
    opts = {"com.docker.network.bridge.name": "br-lab"}
    assert validate.check_options(opts) == opts
    for bad in ("", "a" * 16, "br lab", "../x"):
        with pytest.raises(InvalidInput, match="invalid bridge name"):
            validate.check_options({"com.docker.network.bridge.name": bad})


