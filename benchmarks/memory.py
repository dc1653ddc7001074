"""Peak memory of long runs: draws leave the device chunk by chunk.

For a 1000-parameter model (iid standard normal, so the sampler itself is cheap) and 1k,
10k and 100k draws per chain (4 chains), each run in a fresh subprocess, it reports the
peak memory of the process over the whole of ``hbm.sample`` (warmup, sampling, and the
end-of-run R-hat / ESS / E-BFMI diagnostics), in memory (the Fit holds every draw) and with
``store=`` (draws streamed to memory-mapped ``.npy`` files):

- peak RSS (``ru_maxrss``): everything resident, file-backed pages of the ``.npy`` files
  included;
- peak anonymous memory (``RssAnon`` of ``/proc/self/status``, polled every 5 ms): the
  memory the process cannot give back, which is what runs out;
- on a GPU, JAX's peak device bytes (on CPU the "device" memory is process memory).

The baseline (~0.6-0.7 GB) is the JAX runtime and the compiled programs.

    python benchmarks/memory.py [--draws 1000 10000 100000] [--dim 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, resource, sys, tempfile, threading, time, warnings
import jax, jax.numpy as jnp
import hbm
from hbm import constraints

def anon_kb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0

peak = {"anon": 0}
stop = threading.Event()
def poll():
    while not stop.is_set():
        peak["anon"] = max(peak["anon"], anon_kb())
        time.sleep(0.005)

draws, dim, store = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
model = hbm.Model.from_logdensity(lambda p, d: -0.5 * jnp.sum(p["x"] ** 2),
                                  params={"x": constraints.real}, shapes={"x": (dim,)})
poller = threading.Thread(target=poll, daemon=True)
poller.start()
t = time.perf_counter()
with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
    warnings.simplefilter("ignore")
    fit = hbm.sample(model, {}, chains=4, warmup=200, draws=draws, progress=False,
                     chunk_size=500, store=tmp if store else None)
    seconds = time.perf_counter() - t
    stop.set()
    poller.join()
    peak["anon"] = max(peak["anon"], anon_kb())
    ok = bool(jnp.isfinite(fit.posterior["x"][:, -1]).all())
    stats = jax.devices()[0].memory_stats() or {}
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "peak_anon_mb": peak["anon"] / 1024,
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
    print("| draws per chain | draws' size (MB) | store= | peak RSS (MB) | peak anonymous (MB) "
          "| device peak (MB) | seconds |")
    print("|---|---|---|---|---|---|---|")
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
            print(f"| {draws} | {row['draw_bytes_mb']:.0f} | {'yes' if store else 'no'} "
                  f"| {row['peak_rss_mb']:.0f} | {row['peak_anon_mb']:.0f} "
                  f"| {row['device_peak_mb']:.0f} | {row['seconds']:.1f} |", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
