"""Tiny, randomly initialised Qwen2.5-VL and Flux models, saved in the exact Hugging Face / diffusers layouts.

Why: every test, smoke run and `tiny` preset must exercise the *same* loading code as the real
`Qwen/Qwen2.5-VL-7B-Instruct` and `black-forest-labs/FLUX.1-dev` checkpoints, on a CPU, with no network.
So these fixtures are real `transformers` / `diffusers` classes built from configs, with tokenizers trained
here (the `tokenizers` library) on a small built-in corpus of spatial-scene sentences, and written with
`save_pretrained`. Loading them back goes through `from_pretrained` like any downloaded folder
(`spatialrl.models.loader`). The weights are random, so outputs are meaningless but deterministic given `seed`.

How the fixtures mirror the real models (and where they do not):
- Qwen2.5-VL: same classes, same special tokens in the same relative order, the public chat-template
  structure, left padding (the reward model reads the last token). The image processor has
  `min_pixels == max_pixels == image_size**2`, so every square input becomes one `image_size` square
  (112 -> 8x8 patches of 14 -> 16 merged `<|image_pad|>` tokens), the fixed-resolution convention of
  HPSv3-style reward models. Sizes: hidden 64, 2 layers, vocabulary ~1000.
- Flux: FluxTransformer2DModel (in_channels 64, guidance embedding), an AutoencoderKL with 8x downsampling,
  16 latent channels and Flux's scaling/shift factors, CLIP + T5 text encoders and the FLUX.1-dev scheduler.
  The pipeline's default height/width is 1024 (hard-coded in diffusers), so callers pass `height`/`width`;
  they must be multiples of 16. `sample_size` is stored on the VAE config as the intended pixel size.

Run:
    python -m spatialrl.models.fixtures --kind qwen --out /tmp/tiny-qwen [--seed 0]
    python -m spatialrl.models.fixtures --kind flux --out /tmp/tiny-flux [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from collections import Counter
from pathlib import Path

import torch

# Bump when the fixture recipe changes; the loader rebuilds cached fixtures whose stamp differs.
FIXTURE_VERSION = 1
STAMP_FILE = "spatialrl_fixture.json"

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "cyan", "pink", "brown", "black"]
SHAPES = ["circle", "square", "triangle", "diamond"]
RELATIONS = [
    "is to the left of",
    "is to the right of",
    "is above",
    "is below",
    "is in front of",
    "is behind",
    "is bigger than",
    "is smaller than",
    "is next to",
]
BACKGROUNDS = ["white", "gray", "grey", "light blue", "beige", "checkered", "striped", "plain"]
GENERIC = (
    "a an the of on in to with and or not is are there this that image picture photo scene shows contains "
    "object objects shape shapes background foreground left right top bottom middle center near far large "
    "small big tiny one two three four five prompt rate score how well does match describe description spatial "
    "relation relationship relationships correct incorrect yes no you are a helpful assistant please answer "
    "question system user 0 1 2 3 4 5 6 7 8 9 . , : ; ? ! ' \" ( ) - / = + % # @ & * [ ] { } < > _"
)

# Qwen2.5-VL special tokens, in the order (and so with the relative ids) of the real tokenizer, where they
# follow the BPE vocabulary starting at 151643.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The structure of the public Qwen2-VL / Qwen2.5-VL chat template (default system prompt, image and video
# items as vision-start / pad / vision-end, optional "Picture N:" ids, generation prompt), written out here.
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def spatial_corpus() -> list[str]:
    """A deterministic corpus of spatial-scene sentences plus generic words (about 4k lines)."""
    lines = []
    for (c1, s1), rel, (c2, s2) in itertools.product(
        itertools.product(COLORS, SHAPES), RELATIONS, itertools.product(COLORS[::3], SHAPES[::2])
    ):
        lines.append(f"A {c1} {s1} {rel} a {c2} {s2}.")
    for bg, (c, s) in itertools.product(BACKGROUNDS, itertools.product(COLORS, SHAPES)):
        lines.append(f"a {c} {s} on a {bg} background")
        lines.append(f"There is one {c} {s} in the image, the background is {bg}.")
    lines.append(GENERIC)
    lines.append(GENERIC.upper())
    lines.extend(w.capitalize() for w in GENERIC.split())
    return lines


# ----------------------------------------------------------------------------------------------- tokenizers


def _learn_bpe(backend, num_merges: int, suffix: str = "", corpus: list[str] | None = None) -> list[tuple[str, str]]:
    """Learn BPE merges on `corpus` (default `spatial_corpus()`), as pieces of `backend`'s normalizer and
    pre-tokenizer.

    A plain loop rather than `tokenizers.trainers.BpeTrainer`: the trainer breaks ties between equally
    frequent pairs in hash order, so two builds could swap merges and token ids (seen as a flaky fixture).
    Here ties go to the lexicographically smallest pair, so the vocabulary is identical on every run.
    `suffix` marks the last symbol of each word (CLIP's `</w>`).
    """
    words: Counter[tuple[str, ...]] = Counter()
    for line in corpus if corpus is not None else spatial_corpus():
        text = backend.normalizer.normalize_str(line) if backend.normalizer else line
        for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text):
            symbols = list(piece)
            symbols[-1] += suffix
            words[tuple(symbols)] += 1
    merges = []
    while len(merges) < num_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break  # every word is a single token
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        merged = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i : i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


def _byte_alphabet() -> list[str]:
    # The 256 byte-level symbols in GPT-2 / Qwen / CLIP vocabulary order: printable bytes stand for themselves
    # and the rest are shifted to 256+, so sorting by code point gives the real order.
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet(), key=ord)


def _train_qwen_tokenizer(vocab_size: int, corpus: list[str] | None = None):
    """Byte-level BPE with Qwen2's normalizer and pre-tokenizer, wrapped as a `Qwen2Tokenizer`.

    `corpus` (default `spatial_corpus()`) is what the merges are learned on; `spatialrl.standins.backbone`
    passes a larger one so that every word of the spatial world's prompts is a single token, as in a real
    150k-token vocabulary."""
    from transformers import AddedToken, Qwen2Tokenizer

    # An empty Qwen2Tokenizer lends its exact normalizer and pre-tokenizer, so the merges are learned on the
    # same pieces the final tokenizer will see.
    template = Qwen2Tokenizer().backend_tokenizer
    alphabet = _byte_alphabet()  # all 256 byte symbols: any text (any language, emoji) tokenizes, no unknowns
    merges = _learn_bpe(template, vocab_size - len(QWEN_SPECIAL_TOKENS) - len(alphabet), corpus=corpus)
    vocab = {t: i for i, t in enumerate(alphabet + [a + b for a, b in merges])}
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        # No special tokens yet: the constructor would add eos before pad and scramble the id order.
        unk_token=None,
        bos_token=None,
        eos_token=None,
        pad_token=None,
        padding_side="left",
        model_max_length=32768,
        errors="replace",
    )
    # Added in the real order so that the ids follow the BPE vocabulary as 151643.. do in Qwen.
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS], special_tokens=True)
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    tok.chat_template = QWEN_CHAT_TEMPLATE
    return tok


def _train_clip_tokenizer(folder: Path, vocab_size: int):
    """CLIP BPE (with the `</w>` end-of-word suffix), written as vocab.json + merges.txt and loaded back.

    `CLIPTokenizer(vocab_file=..., merges_file=...)` silently ignores the files in transformers 5.x (the
    tokenizer ends up with 2 tokens), so we go through `from_pretrained(folder)`, which works in 4.x and 5.x.
    """
    from transformers import CLIPTokenizer

    template = CLIPTokenizer().backend_tokenizer
    # The real CLIP layout: 256 byte symbols, the same with `</w>`, one token per merge, then the two specials
    # (so <|endoftext|> is the last id, as 49407 is in openai/clip-vit-large-patch14).
    alphabet = _byte_alphabet()
    tokens = alphabet + [s + "</w>" for s in alphabet]
    merges = _learn_bpe(template, vocab_size - len(tokens) - 2, suffix="</w>")
    tokens += [a + b for a, b in merges] + ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    merges_txt = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (folder / "merges.txt").write_text(merges_txt, encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)
    for leaked in ("is_local", "local_files_only"):  # loading kwargs that save_pretrained would write out
        tokenizer.init_kwargs.pop(leaked, None)
    return tokenizer


def _build_t5_tokenizer():
    """Unigram tokenizer for T5, wrapped as `T5Tokenizer` (the same class as T5TokenizerFast in 5.x).

    The pieces are estimated directly from corpus counts (every word as `▁word`, plus every character, so
    unseen words fall back to characters) instead of `tokenizers.UnigramTrainer`: on a corpus this small the
    trainer keeps ~280 pieces and splits common words like "left" into letters.
    """
    import math
    import re

    from transformers import T5Tokenizer

    words, chars = Counter(), Counter()
    for line in spatial_corpus():
        for word in re.findall(r"\w+|[^\w\s]", line):
            words["\u2581" + word] += 1
            chars.update(word)
    total = sum(words.values()) + sum(chars.values())
    pieces = [("\u2581", math.log(1 / total))]  # a lone word boundary, needed before unseen words
    pieces += [(w, math.log(n / total)) for w, n in sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))]
    # Characters get a fixed low score so that whole-word pieces always win when they exist.
    pieces += [(c, math.log(1 / total) - 5.0) for c in sorted(chars)]
    pieces += [("\u2581" + c, math.log(1 / total) - 5.0) for c in sorted(chars) if "\u2581" + c not in words]
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]  # ids 0, 1, 2 as in T5
    return T5Tokenizer(vocab=specials + pieces, extra_ids=0, model_max_length=512)


# -------------------------------------------------------------------------------------------------- builders


def _write_stamp(out_dir: Path, kind: str, **params) -> None:
    stamp = {"kind": kind, "version": FIXTURE_VERSION, **params}
    (out_dir / STAMP_FILE).write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")


def build_tiny_qwen2_5_vl(
    out_dir: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    image_size: int = 112,
    seed: int = 0,
    vocab_size: int = 1024,
) -> Path:
    """Build a random tiny Qwen2.5-VL (model + processor) and save it to `out_dir`; returns the folder.

    The folder holds config.json, model.safetensors, generation_config.json, the tokenizer files,
    chat_template.jinja and processor_config.json (`processor_class: Qwen2_5_VLProcessor`), so
    `AutoProcessor` / `Qwen2_5_VLForConditionalGeneration.from_pretrained` load it like the real model.
    """
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    patch, merge = 14, 2
    if image_size % (patch * merge):
        raise ValueError(f"image_size must be a multiple of {patch * merge} (patch 14 x merge 2); got {image_size}")
    num_heads = 4
    head_dim = hidden_size // num_heads
    if hidden_size % num_heads or head_dim % 2:
        raise ValueError(f"hidden_size must be a multiple of {2 * num_heads}; got {hidden_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = _train_qwen_tokenizer(vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    # Fixed resolution: every image is resized to about image_size**2 pixels (HPSv3 uses min == max too).
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessor(
        min_pixels=pixels, max_pixels=pixels, patch_size=patch, merge_size=merge, temporal_patch_size=2
    )
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=pixels, max_pixels=pixels, patch_size=patch, merge_size=merge, temporal_patch_size=2
    )
    processor = Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN_CHAT_TEMPLATE,
    )

    # M-RoPE splits each head's rotary half (head_dim / 2 frequencies) into temporal / height / width
    # sections; they must sum to head_dim / 2 (real 7B: head_dim 128 -> [16, 24, 24]).
    half = head_dim // 2
    mrope = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
    text_config = dict(
        vocab_size=max(vocab_size, len(tokenizer)),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision_config = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        patch_size=patch,
        spatial_merge_size=merge,
        temporal_patch_size=2,
        window_size=112,
        out_hidden_size=hidden_size,  # the merger projects straight into the text embedding space
        fullatt_block_indexes=[1],  # last block full attention, earlier ones windowed, like the 7B
    )
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    _write_stamp(
        out_dir, "qwen", hidden_size=hidden_size, num_layers=num_layers, image_size=image_size, seed=seed,
        vocab_size=vocab_size,
    )
    return out_dir


def build_tiny_flux(out_dir: str | Path, *, seed: int = 0, sample_size: int = 64) -> Path:
    """Build a random tiny FluxPipeline and save it to `out_dir` with `save_pretrained`; returns the folder.

    Layout as black-forest-labs/FLUX.1-dev: model_index.json plus scheduler/, text_encoder/, tokenizer/,
    text_encoder_2/, tokenizer_2/, transformer/, vae/.
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    if sample_size % 16:
        raise ValueError(f"sample_size must be a multiple of 16 (VAE 8x times 2x2 packing); got {sample_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text_dim = 32

    with tempfile.TemporaryDirectory() as tmp:
        clip_tokenizer = _train_clip_tokenizer(Path(tmp) / "clip", vocab_size=1000)
    t5_tokenizer = _build_t5_tokenizer()

    torch.manual_seed(seed)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tokenizer),
            hidden_size=text_dim,
            intermediate_size=2 * text_dim,
            projection_dim=text_dim,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,  # the pipeline pads CLIP prompts to tokenizer.model_max_length (77)
            hidden_act="quick_gelu",
            bos_token_id=clip_tokenizer.bos_token_id,
            eos_token_id=clip_tokenizer.eos_token_id,  # pooling reads the first eos position
            pad_token_id=clip_tokenizer.pad_token_id,
        )
    )
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer),
            d_model=text_dim,
            d_kv=8,
            d_ff=2 * text_dim,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",  # T5 v1.1, as the t5-xxl encoder Flux uses
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels x 2x2 packing
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=text_dim,  # T5 hidden size
        pooled_projection_dim=text_dim,  # CLIP pooled output size
        guidance_embeds=True,  # FLUX.1-dev is guidance-distilled: guidance is a model input
        axes_dims_rope=(4, 6, 6),  # must sum to attention_head_dim (real: 16 + 56 + 56 = 128)
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,  # 3 downsamplings -> vae_scale_factor 8, as Flux
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=sample_size,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    # Modules built from configs start in train() mode; T5's dropout would make prompts non-deterministic.
    for module in (clip, t5, transformer, vae):
        module.eval()
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
    pipe.save_pretrained(out_dir)
    _write_stamp(out_dir, "flux", seed=seed, sample_size=sample_size)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=["qwen", "flux"], required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder to write (created if missing)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build = build_tiny_qwen2_5_vl if args.kind == "qwen" else build_tiny_flux
    path = build(args.out, seed=args.seed)
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    print(f"wrote tiny {args.kind} fixture to {path} ({size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
