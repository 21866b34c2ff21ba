"""The prompt files of the benchmarks the paper reports, read in their published formats, and their output layouts.

Each loader turns one benchmark's official files into `BenchmarkItem`s (prompt, categories, yes/no questions with
their expected answers, the row as published) and raises `BenchmarkFormatError` naming the file, the line and the
format it expected when a file is not in that format. `image_relpath` / `write_layout_sidecars` put generated
images where each benchmark's own scorer looks for them, so its scorer runs on our output unchanged:

| benchmark       | prompt file(s) (published by the benchmark)                          | images (under one root per variant)         |
|-----------------|-----------------------------------------------------------------------|---------------------------------------------|
| `geneval`       | `evaluation_metadata.jsonl`: `tag`, `include` [{`class`, `count`, `color`?, `position`?}], `prompt` | `NNNNN/metadata.jsonl` + `NNNNN/samples/NNNN.png` |
| `dpg`           | `prompts/<item_id>.txt` (+ `dpg_bench.csv` of questions)              | `<item_id>.png`: a 2x2 grid of 4 images     |
| `tiif`          | `test_prompts/*.jsonl`: `type`, `short_description`, `long_description` (+ `test_eval_prompts/*.jsonl`: `type`, `yn_question_list`, `yn_answer_list`) | `<type>/<model>/<short\\|long>_description/<i>.png` |
| `unigenbench`   | `test_prompts_en.csv` / `test_prompts_en_long.csv`: `index`, `prompt_en`, `sub_dims_en` (JSON: `Testpoints`, `Testpoint Description`) | `<index>_<k>.png` |
| `t2i-compbench` | one prompt per line (`spatial_val.txt`, `3d_spatial_val.txt`)          | `samples/<prompt>_<NNNNNN>.png`             |
| `spatialworld`  | this project's `prompts_*.jsonl` (`prompt`, `objects`, `relations`)   | `p<i>_s<k>.png` (the verifier applies)      |

Questions: DPG-Bench's and TIIF-Bench's come from their files (DPG's with its dependencies: a question whose parent
was answered no scores 0); UniGenBench++'s are built from each testpoint's description, GenEval's from its `include`
list, the spatial world's from its structured relations; a prompt without any gets one question built from the
prompt itself. Pure parsing: no models, no Ray.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

BENCHMARKS = ("geneval", "dpg", "tiif", "unigenbench", "t2i-compbench", "spatialworld")
# images per prompt each benchmark's protocol uses (GenEval 4, DPG-Bench a 2x2 grid, UniGenBench++ 4, TIIF 1,
# T2I-CompBench 10); the spatial world follows jobs.sample's default
DEFAULT_IMAGES_PER_PROMPT = {"geneval": 4, "dpg": 4, "tiif": 1, "unigenbench": 4, "t2i-compbench": 10,
                             "spatialworld": 4}
# the categories the paper's Table 2 reports, shown first in the report
TABLE2_CATEGORIES = {
    "dpg": ["relation", "relation/spatial"],
    "unigenbench": ["Entity Layout - Two-Dimensional Space", "Entity Layout - Three-Dimensional Space"],
    "t2i-compbench": ["spatial", "3d_spatial"],
    "geneval": ["position"],
}
WHERE_PUBLISHED = {
    "geneval": "github.com/djghosh13/geneval: prompts/evaluation_metadata.jsonl",
    "dpg": "github.com/TencentQQGYLab/ELLA: dpg_bench/prompts/ and dpg_bench/dpg_bench.csv",
    "tiif": "github.com/A113N-W3I/TIIF-Bench: data/test_prompts/ and data/test_eval_prompts/",
    "unigenbench": "github.com/CodeGoat24/UniGenBench: data/test_prompts_en.csv and data/test_prompts_en_long.csv",
    "t2i-compbench": "github.com/Karine-Huang/T2I-CompBench: examples/dataset/spatial_val.txt, 3d_spatial_val.txt",
    "spatialworld": "python -m jobs.build_dataset ... --out DIR writes DIR/prompts_test.jsonl",
}


class BenchmarkFormatError(ValueError):
    """A prompt or question file that is not in its benchmark's published format; the message says which format."""

    def __reduce__(self):
        return (type(self), (str(self),))


@dataclass
class Question:
    """One yes/no question about an image; `expected` is the answer a faithful image gets."""

    text: str
    categories: list[str]
    expected: str = "yes"
    qid: str = "0"
    depends_on: list[str] = field(default_factory=list)  # DPG-Bench: parents that must hold first

    def to_dict(self) -> dict:
        return {"text": self.text, "categories": self.categories, "expected": self.expected, "qid": self.qid,
                "depends_on": self.depends_on}


@dataclass
class BenchmarkItem:
    """One prompt of a benchmark. `index` is its position in the published file(s), kept under --limit/--subset."""

    benchmark: str
    item_id: str
    index: int
    prompt: str
    categories: list[str]
    questions: list[Question]
    meta: dict  # the row as published (GenEval's metadata, the world's objects/relations, ...)

    def to_dict(self) -> dict:
        return {"benchmark": self.benchmark, "item_id": self.item_id, "index": self.index, "prompt": self.prompt,
                "categories": self.categories, "questions": [q.to_dict() for q in self.questions], "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict) -> "BenchmarkItem":
        return cls(d["benchmark"], d["item_id"], d["index"], d["prompt"], d["categories"],
                   [Question(**q) for q in d["questions"]], d["meta"])


# ------------------------------------------------------------------------------------------------ helpers


def _fail(path: Path, line: int | None, problem: str, expected: str) -> BenchmarkFormatError:
    where = f"{path}:{line}" if line else str(path)
    return BenchmarkFormatError(f"{where}: {problem}. Expected {expected}")


def _read_text(path: Path, expected: str) -> str:
    if not path.is_file():
        raise BenchmarkFormatError(f"{path} does not exist or is not a file. Expected {expected}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _fail(path, None, "is not UTF-8 text", expected) from None


def _jsonl(path: Path, expected: str) -> list[tuple[int, dict]]:
    rows = []
    for n, line in enumerate(_read_text(path, expected).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _fail(path, n, f"not JSON ({exc.msg})", expected) from None
        if not isinstance(row, dict):
            raise _fail(path, n, f"a JSON {type(row).__name__}, not an object", expected)
        rows.append((n, row))
    if not rows:
        raise _fail(path, None, "holds no lines", expected)
    return rows


def _need_str(row: dict, key: str, path: Path, n: int, expected: str) -> str:
    v = row.get(key)
    if not isinstance(v, str) or not v.strip():
        raise _fail(path, n, f"{key!r} is missing or not a non-empty string", expected)
    return v.strip()


def prompt_question(prompt: str) -> Question:
    """The one question asked when a benchmark gives none: does the image show the whole prompt."""
    return Question(f"Does this image match the description: {prompt.strip()}", ["prompt"], "yes", "prompt")


# ------------------------------------------------------------------------------------------------ GenEval

GENEVAL_FORMAT = ("GenEval's evaluation_metadata.jsonl: one JSON object per line with 'tag' (a string), 'include' "
                  "(a non-empty list of {'class': str, 'count': int >= 1, optional 'color': str, optional "
                  "'position': [relation, index of an earlier include]}) and 'prompt' (a string)")
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def load_geneval(path: Path) -> list[BenchmarkItem]:
    path = Path(path)
    if path.is_dir():
        path = path / "evaluation_metadata.jsonl"
    items = []
    for i, (n, row) in enumerate(_jsonl(path, GENEVAL_FORMAT)):
        tag = _need_str(row, "tag", path, n, GENEVAL_FORMAT)
        prompt = _need_str(row, "prompt", path, n, GENEVAL_FORMAT)
        include = row.get("include")
        if not isinstance(include, list) or not include:
            raise _fail(path, n, "'include' is missing or not a non-empty list", GENEVAL_FORMAT)
        questions = []
        for j, obj in enumerate(include):
            if not isinstance(obj, dict) or not isinstance(obj.get("class"), str):
                raise _fail(path, n, f"include[{j}] has no 'class' string", GENEVAL_FORMAT)
            count = obj.get("count", 1)
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise _fail(path, n, f"include[{j}].count={count!r} is not an integer >= 1", GENEVAL_FORMAT)
            colour = obj.get("color")
            if colour is not None and not isinstance(colour, str):
                raise _fail(path, n, f"include[{j}].color={colour!r} is not a string", GENEVAL_FORMAT)
            noun = f"{colour + ' ' if colour else ''}{obj['class']}"
            text = (f"Is there a {noun} in the image?" if count == 1 else
                    f"Are there {NUMBER_WORDS[count] if count < len(NUMBER_WORDS) else count} {noun}s in the image?")
            questions.append(Question(text, [tag], "yes", str(j)))
            pos = obj.get("position")
            if pos is not None:
                if (not isinstance(pos, list) or len(pos) != 2 or not isinstance(pos[0], str)
                        or not isinstance(pos[1], int) or not 0 <= pos[1] < j):
                    raise _fail(path, n, f"include[{j}].position={pos!r} is not [relation, index of an earlier "
                                         "include]", GENEVAL_FORMAT)
                other = include[pos[1]]
                questions.append(Question(f"Is the {obj['class']} {pos[0]} the {other['class']}?", [tag], "yes",
                                          f"{j}p", [str(j), str(pos[1])]))
        items.append(BenchmarkItem("geneval", f"{i:05d}", i, prompt, [tag], questions, row))
    return items


# ------------------------------------------------------------------------------------------------ DPG-Bench

DPG_COLUMNS = ("item_id", "text", "keywords", "proposition_id", "dependency", "category_broad", "category_detailed",
               "tuple", "question_natural_language")
DPG_FORMAT = ("DPG-Bench's prompts/ folder of <item_id>.txt files (one prompt each), and optionally its CSV with "
              f"columns {', '.join(DPG_COLUMNS)}")


def load_dpg(path: Path, questions_csv: Path | None = None) -> list[BenchmarkItem]:
    path = Path(path)
    folder = path / "prompts" if (path / "prompts").is_dir() else path
    if not folder.is_dir():
        raise _fail(path, None, "is not a folder", DPG_FORMAT)
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise _fail(folder, None, "holds no .txt prompt files", DPG_FORMAT)
    if questions_csv is None:
        found = sorted(folder.parent.glob("*.csv"))
        questions_csv = found[0] if len(found) == 1 else None
    by_item = _dpg_questions(Path(questions_csv)) if questions_csv else {}
    items = []
    for i, f in enumerate(files):
        prompt = _read_text(f, DPG_FORMAT).strip()
        if not prompt:
            raise _fail(f, None, "is empty", DPG_FORMAT)
        questions = by_item.get(f.stem, [])
        cats = sorted({c for q in questions for c in q.categories})
        items.append(BenchmarkItem("dpg", f.stem, i, prompt, cats, questions, {"file": f.name}))
    if by_item and not any(it.questions for it in items):
        raise BenchmarkFormatError(f"{questions_csv}: none of its item_ids matches a prompt file in {folder} "
                                   f"(e.g. {sorted(by_item)[:3]} vs {[f.stem for f in files[:3]]}); pass the CSV "
                                   "that belongs to these prompts")
    return items


def _dpg_questions(path: Path) -> dict[str, list[Question]]:
    text = _read_text(path, DPG_FORMAT)
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in DPG_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise _fail(path, 1, f"the header lacks column(s) {missing} (found {reader.fieldnames})", DPG_FORMAT)
    out: dict[str, list[Question]] = {}
    for n, row in enumerate(reader, 2):
        item, qtext = (row["item_id"] or "").strip(), (row["question_natural_language"] or "").strip()
        pid, deps = (row["proposition_id"] or "").strip(), (row["dependency"] or "").strip()
        if not item or not qtext or not pid.isdigit():
            raise _fail(path, n, "item_id, question_natural_language or a numeric proposition_id is missing",
                        DPG_FORMAT)
        parents = [d.strip() for d in deps.split(",") if d.strip()] if deps else []
        if any(not d.isdigit() for d in parents):
            raise _fail(path, n, f"dependency={deps!r} is not a comma-separated list of proposition ids",
                        DPG_FORMAT)
        broad, detailed = (row["category_broad"] or "other").strip(), (row["category_detailed"] or "").strip()
        cats = [broad] + ([f"{broad}/{detailed}"] if detailed and detailed != broad else [])
        out.setdefault(item, []).append(Question(qtext, cats, "yes", pid, [d for d in parents if d != "0"]))
    return out


# ------------------------------------------------------------------------------------------------ TIIF-Bench

TIIF_FORMAT = ("TIIF-Bench's test_prompts/*.jsonl: one JSON object per line with 'type', 'short_description' and "
               "'long_description' (strings)")
TIIF_EVAL_FORMAT = ("TIIF-Bench's test_eval_prompts/*.jsonl: one JSON object per line with 'type', "
                    "'yn_question_list' (strings) and 'yn_answer_list' (yes/no, one per question), in the order of "
                    "the prompt file of the same type")
PROMPT_LENGTHS = ("short", "long")


def load_tiif(path: Path, prompt_length: str = "short", eval_path: Path | None = None) -> list[BenchmarkItem]:
    if prompt_length not in PROMPT_LENGTHS:
        raise BenchmarkFormatError(f"prompt_length={prompt_length!r}: TIIF-Bench has 'short' and 'long' prompts")
    path = Path(path)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files:
        raise _fail(path, None, "holds no .jsonl files", TIIF_FORMAT)
    if eval_path is None and path.is_dir():
        guess = path.parent / path.name.replace("prompts", "eval_prompts")
        eval_path = guess if guess != path and guess.is_dir() else None
    questions = _tiif_questions(Path(eval_path)) if eval_path else {}
    items, key = [], f"{prompt_length}_description"
    for f in files:
        for idx, (n, row) in enumerate(_jsonl(f, TIIF_FORMAT)):
            typ = _need_str(row, "type", f, n, TIIF_FORMAT)
            for k in ("short_description", "long_description"):
                _need_str(row, k, f, n, TIIF_FORMAT)
            qs = questions.get((typ, idx), [])
            if questions and not qs:
                raise _fail(Path(eval_path), None, f"has no questions for line {n} of {f.name} (type {typ!r})",
                            TIIF_EVAL_FORMAT)
            items.append(BenchmarkItem("tiif", f"{typ}/{idx}", len(items), row[key].strip(), [typ], qs,
                                       {**row, "line_index": idx, "file": f.name, "prompt_length": prompt_length}))
    return items


def _tiif_questions(path: Path) -> dict[tuple[str, int], list[Question]]:
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files:
        raise _fail(path, None, "holds no .jsonl files", TIIF_EVAL_FORMAT)
    out = {}
    for f in files:
        for idx, (n, row) in enumerate(_jsonl(f, TIIF_EVAL_FORMAT)):
            typ = _need_str(row, "type", f, n, TIIF_EVAL_FORMAT)
            qs, ans = row.get("yn_question_list"), row.get("yn_answer_list")
            if not isinstance(qs, list) or not qs or not all(isinstance(q, str) and q.strip() for q in qs):
                raise _fail(f, n, "'yn_question_list' is missing or not a list of strings", TIIF_EVAL_FORMAT)
            if (not isinstance(ans, list) or len(ans) != len(qs)
                    or not all(isinstance(a, str) and a.strip().lower() in ("yes", "no") for a in ans)):
                raise _fail(f, n, f"'yn_answer_list' must hold one 'yes' or 'no' per question ({len(qs)})",
                            TIIF_EVAL_FORMAT)
            out[(typ, idx)] = [Question(q.strip(), [typ], a.strip().lower(), str(j)) for j, (q, a) in
                               enumerate(zip(qs, ans))]
    return out


# ------------------------------------------------------------------------------------------------ UniGenBench++

UNIGEN_COLUMNS = ("index", "prompt_en", "sub_dims_en")
UNIGEN_FORMAT = ("UniGenBench++'s test_prompts_en.csv / test_prompts_en_long.csv: columns index, prompt_en, "
                 "sub_dims_en, the last a JSON object with 'Testpoints' and 'Testpoint Description' (lists of "
                 "equal length)")


def load_unigenbench(path: Path) -> list[BenchmarkItem]:
    path = Path(path)
    text = _read_text(path, UNIGEN_FORMAT)
    reader = csv.DictReader(text.splitlines(keepends=True))
    missing = [c for c in UNIGEN_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        hint = " (the Chinese files use prompt_zh / sub_dims_zh: use the _en files)" if "prompt_zh" in (
            reader.fieldnames or []) else ""
        raise _fail(path, 1, f"the header lacks column(s) {missing}{hint}", UNIGEN_FORMAT)
    items = []
    for row in reader:
        n = reader.line_num
        index, prompt = (row["index"] or "").strip(), (row["prompt_en"] or "").strip()
        if not index.isdigit() or not prompt:
            raise _fail(path, n, "index is not an integer or prompt_en is empty", UNIGEN_FORMAT)
        try:
            dims = json.loads(row["sub_dims_en"] or "")
        except json.JSONDecodeError as exc:
            raise _fail(path, n, f"sub_dims_en is not JSON ({exc.msg})", UNIGEN_FORMAT) from None
        points, descs = (dims.get("Testpoints"), dims.get("Testpoint Description")) if isinstance(dims, dict) else (
            None, None)
        if (not isinstance(points, list) or not isinstance(descs, list) or len(points) != len(descs) or not points
                or not all(isinstance(x, str) for x in points + descs)):
            raise _fail(path, n, "sub_dims_en lacks 'Testpoints' and 'Testpoint Description' as string lists of "
                                 "equal length", UNIGEN_FORMAT)
        qs = [Question(f"Does the image show {d.strip().rstrip('.')}? (checking: {p})", [p], "yes", str(j))
              for j, (p, d) in enumerate(zip(points, descs))]
        items.append(BenchmarkItem("unigenbench", index, len(items), prompt, sorted(set(points)), qs, dims))
    if not items:
        raise _fail(path, None, "holds no rows", UNIGEN_FORMAT)
    return items


# ------------------------------------------------------------------------------------------------ T2I-CompBench

T2I_FORMAT = "T2I-CompBench's prompt files (e.g. spatial_val.txt, 3d_spatial_val.txt): plain text, one prompt per line"


def load_t2i_compbench(path: Path) -> list[BenchmarkItem]:
    path = Path(path)
    if path.suffix.lower() in (".json", ".jsonl", ".csv", ".parquet"):
        raise _fail(path, None, f"is a {path.suffix} file", T2I_FORMAT)
    lines = [ln.strip() for ln in _read_text(path, T2I_FORMAT).splitlines() if ln.strip()]
    if not lines:
        raise _fail(path, None, "holds no prompts", T2I_FORMAT)
    category = re.sub(r"_(val|train|test)$", "", path.stem)
    items = []
    for i, line in enumerate(lines):
        if line.startswith(("{", "[")):
            raise _fail(path, i + 1, "looks like JSON, not a plain prompt", T2I_FORMAT)
        items.append(BenchmarkItem("t2i-compbench", f"{i:06d}", i, line, [category], [], {"file": path.name}))
    return items


# ------------------------------------------------------------------------------------------------ spatial world

WORLD_FORMAT = ("this project's prompts_*.jsonl (jobs.build_dataset): one JSON object per line with 'prompt', "
                "'objects' (a list of {'colour', 'shape', ...}) and 'relations' (a list of {'subject', 'type', "
                "'object'} indexing objects)")


def load_spatialworld(path: Path) -> list[BenchmarkItem]:
    from data_pipeline.prompts import RELATION_TEMPLATES
    from data_pipeline.relations import RELATION_TYPES

    path = Path(path)
    if path.is_dir():
        path = path / "prompts_test.jsonl"
    items = []
    for i, (n, row) in enumerate(_jsonl(path, WORLD_FORMAT)):
        prompt = _need_str(row, "prompt", path, n, WORLD_FORMAT)
        objs, rels = row.get("objects"), row.get("relations")
        if not isinstance(objs, list) or not objs or not all(
                isinstance(o, dict) and isinstance(o.get("colour"), str) and isinstance(o.get("shape"), str)
                for o in objs):
            raise _fail(path, n, "'objects' is missing or an object lacks 'colour' / 'shape'", WORLD_FORMAT)
        if not isinstance(rels, list):
            raise _fail(path, n, "'relations' is missing or not a list", WORLD_FORMAT)
        questions = []
        for j, r in enumerate(rels):
            ok = isinstance(r, dict) and r.get("type") in RELATION_TYPES and all(
                isinstance(r.get(k), int) and 0 <= r[k] < len(objs) for k in ("subject", "object"))
            if not ok:
                raise _fail(path, n, f"relations[{j}]={r!r} needs a type in {list(RELATION_TYPES)} and subject/"
                                     f"object indices below {len(objs)}", WORLD_FORMAT)
            a, b = (f"the {objs[r[k]]['colour']} {objs[r[k]]['shape']}" for k in ("subject", "object"))
            statement = RELATION_TEMPLATES[r["type"]][0].format(a=a, b=b).rstrip(".")
            questions.append(Question(f"Is it true that {statement}?", [r["type"]], "yes", str(j)))
        cats = sorted({r["type"] for r in rels})
        items.append(BenchmarkItem("spatialworld", str(row.get("pair_id", i)), i, prompt, cats, questions,
                                   {"objects": objs, "relations": rels}))
    return items


# ------------------------------------------------------------------------------------------------ dispatch


def load_benchmark(name: str, path: str | Path, *, prompt_length: str = "short",
                   questions: str | Path | None = None) -> list[BenchmarkItem]:
    """The items of benchmark `name` read from `path` (a file or the folder the benchmark publishes)."""
    path = Path(path)
    if not path.exists():
        raise BenchmarkFormatError(f"{path} does not exist. {name} publishes its prompts at "
                                   f"{WHERE_PUBLISHED.get(name, '?')}")
    if name == "geneval":
        return load_geneval(path)
    if name == "dpg":
        return load_dpg(path, Path(questions) if questions else None)
    if name == "tiif":
        return load_tiif(path, prompt_length, Path(questions) if questions else None)
    if name == "unigenbench":
        return load_unigenbench(path)
    if name == "t2i-compbench":
        return load_t2i_compbench(path)
    if name == "spatialworld":
        return load_spatialworld(path)
    raise BenchmarkFormatError(f"unknown benchmark {name!r}; choose one of {list(BENCHMARKS)}")


def select(items: list[BenchmarkItem], subset: list[str] | None = None, limit: int | None = None) -> list[BenchmarkItem]:
    """Items with any of the `subset` categories (all when empty), then the first `limit`."""
    if subset:
        known = sorted({c for it in items for c in it.categories})
        unknown = [s for s in subset if s not in known]
        if unknown:
            raise BenchmarkFormatError(f"subset {unknown} names no category of these prompts; they have: {known}")
        items = [it for it in items if set(it.categories) & set(subset)]
    return items[:limit] if limit else items


# ------------------------------------------------------------------------------------------------ output layout


def _safe_name(text: str) -> str:
    return text.replace("/", " ").replace("\0", "")[:200]


def image_relpath(item: BenchmarkItem, k: int, model_name: str = "spatialrl", images_per_prompt: int = 1) -> str:
    """Where image k of `item` goes under its variant's root, in the benchmark's own layout. DPG-Bench keeps the
    2x2 grid of all four at `<item_id>.png`; this is the path of the grid for every k."""
    b = item.benchmark
    if b == "geneval":
        return f"{item.index:05d}/samples/{k:04d}.png"
    if b == "dpg":
        return f"{item.item_id}.png"
    if b == "tiif":
        idx = item.meta["line_index"]
        name = f"{idx}.png" if k == 0 else f"{idx}_{k}.png"  # TIIF's scorer reads <i>.*; extras stay out of its way
        return f"{item.categories[0]}/{model_name}/{item.meta['prompt_length']}_description/{name}"
    if b == "unigenbench":
        return f"{item.item_id}_{k}.png"
    if b == "t2i-compbench":
        return f"samples/{_safe_name(item.prompt)}_{item.index * images_per_prompt + k:06d}.png"
    if b == "spatialworld":
        return f"p{item.index:04d}_s{k:02d}.png"
    raise BenchmarkFormatError(f"unknown benchmark {b!r}")


def write_layout_sidecars(root: Path, items: list[BenchmarkItem]) -> None:
    """The files a benchmark's scorer reads beside the images: GenEval's NNNNN/metadata.jsonl (its row, as one JSON
    object), the prompt list for the spatial world."""
    root = Path(root)
    for it in items:
        if it.benchmark == "geneval":
            folder = root / f"{it.index:05d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "metadata.jsonl").write_text(json.dumps(it.meta) + "\n")

