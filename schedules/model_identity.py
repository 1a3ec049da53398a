"""The identity of a model's weights: what its OLSS schedules are keyed by, beyond its name.

An OLSS schedule distils the sampling paths of one network (Duan et al. 2023, arXiv:2305.14677,
Eq. 7 fits coefficients to that network's outputs), so it is wrong for other weights saved
under the same name: two folders both called ``model``, or a fine-tune saved under its base
model's name. The identity is:

- a Hugging Face hub id: ``hub:<id>@<commit>``, the commit of the snapshot of ``revision`` in
  the local Hugging Face cache (read offline); ``hub:<id>`` when the cache does not say;
- a local diffusers folder: ``local:<folder name>@<digest>``, where ``digest`` is the first 16
  hex digits of SHA-256 over the UNet's ``config.json`` and, for each UNet weights file, its
  name, its size and its first and last MiB. That reads at most 2 MiB per weights file however
  large it is, and a restart reads nothing: the identity is cached in ``OLSS_CACHE_DIR`` under
  the folder's path, keyed by the size and modification time of every file it read.

Torch-free. The stream and routing key (:func:`schedules.registry.model_key`) stays the name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_FILE = "model-identity.json"
"""File in ``OLSS_CACHE_DIR`` that remembers the identities of local folders."""
SAMPLE_BYTES = 1 << 20
"""Bytes hashed at each end of a weights file."""
DIGEST_HEX = 16
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt")
UNET_FOLDER = "unet"
UNET_CONFIG = "config.json"


def model_identity(
    source: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None,
    revision: str = "main",
) -> str:
    """The identity of the model ``source`` names (a local diffusers folder or a hub id)."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return _folder_identity(path.resolve(), None if cache_dir is None else Path(cache_dir))
    commit = _cached_commit(text, revision)
    return f"hub:{text}@{commit}" if commit else f"hub:{text}"


def identity_digest(identity: str) -> str:
    """A short digest of an identity, for file names (8 hex digits)."""
    return hashlib.sha256(identity.encode()).hexdigest()[:8]


def _cached_commit(repo_id: str, revision: str) -> str | None:
    """The commit the local Hugging Face cache resolves ``revision`` of ``repo_id`` to."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "model_index.json", revision=revision)
    except Exception as error:  # an id huggingface_hub refuses: no commit to tell
        log.debug("no cached snapshot of %s: %s", repo_id, error)
        return None
    if not isinstance(found, str):
        return None
    snapshot = Path(found).parent
    return snapshot.name if snapshot.parent.name == "snapshots" else None


def _inputs(folder: Path) -> list[Path]:
    """The files the identity of ``folder`` hashes: the UNet config, then its weights."""
    unet = folder / UNET_FOLDER
    if not unet.is_dir():
        index = folder / "model_index.json"
        return [index] if index.is_file() else []
    weights = sorted(p for p in unet.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    config = unet / UNET_CONFIG
    return ([config] if config.is_file() else []) + weights


def _stamp(files: list[Path]) -> list[list[object]]:
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _digest(files: list[Path]) -> str:
    hasher = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        hasher.update(f"{file.name}\0{size}\0".encode())
        with file.open("rb") as handle:
            if file.name == UNET_CONFIG or size <= 2 * SAMPLE_BYTES:
                hasher.update(handle.read())
            else:
                hasher.update(handle.read(SAMPLE_BYTES))
                handle.seek(size - SAMPLE_BYTES)
                hasher.update(handle.read(SAMPLE_BYTES))
    return hasher.hexdigest()[:DIGEST_HEX]


def _folder_identity(folder: Path, cache_dir: Path | None) -> str:
    files = _inputs(folder)
    stamp = _stamp(files)
    cache_path = None if cache_dir is None else cache_dir / CACHE_FILE
    cache = _read_cache(cache_path)
    known = cache.get(str(folder))
    if isinstance(known, dict) and known.get("stamp") == stamp and known.get("identity"):
        return str(known["identity"])
    identity = f"local:{folder.name}@{_digest(files)}"
    if cache_path is not None:
        cache[str(folder)] = {"stamp": stamp, "identity": identity}
        _write_cache(cache_path, cache)
    return identity


def _read_cache(path: Path | None) -> dict[str, object]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        log.warning("ignoring unreadable model identity cache %s: %s", path, error)
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, cache: dict[str, object]) -> None:
    """Write the cache atomically; a cache that cannot be written is only logged."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1), encoding="utf-8")
        tmp.replace(path)
    except OSError as error:
        log.warning("cannot write the model identity cache %s: %s", path, error)
