"""Copy the attack card (attack.json) of every victim of a bench spec from the model cache into a results
folder, one file per attack name, so the figures a bench record does not hold (the combination trigger's
parts alone, the tokenizer check, ES's words) are kept with the results:

    DETRIGGER_MODEL_CACHE=/tmp/dtcache .venv/bin/python experiments/attack_cards.py \
        experiments/attacks-new.yaml results/attacks-new/cards
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from detrigger.attacks.attack import CARD_FILE, victim_folder
from detrigger.bench.spec import load_spec
from detrigger.io import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="bench spec (YAML)")
    parser.add_argument("out", help="folder for <attack name>-<data>-s<seed>.json")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    for seed in spec.seeds:
        for data in spec.data:
            for attack in spec.attacks:
                # the seed's clean recipe, as the bench's cells build it (`bench.runner.cell_models`)
                folder = victim_folder(data.model_copy(update={"seed": seed}), attack.at_seed(seed),
                                       clean_config=spec.clean_train.model_copy(update={"seed": seed}),
                                       encoder=spec.encoder, max_length=spec.max_length)
                name = re.sub(r"[^A-Za-z0-9.]+", "-", f"{attack.label()}-{data.source}-s{seed}")
                if (folder / CARD_FILE).is_file():
                    write_json(Path(args.out) / f"{name}.json", json.loads((folder / CARD_FILE).read_text()))
                    print(f"{name}: {folder}")
                else:
                    print(f"{name}: not built yet ({folder})")


if __name__ == "__main__":
    main()
