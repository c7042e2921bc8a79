// PAT_ch's deploy-form tail on CPU in one call (patnet.layers.cpu_kernels builds and loads it):
//   out = [conv, x_u * hsig([mean, std](x_u) W + b)]
// for channels-last maps x (B, C, H, W) and conv (B, P, H, W), x_u = x's last C - P channels, mean and the
// unbiased std over H and W per sample and channel, W the (2C, C - P) gate matrix over all C channels' [mean, std]
// (the first P channels' rows unused) and b its (C - P) bias. The eager PyTorch form spends about ten operator
// calls on this; each costs more than the arithmetic on small maps.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tiles.h"

namespace {

// Rows are summed in float in blocks of this many, the blocks' sums then added in double: the rounding stays that
// of a 64-term float sum, and the blocks are what threads share.
constexpr int64_t kBlockRows = 64;

struct Map {
  int64_t rows;      // H * W
  int64_t channels;  // C: the row stride of x and out
  int64_t passed;    // P: conv's channels, the row stride of conv
};

// out[k] = sum over rows [begin, end) of x[r, k] for kTile channels (kCentred: of (x[r, k] - centre[k])^2).
template <bool kCentred, typename T>
PATNET_INLINE void tile_block_sums(const T* x, const Map& m, const float* centre, int64_t begin, int64_t end,
                                   double* out) {
  const Floats shift = kCentred ? load_tile(centre) : Floats{};
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
  for (int64_t k = 0; k < kTile; ++k) out[k] = static_cast<double>(even[k]) + static_cast<double>(odd[k]);
}

// partials[b * C + c] = block b's sum of x[r, c] (or of (x[r, c] - centre[c])^2) for blocks [first, last), from
// the tile that holds channel P on; a channel past the last whole tile (a width that is not a multiple of kTile)
// is summed alone.
template <bool kCentred, typename T>
PATNET_INLINE void block_sums_body(const T* x, const Map& m, const float* centre, int64_t first, int64_t last,
                                   double* partials) {
  for (int64_t block = first; block < last; ++block) {
    const int64_t begin = block * kBlockRows, end = std::min(begin + kBlockRows, m.rows);
    double* out = partials + block * m.channels;
    int64_t c = m.passed / kTile * kTile;
    for (; c + kTile <= m.channels; c += kTile) tile_block_sums<kCentred>(x + c, m, centre + c, begin, end, out + c);
    for (; c < m.channels; ++c) {
      double sum = 0.0;
      for (int64_t r = begin; r < end; ++r) {
        const double d = static_cast<double>(static_cast<float>(x[r * m.channels + c])) - (kCentred ? centre[c] : 0.0f);
        sum += kCentred ? d * d : d;
      }
      out[c] = sum;
    }
  }
}

PATNET_CLONES void block_sums(const float* x, const Map& m, const float* centre, bool centred, int64_t first,
                              int64_t last, double* partials) {
  centred ? block_sums_body<true>(x, m, centre, first, last, partials)
          : block_sums_body<false>(x, m, centre, first, last, partials);
}

PATNET_CLONES void block_sums(const c10::BFloat16* x, const Map& m, const float* centre, bool centred,
                              int64_t first, int64_t last, double* partials) {
  centred ? block_sums_body<true>(x, m, centre, first, last, partials)
          : block_sums_body<false>(x, m, centre, first, last, partials);
}

// Tasks of at least this many elements (ATen's own grain): small maps run on the calling thread alone.
constexpr int64_t kGrain = 32768;

// sums[c] for c in [P, C): each 64-row block summed by whichever thread takes it, then the blocks added in order,
// so the result does not depend on the thread count.
template <typename T>
void column_sums(const T* x, const Map& m, const float* centre, bool centred, double* sums) {
  const int64_t blocks = (m.rows + kBlockRows - 1) / kBlockRows;
  std::vector<double> partials(blocks * m.channels, 0.0);
  const int64_t grain = std::max<int64_t>(1, kGrain / (kBlockRows * m.channels));
  at::parallel_for(0, blocks, grain, [&](int64_t first, int64_t last) {
    block_sums(x, m, centre, centred, first, last, partials.data());
  });
  for (int64_t c = m.passed; c < m.channels; ++c) sums[c] = 0.0;
  for (int64_t block = 0; block < blocks; ++block) {
    for (int64_t c = m.passed; c < m.channels; ++c) sums[c] += partials[block * m.channels + c];
  }
}

// gate[o] += sum over i of moments[i] * w[i, o] for the (n, gated) rows w: one tile of outputs at a time.
template <typename T>
PATNET_INLINE void add_products_body(const float* moments, const T* w, int64_t n, int64_t gated, float* gate) {
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

PATNET_CLONES void add_products(const float* moments, const float* w, int64_t n, int64_t gated, float* gate) {
  add_products_body(moments, w, n, gated, gate);
}

PATNET_CLONES void add_products(const float* moments, const c10::BFloat16* w, int64_t n, int64_t gated,
                                float* gate) {
  add_products_body(moments, w, n, gated, gate);
}

// scale[P:C] = hsig([mean, std] W + b) over the gated channels (two passes over the map for the statistics).
template <typename T>
void gate_scale(const T* x, const Map& m, const T* weight, const T* bias, float* scale) {
  const int64_t channels = m.channels, passed = m.passed, gated = channels - passed;
  std::vector<float> mean(channels, 0.0f), std_dev(channels, 0.0f);
  std::vector<double> sums(channels, 0.0);
  column_sums(x, m, mean.data(), false, sums.data());
  for (int64_t c = passed; c < channels; ++c) mean[c] = static_cast<float>(sums[c] / m.rows);
  column_sums(x, m, mean.data(), true, sums.data());
  const double bessel = m.rows > 1 ? static_cast<double>(m.rows) / static_cast<double>(m.rows - 1) : 1.0;
  for (int64_t c = passed; c < channels; ++c) std_dev[c] = static_cast<float>(std::sqrt(sums[c] / m.rows * bessel));
  float* gate = scale + passed;
  for (int64_t o = 0; o < gated; ++o) gate[o] = static_cast<float>(bias[o]);
  add_products(mean.data() + passed, weight + passed * gated, gated, gated, gate);
  add_products(std_dev.data() + passed, weight + (channels + passed) * gated, gated, gated, gate);
  for (int64_t o = 0; o < gated; ++o) gate[o] = std::min(std::max(gate[o] + 3.0f, 0.0f), 6.0f) / 6.0f;
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

// out[r] = [conv[r], x_u[r] * scale] for rows [first, last): whole-row tiles of x * scale, then conv's P values
// over the row's start (an element loop: cpu_kernels builds with -fno-tree-loop-distribute-patterns, so no memcpy
// call per short row).
template <typename T>
PATNET_INLINE void write_rows_body(const T* x, const T* conv, const float* scale, const Map& m, int64_t first,
                                   int64_t last, T* out) {
  const int64_t channels = m.channels, passed = m.passed;
  for (int64_t r = first; r < last; ++r) {
    const T* in = x + r * channels;
    T* row = out + r * channels;
    int64_t c = 0;
    for (; c + kTile <= channels; c += kTile) store_tile(row + c, load_tile(in + c) * load_tile(scale + c));
    for (; c < channels; ++c) row[c] = static_cast<T>(static_cast<float>(in[c]) * scale[c]);
    copy_values(conv + r * passed, passed, row);
  }
}

PATNET_CLONES void write_rows(const float* x, const float* conv, const float* scale, const Map& m, int64_t first,
                              int64_t last, float* out) {
  write_rows_body(x, conv, scale, m, first, last, out);
}

PATNET_CLONES void write_rows(const c10::BFloat16* x, const c10::BFloat16* conv, const float* scale, const Map& m,
                              int64_t first, int64_t last, c10::BFloat16* out) {
  write_rows_body(x, conv, scale, m, first, last, out);
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
    const T* mixed = conv.const_data_ptr<T>() + n * m.rows * m.passed;
    T* into = out.mutable_data_ptr<T>() + n * m.rows * m.channels;
    at::parallel_for(0, m.rows, std::max<int64_t>(1, kGrain / m.channels), [&](int64_t first, int64_t last) {
      write_rows(sample, mixed, scale.data(), m, first, last, into);
    });
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
