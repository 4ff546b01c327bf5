"""The owner's public bundle: what the client needs of the model to prepare its input, never weights.

    bundle = build_public_bundle(model, tokenizer)   # party 0, from its own model folder
    install_public_bundle(bundle, folder)            # party 1 keeps it, e.g. <out>/public-bundle/
    tokenizer, bundle = load_public_bundle(folder)   # party 1: its only source of the tokenizer

A bundle is the model's tokenizer files (as ``save_pretrained`` writes them) and the public
architecture facts the client checks its input against (:data:`FACTS`: vocabulary size,
positions, token types, labels, family and padding id). Both are public by design: the encrypted
forward reveals the architecture to the client anyway. Folder layout:

    bundle.json     {"format": 1, "facts": {...}, "files": {name: sha256}, "digest": sha256}
    tokenizer/      the tokenizer files
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpcformer.errors import UserError

__all__ = [
    "FACTS", "PublicBundle", "build_public_bundle", "install_public_bundle", "read_public_bundle",
    "load_public_bundle", "bundle_tokenizer",
]

#: Architecture facts of the model (its transformers config) that the bundle carries.
FACTS = ("model_type", "vocab_size", "max_position_embeddings", "type_vocab_size", "num_labels", "pad_token_id")
_FORMAT = 1
_MANIFEST = "bundle.json"
_TOKENIZER = "tokenizer"


@dataclass(frozen=True)
class PublicBundle:
    """Public facts of the owner's model and its tokenizer files (name -> bytes)."""

    facts: dict[str, Any]
    files: dict[str, bytes] = field(repr=False)

    @property
    def digest(self) -> str:
        """sha256 of the facts and the files: equal bundles, equal digests."""
        h = hashlib.sha256(json.dumps(self.facts, sort_keys=True).encode())
        for name in sorted(self.files):
            h.update(name.encode() + b"\0" + hashlib.sha256(self.files[name]).digest())
        return h.hexdigest()

    def manifest(self) -> dict[str, Any]:
        files = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(self.files.items())}
        return {"format": _FORMAT, "facts": self.facts, "files": files, "digest": self.digest}


def build_public_bundle(model: Any, tokenizer: Any) -> PublicBundle:
    """Party 0: the bundle of ``model`` (a transformers model; only its config is read) and its tokenizer."""
    facts = {key: getattr(model.config, key, None) for key in FACTS}
    with tempfile.TemporaryDirectory(prefix="mpcformer-bundle-") as tmp:
        tokenizer.save_pretrained(tmp)
        files = {path.name: path.read_bytes() for path in sorted(Path(tmp).iterdir()) if path.is_file()}
    return PublicBundle(facts, files)


def _safe_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise UserError(f"the owner's public bundle names a file {name!r}: not a plain file name")
    return name


def _write(bundle: PublicBundle, folder: Path) -> None:
    (folder / _TOKENIZER).mkdir(parents=True)
    for name, data in bundle.files.items():
        (folder / _TOKENIZER / _safe_name(name)).write_bytes(data)
    (folder / _MANIFEST).write_text(json.dumps(bundle.manifest(), indent=2, sort_keys=True) + "\n")


def read_public_bundle(folder: str | Path) -> PublicBundle:
    """The bundle kept in ``folder``; UserError when it is missing or its files do not match its manifest."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / _MANIFEST).read_text())
        files = {name: (folder / _TOKENIZER / _safe_name(name)).read_bytes() for name in manifest["files"]}
        bundle = PublicBundle(manifest["facts"], files)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"no readable public bundle in {folder} ({type(err).__name__}: {err})") from None
    if manifest.get("format") != _FORMAT or bundle.digest != manifest.get("digest"):
        raise UserError(f"the public bundle in {folder} does not match its manifest {_MANIFEST}: remove the folder")
    return bundle


def install_public_bundle(bundle: PublicBundle, folder: str | Path) -> Path:
    """Keep ``bundle`` in ``folder`` (written whole, then renamed); an identical bundle there is kept.

    A different bundle already there is refused: the folder belongs to a run of another model.
    """
    folder = Path(folder)
    if folder.exists():
        kept = read_public_bundle(folder)
        if kept.digest != bundle.digest:
            raise UserError(
                f"{folder} holds the public bundle of another model (digest {kept.digest[:12]}, the owner "
                f"published {bundle.digest[:12]}): use a new output folder"
            )
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        _write(bundle, staging / "bundle")
        (staging / "bundle").rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def bundle_tokenizer(bundle: PublicBundle) -> Any:
    """The bundle's tokenizer, loaded from a private temporary copy of its files."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="mpcformer-bundle-") as tmp:
        _write(bundle, Path(tmp) / "bundle")
        try:
            return AutoTokenizer.from_pretrained(str(Path(tmp) / "bundle" / _TOKENIZER))
        except (OSError, ValueError) as err:
            raise UserError(f"the owner's public bundle holds no loadable tokenizer: {err}") from None


@functools.lru_cache(maxsize=4)
def _load(folder: str, digest: str) -> tuple[Any, PublicBundle]:
    bundle = read_public_bundle(folder)
    if bundle.digest != digest:
        raise UserError(f"the public bundle in {folder} changed during the run: use a new output folder")
    return bundle_tokenizer(bundle), bundle


def load_public_bundle(folder: str | Path, digest: str) -> tuple[Any, PublicBundle]:
    """``(tokenizer, bundle)`` from the bundle kept in ``folder``, which must have ``digest`` (cached)."""
    return _load(str(folder), digest)
