#pragma once
/// What the routing-dump importer (trace/import.hpp) accepts and what it reports back.
///
///   moesched::trace::ImportOptions opt;
///   opt.fields.set("request", {"dataset", "problem_id"});   // one request per (dataset, problem_id)
///   opt.incomplete = moesched::trace::IncompleteTokens::error;  // refuse tokens missing a layer
///   opt.records_key = "routes";                              // records under {"routes": [...]}
///   auto [writer, report] = moesched::trace::import_routing_dump("dump.jsonl.gz", opt);
///   for (const auto& d : report.dropped) std::puts(moesched::trace::describe(d).c_str());
///
/// Standard library and nlohmann-json only.

#include "moesched/core/error.hpp"
#include "moesched/core/model.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace moesched::trace {

/// Accepted spellings of each field, first match wins (CSV headers match case-insensitively).
///
///   ImportFieldNames f;
///   f.set("token", {"t"});                          // the token index is field "t"
///   f.set("request", {"dataset", "problem_id"});    // two or more names: a composite request key
struct ImportFieldNames {
  std::vector<std::string> request{"request_id", "problem_id", "req_id", "request", "request_idx", "req", "seq_id", "sequence_id", "prompt_id"};
  /// When not empty: a request is identified by all these fields together (each record must hold
  /// every one), rendered "a/b" in the trace's request ids. `set("request", {a, b})` fills it.
  std::vector<std::string> request_key;
  std::vector<std::string> token{"token_idx", "token_index", "tok_idx", "token"};
  /// Position of the token in its sequence; without a token field it also orders the tokens.
  std::vector<std::string> position{"token_pos", "token_position", "position", "pos", "position_id", "position_ids"};
  std::vector<std::string> layer{"layer", "layer_idx", "layer_id", "layer_index", "moe_layer"};
  std::vector<std::string> experts{"experts", "expert_ids", "topk_ids", "topk_experts", "selected_experts", "topk_idx"};
  std::vector<std::string> weights{"gating_probs", "weights", "topk_weights", "routing_weights", "gate_weights", "probs"};
  std::vector<std::string> layers{"layers", "routing"};
  std::vector<std::string> phase{"phase", "stage"};
  std::vector<std::string> step{"step", "step_idx", "forward_step"};
  std::vector<std::string> draft_len{"draft_len", "num_draft_tokens", "gamma"};
  std::vector<std::string> accepted{"accepted", "num_accepted", "accepted_tokens"};
  std::vector<std::string> token_id{"token_id", "input_id"};

  /// Replace the spellings of `field` (one of the member names above) by `names`. For `request`,
  /// one name replaces the spellings and two or more form a composite key (request_key).
  void set(const std::string& field, std::vector<std::string> names) {
    if (names.empty()) throw ConfigError("", "--field", field + "=", "give at least one field name");
    if (field == "request" && names.size() > 1) {
      request_key = std::move(names);
      return;
    }
    std::vector<std::string>* target = lookup(field);
    if (target == nullptr) {
      throw ConfigError("", "--field", field,
                        "unknown field; known: request, token, position, layer, experts, weights, layers, phase, step, draft_len, accepted, "
                        "token_id");
    }
    if (field == "request") request_key.clear();
    *target = std::move(names);
  }

 private:
  std::vector<std::string>* lookup(const std::string& f) {
    if (f == "request") return &request;
    if (f == "token") return &token;
    if (f == "position") return &position;
    if (f == "layer") return &layer;
    if (f == "experts") return &experts;
    if (f == "weights") return &weights;
    if (f == "layers") return &layers;
    if (f == "phase") return &phase;
    if (f == "step") return &step;
    if (f == "draft_len") return &draft_len;
    if (f == "accepted") return &accepted;
    if (f == "token_id") return &token_id;
    return nullptr;
  }
};

/// What to do with a token that lacks some MoE layers (a dump cut short mid-step).
enum class IncompleteTokens : std::uint8_t {
  drop,   ///< drop it (a verify step loses all its tokens) and report it
  error,  ///< refuse the dump: a ConfigError naming the file, the record and the layer
};

/// How to read the input; `automatic` looks at the name (.csv, .tsv) and the first character.
enum class DumpFormat : std::uint8_t { automatic, json, csv };

struct ImportOptions {
  ImportFieldNames fields;
  std::optional<ModelShape> shape;   ///< a model's shape: experts, top-k and decoder-layer mapping
  std::string model_name;            ///< overrides the dump's model name
  std::optional<std::uint32_t> experts;  ///< overrides the expert count
  std::optional<std::uint32_t> top_k;
  std::uint32_t prefill_tokens = 0;  ///< without phase fields: prompt length per request
  std::string source;                ///< recorded as the trace's source
  std::string dataset;
  IncompleteTokens incomplete = IncompleteTokens::drop;
  std::string records_key;           ///< the key holding the records in a JSON object; empty = find it
  DumpFormat format = DumpFormat::automatic;
};

/// Records the importer left out, per request and reason.
struct DroppedRecords {
  std::string request;                    ///< the dump's request id ("" when not per request)
  std::string reason;                     ///< e.g. "lacking some MoE layers"
  std::uint64_t tokens = 0, records = 0;  ///< tokens and routing records left out
  std::vector<std::int64_t> token_indices;  ///< the first few token indices (dump numbering)
};

struct ImportReport {
  std::string layout;  ///< "per (token, layer) records", "per-token records with a layers map", "both layouts"; CSV: prefixed "CSV, "
  std::uint64_t records = 0, requests = 0, tokens = 0, steps = 0;
  std::uint32_t layers = 0, experts = 0, top_k = 0;
  std::vector<std::string> notes;                    ///< what was inferred and how
  std::map<std::string, std::uint64_t> ignored;      ///< unused field -> records that had it
  std::vector<DroppedRecords> dropped;               ///< what was left out, in request order
  std::uint64_t dropped_tokens = 0, dropped_records = 0;
};

/// "request q1: 2 tokens (7, 8) lacking some MoE layers (5 records)"
[[nodiscard]] inline std::string describe(const DroppedRecords& d) {
  std::string s = d.request.empty() ? std::string() : "request " + d.request + ": ";
  if (d.tokens > 0) {
    s += std::to_string(d.tokens) + (d.tokens == 1 ? " token" : " tokens");
    if (!d.token_indices.empty()) {
      s += " (";
      for (std::size_t i = 0; i < d.token_indices.size(); ++i) s += (i ? ", " : "") + std::to_string(d.token_indices[i]);
      if (d.token_indices.size() < d.tokens) s += ", ...";
      s += ")";
    }
    s += " " + d.reason + " (" + std::to_string(d.records) + (d.records == 1 ? " record)" : " records)");
  } else {
    s += std::to_string(d.records) + (d.records == 1 ? " record " : " records ") + d.reason;
  }
  return s;
}

/// The report as JSON (what `moesched-trace import --json` writes).
[[nodiscard]] inline nlohmann::ordered_json report_to_json(const ImportReport& r) {
  nlohmann::ordered_json j;
  j["layout"] = r.layout;
  j["records"] = r.records;
  j["requests"] = r.requests;
  j["steps"] = r.steps;
  j["tokens"] = r.tokens;
  j["moe_layers"] = r.layers;
  j["experts_per_layer"] = r.experts;
  j["top_k"] = r.top_k;
  j["notes"] = r.notes;
  j["ignored_fields"] = nlohmann::ordered_json::object();
  for (const auto& [k, n] : r.ignored) j["ignored_fields"][k] = n;
  j["dropped_tokens"] = r.dropped_tokens;
  j["dropped_records"] = r.dropped_records;
  nlohmann::ordered_json d = nlohmann::ordered_json::array();
  for (const auto& x : r.dropped) {
    d.push_back({{"request", x.request}, {"reason", x.reason}, {"tokens", x.tokens}, {"records", x.records}, {"token_indices", x.token_indices},
                 {"text", describe(x)}});
  }
  j["dropped"] = d;
  return j;
}

}  // namespace moesched::trace
