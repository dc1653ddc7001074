"""hbm.study over several devices and processes gives the table of one device, bit for bit.

Children (fresh interpreters, so XLA's host device count can be forced) run the study on
two forced CPU host devices, and as two ``jax.distributed`` processes on localhost (gloo
CPU collectives); the test process runs it on one device. Tiny problem: 3 groups x 3
observations, 9 data sets in padded batches, 2 chains of 40 + 20, NUTS
only (each device compiles its own program, and compiling dominates these tests; the MAP
programs are placed by the same code).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

import hbm
from hbm.errors import ConfigurationError

CHILD = textwrap.dedent("""
    import json, os, sys
    args = json.loads(sys.argv[1])
    import jax
    jax.config.update("jax_enable_x64", True)
    if args["processes"] > 1:
        jax.distributed.initialize(coordinator_address=args["coordinator"],
                                   num_processes=args["processes"],
                                   process_id=args["process_id"])
    sys.path.insert(0, args["tests"])
    from test_study_devices import run_study
    result = run_study(batch_size=args["batch_size"])
    result.table.to_pickle(args["out"])
    info = {k: result.info[k] for k in ("device_count", "process_count", "process_index",
                                        "datasets_per_call", "padded_batch",
                                        "compilations")}
    print(json.dumps(info))
    if args["processes"] > 1:
        jax.distributed.shutdown()
""")


def run_study(**options):
    """The study every placement runs (imported by the children)."""
    from hbm import dist

    groups = 3
    model = hbm.Model(
        prior={"mu": dist.Normal(0.0, 2.0), "tau": dist.HalfNormal(1.0),
               "theta": lambda p, d: dist.Normal(p["mu"], p["tau"]).expand((groups,)),
               "sigma": dist.HalfNormal(1.0)},
        likelihood=lambda p, d: {"y": dist.Normal(p["theta"][d["group"]], p["sigma"])},
        name="devices_two_level")
    template = {"y": np.zeros(3 * groups), "group": np.repeat(np.arange(groups), 3)}
    return hbm.study(model, {"mu": 0.5, "tau": 0.3, "sigma": 1.0}, data=template,
                     datasets=9, methods=("nuts",), chains=2, warmup=40, draws=20,
                     seed=11, progress=False, **options)


@pytest.fixture(scope="module")
def one_device():
    result = run_study(devices=1)
    assert result.info["device_count"] == 1 and result.info["process_count"] == 1
    return result.table


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_child(tmp_path, *, devices, batch_size, processes=1, process_id=0,
                coordinator=None):
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "HBM_CPU_DEVICES")}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    out = tmp_path / f"table-{process_id}.pkl"
    args = dict(processes=processes, process_id=process_id, coordinator=coordinator,
                batch_size=batch_size,
                tests=os.path.dirname(__file__), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, out


def finish(proc, out):
    try:
        stdout, stderr = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"child timed out; stderr:\n{stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1]), pd.read_pickle(out)


def test_two_host_devices_give_the_one_device_table(one_device, tmp_path):
    info, table = finish(*start_child(tmp_path, devices=2, batch_size=8))
    # batches of 8 split 4 + 4 over the two devices; each program compiled once per shape
    assert info["device_count"] == 2 and info["datasets_per_call"] == 8
    assert info["compilations"] == {"nuts": 1}
    pd.testing.assert_frame_equal(table, one_device, check_exact=True)


def test_two_distributed_processes_give_the_one_process_table(one_device, tmp_path):
    """Two ``jax.distributed`` processes on localhost (two forced host devices each): each
    fits half of every batch of 4 (two data sets: one device's worth, ``MIN_LANES``) and
    both return the gathered table. (Batches of 8 would use both devices of each process,
    but compile twice as much; the two-device test covers that path.)"""
    coordinator = f"127.0.0.1:{free_port()}"
    children = [start_child(tmp_path, devices=2, batch_size=4, processes=2, process_id=i,
                            coordinator=coordinator) for i in range(2)]
    results = [finish(*child) for child in children]
    for i, (info, table) in enumerate(results):
        assert info["process_count"] == 2 and info["process_index"] == i
        assert info["datasets_per_call"] == 2 and info["padded_batch"] == 4
        assert info["device_count"] == 1
        pd.testing.assert_frame_equal(table, one_device, check_exact=True)


def test_devices_argument_is_checked():
    import jax

    with pytest.raises(ConfigurationError, match="devices=99"):
        run_study(devices=99)
    with pytest.raises(ConfigurationError, match="not a jax device"):
        run_study(devices=["cpu:0"])
    assert len(jax.local_devices()) >= 1
