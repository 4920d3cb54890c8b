"""Regenerate the simulated cohorts bundled in data/ (run from anywhere: ``python
data/make_cohorts.py``). Each cohort's sidecar records the exact call under
``simulation.call``; the test suite checks that the bundled files match it."""

from pathlib import Path

from cartkin.data import simulate_cohort

HERE = Path(__file__).resolve().parent

COHORTS = {
    # 200 subjects from Stein 2019 (random effects read as variances), the realistic schedule
    # with visit windows, residual SD 0.56 on the ln scale, qPCR LLOQ 50 copies/ug (assumed)
    "stein2019_sim200": dict(n=200, seed=2019),
}


def main() -> None:
    for name, kwargs in COHORTS.items():
        path = simulate_cohort(name=name, **kwargs).write(HERE / f"{name}.csv")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
