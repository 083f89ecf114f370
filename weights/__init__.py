"""The shipped model weights (installed as ``slidescan.shipped_weights``); see README.md here."""
