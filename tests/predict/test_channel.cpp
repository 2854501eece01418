// Channels recomputed from a trace's hidden states: a small synthetic trace written here, the
// expected channels computed independently with plain loops (no Eigen), compared prediction by
// prediction; the trace copy with the channel added; the agreement measures; the errors.
#include "support/catch.hpp"
#include "support/temp_dir.hpp"
#include "predict/fixtures.hpp"
#include "predict/synthetic.hpp"

#include <moesched/io/trace.hpp>
#include <moesched/predict/channel.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <memory>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

using namespace moesched;

namespace {

using namespace moesched::test::synthetic;

struct Expected {
  io::Prediction p;
  std::vector<std::uint16_t> experts;
  std::vector<double> scores;
};

/// Top-c of `score` (higher first, ties to the lower id), ranking by `key`.
Expected top(io::Prediction p, const std::vector<double>& key, const std::vector<double>& score, std::uint32_t c) {
  std::vector<std::uint16_t> ids(key.size());
  std::iota(ids.begin(), ids.end(), std::uint16_t{0});
  std::stable_sort(ids.begin(), ids.end(), [&](std::uint16_t a, std::uint16_t b) { return key[a] > key[b]; });
  ids.resize(c);
  Expected e{p, ids, {}};
  for (auto id : ids) e.scores.push_back(score[id]);
  return e;
}

std::vector<double> softmax_gate(std::uint32_t router, std::uint32_t h, std::uint64_t t, std::uint32_t l) {
  std::vector<double> logit(E);
  for (std::uint32_t e = 0; e < E; ++e) {
    double v = gate_bias(router, e);
    for (std::uint32_t i = 0; i < H; ++i) v += static_cast<double>(static_cast<float>(gate_weight(router, e, i))) * stored(h, t, l, i);
    logit[e] = v;
  }
  const double mx = *std::max_element(logit.begin(), logit.end());
  double sum = 0;
  for (auto& v : logit) sum += (v = std::exp(v - mx));
  for (auto& v : logit) v /= sum;
  return logit;
}

void check_same(const predict::ChannelData& got, const std::vector<Expected>& want) {
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    INFO("prediction " << i);
    CHECK(got.predictions[i].step == want[i].p.step);
    CHECK(got.predictions[i].layer == want[i].p.layer);
    CHECK(got.predictions[i].token == want[i].p.token);
    CHECK(got.predictions[i].available_after == want[i].p.available_after);
    const auto c = got.candidates(i);
    REQUIRE(c.size() == want[i].experts.size());
    for (std::size_t r = 0; r < c.size(); ++r) {
      CHECK(c[r] == want[i].experts[r]);
      CHECK(got.candidate_scores(i)[r] == Approx(want[i].scores[r]).margin(1e-5));
    }
  }
}

const std::uint64_t kFirst[] = {0, 3, 4, 7};
const std::uint32_t kTokens[] = {3, 1, 3, 1};

}  // namespace

TEST_CASE("skip_gate recomputed from moe_input matches plain loops") {
  Fixture f;
  const auto t = io::Trace::open(f.trace_path);
  auto gates = std::make_shared<const predict::GateSet>(predict::read_gates(f.gates_path));
  for (bool in_prefill : {false, true}) {
    for (std::uint32_t c : {0U, 3U}) {
      predict::ChannelOptions o;
      o.in_prefill = in_prefill;
      o.candidates = c;
      std::vector<Expected> want;
      for (std::uint32_t s = 0; s < 4; ++s) {
        if (s == 0 && !in_prefill) continue;
        for (std::uint32_t m = 0; m + 1 < L; ++m) {
          for (std::uint32_t k = 0; k < kTokens[s]; ++k) {
            const auto sc = softmax_gate(m + 1, 0, kFirst[s] + k, m);
            want.push_back(top({s, static_cast<std::uint16_t>(m + 1), static_cast<std::int32_t>(k), static_cast<std::int16_t>(m)}, sc, sc, c ? c : K));
          }
        }
      }
      const auto got = predict::skip_gate_channel(t, gates, o);
      CHECK(got.desc.name == "skip_gate");
      CHECK(got.desc.max_candidates == (c ? c : K));
      check_same(got, want);
    }
  }
}

TEST_CASE("draft_gate recomputed from draft_moe_input: verify steps, tokens below draft_len") {
  Fixture f;
  const auto t = io::Trace::open(f.trace_path);
  auto gates = std::make_shared<const predict::GateSet>(predict::read_gates(f.gates_path));
  std::vector<Expected> want;
  for (std::uint32_t m = 0; m < L; ++m) {
    for (std::uint32_t j = 0; j < 2; ++j) {
      const auto sc = softmax_gate(m, 3, kFirst[2] + j, m);
      want.push_back(top({2, static_cast<std::uint16_t>(m), static_cast<std::int32_t>(j), -1}, sc, sc, K));
    }
  }
  predict::ChannelOptions o;
  o.in_prefill = true;  // no effect: only verify steps have drafts
  check_same(predict::draft_gate_channel(t, gates, o), want);
}

TEST_CASE("learned channels (mlp stride 1, preattn linear) match plain loops") {
  Fixture f;
  const auto t = io::Trace::open(f.trace_path);
  for (const bool mlp : {true, false}) {
    auto set = std::make_shared<const predict::LearnedSet>(predict::read_learned(mlp ? f.mlp_path : f.linear_path));
    const std::uint32_t h = mlp ? 1 : 2;  // layer_output, attn_input
    std::vector<Expected> want;
    for (std::uint32_t s = 1; s < 4; ++s) {
      for (std::uint32_t target = 0; target < L; ++target) {
        const std::uint32_t stride = mlp ? 1 : 0;
        if (target < stride) continue;
        const std::uint32_t src = target - stride;
        for (std::uint32_t k = 0; k < kTokens[s]; ++k) {
          std::vector<double> z(H), hid(D), logit(E), score(E);
          for (std::uint32_t i = 0; i < H; ++i) {
            z[i] = (stored(h, kFirst[s] + k, src, i) - 0.1F * static_cast<float>(i + src)) / (0.5F + 0.25F * static_cast<float>(i));
          }
          for (std::uint32_t j = 0; j < D; ++j) {
            double v = 0.05F * static_cast<float>(j);
            for (std::uint32_t i = 0; i < H; ++i) v += static_cast<double>(static_cast<float>(std::sin(0.4 * (j * H + i) + src))) * z[i];
            hid[j] = mlp ? 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))) : v;
          }
          for (std::uint32_t e = 0; e < E; ++e) {
            double v = -0.1F * static_cast<float>(e);
            for (std::uint32_t j = 0; j < D; ++j) v += static_cast<double>(static_cast<float>(std::cos(0.6 * (e * D + j) + 2.0 * src))) * hid[j];
            logit[e] = v;
            score[e] = 1.0 / (1.0 + std::exp(-v));
          }
          const int after = mlp ? static_cast<int>(src) : static_cast<int>(src) - 1;
          want.push_back(top({s, static_cast<std::uint16_t>(target), static_cast<std::int32_t>(k), static_cast<std::int16_t>(after)}, logit, score, K));
        }
      }
    }
    const auto got = predict::learned_channel(t, set, {});
    CHECK(got.desc.name == (mlp ? "mlp_stride1" : "preattn_linear"));
    check_same(got, want);
  }
}

TEST_CASE("with_channels: the trace copy carries the channel; compare against it agrees exactly") {
  Fixture f;
  const auto t = io::Trace::open(f.trace_path);
  auto gates = std::make_shared<const predict::GateSet>(predict::read_gates(f.gates_path));
  const auto skip = predict::skip_gate_channel(t, gates, {});
  // the trace already has skip_gate: refused unless replaced
  const auto refused = test::thrown_message<ConfigError>([&] { (void)predict::with_channels(t, {skip}, false); });
  INFO(refused);
  CHECK(test::contains(refused, "field 'channel' = skip_gate: the trace already has this channel"));
  // the recorded one agrees with the computed one where they overlap: one prediction each of
  // steps 1 and 3; the computed channel has more
  const auto recorded = predict::channel_from_trace(t, 0);
  const auto a = predict::compare(skip, recorded, K);
  CHECK(a.matched == 2);
  CHECK(a.only_a == skip.size() - 2);
  CHECK(a.only_b == 0);
  CHECK(a.available_after_differs == 0);

  predict::ChannelOptions named;
  named.name = "skip_gate_cpu";
  const auto renamed = predict::skip_gate_channel(t, gates, named);
  const auto out = f.dir.path() / "out.trace.safetensors";
  predict::with_channels(t, {renamed}, false).write(out);
  const auto t2 = io::Trace::open(out);
  REQUIRE(t2.meta().channels.size() == 2);
  CHECK(t2.step_count() == t.step_count());
  CHECK(t2.meta().hidden.size() == 4);
  CHECK(t2.meta().provenance.at("recomputed_channels").contains("skip_gate_cpu"));
  const auto back = predict::channel_from_trace(t2, t2.channel_index("skip_gate_cpu"));
  const auto same = predict::compare(renamed, back, K);
  CHECK(same.matched == renamed.size());
  CHECK(same.only_a == 0);
  CHECK(same.only_b == 0);
  CHECK(same.equal_set_fraction() == 1.0);
  CHECK(same.equal_order_fraction() == 1.0);
  CHECK(same.mean_topk_overlap() == 1.0);
  CHECK(same.max_score_diff == 0.0);  // both rounded to F16
  // replacing keeps the channel's position
  const auto out2 = f.dir.path() / "out2.trace.safetensors";
  predict::with_channels(t, {skip}, true).write(out2);
  const auto t3 = io::Trace::open(out2);
  REQUIRE(t3.meta().channels.size() == 1);
  CHECK(t3.prediction_count(0) == skip.size());
}

TEST_CASE("compare: sets, order, top-k overlap, score differences by hand") {
  predict::ChannelData a, b;
  a.desc = {"a", "", 3, true};
  b.desc = {"b", "", 2, true};
  a.predictions = {{0, 0, 0, -1}, {0, 1, 0, -1}, {1, 0, 0, 0}};
  a.experts = {1, 2, 3, 0, 1, 2, 4, 5, io::kNoExpert};
  a.scores = {0.5F, 0.25F, 0.125F, 0.5F, 0.25F, 0.125F, 0.75F, 0.0625F, 0.0F};
  b.predictions = {{0, 0, 0, -1}, {0, 1, 0, 0}, {2, 0, 0, -1}};
  b.experts = {2, 1, 0, 3};
  b.scores = {0.25F, 0.5F, 0.5F, 0.375F};
  const auto r = predict::compare(a, b, 2);
  CHECK(r.matched == 2);
  CHECK(r.only_a == 1);
  CHECK(r.only_b == 1);
  CHECK(r.equal_sets == 1);   // {1,2} = {2,1}; {0,1} != {0,3}
  CHECK(r.equal_order == 0);
  CHECK(r.available_after_differs == 1);
  CHECK(r.mean_topk_overlap() == Approx(0.75));  // (2/2 + 1/2) / 2
  CHECK(r.scored_pairs == 3);                    // experts 1, 2; expert 0
  CHECK(r.max_score_diff == Approx(0.0));
  CHECK(r.to_json().at("equal_sets") == 0.5);
}

TEST_CASE("channel errors: missing hidden state, shapes that differ, candidates") {
  Fixture f({"layer_output"});
  const auto t = io::Trace::open(f.trace_path);
  auto gates = std::make_shared<const predict::GateSet>(predict::read_gates(f.gates_path));
  auto msg = test::thrown_message<ConfigError>([&] { (void)predict::skip_gate_channel(t, gates, {}); });
  INFO(msg);
  CHECK(test::contains(msg, "has no hidden state 'moe_input' (record with --hidden moe_input)"));
  CHECK(test::contains(msg, "t.trace.safetensors"));
  msg = test::thrown_message<ConfigError>([&] { (void)predict::draft_gate_channel(t, gates, {}); });
  CHECK(test::contains(msg, "has no hidden state 'draft_moe_input' (record with --hidden draft_moe_input)"));
  auto lin = std::make_shared<const predict::LearnedSet>(predict::read_learned(f.linear_path));
  msg = test::thrown_message<ConfigError>([&] { (void)predict::learned_channel(t, lin, {}); });
  CHECK(test::contains(msg, "has no hidden state 'attn_input'"));
  predict::ChannelOptions o;
  o.candidates = 5;
  auto mlp = std::make_shared<const predict::LearnedSet>(predict::read_learned(f.mlp_path));
  msg = test::thrown_message<ConfigError>([&] { (void)predict::learned_channel(t, mlp, o); });
  CHECK(test::contains(msg, "field 'candidates' = 5: must be between 1 and the expert count (4)"));

  // a gates file of another shape
  test::GatesSpec g;
  g.layers = 2;
  g.weights = {{1, 0, 0, 1, 1, 1}, {1, 0, 0, 1, 1, 1}};
  test::write_gates_file(f.dir.path() / "small.safetensors", g);
  auto small = std::make_shared<const predict::GateSet>(predict::read_gates(f.dir.path() / "small.safetensors"));
  msg = test::thrown_message<ConfigError>([&] { (void)predict::skip_gate_channel(t, small, {}); });
  CHECK(test::contains(msg, "small.safetensors: field 'moe_layers, experts' = 2, 3: trace"));
  CHECK(test::contains(msg, "has 3 MoE layers x 4 experts"));
  // a hidden size that differs
  test::GatesSpec wide;
  wide.layers = L;
  wide.experts = E;
  wide.hidden = 2;
  for (std::uint32_t m = 0; m < L; ++m) wide.weights.push_back(std::vector<float>(E * 2, 0.5F));
  test::write_gates_file(f.dir.path() / "wide.safetensors", wide);
  Fixture full;
  const auto t2 = io::Trace::open(full.trace_path);
  auto w2 = std::make_shared<const predict::GateSet>(predict::read_gates(f.dir.path() / "wide.safetensors"));
  msg = test::thrown_message<ConfigError>([&] { (void)predict::skip_gate_channel(t2, w2, {}); });
  CHECK(test::contains(msg, "field 'hidden_states.moe_input.hidden_size' = 3: the weights of"));
  CHECK(test::contains(msg, "wide.safetensors have hidden_size 2"));
}
