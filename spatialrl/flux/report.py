"""The evaluation report of jobs.evaluate: `scores.jsonl`, `report.md` (+ `report_files/`) and a self-contained
`report.html` (every image embedded as a data URI, no network, opens from a laptop's file browser).

What it shows, for a base model and optionally its LoRA side by side (same prompts, same seeds, image for image):
- per-category scores of every judge metric with 95% confidence intervals (mean +- 1.96 sd / sqrt n over images),
  and for two variants the paired gain (LoRA - base over the same images) with its own interval; the categories
  the paper's Table 2 reports come first;
- image grids of the prompts with the biggest wins and losses on the primary metric (base row above LoRA row);
- a reward-vs-judge scatter (SpatialScore against the verifier, or the VLM judge where there is no verifier): a
  LoRA whose points climb in reward without moving right is hacking the reward, and the report says so when the
  reward's paired gain is clearly positive while the judge's is not;
- the settings (seeds, models, the command) so that the run can be repeated exactly.

    write_report(out_dir, rows, images, settings)  # rows: one dict per image (variant, item_id, k, scores, ...)
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from spatialrl.flux.evaluation import image_grid, paired_gain

PRIMARY = ("verifier/relation_accuracy", "vlm", "spatialscore")  # the first one present ranks wins and losses
TRUTH = ("verifier/relation_accuracy", "vlm")  # the x axis of the hacking scatter, against spatialscore
Z = 1.96


def mean_ci(values) -> tuple[float, float, int]:
    """Mean, the half-width of its normal 95% interval (1.96 sd(ddof 1) / sqrt n) and n, NaN/None skipped."""
    v = np.asarray([float(x) for x in values if x is not None and not math.isnan(float(x))])
    if len(v) == 0:
        return math.nan, math.nan, 0
    if len(v) == 1:
        return float(v[0]), math.nan, 1
    return float(v.mean()), float(Z * v.std(ddof=1) / math.sqrt(len(v))), int(len(v))


def value_of(row: dict, metric: str, category: str) -> float | None:
    """A row's value of `metric` in `category`: the VLM judge's per-category share where it has one."""
    s = row["scores"]
    if metric == "vlm" and f"vlm/cat/{category}" in s:
        return s[f"vlm/cat/{category}"]
    return s.get(metric)


def metrics_of(rows: list[dict]) -> list[str]:
    found = {m for r in rows for m in r["scores"] if not m.startswith("vlm/cat/")}
    order = ["spatialscore", "verifier/relation_accuracy", "verifier/object_presence", "verifier/all_correct",
             "vlm", "vlm/soft"]
    return [m for m in order if m in found] + sorted(found - set(order))


def categories_of(rows: list[dict], first: list[str] | None = None) -> list[str]:
    seen = sorted({c for r in rows for c in r["categories"]})
    lead = [c for c in (first or []) if c in seen]
    return ["all"] + lead + [c for c in seen if c not in lead]


def by_variant(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["variant"], []).append(r)
    for v in out.values():
        v.sort(key=lambda r: (r["index"], r["k"]))
    return out


def category_table(rows: list[dict], first_categories: list[str] | None = None) -> list[dict]:
    """One entry per (category, metric): per variant (mean, ci, n) and, for base + lora, the paired gain."""
    groups = by_variant(rows)
    table = []
    for cat in categories_of(rows, first_categories):
        for m in metrics_of(rows):
            entry = {"category": cat, "metric": m, "variants": {}}
            per = {}
            for name, rs in groups.items():
                vals = [value_of(r, m, cat) if cat == "all" or cat in r["categories"] else None for r in rs]
                per[name] = vals
                entry["variants"][name] = mean_ci(vals)
            if all(n == 0 for _, _, n in entry["variants"].values()):
                continue
            if "base" in per and "lora" in per:
                gain, se, n = paired_gain(per["base"], per["lora"])
                entry["gain"] = (gain, Z * se if not math.isnan(se) else math.nan, n)
            table.append(entry)
    return table


def primary_metric(rows: list[dict]) -> str | None:
    have = set(metrics_of(rows))
    return next((m for m in PRIMARY if m in have), None)


def wins_and_losses(rows: list[dict], metric: str, n: int) -> tuple[list[tuple], list[tuple]]:
    """Prompts ranked by the mean paired gain over their images (LoRA - base), or by the base score alone when
    there is no LoRA: ([(index, value)] best first, [(index, value)] worst first)."""
    groups = by_variant(rows)
    per_item: dict[int, list[float]] = {}
    if "lora" in groups:
        for b, a in zip(groups["base"], groups["lora"]):
            vb, va = b["scores"].get(metric), a["scores"].get(metric)
            if vb is not None and va is not None and not (math.isnan(vb) or math.isnan(va)):
                per_item.setdefault(b["index"], []).append(va - vb)
    else:
        for r in groups["base"]:
            v = r["scores"].get(metric)
            if v is not None and not math.isnan(v):
                per_item.setdefault(r["index"], []).append(v)
    ranked = sorted(((i, float(np.mean(v))) for i, v in per_item.items()), key=lambda t: (-t[1], t[0]))
    wins = ranked[:n]
    losses = [t for t in reversed(ranked) if t not in wins][:n]
    return wins, losses


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def item_grid(images: dict[str, np.ndarray], rows: list[dict], index: int, scale: int = 2) -> Image.Image:
    """The images of one prompt: a row per variant (base, then lora), a column per sample."""
    groups = by_variant(rows)
    tiles = []
    for name in ("base", "lora"):
        if name in groups:
            tiles += [images[name][j] for j, r in enumerate(groups[name]) if r["index"] == index]
    grid = image_grid(np.stack(tiles), rows=len([v for v in ("base", "lora") if v in groups]))
    return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST) if scale > 1 else grid


def scatter_plot(rows: list[dict]) -> tuple[bytes | None, str | None, str]:
    """(PNG, x metric, verdict) of SpatialScore against the truth judge, one point per image, per variant."""
    have = set(metrics_of(rows))
    x_metric = next((m for m in TRUTH if m in have), None)
    if "spatialscore" not in have or x_metric is None:
        return None, None, ("no scatter: it needs the spatialscore judge and the verifier or the VLM judge "
                            "(--judge spatialscore,vlm --spatialscore CKPT)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = by_variant(rows)
    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=100)
    rng = np.random.default_rng(0)
    means = {}
    for name, colour in (("base", "tab:blue"), ("lora", "tab:red")):
        if name not in groups:
            continue
        xs = np.array([r["scores"].get(x_metric, math.nan) for r in groups[name]], dtype=float)
        ys = np.array([r["scores"].get("spatialscore", math.nan) for r in groups[name]], dtype=float)
        jitter = rng.uniform(-0.015, 0.015, len(xs))  # accuracies are fractions of few relations: spread ties
        ax.scatter(xs + jitter, ys, s=14, alpha=0.6, color=colour, label=f"{name} images")
        means[name] = (np.nanmean(xs), np.nanmean(ys))
        ax.scatter(*means[name], s=160, marker="X", color=colour, edgecolor="black", label=f"{name} mean")
    if len(means) == 2:
        ax.annotate("", xy=means["lora"], xytext=means["base"],
                    arrowprops={"arrowstyle": "->", "color": "black", "lw": 1.5})
    ax.set_xlabel(f"{x_metric} (judge of truth)")
    ax.set_ylabel("SpatialScore (the RL reward)")
    ax.set_title("reward vs judge: up without right = reward hacking", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    verdict = hacking_verdict(rows, x_metric)
    return buf.getvalue(), x_metric, verdict


def hacking_verdict(rows: list[dict], x_metric: str) -> str:
    groups = by_variant(rows)
    if "lora" not in groups:
        return "one variant only: run with --lora to compare the reward's gain with the judge's"
    g = {}
    for m in ("spatialscore", x_metric):
        g[m] = paired_gain([r["scores"].get(m) for r in groups["base"]], [r["scores"].get(m) for r in groups["lora"]])
    (rg, rse, _), (tg, tse, _) = g["spatialscore"], g[x_metric]
    text = (f"paired gain LoRA - base: SpatialScore {rg:+.3f} (se {rse:.3f}), {x_metric} {tg:+.3f} "
            f"(se {tse:.3f}). ")
    if rse > 0 and rg > 2 * rse and not (tse > 0 and tg > 2 * tse):
        return text + "WARNING: the reward rose clearly while the judge did not: possible reward hacking."
    return text + "No sign of reward hacking (the reward does not rise clearly without the judge)."


# ------------------------------------------------------------------------------------------------ writing


def _fmt(mean: float, ci: float, n: int) -> str:
    if n == 0:
        return "-"
    return f"{mean:.3f}" if math.isnan(ci) else f"{mean:.3f} ± {ci:.3f}"


def _no_nan(x):
    """JSON without NaN (null instead), tuples as lists."""
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_no_nan(v) for v in x]
    return None if isinstance(x, float) and math.isnan(x) else x


def write_scores(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(_no_nan(r)) + "\n")


def write_report(out: Path, rows: list[dict], images: dict[str, np.ndarray], settings: dict,
                 first_categories: list[str] | None = None, top_n: int = 3) -> dict:
    """scores.jsonl, report.md (+ report_files/*.png) and report.html in `out`; returns the summary it printed."""
    out = Path(out)
    files = out / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    write_scores(out / "scores.jsonl", rows)
    variants = [v for v in ("base", "lora") if v in by_variant(rows)]
    table = category_table(rows, first_categories)
    metric = primary_metric(rows)
    wins, losses = wins_and_losses(rows, metric, top_n) if metric else ([], [])
    prompts = {r["index"]: r["prompt"] for r in rows}
    pictures: list[tuple[str, str, bytes]] = []  # (section, caption, png)
    for title, ranked in (("biggest wins" if "lora" in variants else "best", wins),
                          ("biggest losses" if "lora" in variants else "worst", losses)):
        for idx, val in ranked:
            what = f"{metric} gain {val:+.3f}" if "lora" in variants else f"{metric} {val:.3f}"
            cap = f"{title}: prompt {idx} ({what}): {prompts[idx]}"
            pictures.append((title, cap, _png(item_grid(images, rows, idx))))
    scatter, x_metric, verdict = scatter_plot(rows)
    summary = {"variants": variants, "n_images": {v: len(by_variant(rows)[v]) for v in variants},
               "primary_metric": metric, "hacking": verdict, "table": table}
    (out / "summary.json").write_text(json.dumps(_no_nan(summary), indent=2) + "\n")

    # markdown, images beside it
    counts = ", ".join(f"{n} {v}" for v, n in summary["n_images"].items())
    head = "| category | metric | " + " | ".join(variants) + (" | gain (lora - base) |" if len(variants) == 2 else " |")
    md = [f"# {settings.get('benchmark', 'evaluation')}: {', '.join(variants)}", "",
          f"{counts} images; each cell is the mean over images with its 95% interval; "
          f"primary metric `{metric}`.", "", head, "|" + "---|" * (len(variants) + 2 + (len(variants) == 2))]
    for e in table:
        cells = [_fmt(*e["variants"][v]) for v in variants]
        if len(variants) == 2:
            cells.append(_fmt(*e["gain"]) if "gain" in e else "-")
        md.append(f"| {e['category']} | {e['metric']} | " + " | ".join(cells) + " |")
    md += ["", "## Images", ""]
    for i, (_, cap, png) in enumerate(pictures):
        name = f"grid_{i}.png"
        (files / name).write_bytes(png)
        md += [f"![{html.escape(cap[:60])}](report_files/{name})", "", cap, ""]
    md += ["## Reward vs judge", "", verdict, ""]
    if scatter:
        (files / "scatter.png").write_bytes(scatter)
        md += ["![scatter](report_files/scatter.png)", ""]
    md += ["## Settings (repeat the run with these)", "", "```yaml", yaml.safe_dump(settings, sort_keys=False).strip(),
           "```", ""]
    (out / "report.md").write_text("\n".join(md))

    # self-contained html
    def img_tag(png: bytes, alt: str) -> str:
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'

    trs = []
    for e in table:
        cells = "".join(f"<td>{_fmt(*e['variants'][v])}</td>" for v in variants)
        if len(variants) == 2:
            g = e.get("gain")
            cls = "" if not g or math.isnan(g[1]) else ("up" if g[0] - g[1] > 0 else "down" if g[0] + g[1] < 0 else "")
            cells += f'<td class="{cls}">{_fmt(*g) if g else "-"}</td>'
        trs.append(f"<tr><td>{html.escape(e['category'])}</td><td>{html.escape(e['metric'])}</td>{cells}</tr>")
    ths = "".join(f"<th>{v}</th>" for v in variants) + ("<th>gain (lora - base)</th>" if len(variants) == 2 else "")
    figs = "".join(f"<figure>{img_tag(png, cap)}<figcaption>{html.escape(cap)}</figcaption></figure>"
                   for _, cap, png in pictures)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SpatialRL evaluation: {html.escape(str(settings.get('benchmark')))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1100px; }}
table {{ border-collapse: collapse; font-size: 13px; }} td, th {{ border: 1px solid #ccc; padding: 3px 8px; }}
th {{ background: #f0f0f0; }} td.up {{ background: #d9f2d9; }} td.down {{ background: #f7d6d6; }}
figure {{ display: inline-block; margin: 8px; vertical-align: top; max-width: 520px; }}
figure img {{ image-rendering: pixelated; border: 1px solid #999; max-width: 100%; }}
figcaption {{ font-size: 12px; }} pre {{ background: #f6f6f6; padding: 8px; font-size: 12px; overflow-x: auto; }}
.verdict {{ font-weight: bold; }}
</style></head><body>
<h1>{html.escape(str(settings.get('benchmark')))}: {' vs '.join(variants)}</h1>
<p>{html.escape(counts)} images. Each cell: mean over images ± its 95% interval.
Primary metric: <code>{html.escape(str(metric))}</code>. Rows in green / red: the LoRA's paired gain is clearly above /
below zero.</p>
<h2>Scores by category</h2>
<table><tr><th>category</th><th>metric</th>{ths}</tr>{''.join(trs)}</table>
<h2>{'Biggest wins and losses (base row above LoRA row)' if len(variants) == 2 else 'Best and worst prompts'}</h2>
{figs}
<h2>Reward vs judge</h2>
<p class="verdict">{html.escape(verdict)}</p>
{img_tag(scatter, 'reward vs judge scatter') if scatter else ''}
<h2>Settings (repeat the run with these)</h2>
<pre>{html.escape(yaml.safe_dump(settings, sort_keys=False))}</pre>
</body></html>
"""
    (out / "report.html").write_text(page)
    return summary
