// The one place that includes Boost.Asio. Boost 1.74's Asio misses <utility> under GCC 12 in C++20
// ("'exchange' is not a member of 'std'"), so it is included first here.
#ifndef VMBACKUP_CORE_ASIO_H_
#define VMBACKUP_CORE_ASIO_H_

#include <utility>

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/write.hpp>

#endif  // VMBACKUP_CORE_ASIO_H_
