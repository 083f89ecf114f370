"""``python -m slidescan`` (also what ``torchrun ... -m slidescan train`` runs): the ``slidescan`` program."""

from slidescan.cli import entry

entry()
