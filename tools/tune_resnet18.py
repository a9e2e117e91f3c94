"""Tune the book's performance workloads with MetaSchedule and ship a compact database.

Usage (from the repository root):

    python tools/tune_resnet18.py --model resnet18 --trials 600
    python tools/tune_resnet18.py --model mlp --trials 48
    python tools/tune_resnet18.py --model cnn --trials 112 --trials-per-iter 8

Each run tunes into a full work directory outside the repository (default
d2ltvm.cache_dir()/tuning/<model>, i.e. ~/.cache/d2ltvm/tuning/<model>, or --work-dir), which keeps every measured candidate. Running the command
again with the same work directory RESUMES: the search starts from the best schedules already
measured and adds new records, so the database grows across runs. After tuning, the best record
of every workload is copied, gzipped, into data/tuning/<model>_<mcpu>/ (about 200 KB), together with
tuning_info.json (target, trials, tuning time, date, TVM version, accumulated over runs).

The database is tied to the target it was measured on (here AMD Zen 5, mcpu=znver5, 2 cores).
On another CPU, run this command with your own --mcpu and --num-cores: the chapter
chapters/performance/performance.ipynb explains how to apply the result.
Tuning depends on shapes, not on weight values: ResNet-18 uses torchvision's architecture with
seeded random weights when the pretrained ones cannot be downloaded.
"""
import argparse
import datetime
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_workloads(model_name):
    """Return a list of (label, relax module) to tune for MODEL_NAME."""
    import d2ltvm
    import torch
    if hasattr(d2ltvm, "performance_workloads"):
        return [(w["label"], w["mod"]) for w in d2ltvm.performance_workloads(model_name)]
    raise SystemExit("d2ltvm.performance_workloads is missing: run tools/sync_package.py")


def build_candidate(mod, target, _params):
    """MetaSchedule's default build, without importing tvm.s_tir.tensor_intrin.

    The default build function imports every tensor intrinsic TVM knows (CUDA, ARM, Hexagon...)
    in each fresh builder process; on these 2-core machines that import alone takes more than the
    builder's 30 s timeout, so every candidate failed. Float32 schedules on x86 do not tensorize,
    so the import is not needed here.
    """
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["resnet18", "mlp", "cnn"], default="resnet18")
    parser.add_argument("--trials", type=int, default=600,
                        help="trials for each workload (batch size) in this run (0: only compact)")
    parser.add_argument("--trials-per-iter", type=int, default=16)
    parser.add_argument("--mcpu", default="znver5")
    parser.add_argument("--num-cores", type=int, default=2)
    parser.add_argument("--work-dir", default=None, help="full database (default: d2ltvm.cache_dir()/tuning/<model>)")
    parser.add_argument("--out", default=None, help="compact database (default data/tuning/<model>_<mcpu>)")
    parser.add_argument("--note-run", nargs=2, type=int, metavar=("TRIALS", "SECONDS"),
                        help="with --trials 0: record in tuning_info.json a run whose final step did not finish")
    args = parser.parse_args()

    import tvm
    import d2ltvm
    from tvm.s_tir import meta_schedule as ms

    target = tvm.target.Target({"kind": "llvm", "mcpu": args.mcpu, "num-cores": args.num_cores})
    work_dir = pathlib.Path(args.work_dir or d2ltvm.cache_dir() / "tuning" / args.model)
    out = pathlib.Path(args.out or ROOT / "data" / "tuning" / f"{args.model}_{args.mcpu}")
    work_dir.mkdir(parents=True, exist_ok=True)

    start = time.time()
    workloads = build_workloads(args.model)
    for label, mod in workloads:
        prepared = d2ltvm.prepare_for_tuning(mod, target)
        tasks = ms.relax_integration.extract_tasks(prepared, target)
        print(f"{label}: {len(tasks)} tasks, tuning {args.trials} trials into {work_dir}", flush=True)
        if args.trials > 0:
            ms.relax_integration.tune_relax(
                prepared, params={}, target=target, work_dir=str(work_dir),
                max_trials_global=args.trials, num_trials_per_iter=args.trials_per_iter,
                builder=ms.builder.LocalBuilder(f_build=build_candidate, timeout_sec=60))
    seconds = time.time() - start
    n = d2ltvm.compact_tuning_database(work_dir, out)
    info_path = out / "tuning_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {"runs": []}
    info.update({"model": args.model, "target": str(target), "tvm_version": tvm.__version__,
                 "workloads": n})
    if args.trials > 0:
        # --trials is spent on each workload (batch size) in turn
        info["runs"].append({"date": datetime.date.today().isoformat(),
                             "trials": args.trials * len(workloads), "tuning_seconds": round(seconds)})
    elif args.note_run:
        info["runs"].append({"date": datetime.date.today().isoformat(), "trials": args.note_run[0],
                             "tuning_seconds": args.note_run[1]})
    info["total_trials"] = sum(r["trials"] for r in info["runs"])
    info["total_tuning_seconds"] = sum(r["tuning_seconds"] for r in info["runs"])
    info_path.write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {n} best records to {out} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
