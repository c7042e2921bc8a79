// The partial mixers' 3x3 conv in bfloat16 on CPUs with AVX512-BF16 (patnet.layers.cpu_kernels builds and loads it):
//   out[b, o, h, w] = sum over c, dy, dx of x[b, c, h + dy - 1, w + dx - 1] * weight[o, c, dy, dx]
// zero padding 1, stride 1, no bias, for a channels-innermost x (a channels-last map or a channel slice of one)
// and a weight packed by patnet.layers.cpu_kernels.pack_for_partial_conv: the (9 C_in, C_out) matrix of its taps and
// input channels (tap-major) in the panel layout of bf16_dot.h, (C_out / 64 rounded up, 9 C_in / 2, 64, 2).
// Products of bfloat16 pairs accumulate in float32 and round to bfloat16 once. oneDNN's conv spends 12-18 us of fixed cost a call (building its
// descriptors) beside its arithmetic: more than the arithmetic on PATNet's small partial maps.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "bf16_dot.h"

namespace {

constexpr int64_t kMaxInChannels = 1024;  // the taps outside the map read this many zeros
constexpr int64_t kOutBlock = 64;         // output channels a pass over the input computes (4 vectors)
constexpr int64_t kGrainMacs = 1 << 19;   // multiply-adds a thread takes at least

struct Geometry {
  int64_t height, width, pairs, out_channels;
  int64_t row_stride, pixel_stride;  // x's strides in elements
};

#if PATNET_HAS_BF16_DOT
alignas(64) const uint16_t kZeros[kMaxInChannels] = {};

// kPixels output pixels from (h, w) on, kVectors x 16 output channels from first_out on: accumulators in registers,
// each loaded weight vector serving every pixel.
template <int kPixels, int kVectors>
PATNET_BF16_DOT inline void pixel_block(const uint16_t* x, const uint16_t* weight, const Geometry& g, int64_t h,
                                        int64_t w, int64_t first_out, uint16_t* out_row) {
  __m512 acc[kPixels][kVectors];
  for (int i = 0; i < kPixels; ++i)
    for (int v = 0; v < kVectors; ++v) acc[i][v] = _mm512_setzero_ps();
  const uint16_t* panel = panel_of(weight, 9 * g.pairs, first_out);
  for (int dy = 0; dy < 3; ++dy) {
    const int64_t row = h + dy - 1;
    if (row < 0 || row >= g.height) continue;
    for (int dx = 0; dx < 3; ++dx) {
      const uint16_t* in[kPixels];
      for (int i = 0; i < kPixels; ++i) {
        const int64_t col = w + i + dx - 1;
        in[i] = (col < 0 || col >= g.width) ? kZeros : x + row * g.row_stride + col * g.pixel_stride;
      }
      const int64_t tap = (dy * 3 + dx) * g.pairs;  // the tap's first pair in the panel
      for (int64_t p = 0; p < g.pairs; ++p) {
        __m512bh weights[kVectors];
        for (int v = 0; v < kVectors; ++v) weights[v] = load_pairs(panel, tap + p, v);
        for (int i = 0; i < kPixels; ++i) {
          const __m512bh inputs = broadcast_pair(in[i] + 2 * p);
          for (int v = 0; v < kVectors; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], inputs, weights[v]);
        }
      }
    }
  }
  for (int i = 0; i < kPixels; ++i) {
    uint16_t* o = out_row + (w + i) * g.out_channels + first_out;
    for (int v = 0; v < kVectors; ++v) store_bf16(o + v * 16, acc[i][v], g.out_channels - first_out - v * 16);
  }
}

// One output row's kVectors x 16 channels from first_out on, in blocks of pixels (8 with up to 2 vectors, 6 with
// more: at most 24 accumulators and 4 weight vectors in the 32 registers).
template <int kVectors>
PATNET_BF16_DOT void row_block(const uint16_t* x, const uint16_t* weight, const Geometry& g, int64_t h,
                               int64_t first_out, uint16_t* out_row) {
  constexpr int kPixels = kVectors <= 2 ? 8 : 6;
  int64_t w = 0;
  for (; w + kPixels <= g.width; w += kPixels) pixel_block<kPixels, kVectors>(x, weight, g, h, w, first_out, out_row);
  switch (g.width - w) {
    case 7: pixel_block<7, kVectors>(x, weight, g, h, w, first_out, out_row); break;
    case 6: pixel_block<6, kVectors>(x, weight, g, h, w, first_out, out_row); break;
    case 5: pixel_block<5, kVectors>(x, weight, g, h, w, first_out, out_row); break;
    case 4: pixel_block<4, kVectors>(x, weight, g, h, w, first_out, out_row); break;
    case 3: pixel_block<3, kVectors>(x, weight, g, h, w, first_out, out_row); break;
    case 2: pixel_block<2, kVectors>(x, weight, g, h, w, first_out, out_row); break;
    case 1: pixel_block<1, kVectors>(x, weight, g, h, w, first_out, out_row); break;
    default: break;
  }
}

PATNET_BF16_DOT void conv_row(const uint16_t* x, const uint16_t* weight, const Geometry& g, int64_t h,
                              uint16_t* out_row) {
  for (int64_t first_out = 0; first_out < g.out_channels; first_out += kOutBlock) {
    switch (std::min<int64_t>(kOutBlock / 16, (g.out_channels - first_out + 15) / 16)) {
      case 1: row_block<1>(x, weight, g, h, first_out, out_row); break;
      case 2: row_block<2>(x, weight, g, h, first_out, out_row); break;
      case 3: row_block<3>(x, weight, g, h, first_out, out_row); break;
      default: row_block<4>(x, weight, g, h, first_out, out_row); break;
    }
  }
}
#endif

void check_inputs(const at::Tensor& x, const at::Tensor& packed, int64_t out_channels) {
  TORCH_CHECK(cpu_has_bf16_dot(), "partial_conv3x3: this CPU lacks AVX512-BF16; use F.conv2d");
  TORCH_CHECK(x.dim() == 4 && x.stride(1) == 1 && x.scalar_type() == at::kBFloat16,
              "partial_conv3x3: x must be a bfloat16 (B, C, H, W) map with channels innermost (channels-last)");
  const int64_t in_channels = x.size(1);
  TORCH_CHECK(in_channels > 0 && in_channels % 2 == 0 && in_channels <= kMaxInChannels,
              "partial_conv3x3: x must have an even number of channels, at most ", kMaxInChannels);
  TORCH_CHECK(out_channels > 0, "partial_conv3x3: out_channels must be positive");
  TORCH_CHECK(packed.scalar_type() == at::kBFloat16 && packed.is_contiguous() && packed.dim() == 4 &&
                  packed.size(0) == panels_for(out_channels) && packed.size(1) == 9 * in_channels / 2 &&
                  packed.size(2) == kPanelOutputs && packed.size(3) == 2,
              "partial_conv3x3: the weight must be packed by patnet.layers.cpu_kernels.pack_for_partial_conv: a "
              "contiguous bfloat16 (C_out / 64 rounded up, 9 C_in / 2, 64, 2) tensor");
}

at::Tensor partial_conv3x3(const at::Tensor& x, const at::Tensor& packed, int64_t out_channels) {
  check_inputs(x, packed, out_channels);
  const int64_t batch = x.size(0), height = x.size(2), width = x.size(3);
  at::Tensor out = at::empty({batch, out_channels, height, width},
                             x.options().memory_format(at::MemoryFormat::ChannelsLast));
#if PATNET_HAS_BF16_DOT
  const Geometry g{height, width, x.size(1) / 2, out_channels, x.stride(2), x.stride(3)};
  const auto* input = reinterpret_cast<const uint16_t*>(x.const_data_ptr<c10::BFloat16>());
  const auto* weight = reinterpret_cast<const uint16_t*>(packed.const_data_ptr<c10::BFloat16>());
  auto* output = reinterpret_cast<uint16_t*>(out.mutable_data_ptr<c10::BFloat16>());
  const int64_t row_macs = std::max<int64_t>(1, width * x.size(1) * 9 * out_channels);
  at::parallel_for(0, batch * height, std::max<int64_t>(1, kGrainMacs / row_macs), [&](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) {
      conv_row(input + (r / height) * x.stride(0), weight, g, r % height, output + r * width * out_channels);
    }
  });
#endif
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(patnet, m) {
  m.def("partial_conv3x3(Tensor x, Tensor packed, int out_channels) -> Tensor");
}

TORCH_LIBRARY_IMPL(patnet, CPU, m) {
  m.impl("partial_conv3x3", &partial_conv3x3);
}
