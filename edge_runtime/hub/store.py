"""The models this machine has pulled, by name: `list`, `rm`, `show`, and `--model NAME` everywhere.

The files live in huggingface-hub's cache; this registry (`$EDGE_RUNTIME_HOME/models.json`, default
`~/.local/share/edge-runtime`) maps each pulled name to its files, written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edge_runtime.errors import ModelNotFoundError, PullError
from edge_runtime.hub.pull import PulledModel


def home() -> Path:
    return Path(os.environ.get("EDGE_RUNTIME_HOME") or Path.home() / ".local" / "share" / "edge-runtime")


def _registry() -> Path:
    return home() / "models.json"


def load() -> dict[str, PulledModel]:
    try:
        data = json.loads(_registry().read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise PullError(f"the model registry {_registry()} cannot be read ({exc}); remove it and pull again") from None
    return {name: PulledModel(**entry) for name, entry in data.get("models", {}).items()}


def _save(models: dict[str, PulledModel]) -> None:
    path = _registry()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"format": 1, "models": {n: m.as_dict() for n, m in sorted(models.items())}}, indent=1))
    os.replace(tmp, path)


def add(model: PulledModel, *aliases: str) -> None:
    models = load()
    for name in {model.name, *aliases}:
        models[name] = PulledModel(**{**model.as_dict(), "name": name})
    _save(models)


def find(name: str) -> PulledModel | None:
    """A pulled model by the name it was pulled as (catalog id, or REPO_ID[:QUANT])."""
    models = load()
    if name in models:
        return models[name]
    upper = {n.upper(): m for n, m in models.items()}
    return upper.get(name.upper())


def remove(name: str) -> PulledModel:
    """Forget a pulled model and delete its files from the cache when no other name uses them."""
    models = load()
    model = find(name)
    if model is None:
        raise ModelNotFoundError(f"no pulled model named {name!r}; `edge-runtime list` shows them")
    del models[model.name]
    still_used = {p for m in models.values() for p in [m.model, *m.projectors]}
    for path in [model.model, *model.projectors]:
        if path in still_used:
            continue
        p = Path(path)
        blob = p.resolve() if p.is_symlink() else None
        p.unlink(missing_ok=True)
        if blob is not None and blob.exists():
            blob.unlink()
    _save(models)
    return model


def resolve_model_arg(value: str | os.PathLike[str] | None) -> tuple[str | None, list[str]]:
    """`--model` value -> (GGUF path, projectors): a path as given, or a pulled name."""
    if value is None:
        return None, []
    text = os.fspath(value)
    if os.path.exists(text):
        return text, []
    model = find(text)
    if model is None:
        if text.lower().endswith(".gguf") or os.sep in text and text.count("/") != 1:
            return text, []  # a path: the loader says it does not exist
        raise ModelNotFoundError(f"{text!r} is neither a file nor a pulled model: `edge-runtime pull {text}` fetches "
                                 "it, `edge-runtime list` shows what is here")
    if not Path(model.model).exists():
        raise ModelNotFoundError(f"the files of {text!r} are gone from the cache ({model.model}): pull it again")
    return model.model, list(model.projectors)
