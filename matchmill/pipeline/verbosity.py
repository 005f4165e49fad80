"""What ``-v`` means, defined once for ``matchmill -v ...`` and for ``run`` / ``mine`` / ``train -v``.

One count, summed over both places (``matchmill -v run ... -v`` is ``-vv``):

* 0 (default): warnings and errors only; Ray's own chatter hidden (:mod:`matchmill.pipeline.console`);
* 1 (``-v``): matchmill's own loggers (``matchmill.*``) at DEBUG, plus Ray's own INFO logs, which a
  default run hides (``train``: the workers' output too);
* 2 (``-vv``): also every other library's DEBUG logs (the root logger: fsspec, urllib3, PIL, ...).
"""

from __future__ import annotations

import argparse
import logging

#: The flag's help text, the same wherever it is accepted.
VERBOSE_HELP = ("-v: matchmill's debug logs and Ray's own INFO logs, which a run hides by default (train: the "
                "workers' output too); -vv: also every library's debug logs. Same meaning before or after the command")

#: Where a subcommand's own ``-v`` count lands (added to the top-level one by :func:`verbosity`).
SUBCOMMAND_DEST = "verbose_after_command"


def add_verbose_argument(parser: argparse.ArgumentParser, top_level: bool = False) -> None:
    """Add ``-v / --verbose`` (a count) to ``parser``: the top-level parser's lands in ``verbose``,
    a subcommand's in :data:`SUBCOMMAND_DEST` (argparse would otherwise let one overwrite the other)."""
    dest = "verbose" if top_level else SUBCOMMAND_DEST
    parser.add_argument("-v", "--verbose", action="count", default=0, dest=dest, help=VERBOSE_HELP)


def verbosity(args: argparse.Namespace) -> int:
    """The total ``-v`` count of a parsed command line (top level + subcommand)."""
    return int(getattr(args, "verbose", 0) or 0) + int(getattr(args, SUBCOMMAND_DEST, 0) or 0)


def configure_logging(level: int) -> None:
    """Console logging for ``-v`` count ``level`` (see the module docstring); Ray's part is applied
    where Ray starts (``verbose=level >= 1`` to :func:`matchmill.pipeline.runtime.init_ray`)."""
    logging.basicConfig(level=logging.DEBUG if level >= 2 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if level >= 1:
        logging.getLogger("matchmill").setLevel(logging.DEBUG)
