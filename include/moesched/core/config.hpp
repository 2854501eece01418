#pragma once
/// Compiler requirements and the host/device annotation shared by g++ and nvcc builds.
///
///   struct ExpertId { MOESCHED_HOST_DEVICE constexpr int flat() const; };
///
/// MOESCHED_HOST_DEVICE expands to `__host__ __device__` under nvcc and to nothing otherwise,
/// so the value types in core/ can be used inside CUDA kernels without a second definition.
/// MOESCHED_HOT marks the few per-event functions of the layer driver and the simulator backend
/// that must be inlined into the event loop (a replay handles millions of events a second).

#if defined(_MSVC_LANG)
#define MOESCHED_CPLUSPLUS _MSVC_LANG
#else
#define MOESCHED_CPLUSPLUS __cplusplus
#endif

static_assert(MOESCHED_CPLUSPLUS >= 202002L,
              "moesched needs C++20. With nvcc pass -std=c++20 (the moesched::cuda CMake target "
              "adds it for you); with g++/clang++ pass -std=c++20.");

#if defined(__CUDACC__)
#define MOESCHED_HOST_DEVICE __host__ __device__
#else
#define MOESCHED_HOST_DEVICE
#endif

#if defined(__GNUC__) || defined(__clang__)
#define MOESCHED_HOT __attribute__((always_inline)) inline
#else
#define MOESCHED_HOT inline
#endif
