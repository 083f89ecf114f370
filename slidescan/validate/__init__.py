"""Validation against a lab's truth: slide-level agreement, lesion-level FROC, patient pN stages."""
