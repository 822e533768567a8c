"""Peak memory of LanePool against the member count (issue 3: bounded by the pool).

    python benchmarks/memory.py            # W1 at n = 1e3, 1e4, 1e5, one process each

Each count runs in a fresh process; the script prints the peak resident set size, the
size of the results themselves, and the difference.
"""

import subprocess
import sys


CHILD = """
import resource, sys, time, jax
jax.config.update("jax_enable_x64", True)
import jax.random as jr, numpy as np
sys.path.insert(0, "benchmarks")
from ensemble import workload
import implicit_flow as imf
import diffrax as dfx
num = int(sys.argv[1])
model, data, sampler = workload("W1")
start = time.perf_counter()
res = imf.solve_ensemble(model, data, sampler, key=jr.key(0), num=num, loss=imf.MeanSquareLoss(),
                         stepsize_controller=dfx.PIDController(rtol=1e-10, atol=1e-12), gtol=1e-8)
jax.block_until_ready(res)
size = sum(np.asarray(a).nbytes for a in jax.tree.leaves(res))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print({"num": num, "seconds": time.perf_counter() - start, "results_MB": size / 2**20,
       "peak_MB": peak / 2**20, "converged": int(np.sum(np.asarray(res.status == imf.Status.converged)))})
"""

if __name__ == "__main__":
    for num in [int(a) for a in sys.argv[1:]] or [1_000, 10_000, 100_000]:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(num)], capture_output=True, text=True
        )
        print(
            out.stdout.strip().splitlines()[-1]
            if out.returncode == 0
            else out.stderr[-2000:],
            flush=True,
        )
