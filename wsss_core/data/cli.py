"""``wsss data``: make the synthetic benchmark, rasterise COCO masks, check a dataset before training."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="datasets: make the synthetic benchmark, COCO masks, checks",
                                 description="Dataset tools.")
    commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    data.set_defaults(func=lambda args: _usage(data))

    synth = commands.add_parser("synth", help="write the synthetic benchmark in the PASCAL VOC layout",
                                description="Write the synthetic WSSS benchmark (VOC 2012 layout) to --out; "
                                "same seed, same bytes.")
    synth.add_argument("--out", required=True, help="output folder (the dataset root)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--n-train", type=int, default=200, help="images in train (default 200)")
    synth.add_argument("--n-aug-extra", type=int, default=100,
                       help="extra images in train_aug on top of train (default 100)")
    synth.add_argument("--n-val", type=int, default=100, help="images in val (default 100)")
    synth.add_argument("--size", type=int, default=128, help="long side in pixels (default 128)")
    synth.add_argument("--classes", type=int, default=6, help="foreground classes (default 6)")
    synth.set_defaults(func=_run_synth)

    coco = commands.add_parser("coco-masks", help="rasterise COCO 2014 class masks from instances JSON",
                               description="Write <root>/mask/<split>2014/<id>.png (0 background, 1..80 "
                               "classes, later instances over earlier ones) and <root>/cls_labels_<split>.npy "
                               "from <root>/annotations/instances_<split>2014.json.")
    coco.add_argument("--root", required=True, help="COCO root (with annotations/ and train2014/, val2014/)")
    coco.add_argument("--split", required=True, choices=("train", "val"))
    coco.add_argument("--annotations", default=None, help="instances JSON (default: under <root>/annotations)")
    coco.add_argument("--overwrite", action="store_true", help="rewrite masks that exist already")
    coco.set_defaults(func=_run_coco_masks)

    check = commands.add_parser("check", help="check a dataset split before training",
                                description="Check that every listed image and mask exists; with --read, "
                                "also decode every image and mask (catches truncated files, bad class ids).")
    check.add_argument("--dataset", default="voc", help="dataset kind: voc or coco (default voc)")
    check.add_argument("--root", required=True)
    check.add_argument("--split", required=True)
    check.add_argument("--read", action="store_true", help="decode every image and mask too")
    check.set_defaults(func=_run_check)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _run_synth(args: argparse.Namespace) -> int:
    from .synth import generate_synthetic_voc

    root = generate_synthetic_voc(args.out, seed=args.seed, n_train=args.n_train, n_val=args.n_val,
                                  size=args.size, num_classes=args.classes, n_aug_extra=args.n_aug_extra)
    total = args.n_train + args.n_aug_extra + args.n_val
    print(f"wrote {total} images ({args.classes} classes, seed {args.seed}) to {root}")
    return 0


def _run_coco_masks(args: argparse.Namespace) -> int:
    from .coco import write_coco_masks

    written = write_coco_masks(args.root, args.split, annotations=args.annotations, overwrite=args.overwrite)
    print(f"wrote {written.masks_written} masks ({written.masks_skipped} already there) to {written.mask_dir} "
          f"and labels to {written.labels_path}")
    return 0


def _run_check(args: argparse.Namespace) -> int:
    from . import build_dataset
    from .base import check_split

    dataset = build_dataset(args.dataset, args.root, args.split)
    check_split(dataset, decode=args.read)
    print(f"{dataset!r}: ok ({'all files decoded' if args.read else 'all files present'})")
    return 0
