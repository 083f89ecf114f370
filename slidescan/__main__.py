"""``python -m slidescan``: the ``slidescan`` program (also what ``torchrun -m slidescan`` runs)."""

import signal

from slidescan.cli import entry
from slidescan.cli.app import quit_on_ctrl_c

# Python imported this module's imports already; guard the rest of start-up the same way.
signal.signal(signal.SIGINT, quit_on_ctrl_c)
entry()
