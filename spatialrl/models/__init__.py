"""Model loading for SpatialRL: one loader for tiny fixtures and real checkpoints (see `loader`), and the
random tiny Qwen2.5-VL / Flux fixtures that tests and the `tiny` preset use (see `fixtures`).

Importing this package forces Hugging Face offline mode; nothing is downloaded at run time.
"""

from spatialrl.models.loader import (
    PRESETS,
    ModelNotFoundError,
    ensure_fixture,
    load_flux_pipeline,
    load_vl_model,
    load_vl_processor,
    resolve_model_path,
)
from spatialrl.models.fixtures import build_tiny_flux, build_tiny_qwen2_5_vl

__all__ = [
    "PRESETS",
    "ModelNotFoundError",
    "build_tiny_flux",
    "build_tiny_qwen2_5_vl",
    "ensure_fixture",
    "load_flux_pipeline",
    "load_vl_model",
    "load_vl_processor",
    "resolve_model_path",
]
