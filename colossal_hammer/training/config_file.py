"""Run settings from a YAML file (`--config run.yaml`), the command line overriding it, and `--print_config`.

A file holds the same settings as the flags, under the flags' names, either flat

    plugin: zero2
    lr: 1.0e-4

or grouped by the sections `--help` shows (a section's name in lower case, spaces as underscores: model, data,
task, evaluation, parallelism, mixture_of_experts, optimisation, schedule, lora, checkpoints, logging; the
planner adds cluster), or both mixed:

    parallelism: {plugin: zero2}
    optimisation: {lr: 1.0e-4, batch_size: 8}

A setting given twice, a name that is no setting, a setting under another section, or a value of the wrong type
is refused in one line naming the file, the line and the key. The file fills in the flags' defaults, so a flag on
the command line always wins; the merged config is what the run validates, prints and records.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import typing
from typing import Any, List, Optional

from ..errors import InputError


def section_key(name: str) -> str:
    """A section's key in a config file: its --help title in lower case, spaces as underscores."""
    return name.lower().replace(" ", "_")


def add_file_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("config file", "Settings from a YAML file; flags on the command line win.")
    group.add_argument("--config", metavar="FILE.yaml", default=None,
                       help="Read settings from this YAML file (flat keys named as the flags, or grouped by the "
                            "section names above in lower case, e.g. 'optimisation: {lr: 1.0e-4}'); flags given on "
                            "the command line override it. See examples/.")
    group.add_argument("--print_config", action="store_true",
                       help="Print the resolved config (file, flags and defaults merged and validated) as YAML "
                            "and exit.")


# Fields that choose what the command does rather than how the run trains: flags only, never in a file.
COMMANDS = {"plan": "says what train.py does (print the plan instead of training): give --plan on the command "
                    "line, not in a config file"}


# Settings of which a run takes one: one given on the command line replaces the file's (whichever it holds).
ALTERNATIVES = (("pretrained", "model_config", "load_weights_only"), ("load_checkpoint", "resume"))


class _Field(typing.NamedTuple):
    section: str
    kind: Any  # int, float, str, bool or list (of str)
    optional: bool
    choices: Optional[tuple]


def _fields(cls) -> dict:
    from .config import _section_of

    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        kind, optional = hints[f.name], False
        if typing.get_origin(kind) is typing.Union:  # Optional[X] -> X
            kind, optional = next(a for a in typing.get_args(kind) if a is not type(None)), True
        if typing.get_origin(kind) is list:
            kind = list
        section = _section_of(cls, f.name)
        out[f.name] = _Field(section_key(getattr(section, "SECTION", section.__name__)), kind, optional,
                             f.metadata.get("choices"))
    return out


def _typed(value, spec: _Field, where: str):
    """The value as the field's type, or one InputError saying what was expected."""
    if value is None:
        if spec.optional:
            return None
        raise InputError(f"{where}: needs a value (this setting has no 'null')")
    kind = spec.kind
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        # YAML 1.1 (PyYAML) reads 1e-4 without a dot as a string: accept a number written either way
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is list:
        value = [value] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value
        ok = isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                             for v in value)
        value = [str(v) for v in value] if ok else value
    else:  # str
        ok = isinstance(value, str)
    if not ok:
        name = {list: "a list of strings", bool: "true or false", int: "an integer", float: "a number"}.get(kind, "a string")
        raise InputError(f"{where}: expected {name}, got {value!r}")
    if spec.choices and value not in spec.choices:
        raise InputError(f"{where}: {value!r} is not one of {', '.join(map(str, spec.choices))}")
    return value


def _lines_of(path: str, text: str) -> dict:
    """(section or None, key) -> line number of every key of the file's top two levels."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise InputError(f"{path}{at}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    lines = {}

    def note(section, key_node):  # PyYAML keeps the last of a repeated key without a word: refuse it here
        line = key_node.start_mark.line + 1
        if (section, key_node.value) in lines:
            raise InputError(f"{path}:{line}: {key_node.value}: given twice (also at line "
                             f"{lines[(section, key_node.value)]})")
        lines[(section, key_node.value)] = line

    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            note(None, key)
            if isinstance(value, yaml.MappingNode):
                for inner, _ in value.value:
                    note(key.value, inner)
    return lines


def load(path: str, cls) -> dict:
    """The settings of a config file as {field: value}, every key and type checked against cls's fields."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise InputError(f"--config {path}: cannot read it ({e.strerror or e})") from None
    lines = _lines_of(path, text)
    data = yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of settings (key: value), got {type(data).__name__}")
    fields = _fields(cls)
    sections = {spec.section for spec in fields.values()}
    values, seen_at = {}, {}

    def take(key, value, section):
        where = f"{path}:{lines.get((section, key), '?')}: {key}"
        if not isinstance(key, str) or key not in fields:
            close = difflib.get_close_matches(str(key), list(fields) + sorted(sections), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(f"{where}: no such setting{hint}")
        if key in COMMANDS:
            raise InputError(f"{where}: {COMMANDS[key]}")
        if section is not None and fields[key].section != section:
            raise InputError(f"{where}: belongs to section {fields[key].section!r}, not {section!r}")
        if key in values:
            raise InputError(f"{where}: given twice (also at line {seen_at[key]})")
        values[key], seen_at[key] = _typed(value, fields[key], where), lines.get((section, key), "?")

    for key, value in data.items():
        if key in sections and isinstance(value, dict):  # no setting holds a mapping: `task:` can be both
            for inner, inner_value in value.items():
                take(inner, inner_value, key)
        elif key in sections and key not in fields:
            raise InputError(f"{path}:{lines.get((None, key), '?')}: {key}: a section holds settings "
                             f"(key: value), got {value!r}")
        else:
            take(key, value, None)
    return values


def parse(cls, parser: argparse.ArgumentParser, argv: Optional[List[str]] = None):
    """cls's config from a config file (--config) and the command line over it, validated; with --print_config,
    printed as YAML and the process ends."""
    add_file_flags(parser)
    alternatives, unset = [name for group in ALTERNATIVES for name in group], object()
    defaults = {name: parser.get_default(name) for name in alternatives}
    parser.set_defaults(**dict.fromkeys(alternatives, unset))  # to tell which of them the command line gives
    first, _ = parser.parse_known_args(argv)  # --config first: the file's values become the flags' defaults
    given = {name for name in alternatives if getattr(first, name) is not unset}
    parser.set_defaults(**defaults)
    if first.config:
        values = load(first.config, cls)
        for group in ALTERNATIVES:  # `--model_config tiny` over a file's `pretrained:` replaces it
            if given & set(group):
                values = {k: v for k, v in values.items() if k not in group}
        parser.set_defaults(**values)
    args = vars(parser.parse_args(argv))
    args.pop("config")
    print_config = args.pop("print_config")
    cfg = cls(**args)
    cfg.validate()
    if print_config:
        if os.environ.get("RANK", "0") == "0":
            print(to_yaml(cfg), end="", flush=True)
        raise SystemExit(0)
    return cfg


def to_yaml(cfg) -> str:
    """The config as a YAML file that --config reads back: grouped by section, in --help's order."""
    import yaml

    grouped = {}
    for name, spec in _fields(type(cfg)).items():
        if name in COMMANDS:
            continue
        grouped.setdefault(spec.section, {})[name] = getattr(cfg, name)
    return yaml.safe_dump(grouped, sort_keys=False, allow_unicode=True, default_flow_style=False)
