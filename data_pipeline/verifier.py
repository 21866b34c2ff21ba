"""The verifier: reads an image (pixels only, no layout) and checks the prompt's structured relations.

Like GenEval's detector-based position score, but exact for our world: segment pixels by nearest palette
colour (anything far from every palette colour is background), keep each named colour's largest connected
piece, classify its shape against templates fitted to its bounding box, then measure the relations with
`data_pipeline.relations` (the same code the generator used to state them). Works on generated images too:
colour matching has a tolerance and tiny specks are ignored.

    from data_pipeline.verifier import verify
    result = verify(image_uint8_hwc, objects=[{"colour": "red", "shape": "circle"}, ...],
                    relations=[{"subject": 0, "type": "left_of", "object": 1}, ...], canvas_margins=...)
    result.relations_hold  # [bool] per relation; result.objects_present  # [bool] per object
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from data_pipeline.relations import Margins, Measurements, measure, relation_score
from data_pipeline.world import PALETTE, SHAPES, WorldConfig, draw_shape

COLOUR_NAMES = list(PALETTE)
PALETTE_ARRAY = np.array([PALETTE[c] for c in COLOUR_NAMES], dtype=np.float32)  # [C, 3]
MAX_COLOUR_DISTANCE = 70.0  # RGB distance; backgrounds are > 90 from every palette colour
MIN_AREA_FRAC = 0.002  # of the canvas area: smaller pieces are specks, not objects


@dataclass
class VerifyResult:
    relations_hold: list[bool]
    objects_present: list[bool]
    shapes_seen: list[str | None]

    @property
    def all_hold(self) -> bool:
        return all(self.relations_hold)

    def violated(self) -> list[int]:
        return [i for i, ok in enumerate(self.relations_hold) if not ok]

    def holds_as_stated(self, relations: list[dict]) -> list[bool]:
        """Per relation: it holds by place and both its objects are drawn with their named shapes (a reshaped
        object stands where it stood, so by place alone its relations still hold; as stated they do not)."""
        return [ok and self.objects_present[r["subject"]] and self.objects_present[r["object"]]
                for ok, r in zip(self.relations_hold, relations)]


def segment(image: np.ndarray, colours: list[str]) -> np.ndarray:
    """[H, W] label map from an [H, W, 3] uint8 image: i + 1 where the pixel has colour `colours[i]`."""
    img = image[..., :3].astype(np.float32)
    d = ((img[:, :, None, :] - PALETTE_ARRAY[None, None]) ** 2).sum(-1)  # [H, W, C]
    nearest = d.argmin(-1)
    close = np.take_along_axis(d, nearest[..., None], -1)[..., 0] <= MAX_COLOUR_DISTANCE**2
    lut = np.zeros(len(COLOUR_NAMES), dtype=np.uint8)
    for i, c in enumerate(colours):
        lut[COLOUR_NAMES.index(c)] = i + 1
    return np.where(close, lut[nearest], 0).astype(np.uint8)


@lru_cache(maxsize=4096)
def _template(shape: str, w: int, h: int) -> np.ndarray:
    """A shape drawn into a w x h box (drawn square, then stretched to the box's aspect ratio)."""
    side = max(w, h)
    sq = Image.new("L", (side, side), 0)
    draw_shape(ImageDraw.Draw(sq), shape, side / 2, side / 2, side, 1)
    t = np.asarray(sq.resize((w, h), Image.NEAREST)) > 0
    t.flags.writeable = False  # shared by the cache
    return t


def classify_shape(mask: np.ndarray, hidden: np.ndarray | None = None) -> tuple[str, dict[str, float]]:
    """Best-matching shape for a boolean mask: IoU with each shape's template.

    Unoccluded: the template fills the mask's bounding box. Occluded (`hidden` = pixels of the objects on
    top of it): the true box is larger than the visible one, so we also try square boxes grown toward each
    corner, and score IoU only over pixels that are not hidden.
    """
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    boxes = [(x0, y0, x1 - x0, y1 - y0)]
    if hidden is not None:
        s0 = max(x1 - x0, y1 - y0)
        for side in range(s0, int(s0 * 1.6) + 2, max(1, s0 // 8)):
            for ax, ay in ((x0, y0), (x1 - side, y0), (x0, y1 - side), (x1 - side, y1 - side)):
                boxes.append((ax, ay, side, side))
    H, W = mask.shape
    ious = {shape: 0.0 for shape in SHAPES}
    for bx, by, w, h in boxes:
        # canvas window of the box (templates may stick out of the image: crop them)
        cx0, cy0, cx1, cy1 = max(bx, 0), max(by, 0), min(bx + w, W), min(by + h, H)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        wx0, wy0, wx1, wy1 = min(cx0, x0), min(cy0, y0), max(cx1, x1), max(cy1, y1)
        region = mask[wy0:wy1, wx0:wx1]
        valid = ~hidden[wy0:wy1, wx0:wx1] if hidden is not None else np.ones_like(region)
        for shape in SHAPES:
            t_full = _template(shape, w, h)
            t = np.zeros_like(region)
            t[cy0 - wy0:cy1 - wy0, cx0 - wx0:cx1 - wx0] = t_full[cy0 - by:cy1 - by, cx0 - bx:cx1 - bx]
            inter = np.count_nonzero(t & region & valid)
            union = np.count_nonzero((t | region) & valid)
            if union and inter / union > ious[shape]:
                ious[shape] = inter / union
    return max(ious, key=ious.get), ious


def read_objects(image: np.ndarray, objects: list[dict]) -> Measurements:
    """Measurements of the named objects as seen in the image (missing ones have area 0)."""
    colours = [o["colour"] for o in objects]
    if len(set(colours)) != len(colours):
        raise ValueError(f"objects must have distinct colours in the spatial world, got {colours}")
    labels = segment(image, colours)
    m = measure(labels, len(objects))
    min_area = MIN_AREA_FRAC * image.shape[0] * image.shape[1]
    for i in range(len(objects)):
        if m.area[i] < min_area:
            m.area[i] = 0
            m.masks[i] = None
    # a speck is not an object: it touches nothing either (generated images have stray pixels)
    m.touching = {pair for pair in m.touching if m.masks[pair[0]] is not None and m.masks[pair[1]] is not None}
    return m


def verify(image: np.ndarray, objects: list[dict], relations: list[dict], margins: Margins) -> VerifyResult:
    """Per relation: does it hold in the image? Per object: is it there, with the named shape?

    An object counts as present when its colour covers more than a speck and its best-matching shape template
    (occlusion-aware where another object touches it) is the named shape.
    """
    m = read_objects(np.asarray(image), objects)
    present, seen = object_presence(m, objects)
    holds = [
        bool(relation_score(m, r["subject"], r["type"], r["object"], margins) > 0) for r in relations
    ]
    return VerifyResult(holds, present, seen)


def relation_margins(image: np.ndarray, objects: list[dict], relations: list[dict], margins: Margins) -> np.ndarray:
    """Per relation, its signed score in the image (> 0 holds, |score| >= 1 decisive; a missing object gives a
    large negative score): the dense form of `verify(...).relations_hold`."""
    m = read_objects(np.asarray(image), objects)
    return np.array([relation_score(m, r["subject"], r["type"], r["object"], margins) for r in relations],
                    dtype=np.float64)


def present_as_recorded(present: list[bool], missing) -> bool:
    """Every object present except the ones a record names missing (a left-out perturbation), and those absent."""
    missing = set(missing)
    return all(p == (i not in missing) for i, p in enumerate(present))


def object_presence(
    m: Measurements, objects: list[dict], only_touching: bool = False
) -> tuple[list[bool], list[str | None]]:
    """Per object: present with the named shape? And the shape seen (None if absent).

    `only_touching` skips classifying objects that touch nothing (the generator's fast path: an unoccluded
    clean shape always reads back as itself, see tests/test_world.py::test_shape_classifier_on_clean_shapes).
    """
    present, seen = [], []
    for i, o in enumerate(objects):
        if m.masks[i] is None:
            present.append(False)
            seen.append(None)
            continue
        neighbours = [q for pair in m.touching if i in pair for q in pair if q != i]
        if only_touching and not neighbours:
            present.append(True)
            seen.append(o["shape"])
            continue
        hidden = None
        if neighbours:
            hidden = np.zeros_like(m.masks[i])
            for q in neighbours:
                hidden |= m.masks[q]
        best, _ = classify_shape(m.masks[i], hidden)
        seen.append(best)
        present.append(best == o["shape"])
    return present, seen


def margins_for(canvas: int, world: WorldConfig | None = None) -> Margins:
    """Margins scaled to an image's size (the decision threshold is 0; margins only scale the scores)."""
    w = world or WorldConfig()
    return Margins(position_px=w.position_margin * canvas, size_log_ratio=float(np.log(w.size_ratio)), occlusion=w.occlusion_margin)
