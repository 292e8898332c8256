"""The server's resident memory as a model's examples and versions accumulate.

One server process per binary, each on a fresh data directory, under the same load for the
same time: a client streams 256 examples every second (an MLP on 8 inputs, 4 classes, a job
per 100 examples, so a new version every few seconds), a second asks MemoryMap over all
training examples in a loop, and a third exports the model and imports and deletes a copy
every 3 seconds: two answers whose size grows with the stored examples. VmRSS is read every
10 seconds. At the end the server restarts on the same data directory, answers one MemoryMap
over all examples and one Export, and its VmRSS then is what the accumulated data needs.

    PYTHONPATH=build/python /usr/bin/python3 bench/rss_growth.py --seconds=300 \
        --servers=build/server/adaptd,build/bench/adaptd_system_malloc

build/server/adaptd links jemalloc (the default ADAPTD_MALLOC); build/bench/adaptd_system_malloc
is the same program on the C library's allocator.
"""
import argparse
import os
import signal
import statistics
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


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Server:
    def __init__(self, binary, data_dir, port):
        self.proc = subprocess.Popen(
            [binary, f"--data_dir={data_dir}", f"--port={port}"],
            stdout=open(os.path.join(os.path.dirname(data_dir), "server.log"), "a"), stderr=subprocess.STDOUT)
        self.target = f"127.0.0.1:{port}"
        client = Client(self.target)
        for _ in range(300):
            try:
                client.server_info(timeout=1)
                return
            except Exception:
                if self.proc.poll() is not None:
                    raise SystemExit(f"the server exited with {self.proc.returncode}")
                time.sleep(0.1)
        raise SystemExit("the server did not answer within 30 s")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def run(binary, seconds, port):
    root = tempfile.mkdtemp(prefix="rss_growth_")
    data_dir = os.path.join(root, "data")
    server = Server(binary, data_dir, port)
    c = Client(server.target)
    c.create_model("m", architecture="mlp", input_shape=[8], num_classes=4, hidden=[16],
                   config={"epochs": 5, "adapt_every": 100})
    rng = np.random.default_rng(0)
    for task in range(3):
        c.stream_examples("m", task, *data(rng, 200, task), split="eval")
    c.wait_jobs(list(c.stream_examples("m", 0, *data(rng, 300)).job_ids))
    stop = threading.Event()
    calls = {"stream": 0, "memory_map": 0, "export": 0}

    def loop(name, body, pause):
        client = Client(server.target)
        r = np.random.default_rng(len(name))
        while not stop.is_set():
            body(client, r)
            calls[name] += 1
            stop.wait(pause)

    def stream(client, r):
        task = int(r.integers(0, 3))
        client.stream_examples("m", task, *data(r, 256, task), batch_size=32)

    def export(client, r):
        client.import_model("copy", client.export_model("m"))
        client.delete_model("copy")

    threads = [threading.Thread(target=loop, args=a) for a in (
        ("stream", stream, 1.0),
        ("memory_map", lambda client, r: client.memory_map("m", scope="all"), 0.02),
        ("export", export, 3.0))]
    for t in threads:
        t.start()
    start = time.time()
    samples = []
    while True:
        samples.append((time.time() - start, rss_mb(server.proc.pid), c.get_model("m").version_count))
        if samples[-1][0] >= seconds:
            break
        time.sleep(min(10, seconds - samples[-1][0]) or 0.1)
    stop.set()
    for t in threads:
        t.join()
    server.stop()
    # What the accumulated data needs: a fresh process that has answered each query once.
    server = Server(binary, data_dir, port)
    c = Client(server.target)
    c.memory_map("m", scope="all")
    c.import_model("copy", c.export_model("m"))
    c.delete_model("copy")
    fresh = rss_mb(server.proc.pid)
    server.stop()
    subprocess.run(["rm", "-rf", root], check=True)
    # Growth from the second sample on (the first holds start-up and the first job's buffers).
    (t0, m0, v0), (t1, m1, v1) = samples[1], samples[-1]
    return {"binary": binary, "versions": v1,
            "calls": dict(calls), "rss_start": samples[0][1], "rss_end": m1, "rss_fresh": fresh,
            "kb_per_version": (m1 - m0) * 1024 / max(1, v1 - v0),
            "mb_per_hour": (m1 - m0) * 3600 / (t1 - t0),
            "series": [round(s[1]) for s in samples]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--servers", default="build/server/adaptd,build/bench/adaptd_system_malloc")
    p.add_argument("--seconds", type=float, default=300)
    p.add_argument("--port", type=int, default=52600)
    args = p.parse_args()
    rows = [run(b, args.seconds, args.port) for b in args.servers.split(",")]
    print("| binary | versions | VmRSS start / end (MB) | growth (KB per version) "
          "| growth (MB/h) | end / fresh restart |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['binary']}` | {r['versions']} | {r['rss_start']:.0f} / "
              f"{r['rss_end']:.0f} | {r['kb_per_version']:.1f} | {r['mb_per_hour']:+.0f} | "
              f"{r['rss_end']:.0f} / {r['rss_fresh']:.0f} = {r['rss_end'] / r['rss_fresh']:.2f} |")
    for r in rows:
        print(f"{r['binary']}: calls {r['calls']}; VmRSS every 10 s: {r['series']}")


if __name__ == "__main__":
    main()
