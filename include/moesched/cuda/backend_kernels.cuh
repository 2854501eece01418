#pragma once
/// Definitions of CudaBackend's kernels (moesched/cuda/backend.cuh). Include this header in exactly
/// one CUDA (.cu) translation unit of a program that uses CudaBackend; every other file includes
/// backend.cuh only and may be host code.
///
///   // my_program_kernels.cu
///   #include <moesched/cuda/backend_kernels.cuh>

#include "moesched/core/config.hpp"
#include "moesched/cuda/backend.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace moesched::cuda {

namespace detail {

/// h = SiLU(g) x u, in place in g (bf16, fp32 math).
template <class T>
__global__ void silu_mul_kernel(T* g, const T* u, std::size_t n) {
  const std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) {
    const float a = __bfloat162float(g[i]);
    const float b = __bfloat162float(u[i]);
    g[i] = __float2bfloat16(a / (1.0f + __expf(-a)) * b);
  }
}

/// Fills n bf16 values with small pseudo-random numbers in [-1/64, 1/64).
template <class T>
__global__ void fill_random_kernel(T* p, std::size_t n, std::uint32_t seed) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    std::uint32_t x = static_cast<std::uint32_t>(i) * 2654435761U ^ seed;
    x ^= x >> 15U;
    x *= 2246822519U;
    x ^= x >> 13U;
    p[i] = __float2bfloat16((static_cast<float>(x & 0xFFFFU) / 65536.0f - 0.5f) / 32.0f);
  }
}

/// Position-weighted sum of 32-bit words (mod 2^32); the host mirror is slot_checksum().
template <class W>
__global__ void checksum_kernel(const W* words, std::size_t n, const W* expected, std::uint32_t flat, W* counters) {
  __shared__ W part[256];
  W s = 0;
  for (std::size_t i = threadIdx.x; i < n; i += blockDim.x) s += words[i] * static_cast<W>(2 * i + 1);
  part[threadIdx.x] = s;
  __syncthreads();
  for (unsigned w = blockDim.x / 2; w > 0; w /= 2) {
    if (threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    if (part[0] != expected[flat]) atomicAdd(&counters[0], W{1});
    atomicAdd(&counters[1], W{1});
  }
}


cudaError_t launch_silu_mul(__nv_bfloat16* g, const __nv_bfloat16* u, std::size_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const auto blocks = static_cast<unsigned>((n + 255) / 256);
  silu_mul_kernel<__nv_bfloat16><<<blocks, 256, 0, stream>>>(g, u, n);
  return cudaGetLastError();
}

cudaError_t launch_fill_random(__nv_bfloat16* p, std::size_t n, std::uint32_t seed, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  fill_random_kernel<__nv_bfloat16><<<1024, 256, 0, stream>>>(p, n, seed);
  return cudaGetLastError();
}

__global__ void empty_kernel() {}

cudaError_t launch_empty(cudaStream_t stream) {
  empty_kernel<<<1, 1, 0, stream>>>();
  return cudaGetLastError();
}

/// Spins one thread until `ns` nanoseconds of the GPU's global timer have passed.
__global__ void spin_kernel(std::uint64_t ns) {
  std::uint64_t start = 0;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  for (;;) {
    std::uint64_t now = 0;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    if (now - start >= ns) break;
  }
}

cudaError_t launch_spin(std::uint64_t ns, cudaStream_t stream) {
  spin_kernel<<<1, 1, 0, stream>>>(ns);
  return cudaGetLastError();
}

cudaError_t launch_checksum(const std::uint32_t* words, std::size_t n, const std::uint32_t* expected,
                            std::uint32_t flat, std::uint32_t* counters, cudaStream_t stream) {
  checksum_kernel<std::uint32_t><<<1, 256, 0, stream>>>(words, n, expected, flat, counters);
  return cudaGetLastError();
}

}  // namespace detail

}  // namespace moesched::cuda
