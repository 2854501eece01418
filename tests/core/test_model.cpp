#include "support/catch.hpp"
#include "support/shapes.hpp"

#include <moesched/core/model.hpp>

using namespace moesched;

namespace {
constexpr bool valid_at_compile_time(ModelShape s) {
  s.validate();
  return true;
}
}  // namespace

// validation and sizes work at compile time (an invalid shape is a compile error: see
// tests/compile_fail/top_k_above_experts.cpp)
static_assert(valid_at_compile_time(test::tiny_shape()));
static_assert(valid_at_compile_time(test::mixtral_shape()));
static_assert(test::tiny_shape().expert_bytes(DType::bf16).count == 48U);
static_assert(test::mixtral_shape().expert_bytes(DType::bf16).count == 352321536ULL);
static_assert(test::mixtral_shape().moe_layers() == 32U);

using moesched::test::contains;
using moesched::test::thrown_message;

TEST_CASE("a tiny model's parameters, counted by hand", "[core][model]") {
  const ModelShape s = test::tiny_shape();
  REQUIRE_NOTHROW(s.validate());
  CHECK(s.moe_layers() == 1U);
  CHECK(s.total_experts() == 2U);
  CHECK(s.expert_params() == 24U);
  CHECK(s.attention_tally(DType::bf16).params == 48U + 8U);
  CHECK(s.layer_non_expert_tally(DType::bf16, 0).params == 64U);
  CHECK(s.non_expert_tally(DType::bf16).params == 148U);
  CHECK(s.total_params() == 196U);
  CHECK(s.active_params() == 148U + 24U);
  CHECK(s.expert_bytes(DType::bf16).count == 48U);
  CHECK(s.non_expert_bytes(DType::bf16).count == 296U);
  CHECK(s.all_expert_bytes(DType::bf16).count == 96U);
  // KV: 1 layer * (K + V) * 1 kv head * dim 2 * 2 bytes
  CHECK(s.kv_cache_bytes_per_token().count == 8U);
}

TEST_CASE("Mixtral's expert is 352 MB in bf16 and three 117 MB matrices", "[core][model]") {
  const ModelShape s = test::mixtral_shape();
  REQUIRE_NOTHROW(s.validate());
  CHECK(s.expert_bytes(DType::bf16).count == 352321536ULL);
  const auto m = s.expert_matrices(DType::bf16);
  CHECK(m.bytes[0].count == 117440512ULL);
  CHECK(m.bytes[1] == m.bytes[0]);
  CHECK(m.bytes[2] == m.bytes[0]);
  CHECK(m.total() == s.expert_bytes(DType::bf16));
  CHECK(s.expert_flops_per_token() == Approx(6.0 * 4096 * 14336));
  CHECK(s.kv_cache_bytes_per_token().count == 131072U);  // the well-known 128 KiB per token
  // int4 experts are about 4.25/16 of bf16
  CHECK(static_cast<double>(s.expert_bytes(DType::int4).count) /
            static_cast<double>(s.expert_bytes(DType::bf16).count) ==
        Approx(4.25 / 16.0));
}

TEST_CASE("expert biases are part of the expert and of its matrices", "[core][model]") {
  ModelShape s = test::tiny_shape();
  s.expert_bias = true;
  // 24 weights + bias of gate (2) + up (2) + down (4)
  CHECK(s.expert_params() == 32U);
  const auto m = s.expert_matrices(DType::bf16);
  CHECK(m.bytes[0].count == 2U * (8U + 2U));
  CHECK(m.bytes[2].count == 2U * (8U + 4U));
  CHECK(m.total().count == 64U);
}

TEST_CASE("dense leading layers and MoE intervals map MoE ordinals to decoder layers",
          "[core][model]") {
  ModelShape s = test::tiny_shape();
  s.decoder_layers = 27;
  s.first_dense_layers = 1;
  s.dense_ffn = 8;
  REQUIRE_NOTHROW(s.validate());
  CHECK(s.moe_layers() == 26U);
  CHECK_FALSE(s.is_moe_layer(0));
  CHECK(s.is_moe_layer(1));
  CHECK(s.is_moe_layer(26));
  CHECK_FALSE(s.is_moe_layer(27));
  CHECK(s.decoder_layer_of(0) == 1U);
  CHECK(s.decoder_layer_of(25) == 26U);

  s.decoder_layers = 8;
  s.first_dense_layers = 0;
  s.moe_layer_interval = 2;
  REQUIRE_NOTHROW(s.validate());
  CHECK(s.moe_layers() == 4U);
  for (std::uint32_t m = 0; m < s.moe_layers(); ++m) CHECK(s.is_moe_layer(s.decoder_layer_of(m)));
  CHECK_FALSE(s.is_moe_layer(1));
  // a dense layer has the dense FFN (3 * 4 * 8 = 96) instead of router + experts
  CHECK(s.layer_non_expert_tally(DType::bf16, 1).params == 56U + 96U);
}

TEST_CASE("shared experts and the shared-expert gate stay resident", "[core][model]") {
  ModelShape s = test::tiny_shape();
  s.shared_experts = 2;
  s.shared_expert_ffn = 3;
  s.shared_expert_gate = true;
  REQUIRE_NOTHROW(s.validate());
  // 64 + 2 * (3*4*3) + gate 4
  CHECK(s.layer_non_expert_tally(DType::bf16, 0).params == 64U + 72U + 4U);
}

TEST_CASE("MLA attention parameters follow DeepSeek-V2's projections", "[core][model]") {
  ModelShape s = test::tiny_shape();
  s.hidden = 2048;
  s.attention = {};
  s.attention.kind = AttentionKind::mla;
  s.attention.heads = 16;
  s.attention.kv_lora_rank = 512;
  s.attention.qk_nope_head_dim = 128;
  s.attention.qk_rope_head_dim = 64;
  s.attention.v_head_dim = 128;
  REQUIRE_NOTHROW(s.validate());
  // q: 2048*16*192, kv_a: 2048*576, kv_a_norm: 512, kv_b: 512*16*256, o: 16*128*2048, norms 2*2048
  const std::uint64_t expected =
      2048ULL * 3072 + 2048ULL * 576 + 512 + 512ULL * 4096 + 2048ULL * 2048 + 4096;
  CHECK(s.attention_tally(DType::bf16).params == expected);
  CHECK(s.kv_cache_bytes_per_token().count == 1U * 576U * 2U);
  s.attention.q_lora_rank = 1536;  // DeepSeek-V2 (not Lite) compresses q too
  CHECK(s.attention_tally(DType::bf16).params ==
        expected - 2048ULL * 3072 + 2048ULL * 1536 + 1536 + 1536ULL * 3072);
}

TEST_CASE("validate names the bad field and value", "[core][model]") {
  auto message_for = [](auto mutate) {
    ModelShape s = test::mixtral_shape();
    mutate(s);
    return thrown_message<ConfigError>([&] { s.validate(); });
  };
  auto m = message_for([](ModelShape& s) { s.top_k = 9; });
  CHECK(contains(m, "field 'top_k' = 9"));
  CHECK(contains(m, "num_experts (8)"));
  m = message_for([](ModelShape& s) { s.hidden = 0; });
  CHECK(contains(m, "field 'hidden_size' = 0"));
  m = message_for([](ModelShape& s) { s.top_k = 0; });
  CHECK(contains(m, "field 'top_k' = 0"));
  m = message_for([](ModelShape& s) { s.attention.kv_heads = 5; });
  CHECK(contains(m, "field 'attention.kv_heads' = 5: must divide attention.heads (32)"));
  m = message_for([](ModelShape& s) { s.first_dense_layers = 32; });
  CHECK(contains(m, "field 'first_dense_layers' = 32"));
  m = message_for([](ModelShape& s) { s.first_dense_layers = 1; });
  CHECK(contains(m, "field 'dense_intermediate_size' = 0"));
  m = message_for([](ModelShape& s) { s.shared_experts = 1; });
  CHECK(contains(m, "field 'shared_expert_intermediate_size' = 0"));
  m = message_for([](ModelShape& s) { s.shared_expert_ffn = 10; });
  CHECK(contains(m, "shared_experts is 0"));
  m = message_for([](ModelShape& s) { s.experts_per_layer = ModelShape::kMaxExperts + 1; });
  CHECK(contains(m, "field 'num_experts'"));
  m = message_for([](ModelShape& s) { s.moe_ffn = ModelShape::kMaxDim + 1; });
  CHECK(contains(m, "field 'moe_intermediate_size'"));
}

TEST_CASE("ModelDesc::with_dtype changes only the storage format", "[core][model]") {
  ModelDesc d;
  d.name = "mixtral";
  d.shape = test::mixtral_shape();
  const ModelDesc q = d.with_dtype(DType::int4);
  CHECK(q.dtype == DType::int4);
  CHECK(q.name == d.name);
  CHECK(q.expert_bytes() < d.expert_bytes());
  CHECK(q.non_expert_bytes() < d.non_expert_bytes());
  CHECK(d.all_expert_bytes().count == 256ULL * 352321536ULL);
}
