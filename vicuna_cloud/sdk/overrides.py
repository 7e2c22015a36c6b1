"""Run-spec overrides: ``--set hyper.learning_rate=1e-5`` (repeatable) and ``--config
run.yaml`` (the same dotted keys as a nested mapping), shared by `launch`, `launch --local`
and `render`.

The CLI passes the strings as typed; here they become a flat {dotted key: raw value},
checked against the run spec's own models (``Hyperparameters``, ``CheckpointPolicy``):
pydantic coerces "1e-5" to a float and rejects a negative lr or a combination its
validators refuse, so a hand-written run.json and an override obey the same rules. What
is recorded in run.json (``RunSpec.overrides``) is the validated value of each key given.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field, replace
from typing import Mapping, Optional, Sequence

from pydantic import BaseModel, ValidationError

from vicuna_cloud.errors import ConfigError
from vicuna_cloud.runspec import CheckpointPolicy, Hyperparameters

#: The run-spec sections an override may change, each with the model that validates it.
SECTIONS: dict[str, type[BaseModel]] = {"hyper": Hyperparameters, "checkpoint": CheckpointPolicy}
EXAMPLE = "hyper.learning_rate=1e-5"


def valid_keys() -> list[str]:
    """Every dotted key --set and --config accept, in the models' field order."""
    return [f"{s}.{name}" for s, model in SECTIONS.items() for name in model.model_fields]


@dataclass(frozen=True)
class Overrides:
    """Validated overrides: the raw values as given and the models they produce."""

    raw: dict[str, object] = field(default_factory=dict)
    validated: dict[str, object] = field(default_factory=dict)  # dotted key -> model value

    def __bool__(self) -> bool:
        return bool(self.raw)

    def section(self, name: str) -> dict[str, object]:
        """{field: raw value} of one section, e.g. section('hyper') -> {'epochs': '2'}."""
        prefix = name + "."
        return {k[len(prefix):]: v for k, v in self.raw.items() if k.startswith(prefix)}

    def as_flags(self) -> list[str]:
        """The --set flags that reproduce these overrides (render's header)."""
        return [f"--set {k}={_plain(v)}" for k, v in self.validated.items()]


def _plain(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def _split(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE, e.g. --set {EXAMPLE} (got {item!r})")
    return key, value.strip()


def _flatten(data: Mapping, prefix: str, out: dict[str, object]) -> None:
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            _flatten(v, key + ".", out)
        else:
            out[key] = v


def read_config(path: str) -> dict[str, object]:
    """A YAML file of overrides as {dotted key: value}; an empty file is no overrides."""
    import yaml

    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read it ({e.strerror}); give the path of "
                          "a YAML file like `hyper: {learning_rate: 1e-5}`") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"--config {path} is not valid YAML ({what}{where}); fix the file") \
            from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"--config {path} must hold a mapping like `hyper: {{epochs: 2}}`, "
                          f"not a {type(data).__name__}")
    out: dict[str, object] = {}
    _flatten(data, "", out)
    return out


#: Names other trainers use (HF TrainingArguments, FastChat's scripts, Axolotl), only to
#: suggest ours; they are not accepted.
_HINTS = {"lr": "learning_rate", "num_train_epochs": "epochs", "num_epochs": "epochs",
          "batch_size": "global_batch_size", "model_max_length": "max_length",
          "sequence_len": "max_length", "per_device_train_batch_size": "micro_batch_size",
          "micro_batch": "micro_batch_size", "max_grad_norm": "grad_clip",
          "warmup": "warmup_ratio", "save_steps": "interval_steps"}


def _check_keys(keys: Sequence[str]) -> None:
    valid = valid_keys()
    for key in keys:
        if key not in valid:
            section, _, name = key.rpartition(".")
            alias = _HINTS.get(name)
            near = [k for k in valid if alias and k.endswith("." + alias)] or \
                difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ConfigError(f"unknown override key {key!r}{hint}; valid keys: "
                              f"{', '.join(valid)}")


def _one_line(section: str, err: ValidationError, raw: Mapping[str, object]) -> str:
    """pydantic's errors as one line, each naming the dotted key and the value given."""
    parts = []
    for e in err.errors():
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        loc = ".".join(str(x) for x in e.get("loc", ()))
        if loc:
            key = f"{section}.{loc}"
            given = raw.get(key, e.get("input"))
            parts.append(f"{key}={_plain(given)}: {msg}")
        else:  # a model validator: a combination the model rejects
            parts.append(f"{section}: {msg}")
    return "; ".join(parts)


def parse(sets: Sequence[str] = (), config: Optional[str] = None,
          extra: Optional[Mapping[str, object]] = None) -> dict[str, object]:
    """{dotted key: raw value}: the --config file, then ``extra`` (Python callers), then
    each --set in order (a later one wins). Unknown keys are refused here."""
    raw: dict[str, object] = dict(read_config(config)) if config else {}
    raw.update(extra or {})
    for item in sets:
        key, value = _split(item)
        raw[key] = value
    _check_keys(list(raw))
    return raw


def validate(raw: Mapping[str, object], bases: Mapping[str, BaseModel]) -> dict[str, BaseModel]:
    """Each section's model: ``bases[section]`` with the raw values laid over it,
    validated (and coerced) by the model itself; a section not overridden is kept as is."""
    out = dict(bases)
    for section, model in SECTIONS.items():
        prefix = section + "."
        given = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
        if not given:
            continue
        try:
            out[section] = model.model_validate({**bases[section].model_dump(), **given})
        except ValidationError as e:
            raise ConfigError(f"invalid override: {_one_line(section, e, raw)}") from None
    return out


def resolve(sets: Sequence[str] = (), config: Optional[str] = None, *, hyper: Hyperparameters,
            checkpoint: Optional[CheckpointPolicy] = None,
            extra: Optional[Mapping[str, object]] = None) -> tuple[Overrides, dict[str, BaseModel]]:
    """Parse and validate against the preset's values: (overrides, {section: model})."""
    raw = parse(sets, config, extra)
    models = validate(raw, {"hyper": hyper, "checkpoint": checkpoint or CheckpointPolicy()})
    validated = {}
    for key in raw:
        section, name = key.split(".", 1)
        validated[key] = getattr(models[section], name)
    return Overrides(raw=raw, validated=validated), models


def apply_to_preset(preset, models: Mapping[str, BaseModel]):
    """The preset with the overridden hyperparameters: its data length, memory estimate
    and run spec all follow (Preset is frozen: a copy)."""
    hyper = models["hyper"]
    return preset if hyper == preset.hyper else replace(preset, hyper=hyper)


def conflicts(existing_spec, overrides: Overrides) -> list[str]:
    """'hyper.learning_rate: run.json has 2e-05, asked 1e-05' for each overridden key the
    existing run holds a different value of (a relaunch must not silently change it)."""
    out = []
    for key, value in overrides.validated.items():
        section, name = key.split(".", 1)
        have = getattr(getattr(existing_spec, section), name)
        if have != value:
            out.append(f"{key}: run.json has {_plain(have)}, asked {_plain(value)}")
    return out
