"""Benchmark loaders on small files in each benchmark's published format (and a malformed one each), the output
layouts (GenEval's read back the way its scorer lists a folder), the judges' scoring rules and the report's
statistics by hand. Unit tier: no Ray; one test loads the tiny-pretrained Qwen2.5-VL (a few seconds)."""

from __future__ import annotations

import csv
import json
import math
import os
import re

import numpy as np
import pytest

from data_pipeline.benchmarks import (BenchmarkFormatError, BenchmarkItem, Question, image_relpath, load_benchmark,
                                      select)

# ------------------------------------------------------------------------------------------------ writers


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GENEVAL_ROWS = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
    {"tag": "counting", "include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock", "count": 3}],
     "prompt": "a photo of two clocks"},
    {"tag": "position", "include": [{"class": "dog", "count": 1}, {"class": "cup", "count": 1,
                                                                    "position": ["left of", 0]}],
     "prompt": "a photo of a cup left of a dog"},
    {"tag": "color_attr", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"},
]


def write_dpg(root, with_csv=True):
    (root / "prompts").mkdir(parents=True)
    (root / "prompts" / "apple1.txt").write_text("A red apple sits to the left of a green cup on a table.\n")
    (root / "prompts" / "bird7.txt").write_text("A small bird above a wooden fence.")
    if with_csv:
        with open(root / "dpg_bench.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["item_id", "text", "keywords", "proposition_id", "dependency", "category_broad",
                        "category_detailed", "tuple", "question_natural_language"])
            w.writerow(["apple1", "...", "", "1", "0", "entity", "whole", "entity - whole (apple)", "Is there an apple?"])
            w.writerow(["apple1", "...", "", "2", "0", "entity", "whole", "entity - whole (cup)", "Is there a cup?"])
            w.writerow(["apple1", "...", "", "3", "1", "attribute", "color", "attribute - color (apple, red)",
                        "Is the apple red?"])
            w.writerow(["apple1", "...", "", "4", "1,2", "relation", "spatial", "relation - spatial (apple, cup, left)",
                        "Is the apple to the left of the cup?"])
            w.writerow(["bird7", "...", "", "1", "0", "entity", "whole", "entity - whole (bird)", "Is there a bird?"])
    return root


def write_tiif(root):
    write_jsonl(root / "test_prompts" / "2d_spatial_relation.jsonl", [
        {"type": "2d_spatial_relation", "short_description": "A cat is beneath a microwave.",
         "long_description": "In the quiet kitchen, a graceful cat rests beneath the looming microwave."},
        {"type": "2d_spatial_relation", "short_description": "A lamp is left of a sofa.",
         "long_description": "A tall brass lamp stands to the left of a plush velvet sofa."},
    ])
    write_jsonl(root / "test_prompts" / "color.jsonl", [
        {"type": "color", "short_description": "A blue banana.", "long_description": "A ripe banana, blue all over."}])
    write_jsonl(root / "test_eval_prompts" / "2d_spatial_relation_eval.jsonl", [
        {"type": "2d_spatial_relation", "yn_question_list": ["Is there a cat?", "Is the cat above the microwave?"],
         "yn_answer_list": ["yes", "no"]},
        {"type": "2d_spatial_relation", "yn_question_list": ["Is the lamp left of the sofa?"],
         "yn_answer_list": ["yes"]},
    ])
    write_jsonl(root / "test_eval_prompts" / "color_eval.jsonl", [
        {"type": "color", "yn_question_list": ["Is the banana blue?"], "yn_answer_list": ["yes"]}])
    return root


def write_unigen(path, rows=None):
    rows = rows or [
        (0, "Two pandas, one sits left of the other, in ink wash style.",
         {"Primary Categories": "Art", "Testpoints": ["Style", "Entity Layout - Two-Dimensional Space"],
          "Testpoint Description": ["ink wash style", "one sits left of the other"]}),
        (1, "A robot stands in front of a ruined wall.",
         {"Testpoints": ["Entity Layout - Three-Dimensional Space"], "Testpoint Description": ["in front of a wall"]}),
    ]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "prompt_en", "sub_dims_en"])
        for i, p, d in rows:
            w.writerow([i, p, d if isinstance(d, str) else json.dumps(d)])
    return path


WORLD_ROWS = [
    {"pair_id": "p0", "prompt": "A red circle is to the left of a blue square.",
     "objects": [{"colour": "red", "shape": "circle"}, {"colour": "blue", "shape": "square"}],
     "relations": [{"subject": 0, "type": "left_of", "object": 1}]},
    {"pair_id": "p1", "prompt": "A green triangle is above a yellow diamond.",
     "objects": [{"colour": "green", "shape": "triangle"}, {"colour": "yellow", "shape": "diamond"}],
     "relations": [{"subject": 0, "type": "above", "object": 1}]},
]


# ------------------------------------------------------------------------------------------------ loaders


def test_geneval_loader_and_questions(tmp_path):
    items = load_benchmark("geneval", write_jsonl(tmp_path / "evaluation_metadata.jsonl", GENEVAL_ROWS))
    assert [it.item_id for it in items] == ["00000", "00001", "00002", "00003"]
    assert [it.categories for it in items] == [["single_object"], ["counting"], ["position"], ["color_attr"]]
    assert items[1].questions[0].text == "Are there two clocks in the image?"
    assert [q.text for q in items[2].questions] == ["Is there a dog in the image?", "Is there a cup in the image?",
                                                    "Is the cup left of the dog?"]
    assert items[2].questions[2].depends_on == ["1", "0"]
    assert items[3].questions[0].text == "Is there a red car in the image?"
    assert items[1].meta == GENEVAL_ROWS[1]  # the row as published, for metadata.jsonl
    assert len(load_benchmark("geneval", tmp_path)) == 4  # the folder works too


@pytest.mark.parametrize("line, problem", [
    ("not json", "not JSON"),
    (json.dumps(["a list"]), "not an object"),
    (json.dumps({"tag": "x", "prompt": "p"}), "'include'"),
    (json.dumps({"tag": "x", "include": [{"class": "dog", "count": 0}], "prompt": "p"}), "count=0"),
    (json.dumps({"tag": "x", "include": [{"class": "dog", "position": ["left of", 0]}], "prompt": "p"}), "position"),
    (json.dumps({"include": [{"class": "dog"}], "prompt": "p"}), "'tag'"),
])
def test_geneval_malformed(tmp_path, line, problem):
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text(json.dumps(GENEVAL_ROWS[0]) + "\n" + line + "\n")
    with pytest.raises(BenchmarkFormatError, match=re.escape(problem)) as exc:
        load_benchmark("geneval", path)
    assert f"{path}:2" in str(exc.value) and "GenEval's evaluation_metadata.jsonl" in str(exc.value)


def test_dpg_loader_with_questions_and_dependencies(tmp_path):
    items = load_benchmark("dpg", write_dpg(tmp_path))  # the CSV is found beside prompts/
    apple, bird = items
    assert (apple.item_id, bird.item_id) == ("apple1", "bird7")
    assert apple.prompt.startswith("A red apple")
    assert [q.qid for q in apple.questions] == ["1", "2", "3", "4"]
    assert apple.questions[3].depends_on == ["1", "2"] and apple.questions[0].depends_on == []
    assert apple.questions[3].categories == ["relation", "relation/spatial"]
    assert "relation/spatial" in apple.categories and bird.categories == ["entity", "entity/whole"]
    assert load_benchmark("dpg", tmp_path / "prompts")[0].questions  # the prompts/ folder itself works too


def test_dpg_malformed(tmp_path):
    write_dpg(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,text,question\napple1,x,Is there an apple?\n")
    with pytest.raises(BenchmarkFormatError, match=r"lacks column\(s\) \['keywords'"):
        load_benchmark("dpg", tmp_path / "prompts", questions=bad)
    (tmp_path / "prompts" / "empty.txt").write_text("  \n")
    with pytest.raises(BenchmarkFormatError, match="empty.txt: is empty"):
        load_benchmark("dpg", tmp_path)
    (tmp_path / "nothing_here").mkdir()
    with pytest.raises(BenchmarkFormatError, match="holds no .txt prompt files"):
        load_benchmark("dpg", tmp_path / "nothing_here")


def test_tiif_loader_short_long_and_questions(tmp_path):
    write_tiif(tmp_path)
    short = load_benchmark("tiif", tmp_path / "test_prompts")  # test_eval_prompts/ found beside
    long = load_benchmark("tiif", tmp_path / "test_prompts", prompt_length="long")
    assert [it.item_id for it in short] == ["2d_spatial_relation/0", "2d_spatial_relation/1", "color/0"]
    assert short[0].prompt == "A cat is beneath a microwave." and long[0].prompt.startswith("In the quiet kitchen")
    assert [(q.text, q.expected) for q in short[0].questions] == [("Is there a cat?", "yes"),
                                                                   ("Is the cat above the microwave?", "no")]
    assert short[2].questions[0].text == "Is the banana blue?"
    assert image_relpath(long[1], 0, "base") == "2d_spatial_relation/base/long_description/1.png"
    assert image_relpath(short[1], 2, "lora") == "2d_spatial_relation/lora/short_description/1_2.png"


def test_tiif_malformed(tmp_path):
    write_tiif(tmp_path)
    write_jsonl(tmp_path / "test_eval_prompts" / "color_eval.jsonl", [
        {"type": "color", "yn_question_list": ["Is the banana blue?"], "yn_answer_list": ["maybe"]}])
    with pytest.raises(BenchmarkFormatError, match="yn_answer_list"):
        load_benchmark("tiif", tmp_path / "test_prompts")
    write_jsonl(tmp_path / "p.jsonl", [{"type": "color", "short_description": "x"}])
    with pytest.raises(BenchmarkFormatError, match="'long_description' is missing"):
        load_benchmark("tiif", tmp_path / "p.jsonl")
    with pytest.raises(BenchmarkFormatError, match="short' and 'long'"):
        load_benchmark("tiif", tmp_path / "p.jsonl", prompt_length="medium")


def test_unigenbench_loader_and_layout_subsets(tmp_path):
    items = load_benchmark("unigenbench", write_unigen(tmp_path / "test_prompts_en.csv"))
    assert [it.item_id for it in items] == ["0", "1"]
    assert items[0].categories == ["Entity Layout - Two-Dimensional Space", "Style"]
    assert items[0].questions[1].categories == ["Entity Layout - Two-Dimensional Space"]
    assert "one sits left of the other" in items[0].questions[1].text
    three_d = select(items, ["Entity Layout - Three-Dimensional Space"])
    assert [it.item_id for it in three_d] == ["1"]
    assert image_relpath(items[1], 3) == "1_3.png"
    with pytest.raises(BenchmarkFormatError, match="names no category"):
        select(items, ["Entity Layout - 2D"])


def test_unigenbench_malformed(tmp_path):
    path = write_unigen(tmp_path / "a.csv", [(0, "p", "{not json")])
    with pytest.raises(BenchmarkFormatError, match="sub_dims_en is not JSON"):
        load_benchmark("unigenbench", path)
    path = write_unigen(tmp_path / "b.csv", [(0, "p", {"Testpoints": ["Style"], "Testpoint Description": []})])
    with pytest.raises(BenchmarkFormatError, match="equal length"):
        load_benchmark("unigenbench", path)
    zh = tmp_path / "test_prompts_zh.csv"
    zh.write_text("index,prompt_zh,sub_dims_zh\n0,x,{}\n")
    with pytest.raises(BenchmarkFormatError, match="use the _en files"):
        load_benchmark("unigenbench", zh)


def test_t2i_compbench_loader_and_names(tmp_path):
    path = tmp_path / "3d_spatial_val.txt"
    path.write_text("a bird in front of a tree\n\na cup behind a book\n")
    items = load_benchmark("t2i-compbench", path)
    assert [it.prompt for it in items] == ["a bird in front of a tree", "a cup behind a book"]
    assert items[0].categories == ["3d_spatial"] and items[0].questions == []
    assert image_relpath(items[1], 2, images_per_prompt=10) == "samples/a cup behind a book_000012.png"
    bad = tmp_path / "spatial_val.txt"
    bad.write_text('{"prompt": "a dog left of a cat"}\n')
    with pytest.raises(BenchmarkFormatError, match="looks like JSON"):
        load_benchmark("t2i-compbench", bad)
    with pytest.raises(BenchmarkFormatError, match="is a .jsonl file"):
        load_benchmark("t2i-compbench", write_jsonl(tmp_path / "x.jsonl", [{"a": 1}]))


def test_spatialworld_loader_and_malformed(tmp_path):
    items = load_benchmark("spatialworld", write_jsonl(tmp_path / "prompts_test.jsonl", WORLD_ROWS))
    assert items[0].questions[0].text == "Is it true that the red circle is to the left of the blue square?"
    assert items[1].categories == ["above"] and items[1].meta["objects"][0]["shape"] == "triangle"
    assert image_relpath(items[1], 3) == "p0001_s03.png"
    bad = dict(WORLD_ROWS[0], relations=[{"subject": 0, "type": "near", "object": 1}])
    with pytest.raises(BenchmarkFormatError, match="needs a type in"):
        load_benchmark("spatialworld", write_jsonl(tmp_path / "bad.jsonl", [bad]))
    with pytest.raises(BenchmarkFormatError, match="'objects' is missing"):
        load_benchmark("spatialworld", write_jsonl(tmp_path / "bad2.jsonl", [{"prompt": "a red circle"}]))


def test_missing_file_says_where_the_benchmark_publishes_it(tmp_path):
    with pytest.raises(BenchmarkFormatError, match="github.com/djghosh13/geneval"):
        load_benchmark("geneval", tmp_path / "nope.jsonl")


# ------------------------------------------------------------------------------------------------ layouts


def geneval_listing(imagedir):
    """GenEval's evaluate_images.py walk, restated: numeric subfolders, metadata.jsonl read with one json.load,
    samples/ files matching \\d+\\.png."""
    found = []
    for subfolder in os.listdir(imagedir):
        folderpath = os.path.join(imagedir, subfolder)
        if not os.path.isdir(folderpath) or not subfolder.isdigit():
            continue
        with open(os.path.join(folderpath, "metadata.jsonl")) as fp:
            metadata = json.load(fp)
        for imagename in os.listdir(os.path.join(folderpath, "samples")):
            imagepath = os.path.join(folderpath, "samples", imagename)
            if os.path.isfile(imagepath) and re.match(r"\d+\.png", imagename):
                found.append((imagepath, metadata))
    return sorted(found)


def test_geneval_layout_reads_back_as_genevals_scorer_lists_it(tmp_path):
    from jobs.evaluate import save_images

    items = load_benchmark("geneval", write_jsonl(tmp_path / "evaluation_metadata.jsonl", GENEVAL_ROWS))
    items = select(items, limit=3)
    k = 2
    images = np.random.default_rng(0).integers(0, 255, (len(items) * k, 32, 32, 3), dtype=np.uint8)
    root = tmp_path / "images" / "base"
    paths = save_images(root, items, images, k, "base")
    listed = geneval_listing(root)
    assert len(listed) == len(items) * k
    assert [m for _, m in listed] == [GENEVAL_ROWS[i] for i in range(3) for _ in range(k)]
    assert listed[0][0].endswith("00000/samples/0000.png") and listed[-1][0].endswith("00002/samples/0001.png")
    assert paths[3] == "images/base/00001/samples/0001.png"
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(root / "00001/samples/0001.png")), images[3])


def test_dpg_layout_is_a_2x2_grid(tmp_path):
    from PIL import Image

    from jobs.evaluate import save_images

    items = load_benchmark("dpg", write_dpg(tmp_path / "dpg"))
    images = np.random.default_rng(1).integers(0, 255, (8, 16, 16, 3), dtype=np.uint8)
    save_images(tmp_path / "out", items, images, 4, "base")
    grid = np.asarray(Image.open(tmp_path / "out" / "bird7.png"))
    assert grid.shape == (32, 32, 3)
    assert np.array_equal(grid[:16, :16], images[4]) and np.array_equal(grid[:16, 16:], images[5])
    assert np.array_equal(grid[16:, :16], images[6]) and np.array_equal(grid[16:, 16:], images[7])


# ------------------------------------------------------------------------------------------------ judges (pure)


def test_question_scores_by_hand_with_dpg_dependencies():
    from spatialrl.reward.judges import question_scores

    qs = [Question("apple?", ["entity"], "yes", "1"), Question("cup?", ["entity"], "yes", "2"),
          Question("red apple?", ["attribute"], "yes", "3", ["1"]),
          Question("apple left of cup?", ["relation", "relation/spatial"], "yes", "4", ["1", "2"]),
          Question("cat above?", ["relation"], "no", "5")]
    p = [0.9, 0.2, 0.8, 0.7, 0.3]  # said: yes, no, yes, yes, no
    scores, details = question_scores(qs, p)
    # right: T, F, T, T(but parent 2 failed -> 0), T  -> counted T, F, T, F, T
    assert [d["counted"] for d in details] == [True, False, True, False, True]
    assert scores["vlm"] == pytest.approx(3 / 5)
    assert scores["vlm/soft"] == pytest.approx((0.9 + 0.2 + 0.8 + 0.7 + 0.7) / 5)
    assert scores["vlm/cat/entity"] == 0.5 and scores["vlm/cat/relation"] == 0.5
    assert scores["vlm/cat/relation/spatial"] == 0.0 and scores["vlm/cat/attribute"] == 1.0


def test_verifier_judge_on_drawn_images():
    from data_pipeline.world import PALETTE
    from spatialrl.reward.judges import VerifierJudge

    img = np.full((64, 64, 3), 205, dtype=np.uint8)
    img[24:40, 6:22] = PALETTE["red"]  # red square on the left
    img[24:40, 42:58] = PALETTE["blue"]  # blue square on the right
    objs = [{"colour": "red", "shape": "square"}, {"colour": "blue", "shape": "square"}]
    left = BenchmarkItem("spatialworld", "a", 0, "red left of blue", ["left_of"], [], {
        "objects": objs, "relations": [{"subject": 0, "type": "left_of", "object": 1}]})
    right = BenchmarkItem("spatialworld", "b", 1, "red right of blue", ["right_of"], [], {
        "objects": objs, "relations": [{"subject": 0, "type": "right_of", "object": 1}]})
    plain = BenchmarkItem("t2i-compbench", "c", 2, "a dog", ["spatial"], [], {})
    res = VerifierJudge().judge([left, right, plain], [img, img, img])
    assert res[0]["scores"]["verifier/relation_accuracy"] == 1.0 and res[0]["scores"]["verifier/all_correct"] == 1.0
    assert res[1]["scores"]["verifier/relation_accuracy"] == 0.0
    assert res[0]["scores"]["verifier/object_presence"] == 1.0
    assert res[2]["scores"] == {}  # no structure, no verdict


def test_vlm_judge_reads_p_yes_from_the_tiny_qwen(one_torch_thread):
    from spatialrl.reward.judges import VLMJudge

    judge = VLMJudge("tiny-pretrained", batch_size=4)
    img = np.zeros((64, 64, 3), dtype=np.uint8)
    p = judge.p_yes(["Is there a red square?", "Is there a blue circle?", "Is there a red square?"], [img] * 3)
    assert p.shape == (3,) and np.all((p > 0) & (p < 1))
    assert p[0] == pytest.approx(p[2], abs=1e-6)  # batch position and padding do not change an answer
    assert judge.p_yes(["Is there a blue circle?"], [img])[0] == pytest.approx(p[1], abs=1e-5)
    item = BenchmarkItem("t2i-compbench", "0", 0, "a red square", ["spatial"], [], {})
    (res,) = judge.judge([item], [img])
    assert set(res["scores"]) == {"vlm", "vlm/soft", "vlm/cat/prompt"}
    assert res["questions"][0]["q"].startswith("Does this image match the description: a red square")


def test_missing_judge_model_gives_the_download_message(tmp_path, monkeypatch):
    from spatialrl.models.loader import ModelNotFoundError
    from spatialrl.reward.judges import VLMJudge

    monkeypatch.setenv("SPATIALRL_MODELS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFoundError, match="Qwen/Qwen2.5-VL-7B-Instruct") as exc:
        VLMJudge("Qwen/Qwen2.5-VL-7B-Instruct")
    assert "download" in str(exc.value)


# ------------------------------------------------------------------------------------------------ report


def test_mean_ci_by_hand():
    from spatialrl.flux.report import mean_ci

    m, ci, n = mean_ci([1.0, 2.0, 3.0, None, float("nan")])
    assert (m, n) == (2.0, 3) and ci == pytest.approx(1.96 * 1.0 / math.sqrt(3))
    assert mean_ci([])[2] == 0 and math.isnan(mean_ci([5.0])[1])


def synthetic_rows(n_items=4, k=2, hack=False):
    rows = []
    for variant in ("base", "lora"):
        for i in range(n_items):
            for j in range(k):
                truth = 0.5 if variant == "base" else (0.5 if hack else 1.0)
                reward = float(i + j) + (2.0 if variant == "lora" else 0.0)
                rows.append({"variant": variant, "item_id": str(i), "index": i, "k": j, "prompt": f"prompt {i}",
                             "categories": ["left_of" if i % 2 else "above"],
                             "scores": {"spatialscore": reward, "verifier/relation_accuracy": truth + 0.01 * j,
                                        "vlm": float(i % 2), "vlm/cat/above": 1.0}})
    return rows


def test_category_table_paired_gain_and_wins():
    from spatialrl.flux.report import category_table, wins_and_losses

    rows = synthetic_rows()
    table = {(e["category"], e["metric"]): e for e in category_table(rows, ["left_of"])}
    assert list(dict.fromkeys(c for c, _ in table))[:3] == ["all", "left_of", "above"]
    e = table[("all", "verifier/relation_accuracy")]
    assert e["variants"]["base"][0] == pytest.approx(0.505) and e["variants"]["lora"][0] == pytest.approx(1.005)
    assert e["gain"][0] == pytest.approx(0.5) and e["gain"][1] == pytest.approx(0.0, abs=1e-12)
    assert table[("above", "vlm")]["variants"]["base"][0] == 1.0  # the per-category VLM share, not the image's 0
    assert table[("left_of", "vlm")]["variants"]["base"][0] == 1.0
    wins, losses = wins_and_losses(rows, "spatialscore", 2)
    assert [w[1] for w in wins] == [2.0, 2.0]


def test_hacking_verdict_fires_when_reward_rises_alone():
    from spatialrl.flux.report import hacking_verdict

    rows = synthetic_rows(hack=True)
    for r in rows:  # give the reward gain some spread so its standard error is > 0
        if r["variant"] == "lora":
            r["scores"]["spatialscore"] += 0.1 * r["index"]
    assert "WARNING" in hacking_verdict(rows, "verifier/relation_accuracy")
    honest = synthetic_rows()
    for r in honest:
        if r["variant"] == "lora":
            r["scores"]["spatialscore"] += 0.1 * r["index"]
            r["scores"]["verifier/relation_accuracy"] += 0.05 * r["index"]
    assert "No sign" in hacking_verdict(honest, "verifier/relation_accuracy")


def test_write_report_files(tmp_path):
    from spatialrl.flux.report import write_report

    rows = synthetic_rows()
    images = {v: np.random.default_rng(2).integers(0, 255, (8, 16, 16, 3), dtype=np.uint8) for v in ("base", "lora")}
    summary = write_report(tmp_path, rows, images, {"benchmark": "spatialworld", "seed": 0}, ["left_of"], top_n=1)
    assert summary["variants"] == ["base", "lora"] and summary["primary_metric"] == "verifier/relation_accuracy"
    assert len((tmp_path / "scores.jsonl").read_text().splitlines()) == 16
    page = (tmp_path / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 3  # one win, one loss, the scatter
    assert "http" not in page.split("<body>")[1]  # self-contained
    md = (tmp_path / "report.md").read_text()
    # 0.50 and 0.51, four of each: sd 0.00535, 1.96 sd / sqrt 8 = 0.0037; the gain is 0.5 on every image
    assert "| all | verifier/relation_accuracy | 0.505 ± 0.004 | 1.005 ± 0.004 | 0.500 ± 0.000 |" in md
    assert (tmp_path / "report_files" / "scatter.png").is_file() and "seed: 0" in md
    json.loads((tmp_path / "summary.json").read_text())


# ------------------------------------------------------------------------------------------------ the job's checks


def test_evaluate_job_stops_on_user_mistakes_with_a_message(tmp_path, capsys):
    from jobs.evaluate import main

    bad = tmp_path / "evaluation_metadata.jsonl"
    bad.write_text('{"tag": "x", "prompt": "p"}\n')
    assert main(["--benchmark", "geneval", "--prompts", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "evaluation_metadata.jsonl:1: 'include' is missing" in err and "Traceback" not in err
    good = write_jsonl(tmp_path / "g.jsonl", GENEVAL_ROWS)
    assert main(["--benchmark", "dpg", "--prompts", str(good), "--images-per-prompt", "2",
                 "--out", str(tmp_path / "o")]) == 2
    assert "2x2 grid of 4 images" in capsys.readouterr().err
    assert main(["--benchmark", "geneval", "--prompts", str(good), "--model", str(tmp_path / "no-flux"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--benchmark", "geneval", "--prompts", str(good), "--judge", "spatialscore",
                 "--out", str(tmp_path / "o")]) == 2
    assert "needs a checkpoint" in capsys.readouterr().err
    assert main(["--benchmark", "geneval", "--prompts", str(good), "--subset", "nope", "--out",
                 str(tmp_path / "o")]) == 2
    assert "they have: ['color_attr', 'counting', 'position', 'single_object']" in capsys.readouterr().err
    assert main(["--benchmark", "tiif", "--prompts", str(good), "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    assert "benchmark: tiif" in capsys.readouterr().out and not (tmp_path / "o").exists()
