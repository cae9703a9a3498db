// Shared by the C++ CPU kernels: denormal flushing, an 8-float vector type and the activations.
#pragma once

#include <cmath>
#include <cstring>

#if defined(__SSE__)
#include <xmmintrin.h>
#endif
#if defined(__FMA__)
#include <immintrin.h>
#endif

#include <omp.h>

#include <cstdint>

// Exports `name` with the signature of a MindSpore AOT custom op, calling the kernel function given after it
// (a template instantiation may contain commas): AOT_EXPORT(DepthwiseForwardS1, Forward<1>).
#define AOT_EXPORT(name, ...)                                                                             \
  extern "C" int name(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes, void*, \
                      void*) {                                                                            \
    return __VA_ARGS__(nparam, params, ndims, shapes, dtypes);                                            \
  }

// Whether the first n tensors are float32.
inline bool AllFloat32(int n, const char** dtypes) {
  for (int i = 0; i < n; ++i) {
    if (std::strcmp(dtypes[i], "float32") != 0) return false;
  }
  return true;
}

// Treats denormal floats as zero while alive (restores the thread's previous mode): tiny gradients otherwise
// made the kernels 2x slower.  ParallelFor holds one around each range.
class FlushDenormals {
 public:
#if defined(__SSE__)
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }  // FTZ | DAZ
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  unsigned int saved_;
#endif
};

// Runs body(first, last) over [0, n) split into contiguous ranges, one per OpenMP thread (as its static
// schedule), each with denormals flushed; all of it on the calling thread when `parallel` is false.
// (src/__init__.py makes OpenMP's idle threads sleep: spinning, they took the cores from MindSpore's threads.)
template <typename Body>
void ParallelFor(int64_t n, bool parallel, Body body) {
#pragma omp parallel if (parallel && n > 1)
  {
    const int64_t parts = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t first = n * t / parts, last = n * (t + 1) / parts;
    if (first < last) {
      FlushDenormals flush;
      body(first, last);
    }
  }
}

// A convolution weight w (out, inner) and the inference BatchNorm after it as one convolution with bias:
// s = gamma / sqrt(var + eps), w'[o, i] = w[o, i] * s[o], b'[o] = beta[o] - mean[o] * s[o].  (FoldBatchNorm's NCHW
// op and the blocked layout's cached inference weights compute it here, so they agree bitwise.)
inline void FoldBatchNormInto(const float* w, int64_t out, int64_t inner, const float* gamma, const float* beta,
                              const float* mean, const float* var, float eps, float* w_out, float* b_out) {
  for (int64_t o = 0; o < out; ++o) {
    const float s = gamma[o] / std::sqrt(var[o] + eps);
    for (int64_t i = 0; i < inner; ++i) w_out[o * inner + i] = w[o * inner + i] * s;
    b_out[o] = beta[o] - mean[o] * s;
  }
}

// Eight floats (GCC vector extension): explicit vector code that neither depends on the compiler proving that
// buffers do not alias (MindSpore may hand an op the same buffer as input and output) nor has data branches.
typedef float V8 __attribute__((vector_size(32)));
constexpr int kV8 = 8;
inline V8 Load(const float* p) {
  V8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void Store(float* p, V8 v) { std::memcpy(p, &v, sizeof v); }
template <typename T>
inline T Splat(float v) {
  return T{} + v;
}
// acc + w * x, as one fused multiply-add where the CPU has them (kernels that need not match the built-in
// operators' rounding bit for bit).
inline V8 MulAdd(V8 acc, float w, V8 x) {
#if defined(__FMA__)
  return _mm256_fmadd_ps(x, Splat<V8>(w), acc);
#else
  return acc + w * x;
#endif
}
inline double Sum(V8 v) {
  double s = 0.0;
  for (int i = 0; i < kV8; ++i) s += v[i];
  return s;
}

// Activations on a float or a V8: Apply(z) and its derivative Slope(z), written with selects only.
struct Identity {
  template <typename T>
  static T Apply(T z) { return z; }
  template <typename T>
  static T Slope(T) { return Splat<T>(1.0f); }
};
struct ReLU {
  template <typename T>
  static T Apply(T z) { return z > 0.0f ? z : Splat<T>(0.0f); }
  template <typename T>
  static T Slope(T z) { return z > 0.0f ? Splat<T>(1.0f) : Splat<T>(0.0f); }
};
struct ReLU6 {
  template <typename T>
  static T Apply(T z) {
    const T low = z > 0.0f ? z : Splat<T>(0.0f);
    return low < 6.0f ? low : Splat<T>(6.0f);
  }
  template <typename T>
  static T Slope(T z) { return (z > 0.0f) & (z < 6.0f) ? Splat<T>(1.0f) : Splat<T>(0.0f); }
};
struct HSwish {  // z * relu6(z + 3) / 6
  template <typename T>
  static T Apply(T z) { return z * ReLU6::Apply(z + 3.0f) * (1.0f / 6.0f); }
  template <typename T>
  static T Slope(T z) {  // 0 up to -3, (2z + 3) / 6 between, 1 from 3
    const T inner = (2.0f * z + 3.0f) * (1.0f / 6.0f);
    const T upper = z >= 3.0f ? Splat<T>(1.0f) : inner;
    return z > -3.0f ? upper : Splat<T>(0.0f);
  }
};
