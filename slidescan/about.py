"""What this package is: its version and the research-use notice every report carries."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("slidescan")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

RESEARCH_USE_NOTICE = (
    "For research use only. Not a medical device; not for diagnosis or patient care."
)
