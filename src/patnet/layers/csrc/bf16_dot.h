// What the AVX512-BF16 kernels share (partial_conv.cpp, bf16_linear.cpp): the target attribute, the CPU check, the
// weight layout of the pairwise dot product and the masked loads and rounded stores of a row's 16 values.
//   packed[panel, pair, o, j] = W[2 * pair + j, 64 * panel + o] for a (K, N) matrix W (K even): panels of 64 outputs
//   (zeros past N), each pair of input rows' weights for a panel's outputs side by side, a panel's pairs one after
//   another, so a block of 64 outputs reads its weights as one stream (weights cold in the caches: measured, a
//   (K / 2, N, 2) layout striding over whole rows of N made the products of large matrices slower than oneDNN's).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define PATNET_HAS_BF16_DOT 1
#define PATNET_BF16_DOT __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#else
#define PATNET_HAS_BF16_DOT 0
#endif

namespace {

inline bool cpu_has_bf16_dot() {
#if PATNET_HAS_BF16_DOT
  return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

constexpr int64_t kPanelOutputs = 64;  // outputs of a weight panel: the kernels' blocks of 4 vectors

inline int64_t panels_for(int64_t outputs) { return (outputs + kPanelOutputs - 1) / kPanelOutputs; }

// The panel of outputs from `first_out` (a multiple of kPanelOutputs) on, in a packing of `pairs` pairs (read by
// load_pairs).
inline const uint16_t* panel_of(const uint16_t* packed, int64_t pairs, int64_t first_out) {
  return packed + first_out / kPanelOutputs * pairs * kPanelOutputs * 2;
}

#if PATNET_HAS_BF16_DOT
// A pair of bfloat16 inputs (one 32-bit word) in every lane: one operand of _mm512_dpbf16_ps.
PATNET_BF16_DOT inline __m512bh broadcast_pair(const uint16_t* pair) {
  int32_t word;
  std::memcpy(&word, pair, sizeof word);
  return (__m512bh)_mm512_set1_epi32(word);
}

// A panel's weights for pair `pair` of inputs and its 16 outputs from 16 * `vector` on: the other operand.
PATNET_BF16_DOT inline __m512bh load_pairs(const uint16_t* panel, int64_t pair, int vector) {
  return (__m512bh)_mm512_loadu_si512(panel + (pair * kPanelOutputs + vector * 16) * 2);
}

// The first `count` of 16 lanes.
inline __mmask16 first_lanes(int64_t count) {
  return count >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << count) - 1);
}

// The first `count` (up to 16) of a row's float outputs to bfloat16, rounded to nearest even.
PATNET_BF16_DOT inline void store_bf16(uint16_t* out, __m512 values, int64_t count) {
  _mm256_mask_storeu_epi16(out, first_lanes(count), (__m256i)_mm512_cvtneps_pbh(values));
}

// The first `count` (up to 16) bfloat16 values from `in` as floats, zeros in the other lanes.
PATNET_BF16_DOT inline __m512 load_bf16(const uint16_t* in, int64_t count) {
  const __m256i halves = _mm256_maskz_loadu_epi16(first_lanes(count), in);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(halves), 16));
}
#endif

}  // namespace
