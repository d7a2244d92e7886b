"""Every command's option defaults come from `--params FILE` (default: ./params.yaml), through click's
default_map; a flag given on the command line always wins.

The design's commands are typed as short as `pipeline extract --teacher dinov2_g` or
`pipeline distill --norm phis`: in a folder with a params.yaml (the offline sweep of the PHI-S paper,
arXiv 2410.01680, over an AM-RADIO store, arXiv 2312.06709), every flag not given takes its value from that
file. Without a file, the defaults are the stage configs' own (`pipeline.params.Params()`: each section
with its stage config's defaults), so a setting has one default, spelled in its stage config. The command
prints, on stderr, which values it took from the file and from which keys, and its `--help` shows them beside
each option (`[default: (4, from params.yaml distill.batch_size)]`). A flag that has no default
(`--root`, `--teacher(s)`, the corpus `SOURCE`) and is not set either is an error naming the flag and the
params.yaml key that would supply it.

Each command declares a `Route`: which params sections feed its same-named options, which options read
another key (or a value derived from one), which stage config gives the defaults of options params.yaml has
no key for, and which options have no default. Only typer and the standard library are imported at module
level (`pipeline --help` stays fast); the params reader and the stage configs are imported when a command
runs.
"""

from __future__ import annotations

import importlib
from dataclasses import MISSING, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Mapping, Optional

import typer

from pipeline.errors import PipelineCommand, fail

PARAMS_FILE = Path("params.yaml")  # looked up in the current folder, where the user runs the command
_META = "pipeline.defaults"  # ctx.meta key: (params file read or None, {option: params key})

ParamsOpt = Annotated[Optional[Path], typer.Option(
    "--params", help="params.yaml whose values are this command's defaults (flags given here win). Default: "
                     "./params.yaml when there is one, else the stage configs' defaults.")]


@dataclass(frozen=True)
class Derived:
    """An option default computed from the params (label: the keys it reads, as printed); file_only: only from
    a params file (without one the option has no default)."""

    label: str
    get: Callable[[Any], Any]
    file_only: bool = False


@dataclass(frozen=True)
class Route:
    """Where one command's option defaults come from.

    sections: params sections whose keys feed the options of the same name; keys: option -> params key
    ("section.key") or Derived; config: "module:Class" of the stage config whose fields give the defaults of
    the remaining same-named options; own: options whose default is the command's own rule (not the config's
    field of that name); required: options with no default (missing -> one error line), unless the option
    `unless` names for it has a value (distill's --teachers, when --partition names the stores)."""

    sections: tuple[str, ...] = ()
    keys: Mapping[str, str | Derived] = field(default_factory=dict)
    config: str | None = None
    own: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    unless: Mapping[str, str] = field(default_factory=dict)  # required option -> the option that makes it optional

    def key_for(self, name: str, params: Any) -> str | Derived | None:
        if name in self.keys:
            return self.keys[name]
        for section in self.sections:
            if name in {f.name for f in fields(getattr(params, section))}:
                return f"{section}.{name}"
        return None

    def config_defaults(self) -> dict[str, Any]:
        if self.config is None:
            return {}
        module, _, cls = self.config.partition(":")
        config = getattr(importlib.import_module(module), cls)
        out = {}
        for f in fields(config):
            if f.default is not MISSING:
                out[f.name] = f.default
            elif f.default_factory is not MISSING:
                out[f.name] = f.default_factory()
        return out


def per_teacher(values: Mapping[str, Any]) -> list[str]:
    """{teacher: value} -> ["teacher=value", ...]: the form per-teacher options take on the command line."""
    return [f"{t}={v}" for t, v in values.items()]


def _cli_value(value: Any) -> Any:
    """A params value as the option would carry it (click converts it further to the option's type)."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_cli_value(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _lookup(params: Any, key: str | Derived) -> Any:
    if isinstance(key, Derived):
        return key.get(params)
    section, name = key.split(".")
    return getattr(getattr(params, section), name)


def _params_flag(args: list[str]) -> Path | None:
    """The value of --params among a command's arguments (None when not given)."""
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--params" and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--params="):
            return Path(arg.split("=", 1)[1])
    return None


def build_default_map(command: Any, route: Route, params_file: Path | None) -> tuple[dict[str, Any], dict[str, str]]:
    """({option: default}, {option: the params key that feeds it}) for `command` (a click command); options
    whose key holds no value (None, empty) keep their own default (None)."""
    from pipeline.params import Params, read_params

    params = read_params(params_file) if params_file is not None else Params()
    defaults, keys = {}, {}
    config = route.config_defaults()
    for param in command.params:
        key = route.key_for(param.name, params)
        if key is not None:
            value = None if isinstance(key, Derived) and key.file_only and params_file is None else _lookup(params, key)
            label = key.label if isinstance(key, Derived) else key
        elif param.name in config and param.name not in route.own:
            value, label = config[param.name], None
        else:
            continue
        if label is not None:
            keys[param.name] = label
        value = _cli_value(per_teacher(value) if isinstance(value, dict) else value)
        if value is None or value == []:
            continue  # no value: the option keeps its own (None: absent)
        multiple = getattr(param, "multiple", False) or getattr(param, "nargs", 1) == -1
        defaults[param.name] = [value] if multiple and not isinstance(value, list) else value
    return defaults, keys


def _flag(ctx: typer.Context, name: str) -> str:
    """The option's spelling on the command line (--shard-size), or the argument's metavar (SOURCE)."""
    for param in ctx.command.params:
        if param.name == name:
            return param.opts[0] if param.param_type_name == "option" else name.upper()
    raise AssertionError(f"{ctx.command.name} has no parameter {name!r}")


def given_on_command_line(ctx: typer.Context, name: str) -> bool:
    """True when the user typed this flag (not a stage default, not a params.yaml value)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


class ParamsCommand(PipelineCommand):
    """A typer command whose defaults are read from --params (see the module docstring); `route` is set by
    `routed(route)`."""

    route: Route = Route()

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        explicit = _params_flag(args)
        path = explicit if explicit is not None else (PARAMS_FILE if PARAMS_FILE.is_file() else None)
        try:
            ctx.default_map, keys = build_default_map(self, self.route, path)
        except (ValueError, FileNotFoundError) as e:  # the reader's messages start with the file's path
            raise fail(f"{e} (--params {path}: read for the flags not given)" if explicit is not None
                       else f"{e} (./{PARAMS_FILE} is read for the flags not given; --params FILE reads another)") from None
        ctx.meta[_META] = (path, keys)
        return super().parse_args(ctx, args)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """--help shows, beside each option a params file feeds, the value it will take and the key it comes from
        (`[default: (4, from params.yaml distill.batch_size)]`)."""
        path, keys = ctx.meta.get(_META, (None, {}))
        shown = {n: v for n, v in (ctx.default_map or {}).items() if n in keys} if path is not None else {}
        saved = [(param, param.show_default) for param in self.params if param.name in shown]
        for param, _ in saved:
            param.show_default = f"{_shown(shown[param.name])}, from {path} {keys[param.name]}"
        try:
            super().format_help(ctx, formatter)
        finally:
            for param, before in saved:
                param.show_default = before

    def invoke(self, ctx: Any) -> Any:
        ctx.params.pop("params", None)
        path, keys = ctx.meta[_META]
        if path is not None:
            taken = [f"{_flag(ctx, name)} {_shown(ctx.params[name])} ({key})" for name, key in keys.items()
                     if ctx.get_parameter_source(name).name == "DEFAULT_MAP"]
            if taken:
                typer.echo(f"from {path.resolve()}: " + "; ".join(taken), err=True)
        for name in self.route.required:
            if name in self.route.unless and ctx.params.get(self.route.unless[name]) not in (None, [], (), ""):
                continue
            if ctx.params.get(name) in (None, [], (), ""):
                key = keys.get(name, name)
                where = (f"{path.resolve()} does not set it" if path is not None
                         else f"there is no {PARAMS_FILE} in {Path.cwd()}")
                kind = "option" if _flag(ctx, name).startswith("-") else "argument"
                raise fail(f"missing {kind} {_flag(ctx, name)}: give it on the command line, or run where a "
                           f"params.yaml sets {key} ({where})")
        return super().invoke(ctx)


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def routed(route: Route) -> type[ParamsCommand]:
    """The command class of a command with this route (`app.command(name, cls=routed(ROUTE))`)."""
    return type("RoutedCommand", (ParamsCommand,), {"route": route})


def params_of(ctx: typer.Context) -> Any:
    """The Params this command's defaults came from (the file read, or the stage configs' defaults)."""
    from pipeline.params import Params, read_params

    path, _ = ctx.meta[_META]
    return read_params(path) if path is not None else Params()


def parse_only(app: typer.Typer, name: str, args: list[str]) -> Any:
    """The click context of `app`'s command `name` parsed from `args` (defaults resolved from --params or
    ./params.yaml, flags applied), without running it: what the command would run with."""
    command = typer.main.get_command(app)  # the command itself when `app` has only one
    if hasattr(command, "get_command"):
        command = command.get_command(command.make_context("pipeline", [], resilient_parsing=True), name)
    ctx = command.make_context(name, list(args))
    ctx.params.pop("params", None)
    return ctx
