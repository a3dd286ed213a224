"""The `lensing` command line: `generate` writes the same map as the library, and bad input exits 2."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from lensing import MapRequest, cli, generate_map
from lensing.io import load_npy, read_fits

REPO_ROOT = Path(__file__).resolve().parents[1]

REQUEST = MapRequest(
    profile_type="Elliptical NFW", M_vir=2.5e12, scale_radius=120.0, ellipticity=0.3, position_angle=20.0,
    grid_size=32, fov_kpc=600.0, z_lens=0.3, z_source=1.5, scenario="CDM", seed=5, noise_sigma=0.001,
    center_x_kpc=30.0, center_y_kpc=-12.5, ra=10.5, dec=-5.0,
)
ARGS = [
    "--profile-type", "Elliptical NFW", "--mass", "2.5e12", "--scale-radius", "120", "--ellipticity", "0.3",
    "--position-angle", "20", "--grid-size", "32", "--fov-kpc", "600", "--z-lens", "0.3", "--z-source", "1.5",
    "--scenario", "CDM", "--seed", "5", "--noise-sigma", "0.001", "--center-x-kpc", "30", "--center-y-kpc", "-12.5",
    "--ra", "10.5", "--dec", "-5",
]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lensing.cli", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_generate_writes_the_library_map_in_every_format(tmp_path):
    npy, fits_path, png = tmp_path / "m.npy", tmp_path / "m.fits", tmp_path / "m.png"
    result = _run("generate", *ARGS, "--npy", str(npy), "--fits", str(fits_path), "--png", str(png))
    assert result.returncode == 0, result.stderr
    expected = generate_map(REQUEST).convergence
    assert np.array_equal(load_npy(npy), expected)
    kappa, info = read_fits(fits_path)
    assert np.array_equal(kappa, expected)
    assert (info["M_vir"], info["scenario"], info["seed"]) == (REQUEST.M_vir, REQUEST.scenario, REQUEST.seed)
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_generate_bad_value_exits_2_naming_the_parameter(tmp_path):
    result = _run("generate", "--mass", "5", "--npy", str(tmp_path / "m.npy"))
    assert result.returncode == 2
    assert "M_vir" in result.stderr and "--mass" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.npy").exists()


@pytest.mark.parametrize(("args", "names"), [
    (["--z-source", "0.2"], ["z_source", "--z-source"]),
    (["--grid-size", "4"], ["grid_size", "--grid-size"]),
    (["--noise-sigma", "nan"], ["noise_sigma", "--noise-sigma"]),
    (["--scale-radius", "-3"], ["scale_radius", "--scale-radius"]),
    (["--ellipticity", "0.2"], ["ellipticity", "Elliptical NFW"]),
])
def test_generate_rejects_invalid_values(tmp_path, capsys, args, names):
    assert cli.main(["generate", *args, "--npy", str(tmp_path / "m.npy")]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in names), err
    assert not (tmp_path / "m.npy").exists()


def test_generate_needs_an_output(capsys):
    assert cli.main(["generate"]) == 2
    assert "--npy" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--scenario", "XDM"], ["--seed", "-1"], ["--mass", "heavy"]])
def test_generate_rejects_unparsable_options(tmp_path, args):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", *args, "--npy", str(tmp_path / "m.npy")])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("argv, option", [
    (["evaluate", "--mc-samples", "1"], "--mc-samples"),  # no intervals, so no coverage to measure
    (["evaluate", "--n", "0"], "--n"),
    (["evaluate", "--seed", "-1"], "--seed"),
    (["calibrate", "--weights", "w", "--n", "0"], "--n"),
    (["train", "--steps", "0"], "--steps"),
])
def test_model_commands_refuse_numbers_they_cannot_run_with(capsys, argv, option):
    """A usage error naming the option (exit 2) before any work, not a traceback from inside the run."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert f"argument {option}: must be at least" in capsys.readouterr().err


def test_generate_unwritable_output_exits_1(tmp_path, capsys):
    assert cli.main(["generate", "--grid-size", "16", "--npy", str(tmp_path / "missing" / "m.npy")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_help_documents_units_and_every_request_field(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["generate", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for unit in ("Msun", "kpc", "degrees", "dimensionless"):
        assert unit in text
    inputs = [field.name for field in fields(MapRequest) if field.name != "scale_radius_source"]  # an output
    flags = {name: "--" + name.replace("_", "-") for name in inputs} | {"M_vir": "--mass"}
    for flag in [*flags.values(), "--npy", "--fits", "--png"]:
        assert flag in text


def test_a_registered_subcommand_is_dispatched(monkeypatch):
    def add_parser(subparsers: argparse._SubParsersAction) -> None:
        subparsers.add_parser("probe").set_defaults(handler=lambda args: 7)

    monkeypatch.setattr(cli, "SUBCOMMANDS", (*cli.SUBCOMMANDS, add_parser))
    assert cli.main(["probe"]) == 7
