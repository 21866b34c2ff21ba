"""RewardWorker: the GRPO job's reward for a batch of generated images, as a plain class.

The reward is SpatialScore (`spatialrl.reward.scorer.SpatialScorer`, the one scoring path every job shares). When the
prompts carry the spatial world's structure (`objects` / `relations` from `prompts_*.jsonl`), the worker also
runs the pixel-only verifier on each image: that is the ground truth the reward model stands in for, logged next
to the reward so reward hacking shows (reward up, verifier flat). `source="verifier"` trains on the verifier's
relation accuracy instead: an oracle reward, useful to tell a weak reward model from a weak optimiser.
`actors/reward_actor.py` wraps this class in Ray.

`backend="serve"` scores through the SpatialScore Ray Serve application (`actors/reward_service.py`) by its
DeploymentHandle instead of loading the model in each worker: the workers keep the verifier, the replicas
(shared, batched, autoscaled) hold the model. A request lost with a dying replica is sent again (Serve
replaces the replica), up to `serve_retries` times, and counted (`serve_retries` in each result).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from spatialrl.config import ConfigError


SOURCES = ("spatialscore", "verifier", "verifier_margin", "verifier_presence", "verifier_strict", "verifier_dense",
           "colour")


@dataclass
class RewardConfig:
    # spatialscore: the reward model; verifier: the pixel verifier's relation accuracy (ground truth, the control);
    # verifier_margin: the verifier's signed relation margins over margin_scale, each clipped to [-1, 1] and averaged
    # (a missing object counts -1): the same ground truth, dense, so a group's images differ in reward even when they pass
    # the same relations; verifier_presence: the mean of the verifier's relation accuracy and object presence (the
    # relations are read from colour regions alone, so relation accuracy by itself pays a policy that keeps the
    # colours in place while it loses the named shapes); verifier_strict: the share of relations that hold as stated,
    # by place and with both named objects drawn in their shapes ("the red circle left of the blue square" fails
    # when the red thing is a square), so no relation is paid for a lost shape; verifier_dense: the mean of
    # verifier_strict and verifier_margin (pass / fail as stated, plus how far each relation is from flipping, so
    # images that pass the same relations still differ, and a wrong side nearly right pays more); colour: how far
    # the pixels lean toward `colour`, a reward built to be hacked (it pays for paint, not layout), for testing the
    # reward-hacking monitor
    source: Literal[SOURCES] = "spatialscore"
    margin_scale: float = 4.0  # verifier_margin: a margin this many decisive margins wide (the world's) pays 1
    colour: str = "red"  # reward.source=colour: a colour of the world's palette
    checkpoint: str = ""  # a SpatialScore checkpoint folder (jobs.train_reward's CKPT/final)
    # what GRPO is paid with SpatialScore's score s: raw = s; sigmoid = 1 / (1 + exp(-(s - threshold))), a
    # probability-like value whose differences vanish where the model is sure; binary = 1 if s > threshold else 0,
    # pass / fail like the verifier, so a group the model judges all alike carries no advantage (pairwise training
    # does not fix the score's zero: take the threshold between jobs.eval_reward's chosen and rejected means)
    transform: Literal["raw", "sigmoid", "binary"] = "raw"
    threshold: float = 0.0
    batch_size: int = 16
    # > 0: score in chunks sized by memory (this many GB of activations, spatialrl.reward.memory) instead of
    # batch_size images; e.g. the GPU memory left after the weights, times 0.8
    batch_memory_gb: float = 0.0
    device: str = "auto"
    backend: Literal["actors", "serve"] = "actors"  # serve: score through the SpatialScore Serve application
    serve_app: str = "spatialscore"  # its name; the GRPO job deploys it from `checkpoint` unless it runs already
    serve_replicas: int = 1
    serve_num_cpus: float = 0.5
    serve_num_gpus: float = 0.0
    serve_max_batch_size: int = 8  # requests (one per prompt group) per batch
    serve_retries: int = 3

    def validate(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(f"reward.source={self.source!r}: use one of {', '.join(SOURCES)}")
        if self.source == "colour":
            from data_pipeline.world import PALETTE

            if self.colour not in PALETTE:
                raise ConfigError(f"reward.colour={self.colour!r}: use one of {sorted(PALETTE)}")
        if self.backend not in ("actors", "serve"):
            raise ConfigError(f"reward.backend={self.backend!r}: use actors (a model per reward actor) or serve")
        if self.backend == "serve" and self.source != "spatialscore":
            raise ConfigError("reward.backend=serve serves SpatialScore: use it with reward.source=spatialscore")
        if self.transform not in ("raw", "sigmoid", "binary"):
            raise ConfigError(f"reward.transform={self.transform!r}: use raw, sigmoid or binary")
        if self.transform != "raw" and self.source != "spatialscore":
            raise ConfigError(f"reward.transform={self.transform} shapes SpatialScore's score: use it with "
                              f"reward.source=spatialscore (or set reward.transform=raw)")
        if self.serve_replicas < 1 or self.serve_max_batch_size < 1 or self.serve_retries < 0:
            raise ConfigError("reward.serve_replicas and serve_max_batch_size must be >= 1, serve_retries >= 0")
        if self.source == "spatialscore" and not self.checkpoint:
            raise ConfigError(
                "reward.checkpoint is empty: point it at a SpatialScore checkpoint (jobs.train_reward writes "
                "CKPT/final), e.g. --set reward.checkpoint=runs/demo/reward/final"
            )
        if not self.margin_scale > 0:
            raise ConfigError(f"reward.margin_scale={self.margin_scale}: must be > 0, e.g. 4")
        if self.batch_size < 1:
            raise ConfigError(f"reward.batch_size={self.batch_size}: need at least 1")
        if not self.batch_memory_gb >= 0:
            raise ConfigError(f"reward.batch_memory_gb={self.batch_memory_gb}: 0 (fixed reward.batch_size) or the GB "
                              f"of activations a scoring chunk may use, e.g. 20")


class RewardWorker:
    """Scores images for their prompts: SpatialScore (or the verifier) plus verifier metrics when known."""

    def __init__(self, cfg: RewardConfig):
        cfg.validate()
        self.cfg = cfg
        self.scorer = None
        if cfg.backend == "serve":
            self.scorer = ServeScorer(cfg.serve_app, cfg.serve_retries)
        elif cfg.source == "spatialscore":
            from spatialrl.reward.scorer import SpatialScorer

            budget = int(cfg.batch_memory_gb * 2**30) if cfg.batch_memory_gb > 0 else None
            self.scorer = SpatialScorer.from_checkpoint(cfg.checkpoint, device=cfg.device, batch_size=cfg.batch_size,
                                                        max_batch_bytes=budget)

    def score(self, images: np.ndarray, rows: list[dict]) -> dict[str, np.ndarray]:
        """images `[N, H, W, 3]` uint8, rows: one dict per image (`prompt`, optional `objects`/`relations`).

        Returns float32 arrays `[N]`: `reward`, `spatialscore` (NaN with the verifier source),
        `relation_accuracy` and `object_presence` (NaN where the prompt has no structure).
        """
        from data_pipeline.verifier import margins_for, relation_margins, verify

        if len(images) != len(rows):
            raise ValueError(f"{len(images)} images for {len(rows)} prompt rows")
        n = len(images)
        rel = np.full(n, np.nan, dtype=np.float32)
        pres = np.full(n, np.nan, dtype=np.float32)
        dense = np.full(n, np.nan, dtype=np.float32)
        strict = np.full(n, np.nan, dtype=np.float32)
        margins = margins_for(images.shape[1]) if n else None
        for i, (img, row) in enumerate(zip(images, rows)):
            if row.get("objects"):
                res = verify(img, row["objects"], row.get("relations") or [], margins)
                rel[i] = np.mean(res.relations_hold) if res.relations_hold else np.nan
                pres[i] = np.mean(res.objects_present)
                if res.relations_hold:
                    strict[i] = np.mean(res.holds_as_stated(row["relations"]))
                if self.cfg.source in ("verifier_margin", "verifier_dense") and row.get("relations"):
                    dense[i] = np.mean(np.clip(relation_margins(img, row["objects"], row["relations"], margins)
                                               / self.cfg.margin_scale, -1, 1))
        if self.scorer is not None:
            score = self.scorer.score([r["prompt"] for r in rows], list(images)).astype(np.float32)
            reward = shape_score(score, self.cfg.transform, self.cfg.threshold)
        elif self.cfg.source == "colour":
            score = np.full(n, np.nan, dtype=np.float32)
            reward = colour_share(images, self.cfg.colour)
        else:
            reward = {"verifier_margin": dense, "verifier_presence": 0.5 * (rel + pres),
                      "verifier_strict": strict, "verifier_dense": 0.5 * (strict + dense)}.get(self.cfg.source, rel)
            if np.isnan(reward).any():
                raise ValueError(f"reward.source={self.cfg.source} needs prompts with objects/relations "
                                 f"(prompts_*.jsonl)")
            score = np.full(n, np.nan, dtype=np.float32)
        out = {"reward": reward, "spatialscore": score, "relation_accuracy": rel, "object_presence": pres}
        if isinstance(self.scorer, ServeScorer):
            out["serve_retries"] = np.array([self.scorer.pop_retries()], dtype=np.float32)
        return out


def shape_score(score: np.ndarray, transform: str, threshold: float = 0.0) -> np.ndarray:
    """SpatialScore's scores `[N]` as the GRPO reward (`RewardConfig.transform`); float32."""
    score = np.asarray(score, dtype=np.float32)
    if transform == "raw":
        return score
    if transform == "sigmoid":
        return (1.0 / (1.0 + np.exp(-(score.astype(np.float64) - threshold)))).astype(np.float32)
    if transform == "binary":
        return (score > threshold).astype(np.float32)
    raise ValueError(f"unknown reward transform {transform!r}")


def colour_share(images: np.ndarray, colour: str) -> np.ndarray:
    """How far each image's pixels lean toward the palette colour: the mean over pixels of the projection of
    (pixel - mid grey) on (colour - mid grey), divided by |colour - mid grey|^2. `[N]` float32, 1.0 for an image
    painted in the colour, 0 for mid grey; smooth, so a global tint already pays (which is what makes it hackable)."""
    from data_pipeline.world import PALETTE

    direction = np.asarray(PALETTE[colour], dtype=np.float32) - 127.5
    lean = (images.astype(np.float32) - 127.5) @ direction  # [N, H, W]
    return (lean.mean(axis=(1, 2)) / float(direction @ direction)).astype(np.float32)


class ServeScorer:
    """`SpatialScorer.score` through the Serve application's DeploymentHandle (no HTTP hop), with retries."""

    def __init__(self, app_name: str, retries: int = 3, timeout_s: float = 600.0):
        from ray import serve

        self.handle = serve.get_app_handle(app_name)
        self.retries = retries
        self.timeout_s = timeout_s
        self._retried = 0

    def score(self, prompts: list[str], images: list) -> np.ndarray:
        import time

        import ray

        for attempt in range(self.retries + 1):
            try:
                out = self.handle.score.remote(list(prompts), list(images)).result(timeout_s=self.timeout_s)
                return np.asarray(out, dtype=np.float32)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                if attempt == self.retries:
                    raise RuntimeError(f"SpatialScore service: {self.retries + 1} attempts failed ({type(exc).__name__});"
                                       f" raise reward.serve_retries or check the replicas' logs") from exc
                self._retried += 1
                time.sleep(1.0)

    def pop_retries(self) -> int:
        n, self._retried = self._retried, 0
        return n
