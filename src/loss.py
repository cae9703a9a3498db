"""Softmax cross-entropy with label smoothing, for sparse integer labels or soft (mixed) ones."""
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from src.errors import UserError


class CrossEntropySmooth(nn.LossBase):
    """Softmax cross-entropy against smoothed one-hot targets.

    Follows the MindSpore model zoo convention: with eps = smooth_factor and K = class_num, the true
    class gets 1 - eps and every other class eps / (K - 1) (timm/PyTorch instead use
    1 - eps + eps / K and eps / K). smooth_factor 0 is plain softmax cross-entropy.
    The loss is computed in float32 (mixed-precision networks may emit float16 logits).
    With `soft_labels` the labels are per-class weights summing to 1 (mixup / CutMix); smoothing is linear in the
    target, so the smoothed mixed target is label * (on - off) + off: the mix of the smoothed one-hot targets.
    """

    def __init__(self, class_num, smooth_factor=0.0, reduction="mean", soft_labels=False):
        super().__init__(reduction)
        if class_num < 2:
            raise UserError(f"class_num: got {class_num}, expected at least 2")
        if not 0.0 <= smooth_factor <= 1.0:
            raise UserError(f"smooth_factor: got {smooth_factor}, expected a value in [0, 1]")
        self.class_num = class_num
        self.on_value = ms.Tensor(1.0 - smooth_factor, ms.float32)
        self.off_value = ms.Tensor(smooth_factor / (class_num - 1), ms.float32)
        self.cross_entropy = nn.SoftmaxCrossEntropyWithLogits(sparse=False, reduction=reduction)
        self.soft_labels = soft_labels

    def construct(self, logits, label):
        if self.soft_labels:
            target = ops.cast(label, ms.float32) * (self.on_value - self.off_value) + self.off_value
        else:
            target = ops.one_hot(label, self.class_num, self.on_value, self.off_value)
        return self.cross_entropy(ops.cast(logits, ms.float32), target)


class LossRecorder(nn.Cell):
    """`loss_fn` that also adds each finite loss and counts the steps that had one, in Parameters on the device:
    with data sink the callbacks run once per sink and see only its last loss (`Model.train`), so they read the
    sink's mean and its non-finite steps from here (`take`)."""

    def __init__(self, loss_fn: nn.Cell):
        super().__init__()
        self.loss_fn = loss_fn
        self.loss_sum = Parameter(Tensor(0.0, ms.float32), name="recorded_loss_sum", requires_grad=False)
        self.finite_steps = Parameter(Tensor(0, ms.int32), name="recorded_finite_steps", requires_grad=False)

    def construct(self, logits, label):
        loss = self.loss_fn(logits, label)
        finite = ops.isfinite(loss)
        recorded = ops.assign_add(self.loss_sum, ops.select(finite, loss, ops.zeros_like(loss)))
        counted = ops.assign_add(self.finite_steps, ops.cast(finite, ms.int32))
        return ops.depend(loss, (recorded, counted))

    def take(self) -> tuple:
        """(sum of the finite losses, number of steps with a finite loss) since the last call; resets both."""
        loss_sum, finite_steps = float(self.loss_sum.asnumpy()), int(self.finite_steps.asnumpy())
        self.loss_sum.set_data(Tensor(0.0, ms.float32))
        self.finite_steps.set_data(Tensor(0, ms.int32))
        return loss_sum, finite_steps
