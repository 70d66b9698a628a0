"""Frozen specs read by planner, trainer and service, and the catalog of presets."""

from gigafactory.spec.catalog import (
    list_clusters,
    list_hardware,
    list_models,
    load_cluster,
    load_hardware,
    load_model,
)
from gigafactory.spec.hardware import ClusterSpec, HardwareSpec
from gigafactory.spec.layout import LayoutSpec
from gigafactory.spec.model import ModelSpec

__all__ = [
    "ClusterSpec",
    "HardwareSpec",
    "LayoutSpec",
    "ModelSpec",
    "list_clusters",
    "list_hardware",
    "list_models",
    "load_cluster",
    "load_hardware",
    "load_model",
]
