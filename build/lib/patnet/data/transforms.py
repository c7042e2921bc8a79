"""Image transforms: timm's ImageNet pipeline for photos, a crop-and-flip pipeline for small grayscale sets."""
from __future__ import annotations

from timm.data import create_transform, rand_augment_transform
from torchvision import transforms as T


def small_image_transform(img_size: int, mean: tuple[float, ...], std: tuple[float, ...], train: bool,
                          hflip: float = 0.5, auto_augment: str | None = None, no_aug: bool = False):
    """Resize to ``img_size`` squared; when training also pad-and-crop (1/8 of the side), flip and RandAugment."""
    steps = [T.Resize((img_size, img_size), interpolation=T.InterpolationMode.BILINEAR)]
    if train and not no_aug:
        steps.append(T.RandomCrop(img_size, padding=img_size // 8))
        if hflip > 0:
            steps.append(T.RandomHorizontalFlip(hflip))
        if auto_augment:
            fill = tuple(round(255 * m) for m in mean)
            steps.append(rand_augment_transform(auto_augment, {"img_mean": fill[0] if len(fill) == 1 else fill}))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def photo_transform(img_size: int, mean: tuple[float, ...], std: tuple[float, ...], train: bool,
                    hflip: float = 0.5, auto_augment: str | None = None, no_aug: bool = False,
                    crop_pct: float = 0.9):
    """timm's ImageNet transforms (random-resized crop for training, resize and centre crop for evaluation)."""
    return create_transform(img_size, is_training=train, no_aug=no_aug, hflip=hflip, auto_augment=auto_augment,
                            interpolation="bicubic", mean=mean, std=std, crop_pct=crop_pct)
