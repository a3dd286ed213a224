"""The sweep report's coverage verdicts: a region whose intervals under-cover is named, plainly."""

from __future__ import annotations

from cluster.sweep_report import TARGETS, under_covering


def entry(n: int, coverage_68: float, coverage_95: float, **where) -> dict:
    return {"n": n, **where, **{name: {"coverage_68": coverage_68, "coverage_95": coverage_95} for name in TARGETS}}


def test_regions_that_under_cover_are_flagged_and_small_regions_get_their_standard_error():
    binned = {
        "M_vir": [entry(400, 0.68, 0.95, low=1e11, high=1e12), entry(400, 0.55, 0.95, low=1e12, high=1e13)],
        "noise_sigma": [entry(400, 0.70, 0.90, value=0.02), entry(20, 0.55, 0.90, value=0.0)],
    }
    flagged = {(f["region"], f["parameter"], f["level"]) for f in under_covering(binned)}
    assert ("M_vir in [1e+12, 1e+13]", "M_vir", "68") in flagged  # 13 points low
    assert ("noise_sigma 0.02", "r_s", "95") in flagged  # 5 points low at 95 %
    assert not any(region.startswith("M_vir in [1e+11") for region, _, _ in flagged)  # on nominal
    assert not any(region == "noise_sigma 0.0" for region, _, _ in flagged)  # n = 20: within 2 standard errors
