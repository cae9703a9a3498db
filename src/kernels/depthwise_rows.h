// The depthwise convolution's geometry and forward arithmetic, shared by depthwise_kernel.cc and the depthwise +
// pointwise op of pointwise_kernel.cc: NCHW float32, weight (C, 1, k, k) of odd k, zero padding k / 2 (symmetric) or
// TensorFlow's "same" (at stride 2 on an even size one row / column less before, k / 2 after), no bias.
// A plane (or a strip of its output rows) is padded and split into stride x stride phase planes,
// phase(a, b)[i][j] = padded[a + s * i][b + s * j], so every kernel tap reads one contiguous run (see CHUNK below):
// the inner loops are multiply-adds on 32 floats held in registers, summing the taps of each output in row-major
// tap order without fused multiply-add (the library is built with -ffp-contract=off), like the built-in
// convolution, so the output is bitwise equal to it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernel_util.h"

struct Geometry {
  int64_t n, c, h, w;  // input
  int64_t k, s, p;     // kernel size, stride, padding after the input (k / 2)
  int64_t pt, pl;      // padding before the input: rows (top), columns (left)
  int64_t ho, wo;      // output
  int64_t ph, pw;      // phase plane of the whole input plane
  int64_t plane() const { return ph * pw; }
  int64_t phases() const { return s * s * plane(); }
  // Phase rows that output rows [r, r + rows) read.
  int64_t phase_rows(int64_t rows) const { return rows + (k - 1) / s; }
};

// TensorFlow's "same" padding before a dimension of `size` (odd kernel k, stride s): half the total padding that
// makes ceil(size / s) outputs, the odd one after.  k / 2 at stride 1 or on an odd size at stride 2.
inline int64_t SamePaddingBefore(int64_t size, int64_t k, int64_t s) {
  return std::max<int64_t>(((size + s - 1) / s - 1) * s + k - size, 0) / 2;
}

// Geometry of x (shapes[0]) and a depthwise weight (shapes[1]) at stride s, padded "same" or symmetrically (the same
// output size for odd k); checks the first nparam tensors are 4-D float32.
inline bool MakeGeometry(int nparam, int* ndims, int64_t** shapes, const char** dtypes, int64_t s, bool same,
                         Geometry* g) {
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
  g->pt = same ? SamePaddingBefore(g->h, g->k, s) : g->p;
  g->pl = same ? SamePaddingBefore(g->w, g->k, s) : g->p;
  if (w[0] != g->c || w[1] != 1 || w[3] != g->k || g->k > 8) return false;
  g->ho = (g->h + 2 * g->p - g->k) / s + 1;
  g->wo = (g->w + 2 * g->p - g->k) / s + 1;
  g->ph = (g->h + 2 * g->p + s - 1) / s;
  g->pw = (g->w + 2 * g->p + s - 1) / s;
  return g->ho > 0 && g->wo > 0;
}

// Columns col of phase column-offset b that hold input columns: x = S * col + b - pl in [0, w).
struct Columns {
  int64_t begin, end;
};
template <int64_t S>
Columns PhaseColumns(const Geometry& g, int64_t b) {
  const int64_t begin = std::max<int64_t>(0, (g.pl - b + S - 1) / S);
  const int64_t end = std::min<int64_t>(g.pw, (g.w - 1 - b + g.pl) / S + 1);
  return {begin, std::max(begin, end)};
}

// Zero-padded phase planes of `phase_rows` rows each, from padded row S * row0 of one input plane: what output rows
// [row0, row0 + rows) read when phase_rows = g.phase_rows(rows); the whole plane for row0 0 and phase_rows g.ph.
template <int64_t S>
void SplitRows(const float* src, const Geometry& g, int64_t row0, int64_t phase_rows, float* phases) {
  const int64_t plane = phase_rows * g.pw;
  std::fill(phases, phases + S * S * plane, 0.0f);
  for (int64_t i = 0; i < phase_rows; ++i) {
    for (int64_t a = 0; a < S; ++a) {
      const int64_t y = S * (row0 + i) + a - g.pt;  // input row of padded row S * (row0 + i) + a
      if (y < 0 || y >= g.h) continue;
      const float* row = src + y * g.w - g.pl;
      for (int64_t b = 0; b < S; ++b) {
        float* dst = phases + (a * S + b) * plane + i * g.pw;
        const Columns cols = PhaseColumns<S>(g, b);
        for (int64_t col = cols.begin; col < cols.end; ++col) dst[col] = row[S * col + b];
      }
    }
  }
}

// Zero-padded phase planes of one whole input plane (S: the stride, g.s).
template <int64_t S>
void Split(const float* src, const Geometry& g, float* phases) {
  SplitRows<S>(src, g, 0, g.ph, phases);
}

// Input plane from phase planes (drops the padding).
template <int64_t S>
void Merge(const float* phases, const Geometry& g, float* dst) {
  for (int64_t y = 0; y < g.h; ++y) {
    const int64_t py = y + g.pt;
    float* row = dst + y * g.w - g.pl;
    for (int64_t b = 0; b < S; ++b) {
      const float* src = phases + ((py % S) * S + b) * g.plane() + (py / S) * g.pw;
      const Columns cols = PhaseColumns<S>(g, b);
      for (int64_t col = cols.begin; col < cols.end; ++col) row[S * col + b] = src[col];
    }
  }
}

// The passes work on a "grid" of ho rows of pw columns (the phase-plane width >= wo): grid position
// t = oh * pw + ow.  Tap (kh, kw) of output t reads phase position t + its offset (TapOffsets), so every
// tap is one contiguous run over the whole plane, computed CHUNK outputs at a time in registers.  Columns
// ow >= wo are scratch (computed and dropped in the forward pass, zero in the gradient grids).
constexpr int64_t CHUNK = 32;

// Four 8-float vectors make one CHUNK, kept in registers (GCC vector extension; unaligned loads and stores).
constexpr int kVectors = CHUNK / 8;
typedef float Vec8u __attribute__((vector_size(32), aligned(4)));
struct Chunk {
  Vec8u v[kVectors] = {};
  void MulAdd(float w, const float* p) {  // v += w * p[0..CHUNK), a multiply then an add (no FMA)
    const Vec8u* q = reinterpret_cast<const Vec8u*>(p);
    for (int i = 0; i < kVectors; ++i) v[i] += w * q[i];
  }
  void MulAdd(const float* a, const float* b) {  // v += a * b elementwise
    const Vec8u* p = reinterpret_cast<const Vec8u*>(a);
    const Vec8u* q = reinterpret_cast<const Vec8u*>(b);
    for (int i = 0; i < kVectors; ++i) v[i] += p[i] * q[i];
  }
  void Store(float* p) const {
    Vec8u* q = reinterpret_cast<Vec8u*>(p);
    for (int i = 0; i < kVectors; ++i) q[i] = v[i];
  }
};

inline int64_t RoundUp(int64_t v) { return (v + CHUNK - 1) / CHUNK * CHUNK; }
inline int64_t GridSize(const Geometry& g) { return RoundUp(g.ho * g.pw); }
// Phase buffer of phase planes of `phase_rows` rows, with zero slack for the scratch columns of the last chunk.
inline int64_t PhaseBufferSize(const Geometry& g, int64_t phase_rows) {
  return g.s * g.s * phase_rows * g.pw + RoundUp(phase_rows * g.pw) + g.k * g.pw;
}
inline int64_t PhaseBufferSize(const Geometry& g) { return PhaseBufferSize(g, g.ph); }

// Offsets of the k * k taps (row-major) into phase planes of `phase_rows` rows: tap (kh, kw) reads phase
// (kh % s, kw % s) from row kh / s, column kw / s on.  Computed once per call: the integer divisions cost as much
// as a 7x7 plane's arithmetic.
inline void TapOffsets(const Geometry& g, int64_t phase_rows, int64_t* offsets) {
  const int64_t plane = phase_rows * g.pw;
  for (int64_t t = 0; t < g.k * g.k; ++t) {
    const int64_t kh = t / g.k, kw = t % g.k;
    offsets[t] = ((kh % g.s) * g.s + kw % g.s) * plane + (kh / g.s) * g.pw + kw / g.s;
  }
}

// `rows` output rows of one channel (weights wc) on the grid (RoundUp(rows * g.pw) positions from out) from its
// phase planes (SplitRows with g.phase_rows(rows) or more rows, then zero slack; `offsets` from TapOffsets for
// that many rows): act(conv + bias) with kBias, else conv.
template <bool kBias, typename Act>
void ConvolveRows(const float* phases, const Geometry& g, const int64_t* offsets, const float* wc, float bias,
                  int64_t rows, float* out) {
  const int64_t taps = g.k * g.k, grid = RoundUp(rows * g.pw);
  for (int64_t t0 = 0; t0 < grid; t0 += CHUNK) {
    Chunk acc;
    for (int64_t t = 0; t < taps; ++t) acc.MulAdd(wc[t], phases + offsets[t] + t0);  // row-major tap order
    if (kBias) {
      for (int v = 0; v < kVectors; ++v) acc.v[v] = Act::Apply(acc.v[v] + bias);
    }
    acc.Store(out + t0);
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

// Scratch floats of ForwardPlane.
inline int64_t ForwardScratchSize(const Geometry& g) { return PhaseBufferSize(g) + GridSize(g); }

// The depthwise forward pass of one input plane (weights wc, `offsets` from TapOffsets(g, g.ph, ..)) into its ho x wo
// output plane dst: act(conv + bias) with kBias, else conv.
template <int64_t S, bool kBias, typename Act>
void ForwardPlane(const float* src, const Geometry& g, const int64_t* offsets, const float* wc, float bias,
                  float* scratch, float* dst) {
  float* phases = scratch;
  float* out = scratch + PhaseBufferSize(g);
  Split<S>(src, g, phases);
  std::fill(phases + g.phases(), phases + PhaseBufferSize(g), 0.0f);
  ConvolveRows<kBias, Act>(phases, g, offsets, wc, bias, g.ho, out);
  for (int64_t oh = 0; oh < g.ho; ++oh) std::copy(out + oh * g.pw, out + oh * g.pw + g.wo, dst + oh * g.wo);
}
