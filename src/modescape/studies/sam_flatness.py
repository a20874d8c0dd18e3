"""sam-flatness: sharpness-aware minimisation reaches flatter minima that generalise better (Foret, Kleiner,
Mobahi and Neyshabur 2021).

Claim: minimising the worst loss in a small ball around the weights (one ascent step of radius rho per
update) finds minima with a smaller Hessian spectrum that generalise better than plain SGD with the same
epochs. Measured: SGD and SAM (`modescape.sam` inside `modescape.train`, ``optimizer="sam"``) from the same
initialisation and data order, then the columns of the swa-flatness study: test error and NLL, the largest
Hessian eigenvalue, the filter-normalised 1-D sharpness, and the loss along filter-normalised directions and
along the line through both solutions. SAM spends two forward-backward passes per step: the budget is equal
in epochs, not in compute.
"""

from __future__ import annotations

from .common import data_text, model_text
from .registry import Outcome, Study, register
from .swa_flatness import BASE as SWA_BASE
from .swa_flatness import compare, outcome

BASE = {**{k: v for k, v in SWA_BASE.items() if not k.startswith("swa")}, "rho": 0.05}


def run(ctx) -> Outcome:
    from .. import space as sp

    s = ctx.settings
    split = ctx.split()
    cfg = {"epochs": s["epochs"], "batch_size": s["batch_size"], "lr": s["lr"], "wd": s["wd"]}
    sgd, msgd = ctx.train("sgd", split, s["model"], s["model_args"], seed=s["seed"], **cfg)
    sam, msam = ctx.train(
        "sam", split, s["model"], s["model_args"], seed=s["seed"], optimizer="sam", rho=s["rho"], **cfg
    )
    ctx.stop_point("train")
    space = sp.WeightSpace(sgd)
    solutions = {"SGD": (sgd, space.point(sgd), space.buffers(sgd)), "SAM": (sam, space.point(sam), space.buffers(sam))}
    setting = (
        f"{model_text(s['model'], s['model_args'])}, {data_text(split.meta)}, {s['epochs']} epochs each, rho {s['rho']}"
    )
    r, figs, rows, checks, inter = compare(
        ctx,
        split,
        solutions,
        "SGD",
        "SAM",
        setting,
        "lower with SAM (CIFAR-10/100, ImageNet, fine-tuning)",
        "Foret et al. 2021",
    )
    return outcome(r, figs, rows, checks, inter, "SAM", "with the same epochs", {"sgd": msgd, "sam": msam})


STUDY = register(
    Study(
        name="sam-flatness",
        title="Sharpness-aware minimisation and flat minima",
        paper="Foret, Kleiner, Mobahi and Neyshabur 2021, Sharpness-aware minimization for efficiently improving "
        "generalization",
        claim="SAM's min-max update finds flatter minima (a smaller top Hessian eigenvalue) that generalise "
        "better than "
        "SGD with the same number of epochs.",
        summary="SAM is flatter and generalises better than SGD",
        run=run,
        needs=("modescape.sam",),
        presets={
            "cpu": BASE,
            "cpu-mnist": {
                **BASE,
                "data": "mnist",
                "model_args": {"depth": 2, "width": 128},
                "epochs": 10,
                "batch_size": 128,
                "eval_train": 10000,
            },
            "gpu": {
                **BASE,
                "data": "cifar10",
                "model": "resnet",
                "model_args": {"depth": 20, "width": 1},
                "epochs": 200,
                "batch_size": 128,
                "lr": 0.1,
                "eval_train": 10000,
            },
        },
        smoke={"model_args": {"depth": 1, "width": 16}, "epochs": 2, "points": 7},
        stages=("train", "flatness"),
        docs=("ensembles.md", "curvature.md"),
    )
)
