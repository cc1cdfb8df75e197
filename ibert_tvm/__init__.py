"""ibert-tvm: BERT-family encoders as integer-only programs (the I-BERT scheme) compiled by Apache TVM.

    qm = ibert_tvm.from_pretrained(model_or_dir, calibration=texts_or_batches)   # or from_onnx(path, ...)
    mod = qm.program(batch, seq)          # Relax: int64 ids, int32 mask -> int8 hidden states
"""

from . import ops
from .calibration import Batch
from .model import QuantizedModel, UnsupportedModelError, from_onnx, from_pretrained

__all__ = ["Batch", "QuantizedModel", "UnsupportedModelError", "from_onnx", "from_pretrained", "ops"]
