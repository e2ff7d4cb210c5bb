#!/usr/bin/env python3
"""PyTorch counterpart of `sensorcast bench` (run through scripts/bench-pytorch.sh).

Streams the same synthetic fleet shape through PyTorch on one thread: readings arrive step by
step (every device's reading at t, then every device's at t+1, ...) and are processed in
micro-batches of `--batch` readings, as `sensorcast bench` feeds `Engine::process`. For each
micro-batch it does what the engine's LSTM and head do, with PyTorch's own kernels:

  gather the batch's devices' (h, c) per layer from the fleet state
  → normalise the input → one `torch.nn.LSTMCell` step per layer
  → linear head to mean and log-variance of `horizon × features` → σ and the 90% band
  → scatter (h, c) back.

What it leaves out, so that the comparison favours PyTorch: the device-id lookup (done once up
front here, a hash-map lookup per reading in the engine), scoring (z-scores against earlier
forecasts, per-device calibration, anomaly likelihood) and the per-device bookkeeping of
forecasts and statistics. It prints the same `key=value` lines as `sensorcast bench`.

With `--kernel` it measures the model core alone instead, as `sensorcast bench --kernel` does:
one micro-batch of `--batch` rows through the `LSTMCell` layers and the linear head, again and
again for about two seconds (no gather, scatter, normalisation or band), in ns per row.
"""

import argparse
import math
import time

import torch


def synthetic_readings(devices: int, steps: int, features: int) -> torch.Tensor:
    """`[steps·devices, features]`: smooth per-device signals plus noise (like src/bench.rs)."""
    gen = torch.Generator().manual_seed(0x9E3779B9)
    t = torch.arange(steps, dtype=torch.float32).view(steps, 1, 1)
    d = torch.arange(devices, dtype=torch.float32).view(1, devices, 1)
    f = torch.arange(features, dtype=torch.float32).view(1, 1, features)
    noise = torch.rand(steps, devices, features, generator=gen) - 0.5
    return (torch.sin(t * 0.05 + d * 0.1 + f) + 0.1 * noise).reshape(steps * devices, features)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--features", type=int, default=8)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--horizon", type=int, default=3)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--kernel", action="store_true", help="the model core alone (see above)")
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    cells = [
        torch.nn.LSTMCell(a.features if l == 0 else a.hidden, a.hidden) for l in range(a.layers)
    ]
    head = torch.nn.Linear(a.hidden, 2 * a.horizon * a.features)
    mean_in = torch.zeros(a.features)
    std_in = torch.ones(a.features)
    z90 = 1.6448536

    if a.kernel:
        kernel(a, cells, head)
        return

    x_all = synthetic_readings(a.devices, a.steps, a.features)
    # Device index of every reading (step-major order, as in src/bench.rs).
    dev_all = torch.arange(a.devices).repeat(a.steps)
    n = x_all.shape[0]

    def fresh_state():
        return (
            [torch.zeros(a.devices, a.hidden) for _ in cells],
            [torch.zeros(a.devices, a.hidden) for _ in cells],
        )

    def run(h, c, upto: int) -> float:
        checksum = 0.0
        for start in range(0, upto, a.batch):
            idx = dev_all[start : start + a.batch]
            inp = (x_all[start : start + a.batch] - mean_in) / std_in
            for l, cell in enumerate(cells):
                hl, cl = cell(inp, (h[l].index_select(0, idx), c[l].index_select(0, idx)))
                h[l].index_copy_(0, idx, hl)
                c[l].index_copy_(0, idx, cl)
                inp = hl
            out = head(inp).view(-1, 2, a.horizon, a.features)
            mean, logvar = out[:, 0], out[:, 1]
            sigma = torch.exp(0.5 * logvar)
            lower, upper = mean - z90 * sigma, mean + z90 * sigma
            checksum += float(upper[0, 0, 0] - lower[0, 0, 0])
        return checksum

    with torch.inference_mode():
        # Warm-up (allocator, MKL/oneDNN initialisation), not timed.
        run(*fresh_state(), min(n, 4 * a.batch))
        h, c = fresh_state()
        t0 = time.perf_counter()
        checksum = run(h, c, n)
        elapsed = time.perf_counter() - t0
    if not math.isfinite(checksum):
        raise SystemExit("non-finite outputs")

    print(
        f"devices={a.devices} steps={a.steps} hidden={a.hidden} features={a.features} "
        f"layers={a.layers} horizon={a.horizon} batch={a.batch} "
        f"torch={torch.__version__} threads={torch.get_num_threads()} "
        f"cpu_capability={torch.backends.cpu.get_cpu_capability()}"
    )
    print(f"events={n} elapsed_s={elapsed:.3f}")
    print(f"events_per_s={n / elapsed:.0f}")


def kernel(a, cells, head) -> None:
    """`--kernel`: the LSTM step and head on one micro-batch, timed apart, ns per row."""
    x = torch.sin(torch.arange(a.batch * a.features, dtype=torch.float32) * 0.13).view(
        a.batch, a.features
    )
    h = [torch.zeros(a.batch, a.hidden) for _ in cells]
    c = [torch.zeros(a.batch, a.hidden) for _ in cells]
    step_s = head_s = 0.0
    passes = 0
    with torch.inference_mode():
        # The first pass (allocator, MKL/oneDNN initialisation) is not timed.
        while passes == 0 or step_s + head_s < 2.0:
            t0 = time.perf_counter()
            inp = x
            for l, cell in enumerate(cells):
                h[l], c[l] = cell(inp, (h[l], c[l]))
                inp = h[l]
            t1 = time.perf_counter()
            out = head(inp)
            t2 = time.perf_counter()
            if passes > 0:
                step_s += t1 - t0
                head_s += t2 - t1
            passes += 1
    if not math.isfinite(float(out.sum())):
        raise SystemExit("non-finite outputs")
    rows = (passes - 1) * a.batch
    print(
        f"kernel hidden={a.hidden} features={a.features} layers={a.layers} "
        f"horizon={a.horizon} rows={a.batch} torch={torch.__version__} "
        f"threads={torch.get_num_threads()} "
        f"cpu_capability={torch.backends.cpu.get_cpu_capability()}"
    )
    print(f"kernel_ns_per_row step={step_s * 1e9 / rows:.1f} head={head_s * 1e9 / rows:.1f}")


if __name__ == "__main__":
    main()
