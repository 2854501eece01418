// The CUDA backend's kernels for test_cuda_backend (the one .cu file of the program).
#include <moesched/cuda/backend_kernels.cuh>
