// Depthwise 2-D convolution for MindSpore AOT custom ops on CPU: NCHW float32, weight (C, 1, k, k),
// symmetric zero padding k / 2 (or TensorFlow's "same" at stride 2: the symbols with "Same"), no bias.  One exported
// symbol per stride and pass:
//   DepthwiseForward[Same]S{1,2}(x, w) -> y
//   DepthwiseInputGrad[Same]S{1,2}(x, w, dy) -> dx   (x gives only the shape)
//   DepthwiseWeightGrad[Same]S{1,2}(x, w, dy) -> dw  (w gives only the shape)
// Each (n, c) plane is split into phase planes so that every kernel tap reads one contiguous run (depthwise_rows.h:
// the geometry and the forward arithmetic, bitwise equal to the built-in convolution).  The input gradient is
// gathered per phase plane (no scatter), the weight gradient is one task per channel (the same result for any
// thread count).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "depthwise_rows.h"

namespace {

// Largest tap offset inside one phase plane: the zero margin in front of a gradient grid.
int64_t Margin(const Geometry& g) { return RoundUp(((g.k - 1) / g.s) * g.pw + (g.k - 1) / g.s); }

// dy of one plane on the grid, behind `Margin` zeros, scratch columns and tail zero.
void GradGrid(const float* dy, const Geometry& g, float* grid) {
  const int64_t margin = Margin(g);
  std::fill(grid, grid + margin + std::max(GridSize(g), RoundUp(g.plane())) + CHUNK, 0.0f);
  for (int64_t oh = 0; oh < g.ho; ++oh) std::copy(dy + oh * g.wo, dy + (oh + 1) * g.wo, grid + margin + oh * g.pw);
}
int64_t GradGridSize(const Geometry& g) { return Margin(g) + std::max(GridSize(g), RoundUp(g.plane())) + CHUNK; }

// Forward pass; with kBias the inference epilogue y = act(conv + bias[c]) (folded BatchNorm) is applied while
// the plane is written, saving a pass over the output.
template <int64_t S, bool kSame, bool kBias, typename Act>
int ForwardImpl(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  Geometry g;
  if (nparam != (kBias ? 4 : 3) || !MakeGeometry(2, ndims, shapes, dtypes, S, kSame, &g)) return 1;
  if (kBias && (ndims[2] != 1 || shapes[2][0] != g.c || std::strcmp(dtypes[2], "float32") != 0)) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  const float* bias = kBias ? static_cast<const float*>(params[2]) : nullptr;
  float* y = static_cast<float*>(params[kBias ? 3 : 2]);
  const int64_t taps = g.k * g.k;
  int64_t offsets[64];
  TapOffsets(g, g.ph, offsets);
  ForPlanes(g, ForwardScratchSize(g), [&](int64_t i, float* scratch) {
    ForwardPlane<S, kBias, Act>(x + i * g.h * g.w, g, offsets, w + (i % g.c) * taps, kBias ? bias[i % g.c] : 0.0f,
                                scratch, y + i * g.ho * g.wo);
  });
  return 0;
}

template <int64_t S, bool kSame>
int Forward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  return ForwardImpl<S, kSame, false, Identity>(nparam, params, ndims, shapes, dtypes);
}

template <int64_t S, bool kSame, typename Act>
int ForwardBiasAct(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  return ForwardImpl<S, kSame, true, Act>(nparam, params, ndims, shapes, dtypes);
}

template <int64_t S, bool kSame>
int InputGrad(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  Geometry g;
  if (nparam != 4 || !MakeGeometry(nparam, ndims, shapes, dtypes, S, kSame, &g)) return 1;
  const float* w = static_cast<const float*>(params[1]);
  const float* dy = static_cast<const float*>(params[2]);
  float* dx = static_cast<float*>(params[3]);
  const int64_t plane = RoundUp(g.plane()), margin = Margin(g);
  ForPlanes(g, GradGridSize(g) + S * S * plane, [&](int64_t i, float* scratch) {
    float* grid = scratch;
    float* phases = scratch + GradGridSize(g);  // S * S planes of `plane` floats
    GradGrid(dy + i * g.ho * g.wo, g, grid);
    const float* wc = w + (i % g.c) * g.k * g.k;
    for (int64_t a = 0; a < S; ++a) {
      for (int64_t b = 0; b < S; ++b) {
        // phase(a, b)[u] = sum over taps (kh, kw) with kh % S == a, kw % S == b of w * dy_grid[u - shift]
        int64_t shifts[64];
        float weights[64];
        int64_t n = 0;
        for (int64_t kh = a; kh < g.k; kh += S) {
          for (int64_t kw = b; kw < g.k; kw += S) {
            shifts[n] = (kh / S) * g.pw + kw / S;
            weights[n++] = wc[kh * g.k + kw];
          }
        }
        float* dst = phases + (a * S + b) * plane;
        for (int64_t u0 = 0; u0 < plane; u0 += CHUNK) {
          Chunk acc;
          for (int64_t t = 0; t < n; ++t) acc.MulAdd(weights[t], grid + margin + u0 - shifts[t]);
          acc.Store(dst + u0);
        }
      }
    }
    // Merge reads phase (a, b) at (a * S + b) * g.plane(): repack to that stride first when they differ.
    if (plane != g.plane()) {
      for (int64_t p = 1; p < S * S; ++p) {
        std::copy(phases + p * plane, phases + p * plane + g.plane(), phases + p * g.plane());
      }
    }
    Merge<S>(phases, g, dx + i * g.h * g.w);
  });
  return 0;
}

template <int64_t S, bool kSame>
int WeightGrad(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  Geometry g;
  if (nparam != 4 || !MakeGeometry(nparam, ndims, shapes, dtypes, S, kSame, &g)) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* dy = static_cast<const float*>(params[2]);
  float* dw = static_cast<float*>(params[3]);
  const int64_t taps = g.k * g.k, grid = GridSize(g), margin = Margin(g);
  const bool parallel = g.c > 1 && g.n * g.c * g.ho * g.wo * taps > 32768;
  // One channel per task, its images summed in order n = 0, 1, ..., so the result does not depend on the
  // number of threads.
  ParallelFor(g.c, parallel, [&](int64_t first, int64_t last) {
    std::vector<float> scratch(PhaseBufferSize(g) + GradGridSize(g));
    std::vector<Chunk> sums(taps);  // per tap: CHUNK partial sums over the channel's images and positions
    int64_t offsets[64];
    TapOffsets(g, g.ph, offsets);
    for (int64_t c = first; c < last; ++c) {
      std::fill(sums.begin(), sums.end(), Chunk());
      float* phases = scratch.data();
      float* dgrid = phases + PhaseBufferSize(g);
      for (int64_t n = 0; n < g.n; ++n) {
        const int64_t i = n * g.c + c;
        Split<S>(x + i * g.h * g.w, g, phases);
        std::fill(phases + g.phases(), phases + PhaseBufferSize(g), 0.0f);
        GradGrid(dy + i * g.ho * g.wo, g, dgrid);
        const float* grad = dgrid + margin;
        for (int64_t t0 = 0; t0 < grid; t0 += CHUNK) {  // a chunk of dy stays in cache for all taps
          for (int64_t t = 0; t < taps; ++t) sums[t].MulAdd(grad + t0, phases + offsets[t] + t0);
        }
      }
      for (int64_t t = 0; t < taps; ++t) {
        float lanes[CHUNK];
        sums[t].Store(lanes);
        double sum = 0.0;
        for (int64_t j = 0; j < CHUNK; ++j) sum += lanes[j];
        dw[c * taps + t] = static_cast<float>(sum);
      }
    }
  });
  return 0;
}

}  // namespace

AOT_EXPORT(DepthwiseForwardS1, Forward<1, false>)
AOT_EXPORT(DepthwiseForwardS2, Forward<2, false>)
AOT_EXPORT(DepthwiseInputGradS1, InputGrad<1, false>)
AOT_EXPORT(DepthwiseInputGradS2, InputGrad<2, false>)
AOT_EXPORT(DepthwiseWeightGradS1, WeightGrad<1, false>)
AOT_EXPORT(DepthwiseWeightGradS2, WeightGrad<2, false>)
// "same" padding differs from the symmetric only at stride 2
AOT_EXPORT(DepthwiseForwardSameS2, Forward<2, true>)
AOT_EXPORT(DepthwiseInputGradSameS2, InputGrad<2, true>)
AOT_EXPORT(DepthwiseWeightGradSameS2, WeightGrad<2, true>)

// DepthwiseForward{Identity,ReLU,ReLU6,HSwish}[Same]S{1,2}(x, w, bias) -> act(conv(x, w) + bias[c])  (inference)
AOT_EXPORT(DepthwiseForwardIdentityS1, ForwardBiasAct<1, false, Identity>)
AOT_EXPORT(DepthwiseForwardIdentityS2, ForwardBiasAct<2, false, Identity>)
AOT_EXPORT(DepthwiseForwardReLUS1, ForwardBiasAct<1, false, ReLU>)
AOT_EXPORT(DepthwiseForwardReLUS2, ForwardBiasAct<2, false, ReLU>)
AOT_EXPORT(DepthwiseForwardReLU6S1, ForwardBiasAct<1, false, ReLU6>)
AOT_EXPORT(DepthwiseForwardReLU6S2, ForwardBiasAct<2, false, ReLU6>)
AOT_EXPORT(DepthwiseForwardHSwishS1, ForwardBiasAct<1, false, HSwish>)
AOT_EXPORT(DepthwiseForwardHSwishS2, ForwardBiasAct<2, false, HSwish>)
AOT_EXPORT(DepthwiseForwardIdentitySameS2, ForwardBiasAct<2, true, Identity>)
AOT_EXPORT(DepthwiseForwardReLUSameS2, ForwardBiasAct<2, true, ReLU>)
AOT_EXPORT(DepthwiseForwardReLU6SameS2, ForwardBiasAct<2, true, ReLU6>)
AOT_EXPORT(DepthwiseForwardHSwishSameS2, ForwardBiasAct<2, true, HSwish>)
