"""Architecture-neutral access to a transformers classifier: the parts attacks, defences and the scan touch.

Nothing else in detrigger names a family's modules. Every family is reached through:
- the input embeddings: `get_input_embeddings()`, and their key in the base model's state dict
  (`embedding_key`), which a pre-trained reference loaded with `AutoModel` shares;
- the base model (`model.base_model`, the family's `base_model_prefix`): what mixing and the reference
  cover; everything outside it (pooler of some families, classification head) is the task head;
- the transformer blocks and each one's FFN down projection, whose inputs are the FFN neurons
  (post-activation, after the gate in gated FFNs): what fine-pruning ranks and zeroes;
- attention dropout (modules and the float settings newer families keep on their attention modules);
- attention maps: eager attention where the family has it (transformers 5 returns none with sdpa);
- gradients at the input embeddings of a model run on its token ids (`watched_embeddings`): decoder
  classifiers find their last real token from `input_ids` only (given `inputs_embeds` they pool the last
  position, a pad in all but the longest text of a right-padded batch).
A family without the part a method needs is one `DetriggerError` naming the method and the family.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from detrigger.errors import DetriggerError

if TYPE_CHECKING:  # its import loads transformers' modelling code: ~3 s that `detrigger CMD --help` need not pay
    from transformers import PreTrainedModel

# A block's FFN down projection (intermediate -> hidden), by the families that name it so.
FFN_DOWN = (
    "output.dense",  # BERT, RoBERTa, XLM-R, ELECTRA, DeBERTa-v2 (the block's, not attention.output.dense)
    "ffn.lin2",  # DistilBERT
    "ffn_output",  # ALBERT (one block shared by all layers in the usual config)
    "mlp.Wo",  # ModernBERT (gated: its inputs are act(input) * gate)
    "mlp.c_proj",  # GPT-2 (a Conv1D: weights transposed)
    "mlp.down_proj",  # Llama, Qwen2, Mistral (gated)
)
# Dropout applied to the attention probabilities: modules (by name) and float settings on attention modules
# and in the config.
ATTENTION_DROPOUT_MODULE = re.compile(r"(attention\.self\.dropout|attention\.dropout|attention_dropout|attn_dropout)$")
ATTENTION_DROPOUT_ATTR = "attention_dropout"  # ModernBERT, Llama, Qwen2: a float read at each forward
ATTENTION_DROPOUT_CONFIG = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")


def family(model: PreTrainedModel) -> str:
    """The family's name as transformers knows it (`config.model_type`: bert, roberta, gpt2, ...)."""
    return str(model.config.model_type)


def embedding_key(model: PreTrainedModel) -> str:
    """The input embedding matrix's key in the base model's state dict (`embeddings.word_embeddings.weight` for
    BERT, `wte.weight` for GPT-2, `embed_tokens.weight` for Llama): the key of a reference loaded with AutoModel."""
    weight = model.get_input_embeddings().weight
    for name, param in model.base_model.named_parameters():
        if param is weight:
            return name
    raise DetriggerError(f"the {family(model)} model's input embeddings are not part of its base model")


def _down(block: nn.Module) -> nn.Module | None:
    for name in FFN_DOWN:
        try:
            module = block.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(module, (nn.Linear, Conv1D)):
            return module
    return None


def ffn_down_projections(model: PreTrainedModel, method: str) -> list[nn.Module]:
    """Per transformer block, its FFN down projection (blocks: the elements of the base model's module lists
    that have one; a block shared by several layers, as in ALBERT, appears once)."""
    found: list[nn.Module] = []
    for module in model.base_model.modules():
        if isinstance(module, nn.ModuleList):
            found += [d for d in map(_down, module) if d is not None and d not in found]
    if not found:
        raise DetriggerError(f"{method}: the {family(model)} family has no FFN layers detrigger knows "
                             f"(a block's {' / '.join(FFN_DOWN)})")
    return found


def ffn_width(down: nn.Module) -> int:
    """Neurons feeding a down projection (its input features)."""
    return down.weight.shape[0] if isinstance(down, Conv1D) else down.weight.shape[1]


@torch.no_grad()
def zero_ffn_inputs(down: nn.Module, mask: torch.Tensor) -> None:
    """Cut the masked neurons off: their weights into the down projection are zero, so they contribute exactly
    nothing (and their gradient, hence their input weights' gradient, is zero too)."""
    mask = mask.to(down.weight.device)
    if isinstance(down, Conv1D):
        down.weight[mask] = 0
    else:
        down.weight[:, mask] = 0


def attention_dropout_off(model: PreTrainedModel) -> None:
    """Switch off dropout on the attention probabilities (the maps are taken after it in train mode), whichever
    way the family applies it; other dropout is kept."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Dropout) and ATTENTION_DROPOUT_MODULE.search(name):
            module.p = 0.0
        value = getattr(module, ATTENTION_DROPOUT_ATTR, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            setattr(module, ATTENTION_DROPOUT_ATTR, 0.0)
    for key in ATTENTION_DROPOUT_CONFIG:
        if isinstance(getattr(model.config, key, None), (int, float)):
            setattr(model.config, key, 0.0)


def default_attention(model: PreTrainedModel) -> str:
    """The family's fast attention kernel: sdpa where it has one, else eager (DeBERTa-v2 has only eager)."""
    return "sdpa" if model._supports_sdpa else "eager"


def eager_attention(model: PreTrainedModel, method: str) -> None:
    """Eager attention, so that `output_attentions=True` returns the maps; a family without it is an error."""
    try:
        model.set_attn_implementation("eager")
    except (ValueError, ImportError) as exc:
        raise DetriggerError(f"{method}: the {family(model)} family cannot return attention maps "
                             f"({' '.join(str(exc).split())[:200]}); distil hidden states only (beta_att 0)") from None


@contextlib.contextmanager
def watched_embeddings(model: PreTrainedModel) -> Iterator[list[torch.Tensor]]:
    """While open, every forward pass's input-embedding output is replaced by a leaf tensor that requires grad
    (same values), appended to the yielded list: take gradients with respect to it after running the model on
    `input_ids`, so every family pools and positions tokens as it does at inference."""
    leaves: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        leaves.append(output.detach().requires_grad_(True))
        return leaves[-1]

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        yield leaves
    finally:
        handle.remove()
