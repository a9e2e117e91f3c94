"""Benchmark the book's workloads: PyTorch eager against TVM, in one process, same inputs.

Usage (from the repository root):

    python tools/benchmark.py                  # ResNet-18 batch 1; the MLP and the CNN, batch 1, 64
    python tools/benchmark.py --torch-compile  # add torch.compile (its first call compiles the model)
    python tools/benchmark.py --models resnet18 --methods tvm-tuned --tvm-threads 1

Prints one line per workload and method with its time relative to PyTorch eager, in the form
`resnet18 batch1 tvm-tuned/torch RATIO` (below 1: faster than PyTorch; the ratios this machine
measures are in chapters/performance/performance.ipynb). The ratios are medians of many calls
after warm-up; on a busy machine, run it twice. TVM runs with as many threads as
PyTorch (--tvm-threads changes that, to show what the thread count is worth).

Everything is compiled for d2ltvm.host_target() (this machine, or $D2LTVM_TARGET). tvm-tuned uses
the database in data/tuning/ made for this machine's class of CPU (d2ltvm.isa_class); where the
book ships none, that method is left out with a notice on stderr naming the command that tunes one.
"""
import argparse
import pathlib
import sys
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
METHODS = ("tvm-untuned", "tvm-dispatch", "tvm-dispatch-bnfold", "tvm-dispatch-prepacked", "tvm-tuned")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch-compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--models", nargs="+", choices=["resnet18", "mlp", "cnn"], default=["resnet18", "mlp", "cnn"])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="TVM variants to time (tvm-dispatch-bnfold exists for ResNet-18 only, "
                             "tvm-dispatch-prepacked for the models with convolutions)")
    parser.add_argument("--tvm-threads", type=int, default=None,
                        help="threads of TVM's thread pool (default: as many as PyTorch uses)")
    parser.add_argument("--repeats", type=int, default=25, help="timed samples per method and round")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved rounds over all methods; the ratio is the median over rounds")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)

    import torch
    import tvm
    import d2ltvm

    d2ltvm.set_tvm_threads(args.tvm_threads or torch.get_num_threads())
    has_onednn = torch.backends.mkldnn.is_available()
    if not has_onednn and "tvm-dispatch-prepacked" in args.methods:
        print("notice: this PyTorch has no oneDNN: tvm-dispatch-prepacked left out", file=sys.stderr)
    target = d2ltvm.host_target()
    for name in args.models:
        database_dir = d2ltvm.shipped_tuning_database(name, target)
        if database_dir is None and "tvm-tuned" in args.methods:
            print(f"notice: no shipped {name} database for {d2ltvm.isa_class(target)}: tvm-tuned "
                  f"left out; tune one with `{d2ltvm.TUNE_COMMAND.format(model=name)}`",
                  file=sys.stderr, flush=True)
        for w in d2ltvm.performance_workloads(name):
            model, x = w["model"], w["input"]
            x_tvm = tvm.runtime.tensor(x.numpy())
            builders = {
                "tvm-untuned": lambda: d2ltvm.compile_relax(w["mod"], w["weights"], target),
                "tvm-dispatch": lambda: d2ltvm.compile_relax(d2ltvm.dispatch_to_torch(w["mod"]), w["weights"],
                                                             target=target, pipeline=d2ltvm.dispatch_pipeline()),
                "tvm-dispatch-bnfold": lambda: d2ltvm.compile_relax(
                    d2ltvm.dispatch_to_torch(folded[0]), folded[1], target=target,
                    pipeline=d2ltvm.dispatch_pipeline()),
                "tvm-dispatch-prepacked": lambda: d2ltvm.compile_relax(
                    d2ltvm.dispatch_to_onednn(w["mod"]), w["weights"], target=target,
                    pipeline=d2ltvm.dispatch_pipeline()),
                "tvm-tuned": lambda: d2ltvm.compile_tuned(w["mod"], w["weights"], database_dir, target, name),
            }
            methods = [m for m in args.methods if (m != "tvm-dispatch-bnfold" or name == "resnet18")
                       and (m != "tvm-dispatch-prepacked" or (name != "mlp" and has_onednn))
                       and (m != "tvm-tuned" or database_dir is not None)]
            if "tvm-dispatch-bnfold" in methods:
                folded = d2ltvm.torch_to_relax(d2ltvm.fold_batchnorm(model), x)
            variants = {m: builders[m]() for m in methods}
            with torch.no_grad():
                expected = model(x).numpy()
                for label, compiled in variants.items():
                    d2ltvm.np.testing.assert_allclose(compiled(x.numpy()), expected, rtol=1e-4, atol=1e-4)
                timed = {"torch": lambda: model(x)}
                compiled_model = d2ltvm.compile_with_torch(w) if args.torch_compile else None
                if compiled_model is not None:
                    timed["torch-compile"] = lambda: compiled_model(x)
                for label, compiled in variants.items():
                    timed[label] = (lambda c: lambda: c.run(x_tvm))(compiled)
                table = d2ltvm.benchmark(w["label"], timed, rounds=args.rounds, repeats=args.repeats,
                                        max_seconds=10)
            print("\n".join(d2ltvm.ratio_lines(table)), flush=True)


if __name__ == "__main__":
    main()
