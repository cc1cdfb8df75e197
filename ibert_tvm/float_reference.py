"""TVM's own float compilation of a BERT / RoBERTa encoder: a numerical reference this project did not write.

`float_program` exports the float HF encoder with `torch.export` and converts it with TVM's
`relax.frontend.torch.from_exported_program`, so every operator of the result comes from TVM's importer and
its legalization, none from `ibert_tvm.layers`. The export uses eager attention (an explicit
softmax(QK^T / sqrt(d) + mask) V, as the I-BERT layers compute it) on a float32 copy of the model (a half-precision
checkpoint's too); the caller's model is left untouched.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
import tvm
from transformers import AutoModel, PreTrainedModel
from tvm import relax

__all__ = ["float_program", "run_float"]


class _LastHiddenState(torch.nn.Module):
    """`(input_ids, attention_mask, token_type_ids) -> last_hidden_state`: the encoder's forward with a plain
    tensor output (a DistilBERT has no segments: its token types go unused)."""

    def __init__(self, encoder: PreTrainedModel):
        super().__init__()
        self.encoder = encoder
        self.segments = encoder.config.model_type != "distilbert"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        types = {"token_type_ids": token_type_ids} if self.segments else {}
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask, **types).last_hidden_state


def _eager_encoder(model: PreTrainedModel | str | Path) -> PreTrainedModel:
    """A float32 copy of `model`'s encoder (or a local directory's, read in float32) with eager attention."""
    from .model import _encoder_of, load_float32  # the bare encoder of a ...ForSequenceClassification as well

    if isinstance(model, PreTrainedModel):
        encoder = copy.deepcopy(_encoder_of(model)).float()  # a copy already: `as_float32` would copy it twice
        encoder.set_attn_implementation("eager")
    else:
        path = Path(model)
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a local model directory (no download is attempted)")
        encoder = _encoder_of(load_float32(AutoModel, path, attn_implementation="eager"))
    if encoder.config._attn_implementation != "eager":
        raise RuntimeError(f"could not switch attention to 'eager' (got {encoder.config._attn_implementation!r})")
    return encoder.eval()


def float_program(model: PreTrainedModel | str | Path, batch: int, seq: int, keep_params: bool = False,
                  mask_dtype: str = "int64") -> tvm.IRModule:
    """The float encoder as a Relax module, imported by TVM from `torch.export`.

    `main(input_ids int64 [batch, seq], attention_mask [batch, seq], token_type_ids int32 [batch, seq]) ->
    float32 [batch, seq, hidden]`
    (the last hidden state); the weights are bound as constants, or with `keep_params` are parameters named
    after their module (`p_encoder_<path>`, values in the function's "params" attribute), as the graph rewrite
    `relay_passes.rewrite_to_ibert` reads them. `model` is a HF BertModel / RobertaModel (or a model wrapping
    one, e.g. ...ForSequenceClassification), or a local model directory.
    """
    from tvm.relax.frontend.torch import from_exported_program

    encoder = _eager_encoder(model)
    example = (torch.zeros(batch, seq, dtype=torch.long), torch.ones(batch, seq, dtype=getattr(torch, mask_dtype)),
               torch.zeros(batch, seq, dtype=torch.int32))
    with torch.no_grad(), warnings.catch_warnings():
        # torch's own `run_decompositions`, which TVM's importer calls, trips torch's deprecation of this check
        warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
        exported = torch.export.export(_LastHiddenState(encoder).eval(), example)
        mod = from_exported_program(exported, keep_params_as_input=keep_params, unwrap_unit_return_tuple=True)
    return mod


def run_float(mod: tvm.IRModule, input_ids, attention_mask, token_type_ids=None) -> np.ndarray:
    """Compile `mod` (from `float_program`, or `onnx_import.import_onnx_float`) for llvm and run it on one batch
    (token types: all 0 where None); each input goes to the parameter of its name, in that parameter's dtype
    (an ONNX export may take ids and mask only, or all three as int64); float32 [B, L, H]."""
    ids = np.asarray(input_ids)
    given = {"input_ids": ids, "attention_mask": np.asarray(attention_mask),
             "token_type_ids": np.zeros(ids.shape, np.int32) if token_type_ids is None else np.asarray(token_type_ids)}
    main = mod["main"]
    params = main.params[:int(main.attrs["num_input"])] if main.attrs and "num_input" in main.attrs \
        else main.params  # kept weights follow the inputs
    unknown = [p.name for p in params if p.name not in given]
    if unknown:
        raise ValueError(f"run_float: the program takes {unknown}, which are not token ids, mask or types")
    exe = tvm.compile(relax.transform.LegalizeOps()(mod), "llvm")
    vm = relax.VirtualMachine(exe, tvm.cpu())
    out = vm["main"](*(tvm.runtime.tensor(np.ascontiguousarray(given[p.name].astype(str(p.ty.dtype))))
                       for p in params))
    if not hasattr(out, "numpy"):  # a one-element tuple when the importer kept it
        out = out[0]
    return out.numpy()
