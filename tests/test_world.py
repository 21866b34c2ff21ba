"""Unit tier: relations worked out by hand, the scene sampler's statistics, and the verifier on thousands of pairs."""

import io
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from PIL import Image

from data_pipeline.pairs import make_pair
from data_pipeline.relations import Margins, mask_solidity, measure, relation_score
from data_pipeline.verifier import classify_shape, margins_for, relation_margins, verify
from data_pipeline.world import PALETTE, WorldConfig
from spatialrl.config import load_config

M = Margins(position_px=6.4, size_log_ratio=float(np.log(1.4)), occlusion=0.08)


def two_squares():
    label = np.zeros((64, 64), np.uint8)
    label[10:20, 10:20] = 1  # object 0: 10x10 at the top left
    label[40:54, 40:54] = 2  # object 1: 14x14 lower right
    return label


def test_positions_and_sizes_by_hand():
    m = measure(two_squares(), 2)
    assert m.cx.tolist() == [15.0, 47.0] and m.cy.tolist() == [15.0, 47.0]
    assert m.area.tolist() == [100.0, 196.0]
    assert relation_score(m, 0, "left_of", 1, M) == pytest.approx(32 / 6.4)
    assert relation_score(m, 0, "right_of", 1, M) == pytest.approx(-32 / 6.4)
    assert relation_score(m, 0, "above", 1, M) == pytest.approx(5.0)
    assert relation_score(m, 1, "below", 0, M) == pytest.approx(5.0)
    assert relation_score(m, 1, "bigger_than", 0, M) == pytest.approx(np.log(1.96) / np.log(1.4))
    assert relation_score(m, 1, "smaller_than", 0, M) < -1
    # not touching: "in front of" is decisively false both ways
    assert relation_score(m, 0, "in_front_of", 1, M) <= -1 and relation_score(m, 1, "in_front_of", 0, M) <= -1


def test_solidity_by_hand():
    square = np.zeros((20, 20), bool)
    square[0:10, 0:10] = True
    assert mask_solidity(square) == pytest.approx(1.0)
    ell = square.copy()
    ell[5:10, 5:10] = False  # an L: area 75; hull of its pixel squares is the 10x10 square minus a half 5x5 corner
    assert mask_solidity(ell) == pytest.approx(75 / 87.5)


def test_occlusion_by_hand():
    label = np.zeros((40, 40), np.uint8)
    label[5:25, 5:25] = 1  # back square
    label[15:30, 15:30] = 2  # front square drawn on top: takes a corner bite out of object 0
    m = measure(label, 2)
    assert (0, 1) in m.touching
    assert m.solidity(1) == pytest.approx(1.0)
    assert m.solidity(0) == pytest.approx((400 - 100) / (400 - 50))
    assert relation_score(m, 1, "in_front_of", 0, M) == pytest.approx((1 - 300 / 350) / 0.08)
    assert relation_score(m, 0, "behind", 1, M) > 1


def test_missing_object_makes_relations_false():
    label = two_squares()
    label[label == 2] = 0
    m = measure(label, 2)
    assert relation_score(m, 0, "left_of", 1, M) < 0


def test_leave_out_drops_one_object_named_by_exactly_k_relations():
    from data_pipeline.perturb import leave_out, missing_objects
    from data_pipeline.relations import measure as measure_labels
    from data_pipeline.world import Background, Obj, Relation, Scene, render_labels

    objs = [Obj("red", "square", "large", 16, 12, 12), Obj("blue", "square", "large", 16, 40, 12),
            Obj("green", "square", "large", 16, 12, 44)]
    scene = Scene(64, objs, Background("solid", ("white", "white"), 0.0, (0.5, 0.5)), [0, 1, 2], set())
    rels = [Relation(0, "left_of", 1), Relation(0, "above", 2)]  # object 0: 2 relations; 1 and 2: one each
    world = WorldConfig(canvas=64)
    rng = np.random.default_rng(0)
    for _ in range(10):
        new, bad, m = leave_out(rng, scene, rels, 1, world)
        gone = missing_objects(new)
        assert gone in ([1], [2]) and bad == [gone[0] - 1]  # blue breaks relation 0, green relation 1
        assert m.area[gone[0]] == 0 and scene.order == [0, 1, 2]  # the input scene is untouched
    new, bad, _ = leave_out(rng, scene, rels, 2, world)
    assert missing_objects(new) == [0] and bad == [0, 1]
    assert measure_labels(render_labels(new), 3).area[0] == 0
    assert leave_out(rng, scene, rels, 3, world) is None  # no object is named by 3 relations
    with pytest.raises(Exception, match="missing_object_prob"):
        WorldConfig(missing_object_prob=1.5).validate()


def test_reshape_draws_one_object_named_by_exactly_k_relations_in_another_shape():
    from data_pipeline.perturb import reshape, reshaped_objects
    from data_pipeline.verifier import object_presence
    from data_pipeline.world import Background, Obj, Relation, Scene

    objs = [Obj("red", "square", "large", 16, 12, 12), Obj("blue", "square", "large", 16, 40, 12),
            Obj("green", "square", "large", 16, 12, 44)]
    scene = Scene(64, objs, Background("solid", ("white", "white"), 0.0, (0.5, 0.5)), [0, 1, 2], set())
    rels = [Relation(0, "left_of", 1), Relation(0, "above", 2)]  # object 0: 2 relations; 1 and 2: one each
    world = WorldConfig(canvas=64, shapes=["square", "circle"])
    rng = np.random.default_rng(0)
    for _ in range(10):
        new, bad, m = reshape(rng, scene, rels, 1, world)
        changed = reshaped_objects(scene, new)
        assert changed in ([1], [2]) and bad == [changed[0] - 1]  # blue breaks relation 0, green relation 1
        assert new.objects[changed[0]].shape == "circle" and scene.objects[changed[0]].shape == "square"
        assert new.objects[changed[0]].x == scene.objects[changed[0]].x  # same place: only the shape differs
        present, seen = object_presence(m, [{"colour": o.colour, "shape": o.shape} for o in scene.objects])
        assert present == [i not in changed for i in range(3)] and seen[changed[0]] == "circle"
    new, bad, _ = reshape(rng, scene, rels, 2, world)
    assert reshaped_objects(scene, new) == [0] and bad == [0, 1]
    assert reshape(rng, scene, rels, 3, world) is None  # no object is named by 3 relations
    with pytest.raises(Exception, match="wrong_shape_prob"):
        WorldConfig(missing_object_prob=0.5, wrong_shape_prob=0.6).validate()
    with pytest.raises(Exception, match="two world.shapes"):
        WorldConfig(shapes=["square"], wrong_shape_prob=0.2).validate()


def test_a_world_without_wrong_shapes_keeps_its_pairs():
    """wrong_shape_prob shares the missing-object draw, so turning it on changes only the pairs whose draw lands on
    a reshape; at 0 the random stream, and so every dataset built before it existed, is unchanged."""
    import dataclasses

    world = _world("configs/dataset_easy.yaml")
    before = dataclasses.replace(world, wrong_shape_prob=0.0)
    after = dataclasses.replace(world, wrong_shape_prob=0.3)
    a = [make_pair(i, 7, "train", before) for i in range(40)]
    b = [make_pair(i, 7, "train", after) for i in range(40)]
    assert sum(r["category"] == "wrong_shape" for r in a) == 0
    assert sum(r["category"] == "wrong_shape" for r in b) >= 5
    # pairs whose draw does not pick a reshape (about 1 - 0.3 of them) come out the same
    same = sum(x["prompt"] == y["prompt"] and x["rejected_image"] == y["rejected_image"] for x, y in zip(a, b))
    assert 0.5 * len(a) <= same < len(a), same


def decode(b):
    return np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))


def _check_pairs(preset, indices):
    """Checks pairs `indices` of the preset's world; returns (perturbation levels seen, pairs with an object left out)."""
    world = _world(preset)
    margins = margins_for(world.canvas, world)
    levels, left_out = set(), 0
    for i in indices:
        row = make_pair(i, 123, "train", world)
        info = json.loads(row["relations"])
        assert len(info["violated"]) == row["num_perturbations"]
        levels.add(row["num_perturbations"])
        vc = verify(decode(row["chosen_image"]), info["objects"], info["relations"], margins)
        vr = verify(decode(row["rejected_image"]), info["objects"], info["relations"], margins)
        assert vc.all_hold, (i, vc.relations_hold)
        missing = info.get("missing", [])
        reshaped = [w["object"] for w in info.get("wrong_shape", [])]
        # a reshaped object stands where it stood: by place every relation holds, and its shape is the violation
        assert vr.violated() == ([] if reshaped else info["violated"]), (i, vr.violated(), info["violated"])
        assert all(vc.objects_present), i
        assert vr.objects_present == [j not in missing + reshaped for j in range(len(info["objects"]))], (i, missing)
        for w in info.get("wrong_shape", []):
            assert vr.shapes_seen[w["object"]] == w["drawn"] != info["objects"][w["object"]]["shape"], i
        if missing or reshaped:  # exactly the relations that name the left-out or reshaped object fail
            left_out += bool(missing)
            assert row["category"] == ("missing_object" if missing else "wrong_shape") and row["perturbed_prompt"] == ""
            gone = (missing + reshaped)[0]
            assert info["violated"] == [k for k, r in enumerate(info["relations"]) if gone in (r["subject"], r["object"])]
    return levels, left_out


@pytest.mark.parametrize("preset,n", [("configs/dataset_default.yaml", 2000), ("configs/dataset_easy.yaml", 600)])
def test_verifier_agrees_with_generator_on_many_pairs(preset, n):
    # two processes, each a half of the pairs (a failed check comes back as that process's AssertionError)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_check_pairs, [preset, preset], [range(0, n, 2), range(1, n, 2)]))
    world = _world(preset)
    levels = set().union(*(p[0] for p in parts))
    left_out = sum(p[1] for p in parts)
    assert levels == set(world.perturbation_levels)
    # the easy world leaves an object out of about a quarter of its rejected images; the paper-like one never
    share = left_out / n
    assert (0.15 < share < 0.45) if world.missing_object_prob else share == 0, share


def _BuildCfg():
    from jobs.build_dataset import BuildDatasetConfig

    return BuildDatasetConfig


def _world(preset):
    return load_config(_BuildCfg(), preset).world


def test_default_world_resembles_the_paper():
    world = WorldConfig()
    rels, words = [], []
    for i in range(300):
        row = make_pair(i, 7, "val", world)
        rels.append(len(json.loads(row["relations"])["relations"]))
        words.append(len(row["prompt"].split()))
    assert 3 <= min(rels) and max(rels) <= 16
    assert 6.0 <= np.mean(rels) <= 8.0
    assert 70 <= np.mean(words) <= 120


def test_easy_world_is_small():
    world = _world("configs/dataset_easy.yaml")
    for i in range(100):
        info = json.loads(make_pair(i, 1, "train", world)["relations"])
        assert 2 <= len(info["objects"]) <= 3 and 1 <= len(info["relations"]) <= 2


def test_pairs_are_deterministic_and_distinct_per_split():
    world = WorldConfig()
    a, b = make_pair(5, 0, "train", world), make_pair(5, 0, "train", world)
    assert a == b
    assert make_pair(5, 0, "test", world)["prompt"] != a["prompt"]


def test_verifier_sees_a_missing_object_and_a_wrong_shape():
    img = np.full((64, 64, 3), 230, np.uint8)
    img[10:30, 10:30] = PALETTE["red"]  # a red square
    objs = [{"colour": "red", "shape": "square"}, {"colour": "blue", "shape": "circle"}]
    rels = [{"subject": 0, "type": "left_of", "object": 1}]
    v = verify(img, objs, rels, margins_for(64))
    assert v.objects_present == [True, False] and v.relations_hold == [False]
    v2 = verify(img, [{"colour": "red", "shape": "circle"}], [], margins_for(64))
    assert v2.objects_present == [False] and v2.shapes_seen == ["square"]


def test_relation_margins_by_hand_and_the_dense_verifier_reward():
    from spatialrl.grpo.rewards import RewardConfig, RewardWorker

    img = np.full((64, 64, 3), 230, np.uint8)
    img[10:20, 10:20] = PALETTE["red"]  # centre x 14.5
    img[10:20, 30:40] = PALETTE["blue"]  # centre x 34.5: 20 px to the right of red
    objs = [{"colour": "red", "shape": "square"}, {"colour": "blue", "shape": "square"}]
    rels = [{"subject": 0, "type": "left_of", "object": 1}, {"subject": 0, "type": "right_of", "object": 1}]
    m = margins_for(64)
    got = relation_margins(img, objs, rels, m)
    assert np.allclose(got, [20 / m.position_px, -20 / m.position_px])
    worker = RewardWorker(RewardConfig(source="verifier_margin"))
    near = img.copy()
    near[10:20, 30:40] = 230
    near[10:20, 20:30] = PALETTE["blue"]  # 10 px to the right: still left_of, by a smaller margin
    missing = img.copy()
    missing[10:20, 30:40] = 230
    rows = [{"prompt": "p", "objects": objs, "relations": rels[:1]}] * 3
    out = worker.score(np.stack([img, near, missing]), rows)
    want = [1.0, 10 / m.position_px / 4, -1.0]  # clip(margin / margin_scale 4, -1, 1); 20 px is past 4 margins
    assert np.allclose(out["reward"], want, atol=1e-6)
    assert list(out["relation_accuracy"]) == [1.0, 1.0, 0.0]  # the 0/1 check is logged beside it
    dense = RewardWorker(RewardConfig(source="verifier_dense")).score(np.stack([img, near, missing]), rows)
    # the mean of verifier_strict (1, 1, 0: the missing square fails as stated) and the margins above
    assert np.allclose(dense["reward"], [1.0, 0.5 * (1 + 10 / m.position_px / 4), -0.5], atol=1e-6)
    with pytest.raises(ValueError, match="verifier_margin needs prompts"):
        worker.score(img[None], [{"prompt": "p"}])


def test_the_verifier_presence_reward_pays_for_shapes_as_well_as_places():
    from PIL import Image, ImageDraw

    from data_pipeline.world import draw_shape
    from spatialrl.grpo.rewards import RewardConfig, RewardWorker

    img = np.full((64, 64, 3), 230, np.uint8)
    img[10:20, 10:20] = PALETTE["red"]  # a red square left of a blue square
    img[10:20, 30:40] = PALETTE["blue"]
    objs = [{"colour": "red", "shape": "square"}, {"colour": "blue", "shape": "square"}]
    rows = [{"prompt": "p", "objects": objs, "relations": [{"subject": 0, "type": "left_of", "object": 1}]}] * 3
    canvas = Image.fromarray(img.copy())
    ImageDraw.Draw(canvas).rectangle([30, 10, 39, 19], fill=(230, 230, 230))
    draw_shape(ImageDraw.Draw(canvas), "triangle", 35, 15, 12, PALETTE["blue"])  # right of red, but a triangle
    reshaped = np.asarray(canvas)
    swapped = np.full_like(img, 230)
    swapped[10:20, 40:50] = PALETTE["red"]  # both squares, on the wrong sides
    swapped[10:20, 10:20] = PALETTE["blue"]
    out = RewardWorker(RewardConfig(source="verifier_presence")).score(np.stack([img, reshaped, swapped]), rows)
    assert list(out["relation_accuracy"]) == [1.0, 1.0, 0.0]  # relations read colour regions only
    assert list(out["object_presence"]) == [1.0, 0.5, 1.0]
    assert np.allclose(out["reward"], [1.0, 0.75, 0.5])  # the mean of the two
    strict = RewardWorker(RewardConfig(source="verifier_strict")).score(np.stack([img, reshaped, swapped]), rows)
    assert list(strict["reward"]) == [1.0, 0.0, 0.0]  # the blue triangle is not the blue square the relation names


def test_shape_classifier_on_clean_shapes():
    from PIL import ImageDraw

    from data_pipeline.world import SHAPES, draw_shape

    for shape in SHAPES:
        for side in (10, 17, 30):
            im = Image.new("L", (64, 64), 0)
            draw_shape(ImageDraw.Draw(im), shape, 32, 32, side, 1)
            assert classify_shape(np.asarray(im) > 0)[0] == shape, (shape, side)


def test_verifier_ignores_a_speck_touching_an_object():
    """A generated image can hold a few stray pixels of a named colour next to another object: the speck is
    absent (not an object), and the object it touches is still classified (regression: crashed on None mask)."""
    from data_pipeline.verifier import margins_for, verify
    from data_pipeline.world import PALETTE

    img = np.zeros((64, 64, 3), dtype=np.uint8)
    red, blue = PALETTE["red"], PALETTE["blue"]
    img[20:40, 20:40] = red  # a red square
    img[30, 40] = blue  # one blue pixel touching it
    objects = [{"colour": "red", "shape": "square", "size": "large"}, {"colour": "blue", "shape": "circle", "size": "large"}]
    res = verify(img, objects, [{"subject": 0, "type": "left_of", "object": 1}], margins_for(64))
    assert res.objects_present == [True, False]
    assert res.relations_hold == [False]


def test_prompt_clause_ends_mark_each_relation_sentence():
    from data_pipeline.prompts import PromptWriter
    from data_pipeline.world import load_world_preset, sample_relations, sample_scene

    world = load_world_preset("configs/dataset_easy.yaml")
    rng = np.random.default_rng(3)
    checked = 0
    while checked < 30:
        scene, m = sample_scene(rng, world)
        relations = sample_relations(rng, scene, m, world)
        if not relations:
            continue
        writer = PromptWriter(rng, scene, relations)
        for flipped in (set(), {0}):
            text, ends = writer.write_with_clauses(flipped)
            assert text == writer.write(flipped) and len(ends) == len(relations)
            starts = [0] + ends[:-1]
            for rel, start, end in zip(relations, starts, ends):
                sentence = text[start:end]
                assert sentence.endswith(".") and text[end:end + 1] in ("", " ")
                # the sentence names both of its objects by colour
                assert writer.name(rel.subject).split()[1] in sentence and writer.name(rel.object).split()[1] in sentence
        checked += 1
