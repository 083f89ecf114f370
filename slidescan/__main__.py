"""``python -m slidescan`` (also what ``torchrun ... -m slidescan train`` runs)."""

from slidescan.cli import app

app()
