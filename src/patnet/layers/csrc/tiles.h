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

}  // namespace
