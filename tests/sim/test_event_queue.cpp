#include "support/catch.hpp"

#include <moesched/sim/event_queue.hpp>

#include <stdexcept>

using moesched::Nanoseconds;
using moesched::sim::EventQueue;

TEST_CASE("events leave by time, then by scheduling order", "[sim][event_queue]") {
  EventQueue<int> q;
  q.push(Nanoseconds{50}, 1);
  q.push(Nanoseconds{20}, 2);
  q.push(Nanoseconds{20}, 3);
  q.push(Nanoseconds{10}, 4);
  q.push(Nanoseconds{20}, 5);
  std::vector<int> order;
  while (!q.empty()) order.push_back(q.pop().payload);
  CHECK(order == std::vector<int>{4, 2, 3, 5, 1});
  CHECK(q.now() == Nanoseconds{50});
}

TEST_CASE("the clock never goes back", "[sim][event_queue]") {
  EventQueue<int> q;
  q.push(Nanoseconds{100}, 1);
  (void)q.pop();
  CHECK_THROWS_AS(q.push(Nanoseconds{99}, 2), std::logic_error);
  q.push(Nanoseconds{100}, 3);  // the same instant is fine
  CHECK(q.pop().payload == 3);
}

TEST_CASE("many events with equal times keep FIFO order", "[sim][event_queue]") {
  EventQueue<int> q;
  for (int i = 0; i < 1000; ++i) q.push(Nanoseconds{(i * 7919) % 13}, i);
  Nanoseconds last{0};
  int last_payload_at_time = -1;
  while (!q.empty()) {
    auto e = q.pop();
    REQUIRE(e.time >= last);
    if (e.time != last) last_payload_at_time = -1;
    REQUIRE(e.payload > last_payload_at_time);
    last_payload_at_time = e.payload;
    last = e.time;
  }
}
