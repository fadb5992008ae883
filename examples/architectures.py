"""The architecture timeline, side by side: parameters, FLOPs, step time and CIFAR-10 accuracy.

One row per architecture of ``minicnn.models.TIMELINE`` (LeNet-5 ... ConvNeXt), each built
in its CIFAR-10-sized configuration (3 x 32 x 32 input, 10 classes):

- parameters: ``sum(p.size)`` over the model's parameters;
- FLOPs per image: the multiply-adds (MACs) of every ``Conv2d``, ``ConvTranspose2d`` and
  ``Linear``, counted by walking the model's layers during one forward pass of a single
  image (``count_macs``), reported as FLOPs = 2 x MACs (one multiply + one add). Biases,
  normalisations, activations, pooling and additions are not counted (they are a few per
  cent at most);
- CPU training step time: forward + loss + backward + optimizer step on one batch
  (``--batch-size``, 64), the median of ``TIMED_STEPS`` steps after ``WARMUP_STEPS``
  warm-up steps, on a separate copy of the model (the trained one does not see them);
- CIFAR-10 test accuracy after the same wall-clock training budget for every model
  (``--budget-minutes``), with one recipe for all (``RECIPE``): Adam, learning rate 1e-3
  decaying linearly to 0 over the budget's time, batch 64, random crops (zero padding 4) and
  horizontal flips, inputs standardised with the training set's per-channel mean and std.
  Evaluated on all 10,000 test images, in eval mode (BatchNorm's running statistics).

    python examples/architectures.py --budget-minutes 2            # the full table
    python examples/architectures.py --models lenet5,resnet --budget-minutes 0.5
    python examples/architectures.py --help                        # every flag

Writes architectures.md (the table), architectures.json (every number, the machine) and,
when matplotlib is installed, accuracy_vs_params.png to ``--out`` (default
runs/architectures). The data come from ``minicnn.data.load_cifar10`` ($MINICNN_DATA or
``--data``).
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

try:
    import minicnn  # noqa: F401
except ImportError:  # a plain checkout, not pip-installed: use the repository next door
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import minicnn as mc
from minicnn import layers as L
from minicnn import presets
from minicnn.cli import positive

WARMUP_STEPS, TIMED_STEPS = 2, 5
LR = 1e-3
RECIPE = ("Adam (lr 1e-3, no weight decay), learning rate decaying linearly to 0 over the "
          "wall-clock budget, random crops (zero padding 4) + horizontal flips, inputs "
          "standardised per channel")

# Year and the idea each architecture introduced (from each builder's docstring and paper).
IDEAS = {
    "lenet5": (1998, "LeNet-5", "convolutions + subsampling + dense layers, trained end to "
               "end by backpropagation"),
    "alexnet": (2012, "AlexNet", "a deep CNN on GPUs: ReLU, dropout, overlapping max pooling, "
                "data augmentation"),
    "nin": (2013, "Network in Network", "mlpconv (1x1 convolutions = a per-pixel MLP) and "
            "global average pooling instead of dense layers"),
    "vgg16": (2014, "VGG16", "depth from stacks of small 3x3 convolutions"),
    "inception": (2014, "GoogLeNet (Inception v1)", "parallel 1x1 / 3x3 / 5x5 / pool "
                  "branches concatenated, 1x1 bottlenecks to cut the cost"),
    "resnet": (2015, "ResNet-20", "residual blocks with identity shortcuts (y = x + F(x)) "
               "make very deep nets trainable"),
    "unet": (2015, "U-Net", "encoder-decoder with long skip connections by concatenation "
             "(here: global-average-pooled head for classification)"),
    "squeezenet": (2016, "SqueezeNet", "Fire modules (1x1 squeeze, 1x1 + 3x3 expand): "
                   "AlexNet accuracy with 50x fewer parameters"),
    "densenet": (2016, "DenseNet-BC-40", "dense connectivity: each layer gets every earlier "
                 "layer's features by concatenation (bottleneck + compression)"),
    "mobilenet_v1": (2017, "MobileNet v1 (0.5x)", "depthwise separable convolutions "
                     "(depthwise 3x3 + pointwise 1x1)"),
    "mobilenet_v2": (2018, "MobileNet v2 (0.5x)", "inverted residuals with linear "
                     "bottlenecks"),
    "efficientnet": (2019, "EfficientNet-B0-like", "MBConv with squeeze-and-excitation and "
                     "SiLU; compound scaling of width, depth and resolution"),
    "convnext": (2022, "ConvNeXt (small, CIFAR)", "a ResNet modernised like a Transformer: "
                 "patchify stem, depthwise 7x7, inverted bottleneck, LayerNorm, GELU"),
}


def cifar_kwargs(name):
    """The CIFAR-10-sized arguments of a timeline builder (as ``minicnn train --model``)."""
    extra = {"head": "classification"} if name == "unet" else {}
    return presets.model_kwargs(name, "cifar10", extra)


# -- counting ----------------------------------------------------------------------------------

def layer_macs(layer, x_shape, y_shape):
    """Multiply-adds of one layer for one image, from its input and output shapes (batch
    axis first), or 0 for a layer that is not a Conv2d, ConvTranspose2d or Linear.

    - Conv2d: every output value is a dot product of C_in/groups x KH x KW inputs:
      MACs = C_out x H_out x W_out x (C_in / groups) x KH x KW;
    - ConvTranspose2d: every input value is scattered to C_out/groups x KH x KW outputs:
      MACs = C_in x H_in x W_in x (C_out / groups) x KH x KW;
    - Linear: in_features x out_features per row (x the non-feature axes past the batch).
    """
    if isinstance(layer, L.ConvTranspose2d):
        kh, kw = layer.kernel_size
        return (math.prod(x_shape[1:]) * (layer.out_channels // layer.groups) * kh * kw)
    if isinstance(layer, L.Conv2d):
        kh, kw = layer.kernel_size
        return math.prod(y_shape[1:]) * (layer.in_channels // layer.groups) * kh * kw
    if isinstance(layer, L.Linear):
        return math.prod(x_shape[1:-1]) * layer.in_features * layer.out_features
    return 0


def count_macs(model, input_shape):
    """The multiply-adds of ``model`` for one image of ``input_shape`` (C, H, W), and a
    per-type breakdown: one forward pass in eval mode, each Conv2d / ConvTranspose2d /
    Linear reporting its shapes. A layer used twice is counted twice."""
    counted = (L.Conv2d, L.ConvTranspose2d, L.Linear)
    by_type = {}
    hooked = [m for m in model.modules() if isinstance(m, counted)]

    def wrap(layer):
        forward = layer.forward

        def counting_forward(x, *args, **kwargs):
            y = forward(x, *args, **kwargs)
            name = type(layer).__name__
            by_type[name] = by_type.get(name, 0) + layer_macs(layer, x.shape, y.shape)
            return y
        return counting_forward

    for layer in hooked:
        layer.forward = wrap(layer)   # an instance attribute: shadows the class's method
    try:
        with model.mode(training=False):
            model.forward(mc.backend.get_xp().zeros((1, *input_shape), dtype=np.float32))
    finally:
        for layer in hooked:
            del layer.forward
    return sum(by_type.values()), by_type


def num_parameters(model):
    return sum(int(p.data.size) for p in model.parameters())


# -- training ----------------------------------------------------------------------------------

def train_step(model, loss_fn, optimizer, x, y):
    logits = model.forward(x)
    loss = loss_fn.forward(logits, y)
    model.backward(loss_fn.backward())
    optimizer.step()
    return loss, logits


def step_time(name, x, y, seed):
    """Median seconds of one training step on the batch (x, y), on a fresh model."""
    mc.init.set_seed(seed)
    model = mc.models.build(name, cifar_kwargs(name))
    model.train()
    loss_fn, optimizer = mc.losses.CrossEntropyLoss(), mc.optim.Adam(model.parameters(), lr=LR)
    times = []
    for i in range(WARMUP_STEPS + TIMED_STEPS):
        start = time.perf_counter()
        loss, _ = train_step(model, loss_fn, optimizer, x, y)
        float(loss)   # waits for the device on CuPy
        if i >= WARMUP_STEPS:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_for(name, loader, budget_s, seed):
    """Train a fresh ``name`` for ``budget_s`` seconds of wall-clock time (data loading
    included, the last step allowed to finish). Returns the model and what happened."""
    mc.init.set_seed(seed)
    model = mc.models.build(name, cifar_kwargs(name))
    model.train()
    loss_fn, optimizer = mc.losses.CrossEntropyLoss(), mc.optim.Adam(model.parameters(), lr=LR)
    steps = images = 0
    losses = []
    start = time.perf_counter()
    elapsed = 0.0
    while elapsed < budget_s:
        for x, y in loader:
            optimizer.lr = LR * max(0.0, 1.0 - elapsed / budget_s)
            loss, _ = train_step(model, loss_fn, optimizer, x, y)
            losses.append(float(loss))
            steps += 1
            images += len(y)
            elapsed = time.perf_counter() - start
            if elapsed >= budget_s:
                break
    tail = losses[-min(len(losses), 20):]
    return model, {"steps": steps, "images_seen": images, "train_seconds": elapsed,
                   "final_train_loss": sum(tail) / len(tail)}


def evaluate(model, loader):
    correct = seen = 0
    with model.mode(training=False):
        for x, y in loader:
            correct += int((model.forward(x).argmax(axis=1) == y).sum())
            seen += len(y)
    return correct / seen, seen


# -- reporting ---------------------------------------------------------------------------------

def machine_info():
    info = {"python": platform.python_version(), "numpy": np.__version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "backend": mc.backend.get_backend()}
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415 (optional)
        info["threadpools"] = [{k: d.get(k) for k in ("internal_api", "version",
                                                       "num_threads", "architecture")}
                               for d in threadpool_info()]
    except ImportError:
        pass
    return info


def markdown_table(rows, budget_minutes, batch_size, train_images, test_images):
    minutes = f"{budget_minutes:g} min"
    head = (f"| year | architecture | idea it introduced | parameters | MFLOPs / image | "
            f"CPU step, batch {batch_size} (ms) | steps in {minutes} | epochs | "
            f"test accuracy after {minutes} CPU |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        epochs = r["images_seen"] / train_images
        lines.append(f"| {r['year']} | {r['title']} (`{r['model']}`) | {r['idea']} | "
                     f"{r['parameters']:,} | {r['flops'] / 1e6:,.1f} | "
                     f"{r['step_ms']:,.0f} | {r['steps']:,} | {epochs:.2f} | "
                     f"{r['test_accuracy']:.2%} |")
    lines += ["", f"FLOPs = 2 x multiply-adds of the Conv2d / ConvTranspose2d / Linear layers, "
              f"per 3x32x32 image. Training: {train_images:,} images, {minutes} of wall-clock "
              f"training per model, batch {batch_size}, {RECIPE}. Accuracy on "
              f"{test_images:,} test images."]
    return "\n".join(lines) + "\n"


def plot(rows, path, budget_minutes):
    import matplotlib  # noqa: PLC0415 (optional dependency)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, key, label in ((axes[0], "parameters", "parameters (log scale)"),
                           (axes[1], "step_ms", "CPU training step, batch 64 (ms, log scale)")):
        for r in rows:
            ax.scatter(r[key], 100 * r["test_accuracy"], color="tab:blue")
            ax.annotate(f"{r['model']} ({r['year']})", (r[key], 100 * r["test_accuracy"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("CIFAR-10 test accuracy (%)")
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"The architecture timeline after {budget_minutes:g} min of CPU training each")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the command line --------------------------------------------------------------------------

def model_list(text):
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in mc.models.TIMELINE]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown model(s) {', '.join(unknown) or repr(text)}; expected a comma-separated "
            f"subset of {','.join(mc.models.TIMELINE)}")
    return names


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="data folder (default $MINICNN_DATA)")
    parser.add_argument("--budget-minutes", type=positive(float), default=2.0,
                        help="wall-clock training minutes per model (the same for all)")
    parser.add_argument("--models", type=model_list, default=list(mc.models.TIMELINE),
                        help="comma-separated subset of the timeline (default: all)")
    parser.add_argument("--batch-size", type=positive(int), default=64)
    parser.add_argument("--train-size", type=positive(int), default=None,
                        help="train on this many images, drawn at random (seeded) from the "
                             "50,000 (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="numpy", choices=("auto", "numpy", "cupy"))
    parser.add_argument("--out", default="runs/architectures", help="folder for the results")
    parser.add_argument("--no-plots", action="store_true", help="no accuracy_vs_params.png")
    # A mistake is one line, as in the minicnn command (argparse would add its usage block).
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")
    args = parser.parse_args(argv)
    if Path(args.out).is_file():
        parser.error(f"argument --out: {args.out} is a file, not a folder")
    return parser, args


def main(argv=None):
    parser, args = parse_args(argv)
    try:
        mc.set_backend(args.backend)
    except mc.backend.BackendError as exc:  # its message says how to install CuPy
        parser.error(f"argument --backend: {' '.join(str(exc).split())}")
    try:
        (x_train, y_train), (x_test, y_test) = mc.data.load_cifar10(root=args.data, quiet=True)
    except mc.data.DatasetError as exc:  # names the file, where to put it, what to do
        parser.error(" ".join(str(exc).split()))
    if args.train_size is not None:
        if args.train_size > len(x_train):
            parser.error(f"argument --train-size: at most {len(x_train)}, got "
                         f"{args.train_size}")
        pick = np.random.default_rng(args.seed).permutation(len(x_train))[:args.train_size]
        x_train, y_train = x_train[pick], y_train[pick]
    mean, std = mc.data.channel_stats(x_train)
    augment = presets.augmentation("cifar10", "crop+flip")
    train_loader = mc.data.DataLoader(x_train, y_train, args.batch_size, shuffle=True,
                                      seed=args.seed, transform=augment, normalize=(mean, std))
    test_loader = mc.data.DataLoader(x_test, y_test, args.batch_size, shuffle=False,
                                     normalize=(mean, std))
    timing_x, timing_y = next(iter(mc.data.DataLoader(x_train, y_train, args.batch_size,
                                                      shuffle=False, normalize=(mean, std))))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget_s = 60.0 * args.budget_minutes
    machine = machine_info()
    print(f"{len(args.models)} models, {args.budget_minutes:g} min of training each, batch "
          f"{args.batch_size}, {len(x_train):,} training and {len(x_test):,} test images; "
          f"{machine['cpu']}, {machine['cpu_count']} CPUs", flush=True)

    rows = []
    for name in args.models:
        year, title, idea = IDEAS[name]
        model = mc.models.build(name, cifar_kwargs(name))
        macs, by_type = count_macs(model, (3, 32, 32))
        row = {"model": name, "year": year, "title": title, "idea": idea,
               "config": model.config, "parameters": num_parameters(model), "macs": macs,
               "flops": 2 * macs, "macs_by_type": by_type}
        row["step_ms"] = 1000 * step_time(name, timing_x, timing_y, args.seed)
        trained, stats = train_for(name, train_loader, budget_s, args.seed)
        row.update(stats)
        start = time.perf_counter()
        row["test_accuracy"], row["test_images"] = evaluate(trained, test_loader)
        row["eval_seconds"] = time.perf_counter() - start
        rows.append(row)
        print(f"{name}: {row['parameters']:,} parameters, {row['flops'] / 1e6:,.1f} MFLOPs, "
              f"step {row['step_ms']:,.0f} ms, {row['steps']} steps in "
              f"{row['train_seconds']:.0f} s, loss {row['final_train_loss']:.3f}, "
              f"test accuracy {row['test_accuracy']:.2%} (eval {row['eval_seconds']:.0f} s)",
              flush=True)
        # Written after every model, so that a run cut short keeps its finished rows.
        table = markdown_table(rows, args.budget_minutes, args.batch_size, len(x_train),
                               len(x_test))
        (out / "architectures.md").write_text(table)
        (out / "architectures.json").write_text(json.dumps(
            {"budget_minutes": args.budget_minutes, "batch_size": args.batch_size,
             "train_images": len(x_train), "test_images": len(x_test), "seed": args.seed,
             "recipe": RECIPE, "flops_convention": "FLOPs = 2 x multiply-adds of Conv2d, "
             "ConvTranspose2d and Linear layers, per image", "machine": machine,
             "command": " ".join(["python", "examples/architectures.py",
                                  *(sys.argv[1:] if argv is None else argv)]),
             "rows": rows}, indent=2))
    print()
    print(table, end="")
    if not args.no_plots and mc.plot.matplotlib_available():
        plot(rows, out / "accuracy_vs_params.png", args.budget_minutes)
        print(f"plot: {out / 'accuracy_vs_params.png'}")
    print(f"wrote {out / 'architectures.md'} and {out / 'architectures.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
