"""Activation-range calibration on sample inputs: HF's own running min/max, or a percentile or MSE variant.

Ranges live in the `QuantAct` buffers of HF's `IBertModel` (quant_mode=True). Train-mode forward passes make
every QuantAct update its EMA of the batch min/max (momentum 0.95, spec §1.5) — the I-BERT reference's
calibration, unchanged. The other methods replace each batch's min/max, merged by the same EMA: "percentile" by
its lower/upper percentile, "mse" by the min/max scaled down to the clipping threshold that minimizes the
batch's squared quantization error (per-tensor; the IntSoftmax's internal 16-bit range keeps min/max: its
maximum is exact by construction).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm
from transformers.models.ibert.quant_modules import QuantAct

from .texts import Text, tokenizer_args

MOMENTUM = 0.95
METHODS = ("minmax", "percentile", "mse")
#: the MSE search's histogram of |x|, its smallest threshold in bins (a sixteenth of the batch's max |x|), and
#: the stride of its coarse pass (every edge within one stride of the coarse pass's best is then tried)
MSE_BINS, MSE_FIRST_BIN, MSE_COARSE_STEP = 2048, 128, 16


@dataclass
class Batch:
    """Token ids and attention mask (int64 [B, L] tensors), and the segment of each token for sentence pairs
    (`token_type_ids`: 0 for the first text, 1 for the second; None: all 0)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None = None


def position_ids(model_type: str, input_ids: torch.Tensor, pad: int) -> torch.Tensor:
    """BERT counts positions from 0; RoBERTa / IBert from pad + 1 over real tokens (pad stays pad)."""
    if model_type == "bert":
        return torch.arange(input_ids.shape[1]).expand(input_ids.shape)
    real = (input_ids != pad).long()
    return torch.cumsum(real, dim=1) * real + pad


def batches_from_texts(texts: Sequence[Text], tokenizer, batch_size: int = 8,
                       max_length: int = 128) -> list[Batch]:
    """Tokenize sentences, or sentence pairs (2-tuples, tokenized as the model's pair input with their segments
    in `token_type_ids`), with the model's tokenizer into padded batches."""
    if isinstance(texts, str):
        raise TypeError("calibration texts must be a sequence of strings, not one string")
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(*tokenizer_args(texts[start:start + batch_size]), padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
        out.append(Batch(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids")))
    return out


def quant_acts(model: nn.Module) -> dict[str, QuantAct]:
    """`model`'s QuantActs by module name (the ranges calibration records)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantAct)}


@contextmanager
def finite_ranges(acts: dict[str, QuantAct]) -> Iterator[None]:
    """A ValueError naming the QuantAct (of `acts`, by name) where calibration inside the block produces NaN
    activations (HF's QuantAct asserts "NaN detected") or leaves a range that is not finite."""
    last = {}  # the QuantAct entered last: the one whose min/max asserts
    hooks = [act.register_forward_pre_hook(lambda _module, _args, name=name: last.update(name=name))
             for name, act in acts.items()]
    try:
        yield
    except AssertionError as err:
        if "NaN detected" not in str(err):
            raise
        raise ValueError(f"calibration produced non-finite (NaN) activations, first at the input of QuantAct "
                         f"{last.get('name')} (degenerate weights: all zero, or too large?)") from None
    finally:
        for hook in hooks:
            hook.remove()
    for name, act in acts.items():
        if not (torch.isfinite(act.x_min).all() and torch.isfinite(act.x_max).all()):
            raise ValueError(f"calibration produced non-finite activations at {name}: its range is "
                             f"[{float(act.x_min.min())}, {float(act.x_max.max())}] (degenerate weights: too large?)")


def mse_threshold(x: np.ndarray, bits: int) -> float:
    """The clipping threshold t (at most max |x|) whose symmetric `bits`-bit quantization of `x` (scale t / n,
    n = 2^(bits-1) - 1, as HF's QuantAct) has the least squared error, searched over the edges of a histogram
    of |x| from its 128th bin up (every 16th, then every one around the best of those): the histogram's bin
    centers stand for the values."""
    magnitude = np.abs(x)
    top = float(magnitude.max(initial=0.0))
    if top == 0.0:
        return 0.0
    counts, edges = np.histogram(magnitude, bins=MSE_BINS, range=(0.0, top))
    centers = (edges[:-1] + edges[1:]) / 2
    n = 2 ** (bits - 1) - 1

    def best(first: int, last: int, step: int) -> int:
        """The edge index in range(first, last + 1, step) of least error."""
        index = np.arange(first, last + 1, step)
        scale = edges[index][:, None] / n
        quantized = np.minimum(np.round(centers[None, :] / scale), n) * scale
        return int(index[np.argmin(((quantized - centers[None, :]) ** 2 * counts[None, :]).sum(axis=1))])

    coarse = best(MSE_FIRST_BIN, MSE_BINS, MSE_COARSE_STEP)  # then every edge around it: 12x fewer than all
    return float(edges[best(max(MSE_FIRST_BIN, coarse - MSE_COARSE_STEP), min(MSE_BINS, coarse + MSE_COARSE_STEP), 1)])


class _BatchRanges:
    """Forward pre-hooks recording each QuantAct's per-batch range (a percentile range, or the min/max scaled to
    the batch's MSE threshold), merged by HF's EMA rule."""

    def __init__(self, acts: list[QuantAct], method: str, percentile: float):
        self.method, self.low, self.high = method, 100.0 - percentile, percentile
        self.ranges: dict[QuantAct, tuple[float, float]] = {}
        self.hooks = [a.register_forward_pre_hook(self._record, with_kwargs=True) for a in acts]

    def _batch_range(self, x: np.ndarray, bits: int) -> tuple[float, float]:
        if self.method == "percentile":
            lo, hi = np.percentile(x, [self.low, self.high])
            return float(lo), float(hi)
        lo, hi = float(x.min()), float(x.max())
        top = max(-lo, hi)
        if not 0 < top < np.inf:  # (NaN too) left as min/max, for `finite_ranges` to name the QuantAct
            return lo, hi
        ratio = mse_threshold(x, bits) / top
        return lo * ratio, hi * ratio

    def _record(self, module: QuantAct, args: tuple, kwargs: dict) -> None:
        x = args[0]
        identity = kwargs.get("identity", args[2] if len(args) > 2 else None)
        x_act = (x if identity is None else x + identity).detach().float().flatten().numpy()
        lo, hi = self._batch_range(x_act, module.activation_bit)
        if module in self.ranges:
            old_lo, old_hi = self.ranges[module]
            lo, hi = MOMENTUM * old_lo + (1 - MOMENTUM) * lo, MOMENTUM * old_hi + (1 - MOMENTUM) * hi
        self.ranges[module] = (lo, hi)

    def apply(self) -> None:
        for hook in self.hooks:
            hook.remove()
        for module, (lo, hi) in self.ranges.items():
            module.x_min.fill_(lo)
            module.x_max.fill_(hi)


def calibrate(qmodel, model_type: str, batches: Iterable[Batch], method: str = "minmax",
              percentile: float = 99.99) -> None:
    """Run the batches through `qmodel` in train mode (dropout is 0) so its QuantActs record ranges; a ValueError
    naming the QuantAct where they are not finite."""
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {METHODS}, got {method!r}")
    if method == "percentile" and not 90 <= percentile <= 100:  # (below, a tenth of each activation is clipped)
        raise ValueError(f"percentile must lie in [90, 100], got {percentile}")
    batches = list(batches)
    if not batches:
        raise ValueError("calibration needs at least one batch of inputs")
    recorder = None
    if method != "minmax":
        softmax_acts = {m.act for m in qmodel.modules() if hasattr(m, "act") and isinstance(m.act, QuantAct)}
        acts = [m for m in qmodel.modules() if isinstance(m, QuantAct) and m not in softmax_acts]
        recorder = _BatchRanges(acts, method, percentile)
    qmodel.train()
    with torch.no_grad(), finite_ranges(quant_acts(qmodel)):
        for batch in tqdm(batches, desc="calibrating", unit="batch"):
            qmodel(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   token_type_ids=batch.token_type_ids,
                   position_ids=position_ids(model_type, batch.input_ids, qmodel.config.pad_token_id))
        if recorder is not None:
            recorder.apply()
    qmodel.eval()
