"""Pieces shared by the stages' command lines (``click``)."""
from __future__ import annotations

import click


class DefaultCommandGroup(click.Group):
    """A group whose first subcommand is the default: ``msmtfn-extract --dataset X`` means ``run --dataset X``,
    while ``msmtfn-extract info STORE`` still reaches ``info``."""

    default = "run"

    def parse_args(self, ctx, args):
        if args and args[0] in self.commands:
            return super().parse_args(ctx, args)
        return super().parse_args(ctx, [self.default, *args]) if args else super().parse_args(ctx, args)


class RenamedOption(click.Option):
    """An option that was renamed: the old spelling (``old=``, also given among the names) still works, and
    ``--help`` shows only the new one. ``@click.option("--loader-workers", "--num-workers", "num_workers",
    cls=RenamedOption, old="--num-workers")``."""

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
