"""A model or adapter named by its hub ID, `org/name` or `org/name@revision`, as a local snapshot folder.

`huggingface_hub.snapshot_download` fetches what is missing online and reads its cache offline (HF_HUB_OFFLINE=1),
so a run can pin a revision and still work on a machine without network once the snapshot was pre-fetched. Only
the files a transformers checkpoint or a PEFT adapter needs are fetched, not a repo's .bin or GGUF copies. The
commit read (the snapshot folder's name) goes into the run record. A token, when one is needed, is huggingface_hub's
own business: it reads HF_TOKEN from the environment; this module never takes or keeps one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from harness.core.errors import HarnessError

HubKind = Literal["model", "adapter"]

# The hub's own rule (huggingface_hub's validate_repo_id): ASCII letters, digits, '.', '_', '-'; a part neither
# starts nor ends with '.' or '-' and holds no '--' or '..'. The revision is a branch, a tag or a commit.
_PART = r"(?![A-Za-z0-9._-]*?(?:--|\.\.))[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?"
HUB_ID = re.compile(rf"(?P<repo_id>{_PART}/{_PART})(?:@(?P<revision>\S+))?")

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
)
ALLOW_PATTERNS: dict[str, tuple[str, ...]] = {
    "model": (
        "config.json",
        "generation_config.json",
        "*.safetensors",
        "*.safetensors.index.json",
        *_TOKENIZER_FILES,
    ),
    "adapter": ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"),
}
# The file without which a snapshot is not what it was asked to be, and what it then is not.
_REQUIRED: dict[str, tuple[str, str]] = {
    "model": ("config.json", "a transformers checkpoint"),
    "adapter": ("adapter_config.json", "a PEFT adapter"),
}


@dataclass(frozen=True)
class HubSnapshot:
    """A resolved hub snapshot: `revision` is what was asked (a branch, a tag, a commit or None for the default
    branch), `commit` the 40-hex commit it resolved to, `path` the snapshot folder in the hub cache."""

    repo_id: str
    revision: str | None
    commit: str
    path: Path


def is_hub_id(name: str) -> bool:
    """True for `org/name[@revision]` that is not an existing local path: a local folder `org/name` wins."""
    return HUB_ID.fullmatch(name) is not None and not Path(name).exists()


def resolve_hub_model(
    name: str,
    kind: HubKind = "model",
    allow_patterns: Sequence[str] | None = None,
    field: str = "--model",
) -> HubSnapshot:
    """The snapshot of hub ID `name` (`org/name[@revision]`) holding `allow_patterns` (by default the files
    `kind` needs), downloaded if missing and online, read from the cache (HF_HOME / HF_HUB_CACHE) if offline.
    Every failure is one HarnessError on `field` that says how to fix it."""
    match = HUB_ID.fullmatch(name)
    if match is None:
        raise HarnessError(f"'{name}' is not a hub ID", field=field, hint="write org/name or org/name@revision")
    repo_id, revision = match["repo_id"], match["revision"]
    patterns = list(allow_patterns if allow_patterns is not None else ALLOW_PATTERNS[kind])
    try:
        folder = Path(_snapshot_download(repo_id, revision, patterns))
    except Exception as error:
        mapped = _hub_error(error, repo_id, revision, field)
        if mapped is None:
            raise
        raise mapped from error
    required, what = _REQUIRED[kind]
    if not (folder / required).is_file():
        raise HarnessError(
            f"the snapshot of '{name}' has no {required}: not {what}",
            path=folder,
            field=field,
            hint=f"check the repo ID against its files at https://huggingface.co/{repo_id}/tree/{revision or 'main'}",
        )
    return HubSnapshot(repo_id=repo_id, revision=revision, commit=folder.name, path=folder)


def _snapshot_download(repo_id: str, revision: str | None, patterns: list[str]) -> str:
    """The snapshot folder (`.../snapshots/<commit>`). huggingface_hub reads HF_HUB_OFFLINE and HF_HUB_CACHE once,
    at import, into `huggingface_hub.constants`; those are read here, at call time, so one patch there serves all."""
    import httpx
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import OfflineModeIsEnabled

    def download(local_only: bool) -> str:
        return snapshot_download(
            repo_id,
            revision=revision,
            repo_type="model",
            allow_patterns=patterns,
            token=None,
            local_files_only=local_only,
        )

    try:
        # Offline, only `local_files_only` reads the cache for a commit pin: without it huggingface_hub >= 1.0 asks
        # the hub for the commit's file list unless a download left it cached, and fails with OfflineModeIsEnabled.
        return download(local_only=bool(constants.HF_HUB_OFFLINE))
    except (OfflineModeIsEnabled, httpx.TransportError):
        # Not offline but unreachable: the commit's file list could not be fetched, yet a cached snapshot serves.
        return download(local_only=True)


def _hub_error(error: Exception, repo_id: str, revision: str | None, field: str) -> HarnessError | None:
    """The user's HarnessError for a failed snapshot_download, or None for an error that is not the hub's."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f"'{repo_id}' at revision '{revision or 'main'}'"
    if isinstance(error, LocalEntryNotFoundError):
        offline = "offline mode is on (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
        return HarnessError(
            f"{at} is not (fully) in the local hub cache and {offline}",
            field=field,
            hint=_prefetch_hint(repo_id, revision),
        )
    if isinstance(error, RevisionNotFoundError):
        return HarnessError(
            f"'{repo_id}' has no revision '{revision}'", field=field, hint="use a branch, a tag or a commit of the repo"
        )
    if isinstance(error, RepositoryNotFoundError) or (
        isinstance(error, HfHubHTTPError) and error.response.status_code == 401
    ):
        return HarnessError(
            f"the hub has no repo '{repo_id}' or it is gated or private",
            field=field,
            hint="check the ID; for a gated or private repo accept its terms on the hub and set HF_TOKEN in the "
            "environment to a token with access: the harness takes no token option and stores none",
        )
    return None


def _prefetch_hint(repo_id: str, revision: str | None) -> str:
    command = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
    return (
        f"pre-fetch it on a machine with network with `{command}`, then point HF_HOME (or HF_HUB_CACHE) here at "
        "that cache"
    )
