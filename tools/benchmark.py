"""Benchmark the book's workloads: PyTorch eager against TVM, in one process, same inputs.

Usage (from the repository root):

    python tools/benchmark.py                       # ResNet-18 batch 1; MLP and CNN, batch 1, 64
    python tools/benchmark.py --baselines onnxruntime  # fewer baselines (default: all four)
    python tools/benchmark.py --models resnet18 --methods tvm-tuned --tvm-threads 1

Times, per workload, PyTorch eager and the baselines a practitioner would deploy with
(--baselines: eager with channels-last memory, torch.compile with freezing, ONNX Runtime and
OpenVINO, each checked against PyTorch eager first) next to the TVM routes (--methods), in one
process, on the same input, in rounds whose order is shuffled. Prints one line per workload and
method with its time relative to PyTorch eager, in the form `resnet18 batch1 tvm-tuned/torch
RATIO` (below 1: faster than PyTorch; the ratios this machine measures are in
chapters/performance/performance.ipynb), then, for every method, its median time with the
fastest and slowest round, its achieved GFLOP/s and its share of this machine's estimated
peak. The ratios are medians over rounds of medians of many calls after warm-up; on a busy
machine, run it twice. Every runtime gets as many threads as PyTorch (--tvm-threads changes
TVM's, to show what the thread count is worth).

Everything is compiled for d2ltvm.host_target() (this machine, or $D2LTVM_TARGET). tvm-tuned uses
the database in data/tuning/ made for this machine's class of CPU (d2ltvm.isa_class); where the
book ships none, that method is left out with a notice on stderr naming the command that tunes one.
tvm-tuned-blocked (ResNet-18 only) is the same with the convolutions in a blocked layout
(d2ltvm.blocked_workload) and the resnet18-blocked database. tvm-dispatch-direct calls oneDNN's
C library without PyTorch in between (d2ltvm.call_onednn_directly); it needs the onednn-cpu-gomp
wheel, which exists for Linux x86-64 only, and is left out with a notice elsewhere.
tvm-dispatch-winograd (ResNet-18 only: the CNN has no padded 3x3 convolution) is that route with
the 3x3 convolutions of enough tiles computed by Winograd's algorithm (winograd=True).
"""
import argparse
import pathlib
import sys
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# d2ltvm.BASELINES (a test keeps them equal), here so that --help needs no import of TVM
BASELINES = ("torch-channels-last", "torch-compile", "onnxruntime", "openvino")
METHODS = ("tvm-untuned", "tvm-dispatch", "tvm-dispatch-bnfold", "tvm-dispatch-prepacked",
           "tvm-dispatch-fused", "tvm-dispatch-direct", "tvm-dispatch-winograd", "tvm-tuned",
           "tvm-tuned-blocked")
MODELS = ("resnet18", "mlp", "cnn")
ONEDNN_METHODS = ("tvm-dispatch-prepacked", "tvm-dispatch-fused",  # models with convolutions
                  "tvm-dispatch-direct", "tvm-dispatch-winograd")
LIBDNNL_METHODS = ("tvm-dispatch-direct", "tvm-dispatch-winograd")  # oneDNN's C library
RESNET_METHODS = ("tvm-dispatch-bnfold", "tvm-dispatch-winograd", "tvm-tuned-blocked")
TUNED_METHODS = ("tvm-tuned", "tvm-tuned-blocked")  # need a database shipped for this class


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baselines", nargs="*", choices=BASELINES, default=list(BASELINES),
                        help="baselines besides PyTorch eager (torch-channels-last for the models "
                             "with convolutions; torch.compile's first call compiles the model)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="TVM variants to time (tvm-dispatch-bnfold, -winograd and "
                             "tvm-tuned-blocked exist for ResNet-18 only, tvm-dispatch-prepacked, "
                             "-fused and -direct for the models with convolutions; -direct and "
                             "-winograd need oneDNN's C library, Linux x86-64)")
    parser.add_argument("--tvm-threads", type=int, default=None,
                        help="threads of TVM's thread pool (default: as many as PyTorch uses)")
    parser.add_argument("--repeats", type=int, default=25,
                        help="timed samples per method and round")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds over all methods; the ratio is the median over "
                             "rounds")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)

    import torch
    import tvm
    import d2ltvm

    d2ltvm.set_tvm_threads(args.tvm_threads or torch.get_num_threads())
    has_onednn = torch.backends.mkldnn.is_available()
    if not has_onednn and set(ONEDNN_METHODS) & set(args.methods):
        print("notice: this PyTorch has no oneDNN: tvm-dispatch-prepacked, -fused, -direct and "
              "-winograd left out", file=sys.stderr)
    has_libdnnl = d2ltvm.onednn_library_missing() is None
    if has_onednn and not has_libdnnl and set(LIBDNNL_METHODS) & set(args.methods):
        print(f"notice: {d2ltvm.onednn_library_missing()}; tvm-dispatch-direct and -winograd "
              "left out", file=sys.stderr)
    target = d2ltvm.host_target()
    threads = torch.get_num_threads()
    peak = d2ltvm.peak_gflops(target)
    summary = []
    for name in args.models:
        tuned_models = {"tvm-tuned": name}  # method -> the database it compiles with
        if name == "resnet18":  # the blocked layout is made for ResNet-18's convolutions
            tuned_models["tvm-tuned-blocked"] = name + "-blocked"
        databases = {method: d2ltvm.shipped_tuning_database(model_name, target)
                     for method, model_name in tuned_models.items()}
        for method, model_name in tuned_models.items():
            if databases[method] is None and method in args.methods:
                print(f"notice: no shipped {model_name} database for {d2ltvm.isa_class(target)}: "
                      f"{method} left out; tune one with "
                      f"`{d2ltvm.TUNE_COMMAND.format(model=model_name)}`",
                      file=sys.stderr, flush=True)
        for w in d2ltvm.performance_workloads(name):
            model, x = w["model"], w["input"]
            x_tvm = tvm.runtime.tensor(x.numpy())

            def fused_mod():  # oneDNN calls with their post-operations (BatchNorm folded first)
                return d2ltvm.fuse_onednn_post_ops(d2ltvm.dispatch_to_onednn(folded[0]))

            builders = {
                "tvm-untuned": lambda: d2ltvm.compile_relax(w["mod"], w["weights"], target),
                "tvm-dispatch": lambda: d2ltvm.compile_relax(
                    d2ltvm.dispatch_to_torch(w["mod"]), w["weights"], target=target,
                    pipeline=d2ltvm.dispatch_pipeline()),
                "tvm-dispatch-bnfold": lambda: d2ltvm.compile_relax(
                    d2ltvm.dispatch_to_torch(folded[0]), folded[1], target=target,
                    pipeline=d2ltvm.dispatch_pipeline()),
                "tvm-dispatch-prepacked": lambda: d2ltvm.compile_relax(
                    d2ltvm.dispatch_to_onednn(w["mod"]), w["weights"], target=target,
                    pipeline=d2ltvm.dispatch_pipeline()),
                "tvm-dispatch-fused": lambda: d2ltvm.compile_relax(
                    fused_mod(), folded[1], target=target, pipeline=d2ltvm.dispatch_pipeline()),
                "tvm-dispatch-direct": lambda: d2ltvm.compile_relax(
                    d2ltvm.call_onednn_directly(fused_mod()), folded[1], target=target,
                    pipeline=d2ltvm.dispatch_pipeline()),
                "tvm-dispatch-winograd": lambda: d2ltvm.compile_relax(
                    d2ltvm.call_onednn_directly(fused_mod(), winograd=True), folded[1],
                    target=target, pipeline=d2ltvm.dispatch_pipeline()),
                "tvm-tuned": lambda: d2ltvm.compile_tuned(w["mod"], w["weights"],
                                                          databases["tvm-tuned"], target, name),
                "tvm-tuned-blocked": lambda: d2ltvm.compile_tuned(
                    blocked["mod"], blocked["weights"], databases["tvm-tuned-blocked"], target,
                    name + "-blocked"),
            }
            methods = [m for m in args.methods if (m not in RESNET_METHODS or name == "resnet18")
                       and (m not in ONEDNN_METHODS or (name != "mlp" and has_onednn))
                       and (m not in LIBDNNL_METHODS or has_libdnnl)
                       and (m not in TUNED_METHODS or databases.get(m) is not None)]
            # ResNet-18 with its BatchNorms folded into the convolutions (the CNN has none)
            folded = (d2ltvm.torch_to_relax(d2ltvm.fold_batchnorm(model), x) if name == "resnet18"
                      else (w["mod"], w["weights"]))
            if "tvm-tuned-blocked" in methods:
                blocked = d2ltvm.blocked_workload(w, target)
            variants = {m: builders[m]() for m in methods}
            with torch.no_grad():
                expected = model(x).numpy()
                for label, compiled in variants.items():
                    d2ltvm.np.testing.assert_allclose(compiled(x.numpy()), expected,
                                                      rtol=1e-4, atol=1e-4)
                timed = d2ltvm.baseline_methods(w, threads, args.baselines)
                for label, compiled in variants.items():
                    timed[label] = (lambda c: lambda: c.run(x_tvm))(compiled)
                table = d2ltvm.benchmark(w["label"], timed, rounds=args.rounds,
                                         repeats=args.repeats, max_seconds=10)
            print("\n".join(d2ltvm.ratio_lines(table)), flush=True)
            flops = {w["label"]: d2ltvm.count_flops(w)}
            summary += d2ltvm.throughput_lines(d2ltvm.add_throughput(table, flops, peak), flops,
                                               peak)
    print(f"\nmedian ms [fastest-slowest round], GFLOP/s, share of the estimated peak "
          f"({peak['gflops'] or 0:.0f} GFLOP/s: {peak['cores']} cores x {peak['fma_units']} FMA x "
          f"{peak['lanes']} lanes x 2 x {peak['ghz'] or 0:.2f} GHz)")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
