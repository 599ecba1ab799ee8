// Decode attention over a flattened cache: one query token, `group` query heads per KV head,
// each KV head with its own length, split-K over long heads, f32 accumulation.
//
// Pass 1 (adakv_decode_partial_*): grid (splits, heads, ceil(group / MAX_GROUP)), 4 warps per
// block. Split s of head h takes a contiguous share of the head's tokens; every warp walks its
// keys with an online softmax for up to MAX_GROUP query heads at once (each key and value row is
// read once for the whole group), the warps are merged in shared memory, and the block writes one
// unnormalised partial per query head: max score, sum of exp(score - max), weighted value sum.
// Pass 2 (adakv_decode_combine_*): grid (heads, group), merges the splits of every query head
// exactly and writes the output row. A head of length 0 gets a zero row.
//
// Layout: q (heads * group, head_dim) with query head h * group + g attending KV head h;
// kv (2, rows, head_dim); head h's tokens at rows offsets[h] .. offsets[h] + lengths[h].
// head_dim is 32 * PER_LANE, one instance per PER_LANE in {1, 2, 4, 8} (head_dim 32, 64, 128,
// 256; kernel names end in _d<head_dim>), so registers and shared memory fit the head size.
#include "common.cuh"

#define MAX_GROUP 8
#define WARPS 4

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// exp(m - reference) with a partial that saw no key (m = -inf) weighing nothing.
__device__ __forceinline__ float rescale(float m, float reference) {
  return m == -INFINITY ? 0.f : __expf(m - reference);
}

template <typename T, int PER_LANE>
__device__ void decode_partial_impl(const T *q, const T *kv, const uint32_t *offsets,
                                    const uint32_t *lengths, uint32_t rows, uint32_t group,
                                    float scale, float *part_max, float *part_sum,
                                    float *part_acc) {
  constexpr uint32_t head_dim = 32 * PER_LANE;
  __shared__ float s_max[WARPS][MAX_GROUP];
  __shared__ float s_sum[WARPS][MAX_GROUP];
  __shared__ float s_acc[WARPS][MAX_GROUP][head_dim];

  const uint32_t split = blockIdx.x, splits = gridDim.x, h = blockIdx.y;
  const uint32_t g0 = blockIdx.z * MAX_GROUP;
  const uint32_t gn = min((uint32_t)MAX_GROUP, group - g0);
  const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  const uint32_t len = lengths[h];
  const uint32_t share = (len + splits - 1) / splits;
  const uint32_t start = min(len, split * share), end = min(len, start + share);

  // This lane's slice of every query of the group, pre-scaled.
  float qr[MAX_GROUP][PER_LANE];
#pragma unroll
  for (int g = 0; g < MAX_GROUP; ++g)
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j)
      qr[g][j] = g < gn
                     ? to_f32(q[(size_t)(h * group + g0 + g) * head_dim + lane * PER_LANE + j]) *
                           scale
                     : 0.f;

  float m[MAX_GROUP], s[MAX_GROUP], acc[MAX_GROUP][PER_LANE];
#pragma unroll
  for (int g = 0; g < MAX_GROUP; ++g) {
    m[g] = -INFINITY;
    s[g] = 0.f;
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j) acc[g][j] = 0.f;
  }

  const T *keys = kv + (size_t)offsets[h] * head_dim;
  const T *values = kv + ((size_t)rows + offsets[h]) * head_dim;
  for (uint32_t t = start + warp; t < end; t += WARPS) {
    float k[PER_LANE], v[PER_LANE];
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j) {
      k[j] = to_f32(keys[(size_t)t * head_dim + lane * PER_LANE + j]);
      v[j] = to_f32(values[(size_t)t * head_dim + lane * PER_LANE + j]);
    }
#pragma unroll
    for (int g = 0; g < MAX_GROUP; ++g) {
      if (g >= gn) break;
      float dot = 0.f;
#pragma unroll
      for (int j = 0; j < PER_LANE; ++j) dot += qr[g][j] * k[j];
      const float score = warp_sum(dot);
      const float new_max = fmaxf(m[g], score);
      const float correction = rescale(m[g], new_max);
      const float p = __expf(score - new_max);
      s[g] = s[g] * correction + p;
#pragma unroll
      for (int j = 0; j < PER_LANE; ++j) acc[g][j] = acc[g][j] * correction + p * v[j];
      m[g] = new_max;
    }
  }

  // Merge the warps.
#pragma unroll
  for (int g = 0; g < MAX_GROUP; ++g) {
    if (lane == 0) {
      s_max[warp][g] = m[g];
      s_sum[warp][g] = s[g];
    }
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j)
      s_acc[warp][g][lane * PER_LANE + j] = acc[g][j];
  }
  __syncthreads();
  const size_t part = ((size_t)h * splits + split) * group + g0;
  for (uint32_t idx = threadIdx.x; idx < gn * head_dim; idx += blockDim.x) {
    const uint32_t g = idx / head_dim, i = idx % head_dim;
    float mx = -INFINITY;
    for (int w = 0; w < WARPS; ++w) mx = fmaxf(mx, s_max[w][g]);
    float total = 0.f, weighted = 0.f;
    for (int w = 0; w < WARPS; ++w) {
      const float c = rescale(s_max[w][g], mx);
      total += s_sum[w][g] * c;
      weighted += s_acc[w][g][i] * c;
    }
    part_acc[(part + g) * head_dim + i] = weighted;
    if (i == 0) {
      part_max[part + g] = mx;
      part_sum[part + g] = total;
    }
  }
}

template <typename T>
__device__ void decode_combine_impl(const float *part_max, const float *part_sum,
                                    const float *part_acc, uint32_t splits, uint32_t group,
                                    uint32_t head_dim, T *out) {
  const uint32_t h = blockIdx.x, g = blockIdx.y;
  const size_t first = (size_t)h * splits * group + g;
  float mx = -INFINITY;
  for (uint32_t sp = 0; sp < splits; ++sp) mx = fmaxf(mx, part_max[first + (size_t)sp * group]);
  float total = 0.f;
  for (uint32_t sp = 0; sp < splits; ++sp) {
    const size_t p = first + (size_t)sp * group;
    total += part_sum[p] * rescale(part_max[p], mx);
  }
  const float inv = total > 0.f ? 1.f / total : 0.f;
  for (uint32_t i = threadIdx.x; i < head_dim; i += blockDim.x) {
    float weighted = 0.f;
    for (uint32_t sp = 0; sp < splits; ++sp) {
      const size_t p = first + (size_t)sp * group;
      weighted += part_acc[p * head_dim + i] * rescale(part_max[p], mx);
    }
    out[((size_t)h * group + g) * head_dim + i] = from_f32<T>(weighted * inv);
  }
}

#define DECODE_DIM(T, SUFFIX, PER_LANE, DIM)                                                    \
  extern "C" __global__ void __launch_bounds__(WARPS * 32) adakv_decode_partial_##SUFFIX##_d##DIM( \
      const T *q, const T *kv, const uint32_t *offsets, const uint32_t *lengths, uint32_t rows,  \
      uint32_t group, float scale, float *part_max, float *part_sum, float *part_acc) {          \
    decode_partial_impl<T, PER_LANE>(q, kv, offsets, lengths, rows, group, scale, part_max,      \
                                     part_sum, part_acc);                                        \
  }
#define DECODE(T, SUFFIX)                                                                        \
  DECODE_DIM(T, SUFFIX, 1, 32)                                                                   \
  DECODE_DIM(T, SUFFIX, 2, 64)                                                                   \
  DECODE_DIM(T, SUFFIX, 4, 128)                                                                  \
  DECODE_DIM(T, SUFFIX, 8, 256)                                                                  \
  extern "C" __global__ void adakv_decode_combine_##SUFFIX(                                      \
      const float *part_max, const float *part_sum, const float *part_acc, uint32_t splits,      \
      uint32_t group, uint32_t head_dim, T *out) {                                               \
    decode_combine_impl<T>(part_max, part_sum, part_acc, splits, group, head_dim, out);          \
  }
ADAKV_FOR_EACH_DTYPE(DECODE)
