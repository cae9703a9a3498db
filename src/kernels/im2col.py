"""im2col: the dense k x k stem convolution as a 1x1 convolution (a GEMM) on CPU; its gradient is col2im."""
from src.kernels.depthwise import STRIDES
from src.kernels.library import aot, cpu_library


def im2col_op(kernel_size: int, stride: int):
    """Custom op columns = im2col(x) for a k x k convolution with padding k // 2 at `stride` (1 or 2): (N, C, H, W)
    -> (N, C * k * k, Ho, Wo), column (c * k + kh) * k + kw, so that a 1x1 convolution with the weight reshaped
    to (out, C * k * k) is the convolution; its gradient is col2im.  None where the kernel library is
    unavailable or the target is not CPU."""
    library = cpu_library()
    if library is None or stride not in STRIDES:
        return None
    k, pad = kernel_size, kernel_size // 2
    col2im = aot(library, f"Col2ImS{stride}", lambda x, cols: x)

    def bprop(x, out, dout):
        return (col2im(x, dout),)

    def out_shape(x):
        return [x[0], x[1] * k * k, (x[2] + 2 * pad - k) // stride + 1, (x[3] + 2 * pad - k) // stride + 1]

    return aot(library, f"Im2ColS{stride}", out_shape, bprop)
