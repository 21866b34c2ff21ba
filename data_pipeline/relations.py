"""Spatial relations measured on a label map (pixel -> object index), shared by the scene generator and the verifier.

Every relation has a signed score: it holds when score > 0, and it is *decisive* when |score| >= 1 (the
margins below are in units of the score). The generator only states relations that are decisive on its own
rendering, and the perturber only accepts layouts in which every stated relation is decisive. The verifier
reads a label map back from pixels and applies these same functions, so on a clean rendering it agrees with
the generator exactly, and on a noisy generated image small errors do not flip a decision.

Measurements come from the *visible* pixels of each object (largest connected component of its label), so
an occluded object's centroid and area are what a viewer sees, not the hidden layout.

Relation types (subject, type, object):
    left_of / right_of       horizontal centroid order      margin: position_margin * canvas pixels
    above / below            vertical centroid order        margin: position_margin * canvas pixels
    bigger_than / smaller_than   visible-area ratio          margin: log(size_ratio)
    in_front_of / behind     the two masks touch and the subject is the more complete (convex) one;
                             the occluded object has a bite taken out of it       margin: occlusion_margin
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

RELATION_TYPES = (
    "left_of", "right_of", "above", "below", "in_front_of", "behind", "bigger_than", "smaller_than",
)
CONVERSE = {
    "left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above",
    "in_front_of": "behind", "behind": "in_front_of", "bigger_than": "smaller_than", "smaller_than": "bigger_than",
}
AXIS = {
    "left_of": "horizontal", "right_of": "horizontal", "above": "vertical", "below": "vertical",
    "in_front_of": "depth", "behind": "depth", "bigger_than": "size", "smaller_than": "size",
}
NOT_TOUCHING_SCORE = -10.0  # "in front of" between objects that do not touch: decisively false


@dataclass(frozen=True)
class Margins:
    position_px: float
    size_log_ratio: float
    occlusion: float


@dataclass
class Measurements:
    """Per object (index = object id): visible area, centroid, solidity; plus which pairs touch."""

    area: np.ndarray  # [N]
    cx: np.ndarray  # [N]
    cy: np.ndarray  # [N]
    components: np.ndarray  # [N] number of connected pieces of the object's colour (before keeping the largest)
    touching: set[tuple[int, int]]  # unordered pairs (i < j) whose visible masks share an edge
    masks: list[np.ndarray | None]  # boolean mask of the kept component, or None if absent
    _solidity: dict[int, float]

    def solidity(self, i: int) -> float:
        if i not in self._solidity:
            self._solidity[i] = mask_solidity(self.masks[i])
        return self._solidity[i]


def mask_solidity(mask: np.ndarray | None) -> float:
    """Visible pixel area / area of the convex hull of the pixel squares. 1.0 for a whole convex shape."""
    if mask is None:
        return 0.0
    area = int(np.count_nonzero(mask))
    if area < 3:
        return 1.0
    edge = mask & ~ndimage.binary_erosion(mask)  # the hull depends on boundary pixels only
    ys, xs = np.nonzero(edge)
    corners = np.concatenate(
        [np.stack([xs + dx, ys + dy], axis=1) for dx in (0, 1) for dy in (0, 1)], axis=0
    )  # [4P, 2]
    try:
        hull_area = ConvexHull(corners).volume
    except QhullError:
        return 1.0
    return float(area / hull_area) if hull_area > 0 else 1.0


def measure(label: np.ndarray, num_objects: int) -> Measurements:
    """Measure a label map (0 = background, i + 1 = object i) of shape [H, W]."""
    area = np.zeros(num_objects)
    cx = np.zeros(num_objects)
    cy = np.zeros(num_objects)
    comps = np.zeros(num_objects, dtype=np.int64)
    masks: list[np.ndarray | None] = [None] * num_objects
    kept = np.zeros_like(label)
    boxes = ndimage.find_objects(label, max_label=num_objects)  # one pass for every object's bounding box
    for i, box in enumerate(boxes):
        if box is None:
            continue
        m = label[box] == i + 1  # work inside the bounding box only
        pieces, n = ndimage.label(m)
        comps[i] = n
        if n > 1:
            sizes = np.bincount(pieces.ravel())[1:]
            m = pieces == (int(np.argmax(sizes)) + 1)
        ys, xs = np.nonzero(m)
        area[i] = len(xs)
        cx[i] = xs.mean() + 0.5 + box[1].start
        cy[i] = ys.mean() + 0.5 + box[0].start
        full = np.zeros(label.shape, dtype=bool)
        full[box] = m
        masks[i] = full
        kept[box][m] = i + 1
    touching: set[tuple[int, int]] = set()
    for a, b in ((kept[:, :-1], kept[:, 1:]), (kept[:-1, :], kept[1:, :])):
        edge = (a != b) & (a > 0) & (b > 0)
        if edge.any():
            for p, q in zip(a[edge].tolist(), b[edge].tolist()):
                touching.add((min(p, q) - 1, max(p, q) - 1))
    return Measurements(area, cx, cy, comps, touching, masks, {})


def relation_score(m: Measurements, subject: int, rtype: str, obj: int, margins: Margins) -> float:
    """Signed score of `subject rtype obj`: > 0 holds, |score| >= 1 decisive. -inf-like if an object is missing."""
    if m.area[subject] == 0 or m.area[obj] == 0:
        return NOT_TOUCHING_SCORE
    if rtype == "left_of":
        return (m.cx[obj] - m.cx[subject]) / margins.position_px
    if rtype == "right_of":
        return (m.cx[subject] - m.cx[obj]) / margins.position_px
    if rtype == "above":
        return (m.cy[obj] - m.cy[subject]) / margins.position_px
    if rtype == "below":
        return (m.cy[subject] - m.cy[obj]) / margins.position_px
    if rtype in ("bigger_than", "smaller_than"):
        log_ratio = math.log(m.area[subject] / m.area[obj]) / margins.size_log_ratio
        return log_ratio if rtype == "bigger_than" else -log_ratio
    if rtype in ("in_front_of", "behind"):
        if (min(subject, obj), max(subject, obj)) not in m.touching:
            return NOT_TOUCHING_SCORE
        diff = (m.solidity(subject) - m.solidity(obj)) / margins.occlusion
        return diff if rtype == "in_front_of" else -diff
    raise ValueError(f"unknown relation type {rtype!r}; valid: {RELATION_TYPES}")
