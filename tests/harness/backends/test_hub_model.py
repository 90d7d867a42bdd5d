"""Hub IDs to snapshot folders, offline, on a hub cache laid out as `hf download` leaves it: `models--org--name/`
with `snapshots/<commit>/` and `refs/<branch or tag>` holding the commit. No network, no model weights read."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import huggingface_hub
import numpy as np
import pytest
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RevisionNotFoundError
from safetensors.numpy import save_file

from harness.backends.hub_model import HubSnapshot, is_hub_id, resolve_hub_model
from harness.core.errors import HarnessError

MAIN = "a" * 40
TAGGED = "b" * 40
MODEL_FILES = {
    "config.json": json.dumps({"model_type": "gemma3_text", "vocab_size": 16}),
    "generation_config.json": "{}",
    "tokenizer.json": "{}",
    "tokenizer_config.json": "{}",
    "special_tokens_map.json": "{}",
}
ADAPTER_FILES = {"adapter_config.json": json.dumps({"peft_type": "LORA", "r": 4})}


def hub_answer(status: int) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/api/models/org/name"))


def prefill_hub_model(
    hub_cache: Path, repo_id: str, files: dict[str, str], commit: str = MAIN, refs: tuple[str, ...] = ("main",)
) -> Path:
    """One snapshot of a model repo in the hub cache, with a real (tiny) safetensors file; `refs` point at it."""
    repo_dir = hub_cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text, encoding="utf-8")
    weights = "adapter_model.safetensors" if "adapter_config.json" in files else "model.safetensors"
    save_file({"weight": np.zeros((2, 2), dtype=np.float32)}, str(snapshot / weights))
    (repo_dir / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo_dir / "refs" / ref).write_text(commit)  # no newline: huggingface_hub reads refs unstripped
    return snapshot


@pytest.fixture
def hub_cache(offline_hub: Path) -> Path:
    """`org/name` cached at two commits: `main` at MAIN, the tag `v1` at TAGGED."""
    cache = offline_hub / "hub"
    prefill_hub_model(cache, "org/name", MODEL_FILES)
    prefill_hub_model(cache, "org/name", MODEL_FILES, commit=TAGGED, refs=("v1",))
    return cache


def test_an_id_resolves_to_the_snapshot_main_points_at(hub_cache: Path) -> None:
    snapshot = resolve_hub_model("org/name")
    assert snapshot == HubSnapshot(
        repo_id="org/name", revision=None, commit=MAIN, path=hub_cache / "models--org--name" / "snapshots" / MAIN
    )
    assert (snapshot.path / "model.safetensors").is_file()


def test_a_tag_resolves_through_its_ref(hub_cache: Path) -> None:
    snapshot = resolve_hub_model("org/name@v1")
    assert (snapshot.revision, snapshot.commit, snapshot.path.name) == ("v1", TAGGED, TAGGED)


def test_a_commit_pin_resolves_offline(hub_cache: Path) -> None:
    """huggingface_hub >= 1.0 would list a pinned commit's files on the hub unless told to stay in the cache."""
    snapshot = resolve_hub_model(f"org/name@{TAGGED}")
    assert (snapshot.revision, snapshot.commit) == (TAGGED, TAGGED)


def test_an_unreachable_hub_falls_back_to_the_cache(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline mode off but no network (a closed local port): branch and commit pin are both read from the cache."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    assert resolve_hub_model("org/name").commit == MAIN
    assert resolve_hub_model(f"org/name@{TAGGED}").commit == TAGGED


def test_a_model_missing_from_the_offline_cache_says_how_to_prefetch_it(hub_cache: Path) -> None:
    with pytest.raises(HarnessError) as caught:
        resolve_hub_model("org/missing@v2")
    assert caught.value.field == "--model"
    assert str(caught.value) == (
        "field '--model': 'org/missing' at revision 'v2' is not (fully) in the local hub cache and offline mode is on "
        "(HF_HUB_OFFLINE=1) (pre-fetch it on a machine with network with `hf download org/missing --revision v2`, "
        "then point HF_HOME (or HF_HUB_CACHE) here at that cache)"
    )


def test_an_uncached_tag_of_a_cached_repo_is_the_same_error(hub_cache: Path) -> None:
    with pytest.raises(HarnessError, match=r"hf download org/name --revision v9`"):
        resolve_hub_model("org/name@v9", field="--base")


def test_a_snapshot_without_config_is_not_a_checkpoint(offline_hub: Path) -> None:
    prefill_hub_model(offline_hub / "hub", "org/weights-only", {"tokenizer.json": "{}"})
    with pytest.raises(HarnessError, match=r"has no config\.json: not a transformers checkpoint"):
        resolve_hub_model("org/weights-only")


def test_an_adapter_resolves_and_needs_its_config(offline_hub: Path) -> None:
    snapshot_path = prefill_hub_model(offline_hub / "hub", "org/lora", ADAPTER_FILES)
    snapshot = resolve_hub_model("org/lora", kind="adapter", field="--adapter")
    assert (snapshot.path, snapshot.commit) == (snapshot_path, MAIN)
    assert (snapshot.path / "adapter_model.safetensors").is_file()
    prefill_hub_model(offline_hub / "hub", "org/not-lora", MODEL_FILES)
    with pytest.raises(HarnessError, match=r"field '--adapter': .* has no adapter_config\.json: not a PEFT adapter"):
        resolve_hub_model("org/not-lora", kind="adapter", field="--adapter")


@pytest.mark.parametrize(
    ("error", "text"),
    [
        (GatedRepoError("gated", response=hub_answer(403)), "no repo 'org/name' or it is gated or private"),
        (HfHubHTTPError("bad token", response=hub_answer(401)), "no repo 'org/name' or it is gated or private"),
        (RevisionNotFoundError("no rev", response=hub_answer(404)), "'org/name' has no revision 'nope'"),
    ],
)
def test_hub_refusals_are_one_clear_error(monkeypatch: pytest.MonkeyPatch, error: Exception, text: str) -> None:
    """What the hub answers online, raised by a stand-in for snapshot_download (no network in tests)."""

    def refuse(*args: object, **kwargs: object) -> str:
        raise error

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    with pytest.raises(HarnessError, match=text) as caught:
        resolve_hub_model("org/name@nope")
    assert caught.value.__cause__ is error
    assert ("HF_TOKEN" in str(caught.value)) == (not isinstance(error, RevisionNotFoundError))


def test_other_errors_are_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> str:
        raise PermissionError("cache not writable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    with pytest.raises(PermissionError):
        resolve_hub_model("org/name")


@pytest.mark.parametrize(
    "name",
    ["org/name", "google/gemma-3-270m", "org/name@main", "org/name@refs/pr/1", f"org/name@{MAIN}", "a.b/c_d"],
)
def test_hub_ids(name: str) -> None:
    assert is_hub_id(name)


@pytest.mark.parametrize(
    "name",
    ["./x", "a/b/c", "gguf:x", "openai:x", "gemma-3-270m", "org/name@", "org/na me", ".org/name", "org/name-",
     "org/na--me", "org/na..me", "/abs/path", "../x", "org/náme"],
)  # fmt: skip
def test_not_hub_ids(name: str) -> None:
    assert not is_hub_id(name)


def test_a_local_folder_wins_over_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert not is_hub_id("org/name")
    assert is_hub_id("org/other")


def test_a_non_id_is_a_user_error() -> None:
    with pytest.raises(HarnessError, match="'a/b/c' is not a hub ID"):
        resolve_hub_model("a/b/c")
