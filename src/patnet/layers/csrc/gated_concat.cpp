// PAT_ch's deploy-form tail on CPU in one call (patnet.layers.cpu_kernels builds and loads it):
//   out = [conv, x_u * hsig([mean, std](x_u) W + b)]
// for channels-last maps x (B, C, H, W) and conv (B, P, H, W), x_u = x's last C - P channels, mean and the
// unbiased std over H and W per sample and channel, W the (2C, C - P) gate matrix over all C channels' [mean, std]
// (the first P channels' rows unused) and b its (C - P) bias. The eager PyTorch form spends about ten operator
// calls on this; each costs more than the arithmetic on small maps.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// The loops below are compiled for AVX-512, AVX2 and plain x86-64, chosen when the library loads.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define PATNET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PATNET_CLONES
#endif
// What the cloned loops call is inlined into each clone, so it is compiled for that clone's instructions too.
#define PATNET_INLINE inline __attribute__((always_inline))

// Rows are summed in float in blocks of this many, each block's sums added to double accumulators: the rounding
// stays that of a 64-term float sum.
constexpr int64_t kBlockRows = 64;
// Channels taken together: a tile's accumulators stay in vector registers (two sets, alternate rows), where
// accumulators in memory would make every row wait for the previous row's store.
constexpr int64_t kTile = 16;

struct Map {
  int64_t rows;      // H * W
  int64_t channels;  // C: the row stride of x and out
  int64_t passed;    // P: conv's channels, the row stride of conv
};

// kTile floats as one GCC/Clang vector: each clone of the loops below runs it in its own registers (one zmm
// with AVX-512, two ymm with AVX2) instead of what the auto-vectoriser makes of short rows.
typedef float Floats __attribute__((vector_size(kTile * sizeof(float))));
typedef uint32_t Words __attribute__((vector_size(kTile * sizeof(uint32_t))));
typedef uint16_t Halves __attribute__((vector_size(kTile * sizeof(uint16_t))));

PATNET_INLINE Floats load_tile(const float* p) {
  Floats v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

PATNET_INLINE Floats load_tile(const c10::BFloat16* p) {  // a bfloat16 is a float's upper half
  Halves halves;
  std::memcpy(&halves, p, sizeof halves);
  const Words words = __builtin_convertvector(halves, Words) << 16;
  Floats v;
  std::memcpy(&v, &words, sizeof v);
  return v;
}

PATNET_INLINE void store_tile(float* p, Floats v) { std::memcpy(p, &v, sizeof v); }

PATNET_INLINE void store_tile(c10::BFloat16* p, Floats v) {  // round to nearest even, NaN stays NaN (as c10)
  Words bits;
  std::memcpy(&bits, &v, sizeof bits);
  const Words nan = reinterpret_cast<Words>(v != v);
  const Words rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  const Halves halves = __builtin_convertvector((rounded & ~nan) | (nan & 0x7FC0u), Halves);
  std::memcpy(p, &halves, sizeof halves);
}

// sums[k] = sum over rows of x[r, k] for kTile channels (kCentred: of (x[r, k] - centre[k])^2).
template <bool kCentred, typename T>
PATNET_INLINE void tile_sums(const T* x, const Map& m, const float* centre, double* sums) {
  const Floats shift = kCentred ? load_tile(centre) : Floats{};
  for (int64_t k = 0; k < kTile; ++k) sums[k] = 0.0;
  for (int64_t begin = 0; begin < m.rows; begin += kBlockRows) {
    const int64_t end = std::min(begin + kBlockRows, m.rows);
    Floats even = {}, odd = {};
    int64_t r = begin;
    for (; r + 1 < end; r += 2) {
      const Floats a = load_tile(x + r * m.channels) - shift, b = load_tile(x + (r + 1) * m.channels) - shift;
      even += kCentred ? a * a : a;
      odd += kCentred ? b * b : b;
    }
    if (r < end) {
      const Floats a = load_tile(x + r * m.channels) - shift;
      even += kCentred ? a * a : a;
    }
    for (int64_t k = 0; k < kTile; ++k) sums[k] += static_cast<double>(even[k]) + static_cast<double>(odd[k]);
  }
}

// One channel's sum, for channels past the last whole tile (a width that is not a multiple of kTile).
template <bool kCentred, typename T>
PATNET_INLINE double channel_sum(const T* x, const Map& m, float centre) {
  double sum = 0.0;
  for (int64_t r = 0; r < m.rows; ++r) {
    const double d = static_cast<double>(static_cast<float>(x[r * m.channels])) - (kCentred ? centre : 0.0f);
    sum += kCentred ? d * d : d;
  }
  return sum;
}

// sums[c] = sum over rows of x[r, c] or (kCentred) of (x[r, c] - centre[c])^2, from the tile that holds channel
// P on (earlier channels' sums are left as they are).
template <bool kCentred, typename T>
PATNET_INLINE void column_sums(const T* x, const Map& m, const float* centre, double* sums) {
  int64_t c = m.passed / kTile * kTile;
  for (; c + kTile <= m.channels; c += kTile) tile_sums<kCentred>(x + c, m, centre + c, sums + c);
  for (; c < m.channels; ++c) sums[c] = channel_sum<kCentred>(x + c, m, centre[c]);
}

// gate[o] += sum over i of moments[i] * w[i, o] for the (n, gated) rows w: one tile of outputs at a time.
template <typename T>
PATNET_INLINE void add_products(const float* moments, const T* w, int64_t n, int64_t gated, float* gate) {
  int64_t o = 0;
  for (; o + kTile <= gated; o += kTile) {
    Floats acc = load_tile(gate + o);
    for (int64_t i = 0; i < n; ++i) acc += moments[i] * load_tile(w + i * gated + o);
    store_tile(gate + o, acc);
  }
  for (; o < gated; ++o) {
    for (int64_t i = 0; i < n; ++i) gate[o] += moments[i] * static_cast<float>(w[i * gated + o]);
  }
}

// scale[P:C] = hsig([mean, std] W + b) over the gated channels (two passes over the map for the statistics).
template <typename T>
PATNET_INLINE void gate_scale_body(const T* x, const Map& m, const T* weight, const T* bias, float* scale) {
  const int64_t channels = m.channels, passed = m.passed, gated = channels - passed;
  std::vector<float> mean(channels, 0.0f), std_dev(channels, 0.0f);
  std::vector<double> sums(channels, 0.0);
  column_sums<false>(x, m, mean.data(), sums.data());
  for (int64_t c = passed; c < channels; ++c) mean[c] = static_cast<float>(sums[c] / m.rows);
  column_sums<true>(x, m, mean.data(), sums.data());
  const double bessel = m.rows > 1 ? static_cast<double>(m.rows) / static_cast<double>(m.rows - 1) : 1.0;
  for (int64_t c = passed; c < channels; ++c) std_dev[c] = static_cast<float>(std::sqrt(sums[c] / m.rows * bessel));
  float* gate = scale + passed;
  for (int64_t o = 0; o < gated; ++o) gate[o] = static_cast<float>(bias[o]);
  add_products(mean.data() + passed, weight + passed * gated, gated, gated, gate);
  add_products(std_dev.data() + passed, weight + (channels + passed) * gated, gated, gated, gate);
  for (int64_t o = 0; o < gated; ++o) gate[o] = std::min(std::max(gate[o] + 3.0f, 0.0f), 6.0f) / 6.0f;
}

PATNET_CLONES void gate_scale(const float* x, const Map& m, const float* weight, const float* bias, float* scale) {
  gate_scale_body(x, m, weight, bias, scale);
}

PATNET_CLONES void gate_scale(const c10::BFloat16* x, const Map& m, const c10::BFloat16* weight,
                              const c10::BFloat16* bias, float* scale) {
  gate_scale_body(x, m, weight, bias, scale);
}

// to[0:n] = from[0:n] as raw values (a bfloat16's bits as a uint16_t, which the compiler copies in vectors).
PATNET_INLINE void copy_values(const float* from, int64_t n, float* to) {
  for (int64_t i = 0; i < n; ++i) to[i] = from[i];
}

PATNET_INLINE void copy_values(const c10::BFloat16* from, int64_t n, c10::BFloat16* to) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(from);
  uint16_t* into = reinterpret_cast<uint16_t*>(to);
  for (int64_t i = 0; i < n; ++i) into[i] = bits[i];
}

// out[r] = [conv[r], x_u[r] * scale]: whole-row tiles of x * scale, then conv's P values over the row's start
// (an element loop: cpu_kernels builds with -fno-tree-loop-distribute-patterns, so no memcpy call per short row).
template <typename T>
PATNET_INLINE void write_rows_body(const T* x, const T* conv, const float* scale, const Map& m, T* out) {
  const int64_t channels = m.channels, passed = m.passed;
  for (int64_t r = 0; r < m.rows; ++r) {
    const T* in = x + r * channels;
    T* row = out + r * channels;
    int64_t c = 0;
    for (; c + kTile <= channels; c += kTile) store_tile(row + c, load_tile(in + c) * load_tile(scale + c));
    for (; c < channels; ++c) row[c] = static_cast<T>(static_cast<float>(in[c]) * scale[c]);
    copy_values(conv + r * passed, passed, row);
  }
}

PATNET_CLONES void write_rows(const float* x, const float* conv, const float* scale, const Map& m, float* out) {
  write_rows_body(x, conv, scale, m, out);
}

PATNET_CLONES void write_rows(const c10::BFloat16* x, const c10::BFloat16* conv, const float* scale, const Map& m,
                              c10::BFloat16* out) {
  write_rows_body(x, conv, scale, m, out);
}

void check_inputs(const at::Tensor& x, const at::Tensor& conv, const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK(x.dim() == 4 && conv.dim() == 4, "gated_concat: x and conv must be 4-D (B, C, H, W) maps");
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast) && conv.is_contiguous(at::MemoryFormat::ChannelsLast),
              "gated_concat: x and conv must be channels-last contiguous");
  const int64_t channels = x.size(1), passed = conv.size(1);
  TORCH_CHECK(conv.size(0) == x.size(0) && conv.size(2) == x.size(2) && conv.size(3) == x.size(3) && passed < channels,
              "gated_concat: conv must be (B, P, H, W) with P < C for x (B, C, H, W)");
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == 2 * channels && weight.size(1) == channels - passed &&
                  weight.is_contiguous() && bias.numel() == channels - passed && bias.is_contiguous(),
              "gated_concat: weight must be a contiguous (2C, C - P) matrix and bias (C - P) values");
  TORCH_CHECK(x.scalar_type() == conv.scalar_type() && x.scalar_type() == weight.scalar_type() &&
                  x.scalar_type() == bias.scalar_type(),
              "gated_concat: x, conv, weight and bias must share one dtype");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "gated_concat: maps must be float32 or bfloat16");
  TORCH_CHECK(x.size(2) * x.size(3) > 0, "gated_concat: the map must not be empty");
}

template <typename T>
void gated_concat_into(const at::Tensor& x, const at::Tensor& conv, const at::Tensor& weight, const at::Tensor& bias,
                       const Map& m, at::Tensor& out) {
  std::vector<float> scale(m.channels, 0.0f);  // the first P values are never read into out
  for (int64_t n = 0; n < x.size(0); ++n) {
    const T* sample = x.const_data_ptr<T>() + n * m.rows * m.channels;
    gate_scale(sample, m, weight.const_data_ptr<T>(), bias.const_data_ptr<T>(), scale.data());
    write_rows(sample, conv.const_data_ptr<T>() + n * m.rows * m.passed, scale.data(), m,
               out.mutable_data_ptr<T>() + n * m.rows * m.channels);
  }
}

at::Tensor gated_concat(const at::Tensor& x, const at::Tensor& conv, const at::Tensor& weight,
                        const at::Tensor& bias) {
  check_inputs(x, conv, weight, bias);
  const Map m{x.size(2) * x.size(3), x.size(1), conv.size(1)};
  at::Tensor out = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  if (x.scalar_type() == at::kFloat) {
    gated_concat_into<float>(x, conv, weight, bias, m, out);
  } else {
    gated_concat_into<c10::BFloat16>(x, conv, weight, bias, m, out);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(patnet, m) {
  m.def("gated_concat(Tensor x, Tensor conv, Tensor weight, Tensor bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(patnet, CPU, m) {
  m.impl("gated_concat", &gated_concat);
}
