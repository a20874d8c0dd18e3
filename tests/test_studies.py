"""The studies: the registry, every study's smoke settings end to end, resuming, and the command line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

from modescape.errors import UserError
from modescape.studies import PRESETS, VERDICTS, all_studies, get
from modescape.studies.context import StudyStopped, run_study

ROOT = Path(__file__).resolve().parents[1]
NAMES = [s.name for s in all_studies()]


def test_registry_has_the_seed_s_studies_in_order():
    first = [
        "goodfellow-interpolation",
        "li-filter-normalisation",
        "li-trajectory",
        "brea-permutation",
        "garipov-curves",
        "fge",
        "rebasin-width",
        "repair",
        "sharpness-generalisation",
    ]
    assert NAMES[: len(first)] == first
    assert len(set(NAMES)) == len(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_study_declares_presets_smoke_and_docs(name):
    s = get(name)
    assert set(PRESETS) <= set(s.presets)
    cpu = s.presets["cpu"]
    for override in (s.smoke, s.tour or {}):
        unknown = set(override) - set(cpu)
        assert not unknown, f"{name}: smoke/tour override settings the cpu preset lacks: {unknown}"
    for key in s.presets:
        assert set(s.presets[key]) <= set(cpu) | {"data_args"}, f"{name}: preset {key} adds settings"
    assert s.stages[0] == "train" and s.claim and s.paper and s.summary
    for page in s.docs:
        assert (ROOT / "docs" / page).is_file()


def test_gpu_preset_needs_a_data_root(tmp_path):
    with pytest.raises(UserError, match="--data-root"):
        run_study("garipov-curves", preset="gpu", out=tmp_path / "g", device="cpu")
    with pytest.raises(UserError, match="--smoke"):
        get("garipov-curves").settings("gpu", smoke=True)


def test_unknown_study_and_stage_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="study --list"):
        get("no-such-study")
    with pytest.raises(UserError, match="no stage"):
        run_study("goodfellow-interpolation", smoke=True, out=tmp_path / "x", stop_after="nope", device="cpu")


def test_command_line_stays_light():
    """`modescape study --list` imports neither torch nor matplotlib (the registry is light)."""
    code = (
        "import sys; from modescape.cli import main\n"
        "try:\n    main(['study', '--list'])\nexcept SystemExit:\n    pass\n"
        "bad = [m for m in ('torch', 'matplotlib', 'scipy') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for name in NAMES:
        assert name in out.stdout


def _check_result(folder: Path, name: str) -> dict:
    result = json.loads((folder / "result.json").read_text())
    assert result["study"] == name and result["verdict"] in VERDICTS and result["why"]
    assert result["table"] and all(r["measured"] and r["measured_setting"] for r in result["table"])
    assert result["figures"]
    for f in result["figures"]:
        assert (folder / f["file"]).stat().st_size > 1000, f["file"]
    prov = result["provenance"]
    assert prov["versions"]["torch"] and prov["command"].startswith("modescape") and prov["seconds"] > 0
    assert result["smoke"] is True and result["settings"] == get(name).settings("cpu", smoke=True)
    section = (folder / "section.md").read_text()
    assert result["claim"] in section and f"**Verdict: {result['verdict']}.**" in section
    return result


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_every_study_runs_its_smoke_settings(name, tmp_path):
    result = run_study(name, smoke=True, out=tmp_path / name, device="cpu")
    _check_result(tmp_path / name, name)
    # a rerun reads every stage back and writes the same numbers
    again = run_study(name, smoke=True, out=tmp_path / name, device="cpu")
    assert again["numbers"] == result["numbers"] and again["table"] == result["table"]


@pytest.fixture(scope="module")
def whole_garipov(tmp_path_factory):
    """garipov-curves' smoke run, uninterrupted."""
    return run_study("garipov-curves", smoke=True, out=tmp_path_factory.mktemp("whole") / "g", device="cpu")


@pytest.mark.slow
@pytest.mark.xdist_group("garipov_resume")  # one worker computes the shared uninterrupted run once
@pytest.mark.parametrize("stop", ["train", "curve_bezier", "paths"])
def test_an_interrupted_study_resumes_to_the_same_numbers(stop, whole_garipov, tmp_path):
    """Stopped after a stage (models trained, a curve trained, paths measured), the rerun continues and writes
    the numbers of an uninterrupted run."""
    with pytest.raises(StudyStopped):
        run_study("garipov-curves", smoke=True, out=tmp_path / "cut", device="cpu", stop_after=stop)
    assert not (tmp_path / "cut" / "result.json").exists()
    assert (tmp_path / "cut" / "stages" / "paths.json").exists() == (stop == "paths")
    resumed = run_study("garipov-curves", smoke=True, out=tmp_path / "cut", device="cpu")
    assert resumed["numbers"] == whole_garipov["numbers"]
    assert resumed["table"] == whole_garipov["table"] and resumed["verdict"] == whole_garipov["verdict"]


@pytest.mark.slow
def test_a_folder_of_another_run_is_refused(tmp_path):
    with pytest.raises(StudyStopped):
        run_study("goodfellow-interpolation", smoke=True, out=tmp_path / "g", device="cpu", stop_after="train")
    with pytest.raises(UserError, match="holds another run.*smoke"):
        run_study("goodfellow-interpolation", smoke=False, out=tmp_path / "g", device="cpu")
    with pytest.raises(UserError, match="holds another run"):
        run_study("li-trajectory", smoke=True, out=tmp_path / "g", device="cpu")


@pytest.mark.slow
def test_a_data_root_resumes_however_it_is_spelled(tmp_path, monkeypatch):
    """The MNIST variant stopped after training, resumed with the same folder spelled relative and then absolute,
    gives one result (the runs record the resolved folder)."""
    from test_zoo import make_mnist

    make_mnist(tmp_path / "data", n_train=300, n_test=100)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StudyStopped):
        run_study("goodfellow-interpolation", smoke=True, data_root="data", out="g", device="cpu", stop_after="train")
    resumed = run_study("goodfellow-interpolation", smoke=True, data_root=tmp_path / "data", out="g", device="cpu")
    whole = run_study("goodfellow-interpolation", smoke=True, data_root="data", out="whole", device="cpu")
    assert resumed["numbers"] == whole["numbers"]


@pytest.mark.slow
def test_study_command_writes_result_and_copies_figures(tmp_path, capsys):
    out, figs = tmp_path / "gi", tmp_path / "figs"
    code, stdout, err = run_cli(
        ["study", "goodfellow-interpolation", "--smoke", "--out", out, "--figures", figs, "--device", "cpu"], capsys
    )
    assert code == 0, err
    assert "goodfellow-interpolation:" in stdout and "published" in stdout
    assert (out / "result.json").is_file()
    assert (figs / "goodfellow_interpolation_interpolation.png").is_file()
    code, stdout, err = run_cli(
        ["study", "goodfellow-interpolation", "--smoke", "--out", out, "--json", "--device", "cpu"], capsys
    )
    assert code == 0 and json.loads(stdout)["study"] == "goodfellow-interpolation"


def test_study_command_checks_its_arguments(tmp_path, capsys):
    code, _, err = run_cli(["study", "goodfellow-interpolation", "--preset", "tpu"], capsys)
    assert code == 2 and "--preset" in err
    code, _, err = run_cli(["study"], capsys)
    assert code == 2 and "study --list" in err
    code, _, err = run_cli(["study", "nope", "--out", tmp_path / "n"], capsys)
    assert code == 2 and "unknown study" in err
    code, _, err = run_cli(["study", "fge", "--data-root", tmp_path / "missing"], capsys)
    assert code == 2 and "--data-root" in err


def test_list_as_json(capsys):
    code, stdout, _ = run_cli(["study", "--list", "--json"], capsys)
    assert code == 0
    listed = json.loads(stdout)
    assert [s["name"] for s in listed] == NAMES
    assert all(s["presets"]["cpu"] and s["claim"] for s in listed)


def test_granulated_kendall_against_hand_computed_values():
    from modescape.studies.sharpness_generalisation import granulated_kendall

    # two axes, a x b in {0, 1}^2; the measure follows the gap along a, opposes it along b
    rows = [{"a": a, "b": b, "gap": a + 2 * b, "m": a - 2 * b} for a in (0, 1) for b in (0, 1)]
    g = granulated_kendall(rows, "m", ["a", "b"])
    assert g["a"] == pytest.approx(1.0) and g["b"] == pytest.approx(-1.0) and g["Psi"] == pytest.approx(0.0)


def test_width_for_matches_the_zoo_s_parameter_count():
    from modescape.studies.depth_vs_width import mlp_params, width_for
    from modescape.zoo import build_model

    for depth in (1, 3):
        w = width_for(64, 10, depth, 5000)
        net = build_model("mlp", (1, 8, 8), 10, depth=depth, width=w)
        assert mlp_params(64, 10, depth, w) == sum(p.numel() for p in net.parameters())
        assert abs(mlp_params(64, 10, depth, w) - 5000) <= abs(mlp_params(64, 10, depth, w + 1) - 5000)


@pytest.mark.slow
def test_tour_runs_its_studies_and_writes_the_report(tmp_path, capsys):
    from modescape.studies import TOUR

    code, stdout, err = run_cli(
        ["tour", "--smoke", "--out", tmp_path / "tour", "--figures", tmp_path / "gallery", "--device", "cpu"], capsys
    )
    assert code == 0, err
    index = tmp_path / "tour" / "report" / "index.html"
    assert index.is_file() and str(index.resolve()) in stdout.replace("\n", "")
    for name in TOUR:
        assert (tmp_path / "tour" / "report" / f"{name}.html").is_file()
        assert any(f.name.startswith(name.replace("-", "_")) for f in (tmp_path / "gallery").iterdir())


@pytest.mark.slow
def test_grokking_smoke_against_its_runs(tmp_path):
    """grokking's smoke run (both seeds 0: the same network, so every barrier is 0): its events and checkpoint
    accuracies are the trainer's history, its first weight norm that of the seeded initialisation."""
    import torch

    from modescape.studies.grokking import first_epoch
    from modescape.zoo import build_model, load_dataset

    result = run_study("grokking", smoke=True, out=tmp_path / "g", device="cpu")
    _check_result(tmp_path / "g", "grokking")
    s, num = result["settings"], result["numbers"]
    history = json.loads((tmp_path / "g" / "runs" / "seed0" / "trainer.json").read_text())["history"]
    assert num["events"]["memorised"] == first_epoch(history, "train_accuracy", 0.99) is not None
    ck = num["checkpoints"]
    assert [c["epoch"] for c in ck] == list(range(0, s["epochs"] + 1, s["save_every"]))
    for c in ck[1:]:
        assert c["test_accuracy"] == history[c["epoch"] - 1]["test_accuracy"]
    torch.manual_seed(0)
    split = load_dataset("modular-add", **s["data_args"])
    net = build_model("transformer", split.input_shape, split.num_classes, **s["model_args"])
    norm = torch.sqrt(sum((p.double() ** 2).sum() for p in net.parameters())).item()
    assert ck[0]["weight_norm"] == pytest.approx(norm, rel=1e-6)
    bar = num["barriers"]["memorised"]
    for key in ("before", "after_weights", "after_activations"):
        assert bar[key]["test_loss"] == pytest.approx(0.0, abs=1e-5)
    assert {f["docs"] for f in result["figures"]} == {"grokking_run.png", "grokking_slices.png", "grokking_plane.png"}


def test_width_1d_against_a_parabola():
    import numpy as np

    from modescape.studies.swa_sam_ensembles import width_1d

    a = np.linspace(-1, 1, 41)
    # L = a^2: within 0.25 of L(0) for |a| <= 0.5 (grid points: exact); a shifted minimum crosses between points
    assert width_1d((a**2).tolist(), a.tolist(), 0.25) == pytest.approx(1.0)
    assert width_1d(((a - 0.2) ** 2).tolist(), a.tolist(), 0.09) == pytest.approx(2 * 0.13**0.5, abs=0.01)
    assert width_1d([0.0] * 41, a.tolist(), 0.1) == pytest.approx(2.0)  # below the level everywhere


@pytest.mark.slow
def test_swa_sam_ensembles_smoke_against_its_runs(tmp_path):
    """swa-sam-ensembles' smoke run: each trained model's test error is the trainer's last test accuracy, the
    deep ensemble's members are the two half-budget runs."""
    result = run_study("swa-sam-ensembles", smoke=True, out=tmp_path / "e", device="cpu")
    _check_result(tmp_path / "e", "swa-sam-ensembles")
    s, rows = result["settings"], result["numbers"]["rows"]
    b, h = s["budget"], s["budget"] // 2

    def last(tag):
        return json.loads((tmp_path / "e" / "runs" / tag / "trainer.json").read_text())["history"][-1]

    for name, tag in ((f"SGD, {b} epochs", f"sgd-{b}"), (f"SAM rho {s['rho']}, {b} epochs", f"sam-{b}")):
        assert rows[name]["accuracy"] == pytest.approx(last(tag)["test_accuracy"], abs=1e-6)
        assert rows[name]["width"] > 0 and rows[name]["lambda_max"] > 0
    assert rows[f"SGD, {h} epochs (SWA's start)"]["accuracy"] == pytest.approx(
        last(f"sgd-{h}-seed0")["test_accuracy"], abs=1e-6
    )
    assert set(result["numbers"]["checks"]) == {"swa_flatter", "swa_nll", "sam_flatter", "ensembles_nll"}
