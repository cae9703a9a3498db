// Kernels on the blocked layout (channels in blocks of BLOCK = 16 with AVX-512, 8 otherwise: oneDNN's nChw16c /
// nChw8c, a MindSpore tensor of shape (N, ceil(C / BLOCK), H, W, BLOCK) whose padding channels are zero).  The
// convolutions are oneDNN's, called through MindSpore's own libdnnl.so.3 (oneDNN 3.10.1, threadpool runtime: we hand
// it an OpenMP thread pool); measured per layer shape against our NCHW kernels (README, "Speed on CPU"): 0.3-0.7x
// their time for the depthwise convolutions, 0.7-0.8x for the 1x1.
// The squeeze-excite is ours (one op forward, one backward).  One exported function per op (MindSpore AOT custom op
// signature); the inference convolutions take each weight with its BatchNorm (bn = gamma, beta, mean, var, eps) and
// fold them once per version (RunInference):
//   BlockedStem{Act}{S1,S2,SameS2}(x NCHW, w, bn) -> y blocked            a dense k x k convolution (the stem)
//   BlockedDepthwise{Act}{S1,S2,SameS2}(x, w (C,1,k,k), bn) -> y           depthwise k x k
//   BlockedPointwise{Act}(x, w (O,C,1,1), bn) -> y                         1x1
//   BlockedPointwiseResidual(x, w, bn, r) -> y = conv + bias + r           1x1, linear, plus the shortcut
//   BlockedPointwiseDepthwise{Act}{S1,S2}(x, w, bn, dw, bn) -> y           1x1 then depthwise 3x3 in one primitive
//   BlockedToNCHW(x) -> y NCHW                                             the layout back (C from y's shape)
//   BlockedSqueezeExcite(x, w1 (R,C,1,1), b1, w2 (C,R,1,1), b2) -> y        a whole squeeze-excite (and its gradient)
// and the training ops (convolutions and their gradients, BatchNorm on batch statistics) further down.
// Activations Act: Identity, ReLU, ReLU6, HSwish (oneDNN post-ops: relu, clip_v2 (0, 6), hardswish (1/6, 1/2)).
// Padding: symmetric k / 2, or TensorFlow's "same" at stride 2 (half the total before, the odd one after).
#include <dlfcn.h>
#include <omp.h>

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "kernel_util.h"
#include "oneapi/dnnl/dnnl.hpp"
#include "oneapi/dnnl/dnnl_threadpool.hpp"

#ifndef BLOCK
#define BLOCK 16
#endif

namespace {

using dnnl::algorithm;
using dnnl::memory;
using Tag = memory::format_tag;
constexpr Tag kBlocked = BLOCK == 16 ? Tag::nChw16c : Tag::nChw8c;
constexpr int64_t kB = BLOCK;

// oneDNN's threads: OpenMP's (the pool our other kernels use, so OMP_WAIT_POLICY and OMP_NUM_THREADS apply).
struct OmpPool : dnnl::threadpool_interop::threadpool_iface {
  int get_num_threads() const override { return omp_get_max_threads(); }
  bool get_in_parallel() const override { return omp_in_parallel(); }
  uint64_t get_flags() const override { return 0; }  // synchronous: parallel_for returns when all fn calls have
  void parallel_for(int n, const std::function<void(int, int)>& fn) override {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; ++i) {
      FlushDenormals flush;
      fn(i, n);
    }
  }
};

// oneDNN's threads while a whole network runs as one op (BlockedNetwork): waking OpenMP's sleeping worker for each
// primitive's parallel region cost ~45 us on a 2-vCPU VM (a MobileNetV3-small batch opens ~46: 2 ms of a 30 ms batch
// at 224, 2 of 3 ms at 32 x 32); these workers wait for the next region spinning while a network runs (no MindSpore
// operator runs then to need the core), and sleep between calls.  Tasks are split as OpenMP's static schedule does.
class SpinPool : public dnnl::threadpool_interop::threadpool_iface {
 public:
  explicit SpinPool(int threads) : threads_(std::max(threads, 1)) {
    for (int t = 1; t < threads_; ++t) std::thread([this, t] { Work(t); }).detach();
  }
  int get_num_threads() const override { return threads_; }
  bool get_in_parallel() const override { return in_parallel; }
  uint64_t get_flags() const override { return 0; }
  void parallel_for(int n, const std::function<void(int, int)>& fn) override {
    Run([&](int t) {
      for (int i = static_cast<int>(int64_t{n} * t / threads_); i < int64_t{n} * (t + 1) / threads_; ++i) fn(i, n);
    });
  }
  // body(first, last) over [0, n) in contiguous ranges, one per thread (as ParallelFor).
  template <typename Body>
  void Ranges(int64_t n, Body body) {
    Run([&](int t) {
      const int64_t first = n * t / threads_, last = n * (t + 1) / threads_;
      if (first < last) body(first, last);
    });
  }
  // While a Session is alive on this thread, the workers spin and oneDNN runs on them (Runtime::stream); one
  // session at a time (networks called from two threads at once take turns).
  struct Session {
    explicit Session(SpinPool& p) : pool(p), running(p.session_) {
      std::lock_guard<std::mutex> lock(pool.mutex_);
      pool.active_ = true;
      pool.wake_.notify_all();
      current = &pool;
    }
    ~Session() {
      pool.active_ = false;
      current = nullptr;
    }
    SpinPool& pool;
    std::lock_guard<std::mutex> running;
  };
  static thread_local SpinPool* current;

 private:
  static thread_local bool in_parallel;

  void Run(const std::function<void(int)>& task) {
    if (threads_ == 1 || in_parallel) {
      for (int t = 0; t < threads_; ++t) task(t);
      return;
    }
    task_ = &task;
    pending_.store(threads_ - 1, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
    if (!active_.load(std::memory_order_relaxed)) {
      std::lock_guard<std::mutex> lock(mutex_);
      wake_.notify_all();
    }
    Execute(task, 0);
    for (int spins = 1; pending_.load(std::memory_order_acquire) != 0; ++spins) Pause(spins);
  }
  // A pause, and every 64th time a yield of the core (a worker on the same core as its master lets it run).
  static void Pause(int spins) {
    if (spins % 64 == 0) {
      std::this_thread::yield();
    } else {
      _mm_pause();
    }
  }
  void Execute(const std::function<void(int)>& task, int t) {
    FlushDenormals flush;
    in_parallel = true;
    task(t);
    in_parallel = false;
  }
  void Work(int t) {
    uint64_t seen = 0;
    for (;;) {
      for (int spins = 1; generation_.load(std::memory_order_acquire) == seen; ++spins) {
        if (active_.load(std::memory_order_relaxed)) {
          Pause(spins);
          continue;
        }
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return active_.load() || generation_.load() != seen; });
      }
      seen = generation_.load(std::memory_order_acquire);
      Execute(*task_, t);
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  const int threads_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> active_{false};
  const std::function<void(int)>* task_ = nullptr;
  std::mutex mutex_, session_;
  std::condition_variable wake_;
};

thread_local SpinPool* SpinPool::current = nullptr;
thread_local bool SpinPool::in_parallel = false;

struct Runtime {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  OmpPool pool;
  dnnl::stream omp_stream = dnnl::threadpool_interop::make_stream(engine, &pool);
  std::once_flag spin_once;
  SpinPool* spin = nullptr;  // created by the first network op, never deleted (its threads live with the process)
  std::unique_ptr<dnnl::stream> spin_stream;

  dnnl::stream& stream() { return SpinPool::current != nullptr ? *spin_stream : omp_stream; }
  SpinPool& Spin() {
    std::call_once(spin_once, [this] {
      spin = new SpinPool(omp_get_max_threads());
      spin_stream = std::make_unique<dnnl::stream>(dnnl::threadpool_interop::make_stream(engine, spin));
    });
    return *spin;
  }
};

Runtime& runtime() {
  static Runtime r;
  return r;
}

// ParallelFor (kernel_util.h) on the network's spinning workers while a network runs, else on OpenMP's.
template <typename Body>
void Parallel(int64_t n, bool parallel, Body body) {
  if (SpinPool::current != nullptr && parallel && n > 1) {
    SpinPool::current->Ranges(n, [&](int64_t first, int64_t last) { body(first, last); });
  } else {
    ParallelFor(n, parallel, body);
  }
}

enum Act { kIdentity, kReLU, kReLU6, kHSwish };

// What a convolution primitive computes: inference (bias, activation, shortcut fused), the training forward (no
// bias), the gradient of its input, of its weights.
enum Pass { kInference, kForward, kBackwardData, kBackwardWeights };

// A convolution primitive with the descriptors of its source (x or dx), destination (y or dy) and weights (w or
// dw, in the primitive's blocked format) and the reorder between those weights and the plain OIHW / GOIHW ones
// MindSpore holds (plain -> blocked, or for the weight gradient blocked -> plain); created once per geometry.  With a
// fused depthwise convolution, the same for its weights and bias (dw_...).
struct Conv {
  dnnl::primitive prim;
  memory::desc src, dst, bias, weights, plain_weights, dw_bias, dw_weights, dw_plain_weights;
  bool reorder_weights;
  dnnl::reorder weight_reorder, dw_weight_reorder;
};

// fused_dw: a 1x1 convolution (c -> o, + bias, act) whose output goes straight into a 3x3 depthwise convolution at
// stride s with padding 1 (+ bias, act) by oneDNN's fused kernel (post-op append_dw, inference only): the 1x1's
// output is never written whole (k and the sizes h, w, ho, wo are the depthwise convolution's).
struct Geometry {
  int64_t n, c, h, w, o, k, s, ho, wo;
  bool same, depthwise, nchw_src, residual;
  Act act;
  Pass pass;
  bool fused_dw = false;
};

int64_t PaddingBefore(const Geometry& g, int64_t size, int64_t out) {
  if (!g.same) return g.k / 2;
  return std::max<int64_t>((out - 1) * g.s + g.k - size, 0) / 2;
}

int64_t PaddingAfter(const Geometry& g, int64_t size, int64_t out) {
  return (out - 1) * g.s + g.k - size - PaddingBefore(g, size, out);
}

void AppendActivation(dnnl::post_ops& ops, Act act) {
  if (act == kReLU) ops.append_eltwise(algorithm::eltwise_relu, 0.f, 0.f);
  if (act == kReLU6) ops.append_eltwise(algorithm::eltwise_clip_v2, 0.f, 6.f);
  if (act == kHSwish) ops.append_eltwise(algorithm::eltwise_hardswish, 1.f / 6.f, 0.5f);
}

dnnl::reorder MakeReorder(const memory::desc& from, const memory::desc& to) {
  const auto& eng = runtime().engine;
  return dnnl::reorder(dnnl::reorder::primitive_desc(eng, from, eng, to));
}

// The 1x1 convolution with the 3x3 depthwise one fused (Geometry::fused_dw).
std::shared_ptr<Conv> MakeFusedConv(const Geometry& g) {
  const auto& eng = runtime().engine;
  memory::desc src({g.n, g.c, g.h, g.w}, memory::data_type::f32, kBlocked);
  memory::desc middle({g.n, g.o, g.h, g.w}, memory::data_type::f32, kBlocked);
  memory::desc weights({g.o, g.c, 1, 1}, memory::data_type::f32, Tag::any);
  memory::desc bias({g.o}, memory::data_type::f32, Tag::x);
  dnnl::post_ops ops;
  AppendActivation(ops, g.act);
  ops.append_dw(memory::data_type::f32, memory::data_type::f32, memory::data_type::f32, 3, g.s, 1);
  AppendActivation(ops, g.act);
  dnnl::primitive_attr attr;
  attr.set_post_ops(ops);
  dnnl::convolution_forward::primitive_desc pd(eng, dnnl::prop_kind::forward_inference,
                                               algorithm::convolution_direct, src, weights, bias, middle, {1, 1},
                                               {0, 0}, {0, 0}, attr);
  auto conv = std::make_shared<Conv>();
  conv->prim = dnnl::convolution_forward(pd);
  conv->src = pd.src_desc(), conv->dst = pd.dst_desc(), conv->weights = pd.weights_desc(), conv->bias = bias;
  if (conv->dst != memory::desc({g.n, g.o, g.ho, g.wo}, memory::data_type::f32, kBlocked)) {
    throw dnnl::error(dnnl_invalid_arguments, "the fused depthwise convolution's output is not the expected one");
  }
  conv->plain_weights = memory::desc({g.o, g.c, 1, 1}, memory::data_type::f32, Tag::oihw);
  conv->dw_plain_weights = memory::desc({g.o, 1, 1, 3, 3}, memory::data_type::f32, Tag::goihw);
  conv->dw_weights = pd.query_md(dnnl::query::exec_arg_md, DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_WEIGHTS);
  conv->dw_bias = pd.query_md(dnnl::query::exec_arg_md, DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_BIAS);
  conv->reorder_weights = true;
  conv->weight_reorder = MakeReorder(conv->plain_weights, conv->weights);
  conv->dw_weight_reorder = MakeReorder(conv->dw_plain_weights, conv->dw_weights);
  return conv;
}

std::shared_ptr<Conv> MakeConv(const Geometry& g) {
  if (g.fused_dw) return MakeFusedConv(g);
  const auto& eng = runtime().engine;
  memory::desc src({g.n, g.c, g.h, g.w}, memory::data_type::f32, g.nchw_src ? Tag::nchw : kBlocked);
  memory::desc dst({g.n, g.o, g.ho, g.wo}, memory::data_type::f32, kBlocked);
  memory::dims wdims = g.depthwise ? memory::dims{g.c, 1, 1, g.k, g.k} : memory::dims{g.o, g.c, g.k, g.k};
  memory::desc weights(wdims, memory::data_type::f32, Tag::any);
  memory::desc plain(wdims, memory::data_type::f32, g.depthwise ? Tag::goihw : Tag::oihw);
  memory::desc bias({g.o}, memory::data_type::f32, Tag::x);
  dnnl::post_ops ops;
  AppendActivation(ops, g.act);
  if (g.residual) ops.append_binary(algorithm::binary_add, dst);
  dnnl::primitive_attr attr;
  attr.set_post_ops(ops);
  const memory::dims strides{g.s, g.s}, before{PaddingBefore(g, g.h, g.ho), PaddingBefore(g, g.w, g.wo)},
      after{PaddingAfter(g, g.h, g.ho), PaddingAfter(g, g.w, g.wo)};
  auto conv = std::make_shared<Conv>();
  conv->plain_weights = plain;
  if (g.pass == kInference) {
    dnnl::convolution_forward::primitive_desc pd(eng, dnnl::prop_kind::forward_inference,
                                                 algorithm::convolution_direct, src, weights, bias, dst, strides,
                                                 before, after, attr);
    conv->prim = dnnl::convolution_forward(pd);
    conv->src = pd.src_desc(), conv->dst = pd.dst_desc(), conv->weights = pd.weights_desc();
    conv->bias = pd.bias_desc();
  } else {
    dnnl::convolution_forward::primitive_desc forward(eng, dnnl::prop_kind::forward_training,
                                                      algorithm::convolution_direct, src, weights, dst, strides,
                                                      before, after);
    if (g.pass == kForward) {
      conv->prim = dnnl::convolution_forward(forward);
      conv->src = forward.src_desc(), conv->dst = forward.dst_desc(), conv->weights = forward.weights_desc();
    } else if (g.pass == kBackwardData) {
      dnnl::convolution_backward_data::primitive_desc pd(eng, algorithm::convolution_direct, src, weights, dst,
                                                         strides, before, after, forward);
      conv->prim = dnnl::convolution_backward_data(pd);
      conv->src = pd.diff_src_desc(), conv->dst = pd.diff_dst_desc(), conv->weights = pd.weights_desc();
    } else {
      dnnl::convolution_backward_weights::primitive_desc pd(eng, algorithm::convolution_direct, src, weights, dst,
                                                            strides, before, after, forward);
      conv->prim = dnnl::convolution_backward_weights(pd);
      conv->src = pd.src_desc(), conv->dst = pd.diff_dst_desc(), conv->weights = pd.diff_weights_desc();
    }
  }
  conv->reorder_weights = conv->weights != plain;
  if (conv->reorder_weights) {
    conv->weight_reorder = g.pass == kBackwardWeights ? MakeReorder(conv->weights, plain)
                                                      : MakeReorder(plain, conv->weights);
  }
  return conv;
}

std::shared_ptr<Conv> GetConv(const Geometry& g) {
  static std::mutex mutex;
  static std::unordered_map<std::string, std::shared_ptr<Conv>> cache;
  std::ostringstream key;
  key << g.n << ',' << g.c << ',' << g.h << ',' << g.w << ',' << g.o << ',' << g.k << ',' << g.s << ',' << g.ho
      << ',' << g.wo << ',' << g.same << g.depthwise << g.nchw_src << g.residual << g.act << g.pass << g.fused_dw;
  std::lock_guard<std::mutex> lock(mutex);
  auto& entry = cache[key.str()];
  if (!entry) entry = MakeConv(g);
  return entry;
}

// kForward: y = conv(x, w), params x, w, y.  kBackwardData: dx, params x (its shape only), w, dy, dx.
// kBackwardWeights: dw, params x, w (its shape only), dy, dw.
int RunConv(const Geometry& g, void** params) {
  try {
    auto conv = GetConv(g);
    auto& rt = runtime();
    void* src_data = g.pass == kBackwardData ? params[3] : params[0];
    void* weight_data = g.pass == kBackwardWeights ? params[3] : params[1];
    memory src(conv->src, rt.engine, src_data), dst(conv->dst, rt.engine, params[2]);
    memory plain(conv->plain_weights, rt.engine, weight_data);
    std::vector<float> buffer;
    memory weights = plain;
    if (conv->reorder_weights) {
      buffer.resize(conv->weights.get_size() / sizeof(float));
      weights = memory(conv->weights, rt.engine, buffer.data());
      if (g.pass != kBackwardWeights) conv->weight_reorder.execute(rt.stream(), plain, weights);
    }
    std::unordered_map<int, memory> args;
    if (g.pass == kForward) {
      args = {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, dst}};
    } else if (g.pass == kBackwardData) {
      args = {{DNNL_ARG_DIFF_SRC, src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DIFF_DST, dst}};
    } else {
      args = {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_WEIGHTS, weights}, {DNNL_ARG_DIFF_DST, dst}};
    }
    conv->prim.execute(rt.stream(), args);
    if (g.pass == kBackwardWeights && conv->reorder_weights) conv->weight_reorder.execute(rt.stream(), weights, plain);
    rt.stream().wait();
    return 0;
  } catch (const dnnl::error& e) {
    std::fprintf(stderr, "oneDNN convolution failed: %s (status %d)\n", e.what(), static_cast<int>(e.status));
    return 1;
  }
}

// Inference: a convolution's weight and the BatchNorm after it as MindSpore holds them (params w, gamma, beta, mean,
// var, eps from `first` on), folded (FoldBatchNormInto) and reordered to the primitive's blocked weights once per
// version: the folded weights are kept with a copy of what they were computed from, and computed again when any of it
// differs bit for bit (a training step, a loaded checkpoint), so a cached result is always the one the current
// parameters give.  (Folding and reordering in every call cost ~10% of a MobileNetV3-small batch, README "Speed on
// CPU"; ONNX Runtime folds once at load.)
struct ConvBN {
  const float* part[6];  // w, gamma, beta, mean, var, eps
  int64_t out, inner;

  ConvBN(void** params, int first, const memory::desc& plain) {
    for (int i = 0; i < 6; ++i) part[i] = static_cast<const float*>(params[first + i]);
    out = plain.get_dims()[0];
    inner = static_cast<int64_t>(plain.get_size() / sizeof(float)) / out;
  }
  int64_t size(int i) const { return i == 0 ? out * inner : i == 5 ? 1 : out; }
};

struct FoldedWeights {
  std::mutex mutex;
  std::vector<float> source;  // the ConvBN parts the weights below were computed from, one after the other
  std::vector<float> weights, bias, dw_weights, dw_bias;
};

bool SameSource(const std::vector<float>& source, const std::vector<const ConvBN*>& layers) {
  size_t offset = 0;
  for (const ConvBN* l : layers) {
    for (int i = 0; i < 6; ++i) {
      const size_t n = l->size(i);
      if (offset + n > source.size() || std::memcmp(source.data() + offset, l->part[i], n * sizeof(float)) != 0) {
        return false;
      }
      offset += n;
    }
  }
  return offset == source.size();
}

void KeepSource(std::vector<float>& source, const std::vector<const ConvBN*>& layers) {
  source.clear();
  for (const ConvBN* l : layers) {
    for (int i = 0; i < 6; ++i) source.insert(source.end(), l->part[i], l->part[i] + l->size(i));
  }
}

void FoldAndReorder(const ConvBN& l, const memory::desc& plain, const memory::desc& blocked, bool reorder,
                    const dnnl::reorder& to_blocked, std::vector<float>& weights, std::vector<float>& bias) {
  auto& rt = runtime();
  std::vector<float> folded(l.out * l.inner);
  bias.assign(l.out, 0.0f);
  FoldBatchNormInto(l.part[0], l.out, l.inner, l.part[1], l.part[2], l.part[3], l.part[4], *l.part[5],
                    folded.data(), bias.data());
  if (!reorder) {
    weights = std::move(folded);
    return;
  }
  weights.assign(blocked.get_size() / sizeof(float), 0.0f);
  memory from(plain, rt.engine, folded.data()), to(blocked, rt.engine, weights.data());
  to_blocked.execute(rt.stream(), from, to);
  rt.stream().wait();
}

std::shared_ptr<FoldedWeights> GetFoldedWeights(const Conv* conv, const void* weight) {
  static std::mutex mutex;
  static std::map<std::pair<const Conv*, const void*>, std::shared_ptr<FoldedWeights>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  if (cache.size() > 4096) cache.clear();  // parameters moved many times: start again rather than grow
  auto& entry = cache[{conv, weight}];
  if (!entry) entry = std::make_shared<FoldedWeights>();
  return entry;
}

// y = act(conv(x, fold(w, bn)) + bias) (+ r): params x, w, gamma, beta, mean, var, eps, [r], y.  Fused with a
// depthwise convolution: x, w, its BatchNorm's five, the depthwise w, its BatchNorm's five, y.
int RunInference(const Geometry& g, void** params) {
  try {
    auto conv = GetConv(g);
    auto& rt = runtime();
    const ConvBN first(params, 1, conv->plain_weights);
    std::unique_ptr<ConvBN> second;
    if (g.fused_dw) second = std::make_unique<ConvBN>(params, 7, conv->dw_plain_weights);
    auto folded = GetFoldedWeights(conv.get(), params[1]);
    std::lock_guard<std::mutex> lock(folded->mutex);
    std::vector<const ConvBN*> layers{&first};
    if (second) layers.push_back(second.get());
    if (!SameSource(folded->source, layers)) {
      folded->source.clear();
      FoldAndReorder(first, conv->plain_weights, conv->weights, conv->reorder_weights, conv->weight_reorder,
                     folded->weights, folded->bias);
      if (g.fused_dw) {
        FoldAndReorder(*second, conv->dw_plain_weights, conv->dw_weights, true, conv->dw_weight_reorder,
                       folded->dw_weights, folded->dw_bias);
      }
      KeepSource(folded->source, layers);
    }
    void* dst_data = params[g.fused_dw ? 13 : g.residual ? 8 : 7];
    std::unordered_map<int, memory> args = {
        {DNNL_ARG_SRC, memory(conv->src, rt.engine, params[0])},
        {DNNL_ARG_WEIGHTS, memory(conv->weights, rt.engine, folded->weights.data())},
        {DNNL_ARG_BIAS, memory(conv->bias, rt.engine, folded->bias.data())},
        {DNNL_ARG_DST, memory(conv->dst, rt.engine, dst_data)}};
    if (g.fused_dw) {
      args.emplace(DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_WEIGHTS,
                   memory(conv->dw_weights, rt.engine, folded->dw_weights.data()));
      args.emplace(DNNL_ARG_ATTR_POST_OP_DW | DNNL_ARG_BIAS, memory(conv->dw_bias, rt.engine, folded->dw_bias.data()));
    }
    if (g.residual) {
      const int index = g.act == kIdentity ? 0 : 1;
      args.emplace(DNNL_ARG_ATTR_MULTIPLE_POST_OP(index) | DNNL_ARG_SRC_1, memory(conv->dst, rt.engine, params[7]));
    }
    conv->prim.execute(rt.stream(), args);
    rt.stream().wait();
    return 0;
  } catch (const dnnl::error& e) {
    std::fprintf(stderr, "oneDNN convolution failed: %s (status %d)\n", e.what(), static_cast<int>(e.status));
    return 1;
  }
}

bool Float32(int n, int* ndims, const char** dtypes, std::initializer_list<int> expected_ndims) {
  int i = 0;
  for (int nd : expected_ndims) {
    if (i >= n || ndims[i] != nd || std::strcmp(dtypes[i], "float32") != 0) return false;
    ++i;
  }
  return i == n;
}

// Whether params first .. first + 4 are a BatchNorm's gamma, beta, mean, var of `out` channels and one eps.
bool BatchNormShapes(int64_t** shapes, int first, int64_t out) {
  for (int i = first; i < first + 4; ++i) {
    if (shapes[i][0] != out) return false;
  }
  return shapes[first + 4][0] == 1;
}

template <Act A, int64_t S, bool kSame>
int Stem(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  if (nparam != 8 || !Float32(8, ndims, dtypes, {4, 4, 1, 1, 1, 1, 1, 5})) return 1;
  const int64_t* x = shapes[0];
  const int64_t* w = shapes[1];
  const int64_t* y = shapes[7];
  Geometry g{x[0], x[1], x[2], x[3], w[0], w[2], S, y[2], y[3], kSame, false, true, false, A, kInference};
  if (w[1] != x[1] || w[2] != w[3] || y[1] * kB < w[0] || y[4] != kB || !BatchNormShapes(shapes, 2, w[0])) return 1;
  return RunInference(g, params);
}

template <Act A, int64_t S, bool kSame>
int Depthwise(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  if (nparam != 8 || !Float32(8, ndims, dtypes, {5, 4, 1, 1, 1, 1, 1, 5})) return 1;
  const int64_t* x = shapes[0];
  const int64_t* w = shapes[1];
  const int64_t* y = shapes[7];
  Geometry g{x[0], w[0], x[2], x[3], w[0], w[2], S, y[2], y[3], kSame, true, false, false, A, kInference};
  if (w[1] != 1 || w[2] != w[3] || x[1] * kB < w[0] || x[4] != kB || !BatchNormShapes(shapes, 2, w[0])) return 1;
  return RunInference(g, params);
}

template <Act A, bool kResidual>
int Pointwise(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  const int out = kResidual ? 8 : 7;
  if (nparam != out + 1 || !(kResidual ? Float32(9, ndims, dtypes, {5, 4, 1, 1, 1, 1, 1, 5, 5})
                                       : Float32(8, ndims, dtypes, {5, 4, 1, 1, 1, 1, 1, 5}))) {
    return 1;
  }
  const int64_t* x = shapes[0];
  const int64_t* w = shapes[1];
  Geometry g{x[0], w[1], x[2], x[3], w[0], 1, 1, x[2], x[3], false, false, false, kResidual, A, kInference};
  if (w[2] != 1 || w[3] != 1 || x[1] * kB < w[1] || shapes[out][1] * kB < w[0] || !BatchNormShapes(shapes, 2, w[0])) {
    return 1;
  }
  return RunInference(g, params);
}

// A 1x1 convolution (+ BatchNorm, act) and the 3x3 depthwise convolution (+ BatchNorm, act) after it at stride S,
// padding 1, in one oneDNN primitive: params x, w (O, C, 1, 1), its BatchNorm's five, w (O, 1, 3, 3), its
// BatchNorm's five, y.
template <Act A, int64_t S>
int PointwiseDepthwise(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  if (nparam != 14 || !Float32(14, ndims, dtypes, {5, 4, 1, 1, 1, 1, 1, 4, 1, 1, 1, 1, 1, 5})) return 1;
  const int64_t* x = shapes[0];
  const int64_t* w = shapes[1];
  const int64_t* dw = shapes[7];
  const int64_t* y = shapes[13];
  Geometry g{x[0], w[1], x[2], x[3], w[0], 3, S, y[2], y[3], false, false, false, false, A, kInference, true};
  if (w[2] != 1 || w[3] != 1 || x[1] * kB < w[1] || x[4] != kB || dw[0] != w[0] || dw[1] != 1 || dw[2] != 3 ||
      dw[3] != 3 || y[1] * kB < w[0] || y[4] != kB || !BatchNormShapes(shapes, 2, w[0]) ||
      !BatchNormShapes(shapes, 8, w[0])) {
    return 1;
  }
  return RunInference(g, params);
}

// A dense layer and its activation in inference, y = act(x w^T + b): params x (N, K), w (O, K), [b (O)], y (N, O), by
// oneDNN's inner product on the plain weights.  MobileNetV3-small's 576 -> 1024 head at batch 32 (oneDNN's verbose
// log): 0.40 ms with the bias and h-swish, against 0.63 ms for MindSpore's MatMul alone, then its BiasAdd and h-swish.
template <Act A, bool kBias>
int Dense(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  const int out = kBias ? 3 : 2;
  if (nparam != out + 1 || !(kBias ? Float32(4, ndims, dtypes, {2, 2, 1, 2}) : Float32(3, ndims, dtypes, {2, 2, 2}))) {
    return 1;
  }
  const int64_t n = shapes[0][0], k = shapes[0][1], o = shapes[1][0];
  if (shapes[1][1] != k || shapes[out][0] != n || shapes[out][1] != o || (kBias && shapes[2][0] != o)) return 1;
  try {
    static std::mutex mutex;
    static std::map<std::array<int64_t, 3>, std::shared_ptr<dnnl::inner_product_forward>> cache;
    auto& rt = runtime();
    const memory::desc src({n, k}, memory::data_type::f32, Tag::nc), weights({o, k}, memory::data_type::f32, Tag::oi),
        bias({o}, memory::data_type::f32, Tag::x), dst({n, o}, memory::data_type::f32, Tag::nc);
    std::shared_ptr<dnnl::inner_product_forward> prim;
    {
      std::lock_guard<std::mutex> lock(mutex);
      auto& entry = cache[{n, k, o}];
      if (!entry) {
        dnnl::post_ops ops;
        AppendActivation(ops, A);
        dnnl::primitive_attr attr;
        attr.set_post_ops(ops);
        entry = std::make_shared<dnnl::inner_product_forward>(dnnl::inner_product_forward::primitive_desc(
            rt.engine, dnnl::prop_kind::forward_inference, src, weights, kBias ? bias : memory::desc(), dst, attr));
      }
      prim = entry;
    }
    std::unordered_map<int, memory> args = {{DNNL_ARG_SRC, memory(src, rt.engine, params[0])},
                                            {DNNL_ARG_WEIGHTS, memory(weights, rt.engine, params[1])},
                                            {DNNL_ARG_DST, memory(dst, rt.engine, params[out])}};
    if (kBias) args.emplace(DNNL_ARG_BIAS, memory(bias, rt.engine, params[2]));
    prim->execute(rt.stream(), args);
    rt.stream().wait();
    return 0;
  } catch (const dnnl::error& e) {
    std::fprintf(stderr, "oneDNN inner product failed: %s (status %d)\n", e.what(), static_cast<int>(e.status));
    return 1;
  }
}

// Copies params[0] to params[1] between the blocked and the NCHW layout of a logical (N, C, H, W) tensor.
int Reorder(const int64_t* dims, bool to_nchw, void** params) {
  try {
    auto& rt = runtime();
    memory::desc blocked({dims[0], dims[1], dims[2], dims[3]}, memory::data_type::f32, kBlocked);
    memory::desc plain({dims[0], dims[1], dims[2], dims[3]}, memory::data_type::f32, Tag::nchw);
    memory src(to_nchw ? blocked : plain, rt.engine, params[0]), dst(to_nchw ? plain : blocked, rt.engine, params[1]);
    dnnl::reorder(src, dst).execute(rt.stream(), src, dst);
    rt.stream().wait();
    return 0;
  } catch (const dnnl::error& e) {
    std::fprintf(stderr, "oneDNN reorder failed: %s\n", e.what());
    return 1;
  }
}

int ToNCHW(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  if (nparam != 2 || !Float32(2, ndims, dtypes, {5, 4})) return 1;
  return Reorder(shapes[1], true, params);
}

// The training convolutions of kind Kind (kStem: x NCHW; kDepthwise; kPointwise), pass P:
//   kForward (x, w) -> y,  kBackwardData (x, w, dy) -> dx,  kBackwardWeights (x, w, dy) -> dw.
enum Kind { kStem, kDepthwise, kPointwise };

int DepthwiseWeightGradOurs(const Geometry& g, void** params);

template <Kind K, Pass P, int64_t S, bool kSame>
int Train(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  const int x_ndim = K == kStem ? 4 : 5, out_ndim = P == kBackwardWeights ? 4 : 5;
  if (P == kForward ? (nparam != 3 || !Float32(3, ndims, dtypes, {x_ndim, 4, 5}))
                    : (nparam != 4 || !Float32(4, ndims, dtypes, {x_ndim, 4, 5, out_ndim}))) {
    return 1;
  }
  const int64_t* x = shapes[0];
  const int64_t* w = shapes[1];
  const int64_t c = K == kStem ? x[1] : K == kDepthwise ? w[0] : w[1];
  Geometry g{x[0], c, x[2], x[3], w[0], w[2], S, shapes[2][2], shapes[2][3], kSame, K == kDepthwise, K == kStem,
             false, kIdentity, P};
  if (w[2] != w[3] || (K == kDepthwise && w[1] != 1) || (K != kStem && x[1] * kB < c) || shapes[2][1] * kB < w[0]) {
    return 1;
  }
  if (K == kDepthwise && P == kBackwardWeights && g.k != 3) return DepthwiseWeightGradOurs(g, params);
  return RunConv(g, params);
}

// dw (C, 1, k, k) of a depthwise convolution from x and dy, blocked: oneDNN has no fast kernel for it beyond 3x3
// (its reference kernel took 66-240x our time at 5x5, README "Speed on CPU").  One task per channel block, sums in
// float per image and in double across images (the same result for any thread count).
int DepthwiseWeightGradOurs(const Geometry& g, void** params) {
  const float* x = static_cast<const float*>(params[0]);
  const float* dy = static_cast<const float*>(params[2]);
  float* dw = static_cast<float*>(params[3]);
  const int64_t blocks = (g.c + kB - 1) / kB, k = g.k, taps = k * k;
  const int64_t top = PaddingBefore(g, g.h, g.ho), left = PaddingBefore(g, g.w, g.wo);
  ParallelFor(blocks, blocks > 1, [&](int64_t first, int64_t last) {
    std::vector<double> total(taps * kB);
    std::vector<float> part(taps * kB);
    for (int64_t b = first; b < last; ++b) {
      std::fill(total.begin(), total.end(), 0.0);
      for (int64_t n = 0; n < g.n; ++n) {
        std::fill(part.begin(), part.end(), 0.0f);
        const float* xs = x + (n * blocks + b) * g.h * g.w * kB;
        const float* ds = dy + (n * blocks + b) * g.ho * g.wo * kB;
        for (int64_t oh = 0; oh < g.ho; ++oh) {
          for (int64_t i = 0; i < k; ++i) {
            const int64_t ih = oh * g.s + i - top;
            if (ih < 0 || ih >= g.h) continue;
            for (int64_t ow = 0; ow < g.wo; ++ow) {
              const float* d = ds + (oh * g.wo + ow) * kB;
              for (int64_t j = 0; j < k; ++j) {
                const int64_t iw = ow * g.s + j - left;
                if (iw < 0 || iw >= g.w) continue;
                const float* xv = xs + (ih * g.w + iw) * kB;
                float* acc = part.data() + (i * k + j) * kB;
                for (int l = 0; l < kB; ++l) acc[l] += d[l] * xv[l];
              }
            }
          }
        }
        for (int64_t t = 0; t < taps * kB; ++t) total[t] += part[t];
      }
      for (int l = 0; l < kB && b * kB + l < g.c; ++l) {
        for (int64_t t = 0; t < taps; ++t) dw[(b * kB + l) * taps + t] = static_cast<float>(total[t * kB + l]);
      }
    }
  });
  return 0;
}

// Training-mode BatchNorm + activation on blocked x (gamma, beta, mean and var of the C real channels):
//   BlockedBNTrain{Act}(x, gamma, beta, eps) -> (y, mean, var)
//   BlockedBNTrainGrad{Act}(x, gamma, beta, eps, mean, var, dy) -> (dx, dgamma, dbeta)
// as batchnorm_kernel.cc computes them on NCHW (sums shifted by each channel's first value; the pre-activation
// recomputed from x in the gradient), one task per (channel block, image) for the sums, combined per block in image
// order in double (the same result for any thread count); the padding channels of y and dx are zero.
struct BNShape {
  int64_t n, blocks, plane, c;
};

bool GetBNShape(int nparam, int* ndims, int64_t** shapes, const char** dtypes, BNShape* s) {
  for (int i = 0; i < nparam; ++i) {
    if (std::strcmp(dtypes[i], "float32") != 0) return false;
  }
  if (ndims[0] != 5 || shapes[0][4] != kB || ndims[1] != 1 || ndims[2] != 1 || ndims[3] != 1) return false;
  *s = {shapes[0][0], shapes[0][1], shapes[0][2] * shapes[0][3], shapes[1][0]};
  return shapes[2][0] == s->c && s->c <= s->blocks * kB && s->c > (s->blocks - 1) * kB && s->n * s->plane > 0;
}

// One block of channels as a vector (GCC vector extension: the activations of kernel_util.h apply to it).
typedef float VB __attribute__((vector_size(kB * sizeof(float))));
inline VB LoadB(const float* p) {
  VB v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void StoreB(float* p, VB v) { std::memcpy(p, &v, sizeof v); }

// Per (block, image) sums over the plane of two per-pixel vectors f(pixel offset) -> (u, v), in float over at most
// kRow pixels then in double: part[(b * n + i) * 2 * kB + lane] (u) and [... + kB + lane] (v).
template <typename F>
void PlaneSums(const BNShape& s, std::vector<double>* part, F f) {
  part->assign(s.blocks * s.n * 2 * kB, 0.0);
  ParallelFor(s.blocks * s.n, s.blocks * s.n * s.plane * kB > 65536, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      const int64_t b = t / s.n, n = t % s.n;
      const int64_t offset = (n * s.blocks + b) * s.plane * kB;
      double* out = part->data() + t * 2 * kB;
      constexpr int64_t kRow = 64;
      for (int64_t p0 = 0; p0 < s.plane; p0 += kRow) {
        VB a = {}, q = {};
        const int64_t p1 = std::min(s.plane, p0 + kRow);
        for (int64_t p = p0; p < p1; ++p) f(b, offset + p * kB, &a, &q);
        for (int l = 0; l < kB; ++l) {
          out[l] += a[l];
          out[kB + l] += q[l];
        }
      }
    }
  });
}

// f(block, pixel offset) over every (block, image) plane, in parallel.
template <typename F>
void PlaneMap(const BNShape& s, F f) {
  ParallelFor(s.blocks * s.n, s.blocks * s.n * s.plane * kB > 65536, [&](int64_t first, int64_t last) {
    for (int64_t t = first; t < last; ++t) {
      const int64_t b = t / s.n, n = t % s.n;
      const int64_t offset = (n * s.blocks + b) * s.plane * kB;
      for (int64_t p = 0; p < s.plane; ++p) f(b, offset + p * kB);
    }
  });
}

template <typename A>
int BNForward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  BNShape s;
  if (nparam != 7 || !GetBNShape(nparam, ndims, shapes, dtypes, &s)) return 1;
  const float* x = static_cast<const float*>(params[0]);
  const float* gamma = static_cast<const float*>(params[1]);
  const float* beta = static_cast<const float*>(params[2]);
  const float eps = *static_cast<const float*>(params[3]);
  float* y = static_cast<float*>(params[4]);
  float* mean_out = static_cast<float*>(params[5]);
  float* var_out = static_cast<float*>(params[6]);
  std::vector<float> shift(s.blocks * kB);
  for (int64_t i = 0; i < s.blocks * kB; ++i) shift[i] = x[(i / kB) * s.plane * kB + i % kB];
  std::vector<double> part;
  PlaneSums(s, &part, [&](int64_t b, int64_t i, VB* u, VB* v) {
    const VB d = LoadB(x + i) - LoadB(shift.data() + b * kB);
    *u += d;
    *v += d * d;
  });
  const double count = static_cast<double>(s.n * s.plane);
  std::vector<float> scale(s.blocks * kB, 0.0f), bias(s.blocks * kB, 0.0f);
  for (int64_t c = 0; c < s.c; ++c) {
    const int64_t b = c / kB, l = c % kB;
    double sum = 0.0, sumsq = 0.0;
    for (int64_t n = 0; n < s.n; ++n) {
      sum += part[(b * s.n + n) * 2 * kB + l];
      sumsq += part[(b * s.n + n) * 2 * kB + kB + l];
    }
    const double mean_shifted = sum / count;
    const double var = std::fmax(0.0, sumsq / count - mean_shifted * mean_shifted);
    const double mean = shift[c] + mean_shifted;
    const double factor = gamma[c] / std::sqrt(var + eps);
    mean_out[c] = static_cast<float>(mean);
    var_out[c] = static_cast<float>(var);
    scale[c] = static_cast<float>(factor);
    bias[c] = static_cast<float>(beta[c] - mean * factor);
  }
  PlaneMap(s, [&](int64_t b, int64_t i) {
    StoreB(y + i, A::Apply(LoadB(x + i) * LoadB(scale.data() + b * kB) + LoadB(bias.data() + b * kB)));
  });
  return 0;
}

template <typename A>
int BNBackward(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  BNShape s;
  if (nparam != 10 || !GetBNShape(nparam, ndims, shapes, dtypes, &s)) return 1;
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
  const int64_t lanes = s.blocks * kB;
  std::vector<double> invstd(lanes, 0.0);
  std::vector<float> mean(lanes, 0.0f), scale(lanes, 0.0f), bias(lanes, 0.0f);
  for (int64_t c = 0; c < s.c; ++c) {
    invstd[c] = 1.0 / std::sqrt(static_cast<double>(var_in[c]) + eps);
    mean[c] = mean_in[c];
    scale[c] = static_cast<float>(gamma[c] * invstd[c]);
    bias[c] = static_cast<float>(beta[c] - mean[c] * (gamma[c] * invstd[c]));
  }
  std::vector<double> part;
  PlaneSums(s, &part, [&](int64_t b, int64_t i, VB* u, VB* v) {
    const VB xv = LoadB(x + i);
    const VB g = LoadB(dy + i) * A::Slope(xv * LoadB(scale.data() + b * kB) + LoadB(bias.data() + b * kB));
    *u += g;
    *v += g * (xv - LoadB(mean.data() + b * kB));
  });
  const double count = static_cast<double>(s.n * s.plane);
  std::vector<float> k1(lanes, 0.0f), k0(lanes, 0.0f);
  for (int64_t c = 0; c < s.c; ++c) {
    const int64_t b = c / kB, l = c % kB;
    double sum_g = 0.0, sum_gx = 0.0;
    for (int64_t n = 0; n < s.n; ++n) {
      sum_g += part[(b * s.n + n) * 2 * kB + l];
      sum_gx += part[(b * s.n + n) * 2 * kB + kB + l];
    }
    dbeta[c] = static_cast<float>(sum_g);
    dgamma[c] = static_cast<float>(sum_gx * invstd[c]);
    k1[c] = static_cast<float>(-gamma[c] * invstd[c] * invstd[c] * invstd[c] * sum_gx / count);
    k0[c] = static_cast<float>(-gamma[c] * invstd[c] * sum_g / count - k1[c] * static_cast<double>(mean[c]));
  }
  PlaneMap(s, [&](int64_t b, int64_t i) {
    const VB xv = LoadB(x + i), sc = LoadB(scale.data() + b * kB);
    const VB g = LoadB(dy + i) * A::Slope(xv * sc + LoadB(bias.data() + b * kB));
    StoreB(dx + i, sc * g + LoadB(k1.data() + b * kB) * xv + LoadB(k0.data() + b * kB));
  });
  return 0;
}

// NCHW -> blocked (the gradient of BlockedToNCHW): x (N, C, H, W) -> y (N, ceil(C / B), H, W, B).
int FromNCHW(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  if (nparam != 2 || !Float32(2, ndims, dtypes, {4, 5})) return 1;
  return Reorder(shapes[0], false, params);
}

// sum a[k] * b[k] over k < n: four 8-lane partial sums (independent adds), then across them, then the tail.
float Dot(const float* a, const float* b, int64_t n) {
  V8 acc[4] = {};
  int64_t k = 0;
  for (; k + 4 * kV8 <= n; k += 4 * kV8) {
    for (int u = 0; u < 4; ++u) acc[u] += Load(a + k + u * kV8) * Load(b + k + u * kV8);
  }
  for (; k + kV8 <= n; k += kV8) acc[0] += Load(a + k) * Load(b + k);
  const V8 v = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  float s = 0.0f;
  for (int j = 0; j < kV8; ++j) s += v[j];
  for (; k < n; ++k) s += a[k] * b[k];
  return s;
}

float HSigmoid(float z) { return std::min(std::max(z + 3.0f, 0.0f), 6.0f) / 6.0f; }

// The small part of a squeeze-excite for one image: h = relu(w1 . m + b1), z = w2 . h + b2.
void SqueezeExciteLogits(const float* w1, const float* b1, const float* w2, const float* b2, int64_t r, int64_t c,
                         const float* mean, float* hidden, float* z) {
  for (int64_t o = 0; o < r; ++o) hidden[o] = std::max(Dot(w1 + o * c, mean, c) + b1[o], 0.0f);
  for (int64_t o = 0; o < c; ++o) z[o] = Dot(w2 + o * r, hidden, r) + b2[o];
}

// Whether the shapes are those of a squeeze-excite (x, w1 (R,C,1,1), b1, w2 (C,R,1,1), b2); sets n, blocks, plane,
// r, c.
bool SqueezeExciteShapes(int64_t** shapes, int64_t* n, int64_t* blocks, int64_t* plane, int64_t* r, int64_t* c) {
  const int64_t* x = shapes[0];
  *n = x[0], *blocks = x[1], *plane = x[2] * x[3], *r = shapes[1][0], *c = shapes[1][1];
  return x[4] == kB && *c <= *blocks * kB && *c > (*blocks - 1) * kB && shapes[1][2] * shapes[1][3] == 1 &&
         shapes[2][0] == *r && shapes[3][0] == *c && shapes[3][1] == *r && shapes[3][2] * shapes[3][3] == 1 &&
         shapes[4][0] == *c;
}

// A squeeze-excite, one image at a time: (x, w1 (R,C,1,1), b1, w2 (C,R,1,1), b2) -> y = x * relu6(z + 3) / 6 with
// the channel means m of x, h = relu(w1 . m + b1), z = w2 . h + b2.  The image's map (at most 576 x 7 x 7 or
// 16 x 56 x 56 floats in MobileNetV3, 200 KB) is read the second time from cache.  One op instead of six (mean,
// slice, two MindSpore convolutions, ReLU, gate), forward and backward: README "Speed on CPU".  Padding channels
// stay zero.
int SqueezeExcite(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  int64_t n, blocks, plane, r, c;
  if (nparam != 6 || !Float32(6, ndims, dtypes, {5, 4, 1, 4, 1, 5}) ||
      !SqueezeExciteShapes(shapes, &n, &blocks, &plane, &r, &c)) {
    return 1;
  }
  const float* in = static_cast<const float*>(params[0]);
  const float* w1 = static_cast<const float*>(params[1]);
  const float* b1 = static_cast<const float*>(params[2]);
  const float* w2 = static_cast<const float*>(params[3]);
  const float* b2 = static_cast<const float*>(params[4]);
  float* out = static_cast<float*>(params[5]);
  const float inv_plane = 1.0f / static_cast<float>(plane);
  Parallel(n, n * blocks * plane * kB > 32768, [&](int64_t first, int64_t last) {
    std::vector<float> mean(blocks * kB), hidden(r), z(c), gate(blocks * kB, 0.0f);
    for (int64_t i = first; i < last; ++i) {
      const float* p = in + i * blocks * plane * kB;
      float* q = out + i * blocks * plane * kB;
      for (int64_t b = 0; b < blocks; ++b) {
        VB sum = {};
        for (int64_t k = 0; k < plane; ++k) sum += LoadB(p + (b * plane + k) * kB);
        StoreB(mean.data() + b * kB, sum * inv_plane);
      }
      SqueezeExciteLogits(w1, b1, w2, b2, r, c, mean.data(), hidden.data(), z.data());
      for (int64_t o = 0; o < c; ++o) gate[o] = HSigmoid(z[o]);
      for (int64_t b = 0; b < blocks; ++b) {
        const VB g = LoadB(gate.data() + b * kB);
        for (int64_t k = 0; k < plane; ++k) StoreB(q + (b * plane + k) * kB, LoadB(p + (b * plane + k) * kB) * g);
      }
    }
  });
  return 0;
}

// The gradient of SqueezeExcite: (x, w1, b1, w2, b2, dy) -> (dx, dw1, db1, dw2, db2).  Per image (in parallel):
// one pass over x and dy for the channel means m and dg = sum of dy * x (in float over rows of 64 pixels, then in
// double), h and z computed again from m, dz = dg / 6 where -3 < z < 3, dh = w2^T dz where h > 0, dm = w1^T dh; a
// second pass (from cache) writes dx = dy * relu6(z + 3) / 6 + dm / (H * W).  Then the parameters' gradients, summed
// over the images in their order (the same result for any thread count).
int SqueezeExciteGrad(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  int64_t n, blocks, plane, r, c;
  if (nparam != 11 || !Float32(11, ndims, dtypes, {5, 4, 1, 4, 1, 5, 5, 4, 1, 4, 1}) ||
      !SqueezeExciteShapes(shapes, &n, &blocks, &plane, &r, &c)) {
    return 1;
  }
  const float* in = static_cast<const float*>(params[0]);
  const float* w1 = static_cast<const float*>(params[1]);
  const float* b1 = static_cast<const float*>(params[2]);
  const float* w2 = static_cast<const float*>(params[3]);
  const float* b2 = static_cast<const float*>(params[4]);
  const float* dy = static_cast<const float*>(params[5]);
  float* dx = static_cast<float*>(params[6]);
  float* dw1 = static_cast<float*>(params[7]);
  float* db1 = static_cast<float*>(params[8]);
  float* dw2 = static_cast<float*>(params[9]);
  float* db2 = static_cast<float*>(params[10]);
  std::vector<float> means(n * c), hiddens(n * r);
  const float* mean = means.data();
  const float* hidden = hiddens.data();
  std::vector<float> dz(n * c), dh(n * r);
  const float inv_plane = 1.0f / static_cast<float>(plane);
  ParallelFor(n, n * blocks * plane * kB > 32768, [&](int64_t first, int64_t last) {
    std::vector<float> gate(blocks * kB, 0.0f), dmean(blocks * kB, 0.0f), m(blocks * kB), z(c);
    std::vector<double> dg(blocks * kB);
    for (int64_t i = first; i < last; ++i) {
      const float* p = in + i * blocks * plane * kB;
      const float* d = dy + i * blocks * plane * kB;
      float* q = dx + i * blocks * plane * kB;
      float* dzi = dz.data() + i * c;
      float* dhi = dh.data() + i * r;
      float* hi = hiddens.data() + i * r;
      for (int64_t b = 0; b < blocks; ++b) {
        VB sum = {};
        double* dgb = dg.data() + b * kB;
        std::fill(dgb, dgb + kB, 0.0);
        constexpr int64_t kRow = 64;
        for (int64_t k0 = 0; k0 < plane; k0 += kRow) {
          VB acc = {};
          for (int64_t k = k0; k < std::min(plane, k0 + kRow); ++k) {
            const VB xv = LoadB(p + (b * plane + k) * kB);
            sum += xv;
            acc += LoadB(d + (b * plane + k) * kB) * xv;
          }
          for (int j = 0; j < kB; ++j) dgb[j] += acc[j];
        }
        StoreB(m.data() + b * kB, sum * inv_plane);  // as SqueezeExcite computes it
      }
      std::copy(m.begin(), m.begin() + c, means.data() + i * c);
      SqueezeExciteLogits(w1, b1, w2, b2, r, c, m.data(), hi, z.data());
      for (int64_t o = 0; o < c; ++o) {
        dzi[o] = z[o] > -3.0f && z[o] < 3.0f ? static_cast<float>(dg[o] / 6.0) : 0.0f;
        gate[o] = HSigmoid(z[o]);
      }
      std::fill(dhi, dhi + r, 0.0f);
      for (int64_t o = 0; o < c; ++o) {
        for (int64_t k = 0; k < r; ++k) dhi[k] += dzi[o] * w2[o * r + k];
      }
      for (int64_t k = 0; k < r; ++k) {
        if (!(hi[k] > 0.0f)) dhi[k] = 0.0f;
      }
      std::fill(dmean.begin(), dmean.end(), 0.0f);
      for (int64_t o = 0; o < r; ++o) {
        for (int64_t k = 0; k < c; ++k) dmean[k] += dhi[o] * w1[o * c + k];
      }
      for (int64_t k = 0; k < c; ++k) dmean[k] *= inv_plane;
      for (int64_t b = 0; b < blocks; ++b) {
        const VB g = LoadB(gate.data() + b * kB), dm = LoadB(dmean.data() + b * kB);
        for (int64_t k = 0; k < plane; ++k) {
          StoreB(q + (b * plane + k) * kB, LoadB(d + (b * plane + k) * kB) * g + dm);
        }
      }
    }
  });
  // Row o of w2: dw2[o, k] = sum_i dz[i, o] h[i, k], db2[o] = sum_i dz[i, o]; then row o of w1: dw1[o, k] =
  // sum_i dh[i, o] m[i, k], db1[o] = sum_i dh[i, o].
  ParallelFor(c + r, (c + r) * std::max(c, r) * n > 65536, [&](int64_t first, int64_t last) {
    for (int64_t row = first; row < last; ++row) {
      const bool of_w2 = row < c;
      const int64_t o = of_w2 ? row : row - c, width = of_w2 ? r : c;
      const float* grad = of_w2 ? dz.data() : dh.data();
      const float* input = of_w2 ? hidden : mean;
      const int64_t stride = of_w2 ? c : r;
      float* dw = (of_w2 ? dw2 : dw1) + o * width;
      float bias = 0.0f;
      std::fill(dw, dw + width, 0.0f);
      for (int64_t i = 0; i < n; ++i) {
        const float g = grad[i * stride + o];
        bias += g;
        for (int64_t k = 0; k < width; ++k) dw[k] += g * input[i * width + k];
      }
      (of_w2 ? db2 : db1)[o] = bias;
    }
  });
  return 0;
}

}  // namespace

extern "C" int BlockSize() { return BLOCK; }

// oneDNN's version (major * 10000 + minor * 100 + patch), to check the library we link at load.
extern "C" int OneDNNVersion() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}

// The whole blocked inference network (`features`) as one op: its layers (each one of the inference ops above,
// called as MindSpore would call it) run in sequence inside one call, their outputs in buffers the network keeps
// between calls, and the last one reordered to NCHW.  MindSpore's runtime then launches one op per batch instead of
// one per layer (measured: README "Speed on CPU"); the result is bitwise the ops' one by one.  Python describes the
// network once (BlockedNetworkNew, BlockedNetworkAdd) and passes its id as the op's first input:
//   BlockedNetwork(id, x NCHW, the layers' inputs...) -> y NCHW
namespace {

using AotFunction = int (*)(int, void**, int*, int64_t**, const char**, void*, void*);

// A layer: `function` (an inference op of this library) on slot `in` (0: the network's input x; slots 1.. are the
// network's buffers), its parameters (the op's inputs first .. first + count - 1), the shortcut slot `residual` (or
// -1), writing slot `out`.  Its output has the shape of its input (squeeze-excite, stride 0) or that of a
// convolution at `stride` whose weight is input first + weight (out channels, kernel size).
struct Layer {
  AotFunction function;
  int in, residual, out, first, count, stride, weight;
};

struct Network {
  std::vector<Layer> layers;
  std::vector<std::vector<float>> buffers;  // by slot (buffers[0] unused: the input)
  std::mutex mutex;                         // one call at a time (the buffers)
};

std::mutex networks_mutex;
std::vector<std::unique_ptr<Network>> networks;

Network* GetNetwork(int64_t id) {
  std::lock_guard<std::mutex> lock(networks_mutex);
  return id >= 0 && id < static_cast<int64_t>(networks.size()) ? networks[id].get() : nullptr;
}

}  // namespace

extern "C" int64_t BlockedNetworkNew() {
  std::lock_guard<std::mutex> lock(networks_mutex);
  networks.push_back(std::make_unique<Network>());
  return static_cast<int64_t>(networks.size()) - 1;
}

// Adds a layer to network `id` (see Layer); -1 where `symbol` is not an inference op of this library (dlsym also
// finds the libraries it links, such as libc's functions) or the slots are invalid.
extern "C" int BlockedNetworkAdd(int64_t id, const char* symbol, int in, int residual, int out, int first, int count,
                                 int stride, int weight) {
  const std::string name(symbol);
  if (name.rfind("Blocked", 0) != 0 || name.find("Train") != std::string::npos ||
      name.find("Grad") != std::string::npos || name.rfind("BlockedNetwork", 0) == 0) {
    return -1;
  }
  Dl_info self, found;
  if (dladdr(reinterpret_cast<void*>(&BlockedNetworkNew), &self) == 0) return -1;
  void* library = dlopen(self.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
  void* function = library == nullptr ? nullptr : dlsym(library, symbol);
  if (library != nullptr) dlclose(library);
  if (function != nullptr && (dladdr(function, &found) == 0 || found.dli_fbase != self.dli_fbase)) return -1;
  Network* net = GetNetwork(id);
  if (net == nullptr || function == nullptr || out < 1 || out == in || out == residual || in < 0 || first < 2 ||
      count < 1 || weight < 0 || weight >= count) {
    return -1;
  }
  const int slots = std::max({in, residual, out}) + 1;
  if (static_cast<int>(net->buffers.size()) < slots) net->buffers.resize(slots);
  net->layers.push_back({reinterpret_cast<AotFunction>(function), in, residual, out, first, count, stride, weight});
  return 0;
}

namespace {

int NetworkInference(int nparam, void** params, int* ndims, int64_t** shapes, const char** dtypes) {
  if (nparam < 4 || ndims[0] != 1 || shapes[0][0] != 1 || std::strcmp(dtypes[0], "int64") != 0 ||
      !Float32(1, ndims + 1, dtypes + 1, {4}) || !Float32(1, ndims + nparam - 1, dtypes + nparam - 1, {4})) {
    return 1;
  }
  Network* net = GetNetwork(*static_cast<const int64_t*>(params[0]));
  if (net == nullptr || net->layers.empty()) return 1;
  std::lock_guard<std::mutex> lock(net->mutex);
  SpinPool::Session spinning(runtime().Spin());
  struct Slot {
    void* data;
    int ndim;
    int64_t shape[5];
  };
  std::vector<Slot> slots(net->buffers.size());
  slots[0] = {params[1], 4, {shapes[1][0], shapes[1][1], shapes[1][2], shapes[1][3], 0}};
  const char* f32 = "float32";
  for (const Layer& l : net->layers) {
    if (l.first + l.count > nparam - 1) return 1;
    const Slot& in = slots[l.in];
    Slot& out = slots[l.out];
    out.ndim = 5;
    std::copy(in.shape, in.shape + 4, out.shape);
    out.shape[4] = kB;
    if (l.stride > 0) {  // a convolution (odd kernel, padded k / 2 or "same": ceil(size / stride))
      const int64_t* w = shapes[l.first + l.weight];
      out.shape[1] = (w[0] + kB - 1) / kB;
      out.shape[2] = (in.shape[2] - 1) / l.stride + 1;
      out.shape[3] = (in.shape[3] - 1) / l.stride + 1;
    }
    auto& buffer = net->buffers[l.out];
    const size_t size = out.shape[0] * out.shape[1] * out.shape[2] * out.shape[3] * kB;
    if (buffer.size() < size) buffer.resize(size);
    out.data = buffer.data();
    std::vector<void*> p;
    std::vector<int> nd;
    std::vector<int64_t*> sh;
    std::vector<const char*> dt;
    auto add = [&](Slot& s) {
      p.push_back(s.data), nd.push_back(s.ndim), sh.push_back(s.shape), dt.push_back(f32);
    };
    add(slots[l.in]);
    for (int i = l.first; i < l.first + l.count; ++i) {
      p.push_back(params[i]), nd.push_back(ndims[i]), sh.push_back(shapes[i]), dt.push_back(dtypes[i]);
    }
    if (l.residual >= 0) add(slots[l.residual]);
    add(out);
    const int status = l.function(static_cast<int>(p.size()), p.data(), nd.data(), sh.data(), dt.data(), nullptr,
                                  nullptr);
    if (status != 0) return status;
  }
  const Slot& last = slots[net->layers.back().out];
  const int64_t* y = shapes[nparam - 1];
  if (y[0] != last.shape[0] || y[2] != last.shape[2] || y[3] != last.shape[3] || y[1] > last.shape[1] * kB) return 1;
  void* reorder[] = {last.data, params[nparam - 1]};
  return Reorder(y, true, reorder);
}

}  // namespace

#define BLOCKED_CONVS(ACT, A)                                                   \
  AOT_EXPORT(BlockedStem##ACT##S1, Stem<A, 1, false>)                           \
  AOT_EXPORT(BlockedStem##ACT##S2, Stem<A, 2, false>)                           \
  AOT_EXPORT(BlockedStem##ACT##SameS2, Stem<A, 2, true>)                        \
  AOT_EXPORT(BlockedDepthwise##ACT##S1, Depthwise<A, 1, false>)                 \
  AOT_EXPORT(BlockedDepthwise##ACT##S2, Depthwise<A, 2, false>)                 \
  AOT_EXPORT(BlockedDepthwise##ACT##SameS2, Depthwise<A, 2, true>)              \
  AOT_EXPORT(BlockedPointwise##ACT, Pointwise<A, false>)                        \
  AOT_EXPORT(BlockedPointwiseDepthwise##ACT##S1, PointwiseDepthwise<A, 1>)      \
  AOT_EXPORT(BlockedPointwiseDepthwise##ACT##S2, PointwiseDepthwise<A, 2>)     \
  AOT_EXPORT(BlockedDense##ACT, Dense<A, true>)                                 \
  AOT_EXPORT(BlockedDenseNoBias##ACT, Dense<A, false>)

BLOCKED_CONVS(Identity, kIdentity)
BLOCKED_CONVS(ReLU, kReLU)
BLOCKED_CONVS(ReLU6, kReLU6)
BLOCKED_CONVS(HSwish, kHSwish)
AOT_EXPORT(BlockedPointwiseResidual, Pointwise<kIdentity, true>)

#define BLOCKED_TRAIN(KIND, K, STRIDE, S, SAME)                                             \
  AOT_EXPORT(Blocked##KIND##Train##STRIDE, Train<K, kForward, S, SAME>)                     \
  AOT_EXPORT(Blocked##KIND##InputGrad##STRIDE, Train<K, kBackwardData, S, SAME>)            \
  AOT_EXPORT(Blocked##KIND##WeightGrad##STRIDE, Train<K, kBackwardWeights, S, SAME>)

BLOCKED_TRAIN(Stem, kStem, S1, 1, false)
BLOCKED_TRAIN(Stem, kStem, S2, 2, false)
BLOCKED_TRAIN(Stem, kStem, SameS2, 2, true)
BLOCKED_TRAIN(Depthwise, kDepthwise, S1, 1, false)
BLOCKED_TRAIN(Depthwise, kDepthwise, S2, 2, false)
BLOCKED_TRAIN(Depthwise, kDepthwise, SameS2, 2, true)
BLOCKED_TRAIN(Pointwise, kPointwise, , 1, false)

AOT_EXPORT(BlockedBNTrainIdentity, BNForward<Identity>)
AOT_EXPORT(BlockedBNTrainReLU, BNForward<ReLU>)
AOT_EXPORT(BlockedBNTrainReLU6, BNForward<ReLU6>)
AOT_EXPORT(BlockedBNTrainHSwish, BNForward<HSwish>)
AOT_EXPORT(BlockedBNTrainGradIdentity, BNBackward<Identity>)
AOT_EXPORT(BlockedBNTrainGradReLU, BNBackward<ReLU>)
AOT_EXPORT(BlockedBNTrainGradReLU6, BNBackward<ReLU6>)
AOT_EXPORT(BlockedBNTrainGradHSwish, BNBackward<HSwish>)
AOT_EXPORT(BlockedFromNCHW, FromNCHW)
AOT_EXPORT(BlockedToNCHW, ToNCHW)
AOT_EXPORT(BlockedSqueezeExcite, SqueezeExcite)
AOT_EXPORT(BlockedSqueezeExciteGrad, SqueezeExciteGrad)
AOT_EXPORT(BlockedNetwork, NetworkInference)
