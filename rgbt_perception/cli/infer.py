"""``rgbt-infer``: segment and detect on RGB + thermal image files.

One pair (``--rgb A.png --thermal B.png``) or whole folders paired by file stem
(``--rgb-dir``/``--thermal-dir``). For each frame ``<stem>`` it writes ``<stem>_mask.png``
(class ids), ``<stem>_overlay.png`` (colours and boxes over the RGB image) and
``<stem>_detections.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import numpy as np

    from rgbt_perception.backends.base import Engine
    from rgbt_perception.core.frames import InferenceResult

from rgbt_perception.core.defaults import BACKEND_CHOICES, NMS_IOU, PRECISION_CHOICES, PUBLISH_SCORE_THRESHOLD
from rgbt_perception.io.console import console_script

PROG = "rgbt-infer"


class UsageError(ValueError):
    """A problem with the command line or the files it names."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Segment and detect on RGB + thermal image pairs with a node weights file.",
        epilog="Thermal images may be 8- or 16-bit PNGs; either modality may be left out.",
    )
    parser.add_argument("--weights", required=True, help="node weights file (.safetensors)")
    parser.add_argument("--rgb", help="one RGB image")
    parser.add_argument("--thermal", help="one thermal image (8- or 16-bit)")
    parser.add_argument("--rgb-dir", help="folder of RGB images, paired with --thermal-dir by file stem")
    parser.add_argument("--thermal-dir", help="folder of thermal images, paired with --rgb-dir by file stem")
    parser.add_argument("--homography", help="text file with the 3x3 thermal->RGB homography (9 numbers); "
                        "default with folders: homography.txt of the thermal folder's split or data set root")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES,
                        help="fp32; on CUDA also fp16 or bf16; on CPU bf16; auto: bf16 on CPUs with AVX512-BF16/AMX, "
                        "fp16 on CUDA, else fp32 (default: fp32)")
    parser.add_argument("--score-threshold", type=float, default=PUBLISH_SCORE_THRESHOLD,
                        help=f"minimum box score (default: {PUBLISH_SCORE_THRESHOLD}, as the node publishes)")
    parser.add_argument("--nms-iou", type=float, default=NMS_IOU, help=f"NMS IoU threshold (default: {NMS_IOU})")
    parser.add_argument("--batch-size", type=int, default=1, help="pairs per forward pass in folder mode")
    parser.add_argument("--backend", default="torch", choices=BACKEND_CHOICES,
                        help="inference backend: torch, onnxruntime (ONNX graph built on first use and cached beside "
                        "the weights), tensorrt (CUDA), auto (the fastest available) (default: torch)")
    return parser


def collect_frames(args: argparse.Namespace) -> list[tuple[str, str | None, str | None]]:
    """``[(stem, rgb_path | None, thermal_path | None)]`` from single-file or folder arguments."""
    single = args.rgb is not None or args.thermal is not None
    folders = args.rgb_dir is not None or args.thermal_dir is not None
    if single and folders:
        raise UsageError("use either --rgb/--thermal or --rgb-dir/--thermal-dir, not both")
    if not single and not folders:
        raise UsageError("give --rgb and/or --thermal, or --rgb-dir and/or --thermal-dir")
    if single:
        for path in (args.rgb, args.thermal):
            if path is not None and not os.path.isfile(path):
                raise UsageError(f"missing file: {path}")
        stem = os.path.splitext(os.path.basename(args.rgb or args.thermal))[0]
        return [(stem, args.rgb, args.thermal)]
    from rgbt_perception.io.images import pair_folders

    roles = {role: folder for role, folder in (("rgb", args.rgb_dir), ("thermal", args.thermal_dir)) if folder}
    for folder in roles.values():
        if not os.path.isdir(folder):
            raise UsageError(f"missing folder: {folder}")
    pairs = pair_folders(roles, required=list(roles))
    return [(stem, files.get("rgb"), files.get("thermal")) for stem, files in pairs.items()]


def dataset_homography_file(args: argparse.Namespace) -> str | None:
    """The ``homography.txt`` a data set keeps beside its image folders: the split's (parent of
    ``--thermal-dir``/``--rgb-dir``), else the root's one level up (the generic folder layout)."""
    folder = args.thermal_dir or args.rgb_dir
    if folder is None:
        return None
    split = os.path.dirname(os.path.abspath(folder))
    for candidate in (os.path.join(split, "homography.txt"), os.path.join(os.path.dirname(split), "homography.txt")):
        if os.path.isfile(candidate):
            return candidate
    return None


def aspect_mismatch(rgb: "np.ndarray | None", thermal: "np.ndarray | None", tolerance: float = 0.02) -> str | None:
    """A warning when RGB and thermal aspect ratios differ by more than ``tolerance`` (relative):
    without a homography the thermal image is stretched onto the RGB grid."""
    if rgb is None or thermal is None:
        return None
    rgb_aspect = rgb.shape[1] / rgb.shape[0]
    thermal_aspect = thermal.shape[1] / thermal.shape[0]
    if abs(rgb_aspect - thermal_aspect) / rgb_aspect <= tolerance:
        return None
    return (f"RGB {rgb.shape[1]}x{rgb.shape[0]} and thermal {thermal.shape[1]}x{thermal.shape[0]} have different "
            "aspect ratios and no homography is given: the thermal image is stretched onto the RGB grid "
            "(pass --homography, or run rgbt-calibrate)")


def write_result(out_dir: str, stem: str, result: "InferenceResult", engine: "Engine") -> None:
    import cv2

    mask_path = os.path.join(out_dir, f"{stem}_mask.png")
    overlay_path = os.path.join(out_dir, f"{stem}_overlay.png")
    if not cv2.imwrite(mask_path, result.mask):
        raise OSError(f"cannot write {mask_path}")
    if not cv2.imwrite(overlay_path, cv2.cvtColor(result.overlay, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {overlay_path}")
    record: dict[str, Any] = {
        "frame": stem,
        "image_size": list(result.mask.shape),
        "class_names": engine.class_names,
        "detections": [d.to_dict() for d in result.detections],
        "timings_ms": result.timings_ms,
    }
    with open(os.path.join(out_dir, f"{stem}_detections.json"), "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)


def _read_pair(rgb_path: str | None, thermal_path: str | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    from rgbt_perception.io.images import read_rgb, read_thermal

    return (
        None if rgb_path is None else read_rgb(rgb_path),
        None if thermal_path is None else read_thermal(thermal_path),
    )


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    frames = collect_frames(args)
    homography_path = args.homography or dataset_homography_file(args)
    from tqdm import tqdm

    from rgbt_perception.core.registration import read_homography_file

    homography = None if homography_path is None else read_homography_file(homography_path)
    if homography_path is not None and args.homography is None:
        print(f"{PROG}: using the data set's homography {homography_path}", file=sys.stderr)
    # Torch and the model load only once the arguments are known to be usable.
    from rgbt_perception.backends.base import DecodeSettings
    from rgbt_perception.backends.factory import create_engine

    engine = create_engine(args.weights, device=args.device, precision=args.precision, backend=args.backend,
                           decode=DecodeSettings(score_threshold=args.score_threshold, nms_iou=args.nms_iou),
                           thermal_to_rgb=homography)
    os.makedirs(args.out, exist_ok=True)
    detections = 0
    warned = homography is not None
    with tqdm(total=len(frames), desc=PROG, unit="pair", disable=len(frames) == 1) as progress:
        for start in range(0, len(frames), args.batch_size):
            chunk = frames[start : start + args.batch_size]
            pairs = []
            for stem, rgb_path, thermal_path in chunk:
                try:
                    pairs.append(_read_pair(rgb_path, thermal_path))
                except ValueError as exc:
                    raise UsageError(f"frame {stem!r}: {exc}") from None
                warning = None if warned else aspect_mismatch(*pairs[-1])
                if warning is not None:
                    print(f"{PROG}: warning: {warning}", file=sys.stderr)
                    warned = True
            try:
                results = engine.infer_batch(pairs, overlay=True)
            except ValueError as exc:
                raise UsageError(f"frames {', '.join(s for s, _, _ in chunk)}: {exc}") from None
            for (stem, _, _), result in zip(chunk, results):
                write_result(args.out, stem, result, engine)
                detections += len(result.detections)
            progress.update(len(chunk))
    engine.release()
    print(f"{PROG}: {len(frames)} frame(s), {detections} detection(s) -> {args.out}")
    return 0


@console_script
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    # ValueError covers WeightsError, DatasetError and bad images or homographies.
    except (ValueError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
