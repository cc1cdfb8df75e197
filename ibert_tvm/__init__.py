"""ibert-tvm: BERT-family encoders as integer-only programs (the I-BERT scheme) compiled by Apache TVM.

    qm  = ibert_tvm.from_pretrained(model_or_dir, calibration=texts_or_batches)   # or from_onnx(path, ...)
    lib = ibert_tvm.compile(qm, target="llvm")    # "t4", "aarch64", ...; shipped tuning logs applied
    lib.export("model.so")                        # + model.json beside it
    ibert_tvm.tune(qm, "llvm", trials=512, work_dir="logs/")  # then compile(..., tuning_logs="logs/")
    m   = ibert_tvm.load("model.so")              # TVM runtime only
    out = m(input_ids, attention_mask)            # logits or hidden states; m.classify(["a sentence"])
    m.classify([("a premise", "a hypothesis")])   # sentence pairs (token types: m(ids, mask, token_type_ids))
    ibert_tvm.compare_layers(qm, ids, mask)       # where along the encoder the integers drift from the float model
"""

import importlib
from typing import Any

from .threads import configure_threads

configure_threads()  # before any kernel runs: TVM's default uses half the cores on x86 hosts without SMT

#: Public name -> the submodule that defines it. Imported on first use, so that `ibert-tvm --help` and
#: `ibert_tvm.load` do not pay for torch, transformers and TVM's compiler when they do not need them.
_EXPORTS = {"ArtifactError": "artifact", "Batch": "calibration", "CompiledModel": "compiler", "compile": "compiler",
            "load": "runtime", "QuantizedModel": "model", "UnsupportedModelError": "model", "from_onnx": "model",
            "from_pretrained": "model", "InputError": "runtime", "IntegerModel": "runtime",
            "UnknownTargetError": "targets", "resolve_target": "targets", "ops": "ops", "tune": "tuning",
            "TuningLogError": "tuning", "compare_layers": "layer_diff"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ibert_tvm' has no attribute {name!r}")
    module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
    value = module if name == _EXPORTS[name] else getattr(module, name)
    globals()[name] = value
    return value
