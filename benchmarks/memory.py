"""Peak memory of long runs: draws leave the device chunk by chunk.

For a 1000-parameter model (iid standard normal, so the sampler itself is cheap) and 1k,
10k and 100k draws per chain (4 chains), each run in a fresh subprocess, it reports the
peak resident memory of the process (on CPU the "device" memory is process memory; on a
GPU also JAX's peak device bytes), in memory (the Fit holds every draw) and with
``store=`` (draws streamed to memory-mapped ``.npy`` files).

    python benchmarks/memory.py [--draws 1000 10000 100000] [--dim 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = """
import json, resource, sys, tempfile, time, warnings
import jax, jax.numpy as jnp
import hbm
from hbm import constraints
draws, dim, store = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
model = hbm.Model.from_logdensity(lambda p, d: -0.5 * jnp.sum(p["x"] ** 2),
                                  params={"x": constraints.real}, shapes={"x": (dim,)})
t = time.perf_counter()
with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
    warnings.simplefilter("ignore")
    fit = hbm.sample(model, {}, chains=4, warmup=200, draws=draws, progress=False,
                     chunk_size=500, store=tmp if store else None)
    ok = bool(jnp.isfinite(fit.posterior["x"][:, -1]).all())
    seconds = time.perf_counter() - t
    stats = jax.devices()[0].memory_stats() or {}
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "device_peak_mb": stats.get("peak_bytes_in_use", 0) / 2**20,
                      "seconds": seconds, "finite": ok,
                      "draw_bytes_mb": 4 * draws * dim * fit.posterior["x"].itemsize / 2**20}))
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--dim", type=int, default=1000)
    args = parser.parse_args(argv)
    rows = []
    for draws in args.draws:
        for store in (False, True):
            out = subprocess.run([sys.executable, "-c", CHILD, str(draws), str(args.dim),
                                  "1" if store else "0"], capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr[-2000:], file=sys.stderr)
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row.update(draws=draws, store=store)
            rows.append(row)
            print(f"draws {draws:>7} store={str(store):5}  peak RSS {row['peak_rss_mb']:8.0f} MB"
                  f"  (the draws alone: {row['draw_bytes_mb']:7.0f} MB)"
                  f"  device peak {row['device_peak_mb']:7.0f} MB  {row['seconds']:6.1f} s",
                  flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
