#!/usr/bin/env python3
"""What a database alone accepts: POSTs a line-protocol file to an InfluxDB write API in
batches of --batch-bytes (cut at line boundaries) over --concurrency keep-alive connections,
and prints lines/s. scripts/bench-output.sh uses it for the ceiling that sensorcast's end-to-end
rate is compared with (same points, same batch size and concurrency as `serve`).

  write-ceiling.py URL FILE [--api v1|v2] [--db NAME] [--bucket NAME] [--org NAME]
                   [--batch-bytes N] [--concurrency N]
"""
import argparse
import http.client
import queue
import sys
import threading
import time
import urllib.parse


def batches(path, size):
    with open(path, "rb") as f:
        data = f.read()
    out, start = [], 0
    while start < len(data):
        end = min(start + size, len(data))
        if end < len(data):
            nl = data.rfind(b"\n", start, end)
            end = nl + 1 if nl >= start else data.find(b"\n", end) + 1 or len(data)
        out.append(data[start:end])
        start = end
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("file")
    p.add_argument("--api", default="v2", choices=["v1", "v2"])
    p.add_argument("--db", default="sensorcast")
    p.add_argument("--bucket", default="sensorcast")
    p.add_argument("--org", default="plant")
    p.add_argument("--batch-bytes", type=int, default=4 << 20)
    p.add_argument("--concurrency", type=int, default=2)
    a = p.parse_args()
    u = urllib.parse.urlparse(a.url)
    if a.api == "v1":
        path = "/write?" + urllib.parse.urlencode({"db": a.db, "precision": "ns"})
    else:
        path = "/api/v2/write?" + urllib.parse.urlencode(
            {"org": a.org, "bucket": a.bucket, "precision": "ns"})
    work = queue.Queue()
    chunks = batches(a.file, a.batch_bytes)
    lines = sum(c.count(b"\n") for c in chunks)
    for c in chunks:
        work.put(c)
    errors = []

    def worker():
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        while True:
            try:
                body = work.get_nowait()
            except queue.Empty:
                return
            for attempt in range(10):
                try:
                    conn.request("POST", path, body, {"Content-Type": "text/plain"})
                    r = conn.getresponse()
                    r.read()
                    if r.status < 300:
                        break
                    if r.status not in (429, 500, 503):
                        errors.append(f"{r.status} {r.reason}")
                        break
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
                time.sleep(0.1 * (attempt + 1))

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.monotonic() - t0
    if errors:
        print(f"errors: {errors[:3]}", file=sys.stderr)
        sys.exit(1)
    print(f"{lines} lines in {dt:.2f} s: {lines / dt:.0f} lines/s")


if __name__ == "__main__":
    main()
