"""The catalog of presets: one YAML file per model, accelerator and cluster.

A name resolves to ``catalog/<kind>/<name>.yaml``; a path to any readable YAML file is
accepted too, so users add their own presets without touching the package.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

from gigafactory.errors import SpecError, UnknownPresetError
from gigafactory.spec.hardware import ClusterSpec, HardwareSpec
from gigafactory.spec.model import ModelSpec

CATALOG = Path(__file__).parent / "catalog"


def _names(kind: str) -> list[str]:
    return sorted(p.stem for p in (CATALOG / kind).glob("*.yaml"))


def _read(kind: str, name: str) -> dict[str, Any]:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        source = path
    else:
        source = CATALOG / kind / f"{name}.yaml"
        if not source.is_file():
            raise UnknownPresetError(kind.rstrip("s"), name, _names(kind))
    try:
        data = yaml.safe_load(source.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(kind.rstrip("s"), "file", f"{source} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError(kind.rstrip("s"), "file", f"{source} must hold a mapping of fields")
    data.setdefault("name", path.stem if source == path else name)
    return data


@cache
def load_model(name: str) -> ModelSpec:
    """A model preset by name (e.g. ``grok-1``) or from a YAML file path."""
    return ModelSpec.from_dict(_read("models", name))


@cache
def load_hardware(name: str) -> HardwareSpec:
    """An accelerator preset by name (e.g. ``h100-sxm``) or from a YAML file path."""
    return HardwareSpec.from_dict(_read("hardware", name))


@cache
def load_cluster(name: str) -> ClusterSpec:
    """A cluster preset by name (e.g. ``colossus``) or from a YAML file path."""
    cluster = ClusterSpec.from_dict(_read("clusters", name))
    load_hardware(cluster.gpu)  # fail early on an unknown accelerator
    return cluster


def list_models() -> list[str]:
    return _names("models")


def list_hardware() -> list[str]:
    return _names("hardware")


def list_clusters() -> list[str]:
    return _names("clusters")
