// im2col / col2im for MindSpore AOT custom ops on CPU: the dense k x k convolution (the stem) as columns for a
// 1x1 convolution.  NCHW float32, symmetric zero padding k / 2; k follows from the shapes (C * k * k columns).
//   Im2ColS{1,2}(x) -> cols        cols[n, (c * k + kh) * k + kw, oh, ow] = x[n, c, s * oh + kh - p, s * ow + kw - p]
//   Col2ImS{1,2}(x, dcols) -> dx   the sum of the columns back into the input (x gives only the shape)

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernel_util.h"

namespace {

struct Geometry {
  int64_t n, c, h, w, k, p, ho, wo;
};

template <int64_t S>
bool MakeGeometry(int* ndims, int64_t** shapes, const char** dtypes, int nparam, Geometry* g) {
  for (int i = 0; i < nparam; ++i) {
    if (ndims[i] != 4 || std::strcmp(dtypes[i], "float32") != 0) return false;
  }
  const int64_t* x = shapes[0];
  const int64_t* cols = shapes[nparam - 1];
  g->n = x[0];
  g->c = x[1];
  g->h = x[2];
  g->w = x[3];
  g->k = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(cols[1]) / g->c)));
  g->p = g->k / 2;
  g->ho = (g->h + 2 * g->p - g->k) / S + 1;
  g->wo = (g->w + 2 * g->p - g->k) / S + 1;
  return g->c * g->k * g->k == cols[1] && cols[0] == g->n && cols[2] == g->ho && cols[3] == g->wo;
}

// Output columns ow in [begin, end) read input columns inside the image for tap kw.
template <int64_t S>
void ValidColumns(const Geometry& g, int64_t kw, int64_t* begin, int64_t* end) {
  *begin = 0;
  while (*begin < g.wo && S * *begin + kw - g.p < 0) ++*begin;
  *end = g.wo;
  while (*end > *begin && S * (*end - 1) + kw - g.p >= g.w) --*end;
}

template <int64_t S>
int Im2Col(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  Geometry g;
  if (nparam != 2 || !MakeGeometry<S>(ndims, shapes, dtypes, nparam, &g)) return 1;
  const float* x = static_cast<const float*>(params[0]);
  float* cols = static_cast<float*>(params[1]);
  const int64_t taps = g.k * g.k, planes = g.n * g.c * taps;
  ParallelFor(planes, planes * g.ho * g.wo > 65536, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {
      const int64_t t = i % taps, kh = t / g.k, kw = t % g.k;
      const float* src = x + (i / taps) * g.h * g.w;
      float* dst = cols + i * g.ho * g.wo;
      int64_t begin, end;
      ValidColumns<S>(g, kw, &begin, &end);
      for (int64_t oh = 0; oh < g.ho; ++oh) {
        float* row = dst + oh * g.wo;
        const int64_t iy = S * oh + kh - g.p;
        if (iy < 0 || iy >= g.h) {
          std::memset(row, 0, g.wo * sizeof(float));
          continue;
        }
        const float* in = src + iy * g.w + kw - g.p;
        for (int64_t ow = 0; ow < begin; ++ow) row[ow] = 0.0f;
        for (int64_t ow = begin; ow < end; ++ow) row[ow] = in[S * ow];
        for (int64_t ow = end; ow < g.wo; ++ow) row[ow] = 0.0f;
      }
    }
  });
  return 0;
}

template <int64_t S>
int Col2Im(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  Geometry g;
  if (nparam != 3 || !MakeGeometry<S>(ndims, shapes, dtypes, 2, &g)) return 1;
  const float* cols = static_cast<const float*>(params[1]);
  float* dx = static_cast<float*>(params[2]);
  const int64_t taps = g.k * g.k, planes = g.n * g.c;
  ParallelFor(planes, planes * taps * g.ho * g.wo > 65536, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {  // one input plane per task: the same sums for any thread count
      float* dst = dx + i * g.h * g.w;
      std::memset(dst, 0, g.h * g.w * sizeof(float));
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t kh = t / g.k, kw = t % g.k;
        const float* src = cols + (i * taps + t) * g.ho * g.wo;
        int64_t begin, end;
        ValidColumns<S>(g, kw, &begin, &end);
        for (int64_t oh = 0; oh < g.ho; ++oh) {
          const int64_t iy = S * oh + kh - g.p;
          if (iy < 0 || iy >= g.h) continue;
          float* out = dst + iy * g.w + kw - g.p;
          const float* row = src + oh * g.wo;
          for (int64_t ow = begin; ow < end; ++ow) out[S * ow] += row[ow];
        }
      }
    }
  });
  return 0;
}

}  // namespace

AOT_EXPORT(Im2ColS1, Im2Col<1>)
AOT_EXPORT(Im2ColS2, Im2Col<2>)
AOT_EXPORT(Col2ImS1, Col2Im<1>)
AOT_EXPORT(Col2ImS2, Col2Im<2>)
