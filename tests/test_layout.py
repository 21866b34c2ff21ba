"""The rooms of the house (docs/architecture.md section 2): no import runs from a lower floor to a higher one, rooms
on one floor do not import each other, and the pure-math modules import without Ray, DeepSpeed or diffusers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from spatialrl.config import REPO_ROOT

# (floor, room): a module may import its own room and any room on a lower floor, nothing else of ours
ROOMS = [
    (0, "spatialrl.config"), (0, "spatialrl.metrics"), (0, "spatialrl.console"), (0, "spatialrl.atomic"),
    (0, "spatialrl.deepspeed_config"),
    (1, "data_pipeline"), (1, "cluster"), (1, "spatialrl.models"),
    (2, "spatialrl.flux"), (2, "spatialrl.reward"),
    (3, "spatialrl.grpo"), (3, "spatialrl.standins"),
    (4, "actors"),
    (5, "jobs"),
    (6, "bench"),  # benchmarks run the jobs
]
OURS = ("spatialrl", "data_pipeline", "cluster", "actors", "jobs", "bench")
PURE_MATH = ["spatialrl.flux.math", "spatialrl.grpo.math", "spatialrl.reward.losses"]


def room_of(module: str) -> tuple[int, str]:
    best = None
    for floor, room in ROOMS:
        if (module == room or module.startswith(room + ".")) and (best is None or len(room) > len(best[1])):
            best = (floor, room)
    if best is None:
        raise AssertionError(f"{module} is in no room: add it to ROOMS here and to docs/architecture.md")
    return best


def modules() -> dict[str, Path]:
    out = {}
    for top in OURS:
        for path in sorted((REPO_ROOT / top).rglob("*.py")):
            rel = path.relative_to(REPO_ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every project module a file imports, at top level or inside functions, with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0] in OURS]


def test_every_module_has_a_room_and_no_import_runs_up_or_sideways():
    mods = modules()
    assert len(mods) > 40, "the walk found too few modules: is REPO_ROOT right?"
    bad = []
    for name, path in mods.items():
        if name == "spatialrl":
            continue  # the package's own __init__: empty
        floor, room = room_of(name)
        for line, target in imports_of(path):
            if target == "spatialrl":
                bad.append(f"{path.name}:{line} imports the bare spatialrl package; import the module")
                continue
            t_floor, t_room = room_of(target)
            if t_room != room and t_floor >= floor:
                bad.append(f"{path.relative_to(REPO_ROOT)}:{line} ({room}, floor {floor}) imports {target} "
                           f"({t_room}, floor {t_floor})")
    assert not bad, "imports against the layout:\n" + "\n".join(bad)


def test_the_walk_sees_an_upward_import(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from actors.grpo_controller import GRPOController\n")
    (line, target), = imports_of(bad)
    assert (line, target) == (2, "actors.grpo_controller")
    assert room_of(target)[0] > room_of("spatialrl.flux.sampler")[0]
    with pytest.raises(AssertionError, match="in no room"):
        room_of("spatialrl.nowhere")


def test_pure_math_imports_without_ray_deepspeed_or_diffusers():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('ray', 'deepspeed', 'diffusers', 'transformers', 'peft'):\n"
        "            raise ImportError(f'blocked: {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        + "".join(f"import {m}\n" for m in PURE_MATH)
        + "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
