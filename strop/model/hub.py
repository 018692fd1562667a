"""The hub client of shareable tokenizers: a name that is no local folder is a Hugging Face
hub repo id, fetched (`resolve_folder`) and uploaded (`upload_folder`) with huggingface_hub's
own client (`hf_hub_download`, `HfApi.create_repo`/`upload_folder`); nothing here speaks HTTP.

Every failure (no network, HF_HUB_OFFLINE, a 404, refused credentials) is one
`PretrainedError` line naming the repo and what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

from strop.model.tokenizer_files import (
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    PretrainedError,
    one_line_of,
    require_whole,
)


def resolve_folder(
    name: str | os.PathLike[str],
    revision: str | None,
    cache_dir: str | os.PathLike[str] | None,
    local_files_only: bool,
    token: str | None,
) -> Path:
    """A local folder as is; otherwise a hub id, fetched with huggingface_hub's client.

    "" is refused (Path("") is the current directory). A name that is no folder here is
    asked of the hub once, without retries (`_hub_unreachable`): a mistyped local path spent
    half a minute in the client's retries when the hub could not be reached. With no hub, a
    cached copy still loads; without one, the error says both things in one line."""
    if not str(name).strip():
        raise PretrainedError("from_pretrained: empty path (name a tokenizer folder or a hub id)")
    folder = Path(name)
    if folder.is_dir():
        require_whole(folder)
        missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / n).is_file()]
        if missing:
            raise PretrainedError(f"{folder}: not an exported tokenizer (no {', '.join(missing)})")
        return folder
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(str(name))
    except HFValidationError:
        raise PretrainedError(
            f"{name}: no such folder, and not a hub repo id (owner/name)"
        ) from None
    unreachable = None if local_files_only else _hub_unreachable(str(name), revision, token)
    files = []
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            files.append(
                hf_hub_download(
                    str(name),
                    filename,
                    revision=revision,
                    cache_dir=None if cache_dir is None else Path(cache_dir),
                    local_files_only=local_files_only or unreachable is not None,
                    token=token,
                )
            )
        except Exception as exc:  # hub errors come in many types (offline, 404, gated, ...)
            if unreachable is not None:
                raise PretrainedError(
                    f"{name}: no such folder, and the hub cannot be reached ({unreachable}) "
                    "nor holds a cached copy"
                ) from None
            raise PretrainedError(
                f"{name}: neither a local folder nor a loadable hub repo ({type(exc).__name__}: "
                f"{one_line_of(exc)})"
            ) from None
    return Path(files[0]).parent


def _hub_unreachable(repo_id: str, revision: str | None, token: str | None) -> str | None:
    """Why the hub cannot be reached (offline mode, a refused or timed-out connection), or
    None when it answered (even "no such repo": the download then says so at once). One
    request, no retries; huggingface_hub's own download retries a dead network for ~40 s."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, CONFIG_NAME, revision=revision), token=token)
    except OfflineModeIsEnabled:
        return "HF_HUB_OFFLINE is set"
    except HfHubHTTPError:
        return None
    except Exception as exc:  # connection errors of the client's HTTP library
        return f"{_endpoint()}: {type(exc).__name__}: {one_line_of(exc)}"
    return None


def _endpoint() -> str:
    from huggingface_hub import constants

    return str(constants.ENDPOINT)


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if the hub would take it as a repo id (`owner/name` or `name`); otherwise a
    one-line PretrainedError, raised before any work is done."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise PretrainedError(
            f"{repo_id!r:.80} is not a hub repo id owner/name ({one_line_of(exc).rstrip('.')})"
        ) from None
    return repo_id


def upload_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    endpoint: str | None = None,
) -> str:
    """Create `repo_id` (if needed) and upload the exported folder; returns the commit URL.
    A failed upload (no network, refused credentials, HF_HUB_OFFLINE) is one line."""
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    missing = [
        n for n in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME) if not (Path(folder) / n).is_file()
    ]
    if missing:
        raise PretrainedError(f"{folder}: not an exported tokenizer (no {', '.join(missing)})")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
            commit_message="Upload STROP tokenizer",
        )
    except Exception as exc:  # the client raises its HTTP library's errors and its own
        raise PretrainedError(
            f"push to hub repo {repo_id} ({endpoint or _endpoint()}) failed: "
            f"{type(exc).__name__}: {one_line_of(exc)}; {folder} was written and can be "
            "uploaded later"
        ) from None
    return str(getattr(commit, "commit_url", commit))
