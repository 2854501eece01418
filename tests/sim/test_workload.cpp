#include "support/catch.hpp"
#include "support/routing.hpp"

#include <moesched/workload/workload.hpp>

using namespace moesched;
using moesched::Workload;

namespace {

/// One request: prefill of 3 tokens, then 6 decode tokens; 1 layer, top-1, token t routes to
/// expert t % 4.
test::VecRouting plain_request() {
  test::VecRouting r;
  r.layers = 1;
  r.top_k = 1;
  r.add({.request = 0, .phase = StepPhase::prefill, .tokens = 3}, {0, 1, 2});
  for (std::uint16_t t = 3; t < 9; ++t) r.add({.request = 0, .phase = StepPhase::decode, .tokens = 1}, {std::uint16_t(t % 4)});
  return r;
}

}  // namespace

TEST_CASE("recorded steps replay as they are", "[sim][workload]") {
  const auto r = plain_request();
  const Workload w = build_workload(r, {1, 4, 1});
  REQUIRE(w.pass_count() == 7);
  CHECK(w.pass(0).phase == StepPhase::prefill);
  CHECK(w.pass(0).tokens == 3);
  CHECK(w.uses(0, 0).size() == 3);
  CHECK(w.pass(1).phase == StepPhase::decode);
  CHECK(w.decode_tokens() == 6);
  CHECK(w.activations() == 9);
  CHECK(w.max_layer_union() == 3);
  // Context: the prompt (3) then one more token per decode step.
  CHECK(w.pass(0).kv_tokens == 3);
  CHECK(w.pass(1).kv_tokens == 4);
  CHECK(w.pass(2).kv_tokens == 5);
  CHECK(w.pass(0).attention_pairs == 9);
}

TEST_CASE("SD replay: every draft accepted", "[sim][workload]") {
  const auto r = plain_request();
  const Workload w = build_workload(r, {1, 4, 1}, {.sd = SdReplay{.gamma = 2, .acceptance = 1.0}});
  // Windows at 0 and 3 verify 3 tokens each and emit 3.
  REQUIRE(w.pass_count() == 3);
  for (std::uint64_t p = 1; p < 3; ++p) {
    CHECK(w.pass(p).phase == StepPhase::verify);
    CHECK(w.pass(p).tokens == 3);
    CHECK(w.pass(p).draft_len == 2);
    CHECK(w.members(w.pass(p))[0].emitted == 3);
  }
  // Window 0 holds decode tokens 3,4,5: experts 3, 0, 1.
  const auto u = w.uses(1, 0);
  REQUIRE(u.size() == 3);
  CHECK(u[0].expert == 3);
  CHECK(u[1].expert == 0);
  CHECK(u[2].expert == 1);
  CHECK(w.decode_tokens() == 6);
}

TEST_CASE("SD replay: no draft accepted", "[sim][workload]") {
  const auto r = plain_request();
  const Workload w = build_workload(r, {1, 4, 1}, {.sd = SdReplay{.gamma = 2, .acceptance = 0.0}});
  // One token per window: windows at 0..3 verify 3 tokens, at 4 verifies 2, at 5 is a decode.
  REQUIRE(w.pass_count() == 7);
  CHECK(w.pass(1).tokens == 3);
  CHECK(w.pass(4).tokens == 3);
  CHECK(w.pass(5).tokens == 2);
  CHECK(w.pass(5).draft_len == 1);
  CHECK(w.pass(6).phase == StepPhase::decode);
  CHECK(w.decode_tokens() == 6);
}

TEST_CASE("SD replay is seeded and keeps every output token", "[sim][workload]") {
  const auto r = test::random_routing(7, 2, 8, 2, 3, 5, 40);
  const WorkloadOptions opt{.sd = SdReplay{.gamma = 4, .acceptance = 0.6, .seed = 9}};
  const Workload a = build_workload(r, {2, 8, 2}, opt);
  const Workload b = build_workload(r, {2, 8, 2}, opt);
  REQUIRE(a.pass_count() == b.pass_count());
  for (std::uint64_t p = 0; p < a.pass_count(); ++p) CHECK(a.pass(p).tokens == b.pass(p).tokens);
  CHECK(a.decode_tokens() == 3 * 40);
  auto other = opt;
  other.sd->seed = 10;
  const Workload c = build_workload(r, {2, 8, 2}, other);
  CHECK(c.decode_tokens() == 3 * 40);
  bool differs = c.pass_count() != a.pass_count();
  for (std::uint64_t p = 0; !differs && p < a.pass_count(); ++p) differs = a.pass(p).tokens != c.pass(p).tokens;
  CHECK(differs);
}

TEST_CASE("a recorded verify step contributes its accepted tokens to SD re-windowing", "[sim][workload]") {
  test::VecRouting r;
  r.layers = 1;
  r.top_k = 1;
  // Verify of 4 tokens (3 drafts), 1 accepted: output tokens are its first two.
  r.add({.request = 0, .phase = StepPhase::verify, .tokens = 4, .draft_len = 3, .accepted = 1}, {0, 1, 2, 3});
  r.add({.request = 0, .phase = StepPhase::decode, .tokens = 1}, {3});
  const Workload w = build_workload(r, {1, 4, 1}, {.sd = SdReplay{.gamma = 2, .acceptance = 1.0}});
  REQUIRE(w.pass_count() == 1);  // tokens {0, 1, 3} in one window of 3
  const auto u = w.uses(0, 0);
  REQUIRE(u.size() == 3);
  CHECK(u[2].expert == 3);
  CHECK(w.decode_tokens() == 3);
}

TEST_CASE("batching runs requests together and takes the union of their experts", "[sim][workload]") {
  test::VecRouting r;
  r.layers = 1;
  r.top_k = 1;
  r.add({.request = 0, .phase = StepPhase::prefill, .tokens = 2}, {0, 1});
  r.add({.request = 0, .phase = StepPhase::decode, .tokens = 1}, {2});
  r.add({.request = 0, .phase = StepPhase::decode, .tokens = 1}, {2});
  r.add({.request = 1, .phase = StepPhase::prefill, .tokens = 1}, {3});
  r.add({.request = 1, .phase = StepPhase::decode, .tokens = 1}, {2});
  r.add({.request = 2, .phase = StepPhase::prefill, .tokens = 1}, {0});
  const Workload w = build_workload(r, {1, 4, 1}, {.batch = 2});
  // Group {0, 1}: prefill together, decode k=0 together, decode k=1 for request 0 alone;
  // group {2}: its prefill.
  REQUIRE(w.pass_count() == 4);
  CHECK(w.pass(0).member_count == 2);
  CHECK(w.pass(0).tokens == 3);
  CHECK(w.uses(0, 0).size() == 3);
  CHECK(w.pass(1).member_count == 2);
  REQUIRE(w.uses(1, 0).size() == 1);  // both route to expert 2
  CHECK(w.uses(1, 0)[0].tokens == 2);
  CHECK(w.pass(2).member_count == 1);
  CHECK(w.pass(3).batch_index == 1);
  CHECK(w.request_count() == 3);
  CHECK(w.decode_tokens() == 3);
}

TEST_CASE("workload options out of range are refused", "[sim][workload]") {
  const auto r = plain_request();
  CHECK(test::contains(test::thrown_message<ConfigError>([&] { (void)build_workload(r, {1, 4, 1}, {.batch = 0}); }),
                       "field 'batch' = 0"));
  CHECK(test::contains(test::thrown_message<ConfigError>([&] {
                         (void)build_workload(r, {1, 4, 1}, {.sd = SdReplay{.gamma = 0}});
                       }),
                       "field 'gamma' = 0"));
  CHECK(test::contains(test::thrown_message<ConfigError>([&] {
                         (void)build_workload(r, {1, 4, 1}, {.sd = SdReplay{.gamma = 2, .acceptance = 1.5}});
                       }),
                       "field 'acceptance' = 1.5"));
}

TEST_CASE("acceptance: a model card's rate and the per-draft-token probability", "[sim][workload]") {
  CHECK(acceptance_rate_of(0.5, 1) == 0.5);
  CHECK(acceptance_rate_of(0.5, 2) == 0.375);  // (0.5 + 0.25) / 2
  CHECK(acceptance_rate_of(0.78, 4) == Approx((0.78 + 0.6084 + 0.474552 + 0.37015056) / 4));
  CHECK(acceptance_rate_of(0.3, 0) == 0.0);
  CHECK(per_token_acceptance(0.375, 2) == Approx(0.5).epsilon(1e-12));
  CHECK(per_token_acceptance(0.4, 1) == Approx(0.4).epsilon(1e-12));
  CHECK(per_token_acceptance(0.0, 4) == Approx(0.0).margin(1e-12));
  CHECK(per_token_acceptance(1.0, 4) == Approx(1.0).epsilon(1e-12));
  for (std::uint32_t g : {1U, 2U, 4U, 8U}) {
    for (double rate : {0.1, 0.345, 0.558, 0.9}) {
      const double p = per_token_acceptance(rate, g);
      CHECK(p >= rate - 1e-12);  // accepting stops at the first rejection: the rate is below p for g > 1
      CHECK(acceptance_rate_of(p, g) == Approx(rate).epsilon(1e-9));
    }
  }
}

TEST_CASE("SD replay: rejected drafts take other tokens' routing", "[sim][workload]") {
  const auto r = plain_request();  // decode tokens 3..8 at output positions 0..5
  auto tokens = [](const Workload& w, std::uint64_t p) {
    const auto t = w.member_tokens(w.members(w.pass(p))[0]);
    return std::vector<std::uint64_t>(t.begin(), t.end());
  };
  SdReplay sd{.gamma = 2, .acceptance = 0.0};
  // Window 0 verifies positions 0..2 (tokens 3, 4, 5) and accepts none: positions 1 and 2 are rejected.
  sd.rejected = RejectedRouting::continuation;
  const Workload cont = build_workload(r, {1, 4, 1}, {.sd = sd});
  CHECK(tokens(cont, 1) == std::vector<std::uint64_t>{3, 4, 5});
  sd.rejected = RejectedRouting::nearby_token;
  sd.rejected_radius = 1;  // positions [0, 4) outside the window: position 3 alone (token 6)
  const Workload near = build_workload(r, {1, 4, 1}, {.sd = sd});
  CHECK(tokens(near, 1) == std::vector<std::uint64_t>{3, 6, 6});
  CHECK(near.uses(1, 0).size() == 2);  // experts 3 and 6 % 4 = 2; the continuation's would be 3, 0, 1
  sd.rejected_radius = 64;
  const Workload wide = build_workload(r, {1, 4, 1}, {.sd = sd});
  for (std::uint64_t t : {tokens(wide, 1)[1], tokens(wide, 1)[2]}) CHECK((t >= 6 && t <= 8));
  // The prefill pass replays its recorded step: no tokens carried.
  CHECK(wide.members(wide.pass(0))[0].step == 0);
  CHECK(wide.member_tokens(wide.members(wide.pass(0))[0]).empty());
  // The last window (position 5) has no drafts: a decode pass of token 8.
  CHECK(wide.pass(wide.pass_count() - 1).phase == StepPhase::decode);
  CHECK(tokens(wide, wide.pass_count() - 1) == std::vector<std::uint64_t>{8});
}

TEST_CASE("SD replay: a recorded SD trace's own rejected drafts stand in first", "[sim][workload]") {
  test::VecRouting r;
  r.layers = 1;
  r.top_k = 1;
  // Verify of 4 tokens (3 drafts), 1 accepted: tokens 0 and 1 are output, 2 and 3 were rejected.
  r.add({.request = 0, .phase = StepPhase::verify, .tokens = 4, .draft_len = 3, .accepted = 1}, {0, 1, 2, 3});
  for (std::uint16_t t = 4; t < 10; ++t) r.add({.request = 0, .phase = StepPhase::decode, .tokens = 1}, {std::uint16_t(t % 4)});
  const Workload w = build_workload(r, {1, 4, 1}, {.sd = SdReplay{.gamma = 2, .acceptance = 0.0}});
  // Output positions 0..7 (tokens 0, 1, 4..9); windows at 0..5 verify 3 tokens, at 6 two, at 7 one.
  REQUIRE(w.pass_count() == 8);
  for (std::uint64_t p = 0; p < 7; ++p) {
    const auto t = w.member_tokens(w.members(w.pass(p))[0]);
    REQUIRE(t.size() == (p < 6 ? 3U : 2U));
    for (std::size_t j = 1; j < t.size(); ++j) CHECK((t[j] == 2 || t[j] == 3));
  }
}

TEST_CASE("SD replay: stand-ins come from recorded drafts near the window, however the steps overlap", "[sim][workload]") {
  // Recorded verify steps of 4 drafts that accept none: step k emits its token 5k alone (output
  // position k) and records drafts 5k+1..5k+4 at positions k+1..k+4, so successive steps' draft
  // positions overlap (not in ascending order as recorded).
  test::VecRouting r;
  r.layers = 1;
  r.top_k = 1;
  for (std::uint16_t k = 0; k < 12; ++k) {
    r.add({.request = 0, .phase = StepPhase::verify, .tokens = 5, .draft_len = 4, .accepted = 0},
          {0, 1, 2, 3, std::uint16_t(k % 4)});
  }
  SdReplay sd{.gamma = 2, .acceptance = 0.0};
  sd.rejected_radius = 1;
  const Workload w = build_workload(r, {1, 4, 1}, {.sd = sd});
  std::size_t i = 0;  // each window accepts nothing: window p starts at output position p
  std::size_t checked = 0;
  for (std::uint64_t p = 0; p < w.pass_count(); ++p, ++i) {
    const auto t = w.member_tokens(w.members(w.pass(p))[0]);
    const std::size_t g = t.size() - 1;
    for (std::size_t j = 1; j < t.size(); ++j) {
      REQUIRE(t[j] % 5 != 0);              // a recorded draft, not an output token
      const std::size_t pos = t[j] / 5 + t[j] % 5;  // where it was drafted
      CHECK(pos + 1 >= i);                 // within 1 position of the window [i, i + g]
      CHECK(pos <= i + g + 1);
      ++checked;
    }
  }
  CHECK(checked > 10);
}

TEST_CASE("SD replay: the rejected-draft mode changes routing, never the acceptance draws", "[sim][workload]") {
  const auto r = test::random_routing(11, 2, 8, 2, 3, 5, 60);
  WorkloadOptions opt{.sd = SdReplay{.gamma = 4, .acceptance = 0.5, .seed = 3}};
  const Workload a = build_workload(r, {2, 8, 2}, opt);
  opt.sd->rejected = RejectedRouting::continuation;
  const Workload b = build_workload(r, {2, 8, 2}, opt);
  REQUIRE(a.pass_count() == b.pass_count());
  bool routing_differs = false;
  for (std::uint64_t p = 0; p < a.pass_count(); ++p) {
    REQUIRE(a.pass(p).member_count == b.pass(p).member_count);
    CHECK(a.pass(p).tokens == b.pass(p).tokens);
    for (std::uint32_t m = 0; m < a.pass(p).member_count; ++m) {
      const auto& ma = a.members(a.pass(p))[m];
      const auto& mb = b.members(b.pass(p))[m];
      CHECK(ma.emitted == mb.emitted);
      const auto ta = a.member_tokens(ma), tb = b.member_tokens(mb);
      REQUIRE(ta.size() == tb.size());
      // Accepted positions (0..emitted-1) are the continuation in both modes.
      for (std::uint32_t j = 0; j < ma.emitted && j < ta.size(); ++j) CHECK(ta[j] == tb[j]);
      for (std::size_t j = ma.emitted; j < ta.size(); ++j) routing_differs = routing_differs || ta[j] != tb[j];
    }
  }
  CHECK(routing_differs);
  CHECK(a.decode_tokens() == b.decode_tokens());
}
