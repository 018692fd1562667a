"""`strop quickstart`: the whole STROP pipeline on the embedded default, as one job.

`pipeline` runs the stages; `config` says what is trained; `runs` trains, exports, evaluates
and analyses the runs side by side in worker processes; `board` shows them.
"""

from typing import Any

__all__ = ["QuickstartConfig", "QuickstartError", "clean", "quickstart", "run_config"]

#: name -> module: imported on first use, so that `strop --help` (which reads the options of
#: `config.QuickstartConfig`) does not import the pipeline, and torch with it
_HOMES = {
    "QuickstartConfig": "config",
    "run_config": "config",
    "clean": "pipeline",
    "quickstart": "pipeline",
    "QuickstartError": "runs",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'strop.quickstart' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"strop.quickstart.{_HOMES[name]}"), name)
