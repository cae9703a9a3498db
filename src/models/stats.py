"""Parameter and multiply-add counts of a network."""
import mindspore as ms
import mindspore.nn as nn
import numpy as np


def count_params(net: nn.Cell) -> int:
    """Number of trainable parameter values."""
    return sum(int(np.prod(p.shape)) for p in net.trainable_params())


def layer_sizes(net: nn.Cell, height: int = 224, width: int = None) -> list:
    """(multiply-adds, output values) of every conv and dense layer call for one image of `height` x `width`
    (default square), in call order.

    Runs one forward pass in PyNative mode with forward hooks (mode and training flag are restored); activations,
    BN, pooling and elementwise products are not layers here.
    """
    width = width or height
    layers = []

    def conv_hook(cell, _inputs, output):
        kh, kw = cell.kernel_size
        values = int(np.prod(output.shape[1:]))
        layers.append((values * cell.in_channels // cell.group * kh * kw, values))

    def dense_hook(cell, _inputs, output):
        layers.append((cell.in_channels * cell.out_channels, int(np.prod(output.shape[1:]))))

    previous_mode = ms.get_context("mode")
    was_training = net.training
    ms.set_context(mode=ms.PYNATIVE_MODE)
    handles = []
    try:
        for _, cell in net.cells_and_names():
            if isinstance(cell, nn.Conv2d):
                handles.append(cell.register_forward_hook(conv_hook))
            elif isinstance(cell, nn.Dense):
                handles.append(cell.register_forward_hook(dense_hook))
        net.set_train(False)
        net(ms.Tensor(np.zeros((1, 3, height, width), np.float32)))
    finally:
        for handle in handles:
            handle.remove()
        net.set_train(was_training)
        ms.set_context(mode=previous_mode)
    return layers


def count_macs(net: nn.Cell, height: int = 224, width: int = None) -> int:
    """Multiply-adds of the conv and dense layers for one image of `height` x `width` (default square).

    Runs one forward pass in PyNative mode with forward hooks (mode and training flag are restored); activations,
    BN, pooling and elementwise products are not counted.
    """
    return sum(macs for macs, _ in layer_sizes(net, height, width))
