// hidden_predictors: the hidden-state expert predictors one token at a time, as an engine calls
// them, and how often each one names the experts the model then really chose (the study of one
// component on its own).
//
//   K.gates.safetensors (routers) ──► GatePredictor::skip_gate(l) ─┐
//   K.mlp / K.linear.safetensors ──► LearnedPredictor (per layer) ─┤  rank(row, out): ranked experts,
//   K-prose-sd4.trace (hidden states) ──► HiddenReader::read(token, l, row) ─┘  no allocation
//                                                          │
//   the trace's routing at the predicted layer ◄── compare ┘   recall@top_k, microseconds per rank()
//
// Skip gate: the router of layer l+1 on the MoE input of layer l (Mixtral-offloading). MLP: ProMoE's
// per-layer network on layer l's output, for layer l+2. Linear: two linear maps on layer l's
// attention input, for layer l itself (arXiv 2511.10676). Each runs for every token of every decode
// and verify step of the trace (files from tools/record/run_gpu.sh hidden).
//
// Run:  ./hidden_predictors [folder] [model]   (defaults: traces/real/hidden, fg)
#include <moesched/io/trace.hpp>
#include <moesched/predict/channel.hpp>
#include <moesched/predict/predictors.hpp>
#include <moesched/predict/weights.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

using namespace moesched;

namespace {

struct Tally {
  std::uint64_t predictions = 0, hits = 0;
  double seconds = 0.0;
};

/// For every token of every decode and verify step: read the source row, rank, and count how many
/// of the top_k candidates the model chose at the predicted layer.
template <class P>
Tally measure(const io::Trace& t, const predict::HiddenReader& rows, std::vector<P>& predictors) {
  const std::uint32_t K = t.meta().model.top_k;
  std::vector<float> row(rows.hidden_size());
  std::vector<runtime::ScoredExpert> out(K);
  Tally r;
  for (std::uint64_t s = 0; s < t.step_count(); ++s) {
    const StepInfo st = t.step(s);
    if (st.phase == StepPhase::prefill) continue;
    for (std::uint32_t k = 0; k < st.tokens; ++k) {
      const std::uint64_t token = st.first_token + k;
      for (P& p : predictors) {
        rows.read(token, p.input().layer, row);
        const auto t0 = std::chrono::steady_clock::now();
        const std::uint32_t n = p.rank(row, out);
        r.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        for (std::uint32_t i = 0; i < n; ++i) {
          for (std::uint32_t j = 0; j < K; ++j) r.hits += t.expert(token, p.predicts(), j) == out[i].expert ? 1U : 0U;
        }
        ++r.predictions;
      }
    }
  }
  return r;
}

void print(const char* name, const Tally& r, std::uint32_t k) {
  std::printf("%-34s %11llu %9.1f%% %12.2f\n", name, static_cast<unsigned long long>(r.predictions),
              r.predictions ? 100.0 * static_cast<double>(r.hits) / static_cast<double>(r.predictions * k) : 0.0,
              r.predictions ? 1e6 * r.seconds / static_cast<double>(r.predictions) : 0.0);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::filesystem::path dir = argc > 1 ? argv[1] : std::filesystem::path(MOESCHED_SOURCE_DIR) / "traces/real/hidden";
    const std::string k = argc > 2 ? argv[2] : "fg";
    const auto t = io::Trace::open(dir / (k + "-prose-sd4.trace.safetensors"));
    const auto gates = std::make_shared<const predict::GateSet>(predict::read_gates(dir / (k + ".gates.safetensors")));
    const auto mlp = std::make_shared<const predict::LearnedSet>(predict::read_learned(dir / (k + ".mlp.safetensors")));
    const auto lin = std::make_shared<const predict::LearnedSet>(predict::read_learned(dir / (k + ".linear.safetensors")));
    const std::uint32_t L = t.meta().model.moe_layers, K = t.meta().model.top_k;

    std::vector<predict::GatePredictor> skip;  // one per source layer: router l+1 on layer l's MoE input
    for (std::uint32_t l = 0; l + 1 < L; ++l) skip.push_back(predict::GatePredictor::skip_gate(gates, l));
    std::vector<predict::LearnedPredictor> mlps, lins;
    for (std::size_t i = 0; i < mlp->layers.size(); ++i) mlps.emplace_back(mlp, i);
    for (std::size_t i = 0; i < lin->layers.size(); ++i) lins.emplace_back(lin, i);

    std::printf("%s: %u MoE layers x %u experts, top-%u; every decode and verify token\n\n", t.meta().model.name.c_str(), L,
                t.meta().model.experts_per_layer, K);
    std::printf("%-34s %11s %10s %12s\n", "predictor (input -> layer)", "predictions", "recall", "us per rank");
    print("skip gate (moe_input l -> l+1)", measure(t, predict::HiddenReader(t, predict::HiddenState::moe_input), skip), K);
    print("ProMoE MLP (layer_output l -> l+2)", measure(t, predict::HiddenReader(t, predict::HiddenState::layer_output), mlps), K);
    print("linear (attn_input l -> l)", measure(t, predict::HiddenReader(t, predict::HiddenState::attn_input), lins), K);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hidden_predictors: %s\n", e.what());
    return 2;
  }
}
