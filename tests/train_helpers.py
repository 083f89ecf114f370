"""Helpers (not tests) shared by the training tests: a run stopped right after its first
checkpoint, as an interrupted training would be."""

from __future__ import annotations

import pytest

import slidescan.train.trainer as trainer_mod


class Interrupted(Exception):
    """Raised in place of a Ctrl-C or a killed job, after a checkpoint was written."""


def stop_after_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make training raise :class:`Interrupted` right after it writes its next checkpoint
    (undo with ``monkeypatch.undo()``)."""
    real_save = trainer_mod.save_checkpoint

    def save_then_stop(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        real_save(*args, **kwargs)
        raise Interrupted

    monkeypatch.setattr(trainer_mod, "save_checkpoint", save_then_stop)
