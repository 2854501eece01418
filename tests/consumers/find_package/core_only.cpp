// The core needs nothing but the standard library and C++20.
#include <moesched/moesched.hpp>

int main() {
  moesched::ModelShape s;
  s.decoder_layers = 16;
  s.hidden = 2048;
  s.moe_ffn = 1024;
  s.experts_per_layer = 64;
  s.top_k = 8;
  s.vocab = 50304;
  s.attention.heads = 16;
  s.attention.kv_heads = 16;
  s.attention.head_dim = 128;
  s.validate();
  return s.expert_bytes(moesched::DType::bf16).count == 12582912ULL ? 0 : 1;
}
