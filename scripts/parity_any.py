"""Parity with the PyTorch reference for any Wick checkpoint, whatever its resolution and class count.

    python3 scripts/parity_any.py ../shared/reference path/to/checkpoints/step-N target/release/wick

The reference's parity.py matches a checkpoint to a preset by width and depth and uses the preset's 32-pixel,
4-class shape. This wrapper reads the checkpoint's patch size (image = 8 patches a side, as every Wick
model) and class count from its weights, gives the presets that shape, then runs parity.py unchanged.
"""
import os
import sys


def main(reference_dir, checkpoint, wick):
    sys.path.insert(0, os.path.abspath(reference_dir))
    import dit_reference as R  # noqa: E402
    import parity  # noqa: E402
    from safetensors.torch import load_file

    weights = load_file(os.path.join(checkpoint, "model.safetensors"))
    patch = int(round((weights["patch_embed.weight"].shape[1] / 3) ** 0.5))
    classes = weights["class_embed.weight"].shape[0] - 1
    for cfg in R.PRESETS.values():
        grid = cfg["image"] // cfg["patch"]
        cfg.update(patch=patch, image=patch * grid, classes=classes)
    print(f"checkpoint: {patch * 8}×{patch * 8} pixels, patch {patch}, {classes} classes")
    parity.main(checkpoint, wick)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
