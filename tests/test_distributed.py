"""simulate across processes (jax.distributed): two processes of two CPU devices each, one mesh.

Each worker process initialises ``jax.distributed`` against a coordinator on localhost, samples
the same population (same seed) and simulates it sharded over the 4 devices of both processes
(2 chunks, padded); both must return the full result of an unsharded single-process run.
"""

import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np

import cartkin as ck
from cartkin._population import Population

N, SEED, OMEGA = 24, 5, {"Cmax": 0.4, "alpha": 0.3}
TIMES = [1.0, 7, 14, 28, 90]

WORKER = textwrap.dedent(
    f"""
    import sys
    import numpy as np
    import jax

    port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"localhost:{{port}}", num_processes=2, process_id=pid,
        initialization_timeout=60,
    )
    import cartkin as ck
    from cartkin._population import Population

    assert jax.process_count() == 2, jax.process_count()
    assert len(jax.devices()) == 4 and len(jax.local_devices()) == 2, jax.devices()
    m = ck.Stein2019ODE()
    pop = Population(m, omega={OMEGA!r})
    th, _, _ = pop.sample({N}, seed={SEED})
    # chunk_size=4: 4 patients per device, 16 per chunk over the 4 devices, 2 chunks (8 padded)
    r = ck.simulate(m, th, {TIMES!r}, chunk_size=4)
    np.save(f"{{out}}/C{{pid}}.npy", r.outputs["C"])
    np.save(f"{{out}}/status{{pid}}.npy", r.status)
    # a different population on each process must be refused, on both, before any solve
    th_bad, _, _ = pop.sample({N}, seed={SEED} + pid)
    try:
        ck.simulate(m, th_bad, {TIMES!r}, chunk_size=4)
    except ValueError as e:
        assert "differ between processes" in str(e), e
        print("MISMATCH-REFUSED")
    jax.distributed.shutdown()
    print("WORKER-OK")
    """
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_equal_single_process(tmp_path):
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        MPLBACKEND="Agg",
    )
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, port, str(i), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        # the reference, in this process on one device, while the workers run
        m = ck.Stein2019ODE()
        th, _, _ = Population(m, omega=OMEGA).sample(N, seed=SEED)
        ref = ck.simulate(m, th, TIMES, devices=jax.devices()[:1])
        logs = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=240)  # a hung coordinator fails, not hangs
            logs.append((p.returncode, stdout, stderr[-3000:]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for i, (rc, stdout, stderr) in enumerate(logs):
        assert rc == 0 and "WORKER-OK" in stdout, f"process {i} (rc {rc}):\n{stdout}\n{stderr}"
        assert "MISMATCH-REFUSED" in stdout, f"process {i} accepted different inputs:\n{stdout}"
    assert ref.ok.all()
    for i in range(2):
        c = np.load(tmp_path / f"C{i}.npy")
        status = np.load(tmp_path / f"status{i}.npy")
        assert c.shape == ref.outputs["C"].shape == (N, len(TIMES))
        np.testing.assert_array_equal(status, ref.status)
        np.testing.assert_allclose(c, ref.outputs["C"], rtol=1e-12, atol=0)
