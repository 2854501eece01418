#include "support/catch.hpp"
#include "support/temp_dir.hpp"

#include <moesched/core/sizing.hpp>
#include <moesched/io/presets.hpp>

#include <cmath>
#include <string>

using namespace moesched;
using moesched::test::contains;
using moesched::test::TempDir;
using moesched::test::thrown_message;
using nlohmann::json;

namespace {
const std::filesystem::path kPresets = std::filesystem::path(MOESCHED_SOURCE_DIR) / "presets";

ModelDesc shipped_model(const std::string& file) {
  return io::load_model_preset(kPresets / "models" / (file + ".json"));
}
HardwareDesc shipped_gpu(const std::string& file) {
  return io::load_gpu_preset(kPresets / "gpus" / (file + ".json"));
}

/// One row of the design guide's model table (section 2).
struct GuideRow {
  const char* file;
  double mb_per_expert;  // as printed in the table
  double mb_tolerance;   // half a unit of the printed precision
  std::uint32_t experts, top_k, moe_layers;
  double copy_ms_at_55;  // "copy at 55 GB/s"
  double ffn_us;         // measured FFN, 16 tokens, H200; 0 = not given
  std::uint64_t exact_bytes;  // 3 * hidden * ffn * 2 (+ biases) from the model's config.json
};
constexpr GuideRow kGuide[] = {
    {"mixtral-8x7b", 352, 0.5, 8, 2, 32, 6.4, 96, 352321536ULL},
    {"phi-3.5-moe", 157, 0.5, 16, 2, 32, 2.8, 52, 157286400ULL},
    {"deepseek-v2-lite", 17.3, 0.05, 64, 6, 26, 0.31, 35, 17301504ULL},
    {"qwen1.5-moe-a2.7b", 17.3, 0.05, 60, 4, 24, 0.31, 35, 17301504ULL},
    {"olmoe-1b-7b", 12.6, 0.05, 64, 8, 16, 0.23, 34, 12582912ULL},
    {"qwen3-30b-a3b", 9.4, 0.05, 128, 8, 48, 0.17, 0, 9437184ULL},
    {"gpt-oss-20b", 49.8, 0.05, 32, 4, 24, 0.9, 36, (3ULL * 2880 * 2880 + 2 * 2880 + 2880) * 2},
};

json mixtral_json() {
  return io::read_json_file(kPresets / "models" / "mixtral-8x7b.json");
}
json h200_json() { return io::read_json_file(kPresets / "gpus" / "h200.json"); }

std::string model_error(const TempDir& dir, const json& j, const std::string& name = "bad.json") {
  const auto path = dir.write(name, j.dump(2));
  return thrown_message<ConfigError>([&] { (void)io::load_model_preset(path); });
}
std::string gpu_error(const TempDir& dir, const json& j) {
  const auto path = dir.write("bad_gpu.json", j.dump(2));
  return thrown_message<ConfigError>([&] { (void)io::load_gpu_preset(path); });
}
}  // namespace

TEST_CASE("every shipped model matches the design guide's table", "[io][presets]") {
  for (const auto& row : kGuide) {
    INFO(row.file);
    const ModelDesc m = shipped_model(row.file);
    CHECK(m.dtype == DType::bf16);
    CHECK_FALSE(m.source.empty());
    CHECK(std::abs(m.expert_bytes().megabytes() - row.mb_per_expert) <= row.mb_tolerance);
    CHECK(m.expert_bytes().count == row.exact_bytes);
    CHECK(m.shape.experts_per_layer == row.experts);
    CHECK(m.shape.top_k == row.top_k);
    CHECK(m.shape.moe_layers() == row.moe_layers);
    const double copy_ms = m.expert_bytes().megabytes() / 55.0;  // MB / (GB/s) = ms
    CHECK(copy_ms == Approx(row.copy_ms_at_55).epsilon(0.035));
  }
}

TEST_CASE("derived parameter totals reproduce the published ones within 0.5%", "[io][presets]") {
  for (const auto& row : kGuide) {
    INFO(row.file);
    const ModelDesc m = shipped_model(row.file);
    REQUIRE(m.published_total_params.has_value());
    CHECK(static_cast<double>(m.shape.total_params()) ==
          Approx(*m.published_total_params).epsilon(0.005));
  }
}

TEST_CASE("active parameters match the model cards' active counts", "[io][presets]") {
  // Model cards count active parameters differently (embeddings in or out), so check the
  // routed part only: experts used per token.
  const ModelDesc mixtral = shipped_model("mixtral-8x7b");
  // 12.9B active for Mixtral (Mistral AI): 46.7 - 6 of 8 experts per layer
  CHECK(static_cast<double>(mixtral.shape.active_params()) == Approx(12.9e9).epsilon(0.01));
}

TEST_CASE("the first-order FFN estimate is within 25% of the guide's H200 measurements",
          "[io][presets][sizing]") {
  const HardwareDesc h200 = shipped_gpu("h200");
  for (const auto& row : kGuide) {
    if (row.ffn_us == 0) continue;
    INFO(row.file);
    const auto t = expert_ffn_time(shipped_model(row.file), h200, 16);
    CHECK(to_us(t) == Approx(row.ffn_us).epsilon(0.25));
  }
}

TEST_CASE("H200 expert copy times follow the measured curve", "[io][presets][sizing]") {
  const HardwareDesc h200 = shipped_gpu("h200");
  CHECK(to_ms(expert_copy_time(shipped_model("mixtral-8x7b"), h200)) == Approx(6.4).epsilon(0.01));
  CHECK(to_ms(expert_copy_time(shipped_model("deepseek-v2-lite"), h200)) ==
        Approx(0.31).epsilon(0.03));
  // per-matrix chunks add two fixed costs, no more
  const ModelDesc olmoe = shipped_model("olmoe-1b-7b");
  const auto whole = expert_copy_time(olmoe, h200);
  const auto chunked = expert_copy_time(olmoe, h200, 3);
  CHECK(chunked > whole);
  CHECK(to_us(chunked - whole) < 10.0);
}

TEST_CASE("every shipped GPU loads with sane numbers", "[io][presets]") {
  for (const char* name : {"rtx3090", "rtx4090", "a100-40gb-pcie", "h100-pcie", "h200", "h200-measured"}) {
    INFO(name);
    const HardwareDesc g = shipped_gpu(name);
    CHECK(g.name == name);
    CHECK_FALSE(g.source.empty());
    CHECK(g.usable_memory() > Bytes::gib(20));
    const double gbps = g.h2d.effective_bandwidth(Bytes::mib(64)).gb_per_s();
    const bool pcie5 = g.interconnect.find("PCIe 5.0") != std::string::npos;
    CHECK(gbps > (pcie5 ? 50.0 : 20.0));
    CHECK(gbps < (pcie5 ? 64.0 : 32.0));  // below the link's theoretical peak
    CHECK(g.compute.memory_bandwidth.gb_per_s() > 900.0);
  }
  const HardwareDesc h200 = shipped_gpu("h200");
  CHECK(h200.copy_engines == 3U);
  CHECK(h200.usable_memory().gibibytes() == Approx(138.8).epsilon(0.001));
  CHECK(h200.h2d.knots().size() == 6U);
  REQUIRE(h200.bidirectional_total.has_value());
  CHECK(h200.bidirectional_total->gb_per_s() == Approx(92.7));
  CHECK(h200.d2h.knots() == h200.h2d.knots());  // d2h defaults to h2d
}

TEST_CASE("the project's own H200 link measurement agrees with the guide's for large copies",
          "[io][presets]") {
  const HardwareDesc guide = shipped_gpu("h200");
  const HardwareDesc measured = shipped_gpu("h200-measured");
  CHECK(measured.h2d.knots().size() == 10U);
  CHECK(measured.d2h.knots().size() == 10U);
  for (const char* model : {"mixtral-8x7b", "phi-3.5-moe", "deepseek-v2-lite", "qwen3-30b-a3b"}) {
    INFO(model);
    const ModelDesc m = shipped_model(model);
    CHECK(to_us(expert_copy_time(m, measured)) == Approx(to_us(expert_copy_time(m, guide))).epsilon(0.03));
  }
  // small copies cost more in the measurement (an event pair around each copy): 4.2 us vs 2.7 us
  CHECK(measured.h2d.time(Bytes::kib(4)) > guide.h2d.time(Bytes::kib(4)));
  CHECK(measured.h2d.asymptotic_bandwidth().gb_per_s() == Approx(55.5).epsilon(0.01));
}

TEST_CASE("dtype variants of shipped models", "[io][presets]") {
  const ModelDesc gptoss = shipped_model("gpt-oss-20b");
  // MXFP4 experts: 4.25 bits per weight plus 16-bit biases
  const double ratio = static_cast<double>(gptoss.with_dtype(DType::mxfp4).expert_bytes().count) /
                       static_cast<double>(gptoss.expert_bytes().count);
  CHECK(ratio == Approx(4.25 / 16.0).epsilon(0.01));
  const ModelDesc mixtral = shipped_model("mixtral-8x7b");
  CHECK(mixtral.with_dtype(DType::f16).expert_bytes() == mixtral.expert_bytes());
  CHECK(mixtral.with_dtype(DType::int4).expert_bytes().megabytes() == Approx(93.6).epsilon(0.01));
}

TEST_CASE("bad model presets: errors name the file, the field and the value", "[io][presets][bad_input]") {
  TempDir dir;
  const std::string bad = (dir.path() / "bad.json").string();

  SECTION("missing file") {
    const auto p = dir.path() / "nope.json";
    const auto m = thrown_message<ConfigError>([&] { (void)io::load_model_preset(p); });
    CHECK(m == p.string() + ": no such file");
  }
  SECTION("malformed JSON") {
    const auto p = dir.write("broken.json", "{\n  \"name\": \"x\",\n  \"top_k\": \n}");
    const auto m = thrown_message<ConfigError>([&] { (void)io::load_model_preset(p); });
    CHECK(contains(m, p.string() + ": not valid JSON: parse error at line 4, column 1"));
  }
  SECTION("not UTF-8") {
    const auto p = dir.write("latin1.json", std::string("{\"name\": \"caf\xe9\"}"));
    const auto m = thrown_message<ConfigError>([&] { (void)io::load_model_preset(p); });
    CHECK(contains(m, p.string() + ": not valid JSON"));
  }
  SECTION("a number too large for a double") {
    const auto p = dir.write("huge.json", "{\"hidden_size\": 1e999999}");
    CHECK(contains(thrown_message<ConfigError>([&] { (void)io::load_model_preset(p); }), p.string() + ": not valid JSON: number overflow"));
  }
  SECTION("root is not an object") {
    const auto m = model_error(dir, json::array({1, 2}));
    CHECK(m == bad + ": field '(root)' = [1,2]: expected an object, got array");
  }
  SECTION("negative size") {
    json j = mixtral_json();
    j["hidden_size"] = -4096;
    CHECK(model_error(dir, j) == bad + ": field 'hidden_size' = -4096: must be a positive integer");
  }
  SECTION("zero size") {
    json j = mixtral_json();
    j["moe_intermediate_size"] = 0;
    CHECK(model_error(dir, j) == bad + ": field 'moe_intermediate_size' = 0: must be a positive integer");
  }
  SECTION("zero nested size") {
    json j = mixtral_json();
    j["attention"]["head_dim"] = 0;
    CHECK(model_error(dir, j) == bad + ": field 'attention.head_dim' = 0: must be a positive integer");
  }
  SECTION("top_k larger than the expert count") {
    json j = mixtral_json();
    j["top_k"] = 9;
    CHECK(model_error(dir, j) ==
          bad + ": field 'top_k' = 9: must be between 1 and num_experts (8)");
  }
  SECTION("wrong field type") {
    json j = mixtral_json();
    j["hidden_size"] = "4096";
    CHECK(model_error(dir, j) == bad + ": field 'hidden_size' = \"4096\": expected an integer, got string");
    j = mixtral_json();
    j["tie_embeddings"] = 1;
    CHECK(model_error(dir, j) == bad + ": field 'tie_embeddings' = 1: expected true or false, got integer");
    j = mixtral_json();
    j["attention"] = 32;
    CHECK(model_error(dir, j) == bad + ": field 'attention' = 32: expected an object, got integer");
  }
  SECTION("unknown field") {
    json j = mixtral_json();
    j["hiden_size"] = 4096;
    CHECK(contains(model_error(dir, j),
                   bad + ": field 'hiden_size' = 4096: unknown field (did you mean 'hidden_size'?)"));
    j = mixtral_json();
    j["attention"]["kv_head"] = 8;
    CHECK(contains(model_error(dir, j), "field 'attention.kv_head' = 8: unknown field (did you mean 'kv_heads'?)"));
  }
  SECTION("unknown dtype") {
    json j = mixtral_json();
    j["dtype"] = "int3";
    CHECK(model_error(dir, j) ==
          bad + ": field 'dtype' = \"int3\": unknown dtype; known: f32, bf16, fp16, fp8, int8, int4, mxfp4");
  }
  SECTION("unknown enum value") {
    json j = mixtral_json();
    j["attention"]["kind"] = "sliding";
    CHECK(model_error(dir, j) ==
          bad + ": field 'attention.kind' = \"sliding\": unknown value; expected one of: gqa, mla");
  }
  SECTION("missing required field") {
    json j = mixtral_json();
    j.erase("num_experts");
    CHECK(model_error(dir, j) == bad + ": field 'num_experts': required field is missing");
  }
  SECTION("a GPU preset given as a model") {
    CHECK(model_error(dir, h200_json()) ==
          bad + ": field 'kind' = \"gpu\": this is not a model preset (expected \"model\")");
  }
  SECTION("inconsistent shape caught by validation, attributed to the file") {
    json j = mixtral_json();
    j["attention"]["kv_heads"] = 5;
    CHECK(model_error(dir, j) ==
          bad + ": field 'attention.kv_heads' = 5: must divide attention.heads (32)");
  }
}

TEST_CASE("bad GPU presets: errors name the file, the field and the value", "[io][presets][bad_input]") {
  TempDir dir;
  const std::string bad = (dir.path() / "bad_gpu.json").string();
  SECTION("zero bandwidth") {
    json j = h200_json();
    j["h2d"] = {{"bandwidth_gbps", 0}, {"per_copy_overhead_us", 2}};
    CHECK(gpu_error(dir, j) == bad + ": field 'h2d.bandwidth_gbps' = 0: must be positive");
  }
  SECTION("negative per-copy overhead") {
    json j = h200_json();
    j["h2d"] = {{"bandwidth_gbps", 25}, {"per_copy_overhead_us", -1}};
    CHECK(gpu_error(dir, j) == bad + ": field 'h2d.per_copy_overhead_us' = -1: must not be negative");
  }
  SECTION("curve sizes out of order") {
    json j = h200_json();
    j["h2d"]["points"][2]["bytes"] = 4096;
    CHECK(contains(gpu_error(dir, j),
                   bad + ": field 'h2d.points[2].bytes' = 4096: sizes must increase strictly"));
  }
  SECTION("curve point with a wrong type") {
    json j = h200_json();
    j["h2d"]["points"][1]["gbps"] = "fast";
    CHECK(gpu_error(dir, j) ==
          bad + ": field 'h2d.points[1].gbps' = \"fast\": expected a number, got string");
  }
  SECTION("curve points given as copy times") {
    json j = h200_json();
    j["h2d"] = {{"points", {{{"bytes", 4096}, {"us", 2.7}}, {{"bytes", 1048576}, {"us", 21.6}}}}};
    const auto path = dir.write("us_gpu.json", j.dump());
    const HardwareDesc g = io::load_gpu_preset(path);
    CHECK(g.h2d.time(Bytes{4096}) == Nanoseconds{2700});
    CHECK(g.h2d.time(Bytes{1048576}) == Nanoseconds{21600});
  }
  SECTION("a curve point with both or neither of gbps and us") {
    json j = h200_json();
    j["h2d"]["points"][0]["us"] = 2.7;
    CHECK(gpu_error(dir, j) == bad + ": field 'h2d.points[0].us' = 2.7: give exactly one of \"gbps\" and \"us\" per point");
    j = h200_json();
    j["h2d"]["points"][0].erase("gbps");
    CHECK(gpu_error(dir, j) == bad + ": field 'h2d.points[0].gbps': give exactly one of \"gbps\" and \"us\" per point");
  }
  SECTION("curve copy times that fall with size") {
    json j = h200_json();
    j["h2d"] = {{"points", {{{"bytes", 4096}, {"us", 3.0}}, {{"bytes", 8192}, {"us", 2.0}}}}};
    CHECK(contains(gpu_error(dir, j), bad + ": field 'h2d.points[1].us' = 2: implies"));
  }
  SECTION("curve and affine parameters together") {
    json j = h200_json();
    j["h2d"]["bandwidth_gbps"] = 55;
    CHECK(contains(gpu_error(dir, j), "field 'h2d.bandwidth_gbps' = 55: give either"));
  }
  SECTION("reservation above memory") {
    json j = h200_json();
    j["reserved_mib"] = 200000;
    CHECK(contains(gpu_error(dir, j), bad + ": field 'reserved_mib' = 200000: must be below memory"));
  }
  SECTION("zero memory") {
    json j = h200_json();
    j["memory_gib"] = 0;
    CHECK(gpu_error(dir, j) == bad + ": field 'memory_gib' = 0: must be positive");
  }
  SECTION("compute section missing a peak") {
    json j = h200_json();
    j["compute"].erase("bf16_tflops");
    CHECK(gpu_error(dir, j) == bad + ": field 'compute.bf16_tflops': required field is missing");
  }
  SECTION("unknown field in a nested object") {
    json j = h200_json();
    j["compute"]["memory_bandwith_gbps"] = 1;
    CHECK(contains(gpu_error(dir, j), "field 'compute.memory_bandwith_gbps' = 1: unknown field "
                                      "(did you mean 'memory_bandwidth_gbps'?)"));
  }
  SECTION("a model preset given as a GPU") {
    CHECK(gpu_error(dir, mixtral_json()) ==
          bad + ": field 'kind' = \"model\": this is not a gpu preset (expected \"gpu\")");
  }
}
