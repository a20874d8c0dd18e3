"""The wheel that users install: built from a copy of the sources, installed into a fresh venv, run from there.

The fresh venv reuses this venv's third-party packages (torch is not downloaded again) through a ``.pth``
line naming this venv's site-packages: a path line, so this venv's own ``.pth`` hooks (the editable install
of ``src/``) are not run, and ``import modescape`` can only find the installed wheel.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin folder, wheel path): the wheel built from a copy of the tree, installed with --no-deps."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    dist = tmp / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(dist),
            str(src),
        ],
        check=True,
        cwd=tmp,
    )
    (wheel,) = dist.glob("modescape-*.whl")

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(site, "parent_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--quiet", str(wheel)], check=True
    )
    return venv / "bin", wheel


def _run(bin_dir: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(MODESCAPE_PROGRESS="0", PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")
    return subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_wheel_contents_and_version(installed):
    _, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert "modescape/py.typed" in names  # PEP 561 marker shipped
    assert "modescape/cli/__init__.py" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "studies/"))]
    # the version comes from one place: modescape.__version__ is the distribution's version
    about = (ROOT / "src" / "modescape" / "__init__.py").read_text()
    assert f'__version__ = "{importlib.metadata.version("modescape")}"' in about
    assert wheel.name.startswith(f"modescape-{importlib.metadata.version('modescape')}-")


def test_installed_wheel_runs_from_its_own_venv(installed, tmp_path):
    bin_dir, wheel = installed
    where = _run(
        bin_dir,
        str(bin_dir / "python"),
        "-c",
        "import json, modescape; print(json.dumps([modescape.__file__, modescape.__version__]))",
        cwd=tmp_path,
    )
    assert where.returncode == 0, where.stderr
    file, version = json.loads(where.stdout)
    assert Path(file).resolve().is_relative_to(bin_dir.parent.resolve()), file  # the installed copy
    assert not Path(file).resolve().is_relative_to(ROOT / "src"), file

    help_ = _run(bin_dir, str(bin_dir / "modescape"), "--help", cwd=tmp_path)
    assert help_.returncode == 0, help_.stderr
    assert "train" in help_.stdout and "landscape" in help_.stdout
    ver = _run(bin_dir, str(bin_dir / "modescape"), "--version", cwd=tmp_path)
    assert ver.returncode == 0 and ver.stdout.strip() == f"modescape {version}", (ver.stdout, ver.stderr)
    assert wheel.name.startswith(f"modescape-{version}-")

    out = tmp_path / "run"
    train = _run(
        bin_dir,
        str(bin_dir / "modescape"),
        "train",
        "--model",
        "mlp",
        "--data",
        "digits",
        "--epochs",
        "1",
        "--seed",
        "0",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert train.returncode == 0, train.stderr
    assert (out / "final.safetensors").is_file()
    meta = json.loads((out / "final.json").read_text())
    assert meta["versions"]["modescape"] == version  # provenance names the installed version
