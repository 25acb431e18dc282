"""`odenets evaluate`: clean, noise and adversarial accuracy of one run or an ensemble.

    odenets evaluate RUN [RUN ...] [--attacks fgsm,ifgsm,pgd,apgd_ce] [--eps 2,4,8]
        [--threat-model pixel|normalized|pixel,normalized] [--noise] [--noise-root DIR]
        [--steps N] [--alpha A] [--transfer-from SURROGATE_RUN] [--square-queries Q]
        [--autoattack-version standard|plus|rand|custom] [--autoattack-attacks a,b]
        [--limit N] [--batch-size B] [--seed S] [--shard i/n] [--out PATH]
    odenets evaluate --merge SHARD.json [SHARD.json ...] --out eval.json

Radii are given in 1/255 units on the command line (--eps 8 is 8/255). Several runs are
evaluated as one averaged-softmax ensemble, attacked as a whole. The test split of the data
set the (first) run was trained on is used; --limit takes a fixed, seeded random subset
(the folders of a data set may be sorted by class). Writes RUN/eval.json atomically (the
file the report reads; RUN/eval.limit-N.json with --limit, which the report reads for a run
without eval.json; RUN/eval.shard-i-of-n.json with --shard) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from odenets.checkpoint import read_json, write_json_atomic
from odenets.commands._cache import add_cache_arguments
from odenets.experiments.reproduce import parse_shard
from odenets.robustness.base import attack_options, attacks_taking, list_attacks
from odenets.robustness.evaluate import DEFAULT_ATTACKS, DEFAULT_TRANSFER
from odenets.robustness.runs import evaluate_runs
from odenets.robustness.shards import merge_shards
from odenets.robustness.table import format_table
from odenets.training.run_folder import eval_file_name

_EPILOG = """\
attacks: {attacks}.
noise has its own flags, not --attacks: --noise (CIFAR-C), --noise-root, --gaussian-sigma.
--threat-model normalized is the In-ResNet authors' first release: eps and the step act on
the normalised tensor (about 5x weaker than in pixels) and the clamp to [0, 1] happens there.
--shard i/n (1 <= i <= n, as in odenets reproduce) evaluates one contiguous, disjoint share
of the (limited) test set and writes counts; merge the n files with --merge. Sanity checks
are printed under the table, then the gradient-masking verdict and its evidence.
--attacks autoattack (the official AutoAttack) and square (gradient-free) need the optional
package: pip install "odenets[autoattack]". --transfer-from crafts --transfer-attacks on the
surrogate run and scores them on RUN, in every --threat-model.
A run that has not finished is evaluated at its last checkpoint (with a warning); eval.json
records the weights scored (file, epoch, SHA-256), so the report can spot stale results.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG.format(attacks=", ".join(_gradient_attacks()))
    parser.add_argument("runs", nargs="*", metavar="RUN", help="run folder(s); several = ensemble")
    parser.add_argument(
        "--attacks",
        type=_names,
        default=list(DEFAULT_ATTACKS),
        help=f"comma-separated attack names (default: {','.join(DEFAULT_ATTACKS)}; '' for none)",
    )
    parser.add_argument(
        "--eps", type=_radii, default=[2.0, 4.0, 8.0], help="radii in 1/255 units (default: 2,4,8)"
    )
    parser.add_argument(
        "--threat-model",
        type=_names,
        default=["pixel"],
        help="pixel (default), normalized, or pixel,normalized",
    )
    parser.add_argument("--noise", action="store_true", help="generated CIFAR-C noise accuracy")
    parser.add_argument(
        "--noise-root",
        metavar="DIR",
        help="official CIFAR-C .npy files instead of generated (default: generated noise)",
    )
    parser.add_argument(
        "--gaussian-sigma",
        type=_radii,
        default=[],
        help="plain Gaussian noise levels in 1/255 (default: none)",
    )
    parser.add_argument("--steps", type=int, help=f"iterations of {_taking('steps')} (default: 20)")
    parser.add_argument(
        "--alpha",
        type=float,
        help="their step in 1/255 units (default: 2.5·ε/steps in pixels, 1/255 at ε = 8/255 "
        "with 20 steps; 5·ε/steps normalized)",
    )
    parser.add_argument(
        "--pgd-restarts",
        type=int,
        default=1,
        help=f"random restarts of {_taking('pgd_restarts')} (default: 1)",
    )
    parser.add_argument(
        "--apgd-steps",
        type=int,
        default=100,
        help=f"iterations of {_taking('apgd_steps')} (default: 100)",
    )
    parser.add_argument(
        "--autoattack-version",
        default="standard",
        choices=["standard", "plus", "rand", "custom"],
        help="version of --attacks autoattack (default: standard)",
    )
    parser.add_argument(
        "--autoattack-attacks",
        type=_names,
        help="sub-attacks of --autoattack-version custom, e.g. apgd-ce,apgd-t,fab-t,square "
        "(default: the version's)",
    )
    parser.add_argument(
        "--square-queries",
        type=int,
        default=5000,
        help="queries of --attacks square (default: 5000)",
    )
    parser.add_argument(
        "--transfer-from",
        metavar="SURROGATE_RUN",
        help="run folder of a surrogate: --transfer-attacks crafted on it are scored on RUN "
        "(default: none)",
    )
    parser.add_argument(
        "--transfer-attacks",
        type=_names,
        default=list(DEFAULT_TRANSFER),
        help=f"attacks crafted on the surrogate (default: {','.join(DEFAULT_TRANSFER)})",
    )
    parser.add_argument(
        "--masking-checks",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="gradient-masking diagnostics: input-gradient norms, PGD with 5x steps and with "
        "3 restarts at the smallest radius (default: on)",
    )
    parser.add_argument(
        "--limit",
        type=_positive_int,
        help="evaluate a seeded random subset of N images (default: the whole test set)",
    )
    parser.add_argument("--batch-size", type=int, default=500, help="batch size (default: 500)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of random starts and noise (default: 0)"
    )
    parser.add_argument(
        "--device", default="auto", help="auto (cuda if available), cpu, cuda:N (default: auto)"
    )
    parser.add_argument("--data-root", help="data folder (default: the run's config.json)")
    add_cache_arguments(parser)
    parser.add_argument(
        "--shard",
        type=_shard,
        help="i/n: evaluate shard i of n (1 <= i <= n; default: the whole set)",
    )
    parser.add_argument("--no-checks", action="store_true", help="skip the sanity checks")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="do not check a CIFAR archive's official md5 (a known private copy; also "
        "skipped for runs trained with --no-verify)",
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels_last weights while evaluating (default: on; float32 either way)",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="SHARD",
        help="merge shard eval files into --out instead of evaluating (default: evaluate)",
    )
    parser.add_argument(
        "--out",
        help="output file (default for one run: RUN/eval.json; with --limit N or --shard i/n, "
        "RUN/eval.limit-N.json, RUN/eval.shard-i-of-n.json or both; the report reads "
        "eval.json, else the largest eval.limit-N.json, and names the files it leaves out)",
    )


def _gradient_attacks() -> list[str]:
    """The registered attacks that take a radius (the others are noises)."""
    noises = list_attacks(category="noise")
    return [a for a in list_attacks() if a not in noises]


def _taking(setting: str) -> str:
    """The registered attacks that a flag sets, for its help text."""
    return ", ".join(attacks_taking(setting))


def _check_attack_names(names: list[str]) -> None:
    """Refuse a noise given to --attacks, pointing to the noise flags."""
    for name in names:
        if name in list_attacks(category="noise"):
            raise ValueError(
                f"--attacks takes gradient attacks ({', '.join(_gradient_attacks())}); "
                f"{name!r} is a noise: use --noise for the CIFAR-C noises at severities 1-5 "
                "or --gaussian-sigma S for plain Gaussian noise of sigma S/255"
            )


def _check_eps(radii: list[float]) -> None:
    """Refuse radii outside [0, 255] (1/255 units), in the user's numbers; warn about a
    fraction, which is almost surely meant as ε itself (0.03, not 0.03/255)."""
    for eps in radii:
        if not 0 <= eps <= 255:
            raise ValueError(
                f"--eps takes radii in 1/255 units from 0 to 255 (--eps 8 is 8/255); got {eps:g}"
            )
        if 0 < eps < 1:
            print(
                f"odenets evaluate: warning: --eps {eps:g} means {eps:g}/255 (the flag takes "
                f"1/255 units); for a radius of {eps:g} give --eps {eps * 255:g}",
                file=sys.stderr,
            )


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _radii(text: str) -> list[float]:
    try:
        return [float(t) for t in _names(text)]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected numbers like 2,4,8; got {text!r}") from err


def _shard(text: str) -> tuple[int, int]:
    """'i/n' (1-based, as `odenets reproduce --shard`) -> (i - 1, n), the 0-based index that
    eval.json and `shard_slice` use."""
    try:
        index, count = parse_shard(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return index - 1, count


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of images; got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    if args.merge:
        if args.runs or not args.out:
            raise ValueError("--merge takes shard files and --out, and no RUN folders")
        _checked_out(Path(args.out))
        result = merge_shards([read_json(p) for p in args.merge])
        write_json_atomic(args.out, result)
        print(format_table(result))
        print(f"\nmerged {len(args.merge)} shards into {args.out}")
        return 0
    if not args.runs:
        raise ValueError("give at least one RUN folder (or --merge SHARD.json ...)")
    _check_attack_names(args.attacks)
    _check_attack_names(args.transfer_attacks)
    _check_eps(args.eps)
    if args.alpha is not None:
        _check_eps([args.alpha])
    out = _out_path(args)
    started, cpu0 = time.perf_counter(), time.process_time()
    result = _evaluate(args)
    write_json_atomic(out, result)
    print(format_table(result))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    print(f"\nwrote {out} ({wall:.1f} s wall, {cpu:.1f} s CPU)")
    return 0


def _out_path(args) -> Path:
    if args.out:
        return _checked_out(Path(args.out))
    if len(args.runs) > 1:
        raise ValueError(f"{len(args.runs)} runs form an ensemble: give --out PATH for its result")
    # Only a whole-test-set evaluation is the run's eval.json; the report falls back on the
    # largest eval.limit-N.json of a run without one.
    shard = None if args.shard is None else (args.shard[0] + 1, args.shard[1])
    return Path(args.runs[0]) / eval_file_name(limit=args.limit, shard=shard)


def _checked_out(out: Path) -> Path:
    """`out` if a file can be written there, checked before any work is done."""
    if out.is_dir():
        raise ValueError(
            f"--out must name a file, not a folder; got {out} (e.g. {out / 'eval.json'})"
        )
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the first existing ancestor: atomic writes create the rest
    if not folder.is_dir():
        raise ValueError(f"--out {out}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: cannot write into {folder} (permission denied)")
    return out


def _evaluate(args) -> dict:
    noise = "official" if args.noise_root else ("generated" if args.noise else None)
    return evaluate_runs(
        args.runs,
        limit=args.limit,
        shard=args.shard,
        seed=args.seed,
        data_root=args.data_root,
        device=args.device,
        verify=not args.no_verify,
        transfer_from=args.transfer_from,
        progress=sys.stderr.isatty(),
        attacks=args.attacks,
        eps_list=[e / 255 for e in args.eps],
        threat_model=args.threat_model,
        noise=noise,
        noise_root=args.noise_root,
        gaussian_sigmas=[s / 255 for s in args.gaussian_sigma],
        attack_options=_attack_options(args),
        transfer_attacks=args.transfer_attacks,
        batch_size=args.batch_size,
        checks=not args.no_checks,
        masking=args.masking_checks,
        channels_last=args.channels_last,
    )


def _attack_options(args) -> dict[str, dict]:
    """Per-attack options from the flags each attack takes (its class's `options`), for the
    requested (and transfer) attacks only; a flag not given leaves the attack's default."""
    settings = {
        **vars(args),
        "alpha": None if args.alpha is None else args.alpha / 255,  # the flag is in 1/255
        "autoattack_attacks": args.autoattack_attacks or None,
    }
    wanted = dict.fromkeys([*args.attacks, *(args.transfer_attacks if args.transfer_from else [])])
    return attack_options(wanted, settings)
