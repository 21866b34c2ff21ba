"""RewardWorker: the GRPO job's reward for a batch of generated images, as a plain class.

The reward is SpatialScore (`spatialrl.scorer.SpatialScorer`, the one scoring path every job shares). When the
prompts carry the spatial world's structure (`objects` / `relations` from `prompts_*.jsonl`), the worker also
runs the pixel-only verifier on each image: that is the ground truth the reward model stands in for, logged next
to the reward so reward hacking shows (reward up, verifier flat). `source="verifier"` trains on the verifier's
relation accuracy instead: an oracle reward, useful to tell a weak reward model from a weak optimiser.
`actors/reward_actor.py` wraps this class in Ray.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from spatialrl.config import ConfigError


@dataclass
class RewardConfig:
    source: Literal["spatialscore", "verifier"] = "spatialscore"
    checkpoint: str = ""  # a SpatialScore checkpoint folder (jobs.train_reward's CKPT/final)
    batch_size: int = 16
    device: str = "auto"

    def validate(self) -> None:
        if self.source not in ("spatialscore", "verifier"):
            raise ConfigError(f"reward.source={self.source!r}: use spatialscore or verifier")
        if self.source == "spatialscore" and not self.checkpoint:
            raise ConfigError(
                "reward.checkpoint is empty: point it at a SpatialScore checkpoint (jobs.train_reward writes "
                "CKPT/final), e.g. --set reward.checkpoint=runs/demo/reward/final"
            )
        if self.batch_size < 1:
            raise ConfigError(f"reward.batch_size={self.batch_size}: need at least 1")


class RewardWorker:
    """Scores images for their prompts: SpatialScore (or the verifier) plus verifier metrics when known."""

    def __init__(self, cfg: RewardConfig):
        cfg.validate()
        self.cfg = cfg
        self.scorer = None
        if cfg.source == "spatialscore":
            from spatialrl.scorer import SpatialScorer

            self.scorer = SpatialScorer.from_checkpoint(cfg.checkpoint, device=cfg.device, batch_size=cfg.batch_size)

    def score(self, images: np.ndarray, rows: list[dict]) -> dict[str, np.ndarray]:
        """images `[N, H, W, 3]` uint8, rows: one dict per image (`prompt`, optional `objects`/`relations`).

        Returns float32 arrays `[N]`: `reward`, `spatialscore` (NaN with the verifier source),
        `relation_accuracy` and `object_presence` (NaN where the prompt has no structure).
        """
        from data_pipeline.verifier import margins_for, verify

        if len(images) != len(rows):
            raise ValueError(f"{len(images)} images for {len(rows)} prompt rows")
        n = len(images)
        rel = np.full(n, np.nan, dtype=np.float32)
        pres = np.full(n, np.nan, dtype=np.float32)
        margins = margins_for(images.shape[1]) if n else None
        for i, (img, row) in enumerate(zip(images, rows)):
            if row.get("objects"):
                res = verify(img, row["objects"], row.get("relations") or [], margins)
                rel[i] = np.mean(res.relations_hold) if res.relations_hold else np.nan
                pres[i] = np.mean(res.objects_present)
        if self.scorer is not None:
            score = self.scorer.score([r["prompt"] for r in rows], list(images)).astype(np.float32)
            reward = score
        else:
            if np.isnan(rel).any():
                raise ValueError("reward.source=verifier needs prompts with objects/relations (prompts_*.jsonl)")
            score = np.full(n, np.nan, dtype=np.float32)
            reward = rel
        return {"reward": reward, "spatialscore": score, "relation_accuracy": rel, "object_presence": pres}
