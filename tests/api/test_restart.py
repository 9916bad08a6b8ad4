"""State survives a restart on the same data directory."""

import httpx

from tests.server import ServerProcess

HEADERS = {"Authorization": "Bearer restart-token"}


def test_everything_survives_a_restart(tmp_path):
    data = tmp_path / "data"
    with ServerProcess(data) as first:
        made = []
        for index in range(5):
            response = httpx.post(
                f"{first.url}/v1/network-policies",
                json={"name": f"keep-{index}", "allowed_hostnames": [f"h{index}.example.com"],
                      "allowed_cidrs": [{"cidr": "192.0.2.0/24", "ports": [{"port": 80}]}]},
                headers=HEADERS,
            )
            assert response.status_code == 200
            made.append(response.json())
        deleted = made.pop(0)
        assert httpx.post(f"{first.url}/v1/network-policies/{deleted['id']}/delete", headers=HEADERS).status_code == 200
        before = httpx.get(f"{first.url}/v1/network-policies", headers=HEADERS).json()
    assert first.proc.returncode is not None

    with ServerProcess(data) as second:
        after = httpx.get(f"{second.url}/v1/network-policies", headers=HEADERS).json()
        assert after == before
        assert [p["id"] for p in after["network_policies"]] == [p["id"] for p in made[::-1]]
        for policy in made:
            assert httpx.get(f"{second.url}/v1/network-policies/{policy['id']}", headers=HEADERS).json() == policy
        assert httpx.get(f"{second.url}/v1/network-policies/{deleted['id']}", headers=HEADERS).status_code == 404
        # Uniqueness still holds after the restart.
        again = httpx.post(f"{second.url}/v1/network-policies", json={"name": "keep-1"}, headers=HEADERS)
        assert again.status_code == 400
