// Squeeze-and-excite pieces for MindSpore AOT custom ops on CPU, NCHW float32:
//   GlobalMean(x) -> y (N, C, 1, 1), the mean of each plane (summed in fixed order: deterministic)
//   GlobalMeanGrad(x, dy) -> dx = dy[n, c] / (H * W)      (x gives only the shape)
//   HSigmoidGate(x, g) -> y = x * hsigmoid(g[n, c])       (g: N, C, 1, 1; hsigmoid(z) = relu6(z + 3) / 6)
//   HSigmoidGateGrad(x, g, dy) -> (dx, dg),  dx = dy * hsigmoid(g),  dg = sum(dy * x) * hsigmoid'(g)
// MindSpore's average pool / mean and its broadcasting multiply cost 2-4 ms each at batch 32 (a fifth of a
// MobileNetV3-small inference batch, measured with MindSpore's profiler); these are one pass each.

#include <cstdint>

#include "kernel_util.h"

namespace {

// (N, C, plane) of a 4-D tensor.
bool Planes(int ndim, const int64_t* shape, int64_t* nc, int64_t* plane) {
  if (ndim != 4) return false;
  *nc = shape[0] * shape[1];
  *plane = shape[2] * shape[3];
  return *plane > 0;
}

// Sum of one plane: eight float lanes, then the lanes in double.
double PlaneSum(const float* p, int64_t plane) {
  V8 acc = Splat<V8>(0.0f);
  const int64_t body = plane / kV8 * kV8;
  for (int64_t j = 0; j < body; j += kV8) acc += Load(p + j);
  double s = Sum(acc);
  for (int64_t j = body; j < plane; ++j) s += p[j];
  return s;
}

int Mean(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  int64_t nc, plane;
  if (nparam != 2 || !AllFloat32(nparam, dtypes) || !Planes(ndims[0], shapes[0], &nc, &plane)) return 1;
  const float* x = static_cast<const float*>(params[0]);
  float* y = static_cast<float*>(params[1]);
  ParallelFor(nc, nc * plane > 65536, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) y[i] = static_cast<float>(PlaneSum(x + i * plane, plane) / plane);
  });
  return 0;
}

int MeanGrad(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  int64_t nc, plane;
  if (nparam != 3 || !AllFloat32(nparam, dtypes) || !Planes(ndims[0], shapes[0], &nc, &plane)) return 1;
  const float* dy = static_cast<const float*>(params[1]);
  float* dx = static_cast<float*>(params[2]);
  ParallelFor(nc, nc * plane > 65536, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {
      const float v = dy[i] / static_cast<float>(plane);
      for (int64_t j = 0; j < plane; ++j) dx[i * plane + j] = v;
    }
  });
  return 0;
}

float HSigmoid(float z) { return ReLU6::Apply(z + 3.0f) / 6.0f; }

// Whether the op has `nparam` float32 tensors, x (N, C, H, W) first and g (N, C, 1, 1) second; sets nc, plane.
bool GateShapes(int nparam, int expected, int* ndims, int64_t** shapes, const char** dtypes, int64_t* nc,
                int64_t* plane) {
  int64_t gates, one;
  return nparam == expected && AllFloat32(nparam, dtypes) && Planes(ndims[0], shapes[0], nc, plane) &&
         Planes(ndims[1], shapes[1], &gates, &one) && gates == *nc && one == 1;
}

int Gate(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  int64_t nc, plane;
  if (!GateShapes(nparam, 3, ndims, shapes, dtypes, &nc, &plane)) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* g = static_cast<const float*>(params[1]);
  float* y = static_cast<float*>(params[2]);
  ParallelFor(nc, nc * plane > 65536, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {
      const float s = HSigmoid(g[i]);
      const float* src = x + i * plane;
      float* dst = y + i * plane;
      const int64_t body = plane / kV8 * kV8;
      for (int64_t j = 0; j < body; j += kV8) Store(dst + j, Load(src + j) * s);
      for (int64_t j = body; j < plane; ++j) dst[j] = src[j] * s;
    }
  });
  return 0;
}

int GateGrad(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  int64_t nc, plane;
  if (!GateShapes(nparam, 5, ndims, shapes, dtypes, &nc, &plane)) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* g = static_cast<const float*>(params[1]);
  const float* dy = static_cast<const float*>(params[2]);
  float* dx = static_cast<float*>(params[3]);
  float* dg = static_cast<float*>(params[4]);
  ParallelFor(nc, nc * plane > 65536, [&](int64_t first, int64_t last) {
    for (int64_t i = first; i < last; ++i) {
      const float s = HSigmoid(g[i]);
      const float* xi = x + i * plane;
      const float* dyi = dy + i * plane;
      float* dxi = dx + i * plane;
      V8 acc = Splat<V8>(0.0f);
      const int64_t body = plane / kV8 * kV8;
      for (int64_t j = 0; j < body; j += kV8) {
        const V8 d = Load(dyi + j);
        acc += d * Load(xi + j);
        Store(dxi + j, d * s);
      }
      double sum = Sum(acc);
      for (int64_t j = body; j < plane; ++j) {
        sum += dyi[j] * xi[j];
        dxi[j] = dyi[j] * s;
      }
      const bool inside = g[i] > -3.0f && g[i] < 3.0f;
      dg[i] = inside ? static_cast<float>(sum / 6.0) : 0.0f;
    }
  });
  return 0;
}

}  // namespace

AOT_EXPORT(GlobalMean, Mean)
AOT_EXPORT(GlobalMeanGrad, MeanGrad)
AOT_EXPORT(HSigmoidGate, Gate)
AOT_EXPORT(HSigmoidGateGrad, GateGrad)
