"""/v1/devboxes/{id}/read_file_contents, write_file_contents, download_file, upload_file.

read_file_contents answers ``text/plain`` (the SDK returns ``response.text``), download_file
raw bytes, upload_file takes a multipart form (``path``, ``file``) and answers ``{}``.
The file's bytes are sent as they are: a file that is not UTF-8 is not altered here.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import Response

from simulator.api import deps
from simulator.api.devbox_schemas import (
    NO_RUNTIME,
    DownloadFileParams,
    ReadFileContentsParams,
    SyncExecutionView,
    WriteFileContentsParams,
)
from simulator.api.devboxes import runtime_ready
from simulator.api.schemas import ERROR_RESPONSES, NOT_FOUND

router = APIRouter(
    prefix="/v1/devboxes",
    tags=["files"],
    responses={**ERROR_RESPONSES, **NO_RUNTIME, **NOT_FOUND},
    dependencies=[Depends(runtime_ready)],
)


def _content(media_type: str, description: str) -> dict:
    return {200: {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}}


@router.post(
    "/{id}/read_file_contents",
    response_class=Response,
    responses=_content("text/plain", "The file's contents"),
    summary="Read a file as text",
)
def read_file_contents(
    id: str, params: ReadFileContentsParams, account: str = Depends(deps.account), services=Depends(deps.services)
):
    data = services.files.read_file_contents(account, id, params.file_path)
    return Response(content=data, media_type="text/plain; charset=utf-8")


@router.post(
    "/{id}/write_file_contents",
    response_model=SyncExecutionView,
    summary="Create or replace a file with UTF-8 text (parents are created)",
)
def write_file_contents(
    id: str, params: WriteFileContentsParams, account: str = Depends(deps.account), services=Depends(deps.services)
):
    services.files.write_file_contents(account, id, params.file_path, params.contents)
    return {"devbox_id": id, "exit_status": 0, "stdout": "", "stderr": ""}


@router.post(
    "/{id}/download_file",
    response_class=Response,
    responses=_content("application/octet-stream", "The file's bytes"),
    summary="Download a file's bytes",
)
def download_file(
    id: str, params: DownloadFileParams, account: str = Depends(deps.account), services=Depends(deps.services)
):
    data = services.files.download_file(account, id, params.path)
    return Response(content=data, media_type="application/octet-stream")


@router.post("/{id}/upload_file", response_model=dict, summary="Upload a file (multipart: path, file)")
def upload_file(
    id: str,
    path: str = Form(..., description="Home-relative, ~/..., or absolute path"),
    file: UploadFile = File(..., description="The file's bytes"),
    account: str = Depends(deps.account),
    services=Depends(deps.services),
):
    # UploadFile spools to a temporary file: it is read in this worker thread, not on the loop,
    # and only once its size has been checked.
    services.files.upload_file(account, id, path, file.file)
    return {}
