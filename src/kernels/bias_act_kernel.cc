// Bias + activation in one pass for MindSpore AOT custom ops on CPU (the inference form of conv -> BN ->
// activation once BatchNorm is folded into the convolution): y[n, c, ...] = act(x[n, c, ...] + bias[c]),
// NCHW float32.  One exported symbol per activation: BiasIdentity, BiasReLU, BiasReLU6, BiasHSwish
// (activations in kernel_util.h).

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernel_util.h"

namespace {

template <typename Act>
int BiasAct(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  if (nparam != 3 || ndims[0] < 2 || ndims[1] != 1 || !AllFloat32(nparam, dtypes)) return 1;
  const int64_t n = shapes[0][0], c = shapes[0][1];
  if (shapes[1][0] != c) return 1;
  int64_t plane = 1;
  for (int d = 2; d < ndims[0]; ++d) plane *= shapes[0][d];
  const float* x = static_cast<const float*>(params[0]);
  const float* bias = static_cast<const float*>(params[1]);
  float* y = static_cast<float*>(params[2]);
  ParallelFor(n * c, n * c * plane > 65536, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {
      const float b = bias[i % c];
      const float* src = x + i * plane;
      float* dst = y + i * plane;
      const int64_t body = plane / kV8 * kV8;
      for (int64_t j = 0; j < body; j += kV8) Store(dst + j, Act::Apply(Load(src + j) + b));
      for (int64_t j = body; j < plane; ++j) dst[j] = Act::Apply(src[j] + b);
    }
  });
  return 0;
}

}  // namespace

AOT_EXPORT(BiasIdentity, BiasAct<Identity>)
AOT_EXPORT(BiasReLU, BiasAct<ReLU>)
AOT_EXPORT(BiasReLU6, BiasAct<ReLU6>)
AOT_EXPORT(BiasHSwish, BiasAct<HSwish>)

// BatchNorm folded into the preceding convolution (inference):
//   FoldBatchNorm(w, gamma, beta, mean, var, eps) -> (w', b'),  s = gamma / sqrt(var + eps),
//   w'[o, ...] = w[o, ...] * s[o],  b' = beta - mean * s
// one op instead of seven small ones per layer (their launch overhead was ~10% of a MobileNetV3-small batch).
namespace {

int Fold(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  if (nparam != 8 || ndims[0] < 1 || !AllFloat32(nparam, dtypes)) return 1;
  const int64_t out = shapes[0][0];
  int64_t inner = 1;
  for (int d = 1; d < ndims[0]; ++d) inner *= shapes[0][d];
  for (int i = 1; i < 5; ++i) {
    if (ndims[i] != 1 || shapes[i][0] != out) return 1;
  }
  const float* w = static_cast<const float*>(params[0]);
  const float* gamma = static_cast<const float*>(params[1]);
  const float* beta = static_cast<const float*>(params[2]);
  const float* mean = static_cast<const float*>(params[3]);
  const float* var = static_cast<const float*>(params[4]);
  const float eps = *static_cast<const float*>(params[5]);
  FoldBatchNormInto(w, out, inner, gamma, beta, mean, var, eps, static_cast<float*>(params[6]),
                    static_cast<float*>(params[7]));
  return 0;
}

}  // namespace

AOT_EXPORT(FoldBatchNorm, Fold)

// Bias + residual in one pass (inference: the linear projection of an inverted residual block with its BatchNorm
// folded, then the shortcut): BiasResidual(x, bias, r) -> y[n, c, ...] = (x[n, c, ...] + bias[c]) + r[n, c, ...].
// MindSpore's Add took 2-3 ms per block at batch 32 (MobileNetV3-small: a tenth of inference, measured).
namespace {

int AddBiasResidual(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  if (nparam != 4 || ndims[0] < 2 || ndims[1] != 1 || ndims[2] != ndims[0] || !AllFloat32(nparam, dtypes)) return 1;
  const int64_t n = shapes[0][0], c = shapes[0][1];
  if (shapes[1][0] != c) return 1;
  int64_t plane = 1;
  for (int d = 0; d < ndims[0]; ++d) {
    if (shapes[2][d] != shapes[0][d]) return 1;
    if (d >= 2) plane *= shapes[0][d];
  }
  const float* x = static_cast<const float*>(params[0]);
  const float* bias = static_cast<const float*>(params[1]);
  const float* r = static_cast<const float*>(params[2]);
  float* y = static_cast<float*>(params[3]);
  ParallelFor(n * c, n * c * plane > 65536, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {
      const float b = bias[i % c];
      const int64_t at = i * plane;
      const int64_t body = plane / kV8 * kV8;
      for (int64_t j = 0; j < body; j += kV8) Store(y + at + j, (Load(x + at + j) + b) + Load(r + at + j));
      for (int64_t j = body; j < plane; ++j) y[at + j] = (x[at + j] + b) + r[at + j];
    }
  });
  return 0;
}

}  // namespace

AOT_EXPORT(BiasResidual, AddBiasResidual)
