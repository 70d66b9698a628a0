"""Atomic, verified checkpoints with torch.distributed.checkpoint (DCP).

A checkpoint is a folder ``checkpoints/step_NNNNNNNN`` holding DCP's files (one per rank plus
``.metadata``) and ``manifest.json``: the step, the model spec and data it belongs to, and the
size and SHA-256 of every file. It is written as ``.tmp-step_NNNNNNNN``, the manifest last,
every file fsync'ed, then renamed into place in one ``rename`` (atomic on POSIX file systems).
So a crash mid-write leaves only a ``.tmp-*`` folder, which never loads; a folder whose
manifest is missing or whose files do not match it is skipped with a warning, and the run
resumes from the newest checkpoint that verifies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from gigafactory.train.errors import CheckpointError
from gigafactory.train.parallelize import Runtime

MANIFEST = "manifest.json"
PREFIX = "step_"
TMP_PREFIX = ".tmp-"
FORMAT = 1
DESCRIPTIVE = ("name", "source", "tokenizer")  # spec fields that do not change the weights


@contextlib.contextmanager
def quiet_single_process() -> Iterator[None]:
    """DCP warns that it runs without a process group; for one process that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def step_dir_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path, step: int, identity: dict[str, Any]) -> dict[str, Any]:
    """Checksum every file of ``folder`` and write the manifest (the completion marker)."""
    files = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name != MANIFEST:
            with p.open("rb") as f:
                os.fsync(f.fileno())
            files[p.name] = {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
    manifest = {
        "format": FORMAT,
        "step": step,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
        "files": files,
        **identity,
    }
    tmp = folder / f"{MANIFEST}.tmp"
    with tmp.open("w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(folder / MANIFEST)
    _fsync_dir(folder)
    return manifest


def verify(folder: Path) -> tuple[dict[str, Any] | None, str]:
    """(manifest, "") if ``folder`` is a complete checkpoint, else (None, the reason)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return None, "no manifest.json (the write never finished)"
    except (OSError, json.JSONDecodeError) as exc:
        return None, f"unreadable manifest.json ({exc})"
    files = manifest.get("files") or {}
    if ".metadata" not in files:
        return None, "the manifest lists no DCP .metadata"
    for name, expect in files.items():
        p = folder / name
        if not p.is_file():
            return None, f"{name} is missing"
        if p.stat().st_size != expect["bytes"]:
            return None, f"{name} has {p.stat().st_size} bytes, the manifest says {expect['bytes']}"
        if file_sha256(p) != expect["sha256"]:
            return None, f"{name} fails its SHA-256 checksum (corrupted)"
    return manifest, ""


def identity_mismatch(manifest: dict[str, Any], identity: dict[str, Any]) -> str:
    """'' if the checkpoint belongs to this run's model and data, else what differs."""
    theirs, ours = manifest.get("model", {}), identity["model"]
    diffs = [
        f"{k}: {theirs.get(k)!r} ≠ {ours.get(k)!r}"
        for k in ours
        if k not in DESCRIPTIVE and theirs.get(k) != ours[k]
    ]
    if diffs:
        return (
            f"was written for model '{theirs.get('name')}' ({'; '.join(diffs[:3])}); resume "
            f"with --model {theirs.get('name')}, or give this run a new --out directory"
        )
    if manifest.get("data") != identity["data"]:
        return (
            f"was trained on other data ({manifest.get('corpus')}); pass the same --data, "
            "or give this run a new --out directory"
        )
    return ""


class Checkpointer:
    """Saves and finds checkpoints under ``root`` for one run (model spec + data identity)."""

    def __init__(
        self,
        root: Path,
        runtime: Runtime,
        identity: dict[str, Any],
        keep: int = 3,
        restart: bool = False,
    ):
        self.root, self.runtime, self.identity, self.keep = root, runtime, identity, keep
        self.restart = restart
        self._verified: dict[str, str] = {}  # folder name -> '' (complete) or why it is not

    def complete(self) -> list[Path]:
        """Step folders, newest first (not yet verified)."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write ``state`` (every rank calls this) and publish it atomically; returns its path."""
        final, tmp = (
            self.root / step_dir_name(step),
            self.root / f"{TMP_PREFIX}{step_dir_name(step)}",
        )
        if self.runtime.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.runtime.barrier()
        with quiet_single_process():
            dcp.save(state, checkpoint_id=tmp)
        self.runtime.barrier()
        if self.runtime.is_main:
            write_manifest(tmp, step, self.identity)
            self._verified[final.name] = ""  # just written and checksummed
            if final.exists():  # a stale or corrupt folder of the same step: move it aside
                trash = self.root / f"{TMP_PREFIX}old-{final.name}"
                shutil.rmtree(trash, ignore_errors=True)
                final.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
            tmp.rename(final)
            _fsync_dir(self.root)
            self._prune()
        self.runtime.barrier()
        return final

    def _check(self, folder: Path) -> str:
        """'' if ``folder`` verifies, else the reason; each folder is checksummed once."""
        if folder.name not in self._verified:
            self._verified[folder.name] = verify(folder)[1]
        return self._verified[folder.name]

    def _prune(self) -> None:
        """Keep the newest ``keep`` checkpoints that verify. Older verified ones go, and so do
        corrupt ones older than the newest good one (they can never be resumed); a corrupt
        one newer than every good one stays for the user to look at, and never counts
        towards ``keep``, so it can never push a verified checkpoint out."""
        good = 0
        for folder in self.complete():
            ok = not self._check(folder)
            if (ok and good >= self.keep) or (not ok and good > 0):
                shutil.rmtree(folder, ignore_errors=True)
                self._verified.pop(folder.name, None)
            good += ok

    def latest(self) -> tuple[Path | None, list[str]]:
        """The newest checkpoint that verifies, and a warning for each one skipped.

        Rank 0 looks and tells the others. A verified checkpoint of another model or other
        data raises ``CheckpointError`` (resuming it would be wrong, skipping it would hide it).
        """
        found: list[Any] = [None, [], ""]
        if self.runtime.is_main:
            found = self._scan()
        if self.runtime.distributed:
            dist.broadcast_object_list(found, src=0)
        path, warnings, error = found
        if error:
            raise CheckpointError(error)
        return (Path(path) if path else None), warnings

    def _scan(self) -> list[Any]:
        warnings: list[str] = []
        if self.root.is_dir():
            for stale in sorted(self.root.glob(f"{TMP_PREFIX}*")):
                warnings.append(f"removed partial checkpoint {stale} (a write that never finished)")
                shutil.rmtree(stale, ignore_errors=True)
        corrupt = []
        for folder in self.complete():
            manifest, reason = verify(folder)
            self._verified[folder.name] = reason
            if manifest is None:
                warnings.append(f"skipped checkpoint {folder}: {reason}")
                corrupt.append(folder)
                continue
            mismatch = identity_mismatch(manifest, self.identity)
            if mismatch:
                return [None, warnings, f"checkpoint {folder} {mismatch}"]
            return [str(folder), warnings, ""]
        if corrupt and not self.restart:
            names = ", ".join(f.name for f in corrupt)
            return [
                None,
                warnings,
                f"every checkpoint in {self.root} fails verification ({names}); restore them, "
                "or pass --restart to delete them and train from step 0",
            ]
        for folder in corrupt:
            shutil.rmtree(folder, ignore_errors=True)
            self._verified.pop(folder.name, None)
            warnings.append(f"deleted corrupt checkpoint {folder} (--restart)")
        return [None, warnings, ""]

    def load(self, path: Path, state: dict[str, Any]) -> None:
        """Fill ``state`` in place from the checkpoint at ``path`` (every rank calls this)."""
        with quiet_single_process():
            dcp.load(state, checkpoint_id=path)
