#include "support/catch.hpp"

#include <moesched/trace/import.hpp>

#include <cstdio>
#include <filesystem>
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
std::string import_error(const std::string& text, trace::ImportOptions opt = {}, const std::string& name = "dump.jsonl") {
  return thrown_message<ConfigError>([&] { (void)trace::import_routing_text(text, name, opt); });
}
/// "a:prefill*2 | a:decode | b:verify*3(2,1)": request id, phase, tokens (if > 1), draft/accepted
std::string steps_of(const io::Trace& t) {
  std::string s;
  for (StepInfo st : t.steps()) {
    s += s.empty() ? "" : " | ";
    s += t.meta().request_ids.at(st.request) + ":" + std::string(phase_name(st.phase));
    if (st.tokens > 1) s += "*" + std::to_string(st.tokens);
    if (st.phase == StepPhase::verify) s += "(" + std::to_string(st.draft_len) + "," + std::to_string(st.accepted) + ")";
  }
  return s;
}
/// "@5 1,2/3,4 ; @6 ...": each token's position, then its experts per layer
std::string routing_of(const io::Trace& t) {
  std::string s;
  const auto& m = t.meta().model;
  for (std::uint64_t tok = 0; tok < t.token_count(); ++tok) {
    s += s.empty() ? "" : " ; ";
    if (t.has_positions()) s += "@" + std::to_string(t.position(tok)) + " ";
    for (std::uint32_t l = 0; l < m.moe_layers; ++l) {
      if (l > 0) s += "/";
      for (std::uint32_t k = 0; k < m.top_k; ++k) s += (k ? "," : "") + std::to_string(t.expert(tok, l, k));
    }
  }
  return s;
}
std::vector<std::string> dropped_lines(const trace::ImportReport& r) {
  std::vector<std::string> out;
  for (const auto& d : r.dropped) out.push_back(trace::describe(d));
  return out;
}
bool has_note(const trace::ImportReport& r, const std::string& text) {
  for (const auto& n : r.notes) {
    if (n == text) return true;
  }
  return false;
}
std::string all_notes(const trace::ImportReport& r) {
  std::string s;
  for (const auto& n : r.notes) s += n + "\n";
  return s;
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
  CHECK(report.dropped.empty());
  CHECK(has_note(report, "fields read: request 'problem_id', position 'token_pos', layer 'layer', experts 'experts', weights 'gating_probs'"));
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
  CHECK(steps_of(t) == "a:prefill*2 | a:verify*3(2,2) | b:decode");
  CHECK_FALSE(t.has_weights());
  CHECK_FALSE(t.has_token_ids());  // on one record only: reported, not imported
  CHECK(has_note(report, "token ids present on some records only: not imported"));
  CHECK(has_note(report, "layer ids of per-layer lists are the list positions (entries without a layer field)"));
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
  CHECK(routing_of(t) == "@0 0/1/2");
  CHECK(has_note(report, "layer ids read as decoder-layer indices and mapped to MoE-layer ordinals"));
  CHECK(has_note(report, "3 records without a request field were put in request '0'"));
  CHECK(contains(import_error(R"({"token_idx": 0, "layer": 5, "experts": [0]})", opt),
                 "dump.jsonl: field 'layer' = 5: are neither MoE-layer ordinals (0..2) nor the model's MoE decoder layers"));

  SECTION("layer maps keyed by module names: the one number in the name") {
    const std::string hf = R"({"token_idx": 0, "layers": {"model.layers.3.mlp.gate": [2], "model.layers.1.mlp.gate": [0], "model.layers.2.mlp.gate": [3]}})";
    auto [w2, r2] = trace::import_routing_text(hf, "hf.jsonl", opt);
    std::vector<std::byte> keep2;
    CHECK(routing_of(open(w2, keep2)) == "@0 0/3/2");
    CHECK(has_note(r2, "layer ids read from names holding one number ('model.layers.1.mlp.gate' -> 1)"));
    CHECK(import_error(R"({"token_idx": 0, "layers": {"blk.1.ffn.2": [0]}})", opt) ==
          "dump.jsonl: field 'record 0.layers' = \"blk.1.ffn.2\": expected a layer index: an integer, or a name holding one number such as "
          "model.layers.3.mlp");
  }
}

TEST_CASE("per-layer lists: entries holding their layer, null entries, one expert list per layer", "[trace][import]") {
  trace::ImportOptions opt;
  opt.experts = 8;
  SECTION("entries name their layer, in any order") {
    const std::string text =
        R"({"request_id": "r", "token_idx": 4, "layers": [{"layer_idx": 1, "topk_ids": [5, 6], "topk_weights": [0.5, 0.5]}, {"layer_idx": 0, "topk_ids": [1, 2], "topk_weights": [0.75, 0.25]}]})"
        "\n"
        R"({"request_id": "r", "token_idx": 5, "layers": [{"layer_idx": 0, "topk_ids": [3, 4], "topk_weights": [0.5, 0.5]}, {"layer_idx": 1, "topk_ids": [7, 0], "topk_weights": [0.5, 0.5], "logits": [1]}]})"
        "\n";
    auto [w, report] = trace::import_routing_text(text, "dump.jsonl", opt);
    std::vector<std::byte> keep;
    const auto t = open(w, keep);
    CHECK(routing_of(t) == "@4 1,2/5,6 ; @5 3,4/7,0");
    CHECK(t.weight(0, 0, 0) == 0.75F);
    CHECK(report.ignored.at("layers.*.logits") == 1U);
    for (const auto& n : report.notes) CHECK_FALSE(contains(n, "list positions"));
  }
  SECTION("a list by position with null entries (a dense layer)") {
    auto [w, report] = trace::import_routing_text(R"({"token_idx": 0, "layers": [null, [1, 2], [3, 4]]})", "dump.jsonl", opt);
    std::vector<std::byte> keep;
    const auto t = open(w, keep);
    CHECK(t.meta().model.moe_layers == 2U);
    CHECK(routing_of(t) == "@0 1,2/3,4");
    CHECK(has_note(report, "1 null per-layer entries skipped (layers without routing)"));
    CHECK(has_note(report, "moe_layers = 2 inferred from the distinct layer ids (1..2); pass --model to map decoder layers"));
  }
  SECTION("experts as one list per layer, weights alike") {
    auto [w, report] = trace::import_routing_text(R"({"token_idx": 0, "topk_ids": [[1, 2], [3, 4]], "topk_weights": [[0.5, 0.5], [0.25, 0.75]]})",
                                                  "dump.jsonl", opt);
    std::vector<std::byte> keep;
    const auto t = open(w, keep);
    CHECK(routing_of(t) == "@0 1,2/3,4");
    CHECK(t.weight(0, 1, 1) == 0.75F);
    CHECK(report.layout == "per-token records with a layers map");
    CHECK(import_error(R"({"token_idx": 0, "topk_ids": [[1, 2], [3, 4]], "topk_weights": [[0.5, 0.5]]})", opt) ==
          "dump.jsonl: field 'record 0.topk_weights' = [[0.5,0.5]]: expected one list of weights per layer, like topk_ids");
  }
}

TEST_CASE("custom field names and composite request keys", "[trace][import]") {
  trace::ImportOptions opt;
  opt.fields.set("token", {"t"});
  opt.fields.set("experts", {"ids"});
  auto [w, report] = trace::import_routing_text(R"({"t": 0, "layer": 0, "ids": [2]})", "d", opt);
  CHECK(report.tokens == 1U);
  CHECK(contains(thrown_message<ConfigError>([&] { opt.fields.set("tokn", {"x"}); }), "field '--field' = tokn: unknown field"));

  // problem_id 1 exists in two data sets: one request each
  const std::string text = R"({"dataset": "gsm8k", "problem_id": 1, "token_idx": 0, "layer": 0, "experts": [1]}
{"dataset": "mbpp", "problem_id": 1, "token_idx": 0, "layer": 0, "experts": [2]}
{"dataset": "gsm8k", "problem_id": 1, "token_idx": 1, "layer": 0, "experts": [3]}
)";
  trace::ImportOptions comp;
  comp.fields.set("request", {"dataset", "problem_id"});
  CHECK(comp.fields.request_key == std::vector<std::string>{"dataset", "problem_id"});
  auto [wc, rc] = trace::import_routing_text(text, "dump.jsonl", comp);
  std::vector<std::byte> keep;
  const auto t = open(wc, keep);
  CHECK(t.meta().request_ids == std::vector<std::string>{"gsm8k/1", "mbpp/1"});
  CHECK(steps_of(t) == "gsm8k/1:decode | gsm8k/1:decode | mbpp/1:decode");
  CHECK(routing_of(t) == "@0 1 ; @1 3 ; @0 2");
  CHECK(has_note(rc, "requests keyed by dataset + problem_id (2 distinct), named like 'gsm8k/1'"));
  CHECK(has_note(rc, "fields read: request 'dataset' + 'problem_id', token 'token_idx', layer 'layer', experts 'experts'"));
  // without the composite key, problem_id alone merges the two requests (and the layer repeats)
  CHECK(contains(import_error(text), "field 'line 2.layer' = 0: token 0 of request 1 has this layer twice"));
  CHECK(import_error("{\"dataset\": \"gsm8k\", \"problem_id\": 1, \"token_idx\": 0, \"layer\": 0, \"experts\": [1]}\n{\"problem_id\": 2, \"layer\": 0, \"experts\": [1]}\n",
                     comp) == "dump.jsonl: field 'line 2.dataset': missing: the request key is made of dataset + problem_id");
  // one name replaces the spellings (and clears a composite key)
  comp.fields.set("request", {"problem_id"});
  CHECK(comp.fields.request_key.empty());
}

TEST_CASE("incomplete tokens are dropped and reported per request", "[trace][import][damage]") {
  // request a: prompt of 3 tokens (token 1 lacks layer 1), decode tokens 3, 4 (4 lacks layer 1);
  // request b: decode tokens 0..2, token 1 (in the middle) lacks layer 0
  const std::string text = R"({"request_id": "a", "token_pos": 0, "phase": "prefill", "layer": 0, "experts": [1]}
{"request_id": "a", "token_pos": 0, "phase": "prefill", "layer": 1, "experts": [2]}
{"request_id": "a", "token_pos": 1, "phase": "prefill", "layer": 0, "experts": [3]}
{"request_id": "a", "token_pos": 2, "phase": "prefill", "layer": 0, "experts": [4]}
{"request_id": "a", "token_pos": 2, "phase": "prefill", "layer": 1, "experts": [5]}
{"request_id": "a", "token_pos": 3, "phase": "decode", "layer": 0, "experts": [6]}
{"request_id": "a", "token_pos": 3, "phase": "decode", "layer": 1, "experts": [7]}
{"request_id": "a", "token_pos": 4, "phase": "decode", "layer": 0, "experts": [0]}
{"request_id": "b", "token_pos": 0, "phase": "decode", "layer": 0, "experts": [1]}
{"request_id": "b", "token_pos": 0, "phase": "decode", "layer": 1, "experts": [1]}
{"request_id": "b", "token_pos": 1, "phase": "decode", "layer": 1, "experts": [2]}
{"request_id": "b", "token_pos": 2, "phase": "decode", "layer": 0, "experts": [3]}
{"request_id": "b", "token_pos": 2, "phase": "decode", "layer": 1, "experts": [3]}
)";
  trace::ImportOptions opt;
  opt.experts = 8;
  auto [w, report] = trace::import_routing_text(text, "dump.jsonl", opt);
  CHECK(report.records == 13U);
  CHECK(report.tokens == 5U);
  CHECK(report.dropped_tokens == 3U);
  CHECK(report.dropped_records == 3U);
  CHECK(dropped_lines(report) ==
        std::vector<std::string>{"request a: 2 tokens (1, 4) lacking some MoE layers (2 records)", "request b: 1 token (1) lacking some MoE layers (1 record)"});
  CHECK(has_note(report, "dropped in all: 3 tokens, 3 records (see the dropped lines; --incomplete error refuses damaged dumps)"));
  std::vector<std::byte> keep;
  const auto t = open(w, keep);
  // the prompt keeps two tokens; the decode step of token 4 is gone; positions show the gaps
  CHECK(steps_of(t) == "a:prefill*2 | a:decode | b:decode | b:decode");
  CHECK(routing_of(t) == "@0 1/2 ; @2 4/5 ; @3 6/7 ; @0 1/1 ; @2 3/3");

  const auto json = trace::report_to_json(report);
  CHECK(json.at("dropped_tokens") == 3);
  CHECK(json.at("dropped").at(1).at("text") == "request b: 1 token (1) lacking some MoE layers (1 record)");
  CHECK(json.at("dropped").at(0).at("token_indices") == nlohmann::json::array({1, 4}));

  opt.incomplete = trace::IncompleteTokens::error;
  CHECK(import_error(text, opt) == "dump.jsonl: field 'line 3.layer' = 1: token 1 of request a has no routing for MoE layer 1");
}

TEST_CASE("a verify step that loses a token is dropped whole", "[trace][import][damage]") {
  const std::string text = R"({"request_id": "r", "token_idx": 0, "phase": "prefill", "layers": {"0": [1], "1": [2]}}
{"request_id": "r", "token_idx": 1, "step": 1, "phase": "verify", "draft_len": 2, "accepted": 1, "layers": {"0": [1], "1": [2]}}
{"request_id": "r", "token_idx": 2, "step": 1, "phase": "verify", "layers": {"0": [3], "1": [4]}}
{"request_id": "r", "token_idx": 3, "step": 1, "phase": "verify", "layers": {"0": [5]}}
{"request_id": "r", "token_idx": 3, "step": 2, "phase": "decode", "layers": {"0": [6], "1": [7]}}
{"request_id": "q", "token_idx": 0, "phase": "decode", "layers": {"1": [0]}}
)";
  trace::ImportOptions opt;
  opt.experts = 8;
  auto [w, report] = trace::import_routing_text(text, "dump.jsonl", opt);
  CHECK(dropped_lines(report) == std::vector<std::string>{
                                     "request r: 1 token (3) lacking some MoE layers (1 record)",
                                     "request r: 2 tokens (1, 2) of verify steps that lost a token (a verify step is kept whole or not at all) (2 records)",
                                     "request q: 1 token (0) lacking some MoE layers (1 record)"});
  CHECK(has_note(report, "request q has no token left: not in the trace"));
  std::vector<std::byte> keep;
  const auto t = open(w, keep);
  CHECK(t.meta().request_ids == std::vector<std::string>{"r"});
  CHECK(steps_of(t) == "r:prefill | r:decode");
  CHECK(routing_of(t) == "@0 1/2 ; @3 6/7");

  CHECK(import_error("{\"token_idx\": 0, \"layer\": 0, \"experts\": [1]}\n{\"token_idx\": 1, \"layer\": 1, \"experts\": [1]}\n") ==
        "dump.jsonl: every token lacks some of the 2 MoE layers: nothing to import (are the layer ids right? see --model)");
}

TEST_CASE("SD dumps that repeat a position in consecutive steps", "[trace][import][damage]") {
  // verify step 1 runs positions 1..3 and accepts 1 draft: step 2 starts again at position 3
  const std::string text = R"({"request_id": "r", "step": 0, "position": 0, "phase": "prefill", "layers": [[1]]}
{"request_id": "r", "step": 0, "position": 1, "phase": "prefill", "layers": [[2]]}
{"request_id": "r", "step": 1, "position": 1, "phase": "verify", "draft_len": 2, "accepted": 1, "layers": [[3]]}
{"request_id": "r", "step": 1, "position": 2, "phase": "verify", "layers": [[4]]}
{"request_id": "r", "step": 1, "position": 3, "phase": "verify", "layers": [[5]]}
{"request_id": "r", "step": 2, "position": 3, "phase": "verify", "draft_len": 2, "accepted": 0, "layers": [[6]]}
{"request_id": "r", "step": 2, "position": 4, "phase": "verify", "layers": [[7]]}
{"request_id": "r", "step": 2, "position": 5, "phase": "verify", "layers": [[0]]}
)";
  auto [w, report] = trace::import_routing_text(text, "dump.jsonl", {});
  std::vector<std::byte> keep;
  const auto t = open(w, keep);
  CHECK(steps_of(t) == "r:prefill*2 | r:verify*3(2,1) | r:verify*3(2,0)");
  CHECK(routing_of(t) == "@0 1 ; @1 2 ; @1 3 ; @2 4 ; @3 5 ; @3 6 ; @4 7 ; @5 0");
}

TEST_CASE("a last line cut short is dropped, and refused under --incomplete error", "[trace][import][damage]") {
  const std::string text = "{\"token_idx\": 0, \"layer\": 0, \"experts\": [1]}\n{\"token_idx\": 1, \"layer\": 0, \"experts\": [2]}\n{\"token_idx\": 2, \"la";
  auto [w, report] = trace::import_routing_text(text, "dump.jsonl", {});
  CHECK(report.tokens == 2U);
  CHECK(dropped_lines(report) == std::vector<std::string>{"1 record cut short at the end of the file (line 3, no line end): not read"});
  trace::ImportOptions strict;
  strict.incomplete = trace::IncompleteTokens::error;
  CHECK(contains(import_error(text, strict), "dump.jsonl: field 'line 3': not valid JSON: parse error"));
  // with a line end the bad line is damage inside the file, not a cut: refused
  CHECK(contains(import_error(text + "\n"), "dump.jsonl: field 'line 3': not valid JSON"));
}

TEST_CASE("records under any top-level key, beside token-id lists", "[trace][import][records]") {
  const std::string text = R"({"meta": {"model": "toy", "num_experts": 8, "top_k": 1},
 "request_id": "q9", "temperature": 0.7,
 "prompt_token_ids": [11, 12], "generated_token_ids": [13],
 "routes": [{"token_idx": 0, "phase": "prefill", "layers": {"0": [1], "1": [2]}},
            {"token_idx": 1, "phase": "prefill", "layers": {"0": [3], "1": [4]}},
            {"token_idx": 2, "phase": "decode", "layers": {"0": [5], "1": [6]}}]})";
  auto [w, report] = trace::import_routing_text(text, "dump.json", {});
  CHECK(report.records == 3U);
  CHECK(has_note(report, "3 records read from the top-level list 'routes'"));
  CHECK(has_note(report, "top-level list 'generated_token_ids' of numbers ignored: not routing records"));
  CHECK(has_note(report, "top-level list 'prompt_token_ids' of numbers ignored: not routing records"));
  CHECK(has_note(report, "fields of enclosing objects applied to their records: request_id"));
  CHECK(has_note(report, "fields of enclosing objects kept as the dump's meta: temperature"));
  std::vector<std::byte> keep;
  const auto t = open(w, keep);
  CHECK(t.meta().model.name == "toy");
  CHECK(t.meta().provenance.at("dump_meta").at("temperature") == 0.7);
  CHECK(steps_of(t) == "q9:prefill*2 | q9:decode");
  CHECK(routing_of(t) == "@0 1/2 ; @1 3/4 ; @2 5/6");

  SECTION("two lists of objects: an error naming both; --records picks one") {
    const std::string two = R"({"routes": [{"token_idx": 0, "layer": 0, "experts": [1]}], "requests": [{"id": "q9", "prompt": "hi"}]})";
    CHECK(import_error(two, {}, "two.json") ==
          "two.json: the top-level object holds several lists of objects: 'requests' (1 entries), 'routes' (1 entries); name the records' key with "
          "--records KEY");
    trace::ImportOptions opt;
    opt.records_key = "routes";
    auto [w2, r2] = trace::import_routing_text(two, "two.json", opt);
    CHECK(r2.tokens == 1U);
    CHECK(has_note(r2, "top-level list 'requests' of values ignored: not routing records"));
    opt.records_key = "route";
    CHECK(import_error(two, opt, "two.json") == "two.json: field '--records' = route: no such key in the top-level object (keys: requests, routes)");
    CHECK(import_error("{\"token_idx\": 0, \"layer\": 0, \"experts\": [1]}\n", opt) ==
          "dump.jsonl: field '--records' = route: no object in the dump holds this key");
  }
  SECTION("JSON Lines of per-request objects, a top-level array of them") {
    const std::string lines = R"({"request_id": "a", "tokens": [{"token_idx": 0, "layers": [[1]]}, {"token_idx": 1, "layers": [[2]]}]}
{"request_id": "b", "phase": "decode", "tokens": [{"token_idx": 0, "layers": [[3]]}]}
)";
    auto [w3, r3] = trace::import_routing_text(lines, "dump.jsonl", {});
    std::vector<std::byte> keep3;
    const auto t3 = open(w3, keep3);
    CHECK(steps_of(t3) == "a:decode | a:decode | b:decode");
    CHECK(has_note(r3, "3 records read from lists under 'tokens' in enclosing objects"));
    CHECK(has_note(r3, "fields of enclosing objects applied to their records: phase, request_id"));
    auto [w4, r4] = trace::import_routing_text(R"([{"request_id": "a", "tokens": [{"token_idx": 0, "layers": [[1]]}]}])", "d.json", {});
    CHECK(r4.tokens == 1U);
  }
  SECTION("JSON Lines holding a list of records a line (one flush of a hook)") {
    const std::string flushes = "[{\"token_idx\": 0, \"layer\": 0, \"experts\": [1]}, {\"token_idx\": 1, \"layer\": 0, \"experts\": [2]}]\n"
                                "[{\"token_idx\": 2, \"layer\": 0, \"experts\": [3]}, 5]\n";
    CHECK(import_error(flushes) == "dump.jsonl: field 'line 2[1]' = 5: a record must be a JSON object");
    auto [w5, r5] = trace::import_routing_text(flushes.substr(0, flushes.find('\n') + 1) + "[{\"token_idx\": 2, \"layer\": 0, \"experts\": [3]}]\n", "d.jsonl", {});
    std::vector<std::byte> keep5;
    CHECK(routing_of(open(w5, keep5)) == "@0 1 ; @1 2 ; @2 3");
  }
  SECTION("meta and no records") {
    CHECK(import_error(R"({"meta": {"model": "x"}, "prompt_token_ids": [1, 2]})", {}, "d.json") == "d.json: no routing records found");
  }
}

TEST_CASE("phases as strings, any case; draft passes dropped", "[trace][import][phase]") {
  const std::string text = R"({"request_id": "r", "token_idx": 0, "phase": "Prefill", "layers": [[1]]}
{"request_id": "r", "token_idx": 1, "phase": "PROMPT", "layers": [[2]]}
{"request_id": "r", "token_idx": 2, "phase": "Generate", "layers": [[3]]}
{"request_id": "r", "token_idx": 3, "phase": "draft", "layers": [[9]]}
{"request_id": "r", "token_idx": 4, "phase": "draft", "layers": [[5]]}
{"request_id": "r", "token_idx": 5, "phase": "SD-Verify", "step": 7, "draft_len": 1, "accepted": 0, "layers": [[6]]}
{"request_id": "r", "token_idx": 6, "phase": "sd_verify", "step": 7, "layers": [[7]]}
)";
  auto [w, report] = trace::import_routing_text(text, "dump.jsonl", {});
  CHECK(has_note(report, "phases read as: 'Generate' -> decode, 'PROMPT' -> prefill, 'Prefill' -> prefill, 'SD-Verify' -> verify, 'sd_verify' -> verify"));
  CHECK(dropped_lines(report) == std::vector<std::string>{"request r: 2 tokens (3, 4) with phase 'draft' (the draft model's own passes) (2 records)"});
  std::vector<std::byte> keep;
  const auto t = open(w, keep);
  CHECK(steps_of(t) == "r:prefill*2 | r:decode | r:verify*2(1,0)");
  CHECK(t.meta().model.experts_per_layer == 8U);  // the draft's expert 9 is not the target's: ids up to 7
  CHECK(import_error("{\"token_idx\": 0, \"layer\": 0, \"experts\": [1], \"phase\": \"warmup\"}\n") ==
        std::string("dump.jsonl: field 'record 0.phase' = \"warmup\": ") + trace::import_detail::kPhaseSpellings);
  CHECK(contains(import_error("{\"token_idx\": 0, \"layer\": 0, \"experts\": [1], \"phase\": 1}\n"), "field 'record 0.phase' = 1: expected a phase"));
  CHECK(import_error("{\"token_idx\": 0, \"layer\": 0, \"experts\": [1], \"phase\": \"decode\"}\n{\"token_idx\": 0, \"layer\": 1, \"experts\": [1], \"phase\": "
                     "\"prefill\"}\n") == "dump.jsonl: field 'line 2.phase' = \"prefill\": differs from the phase another record of this token gives (decode)");
}

TEST_CASE("token index and position fields", "[trace][import][position]") {
  // generated tokens numbered from 0, positions after a 10-token prompt
  const std::string text = R"({"request_id": "r", "token_idx": 1, "token_pos": 11, "layer": 0, "experts": [2]}
{"request_id": "r", "token_idx": 0, "token_pos": 10, "layer": 0, "experts": [1]}
{"request_id": "r", "token_idx": 2, "token_pos": 12, "layer": 0, "experts": [3]}
)";
  auto [w, report] = trace::import_routing_text(text, "dump.jsonl", {});
  std::vector<std::byte> keep;
  const auto t = open(w, keep);
  CHECK(routing_of(t) == "@10 1 ; @11 2 ; @12 3");
  CHECK(has_note(report, "token order from the token index, token positions from 'token_pos'"));
  // without a token index the position orders the tokens
  auto [w2, r2] = trace::import_routing_text("{\"pos\": 5, \"layer\": 0, \"experts\": [1]}\n{\"pos\": 3, \"layer\": 0, \"experts\": [2]}\n", "d.jsonl", {});
  std::vector<std::byte> keep2;
  CHECK(routing_of(open(w2, keep2)) == "@3 2 ; @5 1");
  CHECK(import_error("{\"token_idx\": 0, \"pos\": 5, \"layer\": 0, \"experts\": [1]}\n{\"token_idx\": 0, \"pos\": 6, \"layer\": 1, \"experts\": [2]}\n") ==
        "dump.jsonl: field 'line 2.pos' = 6: differs from the position another record of this token gives (5)");
  CHECK(import_error("{\"token_idx\": 0, \"pos\": -1, \"layer\": 0, \"experts\": [1]}\n") ==
        "dump.jsonl: field 'record 0.pos' = -1: positions must be between 0 and 2^32 - 1");
  // integral numbers written as decimals (pandas) are integers; others are not
  auto [w3, r3] = trace::import_routing_text(R"({"token_idx": 2.0, "layer": "1", "experts": [1.0]})", "d.json", {});
  CHECK(r3.tokens == 1U);
  CHECK(import_error(R"({"token_idx": 2.5, "layer": 0, "experts": [1]})") == "dump.jsonl: field 'record 0.token_idx' = 2.5: expected an integer");
}

TEST_CASE("gzip-compressed dumps, by magic bytes", "[trace][import][gzip]") {
  const std::string text = "{\"token_idx\": 0, \"layer\": 0, \"experts\": [1]}\n{\"token_idx\": 1, \"layer\": 0, \"experts\": [2]}\n";
  const std::string gz = trace::gzip(text);
  REQUIRE(trace::is_gzip(gz));
  CHECK(trace::gunzip(gz, "x").text == text);
  auto [w, report] = trace::import_routing_text(gz, "dump.bin", {});
  CHECK(report.tokens == 2U);
  CHECK(report.notes.front() == "gzip-compressed: " + std::to_string(gz.size()) + " bytes -> " + std::to_string(text.size()) + " bytes");
  // concatenated members, as `cat a.gz b.gz` makes
  const std::string second = "{\"token_idx\": 2, \"layer\": 0, \"experts\": [3]}\n";
  auto [w2, r2] = trace::import_routing_text(gz + trace::gzip(second), "dump.jsonl.gz", {});
  CHECK(r2.tokens == 3U);
  CHECK(contains(r2.notes.front(), "(2 members)"));
  // corrupt data names the file (here: the checksum in the trailer, which every zlib checks)
  std::string bad = gz;
  bad[bad.size() - 8] = static_cast<char>(bad[bad.size() - 8] ^ 0x5A);
  CHECK(contains(import_error(bad, {}, "dump.jsonl.gz"), "dump.jsonl.gz: byte "));
  CHECK(contains(import_error(bad, {}, "dump.jsonl.gz"), ": gzip: corrupt compressed data (zlib: incorrect data check)"));
  CHECK(import_error(gz + "xyz", {}, "d.gz") == "d.gz: byte " + std::to_string(gz.size()) + ": gzip: data after the end of the compressed stream is not gzip");
  // cut short (the writer was killed): the complete lines are imported, the rest reported
  const std::string big = text + "{\"token_idx\": 2, \"layer\": 0, \"experts\": [3]}\n";
  const std::string cut = trace::gzip(big, 0).substr(0, trace::gzip(big, 0).size() - 30);  // level 0: stored, so the cut is predictable
  auto [w3, r3] = trace::import_routing_text(cut, "cut.jsonl.gz", {});
  CHECK(r3.tokens == 2U);
  CHECK(has_note(r3, "the gzip stream ends early (file cut short?): its last line is read only if complete"));
  REQUIRE(r3.dropped.size() == 1U);
  CHECK(contains(trace::describe(r3.dropped[0]), "1 record cut short with the gzip stream (after byte " + std::to_string(text.size())));
  trace::ImportOptions strict;
  strict.incomplete = trace::IncompleteTokens::error;
  CHECK(import_error(cut, strict, "cut.jsonl.gz") ==
        "cut.jsonl.gz: gzip: the compressed stream ends early (file cut short?); --incomplete drop imports what it holds");
  CHECK(import_error(gz.substr(0, 5), {}, "tiny.gz") == "tiny.gz: gzip: the compressed stream ends before any data (file cut short?)");
  // a .gz name on plain text: read as it is, and said
  auto [w4, r4] = trace::import_routing_text(text, "plain.jsonl.gz", {});
  CHECK(r4.notes.front() == "named .gz but not gzip-compressed: read as plain text");

  // from a file
  const auto path = std::filesystem::temp_directory_path() / "moesched_test_import.jsonl.gz";
  {
    std::ofstream out(path, std::ios::binary);
    out << gz;
  }
  auto [w5, r5] = trace::import_routing_dump(path, {});
  CHECK(r5.tokens == 2U);
  std::filesystem::remove(path);
}

TEST_CASE("CSV, one row per (token, layer)", "[trace][import][csv]") {
  const std::string text =
      "request,token,layer,expert_0,expert_1,weight_0,weight_1,n_tokens\n"
      "\"q,1\",0,0,1,7,0.75,0.25,3\n"
      "\"q,1\",0,1,2,3,0.5,0.5,3\n"
      "\"q,1\",1,0,4,5,0.5,0.5,3\n"
      "\"q,1\",1,1,6,0,0.5,0.5,3\n"
      "q2,0,0,1,2,0.5,0.5,3\n";  // q2's token 0 lacks layer 1
  trace::ImportOptions opt;
  opt.experts = 8;
  auto [w, report] = trace::import_routing_text(text, "dump.csv", opt);
  CHECK(report.layout == "CSV, one row per (token, layer)");
  CHECK(report.notes.front() ==
        "CSV (','-separated, header on line 1): experts in columns 4-5 (expert_0..expert_1), weights in columns 6-7 (weight_0..weight_1)");
  CHECK(report.ignored.at("n_tokens") == 5U);
  CHECK(dropped_lines(report) == std::vector<std::string>{"request q2: 1 token (0) lacking some MoE layers (1 record)"});
  std::vector<std::byte> keep;
  const auto t = open(w, keep);
  CHECK(t.meta().request_ids == std::vector<std::string>{"q,1"});
  CHECK(routing_of(t) == "@0 1,7/2,3 ; @1 4,5/6,0");
  CHECK(t.weight(0, 0, 0) == 0.75F);

  SECTION("one list column: '1;7', '1 7', '[1, 7]' (unquoted brackets keep their commas), tabs") {
    const std::string lists =
        "Request_ID\tToken_Idx\tLayer\tTopK_IDs\n"
        "a\t0\t0\t1;7\n"
        "a\t0\t1\t[2, 3]\n"
        "a\t1\t0\t4 5\n"
        "a\t1\t1\t(6|0)\n";
    auto [w2, r2] = trace::import_routing_text(lists, "dump.tsv", opt);
    std::vector<std::byte> keep2;
    CHECK(routing_of(open(w2, keep2)) == "@0 1,7/2,3 ; @1 4,5/6,0");
    CHECK(r2.notes.front() == "CSV (tab-separated, header on line 1): experts in column 4 (TopK_IDs)");
    const std::string commas = "request,token,layer,experts\na,0,0,[1, 7]\na,1,0,\"2,3\"\n";
    auto [w3, r3] = trace::import_routing_text(commas, "x.txt", opt);  // CSV by content
    std::vector<std::byte> keep3;
    CHECK(routing_of(open(w3, keep3)) == "@0 1,7 ; @1 2,3");
  }
  SECTION("errors name the line, the column and the value") {
    CHECK(import_error("request,token,layer,expert_0\na,0,0,x\n", opt, "d.csv") == "d.csv: field 'line 2, column 4 (expert_0)' = \"x\": expected an expert id");
    CHECK(import_error("request,token,layer,experts\na,0,0,1;y\n", opt, "d.csv") ==
          "d.csv: field 'line 2, column 4 (experts)' = \"1;y\": expected expert ids separated by ';', '|', ',' or spaces");
    CHECK(import_error("request,token,layer,experts\na,0,zero,1\n", opt, "d.csv") == "d.csv: field 'line 2, column 3 (layer)' = \"zero\": expected a layer index: an "
                                                                                      "integer, or a name holding one number such as model.layers.3.mlp");
    CHECK(import_error("request,token,layer,experts\na,0,0,9\n", opt, "d.csv") == "d.csv: field 'experts' = 9: expert id at or above the expert count (8)");
    CHECK(import_error("request,token,layer,experts\na,0,0,-1\n", opt, "d.csv") ==
          "d.csv: field 'line 2, column 4 (experts)' = -1: expert ids must be between 0 and 32767");
    CHECK(import_error("request,token,layer,experts\na,0,0\nb,0,0,1\n", opt, "d.csv") == "d.csv: field 'line 2' = 3 cells: the header (line 1) has 4 columns");
    CHECK(import_error("request,token,layer,experts\n\"a,0,0,1\nb,0,0,1\n", opt, "d.csv") == "d.csv: field 'line 2, column 1': a quoted cell is never closed");
    CHECK(import_error("request,token,layer,experts\n\"a\"b,0,0,1\n", opt, "d.csv") == "d.csv: field 'line 2, column 1' = \"b\": text after the closing quote of a cell");
    CHECK(import_error("request,token,layer\na,0,0\n", opt, "d.csv") ==
          "d.csv: field 'line 1': no expert columns: expected an experts list column (experts, expert_ids, topk_ids, topk_experts, selected_experts, "
          "topk_idx), expert_0..expert_K-1, or one column per layer (layer_0, layer_1, ...)");
    CHECK(import_error("request,token,expert_0,layer_1\na,0,1,1\n", opt, "d.csv") ==
          "d.csv: field 'line 1, column 4' = \"layer_1\": mixes the two CSV layouts: expert columns (one row per token and layer) and per-layer columns "
          "(one row per token)");
    CHECK(import_error("request,token,layer,experts,Layer\n", opt, "d.csv") == "d.csv: field 'line 1, column 5' = \"Layer\": column name given twice");
    // found by fuzzing: text that is not UTF-8 would end up in the trace's metadata
    CHECK(import_error("request,token,layer,experts\nb\xE9,0,0,1\n", opt, "d.csv") == "d.csv: field 'line 2, column 1': not UTF-8 text (save the file as UTF-8)");
    CHECK(trace::import_detail::valid_utf8("caf\xC3\xA9 \xE2\x86\x92 \xF0\x9F\x98\x80"));
    CHECK_FALSE(trace::import_detail::valid_utf8("\xC0\xAF"));          // overlong '/'
    CHECK_FALSE(trace::import_detail::valid_utf8("\xED\xA0\x80"));      // a surrogate
    CHECK_FALSE(trace::import_detail::valid_utf8("\xF4\x90\x80\x80"));  // past U+10FFFF
    CHECK_FALSE(trace::import_detail::valid_utf8("\xE2\x86"));          // cut short
    CHECK(import_error("request,token,layer,experts\na,0,0,\n", opt, "d.csv") == "d.csv: field 'line 2, column 4 (experts)' = \"\": empty: a row needs its experts");
    CHECK(import_error("request,token,layer,expert_0,expert_1\na,0,0,1,1\n", opt, "d.csv") ==
          "d.csv: field 'line 2 (routing_experts[token 0, layer 0])' = 1: expert chosen twice in one token's top-k");
  }
  SECTION("a last row cut short") {
    auto [w4, r4] = trace::import_routing_text("request,token,layer,experts\na,0,0,1\na,1,0", "d.csv", opt);
    CHECK(r4.tokens == 1U);
    CHECK(dropped_lines(r4) == std::vector<std::string>{"1 record cut short at the end of the file (line 3, no line end): not read"});
    trace::ImportOptions strict = opt;
    strict.incomplete = trace::IncompleteTokens::error;
    CHECK(import_error("request,token,layer,experts\na,0,0,1\na,1,0", strict, "d.csv") == "d.csv: field 'line 3' = 3 cells: the header (line 1) has 4 columns");
  }
}

TEST_CASE("CSV, one row per token with a column per layer", "[trace][import][csv]") {
  const std::string text =
      "request,token,phase,layer_0,layer_1,layer_0_weights,layer_1_weights\n"
      "r,0,prefill,1;7,[2|3],0.75;0.25,0.5 0.5\n"
      "r,1,prefill,4|5,\"[6, 0]\",0.5;0.5,0.5;0.5\n"
      "r,2,decode,1;2,3;4,0.5;0.5,0.5;0.5\n"
      "r,3,decode,5;6,,0.5;0.5,\n";  // the last token has no layer 1
  auto [w, report] = trace::import_routing_text(text, "dump.csv", {});
  CHECK(report.layout == "CSV, one row per token with a column per layer");
  CHECK(report.notes.front() ==
        "CSV (','-separated, header on line 1): 2 per-layer expert columns (layer_0..layer_1) with weight columns (layer_0_weights..layer_1_weights)");
  CHECK(dropped_lines(report) == std::vector<std::string>{"request r: 1 token (3) lacking some MoE layers (1 record)"});
  std::vector<std::byte> keep;
  const auto t = open(w, keep);
  CHECK(steps_of(t) == "r:prefill*2 | r:decode");
  CHECK(routing_of(t) == "@0 1,7/2,3 ; @1 4,5/6,0 ; @2 1,2/3,4");
  CHECK(t.weight(0, 0, 1) == 0.25F);
  CHECK(t.meta().model.experts_per_layer == 8U);
  CHECK(import_error("request,token,layer_0,layer_0_weights\nr,0,,0.5\n", {}, "d.csv") ==
        "d.csv: field 'line 2, column 4 (layer_0_weights)' = \"0.5\": weights for a layer without experts");
  CHECK(import_error("request,token,layer_0,layer_1_weights\nr,0,1,0.5\n", {}, "d.csv") ==
        "d.csv: field 'line 1, column 4' = \"layer_1_weights\": weights for a layer that has no experts column");
  // --format csv for a name that says nothing
  trace::ImportOptions csv;
  csv.format = trace::DumpFormat::csv;
  auto [w2, r2] = trace::import_routing_text("token;moe_layer_0;moe_layer_1\n0;1|2;3|4\n", "dump.txt", csv);
  std::vector<std::byte> keep2;
  CHECK(routing_of(open(w2, keep2)) == "@0 1,2/3,4");
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
  CHECK(import_error("{\"token_idx\": 0, \"layer\": 0, \"experts\": [1], \"accepted\": 70000}\n") ==
        "dump.jsonl: field 'record 0.accepted' = 70000: must be between 0 and 65535");
  // a pretty-printed document cut short: the document's own parse error
  CHECK(contains(import_error("{\n  \"records\": [\n    {\"token_idx\": 0,\n"), "dump.jsonl: not valid JSON (read as one document): parse error at line 4"));
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

TEST_CASE("the shipped import data", "[trace][import]") {
  auto read = [](const std::string& name) {
    std::ifstream in(std::string(MOESCHED_TEST_DATA_DIR) + "/import/" + name, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  trace::ImportOptions opt;
  opt.experts = 16;
  auto [w, report] = trace::import_routing_text(read("missing_layer.jsonl"), "missing_layer.jsonl", opt);
  CHECK(dropped_lines(report) == std::vector<std::string>{"request prob-9: 1 token (4) lacking some MoE layers (2 records)"});
  CHECK(report.tokens == 9U);
  opt.incomplete = trace::IncompleteTokens::error;
  CHECK(contains(import_error(read("missing_layer.jsonl"), opt, "missing_layer.jsonl"),
                 "missing_layer.jsonl: field 'line 12.layer' = 1: token 4 of request prob-9 has no routing for MoE layer 1"));
  (void)all_notes;
}
