"""Flickr8k for the captioning experiment: VGG-19 features made once from local images and
weights (:func:`extract_features`), and the splits read from a folder (:func:`load_flickr8k`).
Nothing is downloaded; a missing or malformed file is a ``ValueError`` naming it."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .textfiles import read_lines

__all__ = ["extract_features", "load_flickr8k"]


def _read_lines(path: Path) -> list[str]:
    lines, _ = read_lines(path, hint="data_dir must hold Flickr8k.token.txt, "
                          "Flickr_8k.{train,dev,test}Images.txt and features.pt (see the "
                          "captioning docstring)")
    return [x for x in lines if x.strip()]


def load_flickr8k(data_dir: str) -> dict[str, tuple[Tensor, list[list[str]]]]:
    """Features and captions of each split from a Flickr8k folder with ``features.pt``."""
    if not data_dir:
        raise ValueError("the flickr8k dataset needs data_dir=/path/to/Flickr8k (with "
                         "features.pt); nothing is downloaded")
    folder = Path(data_dir)
    caps: dict[str, list[str]] = {}
    for line in _read_lines(folder / "Flickr8k.token.txt"):
        key, _, text = line.partition("\t")
        caps.setdefault(key.split("#")[0], []).append(text)
    feat_path = folder / "features.pt"
    if not feat_path.is_file():
        raise ValueError(f"{feat_path} is missing; make it with "
                         "noisyact.experiments.flickr8k.extract_features")
    try:
        saved = torch.load(feat_path, map_location="cpu")
    except Exception as exc:  # truncated or not a torch file: one line naming it
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{feat_path} cannot be read ({first})") from None
    if not (isinstance(saved, dict) and {"names", "features"} <= set(saved)
            and saved["features"].dim() == 3 and len(saved["names"]) == len(saved["features"])):
        raise ValueError(f"{feat_path} must hold {{'names': [...], 'features': (n, L, D)}}")
    index = {n: i for i, n in enumerate(saved["names"])}
    out = {}
    for split, fname in (("train", "trainImages"), ("valid", "devImages"),
                         ("test", "testImages")):
        names = _read_lines(folder / f"Flickr_8k.{fname}.txt")
        missing = [n for n in names if n not in index or n not in caps]
        if missing:
            raise ValueError(f"{len(missing)} {split} images lack features or captions, e.g. "
                             f"{missing[0]}")
        out[split] = (saved["features"][[index[n] for n in names]],  # kept as saved (fp16)
                      [caps[n] for n in names])
    return out


def extract_features(image_dir: str, weights: str, out: str, names: list[str] | None = None,
                     batch_size: int = 16) -> Path:
    """VGG-19 conv5_4 features (14 × 14 × 512 → (196, 512)) of 224 × 224 images, saved as
    ``features.pt`` for the flickr8k dataset. ``weights``: a local torchvision VGG-19 state dict
    (e.g. ``vgg19-dcbb9e9d.pth``); needs ``torchvision`` and ``Pillow``; nothing is downloaded."""
    try:
        from PIL import Image
        from torchvision import models, transforms
    except ImportError:
        raise ImportError("extract_features needs torchvision and Pillow") from None
    vgg = models.vgg19()
    vgg.load_state_dict(torch.load(weights, map_location="cpu"))
    body = vgg.features[:36].eval()  # through conv5_4 + ReLU, before the last pooling
    prep = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(),
                               transforms.Normalize([0.485, 0.456, 0.406],
                                                    [0.229, 0.224, 0.225])])
    names = names or sorted(p.name for p in Path(image_dir).glob("*.jpg"))
    feats = []
    with torch.no_grad():
        for lo in range(0, len(names), batch_size):
            x = torch.stack([prep(Image.open(Path(image_dir) / n).convert("RGB"))
                             for n in names[lo: lo + batch_size]])
            feats.append(body(x).flatten(2).transpose(1, 2).half())
    path = Path(out)
    torch.save({"names": names, "features": torch.cat(feats)}, path)
    return path
