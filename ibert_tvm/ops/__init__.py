"""The I-BERT integer operators as first-class Relax operators (`ibert.*`), one file each.

Each file holds the op's registration, its type rule, its TE compute (lowered by `relax.transform.LegalizeOps`)
and its exact integer reference. Build graphs with the functions below; each returns a `relax.Call`.
"""

from . import embedding as _embedding
from . import int_gelu as _int_gelu
from . import int_layernorm as _int_layernorm
from . import int_softmax as _int_softmax
from . import linear as _linear
from . import lookup as _lookup
from . import matmul as _matmul
from . import requantize as _requantize
from .embedding import embedding
from .int_gelu import int_gelu
from .int_layernorm import int_layernorm
from .int_softmax import int_softmax
from .linear import linear
from .lookup import lookup
from .matmul import matmul
from .registry import IBertOpError
from .requantize import requantize, requantize_dtype

#: op name -> its module (registration, type rule, TE compute, `reference`).
OPERATORS = {m.OP: m for m in (_embedding, _int_gelu, _int_layernorm, _int_softmax, _linear, _lookup, _matmul, _requantize)}

__all__ = ["OPERATORS", "IBertOpError", "embedding", "int_gelu", "int_layernorm", "int_softmax", "linear", "lookup",
           "matmul", "requantize", "requantize_dtype"]
