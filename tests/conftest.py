"""Shared test fixtures: quiet progress bars, float64 helpers, tiny models and data."""

import os

os.environ.setdefault("MODESCAPE_PROGRESS", "0")

import pytest
import torch

# one thread per test process: the suite runs as 2 xdist workers on 2 cores, and a second OpenMP
# thread per worker only spins
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def digits():
    from modescape.zoo import load_dataset

    return load_dataset("digits")


def run_cli(argv, capsys):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    from modescape.cli import main

    code = 0
    try:
        main(list(map(str, argv)))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out = capsys.readouterr()
    return code, out.out, out.err
