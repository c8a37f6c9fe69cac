"""The Triton kernels' sm_90 PTX, compiled here without a GPU (Triton's own compiler and ptxas): compile errors, and
the memory instructions each variant's code holds (vector widths, byte-wise shared loads, cp.async pipelining,
tensor-core instructions), as the launchers specialize them (16-byte aligned pointers and strides), and the registers
a thread holds (`ptxas -v`, from Triton's own ptxas).

    python benchmarks/experiments/ptx_check.py            # the KT bounds pass at RocketKV's shapes, every variant
"""

import itertools
import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from rocket_trtllm.kernels import kt_predict

BOUNDS_ARGS = {"q_ptr": "*fp32", "kt_ptr": "*fp8e5", "tables_ptr": "*i32", "pages_ptr": "*i64", "out_ptr": "*fp32",
               "part_m_ptr": "*fp32", "part_l_ptr": "*fp32", "scales_ptr": "*fp32", "scale_value": "fp32",
               "sq_b": "i32", "sq_h": "i32", "s_grp": "i32", "s_h": "i32", "st_b": "i32", "so_b": "i32",
               "so_h": "i32", "max_pages": "i32", "chunk": "i32", "n_chunks": "i32"}  # fmt: skip
ALIGNED = ("sq_b", "sq_h", "s_grp", "s_h", "so_b", "so_h")  # strides the launch specializes as multiples of 16
MEMORY = r"(?:ld|st)\.(?:global|shared)[\w.]*|cp\.async\.\w+\.shared\.global|ldmatrix[\w.]*|mma\.sync[\w.]*"


def compile_ptx(fn, args: dict, consts: dict, warps: int, stages: int) -> tuple[str, int]:
    signature = {**args, **{k: "constexpr" for k in consts}}
    names = list(args)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names if args[n][0] == "*" or n in ALIGNED}
    source = ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs)
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps,
                                                                                "num_stages": stages})  # fmt: skip
    return kernel.asm["ptx"], kernel.metadata.shared


def registers(ptx: str) -> str:
    """Registers a thread of the kernel holds, as ptxas reports them for sm_90a ('?' where no ptxas here reads it)."""
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        for ptxas in ("ptxas-blackwell", "ptxas"):  # the newer one reads the PTX version Triton writes
            if (bin_dir / ptxas).is_file():
                run = subprocess.run([str(bin_dir / ptxas), "-arch=sm_90a", "-v", f.name, "-o", "/dev/null"],
                                     capture_output=True, text=True)  # fmt: skip
                found = re.search(r"Used (\d+) registers", run.stderr)
                if found:
                    return found.group(1)
    return "?"


def main() -> None:
    for topr, sign, fold, stages, warps in itertools.product((64, 128), (True, False), (True, False), (1, 3), (2, 4)):
        consts = dict(G=4, G_PAD=16, D=128, TOPR=topr, PPB=8, GROUP=kt_predict.kt_group(8, 1), BLOCK_P=64,
                      DOT=tl.float16, SIGN=sign, PER_HEAD=False, FOLD=fold, PDL=True)  # fmt: skip
        ptx, shared = compile_ptx(kt_predict._kt_bounds_kernel, BOUNDS_ARGS, consts, warps, stages)
        counts = Counter(re.findall(MEMORY, ptx))
        name = f"bounds topr {topr} {'sign' if sign else 'both'} fold={fold} stages={stages} warps={warps}"
        print(f"{name}: {registers(ptx)} registers, shared {shared} B, "
              + ", ".join(f"{k} x{v}" for k, v in counts.most_common()))  # fmt: skip


if __name__ == "__main__":
    main()
