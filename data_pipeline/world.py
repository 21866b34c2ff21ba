"""The spatial world: flat-colour objects (shape x colour x size) on a varied background, and a scene sampler.

This is our verifiable stand-in for the paper's LLM-written prompts and T2I-generated images: every scene has
exact ground truth, so we can make a SpatialReward-Dataset of any size with exact labels and check generated
images with `data_pipeline.verifier`.

Rules that make the verifier exact (see `relations.py` for the measurements):
- colours within a scene are unique (colour identifies the object), and backgrounds stay far from every
  palette colour, so pixels segment back into objects without error;
- objects never touch, except designated occluding pairs, which overlap enough that the back object visibly
  loses a convex bite; every object keeps at least `min_visible_frac` of its area and stays one piece;
- a relation is stated only when it is decisive (beyond its margin) on the rendered label map.

The defaults resemble the paper (3-16 relations per prompt, mean about 7, long prompts); the `easy` preset
(`configs/dataset_easy.yaml`) suits a tiny generator (2-3 objects, one or two relations). See the resolved
values with `python -m jobs.build_dataset --config configs/dataset_easy.yaml --dry-run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw

from data_pipeline.relations import AXIS, CONVERSE, RELATION_TYPES, Margins, Measurements, measure, relation_score

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (35, 70, 225),
    "yellow": (240, 215, 25),
    "purple": (130, 40, 170),
    "orange": (245, 130, 20),
    "cyan": (20, 195, 215),
    "pink": (240, 95, 185),
    "brown": (120, 70, 25),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle", "diamond")
# Background colours: light, low saturation, all far (> 90 in RGB) from every palette colour.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "pale grey": (205, 205, 205),
    "cream": (245, 240, 220),
    "light beige": (225, 215, 195),
    "pale mint": (205, 235, 215),
    "light lavender": (225, 215, 240),
    "pale sky blue": (205, 225, 245),
    "ivory": (250, 250, 240),
    "light peach": (250, 225, 205),
    "silver": (190, 195, 200),
    "white": (252, 252, 252),
}
BACKGROUND_KINDS = ("solid", "linear", "radial")


@dataclass
class WorldConfig:
    """Parameters of the spatial world (sizes are fractions of the canvas side)."""

    canvas: int = 128
    min_objects: int = 4
    max_objects: int = 9
    min_relations: int = 3
    max_relations: int = 16
    extra_relations_mean: float = 4.0  # relations = min_relations + Poisson(extra_relations_mean), clipped
    sizes: dict = field(default_factory=lambda: {"small": 0.12, "medium": 0.17, "large": 0.24})
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    colours: list[str] = field(default_factory=lambda: list(PALETTE))
    relation_types: list[str] = field(default_factory=lambda: list(RELATION_TYPES))
    background_kinds: list[str] = field(default_factory=lambda: list(BACKGROUND_KINDS))
    occlusion_prob: float = 0.6  # chance that a scene has an occluding pair (a second one: half that)
    gap: float = 0.03  # minimum gap between non-occluding objects
    position_margin: float = 0.05
    size_ratio: float = 1.4
    occlusion_margin: float = 0.08
    min_visible_frac: float = 0.5
    perturbation_levels: list[int] = field(default_factory=lambda: [1, 2, 3])
    perturbation_probs: list[float] = field(default_factory=lambda: [0.5, 0.25, 0.25])
    max_tries: int = 400  # scene placement attempts
    perturb_tries: int = 80  # edits tried on one scene before drawing a new scene
    # chance that a rejected image leaves out one object instead of moving objects (the relations naming it are
    # the violated ones; an object is picked whose relation count is the pair's level): a generator's commonest
    # failure, which a reward model trained on moved objects only has never seen and may pay for
    missing_object_prob: float = 0.0
    # chance that a rejected image draws one object with another shape instead (same colour, place and size: the
    # relations naming it are the violated ones, since "the red circle" is not there): the failure a reward trained
    # on moved and left-out objects alone pays for, as its GRPO generators trade shapes for places
    wrong_shape_prob: float = 0.0

    def validate(self) -> None:
        from spatialrl.config import ConfigError

        if self.canvas < 32 or self.canvas % 16:
            raise ConfigError(f"world.canvas={self.canvas}: use a multiple of 16, at least 32 (Flux needs multiples of 16)")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ConfigError("world.min_objects must be >= 1 and <= world.max_objects")
        if self.max_objects > len(self.colours):
            raise ConfigError(
                f"world.max_objects={self.max_objects} exceeds the {len(self.colours)} colours: colours are unique "
                "within a scene; lower max_objects or add colours"
            )
        if self.max_objects < 2:
            raise ConfigError("world.max_objects must be >= 2: relations need two objects")
        if not 1 <= self.min_relations <= self.max_relations:
            raise ConfigError("world.min_relations must be >= 1 and <= world.max_relations")
        for name, values, valid in (
            ("shapes", self.shapes, SHAPES), ("colours", self.colours, tuple(PALETTE)),
            ("relation_types", self.relation_types, RELATION_TYPES),
            ("background_kinds", self.background_kinds, BACKGROUND_KINDS),
        ):
            bad = [v for v in values if v not in valid]
            if bad or not values:
                raise ConfigError(f"world.{name}: {bad or 'empty'} not valid; choose from {list(valid)}")
        if not self.sizes or any(not 0.04 <= float(v) <= 0.5 for v in self.sizes.values()):
            raise ConfigError("world.sizes: give a mapping name -> fraction of the canvas in [0.04, 0.5]")
        if len(self.perturbation_levels) != len(self.perturbation_probs) or any(
            k not in (1, 2, 3) for k in self.perturbation_levels
        ):
            raise ConfigError("world.perturbation_levels must be a subset of [1, 2, 3], one prob per level")
        if abs(sum(self.perturbation_probs) - 1.0) > 1e-6:
            raise ConfigError("world.perturbation_probs must sum to 1")
        if not 0.0 <= self.missing_object_prob <= 1.0:
            raise ConfigError(f"world.missing_object_prob={self.missing_object_prob}: a probability in [0, 1], e.g. 0.25")
        if not 0.0 <= self.wrong_shape_prob <= 1.0 or self.missing_object_prob + self.wrong_shape_prob > 1.0:
            raise ConfigError(f"world.wrong_shape_prob={self.wrong_shape_prob}: a probability in [0, 1] whose sum with "
                              f"world.missing_object_prob ({self.missing_object_prob}) is at most 1, e.g. 0.2")
        if self.wrong_shape_prob > 0 and len(self.shapes) < 2:
            raise ConfigError("world.wrong_shape_prob > 0 needs at least two world.shapes to swap between")

    @property
    def margins(self) -> Margins:
        return Margins(
            position_px=self.position_margin * self.canvas,
            size_log_ratio=float(np.log(self.size_ratio)),
            occlusion=self.occlusion_margin,
        )


@dataclass
class Obj:
    colour: str
    shape: str
    size_name: str
    side: float  # bounding-box side in pixels
    x: float  # centre, pixels
    y: float


@dataclass
class Background:
    kind: str
    colours: tuple[str, str]
    direction: float  # radians, linear gradients
    centre: tuple[float, float]  # radial gradients, fractions of the canvas


@dataclass
class Relation:
    subject: int
    type: str
    object: int

    def to_dict(self) -> dict:
        return {"subject": self.subject, "type": self.type, "object": self.object}


@dataclass
class Scene:
    """Objects in drawing order (later objects are drawn on top), the background, and occluding pairs."""

    canvas: int
    objects: list[Obj]
    background: Background
    order: list[int]  # drawing order, object indices
    overlaps: set[tuple[int, int]]  # designated occluding pairs (i < j)

    def copy(self) -> "Scene":
        return Scene(self.canvas, [replace(o) for o in self.objects], self.background, list(self.order), set(self.overlaps))


# ----------------------------------------------------------------------------------------------- rendering


def shape_polygon(shape: str, x: float, y: float, side: float) -> list[tuple[float, float]] | None:
    r = side / 2
    if shape == "square":
        return [(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)]
    if shape == "triangle":
        return [(x, y - r), (x + r, y + r), (x - r, y + r)]
    if shape == "diamond":
        return [(x, y - r), (x + r, y), (x, y + r), (x - r, y)]
    return None  # circle: an ellipse


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, side: float, fill) -> None:
    poly = shape_polygon(shape, x, y, side)
    if poly is None:
        r = side / 2
        draw.ellipse([x - r, y - r, x + r - 1, y + r - 1], fill=fill)
    else:
        draw.polygon(poly, fill=fill)


def render_labels(scene: Scene) -> np.ndarray:
    """[H, W] uint8 label map: 0 background, i + 1 where object i is visible."""
    img = Image.new("L", (scene.canvas, scene.canvas), 0)
    draw = ImageDraw.Draw(img)
    for i in scene.order:
        o = scene.objects[i]
        draw_shape(draw, o.shape, o.x, o.y, o.side, i + 1)
    return np.asarray(img)


def render_background(bg: Background, canvas: int) -> np.ndarray:
    """[H, W, 3] float32 background."""
    c0 = np.array(BACKGROUNDS[bg.colours[0]], dtype=np.float32)
    c1 = np.array(BACKGROUNDS[bg.colours[1]], dtype=np.float32)
    if bg.kind == "solid":
        return np.broadcast_to(c0, (canvas, canvas, 3)).copy()
    ys, xs = np.mgrid[0:canvas, 0:canvas].astype(np.float32) / (canvas - 1)
    if bg.kind == "linear":
        t = (xs - 0.5) * np.cos(bg.direction) + (ys - 0.5) * np.sin(bg.direction)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    else:
        t = np.sqrt((xs - bg.centre[0]) ** 2 + (ys - bg.centre[1]) ** 2)
        t = np.clip(t / max(float(t.max()), 1e-6), 0, 1)
    return c0 * (1 - t[..., None]) + c1 * t[..., None]


def render(scene: Scene, labels: np.ndarray | None = None) -> np.ndarray:
    """[H, W, 3] uint8 RGB image: crisp flat-colour objects (no anti-aliasing, so labels are exact)."""
    labels = render_labels(scene) if labels is None else labels
    rgb = render_background(scene.background, scene.canvas)
    lut = np.array([(0, 0, 0)] + [PALETTE[o.colour] for o in scene.objects], dtype=np.float32)
    fg = labels > 0
    rgb[fg] = lut[labels[fg]]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------ scene sampling


def _bbox_gap(a: Obj, b: Obj) -> float:
    """Gap between the two bounding boxes (negative if they overlap)."""
    gx = abs(a.x - b.x) - (a.side + b.side) / 2
    gy = abs(a.y - b.y) - (a.side + b.side) / 2
    return max(gx, gy)


def layout_ok(scene: Scene, gap_px: float) -> bool:
    """Inside the canvas, and non-occluding objects keep `gap_px` apart (occluding pairs are checked on pixels)."""
    c = scene.canvas
    for o in scene.objects:
        r = o.side / 2
        if o.x - r < 1 or o.y - r < 1 or o.x + r > c - 1 or o.y + r > c - 1:
            return False
    n = len(scene.objects)
    for i in range(n):
        for j in range(i + 1, n):
            if (i, j) in scene.overlaps:
                continue
            if _bbox_gap(scene.objects[i], scene.objects[j]) < gap_px:
                return False
    return True


def pixels_ok(scene: Scene, m: Measurements, cfg: WorldConfig) -> bool:
    """Every drawn object visible, in one piece, keeping `min_visible_frac` of its area; only designated pairs
    touch; an object left out of the drawing order (a perturbation) covers nothing."""
    drawn = np.isin(np.arange(len(scene.objects)), scene.order)
    if m.touching != scene.overlaps or np.any(m.area[drawn] == 0) or np.any(m.components[drawn] != 1):
        return False
    if np.any(m.area[~drawn] != 0):
        return False
    # Only objects in occluding pairs can be partly hidden (everything else touches nothing).
    for i in {k for pair in scene.overlaps for k in pair}:
        if m.area[i] < cfg.min_visible_frac * full_area(scene.objects[i], scene.canvas):
            return False
    return True


def full_area(o: Obj, canvas: int) -> int:
    """Pixel area of an object drawn alone (what it covers before occlusion)."""
    img = Image.new("L", (canvas, canvas), 0)
    draw_shape(ImageDraw.Draw(img), o.shape, o.x, o.y, o.side, 1)
    return int(np.count_nonzero(np.asarray(img)))


def sample_background(rng: np.random.Generator, cfg: WorldConfig) -> Background:
    kind = str(rng.choice(cfg.background_kinds))
    names = list(BACKGROUNDS)
    c0, c1 = rng.choice(len(names), size=2, replace=False)
    return Background(
        kind=kind, colours=(names[c0], names[c1] if kind != "solid" else names[c0]),
        direction=float(rng.uniform(0, 2 * np.pi)), centre=(float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8))),
    )


def _random_position(rng: np.random.Generator, side: float, canvas: int) -> tuple[float, float]:
    r = side / 2 + 1
    return float(rng.uniform(r, canvas - r)), float(rng.uniform(r, canvas - r))


def place_objects(rng: np.random.Generator, objs: list[Obj], overlaps: set[tuple[int, int]], cfg: WorldConfig) -> bool:
    """Give every object a position (in place). Occluding pairs are placed partly on top of each other."""
    c = cfg.canvas
    gap_px = cfg.gap * c
    partner = {j: i for i, j in overlaps}
    placed: list[int] = []
    for idx, o in enumerate(objs):
        for _ in range(60):
            if idx in partner:
                a = objs[partner[idx]]
                angle = rng.uniform(0, 2 * np.pi)
                dist = rng.uniform(0.45, 0.75) * (a.side + o.side) / 2
                o.x, o.y = a.x + dist * np.cos(angle), a.y + dist * np.sin(angle)
            else:
                o.x, o.y = _random_position(rng, o.side, c)
            r = o.side / 2
            if o.x - r < 1 or o.y - r < 1 or o.x + r > c - 1 or o.y + r > c - 1:
                continue
            if all(
                (min(p, idx), max(p, idx)) in overlaps or _bbox_gap(objs[p], o) >= gap_px for p in placed
            ):
                placed.append(idx)
                break
        else:
            return False
    return True


def sample_scene(rng: np.random.Generator, cfg: WorldConfig) -> tuple[Scene, Measurements]:
    """A valid scene (see module docstring) and its measurements."""
    size_names = list(cfg.sizes)
    for _ in range(cfg.max_tries):
        n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        colours = rng.choice(cfg.colours, size=n, replace=False)
        objs = []
        for col in colours:
            size_name = str(rng.choice(size_names))
            objs.append(Obj(str(col), str(rng.choice(cfg.shapes)), size_name, cfg.sizes[size_name] * cfg.canvas, 0.0, 0.0))
        overlaps: set[tuple[int, int]] = set()
        if "in_front_of" in cfg.relation_types or "behind" in cfg.relation_types:
            n_pairs = int(rng.random() < cfg.occlusion_prob) + int(rng.random() < cfg.occlusion_prob / 2)
            free = list(range(n))
            for _ in range(min(n_pairs, n // 2)):
                i, j = sorted(rng.choice(free, size=2, replace=False).tolist())
                free = [k for k in free if k not in (i, j)]
                overlaps.add((i, j))
        if not place_objects(rng, objs, overlaps, cfg):
            continue
        order = list(rng.permutation(n).tolist())
        scene = Scene(cfg.canvas, objs, sample_background(rng, cfg), order, overlaps)
        m = measure(render_labels(scene), n)
        if pixels_ok(scene, m, cfg):
            return scene, m
    raise RuntimeError(
        f"could not place a valid scene in {cfg.max_tries} tries; the world is too crowded: lower "
        "world.max_objects or world.sizes, or raise world.canvas"
    )


def decisive_facts(scene: Scene, m: Measurements, cfg: WorldConfig) -> list[list[Relation]]:
    """All decisive facts, grouped as alternatives: each group is one (pair, axis) fact in its two phrasings."""
    margins = cfg.margins
    allowed = set(cfg.relation_types)
    facts = []
    n = len(scene.objects)
    for i in range(n):
        for j in range(i + 1, n):
            for axis_types in (("left_of", "right_of"), ("above", "below"), ("bigger_than", "smaller_than"),
                               ("in_front_of", "behind")):
                if axis_types[0] == "in_front_of" and (i, j) not in scene.overlaps:
                    continue
                options = []
                for t in axis_types:
                    for s, o in ((i, j), (j, i)):
                        if t in allowed and relation_score(m, s, t, o, margins) >= 1:
                            options.append(Relation(s, t, o))
                if options:
                    facts.append(options)
    return facts


def sample_relations(rng: np.random.Generator, scene: Scene, m: Measurements, cfg: WorldConfig) -> list[Relation] | None:
    """Choose the prompt's relations: min_relations + Poisson(extra) of the decisive facts, depth facts first."""
    facts = decisive_facts(scene, m, cfg)
    want = int(np.clip(cfg.min_relations + rng.poisson(cfg.extra_relations_mean), cfg.min_relations, cfg.max_relations))
    if len(facts) < cfg.min_relations:
        return None
    depth = [f for f in facts if AXIS[f[0].type] == "depth"]
    rest = [f for f in facts if AXIS[f[0].type] != "depth"]
    rng.shuffle(rest)
    chosen = (depth + rest)[:want]
    rels = [group[int(rng.integers(len(group)))] for group in chosen]
    rng.shuffle(rels)
    return rels


def load_world_preset(path: str) -> WorldConfig:
    """The `world` section of a dataset preset (configs/dataset_*.yaml) as a validated WorldConfig; a relative
    path is looked up from the working directory, then from the repository root."""
    import json

    import yaml

    from spatialrl.config import ConfigError, load_config, repo_path

    p = repo_path(path)
    if not p.is_file():
        raise ConfigError(f"world_preset={path}: no such file; use a dataset preset such as configs/dataset_easy.yaml")
    world = (yaml.safe_load(p.read_text()) or {}).get("world", {})
    if not isinstance(world, dict):
        raise ConfigError(f"{path}: `world` must be a mapping")
    return load_config(WorldConfig, None, [f"{k}={json.dumps(v)}" for k, v in world.items()])


__all__ = [
    "PALETTE", "SHAPES", "BACKGROUNDS", "WorldConfig", "Obj", "Background",
    "Relation", "Scene", "render", "render_labels", "sample_scene", "sample_relations", "decisive_facts",
    "layout_ok", "pixels_ok", "CONVERSE", "load_world_preset",
]
