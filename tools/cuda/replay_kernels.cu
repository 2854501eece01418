// CudaBackend's kernels for moesched-replay (the program's one .cu file).
#include <moesched/cuda/backend_kernels.cuh>
