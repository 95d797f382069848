"""Put the repository root first on sys.path so scripts import this checkout's `bismap`,
whether or not the package is installed in the environment that runs the job (conda envs)."""
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
