// The deploy form's bfloat16 matrix products on CPUs with AVX512-BF16 (patnet.layers.cpu_kernels builds and loads it):
//   out = act(rows @ W + bias) [+ residual]
// for rows (M, K) with unit column stride, W (K, N) packed by patnet.layers.cpu_kernels.pack_pairs (bf16_dot.h),
// bias (N) of either float dtype, act none, relu, gelu (erf) or gelu_tanh, and an optional residual (M, N) added
// after the activation; out is a contiguous (M, N) bfloat16 matrix. Products of bfloat16 pairs accumulate in
// float32 from the bias on; activation and residual are float32; one rounding to bfloat16. oneDNN's linear spends
// about 12 us a call beside its arithmetic, a tenth of an MLP product on a 7x7 map.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "bf16_dot.h"
#include "tiles.h"

namespace {

enum class Activation { kNone, kRelu, kGelu, kGeluTanh };

constexpr int64_t kColumnBlock = 64;  // output columns a block computes (4 vectors)
constexpr int64_t kRowChunk = 48;     // rows a thread's work item holds (whole 6- and 8-row blocks)
constexpr int64_t kGrainMacs = 1 << 18;

struct Product {
  int64_t rows, pairs, columns, row_stride, residual_stride;
  Activation activation;
};

// erf(x) by Abramowitz and Stegun 7.1.26 (absolute error under 1.5e-7, far below bfloat16's rounding).
PATNET_INLINE Floats erf_tile(Floats x) {
  const Floats a = x < 0.0f ? -x : x;
  const Floats t = 1.0f / (1.0f + 0.3275911f * a);
  Floats y = Floats{} + 1.061405429f;
  y = y * t - 1.453152027f;
  y = y * t + 1.421413741f;
  y = y * t - 0.284496736f;
  y = y * t + 0.254829592f;
  y = 1.0f - y * t * exp_tile(-a * a);
  return x < 0.0f ? -y : y;
}

PATNET_INLINE Floats activated(Floats x, Activation activation) {
  switch (activation) {
    case Activation::kRelu: return x < 0.0f ? Floats{} : x;  // NaN stays NaN, as torch.relu
    case Activation::kGelu: return 0.5f * x * (1.0f + erf_tile(x * 0.70710678118654752f));
    case Activation::kGeluTanh: {  // tanh(z) = 1 - 2 / (exp(2z) + 1)
      const Floats z = 0.79788456080286536f * (x + 0.044715f * x * x * x);
      return 0.5f * x * (2.0f - 2.0f / (exp_tile(2.0f * z) + 1.0f));
    }
    default: return x;
  }
}

#if PATNET_HAS_BF16_DOT
// kRows rows from `row` on, kVectors x 16 columns from `column` on: accumulators in registers, each loaded weight
// vector serving every row.
template <int kRows, int kVectors>
PATNET_BF16_DOT inline void block(const uint16_t* rows, const uint16_t* weight, const float* bias,
                                  const uint16_t* residual, const Product& p, int64_t row, int64_t column,
                                  uint16_t* out) {
  __m512 acc[kRows][kVectors];
  for (int v = 0; v < kVectors; ++v) {
    const __m512 start = _mm512_loadu_ps(bias + column + v * 16);
    for (int i = 0; i < kRows; ++i) acc[i][v] = start;
  }
  const uint16_t* first = rows + row * p.row_stride;
  const uint16_t* panel = panel_of(weight, p.pairs, column);
  for (int64_t k = 0; k < p.pairs; ++k) {
    __m512bh weights[kVectors];
    for (int v = 0; v < kVectors; ++v) weights[v] = load_pairs(panel, k, v);
    for (int i = 0; i < kRows; ++i) {
      const __m512bh inputs = broadcast_pair(first + i * p.row_stride + 2 * k);
      for (int v = 0; v < kVectors; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], inputs, weights[v]);
    }
  }
  for (int i = 0; i < kRows; ++i) {
    for (int v = 0; v < kVectors; ++v) {
      const int64_t col = column + v * 16, count = p.columns - col;  // store_bf16 and load_bf16 take up to 16
      Floats x = activated(acc[i][v], p.activation);
      if (residual != nullptr) x += load_bf16(residual + (row + i) * p.residual_stride + col, count);
      store_bf16(out + (row + i) * p.columns + col, x, count);
    }
  }
}

template <int kVectors>
PATNET_BF16_DOT void rows_of_block(const uint16_t* rows, const uint16_t* weight, const float* bias,
                                   const uint16_t* residual, const Product& p, int64_t first, int64_t last,
                                   int64_t column, uint16_t* out) {
  constexpr int kRows = kVectors <= 2 ? 8 : 6;  // at most 24 accumulators beside the weights
  int64_t row = first;
  for (; row + kRows <= last; row += kRows) block<kRows, kVectors>(rows, weight, bias, residual, p, row, column, out);
  switch (last - row) {
    case 7: block<7, kVectors>(rows, weight, bias, residual, p, row, column, out); break;
    case 6: block<6, kVectors>(rows, weight, bias, residual, p, row, column, out); break;
    case 5: block<5, kVectors>(rows, weight, bias, residual, p, row, column, out); break;
    case 4: block<4, kVectors>(rows, weight, bias, residual, p, row, column, out); break;
    case 3: block<3, kVectors>(rows, weight, bias, residual, p, row, column, out); break;
    case 2: block<2, kVectors>(rows, weight, bias, residual, p, row, column, out); break;
    case 1: block<1, kVectors>(rows, weight, bias, residual, p, row, column, out); break;
    default: break;
  }
}

PATNET_BF16_DOT void work_item(const uint16_t* rows, const uint16_t* weight, const float* bias,
                               const uint16_t* residual, const Product& p, int64_t first, int64_t last,
                               int64_t column, uint16_t* out) {
  switch (std::min<int64_t>(kColumnBlock / 16, (p.columns - column + 15) / 16)) {
    case 1: rows_of_block<1>(rows, weight, bias, residual, p, first, last, column, out); break;
    case 2: rows_of_block<2>(rows, weight, bias, residual, p, first, last, column, out); break;
    case 3: rows_of_block<3>(rows, weight, bias, residual, p, first, last, column, out); break;
    default: rows_of_block<4>(rows, weight, bias, residual, p, first, last, column, out); break;
  }
}
#endif

Activation activation_named(c10::string_view name) {
  if (name == "none") return Activation::kNone;
  if (name == "relu") return Activation::kRelu;
  if (name == "gelu") return Activation::kGelu;
  TORCH_CHECK(name == "gelu_tanh", "bf16_linear: activation must be none, relu, gelu or gelu_tanh, not ", name);
  return Activation::kGeluTanh;
}

void check_inputs(const at::Tensor& rows, const at::Tensor& packed, const at::Tensor& bias, int64_t columns,
                  const c10::optional<at::Tensor>& residual) {
  TORCH_CHECK(cpu_has_bf16_dot(), "bf16_linear: this CPU lacks AVX512-BF16; use torch.addmm");
  TORCH_CHECK(rows.dim() == 2 && rows.stride(1) == 1 && rows.scalar_type() == at::kBFloat16 && rows.size(1) % 2 == 0,
              "bf16_linear: rows must be a bfloat16 (M, K) matrix with unit column stride and K even");
  TORCH_CHECK(columns > 0, "bf16_linear: out_features must be positive");
  TORCH_CHECK(packed.scalar_type() == at::kBFloat16 && packed.is_contiguous() &&
                  packed.dim() == 4 && packed.size(0) == panels_for(columns) && packed.size(1) == rows.size(1) / 2 &&
                  packed.size(2) == kPanelOutputs && packed.size(3) == 2,
              "bf16_linear: the weight must be packed by patnet.layers.cpu_kernels.pack_pairs: a contiguous bfloat16 "
              "(N / 64 rounded up, K / 2, 64, 2) tensor");
  TORCH_CHECK(bias.dim() == 1 && bias.numel() == columns && bias.is_contiguous() &&
                  (bias.scalar_type() == at::kBFloat16 || bias.scalar_type() == at::kFloat),
              "bf16_linear: bias must be a contiguous vector of out_features float32 or bfloat16 values");
  if (residual.has_value()) {
    const at::Tensor& r = *residual;
    TORCH_CHECK(r.dim() == 2 && r.size(0) == rows.size(0) && r.size(1) == columns && r.stride(1) == 1 &&
                    r.scalar_type() == at::kBFloat16,
                "bf16_linear: residual must be a bfloat16 (M, out_features) matrix with unit column stride");
  }
}

at::Tensor bf16_linear(const at::Tensor& rows, const at::Tensor& packed, const at::Tensor& bias, int64_t out_features,
                       c10::string_view activation, const c10::optional<at::Tensor>& residual) {
  const Activation act = activation_named(activation);
  check_inputs(rows, packed, bias, out_features, residual);
  at::Tensor out = at::empty({rows.size(0), out_features}, rows.options());
#if PATNET_HAS_BF16_DOT
  const Product p{rows.size(0), rows.size(1) / 2, out_features, rows.stride(0),
                  residual.has_value() ? residual->stride(0) : 0, act};
  std::vector<float> bias_floats(panels_for(out_features) * kPanelOutputs, 0.0f);  // a block reads whole vectors
  if (bias.scalar_type() == at::kFloat) {
    std::memcpy(bias_floats.data(), bias.const_data_ptr<float>(), out_features * sizeof(float));
  } else {
    const c10::BFloat16* values = bias.const_data_ptr<c10::BFloat16>();
    for (int64_t j = 0; j < out_features; ++j) bias_floats[j] = static_cast<float>(values[j]);
  }
  const auto* input = reinterpret_cast<const uint16_t*>(rows.const_data_ptr<c10::BFloat16>());
  const auto* weight = reinterpret_cast<const uint16_t*>(packed.const_data_ptr<c10::BFloat16>());
  const auto* added = residual.has_value() ? reinterpret_cast<const uint16_t*>(residual->const_data_ptr<c10::BFloat16>())
                                           : nullptr;
  auto* output = reinterpret_cast<uint16_t*>(out.mutable_data_ptr<c10::BFloat16>());
  const int64_t chunks = (p.rows + kRowChunk - 1) / kRowChunk, blocks = (p.columns + kColumnBlock - 1) / kColumnBlock;
  const int64_t item_macs = std::max<int64_t>(1, std::min(kRowChunk, p.rows) * p.pairs * 2 * kColumnBlock);
  // Column blocks outermost while the rows are fewer than the blocks (a thread keeps its weight panels), else row
  // chunks (a thread reads its rows once and writes whole output rows).
  const bool columns_outer = chunks < blocks;
  at::parallel_for(0, blocks * chunks, std::max<int64_t>(1, kGrainMacs / item_macs), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t block = columns_outer ? item / chunks : item % blocks;
      const int64_t chunk = columns_outer ? item % chunks : item / blocks;
      const int64_t column = block * kColumnBlock, first = chunk * kRowChunk;
      work_item(input, weight, bias_floats.data(), added, p, first, std::min(first + kRowChunk, p.rows), column,
                output);
    }
  });
#endif
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(patnet, m) {
  m.def("bf16_linear(Tensor rows, Tensor packed, Tensor bias, int out_features, str activation, Tensor? residual) "
        "-> Tensor");
}

TORCH_LIBRARY_IMPL(patnet, CPU, m) {
  m.impl("bf16_linear", &bf16_linear);
}
