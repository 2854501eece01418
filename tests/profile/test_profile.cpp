// Measured GPU profiles: the fits (fit/latency_fit.hpp), the file (io/profile_json.hpp) and the
// cost model that uses them (sim/cost_model.hpp with CostOptions::measured).
#include "support/catch.hpp"
#include "support/temp_dir.hpp"

#include <moesched/fit/latency_fit.hpp>
#include <moesched/io/presets.hpp>
#include <moesched/io/profile_json.hpp>
#include <moesched/sim/cost_model.hpp>

#include <algorithm>
#include <cmath>
#include <memory>
#include <filesystem>
#include <string>
#include <vector>

using namespace moesched;

namespace {

/// A profile whose items are exact linear functions (hand-chosen numbers, not a measurement).
profile::HardwareProfile exact_profile() {
  profile::HardwareProfile p;
  p.gpu = "test";
  p.model = "mixtral-8x7b";
  for (std::uint32_t t : {1U, 2U, 4U, 8U, 16U}) {
    p.expert_ffn.push_back({t, 40'000.0 + 500.0 * t});
    p.head.push_back({t, 20'000.0 + 100.0 * t});
    p.draft_step.push_back({t, 900'000.0 + 2'000.0 * t});
    p.router.push_back({t, 3'000.0 + 10.0 * t});
    for (std::uint64_t c : {0ULL, 1024ULL, 4096ULL}) {
      const auto d = fit::attention_drivers(t, static_cast<double>(c));
      p.dense.push_back({t, c, 60'000.0 + 300.0 * t + 2.0 * d[0] + 0.5 * d[1]});
    }
  }
  p.copy_h2d = {{4096, 6'000.0}, {1 << 20, 30'000.0}, {std::uint64_t{1} << 30, 20'000'000.0}};
  p.kernel_launch_ns = 2'500.0;
  p.gemm_slowdown_under_copy = 1.03;
  return p;
}

}  // namespace

TEST_CASE("fit_item recovers an exact linear time and reports zero error", "[profile][fit]") {
  std::vector<fit::FitRow> rows;
  for (double t : {1.0, 2.0, 4.0, 8.0}) rows.push_back({{1.0, t, 0.0, 0.0}, 1000.0 + 50.0 * t});
  const auto f = fit::fit_item(rows, 2, {"tokens"}, "expert_ffn");
  CHECK(f.time.c[0] == Approx(1000.0).epsilon(1e-9));
  CHECK(f.time.c[1] == Approx(50.0).epsilon(1e-9));
  CHECK(f.report.samples == 4);
  CHECK(f.report.max_relative_error < 1e-9);
  CHECK(f.time.at(3.0) == Nanoseconds{1150});
  CHECK(f.report.terms == "1.000 us + 50 ns x tokens");
}

TEST_CASE("fit_item keeps coefficients non-negative: the constrained optimum, hand-computed", "[profile][fit]") {
  // (1 token, 100 ns), (2 tokens, 300 ns): the unconstrained line is -100 + 200 t. Constrained, in
  // relative error: the slope alone minimises sum (c t / ns - 1)^2 at c = sum(t/ns) / sum(t^2/ns^2)
  // = (1/100 + 2/300) / (1/100^2 + 4/300^2) = 115.38..., error 0.0769; the constant alone gives
  // c = 120, error 0.40. So the fit is 0 + 115.38 t.
  const std::vector<fit::FitRow> rows = {{{1.0, 1.0, 0.0, 0.0}, 100.0}, {{1.0, 2.0, 0.0, 0.0}, 300.0}};
  const auto f = fit::fit_item(rows, 2, {"tokens"}, "x");
  CHECK(f.time.c[0] == 0.0);
  CHECK(f.time.c[1] == Approx((1.0 / 100 + 2.0 / 300) / (1.0 / 10000 + 4.0 / 90000)).epsilon(1e-9));
  CHECK(f.report.max_relative_error == Approx(1.0 - 2 * f.time.c[1] / 300.0).epsilon(1e-9));
  CHECK(f.time.at(1.0) >= Nanoseconds{1});
}

TEST_CASE("fit_item: a driver that never varies drops out; bad rows are errors naming the item", "[profile][fit]") {
  // x2 is always 5: collinear with the constant; the fit uses the constant and x1 only.
  std::vector<fit::FitRow> rows;
  for (double t : {1.0, 2.0, 3.0}) rows.push_back({{1.0, t, 5.0, 0.0}, 10.0 + 2.0 * t});
  const auto f = fit::fit_item(rows, 3, {"tokens", "context"}, "dense");
  CHECK(f.report.max_relative_error < 1e-9);
  CHECK(f.time.at(4.0, 5.0) == Nanoseconds{18});
  const std::string empty =
      test::thrown_message<ConfigError>([] { (void)fit::fit_item({}, 2, {"tokens"}, "head", "p.json"); });
  CHECK(test::contains(empty, "head"));
  CHECK(test::contains(empty, "p.json"));
  const std::vector<fit::FitRow> bad = {{{1.0, 1.0, 0.0, 0.0}, 0.0}};
  CHECK(test::contains(test::thrown_message<ConfigError>([&] { (void)fit::fit_item(bad, 2, {"tokens"}, "router", "p.json"); }),
                       "router[0].ns"));
}

TEST_CASE("fit_profile fits every item and reports each fit's error", "[profile][fit]") {
  const auto m = fit::fit_profile(exact_profile());
  REQUIRE(m.fits.size() == 7);  // six fitted items and the slowdown beside a copy (a measured constant)
  for (const auto& f : m.fits) CHECK(f.max_relative_error < 1e-6);
  CHECK(m.fits.back().item == "gemm_slowdown_under_copy");
  CHECK(test::contains(m.fits.back().terms, "x1.030"));
  CHECK(m.expert.at(4) == Nanoseconds{42'000});
  CHECK(m.head.at(2) == Nanoseconds{20'200});
  CHECK(m.draft_step.at(1) == Nanoseconds{902'000});
  CHECK(m.router.at(8) == Nanoseconds{3'080});
  const auto d = fit::attention_drivers(3, 100);
  CHECK(std::abs(static_cast<double>(m.dense.at(3, d[0], d[1]).count()) - (60'000 + 900 + 2 * 103 + 0.5 * 309)) <= 1.0);
  CHECK(m.copy_h2d.time(Bytes{1 << 20}) == Nanoseconds{30'000});
  CHECK(m.gemm_slowdown_under_copy == 1.03);
}

TEST_CASE("fit_profile: a noisy copy median that dips is raised to keep the curve non-decreasing", "[profile][fit]") {
  auto p = exact_profile();
  p.copy_h2d = {{4096, 6'000.0}, {8192, 5'900.0}, {1 << 20, 30'000.0}};
  const auto m = fit::fit_profile(p);
  CHECK(m.copy_h2d.time(Bytes{8192}) == Nanoseconds{6'000});
  const auto copy = std::find_if(m.fits.begin(), m.fits.end(), [](const auto& f) { return f.item == "copy_h2d"; });
  REQUIRE(copy != m.fits.end());
  CHECK(test::contains(copy->terms, "1 raised"));
}

TEST_CASE("a profile file round-trips, and bad files are errors naming file, field and value", "[profile][io]") {
  test::TempDir dir;
  const auto p = exact_profile();
  const auto path = dir.path() / "p.profile.json";
  io::write_profile(p, path, {"hand-made"});
  const auto q = io::read_profile(path);
  CHECK(q.source == path.string());
  CHECK(q.model == p.model);
  REQUIRE(q.dense.size() == p.dense.size());
  CHECK(q.dense[5].context == p.dense[5].context);
  CHECK(q.dense[5].ns == p.dense[5].ns);
  CHECK(q.copy_h2d.back().bytes == p.copy_h2d.back().bytes);
  CHECK(q.gemm_slowdown_under_copy == p.gemm_slowdown_under_copy);

  auto bad_of = [&](const profile::HardwareProfile& base, auto edit, const std::string& expect) {
    nlohmann::json j = io::profile_to_json(base);
    edit(j);
    const auto f = dir.write("bad.json", j.dump());
    const std::string msg = test::thrown_message<ConfigError>([&] { (void)io::read_profile(f); });
    CHECK(test::contains(msg, expect));
    CHECK(test::contains(msg, "bad.json"));
  };
  auto bad = [&](auto edit, const std::string& expect) { bad_of(p, edit, expect); };
  bad([](nlohmann::json& j) { j["format"] = "moesched-trace"; }, "not a hardware profile");
  bad([](nlohmann::json& j) { j["version"] = 2; }, "version");
  bad([](nlohmann::json& j) { j["expert_ffn"][1]["ns"] = -3.0; }, "expert_ffn[1].ns");
  bad([](nlohmann::json& j) { j["dense"][0]["tokns"] = 1; }, "dense[0].tokns");
  bad([](nlohmann::json& j) { j["copy_h2d"][1]["bytes"] = 4096; }, "copy_h2d[1].bytes");
  bad([](nlohmann::json& j) { j["router"] = nlohmann::json::array(); }, "router");
  bad([](nlohmann::json& j) { j.erase("head"); }, "head");
  // The optional host costs: absent above (not measured); present, every field is required but
  // handle_ns and copy_launch_ns (profiles written before they were measured: 0).
  CHECK_FALSE(q.host.measured());
  auto h = p;
  h.host = {.submit_dense_ns = 9'000.0, .submit_expert_ns = 8'000.0, .submit_head_ns = 4'000.0,
            .submit_draft_ns = 90'000.0, .launch_ns = 6'000.0, .notify_ns = 5'000.0, .handle_ns = 2'500.0,
            .copy_launch_ns = 11'000.0};
  const auto hp = dir.path() / "h.profile.json";
  io::write_profile(h, hp, {});
  const auto hq = io::read_profile(hp);
  CHECK(hq.host.submit_dense_ns == 9'000.0);
  CHECK(hq.host.submit_expert_ns == 8'000.0);
  CHECK(hq.host.submit_head_ns == 4'000.0);
  CHECK(hq.host.submit_draft_ns == 90'000.0);
  CHECK(hq.host.launch_ns == 6'000.0);
  CHECK(hq.host.notify_ns == 5'000.0);
  CHECK(hq.host.handle_ns == 2'500.0);
  CHECK(hq.host.copy_launch_ns == 11'000.0);
  {
    nlohmann::json j = io::profile_to_json(h);
    j["host"].erase("handle_ns");
    j["host"].erase("copy_launch_ns");
    const auto old = io::profile_from_json(j, "old.profile.json");
    CHECK(old.host.handle_ns == 0.0);
    CHECK(old.host.copy_launch_ns == 0.0);
    CHECK(old.host.notify_ns == 5'000.0);
  }
  auto bad_host = [&](auto edit, const std::string& expect) { bad_of(h, edit, expect); };
  bad_host([](nlohmann::json& j) { j["host"]["handle_ns"] = -2.0; }, "handle_ns");
  bad_host([](nlohmann::json& j) { j["host"]["copy_launch_ns"] = "fast"; }, "copy_launch_ns");
  bad_host([](nlohmann::json& j) { j["host"]["notify_ns"] = -1.0; }, "notify_ns");
  bad_host([](nlohmann::json& j) { j["host"]["submit_ns"].erase("expert"); }, "expert");
  bad_host([](nlohmann::json& j) { j["host"]["launch"] = 1.0; }, "launch");
  bad_host([](nlohmann::json& j) { j["host"] = 3; }, "host");
}

TEST_CASE("CostModel with a measured profile uses its times and its copy curve", "[profile][sim]") {
  const io::PresetCatalog catalog({std::string(MOESCHED_SOURCE_DIR) + "/presets"});
  const ModelDesc model = catalog.model("mixtral-8x7b");
  const HardwareDesc gpu = catalog.gpu("h200");
  auto measured = std::make_shared<const profile::MeasuredCosts>(fit::fit_profile(exact_profile()));
  sim::CostOptions opt;
  opt.measured = measured;
  const sim::CostModel roof(model, gpu);
  const sim::CostModel c(model, gpu, opt);
  REQUIRE(c.measured() == measured.get());
  CHECK(c.expert_time(1) == Nanoseconds{40'500});
  CHECK(c.expert_time(300) == Nanoseconds{190'000});  // beyond the table
  Pass p;
  p.tokens = 5;
  p.member_count = 1;
  p.kv_tokens = 1005;
  p.attention_pairs = 5 * 1005;
  p.draft_len = 4;
  // Mixtral: every decoder layer is a MoE layer, so every layer's scale is 1.
  CHECK(std::abs(static_cast<double>(c.dense_time(0, p).count()) - (60'000 + 1'500 + 2 * 1005 + 0.5 * 5025)) <= 1.0);
  CHECK(c.dense_time(0, p) == c.dense_time(31, p));
  CHECK(c.head_time(p) == Nanoseconds{20'500});
  CHECK(c.draft_time(p) == Nanoseconds{4 * 902'000});
  CHECK(c.router_time(2) == Nanoseconds{3'020});
  // copies follow the measured curve: 336 MiB at the last segment's rate
  CHECK(c.expert_copy_time() == measured->copy_h2d.time(model.expert_bytes()));
  CHECK(c.gpu().h2d.time(Bytes{4096}) == Nanoseconds{6'000});
  CHECK(c.expert_copy_time() != roof.expert_copy_time());
  // a copy of the cost model keeps the profile (the registry re-chunks by copying options)
  sim::CostOptions three = c.options();
  three.chunks = 3;
  const sim::CostModel c3(c.model(), gpu, three);
  CHECK(c3.expert_time(1) == Nanoseconds{40'500});
  Nanoseconds sum{0};
  for (auto t : c3.chunk_times()) sum += t;
  CHECK(sum == c3.expert_copy_time());
  CHECK(c3.chunk_times().size() == 3);
  // Host costs: none in this profile, so the simulator charges none; measured ones become whole ns
  // (rounded up) in the cost model, and the fit report lists them.
  CHECK_FALSE(c.host().any());
  auto hp = exact_profile();
  hp.host = {.submit_dense_ns = 9'000.2, .submit_expert_ns = 8'000.0, .submit_head_ns = 4'000.0,
             .submit_draft_ns = 90'000.0, .launch_ns = 6'000.0, .notify_ns = 5'000.0, .handle_ns = 2'400.5,
             .copy_launch_ns = 10'000.0};
  sim::CostOptions with_host;
  with_host.measured = std::make_shared<const profile::MeasuredCosts>(fit::fit_profile(hp));
  const sim::CostModel ch(model, gpu, with_host);
  CHECK(ch.host().submit_dense == Nanoseconds{9'001});
  CHECK(ch.host().submit_expert == Nanoseconds{8'000});
  CHECK(ch.host().submit_draft == Nanoseconds{90'000});
  CHECK(ch.host().launch == Nanoseconds{6'000});
  CHECK(ch.host().notify == Nanoseconds{5'000});
  CHECK(ch.host().handle == Nanoseconds{2'401});
  CHECK(ch.host().copy_launch == Nanoseconds{10'000});
  CHECK(ch.expert_time(1) == c.expert_time(1));
  bool listed = false;
  for (const auto& f : with_host.measured->fits) listed = listed || f.item == "host";
  CHECK(listed);
}

TEST_CASE("CostModel::dense_twin: layers with the same dense work have the same dense time", "[profile][sim]") {
  // SimBackend computes the dense part once per pass and twin; a twin that differs would change
  // every simulated time, so check the promise on every shipped model, roofline and measured.
  const io::PresetCatalog catalog({std::string(MOESCHED_SOURCE_DIR) + "/presets"});
  const HardwareDesc gpu = catalog.gpu("h200");
  std::vector<Pass> passes(3);
  passes[0].tokens = 1;
  passes[0].member_count = 1;
  passes[0].kv_tokens = 17;
  passes[0].attention_pairs = 17;
  passes[1].tokens = 5;
  passes[1].member_count = 1;
  passes[1].kv_tokens = 2'000;
  passes[1].attention_pairs = 5 * 2'000;
  passes[2].tokens = 64;
  passes[2].member_count = 64;
  passes[2].kv_tokens = 64 * 300;
  passes[2].attention_pairs = 64 * 300;
  std::uint32_t models = 0;
  for (const auto& f : std::filesystem::directory_iterator(std::string(MOESCHED_SOURCE_DIR) + "/presets/models")) {
    const ModelDesc model = io::load_model_preset(f.path());
    CAPTURE(model.name);
    auto prof = exact_profile();
    prof.model = model.name;
    sim::CostOptions measured;
    measured.measured = std::make_shared<const profile::MeasuredCosts>(fit::fit_profile(prof));
    for (const sim::CostModel& c : {sim::CostModel(model, gpu), sim::CostModel(model, gpu, measured)}) {
      std::uint32_t distinct = 0;
      for (std::uint32_t l = 0; l < model.shape.moe_layers(); ++l) {
        const std::uint32_t t = c.dense_twin(l);
        CHECK(t <= l);
        CHECK(c.dense_twin(t) == t);
        distinct += t == l ? 1U : 0U;
        for (const Pass& p : passes) CHECK(c.dense_time(l, p) == c.dense_time(t, p));
      }
      CHECK(distinct >= 1);
      // A leading dense decoder layer makes MoE layer 0's dense part its own.
      if (model.shape.first_dense_layers > 0 && model.shape.moe_layers() > 1) {
        CHECK(c.dense_twin(1) != 0);
        CHECK(c.dense_time(0, passes[1]) > c.dense_time(1, passes[1]));
      }
    }
    ++models;
  }
  CHECK(models >= 5);
}
