"""`bismap evaluate`: Cityscapes-style evaluation of a prediction folder (equals cityscapesScripts' class IoUs)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate", help="evaluate a folder of prediction PNGs against Cityscapes-layout ground truth",
        description="Match predictions to gtFine/<split>/*/*_gtFine_labelIds.png by <city>_<seq>_<frame> "
                    "and write mIoU-19/16/13, per-class IoU and the confusion matrix.")
    p.add_argument("--pred", required=True, help="folder of prediction PNGs (searched recursively)")
    p.add_argument("--gt", required=True, help="Cityscapes root (holds gtFine/)")
    p.add_argument("--split", default="val", help="gtFine split folder (default: val)")
    p.add_argument("--pred-format", choices=("trainIds", "labelIds"), default="trainIds",
                   help="value scheme of the prediction PNGs (default: trainIds; 255 = no prediction)")
    p.add_argument("--protocol", choices=("cityscapes19", "synthia"), default="cityscapes19",
                   help="which mIoU is the headline (all are written)")
    p.add_argument("--out", required=True, help="metrics JSON to write")
    p.add_argument("--confusion-csv", default=None, help="confusion CSV (default: <out without .json>.confusion.csv)")
    p.set_defaults(func=run_cli)
    return p


def run_cli(args: argparse.Namespace) -> int:
    from bismap.evaluation.cityscapes_eval import evaluate_folder
    from bismap.evaluation.metrics import write_metrics

    out = Path(args.out)
    stem = str(out)[:-5] if str(out).endswith(".json") else str(out)
    csv_path = Path(args.confusion_csv) if args.confusion_csv else Path(stem + ".confusion.csv")
    conf = evaluate_folder(args.pred, args.gt, args.split, args.pred_format)
    metrics = write_metrics(conf.matrix, out, csv_path, protocol=args.protocol,
                            extra={"images": conf.images, "pred_dir": str(args.pred), "gt_root": str(args.gt),
                                   "split": args.split, "pred_format": args.pred_format})
    head = metrics[metrics["headline"]]
    print(f"{conf.images} images: {metrics['headline']} = {100 * head:.2f}  (pixel accuracy "
          f"{100 * (metrics['pixel_accuracy'] or 0):.2f}); wrote {out} and {csv_path}", flush=True)
    return 0
