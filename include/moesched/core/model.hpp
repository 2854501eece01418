#pragma once
/// ModelShape / ModelDesc: the architecture numbers of an MoE model and the byte sizes they imply.
///
///   moesched::ModelShape s{};            // Mixtral-8x7B
///   s.decoder_layers = 32; s.experts_per_layer = 8; s.top_k = 2;
///   s.hidden = 4096; s.moe_ffn = 14336; s.vocab = 32000;
///   s.attention = {.heads = 32, .kv_heads = 8, .head_dim = 128};
///   s.validate();                                      // throws ConfigError on bad numbers
///   s.expert_bytes(moesched::DType::bf16).count;       // 352'321'536
///
/// Sizes are derived, never typed in: an expert is a gated FFN (gate, up: ffn x hidden; down:
/// hidden x ffn), so its bytes follow from hidden, ffn and the dtype. Everything that is not a
/// routed expert (attention, norms, router, shared experts, dense FFN layers, embeddings) is the
/// "non-expert" part that must stay resident on the GPU. total_params() reproduces the published
/// parameter counts of the shipped presets (checked in tests), which is what makes the derived
/// byte sizes trustworthy.

#include "moesched/core/config.hpp"
#include "moesched/core/dtype.hpp"
#include "moesched/core/error.hpp"
#include "moesched/core/units.hpp"

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace moesched {

/// Attention variant: grouped-query (also MHA/MQA) or DeepSeek's multi-head latent attention.
enum class AttentionKind : std::uint8_t { gqa, mla };
/// Query/key normalisation: none, one norm per head dimension (Qwen3), or over the full
/// projection (OLMoE).
enum class QkNorm : std::uint8_t { none, per_head, full };
/// Layer norm flavour: RMSNorm (weight only) or LayerNorm (weight and bias).
enum class NormKind : std::uint8_t { rmsnorm, layernorm };

/// Attention projection shape of one decoder layer.
struct AttentionShape {
  AttentionKind kind = AttentionKind::gqa;
  std::uint32_t heads = 0;
  std::uint32_t kv_heads = 0;   ///< gqa only
  std::uint32_t head_dim = 0;   ///< gqa only
  bool qkv_bias = false;        ///< gqa: biases on q, k, v
  bool o_bias = false;          ///< gqa: bias on the output projection
  QkNorm qk_norm = QkNorm::none;
  bool sinks = false;           ///< one learned sink logit per head (GPT-OSS)
  std::uint32_t q_lora_rank = 0;       ///< mla: 0 = plain q projection
  std::uint32_t kv_lora_rank = 0;      ///< mla
  std::uint32_t qk_nope_head_dim = 0;  ///< mla
  std::uint32_t qk_rope_head_dim = 0;  ///< mla
  std::uint32_t v_head_dim = 0;        ///< mla
};

/// Parameter and byte accounting for one dtype (matrices quantisable, vectors 16-bit).
struct ParamTally {
  DType dtype = DType::bf16;
  std::uint64_t params = 0;
  Bytes bytes{};

  constexpr void matrix(std::uint64_t rows, std::uint64_t cols) noexcept {
    params += rows * cols;
    bytes += matrix_bytes(dtype, rows, cols);
  }
  constexpr void unquantized_matrix(std::uint64_t rows, std::uint64_t cols) noexcept {
    params += rows * cols;
    bytes += unquantized_matrix_bytes(dtype, rows, cols);
  }
  constexpr void vector(std::uint64_t n) noexcept {
    params += n;
    bytes += vector_bytes(dtype, n);
  }
  constexpr void add(const ParamTally& o) noexcept {
    params += o.params;
    bytes += o.bytes;
  }
};

/// The three weight matrices of one expert, the unit the prefetcher copies in chunks.
struct ExpertMatrices {
  std::array<Bytes, 3> bytes{};  ///< gate, up, down (biases folded into the matrix they follow)
  [[nodiscard]] constexpr Bytes total() const noexcept { return bytes[0] + bytes[1] + bytes[2]; }
};

/// Architecture numbers of a decoder-only MoE model. Plain value type; call validate().
struct ModelShape {
  std::uint32_t decoder_layers = 0;
  std::uint32_t first_dense_layers = 0;  ///< leading layers with a dense FFN (DeepSeek: 1)
  std::uint32_t moe_layer_interval = 1;  ///< after those, every n-th layer is MoE
  std::uint32_t experts_per_layer = 0;   ///< routed experts per MoE layer
  std::uint32_t top_k = 0;               ///< routed experts chosen per token per layer
  std::uint32_t shared_experts = 0;      ///< always-active experts per MoE layer
  std::uint32_t shared_expert_ffn = 0;   ///< intermediate size of each shared expert
  bool shared_expert_gate = false;       ///< sigmoid gate on the shared expert (Qwen2-MoE)
  std::uint32_t hidden = 0;
  std::uint32_t moe_ffn = 0;    ///< intermediate size of one routed expert
  std::uint32_t dense_ffn = 0;  ///< intermediate size of the FFN of non-MoE layers
  std::uint32_t vocab = 0;
  bool tie_embeddings = false;
  bool expert_bias = false;  ///< biases on expert matrices (GPT-OSS)
  bool router_bias = false;
  NormKind norm = NormKind::rmsnorm;
  AttentionShape attention{};

  /// Largest accepted dimension; keeps every derived count far from 64-bit overflow.
  static constexpr std::uint32_t kMaxDim = 1U << 20U;
  static constexpr std::uint32_t kMaxExperts = 1U << 15U;

  /// Throws ConfigError naming the first field that is out of range or inconsistent.
  constexpr void validate() const {
    auto dim = [](const char* field, std::uint32_t v, std::uint32_t lo, std::uint32_t hi) {
      if (v < lo || v > hi) {
        throw ConfigError("", field, std::to_string(v),
                          "must be between " + std::to_string(lo) + " and " + std::to_string(hi));
      }
    };
    dim("decoder_layers", decoder_layers, 1, 4096);
    dim("hidden_size", hidden, 1, kMaxDim);
    dim("moe_intermediate_size", moe_ffn, 1, kMaxDim);
    dim("vocab_size", vocab, 1, kMaxDim * 16U);
    dim("num_experts", experts_per_layer, 1, kMaxExperts);
    if (top_k < 1 || top_k > experts_per_layer) {
      throw ConfigError("", "top_k", std::to_string(top_k),
                        "must be between 1 and num_experts (" + std::to_string(experts_per_layer) +
                            ")");
    }
    dim("moe_layer_interval", moe_layer_interval, 1, 4096);
    if (first_dense_layers >= decoder_layers) {
      throw ConfigError("", "first_dense_layers", std::to_string(first_dense_layers),
                        "must be below decoder_layers (" + std::to_string(decoder_layers) +
                            "): a model needs at least one MoE layer");
    }
    if (first_dense_layers > 0 || moe_layer_interval > 1) {
      dim("dense_intermediate_size", dense_ffn, 1, kMaxDim);
    } else if (dense_ffn > kMaxDim) {
      dim("dense_intermediate_size", dense_ffn, 0, kMaxDim);
    }
    dim("shared_experts", shared_experts, 0, kMaxExperts);
    if (shared_experts > 0) dim("shared_expert_intermediate_size", shared_expert_ffn, 1, kMaxDim);
    if (shared_experts == 0 && shared_expert_ffn != 0) {
      throw ConfigError("", "shared_expert_intermediate_size", std::to_string(shared_expert_ffn),
                        "is set but shared_experts is 0");
    }
    const auto& a = attention;
    dim("attention.heads", a.heads, 1, 65536);
    if (a.kind == AttentionKind::gqa) {
      dim("attention.kv_heads", a.kv_heads, 1, a.heads);
      if (a.heads % a.kv_heads != 0) {
        throw ConfigError("", "attention.kv_heads", std::to_string(a.kv_heads),
                          "must divide attention.heads (" + std::to_string(a.heads) + ")");
      }
      dim("attention.head_dim", a.head_dim, 1, 4096);
    } else {
      dim("attention.kv_lora_rank", a.kv_lora_rank, 1, kMaxDim);
      dim("attention.qk_nope_head_dim", a.qk_nope_head_dim, 1, 4096);
      dim("attention.qk_rope_head_dim", a.qk_rope_head_dim, 0, 4096);
      dim("attention.v_head_dim", a.v_head_dim, 1, 4096);
      dim("attention.q_lora_rank", a.q_lora_rank, 0, kMaxDim);
    }
  }

  /// Number of decoder layers that carry routed experts.
  [[nodiscard]] constexpr std::uint32_t moe_layers() const noexcept {
    const std::uint32_t rest = decoder_layers - first_dense_layers;
    return (rest + moe_layer_interval - 1) / moe_layer_interval;
  }
  /// Whether decoder layer `l` (0-based) is an MoE layer.
  [[nodiscard]] constexpr bool is_moe_layer(std::uint32_t l) const noexcept {
    return l >= first_dense_layers && l < decoder_layers &&
           (l - first_dense_layers) % moe_layer_interval == 0;
  }
  /// Decoder-layer index of MoE layer ordinal `m` (the `layer` of an ExpertId).
  [[nodiscard]] constexpr std::uint32_t decoder_layer_of(std::uint32_t m) const noexcept {
    return first_dense_layers + m * moe_layer_interval;
  }
  /// Routed experts in the whole model.
  [[nodiscard]] constexpr std::uint64_t total_experts() const noexcept {
    return std::uint64_t{moe_layers()} * experts_per_layer;
  }

  /// Per-matrix bytes of one routed expert stored as `d`.
  [[nodiscard]] constexpr ExpertMatrices expert_matrices(DType d) const noexcept {
    ExpertMatrices m;
    m.bytes[0] = matrix_bytes(d, moe_ffn, hidden);
    m.bytes[1] = matrix_bytes(d, moe_ffn, hidden);
    m.bytes[2] = matrix_bytes(d, hidden, moe_ffn);
    if (expert_bias) {
      m.bytes[0] += vector_bytes(d, moe_ffn);
      m.bytes[1] += vector_bytes(d, moe_ffn);
      m.bytes[2] += vector_bytes(d, hidden);
    }
    return m;
  }
  /// Parameters of one routed expert.
  [[nodiscard]] constexpr std::uint64_t expert_params() const noexcept {
    return expert_tally(DType::bf16).params;
  }
  /// Bytes of one routed expert stored as `d`.
  [[nodiscard]] constexpr Bytes expert_bytes(DType d) const noexcept {
    return expert_matrices(d).total();
  }
  /// Bytes of all routed experts.
  [[nodiscard]] constexpr Bytes all_expert_bytes(DType d) const noexcept {
    return expert_bytes(d) * total_experts();
  }
  /// FLOPs of one routed expert for one token (3 matrix-vector products, 2 FLOPs per MAC).
  [[nodiscard]] constexpr double expert_flops_per_token() const noexcept {
    return 6.0 * static_cast<double>(hidden) * static_cast<double>(moe_ffn);
  }

  /// Attention projections and norms of one decoder layer.
  [[nodiscard]] constexpr ParamTally attention_tally(DType d) const noexcept {
    ParamTally t{d};
    const auto& a = attention;
    const std::uint64_t h = hidden;
    if (a.kind == AttentionKind::gqa) {
      const std::uint64_t q = std::uint64_t{a.heads} * a.head_dim;
      const std::uint64_t kv = std::uint64_t{a.kv_heads} * a.head_dim;
      t.matrix(q, h);
      t.matrix(kv, h);
      t.matrix(kv, h);
      t.matrix(h, q);
      if (a.qkv_bias) t.vector(q + 2 * kv);
      if (a.o_bias) t.vector(h);
      if (a.qk_norm == QkNorm::per_head) t.vector(2ULL * a.head_dim);
      if (a.qk_norm == QkNorm::full) t.vector(q + kv);
    } else {
      const std::uint64_t qk_head = std::uint64_t{a.qk_nope_head_dim} + a.qk_rope_head_dim;
      if (a.q_lora_rank > 0) {
        t.matrix(a.q_lora_rank, h);
        t.vector(a.q_lora_rank);
        t.matrix(a.heads * qk_head, a.q_lora_rank);
      } else {
        t.matrix(a.heads * qk_head, h);
      }
      t.matrix(std::uint64_t{a.kv_lora_rank} + a.qk_rope_head_dim, h);
      t.vector(a.kv_lora_rank);
      t.matrix(std::uint64_t{a.heads} * (std::uint64_t{a.qk_nope_head_dim} + a.v_head_dim),
               a.kv_lora_rank);
      t.matrix(h, std::uint64_t{a.heads} * a.v_head_dim);
    }
    if (a.sinks) t.vector(a.heads);
    t.vector((norm == NormKind::layernorm ? 4ULL : 2ULL) * h);  // two norms per layer
    return t;
  }

  /// Everything of decoder layer `l` that is not a routed expert.
  [[nodiscard]] constexpr ParamTally layer_non_expert_tally(DType d, std::uint32_t l) const noexcept {
    ParamTally t = attention_tally(d);
    const std::uint64_t h = hidden;
    if (is_moe_layer(l)) {
      t.unquantized_matrix(experts_per_layer, h);
      if (router_bias) t.vector(experts_per_layer);
      for (std::uint32_t s = 0; s < shared_experts; ++s) {
        t.matrix(shared_expert_ffn, h);
        t.matrix(shared_expert_ffn, h);
        t.matrix(h, shared_expert_ffn);
      }
      if (shared_expert_gate) t.unquantized_matrix(1, h);
    } else {
      t.matrix(dense_ffn, h);
      t.matrix(dense_ffn, h);
      t.matrix(h, dense_ffn);
    }
    return t;
  }

  /// Everything in the model that is not a routed expert: it stays resident on the GPU.
  [[nodiscard]] constexpr ParamTally non_expert_tally(DType d) const noexcept {
    ParamTally t{d};
    for (std::uint32_t l = 0; l < decoder_layers; ++l) t.add(layer_non_expert_tally(d, l));
    t.unquantized_matrix(vocab, hidden);                    // token embedding
    if (!tie_embeddings) t.unquantized_matrix(vocab, hidden);  // LM head
    t.vector((norm == NormKind::layernorm ? 2ULL : 1ULL) * hidden);  // final norm
    return t;
  }
  [[nodiscard]] constexpr Bytes non_expert_bytes(DType d) const noexcept {
    return non_expert_tally(d).bytes;
  }

  /// Parameters in the whole model (what model cards report).
  [[nodiscard]] constexpr std::uint64_t total_params() const noexcept {
    return non_expert_tally(DType::bf16).params + total_experts() * expert_params();
  }
  /// Parameters used per token: all non-expert ones plus top_k routed experts per MoE layer
  /// (the embedding table counts whole, as model cards usually count it).
  [[nodiscard]] constexpr std::uint64_t active_params() const noexcept {
    return non_expert_tally(DType::bf16).params +
           std::uint64_t{moe_layers()} * top_k * expert_params();
  }

  /// KV-cache bytes per token of context, at 16-bit (MLA caches the compressed latent).
  [[nodiscard]] constexpr Bytes kv_cache_bytes_per_token() const noexcept {
    const auto& a = attention;
    const std::uint64_t per_layer = a.kind == AttentionKind::gqa
                                        ? 2ULL * a.kv_heads * a.head_dim
                                        : std::uint64_t{a.kv_lora_rank} + a.qk_rope_head_dim;
    return Bytes{per_layer * decoder_layers * 2ULL};
  }

 private:
  [[nodiscard]] constexpr ParamTally expert_tally(DType d) const noexcept {
    ParamTally t{d};
    t.matrix(moe_ffn, hidden);
    t.matrix(moe_ffn, hidden);
    t.matrix(hidden, moe_ffn);
    if (expert_bias) t.vector(2ULL * moe_ffn + hidden);
    return t;
  }
};

/// A named model: its shape, the dtype its weights are stored in, and where the numbers came from.
struct ModelDesc {
  std::string name;         ///< preset name, e.g. "mixtral-8x7b"
  std::string display_name; ///< e.g. "Mixtral-8x7B-v0.1"
  std::string source;       ///< where the numbers come from (config.json URL, paper)
  std::string notes;
  std::vector<std::string> aliases;
  ModelShape shape{};
  DType dtype = DType::bf16;
  std::optional<double> published_total_params;  ///< from the model card, for cross-checks

  /// Bytes of one routed expert in this model's dtype.
  [[nodiscard]] Bytes expert_bytes() const noexcept { return shape.expert_bytes(dtype); }
  /// Bytes that must stay resident (everything but routed experts).
  [[nodiscard]] Bytes non_expert_bytes() const noexcept { return shape.non_expert_bytes(dtype); }
  /// Bytes of all routed experts.
  [[nodiscard]] Bytes all_expert_bytes() const noexcept { return shape.all_expert_bytes(dtype); }
  /// The same model stored as `d` (e.g. an int4 checkpoint of a bf16 model).
  [[nodiscard]] ModelDesc with_dtype(DType d) const {
    ModelDesc m = *this;
    m.dtype = d;
    return m;
  }
};

}  // namespace moesched
