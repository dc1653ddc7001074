"""Cold start: what a new user waits for, process by process.

Rows, eight schools (non-centered, float32, 4 chains, 1000 warmup + 1000 draws):

- ``first process``: a fresh Python process with an empty persistent compilation cache,
  from the interpreter's start to the end of ``hbm.sample`` (import, tracing, XLA
  compilation, sampling, diagnostics);
- ``second process``: the same in a new process, with the cache the first one filled
  (what ``import hbm`` turns on by default, see ``hbm/compilation_cache.py``);
- ``find_map`` / ``advi`` first and second call in one process, on new data of the same
  shapes for the second call (compiled once per model structure and data shapes).

Each process row is timed ``--repeats`` times (fresh cache directory for every "first"
row); minimum, median and maximum are printed, and written to ``--out`` as
``cold_start.json``. Run from the repository root::

    python -m benchmarks.cold_start --repeats 3 --out bench-out/

``--warmup`` / ``--draws`` shrink the sampling rows for a smoke run; the figures in
``benchmarks/README.md`` use the defaults (1000 + 1000).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

SAMPLE = """
import time, warnings
warnings.simplefilter("ignore")
import hbm
model, data = hbm.models.eight_schools(centered=False)
hbm.sample(model, data, chains=4, warmup={warmup}, draws={draws}, seed=0, progress=False)
"""

SECOND_CALLS = """
import json, time, warnings
warnings.simplefilter("ignore")
import numpy as np
import hbm
model, data = hbm.models.eight_schools(centered=False)
other = dict(data, y=np.asarray(data["y"]) + 1.0)
out = {}
for name, call in (("find_map", lambda d, s: hbm.find_map(model, d, seed=s)),
                   ("advi", lambda d, s: hbm.advi(model, d, seed=s, progress=False))):
    for label, d, s in (("first", data, 0), ("second", other, 1)):
        t = time.perf_counter()
        call(d, s)
        out[f"{name} {label} call"] = time.perf_counter() - t
print(json.dumps(out))
"""


def run(code: str, cache_dir: str) -> tuple[float, str]:
    env = dict(os.environ, HBM_COMPILATION_CACHE=cache_dir)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    return time.perf_counter() - start, out.stdout


def stats(values):
    values = sorted(values)
    return values[0], values[len(values) // 2], values[-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--out", default=None, help="directory for cold_start.json")
    args = parser.parse_args(argv)
    if min(args.repeats, args.warmup, args.draws) < 1:
        parser.error("--repeats, --warmup and --draws must be at least 1")
    sample = SAMPLE.format(warmup=args.warmup, draws=args.draws)
    rows = {"first process (empty cache), s": [], "second process (cached), s": []}
    calls: dict[str, list] = {}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            rows["first process (empty cache), s"].append(run(sample, cache)[0])
            rows["second process (cached), s"].append(run(sample, cache)[0])
        with tempfile.TemporaryDirectory() as cache:
            _, out = run(SECOND_CALLS, cache)
            for name, seconds in json.loads(out.strip().splitlines()[-1]).items():
                calls.setdefault(f"{name}, s", []).append(seconds)
    rows.update(calls)
    width = max(len(k) for k in rows)
    print(f"eight schools, 4 chains, {args.warmup} + {args.draws}, float32; "
          f"{args.repeats} repeat(s); {sys.executable}")
    print(f"{'':{width}}   min     median  max")
    summary = {}
    for name, values in rows.items():
        lo, mid, hi = stats(values)
        summary[name] = {"min": lo, "median": mid, "max": hi, "values": values}
        print(f"{name:{width}}   {lo:7.3f} {mid:7.3f} {hi:7.3f}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "cold_start.json")
        with open(path, "w") as f:
            json.dump({"settings": vars(args), "python": sys.executable, "rows": summary},
                      f, indent=2)
        print(f"wrote {path}")
    return summary


if __name__ == "__main__":
    main()
