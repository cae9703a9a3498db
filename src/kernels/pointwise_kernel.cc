// Pointwise (1x1) convolution with the inference epilogue, for MindSpore AOT custom ops on CPU, NCHW float32:
//   Pointwise{Identity,ReLU,ReLU6,HSwish}(x, w, bias) -> y = act(w x + bias)      x (N, K, H, W), w (O, K, 1, 1)
//   PointwiseResidual(x, w, bias, r) -> y = (w x + bias) + r                       (the linear projection + shortcut)
// One GEMM Y (O x NHW) = W (O x K) X (K x NHW) whose columns are the pixels of all images in a row (so 7x7 planes
// fill whole blocks): W packed once per call into panels of 6 output channels (8 with AVX-512), X into panels of 16
// (48 with AVX-512) pixels, L2-sized groups of them at a time, a register block summed over K with fused
// multiply-adds, then bias, activation (and shortcut) while the block is stored: one pass over the output instead
// of MindSpore's Conv2D (oneDNN on plain NCHW) followed by a bias + activation pass.  Every output is summed in the
// same order for any thread count.
//   Separable{DwAct}{Act}[Same]S{1,2}(x, wd, bd, w, bias) -> y = act(w dwact(depthwise(x, wd) + bd) + bias)
//   Separable{DwAct}ResidualS1(x, wd, bd, w, bias, r) -> y = (w dwact(depthwise(x, wd) + bd) + bias) + r
// The depthwise convolution (depthwise_rows.h) then this GEMM in one op: the depthwise output of a strip of rows is
// the GEMM's packed panel (L2) instead of a tensor written to and read back from memory.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "depthwise_rows.h"
#include "kernel_util.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

namespace narrow {  // 8 floats: AVX2 (+ FMA), the library's build target
constexpr int64_t kLanes = kV8;
constexpr int64_t kRows = 6, kVecs = 2;  // 12 sums + 2 pixel vectors + a weight: 15 of the 16 registers
typedef V8 Vec;
inline Vec LoadVec(const float* p) { return Load(p); }
inline Vec Fma(Vec acc, float w, Vec x) { return MulAdd(acc, w, x); }
#include "pointwise_gemm.inc"
}  // namespace narrow

#if defined(__x86_64__)
// 16 floats, compiled for AVX-512 whatever the build flags and run only where the CPU has it: the GEMM is
// compute-bound, unlike the other kernels (which measured no faster with AVX-512).
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
namespace wide {
constexpr int64_t kLanes = 16;
// 24 sums in 32 registers: per k, 3 loads and 8 broadcasts for 24 fused multiply-adds.  On MobileNet's 1x1 layers
// at batch 32 (20 shapes) it was 1.20x, 1.05x and 1.06x as fast in total as 6 x 2 (the AVX2 block), 12 x 2 and
// 14 x 2.  MobileNet's channel counts are multiples of 8.
constexpr int64_t kRows = 8, kVecs = 3;
typedef float Vec __attribute__((vector_size(64)));
inline Vec LoadVec(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline Vec Fma(Vec acc, float w, Vec x) { return _mm512_fmadd_ps(x, _mm512_set1_ps(w), acc); }
#include "pointwise_gemm.inc"
}  // namespace wide
#pragma GCC pop_options
#endif

template <typename Act, bool kResidual>
int Pointwise(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
#if defined(__x86_64__)
  static const bool has_avx512 = __builtin_cpu_supports("avx512f");
  if (has_avx512) return wide::Gemm<Act, kResidual>(nparam, params, ndims, shapes, dtypes);
#endif
  return narrow::Gemm<Act, kResidual>(nparam, params, ndims, shapes, dtypes);
}

template <int64_t S, bool kSame, typename DwAct, typename Act, bool kResidual>
int DepthwisePointwise(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
#if defined(__x86_64__)
  static const bool has_avx512 = __builtin_cpu_supports("avx512f");
  if (has_avx512) return wide::Separable<S, kSame, DwAct, Act, kResidual>(nparam, params, ndims, shapes, dtypes);
#endif
  return narrow::Separable<S, kSame, DwAct, Act, kResidual>(nparam, params, ndims, shapes, dtypes);
}

}  // namespace

AOT_EXPORT(PointwiseIdentity, Pointwise<Identity, false>)
AOT_EXPORT(PointwiseReLU, Pointwise<ReLU, false>)
AOT_EXPORT(PointwiseReLU6, Pointwise<ReLU6, false>)
AOT_EXPORT(PointwiseHSwish, Pointwise<HSwish, false>)
AOT_EXPORT(PointwiseResidual, Pointwise<Identity, true>)
// MobileNetV1's blocks (ReLU6 twice; ReLU twice in mindcv's) and MobileNetV3's blocks without squeeze-excite (ReLU or
// h-swish, then the linear projection, with the shortcut at stride 1 when the shapes match); at stride 2 also with
// TensorFlow's "same" padding (SeparableXSameS2).
AOT_EXPORT(SeparableReLU6ReLU6S1, DepthwisePointwise<1, false, ReLU6, ReLU6, false>)
AOT_EXPORT(SeparableReLU6ReLU6S2, DepthwisePointwise<2, false, ReLU6, ReLU6, false>)
AOT_EXPORT(SeparableReLUReLUS1, DepthwisePointwise<1, false, ReLU, ReLU, false>)
AOT_EXPORT(SeparableReLUReLUS2, DepthwisePointwise<2, false, ReLU, ReLU, false>)
AOT_EXPORT(SeparableReLUIdentityS1, DepthwisePointwise<1, false, ReLU, Identity, false>)
AOT_EXPORT(SeparableReLUIdentityS2, DepthwisePointwise<2, false, ReLU, Identity, false>)
AOT_EXPORT(SeparableHSwishIdentityS1, DepthwisePointwise<1, false, HSwish, Identity, false>)
AOT_EXPORT(SeparableHSwishIdentityS2, DepthwisePointwise<2, false, HSwish, Identity, false>)
AOT_EXPORT(SeparableReLUResidualS1, DepthwisePointwise<1, false, ReLU, Identity, true>)
AOT_EXPORT(SeparableHSwishResidualS1, DepthwisePointwise<1, false, HSwish, Identity, true>)
AOT_EXPORT(SeparableReLU6ReLU6SameS2, DepthwisePointwise<2, true, ReLU6, ReLU6, false>)
AOT_EXPORT(SeparableReLUReLUSameS2, DepthwisePointwise<2, true, ReLU, ReLU, false>)
AOT_EXPORT(SeparableReLUIdentitySameS2, DepthwisePointwise<2, true, ReLU, Identity, false>)
AOT_EXPORT(SeparableHSwishIdentitySameS2, DepthwisePointwise<2, true, HSwish, Identity, false>)
