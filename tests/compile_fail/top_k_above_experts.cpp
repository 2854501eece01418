// Must NOT compile: a constexpr model shape with top_k > num_experts fails validation at compile
// time (the throw in ModelShape::validate is not a constant expression). ctest checks the
// compiler's message names the field.
#include <moesched/core/model.hpp>

constexpr moesched::ModelShape shape() {
  moesched::ModelShape s;
  s.decoder_layers = 2;
  s.hidden = 8;
  s.moe_ffn = 4;
  s.experts_per_layer = 4;
  s.top_k = 5;
  s.vocab = 10;
  s.attention.heads = 2;
  s.attention.kv_heads = 1;
  s.attention.head_dim = 4;
  return s;
}
constexpr bool valid() {
  shape().validate();
  return true;
}
static_assert(valid(), "top_k must not exceed num_experts");
