#pragma once
/// moesched: the umbrella header of the standard-library-only core.
///
///   #include <moesched/moesched.hpp>
///   moesched::ModelShape shape{...};
///
/// Preset loading (JSON) lives in <moesched/io/presets.hpp> (target moesched::io), the CUDA
/// executor in <moesched/cuda/...> (target moesched::cuda); neither is pulled in here.

#include "moesched/core/config.hpp"
#include "moesched/core/dtype.hpp"
#include "moesched/core/error.hpp"
#include "moesched/core/expert_id.hpp"
#include "moesched/core/hardware.hpp"
#include "moesched/core/model.hpp"
#include "moesched/core/sizing.hpp"
#include "moesched/core/units.hpp"
#include "moesched/version.hpp"
