"""The produce -> written latency histogram serve exports (sensorcast_end_to_end_seconds) as
read from its /metrics text, the difference of two snapshots of it, and its quantiles. Shared by
scripts/bench-e2e.sh and scripts/soak.sh, which import it from scripts/."""

NAME = "sensorcast_end_to_end_seconds_bucket"


def buckets(text):
    """The cumulative buckets, as (upper bound, count) in the exported order (+Inf last)."""
    out = []
    for line in text.splitlines():
        if line.startswith(NAME):
            le = line.split('le="')[1].split('"')[0]
            out.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    return out


def difference(later, earlier):
    """The observations between two snapshots (earlier may be empty: everything so far)."""
    if not earlier:
        return list(later)
    assert [le for le, _ in later] == [le for le, _ in earlier], "the two snapshots' buckets differ"
    return [(le, c - e) for (le, c), (_, e) in zip(later, earlier)]


def quantile(cumulative, q):
    """The q-quantile, interpolated within its bucket; the +Inf bucket gives its lower bound;
    NaN when the histogram is empty."""
    total = cumulative[-1][1] if cumulative else 0
    if total <= 0:
        return float("nan")
    prev_le, prev = 0.0, 0.0
    for le, c in cumulative:
        if c >= q * total:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((q * total - prev) / max(c - prev, 1e-9))
        prev_le, prev = le, c
    return prev_le
