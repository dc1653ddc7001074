"""``hbm fit --formula ... --data file.csv --family ...`` end to end (in process: the
subprocess path of the command is covered by tests/test_cli.py)."""

import numpy as np
import pandas as pd

from hbm.cli import main


def test_fit_a_formula_from_a_csv(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 24
    df = pd.DataFrame({"x": rng.normal(size=n), "g": np.repeat(list("abcd"), n // 4)})
    df["y"] = rng.poisson(np.exp(0.3 + 0.5 * df["x"]))
    csv = tmp_path / "d.csv"
    df.to_csv(csv, index=False)
    code = main(["fit", "--formula", "y ~ x + C(g)", "--data", str(csv), "--family",
                 "poisson", "--method", "map"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "method: map" in out.out and "b[x]" in out.out and "b[C(g)[d]]" in out.out
    # bad input is one clear line naming the culprit, exit status 2
    assert main(["fit", "--formula", "y ~ w", "--data", str(csv), "--method", "map"]) == 2
    err = capsys.readouterr().err
    assert "['w']" in err and len([line for line in err.splitlines() if line.strip()]) == 1
    assert main(["fit", "--formula", "y ~ x", "--data", str(csv), "--family", "poison",
                 "--method", "map"]) == 2
    assert "unknown family 'poison'" in capsys.readouterr().err
