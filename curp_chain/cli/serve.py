"""`curp serve`: the chat model and history store over an OpenAI-compatible HTTP API.

Every option is also an environment variable, ``CURP_SERVE_<OPTION>`` (``--max-queued``:
``CURP_SERVE_MAX_QUEUED``); the command line wins. Needs the server extra:
``pip install 'curp-chain[server]'``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from curp_chain.cli.options import PROG, add_command, add_options
from curp_chain.errors import CurpError, MissingDependencyError
from curp_chain.server.settings import ServerSettings, check_exposure, settings_from

HELP = "serve personalized chat over an OpenAI-compatible HTTP API"


def cmd_serve(args: argparse.Namespace) -> int:
    given = {k: v for k, v in vars(args).items() if k in ServerSettings.model_fields}
    settings = settings_from(os.environ, given)
    check_exposure(settings)  # before the server's imports: a refusal costs nothing
    try:
        from curp_chain.server.runner import serve
    except ImportError as error:
        raise MissingDependencyError(
            f"`curp serve` needs the server extra ({error.name} is missing); run: "
            "pip install 'curp-chain[server]'"
        ) from None
    serve(settings)
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `curp serve`; options left off the command line come from the environment."""
    return add_command(
        subparsers,
        "serve",
        ServerSettings,
        cmd_serve,
        typed_only=True,
        help=HELP,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m curp_chain.cli.serve`: the same command on its own."""
    parser = argparse.ArgumentParser(prog="curp serve", description=__doc__)
    add_options(parser, ServerSettings, typed_only=True)
    parser.set_defaults(**{PROG: "curp serve"})
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    try:
        return cmd_serve(args)
    except CurpError as error:
        print(f"curp serve: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
