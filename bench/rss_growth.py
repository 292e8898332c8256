"""The server's resident memory as a model's examples and versions accumulate.

One server process per binary, each on a fresh data directory, under the same load for the
same time: a client streams 256 examples every second (an MLP on 8 inputs, 4 classes, a job
per 100 examples, so a new version every few seconds), a second asks MemoryMap over all
training examples in a loop, and a third exports the model and imports and deletes a copy
every 3 seconds: two answers whose size grows with the stored examples. VmRSS is read every
10 seconds; "settled" is read 15 s after the load stops (longer than jemalloc's 10 s decay of
freed pages). Then the server restarts on the same data directory, answers one MemoryMap over
all examples and one Export (and imports and deletes that copy), and 15 s later its VmRSS is
what the accumulated data needs. A client call that fails voids the run.

    PYTHONPATH=build/python /usr/bin/python3 bench/rss_growth.py --seconds=300 \
        --servers=build/server/adaptd,build/bench/adaptd_system_malloc

build/server/adaptd links jemalloc (the default ADAPTD_MALLOC); build/bench/adaptd_system_malloc
is the same program on the C library's allocator.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import numpy as np
from adaptd_client import Client

CENTERS = np.random.default_rng(1).normal(0, 2, (4, 8))


def data(rng, n, task=0):
    y = rng.integers(0, 4, n)
    x = CENTERS[y] + rng.normal(0, 1, (n, 8)) + 0.5 * task
    return x.astype(np.float32), y


# The load's three kinds of call; the fresh restart makes the last two once.
def stream(client, r):
    task = int(r.integers(0, 3))
    client.stream_examples("m", task, *data(r, 256, task), batch_size=32)


def memory_map_all(client, r=None):
    client.memory_map("m", scope="all")


def export(client, r=None):
    client.import_model("copy", client.export_model("m"))
    client.delete_model("copy")


SETTLE_S = 15  # longer than jemalloc's 10 s decay of freed pages


class Server:
    """The binary on `data_dir`, on a port of its choosing; stopped by close()."""

    def __init__(self, binary, data_dir):
        log_path = os.path.join(os.path.dirname(data_dir), "server.log")
        offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
        with open(log_path, "a") as log:
            self.proc = subprocess.Popen([binary, f"--data_dir={data_dir}", "--port=0"],
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            with open(log_path) as f:
                f.seek(offset)
                found = re.search(r"adaptd listening on (\S+)", f.read())
            if found:
                self.target = found.group(1)
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{binary} exited with {self.proc.returncode}: "
                                   + self.log_tail(log_path, offset))
            time.sleep(0.1)
        self.close()
        raise RuntimeError(f"{binary} did not start within 60 s: " + self.log_tail(log_path, offset))

    @staticmethod
    def log_tail(path, offset):
        with open(path) as f:
            f.seek(offset)
            return f.read()[-2000:].strip() or "(it printed nothing)"

    def rss_mb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run(binary, seconds):
    root = tempfile.mkdtemp(prefix="rss_growth_")
    try:
        return measure(binary, seconds, os.path.join(root, "data"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure(binary, seconds, data_dir):
    server = Server(binary, data_dir)
    stop = threading.Event()
    threads = []
    try:
        c = Client(server.target)
        c.create_model("m", architecture="mlp", input_shape=[8], num_classes=4, hidden=[16],
                       config={"epochs": 5, "adapt_every": 100})
        rng = np.random.default_rng(0)
        for task in range(3):
            c.stream_examples("m", task, *data(rng, 200, task), split="eval")
        c.wait_jobs(list(c.stream_examples("m", 0, *data(rng, 300)).job_ids))
        calls = {"stream": 0, "memory_map": 0, "export": 0}
        failures = []

        def loop(name, body, pause):
            client = Client(server.target)
            r = np.random.default_rng(len(name))
            try:
                while not stop.is_set():
                    body(client, r)
                    calls[name] += 1
                    stop.wait(pause)
            except Exception as e:  # the run is void: its load was not the stated one
                failures.append(f"{name}: {e}")
                stop.set()

        threads = [threading.Thread(target=loop, args=a, daemon=True) for a in (
            ("stream", stream, 1.0),
            ("memory_map", memory_map_all, 0.02),
            ("export", export, 3.0))]
        for t in threads:
            t.start()
        start = time.time()
        samples = []
        while not stop.is_set():
            samples.append((time.time() - start, server.rss_mb(), c.get_model("m").version_count))
            if samples[-1][0] >= seconds:
                break
            stop.wait(min(10, seconds - samples[-1][0]))
        stop.set()
        for t in threads:
            t.join()
        if failures:
            raise RuntimeError(f"{binary}: a client failed, so the load was not the stated one: "
                               + "; ".join(failures))
        time.sleep(SETTLE_S)
        settled = server.rss_mb()
    finally:
        stop.set()
        server.close()
    # What the accumulated data needs: a fresh process that has answered each kind of call
    # once and let SETTLE_S pass.
    server = Server(binary, data_dir)
    try:
        c = Client(server.target)
        memory_map_all(c)
        export(c)
        time.sleep(SETTLE_S)
        fresh = server.rss_mb()
    finally:
        server.close()
    # Growth from the second sample on (the first holds start-up and the first job's buffers).
    (t0, m0, v0), (t1, m1, v1) = samples[1], samples[-1]
    return {"binary": binary, "versions": v1, "calls": dict(calls), "rss_start": samples[0][1],
            "rss_end": m1, "rss_settled": settled, "rss_fresh": fresh,
            "kb_per_version": (m1 - m0) * 1024 / max(1, v1 - v0),
            "mb_per_hour": (m1 - m0) * 3600 / (t1 - t0),
            "series": [round(s[1]) for s in samples]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--servers", default="build/server/adaptd,build/bench/adaptd_system_malloc")
    p.add_argument("--seconds", type=float, default=300)
    args = p.parse_args()
    if args.seconds < 30:
        p.error(f"--seconds must be at least 30 (samples every 10 s); got {args.seconds}")
    rows = [run(b, args.seconds) for b in args.servers.split(",")]
    print("| binary | versions | VmRSS start / end / settled (MB) | growth (KB per version) "
          "| growth (MB/h) | fresh restart (MB) | settled / fresh |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['binary']}` | {r['versions']} | {r['rss_start']:.1f} / {r['rss_end']:.1f} / "
              f"{r['rss_settled']:.1f} | {r['kb_per_version']:.1f} | {r['mb_per_hour']:+.0f} | "
              f"{r['rss_fresh']:.1f} | {r['rss_settled'] / r['rss_fresh']:.2f} |")
    for r in rows:
        print(f"{r['binary']}: calls {r['calls']}; VmRSS every 10 s: {r['series']}")


if __name__ == "__main__":
    main()
