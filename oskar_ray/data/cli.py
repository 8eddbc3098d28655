"""``oskar data synth|ingest``: the data commands (wired into ``oskar`` by oskar_ray/cli.py).

Runbook::

    python -m oskar_ray.data.cli synth --out data/synth --samples 20000 --seed 0 --workers 2
    python -m oskar_ray.data.cli ingest --out data/mine --split train --videos clips/ \\
        --skeletons skel/ --captions caps.json --labels list.txt --label-map classes.txt --qa qa.json
    python -m oskar_ray.data.cli ingest --out data/mine --split untrimmed --videos long/ --frames 64 \\
        --segments activity_net.json

``add_data_commands(subparsers)`` registers the ``data`` command on an argparse
subparsers object; every leaf sets ``func(args) -> int`` (exit code).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_data_commands(subparsers) -> argparse.ArgumentParser:
    data = subparsers.add_parser("data", help="build datasets: synthetic benchmark or your own files")
    sub = data.add_subparsers(dest="data_command", required=True)

    synth = sub.add_parser("synth", help="generate the SynthAction benchmark")
    synth.add_argument("--out", required=True, type=Path, help="new dataset directory")
    synth.add_argument("--samples", type=int, default=2000, help="total clips over all splits")
    synth.add_argument("--pretrain-samples", type=int, default=0,
                       help="clips in the unlabelled pretrain split (default: its 50%% share of --samples)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--frames", type=int, default=16, help="frames per trimmed clip")
    synth.add_argument("--size", type=int, default=32, help="frame height and width in pixels")
    synth.add_argument("--untrimmed-frames", type=int, default=64, help="frames per untrimmed clip")
    synth.add_argument("--vocab-size", type=int, default=1000, help="text tokenizer (BPE) vocabulary size")
    synth.add_argument("--workers", type=int, default=2, help="generator processes")
    synth.set_defaults(func=run_synth)

    ingest = sub.add_parser("ingest", help="turn videos/skeletons/annotations into a dataset split")
    ingest.add_argument("--out", required=True, type=Path, help="dataset directory (created or extended)")
    ingest.add_argument("--split", required=True, help="split name to add, e.g. train, val")
    ingest.add_argument("--videos", required=True, type=Path, help="folder of video files (searched recursively)")
    ingest.add_argument("--skeletons", type=Path, help="folder of NTU .skeleton or .npy (T, J, 3) files")
    ingest.add_argument("--captions", type=Path, help="mmaction2 {file: [captions]} or MSR-VTT videodatainfo JSON")
    ingest.add_argument("--labels", type=Path, help="mmaction2 list: 'file label' per line")
    ingest.add_argument("--label-map", type=Path, help="class names, one per line (line i = label i); with "
                        "--segments alone: the segment classes (a label outside it is a reported skip)")
    ingest.add_argument("--qa", type=Path, help="MSVD/MSRVTT-QA JSON (optional 'choices'), TGIF-QA TSV or "
                                                "NExT-QA CSV")
    ingest.add_argument("--segments", type=Path, metavar="FILE_OR_DIR",
                        help="temporal action segments of untrimmed videos (localization; ingest them as split "
                             "'untrimmed' with more --frames): ActivityNet JSON, THUMOS '<class>_val.txt' lists "
                             "('video start end') or one list of 'video start end label', or a folder of them")
    ingest.add_argument("--missing-list", type=Path, action="append", default=[],
                        help="official NTU missing-skeleton list (repeatable)")
    ingest.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="module to import first (it registers an added modality; repeatable)")
    ingest.add_argument("--modality", action="append", default=[], metavar="NAME=DIR",
                        help="an added modality's files (matched to videos by stem; repeatable)")
    ingest.add_argument("--strict", action="store_true", help="fail on the first skipped item")
    ingest.add_argument("--video-storage", choices=["encoded", "raw"], default="encoded",
                        help="encoded: each whole video kept as its container bytes, clips decoded per visit in the "
                             "data path (default); raw: --frames uint8 frames of --size, decoded once here")
    ingest.add_argument("--reencode-short-side", type=int, default=0, metavar="PIXELS",
                        help="encoded: re-encode videos whose short side is larger (0: keep the source bytes)")
    ingest.add_argument("--reencode-fps", type=float, default=0.0, help="encoded: re-encode above this frame rate")
    ingest.add_argument("--frames", type=int, default=16, help="raw storage: frames kept per video; skeletons: "
                        "frames resampled to")
    ingest.add_argument("--size", type=int, default=32, help="raw storage: frame height and width")
    ingest.add_argument("--joints", type=int, default=25)
    ingest.add_argument("--vocab-size", type=int, default=1000)
    ingest.set_defaults(func=run_ingest)
    return data


def run_synth(args: argparse.Namespace) -> int:
    from .synth import SynthSpec, generate

    for name in ("samples", "frames", "size", "untrimmed_frames", "workers", "vocab_size"):
        if getattr(args, name) <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.pretrain_samples < 0:
        raise SystemExit(f"--pretrain-samples must be >= 0 (0 = half of --samples), got {args.pretrain_samples}")
    spec = SynthSpec(samples=args.samples, pretrain_samples=args.pretrain_samples, seed=args.seed,
                     frames=args.frames, height=args.size, width=args.size, untrimmed_frames=args.untrimmed_frames,
                     vocab_size=args.vocab_size, workers=args.workers)
    start = time.perf_counter()
    manifest = generate(spec, args.out)
    seconds = time.perf_counter() - start
    splits = ", ".join(f"{k} {v['samples']}" for k, v in manifest["splits"].items())
    print(f"SynthAction: {manifest['samples']} clips in {seconds:.1f} s → {args.out} ({splits})")
    return 0


def run_ingest(args: argparse.Namespace) -> int:
    from ..config.loading import import_plugins
    from .ingest import IngestError, IngestOptions, ingest, print_summary

    try:
        import_plugins(args.plugin)
        added = _modality_folders(args.modality)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    opts = IngestOptions(
        out=args.out, split=args.split, videos=args.videos, skeletons=args.skeletons, captions=args.captions,
        labels=args.labels, label_map=args.label_map, qa=args.qa, segments=args.segments, missing=args.missing_list,
        strict=args.strict, frames=args.frames, height=args.size, width=args.size, joints=args.joints,
        vocab_size=args.vocab_size, modalities=added, video_storage=args.video_storage,
        reencode_short_side=args.reencode_short_side, reencode_fps=args.reencode_fps,
    )
    try:
        report = ingest(opts)
    except (IngestError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_summary(report, args.out)
    return 0


def _modality_folders(items: list[str]) -> dict[str, Path]:
    folders: dict[str, Path] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise ValueError(f"--modality {item!r} must look like NAME=DIR")
        if name.strip() in folders:
            raise ValueError(f"--modality {name.strip()} given twice")
        folders[name.strip()] = Path(folder.strip())
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oskar_ray.data.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    data = add_data_commands(sub)
    # `python -m oskar_ray.data.cli synth ...` works as well as `... data synth ...`
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] != "data" and argv[0] not in ("-h", "--help"):
        argv = ["data", *argv]
    args = parser.parse_args(argv)
    del data
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
