"""Per-face latency of the student as TFLite, int8 vs float32, 1 thread, next to the CPU's ISA; and the same
on XNNPACK's AVX2 code path (issue 13: on AVX2-only x86 the int8 student ran slower than the float one).

  python -m benchmarks.bench_latency [--run_dir=runs/bench/demo] [--blocks=21] [--nocallgrind] [--noisa_paths]

Files: the run's own export/student_{float32,int8_ptq}.tflite ("run files": converted by the code that made
the run) and both converted again now from export/student_savedmodel with deploy.tflite.convert_to_tflite
(calibration images drawn as stages/export draws them). The headline keys are the re-converted files'.

Wall time: ai-edge-litert Interpreter, num_threads=1, default delegates (XNNPACK), one face already in the
input tensor; blocks of 200 invoke() per file, files interleaved, median of the block means (ms per face).

AVX2 path, two ways (this machine has AVX-512; XNNPACK picks kernels from CPUID through cpuinfo, and neither
XNNPACK nor LiteRT reads an environment variable to restrict the ISA):
- callgrind: valgrind implements no AVX-512 and its CPUID says so, so XNNPACK runs its AVX2 kernels under
  it (the ukernel names are recorded). Instructions per face = (Ir of 11 invokes - Ir of 1 invoke) / 10,
  collected only inside tflite::Subgraph::InvokeImpl; deterministic. Instructions are a proxy for time:
  they ignore that int8 kernels' vpmaddwd/vpmulld and fp32 FMAs have different throughputs.
- forced ISA: a child process clears bits of XNNPACK's hardware_config.arch_flags before the first
  delegate, so XNNPACK picks its AVX2 (or AVX-512 VNNI without AMX) kernels on this CPU, natively. Needs
  `nm` and the symbol table of ai_edge_litert/libpywrap_litert_common.so; skipped when they are missing.

Per op (by hand, from the repository root; one callgrind dump after each XNNPACK operator of one invoke):
  valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*Subgraph::InvokeImpl*'
      --dump-after=xnn_run_operator_with_index --callgrind-out-file=/tmp/cg/out
      .venv/bin/python -m benchmarks.bench_latency --worker=invoke --invokes=1 --files=FILE.tflite
(one command line) writes /tmp/cg/out.1, .2, ... in op order (the first also holds what runs before the
XNNPACK partition, e.g. the non-delegated uint8->int8 QUANTIZE); read each file's `summary:` line.
"""
from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from face_transfer.core.runpaths import RunPaths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS
flags.DEFINE_string("run_dir", os.path.join(ROOT, "runs", "bench", "demo"), "A finished run directory with export/.")
flags.DEFINE_integer("blocks", 21, "Timed blocks of 200 invokes per file (median reported).")
flags.DEFINE_boolean("callgrind", True, "Count instructions on the AVX2 path under valgrind (if installed).")
flags.DEFINE_boolean("isa_paths", True, "Also time XNNPACK's AVX2 / AVX-512 VNNI kernels natively (forced ISA).")
flags.DEFINE_string("worker", None, "Internal: 'wall' or 'invoke' (a child process).")
flags.DEFINE_string("isa", "native", "Internal (worker): native, avx512_vnni or avx2.")
flags.DEFINE_integer("invokes", 1, "Internal (worker=invoke): invoke() calls.")
flags.DEFINE_list("files", [], "Internal (worker): .tflite files.")

BLOCK = 200
# XNNPACK's x86 enum xnn_arch_flags (src/xnnpack/hardware-config.h): bit 0 sse ... bit 7 avx2, 8 avx256skx,
# 9 avx512f, ..., 14 avxvnni, 18 avx512vnni, 20 avx512amx.
_AVX2_BIT = 1 << 7
ISA_MASKS = {"avx2": (1 << 8) - 1, "avx512_vnni": ~(1 << 20) & (2**64 - 1)}
_LIB = "libpywrap_litert_common.so"


# ---- child processes ------------------------------------------------------------------------------------

def _symbols() -> dict:
    import ai_edge_litert
    lib = os.path.join(os.path.dirname(ai_edge_litert.__file__), _LIB)
    out = subprocess.run(["nm", "-S", lib], capture_output=True, text=True, check=True).stdout
    syms = {}
    for line in out.splitlines():
        p = line.split()
        if len(p) == 4:
            syms[p[3]] = (int(p[0], 16), int(p[1], 16))
    return syms


def _lib_base() -> int:
    import ai_edge_litert.interpreter  # noqa: F401  (maps the library)
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if line.rstrip().endswith(_LIB) and fields[2] == "00000000":
                return int(fields[0].split("-")[0], 16)
    raise RuntimeError(f"{_LIB} is not mapped")


def force_xnnpack_isa(isa: str) -> dict:
    """Clears XNNPACK arch flags (call before the first interpreter). Returns {old, new} flag words."""
    import ctypes
    syms, base = _symbols(), _lib_base()
    init = ctypes.CFUNCTYPE(ctypes.c_void_p)(base + syms["xnn_init_hardware_config"][0])
    config = init()
    if config != base + syms["hardware_config"][0]:
        raise RuntimeError("xnn_init_hardware_config did not return hardware_config")
    # In this build (ai-edge-litert 2.3) the arch_flags word is the struct's second 8 bytes (the first reads 0
    # on x86). Check that it looks like x86 flags (sse..avx2 set) before touching it.
    flags_word = ctypes.c_uint64.from_address(config + 8)
    if flags_word.value & _AVX2_BIT == 0 or flags_word.value & 0x7F != 0x7F:
        raise RuntimeError(f"unexpected XNNPACK hardware_config layout (word {flags_word.value:#x})")
    old = flags_word.value
    flags_word.value = old & ISA_MASKS[isa]
    return {"old": old, "new": flags_word.value}


def _gemm_ukernels() -> list[str]:
    """Names of the ukernels XNNPACK's qs8 and f32 gemm configs point at (after a model was loaded)."""
    import ctypes

    import numpy as np
    syms, base = _symbols(), _lib_base()
    by_addr = {a: n for n, (a, _) in syms.items() if n.startswith("xnn_") and "gemm" in n and "ukernel" in n
               and "packw" not in n}
    found = set()
    for cfg in ("qs8_qc8w_gemm_config", "f32_gemm_config"):
        addr, size = syms[cfg]
        words = np.frombuffer(ctypes.string_at(base + addr, size - size % 8), dtype=np.uint64)
        found |= {by_addr[int(w) - base] for w in words if int(w) >= base and int(w) - base in by_addr}
    return sorted(found)


def _worker_wall(files: list[str], isa: str, blocks: int) -> dict:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    forced = force_xnnpack_isa(isa) if isa != "native" else None
    face = (np.random.default_rng(0).random((1, 64, 64, 3)) * 255).astype(np.uint8)
    its = []
    for path in files:
        it = Interpreter(model_path=path, num_threads=1)
        it.allocate_tensors()
        d = it.get_input_details()[0]
        if tuple(d["shape"][1:]) != face.shape[1:]:
            face = (np.random.default_rng(0).random((1, *d["shape"][1:])) * 255).astype(np.uint8)
        it.set_tensor(d["index"], face.astype(d["dtype"]))
        for _ in range(30):
            it.invoke()
        its.append((path, it, []))
    for _ in range(blocks):
        for _, it, times in its:
            t0 = time.perf_counter()
            for _ in range(BLOCK):
                it.invoke()
            times.append((time.perf_counter() - t0) / BLOCK * 1e3)
    out = {"ms_per_face": {p: statistics.median(t) for p, _, t in its},
           "ms_min": {p: min(t) for p, _, t in its}, "isa": isa, "forced": forced}
    try:
        out["ukernels"] = _gemm_ukernels()
    except Exception as e:  # symbols missing: the figure stands, the kernel names are unknown
        out["ukernels_error"] = str(e)[:200]
    return out


def _worker_invoke(path: str, n: int) -> None:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=path, num_threads=1)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], (np.random.default_rng(0).random((1, *d["shape"][1:])) * 255).astype(d["dtype"]))
    for _ in range(n):
        it.invoke()


# ---- parent ---------------------------------------------------------------------------------------------

def _child(args: list[str], prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = (prefix or []) + [sys.executable, "-m", "benchmarks.bench_latency"] + args
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def wall(files: list[str], isa: str = "native", blocks: int = 21) -> dict:
    proc = _child(["--worker=wall", f"--isa={isa}", f"--blocks={blocks}", "--files=" + ",".join(files)])
    if proc.returncode != 0:
        raise RuntimeError(f"wall-time worker ({isa}) failed: {proc.stderr[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def callgrind_instructions(path: str) -> dict:
    """{instructions_per_face, ukernels}: XNNPACK on valgrind's CPUID (AVX2, no AVX-512)."""
    counts, top = {}, []
    with tempfile.TemporaryDirectory(prefix="ft_cg_") as tmp:
        for n in (1, 11):
            out = os.path.join(tmp, f"cg.{n}")
            proc = _child(["--worker=invoke", f"--invokes={n}", f"--files={path}"],
                          prefix=["valgrind", "--tool=callgrind", "--collect-atstart=no",
                                  "--toggle-collect=*Subgraph::InvokeImpl*", f"--callgrind-out-file={out}"])
            if proc.returncode != 0:
                raise RuntimeError(f"callgrind worker failed: {proc.stderr[-1500:]}")
            with open(out) as f:
                counts[n] = next(int(line.split()[1]) for line in f if line.startswith(("summary:", "totals:")))
        ann = subprocess.run(["callgrind_annotate", "--inclusive=no", os.path.join(tmp, "cg.11")],
                             capture_output=True, text=True).stdout
        for line in ann.splitlines():
            if "ukernel" in line and "???:" in line:
                top.append(line.split("???:", 1)[1].split()[0])
            if len(top) == 4:
                break
    return {"instructions_per_face": (counts[11] - counts[1]) / 10, "ukernels": top}


def _have(tool: str) -> bool:
    from shutil import which
    return which(tool) is not None


def convert_now(run_dir: str, out_dir: str) -> dict:
    """The run's student SavedModel converted with the current code: {float32, int8_ptq: path}."""
    import numpy as np
    from face_transfer.configs import ExperimentConfig
    from face_transfer.deploy import tflite
    from face_transfer.core.fileio import read_json
    from face_transfer.stages import inputs
    from face_transfer.stages.rundir import Run
    cfg = ExperimentConfig.from_dict(read_json(RunPaths(run_dir).config_json))
    run = Run(run_dir, cfg)
    src = inputs.image_source(run)
    calib = np.asarray(src.images(0, src.count(cfg.export.calibration_images), "calibration"))
    sm = RunPaths(run_dir).savedmodel_dir("student")
    files = {}
    for mode, q in (("float32", tflite.QuantizationConfig.for_float32()),
                    ("int8_ptq", tflite.QuantizationConfig.for_int8(calib, steps=len(calib)))):
        files[mode] = os.path.join(out_dir, f"student_{mode}.tflite")
        with open(files[mode], "wb") as f:
            f.write(tflite.convert_to_tflite(sm, q))
    return files


def _pair(ms: dict, files: dict) -> dict:
    i8, f32 = ms[files["int8_ptq"]], ms[files["float32"]]
    return {"int8_ms_per_face": round(i8, 4), "float32_ms_per_face": round(f32, 4), "float_over_int8": round(f32 / i8, 3)}


def _latency_section_update(res: dict, path: str = os.path.join(ROOT, "BENCHMARKS.md")) -> None:
    """Replaces (or inserts before the first preset section) only this benchmark's section of BENCHMARKS.md."""
    from benchmarks.markdown import _latency_section, replace_section
    replace_section(_latency_section(res), path)


def main(argv):
    del argv
    if FLAGS.worker == "wall":
        print(json.dumps(_worker_wall(FLAGS.files, FLAGS.isa, FLAGS.blocks)))
        return 0
    if FLAGS.worker == "invoke":
        _worker_invoke(FLAGS.files[0], FLAGS.invokes)
        return 0
    from benchmarks.run import load_results, machine, save_results
    from face_transfer.machine import cpu_isa_flags
    run_dir = os.path.abspath(FLAGS.run_dir)
    run_files = {m: RunPaths(run_dir).student_tflite(m) for m in ("float32", "int8_ptq")}
    out = {}
    with tempfile.TemporaryDirectory(prefix="ft_latency_") as tmp:
        now = convert_now(run_dir, tmp)
        native = wall([now["int8_ptq"], now["float32"], run_files["int8_ptq"], run_files["float32"]],
                      blocks=FLAGS.blocks)
        # its own key: latency.int8_ms_per_face etc. at the top level are the pipeline presets' (export stage)
        out["latency.native"] = _pair(native["ms_per_face"], now)
        out["latency.run_files"] = _pair(native["ms_per_face"], run_files)
        # the fastest block: less sensitive to other processes on a shared machine than the median
        out["latency.min_block"] = {"now": _pair(native["ms_min"], now), "run_files": _pair(native["ms_min"], run_files)}
        out["latency.cpu_isa"] = cpu_isa_flags()
        out["latency.xnnpack_gemm_ukernels"] = native.get("ukernels")
        if FLAGS.isa_paths and _have("nm"):
            paths = {}
            for isa in ("avx512_vnni", "avx2"):
                try:
                    r = wall([now["int8_ptq"], now["float32"], run_files["int8_ptq"], run_files["float32"]], isa,
                             FLAGS.blocks)
                except RuntimeError as e:
                    print(f"[latency] forced {isa} skipped: {str(e)[-300:]}", flush=True)
                    continue
                paths[isa] = {**_pair(r["ms_per_face"], now), "run_files": _pair(r["ms_per_face"], run_files),
                              "min_block": {"now": _pair(r["ms_min"], now), "run_files": _pair(r["ms_min"], run_files)},
                              "ukernels": r.get("ukernels")}
            if paths:
                out["latency.xnnpack_isa_forced"] = paths
        if FLAGS.callgrind and _have("valgrind"):
            cg = {m: callgrind_instructions(p) for m, p in now.items()}
            cg_run = callgrind_instructions(run_files["int8_ptq"])
            out["latency.avx2_callgrind"] = {
                "int8_instructions_per_face": round(cg["int8_ptq"]["instructions_per_face"]),
                "float32_instructions_per_face": round(cg["float32"]["instructions_per_face"]),
                "float_over_int8": round(cg["float32"]["instructions_per_face"] / cg["int8_ptq"]["instructions_per_face"], 3),
                "run_files_int8_instructions_per_face": round(cg_run["instructions_per_face"]),
                "ukernels_int8": cg["int8_ptq"]["ukernels"], "ukernels_float32": cg["float32"]["ukernels"]}
    out["latency.run_dir"] = os.path.relpath(run_dir, ROOT)
    out["latency.machine"] = machine()
    out["latency.load_average"] = os.getloadavg()[0]  # other processes on the machine while measuring
    out["latency.date"] = datetime.date.today().isoformat()
    out["latency.protocol"] = (f"ai-edge-litert Interpreter, 1 thread, default delegates (XNNPACK), one face; "
                               f"median of {FLAGS.blocks} blocks of {BLOCK} invoke(), files interleaved")
    res = load_results()
    res.update(out)
    save_results(res)
    _latency_section_update(res)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    app.run(main)
