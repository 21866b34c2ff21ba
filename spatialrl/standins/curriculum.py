"""The relation curriculum of the tiny Qwen2.5-VL backbone, and the relation probe it grew from.

`jobs.pretrain_backbone --recipe curriculum` runs the stages of configs/backbone_curriculum.yaml, each a `main(args)`
of this module started from the previous stage's folder; `bench/relation_probe.py` is this module's command line for
one experiment (an arm). What each arm measured: bench/RESULTS.md, "The relation probe".

The probe: can a stock Qwen2_5_VLForConditionalGeneration learn ONE spatial comparison on easy-world scenes?

Trains on "is the A left of the B? yes/no" (by default: one relation word, so the answer is a monotone function of
x_A - x_B, no XOR with the relation word), asked WITHOUT the teacher-forced grounding list in front of it (so the
answer cannot be read off "x37 ... x71" text), and prints question accuracy on a fixed set of fresh scenes every
--eval-every steps, split by how far apart the two centroids are (in LM image tokens, 28 px at 168 px).

Default arm: the shipped backbone, grown from 4 to 6 LM layers
(two zero-initialised layers appended: the function is unchanged at step 0) with GQA turned into full MHA (k/v heads
duplicated: also function-preserving), patch loss at layer 0 (keeps binding), position loss at layer 1 (each image
token names its grid row/column: absolute position from the fixed-position prefix, p-invariant), lr 1e-3 constant.

Run from the project root (~20 min on 2 threads: ~0.5-0.8 s per step of 16 scenes; eval = 200 fixed fresh scenes,
~340 questions, every --eval-every steps):
    .venv/bin/python bench/relation_probe.py
    .venv/bin/python bench/relation_probe.py --minutes 0.3 --threads 1 --eval-every 5 --eval-scenes 20   # smoke
Arms (each another run):
    --relation-loss 1 --relation-layers 0,0    colour sets right of / below each object at the vision tower's output
    --relation-layers 0,0,0,0                  ... and the left-of / above sets (each word's set on the subject)
    --hint-loss 1                              the question hints at the "?" token (subject colour, its set)
    --extra-layers 0 --no-mha                  shipped architecture as is (is depth/GQA the bottleneck?)
    --relations left_of,right_of               bring the XOR back (converse word); best as a later stage:
                                               run 1 with --save runs/rp1, run 2 with --init runs/rp1 --relations ...
    --list before                              the shipped layout (grounding list with true coordinates first)
    --init scratch                             from scratch (6 layers, MHA, theta 1000, mrope 0,2,14,
                                               vision rope theta 100); needs ~1000 steps for binding first
    --style which                              "which is further left, the A or the B? the A"
    --match-fraction 0.5 --wrong-shape-prob 0.3 --object-hint 1
                                               reward queries whose image draws a named object in another shape;
                                               at each object name the lens says whether it is drawn as named
Reading it: chance is 0.5, a constant answer shows as the share of "no" / "yes". What each arm measured, and the
curriculum built from them (`bench/backbone_curriculum.sh`): bench/RESULTS.md, "The relation probe".
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from data_pipeline.world import decisive_facts, load_world_preset, render, render_labels, sample_scene
from spatialrl.config import REPO_ROOT as REPO
from spatialrl.standins.backbone import (
    QA_PHRASES, WHICH_PHRASES, Example, ExampleEncoder, PretrainDataConfig, _digits, answer_logits, patch_targets,
    pretrain_loss, relation_targets,
)

SHIPPED = REPO / "assets/tiny-pretrained/qwen2_5_vl"
AXIS_OF = {"left_of": "x", "right_of": "x", "above": "y", "below": "y"}


def pair_gap(m, word: str, a: int, b: int, canvas: int, grid: int) -> float:
    """How far apart objects a and b are for `word`, in LM image tokens: the centroid gap on the word's axis
    (positional words), else the difference of their side lengths (sqrt of the areas; size and depth words)."""
    if word in AXIS_OF or word not in ("bigger_than", "smaller_than", "in_front_of", "behind"):
        coord = m.cx if AXIS_OF.get(word, "x") == "x" else m.cy
        return abs(coord[a] - coord[b]) / canvas * grid
    return abs(math.sqrt(m.area[a]) - math.sqrt(m.area[b])) / canvas * grid


# ------------------------------------------------------------------------------------------------ model


def load_model(args):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from spatialrl.models.loader import load_vl_processor

    pixels = args.image_size ** 2
    base_dir = Path(args.base)
    processor = load_vl_processor(str(base_dir), min_pixels=pixels, max_pixels=pixels)  # the base's tokenizer
    torch.manual_seed(args.seed)
    if args.init == "shipped":
        base = Qwen2_5_VLForConditionalGeneration.from_pretrained(base_dir, dtype=torch.float32)
        model = grow(base, args.extra_layers, mha=not args.no_mha) if (args.extra_layers or not args.no_mha) else base
    elif args.init != "scratch":  # a folder saved by an earlier probe run (--save): continue it, e.g. with converses
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(args.init, dtype=torch.float32)
    else:  # a fresh model in the shipped vocabulary, with the architecture given on the command line
        cfg = Qwen2_5_VLConfig.from_pretrained(base_dir)
        t, v = cfg.text_config, cfg.vision_config
        t.hidden_size, t.intermediate_size = args.hidden, args.intermediate
        t.num_hidden_layers, t.layer_types = args.layers, ["full_attention"] * args.layers
        t.num_attention_heads, t.num_key_value_heads = args.heads, args.kv_heads
        mrope = [int(s) for s in args.mrope.split(",")]
        assert sum(mrope) == args.hidden // args.heads // 2, f"--mrope must sum to head_dim/2 = {args.hidden // args.heads // 2}"
        t.rope_parameters = {"rope_type": "default", "rope_theta": float(args.rope_theta), "mrope_section": mrope}
        v.depth, v.fullatt_block_indexes = args.vision_depth, list(range(args.vision_depth))
        v.out_hidden_size = args.hidden
        v.rope_parameters = {"rope_type": "axial", "rope_theta": float(args.vision_theta)}
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    model = model.float()
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return model, processor


def grow(base, extra: int, mha: bool):
    """Same function, more capacity: `extra` decoder layers appended with zero o_proj/down_proj (identity at step 0),
    and, with `mha`, every query head given its own k/v head (the GQA-shared weights duplicated)."""
    import copy

    from transformers import Qwen2_5_VLForConditionalGeneration

    cfg = copy.deepcopy(base.config)
    t = cfg.text_config
    old_layers, old_kv, heads = t.num_hidden_layers, t.num_key_value_heads, t.num_attention_heads
    t.num_hidden_layers = old_layers + extra
    t.layer_types = ["full_attention"] * t.num_hidden_layers
    if mha:
        t.num_key_value_heads = heads
    model = Qwen2_5_VLForConditionalGeneration(cfg).float()
    state = base.state_dict()
    rep = heads // old_kv
    head_dim = t.hidden_size // heads
    if mha and rep > 1:
        for key in list(state):
            if ".self_attn.k_proj." in key or ".self_attn.v_proj." in key:
                w = state[key]
                shape = (old_kv, head_dim) + tuple(w.shape[1:])
                state[key] = w.reshape(shape).repeat_interleave(rep, dim=0).reshape((heads * head_dim,) + tuple(w.shape[1:]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(".layers." in k for k in missing), missing  # only the new layers start fresh
    with torch.no_grad():
        for layer in model.model.language_model.layers[old_layers:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    return model


# ------------------------------------------------------------------------------------------------- data


def name(rng, obj, synonym_prob):
    from spatialrl.standins.backbone import SHAPE_SYNONYMS

    words = SHAPE_SYNONYMS[obj.shape]
    shape = words[int(rng.integers(len(words)))] if rng.random() < synonym_prob else obj.shape
    return f"{obj.colour} {shape}"


def make_example(rng, world, args, *, blur=True):
    """A scene with at least one question (resampled otherwise). See _make_example."""
    while True:
        ex, info = _make_example(rng, world, args, blur=blur)
        if any(f is not None for f in info):
            return ex, info


def _make_example(rng, world, args, *, blur=True):
    """One scene: the questions (and optionally the grounding list before/after them). Returns (Example, qa_info)
    where qa_info lists, per trained token, None (not a question) or the centroid gap of the asked pair in tokens."""
    scene, m = sample_scene(rng, world)
    canvas = scene.canvas
    labels = render_labels(scene)
    img = Image.fromarray(render(scene, labels))
    if blur and rng.random() < args.blur_prob:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    if img.size != (args.image_size, args.image_size):
        img = img.resize((args.image_size, args.image_size), Image.BILINEAR)
    grid = args.image_size // 28
    allowed = args.relations.split(",")
    segments, info = [], []
    hints = []  # (segment index of a question, subject colour, colours the subject stands in the asked relation to)

    def add(text, trained=False, gap=None, n_tokens=1):
        segments.append((text, trained))
        if trained:
            info.extend([gap] * n_tokens)

    def grounding():
        order = rng.permutation(len(scene.objects)).tolist()
        if args.sorted_list:
            order = sorted(range(len(scene.objects)), key=lambda i: m.cx[i])
        for i in order:
            o = scene.objects[i]
            add(" the")
            add(f" {o.colour}", True)
            add(f" {o.shape}", True)
            add(" at x"); add(_digits(m.cx[i] / canvas), True, n_tokens=2)
            add(" y"); add(_digits(m.cy[i] / canvas), True, n_tokens=2)
            add(" size"); add(_digits(math.sqrt(m.area[i]) / canvas), True, n_tokens=2)
            add(".")

    if args.list == "before":
        grounding()
    questions = []
    for group in decisive_facts(scene, m, world):
        words = [r for r in group if r.type in allowed]  # the phrasings of this fact that use an allowed word
        if words:
            questions.append(words[int(rng.integers(len(words)))])
    rng.shuffle(questions)
    for rel in questions[: args.max_questions]:
        word = rel.type
        gap = pair_gap(m, word, rel.subject, rel.object, canvas, grid)
        truth = bool(rng.random() < 0.5)
        s, o = (rel.subject, rel.object) if truth else (rel.object, rel.subject)  # same word, roles swapped if false
        A, B = scene.objects[s], scene.objects[o]
        if args.style == "yes_no":
            phrase = QA_PHRASES[word][0] if not args.all_phrases else QA_PHRASES[word][int(rng.integers(3))]
            phrase = args.phrase_overrides.get(word, phrase)
            add(f" is the {name(rng, A, args.synonym_prob)} {phrase} the {name(rng, B, args.synonym_prob)}?")
            # hint targets at the "?" token: A's colour, and the colours of the objects A is `word` of
            hints.append((len(segments) - 1, A.colour, relation_set(scene, m, world, s, word)))
            add(" yes" if truth else " no", True, gap)
        else:  # which: the answer is the object for which `word` holds against the other
            winner = rel.subject
            first, second = (rel.subject, rel.object) if rng.random() < 0.5 else (rel.object, rel.subject)
            add(f" which is {WHICH_PHRASES[word]}, the {name(rng, scene.objects[first], args.synonym_prob)} or the "
                f"{name(rng, scene.objects[second], args.synonym_prob)}? the")
            loser = rel.object
            add(f" {scene.objects[winner].colour}", True, (gap, scene.objects[loser].colour))
            add(".")
    if args.list == "after":
        grounding()
    rel = relation_targets(scene, m, labels, args.image_size, world, n_sets=args.n_sets) if args.relation_loss > 0 else None
    ex = Example(img, segments, "easy", [], patch_targets(scene, labels, args.image_size), rel)
    ex.hints = hints
    ex.words = [rel.type for rel in questions[: args.max_questions]] if args.style == "yes_no" else []
    return ex, info


def check_token_counts(encoder, examples):
    """The qa_info bookkeeping assumes the token counts used in make_example; verify on real tokenisation."""
    for ex, info in examples:
        n = sum(len(encoder._ids(text)) for text, trained in ex.segments if trained)
        assert n == len(info), f"token bookkeeping: {n} trained tokens vs {len(info)} flags"


# ------------------------------------------------------------------------------------------------ match task


def make_match_example(rng, world, args, *, blur=True):
    """The reward model's own question on a fresh scene: the reward instruction with the world's full prompt
    (data_pipeline.prompts.PromptWriter, the dataset's templates incl. reversed naming), answered " yes" when
    every stated relation holds, " no" when 1 or 2 of them were flipped to their converse (as the dataset's
    perturbed_prompt is written), or, with `args.missing_prob`, " no" because the true prompt names an object that
    is not drawn. Returns (MatchExample, gap): gap = the smallest centroid gap in tokens over the failing
    relations (or over all stated ones when none fails), for the difficulty buckets."""
    from data_pipeline.prompts import PromptWriter
    from data_pipeline.world import sample_relations

    grid = args.image_size // 28
    while True:
        scene, m = sample_scene(rng, world)
        relations = sample_relations(rng, scene, m, world)
        if relations:
            break
    img = _image(rng, scene, args, blur)
    writer = PromptWriter(rng, scene, relations)
    truth = bool(rng.random() < 0.5)
    flipped, failing, drawn, m_drawn = set(), set(), scene, m
    if not truth:
        k = min(len(relations), 1 if rng.random() < 0.7 else 2)
        u = rng.random() if args.missing_prob > 0 or args.wrong_shape_prob > 0 else 1.0
        if u < args.missing_prob + args.wrong_shape_prob:
            # the dataset's other rejected images: the prompt stays true of the scene, but an object named by
            # exactly k relations is not drawn (data_pipeline.perturb.leave_out) or drawn in another shape where
            # it stood (reshape), so those k fail
            from data_pipeline.perturb import leave_out, reshape

            edited = (leave_out if u < args.missing_prob else reshape)(rng, scene, relations, k, world)
            if edited is not None:
                drawn, failing, m_drawn = edited[0], set(edited[1]), edited[2]
                img = _image(rng, drawn, args, blur)
        if not failing:
            flipped = {int(i) for i in rng.choice(len(relations), size=k, replace=False)}
            failing = flipped
    gaps = []  # measured on the full scene (a left-out object's place is where it would have been)
    for i, rel in enumerate(relations):
        if failing and i not in failing:
            continue
        gaps.append(pair_gap(m, rel.type, rel.subject, rel.object, scene.canvas, grid))
    labels = render_labels(drawn)
    rel_t = (relation_targets(drawn, m_drawn, labels, args.image_size, world, n_sets=args.n_sets)
             if args.relation_loss > 0 else None)
    prompt, ends = writer.write_with_clauses(flipped)
    from data_pipeline.relations import CONVERSE

    clauses = []  # (end, holds, subject colour, stated word, colours the subject stands in that word to)
    for i, (end, rel) in enumerate(zip(ends, relations)):
        stated = CONVERSE[rel.type] if i in flipped else rel.type
        clauses.append((end, i not in failing, scene.objects[rel.subject].colour, stated,
                        relation_set(drawn, m_drawn, world, rel.subject, stated)))
    reshaped = bool(failing) and not flipped and len(drawn.order) == len(scene.order)
    example = MatchExample(img, prompt, truth, patch_targets(drawn, labels, args.image_size), rel_t, clauses,
                           missing=bool(failing) and not flipped and not reshaped, wrong_shape=reshaped,
                           mentions=object_mentions(prompt, writer, scene, drawn))
    return example, min(gaps)


def object_mentions(prompt: str, writer, scene, drawn) -> list[tuple[int, bool, int, str, int]]:
    """Every place the prompt names an object ("the red circle", "a red round shape"): (character offset where the
    shape's words end, is an object of that colour drawn in that shape?, MENTION_KINDS index, the shape drawn in
    that colour or "background" when none is, character offset where the colour word ends). False for an object
    left out of `drawn` or drawn there in another shape: the object hint's yes / no target at the name's last
    token; the drawn shape is the shape target at the colour word, which cannot see the named shape yet."""
    import re

    out = []
    for i, obj in enumerate(scene.objects):
        kind = 1 if i not in drawn.order else 2 if drawn.objects[i].shape != obj.shape else 0
        shown = "background" if kind == 1 else drawn.objects[i].shape
        for hit in re.finditer(rf"\b{re.escape(obj.colour)} {re.escape(writer.shape_word[i])}\b", prompt):
            out.append((hit.end(), kind == 0, kind, shown, hit.start() + len(obj.colour)))
    return sorted(out)


MENTION_KINDS = ("drawn", "missing", "reshaped")  # what an object name's hint target is about
SHAPE_CLASSES = ("circle", "square", "triangle", "diamond", "background")  # the shape target's words


class MatchExample:
    def __init__(self, image, prompt, truth, patch, rel, clauses=(), missing=False, wrong_shape=False, mentions=()):
        self.image, self.prompt, self.truth = image, prompt, truth
        self.mentions = list(mentions)  # object_mentions' tuples: where each object name ends, drawn as named?, ...
        self.missing = missing  # a "no" because a named object is not drawn (not a relation stated the wrong way)
        self.wrong_shape = wrong_shape  # a "no" because a named object is drawn in another shape
        self.patch_targets, self.relation_targets = patch, rel
        # per stated relation: (character offset where its sentence ends, holds?, subject colour, stated word,
        # the subject's colour set for that word): the clause gets the question's hints at its last token
        self.clauses = list(clauses)


def _image(rng, scene, args, blur):
    img = Image.fromarray(render(scene, render_labels(scene)))
    if blur and rng.random() < args.blur_prob:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    if img.size != (args.image_size, args.image_size):
        img = img.resize((args.image_size, args.image_size), Image.BILINEAR)
    return img


def encode_mixed(encoder, examples, clause_hints: bool = False, object_hints: bool = False):
    """A model batch from a mix of Examples (fixed prefix, answers after it) and MatchExamples (reward text in the
    user turn; the one trained token, " yes"/" no", is the first of the assistant turn): per-row token lists
    left-padded together, every processor key, the per-token targets stacked."""
    from spatialrl.reward.prompt import reward_text

    proc, tok = encoder.processor, encoder.tokenizer
    rows = []  # (ids, labels, mm_types)
    hint_rows = []  # per row: (position in the row, subject colour, colour set, asked word or None)
    clause_rows = []  # per row: (position of a stated relation's last token, holds?)
    mention_rows = []  # per row: (position of an object name's last token, MENTION_KINDS, SHAPE_CLASSES, colour word's)
    for ex in examples:
        if isinstance(ex, MatchExample):
            text = reward_text(proc, ex.prompt)
            enc = proc(text=[text], images=[ex.image], return_tensors="pt")
            ids = enc["input_ids"][0].tolist()
            places = clause_positions(tok, ids, text, ex.prompt, ex.clauses)
            clause_rows.append(places)
            if object_hints:
                names = clause_positions(tok, ids, text, ex.prompt, ex.mentions)
                colours = clause_positions(tok, ids, text, ex.prompt, [(m[4], True) for m in ex.mentions])
                mention_rows.append([(pos, kind, SHAPE_CLASSES.index(shown), cpos) for (pos, _), (cpos, _),
                                     (_, _, kind, shown, _) in zip(names, colours, ex.mentions)])
            else:
                mention_rows.append([])
            # the question's hints at each clause's last token too (subject, word, set); the word hint names the
            # canonical word whatever synonym the template used
            hint_rows.append([(pos, c[2], c[4], c[3]) for (pos, _), c in zip(places, ex.clauses)]
                             if clause_hints else [])
            answer = encoder.yes_no[0] if ex.truth else encoder.yes_no[1]
            rows.append((ids + [answer], [-100] * len(ids) + [answer], enc["mm_token_type_ids"][0].tolist() + [0]))
        else:
            ids, lab = list(encoder.prefix["input_ids"].tolist()), [-100] * len(encoder.prefix["input_ids"])
            mm = list(encoder.prefix["mm_token_type_ids"].tolist())
            ends = {}
            for si, (text, trained) in enumerate(ex.segments):
                piece = encoder._ids(text)
                ids += piece
                lab += piece if trained else [-100] * len(piece)
                ends[si] = len(ids) - 1
            words = getattr(ex, "words", []) or [None] * len(getattr(ex, "hints", []))
            clause_rows.append([])
            mention_rows.append([])
            hint_rows.append([(ends[si], a, others, w)
                              for (si, a, others), w in zip(getattr(ex, "hints", []), words)])
            rows.append((ids, lab, mm + [0] * (len(ids) - len(mm))))
    width = max(len(r[0]) for r in rows)
    b = len(rows)
    input_ids = torch.full((b, width), tok.pad_token_id, dtype=torch.long)  # [B, L]
    attention = torch.zeros((b, width), dtype=torch.long)
    mm_types = torch.zeros((b, width), dtype=torch.long)
    labels = torch.full((b, width), -100, dtype=torch.long)
    for r, (ids, lab, mm) in enumerate(rows):
        start = width - len(ids)
        input_ids[r, start:] = torch.tensor(ids)
        attention[r, start:] = 1
        mm_types[r, start:] = torch.tensor(mm)
        labels[r, start:] = torch.tensor(lab)
    from spatialrl.standins.backbone import RELATION_WORDS, image_inputs

    batch = {"input_ids": input_ids, "attention_mask": attention, "mm_token_type_ids": mm_types, "labels": labels,
             **image_inputs(proc, examples)}

    where, first, sets, word = [], [], [], []
    for r, (hs, (ids, _, _)) in enumerate(zip(hint_rows, rows)):
        start = width - len(ids)
        for pos, a, others, w in hs:
            where.append((r, start + pos))
            first.append(RELATION_WORDS.index(a))
            keys = getattr(encoder, "key_words", KEY_WORDS)
            word.append(keys.index(w) if w in keys else -1)
            vec = np.zeros(len(RELATION_WORDS), dtype=np.float32)
            for c in others:
                vec[RELATION_WORDS.index(c)] += 1 / len(others)
            if not others:
                vec[-1] = 1.0
            sets.append(vec)
    if where:
        batch["hint_where"] = torch.tensor(where)  # [N, 2]: row, position of a question's "?"
        batch["hint_first"] = torch.tensor(first)  # [N]: index of the subject's colour in RELATION_WORDS
        batch["hint_set"] = torch.from_numpy(np.stack(sets))  # [N, W]
        batch["hint_word"] = torch.tensor(word)  # [N]: the asked relation in KEY_WORDS (-1: none)
    clause_where = [(r, width - len(rows[r][0]) + pos, holds) for r, cs in enumerate(clause_rows) for pos, holds in cs]
    if clause_where:
        batch["clause_where"] = torch.tensor([(r, c) for r, c, _ in clause_where])  # [M, 2]: row, position
        batch["clause_holds"] = torch.tensor([h for _, _, h in clause_where])  # [M] bool
    mention_where = [(r, width - len(rows[r][0]) + pos, kind, shape, width - len(rows[r][0]) + cpos)
                     for r, ms in enumerate(mention_rows) for pos, kind, shape, cpos in ms]
    if mention_where:
        batch["mention_where"] = torch.tensor([m[:2] for m in mention_where])  # [K, 2]: row, position
        batch["mention_kind"] = torch.tensor([m[2] for m in mention_where])  # [K]: MENTION_KINDS index
        batch["mention_shape"] = torch.tensor([m[3] for m in mention_where])  # [K]: SHAPE_CLASSES index
        batch["mention_colour_at"] = torch.tensor([m[4] for m in mention_where])  # [K]: the colour word's position
    return batch


def clause_positions(tok, ids: list[int], text: str, prompt: str, clauses) -> list[tuple[int, bool]]:
    """Where each stated relation's sentence ends in a reward query's token ids. `text` is the query before the
    processor expanded its image slot; the image comes before the prompt, so a token after it sits in `ids` shifted
    by the expansion. Raises if the shifted token is not the same token (the tokenisation did not line up)."""
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    flat, offsets = enc["input_ids"], enc["offset_mapping"]
    shift = len(ids) - len(flat)
    base = text.index(prompt)
    out = []
    for end, holds, *_ in clauses:
        k = next((k for k, (_, e) in enumerate(offsets) if e == base + end), None)
        if k is None or ids[k + shift] != flat[k]:
            raise ValueError(f"no token ends at character {end} of the prompt {prompt!r}: the clause or object hint "
                             "cannot be placed")
        out.append((k + shift, bool(holds)))
    return out


# The relation words the word hint names, in the order of the index hint_word holds; each is read through the
# token that tells it apart (" left", " right", ...: "left of" and "right of" share their second token).
KEY_WORDS = ("left_of", "right_of", "above", "below")
# Asked with --relations, these join the word hint's classes (after KEY_WORDS, in this order): " bigger", " smaller",
# " in", " behind". Stages that do not ask them keep the four classes they were trained with.
MORE_KEY_WORDS = ("bigger_than", "smaller_than", "in_front_of", "behind")


def key_words_for(relations: list[str]) -> tuple[str, ...]:
    return KEY_WORDS + tuple(w for w in MORE_KEY_WORDS if w in relations)


def key_word_ids(encoder) -> torch.Tensor:
    """The token id of each key word (encoder.key_words, default KEY_WORDS): the first word of its canonical
    phrasing, with its leading space."""
    keys = getattr(encoder, "key_words", KEY_WORDS)
    return torch.tensor([encoder._ids(f" {QA_PHRASES[w][0].split()[0]}")[0] for w in keys])


def relation_set(scene, m, world, subject: int, word: str) -> list[str]:
    """The colours of the objects `subject` stands decisively in relation `word` to (the set hint's target)."""
    from data_pipeline.relations import relation_score

    return [scene.objects[k].colour for k in range(len(scene.objects))
            if k != subject and relation_score(m, subject, word, k, world.margins) >= 1]


def capture_layers(model, layers, captured: dict) -> list:
    """Forward hooks that keep each decoder layer's output (1-based `layers`) in `captured`; returns the handles."""
    blocks = model.model.language_model.layers
    return [blocks[layer - 1].register_forward_hook(
        lambda mod, inp, out, layer=layer: captured.__setitem__(layer, out[0] if isinstance(out, tuple) else out))
        for layer in layers]


def word_hint_loss(model, encoder, hidden: dict, hints: dict, layer: int) -> torch.Tensor:
    """Logit-lens cross-entropy at each question's "?" token after `layer` decoder layers, over the four key words
    (" left", " right", " above", " below"): the "?" names the relation it was asked. First order (no XOR): the
    step a converse pair needs before the "?" can pick the subject's set for that word."""
    keep = hints["hint_word"] >= 0
    if not bool(keep.any()):
        return torch.zeros(())
    r, c = hints["hint_where"][keep, 0], hints["hint_where"][keep, 1]
    norm = model.model.language_model.norm
    lp = torch.log_softmax(model.lm_head(norm(hidden[layer][r, c]))[:, key_word_ids(encoder)].float(), dim=-1)
    return -lp.gather(1, hints["hint_word"][keep][:, None]).mean()


def clause_hint_loss(model, encoder, hidden: dict, hints: dict, layer: int) -> torch.Tensor:
    """Logit-lens cross-entropy over (" yes", " no") at the last token of each relation sentence of a reward query,
    after `layer` decoder layers: does this stated relation hold in the image? The question skill the earlier
    stages trained, asked of a sentence in the dataset's own templates; the final answer is then the AND of them."""
    r, c = hints["clause_where"][:, 0], hints["clause_where"][:, 1]
    yes, no = encoder.yes_no
    norm = model.model.language_model.norm
    lp = torch.log_softmax(model.lm_head(norm(hidden[layer][r, c]))[:, [yes, no]].float(), dim=-1)  # [M, 2]
    target = (~hints["clause_holds"]).long()  # 0 = yes, 1 = no
    return -lp.gather(1, target[:, None]).mean()


def object_hint_loss(model, encoder, hidden: dict, hints: dict, layer: int,
                     shape_layer: int = 0) -> tuple[torch.Tensor, dict]:
    """Logit-lens cross-entropy over (" yes", " no") at the last token of each object name in a reward query, after
    `layer` decoder layers: is an object of this colour drawn in this shape? The name's tokens can ask the image
    for colour and shape in one attention query (q.k adds the two matches), so a conjunction that needs no
    comparison of two answers, a first-order step toward a wrong-shape "no". Also returns the hint's accuracy on
    the names drawn as named, left out and reshaped (MENTION_KINDS), so a stalled skill shows.

    With `shape_layer` > 0, a step before it: after that many layers the lens at the name's colour word names the
    shape drawn in that colour ("background" when none is), a lookup by colour that copies what the image token
    holds (its patch words), with no comparison and no shortcut (the colour word cannot see the shape named after
    it; at the shape word the lens learnt to echo the named shape instead); the yes / no at the shape word then
    compares the word before it with its own."""
    r, c = hints["mention_where"][:, 0], hints["mention_where"][:, 1]
    yes, no = encoder.yes_no
    norm = model.model.language_model.norm
    lp = torch.log_softmax(model.lm_head(norm(hidden[layer][r, c]))[:, [yes, no]].float(), dim=-1)  # [K, 2]
    kind = hints["mention_kind"]
    ok = kind == 0
    target = (~ok).long()  # 0 = yes, 1 = no
    # the few names not drawn as named weigh as much as all the others: "always yes" is not a minimum
    w = torch.where(ok, 0.5 / ok.sum().clamp(min=1), 0.5 / (~ok).sum().clamp(min=1))
    loss = -(w * lp.gather(1, target[:, None])[:, 0]).sum() / w.sum()
    said_no = (lp[:, 1] > lp[:, 0]).detach()
    right = torch.where(ok, ~said_no, said_no)
    acc = {f"hint/object_{name}": float(right[kind == k].float().mean()) if (kind == k).any() else float("nan")
           for k, name in enumerate(MENTION_KINDS)}
    if shape_layer > 0:
        ids = torch.tensor([encoder._single_id(f" {word}") for word in SHAPE_CLASSES])
        cc = hints["mention_colour_at"]
        lp_s = torch.log_softmax(model.lm_head(norm(hidden[shape_layer][r, cc])).float(), dim=-1)[:, ids]  # [K, 5]
        target_s = hints["mention_shape"]
        per = -lp_s.gather(1, target_s[:, None])[:, 0]
        loss = loss + (w * per).sum() / w.sum()
        hit = lp_s.argmax(-1) == target_s
        acc.update({f"hint/shape_{name}": float(hit[kind == k].float().mean()) if (kind == k).any() else float("nan")
                    for k, name in enumerate(MENTION_KINDS)})
    return loss, acc


def hint_loss(model, encoder, hidden: dict, hints: dict, layers: tuple[int, int]) -> torch.Tensor:
    """Logit-lens cross-entropy at each question's "?" token: after layers[0] decoder layers the subject's colour,
    after layers[1] the colours the subject stands in the asked relation to (a soft set). Both are first-order
    steps toward the answer (find the subject, read its relation set), so no XOR plateau stands in front of them."""
    r, c = hints["hint_where"][:, 0], hints["hint_where"][:, 1]
    norm = model.model.language_model.norm
    ids = encoder.relation_word_ids
    lp1 = torch.log_softmax(model.lm_head(norm(hidden[layers[0]][r, c])).float(), dim=-1)[:, ids]  # [N, W]
    lp2 = torch.log_softmax(model.lm_head(norm(hidden[layers[1]][r, c])).float(), dim=-1)[:, ids]
    first = -lp1.gather(1, hints["hint_first"][:, None]).mean()
    return first + (-(hints["hint_set"] * lp2).sum(-1).mean())


@torch.no_grad()
def evaluate_match(model, encoder, match_set, pair_set):
    """The reward question on the match set (by gap), and dataset-style pairs won by the larger yes-no margin."""
    from spatialrl.standins.backbone_eval import yes_margin

    model.eval()
    hits = {"all": [], "<1": [], "1-2": [], ">=2": []}
    margins = yes_margin(model, encoder.processor, [ex.prompt for ex, _ in match_set], [ex.image for ex, _ in match_set])
    for (ex, gap), mg in zip(match_set, margins):
        ok = (mg > 0) == ex.truth
        hits["all"].append(ok)
        hits["<1" if gap < 1 else "1-2" if gap < 2 else ">=2"].append(ok)
        if ex.missing:
            hits.setdefault("missing", []).append(ok)
        if ex.wrong_shape:
            hits.setdefault("wrong_shape", []).append(ok)
    out = {f"match/{k}": (float(np.mean(v)) if v else float("nan"), len(v)) for k, v in hits.items()}
    if pair_set:
        prompts = [p["prompt"] for p in pair_set]
        c = yes_margin(model, encoder.processor, prompts, [p["chosen"] for p in pair_set])
        r = yes_margin(model, encoder.processor, prompts, [p["rejected"] for p in pair_set])
        wins = np.array([a > b for a, b in zip(c, r)])
        k = np.array([p["k"] for p in pair_set])
        out["pairs/all"] = (float(wins.mean()), len(wins))
        for level in sorted(set(k.tolist())):
            out[f"pairs/{level}pert"] = (float(wins[k == level].mean()), int((k == level).sum()))
        for key in ("missing", "wrong_shape"):
            mask = np.array([bool(p.get(key)) for p in pair_set])
            if mask.any():
                out[f"pairs/{key}"] = (float(wins[mask].mean()), int(mask.sum()))
    model.train()
    return out

# ------------------------------------------------------------------------------------------------ eval


@torch.no_grad()
def evaluate(model, encoder, eval_set, args):
    model.eval()
    yes, no = encoder.yes_no
    hits = {"all": [], "<1": [], "1-2": [], ">=2": []}
    for start in range(0, len(eval_set), 32):
        chunk = eval_set[start:start + 32]
        logits, targets = answer_logits(model, encoder.encode([ex for ex, _ in chunk]))
        flags = [f for _, info in chunk for f in info]
        assert len(flags) == len(targets)
        for pos, flag in enumerate(flags):
            if flag is None:
                continue
            if isinstance(flag, tuple):  # which: named answer vs the other named colour
                gap, other = flag
                ok = bool(logits[pos][int(targets[pos])] > logits[pos][encoder._ids(f" {other}")[0]])
            else:
                gap = flag
                ok = bool((logits[pos][yes] > logits[pos][no]) == (int(targets[pos]) == yes))
            hits["all"].append(ok)
            hits["<1" if gap < 1 else "1-2" if gap < 2 else ">=2"].append(ok)
    model.train()
    return {k: (float(np.mean(v)) if v else float("nan"), len(v)) for k, v in hits.items()}


@torch.no_grad()
def evaluate_by_word(model, encoder, eval_set, hint_layers, word_layer: int = 3):
    """Per relation word, three skills at each question's "?" token: the answer (yes vs no), the first hint (the
    subject's colour is the top relation word of the logit lens after hint_layers[0] layers) and the second (the
    lens after hint_layers[1] layers puts its top word in the subject's set for that word, "background" if
    empty), and the word hint (the lens after word_layer layers names the asked word among the four key words).
    A stalled word shows which step of its path is missing: finding the subject, or choosing its set."""
    model.eval()
    yes, no = encoder.yes_no
    ids = encoder.relation_word_ids
    norm = model.model.language_model.norm
    captured: dict[int, torch.Tensor] = {}
    hooks = capture_layers(model, set(hint_layers) | {word_layer}, captured)
    key_ids = key_word_ids(encoder)
    hits: dict[str, dict[str, list]] = {}
    try:
        for start in range(0, len(eval_set), 32):
            chunk = eval_set[start:start + 32]
            batch = encode_mixed(encoder, [ex for ex, _ in chunk])
            hints = {k: batch.pop(k) for k in ("hint_where", "hint_first", "hint_set", "hint_word")}
            captured.clear()
            logits, targets = answer_logits(model, batch)
            said = (logits[:, yes] > logits[:, no]).tolist()
            truth = (targets == yes).tolist()
            r, c = hints["hint_where"][:, 0], hints["hint_where"][:, 1]
            top1 = model.lm_head(norm(captured[hint_layers[0]][r, c]))[:, ids].argmax(-1)  # [N]
            top2 = model.lm_head(norm(captured[hint_layers[1]][r, c]))[:, ids].argmax(-1)
            subject_ok = (top1 == hints["hint_first"]).tolist()
            set_ok = (hints["hint_set"].gather(1, top2[:, None])[:, 0] > 0).tolist()
            word_ok = (model.lm_head(norm(captured[word_layer][r, c]))[:, key_ids].argmax(-1)
                       == hints["hint_word"]).tolist()
            words = [w for ex, _ in chunk for w in ex.words]
            assert len(words) == len(said) == len(subject_ok), "one answer and one hint per question"
            for w, a, t, h1, h2, h3 in zip(words, said, truth, subject_ok, set_ok, word_ok):
                row = hits.setdefault(w, {"answer": [], "said_yes": [], "subject": [], "set": [], "word": []})
                row["word"].append(h3)
                row["answer"].append(a == t)
                row["said_yes"].append(a)
                row["subject"].append(h1)
                row["set"].append(h2)
    finally:
        for hk in hooks:
            hk.remove()
        model.train()
    return {w: {k: float(np.mean(v)) for k, v in row.items()} | {"n": len(row["answer"])} for w, row in hits.items()}


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/relation_probe.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default="shipped", help="shipped (--base, grown) | scratch | a folder written by --save "
                   "(loaded as is)")
    p.add_argument("--base", default=str(SHIPPED), help="the backbone --init shipped grows (and whose tokenizer every "
                   "init uses): the shipped tiny-pretrained Qwen2.5-VL, or one jobs.pretrain_backbone wrote")
    p.add_argument("--extra-layers", type=int, default=2, help="shipped init: zero-init LM layers appended")
    p.add_argument("--no-mha", action="store_true", help="shipped init: keep GQA (2 kv heads)")
    # scratch architecture
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--intermediate", type=int, default=384)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--rope-theta", type=float, default=1000.0)
    p.add_argument("--mrope", default="0,2,14", help="temporal,height,width rotary pairs (sum = head_dim/2); "
                   "shipped: 1,3,12 (width 0.178..0.0015 rad/col); 0,2,14 gives width 0.42..0.0015")
    p.add_argument("--vision-depth", type=int, default=3)
    p.add_argument("--vision-theta", type=float, default=100.0)
    p.add_argument("--image-size", type=int, default=168)
    # task
    p.add_argument("--world", default="configs/dataset_easy.yaml")
    p.add_argument("--relations", default="left_of", help="comma list of relation words asked (left_of, right_of, "
                   "above, below, bigger_than, smaller_than, in_front_of, behind)")
    p.add_argument("--style", choices=["yes_no", "which"], default="yes_no")
    p.add_argument("--list", choices=["none", "before", "after"], default="none", help="grounding list position")
    p.add_argument("--sorted-list", action="store_true", help="grounding list left-to-right (colour tokens = comparisons)")
    p.add_argument("--all-phrases", action="store_true")
    p.add_argument("--phrase", default="",
                   help="yes/no phrasing overrides, e.g. 'left_of=left,right_of=right' (one token instead of "
                        "'left of': is the question path's trouble the two-token phrase?)")
    p.add_argument("--synonym-prob", type=float, default=0.0)
    p.add_argument("--max-questions", type=int, default=10)
    p.add_argument("--blur-prob", type=float, default=0.0)
    # losses / optimisation
    p.add_argument("--patch-loss", type=float, default=0.5)
    p.add_argument("--position-loss", type=float, default=0.5)
    p.add_argument("--position-layer", type=int, default=1)
    p.add_argument("--relation-loss", type=float, default=0.0,
                   help="weight of the per-image-token right-of / below (/ left-of / above) colour sets (0 = off)")
    p.add_argument("--relation-layers", default="0,0",
                   help="where those sets are trained, one layer per set (two: right-of, below; four: also left-of, "
                        "above; six: also smaller-than, bigger-than; eight: also behind, in-front-of): 0 = the vision "
                        "tower's output (not causal), >0 = LM layers")
    p.add_argument("--relation-readout", choices=["lens", "linear"], default="lens",
                   help="lens: every set through the bare logit lens (they share one distribution per token); "
                        "linear: each set through its own identity-initialised linear map first (discarded after)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--minutes", type=float, default=19.0, help="wall-clock budget (final eval included)")
    p.add_argument("--max-steps", type=int, default=100000)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-scenes", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hint-loss", type=float, default=0.0,
                   help="weight of the question hints at the '?' token (subject colour, then its relation set)")
    p.add_argument("--hint-layers", default="2,4", help="decoder layers done for the two hints (1-based)")
    p.add_argument("--word-hint", type=float, default=0.0,
                   help="weight of the word hint: the '?' token names the asked relation word (left / right / "
                        "above / below) through the logit lens after --word-hint-layer layers")
    p.add_argument("--word-hint-layer", type=int, default=3)
    p.add_argument("--clause-hint", type=float, default=0.0,
                   help="weight of the clause hint on reward queries: at each stated relation's last token, the lens "
                        "after --clause-hint-layer layers says yes / no (does that relation hold)")
    p.add_argument("--clause-hint-layer", type=int, default=5)
    p.add_argument("--object-hint", type=float, default=0.0,
                   help="weight of the object hint on reward queries: at each object name's last token, the lens "
                        "after --object-hint-layer layers says yes / no (is an object of this colour drawn in this "
                        "shape); its accuracies are printed as hint/object_drawn, _missing and _reshaped")
    p.add_argument("--object-hint-layer", type=int, default=3)
    p.add_argument("--object-shape-layer", type=int, default=0,
                   help="> 0: with --object-hint, the lens at the name's colour word also names the shape drawn in "
                        "that colour after this many layers (hint/shape_* accuracies), a first-order step before the "
                        "yes / no")
    p.add_argument("--match-fraction", type=float, default=0.0,
                   help="share of training scenes asked the reward model's question (reward instruction + the "
                        "world's full prompt, true or with 1-2 relations flipped -> yes/no); the rest get --relations")
    p.add_argument("--match-scenes", type=int, default=0, help="fresh scenes in the match evaluation (0 = off)")
    p.add_argument("--missing-prob", type=float, default=0.0,
                   help="share of the match task's 'no' scenes whose prompt is true but one object it names is not "
                        "drawn (the dataset's left-out rejected images); the rest flip 1-2 stated relations")
    p.add_argument("--wrong-shape-prob", type=float, default=0.0,
                   help="share of the match task's 'no' scenes whose prompt is true but one object it names is drawn "
                        "in another shape where it stood (the dataset's wrong_shape rejected images)")
    p.add_argument("--pair-eval", type=int, default=0,
                   help="dataset-style preference pairs (perturbed image) scored by the yes-no margin (0 = off)")
    p.add_argument("--report-words", action="store_true",
                   help="at each evaluation also print, per relation word, the answer and the subject, word and set "
                        "hint accuracies at the '?' token (--max-steps 0 evaluates a saved model)")
    p.add_argument("--save", default="", help="save_pretrained the trained model (and processor) here at the end")
    args = p.parse_args(argv)
    if not (Path(args.base) / "config.json").is_file():
        p.error(f"--base {args.base}: not a model folder (no config.json)")
    if args.init not in ("shipped", "scratch") and not (Path(args.init) / "config.json").is_file():
        p.error(f"--init {args.init}: not a model folder (no config.json); give shipped, scratch or a folder an "
                "earlier stage saved with --save")
    if not 0.0 <= args.missing_prob <= 1.0:
        p.error(f"--missing-prob {args.missing_prob}: a probability in [0, 1], e.g. 0.5")
    if not 0.0 <= args.wrong_shape_prob <= 1.0 - args.missing_prob:
        p.error(f"--wrong-shape-prob {args.wrong_shape_prob}: a probability in [0, 1] whose sum with --missing-prob "
                f"({args.missing_prob}) is at most 1, e.g. 0.3")
    args.n_sets = len(args.relation_layers.split(","))
    if args.n_sets not in (2, 4, 6, 8):
        p.error(f"--relation-layers {args.relation_layers}: give 2, 4, 6 or 8 layers, one per relation set "
                "(right-of, below, left-of, above, smaller-than, bigger-than, behind, in-front-of)")
    asked = set(args.relations.split(","))
    if asked - set(QA_PHRASES):
        p.error(f"--relations names unknown words {sorted(asked - set(QA_PHRASES))}; use {sorted(QA_PHRASES)}")
    args.phrase_overrides = dict(item.split("=", 1) for item in args.phrase.split(",") if item)
    unknown = set(args.phrase_overrides) - set(QA_PHRASES)
    if unknown:
        p.error(f"--phrase names unknown relation words {sorted(unknown)}; use {sorted(QA_PHRASES)}")

    torch.set_num_threads(args.threads)
    t0 = time.time()
    model, processor = load_model(args)
    encoder = ExampleEncoder(processor)
    encoder.key_words = key_words_for(args.relations.split(","))
    world = load_world_preset(args.world)
    eval_rng = np.random.default_rng([args.seed, 424242])  # never used for training scenes
    eval_set = [make_example(eval_rng, world, args, blur=False) for _ in range(args.eval_scenes)]
    check_token_counts(encoder, eval_set[:20])
    match_rng = np.random.default_rng([args.seed, 515151])
    match_set = [make_match_example(match_rng, world, args, blur=False) for _ in range(args.match_scenes)]
    from spatialrl.standins.backbone_eval import pair_items

    pair_set = pair_items(args.seed + 90_001, world, args.pair_eval, args.image_size) if args.pair_eval else []
    data = PretrainDataConfig(patch_loss_weight=args.patch_loss, position_loss_weight=args.position_loss,
                              position_loss_layer=args.position_layer, relation_loss_weight=args.relation_loss,
                              relation_loss_layers=[int(x) for x in args.relation_layers.split(",")])
    hint_layers = tuple(int(x) for x in args.hint_layers.split(","))
    captured: dict[int, torch.Tensor] = {}
    if args.hint_loss > 0 or args.word_hint > 0 or args.clause_hint > 0 or args.object_hint > 0:
        capture_layers(model, set(hint_layers) | ({args.word_hint_layer} if args.word_hint > 0 else set())
                       | ({args.clause_hint_layer} if args.clause_hint > 0 else set())
                       | ({args.object_hint_layer, args.object_shape_layer} - {0} if args.object_hint > 0 else set()),
                       captured)
    readouts = None
    if args.relation_loss > 0 and args.relation_readout == "linear":
        hidden_size = model.config.text_config.hidden_size
        readouts = torch.nn.ModuleList(torch.nn.Linear(hidden_size, hidden_size) for _ in data.relation_loss_layers)
        for lin in readouts:
            torch.nn.init.eye_(lin.weight)
            torch.nn.init.zeros_(lin.bias)
    trained = list(model.parameters()) + (list(readouts.parameters()) if readouts is not None else [])
    opt = torch.optim.AdamW(trained, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    text = model.config.text_config
    n_params = sum(q.numel() for q in model.parameters())
    print(f"model {n_params / 1e6:.2f}M params, LM {text.num_hidden_layers} layers x {text.num_attention_heads} heads "
          f"({text.num_key_value_heads} kv), rope {text.rope_parameters}, init {args.init}; task {args.style} "
          f"{args.relations} list={args.list}; eval {sum(len([f for f in i if f is not None]) for _, i in eval_set)} "
          f"questions on {args.eval_scenes} fresh scenes; setup {time.time() - t0:.1f} s", flush=True)

    def report(step, loss_avg, rate):
        r = evaluate(model, encoder, eval_set, args)
        buckets = " | ".join(f"{k} {v[0]:.3f} (n={v[1]})" for k, v in r.items() if k != "all")
        print(f"step {step:5d} loss {loss_avg:.4f} acc {r['all'][0]:.3f} [{buckets}] {rate:.1f} scenes/s "
              f"{time.time() - t0:.0f} s", flush=True)
        if args.report_words and args.style == "yes_no":
            for w, row in sorted(evaluate_by_word(model, encoder, eval_set, hint_layers, args.word_hint_layer).items()):
                print(f"    {w:12s} answer {row['answer']:.3f} (said yes {row['said_yes']:.2f}) | subject hint "
                      f"{row['subject']:.3f} | word hint {row['word']:.3f} | set hint {row['set']:.3f} "
                      f"(n={row['n']})", flush=True)
        if match_set or pair_set:
            r = evaluate_match(model, encoder, match_set, pair_set)
            print("    " + " | ".join(f"{k} {v[0]:.3f} (n={v[1]})" for k, v in r.items()), flush=True)

    report(0, float("nan"), 0.0)
    model.train()
    window, aux, t_win, scenes = [], [], time.time(), 0
    step = 0
    budget = args.minutes * 60
    while step < args.max_steps and time.time() - t0 < budget:
        lr = args.lr * min(1.0, (step + 1) / max(1, args.warmup))
        for g in opt.param_groups:
            g["lr"] = lr
        rng = np.random.default_rng([args.seed, 1, step])
        batch = encode_mixed(encoder, [make_match_example(rng, world, args)[0] if rng.random() < args.match_fraction
                                       else make_example(rng, world, args)[0] for _ in range(args.batch)],
                             clause_hints=args.clause_hint > 0, object_hints=args.object_hint > 0)
        hints = {k: batch.pop(k) for k in ("hint_where", "hint_first", "hint_set", "hint_word", "clause_where",
                                           "clause_holds", "mention_where", "mention_kind", "mention_shape",
                                           "mention_colour_at") if k in batch}
        captured.clear()
        loss, parts = pretrain_loss(model, batch, encoder, data, readouts)
        if args.hint_loss > 0 and "hint_where" in hints:
            h = hint_loss(model, encoder, captured, hints, hint_layers)
            parts["loss/hint"] = h.item()
            loss = loss + args.hint_loss * h
        if args.clause_hint > 0 and "clause_where" in hints:
            h = clause_hint_loss(model, encoder, captured, hints, args.clause_hint_layer)
            parts["loss/clause_hint"] = h.item()
            loss = loss + args.clause_hint * h
        if args.object_hint > 0 and "mention_where" in hints:
            h, acc = object_hint_loss(model, encoder, captured, hints, args.object_hint_layer,
                                      args.object_shape_layer)
            parts["loss/object_hint"] = h.item()
            parts.update({k: v for k, v in acc.items() if not np.isnan(v)})
            loss = loss + args.object_hint * h
        if args.word_hint > 0 and "hint_where" in hints:
            h = word_hint_loss(model, encoder, captured, hints, args.word_hint_layer)
            parts["loss/word_hint"] = h.item()
            loss = loss + args.word_hint * h
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        step += 1
        scenes += args.batch
        window.append(parts["loss/text"])
        aux.append({k: v for k, v in parts.items() if k != "loss/text"})
        if step % args.eval_every == 0:
            report(step, float(np.mean(window)), scenes / (time.time() - t_win))
            keys = list(dict.fromkeys(k for a in aux for k in a))  # a batch without match rows has no clause loss
            if keys:
                print("    aux " + " ".join(f"{k} {np.mean([a[k] for a in aux if k in a]):.4f}" for k in keys),
                      flush=True)
            window, aux, t_win, scenes = [], [], time.time(), 0
    if step % args.eval_every:
        report(step, float(np.mean(window)) if window else float("nan"), scenes / max(1e-9, time.time() - t_win))
    if args.save:
        model.save_pretrained(args.save)
        processor.save_pretrained(args.save)
        print(f"saved to {args.save}", flush=True)
    return 0


# ------------------------------------------------------------------------------------------------ the curriculum


def load_plan(path) -> dict:
    """configs/backbone_curriculum.yaml: `common` (arguments of every stage) and `stages` (name -> arguments, in
    order; the first starts from the base backbone, each later one from the folder the one before it saved)."""
    import yaml

    from spatialrl.config import ConfigError, repo_path

    p = repo_path(path)
    if not p.is_file():
        raise ConfigError(f"curriculum plan {path}: no such file (the shipped one: configs/backbone_curriculum.yaml)")
    plan = yaml.safe_load(p.read_text()) or {}
    stages = plan.get("stages")
    if not isinstance(stages, dict) or not stages or not all(isinstance(a, list) for a in stages.values()):
        raise ConfigError(f"{path}: `stages` must map each stage name to its list of arguments")
    common = plan.get("common", [])
    if not isinstance(common, list):
        raise ConfigError(f"{path}: `common` must be a list of arguments")
    for name, stage_args in stages.items():
        if any(a in ("--init", "--save", "--base") for a in map(str, stage_args)):
            raise ConfigError(f"{path}: stage {name} sets --init/--save/--base; the runner chains those itself")
    return {"common": [str(a) for a in common], "stages": {k: [str(a) for a in v] for k, v in stages.items()}}


def run_curriculum(plan_path, out: Path, stages: list[str] | None = None, init: str = "", base: str = "",
                   threads: int = 1, extra: list[str] | None = None) -> Path:
    """Run the plan's stages (all, or the named ones, in plan order) into out/<stage> (model folder) and
    out/<stage>.log; a stage whose folder already holds a model is reused, so a stopped run continues with the
    next stage. The first stage run starts from `init` (a saved folder) when given, else from the previous
    stage's folder in `out`, else (the plan's first stage) from `base` grown. Returns the last stage's folder."""
    import contextlib

    from spatialrl.config import ConfigError

    plan = load_plan(plan_path)
    names = list(plan["stages"])
    chosen = stages or names
    unknown = [s for s in chosen if s not in plan["stages"]]
    if unknown:
        raise ConfigError(f"unknown curriculum stage(s) {unknown}; the plan has {names}")
    chosen = [s for s in names if s in chosen]
    out.mkdir(parents=True, exist_ok=True)
    prev = init
    if not prev and names.index(chosen[0]) > 0:
        before = out / names[names.index(chosen[0]) - 1]
        if not (before / "config.json").is_file():
            raise ConfigError(f"stage {chosen[0]} continues {before.name}, and {before} holds no model: run that "
                              f"stage first, or pass --init with a folder to start from (e.g. a shipped resume point "
                              f"in assets/tiny-pretrained/qwen2_5_vl_curriculum/)")
        prev = str(before)
    for name in chosen:
        folder = out / name
        if (folder / "config.json").is_file():
            print(f"== {name}: reusing {folder}", flush=True)
            prev = str(folder)
            continue
        argv = [*plan["common"], *plan["stages"][name], *(extra or []), "--threads", str(threads),
                "--init", prev or "shipped", "--save", str(folder)]
        if base:
            argv += ["--base", base]
        print(f"== {name}: {' '.join(argv)}  (log: {out / (name + '.log')})", flush=True)
        t0 = time.time()
        with open(out / f"{name}.log", "w") as log, contextlib.redirect_stdout(log):
            main(argv)
        lines = (out / f"{name}.log").read_text().splitlines()
        last = [ln for ln in lines if ln.startswith("step ")][-1:]
        match = [ln.strip() for ln in lines if ln.strip().startswith("match/")][-1:]
        for ln in last + match:
            print(f"   {ln[:220]}", flush=True)
        print(f"   ({time.time() - t0:.0f} s)", flush=True)
        prev = str(folder)
    return Path(prev)


if __name__ == "__main__":
    raise SystemExit(main())
