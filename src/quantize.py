"""INT8 ONNX: static post-training quantization with ONNX Runtime's tool (`onnxruntime.quantization.quantize_static`):
QDQ format, weights int8 per output channel, activations uint8 with scales calibrated on training images prepared by
the evaluation transform (`src.dataset.calibration_images`)."""
import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)

CALIBRATION = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}


class _Batches(CalibrationDataReader):
    """`images` in whole batches of the model's input batch size, as ONNX Runtime's calibration reads them."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int):
        self.feeds = iter([{input_name: images[i:i + batch]} for i in range(0, len(images) - batch + 1, batch)])

    def get_next(self):
        return next(self.feeds, None)


def float_nodes(model: onnx.ModelProto, op_types) -> list:
    """Names of the nodes of `op_types` in `model` (to keep in float)."""
    return [node.name for node in model.graph.node if node.op_type in op_types]


# Operators left in float: MobileNetV3's h-swish, h-sigmoid gate and squeeze-excite scaling (x * gate).  Measured on
# MobileNetV3-large trained on the demo digits at 96 px (top-1 60.3% in float32, 360 test images): everything int8
# (minmax) 58.3%; percentile calibration with these in float 59.2%, with the dense head (Gemm) in float too 59.7%
# (2 images; on the 32-px CIFAR-style model 91.7% without, 91.1% with), at twice the file size (the 1000-class head
# is most of MobileNetV3's and V1's weights), so the head is int8.  MobileNetV1 and V3-small lost nothing either
# way.  Activations are uint8 (ONNX Runtime's U8S8, its choice for x86): with int8 activations MobileNetV3-small
# ran at 0.64x its float32 speed.
KEEP_FLOAT = ("HardSwish", "HardSigmoid", "Mul")


def quantize_int8(fp32_path: str, int8_path: str, images: np.ndarray, method: str = "percentile",
                  keep_float=KEEP_FLOAT) -> None:
    """Write `int8_path`, the model of `fp32_path` statically quantized (see the module docstring), calibrated on
    `images` (NCHW float32) with `method` (minmax | entropy | percentile); the operators of `keep_float` types stay
    float."""
    model = onnx.load(fp32_path)
    image = model.graph.input[0]
    batch = image.type.tensor_type.shape.dim[0].dim_value or 1
    quantize_static(fp32_path, int8_path, _Batches(image.name, images, batch), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CALIBRATION[method], nodes_to_exclude=float_nodes(model, keep_float))
