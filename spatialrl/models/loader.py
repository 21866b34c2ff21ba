"""One loader for every model SpatialRL uses, tiny or real, and never a download at run time.

A model is named in one of three ways, all resolved by `resolve_model_path(name_or_path, kind)` to a local
folder in the standard Hugging Face (`kind="qwen"`) or diffusers (`kind="flux"`) layout:
- a local folder: used as is, after checking it holds `config.json` (qwen) or `model_index.json` (flux);
- a preset from `PRESETS`: `tiny` builds the random fixtures of `spatialrl.models.fixtures` once into
  `$SPATIALRL_CACHE/fixtures/` (default `~/.cache/spatialrl`); `full` names the paper's models;
- a hub id such as `Qwen/Qwen2.5-VL-7B-Instruct`: looked up in `$SPATIALRL_MODELS/<name>` (default
  `$SPATIALRL_CACHE/models/<name>`), then in the local Hugging Face cache. If it is in neither,
  `ModelNotFoundError` says which command to run, on a machine with internet access, and where to put
  the result.

Weights load from safetensors only (`use_safetensors=True`, and `check_safe_weights` before every load): a
pickled `.bin` / `.pt` file can run code when unpickled, so a folder whose weights exist only in that form is
refused unless `SPATIALRL_ALLOW_PICKLED_WEIGHTS=1` is set (or `allow_pickle=True` passed), which names the risk:
only for files from a source you trust as much as the code you run.

Importing this module forces offline mode (HF_HUB_OFFLINE=1 and friends): cluster nodes have no network, and
a silent multi-GB download in the middle of a Ray job is worse than a clear error at start-up.

Usage:
    from spatialrl.models.loader import load_flux_pipeline, load_vl_model, load_vl_processor
    processor = load_vl_processor("tiny")          # or "full", "Qwen/Qwen2.5-VL-7B-Instruct", "/models/qwen"
    model = load_vl_model("tiny", dtype=torch.bfloat16)
    pipe = load_flux_pipeline("black-forest-labs/FLUX.1-dev", dtype=torch.bfloat16)
"""

from __future__ import annotations

import os
import sys

# Before anything imports huggingface_hub, which reads these once at import time.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"
if "huggingface_hub" in sys.modules:  # imported earlier by someone else: flip the constant it already read
    sys.modules["huggingface_hub"].constants.HF_HUB_OFFLINE = True

import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Literal  # noqa: E402

import torch  # noqa: E402

from spatialrl.config import REPO_ROOT  # noqa: E402
from spatialrl.models import fixtures  # noqa: E402

Kind = Literal["qwen", "flux"]
KINDS = ("qwen", "flux")


class ModelNotFoundError(FileNotFoundError):
    """A model name or folder that cannot be resolved locally. The message says how to fix it.

    Built from a single message string so that it pickles across Ray workers unchanged.
    """

    def __init__(self, message: str):
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (str(self),))

    def __str__(self) -> str:
        return self.args[0] if self.args else ""


class UnsafeWeightsError(ModelNotFoundError):
    """A model folder whose weights exist only as pickle files (.bin / .pt / ...); the message names them."""


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
ALLOW_PICKLE_ENV = "SPATIALRL_ALLOW_PICKLED_WEIGHTS"


def pickle_allowed(allow_pickle: bool | None = None) -> bool:
    return os.environ.get(ALLOW_PICKLE_ENV, "") == "1" if allow_pickle is None else bool(allow_pickle)


def check_safe_weights(folder: str | os.PathLike, *, allow_pickle: bool | None = None) -> Path:
    """Refuse a model, adapter or pipeline folder where some (sub)folder holds pickled weights and no
    safetensors file: loading it would unpickle them. Returns the folder."""
    folder = Path(folder)
    if pickle_allowed(allow_pickle) or not folder.is_dir():
        return folder
    unsafe = []
    for d in [folder, *(p for p in folder.iterdir() if p.is_dir())]:
        pickled = sorted(p.name for p in d.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())
        if pickled and not any(p.suffix == ".safetensors" for p in d.iterdir()):
            unsafe += [str(d / n) for n in pickled]
    if unsafe:
        raise UnsafeWeightsError(
            f"{folder} holds weights only as pickle files ({', '.join(unsafe[:4])}"
            f"{' ...' if len(unsafe) > 4 else ''}); unpickling a file can run arbitrary code, so SpatialRL loads "
            f"safetensors only. Convert them (e.g. load once where you trust the file and save_pretrained with "
            f"safe_serialization=True), or, if you trust the file as much as this code, set "
            f"{ALLOW_PICKLE_ENV}=1 to load it anyway."
        )
    return folder


# ------------------------------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Fixture:
    """A random tiny model built on first use by `spatialrl.models.fixtures` and cached."""

    name: str


@dataclass(frozen=True)
class Hub:
    """A Hugging Face hub id; must already be on disk (see `resolve_model_path`)."""

    repo_id: str


@dataclass(frozen=True)
class RepoDir:
    """A folder inside this repository (relative to its root), e.g. small trained weights under `assets/`."""

    path: str


# name -> {kind -> source}. Extension point: add a preset as one more entry, e.g.
#     "tiny-pretrained": {"qwen": RepoDir("assets/tiny-pretrained/qwen2_5_vl"),
#                         "flux": RepoDir("assets/tiny-pretrained/flux")},
#     "small": {"qwen": Hub("Qwen/Qwen2.5-VL-3B-Instruct"), "flux": ...},
# A RepoDir that does not exist raises ModelNotFoundError naming the folder.
PRESETS: dict[str, dict[str, Fixture | Hub | RepoDir]] = {
    "tiny": {"qwen": Fixture("tiny-qwen2_5_vl"), "flux": Fixture("tiny-flux")},
    # pretrained on the spatial world and shipped in the repository (jobs.pretrain_backbone,
    # jobs.pretrain_generator): the stand-ins for downloaded Qwen2.5-VL-7B and FLUX.1-dev.
    "tiny-pretrained": {"qwen": RepoDir("assets/tiny-pretrained/qwen2_5_vl"),
                        "flux": RepoDir("assets/tiny-pretrained/flux")},
    "full": {"qwen": Hub("Qwen/Qwen2.5-VL-7B-Instruct"), "flux": Hub("black-forest-labs/FLUX.1-dev")},
}

FIXTURE_BUILDERS = {
    "tiny-qwen2_5_vl": ("qwen", fixtures.build_tiny_qwen2_5_vl),
    "tiny-flux": ("flux", fixtures.build_tiny_flux),
}

# What the hub's gated repos need before `hf download` works.
_GATED = {"black-forest-labs/FLUX.1-dev": "accept the licence at https://huggingface.co/black-forest-labs/FLUX.1-dev"}

_KNOWN_HUB_IDS = {src.repo_id for sources in PRESETS.values() for src in sources.values() if isinstance(src, Hub)}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


# --------------------------------------------------------------------------------------------- directories


def cache_dir() -> Path:
    """SpatialRL's own cache (fixtures, and by default local model copies): `$SPATIALRL_CACHE`."""
    return Path(os.environ.get("SPATIALRL_CACHE") or "~/.cache/spatialrl").expanduser()


def models_dir() -> Path:
    """Where `hf download --local-dir` copies of hub models are looked up: `$SPATIALRL_MODELS`."""
    return Path(os.environ.get("SPATIALRL_MODELS") or cache_dir() / "models").expanduser()


def _hf_hub_cache() -> Path:
    # Read at call time, not from huggingface_hub.constants (frozen at import), so HF_HOME / HF_HUB_CACHE set
    # later (a test, a Ray runtime_env) are honoured.
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


# ---------------------------------------------------------------------------------------------- resolution


def resolve_model_path(name_or_path: str | os.PathLike, kind: Kind) -> Path:
    """Turn a folder, preset name or hub id into a local model folder of the given kind; never downloads.

    Raises ModelNotFoundError with the fix when the model is not on disk or the folder is incomplete.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        return _check_folder(path, kind)
    if name in PRESETS:
        sources = PRESETS[name]
        if kind not in sources:
            raise ModelNotFoundError(f"Preset {name!r} defines no {kind} model; it defines {sorted(sources)}.")
        return _resolve_source(sources[kind], kind, preset=name)
    if path.exists():
        raise ModelNotFoundError(f"{path} is a file; a {kind} model is a folder ({_expected_file(kind)} inside).")
    looks_like_path = isinstance(name_or_path, os.PathLike) or name.startswith(("/", ".", "~")) or name.count("/") > 1
    if not looks_like_path and _HUB_ID.fullmatch(name):
        return _resolve_hub(name, kind)
    if looks_like_path:
        raise ModelNotFoundError(f"{kind} model folder {path.resolve()} does not exist (given as {name!r}).")
    raise ModelNotFoundError(
        f"Cannot find {kind} model {name!r}: it is not an existing folder, a preset ({', '.join(sorted(PRESETS))}) "
        f"or a hub id like 'owner/name'. Pass a folder holding {_expected_file(kind)}."
    )


def _expected_file(kind: Kind) -> str:
    return "config.json" if kind == "qwen" else "model_index.json"


def _check_folder(path: Path, kind: Kind) -> Path:
    """A folder must look like the kind asked for; say what is missing and what the folder looks like instead."""
    need = _expected_file(kind)
    if not (path / need).is_file():
        hint = ""
        if kind == "qwen" and (path / "model_index.json").is_file():
            hint = " It holds model_index.json, so it looks like a diffusers pipeline (a flux model), not Qwen."
        elif kind == "flux" and (path / "config.json").is_file():
            hint = " It holds config.json, so it looks like a transformers model (qwen), not a diffusers pipeline."
        raise ModelNotFoundError(
            f"{path} is not a {kind} model folder: {need} is missing.{hint} "
            f"Pass the folder that `save_pretrained` or `hf download --local-dir` produced."
        )
    if kind == "flux":
        index = json.loads((path / "model_index.json").read_text())
        missing = [
            k for k, v in index.items()
            if not k.startswith("_") and isinstance(v, list) and v[0] is not None and not (path / k).is_dir()
        ]
        if missing:
            raise ModelNotFoundError(
                f"{path} is an incomplete diffusers pipeline: model_index.json lists {missing} but those "
                f"subfolders are missing. Copy the whole folder (all subfolders) again."
            )
    return path


def _resolve_source(source: Fixture | Hub | RepoDir, kind: Kind, preset: str) -> Path:
    if isinstance(source, Fixture):
        return _check_folder(ensure_fixture(source.name), kind)
    if isinstance(source, Hub):
        return _resolve_hub(source.repo_id, kind)
    if isinstance(source, RepoDir):
        path = REPO_ROOT / source.path
        if not path.is_dir():
            raise ModelNotFoundError(
                f"Preset {preset!r} expects its {kind} model in {path} (repo-relative {source.path!r}), which "
                f"does not exist. Create that folder (save_pretrained of the model) or pass another model."
            )
        return _check_folder(path, kind)
    raise TypeError(f"unknown preset source {source!r}")


def _resolve_hub(repo_id: str, kind: Kind) -> Path:
    """$SPATIALRL_MODELS/<name> first, then the local Hugging Face cache; else explain how to get it."""
    local = models_dir() / repo_id.split("/")[-1]
    if local.is_dir():
        return _check_folder(local, kind)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    hub_cache = _hf_hub_cache()
    try:
        snapshot = snapshot_download(repo_id, local_files_only=True, cache_dir=str(hub_cache))
    except (LocalEntryNotFoundError, FileNotFoundError):
        snapshot = None
    if snapshot is not None:
        return _check_folder(Path(snapshot), kind)
    gated = f"First {_GATED[repo_id]} and run `hf auth login`; then r" if repo_id in _GATED else "R"
    raise ModelNotFoundError(
        f"Model {repo_id!r} ({kind}) is not on this machine, and SpatialRL never downloads at run time "
        f"(HF_HUB_OFFLINE=1).\n"
        f"Looked in: {local} and the Hugging Face cache {hub_cache}.\n"
        f"{gated}un this on a machine with internet access:\n"
        f"    hf download {repo_id} --local-dir {local}\n"
        f"(older huggingface_hub: `huggingface-cli download {repo_id} --local-dir {local}`)\n"
        f"and copy the folder to {local} on every node (or set SPATIALRL_MODELS to where it lives). "
        f"Then {repo_id!r} resolves to it; alternatively pass the folder's path instead of the hub id."
        + (f"\n(If {repo_id!r} was meant as a folder: {Path(repo_id).resolve()} does not exist.)"
           if repo_id not in _KNOWN_HUB_IDS else "")
    )


# -------------------------------------------------------------------------------------------------- fixtures


def _fixture_ready(path: Path, kind: str) -> bool:
    try:
        stamp = json.loads((path / fixtures.STAMP_FILE).read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("kind") == kind and stamp.get("version") == fixtures.FIXTURE_VERSION


def ensure_fixture(name: str) -> Path:
    """Build the named fixture once into `$SPATIALRL_CACHE/fixtures/<name>` and return that folder.

    Safe for concurrent processes (Ray workers on one node): each builds into its own temporary folder and
    renames it into place atomically; the loser of the race keeps the winner's copy. A copy whose stamp
    does not match the current fixture recipe is replaced.
    """
    kind, build = FIXTURE_BUILDERS[name]
    final = cache_dir() / "fixtures" / name
    if _fixture_ready(final, kind):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.building.", dir=final.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared by every process of this user
        for _ in range(5):
            try:
                os.rename(tmp, final)  # atomic; fails if `final` exists and is not empty
                return final
            except OSError:
                if _fixture_ready(final, kind):
                    return final
                stale = final.parent / f".{name}.stale.{uuid.uuid4().hex}"
                try:
                    os.rename(final, stale)
                except FileNotFoundError:
                    pass
                shutil.rmtree(stale, ignore_errors=True)
        raise RuntimeError(f"could not install fixture {name} at {final}; remove that folder and retry")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- loaders


def load_vl_processor(
    name_or_path: str | os.PathLike,
    *,
    padding_side: Literal["left", "right"] = "left",
    min_pixels: int | None = None,
    max_pixels: int | None = None,
):
    """The Qwen2.5-VL processor (tokenizer + image processor + chat template) of a folder, preset or hub id.

    `padding_side` defaults to left for every model (the real tokenizer pads right), so that "the last
    token" is position -1 for tiny and real alike. `min_pixels` / `max_pixels` override the image
    resolution range (equal values fix the number of image tokens).
    """
    from transformers import AutoProcessor

    path = resolve_model_path(name_or_path, "qwen")
    processor = AutoProcessor.from_pretrained(path)
    if not hasattr(processor, "image_processor"):
        # AutoProcessor quietly falls back to a bare tokenizer when no processor config is found.
        raise ModelNotFoundError(
            f"{path} has no image processor (AutoProcessor returned {type(processor).__name__}); the folder needs "
            f"processor_config.json or preprocessor_config.json with the Qwen2-VL image processor settings."
        )
    processor.tokenizer.padding_side = padding_side
    if min_pixels is not None:
        processor.image_processor.size["shortest_edge"] = min_pixels
    if max_pixels is not None:
        processor.image_processor.size["longest_edge"] = max_pixels
    return processor


def load_vl_model(
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    model_cls: type | None = None,
    **kwargs,
):
    """`model_cls.from_pretrained(folder, dtype=dtype, **kwargs)`; default Qwen2_5_VLForConditionalGeneration.

    Pass e.g. `model_cls=Qwen2_5_VLModel` for the backbone alone (lm_head is then reported as unused).
    The model comes back in eval mode.
    """
    if model_cls is None:
        from transformers import Qwen2_5_VLForConditionalGeneration as model_cls
    path = check_safe_weights(resolve_model_path(name_or_path, "qwen"))
    kwargs.setdefault("use_safetensors", None if pickle_allowed() else True)
    return model_cls.from_pretrained(path, dtype=dtype, **kwargs)


def load_flux_pipeline(name_or_path: str | os.PathLike, *, dtype: torch.dtype = torch.float32, **kwargs):
    """`FluxPipeline.from_pretrained(folder, dtype=dtype, **kwargs)` for a folder, preset or hub id."""
    from diffusers import FluxPipeline

    path = check_safe_weights(resolve_model_path(name_or_path, "flux"))
    kwargs.setdefault("use_safetensors", None if pickle_allowed() else True)
    return FluxPipeline.from_pretrained(path, dtype=dtype, **kwargs)
