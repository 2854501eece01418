#include "support/catch.hpp"
#include "support/temp_dir.hpp"

#include <moesched/io/trace.hpp>

#include <cstring>
#include <map>
#include <numeric>

using namespace moesched;
using moesched::io::Prediction;
using moesched::io::SafetensorsFile;
using moesched::io::SafetensorsWriter;
using moesched::io::TensorDType;
using moesched::io::Trace;
using moesched::io::TraceMeta;
using moesched::io::TraceWriter;
using moesched::test::contains;
using moesched::test::TempDir;
using moesched::test::thrown_message;

namespace {

/// 3 MoE layers, 8 experts, top-2; a prefill of 3 tokens, a decode, an SD verify (draft 2,
/// accepted 1) for request 0, and a decode of request 1; a scored channel and token ids.
TraceWriter sample_writer(std::uint32_t experts = 8) {
  TraceMeta m;
  m.model = {"toy", 3, experts, 2};
  m.source = "unit test";
  m.dataset = "none";
  m.channels.push_back({"skip_gate", "layer l+1 gate on layer l input", 3, true});
  m.channels.push_back({"draft_gate", "unscored", 2, false});
  m.provenance = {{"command", "sample_writer()"}};
  TraceWriter w(m);
  std::uint16_t next = 0;
  auto ids = [&](std::uint32_t tokens) {
    std::vector<std::uint16_t> v;
    for (std::uint32_t i = 0; i < tokens * 3; ++i) {
      const auto a = static_cast<std::uint16_t>(next++ % experts);
      v.push_back(a);
      v.push_back(static_cast<std::uint16_t>((a + 1) % experts));
    }
    return v;
  };
  auto weights = [](std::uint32_t tokens) { return std::vector<float>(tokens * 6, 0.5F); };
  auto tok = [](std::uint32_t tokens, std::uint32_t base) {
    std::vector<std::uint32_t> v(tokens);
    std::iota(v.begin(), v.end(), base);
    return v;
  };
  w.add_step({.request = 0, .phase = StepPhase::prefill, .tokens = 3}, ids(3), weights(3), tok(3, 100), tok(3, 0));
  w.add_step({.request = 0, .phase = StepPhase::decode, .tokens = 1}, ids(1), weights(1), tok(1, 200), tok(1, 3));
  w.add_step({.request = 0, .phase = StepPhase::verify, .tokens = 3, .draft_len = 2, .accepted = 1}, ids(3), weights(3),
             tok(3, 300), tok(3, 4));
  w.add_step({.request = 1, .phase = StepPhase::decode, .tokens = 1}, ids(1), weights(1), tok(1, 400), tok(1, 0));
  const std::vector<std::uint16_t> c3{4, 1, 7};
  const std::vector<float> s3{0.75F, 0.25F, 0.125F};
  w.add_prediction(0, {1, 0, -1, -1}, c3, s3);
  w.add_prediction(0, {1, 2, -1, 0}, std::vector<std::uint16_t>{2}, std::vector<float>{1.0F});
  w.add_prediction(0, {3, 1, 0, 0}, c3, s3);
  w.add_prediction(1, {2, 0, 1, -1}, std::vector<std::uint16_t>{5, 6});
  return w;
}

/// A trace's tensors as editable parts, to build broken files from a valid one.
struct Parts {
  nlohmann::json meta;
  std::map<std::string, std::string> metadata;
  struct T {
    TensorDType dtype;
    std::vector<std::uint64_t> shape;
    std::vector<std::byte> data;
  };
  std::map<std::string, T> tensors;

  static Parts of(const TraceWriter& w) {
    const auto bytes = w.to_safetensors().serialize();
    const auto f = SafetensorsFile::from_buffer(bytes.data(), bytes.size(), "x");
    Parts p;
    p.metadata = f.metadata();
    p.meta = nlohmann::json::parse(p.metadata.at("moesched_trace"));
    for (const auto& t : f.tensors()) {
      p.tensors[t.name] = {t.dtype, t.shape, std::vector<std::byte>(f.bytes(t), f.bytes(t) + t.bytes())};
    }
    return p;
  }
  template <class V>
  void set(const std::string& name, std::uint64_t i, V v) {
    std::memcpy(tensors.at(name).data.data() + i * sizeof(V), &v, sizeof(V));
  }
  std::vector<std::byte> bytes() const {
    SafetensorsWriter w;
    for (const auto& [k, v] : metadata) w.metadata(k, k == "moesched_trace" ? meta.dump() : v);
    for (const auto& [k, t] : tensors) w.add(k, t.dtype, t.shape, t.data);
    return w.serialize();
  }
};

std::string open_error(const Parts& p) {
  const auto b = p.bytes();
  return thrown_message<ConfigError>([&] { (void)Trace::from_buffer(b.data(), b.size(), "t.st"); });
}

}  // namespace

TEST_CASE("a written trace reads back exactly", "[io][trace]") {
  TempDir dir;
  const auto path = dir.path() / "sample.trace.safetensors";
  sample_writer().write(path);
  const Trace t = Trace::open(path);
  CHECK(t.meta().model.name == "toy");
  CHECK(t.meta().model.moe_layers == 3U);
  CHECK(t.meta().source == "unit test");
  CHECK(t.meta().request_count == 2U);
  CHECK(t.meta().provenance.at("command") == "sample_writer()");
  CHECK_FALSE(t.meta().generated);
  REQUIRE(t.step_count() == 4U);
  CHECK(t.token_count() == 8U);
  const StepInfo v = t.step(2);
  CHECK(v.phase == StepPhase::verify);
  CHECK(v.tokens == 3U);
  CHECK(v.draft_len == 2U);
  CHECK(v.accepted == 1U);
  CHECK(v.first_token == 4U);
  CHECK(v.emitted_tokens() == 2U);
  CHECK(t.step(3).request == 1U);
  // ids were written as (n % 8, n % 8 + 1) with n counting (token, layer) rows
  std::uint16_t n = 0;
  for (std::uint64_t tok = 0; tok < t.token_count(); ++tok) {
    for (std::uint32_t l = 0; l < 3; ++l) {
      CHECK(t.expert(tok, l, 0) == n % 8);
      CHECK(t.expert(tok, l, 1) == (n % 8 + 1) % 8);
      std::uint16_t row[2];
      t.experts(tok, l, row);
      CHECK(row[0] == t.expert(tok, l, 0));
      ++n;
    }
  }
  REQUIRE(t.has_weights());
  CHECK(t.weight(7, 2, 1) == 0.5F);
  REQUIRE(t.has_token_ids());
  CHECK(t.token_id(4) == 300U);
  CHECK(t.position(5) == 5U);
  // iteration covers every step in order, token ranges tile the token axis
  std::uint64_t expect_first = 0;
  std::uint64_t steps = 0;
  for (StepInfo s : t.steps()) {
    CHECK(s.first_token == expect_first);
    expect_first += s.tokens;
    ++steps;
  }
  CHECK(steps == 4U);
  CHECK(expect_first == t.token_count());
  // channels
  const auto skip = t.channel_index("skip_gate");
  CHECK(t.prediction_count(skip) == 3U);
  CHECK(t.predictions_of_step(skip, 0) == std::pair<std::uint64_t, std::uint64_t>{0, 0});
  CHECK(t.predictions_of_step(skip, 1) == std::pair<std::uint64_t, std::uint64_t>{0, 2});
  CHECK(t.predictions_of_step(skip, 3) == std::pair<std::uint64_t, std::uint64_t>{2, 3});
  const Prediction p = t.prediction(skip, 1);
  CHECK(p.step == 1U);
  CHECK(p.layer == 2U);
  CHECK(p.token == -1);
  CHECK(p.available_after == 0);
  std::uint16_t cand[3];
  CHECK(t.candidates(skip, 0, cand) == 3U);
  CHECK(cand[2] == 7U);
  CHECK(t.candidates(skip, 1, cand) == 1U);  // padded
  CHECK(t.score(skip, 0, 1) == 0.25F);
  const auto draft = t.channel_index("draft_gate");
  CHECK(t.candidates(draft, 0, cand) == 2U);
  CHECK(t.prediction(draft, 0).token == 1);
  CHECK(contains(thrown_message<ConfigError>([&] { (void)t.channel_index("mlp"); }),
                 "no such prediction channel; the trace has: skip_gate, draft_gate"));
}

TEST_CASE("more than 255 experts are stored as U16 ids", "[io][trace]") {
  TraceMeta m;
  m.model = {"wide", 1, 300, 2};
  TraceWriter w(m);
  w.add_step({.request = 0, .phase = StepPhase::decode, .tokens = 1}, std::vector<std::uint16_t>{299, 255});
  const auto bytes = w.to_safetensors().serialize();
  const Trace t = Trace::from_buffer(bytes.data(), bytes.size(), "mem");
  CHECK(t.container().tensor("routing_experts").dtype == TensorDType::u16);
  CHECK(t.expert(0, 0, 0) == 299U);
  CHECK(t.expert(0, 0, 1) == 255U);
  CHECK_FALSE(t.has_weights());
  CHECK(sample_writer().to_safetensors().serialize().size() > 0U);
}

TEST_CASE("the writer rejects bad records where they are made", "[io][trace][bad_input]") {
  TraceMeta m;
  m.model = {"toy", 2, 4, 2};
  m.channels.push_back({"c", "", 2, false});
  TraceWriter w(m);
  auto add = [&](StepInfo s, std::vector<std::uint16_t> e, std::vector<float> wt = {}) {
    return thrown_message<ConfigError>([&] { w.add_step(s, e, wt); });
  };
  CHECK(add({.phase = StepPhase::decode, .tokens = 1}, {0, 1, 2}) ==
        "field 'step 0.experts' = 3 ids: expected tokens x moe_layers x top_k = 4");
  CHECK(add({.phase = StepPhase::decode, .tokens = 1}, {0, 4, 1, 2}) ==
        "field 'routing_experts[token 0, layer 0]' = 4: expert id must be below experts_per_layer (4)");
  CHECK(add({.phase = StepPhase::decode, .tokens = 1}, {0, 1, 3, 3}) ==
        "field 'routing_experts[token 0, layer 1]' = 3: expert chosen twice in one token's top-k");
  CHECK(contains(add({.phase = StepPhase::verify, .tokens = 3, .draft_len = 3}, {}), "a verify step runs draft_len + 1 tokens"));
  CHECK(contains(add({.phase = StepPhase::verify, .tokens = 3, .draft_len = 2, .accepted = 3}, {}), "accepted exceeds draft_len"));
  CHECK(contains(add({.phase = StepPhase::decode, .tokens = 2}, {}), "a decode step runs exactly one token"));
  CHECK(contains(add({.phase = StepPhase::prefill, .tokens = 0}, {}), "at least one token"));
  CHECK(contains(add({.phase = StepPhase::decode, .tokens = 1, .accepted = 1}, {}), "only verify steps"));
  CHECK(add({.phase = StepPhase::decode, .tokens = 1}, {0, 1, 2, 3}, {0.5F}) ==
        "field 'step 0.weights' = 1 values: expected 4");
  CHECK(add({.phase = StepPhase::decode, .tokens = 1}, {0, 1, 2, 3}, {0.5F, 1e5F, 0.1F, 0.1F}) ==
        "field 'step 0.weights' = 1e+05: gate weights must be finite and fit in float16 (|w| <= 65504)");
  w.add_step({.phase = StepPhase::decode, .tokens = 1}, std::vector<std::uint16_t>{0, 1, 2, 3}, std::vector<float>{0.1F, 0.2F, 0.3F, 0.4F});
  CHECK(contains(add({.phase = StepPhase::decode, .tokens = 1}, {0, 1, 2, 3}), "must be given for every step or for none"));
  auto pred = [&](Prediction p, std::vector<std::uint16_t> c) {
    return thrown_message<ConfigError>([&] { w.add_prediction(0, p, c); });
  };
  CHECK(contains(pred({0, 2, -1, -1}, {1}), "field 'channel 'c' prediction 0.layer' = 2: not an MoE layer ordinal"));
  CHECK(contains(pred({0, 0, -1, -1}, {1, 2, 3}), "more than max_candidates (2)"));
  CHECK(contains(pred({0, 0, -1, -1}, {1, 1}), "candidate listed twice"));
  CHECK(contains(pred({0, 0, -1, 2}, {1}), "available_after' = 2"));
  CHECK(contains(thrown_message<ConfigError>([&] { w.add_prediction(0, {0, 0, -1, -1}, std::vector<std::uint16_t>{1}, std::vector<float>{1.0F}); }),
                 "this channel has no scores"));
  w.add_prediction(0, {0, 1, -1, -1}, std::vector<std::uint16_t>{1});
  CHECK(contains(pred({0, 0, -1, -1}, {1}), "predictions must be added in (step, layer, token) order"));
  w.add_prediction(0, {5, 1, -1, -1}, std::vector<std::uint16_t>{1});
  CHECK(contains(thrown_message<ConfigError>([&] { (void)w.to_safetensors(); }), "predicts a step the trace does not have"));
  TraceMeta bad;
  bad.model = {"x", 2, 4, 5};
  CHECK(thrown_message<ConfigError>([&] { TraceWriter x(bad); }) ==
        "trace metadata: field 'model.top_k' = 5: must be between 1 and experts_per_layer (4)");
}

TEST_CASE("bad trace files: each defect named with file, tensor and value", "[io][trace][bad_input]") {
  const Parts good = Parts::of(sample_writer());
  {
    const auto b = good.bytes();
    CHECK_NOTHROW(Trace::from_buffer(b.data(), b.size(), "t.st"));
  }
  SECTION("expert id at or above the expert count") {
    Parts p = good;
    p.set<std::uint8_t>("routing_experts", 9, 8);  // token 1, layer 1, slot 1
    CHECK(open_error(p) == "t.st: field 'routing_experts[token 1, layer 1]' = 8: expert id must be below experts_per_layer (8)");
  }
  SECTION("duplicate id within one token's top-k") {
    Parts p = good;
    p.set<std::uint8_t>("routing_experts", 0, 1);
    CHECK(open_error(p) == "t.st: field 'routing_experts[token 0, layer 0]' = 1: expert chosen twice in one token's top-k");
  }
  SECTION("token counts that do not add up") {
    Parts p = good;
    p.set<std::uint32_t>("step_tokens", 0, 4);
    CHECK(open_error(p) ==
          "t.st: field 'step_tokens' = sum 9: the steps' token counts must add up to the routing rows (routing_experts has 8)");
  }
  SECTION("routing shape inconsistent with the metadata") {
    Parts p = good;
    p.meta["model"]["top_k"] = 3;
    CHECK(open_error(p) == "t.st: field 'routing_experts.shape' = [8, 3, 2]: expected [8, 3, 3] from the metadata and the step tensors");
  }
  SECTION("wrong dtype") {
    Parts p = good;
    p.tensors.at("step_phase").dtype = TensorDType::i8;
    CHECK(open_error(p) == "t.st: field 'step_phase.dtype' = I8: expected U8");
  }
  SECTION("missing tensor") {
    Parts p = good;
    p.tensors.erase("step_accepted");
    CHECK(open_error(p) == "t.st: field 'step_accepted': required tensor is missing");
  }
  SECTION("unknown tensor") {
    Parts p = good;
    p.tensors["mystery"] = {TensorDType::u8, {1}, std::vector<std::byte>(1)};
    CHECK(open_error(p) == "t.st: field 'mystery': unknown tensor (extensions must be named 'extra.*')");
    p.tensors["extra.mine"] = p.tensors.at("mystery");
    p.tensors.erase("mystery");
    const auto b = p.bytes();
    CHECK_NOTHROW(Trace::from_buffer(b.data(), b.size(), "t.st"));
  }
  SECTION("phase code out of range") {
    Parts p = good;
    p.set<std::uint8_t>("step_phase", 1, 7);
    CHECK(open_error(p) == "t.st: field 'step_phase[1]' = 7: must be 0 (prefill), 1 (decode) or 2 (verify)");
  }
  SECTION("accepted above draft length") {
    Parts p = good;
    p.set<std::uint16_t>("step_accepted", 2, 5);
    CHECK(open_error(p) == "t.st: field 'step 2' = verify, tokens 3, draft_len 2, accepted 5: accepted exceeds draft_len");
  }
  SECTION("request index beyond request_count") {
    Parts p = good;
    p.set<std::uint32_t>("step_request", 3, 9);
    CHECK(open_error(p) == "t.st: field 'step_request[3]' = 9: must be below request_count (2)");
  }
  SECTION("newer format version") {
    Parts p = good;
    p.meta["format_version"] = 2;
    CHECK(contains(open_error(p), "field '__metadata__.moesched_trace.format_version' = 2: written by a newer moesched"));
  }
  SECTION("not a trace") {
    Parts p = good;
    p.metadata["format"] = "gguf";
    CHECK(open_error(p) == "t.st: field '__metadata__.format' = \"gguf\": not a moesched trace (expected \"moesched-trace\")");
  }
  SECTION("metadata with a wrong type or unknown field") {
    Parts p = good;
    p.meta["model"]["top_k"] = "two";
    CHECK(open_error(p) == "t.st: field '__metadata__.moesched_trace.model.top_k' = \"two\": expected an integer, got string");
    p = good;
    p.meta["sorce"] = "x";
    CHECK(contains(open_error(p), "field '__metadata__.moesched_trace.sorce' = \"x\": unknown field (did you mean 'source'?)"));
    p = good;
    p.meta["model"]["top_k"] = 9;
    CHECK(contains(open_error(p), "field 'model.top_k' = 9: must be between 1 and experts_per_layer (8)"));
  }
  SECTION("channel defects") {
    Parts p = good;
    p.set<std::uint32_t>("channel.0.step", 2, 0);  // 1, 1, 0: unsorted
    CHECK(open_error(p) == "t.st: field 'channel.0.step[2]' = 0: predictions must be sorted by step");
    p = good;
    p.set<std::uint32_t>("channel.0.step", 2, 4);
    CHECK(open_error(p) == "t.st: field 'channel.0.step[2]' = 4: predicts a step the trace does not have (4 steps)");
    p = good;
    p.set<std::uint8_t>("channel.0.experts", 0, 8);
    CHECK(open_error(p) == "t.st: field 'channel.0.experts[0]' = 8: expert id must be below experts_per_layer");
    p = good;
    p.set<std::uint8_t>("channel.0.experts", 5, 3);  // after the padding of prediction 1
    CHECK(open_error(p) == "t.st: field 'channel.0.experts[1]' = 3: candidates after the padding id");
    p = good;
    p.set<std::int32_t>("channel.0.token", 2, 1);  // step 3 has one token
    CHECK(open_error(p) == "t.st: field 'channel.0.token[2]' = 1: must be -1 or a token index within step 3");
    p = good;
    p.meta["channels"][0]["max_candidates"] = 4;
    CHECK(open_error(p) == "t.st: field 'channel.0.experts.shape' = [3, 3]: expected [3, 4] from the metadata and the step tensors");
    p = good;
    p.meta["channels"][1]["name"] = "skip_gate";
    CHECK(contains(open_error(p), "channels[1].name' = \"skip_gate\": duplicate channel name"));
  }
  SECTION("non-finite gate weight") {
    Parts p = good;
    p.set<std::uint16_t>("routing_weights", 3, 0x7E00);  // NaN
    CHECK(open_error(p) == "t.st: field 'routing_weights[3]' = nan: gate weights must be finite");
  }
}

TEST_CASE("validate_data = false skips only the value scan", "[io][trace]") {
  Parts p = Parts::of(sample_writer());
  p.set<std::uint8_t>("routing_experts", 0, 1);  // duplicate: a value defect
  const auto b = p.bytes();
  CHECK_NOTHROW(Trace::from_buffer(b.data(), b.size(), "t.st", {.validate_data = false}));
  p.set<std::uint32_t>("step_tokens", 0, 4);  // a structural defect is still caught
  const auto b2 = p.bytes();
  CHECK(contains(thrown_message<ConfigError>([&] { (void)Trace::from_buffer(b2.data(), b2.size(), "t.st", {.validate_data = false}); }),
                 "must add up"));
}
