#!/usr/bin/env python3
"""Where a process's CPU time went, by part of the pipeline.

Reads `perf report --no-children --sort dso,sym --stdio --percent-limit 0` from stdin and sums
the samples of each symbol into the part of sensorcast (or the library) it belongs to, so that
`scripts/profile-serve.sh` can say where each CPU-second of `serve` goes. A symbol is put in
the first group whose pattern it matches; the patterns are plain substrings of the demangled
name or of the shared object, in the order below (and a C symbol starting with rd_ is
librdkafka's).

Usage: perf report ... | scripts/profile_groups.py
"""

import re
import sys

# (group, substrings of the symbol or its shared object), first match wins.
GROUPS = [
    ("kafka client (librdkafka, rdkafka)", ["librdkafka", "rdkafka::", "lz4", "zstd", "snappy"]),
    ("decode (JSON, line protocol)", ["sensorcast::decode", "serde_json::", "json::"]),
    ("engine: LSTM kernel", ["engine::kernel"]),
    ("engine: scoring and state", ["sensorcast::engine", "score::", "detect::"]),
    ("encode (line protocol out)", ["sensorcast::output", "ryu::", "zmij::", "itoa::", "core::fmt"]),
    ("HTTP to the database", ["hyper", "reqwest", "h2::", "http::", "httparse", "rustls", "ring::"]),
    ("telemetry", ["sensorcast::telemetry", "prometheus"]),
    ("serve stages and checkpoints", ["sensorcast::serve", "sensorcast::state", "crc32"]),
    ("tokio runtime", ["tokio::", "mio::", "parking_lot", "futures_"]),
    ("allocator", ["malloc", "_free", "cfree", "_int_", "realloc", "calloc", "alloc::alloc"]),
    ("memory copies (libc)", ["memmove", "memcpy", "memset", "memcmp", "strlen"]),
    ("maths (libm)", ["libm.so", "libm-"]),
    ("operating system (kernel)", ["[kernel", "[k]"]),
]
LINE = re.compile(r"^\s*([0-9.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)$")


def group_of(dso: str, kind: str, sym: str) -> str:
    text = f"{dso} {sym}"
    if kind == "k":
        return "operating system (kernel)"
    # librdkafka's C functions (statically linked into the binary) all start with rd_.
    if sym.startswith("rd_"):
        return "kafka client (librdkafka, rdkafka)"
    for name, pats in GROUPS:
        if any(p in text for p in pats):
            return name
    return "other"


def main() -> None:
    totals: dict[str, float] = {}
    tops: dict[str, list[tuple[float, str]]] = {}
    for line in sys.stdin:
        m = LINE.match(line)
        if not m:
            continue
        pct, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()
        g = group_of(dso, kind, sym)
        totals[g] = totals.get(g, 0.0) + pct
        tops.setdefault(g, []).append((pct, sym))
    for g, pct in sorted(totals.items(), key=lambda kv: -kv[1]):
        top = sorted(tops[g], reverse=True)[:3]
        names = "; ".join(f"{s[:60]} {p:.1f}" for p, s in top)
        print(f"{pct:6.1f} %  {g:<38} {names}")


if __name__ == "__main__":
    main()
