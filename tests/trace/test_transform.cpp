#include "support/catch.hpp"

#include <moesched/trace/synth.hpp>
#include <moesched/trace/transform.hpp>

using namespace moesched;
using moesched::test::contains;
using moesched::test::thrown_message;

namespace {
std::vector<std::byte> synth_bytes(std::uint64_t seed, std::uint32_t layers = 6) {
  trace::SynthParams p;
  p.seed = seed;
  p.moe_layers = layers;
  p.experts = 8;
  p.top_k = 2;
  p.requests = 3;
  p.prompt_tokens = 4;
  p.decode_tokens = 10;
  p.sd_draft_len = 2;
  p.skip_gate_accuracy = 0.5;
  p.draft_gate_accuracy = 0.8;
  return trace::synthesize(p).to_safetensors().serialize();
}
}  // namespace

TEST_CASE("slice keeps exactly the selected requests, steps and layers", "[trace][transform]") {
  const auto b = synth_bytes(1);
  const auto t = io::Trace::from_buffer(b.data(), b.size(), "src");
  trace::SliceSpec spec;
  spec.requests = {2, 1};
  spec.layer_begin = 2;
  spec.layer_end = 5;
  const auto out = trace::slice(t, spec).to_safetensors().serialize();
  const auto s = io::Trace::from_buffer(out.data(), out.size(), "slice");
  CHECK(s.meta().model.moe_layers == 3U);
  CHECK(s.meta().request_count == 2U);
  // every kept step is a step of request 1 or 2 in order, with identical routing
  std::uint64_t j = 0;
  for (std::uint64_t i = 0; i < t.step_count(); ++i) {
    const StepInfo a = t.step(i);
    if (a.request == 0) continue;
    REQUIRE(j < s.step_count());
    const StepInfo c = s.step(j++);
    CHECK(c.request == (a.request == 2 ? 0U : 1U));  // renumbered in the order asked for
    CHECK(c.tokens == a.tokens);
    CHECK(c.accepted == a.accepted);
    for (std::uint32_t k = 0; k < a.tokens; ++k) {
      for (std::uint32_t l = 0; l < 3; ++l) CHECK(s.expert(c.first_token + k, l, 1) == t.expert(a.first_token + k, l + 2, 1));
    }
  }
  CHECK(j == s.step_count());
  // predictions: only kept layers, renumbered; availability clamped into the kept range
  for (std::uint32_t ch = 0; ch < 2; ++ch) {
    for (std::uint64_t i = 0; i < s.prediction_count(ch); ++i) {
      const auto p = s.prediction(ch, i);
      CHECK(p.layer < 3U);
      CHECK(p.available_after < static_cast<int>(p.layer));
    }
  }
  CHECK(s.prediction_count(0) > 0U);
  CHECK(contains(thrown_message<ConfigError>([&] { (void)trace::slice(t, {.requests = {5}}); }), "the trace has 3 requests"));
}

TEST_CASE("merge concatenates requests, steps and channels", "[trace][transform]") {
  const auto b1 = synth_bytes(1);
  const auto b2 = synth_bytes(2);
  const auto a = io::Trace::from_buffer(b1.data(), b1.size(), "a");
  const auto c = io::Trace::from_buffer(b2.data(), b2.size(), "b");
  const auto out = trace::merge({&a, &c}, {"a", "b"}).to_safetensors().serialize();
  const auto m = io::Trace::from_buffer(out.data(), out.size(), "merged");
  CHECK(m.meta().request_count == 6U);
  CHECK(m.step_count() == a.step_count() + c.step_count());
  CHECK(m.token_count() == a.token_count() + c.token_count());
  CHECK(m.step(a.step_count()).request == 3U);
  CHECK(m.expert(a.token_count() + 3, 4, 1) == c.expert(3, 4, 1));
  CHECK(m.prediction_count(1) == a.prediction_count(1) + c.prediction_count(1));
  CHECK(m.prediction(1, a.prediction_count(1)).step == c.prediction(1, 0).step + a.step_count());
  const auto b3 = synth_bytes(3, 5);
  const auto d = io::Trace::from_buffer(b3.data(), b3.size(), "d");
  CHECK(thrown_message<ConfigError>([&] { (void)trace::merge({&a, &d}, {"a.st", "d.st"}); }) ==
        "d.st: field 'model' = 5 layers x 8 experts, top-2: differs from a.st (6 layers x 8 experts, top-2): only traces of the same kind merge");
}
