"""A Hypothesis fuzz of every command's arguments (issue 14, item 9): whatever the values, the command line
ends with exit status 0 or 2, and for 2 with one line on stderr and no traceback.

The commands and their parameters come from the typer app (`modescape.cli.app.registered_commands`, each
callback's signature and type hints), so a new command is fuzzed as soon as it is registered. Each example
draws a value for every option from the option's type: ints (small, 0, negative, huge), floats (nan, inf,
tiny, huge), bools (on, off, the negative spelling), strings (words taken from the option's help text, zoo
and factory names, ``k=v`` lists, ``A:B:N`` and comma lists built from odd numbers, empty, unicode, control
characters, garbage), and paths (a valid tiny checkpoint, another architecture, NaN weights, a missing
path, a corrupt file, a folder, a run folder, a result store, a damaged one, an unwritable path, a fresh
path). Positional files come from the same pool. One example in four is *plausible* instead: options
mostly at their defaults, otherwise valid-looking, files of the kind the command asks for, so that the
fuzz also gets past the argument checks into loading, training, sweeping and plotting.

Each example runs in-process (`fuzz_harness.run_example`: ``MODESCAPE_PROGRESS=0``, warnings printed on
stderr as a shell shows them) in a fresh working folder with private copies of the files it names, so
commands that write (``report``, ``tour`` and ``study`` default to folders under the working directory)
never touch the repository, the shared inputs or each other. Options that set an amount of work (epochs,
steps, points, samples, grid ranges, ``--n-train``, ...) are always given, tiny when valid; a call that
gets into real work is stopped after `fuzz_harness.CALL_LIMIT_S` (see `fuzz_harness` for how a call
stopped elsewhere is judged: a hang). Hypothesis is deterministic (derandomized, no database, no
shrinking: the failing command line is printed). FIFOs are not in the pool (the named cases of
`test_bad_inputs.py` cover them). ``MODESCAPE_FUZZ_EXAMPLES=N`` sets the examples per command (default 3),
``MODESCAPE_FUZZ_SEED=S`` explores another set of draws, ``MODESCAPE_FUZZ_LIMIT=SECONDS`` the per-call
limit, ``MODESCAPE_FUZZ_LOG=FILE`` appends one JSON line per call (command line, exit status, seconds).
"""

from __future__ import annotations

import inspect
import math
import os
import re
import typing
from pathlib import Path

import pytest
from badinput_helpers import FACTORIES_MODULE, shared_inputs
from fuzz_harness import check_confirmed, check_result, run_example, warm_up
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hyp_seed
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("MODESCAPE_FUZZ_EXAMPLES", "3"))
FUZZ_SEED = os.environ.get("MODESCAPE_FUZZ_SEED")


# options that set an amount of work: always given, and tiny when valid
WORK_INTS = {
    "epochs",
    "steps",
    "points",
    "plane_points",
    "samples",
    "members",
    "eval_samples",
    "vertices",
    "top_k",
    "max_iter",
    "max_samples",
    "probes",
    "candidates",
    "k",
    "relax_steps",
    "n_eval",
    "n_train",
    "convexity_points",
    "cycle",
    "bends",
    "swa_start",
    "swa_anneal_epochs",
    "swag_rank",
    "rank",
    "save_every",
    "start",
    "radial_dim",
}
WORK_STRS = {"x", "y", "range_", "dims", "measures"}
# commands that run for minutes whenever their arguments are valid: few examples (the limit cuts them)
LONG = {"tour": 2, "study": 2}

F = FACTORIES_MODULE
ZOO = [
    "mlp",
    "cnn",
    "resnet",
    "vgg",
    "transformer",
    "digits",
    "spirals",
    "blobs",
    "mnist",
    "cifar10",
    "random-cifar",
    "char-lm",
    "modular-add",
]
SPECS = [
    f"{F}:tiny",
    f"{F}:boom",
    f"{F}:not_data",
    f"{F}:nan_inputs",
    f"{F}:labels_out_of_range",
    f"{F}:model_boom",
    "nopkg_zz:factory",
    "math:pi",
    "json:loads",
    "os.path:no_such",
    ":",
    "a:b:c",
]
NUMBERS = [
    "-1",
    "1",
    "0",
    "2",
    "3",
    "0.5",
    "-0.5",
    "1e-300",
    "1e308",
    "-1e308",
    "nan",
    "inf",
    "-inf",
    "1e10",
    "1000000000",
    "abc",
    "",
    " ",
    "1_000",
    "0x10",
    "2%",
    "-5%",
]
ODD_TEXT = [
    "",
    " ",
    "é",
    "💥",
    "\u202e",
    "a" * 300,
    "-1",
    "none",
    "all",
    "auto",
    "=",
    ",",
    "::",
    "[1]",
    "{}",
    "\\",
    "'",
    '"',
    "\t",
    "x\ny",
    "\x1b[31m",
    "a\rb",
]
DEVICES = ["cpu", "cuda", "cuda:0", "cuda:7", "cuda:-1", "cuda:abc", "mps", "", "auto", "CPU", "tpu"]
ARGS = [
    "depth=1",
    "width=abc",
    "depth=1,width=8",
    "width",
    "=",
    "n_train=5",
    "split_seed=3",
    "nosuch=1",
    "depth=-1",
    "width=0",
    "depth=1,,",
    "a=b=c",
]

# paths as placeholders: names from badinput_helpers.make_inputs, expanded per example (fuzz_harness)
PATHS = [
    "{a}",
    "{b}",
    "{w16}",
    "{nan}",
    "{big}",
    "{missing}",
    "{garbage}",
    "{trunc}",
    "{bare}",
    "{run}",
    "{emptydir}",
    "{store}",
    "{store_chunk_deleted}",
    "{file}",
    "{unwritable}",
    "{evil}",
    "{dir}",
    "{swag_bad}",
    "{curve_bad}",
    "{store_coord_deleted}",
    "{badside}",
    "{fresh}",
    "{fresh}/deeper",
    "",
    "é💥",
]
OUT_PATHS = [
    "{fresh}",
    "{fresh}",
    "{fresh}/deeper",
    "{file}",
    "{unwritable}",
    "{emptydir}",
    "{store}",
    "{fresh}/p.safetensors",
    "{fresh}.safetensors",
    "{a}",
    "é💥",
]
CHECKPOINTS = [
    "{a}",
    "{a}",
    "{b}",
    "{w16}",
    "{nan}",
    "{missing}",
    "{garbage}",
    "{trunc}",
    "{run}",
    "{emptydir}",
    "{file}",
    "{store}",
    "{bare}",
]


# -- the commands and their parameters, from the typer app ----------------------------------------


class Param(typing.NamedTuple):
    name: str  # the Python name
    decls: tuple  # ("--out",) or ("--cov/--diag",); () for a positional argument
    kind: str  # "int", "float", "bool", "str", "path"
    optional: bool  # Optional[...] (may be left out) or has a default
    required: bool  # typer's `...`
    count: int  # positional: 1, or -1 for a list; options: values per use (2 for --through)
    help: str
    default: object


def _params(callback) -> list[Param]:
    hints = typing.get_type_hints(callback)
    out = []
    for name, p in inspect.signature(callback).parameters.items():
        info = p.default
        ann = hints[name]
        optional = type(None) in typing.get_args(ann)
        if optional:
            ann = next(a for a in typing.get_args(ann) if a is not type(None))
        count = 1
        if typing.get_origin(ann) in (list, tuple):
            args = typing.get_args(ann)
            count = -1 if typing.get_origin(ann) is list else len(args)
            ann = args[0]
        kind = {int: "int", float: "float", bool: "bool", str: "str", Path: "path"}[ann]
        decls = tuple(getattr(info, "param_decls", None) or ()) if type(info).__name__ == "OptionInfo" else ()
        out.append(
            Param(
                name,
                decls,
                kind,
                optional,
                info.default is Ellipsis,
                count,
                getattr(info, "help", "") or "",
                info.default,
            )
        )
    return out


def _commands() -> dict[str, list[Param]]:
    from modescape.cli import app

    return {ci.name or ci.callback.__name__: _params(ci.callback) for ci in app.registered_commands}


COMMANDS = _commands()


# -- strategies -----------------------------------------------------------------------------------


def _help_words(text: str) -> list[str]:
    """Words of a help text (choices such as running, recompute, train; hutch++; hessian:2,5)."""
    return sorted({w.strip(".,;()") for w in re.findall(r"[A-Za-z][\w+:,.%-]*", text)} - {""})


PLAUSIBLE_INTS = {
    "points": (2, 3),
    "steps": (2, 3),
    "cycle": (2, 2),
    "bends": (3, 3),
    "top_k": (1, 2),
    "start": (0, 1),
    "relax_steps": (0, 2),
    "swa_anneal_epochs": (0, 1),
    "convexity_points": (0, 0),
    "plane_points": (0, 3),
    "max_samples": (2, 3),
    "i": (0, 3),
    "j": (4, 7),
    "k": (1, 2),
    "n_train": (20, 60),
    "n_eval": (20, 60),
    "batch_size": (16, 64),
    "eval_batch_size": (16, 64),
}


def _ints(p: Param, plausible: bool):
    if plausible:
        lo, hi = PLAUSIBLE_INTS.get(p.name, (1, 3) if p.name in WORK_INTS else (0, 64))
        return st.integers(lo, hi)
    if p.name in WORK_INTS:
        return st.one_of(
            st.integers(1, 3),
            st.integers(1, 3),
            st.sampled_from([0, -1, -7, 2]),
            st.sampled_from([10**6, 2**63, -(2**70)]),
        )
    return st.one_of(st.integers(-3, 5), st.sampled_from([0, -1, 2**31, 2**63 - 1, -(2**63), 2**64, 10**30]))


def _floats(p: Param, plausible: bool):
    if plausible:
        return st.sampled_from([0.0, 0.001, 0.01, 0.05, 0.1, 0.5, 0.9])
    return st.one_of(
        st.sampled_from([0.0, -1.0, 0.01, 0.5, 1.0, 2.0, math.nan, math.inf, -math.inf, 1e308, 5e-324]),
        st.floats(allow_nan=True, allow_infinity=True),
    )


def _joined(sep: str):
    return st.lists(st.sampled_from(NUMBERS), min_size=0, max_size=4).map(sep.join)


def _grid(plausible: bool):
    """Cheap valid A:B:N grids, or odd ones."""
    good = st.tuples(st.sampled_from(["-1", "0", "-0.5"]), st.sampled_from(["1", "0.5"]), st.sampled_from(["2", "3"]))
    if plausible:
        return good.map(":".join)
    ends = st.sampled_from(["-1", "0", "1", "-0.5", "2", "nan", "inf", "1e308", "-1e308", "abc", ""])
    n = st.sampled_from(["2", "3", "2", "0", "1", "-1", "1e10", "1000000000", "x", ""])
    return st.one_of(
        good.map(":".join),
        st.tuples(ends, ends, n).map(":".join),
        st.tuples(ends, ends).map(":".join),
        _joined(":"),
        st.sampled_from(ODD_TEXT),
    )


def _strs(p: Param, plausible: bool):
    words = _help_words(p.help)
    if p.name in ("x", "y", "range_"):
        return _grid(plausible)
    if p.name == "device":
        return st.sampled_from(["cpu", "auto"] if plausible else DEVICES)
    if p.name == "name":  # study NAME
        from modescape.studies import all_studies

        names = [s.name for s in all_studies()]
        return st.sampled_from(names) if plausible else st.one_of(st.sampled_from(names), st.sampled_from(ODD_TEXT))
    special = {
        "model": ["mlp", "cnn"],
        "data": ["digits", f"{F}:tiny", "blobs", "spirals"],
        "model_args": ["", "depth=1,width=8"],
        "data_args": [""],
        "data_root": ["{emptydir}", "{fresh}"],
        "dims": ["2", "1,2", "3"],
        "radii": ["0", "0,1", "1"],
        "measures": ["keskar", "trace", "keskar,trace", "lambda_max", "pacbayes_mag"],
        "lr": ["0.05:0.0001", "0.01:0.001"],  # fge's A1:A2
        "threshold": ["1%", "0.01", "5%"],
        "topology_threshold": ["1%", "0.01"],
        "layer": ["fc0", "out"],
        "metric": ["train_loss", "test_loss"],
        "var": ["train_loss", "test_accuracy"],
        "per": ["layer", "block", "1"],
        "params": ["all", "weights", "biases", "fc0"],
    }.get(p.name)
    if plausible:  # the option's default mostly, else its help's lower-case words (where its choices are)
        choices = [w for w in words if w.islower() and len(w) > 2]
        default = [p.default] if isinstance(p.default, str) else []
        return st.sampled_from(special or default * 3 + choices or [""])
    pool = [
        st.sampled_from(ODD_TEXT),
        _joined(":"),
        _joined(","),
        st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
    ]
    pool += [st.sampled_from(words)] * 3 if words else []
    pool += [st.sampled_from(special)] * 2 if special else []
    if p.name in ("model", "data"):
        pool += [st.sampled_from(ZOO)] * 2 + [st.sampled_from(SPECS)] * 2
    if p.name.endswith("_args"):
        pool += [st.sampled_from(ARGS)] * 3
    if p.name == "data_root":
        pool += [st.sampled_from(PATHS)] * 3
    if p.name == "measures":
        pool += [st.sampled_from(["nope", "", "all", ",", "keskar,"])]
    if p.name == "lr":
        pool += [st.sampled_from(["1:1", "inf:1", "0:1", "nan:1", "1", "a:b", "1:2:3"])] * 2
    return st.one_of(*pool)


def _paths(p: Param, plausible: bool):
    if p.name == "out":
        return st.sampled_from(["{fresh}", "{fresh}/deeper"] if plausible else OUT_PATHS)
    if p.decls == ():  # positional files
        if plausible:  # the kind the command asks for, by the parameter's name
            return st.sampled_from(
                {
                    "result": ["{store}"],
                    "run_dir": ["{run}", "{run2}"],
                    "runs": ["{run}", "{run2}"],
                    "dirs": ["{emptydir}", "{run}"],
                }.get(p.name, ["{a}", "{b}", "{a_copy}"])
            )
        return st.sampled_from(CHECKPOINTS + PATHS)
    return st.sampled_from(["{fresh}", "{emptydir}"] if plausible else PATHS)


def _value(p: Param, plausible: bool = False):
    return {"int": _ints, "float": _floats, "str": _strs, "path": _paths}[p.kind](p, plausible)


def _fmt(v) -> str:
    return repr(v) if isinstance(v, float) else str(v)


@st.composite
def argv_for(draw, command: str) -> list[str]:
    """A command line for ``command``. One example in four is *plausible*: options mostly left at their
    defaults and otherwise valid-looking, files from the valid ones, so that the fuzz also gets past the
    argument checks into loading, training, sweeping and plotting. The others are *wild*: every option's
    value drawn from its whole type. Options that set work, and required ones, are always given."""
    plausible = draw(st.integers(0, 3)) == 0
    argv = [command]
    positional: list[str] = []
    for p in COMMANDS[command]:
        if not p.decls:  # a positional argument
            if p.count == -1:
                positional += draw(st.lists(_value(p, plausible), min_size=1, max_size=3, unique=plausible))
            elif p.optional and not p.required and draw(st.booleans()):
                continue
            else:
                positional.append(draw(_value(p, plausible)))
            continue
        spellings = p.decls[0].split("/")
        if p.kind == "bool":
            choice = draw(st.sampled_from([None, None, *spellings] if plausible else [None, *spellings]))
            if choice:
                argv.append(choice)
            continue
        must = p.required or p.name in WORK_INTS or p.name in WORK_STRS or plausible and p.name in ("out", "i", "j")
        if not must and draw(st.integers(0, 4 if plausible else 2)) != 1:
            continue  # leave it at its default
        values = [draw(_value(p, plausible)) for _ in range(max(p.count, 1))]
        if p.count > 1 and not plausible and draw(st.integers(0, 5)) == 0:
            values = values[:1]  # --through with one value
        argv += [spellings[0], *map(_fmt, values)]
    # positionals after `--`, so that a value such as "-1" or "" is never read as an option
    return argv + (["--", *positional] if positional else [])


# -- the tests ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    p = dict(shared_inputs(tmp_path_factory))  # read only: each example works on private copies
    p["scratch"] = tmp_path_factory.mktemp("fuzz")
    warm_up()
    return p


def test_every_registered_command_is_fuzzed():
    from modescape.cli import app

    names = {ci.name or ci.callback.__name__ for ci in app.registered_commands}
    assert names == set(COMMANDS) and {"train", "eval", "surface", "connect", "hessian"} <= names
    for name, params in COMMANDS.items():
        assert all(p.kind in ("int", "float", "bool", "str", "path") for p in params), name


def _fuzz(command: str, n: int):
    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=FUZZ_SEED is None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the failing command line is printed
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
        ],
    )
    @given(data=st.data())
    def run(master, capsys, data):
        check_confirmed(data.draw(argv_for(command), label="argv"), master, capsys)

    return hyp_seed(int(FUZZ_SEED))(run) if FUZZ_SEED is not None else run


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the timer, inside a gc callback
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_fuzz_command(command, master, capsys):
    _fuzz(command, LONG.get(command, EXAMPLES))(master, capsys)


def test_the_pool_and_the_checks(master, capsys):
    """The harness itself: a valid call passes, a user error passes, a traceback and a second line fail."""
    ok = run_example(["eval", "--json", "--", "{a}"], master, capsys, limit=60)
    check_result(ok)
    assert ok["code"] == 0 and '"test_accuracy"' in ok["out"]
    bad = run_example(["eval", "--bn", "fresh", "--", "{a}"], master, capsys)
    check_result(bad)
    assert bad["code"] == 2
    with pytest.raises(AssertionError, match="lines on stderr"):
        check_result({**bad, "err": "warning\nerror: two lines"})
    with pytest.raises(AssertionError, match="traceback"):
        check_result({**bad, "exception": "Traceback (most recent call last): ..."})
    with pytest.raises(AssertionError, match="outside any computation"):
        check_result({**bad, "timeout": (False, "checks.py:1 input_file")})


# command lines the fuzz found that ended badly although their inputs are valid; each runs to its end
REGRESSIONS = [
    pytest.param(
        ["sharpness", "--measures", "lambda_max", "--n-train", "32", "--", "{a}"],
        id="sharpness-table-without-base-loss",
    ),  # was: KeyError 'loss' printing the table
    pytest.param(["sharpness", "--measures", "keskar", "--n-train", "32", "--", "{a}"], id="sharpness-table"),
    pytest.param(
        ["hessian", "--curvature", "\u00f7V\U000e0713\n\x1b", "--", "{a}"], id="control-characters-quoted-in-the-error"
    ),  # was: the newline broke the one line
]


@pytest.mark.parametrize("argv", REGRESSIONS)
def test_fuzz_regression(argv, master, capsys):
    r = run_example(argv, master, capsys, limit=120)
    assert r["timeout"] is None, r["timeout"]
    check_result(r)
