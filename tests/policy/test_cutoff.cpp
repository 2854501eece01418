// The analytical latency model and the SP-MoE cutoff solver: hand-computed cases, and the solver
// against an exhaustive search of the modelled verification time on random small instances.
#include "support/catch.hpp"

#include <moesched/core/random.hpp>
#include <moesched/policy/cutoff_solver.hpp>
#include <moesched/policy/latency_model.hpp>

#include <vector>

using namespace moesched;
using namespace std::chrono_literals;

namespace {
struct NoDraft {  // lacks draft_window_time(): not a latency model
  Nanoseconds expert_copy_time() const { return {}; }
  Bytes expert_bytes() const { return {}; }
  Nanoseconds layer_time(std::uint32_t, std::uint32_t) const { return {}; }
};
static_assert(!policy::LatencyModel<NoDraft>);

/// Copies 400 ns (400 bytes at 1 byte/ns), a layer 300 ns, drafts 250 ns a step.
policy::AnalyticalLatency model() {
  return {.copy_fixed = 0ns, .link_bytes_per_ns = 1.0, .expert = Bytes{400}, .dense = 300ns, .draft_step = 250ns};
}
}  // namespace

TEST_CASE("latency model: hand-computed copy, layer and draft times", "[policy][latency_model]") {
  const policy::AnalyticalLatency m{.copy_fixed = 3us, .link_bytes_per_ns = 25.0, .expert = Bytes{17'300'000},
                                    .dense = 60us, .dense_per_token = 2us, .expert_ffn = 35us,
                                    .expert_per_token = 1us, .top_k = 6, .draft_step = 900us};
  CHECK(m.expert_copy_time() == 695us);                       // 3 us + 17.3e6 / 25 ns
  CHECK(m.layer_time(5, 6) == 60us + 10us + 210us + 30us);    // dense, per token, FFNs, 5 x 6 routed
  CHECK(m.draft_window_time(4) == 3600us);
  CHECK(model().expert_copy_time() == 400ns);
}

TEST_CASE("cutoff: the closed form and the solver on a hand-computed case", "[policy][cutoff]") {
  // L = 4, k = 1, t_io = 400, t_l = 300, T_draft = 4 x 250 = 1000. All predictions right. The
  // drafting-time copies land at A_l = 400 (l + 1) - 1000 = -600, -200, 200, 600; a prefetched
  // layer runs at max(E_{l-1}, A_l): E = 300, 600, 900, 1200 (the copies past the window land while
  // earlier layers run); a layer beyond the cutoff costs max(300, 400) = 400.
  // V(c) = E_{c-1} + 400 (4 - c): 1600, 1500, 1400, 1300, 1200.
  const auto m = model();
  policy::CutoffInputs in{.layers = 4, .tokens = 5, .draft_window = m.draft_window_time(4),
                          .experts_per_layer = 1.0, .free_memory = Bytes{4000}};
  CHECK(policy::closed_form_cutoff(m, in) == 2);  // floor(1000 / 400)
  const std::vector<std::int64_t> v{1600, 1500, 1400, 1300, 1200};
  for (std::uint32_t c = 0; c <= 4; ++c) CHECK(policy::modelled_verify_time(m, in, c).count() == v[c]);
  auto best = policy::CutoffSolver{}.solve(m, in);
  CHECK(best.cutoff == 4);
  CHECK(best.verify_time == 1200ns);
  // Memory for one layer's experts only (less than the 2.5 copies the window lands): both stop at 1.
  in.free_memory = Bytes{400};
  CHECK(policy::memory_cutoff(m, in) == 1);
  CHECK(policy::closed_form_cutoff(m, in) == 1);
  CHECK(policy::CutoffSolver{}.solve(m, in).cutoff == 1);
  // Memory for 3 experts: the window lands 2.5 of them before verification starts, later copies
  // reuse the slots of layers already run: every layer fits (floor(M / (k S_e)) = 3 would cap it).
  in.free_memory = Bytes{1200};
  CHECK(policy::memory_cutoff(m, in) == 4);
  CHECK(policy::closed_form_cutoff(m, in) == 2);
  CHECK(policy::CutoffSolver{}.solve(m, in).cutoff == 4);
  // Half the predictions wrong: a prefetched layer costs 300 + 200 > 400: the solver prefetches
  // nothing (1600 ns) where the closed form still says 2 (V(2) = 500 + 500 + 2 x 400 = 1800).
  in.free_memory = Bytes{4000};
  const std::vector<double> half{0.5, 0.5, 0.5, 0.5};
  in.confidence = half;
  best = policy::CutoffSolver{}.solve(m, in);
  CHECK(best.cutoff == 0);
  CHECK(best.verify_time == 1600ns);
  CHECK(policy::modelled_verify_time(m, in, policy::closed_form_cutoff(m, in)) == 1800ns);
}

TEST_CASE("cutoff: the solver finds the exhaustive optimum of the model", "[policy][cutoff]") {
  Rng rng(12);
  for (int trial = 0; trial < 300; ++trial) {
    CAPTURE(trial);
    const policy::AnalyticalLatency m{.copy_fixed = Nanoseconds{static_cast<std::int64_t>(rng.below(50))},
                                      .link_bytes_per_ns = 0.5 + 4.0 * rng.uniform(),
                                      .expert = Bytes{100 + rng.below(2000)},
                                      .dense = Nanoseconds{static_cast<std::int64_t>(50 + rng.below(800))},
                                      .expert_ffn = Nanoseconds{static_cast<std::int64_t>(rng.below(100))},
                                      .draft_step = Nanoseconds{static_cast<std::int64_t>(100 + rng.below(900))}};
    std::vector<double> conf(1 + rng.below(12));
    for (double& p : conf) p = rng.uniform();
    const policy::CutoffInputs in{.layers = static_cast<std::uint32_t>(conf.size()),
                                  .tokens = 1 + static_cast<std::uint32_t>(rng.below(8)),
                                  .draft_window = m.draft_window_time(static_cast<std::uint32_t>(rng.below(8))),
                                  .experts_per_layer = 0.5 + 4.0 * rng.uniform(),
                                  .free_memory = Bytes{rng.below(40000)},
                                  .confidence = conf};
    const std::uint32_t cap = policy::memory_cutoff(m, in);
    std::uint32_t arg = 0;
    Nanoseconds low = policy::modelled_verify_time(m, in, 0);
    for (std::uint32_t c = 1; c <= cap; ++c) {
      const Nanoseconds v = policy::modelled_verify_time(m, in, c);
      if (v < low) {
        low = v;
        arg = c;
      }
    }
    const auto best = policy::CutoffSolver{}.solve(m, in);
    CHECK(best.cutoff <= cap);
    // the same time (cutoffs may differ only where times tie within rounding)
    CHECK(std::abs((best.verify_time - low).count()) <= 1);
    if (best.cutoff != arg) CHECK(std::abs((policy::modelled_verify_time(m, in, best.cutoff) - low).count()) <= 1);
    // the solver never does worse than the closed form under the model
    CHECK(best.verify_time <= policy::modelled_verify_time(m, in, policy::closed_form_cutoff(m, in)) + 1ns);
  }
}
