#pragma once
/// The weight files of the hidden-state predictors: routers ("moesched-gates") and learned
/// per-layer predictors ("moesched-mlp-predictor"), both safetensors, both written by
/// tools/record/ (record.py --gates-out, train_predictor.py).
///
///   auto gates = moesched::predict::read_gates("mixtral.gates.safetensors");       // all routers
///   auto mlp = moesched::predict::read_learned("mixtral.mlp.safetensors");          // kind mlp or linear
///
/// Gates file: `__metadata__.format` = "moesched-gates", `__metadata__.config` = JSON
/// {"model", "moe_layers": L, "experts": E, "hidden_size": H, "top_k": K, "scoring": "softmax" |
/// "sigmoid", optional "n_group": G, "topk_group": T, "group_score": "max" | "top2_sum"} (other
/// fields ignored); tensors `l{m}.weight` F32 [E, H] for m in 0..L-1, optional `l{m}.bias` F32 [E]
/// (added to the logits) and, with sigmoid scoring only, `l{m}.score_bias` F32 [E] (added after
/// the sigmoid, DeepSeek-V3 style).
/// Group-limited routing (DeepSeek-V2/V3, HF config n_group and topk_group): the E experts form G
/// equal groups in id order; each group's score is its highest score ("max", V2's default with
/// softmax) or the sum of its two highest ("top2_sum", V3's default with sigmoid); only the T best
/// groups' experts are candidates. Absent: G = 1 (no limit); T defaults to G.
///
/// Learned file: `format` = "moesched-mlp-predictor", `config` JSON {"kind": "mlp" | "linear"
/// (absent: "mlp"), "stride": S, "source_layers": [..], "hidden_state": "layer_output" |
/// "attn_input" (absent: by kind), "hidden_size": H, "experts": E, "moe_layers": L, "hidden_dim":
/// D, "top_k" (optional)} (other fields ignored); per source layer src, F32 tensors `l{src}.mean`
/// [H], `l{src}.std` [H], `l{src}.w1` [D, H], `l{src}.b1` [D], `l{src}.w2` [E, D], `l{src}.b2` [E].
///
/// Every error is a ConfigError naming the file, the field or tensor, and the value
/// ("gates.safetensors: field 'l3.weight.shape' = [8, 256]: expected [8, 384] ...").
/// Weights are copied into Eigen matrices (row-major, as stored); the file is not kept open.

#include "moesched/core/error.hpp"
#include "moesched/io/json_reader.hpp"
#include "moesched/io/safetensors.hpp"

#include <Eigen/Dense>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace moesched::predict {

inline constexpr std::string_view kGatesFormat = "moesched-gates";
inline constexpr std::string_view kLearnedFormat = "moesched-mlp-predictor";

/// Row-major float matrix: the layout of the weight files (and of torch's Linear.weight).
using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Which hidden state a predictor reads (the names of the trace's `hidden.*` arrays).
enum class HiddenState : std::uint8_t {
  moe_input,        ///< input of the MoE block (after the post-attention norm)
  layer_output,     ///< output of the decoder layer holding the MoE layer
  attn_input,       ///< input of that decoder layer's attention (after its input norm)
  draft_moe_input,  ///< the draft model's feed-forward input at the matching layer (SD)
};
[[nodiscard]] constexpr std::string_view hidden_state_name(HiddenState h) noexcept {
  switch (h) {
    case HiddenState::moe_input: return "moe_input";
    case HiddenState::layer_output: return "layer_output";
    case HiddenState::attn_input: return "attn_input";
    case HiddenState::draft_moe_input: return "draft_moe_input";
  }
  return "?";
}

/// How a router turns logits into scores.
enum class GateScoring : std::uint8_t { softmax, sigmoid };

/// How group-limited routing scores a group of experts (DeepSeek-V2: max; V3: top2_sum).
enum class GroupScore : std::uint8_t { max, top2_sum };

/// One MoE layer's router.
struct GateRouter {
  RowMatrix weight;             ///< [E, H]
  Eigen::VectorXf bias;         ///< [E] or empty
  Eigen::VectorXf score_bias;   ///< [E] or empty (sigmoid scoring only)
};

/// A gates file: the model's routers, one per MoE layer.
struct GateSet {
  std::string source;  ///< the file, for errors
  std::string model;
  std::uint32_t moe_layers = 0, experts = 0, hidden_size = 0, top_k = 0;
  GateScoring scoring = GateScoring::softmax;
  std::uint32_t groups = 1;       ///< n_group: expert groups of experts / groups experts each (1: no limit)
  std::uint32_t groups_kept = 1;  ///< topk_group: groups whose experts may be chosen
  GroupScore group_score = GroupScore::max;
  std::vector<GateRouter> routers;  ///< moe_layers of them
};

/// The predictor kinds of a learned file.
enum class LearnedKind : std::uint8_t { mlp, linear };

/// One source layer's learned predictor.
struct LearnedLayer {
  std::uint32_t source_layer = 0;  ///< reads the hidden state of this MoE layer
  std::uint32_t target_layer = 0;  ///< predicts this MoE layer (source + stride)
  Eigen::VectorXf mean, std;       ///< [H]
  RowMatrix w1;                    ///< [D, H]
  Eigen::VectorXf b1;              ///< [D]
  RowMatrix w2;                    ///< [E, D]
  Eigen::VectorXf b2;              ///< [E]
};

/// A learned predictor file: one small network per source layer.
struct LearnedSet {
  std::string source;
  LearnedKind kind = LearnedKind::mlp;
  std::uint32_t stride = 0;
  HiddenState hidden_state = HiddenState::layer_output;
  std::uint32_t hidden_size = 0, experts = 0, moe_layers = 0, hidden_dim = 0, top_k = 0;
  std::vector<LearnedLayer> layers;  ///< sorted by target layer (then source layer)
  nlohmann::json config;             ///< the whole config (for provenance)
};

namespace weights_detail {

inline std::string render_shape(const std::vector<std::uint64_t>& s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

/// The tensor `name`, F32 of `shape`; `what` explains the expected shape.
inline const io::TensorInfo& f32_tensor(const io::SafetensorsFile& f, const std::string& name,
                                        const std::vector<std::uint64_t>& shape, const std::string& what) {
  const io::TensorInfo* t = f.find(name);
  if (t == nullptr) throw ConfigError(f.source(), name, "", "required tensor is missing (" + what + ")");
  if (t->dtype != io::TensorDType::f32) {
    throw ConfigError(f.source(), name + ".dtype", std::string(io::tensor_dtype_name(t->dtype)), "expected F32");
  }
  if (t->shape != shape) {
    throw ConfigError(f.source(), name + ".shape", render_shape(t->shape), "expected " + render_shape(shape) + " (" + what + ")");
  }
  return *t;
}

/// Copy a tensor's floats (little-endian, possibly unaligned) into `dst`, checking they are finite.
inline void copy_floats(const io::SafetensorsFile& f, const io::TensorInfo& t, float* dst) {
  const std::uint64_t n = t.numel();
  if (n > 0) std::memcpy(dst, f.bytes(t), n * sizeof(float));
  for (std::uint64_t i = 0; i < n; ++i) {
    if (!std::isfinite(dst[i])) throw ConfigError(f.source(), t.name + "[" + std::to_string(i) + "]", to_text(dst[i]), "weights must be finite");
  }
}

inline RowMatrix read_matrix(const io::SafetensorsFile& f, const std::string& name, std::uint64_t rows, std::uint64_t cols,
                             const std::string& what) {
  const auto& t = f32_tensor(f, name, {rows, cols}, what);
  RowMatrix m(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
  copy_floats(f, t, m.data());
  return m;
}
inline Eigen::VectorXf read_vector(const io::SafetensorsFile& f, const std::string& name, std::uint64_t n, const std::string& what) {
  const auto& t = f32_tensor(f, name, {n}, what);
  Eigen::VectorXf v(static_cast<Eigen::Index>(n));
  copy_floats(f, t, v.data());
  return v;
}

/// The JSON config of `__metadata__.config` after checking `__metadata__.format`.
inline nlohmann::json read_config(const io::SafetensorsFile& f, std::string_view format, const char* kind) {
  const auto& md = f.metadata();
  const auto fmt = md.find("format");
  if (fmt == md.end() || fmt->second != format) {
    throw ConfigError(f.source(), "__metadata__.format", fmt == md.end() ? "" : "\"" + fmt->second + "\"",
                      std::string("not a ") + kind + " file (expected \"" + std::string(format) + "\")");
  }
  const auto c = md.find("config");
  if (c == md.end()) throw ConfigError(f.source(), "__metadata__.config", "", "required metadata is missing");
  try {
    return nlohmann::json::parse(c->second);
  } catch (const nlohmann::json::exception&) {
    throw ConfigError(f.source(), "__metadata__.config", "", "not valid JSON");
  }
}

/// Tensors of the file that the reader did not use are errors (a typo never passes silently).
inline void reject_unknown(const io::SafetensorsFile& f, const std::vector<std::string>& used) {
  for (const auto& t : f.tensors()) {
    bool ok = false;
    for (const auto& u : used) ok = ok || u == t.name;
    if (!ok) throw ConfigError(f.source(), t.name, "", "unknown tensor (not named by the config)");
  }
}

}  // namespace weights_detail

/// Read a gates file from an opened container.
[[nodiscard]] inline GateSet gates_from_safetensors(const io::SafetensorsFile& f) {
  using namespace weights_detail;
  const nlohmann::json cj = read_config(f, kGatesFormat, "gates");
  io::JsonObjectReader r(cj, f.source(), "__metadata__.config");
  GateSet g;
  g.source = f.source();
  g.model = r.optional_string("model").value_or("");
  g.moe_layers = static_cast<std::uint32_t>(r.required_uint("moe_layers", 1, 4096));
  g.experts = static_cast<std::uint32_t>(r.required_uint("experts", 1, 32768));
  g.hidden_size = static_cast<std::uint32_t>(r.required_uint("hidden_size", 1, 1U << 20U));
  g.top_k = static_cast<std::uint32_t>(r.required_uint("top_k", 1, g.experts));
  g.scoring = r.optional_choice("scoring", {"softmax", "sigmoid"}).value_or(0) == 0 ? GateScoring::softmax : GateScoring::sigmoid;
  g.groups = static_cast<std::uint32_t>(r.optional_uint("n_group", 1, g.experts).value_or(1));
  if (g.experts % g.groups != 0) {
    throw r.error("n_group", "must divide the expert count (" + std::to_string(g.experts) + ")");
  }
  g.groups_kept = static_cast<std::uint32_t>(r.optional_uint("topk_group", 1, g.groups).value_or(g.groups));
  const std::uint32_t per_group = g.experts / g.groups;
  if (g.top_k > g.groups_kept * per_group) {
    throw r.error("topk_group", "keeps " + std::to_string(g.groups_kept * per_group) + " experts, fewer than top_k (" +
                                    std::to_string(g.top_k) + ")");
  }
  const auto gs = r.optional_choice("group_score", {"max", "top2_sum"});
  g.group_score = gs ? (*gs == 0 ? GroupScore::max : GroupScore::top2_sum)
                     : (g.scoring == GateScoring::sigmoid && per_group >= 2 ? GroupScore::top2_sum : GroupScore::max);
  if (g.group_score == GroupScore::top2_sum && per_group < 2 && g.groups > 1) {
    throw r.error("group_score", "needs at least two experts per group (n_group = " + std::to_string(g.groups) + ")");
  }
  std::vector<std::string> used;
  const std::string shape_why = "experts x hidden_size from the config";
  for (std::uint32_t m = 0; m < g.moe_layers; ++m) {
    const std::string p = "l" + std::to_string(m) + ".";
    GateRouter rt;
    rt.weight = read_matrix(f, p + "weight", g.experts, g.hidden_size, shape_why);
    used.push_back(p + "weight");
    if (f.find(p + "bias") != nullptr) {
      rt.bias = read_vector(f, p + "bias", g.experts, "experts from the config");
      used.push_back(p + "bias");
    }
    if (f.find(p + "score_bias") != nullptr) {
      if (g.scoring != GateScoring::sigmoid) {
        throw ConfigError(f.source(), p + "score_bias", "", "only sigmoid scoring has a score bias (config.scoring is \"softmax\")");
      }
      rt.score_bias = read_vector(f, p + "score_bias", g.experts, "experts from the config");
      used.push_back(p + "score_bias");
    }
    g.routers.push_back(std::move(rt));
  }
  reject_unknown(f, used);
  return g;
}

/// Read a gates file ("moesched-gates").
[[nodiscard]] inline GateSet read_gates(const std::filesystem::path& path) {
  return gates_from_safetensors(io::SafetensorsFile::open(path));
}

/// Read a learned predictor file from an opened container.
[[nodiscard]] inline LearnedSet learned_from_safetensors(const io::SafetensorsFile& f) {
  using namespace weights_detail;
  LearnedSet s;
  s.source = f.source();
  s.config = read_config(f, kLearnedFormat, "learned predictor");
  io::JsonObjectReader r(s.config, f.source(), "__metadata__.config");
  s.kind = r.optional_choice("kind", {"mlp", "linear"}).value_or(0) == 0 ? LearnedKind::mlp : LearnedKind::linear;
  const HiddenState by_kind = s.kind == LearnedKind::mlp ? HiddenState::layer_output : HiddenState::attn_input;
  s.hidden_state = by_kind;
  if (const auto h = r.optional_choice("hidden_state", {"layer_output", "attn_input"})) {
    s.hidden_state = *h == 0 ? HiddenState::layer_output : HiddenState::attn_input;
    if (s.hidden_state != by_kind) {
      throw r.error("hidden_state", std::string("kind \"") + (s.kind == LearnedKind::mlp ? "mlp" : "linear") + "\" reads \"" +
                                        std::string(hidden_state_name(by_kind)) + "\"");
    }
  }
  s.stride = static_cast<std::uint32_t>(r.required_uint("stride", 0, 4095));
  s.hidden_size = static_cast<std::uint32_t>(r.required_uint("hidden_size", 1, 1U << 20U));
  s.experts = static_cast<std::uint32_t>(r.required_uint("experts", 1, 32768));
  s.moe_layers = static_cast<std::uint32_t>(r.required_uint("moe_layers", 1, 4096));
  s.hidden_dim = static_cast<std::uint32_t>(r.required_uint("hidden_dim", 1, 1U << 20U));
  s.top_k = static_cast<std::uint32_t>(r.optional_uint("top_k", 1, s.experts).value_or(0));
  const nlohmann::json& src = r.required_raw("source_layers");
  if (!src.is_array() || src.empty()) throw r.error("source_layers", "expected a non-empty list of MoE layer ordinals");
  std::vector<std::string> used;
  for (std::size_t i = 0; i < src.size(); ++i) {
    const std::string field = "__metadata__.config.source_layers[" + std::to_string(i) + "]";
    if (!src[i].is_number_unsigned()) throw ConfigError(f.source(), field, src[i].dump(), "expected an MoE layer ordinal");
    const auto l = src[i].get<std::uint64_t>();
    if (l + s.stride >= s.moe_layers) {
      throw ConfigError(f.source(), field, std::to_string(l),
                        "predicts MoE layer " + std::to_string(l + s.stride) + " (source + stride " + std::to_string(s.stride) +
                            "), but the model has " + std::to_string(s.moe_layers));
    }
    for (const auto& done : s.layers) {
      if (done.source_layer == l) throw ConfigError(f.source(), field, std::to_string(l), "source layer listed twice");
    }
    const std::string p = "l" + std::to_string(l) + ".";
    const std::uint64_t H = s.hidden_size, D = s.hidden_dim, E = s.experts;
    LearnedLayer ll;
    ll.source_layer = static_cast<std::uint32_t>(l);
    ll.target_layer = static_cast<std::uint32_t>(l + s.stride);
    ll.mean = read_vector(f, p + "mean", H, "hidden_size from the config");
    ll.std = read_vector(f, p + "std", H, "hidden_size from the config");
    for (Eigen::Index j = 0; j < ll.std.size(); ++j) {
      if (!(ll.std[j] != 0.0F)) throw ConfigError(f.source(), p + "std[" + std::to_string(j) + "]", "0", "a standard deviation must not be zero");
    }
    ll.w1 = read_matrix(f, p + "w1", D, H, "hidden_dim x hidden_size from the config");
    ll.b1 = read_vector(f, p + "b1", D, "hidden_dim from the config");
    ll.w2 = read_matrix(f, p + "w2", E, D, "experts x hidden_dim from the config");
    ll.b2 = read_vector(f, p + "b2", E, "experts from the config");
    for (const char* n : {"mean", "std", "w1", "b1", "w2", "b2"}) used.push_back(p + n);
    s.layers.push_back(std::move(ll));
  }
  std::stable_sort(s.layers.begin(), s.layers.end(), [](const LearnedLayer& a, const LearnedLayer& b) {
    return a.target_layer != b.target_layer ? a.target_layer < b.target_layer : a.source_layer < b.source_layer;
  });
  reject_unknown(f, used);
  return s;
}

/// Read a learned predictor file ("moesched-mlp-predictor", kind mlp or linear).
[[nodiscard]] inline LearnedSet read_learned(const std::filesystem::path& path) {
  return learned_from_safetensors(io::SafetensorsFile::open(path));
}

}  // namespace moesched::predict
