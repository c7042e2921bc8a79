// PAT_sf's attention on CPU for short sequences (patnet.layers.cpu_kernels builds and loads it):
//   out[b, i, h] = softmax_j(q[b, i, h] . k[b, j, h] + bias[h, i, j]) v[b, j, h]
// for the deploy form's qkv rows (B * L, 3 * C), float32 or bfloat16 (each row [q, k, v], each of those heads x
// head_dim, the scale already folded into q), a (1, heads, L, L) bias of either dtype, and the heads' outputs as
// rows (B * L, C), the layout the projection reads. Logits, softmax and sums are float32 for both dtypes. SDPA's
// CPU kernel is built for long sequences (blocks of 32 queries and 512 keys, per-call buffers): at PAT_sf's 49
// tokens it spends ten times its arithmetic. Here each head's products are register tiles of four rows by up to
// 64 columns: a loaded tile of the right operand serves four rows.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tiles.h"

namespace {

constexpr int64_t kRows = 4;      // rows of a register tile
constexpr int64_t kMaxTiles = 4;  // vector tiles across a register tile (4 x 4 accumulators)

PATNET_INLINE int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// c[r, 0:16 * kTiles] = sum over k < depth of a[r, k] * b[k, 0:16 * kTiles] for kRows rows of a.
template <int kTiles>
PATNET_INLINE void tile_products(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t depth, float* c,
                                 int64_t ldc) {
  Floats acc[kRows][kTiles] = {};
  for (int64_t k = 0; k < depth; ++k) {
    Floats right[kTiles];
    for (int t = 0; t < kTiles; ++t) right[t] = load_tile(b + k * ldb + t * kTile);
    for (int r = 0; r < kRows; ++r) {
      const float left = a[r * lda + k];
      for (int t = 0; t < kTiles; ++t) acc[r][t] += left * right[t];
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int t = 0; t < kTiles; ++t) store_tile(c + r * ldc + t * kTile, acc[r][t]);
  }
}

// c = a b for a (rows, depth) with rows a multiple of kRows and b (depth, cols) with cols a multiple of kTile.
PATNET_INLINE void products(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t rows, int64_t depth,
                            int64_t cols, float* c, int64_t ldc) {
  for (int64_t r = 0; r < rows; r += kRows) {
    for (int64_t col = 0; col < cols;) {
      const int64_t tiles = std::min(kMaxTiles, (cols - col) / kTile);
      const float* left = a + r * lda;
      float* into = c + r * ldc + col;
      switch (tiles) {
        case 4: tile_products<4>(left, lda, b + col, ldb, depth, into, ldc); break;
        case 3: tile_products<3>(left, lda, b + col, ldb, depth, into, ldc); break;
        case 2: tile_products<2>(left, lda, b + col, ldb, depth, into, ldc); break;
        default: tile_products<1>(left, lda, b + col, ldb, depth, into, ldc); break;
      }
      col += tiles * kTile;
    }
  }
}

// The largest and the sum of a tile's 16 values, halving the tile four times.
PATNET_INLINE float largest(Floats v) {
  Floats w = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  v = v > w ? v : w;
  w = __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
  v = v > w ? v : w;
  w = __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  v = v > w ? v : w;
  w = __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
  v = v > w ? v : w;
  return v[0];
}

PATNET_INLINE float total(Floats v) {
  v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
  v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
  v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  v += __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
  return v[0];
}

// Each row i < tokens of s (width cols, a multiple of kTile; columns from tokens on are padding) becomes
// softmax(s[i, :tokens] + bias[i]) with zeros in the padding.
template <typename U>
PATNET_INLINE void softmax_rows(float* s, int64_t cols, const U* bias, int64_t tokens) {
  const int64_t whole = tokens / kTile * kTile;
  for (int64_t i = 0; i < tokens; ++i) {
    float* row = s + i * cols;
    const U* add = bias + i * tokens;
    for (int64_t j = 0; j < whole; j += kTile) store_tile(row + j, load_tile(row + j) + load_tile(add + j));
    if (whole < cols) {  // the tile with the last tokens and padding, built in registers (no scalar stores)
      Floats tail = {};
      for (int64_t j = whole; j < tokens; ++j) tail[j - whole] = static_cast<float>(add[j]);
      const Ints lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
      tail = lane < static_cast<int32_t>(tokens - whole) ? load_tile(row + whole) + tail : Floats{} - 1e30f;
      store_tile(row + whole, tail);
    }
    for (int64_t j = whole + kTile; j < cols; j += kTile) store_tile(row + j, Floats{} - 1e30f);
    Floats top = load_tile(row);
    for (int64_t j = kTile; j < cols; j += kTile) {
      const Floats t = load_tile(row + j);
      top = t > top ? t : top;
    }
    const float most = largest(top);
    Floats sums = {};
    for (int64_t j = 0; j < cols; j += kTile) {
      const Floats e = exp_tile(load_tile(row + j) - most);
      store_tile(row + j, e);
      sums += e;
    }
    const float inverse = 1.0f / total(sums);
    for (int64_t j = 0; j < cols; j += kTile) store_tile(row + j, load_tile(row + j) * inverse);
  }
}

// to[0:n] = from[0:n] as floats.
template <typename T>
PATNET_INLINE void to_floats(const T* from, int64_t n, float* to) {
  int64_t d = 0;
  for (; d + kTile <= n; d += kTile) store_tile(to + d, load_tile(from + d));
  for (; d < n; ++d) to[d] = static_cast<float>(from[d]);
}

struct Shape {
  int64_t tokens;  // L
  int64_t heads;
  int64_t dim;     // head_dim
};

// Float buffers of one head: q rows, k transposed, v rows, logits, outputs, padded to whole tiles.
struct Buffers {
  int64_t rows, keys, width;  // L rounded up to kRows, to kTile; head_dim rounded up to kTile
  std::vector<float> q, kt, v, s, o;

  explicit Buffers(const Shape& m)
      : rows(round_up(m.tokens, kRows)), keys(round_up(m.tokens, kTile)), width(round_up(m.dim, kTile)),
        q(rows * m.dim, 0.0f), kt(m.dim * keys, 0.0f), v(m.tokens * width, 0.0f), s(rows * keys, 0.0f),
        o(rows * width, 0.0f) {}
};

// Head h of sample b: its q, k and v from the qkv rows into b's float buffers, attention, the output rows out.
template <typename T, typename U>
PATNET_INLINE void attend_head_body(const T* qkv, const U* bias, const Shape& m, int64_t sample, int64_t head,
                                    Buffers& b, T* out) {
  const int64_t channels = m.heads * m.dim, stride = 3 * channels, offset = head * m.dim;
  const T* first = qkv + sample * m.tokens * stride;
  for (int64_t i = 0; i < m.tokens; ++i) {
    const T* row = first + i * stride + offset;
    to_floats(row, m.dim, b.q.data() + i * m.dim);
    to_floats(row + 2 * channels, m.dim, b.v.data() + i * b.width);
  }
  for (int64_t d = 0; d < m.dim; ++d) {
    const T* column = first + offset + channels + d;
    float* into = b.kt.data() + d * b.keys;
    for (int64_t i = 0; i < m.tokens; ++i) into[i] = static_cast<float>(column[i * stride]);
  }
  products(b.q.data(), m.dim, b.kt.data(), b.keys, b.rows, m.dim, b.keys, b.s.data(), b.keys);
  softmax_rows(b.s.data(), b.keys, bias + head * m.tokens * m.tokens, m.tokens);
  products(b.s.data(), b.keys, b.v.data(), b.width, b.rows, m.tokens, b.width, b.o.data(), b.width);
  T* into = out + sample * m.tokens * channels + offset;
  for (int64_t i = 0; i < m.tokens; ++i) {
    for (int64_t d = 0; d < m.dim; ++d) into[i * channels + d] = static_cast<T>(b.o[i * b.width + d]);
  }
}

using BF16 = c10::BFloat16;

// The bias may be float32 with bfloat16 qkv rows (autocast inside a compiled graph) or the other way round.
#define PATNET_ATTEND_HEAD(T, U)                                                                                   \
  PATNET_CLONES void attend_head(const T* qkv, const U* bias, const Shape& m, int64_t sample, int64_t head,        \
                                 Buffers& b, T* out) {                                                             \
    attend_head_body(qkv, bias, m, sample, head, b, out);                                                          \
  }
PATNET_ATTEND_HEAD(float, float)
PATNET_ATTEND_HEAD(float, BF16)
PATNET_ATTEND_HEAD(BF16, BF16)
PATNET_ATTEND_HEAD(BF16, float)
#undef PATNET_ATTEND_HEAD

// Heads shared among threads when a call has at least this many multiply-adds (ATen's grain is 32768 elements).
constexpr int64_t kParallelMacs = 1 << 18;

template <typename T, typename U>
void attend(const at::Tensor& qkv, const at::Tensor& bias, const Shape& m, at::Tensor& out) {
  const int64_t tasks = qkv.size(0) / m.tokens * m.heads;
  const int64_t macs = 2 * m.tokens * m.tokens * m.dim;  // per head
  const int64_t grain = std::max<int64_t>(1, kParallelMacs / std::max<int64_t>(1, macs));
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    Buffers buffers(m);
    for (int64_t task = begin; task < end; ++task) {
      attend_head(qkv.const_data_ptr<T>(), bias.const_data_ptr<U>(), m, task / m.heads, task % m.heads, buffers,
                  out.mutable_data_ptr<T>());
    }
  });
}

template <typename T>
void attend_with_bias(const at::Tensor& qkv, const at::Tensor& bias, const Shape& m, at::Tensor& out) {
  if (bias.scalar_type() == at::kFloat) {
    attend<T, float>(qkv, bias, m, out);
  } else {
    attend<T, BF16>(qkv, bias, m, out);
  }
}

void check_inputs(const at::Tensor& qkv, const at::Tensor& bias, int64_t heads) {
  TORCH_CHECK(heads > 0, "small_attention: num_heads must be positive");
  TORCH_CHECK(qkv.dim() == 2 && qkv.is_contiguous() && qkv.size(1) % (3 * heads) == 0,
              "small_attention: qkv must be contiguous (B * L, 3 * C) rows with C a multiple of num_heads");
  TORCH_CHECK(bias.dim() == 4 && bias.is_contiguous() && bias.size(0) == 1 && bias.size(1) == heads &&
                  bias.size(2) == bias.size(3),
              "small_attention: bias must be a contiguous (1, num_heads, L, L) tensor");
  TORCH_CHECK(bias.size(2) > 0 && qkv.size(0) % bias.size(2) == 0,
              "small_attention: qkv's rows must be whole samples of L tokens");
  for (const at::Tensor* t : {&qkv, &bias}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat || t->scalar_type() == at::kBFloat16,
                "small_attention: qkv and bias must be float32 or bfloat16");
  }
}

at::Tensor small_attention(const at::Tensor& qkv, const at::Tensor& bias, int64_t num_heads) {
  check_inputs(qkv, bias, num_heads);
  const int64_t channels = qkv.size(1) / 3;
  const Shape m{bias.size(2), num_heads, channels / num_heads};
  at::Tensor out = at::empty({qkv.size(0), channels}, qkv.options());
  if (qkv.scalar_type() == at::kFloat) {
    attend_with_bias<float>(qkv, bias, m, out);
  } else {
    attend_with_bias<BF16>(qkv, bias, m, out);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(patnet, m) {
  m.def("small_attention(Tensor qkv, Tensor bias, int num_heads) -> Tensor");
}

TORCH_LIBRARY_IMPL(patnet, CPU, m) {
  m.impl("small_attention", &small_attention);
}
