"""Input-level defences behind one verb (`detrigger filter`): STRIP, RAP, BKI and ONION, fitted on clean texts
only, with FRR / FAR next to CACC / ASR (`evaluate_filter`; docs/filters.md)."""

# registration order is the order the CLI help and the tables list them in
from detrigger.filters import strip  # noqa: F401,I001  (register the filters)
from detrigger.filters import rap  # noqa: F401
from detrigger.filters import bki  # noqa: F401
from detrigger.filters import onion  # noqa: F401
from detrigger.filters.base import (FILTERS, FilterConfig, Filtered, FilterMetrics, InputFilter, evaluate_filter,
                                    make_filter, options_config, report_text, save_filtered, threshold_at)
from detrigger.filters.lm import CausalLM, NgramLM
from detrigger.filters.run import FilterOptions, run_filter

__all__ = ["FILTERS", "CausalLM", "FilterConfig", "FilterMetrics", "FilterOptions", "Filtered", "InputFilter",
           "NgramLM", "evaluate_filter", "make_filter", "options_config", "report_text", "run_filter", "save_filtered",
           "threshold_at"]
