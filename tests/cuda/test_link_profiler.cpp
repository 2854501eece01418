// GPU test of moesched/cuda/link_profiler.cuh (ctest label 'gpu'). Exits 77 (skipped) when no
// CUDA device is present, 1 on any failed check.
#include <moesched/core/hardware.hpp>
#include <moesched/cuda/link_profiler.cuh>

#include <cstdio>
#include <cstring>
#include <vector>

namespace {
int failures = 0;
void expect(bool ok, const char* what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) ++failures;
}
}  // namespace

int main() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  using namespace moesched;
  const auto sizes = cuda::default_profile_sizes(4U << 20U);  // 4 KiB .. 4 MiB
  expect(sizes.size() == 6 && sizes.front() == 4096 && sizes.back() == (4U << 20U),
         "default sizes are powers of 4 from 4 KiB");
  const auto need = cuda::link_profile_workspace_bytes(sizes);
  void* host = nullptr;
  void* back = nullptr;
  void* dev = nullptr;
  cudaStream_t stream = nullptr;
  if (cudaHostAlloc(&host, need, cudaHostAllocDefault) != cudaSuccess ||
      cudaHostAlloc(&back, need, cudaHostAllocDefault) != cudaSuccess ||
      cudaMalloc(&dev, need) != cudaSuccess || cudaStreamCreate(&stream) != cudaSuccess) {
    std::printf("FAIL allocation\n");
    return 1;
  }
  auto* h = static_cast<unsigned char*>(host);
  for (std::uint64_t i = 0; i < need; ++i) h[i] = static_cast<unsigned char>((i * 131U + 7U) & 0xFFU);

  std::vector<cuda::CopySample> out(sizes.size());
  expect(cuda::profile_link(host, dev, sizes, 15, cuda::Direction::host_to_device, stream,
                            out.data()) == cudaSuccess,
         "profile_link host-to-device succeeds");
  bool ordered = true;
  for (const auto& s : out) ordered = ordered && s.median_us > 0 && s.p10_us <= s.median_us && s.median_us <= s.p90_us;
  expect(ordered, "every sample positive with p10 <= median <= p90");
  expect(out.back().gb_per_s() > 1.0, "a 4 MiB pinned copy runs above 1 GB/s");
  expect(out.back().median_us > out.front().median_us, "a 4 MiB copy takes longer than a 4 KiB one");

  // the data the profiler moved arrived intact: copy back and compare (bytes conserved)
  cudaMemcpy(back, dev, need, cudaMemcpyDeviceToHost);
  expect(std::memcmp(host, back, need) == 0, "bytes copied host-to-device arrive unchanged");

  const auto knots = cuda::curve_knots(out);
  bool monotone = knots.size() == sizes.size();
  for (std::size_t i = 1; i < knots.size(); ++i) monotone = monotone && knots[i].time >= knots[i - 1].time;
  expect(monotone, "curve_knots are non-decreasing in time");
  bool built = true;
  try {
    const auto curve = TransferCurve::from_knots(knots);
    built = curve.time(Bytes{4U << 20U}).count() > 0;
  } catch (...) {
    built = false;
  }
  expect(built, "the measured knots make a valid TransferCurve");

  expect(cuda::profile_link(host, dev, sizes, 0, cuda::Direction::host_to_device, stream,
                            out.data()) == cudaErrorInvalidValue,
         "zero repeats is rejected with cudaErrorInvalidValue");
  expect(cuda::profile_link(host, dev, sizes, 3, cuda::Direction::device_to_host, stream,
                            out.data()) == cudaSuccess,
         "profile_link device-to-host succeeds");

  cudaStreamDestroy(stream);
  cudaFree(dev);
  cudaFreeHost(back);
  cudaFreeHost(host);
  std::printf("%d failed\n", failures);
  return failures == 0 ? 0 : 1;
}
