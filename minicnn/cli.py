"""The ``minicnn`` command (``python -m minicnn``) and the logic shared by the examples.

    minicnn train --dataset cifar10         # what examples/train_cifar.py runs
    minicnn evaluate runs/cifar10/model.npz
    minicnn gradcheck --model resnet        # numerical check of a whole built-in model
    minicnn info                            # backend, devices, versions, data folder
    minicnn ladder --rungs 1-5              # the lectures' ladder (examples/ladder.py)
    minicnn explain runs/cifar10/model.npz  # saliency and Grad-CAM of test images
    minicnn export runs/cifar10/model.npz model.onnx   # the model as an ONNX file

``train`` with no other flag picks the backend (the GPU if CuPy works), the preset that fits
the device (``minicnn/presets.py``: the one place to tune the examples), downloads the data
if missing, trains with a progress bar, and writes ``history.json``, ``curves.png`` and the
final checkpoint ``model.npz`` to ``--out`` (default ``runs/<dataset>``), all at the end and
only when the run succeeded (``--log csv,tensorboard`` adds logs written as the epochs
end). Every preset value can be overridden by a flag. ``--smoke``
swaps in tiny random data and a tiny model: the whole pipeline in seconds, for tests.

This module parses the command line, checking every value as it goes; what each command
does is in ``minicnn/commands.py``, the presets in ``minicnn/presets.py``.

Errors are one line on stderr, never a traceback (unless ``--debug`` or ``MINICNN_DEBUG=1``):
a bad flag value, data folder or checkpoint file prints ``<prog>: error: argument --epochs:
must be >= 1, got 0`` and exits with status 2, as argparse does (in-process: ``SystemExit``
with code 2); a run that fails (the loss became NaN, a gradient check failed, an unexpected
exception) exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from functools import partial
from typing import Any, NoReturn

from . import commands
from .backend import BackendError
from .commands import BadInput, one_line
from .data import DatasetError
from .functional.precision import PRECISIONS
from .ladder import select_rungs
from .models import MODELS
from .presets import DATASETS, PRESETS, SMOKE_SIZES, TINY_MODEL_KWARGS
from .training.loggers import loggers_from_flag
from .training.loop import TTA_MODES

__all__ = ["main", "run_example", "run_ladder_example", "build_parser", "BadInput",
           "PRESETS", "DATASETS", "TINY_MODEL_KWARGS", "SMOKE_SIZES", "positive"]

_JSON_EXAMPLE = '\'{"widths": [32, 64], "batchnorm": true}\''


# -- errors: one line each ---------------------------------------------------------------------

def _usage_exit(prog: str, message: str) -> NoReturn:
    """Print ``prog: error: message`` as one line and exit with status 2, like argparse.

    The ``SystemExit`` carries the line as its text and 2 as its ``code``.
    """
    line = f"{prog}: error: {one_line(message)}"
    print(line, file=sys.stderr, flush=True)
    exc = SystemExit(line)
    exc.code = 2
    raise exc


def _warning_line(prog: str, message: Any, category: type, *args: Any, **kwargs: Any) -> None:
    """Show a warning as one line, ``prog: warning: message`` (no source line)."""
    print(f"{prog}: warning: {one_line(message)}", file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (no usage block; ``--help`` has it)."""

    def error(self, message: str) -> NoReturn:
        _usage_exit(self.prog, message)


# -- flag types: checked while parsing -------------------------------------------------------

def _int(low: int) -> Any:
    """An integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


def _float(low: float, *, above: bool = False, below: float | None = None) -> Any:
    """A finite number >= ``low`` (> ``low`` with ``above``; < ``below`` when given)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < low or (above and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if above else '>='} {low:g}, "
                                             f"got {text}")
        if below is not None and value >= below:
            raise argparse.ArgumentTypeError(f"must be < {below:g}, got {text}")
        return value
    return parse


def positive(kind: type) -> Any:
    """An argparse type for the examples' own parsers: a finite number of ``kind`` (int or
    float) that must be > 0 (argparse reports a non-number as "invalid int value: 'x'")."""
    def parse(text: str) -> Any:
        value = kind(text)
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg} at character {exc.pos}); "
                                         f"expected an object such as {_JSON_EXAMPLE}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as {_JSON_EXAMPLE}, "
                                         f"got {text!r}")
    return value


def _checkpoint_file(text: str) -> str:
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; expected a checkpoint file "
                                         f"such as runs/cifar10/model.npz")
    return text


def _folder(text: str) -> str:
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a file; expected a folder")
    return text


def _log_flag(text: str) -> str:
    """``--log``: csv, tensorboard, csv,tensorboard or none; tensorboardX installed if named."""
    try:
        loggers_from_flag(text, os.curdir)  # checks the words and the packages; writes nothing
    except (ValueError, ImportError) as exc:
        raise argparse.ArgumentTypeError(one_line(exc)) from None
    return text


def _rungs(text: str) -> str:
    try:
        select_rungs(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("ladder: ")) from None
    return text


# -- the parser ------------------------------------------------------------------------------

def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default=os.environ.get("MINICNN_BACKEND", "auto"),
                   choices=("auto", "numpy", "cupy"),
                   help="numpy (CPU) or cupy (GPU); auto: the GPU if usable (default: "
                        "$MINICNN_BACKEND, else auto)")
    p.add_argument("--debug", action="store_true",
                   help="show the Python traceback of an error (also MINICNN_DEBUG=1)")


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, metavar="DIR", type=_folder,
                   help="data folder (default $MINICNN_DATA or ~/.cache/minicnn)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny random data and a tiny model: the whole pipeline in seconds")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the result")


def _add_train_args(p: argparse.ArgumentParser, dataset: str | None) -> None:
    """The flags of ``minicnn train`` and of the example scripts (``dataset`` fixed)."""
    if dataset is None:
        p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    else:
        p.set_defaults(dataset=dataset)
    _add_common(p)
    _add_data(p)
    p.add_argument("--model", default=None, choices=sorted(MODELS),
                   help="a builder of minicnn.models (default: the preset's)")
    p.add_argument("--model-kwargs", default=None, metavar="JSON", type=_json_object,
                   help=f"builder arguments, e.g. {_JSON_EXAMPLE}")
    p.add_argument("--preset", default=None, choices=("cpu", "gpu"),
                   help="default: the one for the chosen backend")
    p.add_argument("--epochs", type=_int(1), default=None)
    p.add_argument("--batch-size", type=_int(1), default=None)
    p.add_argument("--optimizer", default=None, choices=("sgd", "adam", "adamw"),
                   help="sgd is SGD with Nesterov momentum 0.9")
    p.add_argument("--lr", type=_float(0.0, above=True), default=None,
                   help="learning rate (the peak for the onecycle schedule)")
    p.add_argument("--weight-decay", type=_float(0.0), default=None)
    p.add_argument("--label-smoothing", type=_float(0.0, below=1.0), default=None)
    p.add_argument("--schedule", default=None,
                   choices=("onecycle", "cosine", "step", "plateau", "none"))
    p.add_argument("--augment", default=None, action=argparse.BooleanOptionalAction,
                   help="the preset's augmentation (random crops, and flips except for MNIST; "
                        "the CIFAR-10 CPU preset: translations by up to 2 reflect-padded "
                        "pixels, and flips that alternate epoch by epoch)")
    p.add_argument("--tta", default=None, nargs="?", const="flip", choices=TTA_MODES,
                   help="test-time augmentation of the final test accuracy: flip (alone: "
                        "--tta) averages the logits of each image and its mirror image, "
                        "flip+shift also of both moved by one pixel; none to switch off")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="number format of the GEMMs' inputs while training, with float32 "
                        "weights, optimizer, BatchNorm and loss: fp32 (default), tf32, bf16, "
                        "or fp16 with dynamic loss scaling; on the CPU an exact but slower "
                        "emulation (docs/precision.md)")
    p.add_argument("--seed", type=_int(0), default=0)
    p.add_argument("--out", default=None, metavar="DIR", type=_folder,
                   help="output folder (default runs/<dataset>)")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT", type=_checkpoint_file,
                   help="continue a run from its checkpoint (same flags)")
    p.add_argument("--checkpoint-every", action="store_true",
                   help="also save OUT/last.npz after every epoch (resumable)")
    p.add_argument("--log", default="none", metavar="LOGGERS", type=_log_flag,
                   help="write logs into --out while training: csv (OUT/log.csv, a row per "
                        "epoch), tensorboard (OUT/tensorboard/; pip install "
                        "'minicnn[tensorboard]'), csv,tensorboard, or none (default)")
    p.add_argument("--no-plots", action="store_true", help="skip curves.png and confusion.png")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training over the ranks of `mpiexec -n N` (MPI; NCCL "
                        "with --backend cupy): --batch-size is per rank, --lr is not scaled; "
                        "needs pip install -e '.[mpi]' (docs/distributed.md)")
    p.add_argument("--threads", type=_int(1), default=None,
                   help="data-parallel training over N threads of this process, one shard of "
                        "every batch each, the cores shared out (NumPy): --batch-size is per "
                        "thread (default: the preset's; the CIFAR-10 CPU preset: 2 x 32; "
                        "docs/distributed.md)")
    p.add_argument("--sync-bn", default=None, action=argparse.BooleanOptionalAction,
                   help="with --threads or --distributed: BatchNorm statistics over the "
                        "samples of all ranks (SyncBatchNorm2d), not each rank's shard "
                        "(default: the preset's; docs/distributed.md)")
    p.add_argument("--validation-freq", type=_int(1), default=None, metavar="N",
                   help="validate on the test set after every N-th epoch and after the last "
                        "(default: the preset's, 1: after each; Keras' validation_freq)")
    p.add_argument("--no-progress", action="store_true",
                   help="one line per epoch, no progress bar (the default when the output "
                        "is not a terminal)")


def _add_ladder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rungs", default="all", type=_rungs,
                   help="which rungs: all (default), 1-5, 3,7,12 (12 = 12a-12g), 12c, mnist")
    p.add_argument("--budget", default=None, choices=("quick", "full", "smoke"),
                   help="quick: every rung on 2 CPU cores in under an hour (data subset, "
                        "1/4 widths); full: the lecture's sizes (GPU); smoke: seconds "
                        "(default: full on the GPU, quick on the CPU)")
    p.add_argument("--out", default="runs/ladder", metavar="DIR", type=_folder,
                   help="writes DIR/ladder.md, DIR/ladder.json and DIR/img/ (default "
                        "runs/ladder); results already there (same budget) are kept")
    p.add_argument("--seed", type=_int(0), default=0)
    _add_common(p)
    p.add_argument("--data", default=None, metavar="DIR", type=_folder,
                   help="data folder (default $MINICNN_DATA or ~/.cache/minicnn)")
    p.add_argument("--smoke", action="store_true", help="same as --budget smoke")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-epoch lines")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rewrite DIR/ladder.md and the figures from "
                        "DIR/ladder.json")


def _add_explain_parser(sub: Any) -> None:
    """``minicnn explain MODEL.npz``: saliency and Grad-CAM of a few test images per class."""
    x = sub.add_parser("explain", help="saliency and Grad-CAM maps of a few test images of "
                                       "each class, as one picture (docs/explain.md)")
    x.add_argument("checkpoint", type=_checkpoint_file,
                   help="a checkpoint of minicnn train, such as runs/cifar10/model.npz")
    x.add_argument("--out", default=None, metavar="DIR", type=_folder,
                   help="writes DIR/explain.png (default: the checkpoint's folder)")
    x.add_argument("--per-class", type=_int(1), default=2, metavar="K",
                   help="test images of each class (the first K of the test set; default 2)")
    x.add_argument("--method", default="both", choices=("gradcam", "saliency", "both"),
                   help="which maps to draw beside each image (default both)")
    x.add_argument("--layer", default=None, metavar="NAME",
                   help="Grad-CAM's layer, a dotted name of model.named_modules() such as "
                        "layers.4 (default: the last convolution with a spatial output)")
    x.set_defaults(seed=0)  # --smoke: the test images of train --smoke's default seed
    _add_common(x)
    _add_data(x)


def _input_shape(text: str) -> tuple[int, ...]:
    """``3,32,32`` -> (3, 32, 32): one sample's shape, positive integers."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(f"expected C,H,W such as 3,32,32 (positive integers, "
                                         f"without the batch axis), got {text!r}")
    return shape


def _onnx_file(text: str) -> str:
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; expected a file name such as "
                                         f"model.onnx")
    return text


def _add_export_parser(sub: Any) -> None:
    """``minicnn export MODEL.npz OUT.onnx``: the checkpoint's model as an ONNX file."""
    x = sub.add_parser("export", help="write a checkpoint's model as an ONNX file "
                                      "(docs/interop.md)")
    x.add_argument("checkpoint", type=_checkpoint_file)
    x.add_argument("onnx_file", metavar="OUT.onnx", type=_onnx_file,
                   help="the ONNX file to write (replaced if it exists)")
    x.add_argument("--input-shape", default=None, metavar="C,H,W", type=_input_shape,
                   help="one input's shape without the batch axis (default: the images of "
                        "the dataset the checkpoint was trained on)")
    x.add_argument("--opset", type=_int(17), default=17,
                   help="the ONNX opset (default 17; from 20 GELU is ONNX's Gelu)")
    _add_common(x)


def build_parser(dataset: str | None = None) -> argparse.ArgumentParser:
    """The ``minicnn`` parser; with ``dataset`` set, the parser of an example script."""
    if dataset is not None:
        p = _Parser(prog=f"train_{'cifar' if dataset == 'cifar10' else dataset}.py",
                    description=f"Train a CNN on {dataset} with minicnn and report the test "
                                f"accuracy.")
        _add_train_args(p, dataset)
        p.set_defaults(command="train", error_prog=p.prog)
        return p
    p = _Parser(prog="minicnn", description="minicnn: CNNs from scratch.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model on MNIST, Fashion-MNIST or CIFAR-10")
    _add_train_args(t, None)
    e = sub.add_parser("evaluate", help="test accuracy of a checkpoint")
    e.add_argument("checkpoint", type=_checkpoint_file)
    e.add_argument("--dataset", default=None, choices=sorted(DATASETS),
                   help="default: the one stored in the checkpoint")
    e.add_argument("--batch-size", type=_int(1), default=256)
    e.add_argument("--tta", default=None, nargs="?", const="flip", choices=TTA_MODES,
                   help="test-time augmentation as in train (default: the one the "
                        "checkpoint's run used)")
    e.set_defaults(seed=0)  # --smoke: the test images of train --smoke's default seed
    _add_common(e)
    _add_data(e)
    g = sub.add_parser("gradcheck", help="numerical gradient check of a built-in model")
    g.add_argument("--model", default="all", choices=["all", *sorted(MODELS)])
    g.add_argument("--model-kwargs", default=None, metavar="JSON", type=_json_object)
    g.add_argument("--full", action="store_true",
                   help="the builder's default (full-size) arguments instead of a tiny model")
    g.add_argument("--batch", type=_int(1), default=2)
    g.add_argument("--image-size", type=_int(1), default=8)
    g.add_argument("--entries", type=_int(1), default=6, help="entries checked per tensor")
    g.add_argument("--tol", type=_float(0.0, above=True), default=1e-6)
    g.add_argument("--seed", type=_int(0), default=0)
    g.add_argument("--backend", default="numpy", choices=("numpy", "cupy"))
    g.add_argument("--debug", action="store_true", help="show the traceback of an error")
    g.add_argument("-v", "--verbose", action="store_true", help="the error of every tensor")
    i = sub.add_parser("info", help="backend, devices, versions, data folder")
    i.add_argument("--debug", action="store_true", help="show the traceback of an error")
    ladder = sub.add_parser("ladder", help="the lectures' training ladder, with a report "
                                           "beside the lecture's numbers")
    _add_ladder_args(ladder)
    _add_explain_parser(sub)
    _add_export_parser(sub)
    for name, sp in sub.choices.items():
        sp.set_defaults(error_prog=sp.prog, command=name)
    return p


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; turn what goes wrong into one line and an exit status."""
    if getattr(args, "out", "unset") is None and hasattr(args, "dataset"):
        args.out = os.path.join("runs", args.dataset + ("-smoke" if args.smoke else ""))
    handler = getattr(commands, f"cmd_{args.command}")
    debug = args.debug or os.environ.get("MINICNN_DEBUG", "") not in ("", "0")
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = partial(_warning_line, args.error_prog)
            return handler(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (BadInput, DatasetError, BackendError) as exc:
        if debug:
            raise
        # a DatasetError names its file and what to do; a BackendError how to install CuPy
        _usage_exit(args.error_prog, str(exc))
    except Exception as exc:
        if debug:
            raise
        print(f"{args.error_prog}: error: {type(exc).__name__}: {one_line(exc)} (run again "
              f"with --debug for the traceback)", file=sys.stderr, flush=True)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``minicnn`` command: the exit status of a run (0, 1, 130).

    A usage error (a bad flag value, data folder or checkpoint) prints one line and raises
    ``SystemExit`` with code 2, as argparse does; so does ``--help``, with code 0.
    """
    args = build_parser().parse_args(argv)
    args.argv = argv  # for the command line the ladder's report quotes
    return _run(args)


def run_example(dataset: str, argv: list[str] | None = None) -> int:
    """What ``examples/train_<dataset>.py`` runs: ``minicnn train --dataset <dataset>``."""
    return _run(build_parser(dataset).parse_args(argv))


def run_ladder_example(argv: list[str] | None = None) -> int:
    """What ``examples/ladder.py`` runs: ``minicnn ladder``."""
    p = _Parser(prog="ladder.py", description=(
        "The lectures' CNN-training ladder: every rung, with a report beside the lecture's "
        "numbers."))
    _add_ladder_args(p)
    p.set_defaults(command="ladder", error_prog=p.prog)
    args = p.parse_args(argv)
    args.argv, args.prog = argv, "python examples/ladder.py"
    return _run(args)
