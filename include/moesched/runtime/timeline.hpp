#pragma once
/// Timeline: what the GPU (simulated or real), the link and the predictors did, as Chrome/Perfetto
/// trace events. The layer driver records it from completions, the same way on every backend.
///
///   moesched::runtime::Timeline tl;
///   auto m = moesched::sim::replay(w, cost, policy, {.budget = b, .timeline = &tl});
///   std::ofstream f("run.json");
///   tl.write_chrome_json(f, "lru");     // open in ui.perfetto.dev or chrome://tracing
///
/// Four tracks: "compute" (draft steps, dense part, each expert FFN, LM head, predictor kernels on
/// the stream), "h2d link" (each copied chunk, high or low priority), "stall" (the compute stream
/// waiting for an expert) and "cpu predictors" (predictor jobs on CPU workers). Times are
/// microseconds with nanosecond precision, as the trace-event format expects.

#include "moesched/core/expert_id.hpp"
#include "moesched/core/units.hpp"

#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

namespace moesched::runtime {

enum class TimelineKind : std::uint8_t { draft, dense, expert, head, copy_high, copy_low, stall, cpu, gpu_job };

class Timeline {
 public:
  struct Record {
    Nanoseconds start{};
    Nanoseconds duration{};
    TimelineKind kind = TimelineKind::dense;
    std::uint32_t a = 0;  ///< layer (draft: step; predictor jobs: tag)
    std::uint32_t b = 0;  ///< expert
    std::uint32_t c = 0;  ///< chunk
    std::uint32_t d = 0;  ///< chunks
  };

  void compute(Nanoseconds start, Nanoseconds dur, TimelineKind kind, std::uint32_t a, std::uint32_t b) {
    records_.push_back({start, dur, kind, a, b, 0, 0});
  }
  void copy(Nanoseconds start, Nanoseconds dur, ExpertId id, std::uint32_t chunk, std::uint32_t chunks, bool high) {
    records_.push_back({start, dur, high ? TimelineKind::copy_high : TimelineKind::copy_low, id.layer, id.expert,
                        chunk, chunks});
  }
  /// A predictor job `tag` on CPU worker `worker`.
  void cpu(Nanoseconds start, Nanoseconds dur, std::uint32_t worker, std::uint32_t tag) {
    records_.push_back({start, dur, TimelineKind::cpu, tag, 0, worker, 0});
  }
  /// A predictor job `tag` on the compute stream.
  void gpu_job(Nanoseconds start, Nanoseconds dur, std::uint32_t tag) {
    records_.push_back({start, dur, TimelineKind::gpu_job, tag, 0, 0, 0});
  }
  void stall(Nanoseconds start, Nanoseconds dur, std::uint32_t layer) {
    records_.push_back({start, dur, TimelineKind::stall, layer, 0, 0, 0});
  }
  [[nodiscard]] const std::vector<Record>& records() const noexcept { return records_; }

  /// Writes {"traceEvents": [...]} with one complete ("X") event per record.
  void write_chrome_json(std::ostream& out, std::string_view process_name) const {
    out << "{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n";
    out << R"({"name":"process_name","ph":"M","pid":1,"args":{"name":")" << escaped(process_name) << "\"}}";
    const char* tracks[] = {"compute", "h2d link", "stall", "cpu predictors"};
    for (int t = 0; t < 4; ++t) {
      out << ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":" << t + 1
          << ",\"args\":{\"name\":\"" << tracks[t] << "\"}}";
    }
    for (const Record& r : records_) {
      out << ",\n{\"name\":\"" << name(r) << "\",\"cat\":\"" << category(r.kind) << "\",\"ph\":\"X\",\"pid\":1,\"tid\":"
          << track(r.kind) << ",\"ts\":" << micros(r.start) << ",\"dur\":" << micros(r.duration) << "}";
    }
    out << "\n]}\n";
  }

 private:
  static std::string micros(Nanoseconds t) {
    const auto n = t.count();
    std::string frac = std::to_string(n % 1000);
    return std::to_string(n / 1000) + "." + std::string(3 - frac.size(), '0') + frac;
  }
  static int track(TimelineKind k) {
    switch (k) {
      case TimelineKind::copy_high:
      case TimelineKind::copy_low: return 2;
      case TimelineKind::stall: return 3;
      case TimelineKind::cpu: return 4;
      default: return 1;
    }
  }
  static const char* category(TimelineKind k) {
    switch (k) {
      case TimelineKind::draft: return "draft";
      case TimelineKind::dense: return "dense";
      case TimelineKind::expert: return "expert";
      case TimelineKind::head: return "head";
      case TimelineKind::copy_high: return "copy,high";
      case TimelineKind::copy_low: return "copy,low";
      case TimelineKind::stall: return "stall";
      case TimelineKind::cpu: return "predictor";
      case TimelineKind::gpu_job: return "predictor,gpu";
    }
    return "?";
  }
  static std::string name(const Record& r) {
    const std::string layer = "L" + std::to_string(r.a);
    switch (r.kind) {
      case TimelineKind::draft: return "draft step " + std::to_string(r.a);
      case TimelineKind::dense: return layer + " dense";
      case TimelineKind::expert: return layer + "/E" + std::to_string(r.b);
      case TimelineKind::head: return "lm head";
      case TimelineKind::copy_high:
      case TimelineKind::copy_low:
        return "copy " + layer + "/E" + std::to_string(r.b) +
               (r.d > 1 ? " " + std::to_string(r.c + 1) + "/" + std::to_string(r.d) : std::string()) +
               (r.kind == TimelineKind::copy_high ? " (high)" : " (low)");
      case TimelineKind::stall: return "stall " + layer;
      case TimelineKind::cpu: return "predict #" + std::to_string(r.a) + " (worker " + std::to_string(r.c) + ")";
      case TimelineKind::gpu_job: return "predict #" + std::to_string(r.a) + " (stream)";
    }
    return "?";
  }
  static std::string escaped(std::string_view s) {
    std::string o;
    for (char ch : s) {
      if (ch == '"' || ch == '\\') o += '\\';
      if (static_cast<unsigned char>(ch) >= 0x20) o += ch;
    }
    return o;
  }

  std::vector<Record> records_;
};

}  // namespace moesched::runtime
