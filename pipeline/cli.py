"""Pieces shared by the stages' command lines (``click``)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys

import click

_IMPLIED = "pipeline.cli.implied_default"


class UsageError(click.ClickException):
    """One line, exit status 2: bad usage (settings that cannot work, paths a command will not
    touch), as the README's exit codes say; click's own usage errors also exit 2 but print the usage
    lines too."""

    exit_code = 2


class _ImpliedContext(click.Context):
    """The default command's context when its name was not typed: help and errors show
    ``msmtfn-extract [OPTIONS]``, the command as the user runs it, not ``msmtfn-extract run
    [OPTIONS]``."""

    @property
    def command_path(self) -> str:
        if self.parent is not None and self.parent.meta.get(_IMPLIED):
            return self.parent.command_path
        return super().command_path


class DefaultCommandGroup(click.Group):
    """A group whose first subcommand is the default: ``msmtfn-extract --dataset X`` means ``run
    --dataset X``, while ``msmtfn-extract info STORE`` still reaches ``info``."""

    default = "run"

    def parse_args(self, ctx, args):
        if args and args[0] in self.commands:
            return super().parse_args(ctx, args)
        if args:
            ctx.meta[_IMPLIED] = True
            self.commands[self.default].context_class = _ImpliedContext
            return super().parse_args(ctx, [self.default, *args])
        return super().parse_args(ctx, args)


def device_option(value: str, *, allow_auto: bool = True) -> str:
    """A ``--device`` value checked by :func:`pipeline.device.check_device`; a bad one is a usage
    error (exit 2)."""
    from .device import DeviceError, check_device

    try:
        return check_device(value, allow_auto=allow_auto)
    except DeviceError as e:
        raise click.BadParameter(str(e), param_hint="'--device'") from None


def device_callback(allow_auto: bool = True):
    """``callback=`` of a click ``--device`` option (the check above, at parse time)."""
    return lambda ctx, param, value: (
        value if value is None else device_option(value, allow_auto=allow_auto)
    )


class RenamedOption(click.Option):
    """An option that was renamed: the old spelling (``old=``, also given among the names) still
    works, and ``--help`` shows only the new one. ``@click.option("--loader-workers",
    "--num-workers", "num_workers", cls=RenamedOption, old="--num-workers")``."""

    def __init__(self, *args, old: str | tuple[str, ...] = (), **kw):
        super().__init__(*args, **kw)
        self.old_names = (old,) if isinstance(old, str) else tuple(old)

    def get_help_record(self, ctx):
        shown = self.opts
        self.opts = [o for o in shown if o not in self.old_names]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = shown


# ------------------------------------------------------------------ options from a dataclass
def option_field(default=dataclasses.MISSING, help: str = "", *, factory=None, **cli):
    """A dataclass field that is also a command-line option: ``help`` and click settings
    (``choices``, ``metavar``, ``show_default``) in its metadata, read by :func:`field_options`."""
    meta = {"help": help, **cli}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _field_option(f: dataclasses.Field):
    meta = f.metadata
    name = "--" + f.name.replace("_", "-")
    kw = {"help": meta.get("help", ""), "show_default": meta.get("show_default", True)}
    default = meta.get("cli_default", f.default)
    if default is dataclasses.MISSING:  # a required field: required where the command says so
        default = None
    if default is False:  # a switch that is off unless given
        return click.option(name, f.name, is_flag=True, default=False, help=kw["help"])
    if default is True:  # negatable: --x/--no-x
        return click.option(f"{name}/--no-{f.name.replace('_', '-')}", f.name, default=True, **kw)
    if meta.get("required"):
        kw["required"] = True
    if "choices" in meta:
        kw["type"] = click.Choice(meta["choices"])
    if "metavar" in meta:
        kw["metavar"] = meta["metavar"]
    if default is None:
        kw["type"], kw["show_default"] = kw.get("type", str), False
    return click.option(name, f.name, default=default, **kw)


def field_options(cls, *, skip: tuple[str, ...] = (), custom: dict | None = None):
    """Decorator: one click option per field of dataclass ``cls``, in field order, named after the
    field (``batch_calls`` → ``--batch-calls``), with the field's default and its metadata's help
    (:func:`option_field`); a bool is a ``--x/--no-x`` flag. ``custom`` maps a field to the
    decorator that makes its option(s) instead (a callback, a renamed spelling, options that are
    not fields placed beside it); ``skip``: fields that are no option."""
    custom = custom or {}

    def decorate(command):
        for f in reversed(dataclasses.fields(cls)):
            if f.name in skip:
                continue
            command = (custom[f.name] if f.name in custom else _field_option(f))(command)
        return command

    return decorate


def options(*decorators):
    """Several click decorators as one (for ``field_options(custom=...)``), applied in order."""

    def decorate(command):
        for d in reversed(decorators):
            command = d(command)
        return command

    return decorate


# ------------------------------------------------------------------ KEY=VALUE and errors
# the words a command line writes for booleans (json.loads knows only lower-case true/false)
BOOLEANS = {"true": True, "yes": True, "false": False, "no": False}


def parse_value(raw: str):
    """A command-line VALUE: true/false/yes/no in any case are booleans; JSON is its value (48, 0.5,
    ["noise"], "x"); numbers the options themselves take but JSON does not (.001, 020, 5.) are
    numbers; anything else stays the text."""
    text = raw.strip()
    if text.lower() in BOOLEANS:
        return BOOLEANS[text.lower()]
    try:
        return json.loads(text)
    except ValueError:
        pass
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return raw


def parse_key_values(items, option: str, *, example: str, number: bool = False) -> dict:
    """``KEY=VALUE`` items of a repeatable option (``--set``, ``--option``, ``--loss-weight``),
    each VALUE read by :func:`parse_value`; ``number=True`` requires a number. A malformed item is a
    usage error (exit 2) naming the option and the item."""
    out = {}
    for item in items:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"{option} {item!r}: expected KEY=VALUE, e.g. {example}")
        value = parse_value(raw)
        if number and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UsageError(f"{option} {item!r}: expected KEY=NUMBER, e.g. {example}")
        out[key] = value
    return out


@contextlib.contextmanager
def cli_errors(user: tuple[type[BaseException], ...] = (), usage: tuple = ()):
    """The command lines' one way out: ``usage`` errors exit 2 and ``user`` errors exit 1, each as
    one line; Ctrl-C prints what was kept (the exception's text) and exits 130 (128 + SIGINT)."""
    try:
        yield
    except usage as e:
        raise UsageError(str(e)) from None
    except user as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt as e:
        click.echo(str(e) or "interrupted", err=True)
        sys.exit(130)
