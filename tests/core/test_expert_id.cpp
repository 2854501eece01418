#include "support/catch.hpp"

#include <moesched/core/expert_id.hpp>

#include <set>
#include <unordered_set>

using namespace moesched;

static_assert(sizeof(ExpertId) == 4);
static_assert(ExpertId{3, 5}.flat(8) == 29U);
static_assert(ExpertId::from_flat(29, 8) == ExpertId{3, 5});

TEST_CASE("ExpertId flat index round-trips over a whole model", "[core][expert_id]") {
  const std::uint32_t layers = 48;
  const std::uint32_t experts = 128;
  std::set<std::uint32_t> flats;
  std::unordered_set<ExpertId> ids;
  for (std::uint32_t l = 0; l < layers; ++l) {
    for (std::uint32_t e = 0; e < experts; ++e) {
      const ExpertId id{static_cast<std::uint16_t>(l), static_cast<std::uint16_t>(e)};
      const auto f = id.flat(experts);
      CHECK(f < layers * experts);
      CHECK(ExpertId::from_flat(f, experts) == id);
      flats.insert(f);
      ids.insert(id);
    }
  }
  CHECK(flats.size() == layers * experts);  // dense and unique
  CHECK(ids.size() == layers * experts);    // hash/equality agree
}

TEST_CASE("ExpertId orders by layer then expert, keys are unique", "[core][expert_id]") {
  CHECK(ExpertId{0, 9} < ExpertId{1, 0});
  CHECK(ExpertId{1, 2} < ExpertId{1, 3});
  CHECK(ExpertId{1, 0}.key() != ExpertId{0, 1}.key());
  CHECK(ExpertId{65535, 65535}.key() == 0xFFFFFFFFU);
}
