"""``python -m shoal.sim [options]``: the same as ``shoal sim [options]``."""

from __future__ import annotations

import typer

from shoal.cli.sim_cmd import sim


def main() -> None:
    typer.run(sim)


if __name__ == "__main__":
    main()
