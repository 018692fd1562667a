"""`strop quickstart`: the whole STROP pipeline on the embedded default, as one job.

`pipeline` runs the stages; `config` says what is trained; `runs` trains, exports, evaluates
and analyses the runs side by side in worker processes; `board` shows them.
"""

from strop.quickstart.config import QuickstartConfig, run_config
from strop.quickstart.pipeline import clean, quickstart
from strop.quickstart.runs import QuickstartError

__all__ = ["QuickstartConfig", "QuickstartError", "clean", "quickstart", "run_config"]
