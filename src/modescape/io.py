"""Checkpoints, import specs and safe loading.

A checkpoint is ``NAME.safetensors`` (the model's parameters and buffers) plus ``NAME.json`` (the
sidecar: how to rebuild the model, the data it was trained on, seed, metrics, versions). Safetensors
cannot run code when loaded; ``.pt``/``.pth`` files are read only with ``torch.load(weights_only=True)``,
which refuses pickled code.

Every file is written to a temporary name in the same folder and renamed into place, so a crash never
leaves a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from . import provenance
from . import space as sp
from .checks import input_file
from .errors import UserError

if TYPE_CHECKING:
    from .zoo import DataSplit

FORMAT = "modescape-checkpoint/1"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


# -- atomic files ----------------------------------------------------------------------------------


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}; choose a folder you can write to") from None
    os.close(fd)
    try:
        yield Path(tmp)
        if os.path.exists(tmp):  # mkstemp makes 0600 files; give the usual permissions
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json_dumps(obj, indent=2, sort_keys=True) + "\n")


def json_default(o: Any) -> Any:
    """JSON for what results hold besides plain types: paths, tensors and arrays (as lists), numpy scalars."""
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):  # tensors, numpy arrays and scalars
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def json_dumps(obj: Any, indent: int | None = None, sort_keys: bool = False) -> str:
    """The one JSON encoding of results (`json_default` for tensors, arrays and paths): strict JSON, so any
    reader parses it. A NaN or infinite number becomes ``null``, and the object holding it gains a
    ``"nonfinite"`` entry naming the key and the value (``{"loss": "nan"}``; ``"nan in list"`` for lists)."""
    return json.dumps(finite_json(obj), indent=indent, sort_keys=sort_keys, default=json_default, allow_nan=False)


def finite_json(obj: Any) -> Any:
    """``obj`` with non-finite floats replaced by None, flagged as `json_dumps` describes."""
    import math

    def name(x: float) -> str:
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")

    def walk(o: Any) -> tuple[Any, str | None]:
        if isinstance(o, float) and not math.isfinite(o):
            return None, name(o)
        if hasattr(o, "tolist") and not isinstance(o, (str, bytes)):
            o = o.tolist()
        if isinstance(o, float) and not math.isfinite(o):
            return None, name(o)
        if isinstance(o, dict):
            out, flags = {}, {}
            for k, v in o.items():
                out[k], bad = walk(v)
                if bad:
                    flags[str(k)] = bad
            if flags:
                out["nonfinite"] = {**dict(out.get("nonfinite") or {}), **flags}
            return out, None
        if isinstance(o, (list, tuple)):
            items = [walk(v) for v in o]
            bads = sorted({b.split(" ")[0] for _, b in items if b})
            return [v for v, _ in items], (f"{'/'.join(bads)} in list" if bads else None)
        if isinstance(o, Path):
            return str(o), None
        return o, None

    value, bad = walk(obj)
    return value if bad is None else {"value": value, "nonfinite": bad}


def save_tensors(
    path: str | os.PathLike, tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write a dict of tensors as safetensors, atomically."""
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=dict(metadata or {}))


def load_tensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read tensors from ``.safetensors`` or (safely) from ``.pt``/``.pth``; clear errors otherwise."""
    path = input_file(path, "checkpoint", "final.safetensors")  # present, and a regular file (a FIFO would hang)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(
                f"{path} is not a readable safetensors file ({e}): re-save it or pick another file"
            ) from None
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            with warnings.catch_warnings():  # torch warns about pickle protocols on the way to refusing
                warnings.simplefilter("ignore")
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError for code, RuntimeError for corrupt archives
            raise UserError(_refusal(path, e)) from None
        if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
            raise UserError(f"{path} does not hold a state dict of tensors")
        return {k.removeprefix("module."): v for k, v in obj.items()}
    raise UserError(f"{path}: unknown checkpoint type '{suffix}'; use .safetensors (or .pt/.pth state dicts)")


def _refusal(path: Path, e: Exception) -> str:
    """Our words for a .pt file the safe loader refused: which global it wanted, and what to do instead."""
    import re

    text = str(e)
    advice = (
        "modescape never runs code from a checkpoint, so it was not loaded. Save the weights as safetensors "
        "(safetensors.torch.save_file(model.state_dict(), ...)) from code you trust and pass that file"
    )
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"{path} holds pickled Python objects ({found.group(1)}) besides tensors; {advice}"
    if "Weights only load failed" in text:
        detail = next((ln.strip() for ln in text.splitlines() if ln.strip().startswith("Unsupported")), "")
        return (
            f"{path} holds pickled data that is not plain tensors" + (f" ({detail})" if detail else "") + f"; {advice}"
        )
    first = text.strip().splitlines()[0][:160] if text.strip() else type(e).__name__
    return f"{path} is not a readable PyTorch state dict ({first}): re-save it as safetensors"


# -- import specs ----------------------------------------------------------------------------------


def resolve_spec(spec: str) -> Callable[..., Any]:
    """``package.module:attribute`` -> the object (a model or data factory)."""
    if ":" not in spec:
        raise UserError(f"'{spec}' is not an import spec: write package.module:factory")
    mod_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise UserError(f"cannot import module '{mod_name}' of spec '{spec}': {e}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"module '{mod_name}' has no attribute '{attr}' (spec '{spec}')")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"'{spec}' is not callable")
    return obj


def call_factory(factory: Callable[..., Any], kwargs: Mapping[str, Any], what: str) -> Any:
    """``factory(**kwargs)`` for a user's model or data factory: whatever it raises becomes one line naming
    the factory and the exception (the traceback is kept as the cause: ``--debug`` or MODESCAPE_DEBUG=1
    shows it)."""
    try:
        return factory(**kwargs)
    except UserError:
        raise
    except TypeError as e:
        raise UserError(f"{what} rejected its arguments {dict(kwargs)}: {e}") from e
    except Exception as e:  # noqa: BLE001 - the user's code may raise anything
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(
            f"{what} raised {type(e).__name__}"
            + (f": {first}" if first else "")
            + " (run with --debug for the traceback)"
        ) from e


def parse_args(text: str | None) -> dict[str, str]:
    """``"depth=3,width=128"`` -> {"depth": "3", "width": "128"} (values are coerced by the factory)."""
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise UserError(f"argument '{item}' must look like key=value (as in depth=3,width=128)")
        k, _, v = item.partition("=")
        out[k.strip()] = v.strip()
    return out


def build_from_spec(model_spec: Mapping[str, Any], input_shape=None, num_classes=None) -> nn.Module:
    """Rebuild a model from a sidecar's ``model`` entry (zoo name, ``hf:FAMILY`` or import spec, with
    arguments). ``hf:gpt2`` / ``hf:bert`` build a Hugging Face model from its config (`modescape.hf`)."""
    from .zoo import build_model

    name = model_spec.get("name")
    args = dict(model_spec.get("args", {}))
    shape = model_spec.get("input_shape", input_shape)
    classes = model_spec.get("num_classes", num_classes)
    if name and name.startswith("hf:"):
        if shape is None or classes is None:
            raise UserError(f"model '{name}' needs the input shape and number of classes: pass --data")
        from .hf import build_from_name

        return build_from_name(name, tuple(shape), int(classes), args)
    if name and ":" in name:
        factory = resolve_spec(name)
        model = call_factory(factory, args, f"model factory '{name}'")
        if not isinstance(model, nn.Module):
            raise UserError(f"model factory '{name}' returned {type(model).__name__}, not an nn.Module")
        model.modescape_spec = {"name": name, "args": args, "input_shape": shape, "num_classes": classes}  # type: ignore[assignment]
        return model
    if not name:
        raise UserError("the checkpoint's sidecar names no model: pass --model NAME or package.module:factory")
    if shape is None or classes is None:
        raise UserError(f"model '{name}' needs the input shape and number of classes: pass --data")
    return build_model(name, tuple(shape), int(classes), **args)


# -- checkpoints -----------------------------------------------------------------------------------


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def tensor_hash(tensors: Mapping[str, Tensor]) -> str:
    """A short content hash of named tensors (provenance: which weights produced a result)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().to("cpu").contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: Mapping[str, Any] | None = None) -> Path:
    """Save ``model`` to ``path`` (.safetensors) and its sidecar ``path.json``; returns the path.

    ``meta`` may hold ``data`` (how to rebuild the data), ``seed``, ``metrics``, anything JSON-able;
    ``model`` defaults to the spec the zoo attached to the model (``model.modescape_spec``).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    state = model.state_dict()
    bad = sp.is_finite(state)
    if bad is not None:
        raise UserError(f"refusing to save: tensor '{bad}' has NaN or infinite values")
    meta = dict(meta or {})
    meta.setdefault("model", getattr(model, "modescape_spec", None))
    if isinstance(meta.get("data"), Mapping) and meta["data"].get("root"):
        meta["data"] = portable_root(meta["data"], sidecar_path(path).parent)
    meta["format"] = FORMAT
    meta["versions"] = provenance.versions()
    meta["weights_hash"] = tensor_hash(state)
    save_tensors(path, state, {"format": FORMAT})
    write_json(sidecar_path(path), meta)
    return path


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of a checkpoint ({} when there is none)."""
    side = sidecar_path(path)
    if not side.exists():
        return {}
    input_file(side, "sidecar")  # a regular file: a FIFO would hang the reader
    try:
        meta = json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{side} is not valid JSON ({e.msg} at line {e.lineno}): restore or delete it") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the sidecar {side} ({type(e).__name__}): restore or delete it") from None
    if not isinstance(meta, dict):
        raise UserError(f"{side} holds a JSON {type(meta).__name__}, not an object: restore or delete it")
    return meta


def load_state_into(model: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint") -> nn.Module:
    """Load a state dict into ``model`` after checking names and shapes (first difference named) and NaN."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    sp.check_compatible(expected, got, what=source)
    bad = sp.is_finite(state)
    if bad is not None:
        raise UserError(
            f"{source} tensor '{bad}' has NaN or infinite values: the run diverged; use an earlier checkpoint"
        )
    model.load_state_dict(dict(state), strict=True)
    return model


def load_model(
    path: str | os.PathLike,
    model: nn.Module | str | None = None,
    model_args: Mapping[str, Any] | None = None,
    device=None,
    data_shape=None,
    num_classes=None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint: ``model, meta = load_model(path)``.

    The sidecar says how to rebuild the model; ``model`` (a module, a zoo name or an import spec, with
    ``model_args``) overrides it, as needed for bare ``.pt``/``.safetensors`` files without a sidecar.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    meta = read_meta(path)
    state = load_tensors(path)
    if isinstance(model, nn.Module):
        module = model
    else:
        spec = dict(meta.get("model") or {})
        if model is not None:
            spec = {
                "name": model,
                "args": dict(model_args or {}),
                "input_shape": spec.get("input_shape", data_shape),
                "num_classes": spec.get("num_classes", num_classes),
            }
        elif model_args:
            spec["args"] = {**spec.get("args", {}), **model_args}
        if not spec.get("name"):
            raise UserError(
                f"{path} has no sidecar saying which model it holds: pass --model NAME or package.module:factory"
            )
        module = build_from_spec(spec, data_shape, num_classes)
    load_state_into(module, state, source=str(path))
    if device is not None:
        module = module.to(device)
    return module, meta


# -- data and checkpoints from sidecars (the one place that turns a sidecar into model and data) ----

DEFAULT_DATA = "digits"


def load_data(name: str | None, root: str | None = None, args: Mapping[str, Any] | None = None) -> DataSplit:
    """A zoo dataset by name, or a user's ``package.module:factory`` (called with ``**args``)."""
    from .zoo import as_split, load_dataset

    name = name or DEFAULT_DATA
    args = dict(args or {})
    if ":" in name:
        factory = resolve_spec(name)
        kwargs = dict(args)
        if root is not None:
            kwargs["root"] = root
        obj = call_factory(factory, kwargs, f"data factory '{name}'")
        split = as_split(obj, name)
        split.meta.update({"name": name, "args": args, "root": root})
        return split
    return load_dataset(name, root=root, **args)


def portable_root(data_meta: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """A data spec whose ``root`` is absolute, with ``root_relative`` to ``folder`` (the sidecar's), so a run
    is found from any working directory and still after the run and its data are moved together."""
    out = dict(data_meta)
    root = Path(out["root"]).expanduser()
    absolute = root if root.is_absolute() else (Path.cwd() / root)
    out["root"] = str(absolute.resolve())
    try:
        out["root_relative"] = os.path.relpath(out["root"], folder.resolve())
    except ValueError:  # another drive (Windows)
        out.pop("root_relative", None)
    return out


def saved_root(saved: Mapping[str, Any], sidecar: Path | None) -> str | None:
    """The data root a sidecar names: its absolute ``root`` when that exists, else ``root_relative`` to the
    sidecar's folder when that exists, else ``root`` as written (an old sidecar relative to the working
    directory), so the error names the path that was looked for."""
    root = saved.get("root")
    if root is None or Path(root).exists():
        return root
    rel = saved.get("root_relative")
    if rel is not None and sidecar is not None and (sidecar.parent / rel).exists():
        return str(sidecar.parent / rel)
    return root


def data_from_meta(
    meta: Mapping[str, Any],
    data: str | None = None,
    data_root: str | None = None,
    data_args: str | None = None,
    sidecar: Path | None = None,
) -> DataSplit:
    """The data a checkpoint was trained on (its sidecar, at ``sidecar`` for a relative data root), unless
    overridden on the command line (``--data``, ``--data-root``, ``--data-args``)."""
    saved = dict(meta.get("data") or {})
    if data is not None:
        return load_data(data, data_root, parse_args(data_args))
    name = saved.get("name") or DEFAULT_DATA
    root = data_root if data_root is not None else saved_root(saved, sidecar)
    args = {**saved.get("args", {}), **parse_args(data_args)}
    return load_data(name, root, args)


def load_checkpoint(
    path: str | Path,
    model: str | None = None,
    model_args: str | None = None,
    data: str | None = None,
    data_root: str | None = None,
    data_args: str | None = None,
    device: torch.device | None = None,
) -> tuple[nn.Module, dict[str, Any], DataSplit]:
    """``model, meta, split = load_checkpoint(path)``: the model, its sidecar and the data it was
    trained on; ``model``/``data`` (and their arguments, as ``k=v,...`` text) override the sidecar."""
    meta = read_meta(path) if Path(path).exists() else {}
    split = data_from_meta(meta, data, data_root, data_args, sidecar=sidecar_path(path))
    module, meta = load_model(
        path,
        model=model,
        model_args=parse_args(model_args),
        device=device,
        data_shape=split.input_shape,
        num_classes=split.num_classes,
    )
    return module, meta, split
