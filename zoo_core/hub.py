"""Files in the Hugging Face Hub cache: found offline first, downloaded only when online.

The one place Zoo talks to ``huggingface_hub``: timm's hub-hosted weights, ``hf-hub:`` repos
and their ``config.json`` all come through here. A download first checks that the hub answers
(:mod:`zoo_core.network`), so a machine with no network fails in seconds with one line.
"""

from __future__ import annotations

from pathlib import Path

from . import network, paths
from .errors import OfflineError, WeightsError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's save_for_hf writes


def cached(repo_id: str, filename: str, revision: str | None) -> Path | None:
    """The cached file of ``repo_id`` at ``revision`` (default ``main``), or ``None``."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=str(paths.hf_hub_cache()), revision=revision or "main")
    return Path(found) if isinstance(found, str) else None


def download(repo_id: str, filename: str, revision: str | None, *, name: str) -> Path:
    """Download one file into the hub cache; ``name`` is the model it is for, in messages."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    endpoint = network.hf_endpoint()
    network.require_reachable(endpoint, name=name, what=f"{repo_id}/{filename}")
    try:
        with network.hf_retries_at_debug():
            return Path(
                hf_hub_download(repo_id, filename, revision=revision, cache_dir=str(paths.hf_hub_cache()), endpoint=endpoint)
            )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise WeightsError(f"{name}: cannot download {repo_id}/{filename}: {str(exc).splitlines()[0]}") from None


def fetch(repo_id: str, filename: str, revision: str | None, *, name: str) -> Path:
    """The cached file, or a download when the environment is online."""
    found = cached(repo_id, filename, revision)
    if found is not None:
        return found
    if paths.is_offline():
        raise OfflineError(
            f"{name}: {filename} (revision {revision or 'main'}) is not in the hub cache {paths.hf_hub_cache()} and offline "
            f"mode (ZOO_OFFLINE / HF_HUB_OFFLINE) forbids downloading; run `zoo pull {name}` on a connected machine"
        )
    return download(repo_id, filename, revision, name=name)


def weights_filename(repo_id: str, revision: str | None) -> str:
    """The weights file a repo has in the cache; safetensors when nothing is cached yet."""
    return next((filename for filename in WEIGHT_FILES if cached(repo_id, filename, revision) is not None), WEIGHT_FILES[0])


def revision_of(path: Path) -> str | None:
    """The commit a hub-cache file belongs to (``…/snapshots/<commit>/file``)."""
    parent = path.parent
    return parent.name if parent.parent.name == "snapshots" else None


def discard(snapshot_file: Path) -> None:
    """Remove a verified-bad hub file: its snapshot link and the blob it points to."""
    blob = snapshot_file.resolve()
    snapshot_file.unlink(missing_ok=True)
    if blob != snapshot_file:
        blob.unlink(missing_ok=True)
