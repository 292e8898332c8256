"""Predict latency through the adaptd binary itself, one binary beside another.

service_bench measures Predict with the server in its own process, on the C library's
allocator; the adaptd binary links jemalloc. This starts each binary on a fresh data directory,
creates an MLP 784-256-256 with 10 classes, streams it 2,000 examples of ten Gaussian classes
(one job), and times Predict from one Python client calling sequentially: mean and bayes mode
(64 samples), batch 1 and 256. The binaries take turns, rep by rep; each cell reports the median
over reps of each run's median and 99th percentile. The Python client's own cost is in every
figure, alike for each binary.

    PYTHONPATH=build/python /usr/bin/python3 bench/binary_latency.py --reps=3 \\
        --servers=build/server/adaptd,build/bench/adaptd_system_malloc
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
from adaptd_client import Client

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rss_growth import Server  # noqa: E402  (the bench folder is not a package)

CELLS = [("mean", 1), ("mean", 256), ("bayes", 1), ("bayes", 256)]
DIM, CLASSES = 784, 10


def examples(rng, n):
    centers = np.random.default_rng(7).normal(0, 1, (CLASSES, DIM))
    y = rng.integers(0, CLASSES, n)
    return (centers[y] + rng.normal(0, 1, (n, DIM))).astype(np.float32), y


def one_run(binary, requests):
    """{(mode, batch): (p50 ms, p99 ms)} for one fresh server of `binary`."""
    root = tempfile.mkdtemp(prefix="binary_latency_")
    server = None
    try:
        server = Server(binary, os.path.join(root, "data"))
        c = Client(server.target)
        c.create_model("m", architecture="mlp", input_shape=[DIM], num_classes=CLASSES,
                       hidden=[256, 256], config={"epochs": 1})
        rng = np.random.default_rng(0)
        c.wait_jobs(list(c.stream_examples("m", 0, *examples(rng, 2000)).job_ids))
        out = {}
        for mode, batch in CELLS:
            x, _ = examples(rng, batch)
            c.predict("m", x, mode=mode)  # the first call of a kind pays for its buffers
            times = []
            for _ in range(requests if batch == 1 else max(1, requests // 4)):
                start = time.perf_counter()
                c.predict("m", x, mode=mode)
                times.append((time.perf_counter() - start) * 1e3)
            times.sort()
            out[(mode, batch)] = (times[len(times) // 2], times[int(0.99 * (len(times) - 1))])
        return out
    finally:
        if server is not None:
            server.close()
        shutil.rmtree(root, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--servers", default="build/server/adaptd,build/bench/adaptd_system_malloc")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--requests", type=int, default=400, help="calls per cell at batch 1 "
                   "(batch 256: a quarter)")
    args = p.parse_args()
    if args.reps < 1 or args.requests < 4:
        p.error(f"--reps must be at least 1 and --requests at least 4; got {args.reps} and "
                f"{args.requests}")
    binaries = args.servers.split(",")
    runs = {b: [] for b in binaries}
    for rep in range(args.reps):
        for b in binaries:
            runs[b].append(one_run(b, args.requests))
            print(f"rep {rep + 1}/{args.reps}: {b} done", file=sys.stderr)
    print("| Predict | batch | " + " | ".join(f"`{b}` p50 / p99 (ms)" for b in binaries) + " |")
    print("|---|---|" + "---|" * len(binaries))
    for mode, batch in CELLS:
        cells = []
        for b in binaries:
            p50 = statistics.median(r[(mode, batch)][0] for r in runs[b])
            p99 = statistics.median(r[(mode, batch)][1] for r in runs[b])
            cells.append(f"{p50:.2f} / {p99:.2f}")
        print(f"| {mode} | {batch} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
