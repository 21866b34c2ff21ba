"""bench.relation_failures: each relation of a grid's images in one class, worked out by hand (unit tier)."""

import json

import numpy as np

from bench.relation_failures import by_presence, failure_classes, grid_tiles, main
from data_pipeline.world import PALETTE
from spatialrl.flux.evaluation import image_grid

OBJS = [{"colour": "red", "shape": "square"}, {"colour": "blue", "shape": "square"}]
ROW = {"prompt": "the red square is left of the blue square", "objects": OBJS,
       "relations": [{"subject": 0, "type": "left_of", "object": 1}]}


def image(red_x: int | None, blue_x: int | None) -> np.ndarray:
    """A 12 px red square at x = red_x (rows 8-19) and a blue one at blue_x (rows 40-51); None = not drawn."""
    img = np.full((64, 64, 3), 230, np.uint8)
    for colour, x, y in (("red", red_x, 8), ("blue", blue_x, 40)):
        if x is not None:
            img[y:y + 12, x:x + 12] = PALETTE[colour]
    return img


def test_classes_by_hand(tmp_path):
    # margins_for(64): one decisive margin = 0.08 * 64 = 5.12 px between the centres
    images = np.stack([image(4, 40),  # centres 36 px apart: holds
                       image(40, 4),  # the wrong side
                       image(10, 13),  # centres 3 px apart: holds, margin 3 / 5.12 < 1
                       image(10, None)])  # the blue square is not drawn
    image_grid(images, rows=2).save(tmp_path / "grid.png")  # 2 prompts x 2 images
    tiles = grid_tiles(tmp_path / "grid.png", rows=2, cols=2)
    assert all(np.array_equal(a, b) for a, b in zip(tiles, images))
    got = failure_classes(tiles, [ROW, ROW], per_prompt=2)
    assert got == {"missing_object": 0.25, "wrong_side": 0.25, "too_close": 0.25, "holds": 0.25, "relations": 4}


def test_accuracy_split_by_presence_and_the_cli(tmp_path, capsys):
    ev = {"policy_version": 0, "prompts": 2, "images": 4, "relation_accuracy": 0.5,
          "relation_accuracy_per_image": [1.0, 0.0, 1.0, 0.0], "object_presence_per_image": [1.0, 1.0, 0.5, 0.5]}
    assert by_presence(ev) == {"share_all_present": 0.5, "relation_accuracy_all_present": 0.5,
                               "relation_accuracy_others": 0.5}
    run = tmp_path / "run"
    run.mkdir()
    (run / "eval.json").write_text(json.dumps({"base": ev}))
    image_grid(np.stack([image(4, 40), image(40, 4), image(10, 13), image(10, None)]), rows=2).save(
        run / "eval_v0000.png")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text((json.dumps(ROW) + "\n") * 2)
    assert main(["--run", str(run), "--prompts", str(prompts), "--json", str(tmp_path / "out.json")]) == 0
    out = json.loads((tmp_path / "out.json").read_text())["base"]
    assert out["wrong_side"] == 0.25 and out["share_all_present"] == 0.5
    assert "base:" in capsys.readouterr().out


def test_side_decision_flips_nothing_without_noise():
    """bench.side_decision: with a vanishing noise level the perturbed step is the ODE's Euler step (to far below one
    uint8 level of the decoded image), so no relation of any continuation differs from the ODE image's; one entry per
    step but the last."""
    from bench.side_decision import flips_by_step
    from spatialrl.flux.sampler import FluxSampler, FluxSamplerConfig

    sampler = FluxSampler(FluxSamplerConfig(model="tiny", resolution=32, num_steps=3, group_size=1, batch_size=2,
                                            max_sequence_length=32))
    flips = flips_by_step(sampler, [ROW], continuations=2, noise=1e-9, seed=3)
    assert flips == {0: 0.0, 1: 0.0}
