"""Datasets, batches and augmentation.

Loading (files are found in, or downloaded to, ``root`` / ``$MINICNN_DATA`` /
``~/.cache/minicnn``, one subfolder per dataset; parsed arrays are cached as ``.npz``)::

    from minicnn import data
    (x_train, y_train), (x_test, y_test) = data.load_cifar10()    # uint8 (N, 3, 32, 32), int64
    data.CIFAR10_CLASSES                                           # ("airplane", ...)

Batches, on the current backend, as float32::

    mean, std = data.channel_stats(x_train)
    train = data.DataLoader(x_train, y_train, 128, seed=0, normalize=(mean, std),
                            transform=data.Compose([data.RandomCrop(32, padding=4),
                                                    data.RandomHorizontalFlip()]))
    for x, y in train: ...

Modules: ``mnist`` (MNIST, Fashion-MNIST), ``cifar`` (CIFAR-10), ``download`` (folders,
downloads, checksums, cache), ``normalize``, ``transforms``, ``loader``. This package depends
only on ``minicnn.backend`` and ``minicnn._io`` (atomic writes).
"""

from .cifar import (
    CIFAR10,
    CIFAR10_CLASSES,
    CIFAR10_MIRRORS,
    UnsafeArchiveError,
    UnsafePickleError,
    load_cifar10,
)
from .common import Splits
from .download import (
    ChecksumWarning,
    DatasetError,
    DatasetFormatError,
    DatasetNotFoundError,
    DownloadError,
    data_root,
)
from .loader import DataLoader, synthetic
from .mnist import (
    FASHION_MNIST,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MIRRORS,
    MNIST,
    MNIST_CLASSES,
    MNIST_MIRRORS,
    load_fashion_mnist,
    load_mnist,
    read_idx,
)
from .normalize import Normalize, channel_stats, to_symmetric_range, to_unit_range
from .transforms import (
    ColorJitter,
    Compose,
    Cutout,
    GaussianNoise,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResizedCrop,
    RandomVerticalFlip,
    Transform,
)

__all__ = [
    "load_mnist", "load_fashion_mnist", "load_cifar10", "Splits",
    "MNIST_CLASSES", "FASHION_MNIST_CLASSES", "CIFAR10_CLASSES",
    "MNIST_MIRRORS", "FASHION_MNIST_MIRRORS", "CIFAR10_MIRRORS",
    "MNIST", "FASHION_MNIST", "CIFAR10", "read_idx", "data_root",
    "DatasetError", "DatasetNotFoundError", "DatasetFormatError", "DownloadError",
    "ChecksumWarning", "UnsafePickleError", "UnsafeArchiveError",
    "DataLoader", "synthetic", "channel_stats", "Normalize", "to_unit_range", "to_symmetric_range",
    "Transform", "Compose", "RandomCrop", "RandomHorizontalFlip", "RandomVerticalFlip",
    "RandomResizedCrop", "GaussianNoise", "Cutout", "ColorJitter",
]
