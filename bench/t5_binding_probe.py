"""Can the toy generator's text states tell where each object should go? A linear probe on the T5 encoder.

The toy Flux's text tokens carry no positions (txt_ids are zeros, as in FLUX.1), so the transformer sees each prompt
as a set of T5 states: whether "the red circle is left of the blue square" puts the red circle on the left can only
be read from what T5 mixed into the red circle's own tokens. This probe asks exactly that. For every object that
stands in exactly one direction on an axis (left vs right, or up vs down, over the prompt's stated relations), it
takes the T5 states at each mention of the object (its colour token and the shape token after it), averages them
over mentions (the feature `text.role_loss` of jobs.pretrain_generator trains on), and fits a logistic regression
on training prompts of the easy world; it prints the accuracy on held-out prompts (chance 0.5; the share of the
larger class is printed too). The prompts are the generator's own (`make_pair` of the world, seeds 1 and 2).

Arms (`--arm`, comma list), each on the T5 of `--model` (default: the shipped toy generator): `embed` (the token
embeddings, before any mixing: the bag-of-words floor), `t5` (the T5 as saved; the shipped one's four heads of the
first layer attend to the previous / next / same / 2-7-before token),
`after` (the same T5 with the "same token" head pointed at 2-7 tokens after instead: every token then sees the
relation word that follows it), `wide` (no locality prior at all: the T5 with its first layer's position bias zeroed).

    .venv/bin/python bench/t5_binding_probe.py [--model DIR] [--train 2000] [--test 1000] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path.cwd()
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from spatialrl.standins.generator import (  # noqa: E402
    linear_probe_accuracy, load_world_preset, make_examples, role_features,
)


def variant(folder: Path, arm: str):
    """The T5 of `folder`, changed as the arm says (see the module docstring)."""
    from transformers import T5EncoderModel

    t5 = T5EncoderModel.from_pretrained(folder / "text_encoder_2").eval()
    bias = t5.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight  # [buckets, heads]
    with torch.no_grad():
        if arm == "after":  # head 2 ("same token", bucket 0) -> 2-7 tokens after (bucket 6)
            bias[:, 2] = 0
            bias[6, 2] = 10.0
        elif arm == "wide":
            bias.zero_()
        elif arm == "embed":  # no mixing at all: the features are the token embeddings
            return _Embed(t5)
    return t5


class _Embed(torch.nn.Module):
    def __init__(self, t5):
        super().__init__()
        self.t5 = t5

    def forward(self, input_ids):
        return (self.t5.get_input_embeddings()(input_ids),)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="assets/tiny-pretrained/flux", help="a toy FluxPipeline folder")
    p.add_argument("--arm", default="embed,t5,after,wide")
    p.add_argument("--world", default="configs/dataset_easy.yaml")
    p.add_argument("--train", type=int, default=2000, help="training prompts for the probe")
    p.add_argument("--test", type=int, default=1000, help="held-out prompts")
    p.add_argument("--max-len", type=int, default=96)
    p.add_argument("--json", default="")
    args = p.parse_args()
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    folder = Path(args.model)
    if not (folder / "text_encoder_2" / "config.json").is_file():
        print(f"--model {folder}: not a FluxPipeline folder (no text_encoder_2/config.json)", file=sys.stderr)
        return 2
    tok = AutoTokenizer.from_pretrained(folder / "tokenizer_2")
    world = load_world_preset(args.world)
    train, test = make_examples(world, args.train, 1, "train"), make_examples(world, args.test, 2, "test")
    out = {"model": str(folder), "world": args.world}
    for arm in args.arm.split(","):
        t5 = variant(folder, arm)
        xa, ya, aa = role_features(t5, tok, train.prompts, train.structured, args.max_len)
        xb, yb, ab = role_features(t5, tok, test.prompts, test.structured, args.max_len)
        row = {}
        for axis, name in ((0, "horizontal"), (1, "vertical")):
            acc = linear_probe_accuracy(xa[aa == axis], ya[aa == axis], xb[ab == axis], yb[ab == axis])
            share = float(yb[ab == axis].float().mean())
            row[name] = {"accuracy": round(acc, 3), "majority": round(max(share, 1 - share), 3),
                         "n_test": int((ab == axis).sum()), "n_train": int((aa == axis).sum())}
        out[arm] = row
        h, v = row["horizontal"], row["vertical"]
        print(f"{arm:6s} horizontal {h['accuracy']:.3f} (majority {h['majority']:.3f}, n={h['n_test']})  "
              f"vertical {v['accuracy']:.3f} (majority {v['majority']:.3f}, n={v['n_test']})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
