"""One SpatialReward preference pair from the spatial world, and the row format of docs/architecture.md section 4.

`make_pair(pair_id, seed, split, cfg)` is a pure function of its arguments (its random stream is seeded by
(seed, split, pair_id)), so a dataset is the same however Ray Data splits the work into blocks.
"""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from data_pipeline.perturb import missing_objects, perturb, reshaped_objects
from data_pipeline.prompts import PromptWriter
from data_pipeline.verifier import object_presence, present_as_recorded
from data_pipeline.world import Relation, WorldConfig, render, sample_relations, sample_scene

SPLITS = ("train", "val", "test")
PAIR_COLUMNS = (
    "pair_id", "prompt", "chosen_image", "rejected_image", "num_perturbations", "perturbed_prompt", "category",
    "relations", "source", "split",
)


def encode_png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def structured(scene, relations: list[Relation]) -> dict:
    """The prompt's structured form: what the verifier and the GRPO job read."""
    return {
        "objects": [{"colour": o.colour, "shape": o.shape} for o in scene.objects],
        "relations": [r.to_dict() for r in relations],
    }


def make_pair(pair_id: int, seed: int, split: str, cfg: WorldConfig) -> dict:
    rng = np.random.default_rng([seed, SPLITS.index(split), pair_id])
    k = int(rng.choice(cfg.perturbation_levels, p=cfg.perturbation_probs))
    for _ in range(cfg.max_tries):
        scene, m = sample_scene(rng, cfg)
        relations = sample_relations(rng, scene, m, cfg)
        if relations is None or len(relations) < k:
            continue
        result = perturb(rng, scene, relations, k, cfg)
        if result is None:
            continue
        bad_scene, violated, bad_m = result
        missing, reshaped = missing_objects(bad_scene), reshaped_objects(scene, bad_scene)
        objects = [{"colour": o.colour, "shape": o.shape} for o in scene.objects]
        # the fast path trusts untouched shapes; a reshaped object must read back as not the named one
        if not (all(object_presence(m, objects, True)[0])
                and present_as_recorded(object_presence(bad_m, objects, not reshaped)[0], missing + reshaped)):
            continue  # an occluded shape would be unreadable from pixels: like an ambiguous relation, not stated
        writer = PromptWriter(rng, scene, relations)
        info = structured(scene, relations)
        info["violated"] = violated
        if missing:
            info["missing"] = missing
        if reshaped:
            info["wrong_shape"] = [{"object": i, "drawn": bad_scene.objects[i].shape} for i in reshaped]
        return {
            "pair_id": f"{split}-{pair_id:07d}",
            "prompt": writer.write(),
            "chosen_image": encode_png(render(scene)),
            "rejected_image": encode_png(render(bad_scene)),
            "num_perturbations": k,
            # a left-out or reshaped object: no relation word describes the rejected image, so no perturbed prompt
            "perturbed_prompt": "" if missing or reshaped else writer.write(flipped=set(violated)),
            "category": ("missing_object" if missing else "wrong_shape" if reshaped
                         else ",".join(sorted({relations[i].type for i in violated}))),
            "relations": json.dumps(info),
            "source": "spatial_world",
            "split": split,
        }
    raise RuntimeError(f"no valid pair after {cfg.max_tries} scenes; check the world config (too strict margins?)")


def make_pairs_batch(batch: dict, seed: int, split: str, cfg: WorldConfig) -> dict:
    """Ray Data `map_batches` body: a batch of pair ids -> a batch of pair rows (columnar)."""
    rows = [make_pair(int(i), seed, split, cfg) for i in batch["id"]]
    return {c: [r[c] for r in rows] for c in PAIR_COLUMNS}
