#pragma once
/// CUDA status handling for the CUDA executor headers: calls return a status, never throw.
///
///   cudaError_t st = MOESCHED_CUDA_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, s));
///   if (st != cudaSuccess) return st;           // or: moesched::cuda::describe(st)
///
/// MOESCHED_CUDA_TRY evaluates a CUDA runtime call and yields its status; MOESCHED_CUDA_RETURN_IF
/// returns that status from the enclosing function on failure. No exceptions, no global state.

#include "moesched/core/config.hpp"

#include <cuda_runtime.h>

#include <string>

#define MOESCHED_CUDA_TRY(call) (call)
#define MOESCHED_CUDA_RETURN_IF(call)        \
  do {                                       \
    const cudaError_t moesched_st_ = (call); \
    if (moesched_st_ != cudaSuccess) return moesched_st_; \
  } while (0)

namespace moesched::cuda {

/// "cudaErrorMemoryAllocation: out of memory" for a status.
[[nodiscard]] inline std::string describe(cudaError_t status) {
  return std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status);
}

/// Owns one CUDA event pair for timing a region on a stream; destroyed with the object.
class EventPair {
 public:
  EventPair() = default;
  EventPair(const EventPair&) = delete;
  EventPair& operator=(const EventPair&) = delete;
  ~EventPair() {
    if (start_ != nullptr) cudaEventDestroy(start_);
    if (stop_ != nullptr) cudaEventDestroy(stop_);
  }
  /// Create both events; call once before use.
  [[nodiscard]] cudaError_t init() {
    MOESCHED_CUDA_RETURN_IF(cudaEventCreate(&start_));
    return cudaEventCreate(&stop_);
  }
  [[nodiscard]] cudaError_t record_start(cudaStream_t s) { return cudaEventRecord(start_, s); }
  [[nodiscard]] cudaError_t record_stop(cudaStream_t s) { return cudaEventRecord(stop_, s); }
  /// Waits for the stop event, then writes the elapsed milliseconds.
  [[nodiscard]] cudaError_t elapsed_ms(float* ms) {
    MOESCHED_CUDA_RETURN_IF(cudaEventSynchronize(stop_));
    return cudaEventElapsedTime(ms, start_, stop_);
  }

 private:
  cudaEvent_t start_ = nullptr;
  cudaEvent_t stop_ = nullptr;
};

}  // namespace moesched::cuda
