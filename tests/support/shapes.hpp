#pragma once
// Model shapes written out by hand for tests that must not depend on the JSON presets.
#include <moesched/core/model.hpp>

namespace moesched::test {

/// 1 layer, hidden 4, 2 experts of ffn 2, top-1, vocab 10, 2 heads / 1 KV head of dim 2.
/// Parameters by hand: attention 16+8+8+16 = 48, norms 8, router 8 -> layer 64;
/// embedding 40 + LM head 40 + final norm 4 -> non-expert 148; experts 2 x 24 = 48; total 196.
constexpr ModelShape tiny_shape() {
  ModelShape s;
  s.decoder_layers = 1;
  s.hidden = 4;
  s.moe_ffn = 2;
  s.experts_per_layer = 2;
  s.top_k = 1;
  s.vocab = 10;
  s.attention.heads = 2;
  s.attention.kv_heads = 1;
  s.attention.head_dim = 2;
  return s;
}

/// Mixtral-8x7B (config.json of mistralai/Mixtral-8x7B-v0.1).
constexpr ModelShape mixtral_shape() {
  ModelShape s;
  s.decoder_layers = 32;
  s.hidden = 4096;
  s.moe_ffn = 14336;
  s.experts_per_layer = 8;
  s.top_k = 2;
  s.vocab = 32000;
  s.attention.heads = 32;
  s.attention.kv_heads = 8;
  s.attention.head_dim = 128;
  return s;
}

}  // namespace moesched::test
