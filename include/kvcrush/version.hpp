#pragma once

// Kept in step with project(VERSION ...) in CMakeLists.txt; a test checks it.
#define KVCRUSH_VERSION_MAJOR 0
#define KVCRUSH_VERSION_MINOR 1
#define KVCRUSH_VERSION_PATCH 0
#define KVCRUSH_VERSION_STRING "0.1.0"

namespace kvcrush {
inline constexpr int version_major = KVCRUSH_VERSION_MAJOR;
inline constexpr int version_minor = KVCRUSH_VERSION_MINOR;
inline constexpr int version_patch = KVCRUSH_VERSION_PATCH;
inline constexpr const char* version_string = KVCRUSH_VERSION_STRING;
}  // namespace kvcrush
