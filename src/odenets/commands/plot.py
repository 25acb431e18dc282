"""`odenets plot KIND INPUT... --out DIR`: the analysis figures of both papers (PNG + PDF)."""

from __future__ import annotations

import argparse

from odenets.analysis.figures import FIGURE_KINDS


def add_arguments(p: argparse.ArgumentParser) -> None:
    kinds = "; ".join(f"{name}: {k.help} ({k.inputs})" for name, k in FIGURE_KINDS.items())
    p.add_argument("kind", choices=sorted(FIGURE_KINDS), metavar="KIND", help=kinds)
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="RUN",
        help="run folders (eval.json files or folders holding one for ensemble-gain and "
        "robustness-curves; none needed for dynamics)",
    )
    p.add_argument("--out", default="figures", help="output folder (default: figures)")
    p.add_argument(
        "--data-root", default=None, help="override the runs' data folder (default: the runs' own)"
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="test images used, a seeded subset (default: 256; stability 32, dynamics 8)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="image subset, noise and directions (default: 0)"
    )
    p.add_argument(
        "--noise", default="gaussian", help="input-landscape noise, or 'none' (default: gaussian)"
    )
    p.add_argument(
        "--severity", type=int, default=3, help="input-landscape noise severity 1-5 (default: 3)"
    )
    p.add_argument(
        "--radius", type=float, default=16.0, help="input-landscape T, in /255 units (default: 16)"
    )
    p.add_argument(
        "--alpha", type=float, default=1.0, help="weight-landscape range ±α (default: 1)"
    )
    p.add_argument(
        "--points", type=int, default=21, help="samples along each 1-D curve (default: 21)"
    )
    p.add_argument(
        "--points-2d", type=int, default=11, help="samples per axis (0: no surface; default: 11)"
    )
    p.add_argument(
        "--eps", type=float, default=8.0, help="ensemble-gain attack radius (/255; default: 8)"
    )
    p.add_argument(
        "--threat-model", default="pixel", help="ensemble-gain threat model (default: pixel)"
    )
    p.add_argument(
        "--tol", type=float, default=1e-3, help="depth: relative-change tolerance (default: 1e-3)"
    )
    p.add_argument(
        "--max-steps", type=int, default=50, help="depth: steps per block at most (default: 50)"
    )
    p.add_argument("--steps", type=int, default=30, help="dynamics: unrolled steps (default: 30)")
    p.add_argument(
        "--block", type=int, default=1, help="dynamics: NAIS block number (from 1; default: 1)"
    )
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when present), cpu, cuda:N (default: auto)"
    )
    p.add_argument(
        "--iters",
        type=int,
        default=30,
        help="stability: power iterations (ResNet blocks; default: 30)",
    )


def run(args: argparse.Namespace) -> int:
    kind = FIGURE_KINDS[args.kind]
    if kind.inputs != "optional-runs" and not args.inputs:
        what = "eval.json files" if kind.inputs == "evals" else "run folders"
        raise ValueError(f"plot {args.kind} needs one or more {what}")
    # Only the options this figure takes; a name the command does not have fails here
    # (KeyError), one the figure function does not take fails there (TypeError).
    options = _options(args)
    taken = {name: options[name] for name in kind.options}
    if "limit" in taken and args.limit is None:
        del taken["limit"]  # the figure's own default (256; stability 32, dynamics 8)
    paths = kind.draw(args.inputs, args.out, **taken)
    for path in paths:
        print(path)
    return 0


def _options(args: argparse.Namespace) -> dict:
    """Every figure option, from the flags, under the figure functions' keyword names."""
    return {
        "data_root": args.data_root,
        "limit": args.limit,
        "seed": args.seed,
        "noise": None if args.noise.lower() == "none" else args.noise,
        "severity": args.severity,
        "radius_255": args.radius,
        "alpha": args.alpha,
        "points": args.points,
        "points_2d": args.points_2d,
        "eps_255": args.eps,
        "threat_model": args.threat_model,
        "tol": args.tol,
        "max_steps": args.max_steps,
        "steps": args.steps,
        "block": args.block - 1,
        "iters": args.iters,
        "device": args.device,
    }
