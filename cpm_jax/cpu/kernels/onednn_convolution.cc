// XLA FFI handlers: a stride-1 float32 convolution, NHWC input and output, HWIO kernel, explicit
// non-negative padding, and its two gradients, computed by oneDNN (cpm_jax/cpu/onednn.py builds,
// loads and calls them; cpm_jax/cpu/convolution.py decides which layers take them).
//
//   CpmConvForward(x (N, H, W, C), kernel (KH, KW, C, O)) -> y (N, H', W', O)
//   CpmConvBackwardData(dy (N, H', W', O), kernel) -> dx (N, H, W, C)
//   CpmConvBackwardWeights(x, dy) -> dkernel (KH, KW, C, O)
//   attributes pad_top, pad_bottom, pad_left, pad_right (pixels); H' = H + top + bottom - KH + 1.
//
// Activations stay NHWC (oneDNN's "nhwc" tag, as PyTorch's channels_last); the kernel is reordered
// to the layout the primitive prefers on each call (small next to the activations). Primitives are
// made once per shape and direction and kept.
//
// Threads: XLA's own. A call is cut into parts, as many as XLA's intra-op thread pool has threads
// or more, and each part runs through oneDNN on one thread (OpenMP team of one): the calling thread
// takes parts until none is left, and pool threads that are free take the others (the kernel
// gradient sums the parts' kernel gradients). A batch of at least as many images as threads is cut
// into slices of whole images; a smaller one (one image at one scale, or a batch of 8 on a 16-core
// machine) into bands of rows of each image, ROW_BANDS_PER_THREAD bands per thread (each band a
// convolution of its own, reading the rows above and below it that its kernel reaches), so that one
// image keeps every thread busy. oneDNN's own OpenMP threads would run beside XLA's, which execute
// independent operations (a layer's two gradients, the trunk and stage 1) at the same time; that
// oversubscription costs more than it gains (figures: docs/performance.md).
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
#include <utility>
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

enum class Direction { kForward, kBackwardData, kBackwardWeights };

constexpr int64_t ROW_BANDS_PER_THREAD = 2;

struct Descs {
  memory::desc src, weights_any, weights_hwio, dst;
  memory::dims strides, pad_l, pad_r;
};

Descs MakeDescs(const Key& k) {
  auto [n, h, w, c, o, kh, kw, pt, pb, pl, pr] = k;
  const int64_t oh = h + pt + pb - kh + 1, ow = w + pl + pr - kw + 1;
  const memory::data_type f32 = memory::data_type::f32;
  return Descs{memory::desc({n, c, h, w}, f32, Tag::nhwc),
               memory::desc({o, c, kh, kw}, f32, Tag::any),
               memory::desc({o, c, kh, kw}, f32, Tag::hwio),
               memory::desc({n, o, oh, ow}, f32, Tag::nhwc),
               {1, 1}, {pt, pl}, {pb, pr}};
}

// One direction's primitive for one shape, and the kernel layout it wants (its weights for the
// forward and input gradient, its kernel gradient for the other).
struct Primitive {
  Descs descs;
  dnnl::primitive primitive;
  memory::desc kernel, scratchpad;
};

// Scratch memory is passed in (`Scratchpad`), so one primitive can run on several threads at once.
const Primitive& PrimitiveFor(const Key& key, Direction direction) {
  static std::mutex mu;
  static std::map<std::pair<Key, Direction>, std::unique_ptr<Primitive>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find({key, direction});
  if (it != cache.end()) return *it->second;
  auto p = std::make_unique<Primitive>();
  const Descs& d = p->descs = MakeDescs(key);
  const auto direct = dnnl::algorithm::convolution_direct;
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const auto forward_pd = dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, direct, d.src, d.weights_any, d.dst, d.strides,
      d.pad_l, d.pad_r, attr);
  if (direction == Direction::kForward) {
    p->primitive = dnnl::convolution_forward(forward_pd);
    p->kernel = forward_pd.weights_desc();
    p->scratchpad = forward_pd.scratchpad_desc();
  } else if (direction == Direction::kBackwardData) {
    const auto pd = dnnl::convolution_backward_data::primitive_desc(
        Engine(), direct, d.src, d.weights_any, d.dst, d.strides, d.pad_l, d.pad_r, forward_pd, attr);
    p->primitive = dnnl::convolution_backward_data(pd);
    p->kernel = pd.weights_desc();
    p->scratchpad = pd.scratchpad_desc();
  } else {
    const auto pd = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), direct, d.src, d.weights_any, d.dst, d.strides, d.pad_l, d.pad_r, forward_pd, attr);
    p->primitive = dnnl::convolution_backward_weights(pd);
    p->kernel = pd.diff_weights_desc();
    p->scratchpad = pd.scratchpad_desc();
  }
  return *cache.emplace(std::make_pair(key, direction), std::move(p)).first->second;
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

// `count` items in `parts` contiguous runs, sizes differing by at most one.
struct Runs {
  int64_t parts, base, extra;
  Runs(int64_t count, int64_t wanted)
      : parts(std::max<int64_t>(1, std::min(count, wanted))), base(count / parts), extra(count % parts) {}
  int64_t start(int64_t i) const { return i * base + std::min(i, extra); }
  int64_t size(int64_t i) const { return base + (i < extra ? 1 : 0); }
};

// A convolution of its own: some images, or a band of rows of one image, with the rows of the
// input it reads and the rows of the output it writes. Offsets in floats from the start of the
// whole input (N, H, W, C) and output (N, H', W', O).
struct Part {
  Key key;
  int64_t input_offset, output_offset;
};

// The parts of the convolution `key` for `threads` threads (file comment). Bands are cut along the
// output's rows for the forward pass and the kernel gradient (`by_input_rows` false: each band
// reads the input rows its kernel reaches) and along the input's rows for the input gradient
// (each band reads the output-gradient rows that reach it). A band's pads are what the whole
// convolution's pads leave to it: the image's own at its first and last band, and for the input
// gradient KH - 1 rows (whose results are not kept) between bands.
std::vector<Part> Parts(const Key& key, int64_t threads, bool by_input_rows) {
  auto [n, h, w, c, o, kh, kw, pt, pb, pl, pr] = key;
  const int64_t oh = h + pt + pb - kh + 1, ow = w + pl + pr - kw + 1;
  std::vector<Part> parts;
  if (n >= threads) {
    const Runs images(n, threads);
    for (int64_t i = 0; i < images.parts; ++i) {
      Key slice = key;
      std::get<0>(slice) = images.size(i);
      parts.push_back({slice, images.start(i) * h * w * c, images.start(i) * oh * ow * o});
    }
    return parts;
  }
  const int64_t bands_wanted = (ROW_BANDS_PER_THREAD * threads + n - 1) / n;
  for (int64_t image = 0; image < n; ++image) {
    const Runs bands(by_input_rows ? h : oh, bands_wanted);
    for (int64_t i = 0; i < bands.parts; ++i) {
      int64_t in_start, in_end, out_start, out_end;  // rows [start, end)
      if (by_input_rows) {
        in_start = bands.start(i), in_end = in_start + bands.size(i);
        out_start = std::max<int64_t>(0, in_start + pt - kh + 1), out_end = std::min(oh, in_end + pt);
      } else {
        out_start = bands.start(i), out_end = out_start + bands.size(i);
        in_start = std::max<int64_t>(0, out_start - pt), in_end = std::min(h, out_end - pt + kh - 1);
      }
      const int64_t top = pt + in_start - out_start;
      const int64_t bottom = (out_end - out_start) - (in_end - in_start) - top + kh - 1;
      parts.push_back({Key{1, in_end - in_start, w, c, o, kh, kw, top, bottom, pl, pr},
                       (image * h + in_start) * w * c, (image * oh + out_start) * ow * o});
    }
  }
  return parts;
}

// oneDNN on one thread (OpenMP team of one) while it lives; then the thread's OpenMP thread count
// as it was. The calling thread may be the program's main thread (JAX runs CPU computations inline
// there, `cpu.process.run_cpu_computations_inline`), whose OpenMP setting is others' too: PyTorch
// in the same process shares this libgomp, and would be left with one thread.
class OneOpenMpThread {
 public:
  OneOpenMpThread() : before_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~OneOpenMpThread() { omp_set_num_threads(before_); }
  OneOpenMpThread(const OneOpenMpThread&) = delete;
  OneOpenMpThread& operator=(const OneOpenMpThread&) = delete;

 private:
  const int before_;
};

// Runs part(i) for i in [0, parts) on this thread and on the pool's free threads; returns when
// all are done. The calling thread takes parts until none is left, then waits only for parts
// other threads have started, so a busy pool never blocks it (a pool task that starts late finds
// nothing to do).
template <typename RunPart>
void InParallel(ffi::ThreadPool& pool, int64_t parts, const RunPart& part) {
  struct Shared {
    std::atomic<int64_t> next{0};
    int64_t done = 0;
    std::mutex mu;
    std::condition_variable all_done;
    std::exception_ptr error;
  };
  auto shared = std::make_shared<Shared>();
  auto work = [shared, parts, &part] {
    OneOpenMpThread one;
    for (int64_t i; (i = shared->next.fetch_add(1)) < parts;) {
      std::exception_ptr error;
      try {
        part(i);
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

// Runs `body` with oneDNN's errors (bad shapes, no implementation) returned to XLA as an error.
template <typename Body>
ffi::Error Guarded(const char* what, Body body) {
  try {
    OneOpenMpThread one;
    body();
    return ffi::Error::Success();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string(what) + ": oneDNN: " + e.what());
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string(what) + ": " + e.what());
  }
}

// Runs, part by part, the primitive that maps images and the kernel to images: the forward pass
// (x -> y) or the input gradient (dy -> dx). The kernel is reordered once for each layout the
// parts' primitives want.
void MapImages(ffi::ThreadPool& pool, const Key& key, const float* kernel, const float* x,
               const float* y, Direction direction) {
  const bool forward = direction == Direction::kForward;
  const std::vector<Part> parts = Parts(key, pool.num_threads(), /*by_input_rows=*/!forward);
  std::vector<const Primitive*> primitives;
  std::vector<memory> kernels;  // in the layout each part's primitive wants
  std::vector<std::pair<memory::desc, memory>> layouts;
  const memory::desc hwio = MakeDescs(key).weights_hwio;
  memory user(hwio, Engine(), const_cast<float*>(kernel));
  for (const Part& part : parts) {
    const Primitive& p = PrimitiveFor(part.key, direction);
    primitives.push_back(&p);
    auto same = std::find_if(layouts.begin(), layouts.end(), [&](const auto& l) { return l.first == p.kernel; });
    if (same == layouts.end()) {
      memory wanted = user;
      if (p.kernel != hwio) {
        wanted = memory(p.kernel, Engine());
        dnnl::stream stream(Engine());
        dnnl::reorder(user, wanted).execute(stream, user, wanted);
        stream.wait();
      }
      same = layouts.insert(layouts.end(), {p.kernel, wanted});
    }
    kernels.push_back(same->second);
  }
  InParallel(pool, parts.size(), [&](int64_t i) {
    const Primitive& p = *primitives[i];
    memory src(p.descs.src, Engine(), const_cast<float*>(x) + parts[i].input_offset);
    memory dst(p.descs.dst, Engine(), const_cast<float*>(y) + parts[i].output_offset);
    dnnl::stream stream(Engine());
    memory scratchpad = Scratchpad(p.scratchpad);
    if (forward) {
      p.primitive.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, kernels[i]},
                                   {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else {
      p.primitive.execute(stream, {{DNNL_ARG_DIFF_DST, dst}, {DNNL_ARG_WEIGHTS, kernels[i]},
                                   {DNNL_ARG_DIFF_SRC, src}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
    }
    stream.wait();
  });
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                   ffi::ResultBuffer<ffi::F32> y, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return Guarded("CpmConvForward", [&] {
    MapImages(pool, KeyOf(x.dimensions(), kernel.dimensions(), pt, pb, pl, pr), kernel.typed_data(),
              x.typed_data(), y->typed_data(), Direction::kForward);
  });
}

ffi::Error BackwardData(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                        ffi::Buffer<ffi::F32> kernel, ffi::ResultBuffer<ffi::F32> dx, int64_t pt,
                        int64_t pb, int64_t pl, int64_t pr) {
  return Guarded("CpmConvBackwardData", [&] {
    MapImages(pool, KeyOf(dx->dimensions(), kernel.dimensions(), pt, pb, pl, pr),
              kernel.typed_data(), dx->typed_data(), dy.typed_data(), Direction::kBackwardData);
  });
}

ffi::Error BackwardWeights(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                           ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dkernel,
                           int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return Guarded("CpmConvBackwardWeights", [&] {
    const Key key = KeyOf(x.dimensions(), dkernel->dimensions(), pt, pb, pl, pr);
    const std::vector<Part> parts = Parts(key, pool.num_threads(), /*by_input_rows=*/false);
    const memory::desc hwio = MakeDescs(key).weights_hwio;
    // Part 0's kernel gradient goes to the result, the others' to `sums`, added to it at the end.
    const int64_t size = dkernel->element_count();
    std::vector<float> sums((parts.size() - 1) * size);
    InParallel(pool, parts.size(), [&](int64_t i) {
      const Primitive& p = PrimitiveFor(parts[i].key, Direction::kBackwardWeights);
      dnnl::stream stream(Engine());
      memory src(p.descs.src, Engine(), x.typed_data() + parts[i].input_offset);
      memory diff_dst(p.descs.dst, Engine(), dy.typed_data() + parts[i].output_offset);
      memory part(hwio, Engine(), i == 0 ? dkernel->typed_data() : &sums[(i - 1) * size]);
      memory diff_weights = p.kernel == hwio ? part : memory(p.kernel, Engine());
      p.primitive.execute(
          stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst}, {DNNL_ARG_DIFF_WEIGHTS, diff_weights},
                   {DNNL_ARG_SCRATCHPAD, Scratchpad(p.scratchpad)}});
      if (p.kernel != hwio) dnnl::reorder(diff_weights, part).execute(stream, diff_weights, part);
      stream.wait();
    });
    float* out = dkernel->typed_data();
    for (size_t i = 1; i < parts.size(); ++i) {
      const float* part = &sums[(i - 1) * size];
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
