// Umbrella header: everything kvcrush offers.
#pragma once

#include "kvcrush/config.hpp"
#include "kvcrush/eigen_interop.hpp"
#include "kvcrush/error.hpp"
#include "kvcrush/float16.hpp"
#include "kvcrush/io/npy.hpp"
#include "kvcrush/kv_view.hpp"
#include "kvcrush/simd/isa.hpp"
#include "kvcrush/tensor_view.hpp"
#include "kvcrush/version.hpp"
