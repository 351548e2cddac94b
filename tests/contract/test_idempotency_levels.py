"""Every RPC declares `option idempotency_level`, or is on the list below with the reason it does not.

The option is the one place that says whether an RPC may be retried (docs/contracts.md, "Idempotency"): the
chassis builds its gRPC retry policy from it (shopmesh_chassis.client.is_idempotent), and the contract test
picks the RPCs whose duplicates it sends at once by it. An RPC without it is silently never retried and never
duplicated, and neither buf lint nor the generator notices: a missing option is the proto default,
IDEMPOTENCY_UNKNOWN. Proto has no level for "not idempotent", so that decision is written here, with why.
"""

from __future__ import annotations

import importlib
import pkgutil

from google.protobuf.descriptor import FileDescriptor, MethodDescriptor
from google.protobuf.descriptor_pb2 import MethodOptions

import shopmesh

# RPCs that declare no level on purpose, so that nothing retries them: full name -> why (the proto's own
# comment says the same next to the RPC).
NOT_IDEMPOTENT = {
    "shopmesh.users.v1.UsersService.Register": "a retry after a lost response fails ALREADY_EXISTS",
    "shopmesh.users.v1.UsersService.Login": "each call mints a token and counts towards login throttling",
    "shopmesh.gateway.v1.ShopService.Register": "delegates to UsersService.Register",
    "shopmesh.gateway.v1.ShopService.Login": "delegates to UsersService.Login",
    "shopmesh.users.v1.UsersService.SignOut": "a repeat moves the cutoff, revoking a token issued in between",
    "shopmesh.gateway.v1.ShopService.SignOut": "delegates to UsersService.SignOut",
    "shopmesh.sample.v1.SampleService.Record": "the chassis' tests of a method its clients never retry",
}


def _contract_files() -> list[FileDescriptor]:
    """Every generated contract under shopmesh/, so a service not yet in the topology is held to it too."""
    return [
        importlib.import_module(module.name).DESCRIPTOR
        for module in pkgutil.walk_packages(shopmesh.__path__, "shopmesh.")
        if module.name.endswith("_pb2")
    ]


def _methods() -> dict[str, MethodDescriptor]:
    return {
        method.full_name: method
        for file in _contract_files()
        for service in file.services_by_name.values()
        for method in service.methods
    }


def _undeclared(method: MethodDescriptor) -> bool:
    return method.GetOptions().idempotency_level == MethodOptions.IDEMPOTENCY_UNKNOWN


def test_the_scan_sees_every_service_of_the_contracts() -> None:
    services = {method.containing_service.full_name for method in _methods().values()}
    assert {"shopmesh.gateway.v1.ShopService", "shopmesh.catalog.v1.CatalogService"} <= services
    assert "shopmesh.sample.v1.SampleService" in services


def test_every_rpc_declares_its_idempotency_level() -> None:
    missing = sorted(name for name, method in _methods().items() if _undeclared(method) and name not in NOT_IDEMPOTENT)
    assert missing == [], (
        f"RPCs without `option idempotency_level`: {missing}. Add `option idempotency_level = NO_SIDE_EFFECTS;` "
        "(a read) or `IDEMPOTENT` (a keyed mutation) to the rpc in protos/ and run `make proto`; if it must never "
        "be retried, add it with the reason to NOT_IDEMPOTENT in tests/contract/test_idempotency_levels.py and "
        "say so in the proto's comment"
    )


def test_the_not_idempotent_list_names_rpcs_that_still_declare_nothing() -> None:
    """The list stays a decision: an entry for an RPC that is gone, or that now declares a level, is dropped."""
    methods = _methods()
    stale = sorted(name for name in NOT_IDEMPOTENT if name not in methods or not _undeclared(methods[name]))
    assert stale == [], f"drop from NOT_IDEMPOTENT in tests/contract/test_idempotency_levels.py: {stale}"
