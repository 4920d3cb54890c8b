"""``cartkin crs-risk``: writes the table, plots and HTML; bad input gives one line and exit 2;
the same table on one device and on two."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cartkin.cli import main

SHIPPED = Path(__file__).parents[1] / "fits" / "crs_hardiansyah.toml"
TINY = [
    "--draws",
    "2",
    "--patients",
    "6",
    "--calibration-patients",
    "6",
    "--point-patients",
    "12",
    "--doses",
    "1e7,1e9",
    "--burden",
    "0.5,8",
]


def tiny_toml(tmp_path: Path) -> Path:
    text = SHIPPED.read_text()
    text = text.replace("window = 28.0", "window = 10.0").replace("step = 0.25", "step = 0.5")
    # Tsit5 instead of the shipped batched solver: it compiles faster than these few solves take
    text = text.replace(
        'solver = { name = "batched", rtol = 1e-4, atol = 1e-7 }',
        'chunk_size = 8\nsolver = { name = "tsit5", rtol = 1e-5, atol = 1e-8 }',
    )
    assert 'name = "tsit5"' in text and "chunk_size = 8" in text
    path = tmp_path / "crs_tiny.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crs_cli")
    out = tmp / "run"
    rc = main(["crs-risk", str(tiny_toml(tmp)), "--out", str(out), *TINY])
    return rc, tmp, out


def test_cli_writes_table_plots_and_report(cli_run, capsys):
    rc, _, out = cli_run
    assert rc == 0
    for f in (
        "dose_risk.csv",
        "dose_windows.csv",
        "calibration_fit.csv",
        "link_parameters.csv",
        "dose_risk.png",
        "calibration.png",
        "exposure.png",
        "crs_risk.html",
        "run.json",
    ):
        assert (out / f).exists(), f
    t = pd.read_csv(out / "dose_risk.csv")
    assert {"scenario", "profile", "dose", "p_crs2", "p_crs3_hi90", "p_response"} <= set(t.columns)
    assert "fractionated 10/30/60% on days 0,1,2" in set(t["scenario"])
    assert (out / "dose_risk.png").read_bytes()[:4] == b"\x89PNG"
    page = (out / "crs_risk.html").read_text()
    # self-contained: the three figures embedded, nothing linked
    assert page.count("data:image/png;base64,") == 3 and 'src="dose_risk.png"' not in page


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.toml"], "not found"),
        (["{toml}", "--limit", "2"], "limit on P\\(CRS >= 3\\) must be in \\(0, 1\\)"),
        (["{toml}", "--doses", "1e8,abc"], "--doses must be comma-separated numbers"),
        (["{dir}"], "is a run folder: name the CRS scenario with --scenario"),
    ],
)
def test_bad_input_one_line_exit_2(cli_run, capsys, args, message):
    _, tmp, _ = cli_run
    toml = tiny_toml(tmp)
    args = [a.format(toml=toml, dir=tmp) for a in args]
    rc = main(["crs-risk", *args, "--out", str(tmp / "bad")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("cartkin crs-risk: error:") and "\n" not in err and "Traceback" not in err
    assert pytest.importorskip("re").search(message, err), err
    assert not (tmp / "bad").exists()


def test_bad_scenario_key_names_the_file_and_key(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text(SHIPPED.read_text().replace("[doses]", "[doses]\nmax_dose = 3"))
    rc = main(["crs-risk", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.toml" in err and "max_dose" in err


@pytest.mark.slow
def test_same_table_on_two_devices(cli_run, tmp_path):
    # the module's run used one device (pytest imports JAX before any flag); this one shards the
    # patients over two host devices in a fresh process
    rc, tmp, out = cli_run
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_ENABLE_X64": "1",
    }
    out2 = tmp_path / "two"
    code = (
        "import jax; assert len(jax.devices()) == 2; from cartkin.cli import main; import sys; "
        "sys.exit(main(sys.argv[1:]))"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, "crs-risk", str(tiny_toml(tmp)), "--out", str(out2), *TINY],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = pd.read_csv(out / "dose_risk.csv"), pd.read_csv(out2 / "dose_risk.csv")
    pd.testing.assert_frame_equal(a, b, rtol=1e-9)


def test_fit_run_folder_without_the_outputs_is_one_line_exit_2(tmp_path, capsys):
    from test_crs_risk import _fake_run

    _fake_run(tmp_path / "stein", "stein2019", "C", {"Cmax": 24000.0, "Tmax": 9.3})
    rc = main(
        [
            "crs-risk",
            str(tmp_path / "stein"),
            "--scenario",
            str(SHIPPED),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert "Stein2019 lacks the output(s) the CRS link needs" in err and "hardiansyah2019" in err
