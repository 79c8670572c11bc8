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
// to the layout the primitive prefers on each call (small next to the activations). Primitives are
// made once per shape and kept.
//
// Threads: XLA's own. A call splits its batch into as many slices as XLA's intra-op thread pool
// has threads and runs each slice through oneDNN on one thread (OpenMP team of one): the calling
// thread takes slices until none is left, and pool threads that are free take the others (the
// kernel gradient sums the slices' parts). oneDNN's own OpenMP threads would run beside XLA's,
// which execute independent operations (a layer's two gradients, the trunk and stage 1) at the
// same time: on a 2-core AMD EPYC Zen 5 that oversubscription cost more than it gained (the demo's
// step 69-77 ms with each call on its own 2-thread OpenMP team, one call at a time, 65-71 ms with
// each call on one thread, 50 ms with the batch split over XLA's threads; XLA's convolutions 66).
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

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

Key WithBatch(Key key, int64_t n) {
  std::get<0>(key) = n;
  return key;
}

struct Descs {
  memory::desc src, weights_any, weights_hwio, dst;
  memory::dims strides, pad_l, pad_r;
  int64_t src_image, dst_image;  // floats per image
};

Descs MakeDescs(const Key& k) {
  auto [n, h, w, c, o, kh, kw, pt, pb, pl, pr] = k;
  const int64_t oh = h + pt + pb - kh + 1, ow = w + pl + pr - kw + 1;
  const memory::data_type f32 = memory::data_type::f32;
  return Descs{memory::desc({n, c, h, w}, f32, Tag::nhwc),
               memory::desc({o, c, kh, kw}, f32, Tag::any),
               memory::desc({o, c, kh, kw}, f32, Tag::hwio),
               memory::desc({n, o, oh, ow}, f32, Tag::nhwc),
               {1, 1}, {pt, pl}, {pb, pr}, h * w * c, oh * ow * o};
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

// Scratch memory is passed in (`Scratchpad`), so one primitive can run on several threads at once.
const Primitives& PrimitivesFor(const Key& key) {
  static std::mutex mu;
  static std::map<Key, std::unique_ptr<Primitives>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return *it->second;
  auto p = std::make_unique<Primitives>();
  const Descs& d = p->descs = MakeDescs(key);
  const auto direct = dnnl::algorithm::convolution_direct;
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  p->forward_pd = dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, direct, d.src, d.weights_any, d.dst, d.strides,
      d.pad_l, d.pad_r, attr);
  p->forward = dnnl::convolution_forward(p->forward_pd);
  p->backward_data_pd = dnnl::convolution_backward_data::primitive_desc(
      Engine(), direct, d.src, d.weights_any, d.dst, d.strides, d.pad_l, d.pad_r, p->forward_pd,
      attr);
  p->backward_data = dnnl::convolution_backward_data(p->backward_data_pd);
  p->backward_weights_pd = dnnl::convolution_backward_weights::primitive_desc(
      Engine(), direct, d.src, d.weights_any, d.dst, d.strides, d.pad_l, d.pad_r, p->forward_pd,
      attr);
  p->backward_weights = dnnl::convolution_backward_weights(p->backward_weights_pd);
  return *cache.emplace(key, std::move(p)).first->second;
}

// This thread's scratch memory for one primitive call.
memory Scratchpad(const memory::desc& desc) {
  thread_local std::vector<uint8_t> buffer;
  if (buffer.size() < desc.get_size()) buffer.resize(desc.get_size());
  return memory(desc, Engine(), buffer.data());
}

Key KeyOf(ffi::Span<const int64_t> x, ffi::Span<const int64_t> kernel, int64_t pt, int64_t pb,
          int64_t pl, int64_t pr) {
  return Key{x[0], x[1], x[2], x[3], kernel[3], kernel[0], kernel[1], pt, pb, pl, pr};
}

// `user` in the layout `wanted`: itself if it already is, else a reordered copy.
memory InLayout(memory user, const memory::desc& wanted) {
  if (user.get_desc() == wanted) return user;
  memory out(wanted, Engine());
  dnnl::stream stream(Engine());
  dnnl::reorder(user, out).execute(stream, user, out);
  stream.wait();
  return out;
}

// The batch in `parts` contiguous slices, sizes differing by at most one image.
struct Slices {
  int64_t parts, base, extra;
  Slices(int64_t n, int64_t threads)
      : parts(std::max<int64_t>(1, std::min(n, threads))), base(n / parts), extra(n % parts) {}
  int64_t start(int64_t i) const { return i * base + std::min(i, extra); }
  int64_t size(int64_t i) const { return base + (i < extra ? 1 : 0); }
};

// Runs slice(i) for i in [0, parts) on this thread and on the pool's free threads; returns when
// all are done. The calling thread takes slices until none is left, then waits only for slices
// other threads have started, so a busy pool never blocks it (a pool task that starts late finds
// nothing to do).
template <typename Slice>
void InParallel(ffi::ThreadPool& pool, int64_t parts, const Slice& slice) {
  struct Shared {
    std::atomic<int64_t> next{0};
    int64_t done = 0;
    std::mutex mu;
    std::condition_variable all_done;
    std::exception_ptr error;
  };
  auto shared = std::make_shared<Shared>();
  auto work = [shared, parts, &slice] {
    for (int64_t i; (i = shared->next.fetch_add(1)) < parts;) {
      std::exception_ptr error;
      try {
        omp_set_num_threads(1);
        slice(i);
      } catch (...) {
        error = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(shared->mu);
      if (error && !shared->error) shared->error = error;
      if (++shared->done == parts) shared->all_done.notify_all();
    }
  };
  for (int64_t t = 1; t < std::min<int64_t>(parts, pool.num_threads()); ++t) pool.Schedule([work] { work(); });
  work();
  std::unique_lock<std::mutex> lock(shared->mu);
  shared->all_done.wait(lock, [&] { return shared->done == parts; });
  if (shared->error) std::rethrow_exception(shared->error);
}

// The primitives of each slice size (at most two), and `weights` reordered for each.
struct PerSize {
  const Primitives* primitives;
  memory weights;
};

// Runs `body` with oneDNN's errors (bad shapes, no implementation) returned to XLA as an error.
template <typename Body>
ffi::Error Guarded(const char* what, Body body) {
  try {
    omp_set_num_threads(1);
    body();
    return ffi::Error::Success();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string(what) + ": oneDNN: " + e.what());
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string(what) + ": " + e.what());
  }
}

// Runs, slice by slice of the batch, the primitive that maps images and the kernel to images: the
// forward pass (`forward`: x -> y) or the input gradient (dy -> dx).
void MapImages(ffi::ThreadPool& pool, const Key& key, float* kernel, float* in, float* out,
               bool forward) {
  const Slices slices(std::get<0>(key), pool.num_threads());
  std::map<int64_t, PerSize> per_size;
  for (int64_t i = 0; i < slices.parts; ++i) {
    if (per_size.count(slices.size(i))) continue;
    const Primitives& p = PrimitivesFor(WithBatch(key, slices.size(i)));
    memory weights(p.descs.weights_hwio, Engine(), kernel);
    const memory::desc& wanted =
        forward ? p.forward_pd.weights_desc() : p.backward_data_pd.weights_desc();
    per_size.emplace(slices.size(i), PerSize{&p, InLayout(weights, wanted)});
  }
  InParallel(pool, slices.parts, [&](int64_t i) {
    const PerSize& s = per_size.at(slices.size(i));
    const Primitives& p = *s.primitives;
    const Descs& d = p.descs;
    memory images(forward ? d.src : d.dst, Engine(),
                  in + slices.start(i) * (forward ? d.src_image : d.dst_image));
    memory result(forward ? d.dst : d.src, Engine(),
                  out + slices.start(i) * (forward ? d.dst_image : d.src_image));
    dnnl::stream stream(Engine());
    if (forward) {
      p.forward.execute(stream, {{DNNL_ARG_SRC, images}, {DNNL_ARG_WEIGHTS, s.weights},
                                 {DNNL_ARG_DST, result},
                                 {DNNL_ARG_SCRATCHPAD, Scratchpad(p.forward_pd.scratchpad_desc())}});
    } else {
      p.backward_data.execute(
          stream, {{DNNL_ARG_DIFF_DST, images}, {DNNL_ARG_WEIGHTS, s.weights},
                   {DNNL_ARG_DIFF_SRC, result},
                   {DNNL_ARG_SCRATCHPAD, Scratchpad(p.backward_data_pd.scratchpad_desc())}});
    }
    stream.wait();
  });
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                   ffi::ResultBuffer<ffi::F32> y, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return Guarded("CpmConvForward", [&] {
    MapImages(pool, KeyOf(x.dimensions(), kernel.dimensions(), pt, pb, pl, pr), kernel.typed_data(),
              x.typed_data(), y->typed_data(), /*forward=*/true);
  });
}

ffi::Error BackwardData(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                        ffi::Buffer<ffi::F32> kernel, ffi::ResultBuffer<ffi::F32> dx, int64_t pt,
                        int64_t pb, int64_t pl, int64_t pr) {
  return Guarded("CpmConvBackwardData", [&] {
    MapImages(pool, KeyOf(dx->dimensions(), kernel.dimensions(), pt, pb, pl, pr),
              kernel.typed_data(), dy.typed_data(), dx->typed_data(), /*forward=*/false);
  });
}

ffi::Error BackwardWeights(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                           ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dkernel,
                           int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return Guarded("CpmConvBackwardWeights", [&] {
    const Key key = KeyOf(x.dimensions(), dkernel->dimensions(), pt, pb, pl, pr);
    const Slices slices(std::get<0>(key), pool.num_threads());
    // Slice 0's part goes to the result, the others' to `parts`, summed into it at the end.
    const int64_t size = dkernel->element_count();
    std::vector<float> parts((slices.parts - 1) * size);
    InParallel(pool, slices.parts, [&](int64_t i) {
      const Primitives& p = PrimitivesFor(WithBatch(key, slices.size(i)));
      const Descs& d = p.descs;
      dnnl::stream stream(Engine());
      memory src(d.src, Engine(), x.typed_data() + slices.start(i) * d.src_image);
      memory diff_dst(d.dst, Engine(), dy.typed_data() + slices.start(i) * d.dst_image);
      memory part(d.weights_hwio, Engine(), i == 0 ? dkernel->typed_data() : &parts[(i - 1) * size]);
      const memory::desc& wanted = p.backward_weights_pd.diff_weights_desc();
      memory diff_weights = wanted == d.weights_hwio ? part : memory(wanted, Engine());
      p.backward_weights.execute(
          stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_WEIGHTS, diff_weights},
                   {DNNL_ARG_SCRATCHPAD, Scratchpad(p.backward_weights_pd.scratchpad_desc())}});
      if (wanted != d.weights_hwio) dnnl::reorder(diff_weights, part).execute(stream, diff_weights, part);
      stream.wait();
    });
    float* out = dkernel->typed_data();
    for (int64_t i = 1; i < slices.parts; ++i) {
      const float* part = &parts[(i - 1) * size];
      for (int64_t j = 0; j < size; ++j) out[j] += part[j];
    }
  });
}

}  // namespace

#define CPM_CONV_BINDING                                                          \
  ffi::Ffi::Bind()                                                                \
      .Ctx<ffi::ThreadPool>()                                                     \
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
