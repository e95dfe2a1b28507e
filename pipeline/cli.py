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
