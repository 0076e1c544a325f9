// Executors: how batched cache work (selection and compaction for many
// sequences and layers) is spread over threads. The engine may supply its
// own (a task system, OpenMP, a GPU stream's host thread pool) by
// implementing `executor`; `thread_executor` is a plain std::thread pool.
//
// A task is called as task(index, worker): index in [0, count), worker in
// [0, workers()) and never shared by two tasks running at the same time, so
// per-worker scratch (one kvcrush::workspace per worker) needs no locks.
// Running a batch allocates nothing: tasks are passed by reference
// (task_ref, no std::function) and the pool's threads start once.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "kvcrush/error.hpp"
#include "kvcrush/tensor_view.hpp"

namespace kvcrush {

// Non-owning reference to a callable void(index_t index, index_t worker);
// the callable must outlive the call it is passed to.
class task_ref {
 public:
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, task_ref>>>
  task_ref(F& f) noexcept  // NOLINT: implicit on purpose
      : object_(static_cast<void*>(&f)), call_([](void* o, index_t i, index_t w) { (*static_cast<F*>(o))(i, w); }) {}

  void operator()(index_t index, index_t worker) const { call_(object_, index, worker); }

 private:
  void* object_;
  void (*call_)(void*, index_t, index_t);
};

inline namespace KVCRUSH_TARGET_NS {

class executor {
 public:
  virtual ~executor() = default;
  // Upper bound (exclusive) of the worker ids passed to tasks.
  virtual index_t workers() const noexcept = 0;
  // Calls task(i, worker) once for every i in [0, count) and returns when
  // all calls have returned. If tasks throw, the first exception is
  // rethrown after the running ones finish (tasks not yet started may be
  // skipped). Not reentrant: a task must not call run() on its executor.
  virtual void run(index_t count, task_ref task) = 0;
};

// Everything on the calling thread, in index order.
class serial_executor final : public executor {
 public:
  index_t workers() const noexcept override { return 1; }
  void run(index_t count, task_ref task) override {
    for (index_t i = 0; i < count; ++i) task(i, 0);
  }
};

// A fixed pool of std::threads (threads - 1 helpers plus the calling
// thread, which works too). Tasks are handed out one index at a time from
// an atomic counter, so uneven tasks (long and short sequences) balance.
class thread_executor final : public executor {
 public:
  // threads <= 0: std::thread::hardware_concurrency() (at least 1).
  explicit thread_executor(index_t threads = 0) {
    if (threads <= 0) threads = static_cast<index_t>(std::thread::hardware_concurrency());
    workers_ = threads > 0 ? threads : 1;
    helpers_.reserve(static_cast<std::size_t>(workers_ - 1));
    for (index_t w = 1; w < workers_; ++w) helpers_.emplace_back([this, w] { helper_loop(w); });
  }

  thread_executor(const thread_executor&) = delete;
  thread_executor& operator=(const thread_executor&) = delete;

  ~thread_executor() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : helpers_) t.join();
  }

  index_t workers() const noexcept override { return workers_; }

  void run(index_t count, task_ref task) override {
    if (count <= 0) return;
    std::lock_guard<std::mutex> one_batch_at_a_time(run_mutex_);
    if (workers_ == 1 || count == 1) {
      for (index_t i = 0; i < count; ++i) task(i, 0);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = &task;
      count_ = count;
      next_.store(0, std::memory_order_relaxed);
      failed_.store(false, std::memory_order_relaxed);
      error_ = nullptr;
      busy_helpers_ = workers_ - 1;
      ++generation_;
    }
    wake_.notify_all();
    work(0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return busy_helpers_ == 0; });
    task_ = nullptr;
    if (error_) {
      std::exception_ptr error = error_;
      error_ = nullptr;
      lock.unlock();
      std::rethrow_exception(error);
    }
  }

 private:
  void work(index_t worker) noexcept {
    const task_ref& task = *task_;
    while (!failed_.load(std::memory_order_relaxed)) {
      const index_t i = next_.fetch_add(1, std::memory_order_relaxed);
      if (i >= count_) break;
      try {
        task(i, worker);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
        failed_.store(true, std::memory_order_relaxed);
      }
    }
  }

  void helper_loop(index_t worker) {
    std::uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
      }
      work(worker);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        --busy_helpers_;
        if (busy_helpers_ == 0) done_.notify_one();
      }
    }
  }

  index_t workers_ = 1;
  std::vector<std::thread> helpers_;
  std::mutex run_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const task_ref* task_ = nullptr;
  index_t count_ = 0;
  std::atomic<index_t> next_{0};
  std::atomic<bool> failed_{false};
  std::exception_ptr error_;
  index_t busy_helpers_ = 0;
  std::uint64_t generation_ = 0;
  bool stopping_ = false;
};

// Runs f(i) or f(i, worker) for i in [0, count) on an executor.
template <class F>
void parallel_for(executor& ex, index_t count, F&& f) {
  if constexpr (std::is_invocable_v<F&, index_t, index_t>) {
    auto call = [&](index_t i, index_t w) { f(i, w); };
    ex.run(count, task_ref(call));
  } else {
    auto call = [&](index_t i, index_t) { f(i); };
    ex.run(count, task_ref(call));
  }
}

}  // namespace KVCRUSH_TARGET_NS
}  // namespace kvcrush
