"""Issue 14 follow-up: backbone features of every crop the rejection study uses, in several variants.

    python benchmarks/feature_variants_extract.py --out WORK/variants

For the three training families (``ants-bees/bees``, ``carabidae-crops``, ``ants-bees/ants``) and
the out-of-distribution folders of ``rejection_comparison.py``, each crop (padded to a square as in
production) is passed through the frozen EfficientNet-Lite0 in these views:

- identity, horizontal flip and a quarter turn at 224 px (3 of the 8 dihedral transforms: insects
  lie in any orientation, so averaging over them is test-time augmentation that changes nothing the
  family depends on);
- the identity at 320 px (higher input resolution), or with ``--resolution-views 3`` the same
  three orientations at that resolution;
- for the training families only, the 4 random augmentations the training command uses
  (``labpipe.classify.augment``, seed 0), so the baseline can be reproduced exactly.

Per view it stores the pooled head features (1280) and the pooled outputs of stages 4, 5 and 6
(112 + 192 + 320 channels: multi-layer features, after Lee et al. 2018). Written to one
``.npz`` per folder, read by ``feature_variants_compare.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FAMILIES = {"Apidae": "ants-bees/bees", "Carabidae": "carabidae-crops", "Formicidae": "ants-bees/ants"}
OOD = {
    "springtails": "collembola/positive",
    "debris candidates": "collembola/candidate_false",
    "empty wells": "bioscan-wells/empty",
    "fragments": "bioscan-wells/fragments",
    "wells": "bioscan-wells/single",
}
STAGES = (4, 5, 6)
DIHEDRAL = (0, 4, 1)
"""Identity, horizontal flip, a quarter turn (all 8 would cost 8 forward passes per crop)."""


def dihedral(square: np.ndarray, index: int) -> np.ndarray:
    """Transform ``index`` in 0..7 of the dihedral group: ``index % 4`` quarter turns, flipped
    horizontally first when ``index >= 4``."""
    a = square[:, ::-1] if index >= 4 else square
    return np.ascontiguousarray(np.rot90(a, index % 4))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--groups", nargs="*", help="Only these folders (family or OOD names).")
    parser.add_argument("--views", type=int, default=len(DIHEDRAL), help="Dihedral views (1-3).")
    parser.add_argument(
        "--resolution", type=int, default=0, help="Side of one extra identity view (0: none)."
    )
    parser.add_argument(
        "--resolution-views", type=int, default=1, help="Dihedral views (1-3) at --resolution."
    )
    parser.add_argument("--stride", type=int, default=1, help="Every n-th image of each folder only.")
    parser.add_argument("--augmented", action="store_true", help="Also the 4 training augmentations.")
    args = parser.parse_args()
    import torch
    from tqdm import tqdm

    from labpipe.classify.dataset import image_files, load_square
    from labpipe.classify.efficientnet_lite import load_efficientnet_lite0
    from labpipe.classify.features import FeatureCache, FeatureRecipe, view_image
    from labpipe.classify.imagenet_family import to_model_input
    from labpipe.classify.trained import backbone_record

    torch.set_num_threads(2)
    net = load_efficientnet_lite0().to(memory_format=torch.channels_last).eval()
    recipe = FeatureRecipe(backbone_sha256=backbone_record()["sha256"])

    def forward(squares: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
        x = to_model_input(squares, size, recipe.mean, recipe.std).contiguous(
            memory_format=torch.channels_last
        )
        pooled = []
        with torch.inference_mode():
            h = net.act1(net.bn1(net.conv_stem(x)))
            for i, stage in enumerate(net.blocks):
                h = stage(h)
                if i in STAGES:
                    pooled.append(h.mean((2, 3)))
            head = net.act2(net.bn2(net.conv_head(h))).mean((2, 3))
        return head.numpy(), torch.cat(pooled, 1).numpy()

    groups = {f: image_files(SHARED / sub) for f, sub in FAMILIES.items()}
    groups.update({o: image_files(SHARED / sub) for o, sub in OOD.items()})
    if args.groups:
        groups = {g: groups[g] for g in args.groups}
    groups = {g: p[:: args.stride] for g, p in groups.items()}
    dihedral_views = DIHEDRAL[: args.views]
    for name, paths in groups.items():
        family = name in FAMILIES
        n = len(paths)
        arrays = {
            "d224": np.empty((n, len(dihedral_views), 1280), np.float32),
            "d224s": np.empty((n, len(dihedral_views), 624), np.float32),
        }
        if args.resolution:
            arrays["r"] = np.empty((n, args.resolution_views, 1280), np.float32)
            arrays["rs"] = np.empty((n, args.resolution_views, 624), np.float32)
        if family and args.augmented:
            arrays["a224"] = np.empty((n, 4, 1280), np.float32)
            arrays["a224s"] = np.empty((n, 4, 624), np.float32)
        for i, path in enumerate(tqdm(paths, desc=name, unit="img")):
            square = load_square(path)
            views = [dihedral(square, j) for j in dihedral_views]
            h, s = forward(views, 224)
            arrays["d224"][i], arrays["d224s"][i] = h, s
            if args.resolution:
                h, s = forward(views[: args.resolution_views], args.resolution)
                arrays["r"][i], arrays["rs"][i] = h, s
            if family and args.augmented:
                aug = [view_image(square, v, FeatureCache.key(path, v, recipe), recipe) for v in range(1, 5)]
                h, s = forward(aug, 224)
                arrays["a224"][i], arrays["a224s"][i] = h, s
        arrays["paths"] = np.array([str(p) for p in paths])
        args.out.mkdir(parents=True, exist_ok=True)
        tag = f"{name.replace(' ', '_')}-v{len(dihedral_views)}-r{args.resolution}"
        tag += f"x{args.resolution_views}" if args.resolution and args.resolution_views > 1 else ""
        tag += ("-a" if args.augmented else "") + (f"-s{args.stride}" if args.stride > 1 else "")
        np.savez(args.out / f"{tag}.npz", **arrays)


if __name__ == "__main__":
    main()
