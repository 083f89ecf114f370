"""``python -m slidescan``: the ``slidescan`` program (also what ``torchrun -m slidescan`` runs)."""

from slidescan.cli import entry

entry()
