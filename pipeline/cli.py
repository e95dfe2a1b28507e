"""Pieces shared by the stages' command lines (``click``)."""

from __future__ import annotations

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
