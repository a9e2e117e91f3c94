"""Benchmark the book's workloads: PyTorch eager against TVM, in one process, same inputs.

Usage (from the repository root, with the book's database in data/tuning/):

    python tools/benchmark.py                  # ResNet-18 batch 1, the MLP and the Keras CNN at batch 1 and 64
    python tools/benchmark.py --torch-compile  # add torch.compile (its first call takes a minute)

Prints one line per workload and method with its time relative to PyTorch eager, e.g.
`resnet18 batch1 tvm-tuned/torch 2.41` (below 1: faster than PyTorch). The ratios are medians of
many calls after warm-up; on a busy machine, run it twice.
"""
import argparse
import pathlib
import sys
import warnings

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--torch-compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--mcpu", default="znver5")
    parser.add_argument("--num-cores", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)

    import torch
    import tvm
    import d2ltvm

    target = d2ltvm.tuning_target(args.mcpu, args.num_cores)
    rows = []
    for name in ("resnet18", "mlp", "cnn"):
        database_dir = ROOT / "data" / "tuning" / f"{name}_{args.mcpu}"
        for w in d2ltvm.performance_workloads(name):
            model, x = w["model"], w["input"]
            x_tvm = tvm.runtime.tensor(x.numpy())
            variants = {"tvm-untuned": d2ltvm.compile_relax(w["mod"], w["weights"]),
                        "tvm-dispatch": d2ltvm.compile_relax(d2ltvm.dispatch_to_torch(w["mod"]),
                                                             w["weights"], target=target)}
            if name == "resnet18":
                folded = d2ltvm.fold_batchnorm(model)
                mod, weights = d2ltvm.torch_to_relax(folded, x)
                variants["tvm-dispatch-bnfold"] = d2ltvm.compile_relax(
                    d2ltvm.dispatch_to_torch(mod), weights, target=target)
            variants["tvm-tuned"] = d2ltvm.compile_tuned(w["mod"], w["weights"], database_dir, target, name)
            with torch.no_grad():
                expected = model(x).numpy()
                for label, compiled in variants.items():
                    d2ltvm.np.testing.assert_allclose(compiled(x.numpy()), expected, rtol=1e-4, atol=1e-4)
                methods = {"torch": lambda: model(x)}
                if args.torch_compile:
                    compiled_model = torch.compile(model)
                    methods["torch-compile"] = lambda: compiled_model(x)
                for label, compiled in variants.items():
                    methods[label] = (lambda c: lambda: c.run(x_tvm))(compiled)
                table = d2ltvm.benchmark(w["label"], methods, repeats=args.repeats, max_seconds=10)
            rows += table
            print("\n".join(d2ltvm.ratio_lines(table)), flush=True)


if __name__ == "__main__":
    main()
