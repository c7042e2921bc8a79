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
#include <vector>

namespace {

// The loops below are compiled for AVX-512, AVX2 and plain x86-64, chosen when the library loads.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define PATNET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PATNET_CLONES
#endif

// Rows are summed in float in blocks of this many, each block's sums added to double accumulators: the inner
// loop vectorises and the rounding stays that of a 64-term float sum.
constexpr int64_t kBlockRows = 64;

struct Map {
  int64_t rows;      // H * W
  int64_t channels;  // C: the row stride of x and out
  int64_t passed;    // P: conv's channels, the row stride of conv
};

template <typename T>
inline void add_block_sums(const T* x, const Map& m, int64_t begin, int64_t end, const float* centre, float* block,
                           double* sums) {
  const int64_t gated = m.channels - m.passed;
  std::fill(block, block + gated, 0.0f);
  for (int64_t r = begin; r < end; ++r) {
    const T* row = x + r * m.channels + m.passed;
    if (centre == nullptr) {
      for (int64_t c = 0; c < gated; ++c) block[c] += static_cast<float>(row[c]);
    } else {
      for (int64_t c = 0; c < gated; ++c) {
        const float d = static_cast<float>(row[c]) - centre[c];
        block[c] += d * d;
      }
    }
  }
  for (int64_t c = 0; c < gated; ++c) sums[c] += block[c];
}

// sums[c] = sum over rows of x_u[r, c] (centre null) or of (x_u[r, c] - centre[c])^2.
template <typename T>
inline void column_sums_body(const T* x, const Map& m, const float* centre, float* block, double* sums) {
  std::fill(sums, sums + (m.channels - m.passed), 0.0);
  for (int64_t begin = 0; begin < m.rows; begin += kBlockRows) {
    add_block_sums(x, m, begin, std::min(begin + kBlockRows, m.rows), centre, block, sums);
  }
}

PATNET_CLONES void column_sums(const float* x, const Map& m, const float* centre, float* block, double* sums) {
  column_sums_body(x, m, centre, block, sums);
}

PATNET_CLONES void column_sums(const c10::BFloat16* x, const Map& m, const float* centre, float* block,
                               double* sums) {
  column_sums_body(x, m, centre, block, sums);
}

// out[r] = [conv[r], x_u[r] * scale]
template <typename T>
inline void write_rows_body(const T* x, const T* conv, const float* scale, const Map& m, T* out) {
  const int64_t gated = m.channels - m.passed;
  for (int64_t r = 0; r < m.rows; ++r) {
    const T* in = x + r * m.channels + m.passed;
    T* row = out + r * m.channels;
    std::copy(conv + r * m.passed, conv + (r + 1) * m.passed, row);
    for (int64_t c = 0; c < gated; ++c) row[m.passed + c] = static_cast<T>(static_cast<float>(in[c]) * scale[c]);
  }
}

PATNET_CLONES void write_rows(const float* x, const float* conv, const float* scale, const Map& m, float* out) {
  write_rows_body(x, conv, scale, m, out);
}

PATNET_CLONES void write_rows(const c10::BFloat16* x, const c10::BFloat16* conv, const float* scale, const Map& m,
                              c10::BFloat16* out) {
  write_rows_body(x, conv, scale, m, out);
}

// scale = hsig([mean, std] W + b) over the gated channels, the statistics from column_sums' two passes.
template <typename T>
void gate_scale(const T* x, const Map& m, const T* weight, const T* bias, float* scale) {
  const int64_t gated = m.channels - m.passed;
  std::vector<float> block(gated), mean(gated);
  std::vector<double> sums(gated);
  column_sums(x, m, nullptr, block.data(), sums.data());
  for (int64_t c = 0; c < gated; ++c) mean[c] = static_cast<float>(sums[c] / m.rows);
  column_sums(x, m, mean.data(), block.data(), sums.data());
  const double bessel = m.rows > 1 ? static_cast<double>(m.rows) / static_cast<double>(m.rows - 1) : 1.0;
  for (int64_t o = 0; o < gated; ++o) scale[o] = static_cast<float>(bias[o]);
  for (int64_t c = 0; c < gated; ++c) {
    const float moments[2] = {mean[c], static_cast<float>(std::sqrt(sums[c] / m.rows * bessel))};
    for (int64_t k = 0; k < 2; ++k) {
      const T* w = weight + (k * m.channels + m.passed + c) * gated;
      for (int64_t o = 0; o < gated; ++o) scale[o] += moments[k] * static_cast<float>(w[o]);
    }
  }
  for (int64_t o = 0; o < gated; ++o) scale[o] = std::min(std::max(scale[o] + 3.0f, 0.0f), 6.0f) / 6.0f;
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
  std::vector<float> scale(m.channels - m.passed);
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
