// Depthwise 2-D convolution for MindSpore AOT custom ops on CPU: NCHW float32, weight (C, 1, k, k),
// symmetric zero padding k / 2, no bias.  One exported symbol per stride and pass:
//   DepthwiseForwardS{1,2}(x, w) -> y
//   DepthwiseInputGradS{1,2}(x, w, dy) -> dx   (x gives only the shape)
//   DepthwiseWeightGradS{1,2}(x, w, dy) -> dw  (w gives only the shape)
// Each (n, c) plane is padded and split into stride x stride phase planes,
// phase(a, b)[i][j] = padded[a + s * i][b + s * j], so every kernel tap reads (or writes) one contiguous
// row segment per output row: the inner loops are plain, vectorisable multiply-adds.  Forward sums the
// taps of each output in row-major tap order without fused multiply-add (built with -ffp-contract=off),
// like the built-in convolution, so its output is bitwise equal.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

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
  if (w[0] != g->c || w[1] != 1 || w[3] != g->k) return false;
  g->ho = (g->h + 2 * g->p - g->k) / s + 1;
  g->wo = (g->w + 2 * g->p - g->k) / s + 1;
  g->ph = (g->h + 2 * g->p + s - 1) / s;
  g->pw = (g->w + 2 * g->p + s - 1) / s;
  return g->ho > 0 && g->wo > 0;
}

// Zero-padded phase planes of one input plane (S: the stride, g.s).
template <int64_t S>
void Split(const float* src, const Geometry& g, float* phases) {
  std::fill(phases, phases + g.phases(), 0.0f);
  for (int64_t y = 0; y < g.h; ++y) {
    const int64_t py = y + g.p;
    for (int64_t b = 0; b < S; ++b) {
      float* dst = phases + ((py % S) * S + b) * g.plane() + (py / S) * g.pw;
      const int64_t x0 = ((b - g.p) % S + S) % S;  // first x with (x + p) % s == b
      for (int64_t x = x0; x < g.w; x += S) dst[(x + g.p) / S] = src[y * g.w + x];
    }
  }
}

// Input plane from phase planes (drops the padding).
template <int64_t S>
void Merge(const float* phases, const Geometry& g, float* dst) {
  for (int64_t y = 0; y < g.h; ++y) {
    const int64_t py = y + g.p;
    for (int64_t b = 0; b < S; ++b) {
      const float* src = phases + ((py % S) * S + b) * g.plane() + (py / S) * g.pw;
      const int64_t x0 = ((b - g.p) % S + S) % S;
      for (int64_t x = x0; x < g.w; x += S) dst[y * g.w + x] = src[(x + g.p) / S];
    }
  }
}

// Runs body(plane_index, scratch) over all n * c planes, each thread with its own scratch buffer.
template <typename Body>
void ForPlanes(const Geometry& g, int64_t scratch_size, Body body) {
  const int64_t planes = g.n * g.c;
  const bool parallel = planes > 1 && planes * g.ho * g.wo * g.k * g.k > 32768;
#pragma omp parallel if (parallel)
  {
    std::vector<float> scratch(scratch_size);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < planes; ++i) body(i, scratch.data());
  }
}

template <int64_t S>
int Forward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  Geometry g;
  if (nparam != 3 || !MakeGeometry(nparam, ndims, shapes, dtypes, S, &g)) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* w = static_cast<const float*>(params[1]);
  float* y = static_cast<float*>(params[2]);
  ForPlanes(g, g.phases(), [&](int64_t i, float* phases) {
    Split<S>(x + i * g.h * g.w, g, phases);
    const float* wc = w + (i % g.c) * g.k * g.k;
    for (int64_t oh = 0; oh < g.ho; ++oh) {
      float* out = y + (i * g.ho + oh) * g.wo;
      std::fill(out, out + g.wo, 0.0f);
      for (int64_t kh = 0; kh < g.k; ++kh) {
        for (int64_t kw = 0; kw < g.k; ++kw) {
          const float wv = wc[kh * g.k + kw];
          const float* in = phases + g.offset(kh, kw, oh);
          for (int64_t ow = 0; ow < g.wo; ++ow) out[ow] += wv * in[ow];
        }
      }
    }
  });
  return 0;
}

template <int64_t S>
int InputGrad(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  Geometry g;
  if (nparam != 4 || !MakeGeometry(nparam, ndims, shapes, dtypes, S, &g)) return 1;
  const float* w = static_cast<const float*>(params[1]);
  const float* dy = static_cast<const float*>(params[2]);
  float* dx = static_cast<float*>(params[3]);
  ForPlanes(g, g.phases(), [&](int64_t i, float* phases) {
    std::fill(phases, phases + g.phases(), 0.0f);
    const float* wc = w + (i % g.c) * g.k * g.k;
    for (int64_t oh = 0; oh < g.ho; ++oh) {
      const float* grad = dy + (i * g.ho + oh) * g.wo;
      for (int64_t kh = 0; kh < g.k; ++kh) {
        for (int64_t kw = 0; kw < g.k; ++kw) {
          const float wv = wc[kh * g.k + kw];
          float* acc = phases + g.offset(kh, kw, oh);
          for (int64_t ow = 0; ow < g.wo; ++ow) acc[ow] += wv * grad[ow];
        }
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
  const int64_t taps = g.k * g.k;
  std::vector<double> partial(g.n * g.c * taps);  // per (n, c) plane, summed over n below
  ForPlanes(g, g.phases() + taps * g.wo, [&](int64_t i, float* scratch) {
    float* phases = scratch;
    float* acc = scratch + g.phases();  // per tap and output column, summed over output rows
    Split<S>(x + i * g.h * g.w, g, phases);
    std::fill(acc, acc + taps * g.wo, 0.0f);
    for (int64_t oh = 0; oh < g.ho; ++oh) {
      const float* grad = dy + (i * g.ho + oh) * g.wo;
      for (int64_t kh = 0; kh < g.k; ++kh) {
        for (int64_t kw = 0; kw < g.k; ++kw) {
          float* a = acc + (kh * g.k + kw) * g.wo;
          const float* in = phases + g.offset(kh, kw, oh);
          for (int64_t ow = 0; ow < g.wo; ++ow) a[ow] += grad[ow] * in[ow];
        }
      }
    }
    for (int64_t t = 0; t < taps; ++t) {
      double sum = 0.0;
      for (int64_t ow = 0; ow < g.wo; ++ow) sum += acc[t * g.wo + ow];
      partial[i * taps + t] = sum;
    }
  });
  for (int64_t j = 0; j < g.c * taps; ++j) {
    double sum = 0.0;
    for (int64_t n = 0; n < g.n; ++n) sum += partial[n * g.c * taps + j];
    dw[j] = static_cast<float>(sum);
  }
  return 0;
}

}  // namespace

#define DEPTHWISE_EXPORT(name, impl, stride)                                                              \
  extern "C" int name(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, \
                      void*) {                                                                            \
    return impl<stride>(nparam, params, ndims, shapes, dtypes);                                           \
  }

DEPTHWISE_EXPORT(DepthwiseForwardS1, Forward, 1)
DEPTHWISE_EXPORT(DepthwiseForwardS2, Forward, 2)
DEPTHWISE_EXPORT(DepthwiseInputGradS1, InputGrad, 1)
DEPTHWISE_EXPORT(DepthwiseInputGradS2, InputGrad, 2)
DEPTHWISE_EXPORT(DepthwiseWeightGradS1, WeightGrad, 1)
DEPTHWISE_EXPORT(DepthwiseWeightGradS2, WeightGrad, 2)
