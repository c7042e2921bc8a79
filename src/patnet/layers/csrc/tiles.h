// What patnet's CPU kernels share: vector tiles of 16 floats and their loads and stores, and the per-CPU clones.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>

namespace {

// The loops that use these are compiled for AVX-512, AVX2 and plain x86-64, chosen when the library loads.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define PATNET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PATNET_CLONES
#endif
// What the cloned loops call is inlined into each clone, so it is compiled for that clone's instructions too.
#define PATNET_INLINE inline __attribute__((always_inline))

// Floats in a tile: its accumulators stay in vector registers, where accumulators in memory would make every
// step wait for the previous one's store.
constexpr int64_t kTile = 16;

// kTile floats as one GCC/Clang vector: each clone of the loops runs it in its own registers (one zmm with
// AVX-512, two ymm with AVX2) instead of what the auto-vectoriser makes of short rows.
typedef float Floats __attribute__((vector_size(kTile * sizeof(float))));
typedef uint32_t Words __attribute__((vector_size(kTile * sizeof(uint32_t))));
typedef uint16_t Halves __attribute__((vector_size(kTile * sizeof(uint16_t))));
typedef int32_t Ints __attribute__((vector_size(kTile * sizeof(int32_t))));

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

// exp(x) per element: x = n ln2 + r with |r| <= ln2 / 2 (ln2 in two parts), exp(r) by Cephes' degree-7
// polynomial, 2^n built in the exponent bits; 0 below -87.3 (where float exp underflows), inf above 88.7.
PATNET_INLINE Floats exp_tile(Floats x) {
  const Ints under = x < -87.3f;
  x = under ? Floats{} - 87.3f : x;
  x = x > 88.7f ? Floats{} + 88.7f : x;
  const Floats half = x < 0.0f ? Floats{} - 0.5f : Floats{} + 0.5f;
  const Ints n = __builtin_convertvector(x * 1.44269504088896341f + half, Ints);
  const Floats nf = __builtin_convertvector(n, Floats);
  const Floats r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  Floats p = Floats{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const Ints bits = (n + 127) << 23;
  Floats scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return under ? Floats{} : p * scale;
}

}  // namespace
