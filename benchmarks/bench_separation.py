"""Exact nearest other-class ℓ∞ search on Fashion-MNIST: robustlip's engine against the authors' method.

    python benchmarks/bench_separation.py                      # full train–train + test–train, sklearn on 2k
    python benchmarks/bench_separation.py --sklearn-queries 500 --engine-queries 10000   # quicker

The authors (docs/authors-code.md §10) fit one scikit-learn ``NearestNeighbors(n_neighbors=1, p=inf)`` per class on
the training points of the *other* classes and query the points of that class; it is exact. We time
it on a subset of training queries (against all 60k references, so per query it does the full
work) and extrapolate linearly to all queries; robustlip's engine runs the full problem. Both
answers are checked against each other on the subset.

"element-ops" counts what a brute force does, queries × references × pixels (Fashion-MNIST
train–train: 60k × 60k × 784 = 2.8e12), so the rate shows how much work pruning saves. Wall time
is what a user waits; CPU time (this process, all threads) is the steadier number on a shared
machine. The load average is printed with the table: compare numbers taken at similar loads.
"""

from __future__ import annotations

import argparse
import gzip
import os
import time
from pathlib import Path

import numpy as np

from robustlip.metrics.separation import nearest_other_class

IDX = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (optionally .gz) as a numpy array: the bytes torchvision's FashionMNIST reads."""
    candidates = [path, path.with_name(path.name + ".gz")]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"no {path.name}[.gz] in {path.parent}; pass --data-dir")
    raw = (gzip.open if found.suffix == ".gz" else open)(found, "rb").read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 in [0, 1] — what the DataModule hands over — and int64 labels."""
    images, labels = IDX[split]
    x = read_idx(data_dir / images).reshape(-1, 784).astype(np.float32) / np.float32(255)
    return x, read_idx(data_dir / labels).astype(np.int64)


class Clock:
    """Wall and process CPU time of a block."""

    def __enter__(self) -> Clock:  # noqa: PYI034 - a benchmark helper, never subclassed
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def sklearn_authors(xq, yq, xr, yr, n_jobs: int) -> tuple[np.ndarray, np.ndarray]:
    """docs/authors-code.md §10's ``get_nearest_oppo_dist``: per class, an exact p=inf index on the other classes."""
    from sklearn.neighbors import NearestNeighbors

    dist = np.full(len(xq), np.inf)
    index = np.full(len(xq), -1, dtype=np.int64)
    for c in np.unique(yq):
        others = np.flatnonzero(yr != c)
        mine = np.flatnonzero(yq == c)
        nn = NearestNeighbors(n_neighbors=1, metric="minkowski", p=np.inf, n_jobs=n_jobs).fit(xr[others])
        d, i = nn.kneighbors(xq[mine])
        dist[mine], index[mine] = d[:, 0], others[i[:, 0]]
    return dist, index


def row(name: str, n_q: int, n_r: int, dim: int, clock: Clock, measured_q: int | None = None) -> dict:
    """A table row; ``measured_q`` < n_q means the time was measured on that many queries and scaled."""
    scale = n_q / measured_q if measured_q else 1.0
    wall, cpu = clock.wall * scale, clock.cpu * scale
    ops = float(n_q) * n_r * dim
    return {"name": name, "shape": f"{n_q}×{n_r}×{dim}", "ops": ops, "wall": wall, "cpu": cpu,
            "rate": ops / wall, "extrapolated": bool(measured_q)}


def print_table(rows: list[dict], header: str) -> None:
    print(f"\n{header}\n")
    print("| method | problem | wall s | CPU s | brute-force element-ops/s (wall) | note |")
    print("|---|---|---:|---:|---:|---|")
    for r in rows:
        note = "extrapolated from a subset" if r["extrapolated"] else "measured, full problem"
        print(f"| {r['name']} | {r['shape']} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['rate'] / 1e9:.1f} G | {note} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")))
    parser.add_argument("--sklearn-queries", type=int, default=2000, help="training queries timed for sklearn")
    parser.add_argument("--engine-queries", type=int, default=None, help="train–train queries for the engine "
                        "(default: all 60k; fewer, and the time is extrapolated)")
    parser.add_argument("--engine", default="auto", help="auto | numba | torch")
    parser.add_argument("--n-jobs", type=int, default=os.cpu_count(), help="sklearn's n_jobs")
    args = parser.parse_args()

    x_tr, y_tr = load_fashion(args.data_dir, "train")
    x_te, y_te = load_fashion(args.data_dir, "test")
    n, dim = x_tr.shape
    print(f"Fashion-MNIST {n} train / {len(x_te)} test, {dim} pixels; {os.cpu_count()} CPUs, "
          f"load average before {os.getloadavg()[0]:.2f}")

    # Compile once outside the clocks: numba's JIT costs a few seconds per pixel type, once per process.
    with Clock() as warm:
        nearest_other_class(x_tr[:256], y_tr[:256], x_tr[:2048], y_tr[:2048], engine=args.engine)
    print(f"warm-up (JIT compilation): {warm.wall:.1f} s")

    n_q = args.engine_queries or n
    with Clock() as tt:
        train_train = nearest_other_class(x_tr[:n_q], y_tr[:n_q], x_tr, y_tr, engine=args.engine)
    with Clock() as te:
        test_train = nearest_other_class(x_te, y_te, x_tr, y_tr, engine=args.engine)
    engine_name = f"robustlip ({train_train.device}, {train_train.grid})"
    rows = [
        row(f"{engine_name} train–train", n, n, dim, tt, None if n_q == n else n_q),
        row(f"{engine_name} test–train", len(x_te), n, dim, te),
    ]

    k = min(args.sklearn_queries, n)
    with Clock() as sk:
        sk_dist, _sk_index = sklearn_authors(x_tr[:k], y_tr[:k], x_tr, y_tr, args.n_jobs)
    rows.append(row(f"scikit-learn NearestNeighbors(p=inf), per class, n_jobs={args.n_jobs}", n, n, dim, sk, k))
    print_table(rows, "Exact nearest other-class ℓ∞ distances, Fashion-MNIST")
    ratio = rows[2]["wall"] / rows[0]["wall"]
    print(f"\nspeed-up on train–train (wall): {ratio:.0f}×;  CPU: {rows[2]['cpu'] / rows[0]['cpu']:.0f}×")

    # sklearn works in float64 on the float32 pixels; ours is the exact k/255: equal up to float32 rounding.
    gap = np.abs(sk_dist - train_train.distance[:k]).max()
    print(f"sklearn and robustlip agree on the {k} subset distances: {bool(gap < 1e-6)} (max |diff| {gap:.2e})")
    print(f"train–train min {train_train.distance.min():.4f}, test–train min {test_train.distance.min():.4f}; "
          f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
