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


# the head of the subprocess sweep scripts (kill-and-resume, torchrun): a digits MLP and two directions;
# format with src=<the repository's src folder>
SWEEP_SCRIPT_HEAD = """
import os, sys, time, numpy as np, torch
sys.path.insert(0, {src!r})
torch.set_num_threads(1)
from modescape import space as sp
from modescape.directions import random_directions
from modescape.evaluate import Evaluator
from modescape.families import Plane
from modescape.landscape import sweep
from modescape.zoo import build_model, load_dataset
split = load_dataset("digits")
torch.manual_seed(0)
net = build_model("mlp", split.input_shape, 10, depth=1, width=16)
dx, dy = random_directions(net, 2, seed=0)
"""
