#pragma once
// A small synthetic trace with hidden states (L=3 MoE layers, E=4 experts, top-2, hidden size 3;
// a prefill, a decode, a verify step with 2 drafts, a decode) and gates / mlp / linear weight
// files for it: the predictor tests and the tool tests (predict_fixture_tool) share it.
#include "predict/fixtures.hpp"
#include "support/temp_dir.hpp"

#include <moesched/io/trace.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace moesched::test::synthetic {

constexpr std::uint32_t L = 3, E = 4, K = 2, H = 3, D = 4;

/// Multiples of 1/8 in [-2, 2]: exact in F16, BF16 and F32, so every dtype stores the same value.
inline double hidden_value(std::uint32_t h, std::uint64_t t, std::uint32_t l, std::uint32_t i) {
  return std::round(16.0 * std::sin(1.3 * static_cast<double>(t) + 0.7 * l + 0.37 * i + 0.5 * h)) / 8.0;
}
inline double gate_weight(std::uint32_t m, std::uint32_t e, std::uint32_t i) { return 1.5 * std::cos(0.9 * m + 1.7 * e + 0.31 * i); }
inline double gate_bias(std::uint32_t m, std::uint32_t e) { return m == 1 ? 0.1 * e : 0.0; }

inline const io::TensorDType kDtypes[4] = {io::TensorDType::f16, io::TensorDType::bf16, io::TensorDType::f32, io::TensorDType::f32};
inline const char* kHidden[4] = {"moe_input", "layer_output", "attn_input", "draft_moe_input"};

/// bfloat16 bits of a value bfloat16 holds exactly (the library reads bfloat16, never writes it)
inline std::uint16_t to_bf16(float v) { return static_cast<std::uint16_t>(std::bit_cast<std::uint32_t>(v) >> 16U); }

/// The stored value (exact in every dtype of the fixture).
inline float stored(std::uint32_t h, std::uint64_t t, std::uint32_t l, std::uint32_t i) { return static_cast<float>(hidden_value(h, t, l, i)); }

struct Fixture {
  test::TempDir dir;
  std::filesystem::path trace_path, gates_path, mlp_path, linear_path;
  /// Writes the trace and the weight files into a temporary folder, or into `where` if given.
  explicit Fixture(std::vector<std::string> hidden = {"moe_input", "layer_output", "attn_input", "draft_moe_input"},
                   const std::filesystem::path& where = {}) {
    const std::filesystem::path base = where.empty() ? dir.path() : where;
    io::TraceMeta meta;
    meta.model = {"tiny", L, E, K};
    meta.source = "test";
    for (std::uint32_t h = 0; h < 4; ++h) {
      if (std::find(hidden.begin(), hidden.end(), kHidden[h]) == hidden.end()) continue;
      meta.hidden.push_back({kHidden[h], "", {0, 1, 2}, H, kDtypes[h]});
    }
    meta.channels.push_back({"skip_gate", "recorded", K, true});
    io::TraceWriter w(meta);
    const StepInfo steps[] = {{.request = 0, .phase = StepPhase::prefill, .tokens = 3},
                              {.request = 0, .phase = StepPhase::decode, .tokens = 1},
                              {.request = 0, .phase = StepPhase::verify, .tokens = 3, .draft_len = 2, .accepted = 1},
                              {.request = 0, .phase = StepPhase::decode, .tokens = 1}};
    std::uint64_t tokens = 0;
    for (const auto& s : steps) {
      std::vector<std::uint16_t> ex;
      for (std::uint32_t k = 0; k < s.tokens * L; ++k) ex.insert(ex.end(), {0, 1});
      (void)w.add_step(s, ex);
      tokens += s.tokens;
    }
    std::uint32_t slot = 0;
    for (std::uint32_t h = 0; h < 4; ++h) {
      if (std::find(hidden.begin(), hidden.end(), kHidden[h]) == hidden.end()) continue;
      std::vector<std::byte> bytes;
      for (std::uint64_t t = 0; t < tokens; ++t) {
        for (std::uint32_t l = 0; l < L; ++l) {
          for (std::uint32_t i = 0; i < H; ++i) {
            const float v = stored(h, t, l, i);
            if (io::half_to_float(io::float_to_half(v)) != v || io::bf16_to_float(to_bf16(v)) != v) throw std::logic_error("fixture value not exact");
            if (kDtypes[h] == io::TensorDType::f32) {
              const auto* b = reinterpret_cast<const std::byte*>(&v);
              bytes.insert(bytes.end(), b, b + 4);
            } else {
              const std::uint16_t x = kDtypes[h] == io::TensorDType::f16 ? io::float_to_half(v) : to_bf16(v);
              const auto* b = reinterpret_cast<const std::byte*>(&x);
              bytes.insert(bytes.end(), b, b + 2);
            }
          }
        }
      }
      w.set_hidden(slot++, std::move(bytes));
    }
    // a "recorded" skip_gate channel: one prediction per decode step (what the compare test reads)
    const std::uint16_t cand[] = {1, 0};
    const float sc[] = {0.5F, 0.25F};
    w.add_prediction(0, {1, 1, 0, 0}, cand, sc);
    w.add_prediction(0, {3, 2, 0, 1}, cand, sc);
    trace_path = base / "t.trace.safetensors";
    w.write(trace_path);

    test::GatesSpec g;
    g.layers = L;
    g.experts = E;
    g.hidden = H;
    g.top_k = K;
    for (std::uint32_t m = 0; m < L; ++m) {
      std::vector<float> wm, bm;
      for (std::uint32_t e = 0; e < E; ++e) {
        for (std::uint32_t i = 0; i < H; ++i) wm.push_back(static_cast<float>(gate_weight(m, e, i)));
        bm.push_back(static_cast<float>(gate_bias(m, e)));
      }
      g.weights.push_back(wm);
      g.bias.push_back(m == 1 ? bm : std::vector<float>{});
    }
    gates_path = base / "gates.safetensors";
    test::write_gates_file(gates_path, g);

    for (const char* kind : {"mlp", "linear"}) {
      test::LearnedSpec s;
      s.kind = kind;
      s.layers = L;
      s.experts = E;
      s.hidden = H;
      s.hidden_dim = D;
      s.stride = s.kind == "mlp" ? 1 : 0;
      const std::vector<std::uint32_t> sources = s.kind == "mlp" ? std::vector<std::uint32_t>{1, 0} : std::vector<std::uint32_t>{0, 1, 2};
      for (std::uint32_t src : sources) {
        test::LearnedLayerSpec e;
        e.source = src;
        for (std::uint32_t i = 0; i < H; ++i) {
          e.mean.push_back(0.1F * static_cast<float>(i + src));
          e.std.push_back(0.5F + 0.25F * static_cast<float>(i));
        }
        for (std::uint32_t j = 0; j < D * H; ++j) e.w1.push_back(static_cast<float>(std::sin(0.4 * j + src)));
        for (std::uint32_t j = 0; j < D; ++j) e.b1.push_back(0.05F * static_cast<float>(j));
        for (std::uint32_t j = 0; j < E * D; ++j) e.w2.push_back(static_cast<float>(std::cos(0.6 * j + 2.0 * src)));
        for (std::uint32_t j = 0; j < E; ++j) e.b2.push_back(-0.1F * static_cast<float>(j));
        s.entries.push_back(e);
      }
      (s.kind == "mlp" ? mlp_path : linear_path) = base / (std::string(kind) + ".safetensors");
      test::write_learned_file(s.kind == "mlp" ? mlp_path : linear_path, s);
    }
  }
};

}  // namespace moesched::test::synthetic
