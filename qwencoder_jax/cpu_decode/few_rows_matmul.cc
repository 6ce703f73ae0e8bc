// y[m, n] = sum_k x[m, k] * w[k, n] for a handful of rows m: the matmuls of a decode step on CPU.
// (And, further down, the same against block-quantised weights kept packed: PackedMatmul, used by
// qwencoder_jax/cpu_decode/packed.py.)
//
// Built and loaded by qwencoder_jax/cpu_decode/few_rows.py (an XLA FFI custom call, float32 only). Why it exists:
// with 8 rows, XLA's CPU dot streams a weight at ~13 GB/s while this machine reads ~28 GB/s, and a decode step
// reads every weight once, so that rate is the step time. Here each thread streams one contiguous stretch of
// w's rows (the order they lie in memory), four rows at a time with the next four prefetched, into its own
// partial y (kept in L1/L2), and the partials are summed. With `transposed_w` the weight is stored [n, k] (a
// tied embedding table used as the output head): each output is a dot product of a row of x with a contiguous
// row of w, four rows of w against up to four rows of x at a time, the columns split between threads.
// Measured (8 rows, float32, weights read from memory, benchmarks/decode_throughput.py for the whole step):
// [576, 576] 100 -> 64 us, [576, 1536] 260 -> 160-210 us, [1536, 576] 238 -> 160 us; head [49152, 576] 7.3 ->
// 5.5 ms. With one row it matches XLA (both run at read bandwidth).
//
// Vectors are GCC vector extensions (compiled with -march=native by few_rows.py): AVX-512, AVX2 or NEON
// from one source, whichever the machine has (run on AVX-512 only so far).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#ifdef __linux__
#include <sched.h>
#endif

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kLanes = 16;
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float)), aligned(4)));

inline Vec load(const float* p) { return *reinterpret_cast<const Vec*>(p); }
inline void store(float* p, Vec v) { *reinterpret_cast<Vec*>(p) = v; }
inline Vec splat(float s) { return Vec{} + s; }
typedef float Half __attribute__((vector_size(kLanes / 2 * sizeof(float))));
typedef float Quarter __attribute__((vector_size(kLanes / 4 * sizeof(float))));
// Sum of the lanes as a tree of halvings (independent sums overlap; a lane-by-lane loop is one long dependency
// chain, which made the transposed head 2x slower).
inline float lane_sum(Vec v) {
  const Half h = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                 __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const Quarter q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
  return (q[0] + q[2]) + (q[1] + q[3]);
}

constexpr int64_t kColumnBlock = 4096;  // columns of y updated per pass over a stretch of w's rows
constexpr int64_t kRowsPerPass = 4;      // rows of w read together (4 sequential streams)
constexpr int64_t kRowTile = 16;         // rows of x per tile (their broadcast values stay in L1)

// y = x[:, k0:k1] @ w[k0:k1, :] for the rows [r0, r1) of x; w row-major [k, n]; y is overwritten.
void row_stretch(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y, int64_t r0,
                 int64_t r1, int64_t k, int64_t n, int64_t k0, int64_t k1) {
  const int64_t m = r1 - r0;
  for (int64_t c0 = 0; c0 < n; c0 += kColumnBlock) {
    const int64_t c1 = std::min(c0 + kColumnBlock, n);
    const int64_t vector_end = c0 + (c1 - c0) / kLanes * kLanes;
    for (int64_t r = 0; r < m; ++r) std::memset(y + (r0 + r) * n + c0, 0, (c1 - c0) * sizeof(float));
    int64_t i = k0;
    for (; i + kRowsPerPass <= k1; i += kRowsPerPass) {
      const float* w0 = w + i * n;
      const float* w1 = w0 + n;
      const float* w2 = w1 + n;
      const float* w3 = w2 + n;
      Vec xs[kRowTile][kRowsPerPass];
      for (int64_t r = 0; r < m; ++r) {
        for (int64_t j = 0; j < kRowsPerPass; ++j) xs[r][j] = splat(x[(r0 + r) * k + i + j]);
      }
      // The next four rows are fetched while these are used: rows shorter than a few KiB end before the
      // hardware prefetcher has ramped up (measured: [576, 576] at 8 rows, 14 -> 20 GB/s).
      const bool prefetch = i + 2 * kRowsPerPass <= k1;
      for (int64_t c = c0; c < vector_end; c += kLanes) {
        if (prefetch) {
          __builtin_prefetch(w3 + n + c);
          __builtin_prefetch(w3 + 2 * n + c);
          __builtin_prefetch(w3 + 3 * n + c);
          __builtin_prefetch(w3 + 4 * n + c);
        }
        const Vec a0 = load(w0 + c), a1 = load(w1 + c), a2 = load(w2 + c), a3 = load(w3 + c);
        for (int64_t r = 0; r < m; ++r) {
          float* yr = y + (r0 + r) * n + c;
          store(yr, load(yr) + xs[r][0] * a0 + xs[r][1] * a1 + xs[r][2] * a2 + xs[r][3] * a3);
        }
      }
      for (int64_t c = vector_end; c < c1; ++c) {
        for (int64_t r = 0; r < m; ++r) {
          const float* xr = x + (r0 + r) * k + i;
          y[(r0 + r) * n + c] += xr[0] * w0[c] + xr[1] * w1[c] + xr[2] * w2[c] + xr[3] * w3[c];
        }
      }
    }
    for (; i < k1; ++i) {  // the last (k1 - k0) % 4 rows
      const float* wi = w + i * n;
      for (int64_t r = 0; r < m; ++r) {
        const float xi = x[(r0 + r) * k + i];
        for (int64_t c = c0; c < c1; ++c) y[(r0 + r) * n + c] += xi * wi[c];
      }
    }
  }
}

// y = x[:, k0:k1] @ w[k0:k1, :], all rows of x, in row tiles.
void rows(const float* x, const float* w, float* y, int64_t m, int64_t k, int64_t n, int64_t k0, int64_t k1) {
  for (int64_t r0 = 0; r0 < m; r0 += kRowTile) row_stretch(x, w, y, r0, std::min(m, r0 + kRowTile), k, n, k0, k1);
}

constexpr int64_t kTogether = 4;      // rows of a [n, k] weight read together
constexpr int64_t kTransposedTile = 4;  // rows of x per tile: 4 x 4 accumulators + 5 operands fit 32 registers

// y[r, c0 + j] = x[r, :] . w[c0 + j, :] for R rows of x and `together` (<= 4) rows of w: every loaded vector of
// w meets all R rows of x. The caller runs the tiles of x one after the other on the same rows of w (in L1).
template <int R>
void transposed_tile(const float* __restrict__ x, const float* const* wc, float* __restrict__ y, int64_t k,
                     int64_t n, int64_t together, const float* next) {
  const int64_t vector_end = k / kLanes * kLanes;
  Vec acc[R][kTogether] = {};
  for (int64_t i = 0; i < vector_end; i += kLanes) {
    if (next != nullptr) {  // the next four rows of w (contiguous), a quarter of them per vector of these
      __builtin_prefetch(next + 4 * i);
      __builtin_prefetch(next + 4 * i + 16);
      __builtin_prefetch(next + 4 * i + 32);
      __builtin_prefetch(next + 4 * i + 48);
    }
    const Vec w0 = load(wc[0] + i), w1 = load(wc[1] + i), w2 = load(wc[2] + i), w3 = load(wc[3] + i);
    for (int r = 0; r < R; ++r) {
      const Vec xv = load(x + r * k + i);
      acc[r][0] += xv * w0;
      acc[r][1] += xv * w1;
      acc[r][2] += xv * w2;
      acc[r][3] += xv * w3;
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int64_t j = 0; j < together; ++j) {
      float total = lane_sum(acc[r][j]);
      for (int64_t i = vector_end; i < k; ++i) total += x[r * k + i] * wc[j][i];
      y[r * n + j] = total;
    }
  }
}

// Columns [n0, n1) of y = x @ w.T, w row-major [n, k].
void columns_transposed(const float* x, const float* w, float* y, int64_t m, int64_t k, int64_t n, int64_t n0,
                        int64_t n1) {
  for (int64_t c = n0; c < n1; c += kTogether) {
    const int64_t together = std::min(kTogether, n1 - c);
    const float* wc[kTogether];
    for (int64_t j = 0; j < kTogether; ++j) wc[j] = w + (c + std::min(j, together - 1)) * k;
    const float* next = c + 2 * kTogether <= n1 ? w + (c + kTogether) * k : nullptr;
    for (int64_t r0 = 0; r0 < m; r0 += kTransposedTile) {
      const float* xr = x + r0 * k;
      float* yr = y + r0 * n + c;
      const float* tile_next = r0 == 0 ? next : nullptr;  // later tiles find these rows in L1
      switch (std::min(kTransposedTile, m - r0)) {
        case 1: transposed_tile<1>(xr, wc, yr, k, n, together, tile_next); break;
        case 2: transposed_tile<2>(xr, wc, yr, k, n, together, tile_next); break;
        case 3: transposed_tile<3>(xr, wc, yr, k, n, together, tile_next); break;
        default: transposed_tile<4>(xr, wc, yr, k, n, together, tile_next); break;
      }
    }
  }
}

// Workers of our own, one per usable core beyond the caller's. A decode step calls the kernel every 50-200 us; XLA's
// intra-op pool lets its threads sleep in between, and waking one took ~40 us, about as long as a whole share,
// so the caller ended up doing nearly every share itself (measured: 99% of shares). These workers spin (with
// yield, so a core XLA needs is given up at once) for a short while after each job, then sleep.
class Workers {
 public:
  static Workers& get() {
    static Workers* workers = new Workers();  // never destroyed: threads may outlive static destruction
    return *workers;
  }

  int64_t size() const { return static_cast<int64_t>(threads_.size()); }

  // Runs work(0..count-1): the caller takes shares too, and every share nobody has started, so a job always
  // completes even when no worker gets to it (asleep, busy, or gone after a fork). Returns false (running
  // nothing) when another caller's job is in flight; that caller then does the whole job on its own thread.
  template <typename Work>
  bool run(int64_t count, const Work& work) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    auto job = std::make_shared<Job>();
    job->work = [&work](int64_t share) { work(share); };
    job->count = count;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = job;
      generation_.fetch_add(1, std::memory_order_release);
    }
    if (sleepers_.load(std::memory_order_acquire) > 0) wake_.notify_all();
    job->take_shares();
    while (job->done.load(std::memory_order_acquire) < count) std::this_thread::yield();
    return true;
  }

 private:
  // One call's shares. `work` refers to the caller's frame: it is only called for a claimed share below
  // `count`, and the caller returns only once all `count` shares are done.
  struct Job {
    std::function<void(int64_t)> work;
    int64_t count = 0;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};

    void take_shares() {
      for (int64_t share = next.fetch_add(1); share < count; share = next.fetch_add(1)) {
        work(share);
        done.fetch_add(1, std::memory_order_release);
      }
    }
  };

  // Cores this process may run on (its affinity mask, not the host's core count: a container pinned to 2 of 64
  // cores must not start 63 spinning threads), at most kMaxThreads: a few cores already saturate memory reads.
  static int64_t usable_cores() {
    constexpr int64_t kMaxThreads = 8;
    int64_t cores = std::max<unsigned>(1, std::thread::hardware_concurrency());
#ifdef __linux__
    cpu_set_t mask;
    if (sched_getaffinity(0, sizeof(mask), &mask) == 0) cores = std::max(1, CPU_COUNT(&mask));
#endif
    return std::min(cores, kMaxThreads);
  }

  Workers() {
    const int64_t cores = usable_cores();
    for (int64_t i = 0; i + 1 < cores; ++i) threads_.emplace_back([this] { loop(); });
    for (auto& thread : threads_) thread.detach();
  }

  void loop() {
    uint64_t seen = 0;
    for (;;) {
      const auto spin_until = std::chrono::steady_clock::now() + std::chrono::milliseconds(2);
      while (generation_.load(std::memory_order_acquire) == seen && std::chrono::steady_clock::now() < spin_until) {
        std::this_thread::yield();
      }
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        if (generation_.load(std::memory_order_acquire) == seen) {
          sleepers_.fetch_add(1);
          wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
          sleepers_.fetch_sub(1);
        }
        seen = generation_.load(std::memory_order_acquire);
        job = job_;
      }
      if (job) job->take_shares();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex busy_;  // one job at a time
  std::mutex mutex_;  // guards job_ and the sleep
  std::condition_variable wake_;
  std::atomic<int> sleepers_{0};
  std::atomic<uint64_t> generation_{0};
  std::shared_ptr<Job> job_;
};

// Runs work(0..count-1), in parallel when the workers are free, else on the calling thread.
template <typename Work>
void run_shares(int64_t count, const Work& work) {
  if (count > 1 && Workers::get().run(count, work)) return;
  for (int64_t share = 0; share < count; ++share) work(share);
}

ffi::Error FewRowsMatmul(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                         ffi::ResultBuffer<ffi::F32> y, bool transposed_w) {
  const auto x_dims = x.dimensions();
  const auto w_dims = w.dimensions();
  if (x_dims.size() != 2 || w_dims.size() != 2) {
    return ffi::Error::InvalidArgument("few_rows_matmul takes x [m, k] and w [k, n] (or [n, k]): 2-D arrays");
  }
  const int64_t m = x_dims[0], k = x_dims[1];
  const int64_t n = transposed_w ? w_dims[0] : w_dims[1];
  if ((transposed_w ? w_dims[1] : w_dims[0]) != k) {
    return ffi::Error::InvalidArgument("few_rows_matmul: the contracted sizes of x and w differ");
  }
  const float* xp = x.typed_data();
  const float* wp = w.typed_data();
  float* yp = y->typed_data();
  const int64_t threads = Workers::get().size() + 1;
  if (transposed_w) {  // column shares: each output is one contiguous row of w against x
    const int64_t shares = std::max<int64_t>(1, std::min(threads, n));
    const int64_t per_share = (n + shares - 1) / shares;
    run_shares(shares, [&](int64_t share) {
      const int64_t n0 = std::min(n, share * per_share), n1 = std::min(n, n0 + per_share);
      if (n0 < n1) columns_transposed(xp, wp, yp, m, k, n, n0, n1);
    });
    return ffi::Error::Success();
  }
  // Row shares: each thread streams one contiguous stretch of w's rows (the order they lie in memory) into its
  // own partial y; the partials are summed after. Splitting columns instead makes every thread read short
  // strided runs, which measured ~30% slower.
  const int64_t shares = std::max<int64_t>(1, std::min(threads, k / kRowsPerPass));
  const int64_t per_share = (k / kRowsPerPass + shares - 1) / shares * kRowsPerPass;
  std::unique_ptr<float[]> partials(new float[(shares - 1) * m * n]);  // rows() overwrites them
  run_shares(shares, [&](int64_t share) {
    const int64_t k0 = std::min(k, share * per_share);
    const int64_t k1 = share == shares - 1 ? k : std::min(k, k0 + per_share);
    rows(xp, wp, share == 0 ? yp : partials.get() + (share - 1) * m * n, m, k, n, k0, k1);
  });
  for (int64_t share = 1; share < shares; ++share) {
    const float* partial = partials.get() + (share - 1) * m * n;
    for (int64_t i = 0; i < m * n; ++i) yp[i] += partial[i];
  }
  return ffi::Error::Success();
}

// --- block-quantised weights: x [m, k] @ w.T for w [n, k] kept packed (GGUF's blocks, see packed.py) -------
//
// w[c, 32 b + j] = scale[c, b] * code + offset[c, b]: 4-bit codes (0..15) two to a byte, byte j of a block
// holding element j in its low nibble and element j + 16 in its high nibble (GGUF's order), or 8-bit signed
// codes one to a byte. Four rows of w at a time are expanded to float32 into a scratch buffer in L1 and then
// meet every row of x through transposed_tile. The scales are float16 values (GGUF stores them so), so
// scale * code is exact in float32 and each expanded weight is the float32 value GGUF's dequantisation gives,
// fused multiply-add or not: the product differs from the float32 matmul by summation order only.

constexpr int64_t kBlock = 32;
// One block's 32 weights as float32 into out[0..32). With AVX-512: one widening of 16 bytes to 16 ints, a
// mask or shift, a convert and a multiply-add per 16 weights. GCC's vectoriser (and its vector-extension
// conversions) widened the bytes one at a time here, which made the whole kernel slower than float32's; other
// machines take the plain loops.
#if defined(__AVX512F__)
inline void expand_block4(const uint8_t* q, float d, float m, float* out) {
  const __m512i codes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
  const Vec low = reinterpret_cast<Vec>(_mm512_cvtepi32_ps(_mm512_and_si512(codes, _mm512_set1_epi32(15))));
  const Vec high = reinterpret_cast<Vec>(_mm512_cvtepi32_ps(_mm512_srli_epi32(codes, 4)));
  store(out, low * d + m);
  store(out + 16, high * d + m);
}

inline void expand_half8(const int8_t* q, float d, float m, float* out) {  // 16 weights
  const __m512i codes = _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q)));
  store(out, reinterpret_cast<Vec>(_mm512_cvtepi32_ps(codes)) * d + m);
}
#else
inline void expand_block4(const uint8_t* __restrict__ q, float d, float m, float* __restrict__ out) {
  for (int j = 0; j < 16; ++j) out[j] = static_cast<float>(q[j] & 15) * d + m;
  for (int j = 0; j < 16; ++j) out[16 + j] = static_cast<float>(q[j] >> 4) * d + m;
}

inline void expand_half8(const int8_t* __restrict__ q, float d, float m, float* __restrict__ out) {
  for (int j = 0; j < kBlock / 2; ++j) out[j] = static_cast<float>(q[j]) * d + m;
}
#endif

// Rows [c, c + together) of the packed weight as float32 into out[j * k + i]. 8-bit codes may have a
// (scale, offset) pair per 16 weights (Q6_K's sub-blocks): `halves` says so.
void expand_rows(const uint8_t* __restrict__ codes, const float* __restrict__ scale,
                 const float* __restrict__ offset, int bits, bool halves, int64_t k, int64_t c, int64_t together,
                 float* __restrict__ out) {
  const int64_t blocks = k / kBlock;
  const int64_t scales = halves ? 2 * blocks : blocks;
  const int64_t row_bytes = bits == 4 ? k / 2 : k;
  const int64_t block_bytes = bits == 4 ? kBlock / 2 : kBlock;
  for (int64_t j = 0; j < together; ++j) {
    const uint8_t* row = codes + (c + j) * row_bytes;
    const float* s = scale + (c + j) * scales;
    const float* o = offset + (c + j) * scales;
    float* dst = out + j * k;
    const uint8_t* ahead = row + kTogether * row_bytes;  // the same row of the next group
    for (int64_t i = 0; i < row_bytes; i += 64) __builtin_prefetch(ahead + i);
    if (bits == 4) {
      for (int64_t b = 0; b < blocks; ++b) expand_block4(row + b * block_bytes, s[b], o[b], dst + b * kBlock);
    } else {
      const int8_t* q = reinterpret_cast<const int8_t*>(row);
      for (int64_t h = 0; h < 2 * blocks; ++h) {
        const int64_t b = halves ? h : h / 2;
        expand_half8(q + h * (kBlock / 2), s[b], o[b], dst + h * (kBlock / 2));
      }
    }
  }
}

// Columns [n0, n1) of y = x @ w.T, w packed [n, k].
void columns_packed(const float* x, const uint8_t* codes, const float* scale, const float* offset, int bits,
                    bool halves, float* y, int64_t m, int64_t k, int64_t n, int64_t n0, int64_t n1) {
  std::unique_ptr<float[]> expanded(new float[kTogether * k]);
  for (int64_t c = n0; c < n1; c += kTogether) {
    const int64_t together = std::min(kTogether, n1 - c);
    expand_rows(codes, scale, offset, bits, halves, k, c, together, expanded.get());
    const float* wc[kTogether];
    for (int64_t j = 0; j < kTogether; ++j) wc[j] = expanded.get() + std::min(j, together - 1) * k;
    for (int64_t r0 = 0; r0 < m; r0 += kTransposedTile) {
      const float* xr = x + r0 * k;
      float* yr = y + r0 * n + c;
      switch (std::min(kTransposedTile, m - r0)) {
        case 1: transposed_tile<1>(xr, wc, yr, k, n, together, nullptr); break;
        case 2: transposed_tile<2>(xr, wc, yr, k, n, together, nullptr); break;
        case 3: transposed_tile<3>(xr, wc, yr, k, n, together, nullptr); break;
        default: transposed_tile<4>(xr, wc, yr, k, n, together, nullptr); break;
      }
    }
  }
}

ffi::Error PackedMatmul(ffi::Buffer<ffi::F32> x, ffi::AnyBuffer codes, ffi::Buffer<ffi::F32> scale,
                        ffi::Buffer<ffi::F32> offset, ffi::ResultBuffer<ffi::F32> y) {
  const auto x_dims = x.dimensions();
  const auto c_dims = codes.dimensions();
  if (x_dims.size() != 2 || c_dims.size() != 2 || scale.dimensions().size() != 2 ||
      offset.dimensions().size() != 2) {
    return ffi::Error::InvalidArgument("packed_matmul takes x [m, k], codes [n, k or k/2], scale and offset "
                                       "[n, k/32]: 2-D arrays");
  }
  int bits;
  if (codes.element_type() == ffi::DataType::U8) {
    bits = 4;
  } else if (codes.element_type() == ffi::DataType::S8) {
    bits = 8;
  } else {
    return ffi::Error::InvalidArgument("packed_matmul: codes must be uint8 (4-bit pairs) or int8 (8-bit)");
  }
  const int64_t m = x_dims[0], k = x_dims[1], n = c_dims[0];
  const bool halves = bits == 8 && scale.dimensions()[1] == 2 * (k / kBlock);  // a pair per 16 weights
  const int64_t scales = halves ? 2 * (k / kBlock) : k / kBlock;
  if (k % kBlock != 0 || c_dims[1] != (bits == 4 ? k / 2 : k) || scale.dimensions()[0] != n ||
      scale.dimensions()[1] != scales || offset.dimensions()[0] != n || offset.dimensions()[1] != scales) {
    return ffi::Error::InvalidArgument("packed_matmul: shapes of x, codes, scale and offset do not agree");
  }
  const float* xp = x.typed_data();
  const uint8_t* cp = static_cast<const uint8_t*>(codes.untyped_data());
  const float* sp = scale.typed_data();
  const float* op = offset.typed_data();
  float* yp = y->typed_data();
  const int64_t threads = Workers::get().size() + 1;
  // column shares in whole groups of kTogether rows of w
  const int64_t groups = (n + kTogether - 1) / kTogether;
  const int64_t shares = std::max<int64_t>(1, std::min(threads, groups));
  const int64_t per_share = (groups + shares - 1) / shares * kTogether;
  run_shares(shares, [&](int64_t share) {
    const int64_t n0 = std::min(n, share * per_share), n1 = std::min(n, n0 + per_share);
    if (n0 < n1) columns_packed(xp, cp, sp, op, bits, halves, yp, m, k, n, n0, n1);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(QwencoderFewRowsMatmul, FewRowsMatmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("transposed_w"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(QwencoderPackedMatmul, PackedMatmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
