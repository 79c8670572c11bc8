// XLA FFI handlers: a stride-1 float32 convolution, NHWC input and output, HWIO kernel, explicit
// non-negative padding, and its two gradients, computed by oneDNN (cpm_jax/onednn.py builds,
// loads and calls them; cpm_jax/convolution.py decides which layers take them).
//
//   CpmConvForward(x (N, H, W, C), kernel (KH, KW, C, O)) -> y (N, H', W', O)
//   CpmConvBackwardData(dy (N, H', W', O), kernel) -> dx (N, H, W, C)
//   CpmConvBackwardWeights(x, dy) -> dkernel (KH, KW, C, O)
//   attributes pad_top, pad_bottom, pad_left, pad_right (pixels); H' = H + top + bottom - KH + 1.
//
// Activations stay NHWC (oneDNN's "nhwc" tag, as PyTorch's channels_last); the kernel is reordered
// to the layout the primitive prefers on each call (small next to the activations). Primitives are made
// once per shape and kept.
#include <omp.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Tag = dnnl::memory::format_tag;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// (N, H, W, C, O, KH, KW, pad_top, pad_bottom, pad_left, pad_right)
using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       int64_t, int64_t, int64_t>;

struct Descs {
  memory::desc src, weights_any, weights_hwio, dst;
  memory::dims strides, pad_l, pad_r;
};

Descs MakeDescs(const Key& k) {
  auto [n, h, w, c, o, kh, kw, pt, pb, pl, pr] = k;
  const memory::data_type f32 = memory::data_type::f32;
  return Descs{memory::desc({n, c, h, w}, f32, Tag::nhwc),
               memory::desc({o, c, kh, kw}, f32, Tag::any),
               memory::desc({o, c, kh, kw}, f32, Tag::hwio),
               memory::desc({n, o, h + pt + pb - kh + 1, w + pl + pr - kw + 1}, f32, Tag::nhwc),
               {1, 1}, {pt, pl}, {pb, pr}};
}

struct Primitives {
  Descs descs;
  dnnl::convolution_forward::primitive_desc forward_pd;
  dnnl::convolution_forward forward;
  dnnl::convolution_backward_data::primitive_desc backward_data_pd;
  dnnl::convolution_backward_data backward_data;
  dnnl::convolution_backward_weights::primitive_desc backward_weights_pd;
  dnnl::convolution_backward_weights backward_weights;
};

const Primitives& PrimitivesFor(const Key& key) {
  static std::mutex mu;
  static std::map<Key, std::unique_ptr<Primitives>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return *it->second;
  auto p = std::make_unique<Primitives>();
  const Descs& d = p->descs = MakeDescs(key);
  const auto direct = dnnl::algorithm::convolution_direct;
  p->forward_pd = dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, direct, d.src, d.weights_any, d.dst, d.strides,
      d.pad_l, d.pad_r);
  p->forward = dnnl::convolution_forward(p->forward_pd);
  p->backward_data_pd = dnnl::convolution_backward_data::primitive_desc(
      Engine(), direct, d.src, d.weights_any, d.dst, d.strides, d.pad_l, d.pad_r, p->forward_pd);
  p->backward_data = dnnl::convolution_backward_data(p->backward_data_pd);
  p->backward_weights_pd = dnnl::convolution_backward_weights::primitive_desc(
      Engine(), direct, d.src, d.weights_any, d.dst, d.strides, d.pad_l, d.pad_r, p->forward_pd);
  p->backward_weights = dnnl::convolution_backward_weights(p->backward_weights_pd);
  return *cache.emplace(key, std::move(p)).first->second;
}

Key KeyOf(ffi::Span<const int64_t> x, ffi::Span<const int64_t> kernel, int64_t pt, int64_t pb,
          int64_t pl, int64_t pr) {
  return Key{x[0], x[1], x[2], x[3], kernel[3], kernel[0], kernel[1], pt, pb, pl, pr};
}

// `user` in the layout `wanted`: itself if it already is, else a reordered copy.
memory InLayout(memory user, const memory::desc& wanted, dnnl::stream& stream) {
  if (user.get_desc() == wanted) return user;
  memory out(wanted, Engine());
  dnnl::reorder(user, out).execute(stream, user, out);
  return out;
}

// Calls under this many multiply-adds run on one thread, concurrently with whatever else XLA runs
// on its other threads; larger ones take every core, one such call at a time (a process-wide
// lock). XLA runs independent operations (a layer's two gradients, the trunk and stage 1) on
// several threads at once: two multi-threaded oneDNN calls at once oversubscribe the cores, and
// oneDNN's spinning barriers then crawl; and for small layers a second thread gains less than XLA's
// own concurrency does. 2-core AMD EPYC Zen 5, batch 8, the same process alternating: the demo's
// step (largest call 0.3 G multiply-adds) 69-77 ms with every call on both cores, 65-71 on one;
// the paper-width step at 128x128 (calls of 4 G and more) 2.67 s on both cores, 2.80 s on one.
constexpr double kOneThreadMacs = 1e9;

// Runs `body` with the threads above, oneDNN's errors (bad shapes, no implementation) returned to
// XLA as an error.
template <typename Body>
ffi::Error Guarded(const char* what, const Key& key, Body body) {
  static std::mutex whole_machine;
  auto [n, h, w, c, o, kh, kw, pt, pb, pl, pr] = key;
  const bool small = double(n) * h * w * c * o * kh * kw < kOneThreadMacs;
  try {
    if (small) {
      omp_set_num_threads(1);
      body();
    } else {
      std::lock_guard<std::mutex> lock(whole_machine);
      omp_set_num_threads(omp_get_num_procs());
      body();
    }
    return ffi::Error::Success();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string(what) + ": oneDNN: " + e.what());
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string(what) + ": " + e.what());
  }
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                   ffi::ResultBuffer<ffi::F32> y, int64_t pt, int64_t pb, int64_t pl,
                   int64_t pr) {
  const Key key = KeyOf(x.dimensions(), kernel.dimensions(), pt, pb, pl, pr);
  return Guarded("CpmConvForward", key, [&] {
    const Primitives& p = PrimitivesFor(key);
    dnnl::stream stream(Engine());
    memory src(p.descs.src, Engine(), x.typed_data());
    memory weights(p.descs.weights_hwio, Engine(), kernel.typed_data());
    memory dst(p.descs.dst, Engine(), y->typed_data());
    p.forward.execute(stream, {{DNNL_ARG_SRC, src},
                               {DNNL_ARG_WEIGHTS, InLayout(weights, p.forward_pd.weights_desc(), stream)},
                               {DNNL_ARG_DST, dst}});
    stream.wait();
  });
}

ffi::Error BackwardData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> kernel,
                        ffi::ResultBuffer<ffi::F32> dx, int64_t pt, int64_t pb, int64_t pl,
                        int64_t pr) {
  const Key key = KeyOf(dx->dimensions(), kernel.dimensions(), pt, pb, pl, pr);
  return Guarded("CpmConvBackwardData", key, [&] {
    const Primitives& p = PrimitivesFor(key);
    dnnl::stream stream(Engine());
    memory diff_dst(p.descs.dst, Engine(), dy.typed_data());
    memory weights(p.descs.weights_hwio, Engine(), kernel.typed_data());
    memory diff_src(p.descs.src, Engine(), dx->typed_data());
    p.backward_data.execute(
        stream, {{DNNL_ARG_DIFF_DST, diff_dst},
                 {DNNL_ARG_WEIGHTS, InLayout(weights, p.backward_data_pd.weights_desc(), stream)},
                 {DNNL_ARG_DIFF_SRC, diff_src}});
    stream.wait();
  });
}

ffi::Error BackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                           ffi::ResultBuffer<ffi::F32> dkernel, int64_t pt, int64_t pb,
                           int64_t pl, int64_t pr) {
  const Key key = KeyOf(x.dimensions(), dkernel->dimensions(), pt, pb, pl, pr);
  return Guarded("CpmConvBackwardWeights", key, [&] {
    const Primitives& p = PrimitivesFor(key);
    dnnl::stream stream(Engine());
    memory src(p.descs.src, Engine(), x.typed_data());
    memory diff_dst(p.descs.dst, Engine(), dy.typed_data());
    memory result(p.descs.weights_hwio, Engine(), dkernel->typed_data());
    const memory::desc& wanted = p.backward_weights_pd.diff_weights_desc();
    memory diff_weights = wanted == p.descs.weights_hwio ? result : memory(wanted, Engine());
    p.backward_weights.execute(stream, {{DNNL_ARG_SRC, src},
                                        {DNNL_ARG_DIFF_DST, diff_dst},
                                        {DNNL_ARG_DIFF_WEIGHTS, diff_weights}});
    if (wanted != p.descs.weights_hwio) dnnl::reorder(diff_weights, result).execute(stream, diff_weights, result);
    stream.wait();
  });
}

}  // namespace

#define CPM_CONV_BINDING                                                          \
  ffi::Ffi::Bind()                                                                \
      .Arg<ffi::Buffer<ffi::F32>>()                                               \
      .Arg<ffi::Buffer<ffi::F32>>()                                               \
      .Ret<ffi::Buffer<ffi::F32>>()                                               \
      .Attr<int64_t>("pad_top")                                                   \
      .Attr<int64_t>("pad_bottom")                                                \
      .Attr<int64_t>("pad_left")                                                  \
      .Attr<int64_t>("pad_right")

XLA_FFI_DEFINE_HANDLER_SYMBOL(CpmConvForward, Forward, CPM_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(CpmConvBackwardData, BackwardData, CPM_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(CpmConvBackwardWeights, BackwardWeights, CPM_CONV_BINDING);
