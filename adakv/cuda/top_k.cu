// Top-k per row for rows of any length (candle's CUDA sort is limited to 8192 columns).
//
// One block per row. Scores map to u32 keys ordered like f32::total_cmp, NaN counting as -inf
// (kvpress_core::press::top_k_indices). A radix select (four 8-bit histogram passes) finds the
// k-th largest key `threshold` and how many keys equal to it are kept (`take_equal`); a stable
// block-wide compaction then writes, in ascending index order, every index whose key is above
// the threshold and the first `take_equal` indices whose key equals it: ties go to the earlier
// index. Requires 1 <= k <= n and blockDim a multiple of 32 (at most 1024).
#include "common.cuh"

__device__ __forceinline__ uint32_t order_key(float x) {
  if (isnan(x)) x = -INFINITY;
  const uint32_t bits = __float_as_uint(x);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Exclusive block-wide prefix count of `flag`; *total receives the block's count. Every thread
// of the block must call it.
__device__ uint32_t block_exclusive_count(bool flag, uint32_t *total) {
  __shared__ uint32_t warp_counts[33];
  const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const uint32_t ballot = __ballot_sync(0xffffffffu, flag);
  const uint32_t within = __popc(ballot & ((1u << lane) - 1u));
  if (lane == 0) warp_counts[warp] = __popc(ballot);
  __syncthreads();
  if (warp == 0) {
    const uint32_t mine = lane < warps ? warp_counts[lane] : 0u;
    uint32_t inclusive = mine;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t up = __shfl_up_sync(0xffffffffu, inclusive, o);
      if (lane >= (uint32_t)o) inclusive += up;
    }
    if (lane < warps) warp_counts[lane] = inclusive - mine;
    if (lane == 31) warp_counts[32] = inclusive;
  }
  __syncthreads();
  const uint32_t result = warp_counts[warp] + within;
  *total = warp_counts[32];
  __syncthreads();
  return result;
}

template <typename T>
__device__ void top_k_impl(const T *scores, uint32_t n, uint32_t k, uint32_t *out) {
  __shared__ uint32_t hist[256];
  __shared__ uint32_t s_prefix, s_mask, s_remaining;
  scores += (size_t)blockIdx.x * n;
  out += (size_t)blockIdx.x * k;
  if (threadIdx.x == 0) {
    s_prefix = 0u;
    s_mask = 0u;
    s_remaining = k;
  }
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (uint32_t i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0u;
    __syncthreads();
    const uint32_t prefix = s_prefix, mask = s_mask;
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
      const uint32_t key = order_key(to_f32(scores[i]));
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      const uint32_t remaining = s_remaining;
      uint32_t above = 0u;
      for (int digit = 255; digit >= 0; --digit) {
        const uint32_t c = hist[digit];
        if (above + c >= remaining) {
          s_prefix = prefix | ((uint32_t)digit << shift);
          s_mask = mask | (255u << shift);
          s_remaining = remaining - above;
          break;
        }
        above += c;
      }
    }
    __syncthreads();
  }
  const uint32_t threshold = s_prefix, take_equal = s_remaining;
  uint32_t written = 0u, equal_seen = 0u;
  for (uint32_t tile = 0; tile < n && written < k; tile += blockDim.x) {
    const uint32_t i = tile + threadIdx.x;
    const uint32_t key = i < n ? order_key(to_f32(scores[i])) : 0u;
    const bool above = i < n && key > threshold, equal = i < n && key == threshold;
    uint32_t equal_total, kept_total;
    const uint32_t equal_rank = equal_seen + block_exclusive_count(equal, &equal_total);
    const bool keep = above || (equal && equal_rank < take_equal);
    const uint32_t position = written + block_exclusive_count(keep, &kept_total);
    if (keep && position < k) out[position] = i;
    written += kept_total;
    equal_seen += equal_total;
  }
}

#define TOP_K(T, SUFFIX)                                                                         \
  extern "C" __global__ void adakv_top_k_##SUFFIX(const T *scores, uint32_t n, uint32_t k,       \
                                                  uint32_t *out) {                               \
    top_k_impl<T>(scores, n, k, out);                                                            \
  }
ADAKV_FOR_EACH_DTYPE(TOP_K)
