"""Running a study: its folder, its cached stages and trained models, and what it writes.

``run_study(name, preset="cpu", out=DIR)`` makes a `Context` for the study's settings and calls its
``run(ctx)``. The folder holds

* ``study.json``: the study, preset and settings the folder belongs to (a rerun with other settings is
  refused, so a folder never mixes two runs);
* ``runs/TAG/``: every trained model, by `modescape.train.train` (a rerun resumes after the last finished
  epoch, with the same weights as an uninterrupted run);
* ``stages/NAME.json``: each finished stage's numbers (`Context.stage`); a rerun reads them back instead
  of recomputing, so an interrupted study continues where it stopped;
* ``figures/``: the figures (`modescape.plots`, atomic saves);
* ``result.json``: numbers, settings, the measured-vs-published table, the verdict, the figures and the
  provenance (`modescape.provenance.environment`, the command line, the seconds); ``section.md``: the
  same as a report section (`modescape.report` turns folders into a site).

Every stage starts from the same seeds (torch, numpy, random) whatever ran before it, and evaluators are
made with a fixed evaluation path (`Context.evaluator`), so a resumed study writes the same numbers as an
uninterrupted one.
"""

from __future__ import annotations

import json
import random
import shutil
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .. import io
from ..errors import UserError
from .registry import Outcome, Study, get

FILE_DATA = {"mnist": "the MNIST IDX files", "cifar10": "the CIFAR-10 python batches (cifar-10-batches-py)"}


class StudyStopped(Exception):
    """Raised after the stage named by ``stop_after`` (tests of resuming; the CLI never sets it)."""

    def __init__(self, stage: str):
        super().__init__(f"stopped after stage '{stage}'")
        self.stage = stage


def _roundtrip(value: Any) -> Any:
    """``value`` as it reads back from a stage file (tuples become lists; NaN and inf survive)."""
    return json.loads(json.dumps(value, default=io.json_default))


class Context:
    """What a study's ``run`` works with: settings, data, training, evaluators, stages, figures, logging."""

    def __init__(
        self,
        study: Study,
        settings: Mapping[str, Any],
        out: Path,
        preset: str,
        smoke: bool,
        data_root: str | None,
        device: Any,
        stop_after: str | None = None,
        progress: bool | None = None,
        log: Callable[[str], None] | None = None,
    ):
        self.study, self.settings, self.out = study, dict(settings), Path(out)
        self.preset, self.smoke, self.data_root = preset, smoke, data_root
        self.device, self.stop_after, self.progress = device, stop_after, progress
        self.seed = int(self.settings.get("seed", 0))
        self._log = log
        self._splits: dict[str, Any] = {}
        self.timings: dict[str, float] = {}

    # -- logging and files ---------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if self._log is not None:
            self._log(f"[{self.study.name}] {msg}")

    def figure(self, name: str) -> Path:
        """The path of a figure file in the study's ``figures/`` folder."""
        path = self.out / "figures" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def rel(self, path: str | Path) -> str:
        """``path`` relative to the study folder, as results name files."""
        return Path(path).resolve().relative_to(self.out.resolve()).as_posix()

    # -- seeds and stages ----------------------------------------------------------------------------
    def seed_all(self, label: str) -> None:
        """Seed torch, numpy and random from the study's seed and ``label``: the same state whatever ran before."""
        import numpy as np
        import torch

        s = (self.seed * 1_000_003 + zlib.crc32(label.encode())) % 2**31
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)

    def stage(self, name: str, fn: Callable[[], Any]) -> Any:
        """The value of stage ``name``: read from ``stages/NAME.json`` when a previous run finished it, else
        ``fn()`` (after `seed_all`), written there atomically. Values are JSON-able (numbers, lists, dicts);
        they are returned as they read back from the file, so a resumed run sees exactly what a fresh one
        sees."""
        if name not in self.study.stages:
            raise ValueError(f"study {self.study.name!r} has no stage {name!r} (declare it in `stages`)")
        path = self.out / "stages" / f"{name}.json"
        if path.exists():
            try:
                value = json.loads(path.read_text())["value"]
            except (json.JSONDecodeError, KeyError):
                raise UserError(f"{path} is damaged: delete it and rerun to recompute that stage") from None
            self.log(f"stage {name}: done before (read from {self.rel(path)})")
        else:
            self.seed_all(name)
            t0 = time.perf_counter()
            value = _roundtrip(fn())
            secs = time.perf_counter() - t0
            self.timings[name] = secs
            io.write_text(
                path, json.dumps({"stage": name, "seconds": secs, "value": value}, default=io.json_default) + "\n"
            )
            self.log(f"stage {name}: {secs:.1f} s")
        self.stop_point(name)
        return value

    def stop_point(self, name: str) -> None:
        """End the run here when ``stop_after`` names this stage (to test resuming)."""
        if self.stop_after == name:
            raise StudyStopped(name)

    # -- data, models, evaluators --------------------------------------------------------------------
    def split(self, name: str | None = None, **args: Any):
        """A zoo dataset: ``name`` (default the settings' ``data``) with the settings' ``data_args`` and
        ``args``; MNIST and CIFAR-10 are read from ``--data-root``."""
        from ..zoo import load_dataset

        name = name or self.settings.get("data", "digits")
        merged = {**dict(self.settings.get("data_args", {})), **args}
        key = json.dumps([name, merged], sort_keys=True)
        if key not in self._splits:
            if name in FILE_DATA and self.data_root is None:
                raise UserError(
                    f"study {self.study.name} with preset {self.preset} reads {name}: pass --data-root "
                    f"DIR, the folder with {FILE_DATA[name]}"
                )
            self._splits[key] = load_dataset(name, root=self.data_root if name in FILE_DATA else None, **merged)
        return self._splits[key]

    def build(self, split, model: str = "mlp", model_args: Mapping[str, Any] | None = None, seed: int = 0):
        """A zoo model for ``split``, initialised from ``seed``."""
        import torch

        from ..zoo import build_model

        torch.manual_seed(seed)
        return build_model(model, split.input_shape, split.num_classes, **dict(model_args or {}))

    def train(
        self,
        tag: str,
        split,
        model: str = "mlp",
        model_args: Mapping[str, Any] | None = None,
        seed: int = 0,
        **config: Any,
    ):
        """Train (or resume, or read back) a model in ``runs/TAG`` with `modescape.train.train`; returns
        ``(model, metrics of the last epoch)``."""
        from ..train import TrainConfig, train

        net = self.build(split, model, model_args, seed)
        cfg = TrainConfig(seed=seed, **config)
        t0 = time.perf_counter()
        hist = train(
            net,
            split,
            cfg,
            out=self.out / "runs" / tag,
            device=self.device,
            meta={"data": split.meta},
            progress=self.progress,
        )
        secs = time.perf_counter() - t0
        if secs > 1.0:
            self.log(f"trained {tag}: test accuracy {hist.last.get('test_accuracy', float('nan')):.4f} ({secs:.0f} s)")
        return net, dict(hist.last)

    def run_dir(self, tag: str) -> Path:
        return self.out / "runs" / tag

    def evaluator(
        self,
        model,
        data,
        metrics=("loss", "accuracy"),
        bn: str | None = None,
        family_mode: str | None = "loop",
        **kwargs,
    ):
        """An `Evaluator` on the study's device with a fixed evaluation path (``mode="loop"``, the family path
        ``family_mode``): timing never changes which kernels run, so reruns give the same bits. ``bn``:
        default `modescape.evaluate.default_bn` of the model."""
        from ..evaluate import Evaluator, default_bn

        kwargs.setdefault("mode", "loop")
        ev = Evaluator(
            model, data, metrics=metrics, bn=bn or default_bn(model), device=self.device, progress=False, **kwargs
        )
        if family_mode is not None:
            ev.family_mode = family_mode
        return ev


def _identity(
    study: Study, preset: str, smoke: bool, tour: bool, settings: Mapping[str, Any], data_root: str | None
) -> dict[str, Any]:
    root = None if data_root is None else str(Path(data_root).resolve())
    return {
        "study": study.name,
        "preset": preset,
        "smoke": smoke,
        "tour": tour,
        "settings": json.loads(io.json_dumps(settings)),
        "data_root": root,
    }


def _check_folder(out: Path, ident: Mapping[str, Any]) -> None:
    side = out / "study.json"
    if side.exists():
        try:
            saved = json.loads(side.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{side} is damaged: delete {out} or choose another --out") from None
        if saved != ident:
            diff = [k for k in ident if saved.get(k) != ident[k]]
            if "settings" in diff:
                diff.remove("settings")
                diff += [
                    f"settings.{k}"
                    for k in sorted(set(ident["settings"]) | set(saved.get("settings", {})))
                    if saved.get("settings", {}).get(k) != ident["settings"].get(k)
                ]
            raise UserError(
                f"{out} holds another run ({saved.get('study')}, differing in {', '.join(diff)}): "
                f"rerun with the same options to continue it, or choose another --out"
            )
    else:
        io.write_json(side, ident)


def run_study(
    name: str,
    preset: str = "cpu",
    smoke: bool = False,
    data_root: str | Path | None = None,
    out: str | Path | None = None,
    device: Any = None,
    stop_after: str | None = None,
    tour: bool = False,
    figures: str | Path | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run (or continue) study ``name`` into ``out`` (default ``runs/NAME``) and return its ``result.json``.

    ``preset``: ``cpu`` or ``gpu``; ``smoke``: the tiny settings of the test suite; ``tour``: the settings of
    `modescape tour`; ``data_root``: the folder of MNIST (``cpu`` then runs its MNIST variant when it has
    one) or CIFAR-10 (``gpu``); ``figures``: also copy the figures into this folder (e.g. ``docs/figures``)
    (under each figure's ``docs`` name, else ``STUDY_FILE``); ``stop_after``: end after that stage (tests of
    resuming), raising `StudyStopped`.
    """
    import torch

    from .. import provenance

    study = get(name)
    if stop_after is not None and stop_after not in study.stages:
        raise UserError(f"study {name} has no stage '{stop_after}': its stages are {', '.join(study.stages)}")
    # one spelling of the folder (relative or absolute, from any working directory): what the runs record
    data_root = None if data_root is None else str(Path(data_root).resolve())
    settings = study.settings(preset, smoke=smoke, mnist=data_root is not None, tour=tour)
    data = settings.get("data", "digits")
    if data in FILE_DATA and data_root is None:  # before anything is written: a rerun with the root then starts clean
        raise UserError(
            f"study {name} with preset {preset} reads {data}: pass --data-root DIR, the folder with {FILE_DATA[data]}"
        )
    out = Path(out) if out is not None else Path("runs") / name
    out.mkdir(parents=True, exist_ok=True)
    _check_folder(out, _identity(study, preset, smoke, tour, settings, data_root))
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ctx = Context(study, settings, out, preset, smoke, data_root, dev, stop_after, progress, log)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    t0 = time.perf_counter()
    outcome = study.run(ctx)
    if not isinstance(outcome, Outcome):
        raise TypeError(f"study {name}'s run must return an Outcome, got {type(outcome).__name__}")
    seconds = time.perf_counter() - t0
    for f in outcome.figures:
        if not (out / f.file).is_file():
            raise RuntimeError(f"study {name} names figure {f.file}, which it did not write")
    result = {
        "study": study.name,
        "title": study.title,
        "paper": study.paper,
        "claim": study.claim,
        "summary": study.summary,
        "docs": list(study.docs),
        "preset": preset,
        "smoke": smoke,
        "tour": tour,
        "settings": settings,
        "numbers": outcome.numbers,
        "table": [r.to_dict() for r in outcome.table],
        "verdict": outcome.verdict,
        "why": outcome.why[:1].upper() + outcome.why[1:],
        "conclusion": outcome.conclusion,
        "figures": [f.to_dict() for f in outcome.figures],
        "interactive": outcome.interactive,
        "provenance": {
            **provenance.environment(dev),
            "command": provenance.command_line(),
            "started": started,
            "seconds": seconds,
            "stage_seconds": ctx.timings,
            "data_root": data_root,
        },
    }
    result = json.loads(io.json_dumps(result))
    io.write_json(out / "result.json", result)
    from ..report import section_markdown

    io.write_text(out / "section.md", section_markdown(result))
    if figures is not None:
        target = Path(figures)
        target.mkdir(parents=True, exist_ok=True)
        for f in outcome.figures:
            with io.atomic_path(target / (f.docs or f"{study.name.replace('-', '_')}_{Path(f.file).name}")) as tmp:
                shutil.copyfile(out / f.file, tmp)
    return result


__all__ = ["Context", "StudyStopped", "run_study"]
