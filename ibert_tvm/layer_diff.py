"""Per-layer numerical diff of the integer program: where along the encoder does quantization go wrong?

A miscalibrated range, a saturating activation or a bug shows first at one stage and spreads to every later one;
comparing only the final hidden states says that something broke, not where. `compare_layers` compiles a program
that returns the int8 output of the embeddings and of every layer (`QuantizedModel.encoder_states(stages=...)`),
runs it on the given tokens and compares each stage, over the real (unpadded) tokens, with

- the float model's hidden state of the same stage (`output_hidden_states=True`): per-token cosine (min, mean)
  and the largest absolute error relative to the largest absolute reference value; for a quant-mode IBert
  checkpoint the float model is the same weights with `quant_mode=False`;
- HF's own integer simulation, `IBertModel` in quant mode: the share of identical int8 values. This checks
  "hf" semantics, which reproduce that model (expect 100 %); with the default "ibert" semantics every layer
  after the first computes on its true input scale where HF regrids to the embedding scale, so the share there
  says how far the two semantics drift apart, not whether either is right.

`write_report` saves the table as `layers.json`, `layers.md` and `layers.png`.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import tvm
from transformers import IBertModel, PreTrainedModel
from tvm import relax

from . import layers
from .build_util import host_vm
from .calibration import Batch, position_ids
from .evaluate import row_cosines
from .model import MIN_SEQ_LENGTH, QuantizedModel, _batch_problem, _encoder_of, _quant_mode_ibert
from .reports import pyplot, stamped, write_results

__all__ = ["LayerDiff", "StageDiff", "compare_layers", "layer_program", "write_report"]


@dataclass(frozen=True)
class StageDiff:
    """One stage's agreement over the real tokens: per-token cosine to the float model (min, mean), max |error|
    relative to max |reference|, and the share of int8 values identical to HF IBertModel's."""

    name: str
    cosine_min: float
    cosine_mean: float
    max_rel_error: float
    identical: float


@dataclass(frozen=True)
class LayerDiff:
    """The per-stage comparison of a model's integer program on one batch (`compare_layers`)."""

    model: str
    semantics: str
    reference: str  # the float model the cosines and errors are taken against
    tokens: int  # real (unpadded) tokens compared
    stages: list[StageDiff]

    def __str__(self) -> str:
        return self.table()

    def table(self) -> str:
        """A Markdown table, one row per stage."""
        lines = [f"{self.model}, '{self.semantics}' semantics, {self.tokens} real tokens; float reference: "
                 f"{self.reference}; identical: int8 values equal to HF IBertModel's (quant mode)", "",
                 "| stage | cosine min | cosine mean | max rel. error | identical |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {s.name} | {s.cosine_min:.4f} | {s.cosine_mean:.4f} | {s.max_rel_error:.4f} | "
                  f"{100 * s.identical:.2f} % |" for s in self.stages]
        return "\n".join(lines)


def _stages_program(qm: QuantizedModel, batch: int, seq: int) -> tuple[tvm.IRModule, list[np.ndarray]]:
    """`layer_program`'s module and each stage's real scale."""
    if qm.importer == "graph":
        qm = dataclasses.replace(qm, importer="modules")  # the same integers, and the only importer with stages
    ids = relax.Var("input_ids", relax.TensorType((batch, seq), "int64"))
    mask = relax.Var("attention_mask", relax.TensorType((batch, seq), "int32"))
    types = relax.Var("token_type_ids", relax.TensorType((batch, seq), "int32"))
    stages: list[layers.QTensor] = []
    bb = relax.BlockBuilder()
    with bb.function("main", [ids, mask, types]):
        with bb.dataflow():
            qm.encoder_states(bb, ids, mask, types, stages=stages)
            out = bb.emit_output(relax.Tuple([s.value for s in stages]))
        bb.emit_func_output(out)
    return bb.get(), [np.asarray(s.scale, np.float32) for s in stages]


def layer_program(qm: QuantizedModel, batch: int, seq: int) -> tvm.IRModule:
    """`main(input_ids int64, attention_mask int32, token_type_ids int32)` [batch, seq] -> a tuple of int8
    [batch, seq, hidden]: the embeddings' output, then each layer's."""
    return _stages_program(qm, batch, seq)[0]


def _float_encoder(qm: QuantizedModel) -> tuple[PreTrainedModel, str]:
    """The float encoder to compare with and its description: the source model's, or for a quant-mode IBert (or
    no source) the quantized model's weights in an IBertModel with quant_mode=False."""
    encoder = None if qm.source is None else _encoder_of(qm.source)
    if encoder is not None and not _quant_mode_ibert(encoder):
        return encoder, f"{type(encoder).__name__} (float)"
    config = copy.deepcopy(qm.ibert.config)
    config.quant_mode = False
    float_model = IBertModel(config, add_pooling_layer=False)
    float_model.load_state_dict(qm.ibert.state_dict(), strict=True)
    return float_model.eval(), "IBertModel, quant_mode=False (the same weights)"


def _float_states(qm: QuantizedModel, b: Batch) -> tuple[list[np.ndarray], str]:
    """The float model's hidden states [B, L, H] (embeddings, then each layer) and its description."""
    encoder, name = _float_encoder(qm)
    kwargs = {}
    if isinstance(encoder, IBertModel):  # positions as the program counts them (BERT's from 0)
        kwargs["position_ids"] = position_ids(qm.model_type, b.input_ids, qm.ibert.config.pad_token_id)
    if encoder.config.model_type != "distilbert":  # which has no segments
        kwargs["token_type_ids"] = b.token_type_ids
    with torch.no_grad():
        out = encoder(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True, **kwargs)
    return [h.numpy() for h in out.hidden_states], name


def _hf_states(qm: QuantizedModel, b: Batch) -> list[np.ndarray]:
    """HF IBertModel's (quant mode) int8 embedding output and each layer's, from hooks on their QuantActs."""
    acts = [qm.ibert.embeddings.output_activation] + [layer.output.output_activation
                                                       for layer in qm.ibert.encoder.layer]
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [a.register_forward_hook(lambda _m, _i, out: seen.append(out)) for a in acts]
    try:
        with torch.no_grad():
            qm.ibert(input_ids=b.input_ids, attention_mask=b.attention_mask, token_type_ids=b.token_type_ids,
                     position_ids=position_ids(qm.model_type, b.input_ids, qm.ibert.config.pad_token_id))
    finally:
        for hook in hooks:
            hook.remove()
    return [torch.round(value / scale).numpy().astype(np.int8) for value, scale in seen]


def _stage(name: str, ours: np.ndarray, scale: np.ndarray, ref: np.ndarray, hf: np.ndarray, real: np.ndarray
           ) -> StageDiff:
    """One stage's figures over the real tokens (`real`: the [B, L] mask as bools)."""
    deq, ref = ours[real].astype(np.float64) * scale, ref[real].astype(np.float64)
    cosines = row_cosines(deq, ref)
    return StageDiff(name, float(cosines.min()), float(cosines.mean()),
                     float(np.abs(deq - ref).max() / max(np.abs(ref).max(), 1e-30)),
                     float(np.mean(ours[real] == hf[real])))


def compare_layers(qm: QuantizedModel, input_ids, attention_mask, token_type_ids=None) -> LayerDiff:
    """Compile `layer_program` for this CPU (the project pipeline), run it on the tokens ([B, L] arrays or tensors;
    mask None: every token real; token types None: all 0) and compare every stage, over the real tokens, with the float model and with HF's
    IBertModel (see the module's docstring)."""
    ids = torch.as_tensor(input_ids)
    given = Batch(ids, torch.ones_like(ids) if attention_mask is None else torch.as_tensor(attention_mask),
                  None if token_type_ids is None else torch.as_tensor(token_type_ids))
    if ids.ndim == 2 and ids.shape[1] < MIN_SEQ_LENGTH:  # (as compile refuses it: a length-1 program does not build)
        raise ValueError(f"compare_layers needs sequences of at least {MIN_SEQ_LENGTH} tokens, got length "
                         f"{ids.shape[1]}")
    if problem := _batch_problem(given, qm.ibert.config, qm.max_seq_length):  # as calibration batches are checked
        error, message = problem
        raise error(message)
    ids, mask = given.input_ids.long(), given.attention_mask.long()
    types = torch.zeros_like(ids) if token_type_ids is None else given.token_type_ids.long()
    b = Batch(ids, mask, types)
    mod, scales = _stages_program(qm, *ids.shape)
    vm, _ = host_vm(mod, integer_only=qm.integer_encoder)
    args = [ids.numpy(), mask.numpy().astype(np.int32), types.numpy().astype(np.int32)]
    ours = [t.numpy() for t in vm["main"](*map(tvm.runtime.tensor, args))]
    floats, reference = _float_states(qm, b)
    real = mask.numpy().astype(bool)
    names = ["embeddings"] + [f"layer {i}" for i in range(len(ours) - 1)]  # as encoder.layer.N and float_layers
    rows = [_stage(*row, real) for row in zip(names, ours, scales, floats, _hf_states(qm, b))]
    return LayerDiff(qm.source_type, qm.semantics, reference, int(real.sum()), rows)


def write_report(diff: LayerDiff, out_dir: str | Path) -> list[Path]:
    """`layers.json`, `layers.md` and `layers.png` (cosine min / mean and relative max error per stage) in
    `out_dir`, made if missing."""
    context = stamped({"model": diff.model, "semantics": diff.semantics})
    lines = ["# ibert-tvm layers", "", *(f"- {k}: {v}" for k, v in context.items()), "", diff.table()]
    paths = write_results(out_dir, "layers", {"context": context, "diff": asdict(diff)}, "\n".join(lines),
                          lambda path: _plot(diff, path))
    return list(paths.values())


def _plot(diff: LayerDiff, path: Path) -> None:
    """Cosine min and mean per stage (left), max |error| relative to max |reference| (right)."""
    plt = pyplot()
    names, x = [s.name for s in diff.stages], np.arange(len(diff.stages))
    fig, (cos, err) = plt.subplots(1, 2, figsize=(10, 4))
    cos.plot(x, [s.cosine_mean for s in diff.stages], marker="o", label="mean")
    cos.plot(x, [s.cosine_min for s in diff.stages], marker="v", label="min")
    cos.set_ylabel(f"per-token cosine to {diff.reference}", fontsize=8)
    cos.legend()
    err.bar(x, [s.max_rel_error for s in diff.stages])
    err.set_ylabel("max |error| / max |reference|")
    for ax in (cos, err):
        ax.set_xticks(x, names, rotation=30)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{diff.model}, '{diff.semantics}' semantics, {diff.tokens} real tokens", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
