#pragma once
/// Import routing dumps people already produce (vLLM / Hugging Face forward hooks) as traces.
///
///   moesched::trace::ImportOptions opt;
///   opt.shape = catalog.model("mixtral-8x7b").shape;     // optional: maps decoder layer ids
///   auto [writer, report] = moesched::trace::import_routing_dump("dump.jsonl", opt);
///   writer.write("run.trace.safetensors");
///   for (auto& n : report.notes) std::puts(n.c_str());    // what was inferred, what was ignored
///
/// Two layouts, as a JSON array, a JSON object holding the records, or JSONL (one record a line),
/// records in any order:
///  A. one record per (token, layer):
///       {"request_id": "q1", "token_idx": 5, "layer": 3, "experts": [1, 7], "gating_probs": [0.6, 0.4]}
///  B. one record per token with a map of layers, plus a top-level meta object:
///       {"meta": {"model": "mixtral-8x7b", "num_experts": 8, "top_k": 2}}
///       {"request_id": "q1", "token_idx": 5, "phase": "decode",
///        "layers": {"0": {"experts": [1, 7], "weights": [0.6, 0.4]}, "1": {...}}}
/// Every field name is looked up in a list of accepted spellings (ImportFieldNames), which the
/// caller can replace. Optional per-record fields: phase ("prefill"/"decode"/"verify"), step (records of
/// one step share it), draft_len and accepted (verify steps), token_id. Without phases, the first
/// `prefill_tokens` tokens of each request become its prefill step and the rest decode steps.
/// Nothing is guessed silently: the report lists every inference and every field it ignored,
/// and inconsistent input (a token missing a layer, top-k lists of different lengths, weights on
/// some records only) is a ConfigError naming the file, the record and the value.

#include "moesched/core/error.hpp"
#include "moesched/core/model.hpp"
#include "moesched/core/routing.hpp"
#include "moesched/io/trace.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace moesched::trace {

/// Accepted spellings of each field, first match wins.
struct ImportFieldNames {
  std::vector<std::string> request{"request_id", "problem_id", "req_id", "request", "seq_id", "sequence_id", "prompt_id"};
  std::vector<std::string> token{"token_idx", "token_pos", "token_position", "token_index", "position", "pos"};
  std::vector<std::string> layer{"layer", "layer_idx", "layer_id", "moe_layer"};
  std::vector<std::string> experts{"experts", "expert_ids", "topk_ids", "topk_experts", "selected_experts", "topk_idx"};
  std::vector<std::string> weights{"gating_probs", "weights", "topk_weights", "routing_weights", "gate_weights", "probs"};
  std::vector<std::string> layers{"layers", "routing"};
  std::vector<std::string> phase{"phase", "stage"};
  std::vector<std::string> step{"step", "step_idx", "forward_step"};
  std::vector<std::string> draft_len{"draft_len", "num_draft_tokens", "gamma"};
  std::vector<std::string> accepted{"accepted", "num_accepted", "accepted_tokens"};
  std::vector<std::string> token_id{"token_id", "input_id"};

  /// Replace the spellings of `field` (one of the member names above) by `names`.
  void set(const std::string& field, std::vector<std::string> names) {
    std::vector<std::string>* target = lookup(field);
    if (target == nullptr) {
      throw ConfigError("", "--field", field,
                        "unknown field; known: request, token, layer, experts, weights, layers, phase, step, draft_len, accepted, token_id");
    }
    *target = std::move(names);
  }

 private:
  std::vector<std::string>* lookup(const std::string& f) {
    if (f == "request") return &request;
    if (f == "token") return &token;
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

struct ImportOptions {
  ImportFieldNames fields;
  std::optional<ModelShape> shape;   ///< a model's shape: experts, top-k and decoder-layer mapping
  std::string model_name;            ///< overrides the dump's model name
  std::optional<std::uint32_t> experts;  ///< overrides the expert count
  std::optional<std::uint32_t> top_k;
  std::uint32_t prefill_tokens = 0;  ///< without phase fields: prompt length per request
  std::string source;                ///< recorded as the trace's source
  std::string dataset;
};

struct ImportReport {
  std::string layout;  ///< "per (token, layer) records", "per-token records with a layers map", or both
  std::uint64_t records = 0, requests = 0, tokens = 0, steps = 0;
  std::uint32_t layers = 0, experts = 0, top_k = 0;
  std::vector<std::string> notes;                    ///< what was inferred and how
  std::map<std::string, std::uint64_t> ignored;      ///< unused field -> records that had it
};

namespace import_detail {

struct LayerRouting {
  std::vector<std::uint16_t> experts;
  std::vector<float> weights;
  bool has_weights = false;
};
struct TokenEntry {
  std::optional<StepPhase> phase;
  std::optional<std::int64_t> step;
  std::optional<std::uint32_t> draft_len, accepted, token_id;
  std::map<std::int64_t, LayerRouting> layers;  // dump layer id -> routing
  std::string where;                             // first record that mentioned it
};

class Reader {
 public:
  Reader(std::string file, const ImportOptions& opt) : file_(std::move(file)), opt_(opt) {}

  [[noreturn]] void fail(const std::string& where, const std::string& field, const std::string& value, const std::string& why) const {
    throw ConfigError(file_, where.empty() ? field : field.empty() ? where : where + "." + field, value, why);
  }

  const nlohmann::json* find(const nlohmann::json& rec, const std::vector<std::string>& names, std::set<std::string>& used) const {
    for (const auto& n : names) {
      auto it = rec.find(n);
      if (it != rec.end()) {
        used.insert(n);
        return &*it;
      }
    }
    return nullptr;
  }
  std::int64_t integer(const nlohmann::json& v, const std::string& where, const std::string& field) const {
    if (v.is_number_integer() || v.is_number_unsigned()) return v.get<std::int64_t>();
    if (v.is_string()) {
      try {
        std::size_t used = 0;
        const auto x = std::stoll(v.get<std::string>(), &used);
        if (used == v.get<std::string>().size()) return x;
      } catch (const std::exception&) {
      }
    }
    fail(where, field, io::render_json_value(v), "expected an integer");
  }
  std::string key_of(const nlohmann::json& v) const { return v.is_string() ? v.get<std::string>() : v.dump(); }

  void routing(const nlohmann::json& ex, const nlohmann::json* w, const std::string& where, LayerRouting& out) const {
    if (!ex.is_array()) fail(where, "experts", io::render_json_value(ex), "expected a list of expert ids");
    for (const auto& e : ex) {
      const auto id = integer(e, where, "experts");
      if (id < 0 || id > 32767) fail(where, "experts", std::to_string(id), "expert ids must be between 0 and 32767");
      out.experts.push_back(static_cast<std::uint16_t>(id));
    }
    if (w != nullptr && !w->is_null()) {
      if (!w->is_array() || w->size() != ex.size()) fail(where, "weights", io::render_json_value(*w), "expected one weight per expert");
      for (const auto& x : *w) {
        if (!x.is_number()) fail(where, "weights", io::render_json_value(x), "expected numbers");
        out.weights.push_back(x.get<float>());
      }
      out.has_weights = true;
    }
  }

  void record(const nlohmann::json& rec, const std::string& where) {
    if (!rec.is_object()) fail(where, "", io::render_json_value(rec), "a record must be a JSON object");
    if (rec.size() == 1 && rec.contains("meta")) {
      absorb_meta(rec["meta"], where);
      return;
    }
    ++report.records;
    std::set<std::string> used;
    const auto& f = opt_.fields;
    const nlohmann::json* req = find(rec, f.request, used);
    const std::string rkey = req ? key_of(*req) : std::string("0");
    auto [rit, inserted] = request_index_.emplace(rkey, request_order_.size());
    if (inserted) request_order_.push_back(rkey);
    const nlohmann::json* tok = find(rec, f.token, used);
    std::int64_t token = 0;
    if (tok != nullptr) {
      token = integer(*tok, where, "token");
    } else {
      // no token index: records of a request are its tokens in file order (layout B only)
      token = next_token_[rkey]++;
      implicit_token_ = true;
    }
    TokenEntry& te = tokens_[{rit->second, token}];
    if (te.where.empty()) te.where = where;
    if (const auto* ph = find(rec, f.phase, used)) {
      const auto p = ph->is_string() ? parse_phase(ph->get<std::string>()) : std::nullopt;
      if (!p) fail(where, "phase", io::render_json_value(*ph), "expected \"prefill\", \"decode\" or \"verify\"");
      te.phase = p;
    }
    if (const auto* st = find(rec, f.step, used)) te.step = integer(*st, where, "step");
    if (const auto* d = find(rec, f.draft_len, used)) te.draft_len = static_cast<std::uint32_t>(integer(*d, where, "draft_len"));
    if (const auto* a = find(rec, f.accepted, used)) te.accepted = static_cast<std::uint32_t>(integer(*a, where, "accepted"));
    if (const auto* id = find(rec, f.token_id, used)) te.token_id = static_cast<std::uint32_t>(integer(*id, where, "token_id"));

    if (const auto* lm = find(rec, f.layers, used)) {
      saw_b_ = true;
      auto add_layer = [&](std::int64_t layer, const nlohmann::json& v) {
        const std::string at = where + ".layers[" + std::to_string(layer) + "]";
        std::set<std::string> inner;
        const nlohmann::json* ex = v.is_array() ? &v : (v.is_object() ? find(v, f.experts, inner) : nullptr);
        if (ex == nullptr) fail(at, "", io::render_json_value(v), "expected {experts, weights} or a list of expert ids");
        const nlohmann::json* w = v.is_object() ? find(v, f.weights, inner) : nullptr;
        if (v.is_object()) {
          for (const auto& [k, _] : v.items()) {
            if (inner.count(k) == 0) ++report.ignored["layers.*." + k];
          }
        }
        LayerRouting lr;
        routing(*ex, w, at, lr);
        if (!te.layers.emplace(layer, std::move(lr)).second) fail(at, "", "", "layer given twice for this token");
      };
      if (lm->is_object()) {
        for (const auto& [k, v] : lm->items()) add_layer(integer(nlohmann::json(k), where, "layers"), v);
      } else if (lm->is_array()) {
        for (std::size_t l = 0; l < lm->size(); ++l) add_layer(static_cast<std::int64_t>(l), (*lm)[l]);
      } else {
        fail(where, "layers", io::render_json_value(*lm), "expected an object or a list of layers");
      }
    } else {
      saw_a_ = true;
      const auto* ly = find(rec, f.layer, used);
      const auto* ex = find(rec, f.experts, used);
      if (ly == nullptr || ex == nullptr) {
        fail(where, ly == nullptr ? "layer" : "experts", "",
             "missing: a record needs a layer and its experts, or a layers map (field names: see --field)");
      }
      const auto layer = integer(*ly, where, "layer");
      LayerRouting lr;
      routing(*ex, find(rec, f.weights, used), where, lr);
      if (!te.layers.emplace(layer, std::move(lr)).second) {
        fail(where, "layer", std::to_string(layer), "token " + std::to_string(token) + " of request " + rkey + " has this layer twice");
      }
    }
    for (const auto& [k, _] : rec.items()) {
      if (used.count(k) == 0) ++report.ignored[k];
    }
  }

  void absorb_meta(const nlohmann::json& m, const std::string& where) {
    if (!m.is_object()) fail(where, "meta", io::render_json_value(m), "expected an object");
    meta_json_.update(m);
  }

  void parse(const std::string& text) {
    std::size_t i = text.find_first_not_of(" \t\r\n");
    if (i == std::string::npos) fail("", "", "", "the file is empty");
    std::optional<nlohmann::json> doc;
    if (text[i] == '[' || text[i] == '{') {
      try {
        doc = nlohmann::json::parse(text);
      } catch (const nlohmann::json::exception&) {
        // not one JSON document (or a number out of range in it): read it as JSON Lines, which
        // reports the offending line
      }
    }
    if (doc) {
      const nlohmann::json& j = *doc;
      if (j.is_array()) {
        for (std::size_t r = 0; r < j.size(); ++r) record(j[r], "record " + std::to_string(r));
        return;
      }
      if (j.contains("meta")) absorb_meta(j["meta"], "meta");
      for (const char* key : {"records", "tokens", "data", "routing", "entries"}) {
        if (j.contains(key) && j[key].is_array()) {
          for (std::size_t r = 0; r < j[key].size(); ++r) record(j[key][r], std::string(key) + "[" + std::to_string(r) + "]");
          return;
        }
      }
      if (!j.contains("meta")) {  // a single record
        record(j, "record 0");
        return;
      }
      fail("", "", "", "a JSON object with \"meta\" must hold its records under records, tokens, data, routing or entries");
    }
    std::istringstream in(text);
    std::string line;
    std::uint64_t n = 0;
    while (std::getline(in, line)) {
      ++n;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for huge numbers
        fail("line " + std::to_string(n), "", "", "not valid JSON: " + io::json_error_text(e));
      }
      record(j, "line " + std::to_string(n));
    }
  }

  std::pair<io::TraceWriter, ImportReport> build() {
    if (tokens_.empty()) fail("", "", "", "no routing records found");
    report.layout = saw_a_ && saw_b_ ? "both layouts" : saw_a_ ? "per (token, layer) records" : "per-token records with a layers map";
    if (implicit_token_) report.notes.push_back("records without a token index were numbered in file order per request");
    // layers
    std::set<std::int64_t> ids;
    for (const auto& [_, te] : tokens_) {
      for (const auto& [l, __] : te.layers) ids.insert(l);
    }
    std::map<std::int64_t, std::uint32_t> ordinal;
    std::uint32_t L = 0;
    if (opt_.shape) {
      const ModelShape& s = *opt_.shape;
      bool decoder = true, plain = true;
      for (auto id : ids) {
        decoder = decoder && id >= 0 && id < s.decoder_layers && s.is_moe_layer(static_cast<std::uint32_t>(id));
        plain = plain && id >= 0 && id < s.moe_layers();
      }
      L = s.moe_layers();
      if (plain) {
        for (auto id : ids) ordinal[id] = static_cast<std::uint32_t>(id);
        report.notes.push_back("layer ids read as MoE-layer ordinals 0.." + std::to_string(L - 1) + " of the model");
      } else if (decoder) {
        for (auto id : ids) ordinal[id] = (static_cast<std::uint32_t>(id) - s.first_dense_layers) / s.moe_layer_interval;
        report.notes.push_back("layer ids read as decoder-layer indices and mapped to MoE-layer ordinals");
      } else {
        std::string list;
        for (auto id : ids) list += (list.empty() ? "" : ", ") + std::to_string(id);
        fail("", "layer", list, "are neither MoE-layer ordinals (0.." + std::to_string(L - 1) + ") nor the model's MoE decoder layers");
      }
    } else {
      for (auto id : ids) ordinal[id] = L++;
      const bool contiguous = *ids.rbegin() - *ids.begin() + 1 == static_cast<std::int64_t>(ids.size());
      report.notes.push_back("moe_layers = " + std::to_string(L) + " inferred from the distinct layer ids (" + std::to_string(*ids.begin()) + ".." +
                             std::to_string(*ids.rbegin()) + (contiguous ? "" : ", not contiguous") + "); pass --model to map decoder layers");
    }
    // experts and top-k
    std::uint32_t max_id = 0;
    std::size_t k_seen = 0;
    for (const auto& [_, te] : tokens_) {
      for (const auto& [__, lr] : te.layers) {
        for (auto e : lr.experts) max_id = std::max<std::uint32_t>(max_id, e);
        k_seen = std::max(k_seen, lr.experts.size());
      }
    }
    auto meta_uint = [&](std::initializer_list<const char*> keys) -> std::optional<std::uint32_t> {
      for (const char* k : keys) {
        if (meta_json_.contains(k) && meta_json_[k].is_number_unsigned()) return meta_json_[k].get<std::uint32_t>();
      }
      return std::nullopt;
    };
    std::uint32_t E = 0;
    if (opt_.experts) {
      E = *opt_.experts;
    } else if (opt_.shape) {
      E = opt_.shape->experts_per_layer;
    } else if (auto m = meta_uint({"num_experts", "n_routed_experts", "num_local_experts", "experts_per_layer"})) {
      E = *m;
      report.notes.push_back("experts_per_layer = " + std::to_string(E) + " from the dump's meta");
    } else {
      E = max_id + 1;
      report.notes.push_back("experts_per_layer = " + std::to_string(E) + " inferred as the largest expert id + 1 (pass --model or --experts if experts were never chosen)");
    }
    if (max_id >= E) fail("", "experts", std::to_string(max_id), "expert id at or above the expert count (" + std::to_string(E) + ")");
    std::uint32_t K = 0;
    if (opt_.top_k) {
      K = *opt_.top_k;
    } else if (opt_.shape) {
      K = opt_.shape->top_k;
    } else if (auto m = meta_uint({"top_k", "num_experts_per_tok", "moe_topk", "topk"})) {
      K = *m;
    } else {
      K = static_cast<std::uint32_t>(k_seen);
      report.notes.push_back("top_k = " + std::to_string(K) + " inferred from the longest expert list");
    }
    std::string name = opt_.model_name;
    if (name.empty()) {
      for (const char* k : {"model", "model_name", "name"}) {
        if (meta_json_.contains(k) && meta_json_[k].is_string()) {
          name = meta_json_[k].get<std::string>();
          break;
        }
      }
    }
    // weights and token ids: on every record or on none
    bool any_w = false, all_w = true, any_id = false, all_id = true;
    for (const auto& [_, te] : tokens_) {
      any_id = any_id || te.token_id.has_value();
      all_id = all_id && te.token_id.has_value();
      for (const auto& [__, lr] : te.layers) {
        any_w = any_w || lr.has_weights;
        all_w = all_w && lr.has_weights;
      }
    }
    if (any_w && !all_w) {
      for (const auto& [_, te] : tokens_) {
        for (const auto& [__, lr] : te.layers) {
          if (!lr.has_weights) fail(te.where, "weights", "", "missing here but present on other records: give weights everywhere or nowhere");
        }
      }
    }
    if (any_id && !all_id) report.notes.push_back("token ids present on some records only: not imported");

    io::TraceMeta meta;
    meta.model = {name.empty() ? "unknown" : name, L, E, K};
    meta.source = opt_.source.empty() ? "imported routing dump" : opt_.source;
    meta.dataset = opt_.dataset;
    meta.request_count = static_cast<std::uint32_t>(request_order_.size());
    meta.request_ids = request_order_;
    meta.provenance = {{"imported_from", file_}, {"layout", report.layout}};
    if (!meta_json_.empty()) meta.provenance["dump_meta"] = meta_json_;
    io::TraceWriter w(meta);

    // steps: by explicit step ids, else by phase runs, else prefill_tokens
    bool any_phase = false;
    for (const auto& [_, te] : tokens_) any_phase = any_phase || te.phase.has_value() || te.step.has_value();
    if (!any_phase) {
      report.notes.push_back(opt_.prefill_tokens == 0
                                 ? "no phase or step fields: every token imported as a one-token decode step (use --prefill-tokens N for prompts)"
                                 : "no phase or step fields: the first " + std::to_string(opt_.prefill_tokens) + " tokens of each request form its prefill step");
    }
    std::vector<std::uint16_t> ex;
    std::vector<float> wt;
    std::vector<std::uint32_t> tid, pos;
    auto it = tokens_.begin();
    std::size_t current_request = SIZE_MAX;
    std::uint32_t index_in_request = 0;  // tokens of this request already placed in steps
    while (it != tokens_.end()) {
      const std::size_t r = it->first.first;
      if (r != current_request) {
        current_request = r;
        index_in_request = 0;
      }
      // gather this step's tokens
      auto end = std::next(it);
      const TokenEntry& head = it->second;
      StepPhase phase = head.phase.value_or(StepPhase::decode);
      if (head.step) {
        while (end != tokens_.end() && end->first.first == r && end->second.step == head.step) ++end;
        if (!head.phase) phase = std::distance(it, end) > 1 ? StepPhase::prefill : StepPhase::decode;
      } else if (head.phase) {
        if (*head.phase == StepPhase::prefill) {
          while (end != tokens_.end() && end->first.first == r && end->second.phase == StepPhase::prefill && !end->second.step) ++end;
        }
      } else if (index_in_request < opt_.prefill_tokens) {
        phase = StepPhase::prefill;
        while (end != tokens_.end() && end->first.first == r && !end->second.phase && !end->second.step &&
               index_in_request + static_cast<std::uint32_t>(std::distance(it, end)) < opt_.prefill_tokens) {
          ++end;
        }
      }
      StepInfo s;
      s.request = static_cast<std::uint32_t>(r);
      s.phase = phase;
      s.tokens = static_cast<std::uint32_t>(std::distance(it, end));
      if (phase == StepPhase::verify) {
        s.draft_len = static_cast<std::uint16_t>(head.draft_len.value_or(s.tokens - 1));
        s.accepted = static_cast<std::uint16_t>(head.accepted.value_or(0));
        if (!head.accepted) fail(head.where, "accepted", "", "a verify step needs the accepted draft count");
      } else if (phase == StepPhase::decode && s.tokens > 1) {
        fail(head.where, "step", std::to_string(*head.step), "groups " + std::to_string(s.tokens) + " tokens but is not a prefill or verify step");
      }
      ex.clear();
      wt.clear();
      tid.clear();
      pos.clear();
      for (auto p = it; p != end; ++p) {
        const TokenEntry& te = p->second;
        std::vector<const LayerRouting*> by_ordinal(L, nullptr);
        for (const auto& [id, lr] : te.layers) by_ordinal[ordinal.at(id)] = &lr;
        for (std::uint32_t l = 0; l < L; ++l) {
          if (by_ordinal[l] == nullptr) {
            fail(te.where, "layer", std::to_string(l), "token " + std::to_string(p->first.second) + " of request " + request_order_[r] +
                                                          " has no routing for MoE layer " + std::to_string(l));
          }
          const LayerRouting& lr = *by_ordinal[l];
          if (lr.experts.size() != K) {
            fail(te.where, "experts", std::to_string(lr.experts.size()) + " ids", "every expert list must have top_k = " + std::to_string(K) + " ids");
          }
          ex.insert(ex.end(), lr.experts.begin(), lr.experts.end());
          if (all_w) wt.insert(wt.end(), lr.weights.begin(), lr.weights.end());
        }
        if (all_id) tid.push_back(*te.token_id);
        pos.push_back(static_cast<std::uint32_t>(std::max<std::int64_t>(0, p->first.second)));
      }
      try {
        w.add_step(s, ex, wt, tid, pos);
      } catch (const ConfigError& e) {
        throw ConfigError(file_, head.where + " (" + e.field() + ")", e.value(), e.reason());
      }
      report.tokens += s.tokens;
      ++report.steps;
      index_in_request += s.tokens;
      it = end;
    }
    report.requests = request_order_.size();
    report.layers = L;
    report.experts = E;
    report.top_k = K;
    return {std::move(w), std::move(report)};
  }

  ImportReport report;

 private:
  std::string file_;
  const ImportOptions& opt_;
  nlohmann::json meta_json_ = nlohmann::json::object();
  std::map<std::string, std::size_t> request_index_;
  std::vector<std::string> request_order_;
  std::map<std::string, std::int64_t> next_token_;
  std::map<std::pair<std::size_t, std::int64_t>, TokenEntry> tokens_;
  bool saw_a_ = false, saw_b_ = false, implicit_token_ = false;
};

}  // namespace import_detail

/// Import a JSON or JSONL routing dump. See the file comment for the layouts.
[[nodiscard]] inline std::pair<io::TraceWriter, ImportReport> import_routing_text(const std::string& text, const std::string& source_name,
                                                                                 const ImportOptions& opt) {
  import_detail::Reader r(source_name, opt);
  r.parse(text);
  return r.build();
}

[[nodiscard]] inline std::pair<io::TraceWriter, ImportReport> import_routing_dump(const std::filesystem::path& path, const ImportOptions& opt) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path.string(), "", "", std::filesystem::exists(path) ? "cannot open for reading" : "no such file");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return import_routing_text(text, path.string(), opt);
}

}  // namespace moesched::trace
