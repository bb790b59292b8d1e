"""Command line: ``python -m edit_core {init-adapter,inspect,bench,demo}``.

``main(argv)`` returns the exit code: 0 success, 1 a failed check (the demo's restore or finiteness
check), 2 a user mistake (bad arguments, a missing or unreadable file, an unsupported model), reported as
an ``error:`` message on stderr without a traceback. Anything else is a bug and keeps its traceback. Teacher checkpoints are read as safetensors only, never unpickled.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Optional, Sequence

import torch

from .commands import EXIT_OK, EXIT_USER_ERROR, CommandError, report_errors
from .teacher_files import find_teacher_files, load_teacher_tensors, read_teacher_shapes


def family_choices() -> list[str]:
    """Every family name and alias ``--family`` accepts."""
    from .families import list_families

    return [name for f in list_families() for name in (f.name, *f.aliases)]

# ---------------------------------------------------------------------------------------------- commands

def _int_or_none(value) -> Optional[int]:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _check_output(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise CommandError(f"output '{path}' is a folder; give a file name such as {os.path.join(path, 'edit.safetensors')}")
    if not os.path.isdir(directory):
        raise CommandError(f"cannot write '{path}': the folder {directory} does not exist")
    if not os.access(directory, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise CommandError(f"cannot write '{path}': permission denied")


def cmd_init_adapter(args: argparse.Namespace) -> int:
    from .adapter import (
        adapter_summary,
        init_adapter_from_teacher,
        load_adapter,
        save_adapter,
    )
    from .families import family_title, get_family

    _check_output(args.out)
    teacher = find_teacher_files(args.teacher)
    state, metadata = read_teacher_shapes(teacher)
    heads = args.heads or _int_or_none(teacher.config.get("num_attention_heads")) or \
        _int_or_none(metadata.get("pixart_num_heads"))  # (written by some tiny-model tools)
    try:
        family = None if args.family is None else get_family(args.family).name
    except KeyError as e:
        raise CommandError(f"--family: {e.args[0]}") from None
    try:
        adapter = init_adapter_from_teacher(state, family, reduction=args.reduction, num_heads=heads,
                                            convert_attn2=not args.no_attn2, eta=args.eta, seed=args.seed)
    except ValueError as e:  # FamilyError is a ValueError; so are bad reductions
        raise CommandError(f"'{args.teacher}': {e}") from None
    if any(t.is_meta for t in adapter.tensors.values()):  # the adapter copied teacher tensors: read them for real
        adapter = init_adapter_from_teacher(load_teacher_tensors(teacher), family, reduction=args.reduction,
                                            num_heads=heads, convert_attn2=not args.no_attn2, eta=args.eta,
                                            seed=args.seed)
    try:
        save_adapter(adapter, args.out)
    except OSError as e:
        raise CommandError(f"cannot write '{args.out}': {e.strerror or e}") from None
    print(f"wrote {args.out}: starting adapter for {family_title(adapter.config.family)} "
          f"(ConvFusion zero-initialised, compressors blur-initialised: plain ReLU linear attention on the "
          f"teacher's projections until it is distilled)")
    print(adapter_summary(load_adapter(args.out)))
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from .adapter import adapter_summary, load_adapter

    if os.path.isdir(args.file):
        found = sorted(n for n in os.listdir(args.file) if n.endswith(".safetensors"))
        hint = f" (it holds {', '.join(found[:5])}{', …' if len(found) > 5 else ''})" if found else ""
        raise CommandError(f"'{args.file}' is a folder, not an adapter file{hint}: give the adapter's "
                           ".safetensors file")
    print(adapter_summary(load_adapter(args.file)))
    return EXIT_OK


def cmd_bench(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from . import bench

    if args.from_json:
        return _bench_from_json(args, bench)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    warmup, repeats = bench.default_repeats(device)
    families = bench.parse_families(args.families)
    sections = {s for f in families for s in bench.family_sections(f)}
    if args.sections:
        asked = {s.strip() for s in args.sections.split(",") if s.strip()}
        unknown = asked - set(bench.SECTION_ORDER)
        if unknown:
            raise CommandError(f"--sections: unknown {sorted(unknown)}; choose from {', '.join(bench.SECTION_ORDER)}")
        sections &= asked
    else:
        sections &= set(bench.DEFAULT_SECTIONS)
    if not sections:
        raise CommandError("--families/--sections select no section to run")
    config = bench.BenchConfig(
        device=device, dtype=args.dtype or ("bf16" if device == "cuda" else "fp32"),
        tokens=bench.parse_tokens(args.tokens), warmup=warmup if args.warmup is None else args.warmup,
        repeats=repeats if args.repeats is None else args.repeats,
        backends=tuple(b.strip() for b in args.backend.split(",") if b.strip()), budget_seconds=args.budget_seconds,
        sections=tuple(s for s in bench.SECTION_ORDER if s in sections), batch=args.batch,
        shapes=bench.TINY_SHAPES if args.tiny else bench.FULL_SHAPES, seed=args.seed,
        command="python -m edit_core " + " ".join(shlex.quote(a) for a in argv),
        families=families,
        bandwidth_tokens=bench.parse_tokens(args.bw_tokens, "--bw-tokens") if args.bw_tokens else
        (bench.TINY_BANDWIDTH_TOKENS if args.tiny else bench.BANDWIDTH_TOKENS),
        resolutions=bench.parse_resolutions(args.resolutions) if args.resolutions else
        (bench.TINY_RESOLUTIONS if args.tiny else bench.MODEL_RESOLUTIONS),
        case_seconds=args.case_seconds, tiny=args.tiny)
    if args.threads is not None:
        if args.threads < 1:
            raise CommandError("--threads must be ≥ 1")
        torch.set_num_threads(args.threads)
    bench.validate(config)
    for path in (args.json, args.plot, args.markdown):
        if path:
            _check_output(path)
    if args.plot:
        bench.require_matplotlib()  # fail now, not after minutes of timing
    results = bench.run_benchmark(config, log=lambda line: print(line, flush=True))
    _write_bench_outputs(args, bench, results)
    return EXIT_OK


def _write_bench_outputs(args: argparse.Namespace, bench, results) -> None:
    if getattr(args, "json", None):
        bench.write_json(results, args.json)
        print(f"wrote {args.json}")
    if args.plot:
        bench.write_plot(results, args.plot)
        print(f"wrote {args.plot}")
    if args.markdown:
        bench.write_markdown(results, args.markdown)
        print(f"wrote {args.markdown}")


def _bench_from_json(args: argparse.Namespace, bench) -> int:
    """Print (and plot, and write as markdown) saved results again instead of measuring."""
    try:
        with open(args.from_json) as f:
            data = json.load(f)
    except OSError as e:
        raise CommandError(f"cannot read '{args.from_json}': {e.strerror or e}") from None
    except ValueError as e:
        raise CommandError(f"'{args.from_json}' is not JSON ({e})") from None
    if not isinstance(data, dict):
        raise CommandError(f"'{args.from_json}' is not a results file written by 'bench --json'")
    results = bench.BenchResults.from_json(data)
    for path in (args.plot, args.markdown):
        if path:
            _check_output(path)
    if args.plot:
        bench.require_matplotlib()
    print("\n".join(bench.report_lines(results)))
    args.json = None
    _write_bench_outputs(args, bench, results)
    return EXIT_OK


def cmd_quality(args: argparse.Namespace) -> int:
    from . import quality
    from .families import get_family

    try:
        families = [get_family(f.strip()).name for f in args.families.split(",") if f.strip()]
    except KeyError as e:
        raise CommandError(f"--families: {e.args[0]}") from None
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - {"distilled", "training_free"})
    if unknown or not parts:
        raise CommandError(f"--parts: choose from distilled, training_free (got {args.parts!r})")
    if args.steps is not None and args.steps < 1:
        raise CommandError("--steps must be at least 1")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    if variants:
        known = {v for f in families for v in quality.distilled.distillable(f)}
        if set(variants) - known:
            raise CommandError(f"--variants: {', '.join(sorted(set(variants) - known))} cannot be distilled for "
                               f"{', '.join(families)}; choose from {', '.join(sorted(known))}")
    if args.out:
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as e:
            raise CommandError(f"cannot create --out '{args.out}': {e.strerror or e}") from None
        _check_output(os.path.join(args.out, "QUALITY.md"))
    quality.run(families, args.out, quick=args.quick, steps=args.steps, variants=variants, parts=parts,
                log=lambda line: print(line, flush=True))
    if args.out:
        print(f"wrote {os.path.join(args.out, 'QUALITY.md')}, quality.json and quality.png")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    try:
        options = demo.DemoOptions.from_args(args)
    except demo.DemoError as e:
        raise CommandError(str(e)) from None
    report = demo.run_demo(options, log=lambda line: print(line, flush=True))
    return EXIT_OK if report.ok else 1


# ---------------------------------------------------------------------------------------------- parser

class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks; appends "(default: X)" only where there is a real default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default is not None and action.default is not False and action.default != argparse.SUPPRESS
                and "%(default)" not in text
                and action.option_strings and action.nargs != 0):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m edit_core", formatter_class=_Formatter,
        description="EDiT linear compressed attention (arXiv 2503.16726) for PixArt-Sigma/Alpha and SD3/SD3.5: "
                    "make and inspect adapter files, benchmark EDiT against softmax attention, run a tiny demo.",
        epilog="examples:\n"
               "  python -m edit_core init-adapter --teacher PixArt-Sigma-XL-2-1024-MS.safetensors --out edit.safetensors\n"
               "  python -m edit_core inspect edit.safetensors\n"
               "  python -m edit_core bench --tokens 1024,4096,16384 --json results.json --plot latency.png\n"
               "  python -m edit_core demo")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "init-adapter", formatter_class=_Formatter, help="make the starting adapter for a teacher model",
        description="Write the starting EDiT adapter for a PixArt-Sigma/Alpha or SD3/SD3.5 teacher: ConvFusion with a "
                    "zero-initialised output conv and blur-initialised key/value compressors, so the converted "
                    "model starts as plain ReLU linear attention on the teacher's own projections. Distil it "
                    "before expecting teacher-quality images. Only tensor names and shapes are read; pickle "
                    "checkpoints are refused.")
    p.add_argument("--teacher", required=True, metavar="PATH",
                   help="teacher weights: a .safetensors file (ComfyUI or diffusers keys, full checkpoints too) or "
                        "a diffusers model folder (diffusion_pytorch_model*.safetensors, sharded or not, + config.json)")
    p.add_argument("--out", required=True, metavar="FILE", help="adapter file to write (.safetensors)")
    p.add_argument("--family", choices=family_choices(), default=None,
                   help="expected model family; detected from the keys when omitted, an error if they disagree")
    p.add_argument("--reduction", type=int, default=4, metavar="R",
                   help="ConvFusion channel reduction r (the 3×3 conv maps C → C/r); must divide the width")
    p.add_argument("--heads", type=int, default=None, metavar="N",
                   help="attention heads; needed for PixArt widths that are not a multiple of 72 (the default is "
                        "width/72, or num_attention_heads from a diffusers config.json)")
    p.add_argument("--no-attn2", action="store_true",
                   help="SD3.5-M: leave the image-only dual attention (attn2, blocks 0-12) as softmax")
    p.add_argument("--eta", choices=("approx", "exact"), default="approx",
                   help="SD3 / SD3.5 image-row mixing weight: approx = N_img/(N_img+N_text) (the paper's), exact = "
                        "from the two branches' normalisers (an ablation)")
    p.add_argument("--seed", type=int, default=0, help="seed of the ConvFusion 3×3 conv's random init")
    p.set_defaults(handler=cmd_init_adapter)

    p = sub.add_parser("inspect", formatter_class=_Formatter, help="validate an adapter file and describe it",
                       description="Load and validate an EDiT adapter file (never unpickled) and print its family, "
                                   "geometry, converted layers and training metadata. Exit code 2 and the list of "
                                   "problems when the file is not a usable adapter.")
    p.add_argument("file", metavar="FILE", help="adapter .safetensors file")
    p.set_defaults(handler=cmd_inspect)

    p = sub.add_parser(
        "bench", formatter_class=_Formatter, help="time softmax attention vs EDiT side by side",
        description="Time the softmax teacher and EDiT in one process on the same inputs: the attention op "
                    "(SDPA vs linear_attention on the 4×-compressed keys/values), a PixArt-Sigma self-attention "
                    "layer, an SD3.5-Medium joint attention layer, and a full-width PixArt-Sigma block, each at "
                    "every token count on a square grid. Two more sections run only when asked: op-bw (the op at "
                    "4096-262144 tokens for both models' heads, with GB/s against a measured copy bandwidth) and "
                    "model (a whole random-weight PixArt-Sigma / SD3.5-Medium transformer forward at 1024²-8192² "
                    "px, with TFLOP/s against a measured matmul peak). Prints a table (speed-up = teacher time / "
                    "EDiT time); medians after warm-up; CUDA timed with events (op-bw: triton.testing.do_bench). "
                    "Cases whose extrapolated time per call exceeds --budget-seconds are skipped, so the "
                    "quadratic teacher drops out first; a backend that cannot be timed here (triton without "
                    "CUDA or under TRITON_INTERPRET=1) is reported as skipped with the reason.")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None, help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--tokens", default=",".join(str(t) for t in (1024, 4096, 16384, 65536)),
                   help="image token counts of the op, layer, joint and block sections, comma-separated perfect "
                        "squares (1024 = 512² px image with PixArt/SD3 latents and 2×2 patches, 4096 = 1024², "
                        "16384 = 2048², 65536 = 4096²)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per case (default: 3 on cpu, 30 on cuda)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default: 1 on cpu, 10 on cuda)")
    p.add_argument("--backend", default="torch",
                   help="EDiT attention backend(s), comma-separated: torch, triton, auto; each gets its own rows")
    p.add_argument("--families", default="pixart_sigma,sd35_medium",
                   help="pixart_sigma (or pixart) = op, layer and block sections; sd35_medium (or sd35) = the "
                        "joint-attention section; in op-bw and model, which models' heads / transformers")
    p.add_argument("--sections", default=None,
                   help="these sections: op, layer, joint, block, tf-layer, tf-joint, tf-block (the default), "
                        "memory (peak memory of one EDiT layer call per token count, no teacher), op-bw, model, "
                        "e.g. --sections op-bw,model")
    p.add_argument("--bw-tokens", default=None,
                   help="op-bw token counts, perfect squares (default: 4096,16384,65536,262144; --tiny: 64,256)")
    p.add_argument("--resolutions", default=None,
                   help="model image sizes in pixels, multiples of 16 (default: 1024,2048,4096,8192; --tiny: "
                        "128,256,512)")
    p.add_argument("--budget-seconds", type=float, default=60.0,
                   help="skip a case whose time per call, extrapolated from the smaller sizes (teacher "
                        "a·N + b·N², EDiT ∝ N; model: FLOP ratio, or FLOPs / matmul peak at the first), exceeds this")
    p.add_argument("--case-seconds", type=float, default=30.0,
                   help="at most this many seconds of timed calls per contender and case (never fewer than 3 "
                        "calls), and a quarter of it of warm-up")
    p.add_argument("--batch", type=int, default=1, help="batch size (2 = a CFG pair)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write every row as JSON")
    p.add_argument("--markdown", metavar="FILE", default=None,
                   help="also write the tables as a markdown section (device, date, command), to paste into "
                        "bench/RESULTS.md or the README")
    p.add_argument("--plot", metavar="FILE", default=None, help="also write a latency-vs-tokens PNG (needs matplotlib)")
    p.add_argument("--from-json", metavar="FILE", default=None,
                   help="measure nothing: print the table of a saved --json file again (and --plot / --markdown it)")
    p.add_argument("--tiny", action="store_true",
                   help="width 64 / 4 heads everywhere (model: 2-block transformers) instead of the real models' "
                        "sizes (smoke tests only)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU: torch threads (default: torch's, usually one per core)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and inputs")
    p.set_defaults(handler=cmd_bench)

    from . import demo
    p = sub.add_parser("demo", formatter_class=_Formatter, help="end-to-end demo on a tiny trained PixArt-Sigma model",
                       description=demo.DESCRIPTION)
    demo.add_arguments(p)
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("quality", formatter_class=_Formatter, help="measure quality against the tiny trained teachers",
                       description="Distil every attention variant (EDiT / MM-EDiT and the paper's baselines) from the "
                                   "tiny trained teachers shipped in edit_core/data/tiny_teachers with the default "
                                   "distill recipe and one budget, and evaluate them and the training-free mode on "
                                   "held-out crops of real photos: model-output error, denoising loss, per-layer "
                                   "attention error, sample error, error while training. Writes QUALITY.md, "
                                   "quality.json and quality.png to --out (merged with the families already there). "
                                   "On 2 CPU cores --steps 200 took 30 min (both teachers, both parts); the default "
                                   "1000 steps takes about 5× that (an estimate); --quick takes seconds.")
    p.add_argument("--families", default="pixart_sigma,sd35_medium", help="teachers to evaluate (comma-separated)")
    p.add_argument("--out", default=None, metavar="DIR", help="write QUALITY.md and quality.json here (e.g. bench)")
    p.add_argument("--quick", action="store_true", help="a few steps, items and settings (seconds; for CI)")
    p.add_argument("--parts", default="distilled,training_free", help="distilled, training_free, or both")
    p.add_argument("--steps", type=int, default=None, help="distillation steps per variant (default 1000)")
    p.add_argument("--variants", default=None, help="only these distillable variants (comma-separated)")
    p.set_defaults(handler=cmd_quality)

    from .distill import cli as distill_cli
    distill_cli.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or an argparse usage error (2, message already printed)
        return int(e.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR

    if args.command == "bench":
        return report_errors(lambda: args.handler(args, argv))
    return report_errors(lambda: args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
