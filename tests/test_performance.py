"""Tests for the helpers of chapters/performance/performance.ipynb (offline, no timing assertions)."""
import hashlib
import pathlib
import re

import numpy as np
import pytest

import d2ltvm

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESNET_DB = ROOT / "data" / "tuning" / "resnet18_x86-64-avx512"
MLP_DB = ROOT / "data" / "tuning" / "mlp_x86-64-avx512"
TOLERANCE = dict(rtol=1e-4, atol=1e-4)  # float32 sums in another order; a wrong kernel is far off
SSE_ONLY = {"kind": "llvm", "mcpu": "x86-64-v2", "num-cores": 2}
needs_onednn = pytest.mark.skipif(
    not __import__("torch").backends.mkldnn.is_available(),
    reason="this PyTorch has no oneDNN (e.g. macOS arm64): the oneDNN dispatch route is skipped")


needs_libdnnl = pytest.mark.skipif(
    d2ltvm.onednn_library_missing() is not None,
    reason=f"{d2ltvm.onednn_library_missing()}: the direct oneDNN route is skipped")


def tuned_build(w, model):
    """Compile workload W with the shipped database of this machine's class, or else (correctness
    only: the schedules are valid on any CPU, just not fast) with the AVX-512 one."""
    folder = d2ltvm.shipped_tuning_database(model)
    if folder is not None:
        return d2ltvm.compile_tuned(w["mod"], w["weights"], folder, model=model)
    avx512 = ROOT / "data" / "tuning" / f"{model}_x86-64-avx512"
    return d2ltvm.compile_tuned(w["mod"], w["weights"], avx512, model=model, any_class=True)


@pytest.fixture(scope="module")
def resnet():
    return d2ltvm.performance_workloads("resnet18")[0]


@pytest.fixture(scope="module")
def resnet_fused(resnet):
    """ResNet-18 with its BatchNorms folded, each convolution a oneDNN call with its post-ops:
    (module, weights), shared by the library routes' tests."""
    folded_mod, folded_weights = d2ltvm.torch_to_relax(d2ltvm.fold_batchnorm(resnet["model"]),
                                                       resnet["input"])
    return d2ltvm.fuse_onednn_post_ops(d2ltvm.dispatch_to_onednn(folded_mod)), folded_weights


@pytest.fixture(scope="module")
def resnet_reference(resnet):
    import torch
    with torch.no_grad():
        return resnet["model"](resnet["input"]).numpy()


@pytest.fixture(scope="module")
def mlps():
    return d2ltvm.performance_workloads("mlp")


@pytest.fixture(scope="module")
def cnns():
    return d2ltvm.performance_workloads("cnn")


@pytest.mark.parametrize("database", sorted((ROOT / "data" / "tuning").iterdir()), ids=lambda p: p.name)
def test_shipped_database_covers_every_task(database, request):
    # every shipped database, of every class, holds a record for each task of its model's
    # workloads (batch 1, and 64 for the MLP and the CNN), for the target it was tuned for
    model = database.name.split("_")[0]
    target = d2ltvm.database_target(database)
    workloads = {"resnet18": lambda: [request.getfixturevalue("resnet")],
                 "resnet18-blocked": lambda: [d2ltvm.blocked_workload(
                     request.getfixturevalue("resnet"), target)],
                 "mlp": lambda: request.getfixturevalue("mlps"),
                 "cnn": lambda: request.getfixturevalue("cnns")}[model]()
    for w in workloads:
        assert d2ltvm.missing_tuning_records(w["mod"], database, target, model=model) == [], w["label"]


def test_cnn_twin_matches_keras():
    import torch
    keras = d2ltvm.import_keras()
    keras_model, torch_model = d2ltvm.keras_cnn_torch_model()
    images = np.random.default_rng(1).random((3, 28, 28, 1), dtype=np.float32)
    with torch.no_grad():
        twin = torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(twin, keras.ops.convert_to_numpy(keras_model(images, training=False)),
                               rtol=1e-5, atol=1e-6)


def assert_variants_match_torch(workloads, dispatched_op, model, untuned=False):
    """Dispatched and tuned (and optionally untuned) builds of each workload equal its PyTorch model."""
    import torch
    for w in workloads:
        with torch.no_grad():
            expected = w["model"](w["input"]).numpy()
        dispatched = d2ltvm.dispatch_to_torch(w["mod"])
        assert d2ltvm.count_relax_ops(dispatched, dispatched_op) == 0
        builds = [d2ltvm.compile_relax(w["mod"], w["weights"])] if untuned else []
        builds += [d2ltvm.compile_relax(dispatched, w["weights"]),
                   tuned_build(w, model)]
        for compiled in builds:
            np.testing.assert_allclose(compiled(w["input"].numpy()), expected, **TOLERANCE)


def test_cnn_variants_match_torch(cnns):
    assert_variants_match_torch(cnns, "relax.nn.conv2d", "cnn")


@needs_onednn
def test_cnn_dispatched_to_onednn_matches_torch(cnns):
    import torch
    for w in cnns:
        compiled = d2ltvm.compile_relax(d2ltvm.dispatch_to_onednn(w["mod"]), w["weights"],
                                        pipeline=d2ltvm.dispatch_pipeline())
        assert sum(isinstance(p, d2ltvm.PackedConv2dWeight) for p in compiled.weights) == 2
        with torch.no_grad():
            expected = w["model"](w["input"]).numpy()
        np.testing.assert_allclose(compiled(w["input"].numpy()), expected, **TOLERANCE)


@pytest.mark.parametrize("database", sorted((ROOT / "data" / "tuning").iterdir()), ids=lambda p: p.name)
def test_database_records_its_target_and_progress(database):
    import json
    info = json.loads((database / "tuning_info.json").read_text())
    # the folder is named after the class of the target it was tuned for, and its records agree
    assert database.name == f"{info['model']}_{info['isa_class']}"
    assert d2ltvm.isa_class(d2ltvm.database_target(database)) == info["isa_class"]
    records = d2ltvm.open_tuning_database(database, model=info["model"])
    assert d2ltvm.record_isa_classes(records) == {info["isa_class"]}
    assert info["total_trials"] > 0 and info["workloads"] > 0
    assert info["total_trials"] == sum(run["trials"] for run in info["runs"])
    trials, latency = zip(*info["progress"])
    # the estimate is a sum of best-so-far times: it can only fall as trials are added
    assert list(trials) == sorted(trials) and trials[-1] <= info["total_trials"]
    assert all(a >= b for a, b in zip(latency, latency[1:])) and latency[-1] > 0


def test_tuning_progress_of_a_compact_database(mlps):
    """The compact database holds one best record per task, so the progress is one point: their weighted sum."""
    from tvm.s_tir import meta_schedule as ms
    import tune_resnet18
    target = d2ltvm.database_target(MLP_DB)
    tasks = [t for w in mlps
             for t in ms.relax_integration.extract_tasks(d2ltvm.prepare_for_tuning(w["mod"], target), target)]
    database = d2ltvm.open_tuning_database(MLP_DB, model="mlp")
    expected = 0.0
    for task in tasks:
        record = database.query_tuning_record(task.dispatched[0], target, task.task_name)
        expected += task.weight * sum(float(t) for t in record.run_secs) / len(record.run_secs)
    progress = tune_resnet18.tuning_progress(d2ltvm.tuning_database_folder(MLP_DB), tasks, step=1)
    assert progress[-1][0] == len(database.get_all_tuning_records())
    assert progress[-1][1] == pytest.approx(1e3 * expected, abs=5e-4)  # rounded to the microsecond
    # with a task the database has never measured, no estimate of the whole model exists
    conv = d2ltvm.performance_workloads("cnn", batch_sizes=[1])[0]
    conv_tasks = ms.relax_integration.extract_tasks(d2ltvm.prepare_for_tuning(conv["mod"], target), target)
    conv_task = next(t for t in conv_tasks if "conv2d" in t.task_name)  # the MLP has no convolution
    assert tune_resnet18.tuning_progress(d2ltvm.tuning_database_folder(MLP_DB), tasks + [conv_task],
                                         step=1) == []


def test_progress_across_runs_shifts_a_seeded_work_dir(monkeypatch, tmp_path):
    import tune_resnet18
    (tmp_path / "database_tuning_record.json").write_text("first\nsecond\n")
    # the work directory holds the 2 seeded records first, then 100 measured ones
    monkeypatch.setattr(tune_resnet18, "tuning_progress",
                        lambda work_dir, tasks: [[2, 4.0], [52, 3.5], [102, 3.0]])
    info = {"progress": [[100, 5.0], [200, 4.0]],
            "seeded_work_dir": {"records": 2, "after_trials": 200,
                                "first_record_sha256": hashlib.sha256(b"first").hexdigest()}}
    assert tune_resnet18.progress_across_runs(info, tmp_path, []) == [
        [100, 5.0], [200, 4.0], [250, 3.5], [300, 3.0]]
    # another work directory (not the seeded one) holds its whole search: its points as they are
    info["seeded_work_dir"]["first_record_sha256"] = hashlib.sha256(b"second").hexdigest()
    assert tune_resnet18.progress_across_runs(info, tmp_path, []) == [[2, 4.0], [52, 3.5], [102, 3.0]]


def test_an_empty_work_dir_is_seeded_with_the_shipped_database(tmp_path):
    import json
    import shutil
    import subprocess
    import sys
    shipped = d2ltvm.shipped_tuning_database("mlp")
    if shipped is None:
        pytest.skip(f"the book ships no MLP database for {d2ltvm.isa_class(d2ltvm.host_target())}")
    out, work_dir = tmp_path / "out", tmp_path / "work"
    shutil.copytree(shipped, out)
    command = [sys.executable, str(ROOT / "tools" / "tune_resnet18.py"), "--model", "mlp",
               "--trials", "0", "--work-dir", str(work_dir), "--out", str(out)]
    first = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    count = len(d2ltvm.open_tuning_database(shipped, model="mlp").get_all_tuning_records())
    assert f"had no records: the search starts from the {count} best records shipped" in first
    records = (work_dir / "database_tuning_record.json").read_text().splitlines()
    assert len(records) == count
    before = json.loads((shipped / "tuning_info.json").read_text())
    after = json.loads((out / "tuning_info.json").read_text())
    # nothing was tuned: the same runs, progress and best records, and the seed is recorded
    assert (after["runs"], after["progress"]) == (before["runs"], before["progress"])
    assert after["seeded_work_dir"] == {
        "records": count, "first_record_sha256": hashlib.sha256(records[0].encode()).hexdigest(),
        "after_trials": before["total_trials"]}
    def best(folder):
        return {str(r.workload.mod): [float(t) for t in r.run_secs] for r in
                d2ltvm.open_tuning_database(folder, model="mlp").get_all_tuning_records()}
    assert len(best(out)) == count and best(out) == best(shipped)
    # a second run finds records there: no second seeding
    second = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "had no records" not in second
    assert len((work_dir / "database_tuning_record.json").read_text().splitlines()) == count


THREADS_SCRIPT = """
import sys, tvm, d2ltvm
first = d2ltvm.set_tvm_threads(int(sys.argv[1]))
try:
    d2ltvm.set_tvm_threads(first + 1)
except RuntimeError as err:
    print(first, tvm.runtime.num_threads(), err)
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_set_tvm_threads_sizes_the_pool_once(threads):
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", THREADS_SCRIPT, str(threads)], env=env,
                         capture_output=True, text=True, check=True).stdout
    first, now, message = out.split(" ", 2)
    assert (int(first), int(now)) == (threads, threads)
    assert "cannot be resized" in message and f"TVM_NUM_THREADS={threads + 1}" in message


def test_benchmark_script_prints_one_ratio_line_per_workload_and_method():
    # the script runs and checks its variants and baselines against torch; the ratios' values are
    # not tested (torch.compile is left out here: compiling takes a minute)
    import subprocess
    import sys
    # (the MLP has no convolution, so it gets no tvm-dispatch-prepacked or channels-last line;
    # tvm-tuned-blocked and tvm-dispatch-winograd are ResNet-18's alone)
    import torch
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), "--models", "mlp",
                             "cnn", "--methods", "tvm-dispatch", "tvm-dispatch-prepacked", "tvm-dispatch-fused",
                             "tvm-dispatch-direct", "tvm-dispatch-winograd", "tvm-tuned", "tvm-tuned-blocked", "--baselines", "torch-channels-last", "onnxruntime", "openvino",
                             "--repeats", "3", "--rounds", "1"],
                            capture_output=True, text=True, check=True)
    lines = [line for line in result.stdout.splitlines() if "/torch " in line]
    # tvm-tuned where a database fits this machine's class, prepacked where PyTorch has oneDNN
    tuned = {m: d2ltvm.shipped_tuning_database(m) is not None for m in ("mlp", "cnn")}
    onednn = torch.backends.mkldnn.is_available()
    direct = d2ltvm.onednn_library_missing() is None  # oneDNN's C library: Linux x86-64
    methods = ("torch-channels-last", "onnxruntime", "openvino", "tvm-dispatch",
               "tvm-dispatch-prepacked", "tvm-dispatch-fused", "tvm-dispatch-direct", "tvm-tuned")
    expected = [f"{model} batch{b} {m}/torch" for model in ("mlp", "cnn") for b in (1, 64)
                for m in methods
                if (m != "tvm-tuned" or tuned[model]) and (m != "torch-channels-last" or model == "cnn")
                and (m not in ("tvm-dispatch-prepacked", "tvm-dispatch-fused") or (model == "cnn" and onednn))
                and (m != "tvm-dispatch-direct" or (model == "cnn" and direct))]
    assert [line.rsplit(" ", 1)[0] for line in lines] == expected
    for model in ("mlp", "cnn"):
        assert tuned[model] or f"no shipped {model} database" in result.stderr
    assert all(re.fullmatch(r"\d+\.\d\d", line.rsplit(" ", 1)[1]) for line in lines)
    # then one throughput line per workload and method, PyTorch eager included
    rates = [line for line in result.stdout.splitlines()
             if line.startswith(("mlp ", "cnn ")) and " GFLOP/s" in line]
    assert len(rates) == len(lines) + 4
    assert all(re.search(r"\d+\.\d{3} ms \[\d+\.\d{3}-\d+\.\d{3}\] +\d+\.\d GFLOP/s", r) for r in rates)
    if d2ltvm.peak_gflops()["gflops"]:  # 0.2 MFLOP: a few microseconds on any CPU
        assert all(r.endswith("(call overhead)") == r.startswith("mlp batch1 ") for r in rates
                   if r.startswith("mlp"))


def test_set_tvm_threads_rejects_zero():
    with pytest.raises(ValueError, match="at least one thread"):
        d2ltvm.set_tvm_threads(0)


def test_missing_records_are_reported(resnet):
    # a database holding only the MLP's tasks misses every ResNet-18 task
    missing = d2ltvm.missing_tuning_records(resnet["mod"], MLP_DB, d2ltvm.database_target(MLP_DB))
    assert len(missing) > 10 and any("conv2d" in name for name in missing)


def test_records_of_another_class_count_as_missing(resnet):
    import tvm
    tasks = d2ltvm.missing_tuning_records(resnet["mod"], RESNET_DB, tvm.target.Target(SSE_ONLY))
    assert len(tasks) == 20  # every task has an AVX-512 record, none fits an SSE-only CPU


def test_compile_tuned_refuses_another_class_clearly(resnet):
    import tvm
    with pytest.raises(ValueError) as info:
        d2ltvm.compile_tuned(resnet["mod"], resnet["weights"], RESNET_DB,
                             target=tvm.target.Target(SSE_ONLY))
    message = str(info.value)
    assert "tuned for x86-64-avx512" in message and "target is x86-64 (x86-64-v2)" in message
    assert "tools/tune_resnet18.py --model resnet18" in message


SHIPPED_CLASSES = {"resnet18": {"x86-64-avx512", "x86-64-avx2"},
                   "resnet18-blocked": {"x86-64-avx512", "x86-64-avx2"},
                   "mlp": {"x86-64-avx512", "x86-64-avx2"},
                   "cnn": {"x86-64-avx512", "x86-64-avx2"}}


def test_the_shipped_databases_are_these():
    folders = sorted(p.name for p in (ROOT / "data" / "tuning").iterdir() if p.is_dir())
    assert folders == sorted(f"{m}_{c}" for m, classes in SHIPPED_CLASSES.items() for c in classes)


@pytest.mark.parametrize("spec", [
    SSE_ONLY,
    {"kind": "llvm", "mcpu": "x86-64-v3"},  # AVX2 + FMA
    {"kind": "llvm", "mcpu": "x86-64-v4"},  # AVX-512
    {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "generic"},
], ids=lambda spec: spec["mtriple"].split("-")[0] if "mtriple" in spec else spec["mcpu"])
def test_shipped_database_is_chosen_by_class(spec):
    import tvm
    target = tvm.target.Target(spec)
    for model, classes in SHIPPED_CLASSES.items():
        folder = d2ltvm.shipped_tuning_database(model, target)
        expected = f"{model}_{d2ltvm.isa_class(target)}"
        assert (folder and folder.name) == (expected if d2ltvm.isa_class(target) in classes else None)


def test_tuned_resnet18_matches_torch(resnet, resnet_reference):
    compiled = tuned_build(resnet, "resnet18")
    assert "main_transform_params" in d2ltvm.list_vm_functions(compiled.vm)  # weights were prepacked
    np.testing.assert_allclose(compiled(resnet["input"].numpy()), resnet_reference, **TOLERANCE)


def test_dispatched_resnet18_matches_torch(resnet, resnet_reference):
    dispatched = d2ltvm.dispatch_to_torch(resnet["mod"])
    assert d2ltvm.count_relax_ops(resnet["mod"], "relax.nn.conv2d") == 20
    assert d2ltvm.count_relax_ops(dispatched, "relax.nn.conv2d") == 0
    assert "R.nn.conv2d" not in dispatched.script()
    assert dispatched.script().count("d2ltvm.torch_conv2d.") == 20
    compiled = d2ltvm.compile_relax(dispatched, resnet["weights"], pipeline=d2ltvm.dispatch_pipeline())
    np.testing.assert_allclose(compiled(resnet["input"].numpy()), resnet_reference, **TOLERANCE)


@needs_onednn
def test_onednn_dispatch_packs_each_resnet18_weight_once(resnet, resnet_reference, monkeypatch):
    # the packing must sit in main_transform_params (run once by CompiledModel), never in main
    packs = []

    class CountedPackedConv2dWeight(d2ltvm.PackedConv2dWeight):
        def __init__(self, *args):
            packs.append(args[0].shape)
            super().__init__(*args)

    monkeypatch.setattr(d2ltvm, "PackedConv2dWeight", CountedPackedConv2dWeight)
    dispatched = d2ltvm.dispatch_to_onednn(resnet["mod"])
    assert d2ltvm.count_relax_ops(dispatched, "relax.nn.conv2d") == 0
    compiled = d2ltvm.compile_relax(dispatched, resnet["weights"], pipeline=d2ltvm.dispatch_pipeline())
    assert len(packs) == 20
    assert sum(isinstance(p, d2ltvm.PackedConv2dWeight) for p in compiled.weights) == 20
    for _ in range(2):
        np.testing.assert_allclose(compiled(resnet["input"].numpy()), resnet_reference, **TOLERANCE)
    assert len(packs) == 20  # running the model packed nothing more


@needs_onednn
def test_onednn_dispatch_forwards_stride_dilation_groups_and_batch():
    # every attribute the packed kernels receive changes the result: a wrong one fails the comparison
    import torch
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3, stride=2, padding=2, dilation=2, groups=2),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, (1, 3), padding=(0, 1), groups=8, bias=False)).eval()
    x = torch.randn(2, 4, 11, 13)
    mod, weights = d2ltvm.torch_to_relax(model, x)
    dispatched = d2ltvm.dispatch_to_onednn(mod)
    assert d2ltvm.count_relax_ops(dispatched, "relax.nn.conv2d") == 0
    names = sorted(set(re.findall(r'"(d2ltvm\.torch_packed_conv2d\.[^"]+)"', dispatched.script())))
    assert names == ["d2ltvm.torch_packed_conv2d.s1x1.p0x1.d1x1.g8",
                     "d2ltvm.torch_packed_conv2d.s2x2.p2x2.d2x2.g2"]
    with torch.no_grad():
        expected = model(x).numpy()
    compiled = d2ltvm.compile_relax(dispatched, weights)
    np.testing.assert_allclose(compiled(x.numpy()), expected, **TOLERANCE)


@needs_onednn
def test_onednn_dispatch_keeps_asymmetric_padding_and_unknown_shapes_in_tvm():
    import tvm
    from tvm import relax
    bb = relax.BlockBuilder()
    n = tvm.tirx.Var("n", "int64")
    x = relax.Var("x", relax.TensorType((1, 3, 8, 8), "float32"))
    y = relax.Var("y", relax.TensorType((n, 3, 8, 8), "float32"))
    w = relax.Var("w", relax.TensorType((4, 3, 3, 3), "float32"))
    with bb.function("main", [x, y, w]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.conv2d(x, w, padding=(0, 0, 1, 1)))  # torch cannot pad asymmetrically
            b = bb.emit(relax.op.nn.conv2d(y, w, padding=1))  # packing needs a known input shape
            c = bb.emit(relax.op.nn.conv2d(x, w, padding=1))
            out = bb.emit_output(relax.Tuple([a, b, c]))
        bb.emit_func_output(out)
    dispatched = d2ltvm.dispatch_to_onednn(bb.get())
    assert d2ltvm.count_relax_ops(dispatched, "relax.nn.conv2d") == 2
    assert dispatched.script().count("d2ltvm.torch_packed_conv2d.") == 1


def test_onednn_dispatch_needs_a_torch_with_onednn(resnet, monkeypatch):
    import torch
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="oneDNN.*dispatch_to_torch"):
        d2ltvm.dispatch_to_onednn(resnet["mod"])


def test_folded_batchnorm_matches(resnet, resnet_reference):
    import torch
    folded = d2ltvm.fold_batchnorm(resnet["model"])
    with torch.no_grad():
        np.testing.assert_allclose(folded(resnet["input"]).numpy(), resnet_reference, **TOLERANCE)
    mod, _ = d2ltvm.torch_to_relax(folded, resnet["input"])
    assert d2ltvm.count_relax_ops(resnet["mod"], "relax.nn.batch_norm") == 20
    assert d2ltvm.count_relax_ops(mod, "relax.nn.batch_norm") == 0


def test_fold_batchnorm_rejects_training_mode():
    import torch
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="eval mode"):
        d2ltvm.fold_batchnorm(model)


def test_mlp_variants_match_torch(mlps):
    assert_variants_match_torch(mlps, "relax.matmul", "mlp", untuned=True)


def test_dispatch_keeps_asymmetric_padding_in_tvm():
    from tvm import relax
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 8, 8), "float32"))
    w = relax.Var("w", relax.TensorType((4, 3, 3, 3), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.conv2d(x, w, padding=(0, 0, 1, 1)))  # torch cannot pad asymmetrically
            b = bb.emit(relax.op.nn.conv2d(x, w, padding=1))
            out = bb.emit_output(relax.Tuple([a, b]))
        bb.emit_func_output(out)
    dispatched = d2ltvm.dispatch_to_torch(bb.get())
    assert d2ltvm.count_relax_ops(dispatched, "relax.nn.conv2d") == 1


def test_dispatched_conv_forwards_stride_dilation_groups():
    # every attribute the torch kernel receives changes the result: a wrong one fails the comparison
    import torch
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 8, 3, stride=2, padding=2, dilation=2, groups=2),
        torch.nn.Conv2d(8, 8, 1, stride=1, padding=0, groups=8)).eval()
    x = torch.randn(1, 4, 11, 11)
    mod, weights = d2ltvm.torch_to_relax(model, x)
    dispatched = d2ltvm.dispatch_to_torch(mod)
    assert d2ltvm.count_relax_ops(dispatched, "relax.nn.conv2d") == 0
    names = sorted(set(re.findall(r'"(d2ltvm\.torch_conv2d\.[^"]+)"', dispatched.script())))
    assert names == ["d2ltvm.torch_conv2d.s1x1.p0x0.d1x1.g8", "d2ltvm.torch_conv2d.s2x2.p2x2.d2x2.g2"]
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(d2ltvm.compile_relax(dispatched, weights)(x.numpy()), expected, **TOLERANCE)


def test_vectorize_elementwise_rule_vectorizes_glue_and_declines_reductions():
    import tvm
    from tvm import relax
    from tvm.s_tir import dlight as dl
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 8, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.relu(relax.op.add(x, x)))
            out = bb.emit_output(relax.op.nn.max_pool2d(y, pool_size=(2, 2), strides=(2, 2)))
        bb.emit_func_output(out)
    with d2ltvm.host_target():
        fused = relax.pipeline.zero_pipeline()(bb.get())
        before = {gv.name_hint: f.script() for gv, f in fused.functions.items()}
        scheduled = dl.ApplyDefaultSchedule(d2ltvm.vectorize_elementwise_rule())(fused)
    names = {gv.name_hint: gv for gv, f in scheduled.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    elementwise = [n for n in names if "relu" in n]
    pooling = [n for n in names if "pool" in n]
    assert len(elementwise) == 1 and len(pooling) == 1
    assert "T.vectorized" not in before[elementwise[0]]
    assert "T.vectorized(T.int64(16))" in scheduled[elementwise[0]].script()
    assert scheduled[pooling[0]].script() == before[pooling[0]]  # a reduction: declined


def test_dispatch_rejects_unknown_ops(resnet):
    with pytest.raises(ValueError, match="softmax"):
        d2ltvm.dispatch_to_torch(resnet["mod"], ops=("softmax",))


def test_missing_database_names_path_and_command(resnet, tmp_path):
    folder = tmp_path / "nothing_here"
    with pytest.raises(FileNotFoundError) as info:
        d2ltvm.compile_tuned(resnet["mod"], resnet["weights"], folder)
    assert str(folder) in str(info.value) and "tools/tune_resnet18.py" in str(info.value)


def test_compact_database_keeps_best_record(tmp_path):
    import tvm_ffi
    compact = tmp_path / "compact"
    count = d2ltvm.compact_tuning_database(MLP_DB, compact)
    source, result = d2ltvm.open_tuning_database(MLP_DB), d2ltvm.open_tuning_database(compact)
    records = result.get_all_tuning_records()
    workloads = {tvm_ffi.structural_hash(r.workload.mod) for r in source.get_all_tuning_records()}
    assert count == len(records) == len(workloads) > 0
    for record in records:
        best = min(sum(float(t) for t in r.run_secs) for r in source.get_all_tuning_records()
                   if tvm_ffi.structural_equal(r.workload.mod, record.workload.mod))
        assert sum(float(t) for t in record.run_secs) == pytest.approx(best)


def test_compact_database_writes_the_chosen_records(tmp_path):
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms
    source = d2ltvm.open_tuning_database(MLP_DB)
    first = source.get_all_tuning_records()[0]
    key = tvm_ffi.structural_hash(first.workload.mod)
    chosen = {key: ms.database.TuningRecord(first.trace, first.workload, [0.5], first.target,
                                            first.args_info)}
    d2ltvm.compact_tuning_database(MLP_DB, tmp_path, chosen)
    times = {tvm_ffi.structural_hash(r.workload.mod): [float(t) for t in r.run_secs]
             for r in d2ltvm.open_tuning_database(tmp_path).get_all_tuning_records()}
    assert times[key] == [0.5] and len(times) == len(source.get_all_tuning_records())


def test_confirm_sees_through_a_lucky_measurement(mlps, tmp_path):
    """A record of the unscheduled loop nest with a lucky (tiny) time tops the search's ranking;
    timed again, the tuned schedule wins and is the one shipped."""
    import shutil
    import tune_resnet18
    import tvm_ffi
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms
    shipped = d2ltvm.shipped_tuning_database("mlp")
    if shipped is None:
        pytest.skip(f"the book ships no MLP database for {d2ltvm.isa_class(d2ltvm.host_target())}")
    plain = d2ltvm.tuning_database_folder(shipped, "mlp")
    for name in d2ltvm.DATABASE_FILES:
        shutil.copyfile(plain / name, tmp_path / name)
    target = d2ltvm.database_target(shipped)
    tasks = ms.relax_integration.extract_tasks(d2ltvm.prepare_for_tuning(mlps[-1]["mod"], target),
                                               target)
    task = next(t for t in tasks if "matmul" in t.task_name)  # batch 64: 64 x 784 x 128
    database = d2ltvm.open_tuning_database(tmp_path, "mlp")
    workload = database.commit_workload(task.dispatched[0])
    (tuned,) = database.get_top_k(workload, 1)
    # the loop nest as it is: a trace that only looks up the loops (the database ignores records
    # whose trace is empty)
    sch = s_tir.Schedule(task.dispatched[0])
    sch.get_loops(sch.get_child_blocks(sch.get_sblock("root"))[0])
    naive = sch.trace
    database.commit_tuning_record(ms.database.TuningRecord(naive, workload, [1e-9], tuned.target,
                                                           tuned.args_info))
    (lucky,) = d2ltvm.open_tuning_database(tmp_path, "mlp").get_top_k(workload, 1)
    assert str(lucky.trace) == str(naive) and "parallel" not in str(naive)
    chosen, report = tune_resnet18.confirm_best_records(tmp_path, [task], target, top_k=2,
                                                        passes=2, repeat=3)
    key = tvm_ffi.structural_hash(workload.mod)
    ((name, weight, searched, confirmed, rank),) = report
    assert list(chosen) == [key] and name == task.task_name and rank == 1
    assert searched == pytest.approx(1e-6) and confirmed > 1e-3  # milliseconds
    assert str(chosen[key].trace) == str(tuned.trace)
    assert [float(t) * 1e3 for t in chosen[key].run_secs] == [pytest.approx(confirmed)]
    d2ltvm.compact_tuning_database(tmp_path, tmp_path / "out", chosen)
    shipped_now = d2ltvm.open_tuning_database(tmp_path / "out", "mlp").get_top_k(workload, 1)
    assert str(shipped_now[0].trace) == str(tuned.trace)


def test_benchmark_table_ratios():
    rows = d2ltvm.benchmark_table("resnet18 batch1", {"torch": 0.015, "tvm-tuned": 0.030, "tvm-dispatch": 0.0147})
    assert [r["method"] for r in rows] == ["torch", "tvm-tuned", "tvm-dispatch"]
    assert [round(r["ratio"], 3) for r in rows] == [1.0, 2.0, 0.98]
    assert rows[1]["ms"] == pytest.approx(30.0)
    assert d2ltvm.ratio_lines(rows) == ["resnet18 batch1 tvm-tuned/torch 2.00",
                                        "resnet18 batch1 tvm-dispatch/torch 0.98"]


@pytest.mark.parametrize("timings, message", [
    ({"tvm-tuned": 0.01}, "baseline 'torch' was not measured"),
    ({"torch": 0.01, "tvm-tuned": 0.0}, "positive"),
    ({"torch": 0.01, "tvm-tuned": "fast"}, "positive"),
])
def test_benchmark_table_rejects_bad_timings(timings, message):
    with pytest.raises(ValueError, match=message):
        d2ltvm.benchmark_table("mlp batch1", timings)


def test_benchmark_and_median_on_fake_functions():
    calls = []
    seconds = d2ltvm.median_seconds(lambda: calls.append(1), repeats=5, warmup=2)
    assert seconds > 0 and len(calls) > 7
    rows = d2ltvm.benchmark("w", {"torch": lambda: sum(range(1000)), "other": lambda: None}, repeats=3)
    assert {r["method"] for r in rows} == {"torch", "other"}
    assert next(r for r in rows if r["method"] == "torch")["ratio"] == 1.0
    calls.clear()
    d2ltvm.benchmark("w", {"torch": lambda: calls.append(1)}, rounds=4, repeats=3, warmup=1)
    assert len(calls) >= 4 * (1 + 1 + 3)  # every round: warm-up, calibration, samples
    with pytest.raises(ValueError, match="at least one round"):
        d2ltvm.benchmark("w", {"torch": lambda: None}, rounds=0)


def test_plot_benchmark_draws_one_bar_per_row_and_untuned_apart():
    import matplotlib
    matplotlib.use("Agg")
    table = d2ltvm.benchmark_table
    rows = table("a", {"torch": 1.0, "x": 2.0, "tvm-untuned": 40.0}) + table("b", {"torch": 1.0, "x": 0.5})
    main, untuned = d2ltvm.plot_benchmark(rows)  # the baseline is a line, not a bar

    def bar_ends(ax):  # bars start at the baseline's 1 and end at the ratio
        assert all(p.get_y() == 1 for p in ax.patches)
        return sorted(p.get_y() + p.get_height() for p in ax.patches)

    assert bar_ends(main) == [0.5, 2.0] and bar_ends(untuned) == [40.0]
    (only,) = d2ltvm.plot_benchmark([r for r in rows if r["method"] != "tvm-untuned"])
    assert bar_ends(only) == [0.5, 2.0]


def test_default_pipeline_fuses_batchnorm_into_the_convolution():
    import torch
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4),
                                torch.nn.ReLU())
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
        model[1].running_var.uniform_(0.5, 2)
    model.eval()
    x = torch.randn(1, 3, 8, 8)
    mod, weights = d2ltvm.torch_to_relax(model, x)
    with d2ltvm.host_target():
        fused = d2ltvm.inference_pipeline()(mod)
    kernels = [gv.name_hint for gv in fused.functions if "conv2d" in gv.name_hint]
    assert len(kernels) == 1 and "multiply" in kernels[0]  # the BatchNorm arithmetic
    with torch.no_grad():
        np.testing.assert_allclose(d2ltvm.compile_relax(mod, weights)(x.numpy()), model(x).numpy(),
                                   **TOLERANCE)


def test_unknown_workload():
    with pytest.raises(ValueError, match="unknown workload 'vgg'.*'cnn'"):
        d2ltvm.performance_workloads("vgg")


def test_database_folder_unpacks_gzipped_files_once(tmp_path):
    plain = d2ltvm.tuning_database_folder(MLP_DB, model="mlp")
    assert plain != MLP_DB and d2ltvm.tuning_database_folder(MLP_DB, model="mlp") == plain
    for name in d2ltvm.DATABASE_FILES:
        assert (plain / name).stat().st_size > 0
    # a folder of plain files is used as it is
    import shutil
    for name in d2ltvm.DATABASE_FILES:
        shutil.copy(plain / name, tmp_path / name)
    assert d2ltvm.tuning_database_folder(tmp_path) == tmp_path


def test_incomplete_database_folder_is_reported(tmp_path):
    import gzip
    with gzip.open(tmp_path / "database_workload.json.gz", "wb") as f:
        f.write(b"")
    with pytest.raises(FileNotFoundError, match="tools/tune_resnet18.py --model cnn"):
        d2ltvm.tuning_database_folder(tmp_path, model="cnn")


def test_benchmark_shuffles_the_order_and_keeps_the_spread():
    order = []
    methods = {name: (lambda n: lambda: order.append(n))(name) for name in "abcdef"}
    rows = d2ltvm.benchmark("w", {"torch": lambda: None, **methods}, rounds=3, repeats=3,
                            warmup=1, max_number=1)
    assert len(order) == 3 * 6 * 4  # per round and method: one warm-up call, three samples
    sequence = "".join(order[::4])
    rounds = {sequence[k:k + 6] for k in range(0, 18, 6)}
    assert all(sorted(r) == list("abcdef") for r in rounds)
    assert len(rounds) > 1, "the same order in every round"
    for r in rows:
        assert r["ms_min"] <= r["ms"] <= r["ms_max"] and r["ratio_min"] <= r["ratio_max"]


def test_throughput_lines_rate_each_row_and_flag_call_overhead():
    table = d2ltvm.benchmark_table
    rows = table("tiny", {"torch": 1e-3, "x": 5e-4}) + table("big", {"torch": 2.0})
    for r in rows:
        r.update(ms_min=r["ms"], ms_max=r["ms"])
    flops = {"tiny": 1e5, "big": 2e12}
    peak = {"gflops": 100.0}
    d2ltvm.add_throughput(rows, flops, peak)
    assert [round(r["gflops"], 3) for r in rows] == [0.1, 0.2, 1000.0]
    assert rows[2]["peak_share"] == pytest.approx(10.0)
    lines = d2ltvm.throughput_lines(rows, flops, peak)
    assert [line.endswith("(call overhead)") for line in lines] == [True, True, False]
    assert "0.2 GFLOP/s" in lines[1] and "of peak" in lines[1]
    unknown = d2ltvm.throughput_lines(d2ltvm.add_throughput(rows, flops, {"gflops": None}),
                                      flops, {"gflops": None})
    assert not any("peak" in line or "overhead" in line for line in unknown)


def test_count_flops_counts_multiply_adds_twice():
    import torch
    w = {"model": torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()).eval(),
         "input": torch.ones(3, 8)}
    assert d2ltvm.count_flops(w) == 2 * 3 * 8 * 4
    assert d2ltvm.model_bytes(w) == 4 * (8 * 4 + 4 + 3 * 8 + 3 * 4)


def test_peak_estimate_and_an_unknown_clock(monkeypatch):
    target = d2ltvm.tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3", "num-cores": 2})
    monkeypatch.setattr(d2ltvm, "clock_ghz", lambda: 2.5)
    assert d2ltvm.peak_gflops(target) == {"cores": 2, "fma_units": 2, "lanes": 8, "ghz": 2.5,
                                          "gflops": 2 * 2 * 8 * 2 * 2.5}
    monkeypatch.setattr(d2ltvm, "clock_ghz", lambda: None)
    assert d2ltvm.peak_gflops(target)["gflops"] is None
    assert d2ltvm.memory_bandwidth_gbs(megabytes=8, repeats=2) > 0


def test_deployment_runtimes_match_torch_and_channels_last(tmp_path, monkeypatch):
    import torch
    monkeypatch.setenv("D2LTVM_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 5)).eval()
    w = {"label": "tiny batch2", "model": model, "input": torch.rand(2, 2, 8, 8)}
    runtimes = d2ltvm.deployment_runtimes(w, threads=1)
    assert sorted(runtimes) == ["onnxruntime", "openvino"]
    expected = model(w["input"]).detach().numpy()
    for run in runtimes.values():
        np.testing.assert_allclose(run(w["input"].numpy()), expected, **TOLERANCE)
    assert d2ltvm.torch_channels_last(w)().shape == (2, 5)
    assert d2ltvm.torch_channels_last({**w, "input": torch.rand(2, 3)}) is None


def test_baseline_methods_are_checked_and_named(tmp_path, monkeypatch):
    import importlib.util

    import torch
    monkeypatch.setenv("D2LTVM_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.Flatten()).eval()
    w = {"label": "tiny batch1", "model": model, "input": torch.rand(1, 2, 5, 5)}
    methods = d2ltvm.baseline_methods(w, 1, names=["torch-channels-last", "onnxruntime"])
    assert list(methods) == ["torch", "torch-channels-last", "onnxruntime"]
    with torch.no_grad():
        for run in methods.values():
            np.testing.assert_allclose(np.asarray(run()), model(w["input"]).numpy(), **TOLERANCE)
    # a baseline that computes something else is caught before it is ever timed
    monkeypatch.setattr(d2ltvm, "onnxruntime_model", lambda path, threads: lambda x: x[:, :1])
    with pytest.raises(AssertionError):
        d2ltvm.baseline_methods(w, 1, names=["onnxruntime"])
    with pytest.raises(ValueError, match=r"unknown baselines \['tensorrt'\]; the baselines are"):
        d2ltvm.baseline_methods(w, 1, names=["onnxruntime", "tensorrt"])
    spec = importlib.util.spec_from_file_location("benchmark_script", ROOT / "tools" / "benchmark.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.BASELINES == d2ltvm.BASELINES  # the script's choices are the package's


def test_plot_roofline_draws_a_point_per_row():
    import matplotlib
    matplotlib.use("Agg")
    rows = [{"workload": "a", "method": "torch", "gflops": 1.0},
            {"workload": "a", "method": "x", "gflops": 2.0},
            {"workload": "b", "method": "torch", "gflops": 50.0}]
    ax = d2ltvm.plot_roofline(rows, {"a": 1e6, "b": 1e9}, {"a": 1e6, "b": 1e7},
                              {"gflops": 100.0}, 20.0)
    points = sorted(tuple(p) for c in ax.collections for p in c.get_offsets())
    assert points == [(1.0, 1.0), (1.0, 2.0), (100.0, 50.0)]
    roof = ax.lines[0].get_ydata()
    assert roof.max() == 100.0 and roof.min() < 20.0


@needs_onednn
def test_onednn_post_ops_fuse_bias_residual_and_relu(resnet, resnet_fused, resnet_reference):
    fused_mod, folded_weights = resnet_fused
    names = re.findall(r'"d2ltvm\.(\w+)\.s', fused_mod["main"].script())
    # 20 convolutions: 9 with a ReLU, 8 with the residual addition and a ReLU, 3 downsampling
    assert {n: names.count(n) for n in set(names)} == {"torch_pack_conv2d": 20,
        "torch_fused_conv2d_relu": 9, "torch_fused_conv2d_add_relu": 8, "torch_fused_conv2d": 3}
    assert d2ltvm.count_relax_ops(fused_mod, "relax.nn.relu") == 0
    assert d2ltvm.count_relax_ops(fused_mod, "relax.add") == 1  # the classifier's bias
    compiled = d2ltvm.compile_relax(fused_mod, folded_weights, pipeline=d2ltvm.dispatch_pipeline())
    np.testing.assert_allclose(compiled(resnet["input"].numpy()), resnet_reference, **TOLERANCE)


@needs_onednn
def test_onednn_post_ops_leave_what_they_cannot_fuse():
    import torch
    torch.manual_seed(0)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 1, bias=False)

        def forward(self, x):  # a bias-free convolution, a sigmoid and a residual before it
            y = self.a(x)
            return torch.sigmoid(self.b(y) + y), torch.relu(y * 2)

    model, x = Block().eval(), torch.rand(1, 3, 6, 6)
    mod, weights = d2ltvm.torch_to_relax(model, x)
    fused_mod = d2ltvm.fuse_onednn_post_ops(d2ltvm.dispatch_to_onednn(mod))
    names = re.findall(r'"d2ltvm\.(\w+)\.s', fused_mod["main"].script())
    # the first convolution takes its bias; the second has none, so its addition stays in TVM
    assert sorted(names) == ["torch_fused_conv2d", "torch_pack_conv2d", "torch_pack_conv2d",
                             "torch_packed_conv2d"]
    assert d2ltvm.count_relax_ops(fused_mod, "relax.nn.relu") == 1
    compiled = d2ltvm.compile_relax(fused_mod, weights, pipeline=d2ltvm.dispatch_pipeline())
    vm_out = compiled.vm["main"](tvm_tensor(x), *compiled.weights)
    with torch.no_grad():
        expected = model(x)
    for got, want in zip(vm_out, expected):
        np.testing.assert_allclose(got.numpy(), want.numpy(), **TOLERANCE)
    with pytest.raises(ValueError, match="fuses a ReLU or nothing, not 'gelu'"):
        d2ltvm.torch_fused_conv2d_kernel((1, 1), (0, 0), (1, 1), 1, unary="gelu")


def tvm_tensor(x):
    return d2ltvm.tvm.runtime.tensor(x.numpy())


@needs_libdnnl
def test_onednn_called_directly_matches_torch(resnet, resnet_fused, resnet_reference):
    fused_mod, folded_weights = resnet_fused
    direct_mod = d2ltvm.call_onednn_directly(fused_mod)
    script = direct_mod["main"].script()
    makes = re.findall(r'"d2ltvm\.(\w+)\.s', script)
    # every convolution made once; nothing packed for PyTorch, no Python called at run time
    assert {n: makes.count(n) for n in set(makes)} == {
        "onednn_make_conv2d_relu": 9, "onednn_make_conv2d_add_relu": 8, "onednn_make_conv2d": 3}
    assert "call_dps_packed" not in script and "torch_" not in script
    externs = [g.name_hint for g, f in direct_mod.functions.items()
               if isinstance(f, d2ltvm.tvm.tirx.PrimFunc)]
    assert {n.rsplit("_", 2)[0] for n in externs} == {  # named kind_input_output
        "onednn_conv2d", "onednn_conv2d_relu", "onednn_conv2d_add_relu", "onednn_max_pool2d",
        "onednn_matmul", "onednn_transpose"}
    compiled = d2ltvm.compile_relax(direct_mod, folded_weights, pipeline=d2ltvm.dispatch_pipeline())
    assert sum(str(w.dtype) == "int64" for w in compiled.weights) == 20  # onednn_handles
    np.testing.assert_allclose(compiled(resnet["input"].numpy()), resnet_reference, **TOLERANCE)
    # the same buffers serve every run: a second input gives its own answer
    x2 = resnet["input"].flip(-1)
    with __import__("torch").no_grad():
        np.testing.assert_allclose(compiled(x2.numpy()), resnet["model"](x2).numpy(), **TOLERANCE)


@needs_libdnnl
def test_direct_route_takes_grouped_convolutions_and_leaves_bias_free_ones():
    import torch
    torch.manual_seed(0)
    model = torch.nn.Sequential(  # grouped, dilated, strided, then a bias-free 1x1
        torch.nn.Conv2d(4, 8, 3, stride=2, padding=2, dilation=2, groups=2), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 6, 1, bias=False)).eval()
    x = torch.rand(1, 4, 11, 11)
    mod, weights = d2ltvm.torch_to_relax(model, x)
    direct_mod = d2ltvm.call_onednn_directly(
        d2ltvm.fuse_onednn_post_ops(d2ltvm.dispatch_to_onednn(mod)))
    names = re.findall(r'"d2ltvm\.(\w+)\.s', direct_mod["main"].script())
    # the bias-free convolution stays with PyTorch's packed call
    assert sorted(names) == ["onednn_make_conv2d_relu", "torch_pack_conv2d",
                             "torch_packed_conv2d"]
    compiled = d2ltvm.compile_relax(direct_mod, weights, pipeline=d2ltvm.dispatch_pipeline())
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x.numpy()), model(x).numpy(), **TOLERANCE)


@needs_libdnnl
def test_onednn_kernel_keeps_alive_what_its_handles_point_into():
    import gc
    import torch
    weight, bias = torch.rand(4, 3, 3, 2), torch.rand(4)  # OHWI
    handles = d2ltvm.onednn_handles(d2ltvm.onednn_conv2d(
        tvm_tensor(weight), tvm_tensor(bias), [1, 5, 5, 2], (1, 1), (1, 1), (1, 1), 1, "relu",
        False))
    gc.collect()  # only the handles tensor refers to the kernel now
    func = compile_prim_func(d2ltvm.onednn_extern_func([(1, 5, 5, 2), (1, 5, 5, 4)]))
    x = torch.rand(1, 5, 5, 2)
    out = d2ltvm.tvm.runtime.tensor(np.zeros((1, 5, 5, 4), "float32"))
    func(tvm_tensor(x), handles, out)
    expected = torch.relu(torch.conv2d(x.permute(0, 3, 1, 2), weight.permute(0, 3, 1, 2), bias,
                                       padding=1)).permute(0, 2, 3, 1)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), **TOLERANCE)


@needs_libdnnl
def test_onednn_says_which_convolution_it_cannot_describe():
    # 3 input channels in the weights, 5 in the data: oneDNN refuses; the error names both
    with pytest.raises(RuntimeError, match=r"oneDNN failed describing a convolution of "
                                           r"\(1, 8, 8, 5\) by \(4, 3, 3, 3\)"):
        d2ltvm.onednn_conv2d_primitive((4, 3, 3, 3), (1, 8, 8, 5), (1, 1), (1, 1), (1, 1), 1,
                                       "none", False)


def compile_prim_func(func):
    """Compile one TensorIR function for this machine: a function of TVM tensors."""
    mod = d2ltvm.tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return d2ltvm.tvm.compile(mod, target=d2ltvm.host_target())["main"]


@pytest.mark.parametrize("add, relu", [(True, True), (False, False)])
def test_winograd_transforms_compute_a_convolution(add, relu):
    import torch
    torch.manual_seed(0)
    # 9x10: the last tiles reach past the image on both sides; 2 images; 16 -> 32 channels
    x, weight = torch.randn(2, 9, 10, 16), torch.randn(32, 3, 3, 16) / 12  # NHWC, OHWI
    bias, other = torch.randn(32), torch.randn(2, 9, 10, 32)
    tiles = 2 * 3 * 3
    v = d2ltvm.tvm.runtime.tensor(np.zeros((36, tiles, 16), "float32"))
    compile_prim_func(d2ltvm.winograd_input_transform((2, 9, 10, 16)))(tvm_tensor(x), v)
    m = np.matmul(v.numpy(), d2ltvm.winograd_weights(weight.numpy()))  # the 36 products
    out = d2ltvm.tvm.runtime.tensor(np.zeros((2, 9, 10, 32), "float32"))
    compile_prim_func(d2ltvm.winograd_output_transform((2, 9, 10, 32), add, relu))(
        tvm_tensor(torch.from_numpy(m)), tvm_tensor(bias), *[tvm_tensor(other)] * add, out)
    expected = torch.conv2d(x.permute(0, 3, 1, 2), weight.permute(0, 3, 1, 2), bias,
                            padding=1).permute(0, 2, 3, 1) + (other if add else 0)
    expected = torch.relu(expected) if relu else expected
    np.testing.assert_allclose(out.numpy(), expected.numpy(), **TOLERANCE)
    assert (out.numpy() < 0).any() != relu  # the ReLU is there exactly when asked for


@pytest.mark.parametrize("attributes, weight, data, expected", [
    (((1, 1), (1, 1), (1, 1), 1), (64, 3, 3, 64), (1, 56, 56, 64), True),
    (((1, 1), (1, 1), (1, 1), 1), (256, 3, 3, 256), (1, 14, 14, 256), True),  # 16 tiles
    (((1, 1), (1, 1), (1, 1), 1), (512, 3, 3, 512), (1, 7, 7, 512), False),  # 4 tiles
    (((1, 1), (1, 1), (1, 1), 1), (512, 3, 3, 512), (4, 7, 7, 512), True),  # 4 images
    (((2, 2), (1, 1), (1, 1), 1), (128, 3, 3, 64), (1, 56, 56, 64), False),  # strided
    (((1, 1), (0, 0), (1, 1), 1), (64, 1, 1, 64), (1, 56, 56, 64), False),  # 1x1
    (((1, 1), (1, 1), (1, 1), 2), (64, 3, 3, 32), (1, 56, 56, 64), False),  # grouped
    (((1, 1), (1, 1), (1, 1), 1), (8, 3, 3, 4), (1, 56, 56, 4), False),  # 4 channels
])
def test_winograd_pays_off_only_where_it_computes_and_gains(attributes, weight, data, expected):
    assert d2ltvm.winograd_pays_off(attributes, weight, data) == expected


@needs_libdnnl
def test_winograd_route_matches_torch_and_keeps_the_last_stage_direct(resnet, resnet_fused,
                                                                       resnet_reference):
    fused_mod, folded_weights = resnet_fused
    mod = d2ltvm.call_onednn_directly(fused_mod, winograd=True)
    script = mod["main"].script()
    # the 3x3 stride-1 convolutions of the first three stages: 4 + 3 + 3, one product each
    assert script.count('"d2ltvm.onednn_make_winograd_matmul"') == 10
    funcs = [g.name_hint for g, f in mod.functions.items()
             if isinstance(f, d2ltvm.tvm.tirx.PrimFunc)]
    assert {n for n in funcs if n.startswith("winograd_input")} == {
        "winograd_input_1x56x56x64", "winograd_input_1x28x28x128", "winograd_input_1x14x14x256"}
    # at 7x7 (4 tiles) oneDNN's direct convolution stays
    assert "onednn_conv2d_add_relu_1x7x7x512_1x7x7x512" in funcs
    assert not any(n.startswith("winograd") and "7x7x512" in n for n in funcs)
    compiled = d2ltvm.compile_relax(mod, folded_weights, pipeline=d2ltvm.dispatch_pipeline())
    assert sum(str(w.dtype) == "int64" for w in compiled.weights) == 20  # 10 + 10 handles
    np.testing.assert_allclose(compiled(resnet["input"].numpy()), resnet_reference, **TOLERANCE)


def test_onednn_library_missing_names_the_wheel(monkeypatch, tmp_path):
    import site
    import sysconfig
    monkeypatch.setattr(d2ltvm, "_LIBDNNL", [])  # as if never loaded in this process
    monkeypatch.setattr(d2ltvm.sys, "prefix", str(tmp_path))
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(tmp_path))
    monkeypatch.setattr(site, "getuserbase", lambda: str(tmp_path))
    with pytest.raises(RuntimeError, match=r"libdnnl\.so\.3\) is not installed: `pip install "
                                           r"onednn-cpu-gomp==2023\.2\.0`"):
        d2ltvm.call_onednn_directly(None)
    assert "pip install onednn-cpu-gomp==2023.2.0" in d2ltvm.onednn_library_missing()


def test_profile_vm_calls_counts_each_callee_per_run():
    import torch
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).eval()
    x = torch.rand(1, 6)
    mod, weights = d2ltvm.torch_to_relax(model, x)
    compiled = d2ltvm.compile_relax(mod, weights)
    profile = d2ltvm.profile_vm_calls(compiled, tvm_tensor(x), runs=4)
    kernels = {c: n for c, (n, _) in profile.items() if not c.startswith("vm.builtin")}
    assert sum(kernels.values()) >= 2 and all(n >= 1 for n in kernels.values()), profile
    assert all(seconds > 0 for _, seconds in profile.values())
    assert list(profile) == sorted(profile, key=lambda c: -profile[c][1])  # slowest first
    before = compiled(x.numpy())  # the hook is gone: the model still runs, and runs the same
    np.testing.assert_allclose(before, model(x).detach().numpy(), **TOLERANCE)
    # grouped by the shape each kernel writes (its last argument): both layers' outputs appear,
    # and the groups add up to the same calls and time as the callees
    grouped = d2ltvm.profile_vm_calls(compiled, tvm_tensor(x), runs=4, key=d2ltvm.written_shape)
    assert {(1, 4), (1, 2)} <= set(grouped), grouped
    assert sum(n for g, (n, _) in grouped.items() if g is not None) == sum(kernels.values())


def test_profile_onnxruntime_counts_each_node_of_the_timed_runs(tmp_path):
    import torch
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).eval()
    workload = {"label": "two layers", "model": model, "input": torch.rand(1, 6)}
    path = d2ltvm.export_onnx(workload, folder=tmp_path)
    x = workload["input"].numpy()
    for runs in (1, 3):  # the warm-up run is not counted: each layer is one node per run
        by_shape = d2ltvm.profile_onnxruntime(path, x, threads=1, runs=runs,
                                              key=lambda op, shape: shape)
        assert {shape: calls for shape, (calls, _) in by_shape.items()} == {(1, 4): 1, (1, 2): 1}
        assert all(seconds > 0 for _, seconds in by_shape.values())
    by_operator = d2ltvm.profile_onnxruntime(path, x, threads=1)
    assert sum(calls for calls, _ in by_operator.values()) == 2, by_operator
    assert list(by_operator) == sorted(by_operator, key=lambda op: -by_operator[op][1])


def test_written_shape_is_the_result_else_the_last_argument():
    class Tensor:
        def __init__(self, *shape):
            self.shape = shape

    a, out = Tensor(1, 8), Tensor(1, 4)
    assert d2ltvm.written_shape("fused_matmul_add", (a, out), None) == (1, 4)  # writes its output
    assert d2ltvm.written_shape("d2ltvm.torch_matmul", (a,), Tensor(2, 3)) == (2, 3)  # returns it
    assert d2ltvm.written_shape("vm.builtin.alloc_tensor", (a,), out) is None
    assert d2ltvm.written_shape("vm.builtin.check_tensor_info", (), None) is None
    assert d2ltvm.written_shape("print_shape", (1, "x"), None) is None  # no tensor at all


def test_block_conv_layout_blocks_every_convolution_but_the_stem(resnet, resnet_reference):
    mod = d2ltvm.block_conv_layout(resnet["mod"], resnet["weights"], 8)
    assert len(mod["main"].params) == 1  # the weights are constants now: main takes the image
    script = mod.script()
    # 19 of ResNet-18's 20 convolutions are blocked; the stem's 3 input channels do not fill a
    # block of 8, so it alone stays an NCHW R.nn.conv2d, for Relax's own legalization later
    assert len(re.findall(r"R\.call_tir\((?:cls\.)?conv2d_NCHWc\w*,", script)) == 19
    assert len(re.findall(r"R\.nn\.conv2d\(.*data_layout=\"NCHW\"", script)) == 1
    compiled = d2ltvm.compile_relax(mod, [])  # untuned: slow, and correct
    np.testing.assert_allclose(compiled(resnet["input"].numpy()), resnet_reference, **TOLERANCE)


@pytest.mark.parametrize("folder", sorted((ROOT / "data" / "tuning").glob("resnet18-blocked_*")),
                         ids=lambda p: p.name)
def test_tuned_blocked_resnet18_matches_torch(resnet, resnet_reference, folder):
    # each blocked database (blocks of 8 or 16) applied on any CPU: correct everywhere, fast only
    # on its class
    blocked = d2ltvm.blocked_workload(resnet, d2ltvm.database_target(folder))
    compiled = d2ltvm.compile_tuned(blocked["mod"], blocked["weights"], folder,
                                    model="resnet18-blocked", any_class=True)
    np.testing.assert_allclose(compiled(resnet["input"].numpy()), resnet_reference, **TOLERANCE)


@pytest.mark.parametrize("block", [0, 1, 2.5, "8", True])
def test_block_conv_layout_rejects_a_bad_block(resnet, block):
    with pytest.raises(ValueError, match="block must be a whole number"):
        d2ltvm.block_conv_layout(resnet["mod"], resnet["weights"], block)


def test_block_conv_layout_needs_every_weight(resnet):
    with pytest.raises(ValueError, match="62 weights, but 61 weights were given"):
        d2ltvm.block_conv_layout(resnet["mod"], resnet["weights"][:-1], 8)


def test_conv_block_size_is_the_vector_width():
    import tvm
    assert d2ltvm.conv_block_size(tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v4"})) == 16
    assert d2ltvm.conv_block_size(tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3"})) == 8
