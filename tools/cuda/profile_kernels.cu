// CudaBackend's kernels for moesched-profile (the program's one .cu file).
#include <moesched/cuda/backend_kernels.cuh>
