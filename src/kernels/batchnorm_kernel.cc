// Training-mode BatchNorm + activation for MindSpore AOT custom ops on CPU, NCHW float32, one task per channel
// (the same result for any thread count).  One exported symbol per activation and pass:
//   BNTrain{Identity,ReLU,ReLU6,HSwish}(x, gamma, beta, eps) -> (y, mean, var)
//       y = act(gamma * (x - mean) / sqrt(var + eps) + beta) with the batch mean and biased variance over
//       N, H, W (accumulated per plane in float lanes, across planes in double, shifted by the channel's
//       first value)
//   BNTrainGrad{...}(x, gamma, beta, eps, mean, var, dy) -> (dx, dgamma, dbeta)
//       the pre-activation is recomputed from x, so the forward pass keeps nothing but mean and var.

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernel_util.h"

namespace {

struct Shape {
  int64_t n, c, plane;
};

bool GetShape(int nparam, int* ndims, int64_t** shapes, const char** dtypes, Shape* s) {
  if (!AllFloat32(nparam, dtypes)) return false;
  if (ndims[0] < 2 || ndims[1] != 1 || ndims[2] != 1 || ndims[3] != 1) return false;
  s->n = shapes[0][0];
  s->c = shapes[0][1];
  s->plane = 1;
  for (int d = 2; d < ndims[0]; ++d) s->plane *= shapes[0][d];
  return shapes[1][0] == s->c && shapes[2][0] == s->c && s->n * s->plane > 0;
}

bool Parallel(const Shape& s) { return s.c > 1 && s.n * s.c * s.plane > 65536; }

template <typename Act>
int Forward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  Shape s;
  if (nparam != 7 || !GetShape(nparam, ndims, shapes, dtypes, &s)) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* gamma = static_cast<const float*>(params[1]);
  const float* beta = static_cast<const float*>(params[2]);
  const float eps = *static_cast<const float*>(params[3]);
  float* y = static_cast<float*>(params[4]);
  float* mean_out = static_cast<float*>(params[5]);
  float* var_out = static_cast<float*>(params[6]);
  const double count = static_cast<double>(s.n * s.plane);
  const int64_t body = s.plane / kV8 * kV8;
  ParallelFor(s.c, Parallel(s), [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      const float shift = x[c * s.plane];
      double sum = 0.0, sumsq = 0.0;
      for (int64_t n = 0; n < s.n; ++n) {
        const float* src = x + (n * s.c + c) * s.plane;
        V8 a = {}, b = {};
        for (int64_t j = 0; j < body; j += kV8) {
          const V8 d = Load(src + j) - shift;
          a += d;
          b += d * d;
        }
        float ta = 0.0f, tb = 0.0f;
        for (int64_t j = body; j < s.plane; ++j) {
          const float d = src[j] - shift;
          ta += d;
          tb += d * d;
        }
        sum += Sum(a) + ta;
        sumsq += Sum(b) + tb;
      }
      const double mean_shifted = sum / count;
      const double var = std::fmax(0.0, sumsq / count - mean_shifted * mean_shifted);
      const double mean = shift + mean_shifted;
      const double factor = gamma[c] / std::sqrt(var + eps);
      mean_out[c] = static_cast<float>(mean);
      var_out[c] = static_cast<float>(var);
      const float scale = static_cast<float>(factor);
      const float bias = static_cast<float>(beta[c] - mean * factor);
      for (int64_t n = 0; n < s.n; ++n) {
        const float* src = x + (n * s.c + c) * s.plane;
        float* dst = y + (n * s.c + c) * s.plane;
        for (int64_t j = 0; j < body; j += kV8) Store(dst + j, Act::Apply(Load(src + j) * scale + bias));
        for (int64_t j = body; j < s.plane; ++j) dst[j] = Act::Apply(src[j] * scale + bias);
      }
    }
  });
  return 0;
}

template <typename Act>
int Backward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  Shape s;
  if (nparam != 10 || !GetShape(nparam, ndims, shapes, dtypes, &s)) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* gamma = static_cast<const float*>(params[1]);
  const float* beta = static_cast<const float*>(params[2]);
  const float eps = *static_cast<const float*>(params[3]);
  const float* mean_in = static_cast<const float*>(params[4]);
  const float* var_in = static_cast<const float*>(params[5]);
  const float* dy = static_cast<const float*>(params[6]);
  float* dx = static_cast<float*>(params[7]);
  float* dgamma = static_cast<float*>(params[8]);
  float* dbeta = static_cast<float*>(params[9]);
  const double count = static_cast<double>(s.n * s.plane);
  const int64_t body = s.plane / kV8 * kV8;
  ParallelFor(s.c, Parallel(s), [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) {
      const double invstd = 1.0 / std::sqrt(static_cast<double>(var_in[c]) + eps);
      const float mean = mean_in[c];
      const float scale = static_cast<float>(gamma[c] * invstd);
      const float bias = static_cast<float>(beta[c] - mean * (gamma[c] * invstd));
      // g = dy * act'(z): sum g and sum g * (x - mean)
      double sum_g = 0.0, sum_gx = 0.0;
      for (int64_t n = 0; n < s.n; ++n) {
        const float* xs = x + (n * s.c + c) * s.plane;
        const float* gs = dy + (n * s.c + c) * s.plane;
        V8 a = {}, b = {};
        for (int64_t j = 0; j < body; j += kV8) {
          const V8 xv = Load(xs + j);
          const V8 g = Load(gs + j) * Act::Slope(xv * scale + bias);
          a += g;
          b += g * (xv - mean);
        }
        float ta = 0.0f, tb = 0.0f;
        for (int64_t j = body; j < s.plane; ++j) {
          const float g = gs[j] * Act::Slope(xs[j] * scale + bias);
          ta += g;
          tb += g * (xs[j] - mean);
        }
        sum_g += Sum(a) + ta;
        sum_gx += Sum(b) + tb;
      }
      dbeta[c] = static_cast<float>(sum_g);
      dgamma[c] = static_cast<float>(sum_gx * invstd);
      // dx = gamma * invstd * (g - sum_g / M - (x - mean) * invstd^2 * sum_gx / M) = scale * g + k * x + k0
      const float k = static_cast<float>(-gamma[c] * invstd * invstd * invstd * sum_gx / count);
      const float k0 = static_cast<float>(-gamma[c] * invstd * sum_g / count - k * static_cast<double>(mean));
      for (int64_t n = 0; n < s.n; ++n) {
        const float* xs = x + (n * s.c + c) * s.plane;
        const float* gs = dy + (n * s.c + c) * s.plane;
        float* out = dx + (n * s.c + c) * s.plane;
        for (int64_t j = 0; j < body; j += kV8) {
          const V8 xv = Load(xs + j);
          Store(out + j, scale * (Load(gs + j) * Act::Slope(xv * scale + bias)) + k * xv + k0);
        }
        for (int64_t j = body; j < s.plane; ++j) {
          out[j] = scale * (gs[j] * Act::Slope(xs[j] * scale + bias)) + k * xs[j] + k0;
        }
      }
    }
  });
  return 0;
}

}  // namespace

AOT_EXPORT(BNTrainIdentity, Forward<Identity>)
AOT_EXPORT(BNTrainReLU, Forward<ReLU>)
AOT_EXPORT(BNTrainReLU6, Forward<ReLU6>)
AOT_EXPORT(BNTrainHSwish, Forward<HSwish>)
AOT_EXPORT(BNTrainGradIdentity, Backward<Identity>)
AOT_EXPORT(BNTrainGradReLU, Backward<ReLU>)
AOT_EXPORT(BNTrainGradReLU6, Backward<ReLU6>)
AOT_EXPORT(BNTrainGradHSwish, Backward<HSwish>)
