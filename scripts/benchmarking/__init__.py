"""The helpers of scripts/benchmark.py (the command stays in scripts/), one idea per module:

    cli.py          the command line: options, defaults, the checks between them
    networks.py     the networks timed: gpucnn's zoo plus conv-bn and vgg
    measure.py      clocks and meters: interleaved repeats, the SGEMM peak, peak memory
    rows.py         one case per network, batch and backend (CPU or GPU), timed into a row;
                    the rows' printed forms and table
    torch_twin.py   the PyTorch twin of a gpucnn network
    gemm_floor.py   the matrix multiplies of a step alone: the floor under a CPU step
    profile_step.py --profile: each part of a step timed; the FLOPs of a step
    scaling.py      the sweep over batch size and image size, its table and --plot figure
    layer_bench.py  --layers: single layers against PyTorch's
    gpu_bench.py    what only a GPU row needs: TF32 off, the GPU's SGEMM peak, device memory,
                    the host cost of a CuPy call, the --gpu-targets cases
    gpu_model.py    --gpu-model: a GPU step's time predicted from work counted on the stand-in
    ranks.py        --ranks: data-parallel scaling over mpiexec processes, and on paper

scripts/benchmark.py puts scripts/ on sys.path and imports them as ``benchmarking.<module>``.
"""
