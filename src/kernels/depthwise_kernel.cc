// Depthwise 2-D convolution for MindSpore AOT custom ops on CPU: NCHW float32, weight (C, 1, k, k),
// symmetric zero padding k / 2, no bias.  One exported symbol per stride and pass:
//   DepthwiseForwardS{1,2}(x, w) -> y
//   DepthwiseInputGradS{1,2}(x, w, dy) -> dx   (x gives only the shape)
//   DepthwiseWeightGradS{1,2}(x, w, dy) -> dw  (w gives only the shape)
// Each (n, c) plane is padded and split into stride x stride phase planes,
// phase(a, b)[i][j] = padded[a + s * i][b + s * j], so every kernel tap reads one contiguous run of the
// whole plane (see CHUNK below): the inner loops are multiply-adds on 32 floats held in registers.  The
// input gradient is gathered per phase plane (no scatter), the weight gradient is one task per channel
// (the same result for any thread count).  Forward sums the
// taps of each output in row-major tap order without fused multiply-add (built with -ffp-contract=off),
// like the built-in convolution, so its output is bitwise equal.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernel_util.h"

namespace {

struct Geometry {
  int64_t n, c, h, w;  // input
  int64_t k, s, p;     // kernel size, stride, padding
  int64_t ho, wo;      // output
  int64_t ph, pw;      // phase plane
  int64_t plane() const { return ph * pw; }
  int64_t phases() const { return s * s * plane(); }
  // Start of the row of phase(kh % s, kw % s) that tap (kh, kw) reads for output row oh.
  int64_t offset(int64_t kh, int64_t kw, int64_t oh) const {
    return ((kh % s) * s + kw % s) * plane() + (oh + kh / s) * pw + kw / s;
  }
};

bool MakeGeometry(int nparam, int* ndims, int64_t** shapes, const char** dtypes, int64_t s, Geometry* g) {
  for (int i = 0; i < nparam; ++i) {
    if (ndims[i] != 4 || std::strcmp(dtypes[i], "float32") != 0) return false;
  }
  const int64_t* x = shapes[0];
  const int64_t* w = shapes[1];
  g->n = x[0];
  g->c = x[1];
  g->h = x[2];
  g->w = x[3];
  g->k = w[2];
  g->s = s;
  g->p = g->k / 2;
  if (w[0] != g->c || w[1] != 1 || w[3] != g->k || g->k > 8) return false;
  g->ho = (g->h + 2 * g->p - g->k) / s + 1;
  g->wo = (g->w + 2 * g->p - g->k) / s + 1;
  g->ph = (g->h + 2 * g->p + s - 1) / s;
  g->pw = (g->w + 2 * g->p + s - 1) / s;
  return g->ho > 0 && g->wo > 0;
}

// Columns col of phase column-offset b that hold input columns: x = S * col + b - p in [0, w).
struct Columns {
  int64_t begin, end;
};
template <int64_t S>
Columns PhaseColumns(const Geometry& g, int64_t b) {
  const int64_t begin = std::max<int64_t>(0, (g.p - b + S - 1) / S);
  const int64_t end = std::min<int64_t>(g.pw, (g.w - 1 - b + g.p) / S + 1);
  return {begin, std::max(begin, end)};
}

// Zero-padded phase planes of one input plane (S: the stride, g.s).
template <int64_t S>
void Split(const float* src, const Geometry& g, float* phases) {
  std::fill(phases, phases + g.phases(), 0.0f);
  for (int64_t y = 0; y < g.h; ++y) {
    const int64_t py = y + g.p;
    const float* row = src + y * g.w - g.p;
    for (int64_t b = 0; b < S; ++b) {
      float* dst = phases + ((py % S) * S + b) * g.plane() + (py / S) * g.pw;
      const Columns cols = PhaseColumns<S>(g, b);
      for (int64_t col = cols.begin; col < cols.end; ++col) dst[col] = row[S * col + b];
    }
  }
}

// Input plane from phase planes (drops the padding).
template <int64_t S>
void Merge(const float* phases, const Geometry& g, float* dst) {
  for (int64_t y = 0; y < g.h; ++y) {
    const int64_t py = y + g.p;
    float* row = dst + y * g.w - g.p;
    for (int64_t b = 0; b < S; ++b) {
      const float* src = phases + ((py % S) * S + b) * g.plane() + (py / S) * g.pw;
      const Columns cols = PhaseColumns<S>(g, b);
      for (int64_t col = cols.begin; col < cols.end; ++col) row[S * col + b] = src[col];
    }
  }
}

// Runs body(plane_index, scratch) over all n * c planes, each thread with its own scratch buffer.
template <typename Body>
void ForPlanes(const Geometry& g, int64_t scratch_size, Body body) {
  const int64_t planes = g.n * g.c;
  const bool parallel = planes > 1 && planes * g.ho * g.wo * g.k * g.k > 32768;
  ParallelFor(planes, parallel, [&](int64_t first, int64_t last) {
    std::vector<float> scratch(scratch_size);
    for (int64_t i = first; i < last; ++i) body(i, scratch.data());
  });
}

// The passes work on a "grid" of ho rows of pw columns (the phase-plane width >= wo): grid position
// t = oh * pw + ow.  Tap (kh, kw) of output t reads phase position t + Geometry::offset(kh, kw, 0), so every
// tap is one contiguous run over the whole plane, computed CHUNK outputs at a time in registers.  Columns
// ow >= wo are scratch (computed and dropped in the forward pass, zero in the gradient grids).
constexpr int64_t CHUNK = 32;

// Four 8-float vectors make one CHUNK, kept in registers (GCC vector extension; unaligned loads and stores).
constexpr int kVectors = CHUNK / 8;
typedef float Vec __attribute__((vector_size(32), aligned(4)));
struct Chunk {
  Vec v[kVectors] = {};
  void MulAdd(float w, const float* p) {  // v += w * p[0..CHUNK), a multiply then an add (no FMA)
    const Vec* q = reinterpret_cast<const Vec*>(p);
    for (int i = 0; i < kVectors; ++i) v[i] += w * q[i];
  }
  void MulAdd(const float* a, const float* b) {  // v += a * b elementwise
    const Vec* p = reinterpret_cast<const Vec*>(a);
    const Vec* q = reinterpret_cast<const Vec*>(b);
    for (int i = 0; i < kVectors; ++i) v[i] += p[i] * q[i];
  }
  void Store(float* p) const {
    Vec* q = reinterpret_cast<Vec*>(p);
    for (int i = 0; i < kVectors; ++i) q[i] = v[i];
  }
};

int64_t RoundUp(int64_t v) { return (v + CHUNK - 1) / CHUNK * CHUNK; }
int64_t GridSize(const Geometry& g) { return RoundUp(g.ho * g.pw); }
// Phase buffer with slack for the scratch columns of the last chunk.
int64_t PhaseBufferSize(const Geometry& g) { return g.phases() + GridSize(g) + g.k * g.pw; }
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
template <int64_t S, bool kBias, typename Act>
int ForwardImpl(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  Geometry g;
  if (nparam != (kBias ? 4 : 3) || !MakeGeometry(2, ndims, shapes, dtypes, S, &g)) return 1;
  if (kBias && (ndims[2] != 1 || shapes[2][0] != g.c || std::strcmp(dtypes[2], "float32") != 0)) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  const float* bias = kBias ? static_cast<const float*>(params[2]) : nullptr;
  float* y = static_cast<float*>(params[kBias ? 3 : 2]);
  const int64_t taps = g.k * g.k, grid = GridSize(g);
  int64_t offsets[64];  // once per call: the integer divisions cost as much as a 7x7 plane's arithmetic
  for (int64_t t = 0; t < taps; ++t) offsets[t] = g.offset(t / g.k, t % g.k, 0);
  ForPlanes(g, PhaseBufferSize(g) + grid, [&](int64_t i, float* scratch) {
    float* phases = scratch;
    float* out = scratch + PhaseBufferSize(g);
    Split<S>(x + i * g.h * g.w, g, phases);
    std::fill(phases + g.phases(), phases + PhaseBufferSize(g), 0.0f);
    const float* wc = w + (i % g.c) * taps;
    const float b = kBias ? bias[i % g.c] : 0.0f;
    for (int64_t t0 = 0; t0 < grid; t0 += CHUNK) {
      Chunk acc;
      for (int64_t t = 0; t < taps; ++t) acc.MulAdd(wc[t], phases + offsets[t] + t0);  // row-major tap order
      if (kBias) {
        for (int v = 0; v < kVectors; ++v) acc.v[v] = Act::Apply(acc.v[v] + b);
      }
      acc.Store(out + t0);
    }
    for (int64_t oh = 0; oh < g.ho; ++oh) {
      std::copy(out + oh * g.pw, out + oh * g.pw + g.wo, y + (i * g.ho + oh) * g.wo);
    }
  });
  return 0;
}

template <int64_t S>
int Forward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  return ForwardImpl<S, false, Identity>(nparam, params, ndims, shapes, dtypes);
}

template <int64_t S, typename Act>
int ForwardBiasAct(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  return ForwardImpl<S, true, Act>(nparam, params, ndims, shapes, dtypes);
}

template <int64_t S>
int InputGrad(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  Geometry g;
  if (nparam != 4 || !MakeGeometry(nparam, ndims, shapes, dtypes, S, &g)) return 1;
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

template <int64_t S>
int WeightGrad(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  Geometry g;
  if (nparam != 4 || !MakeGeometry(nparam, ndims, shapes, dtypes, S, &g)) return 1;
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
    for (int64_t t = 0; t < taps; ++t) offsets[t] = g.offset(t / g.k, t % g.k, 0);
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

AOT_EXPORT(DepthwiseForwardS1, Forward<1>)
AOT_EXPORT(DepthwiseForwardS2, Forward<2>)
AOT_EXPORT(DepthwiseInputGradS1, InputGrad<1>)
AOT_EXPORT(DepthwiseInputGradS2, InputGrad<2>)
AOT_EXPORT(DepthwiseWeightGradS1, WeightGrad<1>)
AOT_EXPORT(DepthwiseWeightGradS2, WeightGrad<2>)

// DepthwiseForward{Identity,ReLU,ReLU6,HSwish}S{1,2}(x, w, bias) -> act(conv(x, w) + bias[c])  (inference)
AOT_EXPORT(DepthwiseForwardIdentityS1, ForwardBiasAct<1, Identity>)
AOT_EXPORT(DepthwiseForwardIdentityS2, ForwardBiasAct<2, Identity>)
AOT_EXPORT(DepthwiseForwardReLUS1, ForwardBiasAct<1, ReLU>)
AOT_EXPORT(DepthwiseForwardReLUS2, ForwardBiasAct<2, ReLU>)
AOT_EXPORT(DepthwiseForwardReLU6S1, ForwardBiasAct<1, ReLU6>)
AOT_EXPORT(DepthwiseForwardReLU6S2, ForwardBiasAct<2, ReLU6>)
AOT_EXPORT(DepthwiseForwardHSwishS1, ForwardBiasAct<1, HSwish>)
AOT_EXPORT(DepthwiseForwardHSwishS2, ForwardBiasAct<2, HSwish>)
