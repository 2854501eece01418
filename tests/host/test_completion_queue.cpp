// CompletionQueue: the driver thread's inbox, with and without the spin before blocking (real
// threads: runs under ThreadSanitizer with the rest of label 'host').
#include "support/catch.hpp"

#include <moesched/runtime/completion_queue.hpp>

#include <chrono>
#include <thread>

using namespace moesched;
using namespace std::chrono_literals;
using runtime::Completion;
using runtime::CompletionQueue;

namespace {
Completion tagged(std::uint32_t tag) {
  Completion c;
  c.kind = runtime::CompletionKind::job;
  c.tag = tag;
  return c;
}
}  // namespace

TEST_CASE("CompletionQueue hands completions over in order, spinning or blocking", "[host][completion_queue]") {
  CompletionQueue q;
  Completion out;
  CHECK_FALSE(q.try_pop(out));
  q.push(tagged(1));
  q.push(tagged(2));
  q.push(tagged(3));
  REQUIRE(q.pop_wait(out, 10us));
  CHECK(out.tag == 1);
  REQUIRE(q.pop_wait(out));
  CHECK(out.tag == 2);
  REQUIRE(q.try_pop(out));
  CHECK(out.tag == 3);
  CHECK(q.size() == 0);
  // clear() empties what the spinning reader looks at too: it spins out, then sees close().
  q.push(tagged(4));
  q.clear();
  CHECK_FALSE(q.try_pop(out));
  q.close();
  CHECK_FALSE(q.pop_wait(out, 200us));
  CHECK_FALSE(q.pop_wait(out));
}

TEST_CASE("CompletionQueue's spin takes a completion pushed from another thread", "[host][completion_queue]") {
  // Within the spin (the producer pushes long before a 10 s spin ends) and after it (a 50 us spin
  // ends long before the producer pushes: the consumer blocks and is woken).
  for (const auto spin : {std::chrono::nanoseconds{10s}, std::chrono::nanoseconds{50us}}) {
    CompletionQueue q;
    std::thread producer([&] {
      std::this_thread::sleep_for(spin > 1s ? 1ms : 20ms);
      for (std::uint32_t i = 0; i < 100; ++i) q.push(tagged(i));
    });
    Completion out;
    for (std::uint32_t i = 0; i < 100; ++i) {
      REQUIRE(q.pop_wait(out, spin));
      CHECK(out.tag == i);
    }
    producer.join();
    CHECK_FALSE(q.try_pop(out));
  }
}

TEST_CASE("CompletionQueue's spinning reader returns false once closed and empty", "[host][completion_queue]") {
  CompletionQueue q;
  std::thread closer([&] {
    std::this_thread::sleep_for(5ms);
    q.close();
  });
  Completion out;
  CHECK_FALSE(q.pop_wait(out, 1ms));  // spins 1 ms, then blocks until close()
  closer.join();
}
