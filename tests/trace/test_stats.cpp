#include "support/catch.hpp"

#include <moesched/trace/stats.hpp>

#include <cmath>

using namespace moesched;

namespace {
/// 1 layer, 4 experts, top-2; one request: t0 {0,1} (prefill), t1 {1,2}, t2 {0,1} (decodes);
/// channel: step 2 whole-step [1, 3]; step 1 token 0 [2].
std::vector<std::byte> hand_trace() {
  io::TraceMeta m;
  m.model = {"hand", 1, 4, 2};
  m.channels.push_back({"c", "", 2, false});
  io::TraceWriter w(m);
  w.add_step({.phase = StepPhase::prefill, .tokens = 1}, std::vector<std::uint16_t>{0, 1});
  w.add_step({.phase = StepPhase::decode, .tokens = 1}, std::vector<std::uint16_t>{1, 2});
  w.add_step({.phase = StepPhase::decode, .tokens = 1}, std::vector<std::uint16_t>{0, 1});
  w.add_prediction(0, {1, 0, 0, -1}, std::vector<std::uint16_t>{2});
  w.add_prediction(0, {2, 0, -1, -1}, std::vector<std::uint16_t>{1, 3});
  return w.to_safetensors().serialize();
}
}  // namespace

TEST_CASE("statistics of a hand-computed trace", "[trace][stats]") {
  const auto bytes = hand_trace();
  const auto t = io::Trace::from_buffer(bytes.data(), bytes.size(), "hand");
  const trace::TraceStats s = trace::compute_stats(t);
  CHECK(s.tokens == 3U);
  CHECK(s.emitted_tokens == 3U);
  CHECK(s.prefill_steps == 1U);
  CHECK(s.decode_steps == 2U);
  const auto& l = s.layers[0];
  CHECK(l.activations == std::vector<std::uint64_t>{2, 3, 1, 0});
  // sorted counts 0,1,2,3: gini = 2*(0+2+6+12)/(4*6) - 5/4
  CHECK(l.gini == Approx(40.0 / 24.0 - 1.25));
  const double h = -(std::log(1.0 / 3) / 3 + std::log(0.5) / 2 + std::log(1.0 / 6) / 6);
  CHECK(l.entropy == Approx(h / std::log(4.0)));
  CHECK(l.top10_share == Approx(0.5));
  CHECK(l.experts_for_50pct == 1U);
  CHECK(l.experts_for_90pct == 3U);
  // pairs (t0,t1) and (t1,t2) each share one of two experts
  CHECK(s.next_token_reuse == Approx(0.5));
  CHECK(l.next_token_reuse == Approx(0.5));
  // distances: e1 at t1 (1), e0 at t2 (2), e1 at t2 (1); first uses: e0, e1 at t0, e2 at t1
  CHECK(s.reuse_distance[0] == 2U);
  CHECK(s.reuse_distance[1] == 1U);
  CHECK(s.reuse_distance[trace::kReuseBuckets.size() - 1] == 3U);
  std::uint64_t others = 0;
  for (std::size_t b = 2; b + 1 < trace::kReuseBuckets.size(); ++b) others += s.reuse_distance[b];
  CHECK(others == 0U);
  // windows of 2: {0,1,2} and {1,2,0}; of 3: {0,1,2}; longer: none
  CHECK(s.window_union[0] == Approx(3.0));
  CHECK(s.window_union[1] == Approx(3.0));
  CHECK(s.window_union[2] == 0.0);
  // one layer: no next-layer predictor
  CHECK_FALSE(s.next_layer_hit.has_value());
  // channel: [2] vs {1,2} -> 1 hit of 1 listed, 2 true; [1,3] vs {0,1} -> 1 of 2, 2 true
  REQUIRE(s.channels.size() == 1U);
  CHECK(s.channels[0].predictions == 2U);
  CHECK(s.channels[0].precision == Approx(2.0 / 3.0));
  CHECK(s.channels[0].recall == Approx(0.5));
  const auto j = trace::stats_to_json(s);
  CHECK(j["next_layer_hit"].is_null());
  CHECK(j["reuse_distance"]["first"] == 3);
  CHECK(j["layers"][0]["activations"][1] == 3);
}

TEST_CASE("tokens of interleaved requests pair only within their request", "[trace][stats]") {
  io::TraceMeta m;
  m.model = {"x", 1, 4, 1};
  io::TraceWriter w(m);
  // request 0 uses expert 0 twice, request 1 uses expert 1 twice, steps interleaved
  w.add_step({.request = 0, .phase = StepPhase::decode}, std::vector<std::uint16_t>{0});
  w.add_step({.request = 1, .phase = StepPhase::decode}, std::vector<std::uint16_t>{1});
  w.add_step({.request = 0, .phase = StepPhase::decode}, std::vector<std::uint16_t>{0});
  w.add_step({.request = 1, .phase = StepPhase::decode}, std::vector<std::uint16_t>{1});
  const auto b = w.to_safetensors().serialize();
  const auto t = io::Trace::from_buffer(b.data(), b.size(), "x");
  const auto s = trace::compute_stats(t);
  CHECK(s.next_token_reuse == Approx(1.0));
  CHECK(s.reuse_distance[0] == 2U);  // both at distance 1 within their request
  CHECK(s.window_union[0] == Approx(1.0));
}

TEST_CASE("the next-layer predictor beats popularity when layers are correlated", "[trace][stats]") {
  // layer 1 always picks expert (e + 1) % 8 of layer 0's expert e, which is uniform
  io::TraceMeta m;
  m.model = {"corr", 2, 8, 1};
  io::TraceWriter w(m);
  for (std::uint16_t i = 0; i < 400; ++i) {
    const auto e = static_cast<std::uint16_t>((i * 5) % 8);
    w.add_step({.phase = StepPhase::decode}, std::vector<std::uint16_t>{e, static_cast<std::uint16_t>((e + 1) % 8)});
  }
  const auto b = w.to_safetensors().serialize();
  const auto t = io::Trace::from_buffer(b.data(), b.size(), "corr");
  const auto s = trace::compute_stats(t);
  REQUIRE(s.next_layer_hit.has_value());
  CHECK(*s.next_layer_hit == Approx(1.0));
  CHECK(*s.next_layer_baseline < 0.2);
}
