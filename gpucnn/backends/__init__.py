"""The devices: the backend seam (the only place that imports cupy), the CUDA kernels and their
NumPy twins, CUDA graphs, CPU threads and host memory."""
