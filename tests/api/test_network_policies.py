"""HTTP tests for /v1/network-policies: every endpoint, field and error path."""

from __future__ import annotations

import re
import threading

import pytest

from simulator.network_policies import MAX_CIDRS, MAX_HOSTNAMES, MAX_PORT_RULES, RAW_FACTOR
from tests.api.conftest import ALICE, BOB

URL = "/v1/network-policies"
EGRESS_DEFAULTS = {
    "allow_all": False,
    "allow_devbox_to_devbox": False,
    "allow_agent_gateway": False,
    "allow_mcp_gateway": False,
    "allow_runloop_mirrors": False,
    "allowed_hostnames": [],
    "allowed_cidrs": [],
}


def create(client, headers=ALICE, **body):
    body.setdefault("name", "p")
    response = client.post(URL, json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response, status, code=None, contains=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"message", "error_code"}, body
    assert response.headers["x-should-retry"] == "false"
    if code:
        assert body["error_code"] == code
    if contains:
        assert contains in body["message"], body["message"]
    return body


def test_create_minimal_has_every_field(client):
    view = create(client, name="minimal")
    assert re.fullmatch(r"npol_[0-9A-Za-z]{21}", view["id"])
    assert view["name"] == "minimal"
    assert view["description"] is None
    assert view["egress"] == EGRESS_DEFAULTS
    assert isinstance(view["create_time_ms"], int) and view["create_time_ms"] > 1_600_000_000_000
    assert view["update_time_ms"] == view["create_time_ms"]


def test_create_echoes_every_field(client):
    body = {
        "name": "full",
        "description": "all the fields",
        "allow_devbox_to_devbox": True,
        "allow_agent_gateway": True,
        "allow_mcp_gateway": True,
        "allow_runloop_mirrors": True,
        "allowed_hostnames": ["GitHub.com.", "*.npmjs.org", "github.com", "bücher.de"],
        "allowed_cidrs": [
            {"cidr": "10.12.0.0/16", "ports": [{"port": 443, "protocol": "TCP"}, {"port": 8000, "end_port": 8100}]},
            {"cidr": "192.0.2.7/32"},
            {"cidr": "198.51.100.0/24", "ports": []},
        ],
    }
    view = create(client, **body)
    assert view["description"] == "all the fields"
    egress = view["egress"]
    assert egress["allowed_hostnames"] == ["github.com", "*.npmjs.org", "xn--bcher-kva.de"]
    assert egress["allowed_cidrs"] == [
        {
            "cidr": "10.12.0.0/16",
            "ports": [
                {"port": 443, "end_port": None, "protocol": "TCP"},
                {"port": 8000, "end_port": 8100, "protocol": None},
            ],
        },
        {"cidr": "192.0.2.7/32", "ports": None},
        {"cidr": "198.51.100.0/24", "ports": []},
    ]
    for flag in ("allow_devbox_to_devbox", "allow_agent_gateway", "allow_mcp_gateway", "allow_runloop_mirrors"):
        assert egress[flag] is True
    assert egress["allow_all"] is False
    assert client.get(f"{URL}/{view['id']}", headers=ALICE).json() == view


def test_allow_all_forces_devbox_to_devbox(client):
    view = create(client, allow_all=True, allow_devbox_to_devbox=False)
    assert view["egress"]["allow_all"] is True
    assert view["egress"]["allow_devbox_to_devbox"] is True


def test_nulls_on_create_mean_defaults(client):
    view = create(
        client, description=None, allow_all=None, allowed_hostnames=None, allowed_cidrs=None, allow_mcp_gateway=None
    )
    assert view["egress"] == EGRESS_DEFAULTS


def test_get_unknown_is_404(client):
    assert_error(client.get(f"{URL}/npol_doesnotexist", headers=ALICE), 404, "not_found", "npol_doesnotexist")


def test_update_is_partial_and_moves_update_time(client):
    view = create(client, name="u", description="d", allowed_hostnames=["a.example.com"], allow_mcp_gateway=True)
    response = client.post(f"{URL}/{view['id']}", json={"allowed_cidrs": [{"cidr": "10.0.0.0/8"}]}, headers=ALICE)
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["name"] == "u" and updated["description"] == "d"
    assert updated["egress"]["allowed_hostnames"] == ["a.example.com"]
    assert updated["egress"]["allow_mcp_gateway"] is True
    assert updated["egress"]["allowed_cidrs"] == [{"cidr": "10.0.0.0/8", "ports": None}]
    assert updated["create_time_ms"] == view["create_time_ms"]
    assert updated["update_time_ms"] > view["update_time_ms"]
    # Nulls leave fields unchanged; explicit values replace them.
    again = client.post(
        f"{URL}/{view['id']}", json={"name": None, "allowed_hostnames": None, "description": "new"}, headers=ALICE
    ).json()
    assert again["name"] == "u" and again["description"] == "new"
    assert again["egress"]["allowed_hostnames"] == ["a.example.com"]
    assert again["update_time_ms"] > updated["update_time_ms"]
    cleared = client.post(f"{URL}/{view['id']}", json={"allowed_hostnames": []}, headers=ALICE).json()
    assert cleared["egress"]["allowed_hostnames"] == []
    assert client.get(f"{URL}/{view['id']}", headers=ALICE).json() == cleared


def test_update_with_empty_body(client):
    view = create(client)
    for kwargs in ({"content": b"", "headers": {**ALICE, "content-type": "application/json"}}, {"json": {}, "headers": ALICE}):
        response = client.post(f"{URL}/{view['id']}", **kwargs)
        assert response.status_code == 200, response.text
        assert response.json()["egress"] == view["egress"]


def test_turning_allow_all_off_drops_implied_devbox_to_devbox(client):
    view = create(client, allow_all=True)
    off = client.post(f"{URL}/{view['id']}", json={"allow_all": False}, headers=ALICE).json()
    assert off["egress"]["allow_all"] is False
    assert off["egress"]["allow_devbox_to_devbox"] is False
    keep = client.post(
        f"{URL}/{view['id']}", json={"allow_all": False, "allow_devbox_to_devbox": True}, headers=ALICE
    ).json()
    assert keep["egress"]["allow_devbox_to_devbox"] is True


def test_turning_allow_all_off_brings_back_the_devbox_to_devbox_the_user_set(client):
    """allow_all implies devbox-to-devbox in the view; what the user set survives underneath,
    also across updates of other fields and a read back from the store."""
    view = create(client, allow_devbox_to_devbox=True)
    on = client.post(f"{URL}/{view['id']}", json={"allow_all": True}, headers=ALICE).json()
    assert on["egress"]["allow_all"] is True and on["egress"]["allow_devbox_to_devbox"] is True
    assert "devbox_to_devbox_requested" not in on["egress"]  # never in the view
    client.post(f"{URL}/{view['id']}", json={"allowed_hostnames": ["a.example.com"]}, headers=ALICE)
    off = client.post(f"{URL}/{view['id']}", json={"allow_all": False}, headers=ALICE).json()
    assert off["egress"]["allow_all"] is False and off["egress"]["allow_devbox_to_devbox"] is True
    assert client.get(f"{URL}/{view['id']}", headers=ALICE).json() == off
    both = create(client, allow_all=True, allow_devbox_to_devbox=True)
    off = client.post(f"{URL}/{both['id']}", json={"allow_all": False}, headers=ALICE).json()
    assert off["egress"]["allow_devbox_to_devbox"] is True
    # Set to false while allow_all hides it: false once allow_all goes.
    client.post(f"{URL}/{both['id']}", json={"allow_all": True}, headers=ALICE)
    hidden = client.post(f"{URL}/{both['id']}", json={"allow_devbox_to_devbox": False}, headers=ALICE).json()
    assert hidden["egress"]["allow_devbox_to_devbox"] is True  # allow_all still implies it
    off = client.post(f"{URL}/{both['id']}", json={"allow_all": False}, headers=ALICE).json()
    assert off["egress"]["allow_devbox_to_devbox"] is False


def test_invalid_update_changes_nothing(client):
    view = create(client, allowed_hostnames=["ok.example.com"])
    response = client.post(
        f"{URL}/{view['id']}",
        json={"description": "should not land", "allowed_hostnames": ["fine.com", "bad*.com"]},
        headers=ALICE,
    )
    assert_error(response, 400, "invalid_request", "bad*.com")
    assert client.get(f"{URL}/{view['id']}", headers=ALICE).json() == view


def test_update_unknown_is_404(client):
    assert_error(client.post(f"{URL}/npol_nope", json={"name": "x"}, headers=ALICE), 404, "not_found")


def test_names_may_repeat_by_default(client):
    # The contract and SDK 3.0: a name is a label; two policies may share it, each its own id.
    first, second = create(client, name="same"), create(client, name="same")
    assert first["id"] != second["id"]
    other = create(client, name="other")
    assert client.post(f"{URL}/{other['id']}", json={"name": "same"}, headers=ALICE).json()["name"] == "same"
    listed = client.get(URL, params={"name": "same"}, headers=ALICE).json()["network_policies"]
    assert sorted(p["id"] for p in listed) == sorted([first["id"], second["id"], other["id"]])
    assert client.get(f"{URL}/{first['id']}", headers=ALICE).json()["name"] == "same"


def test_unique_names_mode_refuses_a_duplicate_on_create_and_rename(make_client):
    client = make_client(unique_policy_names=True)
    first = create(client, name="same")
    assert_error(client.post(URL, json={"name": "same"}, headers=ALICE), 400, "duplicate_name", "same")
    other = create(client, name="other")
    assert_error(
        client.post(f"{URL}/{other['id']}", json={"name": "same"}, headers=ALICE), 400, "duplicate_name"
    )
    # Renaming to its own name is fine; another account may use the name.
    assert client.post(f"{URL}/{first['id']}", json={"name": "same"}, headers=ALICE).status_code == 200
    create(client, headers=BOB, name="same")
    assert [p["id"] for p in client.get(URL, headers=ALICE).json()["network_policies"]] == [other["id"], first["id"]]


def test_names_are_text_without_control_characters(client):
    for name in ("a\x00b", "line\nbreak", "tab\there", "del\x7f", "c1\x85next-line"):
        assert_error(client.post(URL, json={"name": name}, headers=ALICE), 400, "invalid_request", "control")
    view = create(client, name="ok")
    assert_error(client.post(f"{URL}/{view['id']}", json={"name": "bad\x01"}, headers=ALICE), 400, "invalid_request")
    assert client.get(URL, headers=ALICE).json()["network_policies"] == [view]


def test_quota_of_100_per_account(client):
    for index in range(100):
        create(client, name=f"q{index}")
    body = assert_error(client.post(URL, json={"name": "q100"}, headers=ALICE), 400, "quota_exceeded")
    assert "100" in body["message"]
    create(client, headers=BOB, name="q100")  # the cap is per account
    assert client.get(URL, params={"limit": 1}, headers=ALICE).json()["total_count"] == 100


def test_list_newest_first_with_paging_and_counts(client):
    made = [create(client, name=f"item-{i}")["id"] for i in range(7)]
    page = client.get(URL, params={"limit": 3}, headers=ALICE).json()
    assert [p["id"] for p in page["network_policies"]] == made[::-1][:3]
    assert page["has_more"] is True and page["total_count"] == 7
    seen = []
    cursor = None
    while True:
        params = {"limit": 3, **({"starting_after": cursor} if cursor else {})}
        page = client.get(URL, params=params, headers=ALICE).json()
        seen += [p["id"] for p in page["network_policies"]]
        if not page["has_more"]:
            break
        cursor = page["network_policies"][-1]["id"]
    assert seen == made[::-1]
    assert client.get(URL, params={"include_total_count": "false"}, headers=ALICE).json()["total_count"] is None
    default = client.get(URL, headers=ALICE).json()
    assert len(default["network_policies"]) == 7 and default["has_more"] is False


def test_list_pages_past_a_deleted_cursor(client):
    made = [create(client, name=f"c{i}")["id"] for i in range(5)]
    client.post(f"{URL}/{made[3]}/delete", headers=ALICE)
    page = client.get(URL, params={"starting_after": made[3]}, headers=ALICE).json()
    assert [p["id"] for p in page["network_policies"]] == [made[2], made[1], made[0]]


def test_list_default_limit_is_20(client):
    for i in range(23):
        create(client, name=f"d{i}")
    page = client.get(URL, headers=ALICE).json()
    assert len(page["network_policies"]) == 20 and page["has_more"] is True


def test_list_filters(client):
    web = create(client, name="Web-Egress")
    db = create(client, name="database")
    create(client, name="other")
    names = lambda params: sorted(p["name"] for p in client.get(URL, params=params, headers=ALICE).json()["network_policies"])  # noqa: E731
    assert names({"name": "egress"}) == ["Web-Egress"]
    assert names({"name": "a"}) == ["database"]
    assert names({"id": db["id"]}) == ["database"]
    assert names({"search": web["id"]}) == ["Web-Egress"]
    assert names({"search": "WEB"}) == ["Web-Egress"]
    assert names({"search": "zzz"}) == []
    filtered = client.get(URL, params={"name": "e", "limit": 1}, headers=ALICE).json()
    assert filtered["total_count"] == 3 and filtered["has_more"] is True


def test_name_and_search_fold_case_beyond_ascii(client):
    for name in ["über-Policy", "ÜBER-two", "Ärger", "Straße"]:
        create(client, name=name)
    names = lambda params: sorted(p["name"] for p in client.get(URL, params=params, headers=ALICE).json()["network_policies"])  # noqa: E731
    assert names({"name": "über"}) == ["ÜBER-two", "über-Policy"]
    assert names({"name": "Über"}) == ["ÜBER-two", "über-Policy"]
    assert names({"search": "äRGER"}) == ["Ärger"]
    assert names({"name": "STRASSE"}) == ["Straße"]  # full case folding: ß is ss


@pytest.mark.parametrize("limit", [0, -1, 5001])
def test_list_limit_bounds(client, limit):
    assert_error(client.get(URL, params={"limit": limit}, headers=ALICE), 400, "invalid_request", "limit")


def test_list_limit_max_is_accepted(client):
    create(client)
    assert client.get(URL, params={"limit": 5000}, headers=ALICE).status_code == 200


def test_delete_returns_view_then_404(client):
    view = create(client, name="gone", allowed_hostnames=["x.example.com"])
    response = client.post(f"{URL}/{view['id']}/delete", headers=ALICE)
    assert response.status_code == 200
    assert response.json() == view
    assert_error(client.get(f"{URL}/{view['id']}", headers=ALICE), 404)
    assert_error(client.post(f"{URL}/{view['id']}/delete", headers=ALICE), 404)
    assert client.get(URL, headers=ALICE).json()["network_policies"] == []
    # The name is free again.
    create(client, name="gone")


def test_delete_accepts_empty_json_body(client):
    view = create(client)
    response = client.post(
        f"{URL}/{view['id']}/delete", content=b"", headers={**ALICE, "content-type": "application/json"}
    )
    assert response.status_code == 200


def test_delete_in_use_is_400_and_names_the_user(client):
    view = create(client, name="busy")
    users = {view["id"]: ["devbox dbx_example"]}
    client.app.state.services.network_policies.add_usage_check(lambda account, pid: users.get(pid, []))
    body = assert_error(client.post(f"{URL}/{view['id']}/delete", headers=ALICE), 400, "policy_in_use")
    assert "dbx_example" in body["message"]
    assert client.get(f"{URL}/{view['id']}", headers=ALICE).status_code == 200
    users.clear()
    assert client.post(f"{URL}/{view['id']}/delete", headers=ALICE).status_code == 200


def test_retried_create_with_same_request_id_creates_once(client):
    headers = {**ALICE, "x-request-id": "req-123"}
    first = client.post(URL, json={"name": "once"}, headers=headers).json()
    second = client.post(URL, json={"name": "once"}, headers=headers)
    assert second.status_code == 200 and second.json()["id"] == first["id"]
    assert client.get(URL, headers=ALICE).json()["total_count"] == 1


def test_one_request_id_with_another_body_is_another_create(client):
    """A client sending one x-request-id with every request (tracing, say) gets what it asks
    for, not the first policy it made with that id."""
    headers = {**ALICE, "x-request-id": "trace-1"}
    first = client.post(URL, json={"name": "one"}, headers=headers).json()
    second = client.post(URL, json={"name": "two", "allow_all": True}, headers=headers).json()
    assert second["id"] != first["id"] and (second["name"], second["egress"]["allow_all"]) == ("two", True)
    again = client.post(URL, json={"name": "two", "allow_all": True}, headers=headers).json()
    assert again["id"] == second["id"]  # that one retried


# --- authentication and accounts ---------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": ""}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}]
)
def test_missing_or_malformed_key_is_401(client, headers):
    assert_error(client.get(URL, headers=headers), 401, "unauthorized")
    assert_error(client.post(URL, json={"name": "x"}, headers=headers), 401, "unauthorized")


def test_two_tokens_are_two_isolated_accounts(client):
    mine = create(client, headers=ALICE, name="alice-policy")
    assert client.get(URL, headers=BOB).json() == {"network_policies": [], "has_more": False, "total_count": 0}
    assert_error(client.get(f"{URL}/{mine['id']}", headers=BOB), 404)
    assert_error(client.post(f"{URL}/{mine['id']}", json={"name": "stolen"}, headers=BOB), 404)
    assert_error(client.post(f"{URL}/{mine['id']}/delete", headers=BOB), 404)
    assert client.get(URL, params={"search": mine["id"]}, headers=BOB).json()["network_policies"] == []
    assert client.get(f"{URL}/{mine['id']}", headers=ALICE).json() == mine


def test_api_keys_file(make_client, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# token account\nkey-a1 team-a\nkey-a2 team-a\nkey-b team-b\n")
    client = make_client(api_keys=keys)
    a1, a2, b = ({"Authorization": f"Bearer {k}"} for k in ("key-a1", "key-a2", "key-b"))
    assert_error(client.get(URL, headers=ALICE), 401, "unauthorized", "unknown")
    view = create(client, headers=a1, name="shared")
    assert client.get(f"{URL}/{view['id']}", headers=a2).json() == view  # same account
    assert_error(client.get(f"{URL}/{view['id']}", headers=b), 404)


def test_a_token_given_to_two_accounts_is_refused(tmp_path):
    from simulator.accounts import Accounts

    keys = tmp_path / "keys"
    keys.write_text("key-1 team-a\nkey-1 team-a\nkey-2 team-b\n")  # the same pair twice is harmless
    assert Accounts.from_file(keys).keys == {"key-1": "team-a", "key-2": "team-b"}
    keys.write_text("key-1 team-a\nkey-2 team-b\nkey-1 team-b\n")
    with pytest.raises(ValueError, match=r"keys:3: this token is already the key of account 'team-a'"):
        Accounts.from_file(keys)


def test_an_unknown_field_in_a_cidr_or_port_rule_is_a_400_not_a_wider_rule(client):
    """A misspelt "protocol" left the rule open to TCP and UDP; elsewhere unknown fields are
    ignored (a newer SDK may send more)."""
    for cidr in ({"cidr": "198.51.100.20/32", "ports": [{"port": 80, "prot": "TCP"}]},
                 {"cidr": "198.51.100.20/32", "port": [{"port": 80}]}):
        response = client.post(URL, json={"name": "x", "allowed_cidrs": [cidr]}, headers=ALICE)
        field = "allowed_cidrs[0].ports[0].prot" if "ports" in cidr else "allowed_cidrs[0].port"
        assert_error(response, 400, "invalid_request", f"{field} is not a field of this object")
    assert client.get(URL, headers=ALICE).json()["network_policies"] == []
    ok = client.post(URL, json={"name": "x", "newer_sdk_field": 1}, headers=ALICE)
    assert ok.status_code == 200, ok.text


# --- validation: clear errors, nothing stored ---------------------------------------------


@pytest.mark.parametrize(
    "body, contains",
    [
        ({}, "name is required"),
        ({"name": None}, "name"),
        ({"name": ""}, "name must not be empty"),
        ({"name": "   "}, "name must not be empty"),
        ({"name": "x" * 257}, "longer than 256"),
        ({"name": 5}, "name"),
        ({"name": "x", "allow_all": "yes"}, "allow_all"),
        ({"name": "x", "allowed_hostnames": "github.com"}, "allowed_hostnames"),
        ({"name": "x", "allowed_hostnames": ["*"]}, "wildcard"),
        ({"name": "x", "allowed_hostnames": ["https://github.com"]}, "URL"),
        ({"name": "x", "allowed_hostnames": ["github.com:443"]}, "port"),
        ({"name": "x", "allowed_hostnames": ["github.com/path"]}, "path"),
        ({"name": "x", "allowed_hostnames": ["192.0.2.1"]}, "IP address"),
        ({"name": "x", "allowed_hostnames": ["git hub.com"]}, "white space"),
        ({"name": "x", "allowed_hostnames": ["a.*.example.com"]}, "first label"),
        ({"name": "x", "allowed_hostnames": ["*example.com"]}, "first label"),
        ({"name": "x", "allowed_hostnames": [("a" * 64) + ".com"]}, "longer than 63"),
        ({"name": "x", "allowed_cidrs": [{"cidr": "10.0.0.1/16"}]}, "host bits"),
        ({"name": "x", "allowed_cidrs": [{"cidr": "10.0.0.0"}]}, "prefix length"),
        ({"name": "x", "allowed_cidrs": [{"cidr": "2001:db8::/32"}]}, "IPv6"),
        ({"name": "x", "allowed_cidrs": [{"cidr": "nonsense"}]}, "not an IPv4 network"),
        ({"name": "x", "allowed_cidrs": [{"ports": [{"port": 1}]}]}, "cidr is required"),
        ({"name": "x", "allowed_cidrs": [{"cidr": "10.0.0.0/8", "ports": [{"port": 0}]}]}, "port"),
        ({"name": "x", "allowed_cidrs": [{"cidr": "10.0.0.0/8", "ports": [{"port": 65536}]}]}, "port"),
        ({"name": "x", "allowed_cidrs": [{"cidr": "10.0.0.0/8", "ports": [{"port": 80, "end_port": 79}]}]}, "smaller than port"),
        ({"name": "x", "allowed_cidrs": [{"cidr": "10.0.0.0/8", "ports": [{"port": 80, "protocol": "ICMP"}]}]}, "protocol"),
        ({"name": "x", "allowed_cidrs": [{"cidr": "10.0.0.0/8", "ports": [{}]}]}, "port is required"),
    ],
)
def test_invalid_create_is_400_and_stores_nothing(client, body, contains):
    assert_error(client.post(URL, json=body, headers=ALICE), 400, "invalid_request", contains)
    assert client.get(URL, headers=ALICE).json()["total_count"] == 0


def test_body_that_is_not_json_or_not_an_object(client):
    headers = {**ALICE, "content-type": "application/json"}
    assert_error(client.post(URL, content=b"{nope", headers=headers), 400, "invalid_request", "not valid JSON")
    assert_error(client.post(URL, json=["name"], headers=ALICE), 400, "invalid_request")
    for unreadable in (b'{"name": "caf\xe9"}', b'{"name": "x", "description": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"):
        assert_error(client.post(URL, content=unreadable, headers=headers), 400, "invalid_request", "JSON")
    form = client.post(URL, content=b"name=x", headers={**ALICE, "content-type": "application/x-www-form-urlencoded"})
    assert_error(form, 400, "invalid_request", "Content-Type: application/json")
    assert client.get(URL, headers=ALICE).json()["network_policies"] == []


def test_unknown_fields_are_ignored(client):
    view = create(client, name="extra", some_future_field={"x": 1})
    assert "some_future_field" not in view


def test_unknown_route_is_json_404(client):
    assert_error(client.get("/v1/nothing-here", headers=ALICE), 404, "not_found")
    # A trailing slash is no redirect (307 with no body, before authentication).
    assert_error(client.post(URL + "/", json={"name": "x"}, headers=ALICE, follow_redirects=False), 404, "not_found")


@pytest.mark.parametrize(
    ("send", "message"),
    [
        ({}, "a JSON request body is required"),
        ({"json": {}}, "name is required"),
        # pydantic's own errors name fields the way our validators do: [index], not .index.
        ({"json": {"name": "x", "allowed_cidrs": [{"cidr": "192.0.2.0/24", "ports": [{"port": "abc"}]}]}},
         "allowed_cidrs[0].ports[0].port: Input should be a valid integer"),
        ({"json": {"name": "x", "allowed_cidrs": [{"cidr": "192.0.2.1/24"}]}},
         "allowed_cidrs[0].cidr: '192.0.2.1/24' has host bits set; did you mean '192.0.2.0/24'?"),
    ],
)
def test_validation_messages_name_the_field(client, send, message):
    response = client.post("/v1/network-policies", headers=ALICE, **send)
    assert response.status_code == 400
    assert response.json() == {"message": message, "error_code": "invalid_request"}


def test_port_rules_are_capped_in_all(client):
    per_cidr = MAX_PORT_RULES // 10 + 1  # ten CIDRs, each under any per-entry limit
    cidrs = [{"cidr": f"192.0.2.{i * 16}/28", "ports": [{"port": p, "protocol": "TCP"} for p in range(1, per_cidr + 1)]}
             for i in range(10)]
    body = assert_error(client.post(URL, json={"name": "huge", "allowed_cidrs": cidrs}, headers=ALICE), 400,
                        "invalid_request", "port rules")
    assert str(MAX_PORT_RULES) in body["message"]
    view = create(client, name="small", allowed_cidrs=cidrs[:1])
    assert_error(client.post(f"{URL}/{view['id']}", json={"allowed_cidrs": cidrs}, headers=ALICE), 400, "invalid_request")
    assert client.get(URL, headers=ALICE).json()["network_policies"] == [view]  # nothing half-applied
    at_cap = [{**cidrs[0], "ports": [{"port": p, "protocol": "UDP"} for p in range(1, MAX_PORT_RULES + 1)]}]
    assert client.post(f"{URL}/{view['id']}", json={"allowed_cidrs": at_cap}, headers=ALICE).status_code == 200


def test_caps_count_distinct_entries_and_bound_what_is_sent(client):
    names = [f"h{i}.example.com" for i in range(MAX_HOSTNAMES)]
    view = create(client, name="full", allowed_hostnames=[*names, "H0.Example.com."])  # a duplicate once normalised
    assert len(view["egress"]["allowed_hostnames"]) == MAX_HOSTNAMES
    body = assert_error(client.post(URL, json={"name": "over", "allowed_hostnames": [*names, "one-more.example.com"]},
                                    headers=ALICE), 400, "invalid_request", "distinct names")
    assert f"{MAX_HOSTNAMES + 1} distinct names, more than {MAX_HOSTNAMES}" in body["message"]
    sent = ["a.example.com"] * (RAW_FACTOR * MAX_HOSTNAMES + 1)
    body = assert_error(client.post(URL, json={"name": "flood", "allowed_hostnames": sent}, headers=ALICE), 400,
                        "invalid_request", "before duplicates are dropped")
    cidrs = [{"cidr": f"10.{i // 256}.{i % 256}.0/24"} for i in range(MAX_CIDRS)]
    view = create(client, name="cidrs", allowed_cidrs=[*cidrs, cidrs[0]])
    assert len(view["egress"]["allowed_cidrs"]) == MAX_CIDRS
    assert_error(client.post(URL, json={"name": "over", "allowed_cidrs": [*cidrs, {"cidr": "192.0.2.0/24"}]},
                             headers=ALICE), 400, "invalid_request", "distinct entries")
    rule = {"port": 443, "protocol": "TCP"}
    view = create(client, name="ports", allowed_cidrs=[{"cidr": "192.0.2.0/24", "ports": [rule] * MAX_PORT_RULES * 2}])
    assert view["egress"]["allowed_cidrs"][0]["ports"] == [{**rule, "end_port": None}]
    assert [p["name"] for p in client.get(URL, headers=ALICE).json()["network_policies"]] == ["ports", "cidrs", "full"]


def test_a_write_that_takes_long_does_not_hold_up_other_requests(client):
    """Policy actions run off the event loop: a write applying nftables for running devboxes
    (here a hook that waits) and the reads waiting for its transaction leave the listener
    answering meanwhile (MAX_PORT_RULES bounds how long such a write takes)."""
    view = create(client, name="slow")
    entered, answered = threading.Event(), threading.Event()

    def slow_hook(before, after):
        entered.set()
        answered.wait(10)

    client.app.state.services.network_policies.add_update_hook(slow_hook)
    update = threading.Thread(target=client.post, args=(f"{URL}/{view['id']}",), kwargs={"json": {"description": "d"}, "headers": ALICE})
    update.start()
    reads: list[threading.Thread] = []
    try:
        assert entered.wait(10)
        # A read of the store waits for the write's transaction - in a worker thread, so the
        # listener still answers meanwhile.
        reads += [threading.Thread(target=client.get, args=(path,), kwargs={"headers": ALICE})
                  for path in (f"{URL}/{view['id']}", URL)]
        for read in reads:
            read.start()
        assert client.get("/healthz").status_code == 200
        assert update.is_alive() and not answered.is_set()  # answered while the write waited
        assert all(read.is_alive() for read in reads)  # the reads did wait for it
    finally:
        answered.set()
        update.join(10)
        for read in reads:
            read.join(10)
    assert client.get(f"{URL}/{view['id']}", headers=ALICE).json()["description"] == "d"
