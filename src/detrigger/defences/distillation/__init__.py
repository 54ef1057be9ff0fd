"""NAD and MBTSAD, the distillation family, in one home: `defence` (the two registered defences, their teacher
and distillation steps), `losses` (attention-map and hidden-state distillation terms for the training loop) and
`splitting` (MBTSAD's token splitting and `RareWordSplitter`, its input purifier: a `Victim` input transform)."""

from detrigger.defences.distillation.defence import DistilConfig, MbtsadConfig, mbtsad, nad
from detrigger.defences.distillation.splitting import RareWordSplitter, SplitOptions, split_dataset, split_text

__all__ = ["DistilConfig", "MbtsadConfig", "RareWordSplitter", "SplitOptions", "mbtsad", "nad", "split_dataset",
           "split_text"]
