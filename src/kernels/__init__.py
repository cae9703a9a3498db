"""C++ CPU kernels as MindSpore AOT custom ops, one module per op family: `library` (compile, cache, build target,
custom op factory), `depthwise`, `bias_act`, `batchnorm`, `im2col`.  Each op factory returns None where the library
cannot be built or the layers are built for another target; the layers in `src/models/layers.py` then run
MindSpore's built-in operators."""
