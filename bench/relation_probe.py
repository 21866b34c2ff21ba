"""The relation probe's command line: one experiment (an arm) of the backbone's relation curriculum.

The code lives in spatialrl/standins/curriculum.py (jobs.pretrain_backbone --recipe curriculum runs its stages);
its docstring lists the arms. Run from the project root:
    .venv/bin/python bench/relation_probe.py --help
    .venv/bin/python bench/relation_probe.py --minutes 0.3 --threads 1 --eval-every 5 --eval-scenes 20   # smoke
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spatialrl.standins.curriculum import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
