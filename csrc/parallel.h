// The worker pool of the CPU core: `threads` workers (the caller is one of them) take tasks from a shared counter.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

#include "failpoints.h"

namespace tb {

// The number of workers run_tasks uses for `tasks` tasks and `threads` requested threads.
inline int worker_count(std::size_t tasks, int threads) {
  return static_cast<int>(std::max<std::size_t>(1, std::min<std::size_t>(threads < 1 ? 1 : threads, tasks)));
}

// Runs task(worker, order[k]) for every k on worker_count(order.size(), threads) threads, the caller's included
// (worker 0); `worker` indexes per-worker state. A thread the OS refuses to start is not an error: the workers
// already running, and the caller, share its tasks (a std::thread left joinable would terminate the process).
// A task that throws stops the others taking new tasks; every thread is joined, then the first exception is
// rethrown to the caller (an exception escaping a std::thread, or a throw past joinable ones, would terminate).
template <class Task>
void run_tasks(const std::vector<std::size_t>& order, int threads, Task&& task) {
  std::atomic<std::size_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&](std::size_t worker) {
    try {
      for (std::size_t k = next++; k < order.size(); k = next++) {
        if (fault::hit(fault::kTaskThrow)) throw std::runtime_error("injected fault: a task threw");
        task(worker, order[k]);
      }
    } catch (...) {
      next.store(order.size());
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
  const int workers = worker_count(order.size(), threads);
  std::vector<std::thread> pool;
  try {
    pool.reserve(workers - 1);
    for (int w = 1; w < workers; ++w) {
      if (fault::hit(fault::kThreadStart))
        throw std::system_error(std::make_error_code(std::errc::resource_unavailable_try_again));
      pool.emplace_back(work, static_cast<std::size_t>(w));
    }
  } catch (const std::exception&) {
    // fewer workers than asked: the started ones and the caller finish every task
  }
  work(0);
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace tb
