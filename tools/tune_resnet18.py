"""Tune the book's performance workloads with MetaSchedule and ship a compact database.

Usage (from the repository root):

    python tools/tune_resnet18.py --model resnet18 --trials 2000
    python tools/tune_resnet18.py --model resnet18-blocked --trials 600 --confirm 16
    python tools/tune_resnet18.py --model mlp --trials 64
    python tools/tune_resnet18.py --model cnn --trials 128 --trials-per-iter 8

Each run tunes into a full work directory outside the repository (default
d2ltvm.cache_dir()/tuning/<model>_<mcpu>, i.e. ~/.cache/d2ltvm/tuning/<model>_<mcpu>, or
--work-dir), which keeps every measured candidate. Running the command again with the same work
directory RESUMES: the search starts from the best schedules already measured and adds new records,
so the database grows across runs. Size each run (--trials) to the time you have: TVM 0.27 wrote the
measured records into the work directory only when the search ended (seen here: none in the first 50
minutes of a 52-minute run), so a run stopped early can lose its trials; --trials 0 ships what the
work directory has. A work directory with no records yet (a new machine, a cleared cache) is first
seeded with the database the book ships for the class, so the search goes on from the best schedules
found so far and the shipped database can only improve. After tuning, the best record of every
workload is copied, gzipped, into data/tuning/<model>_<class>/ (under 200 KB for ResNet-18; <class>
is the target's instruction-set class, d2ltvm.isa_class: x86-64-avx512, x86-64-avx2, x86-64 or
aarch64), together with tuning_info.json (target, class, trials, tuning time, date, TVM version,
accumulated over runs, and the tuning progress: the model latency the search had measured after
every 50 trials). The search measures each candidate once; on a shared machine the fastest of
many noisy measurements is often a lucky one, so --confirm K builds the K fastest records of
every task again, times them in turns with the caches flushed (as the weights are in the whole
model), and ships the fastest by those times; tuning_info.json then records both estimates.

The database is tied to the target it was measured on: d2ltvm.host_target() (this machine's CPU
and the cores this process may use, or $D2LTVM_TARGET), with --mcpu and --num-cores to change
them; the chapter applies a database only to targets of the same class. Candidates are measured
with that many TVM threads (TVM_NUM_THREADS), the number the
chapter chapters/performance/performance.ipynb runs the models with; it explains how to apply the
result. Tuning depends on shapes, not on weight values: ResNet-18 uses torchvision's architecture
with seeded random weights when the pretrained ones cannot be downloaded.
"""
import argparse
import datetime
import hashlib
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_workloads(model_name, target):
    """Return a list of (label, relax module) to tune for MODEL_NAME on TARGET; resnet18-blocked
    is ResNet-18 with its convolutions in the blocked layout of TARGET's vector width."""
    import d2ltvm
    if not hasattr(d2ltvm, "blocked_workload"):
        raise SystemExit("d2ltvm is older than the notebooks: run tools/sync_package.py")
    if model_name == "resnet18-blocked":
        return [(w["label"], d2ltvm.blocked_workload(w, target)["mod"])
                for w in d2ltvm.performance_workloads("resnet18")]
    return [(w["label"], w["mod"]) for w in d2ltvm.performance_workloads(model_name)]


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


def confirm_best_records(work_dir, tasks, target, top_k, passes=5, repeat=20):
    """Time the TOP_K fastest records of every task in WORK_DIR again and choose by those times.

    The search measures each candidate once, and on a shared machine the fastest of a thousand
    noisy measurements is often a lucky one. Here each candidate is built once, then timed
    PASSES times, the candidates of a task taking turns, on fresh inputs and with the caches
    flushed before each call (all but the first argument, the input), as a kernel finds its
    weights in the whole model. Returns ({workload hash: the chosen record, with its median
    time}, [(task name, weight, the search's ms, the chosen's ms, the chosen's rank)]).
    """
    import numpy as np
    import tvm
    import tvm_ffi
    import d2ltvm
    from tvm.s_tir import meta_schedule as ms
    database = d2ltvm.open_tuning_database(work_dir)
    rng = np.random.default_rng(0)
    chosen, report = {}, []
    for task in tasks:
        workload = database.commit_workload(task.dispatched[0])
        key = tvm_ffi.structural_hash(workload.mod)
        records = database.get_top_k(workload, top_k)
        if key in chosen or not records:
            continue
        built = []
        for record in records:
            candidate = record.as_measure_candidate()
            module = build_candidate(candidate.sch.mod, target, None)
            shapes = [([int(n) for n in a.shape], str(a.dtype)) for a in candidate.args_info]
            built.append((module, shapes))
        times = [[] for _ in built]
        for _ in range(passes):
            for (module, shapes), seconds in zip(built, times):
                args = [tvm.runtime.tensor(rng.random(shape).astype(dtype))
                        for shape, dtype in shapes]
                timer = module.time_evaluator(module.entry_name, tvm.cpu(), number=1,
                                              repeat=repeat, min_repeat_ms=0,
                                              f_preproc="cache_flush_cpu_non_first_arg")
                seconds.append(float(np.median(timer(*args).results)))
        medians = [float(np.median(seconds)) for seconds in times]
        rank = int(np.argmin(medians))
        best = records[rank]
        chosen[key] = ms.database.TuningRecord(best.trace, workload, [medians[rank]],
                                               best.target, best.args_info)
        searched = sum(float(t) for t in records[0].run_secs) / len(records[0].run_secs)
        report.append((task.task_name, task.weight, searched * 1e3, medians[rank] * 1e3, rank))
    return chosen, report


def seed_work_dir(work_dir, out, model):
    """Copy the shipped compact database in OUT into WORK_DIR when WORK_DIR has no records yet.

    A search on a new machine then starts from the best schedules found so far, and compacting
    its result cannot replace a shipped record by a worse one. Returns the number of records
    copied (0 where WORK_DIR already has records or nothing is shipped).
    """
    import shutil
    import d2ltvm
    records = pathlib.Path(work_dir) / "database_tuning_record.json"
    shipped = pathlib.Path(out) / "database_tuning_record.json.gz"
    if (records.exists() and records.stat().st_size > 0) or not shipped.exists():
        return 0
    plain = d2ltvm.tuning_database_folder(out, model)
    for name in d2ltvm.DATABASE_FILES:
        shutil.copyfile(plain / name, pathlib.Path(work_dir) / name)
    return sum(1 for line in open(records) if line.strip())


def first_record_sha256(work_dir):
    """The SHA-256 of the first line of WORK_DIR's records: it tells a seeded work directory from
    another."""
    with open(pathlib.Path(work_dir) / "database_tuning_record.json") as records:
        return hashlib.sha256(records.readline().strip().encode()).hexdigest()


def progress_across_runs(info, work_dir, tasks):
    """The progress points of tuning_info.json INFO, with those of WORK_DIR recomputed.

    A work directory seeded from the shipped database (info["seeded_work_dir"]) holds the seeded
    records first: its points are shifted to count only the trials measured since, after the
    runs that came before the seeding, whose points are kept.
    """
    points = tuning_progress(work_dir, tasks)
    seed = info.get("seeded_work_dir")
    if not seed or seed["first_record_sha256"] != first_record_sha256(work_dir):
        return points  # the work directory holds the whole search
    earlier = [p for p in info.get("progress", []) if p[0] <= seed["after_trials"]]
    return earlier + [[seed["after_trials"] + n - seed["records"], ms]
                      for n, ms in points if n > seed["records"]]


def tuning_progress(work_dir, tasks, step=50):
    """[[trials, ms], ...]: the model latency (sum over tasks of weight x best time so far) after
    every STEP records.

    Records are read in the order they were measured, across all runs on WORK_DIR; a point is
    written once every task has a valid measurement. The latency is the search's own estimate
    from its measurements of single kernels, not a timing of the whole model.
    """
    import tvm_ffi
    weight = {}
    for task in tasks:
        key = str(tvm_ffi.structural_hash(task.dispatched[0]))
        weight[key] = weight.get(key, 0) + task.weight
    work_dir = pathlib.Path(work_dir)
    hashes = [json.loads(line)[0] for line in open(work_dir / "database_workload.json")
              if line.strip()]
    best, points, count = {}, [], 0

    def estimate():
        return round(1e3 * sum(weight[k] * best[k] for k in weight), 3)

    for line in open(work_dir / "database_tuning_record.json"):
        if not line.strip():
            continue
        index, record = json.loads(line)
        count += 1
        key, run_secs = hashes[index], [float(t) for t in (record[1] or [])]
        if key in weight and run_secs and max(run_secs) < 1e9:  # failed builds/runs record 1e10
            best[key] = min(best.get(key, float("inf")), sum(run_secs) / len(run_secs))
        if count % step == 0 and len(best) == len(weight):
            points.append([count, estimate()])
    if len(best) == len(weight) and (not points or points[-1][0] != count):
        points.append([count, estimate()])
    return points


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["resnet18", "resnet18-blocked", "mlp", "cnn"],
                        default="resnet18")
    parser.add_argument("--trials", type=int, default=600,
                        help="trials for each workload (batch size) in this run (0: only compact)")
    parser.add_argument("--trials-per-iter", type=int, default=16)
    parser.add_argument("--mcpu", default=None, help="LLVM CPU name (default: this machine's)")
    parser.add_argument("--num-cores", type=int, default=None,
                        help="cores to plan and measure for (default: those this process may use)")
    parser.add_argument("--work-dir", default=None,
                        help="full database (default: d2ltvm.cache_dir()/tuning/<model>_<mcpu>)")
    parser.add_argument("--out", default=None,
                        help="compact database (default data/tuning/<model>_<class>)")
    parser.add_argument("--confirm", type=int, default=0, metavar="K",
                        help="time the K fastest records of every task again (caches flushed) "
                             "and ship the fastest by those times (0: the search's fastest)")
    parser.add_argument("--note-run", nargs=2, type=int, metavar=("TRIALS", "SECONDS"),
                        help="with --trials 0: record in tuning_info.json a run whose final "
                             "step did not finish")
    args = parser.parse_args()
    import tvm
    import d2ltvm
    from tvm.s_tir import meta_schedule as ms

    config = {k: v for k, v in d2ltvm.host_target().export().items() if k not in ("tag", "keys")}
    config["num-cores"] = args.num_cores or config["num-cores"]
    if args.mcpu:
        config["mcpu"] = args.mcpu
    target = d2ltvm.check_target_runs_here(tvm.target.Target(config))  # it measures on this CPU
    # TVM's thread pool uses half the logical CPUs on x86 (it assumes hyper-threading). The runner
    # that measures candidates inherits this variable: measure with the threads the model will use.
    os.environ["TVM_NUM_THREADS"] = str(config["num-cores"])
    mcpu, isa = config.get("mcpu", "generic"), d2ltvm.isa_class(target)
    work_dir = pathlib.Path(args.work_dir or d2ltvm.cache_dir() / "tuning" / f"{args.model}_{mcpu}")
    out = pathlib.Path(args.out or ROOT / "data" / "tuning" / f"{args.model}_{isa}")
    print(f"tuning {args.model} for {target} (class {isa})", flush=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    seeded = seed_work_dir(work_dir, out, args.model)
    if seeded:
        print(f"notice: {work_dir} had no records: the search starts from the {seeded} best "
              f"records shipped in {out}", flush=True)

    def measured():  # records in the work directory: one per measured candidate
        path = work_dir / "database_tuning_record.json"
        return sum(1 for line in open(path) if line.strip()) if path.exists() else 0

    records_before, start = measured(), time.time()
    workloads = build_workloads(args.model, target)
    all_tasks = []
    for label, mod in workloads:
        prepared = d2ltvm.prepare_for_tuning(mod, target)
        tasks = ms.relax_integration.extract_tasks(prepared, target)
        all_tasks += tasks
        print(f"{label}: {len(tasks)} tasks, tuning {args.trials} trials into {work_dir}",
              flush=True)
        if args.trials > 0:
            ms.relax_integration.tune_relax(
                prepared, params={}, target=target, work_dir=str(work_dir),
                max_trials_global=args.trials, num_trials_per_iter=args.trials_per_iter,
                builder=ms.builder.LocalBuilder(f_build=build_candidate, timeout_sec=60))
    seconds = time.time() - start
    chosen = {}
    if args.confirm > 0:
        chosen, report = confirm_best_records(work_dir, all_tasks, target, args.confirm)
        for name, weight, searched, confirmed, rank in report:
            print(f"confirm {name}: x{weight}, search {searched:.3f} ms, "
                  f"chosen (rank {rank}) {confirmed:.3f} ms", flush=True)
    n = d2ltvm.compact_tuning_database(work_dir, out, chosen)
    info_path = out / "tuning_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {"runs": []}
    if seeded:  # the runs recorded so far came before the seeded records
        info["seeded_work_dir"] = {"records": seeded,
                                   "first_record_sha256": first_record_sha256(work_dir),
                                   "after_trials": sum(r["trials"] for r in info["runs"])}
    info.update({"model": args.model, "target": str(target), "isa_class": isa,
                 "tvm_version": tvm.__version__, "workloads": n})
    if args.trials > 0:
        # --trials is spent on each workload (batch size) in turn; the search may overshoot it
        info["runs"].append({"date": datetime.date.today().isoformat(),
                             "trials": measured() - records_before,
                             "tuning_seconds": round(seconds)})
    elif args.note_run:
        info["runs"].append({"date": datetime.date.today().isoformat(), "trials": args.note_run[0],
                             "tuning_seconds": args.note_run[1]})
    info["progress"] = progress_across_runs(info, work_dir, all_tasks)
    info.pop("confirmed", None)  # this compaction's records are the search's unless confirmed
    if chosen:
        info["confirmed"] = {
            "date": datetime.date.today().isoformat(), "top_k": args.confirm,
            "estimate_ms": round(sum(w * ms_ for _, w, _, ms_, _ in report), 3),
            "search_estimate_ms": round(sum(w * ms_ for _, w, ms_, _, _ in report), 3)}
    info["total_trials"] = sum(r["trials"] for r in info["runs"])
    info["total_tuning_seconds"] = sum(r["tuning_seconds"] for r in info["runs"])
    info_path.write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {n} best records to {out} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
