#include "support/catch.hpp"

#include <moesched/trace/import.hpp>

#include <fstream>
#include <iterator>

using namespace moesched;
using moesched::test::contains;
using moesched::test::thrown_message;

namespace {
io::Trace open(const io::TraceWriter& w, std::vector<std::byte>& keep) {
  keep = w.to_safetensors().serialize();
  return io::Trace::from_buffer(keep.data(), keep.size(), "imported");
}
std::string import_error(const std::string& text, trace::ImportOptions opt = {}) {
  return thrown_message<ConfigError>([&] { (void)trace::import_routing_text(text, "dump.jsonl", opt); });
}
}  // namespace

TEST_CASE("layout A: per (token, layer) records in any order", "[trace][import]") {
  const std::string text = R"({"problem_id": 7, "token_pos": 1, "layer": 1, "experts": [3, 0], "gating_probs": [0.5, 0.5]}
{"problem_id": 7, "token_pos": 0, "layer": 0, "experts": [1, 2], "gating_probs": [0.75, 0.25], "extra_thing": 1}

{"problem_id": 7, "token_pos": 0, "layer": 1, "experts": [2, 3], "gating_probs": [0.5, 0.5]}
{"problem_id": 7, "token_pos": 1, "layer": 0, "experts": [0, 1], "gating_probs": [0.5, 0.5]}
)";
  trace::ImportOptions opt;
  opt.experts = 4;
  opt.prefill_tokens = 1;
  auto [w, report] = trace::import_routing_text(text, "dump.jsonl", opt);
  CHECK(report.layout == "per (token, layer) records");
  CHECK(report.records == 4U);
  CHECK(report.tokens == 2U);
  CHECK(report.ignored.at("extra_thing") == 1U);
  std::vector<std::byte> keep;
  const auto t = open(w, keep);
  CHECK(t.meta().request_ids == std::vector<std::string>{"7"});
  REQUIRE(t.step_count() == 2U);
  CHECK(t.step(0).phase == StepPhase::prefill);
  CHECK(t.step(1).phase == StepPhase::decode);
  CHECK(t.expert(0, 0, 0) == 1U);
  CHECK(t.expert(0, 1, 1) == 3U);
  CHECK(t.expert(1, 1, 0) == 3U);
  CHECK(t.weight(0, 0, 0) == 0.75F);
  CHECK(t.position(1) == 1U);
}

TEST_CASE("layout B: per-token records with a layers map, meta, and SD steps", "[trace][import]") {
  const std::string text = R"({"meta": {"model": "m", "num_experts": 8, "top_k": 2, "temperature": 0}}
{"request_id": "a", "token_idx": 0, "phase": "prefill", "layers": {"0": {"experts": [1, 2]}, "1": {"experts": [3, 4]}}}
{"request_id": "a", "token_idx": 1, "phase": "prefill", "layers": {"0": {"experts": [1, 5]}, "1": {"experts": [3, 6]}}}
{"request_id": "b", "token_idx": 0, "phase": "decode", "token_id": 9, "layers": [[0, 1], [2, 3]]}
{"request_id": "a", "token_idx": 2, "phase": "verify", "step": 4, "draft_len": 2, "accepted": 2, "layers": {"0": [0, 1], "1": [0, 1]}}
{"request_id": "a", "token_idx": 3, "phase": "verify", "step": 4, "layers": {"0": [0, 2], "1": [0, 2]}}
{"request_id": "a", "token_idx": 4, "phase": "verify", "step": 4, "layers": {"0": [0, 3], "1": [0, 3]}}
)";
  auto [w, report] = trace::import_routing_text(text, "dump.jsonl", {});
  CHECK(report.layout == "per-token records with a layers map");
  CHECK(report.experts == 8U);
  CHECK(report.top_k == 2U);
  std::vector<std::byte> keep;
  const auto t = open(w, keep);
  CHECK(t.meta().model.name == "m");
  CHECK(t.meta().provenance.at("dump_meta").at("temperature") == 0);
  REQUIRE(t.step_count() == 3U);
  CHECK(t.step(0).phase == StepPhase::prefill);
  CHECK(t.step(0).tokens == 2U);
  CHECK(t.step(1).phase == StepPhase::verify);
  CHECK(t.step(1).draft_len == 2U);
  CHECK(t.step(1).accepted == 2U);
  CHECK(t.step(2).request == 1U);  // request "b"
  CHECK_FALSE(t.has_weights());
  CHECK_FALSE(t.has_token_ids());  // on one record only: reported, not imported
  bool noted = false;
  for (const auto& n : report.notes) noted = noted || contains(n, "token ids present on some records only");
  CHECK(noted);
}

TEST_CASE("decoder-layer ids map to MoE ordinals with a model shape", "[trace][import]") {
  ModelShape s;
  s.decoder_layers = 4;
  s.first_dense_layers = 1;
  s.dense_ffn = 8;
  s.hidden = 8;
  s.moe_ffn = 4;
  s.experts_per_layer = 4;
  s.top_k = 1;
  s.vocab = 10;
  s.attention = {.heads = 1, .kv_heads = 1, .head_dim = 8};
  trace::ImportOptions opt;
  opt.shape = s;
  const std::string text = R"([{"token_idx": 0, "layer": 1, "experts": [0]}, {"token_idx": 0, "layer": 2, "experts": [1]},
                               {"token_idx": 0, "layer": 3, "experts": [2]}])";
  auto [w, report] = trace::import_routing_text(text, "dump.json", opt);
  std::vector<std::byte> keep;
  const auto t = open(w, keep);
  CHECK(t.meta().model.moe_layers == 3U);
  CHECK(t.expert(0, 0, 0) == 0U);
  CHECK(t.expert(0, 2, 0) == 2U);
  CHECK(contains(report.notes.front(), "decoder-layer indices"));
  CHECK(contains(import_error(R"({"token_idx": 0, "layer": 5, "experts": [0]})", opt),
                 "dump.jsonl: field 'layer' = 5: are neither MoE-layer ordinals (0..2) nor the model's MoE decoder layers"));
}

TEST_CASE("custom field names", "[trace][import]") {
  trace::ImportOptions opt;
  opt.fields.set("token", {"t"});
  opt.fields.set("experts", {"ids"});
  auto [w, report] = trace::import_routing_text(R"({"t": 0, "layer": 0, "ids": [2]})", "d", opt);
  CHECK(report.tokens == 1U);
  CHECK(contains(thrown_message<ConfigError>([&] { opt.fields.set("tokn", {"x"}); }), "field '--field' = tokn: unknown field"));
}

TEST_CASE("inconsistent dumps are rejected with the record named", "[trace][import][bad_input]") {
  CHECK(import_error("") == "dump.jsonl: the file is empty");
  CHECK(contains(import_error("{\"token_idx\": 0, \"layer\": 0, \"experts\": [1]}\n{not json}\n"), "dump.jsonl: field 'line 2': not valid JSON: parse error at line 1, column 3"));
  CHECK(import_error(R"({"token_idx": 0, "experts": [1]})") ==
        "dump.jsonl: field 'record 0.layer': missing: a record needs a layer and its experts, or a layers map (field names: see --field)");
  CHECK(contains(import_error("{\"token_idx\": 0, \"layer\": 0, \"experts\": [1, 2]}\n{\"token_idx\": 1, \"layer\": 0, \"experts\": [3]}\n"),
                 "every expert list must have top_k = 2 ids"));
  CHECK(contains(import_error("{\"token_idx\": 0, \"layer\": 0, \"experts\": [1], \"weights\": [1.0]}\n{\"token_idx\": 1, \"layer\": 0, \"experts\": [3]}\n"),
                 "line 2.weights': missing here but present on other records"));
  CHECK(contains(import_error("{\"token_idx\": 0, \"layer\": 0, \"experts\": [1, 1]}\n"), "expert chosen twice"));
  CHECK(contains(import_error("{\"token_idx\": 0, \"layer\": 0, \"experts\": [1]}\n{\"token_idx\": 0, \"layer\": 0, \"experts\": [2]}\n"),
                 "has this layer twice"));
  CHECK(contains(import_error("{\"token_idx\": 0, \"layer\": 0, \"experts\": [-1]}\n"), "expert ids must be between 0 and 32767"));
  CHECK(contains(import_error("{\"token_idx\": 0, \"layer\": 0, \"experts\": [1], \"phase\": \"warmup\"}\n"),
                 "field 'record 0.phase' = \"warmup\": expected \"prefill\", \"decode\" or \"verify\""));
  trace::ImportOptions opt;
  opt.experts = 2;
  CHECK(contains(import_error("{\"token_idx\": 0, \"layer\": 0, \"experts\": [5]}\n", opt), "expert id at or above the expert count (2)"));
  // a number too large for a double: nlohmann throws out_of_range, not parse_error (found by fuzzing)
  CHECK(contains(import_error("{\"token_idx\": 1e999999, \"layer\": 0, \"experts\": [1]}\n"), "line 1': not valid JSON: number overflow"));
  std::ifstream crash(std::string(MOESCHED_TEST_DATA_DIR) + "/import/regression-number-overflow.jsonl", std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(crash)), std::istreambuf_iterator<char>());
  REQUIRE_FALSE(text.empty());
  CHECK(contains(import_error(text), "not valid JSON"));
}
