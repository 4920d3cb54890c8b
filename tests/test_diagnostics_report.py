"""`cartkin report` on an ML run folder: a short fit of a small simulated Stein cohort."""

import re

import pandas as pd
import pytest

import cartkin.data as cdata
from cartkin._data.cohort import STEIN_SCHEDULE

CONFIG = """
title = "Stein 2019, 40 simulated subjects (report test)"
[data]
path = "cohort.csv"
[model]
name = "stein2019"
[[endpoints]]
dvid = 1
output = "C"
sigma = 0.6
[parameters]
estimate = { foldx = 3900.0, Tmax = 9.3, Cmax = 24000.0, alpha = 0.16, FB = 0.0079, beta = 0.0032 }
[method]
seed = 2
saem = { k1 = 50, k2 = 50, anneal = 30 }
importance = { min_draws = 250, max_draws = 500, louis_draws = 250, target_se = 5.0 }
"""


@pytest.fixture(scope="module")
def ml_run(tmp_path_factory):
    from cartkin.api_fit import run_fit

    d = tmp_path_factory.mktemp("ml")
    co = cdata.simulate_cohort(
        40, seed=3, omega_reading="variance", schedule=STEIN_SCHEDULE, name="cohort"
    )
    co.write(d / "cohort.csv")
    (d / "fit.toml").write_text(CONFIG)
    run_fit(d / "fit.toml", d / "run", progress=False)
    return d / "run"


def test_report_of_an_ml_run(ml_run, capsys):
    from cartkin.cli import main

    # a crs-risk folder joins the report (its section, figures embedded)
    crs = ml_run.parent / "crs"
    crs.mkdir()
    (crs / "crs_risk.html").write_text(
        "<html><body><section id=\"crs-risk\"><h2>CRS risk per dose</h2><table><tr><td>1e8</td>"
        "<td>0.054</td></tr></table></section></body></html>"
    )
    assert main(["report", str(ml_run), "--replicates", "100", "--npde-replicates", "200",
                 "--crs", str(crs)]) == 0
    assert "report:" in capsys.readouterr().out
    text = (ml_run / "report.html").read_text()
    assert '<section id="crs-risk"><h2>CRS risk per dose</h2>' in text and "<td>0.054</td>" in text
    assert text.count("<body>") == 1
    srcs = re.findall(r'src="([^"]*)"', text)
    assert len(srcs) >= 5 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in text and "href=" not in text
    params = pd.read_csv(ml_run / "parameters.csv")
    for name in params["parameter"]:  # the parameter table, every row
        assert f"<td>{name}</td>" in text, name
    assert "Newton decrement" in text
    assert "visit schedule" in text  # VPC binned on the nominal days of the sidecar's schedule
    for png in ("report_gof.png", "report_individual.png", "report_vpc.png", "report_npde.png"):
        assert (ml_run / png).stat().st_size > 20_000, png
    vpc = pd.read_csv(ml_run / "report_vpc.csv")
    assert sorted(vpc["ntime"]) == sorted(v.day for v in STEIN_SCHEDULE)
