"""Code-interpreter tasks: data questions answered in a stateful Jupyter kernel inside the sandbox.

- `kernel_image.kernel_image(config)`: the `tasksynth/kernel:<hash>` image (pandas, numpy, matplotlib,
  scikit-learn, ipykernel, jupyter_client installed offline from the trusted wheelhouse), built once per machine
- `kernel.KernelPool(config, data_root)` / `pool.attempt()` / `attempt.python(code)`: a warm kernel per attempt
- `notebook.attempt_notebook(cells)`: an attempt as an `.ipynb` (nbformat v4)

docs/notebook_env.md says how the kernel is isolated and what a call returns.
"""
