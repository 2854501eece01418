#include "support/catch.hpp"

#include <moesched/trace/stats.hpp>
#include <moesched/trace/fit.hpp>
#include <moesched/trace/synth.hpp>

using namespace moesched;
using moesched::test::contains;
using moesched::test::thrown_message;

namespace {
trace::TraceStats stats_of(const trace::SynthParams& p) {
  const auto b = trace::synthesize(p).to_safetensors().serialize();
  const auto t = io::Trace::from_buffer(b.data(), b.size(), "synth");
  return trace::compute_stats(t);
}
trace::SynthParams small() {
  trace::SynthParams p;
  p.moe_layers = 4;
  p.experts = 16;
  p.top_k = 2;
  p.requests = 3;
  p.prompt_tokens = 8;
  p.decode_tokens = 200;
  return p;
}
}  // namespace

TEST_CASE("same seed, same bytes; another seed, other bytes", "[trace][synth]") {
  auto p = small();
  p.sd_draft_len = 3;
  p.skip_gate_accuracy = 0.5;
  p.draft_gate_accuracy = 0.9;
  const auto a = trace::synthesize(p).to_safetensors().serialize();
  const auto b = trace::synthesize(p).to_safetensors().serialize();
  CHECK(a == b);
  p.seed = 2;
  CHECK(trace::synthesize(p).to_safetensors().serialize() != a);
}

TEST_CASE("synthetic traces have the requested structure and are marked generated", "[trace][synth]") {
  auto p = small();
  p.sd_draft_len = 4;
  p.sd_acceptance = 0.6;
  const auto b = trace::synthesize(p).to_safetensors().serialize();
  const auto t = io::Trace::from_buffer(b.data(), b.size(), "synth");  // full validation passes
  CHECK(t.meta().generated);
  CHECK(t.meta().provenance.at("seed") == 1);
  CHECK(t.meta().request_count == 3U);
  std::vector<std::uint64_t> emitted(3, 0);
  for (StepInfo s : t.steps()) {
    if (s.phase == StepPhase::prefill) {
      CHECK(s.tokens == 8U);
    } else {
      CHECK(s.phase == StepPhase::verify);
      CHECK(s.draft_len == 4U);
      CHECK(s.tokens == 5U);
    }
    emitted[s.request] += s.emitted_tokens();
  }
  for (auto e : emitted) {
    CHECK(e >= 200U);
    CHECK(e < 200U + 5U);
  }
  // per-token acceptance 0.6 with 4 drafts: E[accepted] = .6 + .36 + .216 + .1296 = 1.3056 of 4
  const auto s = trace::compute_stats(t);
  CHECK(s.acceptance_rate() == Approx(1.3056 / 4).margin(0.05));
}

TEST_CASE("the generator's knobs move the statistics they control", "[trace][synth]") {
  auto p = small();
  p.zipf = 0.0;
  p.reuse = 0.0;
  p.cross_layer = 0.0;
  const auto flat = stats_of(p);
  p.zipf = 2.0;
  const auto skewed = stats_of(p);
  CHECK(flat.gini < 0.15);
  CHECK(skewed.gini > flat.gini + 0.3);
  p.zipf = 0.0;
  p.reuse = 0.9;
  const auto sticky = stats_of(p);
  CHECK(flat.next_token_reuse < 0.2);
  CHECK(sticky.next_token_reuse > 0.8);
  CHECK(sticky.window_union[2] < flat.window_union[2]);
  p.reuse = 0.0;
  p.cross_layer = 0.9;
  const auto chained = stats_of(p);
  REQUIRE(chained.next_layer_hit.has_value());
  CHECK(*chained.next_layer_hit > *chained.next_layer_baseline + 0.3);
}

TEST_CASE("channel accuracy is what was asked for", "[trace][synth]") {
  auto p = small();
  p.sd_draft_len = 4;
  p.skip_gate_accuracy = 0.3;
  p.draft_gate_accuracy = 0.85;
  const auto s = stats_of(p);
  REQUIRE(s.channels.size() == 2U);
  CHECK(s.channels[0].name == "synthetic_skip_gate");
  CHECK(s.channels[0].recall == Approx(0.3).margin(0.03));
  CHECK(s.channels[1].recall == Approx(0.85).margin(0.03));
}

TEST_CASE("channels work when there are barely more experts than top_k", "[trace][synth]") {
  auto p = small();
  p.experts = 3;
  p.top_k = 2;
  p.decode_tokens = 20;
  p.skip_gate_accuracy = 0.0;  // needs two wrong candidates, only one exists
  const auto s = stats_of(p);
  REQUIRE(s.channels.size() == 1U);
  CHECK(s.channels[0].recall == 0.0);
  p.experts = 2;  // top_k == experts: every candidate is right
  p.skip_gate_accuracy = 1.0;
  CHECK(stats_of(p).channels[0].recall == Approx(1.0));
}

TEST_CASE("bad synthesis parameters are named", "[trace][synth][bad_input]") {
  auto bad = [](auto mutate) {
    auto p = small();
    mutate(p);
    return thrown_message<ConfigError>([&] { (void)trace::synthesize(p); });
  };
  CHECK(bad([](auto& p) { p.reuse = 1.5; }) == "field 'reuse' = 1.5: must be in [0, 1]");
  CHECK(bad([](auto& p) { p.top_k = 17; }) == "field 'top_k' = 17: must be between 1 and experts (16)");
  CHECK(contains(bad([](auto& p) { p.draft_gate_accuracy = 0.5; }), "needs speculative decoding"));
  CHECK(contains(bad([](auto& p) { p.zipf = -1; }), "field 'zipf' = -1"));
  CHECK(contains(bad([](auto& p) { p.requests = 0; }), "field 'requests' = 0"));
}

TEST_CASE("fitting recovers the statistics of a trace made with other parameters", "[trace][synth][fit]") {
  auto truth = small();
  truth.requests = 6;
  truth.moe_layers = 12;  // enough layer pairs and tokens for the next-layer statistic to settle
  truth.experts = 32;
  truth.top_k = 4;
  truth.zipf = 1.2;
  truth.reuse = 0.45;
  truth.cross_layer = 0.35;
  truth.sd_draft_len = 3;
  truth.sd_acceptance = 0.8;
  truth.draft_gate_accuracy = 0.9;
  const auto target = stats_of(truth);
  trace::SynthParams start;  // defaults: another shape, other knobs
  start.seed = 77;
  start.requests = 6;
  const auto fitted = trace::fit_synth_params(target, start);
  CHECK(fitted.experts == 32U);
  CHECK(fitted.top_k == 4U);
  CHECK(fitted.sd_draft_len == 3U);
  CHECK(fitted.prompt_tokens == truth.prompt_tokens);
  const auto got = stats_of(fitted);
  CHECK(got.gini == Approx(target.gini).margin(0.04));
  CHECK(got.next_token_reuse == Approx(target.next_token_reuse).margin(0.04));
  CHECK(*got.next_layer_hit == Approx(*target.next_layer_hit).margin(0.05));
  CHECK(got.acceptance_rate() == Approx(target.acceptance_rate()).margin(0.06));
  REQUIRE(got.channels.size() == 1U);
  CHECK(got.channels[0].recall == Approx(0.9).margin(0.03));
  // a locked parameter stays as given
  trace::FitLocks lock;
  lock.zipf = true;
  start.zipf = 0.1;
  CHECK(trace::fit_synth_params(target, start, lock).zipf == 0.1);
}
