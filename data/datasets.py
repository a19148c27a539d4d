"""Dataset builders: torchvision sets (CIFAR, BigCIFAR10, SVHN, MNIST) and folder trees.

Each builder takes the resolved config and returns a :class:`DataBundle` whose
datasets yield un-normalised tensors in [0, 1]; ``info.mean``/``info.std`` are
handed to the model, which normalises its input itself. Nothing is downloaded
unless ``--download`` is given, and a missing or malformed dataset is a
one-line :class:`UserError` naming the path looked at and the layout expected.
"""
import os

from torch.utils.data import Dataset
from torchvision import datasets as tvd
from torchvision import transforms as T
from torchvision.datasets.folder import default_loader

from data.core import DATASETS, DataBundle, DatasetInfo, one_line
from utils.errors import UserError

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF3 = (0.5, 0.5, 0.5)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


def crop_flip(size, padding=4):
    """CIFAR-style train augmentation: padded random crop and horizontal flip."""
    return T.Compose([T.RandomCrop(size, padding=padding), T.RandomHorizontalFlip(), T.ToTensor()])


# ---------------------------------------------------------------- torchvision sets

def _torchvision_root(data, folder, marker):
    """``<data>/<folder>``, or ``<data>`` itself when only it holds the files.

    Accepting ``<data>`` too lets ``--data`` point straight at a torchvision root.
    """
    candidates = [os.path.join(data, folder), data]
    for root in candidates:
        if os.path.exists(os.path.join(root, marker)):
            return root
    return candidates[0]


def _torchvision_pair(cfg, name, folder, marker, layout, make):
    """Build (train, val) with ``make(root, train, download)``; map failures to UserError.

    ``marker`` is a path torchvision keeps inside its root (used to find the root);
    ``layout`` describes that layout in the error message.
    """
    root = _torchvision_root(cfg.data, folder, marker)
    download = bool(getattr(cfg, "download", False))
    try:
        return make(root, True, download), make(root, False, download)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        if download:
            raise UserError(f"{name} at {root} is still missing or corrupt after --download "
                            f"({one_line(exc)}); delete the folder and try again") from None
        raise UserError(f"{name} not found or corrupt at {root}: expected torchvision's {layout} "
                        "there; pass --download to fetch it or --data to point elsewhere") from None
    except OSError as exc:  # unreadable files, or a failed download (URLError is an OSError)
        raise UserError(f"{name} could not be read or fetched at {root}: {one_line(exc)}") from None


def _cifar(cfg, cls, name, folder, marker, num_classes):
    train_tf, val_tf = crop_flip(32), T.ToTensor()

    def make(root, train, download):
        return cls(root=root, train=train, download=download, transform=train_tf if train else val_tf)

    train, val = _torchvision_pair(cfg, name, folder, marker, marker, make)
    return DataBundle(DatasetInfo(name, num_classes, 3, 32, CIFAR_MEAN, CIFAR_STD), train, val)


@DATASETS.register("CIFAR10")
def build_cifar10(cfg):
    return _cifar(cfg, tvd.CIFAR10, "CIFAR10", "cifar10", "cifar-10-batches-py", 10)


@DATASETS.register("CIFAR100")
def build_cifar100(cfg):
    return _cifar(cfg, tvd.CIFAR100, "CIFAR100", "cifar100", "cifar-100-python", 100)


@DATASETS.register("BigCIFAR10")
def build_big_cifar10(cfg):
    """CIFAR-10 upscaled to 128 px (the original's BigCIFAR10, for ImageNet-style networks):
    random-resized crops and flips for training, resize + centre crop for validation,
    ImageNet normalisation constants; the files are those of CIFAR10 (``cifar10/``)."""
    size = 128
    train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor()])
    val_tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor()])

    def make(root, train, download):
        return tvd.CIFAR10(root=root, train=train, download=download, transform=train_tf if train else val_tf)

    marker = "cifar-10-batches-py"
    train, val = _torchvision_pair(cfg, "BigCIFAR10", "cifar10", marker, marker, make)
    return DataBundle(DatasetInfo("BigCIFAR10", 10, 3, size, IMAGENET_MEAN, IMAGENET_STD), train, val)


@DATASETS.register("SVHN")
def build_svhn(cfg):
    # No augmentation, as in the original (a mirrored digit is another digit, or none).
    train_tf = val_tf = T.ToTensor()

    def make(root, train, download):
        return tvd.SVHN(root=root, split="train" if train else "test", download=download,
                        transform=train_tf if train else val_tf)

    train, val = _torchvision_pair(cfg, "SVHN", "svhn", "train_32x32.mat",
                                   "train_32x32.mat and test_32x32.mat", make)
    return DataBundle(DatasetInfo("SVHN", 10, 3, 32, HALF3, HALF3), train, val)


@DATASETS.register("MNIST")
def build_mnist(cfg):
    train_tf = val_tf = T.ToTensor()  # no augmentation, as in the original

    def make(root, train, download):
        return tvd.MNIST(root=root, train=train, download=download, transform=train_tf if train else val_tf)

    train, val = _torchvision_pair(cfg, "MNIST", "mnist", "MNIST", "MNIST/raw folder", make)
    return DataBundle(DatasetInfo("MNIST", 10, 1, 28, MNIST_MEAN, MNIST_STD), train, val)


# ---------------------------------------------------------------- folder trees

class AnnotatedImages(Dataset):
    """Tiny ImageNet's original ``val/``: ``images/*`` plus ``val_annotations.txt``.

    Supported so the official zip works unpacked as-is, without re-sorting the
    validation images into class folders.
    """

    def __init__(self, folder, class_to_idx, transform):
        self.transform = transform
        self.samples = []
        with open(os.path.join(folder, "val_annotations.txt")) as fh:
            for line in fh:
                parts = line.split("\t")
                if len(parts) < 2:
                    continue
                if parts[1] not in class_to_idx:
                    raise UserError(f"{folder}/val_annotations.txt names class '{parts[1]}', "
                                    "which has no folder under train/")
                self.samples.append((os.path.join(folder, "images", parts[0]), class_to_idx[parts[1]]))

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        return self.transform(default_loader(path)), label


def _has_split(root, split):
    return os.path.isdir(os.path.join(root, split))


def _pick_folder_root(name, candidates):
    """The first candidate holding both train/ and val/, else a one-line UserError."""
    for root in candidates:
        if _has_split(root, "train") and _has_split(root, "val"):
            return root
    looked = " or ".join(dict.fromkeys(candidates))
    raise UserError(f"{name} not found at {looked}: expected train/<class>/<image> and "
                    "val/<class>/<image> folders (ImageFolder layout); pass --data to point elsewhere")


def _image_folder(name, folder, transform):
    try:
        return tvd.ImageFolder(folder, transform=transform)
    except (FileNotFoundError, OSError) as exc:  # no class folders, or a class without images
        raise UserError(f"{name}: {one_line(exc)} (expected {folder}/<class>/<image>)") from None


def folder_pair(name, root, train_tf, val_tf):
    """(train, val) ImageFolders under ``root``; their classes must match."""
    train = _image_folder(name, os.path.join(root, "train"), train_tf)
    val_dir = os.path.join(root, "val")
    if os.path.isfile(os.path.join(val_dir, "val_annotations.txt")):
        return train, AnnotatedImages(val_dir, train.class_to_idx, val_tf)
    val = _image_folder(name, val_dir, val_tf)
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))[:3]
        only_val = sorted(set(val.classes) - set(train.classes))[:3]
        raise UserError(f"{name} at {root}: train/ has {len(train.classes)} classes and val/ has "
                        f"{len(val.classes)}; they must be the same folders (only in train: "
                        f"{only_train}, only in val: {only_val})")
    return train, val


@DATASETS.register("ImageNet")
def build_imagenet(cfg):
    root = _pick_folder_root("ImageNet", [os.path.join(cfg.data, "imagenet"), cfg.data])
    train_tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor()])
    val_tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()])
    train, val = folder_pair("ImageNet", root, train_tf, val_tf)
    info = DatasetInfo("ImageNet", len(train.classes), 3, 224, IMAGENET_MEAN, IMAGENET_STD)
    return DataBundle(info, train, val)


@DATASETS.register("TinyImageNet")
def build_tiny_imagenet(cfg):
    root = _pick_folder_root("TinyImageNet", [os.path.join(cfg.data, "tiny-imagenet-200"), cfg.data])
    train, val = folder_pair("TinyImageNet", root, crop_flip(64), T.ToTensor())
    info = DatasetInfo("TinyImageNet", len(train.classes), 3, 64, IMAGENET_MEAN, IMAGENET_STD)
    return DataBundle(info, train, val)


def _folder_stats(cfg):
    """--mean/--std for ImageFolder: 3 values each, std > 0; 0.5 when not given."""
    out = []
    for flag in ("mean", "std"):
        values = getattr(cfg, flag, None)
        if values is None:
            out.append(HALF3)
            continue
        if len(values) != 3:
            raise UserError(f"--{flag} needs 3 values (one per RGB channel, e.g. --{flag} 0.5 0.5 0.5), "
                            f"got {len(values)}")
        if flag == "std" and min(values) <= 0:
            raise UserError(f"--std values must be positive, got {','.join(map(str, values))}")
        out.append(tuple(float(v) for v in values))
    return out


@DATASETS.register("ImageFolder")
def build_image_folder(cfg):
    size = int(getattr(cfg, "image_size", 32))
    if size <= 0:
        raise UserError(f"--image_size must be a positive number of pixels, got {size}")
    mean, std = _folder_stats(cfg)
    root = _pick_folder_root("ImageFolder", [cfg.data])
    # CIFAR-style augmentation after resizing; padding scales with the image (4 px at 32).
    train_tf = T.Compose([T.Resize((size, size)), T.RandomCrop(size, padding=max(1, size // 8)),
                          T.RandomHorizontalFlip(), T.ToTensor()])
    val_tf = T.Compose([T.Resize((size, size)), T.ToTensor()])
    train, val = folder_pair("ImageFolder", root, train_tf, val_tf)
    info = DatasetInfo("ImageFolder", len(train.classes), 3, size, mean, std)
    return DataBundle(info, train, val)
