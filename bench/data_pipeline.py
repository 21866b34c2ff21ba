"""Benchmark: the Ray Data streaming reader vs a plain torch DataLoader doing the same work, in one run.

Both paths read the same Parquet split, decode and resize both images of every pair, run the Qwen2.5-VL
processor (the same `PairPreprocessor` on batches of the same size) and pad into model batches with the same
`PairCollator`, with the same number of workers. Each path streams the split twice:
- a timed pass (pairs/s, time to the first batch, pairs/s after it) with nothing else running;
- a memory pass: the peak memory of the whole process tree (driver + workers; for Ray also its raylet/GCS/object
  store), sampled every 0.2 s, as the sum of RSS and the sum of PSS (shared pages split between processes, so the
  object store is not counted many times). Sampling reads /proc/PID/smaps of every process, which is not free:
  it cost the Ray path (15 processes, several mapping the object store) 18% of its throughput when timed in the
  same pass, the DataLoader path (3 processes) less; so no speed is read from this pass.

    python -m bench.data_pipeline --data /work/data/ds80k --split train [--workers 2] [--limit-pairs N]
    python -m bench.data_pipeline --pairs 2000          # builds a small dataset first (make bench-data)
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import torch

from cluster.runtime import cpu_bound_data_context, init_ray
from spatialrl.reward.reader import READ_COLUMNS, PairCollator, PairPreprocessor, ReaderConfig, pair_dataset


class PeakMemory:
    """Samples the memory of this process and all its descendants in a background thread."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        rss = pss = 0
        for p in [me, *me.children(recursive=True)]:
            try:
                info = p.memory_full_info()
                rss += info.rss
                pss += getattr(info, "pss", info.rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class ParquetPairs(torch.utils.data.IterableDataset):
    """The plain alternative: each DataLoader worker reads its share of the row groups with pyarrow."""

    def __init__(self, split_path: Path, cfg: ReaderConfig, limit: int | None):
        self.files = sorted(str(p) for p in split_path.glob("*.parquet"))
        self.cfg = cfg
        self.limit = limit

    def pieces(self) -> list[tuple[str, int, list[tuple[int, int]]]]:
        """Row groups in file order, each with its (start, length) chunks of batch_size rows, cut at `limit`."""
        out, left = [], self.limit
        for f in self.files:
            meta = pq.ParquetFile(f).metadata
            for g in range(meta.num_row_groups):
                rows = meta.row_group(g).num_rows
                if left is not None:
                    rows = min(rows, left)
                    left -= rows
                if rows <= 0:
                    return out
                out.append((f, g, [(s, min(self.cfg.batch_size, rows - s)) for s in range(0, rows, self.cfg.batch_size)]))
        return out

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        pre = PairPreprocessor(self.cfg.processor, self.cfg.image_size, self.cfg.max_length)
        for f, g, chunks in self.pieces()[wid::nw]:  # each worker reads whole row groups, like Ray's read tasks
            table = pq.ParquetFile(f).read_row_group(g, columns=READ_COLUMNS)
            for start, length in chunks:
                out = pre(table.slice(start, length).to_pydict())
                for i in range(len(out["pair_id"])):
                    yield {k: v[i] for k, v in out.items()}


def rows_to_columns(rows: list[dict]) -> dict:
    return {k: [r[k] for r in rows] for k in rows[0]}


def run_dataloader(split_path: Path, cfg: ReaderConfig, collate: PairCollator, train_batch: int, limit: int | None):
    loader = torch.utils.data.DataLoader(
        ParquetPairs(split_path, cfg, limit), batch_size=train_batch, num_workers=cfg.num_actors,
        collate_fn=lambda rows: collate(rows_to_columns(rows)), prefetch_factor=2, persistent_workers=False,
    )
    return (b["input_ids"].shape[0] // 2 for b in loader)


def run_ray(data: Path, split: str, cfg: ReaderConfig, collate: PairCollator, train_batch: int, limit: int | None):
    ds = pair_dataset(str(data), split, cfg)
    if limit is not None:
        ds = ds.limit(limit)
    return (b["input_ids"].shape[0] // 2 for b in ds.iter_torch_batches(batch_size=train_batch, collate_fn=collate))


def timed(fn, *args) -> dict:
    """Consume the batch stream; total time, time to the first batch, and the rate after it."""
    t0 = time.perf_counter()
    n, first, first_n = 0, None, 0
    for pairs in fn(*args):
        n += pairs
        if first is None:
            first, first_n = time.perf_counter() - t0, pairs
    dt = time.perf_counter() - t0
    after = (n - first_n) / (dt - first) if first is not None and dt > first else None
    return {"pairs": n, "seconds": round(dt, 2), "pairs_per_s": round(n / dt, 1),
            "first_batch_s": round(first or 0.0, 2), "pairs_per_s_after_first_batch": round(after or 0.0, 1)}


def peak_memory(fn, *args) -> dict:
    """Consume the batch stream again while sampling the memory of the process tree."""
    with PeakMemory() as mem:
        n = sum(fn(*args))
    return {"pairs": n, "peak_rss_mb": round(mem.peak_rss / 2**20), "peak_pss_mb": round(mem.peak_pss / 2**20)}


def measure(fn, args: tuple, passes: list[str]) -> dict:
    out = {}
    if "time" in passes:
        out.update(timed(fn, *args))
    if "memory" in passes:
        mem = peak_memory(fn, *args)
        if out and mem["pairs"] != out["pairs"]:
            raise RuntimeError(f"the memory pass streamed {mem['pairs']} pairs, the timed pass {out['pairs']}")
        out.update(mem)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="dataset folder (default: build one with --pairs)")
    parser.add_argument("--pairs", type=int, default=2000, help="size of the dataset to build when --data is not given")
    parser.add_argument("--split", default="train")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per training batch")
    parser.add_argument("--limit-pairs", type=int, help="stream only the first N pairs")
    parser.add_argument("--order", default="ray,dataloader", help="which paths, in which order")
    parser.add_argument("--passes", default="time,memory", help="time (no memory sampling), memory, or both")
    parser.add_argument("--json", help="append the result as one JSON line to this file")
    args = parser.parse_args(argv)

    import ray

    data = Path(args.data) if args.data else Path(f"runs/bench-data-{args.pairs}")
    if not (data / "manifest.json").exists():
        from jobs.build_dataset import main as build

        build(["--pairs", str(args.pairs), "--out", str(data), "--overwrite", "--set", "splits=[1.0, 0.0, 0.0]"])
    cfg = ReaderConfig(num_actors=args.workers)
    collate = PairCollator.from_config(cfg)
    split_path = data / args.split
    result = {"data": str(data), "split": args.split, "workers": args.workers, "batch_size": args.batch_size,
              "limit_pairs": args.limit_pairs}
    passes = args.passes.split(",")
    if not passes or set(passes) - {"time", "memory"}:
        parser.error(f"--passes {args.passes!r}: use time, memory or time,memory")
    for name in args.order.split(","):
        if name == "ray":
            init_ray(num_cpus=args.workers, dashboard=False, log_to_driver=False)
            cpu_bound_data_context(progress_bars=False)
            result["ray_data"] = measure(run_ray, (data, args.split, cfg, collate, args.batch_size, args.limit_pairs), passes)
            ray.shutdown()
        elif name == "dataloader":
            result["dataloader"] = measure(
                run_dataloader, (split_path, cfg, collate, args.batch_size, args.limit_pairs), passes)
        else:
            parser.error(f"--order: unknown path {name!r} (ray, dataloader)")
        print(name, result.get("ray_data" if name == "ray" else "dataloader"), flush=True)
    print(json.dumps(result))
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
