"""Digits: scikit-learn's bundled 8x8 handwritten digits, the first-run default.

It ships inside scikit-learn, so a first run needs no download. Images are
resized (bilinear) to ``--image_size`` pixels (default 32, so that every CIFAR
architecture runs on it as on CIFAR; 8 is the native resolution, 16x cheaper per
conv) and repeated to 3 channels. The whole set (~7 MB as float32 at 32x32)
lives in memory.
"""
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from data.core import DATASETS, DataBundle, DatasetInfo
from utils.errors import UserError

DIGITS_SIZE = 32
DIGITS_VAL = 360           # 1797 images -> 1437 train / 360 val
DIGITS_SPLIT_SEED = 0      # fixed: the split never depends on --seed
DIGITS_SHIFT = 2           # max random translation (pixels at 32x32) of train images
# 0.5/0.5 maps [0, 1] to [-1, 1]. The measured statistics (mean 0.31, std 0.32)
# differ, but the first BatchNorm re-centres activations anyway; round constants
# keep the set's description simple and stable.
DIGITS_MEAN = (0.5, 0.5, 0.5)
DIGITS_STD = (0.5, 0.5, 0.5)


class TensorImages(Dataset):
    """In-memory images ``[N, C, H, W]`` in [0, 1] with integer labels.

    ``channels`` > C repeats the stored channels on access (stores 1 channel, not 3).
    ``shift`` > 0 translates each image by up to ``shift`` pixels with zero fill
    (the digits' background is 0), drawing from torch's global RNG so that a
    seeded run is repeatable; loaders use no worker processes for this dataset.
    """

    in_memory = True  # make_loader: worker processes would only add start-up cost

    def __init__(self, images, labels, channels=None, shift=0):
        self.images = images
        self.labels = labels
        self.channels = channels or images.shape[1]
        self.shift = shift

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = self.images[index]
        if self.shift:
            image = random_translate(image, self.shift)
        if self.channels != image.shape[0]:
            image = image.expand(self.channels, -1, -1)
        return image, int(self.labels[index])


def random_translate(image, shift):
    """Shift ``image`` [C, H, W] by a random (dy, dx) in [-shift, shift], zero fill."""
    dy, dx = torch.randint(-shift, shift + 1, (2,)).tolist()
    _, h, w = image.shape
    padded = F.pad(image, (shift, shift, shift, shift))
    top, left = shift - dy, shift - dx
    return padded[:, top:top + h, left:left + w]


def load_digits_tensors(size=DIGITS_SIZE):
    """All 1797 digits as ``[N, 1, size, size]`` floats in [0, 1] and labels."""
    from sklearn.datasets import load_digits  # deferred: importing data stays cheap

    raw = load_digits()
    images = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if size != images.shape[-1]:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images.clamp_(0.0, 1.0).contiguous(), torch.tensor(raw.target, dtype=torch.long)


@DATASETS.register("Digits")
def build_digits(cfg):
    size = int(getattr(cfg, "image_size", DIGITS_SIZE) or DIGITS_SIZE)
    if size < 8:
        raise UserError(f"--image_size {size}: Digits images are 8x8 at least (their native size)")
    images, labels = load_digits_tensors(size)
    gen = torch.Generator().manual_seed(DIGITS_SPLIT_SEED)
    order = torch.randperm(len(labels), generator=gen)
    val_idx, train_idx = order[:DIGITS_VAL], order[DIGITS_VAL:]
    info = DatasetInfo("Digits", num_classes=10, in_channels=3, image_size=size,
                       mean=DIGITS_MEAN, std=DIGITS_STD)
    shift = DIGITS_SHIFT * size // DIGITS_SIZE  # half a native pixel at any size (none at 8x8)
    train = TensorImages(images[train_idx], labels[train_idx], channels=3, shift=shift)
    val = TensorImages(images[val_idx], labels[val_idx], channels=3)
    return DataBundle(info, train, val)
