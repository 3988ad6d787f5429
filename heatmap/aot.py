"""Build the core's kernels ahead of time: ``python -m heatmap.aot`` (``make`` runs it).

numba's start-up (~0.27 s to import, ~0.3 s to load the cached kernels) is paid by every
process that indexes a large file, more than the rest of a small command takes. This build
compiles the same ``@kernel`` functions (the source stays the single definition) with numba's
ahead-of-time compiler into an extension module beside :mod:`heatmap._jit`, which calls it
without importing numba (see that module for when it is used).

The signatures exported are those the kernels are really called with: the build runs the
kernels' warm-up and a small ingest through the service on numba first, then exports every
signature numba compiled. The native code keeps the kernels' options: the GIL released (ingest
workers run kernels side by side) and numpy's error model; it targets this machine's CPU, and
the manifest records the CPU flags, numpy, Python and the kernels' source files it was built
from, so a copy on another machine or a changed kernel falls back to numba.

Exit status: 0 when built, 1 when the compiler failed (numba still serves every kernel).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

# The build itself runs the kernels on numba (and must not load an older build).
os.environ["HEATMAP_AOT"] = "0"

from heatmap import _jit  # noqa: E402

PACKAGE = Path(__file__).resolve().parent


def _exercise(tmp: Path) -> None:
    """Call every kernel with every argument type a command or the service passes: the
    warm-up, then an ingest of Parquet (dictionary and plain ids) and CSV, cut into blocks."""
    import polars as pl
    import pyarrow.parquet as pq

    # The readers of each format are imported when a file of it comes: import them before the
    # warm-up, so that their kernels are warmed and listed too.
    import heatmap.ingest.csv
    import heatmap.ingest.ndjson
    import heatmap.ingest.parquet  # noqa: F401
    from heatmap.config import Settings
    from heatmap.ingest import ParseOptions
    from heatmap.service import Heatmap

    hm = Heatmap(Settings(db=str(tmp / "s.db"), secret="aot-build"))  # type: ignore[call-arg]
    _jit.warmup(now=True)
    frame = pl.DataFrame(
        {
            "device_id": ["a", "b", "a", "c"],
            "ts": [1_700_000_000, 1_700_000_100, 1_700_000_900, 1_700_001_000],
            "lat": [31.2, 31.3, 31.25, 31.21],
            "lng": [121.4, 121.5, 121.45, 121.41],
        }
    )
    frame.write_parquet(tmp / "dict.parquet")
    # plain string ids, as pyarrow writes them without a dictionary
    pq.write_table(frame.to_arrow(), tmp / "plain.parquet", use_dictionary=False)
    frame.with_columns(pl.col("ts") + 3600).write_csv(tmp / "p.csv")
    hm.ingest_paths(
        [tmp / "dict.parquet", tmp / "plain.parquet", tmp / "p.csv"],
        ParseOptions(chunk_rows=1),
    )
    hm.close()


def _describe(t: Any) -> dict[str, Any]:
    """A numba argument type as the manifest states it (what ``_jit._fits`` checks)."""
    from numba.core import types
    from numba.np.numpy_support import as_dtype

    if isinstance(t, types.Array):
        return {
            "kind": "array",
            "dtype": as_dtype(t.dtype).str,
            "ndim": t.ndim,
            "layout": t.layout,
            "readonly": not t.mutable,
        }
    if isinstance(t, types.BaseTuple):
        return {"kind": "tuple", "items": [_describe(i) for i in t.types]}  # type: ignore[attr-defined]
    return {"kind": "scalar", "dtype": as_dtype(t).str}


def _compiler_flags() -> None:
    """Give the exported functions the kernels' options: the GIL released around the call
    and numpy's error model (pycc's own default is Python's, with division checks)."""
    import numba.pycc.compiler as pycc_compiler
    from numba.core.compiler import Flags

    class KernelFlags(Flags):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.release_gil = True  # type: ignore[assignment]
            self.error_model = "numpy"  # type: ignore[assignment]

    pycc_compiler.Flags = KernelFlags  # type: ignore[misc]


def build(out: Path = PACKAGE) -> Path:
    """Compile the kernels into ``out/_kernels*.so`` and write ``out/_kernels.json``."""
    import json

    import llvmlite.binding as llvm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pycc is "pending deprecation" in numba 0.5x-0.6x
        from numba.pycc import CC

    with tempfile.TemporaryDirectory(prefix="heatmap-aot-") as tmp:
        _exercise(Path(tmp))
        _compiler_flags()
        cc = CC(_jit.AOT_MODULE)
        cc.output_dir = tmp
        cc.target_cpu = llvm.get_host_cpu_name()
        cc.verbose = False
        exports: dict[str, list[dict[str, Any]]] = {}
        files = {"_jit.py"}  # the compiled forms of its helpers (prefetch) are built in
        for k in _jit._ALL:
            if k.options.get("inline") or k.dispatcher is None:
                continue
            module = sys.modules[k.py_func.__module__]
            files.add(str(Path(module.__file__ or "").resolve().relative_to(PACKAGE)))
            for i, sig in enumerate(k.dispatcher.signatures):
                typed = k.dispatcher.overloads[sig].signature
                symbol = f"{k.py_func.__module__.replace('.', '_')}__{k.py_func.__name__}_{i}"
                cc.export(symbol, typed)(k.py_func)
                exports.setdefault(k.key, []).append(
                    {"symbol": symbol, "args": [_describe(a) for a in typed.args]}
                )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cc.compile()
        built = next(Path(tmp).glob(f"{_jit.AOT_MODULE}.*.so"))
        target = out / built.name
        shutil.copyfile(built, target.with_suffix(".tmp"))
        os.replace(target.with_suffix(".tmp"), target)
    manifest = {"stamp": _jit.aot_stamp(sorted(files)), "exports": exports}
    tmp_manifest = out / f"{_jit.AOT_MODULE}.json.tmp"
    tmp_manifest.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp_manifest, out / f"{_jit.AOT_MODULE}.json")
    return target


def main() -> int:
    """Build, and say what was built (or why not)."""
    try:
        target = build()
    except Exception as exc:  # any compiler failure: numba still serves every kernel
        print(f"heatmap.aot: kernels not built ahead of time ({type(exc).__name__}: {exc})")
        return 1
    n = sum(1 for k in _jit._ALL if k.dispatcher is not None and not k.options.get("inline"))
    print(f"heatmap.aot: {n} kernels compiled into {target.relative_to(PACKAGE.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
