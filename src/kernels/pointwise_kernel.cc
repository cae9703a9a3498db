// Pointwise (1x1) convolution with the inference epilogue, for MindSpore AOT custom ops on CPU, NCHW float32:
//   Pointwise{Identity,ReLU,ReLU6,HSwish}(x, w, bias) -> y = act(w x + bias)      x (N, K, H, W), w (O, K, 1, 1)
//   PointwiseResidual(x, w, bias, r) -> y = (w x + bias) + r                       (the linear projection + shortcut)
// Per image a GEMM Y (O x HW) = W (O x K) X (K x HW): W packed once per call into panels of 6 output channels,
// X into panels of 16 pixels, a 6 x 16 register block summed over K with fused multiply-adds, then bias,
// activation (and shortcut) while the block is stored: one pass over the output instead of MindSpore's Conv2D
// (oneDNN on plain NCHW) followed by a bias + activation pass.  Every output is summed in the same order for any
// thread count.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernel_util.h"

namespace {

constexpr int64_t kRows = 6;                  // output channels per register block
constexpr int64_t kCols = 2 * kV8;            // pixels per register block
constexpr int64_t kGroupBytes = 128 * 1024;   // packed pixels of one task (L2-resident)

template <typename Act, bool kResidual>
int Pointwise(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  if (nparam != (kResidual ? 5 : 4) || !AllFloat32(nparam, dtypes) || ndims[0] != 4 || ndims[1] != 4 ||
      ndims[2] != 1 || ndims[nparam - 1] != 4)
    return 1;
  const int64_t n = shapes[0][0], k = shapes[0][1], plane = shapes[0][2] * shapes[0][3], o = shapes[1][0];
  if (shapes[1][1] != k || shapes[1][2] != 1 || shapes[1][3] != 1 || shapes[2][0] != o) return 1;
  for (int i = 3; i < nparam; ++i) {  // the shortcut and the output
    if (shapes[i][0] != n || shapes[i][1] != o || shapes[i][2] * shapes[i][3] != plane) return 1;
  }
  const float* x = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  const float* bias = static_cast<const float*>(params[2]);
  const float* residual = kResidual ? static_cast<const float*>(params[3]) : nullptr;
  float* y = static_cast<float*>(params[nparam - 1]);

  const int64_t row_blocks = (o + kRows - 1) / kRows, col_blocks = (plane + kCols - 1) / kCols;
  std::vector<float> packed_w(row_blocks * k * kRows, 0.0f);  // [row block][k][row]
  for (int64_t oc = 0; oc < o; ++oc) {
    for (int64_t kk = 0; kk < k; ++kk) packed_w[((oc / kRows) * k + kk) * kRows + oc % kRows] = w[oc * k + kk];
  }
  const int64_t group = std::max<int64_t>(1, kGroupBytes / (k * kCols * 4));  // column blocks per task
  const int64_t groups = (col_blocks + group - 1) / group;
  ParallelFor(n * groups, n * groups > 1 && n * o * k * plane > 65536, [&](int64_t first, int64_t last) {
    std::vector<float> packed_x(group * k * kCols);  // [column block][k][column]
    float tile[kRows][kCols];
    for (int64_t task = first; task < last; ++task) {
      const int64_t b = task / groups, c0 = (task % groups) * group, c1 = std::min(col_blocks, c0 + group);
      const float* xb = x + b * k * plane;
      for (int64_t cb = c0; cb < c1; ++cb) {
        const int64_t p0 = cb * kCols, count = std::min(kCols, plane - p0);
        float* dst = packed_x.data() + (cb - c0) * k * kCols;
        for (int64_t kk = 0; kk < k; ++kk) {
          std::memcpy(dst + kk * kCols, xb + kk * plane + p0, count * sizeof(float));
          std::fill(dst + kk * kCols + count, dst + (kk + 1) * kCols, 0.0f);
        }
      }
      for (int64_t rb = 0; rb < row_blocks; ++rb) {
        const float* wp = packed_w.data() + rb * k * kRows;
        for (int64_t cb = c0; cb < c1; ++cb) {
          const float* xp = packed_x.data() + (cb - c0) * k * kCols;
          V8 a0 = Splat<V8>(0.0f), b0 = a0, a1 = a0, b1 = a0, a2 = a0, b2 = a0, a3 = a0, b3 = a0, a4 = a0,
             b4 = a0, a5 = a0, b5 = a0;  // (row, lo / hi 8 columns)
          for (int64_t kk = 0; kk < k; ++kk) {
            const V8 lo = Load(xp + kk * kCols), hi = Load(xp + kk * kCols + kV8);
            const float* wk = wp + kk * kRows;
            a0 = MulAdd(a0, wk[0], lo);
            b0 = MulAdd(b0, wk[0], hi);
            a1 = MulAdd(a1, wk[1], lo);
            b1 = MulAdd(b1, wk[1], hi);
            a2 = MulAdd(a2, wk[2], lo);
            b2 = MulAdd(b2, wk[2], hi);
            a3 = MulAdd(a3, wk[3], lo);
            b3 = MulAdd(b3, wk[3], hi);
            a4 = MulAdd(a4, wk[4], lo);
            b4 = MulAdd(b4, wk[4], hi);
            a5 = MulAdd(a5, wk[5], lo);
            b5 = MulAdd(b5, wk[5], hi);
          }
          const V8 sums[kRows][2] = {{a0, b0}, {a1, b1}, {a2, b2}, {a3, b3}, {a4, b4}, {a5, b5}};
          const int64_t p0 = cb * kCols, count = std::min(kCols, plane - p0);
          for (int64_t r = 0; r < kRows && rb * kRows + r < o; ++r) {
            const int64_t oc = rb * kRows + r;
            const int64_t at = (b * o + oc) * plane + p0;
            for (int h = 0; h < 2; ++h) {
              V8 v = sums[r][h] + bias[oc];
              if (kResidual) {
                float shortcut[kV8] = {};
                std::memcpy(shortcut, residual + at + h * kV8,
                            std::max<int64_t>(0, std::min<int64_t>(kV8, count - h * kV8)) * sizeof(float));
                v = v + Load(shortcut);
              } else {
                v = Act::Apply(v);
              }
              Store(tile[r] + h * kV8, v);
            }
            std::memcpy(y + at, tile[r], count * sizeof(float));
          }
        }
      }
    }
  });
  return 0;
}

}  // namespace

AOT_EXPORT(PointwiseIdentity, Pointwise<Identity, false>)
AOT_EXPORT(PointwiseReLU, Pointwise<ReLU, false>)
AOT_EXPORT(PointwiseReLU6, Pointwise<ReLU6, false>)
AOT_EXPORT(PointwiseHSwish, Pointwise<HSwish, false>)
AOT_EXPORT(PointwiseResidual, Pointwise<Identity, true>)
