"""The perturber: from a perfect scene, make an image that violates exactly k of the prompt's relations.

The paper asks an LLM to rewrite 1 or 2-3 relations of the prompt and renders the perturbed prompt with a T2I
model, then has experts check the pair. Here we edit the layout directly and check on pixels: propose edits
aimed at k chosen relations (move an object across its partner, swap two objects' places, swap their sizes,
flip which of an occluding pair is in front), render, and accept only if every stated relation is still
decisive and exactly k of them are now false. The other relations are kept by construction of the check.
Optionally (`world.missing_object_prob`) the edit is leaving out an object named by exactly k relations, or
(`world.wrong_shape_prob`) drawing such an object with another shape where it stands.
"""

from __future__ import annotations

import numpy as np

from data_pipeline.relations import AXIS, Measurements, measure, relation_score
from data_pipeline.world import Relation, Scene, WorldConfig, layout_ok, pixels_ok, render_labels


def _unit(scene: Scene, i: int) -> list[int]:
    """An object and its occluding partner move together, so the overlap stays as designed."""
    for a, b in scene.overlaps:
        if i in (a, b):
            return [a, b]
    return [i]


def _shift(scene: Scene, i: int, dx: float, dy: float) -> None:
    for k in _unit(scene, i):
        scene.objects[k].x += dx
        scene.objects[k].y += dy


def _propose(rng: np.random.Generator, scene: Scene, rel: Relation, cfg: WorldConfig) -> None:
    """Edit `scene` in place, aiming to make `rel` false."""
    s, o = rel.subject, rel.object
    a, b = scene.objects[s], scene.objects[o]
    axis = AXIS[rel.type]
    if axis == "depth":
        order = scene.order
        ps, po = order.index(s), order.index(o)
        order[ps], order[po] = order[po], order[ps]
        return
    if axis == "size":
        if _unit(scene, s) == [s] and _unit(scene, o) == [o] and rng.random() < 0.6:
            a.side, b.side = b.side, a.side
            a.size_name, b.size_name = b.size_name, a.size_name
        else:
            target = a if rng.random() < 0.5 else b
            names = list(cfg.sizes)
            name = names[int(rng.integers(len(names)))]
            target.size_name, target.side = name, cfg.sizes[name] * cfg.canvas
        return
    if rng.random() < 0.25 and _unit(scene, s) == [s] and _unit(scene, o) == [o]:
        a.x, b.x, a.y, b.y = b.x, a.x, b.y, a.y
        return
    mover, anchor = (s, o) if rng.random() < 0.5 else (o, s)
    m, n = scene.objects[mover], scene.objects[anchor]
    extra = cfg.position_margin * cfg.canvas * rng.uniform(1.3, 4.0)
    if axis == "horizontal":
        side = 1.0 if m.x < n.x else -1.0  # move the mover to the other side of the anchor
        _shift(scene, mover, n.x + side * extra - m.x, float(rng.normal(0, 2)))
    else:
        side = 1.0 if m.y < n.y else -1.0
        _shift(scene, mover, float(rng.normal(0, 2)), n.y + side * extra - m.y)


def violated_relations(m: Measurements, relations: list[Relation], cfg: WorldConfig) -> list[int] | None:
    """Indices of decisively false relations, or None if any relation is ambiguous (inside its margin)."""
    margins = cfg.margins
    out = []
    for idx, r in enumerate(relations):
        score = relation_score(m, r.subject, r.type, r.object, margins)
        if abs(score) < 1:
            return None
        if score <= -1:
            out.append(idx)
    return out


SHAPE_AREA = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5}  # x side^2


def approx_scores(scene: Scene, relations: list[Relation], cfg: WorldConfig) -> np.ndarray:
    """Relation scores from the layout alone (no rendering): a cheap filter before the exact pixel check.

    Ignores occlusion's effect on centroids and areas, so it is only used to skip hopeless candidates.
    """
    margins = cfg.margins
    objs = scene.objects
    out = np.empty(len(relations))
    for idx, r in enumerate(relations):
        a, b = objs[r.subject], objs[r.object]
        axis = AXIS[r.type]
        if axis == "horizontal":
            v = (b.x - a.x) / margins.position_px
            out[idx] = v if r.type == "left_of" else -v
        elif axis == "vertical":
            ya = a.y + (a.side / 6 if a.shape == "triangle" else 0.0)  # a triangle's centroid sits low
            yb = b.y + (b.side / 6 if b.shape == "triangle" else 0.0)
            v = (yb - ya) / margins.position_px
            out[idx] = v if r.type == "above" else -v
        elif axis == "size":
            v = np.log(SHAPE_AREA[a.shape] * a.side**2 / (SHAPE_AREA[b.shape] * b.side**2)) / margins.size_log_ratio
            out[idx] = v if r.type == "bigger_than" else -v
        else:
            front = scene.order.index(r.subject) > scene.order.index(r.object)
            out[idx] = 2.0 if front == (r.type == "in_front_of") else -2.0
    return out


def _named_by_k(rng: np.random.Generator, scene: Scene, relations: list[Relation], k: int) -> int | None:
    """A random object named by exactly `k` relations and in no occluding pair, or None."""
    occluding = {i for pair in scene.overlaps for i in pair}
    named = [sum(i in (r.subject, r.object) for r in relations) for i in range(len(scene.objects))]
    candidates = [i for i, c in enumerate(named) if c == k and i not in occluding]
    return int(rng.choice(candidates)) if candidates else None


def leave_out(
    rng: np.random.Generator, scene: Scene, relations: list[Relation], k: int, cfg: WorldConfig
) -> tuple[Scene, list[int], Measurements] | None:
    """A copy of `scene` with one object not drawn (it stays in `objects`, leaves `order`): an object named by
    exactly `k` relations and in no occluding pair, so those k relations fail and every other object and relation
    is untouched. None if no object qualifies or the check on pixels fails."""
    gone = _named_by_k(rng, scene, relations, k)
    if gone is None:
        return None
    new = scene.copy()
    new.order = [i for i in new.order if i != gone]
    m = measure(render_labels(new), len(new.objects))
    if not pixels_ok(new, m, cfg):
        return None
    expected = [idx for idx, r in enumerate(relations) if gone in (r.subject, r.object)]
    bad = violated_relations(m, relations, cfg)
    if bad is None or sorted(bad) != expected:
        return None
    return new, bad, m


def reshape(
    rng: np.random.Generator, scene: Scene, relations: list[Relation], k: int, cfg: WorldConfig
) -> tuple[Scene, list[int], Measurements] | None:
    """A copy of `scene` with one object drawn in another of `cfg.shapes` (same colour, centre and size): an object
    named by exactly `k` relations and in no occluding pair. The k relations naming it fail as stated ("the red
    circle" is not in the image), while by place alone every relation still holds decisively, so the shape is the
    only thing that changed. None if no object qualifies or the check on pixels fails."""
    target = _named_by_k(rng, scene, relations, k)
    if target is None:
        return None
    others = [s for s in cfg.shapes if s != scene.objects[target].shape]
    new = scene.copy()
    new.objects[target].shape = str(rng.choice(others))
    if not layout_ok(new, cfg.gap * cfg.canvas):
        return None
    m = measure(render_labels(new), len(new.objects))
    if not pixels_ok(new, m, cfg) or violated_relations(m, relations, cfg) != []:
        return None  # a triangle's centroid sits lower, a circle is smaller: the places must still read the same
    return new, [idx for idx, r in enumerate(relations) if target in (r.subject, r.object)], m


def reshaped_objects(scene: Scene, perturbed: Scene) -> list[int]:
    """Objects `perturbed` draws with another shape than `scene` (a `reshape` perturbation)."""
    return [i for i, (a, b) in enumerate(zip(scene.objects, perturbed.objects)) if a.shape != b.shape]


def missing_objects(scene: Scene) -> list[int]:
    """Objects of `scene` that are not drawn (a `leave_out` perturbation)."""
    drawn = set(scene.order)
    return [i for i in range(len(scene.objects)) if i not in drawn]


def perturb(
    rng: np.random.Generator, scene: Scene, relations: list[Relation], k: int, cfg: WorldConfig
) -> tuple[Scene, list[int], Measurements] | None:
    """A copy of `scene` violating exactly `k` relations (their indices), or None if no edit was found. With
    probability `cfg.missing_object_prob` it first tries leaving an object out (`leave_out`), with probability
    `cfg.wrong_shape_prob` drawing one in another shape (`reshape`)."""
    if k > len(relations):
        return None
    if cfg.missing_object_prob > 0 or cfg.wrong_shape_prob > 0:
        u = rng.random()  # one draw for both, so a world without wrong shapes keeps its datasets
        edit = (leave_out if u < cfg.missing_object_prob
                else reshape if u < cfg.missing_object_prob + cfg.wrong_shape_prob else None)
        if edit is not None:
            edited = edit(rng, scene, relations, k, cfg)
            if edited is not None:
                return edited
    gap_px = cfg.gap * cfg.canvas
    for _ in range(cfg.perturb_tries):
        new = scene.copy()
        targets = rng.choice(len(relations), size=k, replace=False)
        for t in targets:
            _propose(rng, new, relations[int(t)], cfg)
        if not layout_ok(new, gap_px):
            continue
        approx = approx_scores(new, relations, cfg)
        if np.count_nonzero(approx < 0) != k or np.any(np.abs(approx) < 0.5):
            continue
        m = measure(render_labels(new), len(new.objects))
        if not pixels_ok(new, m, cfg):
            continue
        bad = violated_relations(m, relations, cfg)
        if bad is not None and len(bad) == k:
            return new, bad, m
    return None
