"""ibert-tvm: BERT-family encoders as integer-only programs (the I-BERT scheme) compiled by Apache TVM.

    qm  = ibert_tvm.from_pretrained(model_or_dir, calibration=texts_or_batches)   # or from_onnx(path, ...)
    lib = ibert_tvm.compile(qm, target="llvm")    # "t4", "aarch64", ...; shipped tuning logs applied
    lib.export("model.so")                        # + model.json beside it
    m   = ibert_tvm.load("model.so")              # TVM runtime only
    out = m(input_ids, attention_mask)            # logits or hidden states; m.classify(["a sentence"])
"""

from . import ops
from .artifact import ArtifactError
from .calibration import Batch
from .compiler import CompiledModel, compile, load
from .model import QuantizedModel, UnsupportedModelError, from_onnx, from_pretrained
from .runtime import InputError, IntegerModel
from .targets import UnknownTargetError, resolve_target

__all__ = ["ArtifactError", "Batch", "CompiledModel", "InputError", "IntegerModel", "QuantizedModel",
           "UnknownTargetError", "UnsupportedModelError", "compile", "from_onnx", "from_pretrained", "load", "ops",
           "resolve_target"]
