"""The training loop written out by hand, for students: Fashion-MNIST, no ``fit``.

Everything ``minicnn.training.fit`` does for you, in plain sight: batches, the four lines
of a training step, the running loss and accuracy, and a test pass in eval mode.

    python examples/manual_loop.py                  # 3 epochs, a few minutes on a CPU
    python examples/manual_loop.py --data ../shared/datasets --epochs 5
    python examples/manual_loop.py --smoke          # tiny random data: seconds
"""

import argparse
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
from minicnn.cli import positive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="data folder (default $MINICNN_DATA)")
    parser.add_argument("--epochs", type=positive(int), default=3)
    parser.add_argument("--batch-size", type=positive(int), default=128)
    parser.add_argument("--lr", type=positive(float), default=0.05)
    parser.add_argument("--backend", default="auto", choices=("auto", "numpy", "cupy"))
    parser.add_argument("--smoke", action="store_true", help="tiny random data, 1 epoch")
    # A mistake is one line, as in the minicnn command (argparse would add its usage block).
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")
    args = parser.parse_args()

    try:
        mc.set_backend(args.backend)
    except mc.backend.BackendError as exc:  # its message says how to install CuPy
        parser.error(f"argument --backend: {exc}")
    mc.init.set_seed(0)

    # 1. Data: uint8 images (N, 1, 28, 28), int64 labels. The loader scales to [0, 1] and
    #    standardises with the training set's mean and standard deviation.
    if args.smoke:
        rng = np.random.default_rng(0)
        x_train, y_train = rng.integers(0, 256, (64, 1, 28, 28), dtype=np.uint8), \
            rng.integers(0, 10, 64)
        x_test, y_test = x_train[:32], y_train[:32]
        args.epochs = 1
    else:
        try:
            (x_train, y_train), (x_test, y_test) = mc.data.load_fashion_mnist(root=args.data)
        except mc.data.DatasetError as exc:  # names the file, where to put it, what to do
            parser.error(" ".join(str(exc).split()))
    mean, std = mc.data.channel_stats(x_train)
    train_loader = mc.data.DataLoader(x_train, y_train, args.batch_size, shuffle=True, seed=0,
                                      normalize=(mean, std))
    test_loader = mc.data.DataLoader(x_test, y_test, 500, shuffle=False, normalize=(mean, std))

    # 2. The model: two conv stages, then a linear classifier.
    model = L.Sequential(
        L.Conv2d(1, 32, 3, padding="same"), L.BatchNorm2d(32), L.ReLU(), L.MaxPool2d(2),
        L.Conv2d(32, 64, 3, padding="same"), L.BatchNorm2d(64), L.ReLU(), L.MaxPool2d(2),
        L.Flatten(), L.Linear(64 * 7 * 7, 10))
    loss_fn = mc.losses.CrossEntropyLoss()
    optimizer = mc.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True)

    for epoch in range(1, args.epochs + 1):
        # 3. One epoch of training: every batch once, in a new random order.
        model.train()
        total_loss, correct, seen, start = 0.0, 0, 0, time.perf_counter()
        for x, y in train_loader:
            logits = model.forward(x)                  # (B, 10) scores
            loss = loss_fn.forward(logits, y)          # mean cross-entropy of the batch
            model.backward(loss_fn.backward())         # dL/dθ into every p.grad
            optimizer.step()                           # θ ← θ - lr · (momentum update)

            total_loss += float(loss) * len(y)         # float(): reads the number back
            correct += int((logits.argmax(axis=1) == y).sum())
            seen += len(y)

        # 4. Test: eval mode (BatchNorm uses its running statistics), no parameter updates.
        model.eval()
        test_correct = 0
        for x, y in test_loader:
            test_correct += int((model.forward(x).argmax(axis=1) == y).sum())
        print(f"epoch {epoch}: loss {total_loss / seen:.4f}, train accuracy {correct / seen:.2%}, "
              f"test accuracy {test_correct / len(y_test):.2%} "
              f"({time.perf_counter() - start:.1f}s)", flush=True)


if __name__ == "__main__":
    main()
