"""HTTP tests for devbox files: read_file_contents, write_file_contents, download_file,
upload_file; every path form, and a clear 4xx for every bad request (never a 500)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.conftest import ALICE, BOB
from tests.api.devbox_fixtures import needs_hooks
from tests.api.test_devboxes import URL, assert_error, create, create_running
from tests.api.test_executions import run

ALL_BYTES = bytes(range(256)) * 4


@pytest.fixture
def devbox(devbox_client):
    return create_running(devbox_client)["id"]


def write(client, devbox_id, path, contents, headers=ALICE):
    return client.post(
        f"{URL}/{devbox_id}/write_file_contents", json={"file_path": path, "contents": contents}, headers=headers
    )


def read(client, devbox_id, path, headers=ALICE):
    return client.post(f"{URL}/{devbox_id}/read_file_contents", json={"file_path": path}, headers=headers)


def upload(client, devbox_id, path, data, headers=ALICE):
    return client.post(
        f"{URL}/{devbox_id}/upload_file", data={"path": path}, files={"file": ("blob", data)}, headers=headers
    )


def download(client, devbox_id, path, headers=ALICE):
    return client.post(f"{URL}/{devbox_id}/download_file", json={"path": path}, headers=headers)


def test_write_then_read_text_returns_the_sync_view_and_plain_text(devbox_client, devbox):
    response = write(devbox_client, devbox, "notes/hello.txt", "héllo\nwörld\n")
    assert response.status_code == 200, response.text
    assert response.json() == {"devbox_id": devbox, "exit_status": 0, "stdout": "", "stderr": ""}
    got = read(devbox_client, devbox, "notes/hello.txt")
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/plain")
    assert got.text == "héllo\nwörld\n"
    # Home-relative paths are where commands start.
    assert run(devbox_client, devbox, "cat notes/hello.txt")["stdout"] == "héllo\nwörld\n"


@pytest.mark.parametrize(
    "written, read_as",
    [
        ("a.txt", "~/a.txt"),
        ("~/b/c.txt", "/home/user/b/c.txt"),
        ("/home/user/d.txt", "d.txt"),
        ("./e/../e.txt", "e.txt"),
        ("/tmp/f.txt", "/tmp/f.txt"),
    ],
)
def test_every_path_form_names_the_same_file(devbox_client, devbox, written, read_as):
    assert write(devbox_client, devbox, written, f"written as {written}").status_code == 200
    assert read(devbox_client, devbox, read_as).text == f"written as {written}"
    assert download(devbox_client, devbox, read_as).content == f"written as {written}".encode()


def test_upload_and_download_binary_bytes_exactly(devbox_client, devbox):
    response = upload(devbox_client, devbox, "~/bin/blob.bin", ALL_BYTES)
    assert response.status_code == 200 and response.json() == {}
    got = download(devbox_client, devbox, "bin/blob.bin")
    assert got.status_code == 200 and got.headers["content-type"] == "application/octet-stream"
    assert got.content == ALL_BYTES
    assert upload(devbox_client, devbox, "/tmp/up.bin", b"").status_code == 200
    assert download(devbox_client, devbox, "/tmp/up.bin").content == b""


def test_write_replaces_a_file_and_upload_overwrites(devbox_client, devbox):
    write(devbox_client, devbox, "f.txt", "a much longer first version")
    write(devbox_client, devbox, "f.txt", "short")
    assert read(devbox_client, devbox, "f.txt").text == "short"
    upload(devbox_client, devbox, "f.txt", b"uploaded")
    assert read(devbox_client, devbox, "~/f.txt").text == "uploaded"


def test_file_errors_are_clear_4xx(devbox_client, devbox):
    write(devbox_client, devbox, "dir/file.txt", "x")
    cases = [
        (read(devbox_client, devbox, "missing.txt"), 404, "file_not_found"),
        (download(devbox_client, devbox, "~/nope/missing.bin"), 404, "file_not_found"),
        (read(devbox_client, devbox, "dir"), 400, "is_a_directory"),
        (read(devbox_client, devbox, "~"), 400, "is_a_directory"),
        (write(devbox_client, devbox, "dir", "x"), 400, "is_a_directory"),
        (write(devbox_client, devbox, "dir/file.txt/below", "x"), 400, "not_a_directory"),
        (read(devbox_client, devbox, "/etc/passwd"), 400, "invalid_path"),
        (write(devbox_client, devbox, "../../etc/evil", "x"), 400, "invalid_path"),
        (upload(devbox_client, devbox, "/var/lib/x", b"x"), 400, "invalid_path"),
        (read(devbox_client, devbox, ""), 400, "invalid_path"),
        (read(devbox_client, devbox, "a\u0000b"), 400, "invalid_path"),
    ]
    for response, status, code in cases:
        assert_error(response, status, code)
    assert read(devbox_client, devbox, "dir/file.txt").text == "x"  # nothing was changed


def test_bad_bodies_are_400(devbox_client, devbox):
    for path, kwargs in [
        ("read_file_contents", {"json": {}}),
        ("read_file_contents", {"json": {"file_path": 5}}),
        ("write_file_contents", {"json": {"file_path": "x"}}),
        ("download_file", {"json": {"file_path": "x"}}),
        ("upload_file", {"data": {"path": "x"}}),  # no file part
        ("upload_file", {"files": {"file": ("f", b"x")}}),  # no path
        ("upload_file", {"json": {"path": "x"}}),  # not multipart
    ]:
        assert_error(devbox_client.post(f"{URL}/{devbox}/{path}", headers=ALICE, **kwargs), 400)


def test_files_need_a_running_devbox_of_ones_own(devbox_client, devbox, runtime):
    for response in (read(devbox_client, devbox, "x", headers=BOB), upload(devbox_client, "dbx_nope", "x", b"x")):
        assert_error(response, 404)
    devbox_client.post(f"{URL}/{devbox}/shutdown", headers=ALICE)
    assert_error(write(devbox_client, devbox, "x", "x"), 400, "devbox_not_running")
    needs_hooks(runtime, "hold_provisioning")
    gate = runtime.hold_provisioning()
    provisioning = create(devbox_client)["id"]
    assert_error(read(devbox_client, provisioning, "x"), 400, "devbox_not_running")
    gate.set()


def test_file_writes_are_logged(devbox_client, devbox):
    upload(devbox_client, devbox, "data.bin", b"12345")
    entries = devbox_client.get(f"{URL}/{devbox}/logs", headers=ALICE).json()["logs"]
    assert [(e["source"], e["message"]) for e in entries] == [("files", "wrote data.bin (5 bytes)")]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_any_path_works_or_is_a_clear_4xx(devbox_client, devbox, path):
    for response in (
        write(devbox_client, devbox, path, "x"),
        read(devbox_client, devbox, path),
        download(devbox_client, devbox, path),
        upload(devbox_client, devbox, path, b"y"),
    ):
        if response.status_code != 200:
            assert_error(response, response.status_code)
            assert response.status_code in (400, 404), response.text


def test_writes_and_uploads_over_the_file_size_limit_are_refused(devbox_client, devbox, monkeypatch):
    """What cannot be read back (reads stop at the same limit) is not stored; an upload's size
    is checked before it is read into memory."""
    from simulator import files

    monkeypatch.setattr(files, "MAX_FILE_BYTES", 1000)
    assert upload(devbox_client, devbox, "fits.bin", b"x" * 1000).status_code == 200
    for response in (upload(devbox_client, devbox, "big.bin", b"x" * 1001),
                     write(devbox_client, devbox, "big.txt", "y" * 1001)):
        assert response.status_code == 400
        assert response.json()["error_code"] == "file_too_large", response.text
        assert "1001 bytes is larger than the 1000 bytes a file may have" in response.json()["message"]
    assert download(devbox_client, devbox, "fits.bin").content == b"x" * 1000
    for path in ("big.bin", "big.txt"):
        assert download(devbox_client, devbox, path).status_code == 404  # nothing half-written
    assert upload(devbox_client, "dbx_nope", "big.bin", b"x" * 1001).status_code == 404  # who, before how big
    # file_mounts are files too: refused at create, before any devbox exists.
    created = devbox_client.post(URL, json={"file_mounts": {"big.txt": "y" * 1001}}, headers=ALICE)
    assert created.status_code == 400 and created.json()["error_code"] == "file_too_large", created.text
    blueprint = devbox_client.post("/v1/blueprints", json={"name": "big", "file_mounts": {"big.txt": "y" * 1001}},
                                   headers=ALICE)
    assert blueprint.status_code == 400 and blueprint.json()["error_code"] == "file_too_large", blueprint.text
