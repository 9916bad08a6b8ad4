"""The official Runloop SDK (3.0.0) against a real devbox-sim server process."""

from __future__ import annotations

import asyncio

import pytest
from runloop_api_client import AsyncRunloopSDK, NotFoundError, RunloopSDK


def sdk_for(server, token: str) -> RunloopSDK:
    return RunloopSDK(bearer_token=token, base_url=server.url, max_retries=0)


def test_sync_sdk_lifecycle(server):
    sdk = sdk_for(server, "sdk-sync")
    policy = sdk.network_policy.create(
        name="sdk-policy",
        description="made by the SDK",
        allowed_hostnames=["github.com", "*.npmjs.org"],
        allowed_cidrs=[{"cidr": "192.0.2.0/24", "ports": [{"port": 443, "protocol": "TCP"}]}],
    )
    assert policy.id.startswith("npol_")
    info = policy.get_info()
    assert info.name == "sdk-policy"
    assert info.description == "made by the SDK"
    assert info.egress.allowed_hostnames == ["github.com", "*.npmjs.org"]
    assert info.egress.allowed_cidrs[0].cidr == "192.0.2.0/24"
    assert info.egress.allowed_cidrs[0].ports[0].port == 443
    assert info.egress.allowed_cidrs[0].ports[0].protocol == "TCP"
    assert info.egress.allow_all is False

    updated = policy.update(allow_all=True, description="wide open")
    assert updated.egress.allow_all is True and updated.egress.allow_devbox_to_devbox is True
    assert updated.egress.allowed_hostnames == ["github.com", "*.npmjs.org"]
    assert updated.update_time_ms > info.update_time_ms

    assert [p.id for p in sdk.network_policy.list()] == [policy.id]
    assert sdk.network_policy.from_id(policy.id).get_info().description == "wide open"

    # Names are labels (SDK 3.0): a second policy may have the same one.
    twin = sdk.network_policy.create(name="sdk-policy")
    assert twin.id != policy.id and twin.get_info().name == "sdk-policy"
    twin.delete()

    deleted = policy.delete()
    assert deleted.id == policy.id
    with pytest.raises(NotFoundError):
        policy.get_info()


def test_sync_sdk_pages_250_policies_across_two_accounts(server):
    alice, bob = sdk_for(server, "pager-alice"), sdk_for(server, "pager-bob")
    made = {"alice": [], "bob": []}
    for index in range(250):
        who, sdk = ("alice", alice) if index % 2 == 0 else ("bob", bob)
        made[who].append(sdk.api.network_policies.create(name=f"{who}-{index}").id)
    for who, sdk in (("alice", alice), ("bob", bob)):
        first = sdk.api.network_policies.list(limit=50)
        assert first.total_count == 125 and first.has_more is True
        ids = [p.id for p in sdk.api.network_policies.list(limit=50)]
        assert ids == made[who][::-1]  # newest first, every one exactly once, only our own
        by_hand, cursor = [], None
        while True:
            page = sdk.api.network_policies.list(limit=40, **({"starting_after": cursor} if cursor else {}))
            by_hand += [p.id for p in page.network_policies]
            if not page.has_more:
                break
            cursor = page.network_policies[-1].id
        assert by_hand == ids
    assert alice.api.network_policies.list(name="bob-").network_policies == []
    hits = bob.api.network_policies.list(search="bob-249").network_policies
    assert [p.name for p in hits] == ["bob-249"]


def test_async_sdk_lifecycle_and_paging(server):
    async def scenario():
        sdk = AsyncRunloopSDK(bearer_token="sdk-async", base_url=server.url, max_retries=0)
        try:
            policies = await asyncio.gather(
                *(sdk.network_policy.create(name=f"async-{i}", allowed_hostnames=[f"h{i}.example.com"]) for i in range(30))
            )
            info = await policies[0].get_info()
            assert info.egress.allowed_hostnames == ["h0.example.com"]
            updated = await policies[0].update(allowed_hostnames=["*.example.org"], allow_runloop_mirrors=True)
            assert updated.egress.allowed_hostnames == ["*.example.org"]
            assert updated.egress.allow_runloop_mirrors is True
            ids = [p.id async for p in sdk.api.network_policies.list(limit=7)]
            assert sorted(ids) == sorted(p.id for p in policies)
            assert ids == sorted(ids, reverse=True)
            assert len(await sdk.network_policy.list(limit=5)) == 5
            await policies[0].delete()
            with pytest.raises(NotFoundError):
                await policies[0].get_info()
        finally:
            await sdk.aclose()

    asyncio.run(scenario())
