// Helper for the C++ -> Python -> C++ round-trip test (tests/python/roundtrip.py).
//   trace_roundtrip_tool write OUT      write a trace using every feature of the format
//   trace_roundtrip_tool compare A B    exit 0 iff A and B hold the same trace
#include <moesched/io/trace.hpp>

#include <cstdio>
#include <cstring>
#include <string>

using namespace moesched;

namespace {

int write_sample(const char* path) {
  io::TraceMeta m;
  m.model = {"roundtrip", 4, 300, 3};  // 300 experts: U16 ids
  m.source = "trace_roundtrip_tool";
  m.dataset = "synthetic sample";
  m.notes = "unicode survives: \xc3\xa9\xe2\x86\x92";
  m.generated = true;
  m.request_ids = {"alpha", "beta"};
  m.channels.push_back({"scored", "with scores", 4, true});
  m.channels.push_back({"plain", "no scores", 2, false});
  m.hidden.push_back({"moe_input", "input of MoE layers 0 and 2", {0, 2}, 5, io::TensorDType::f16});
  m.provenance = {{"seed", 7}};
  io::TraceWriter w(m);
  std::uint32_t x = 7;
  auto rnd = [&] { return x = x * 1664525U + 1013904223U; };
  std::uint32_t token = 0;
  auto step = [&](StepInfo s) {
    std::vector<std::uint16_t> ids;
    std::vector<float> weights;
    std::vector<std::uint32_t> tid, pos;
    for (std::uint32_t t = 0; t < s.tokens; ++t) {
      tid.push_back(rnd() % 50000);
      pos.push_back(token++);
      for (std::uint32_t l = 0; l < 4; ++l) {
        const auto a = static_cast<std::uint16_t>(rnd() % 298);
        ids.insert(ids.end(), {a, static_cast<std::uint16_t>(a + 1), static_cast<std::uint16_t>(a + 2)});
        weights.insert(weights.end(), {0.5F, 0.25F, 0.125F});
      }
    }
    return w.add_step(s, ids, weights, tid, pos);
  };
  step({.request = 0, .phase = StepPhase::prefill, .tokens = 6});
  for (int i = 0; i < 3; ++i) step({.request = 0, .phase = StepPhase::verify, .tokens = 5, .draft_len = 4, .accepted = static_cast<std::uint16_t>(i)});
  step({.request = 1, .phase = StepPhase::prefill, .tokens = 2});
  step({.request = 1, .phase = StepPhase::decode, .tokens = 1});
  for (std::uint32_t s = 0; s < 6; ++s) {
    for (std::uint16_t l = 0; l < 4; ++l) {
      w.add_prediction(0, {s, l, -1, static_cast<std::int16_t>(l - 1)},
                       std::vector<std::uint16_t>{static_cast<std::uint16_t>(s * 7 + l), 299},
                       std::vector<float>{0.875F, 0.0625F});
    }
  }
  w.add_prediction(1, {1, 3, 2, -1}, std::vector<std::uint16_t>{1, 2});
  std::vector<std::byte> hidden(w.token_count() * 2 * 5 * 2);
  for (std::size_t i = 0; i < hidden.size(); ++i) hidden[i] = static_cast<std::byte>(rnd() & 0x3FU);
  w.set_hidden(0, hidden);
  w.write(path);
  return 0;
}

int compare(const char* a_path, const char* b_path) {
  const auto a = io::Trace::open(a_path);
  const auto b = io::Trace::open(b_path);
  int bad = 0;
  auto expect = [&](bool ok, const std::string& what) {
    if (!ok) {
      std::printf("differs: %s\n", what.c_str());
      ++bad;
    }
  };
  expect(io::trace_detail::meta_to_json(a.meta()) == io::trace_detail::meta_to_json(b.meta()), "metadata");
  expect(a.step_count() == b.step_count() && a.token_count() == b.token_count(), "counts");
  if (bad) return 1;
  for (std::uint64_t s = 0; s < a.step_count(); ++s) {
    const auto x = a.step(s);
    const auto y = b.step(s);
    expect(x.request == y.request && x.phase == y.phase && x.tokens == y.tokens && x.draft_len == y.draft_len &&
               x.accepted == y.accepted && x.first_token == y.first_token,
           "step " + std::to_string(s));
  }
  const auto& m = a.meta().model;
  expect(a.has_weights() == b.has_weights() && a.has_token_ids() == b.has_token_ids() && a.has_positions() == b.has_positions(),
         "optional tensors");
  for (std::uint64_t t = 0; t < a.token_count(); ++t) {
    if (a.has_token_ids()) expect(a.token_id(t) == b.token_id(t) && a.position(t) == b.position(t), "token " + std::to_string(t));
    for (std::uint32_t l = 0; l < m.moe_layers; ++l) {
      for (std::uint32_t k = 0; k < m.top_k; ++k) {
        expect(a.expert(t, l, k) == b.expert(t, l, k), "expert");
        if (a.has_weights()) expect(a.weight(t, l, k) == b.weight(t, l, k), "weight");
      }
    }
  }
  for (std::uint32_t c = 0; c < a.meta().channels.size(); ++c) {
    expect(a.prediction_count(c) == b.prediction_count(c), "channel size");
    std::uint16_t ca[64], cb[64];
    for (std::uint64_t i = 0; i < a.prediction_count(c); ++i) {
      const auto p = a.prediction(c, i);
      const auto q = b.prediction(c, i);
      expect(p.step == q.step && p.layer == q.layer && p.token == q.token && p.available_after == q.available_after, "prediction");
      const auto n = a.candidates(c, i, ca);
      expect(n == b.candidates(c, i, cb) && std::memcmp(ca, cb, n * 2) == 0, "candidates");
      if (a.meta().channels[c].has_scores) {
        for (std::uint32_t r = 0; r < n; ++r) expect(a.score(c, i, r) == b.score(c, i, r), "score");
      }
    }
  }
  for (std::uint32_t h = 0; h < a.meta().hidden.size(); ++h) {
    const auto& ta = a.hidden_tensor(h);
    const auto& tb = b.hidden_tensor(h);
    expect(ta.bytes() == tb.bytes() && std::memcmp(a.container().bytes(ta), b.container().bytes(tb), ta.bytes()) == 0, "hidden");
  }
  std::printf("%s\n", bad ? "DIFFERENT" : "identical content");
  return bad ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc == 3 && std::string(argv[1]) == "write") return write_sample(argv[2]);
    if (argc == 4 && std::string(argv[1]) == "compare") return compare(argv[2], argv[3]);
  } catch (const ConfigError& e) {
    std::printf("error: %s\n", e.what());
    return 1;
  }
  std::printf("usage: trace_roundtrip_tool write OUT | compare A B\n");
  return 2;
}
